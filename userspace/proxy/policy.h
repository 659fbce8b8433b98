/* SPDX-License-Identifier: MIT */
/*
 * The OpenRouter policy of the reference proxy, as one function: a parsed
 * request in, either a local answer or a sanitized request to forward out.
 * The order of the checks and every message match the reference (DESIGN.md,
 * "The policy proxy"), because platforms and their tests depend on them.
 *
 * No sockets. The only state it touches is the budget ledger, where an
 * admitted request takes its reservation: admission must be atomic with the
 * check or concurrent requests would overshoot the cap. The workspace
 * privacy answer comes from the caller's cache; when the cache has none the
 * result says so (EGD_POLICY_NEED_WORKSPACE), the caller looks it up without
 * blocking its loop, and egd_policy_resume() finishes the decision.
 *
 * Choices where the reference is silent or where egressd goes further are
 * marked "egressd:" next to the message constants below.
 */
#ifndef EGD_PROXY_POLICY_H
#define EGD_PROXY_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "proxy/budget.h"
#include "proxy/proxy_config.h"

#define EGD_PATH_CHAT "/api/v1/chat/completions"
#define EGD_PATH_EMBEDDINGS "/api/v1/embeddings"
#define EGD_PATH_USAGE "/api/v1/usage"
#define EGD_PATH_HEALTHZ "/healthz"
#define EGD_PATH_WORKSPACES "/api/v1/workspaces/"

/* Messages of the reference proxy, word for word. */
#define EGD_MSG_PATH_FMT "Path '%.*s' is not allowed"
#define EGD_MSG_NO_AUTH "Missing Authorization header"
#define EGD_MSG_NO_MODEL "Missing required model selection."
#define EGD_MSG_RESTRICTED "Restricted model(s): "
#define EGD_MSG_BUDGET "Evaluation run cost budget exceeded"
#define EGD_MSG_NOT_CONFIGURED "OpenRouter runtime policy enforcement is not configured"
#define EGD_MSG_KEY_MISMATCH "The runtime OpenRouter API key does not match the uploaded key"
#define EGD_MSG_WS_UNSAFE "OpenRouter workspace logging or data-sharing settings are enabled"
/* egressd: the reference's wording for these is not part of the contract
 * (DESIGN.md fixes only the status); ours say what the agent must fix. */
#define EGD_MSG_NOT_OBJECT "Request body must be a JSON object"
#define EGD_MSG_NOT_BEARER "Authorization header must use the Bearer scheme"
#define EGD_MSG_WS_FAILED "Unable to verify OpenRouter workspace settings"
/* egressd: beyond the reference. */
#define EGD_MSG_DUP_KEY "Request body has a duplicate JSON key"
/* A non-string "model", or "models" not a list of strings. */
#define EGD_MSG_BAD_MODEL "Invalid model selection."
#define EGD_MSG_MISDIRECTED "Host header does not match the TLS server name"

/* A failed workspace lookup is retried after this long even with a longer
 * TTL: the failure may be a blip, and until it passes every request is 503. */
#define EGD_WS_FAILED_RETRY_MS 5000

enum egd_endpoint {
	EGD_EP_NONE = 0,
	EGD_EP_CHAT,
	EGD_EP_EMBEDDINGS,
	EGD_EP_USAGE,
	EGD_EP_HEALTHZ,
};

enum egd_ws_state {
	EGD_WS_UNKNOWN = 0, /* never checked, or the cached answer expired */
	EGD_WS_SAFE,
	EGD_WS_UNSAFE,
	EGD_WS_FAILED, /* transport error, status >= 400, or unreadable answer */
};

struct egd_policy_request {
	const char *method;
	const char *target;        /* request-target; a query string is ignored */
	const char *authorization; /* NULL when absent */
	const char *host;          /* Host header, NULL when absent */
	const char *sni;           /* TLS server name; NULL on plain HTTP */
	const uint8_t *body;
	size_t body_len;
	/* The caller saw this exact Authorization header pass the key check
	 * earlier (on the same connection): the check is skipped. The answer
	 * cannot differ: the expected digest does not change while running. */
	int authorization_verified;
};

enum egd_policy_action {
	EGD_POLICY_RESPOND = 0,    /* answer locally with status/body */
	EGD_POLICY_FORWARD,        /* send upstream_* to the upstream */
	EGD_POLICY_NEED_WORKSPACE, /* look the workspace up, then resume */
};

struct egd_policy_result {
	enum egd_policy_action action;
	enum egd_endpoint endpoint;
	/* EGD_POLICY_RESPOND: the local answer. */
	int status;
	const char *content_type;
	char *body; /* {"detail": msg}, the usage summary, or "ok" */
	size_t body_len;
	/* EGD_POLICY_FORWARD: exactly what goes upstream. The only two
	 * headers are Authorization and Content-Type. */
	const char *upstream_path;
	char *upstream_authorization;
	const char *upstream_content_type;
	char *upstream_body; /* the sanitized object, re-serialized */
	size_t upstream_body_len;
	/* For the ledger and the inference log. */
	char *model; /* the model asked for ("model", else models[0]) */
	int stream;  /* "stream": true */
	int reserved; /* a budget reservation is held: settle or release it */
	double reservation_usd;
};

/*
 * Decide what to do with one request. Returns 0 with @out filled (free it
 * with egd_policy_result_fini()), or -ENOMEM. @ws is the cached workspace
 * state. When the result holds a reservation (out->reserved), the caller
 * must egd_budget_settle() or egd_budget_release() it exactly once.
 */
int egd_policy_eval(const struct egd_proxy_config *cfg, const struct egd_policy_request *req,
		    enum egd_ws_state ws, struct egd_budget *budget, struct egd_policy_result *out);

/* Finish an EGD_POLICY_NEED_WORKSPACE result with the looked-up state:
 * FORWARD when safe, else RESPOND 403/503 with the reservation released. */
int egd_policy_resume(struct egd_policy_result *out, enum egd_ws_state ws,
		      struct egd_budget *budget);

void egd_policy_result_fini(struct egd_policy_result *out);

/* The endpoint a method and request-target name (query ignored). */
enum egd_endpoint egd_policy_endpoint(const char *method, const char *target);

/*
 * Apply the body rules of @ep to @body in place: drop fields outside the
 * allowlist, force the provider preferences and (chat) usage accounting.
 * Exposed for tests and the fuzzer.
 */
int egd_policy_sanitize(const struct egd_proxy_config *cfg, enum egd_endpoint ep, json_t *body);

/* 1 when @model is denied by RESTRICTED_MODELS. Matching ignores case and
 * a ":variant" suffix (egressd: "x:free" is the same model as "x"). */
int egd_policy_model_restricted(const struct egd_proxy_config *cfg, const char *model);

/* 1 when sha256(@token) is the configured digest; constant time. */
int egd_policy_key_matches(const struct egd_proxy_config *cfg, const char *token, size_t len);

/*
 * Judge the answer of GET /api/v1/workspaces/{id}. Unsafe when any of the
 * three logging / data-sharing flags is true or missing or not a boolean
 * (egressd: the reference counts a missing flag as safe). The flags are read
 * from the top-level object, or from its "data" object when there is one.
 * Failed when @status >= 400 (or < 200) or the body is not a JSON object.
 */
enum egd_ws_state egd_workspace_judge(int status, const char *body, size_t len);

/* "/api/v1/workspaces/<id>" with the id percent-encoded; -ENAMETOOLONG. */
int egd_workspace_path(const char *workspace_id, char *out, size_t cap);

/* The cache the caller keeps for egd_policy_eval()'s @ws argument. */
struct egd_ws_cache {
	enum egd_ws_state state;
	int64_t checked_at_ms; /* monotonic */
};

/* The cached state, or EGD_WS_UNKNOWN once stale. */
enum egd_ws_state egd_ws_cache_get(const struct egd_ws_cache *c, unsigned int ttl_s,
				   int64_t now_ms);
void egd_ws_cache_put(struct egd_ws_cache *c, enum egd_ws_state state, int64_t now_ms);

#endif /* EGD_PROXY_POLICY_H */
