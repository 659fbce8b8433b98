/* SPDX-License-Identifier: MIT */
/*
 * The one USD ledger of an evaluation run. A request is admitted only while
 * spent + reserved < cap, and holds a reservation from admission until its
 * real cost is known; so however many requests run at once, the admitted
 * total passes the cap by at most one reservation (plus whatever the real
 * costs exceed their reservations by, which nobody can know in advance).
 *
 * The arithmetic lives in struct egd_ledger, plain and lock-free, so that
 * tests drive it directly; struct egd_budget wraps it with a mutex for the
 * daemon (event loop plus helper threads) and adds the two files the
 * reference proxy writes: proxy_usage.json (rewritten atomically) and
 * proxy_inferences.jsonl (one appended line per request).
 */
#ifndef EGD_PROXY_BUDGET_H
#define EGD_PROXY_BUDGET_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include "proxy/usage.h"

/* Default BUDGET_RESERVE_USD: a small chat completion on a mid-priced model. */
#define EGD_BUDGET_DEFAULT_RESERVE_USD 0.01
/* Default MAX_COST_USD, as in the reference proxy: effectively unlimited. */
#define EGD_BUDGET_DEFAULT_CAP_USD 9999.0
/* The usage file is small; a bigger one is not ours. */
#define EGD_USAGE_FILE_MAX_BYTES (16 * 1024 * 1024)

/*
 * The per-model counters are keyed by the model the agent asked for, a
 * string of its choosing. Unbounded, an agent with the key could grow
 * proxy_usage.json (rewritten on every commit) past what the loader reads
 * back and stop the next start. So at most EGD_LEDGER_MODELS_MAX models are
 * counted by name, far more than a run uses; later ones, and names longer
 * than EGD_LEDGER_MODEL_NAME_MAX_BYTES (OpenRouter's "vendor/model:variant"
 * ids are well under 100 bytes), are counted together under
 * EGD_LEDGER_MODEL_OTHER. The totals are never affected.
 */
#define EGD_LEDGER_MODELS_MAX 1000
#define EGD_LEDGER_MODEL_NAME_MAX_BYTES 128
#define EGD_LEDGER_MODEL_OTHER "other"
/* One model entry at its largest in the usage file: the name with every
 * byte escaped as \u00XX, and four numbers with their keys. */
#define EGD_LEDGER_MODEL_ENTRY_MAX_BYTES (6 * EGD_LEDGER_MODEL_NAME_MAX_BYTES + 256)
_Static_assert((EGD_LEDGER_MODELS_MAX + 1) * EGD_LEDGER_MODEL_ENTRY_MAX_BYTES <
		       EGD_USAGE_FILE_MAX_BYTES / 4,
	       "a usage file with every model entry at its largest loads back");

/* The syncer's rounds start at most this often: the longest a record
 * written by a busy proxy waits for its fsync, beyond the fsync itself. */
#define EGD_BUDGET_SYNC_INTERVAL_MS 50

#define EGD_USAGE_FILE_NAME "proxy_usage.json"
#define EGD_INFERENCES_FILE_NAME "proxy_inferences.jsonl"

struct egd_ledger {
	double cap_usd;
	double reserve_usd;  /* held by each admitted request */
	double spent_usd;    /* settled costs */
	double reserved_usd; /* sum of the reservations in flight */
	uint64_t in_flight;
	uint64_t requests; /* settled requests */
	uint64_t prompt_tokens;
	uint64_t completion_tokens;
	/* {"model": {"requests", "cost_usd", "prompt_tokens",
	 * "completion_tokens"}}, owned; bounded as above. */
	json_t *models;
};

/* Zeroed ledger with its cap and reservation; -ENOMEM. */
int egd_ledger_init(struct egd_ledger *l, double cap_usd, double reserve_usd);
void egd_ledger_fini(struct egd_ledger *l);

/* 1 while a new request may be admitted (spent + reserved < cap). */
int egd_ledger_can_admit(const struct egd_ledger *l);
/* Admit and reserve: 0 with *reservation_usd set, or -EDQUOT. */
int egd_ledger_admit(struct egd_ledger *l, double *reservation_usd);
/* Give a reservation back without charging anything (request refused
 * after admission, or never sent). */
void egd_ledger_release(struct egd_ledger *l, double reservation_usd);
/*
 * Replace a reservation by the real cost, and count the request under
 * @model (NULL or "" counts as "unknown"; see EGD_LEDGER_MODELS_MAX). Returns 1 when the spend is now
 * over the cap (the caller withholds a non-streaming answer), else 0.
 */
int egd_ledger_settle(struct egd_ledger *l, double reservation_usd, const char *model,
		      double cost_usd, int64_t prompt_tokens, int64_t completion_tokens);
double egd_ledger_remaining(const struct egd_ledger *l);

/*
 * What a finished request is charged: the reported usage.cost when there is
 * one; the reservation when a successful (2xx) answer reported none, so that
 * a missing usage block cannot make spending free; nothing for an error
 * answer without a cost.
 */
double egd_ledger_charge(const struct egd_usage *u, int status, double reservation_usd);

/* The reference usage summary (proxy_usage.json and GET /api/v1/usage). */
json_t *egd_ledger_usage_json(const struct egd_ledger *l, const char *run_id);
/* The same as compact text, egd_json_dumps() of the above byte for byte,
 * written without the tree when the names allow (jsonw.h). Malloc'ed; NULL
 * on failure. */
char *egd_ledger_usage_text(const struct egd_ledger *l, const char *run_id);
/* Restore spent, counters and models from a usage summary, models past the
 * bounds above folded into EGD_LEDGER_MODEL_OTHER. -EBADMSG with a reason in
 * @err when a key is missing or has the wrong type. */
int egd_ledger_restore(struct egd_ledger *l, const json_t *usage, char *err, size_t errlen);

/* ---- the daemon's locked ledger ---------------------------------------- */

struct egd_budget;

/* NULL + errno. @run_id is EVALUATION_RUN_ID; @data_dir is PROXY_DATA_DIR
 * (NULL: no files, for tests). */
struct egd_budget *egd_budget_new(double cap_usd, double reserve_usd, const char *run_id,
				  const char *data_dir);
void egd_budget_destroy(struct egd_budget *b);

int egd_budget_admit(struct egd_budget *b, double *reservation_usd);
void egd_budget_release(struct egd_budget *b, double reservation_usd);
/* Charge a finished request (egd_ledger_settle()); @after, when not NULL,
 * gets the ledger as this charge left it (models not copied: NULL), taken
 * under the same lock. */
int egd_budget_settle(struct egd_budget *b, double reservation_usd, const char *model,
		      double cost_usd, int64_t prompt_tokens, int64_t completion_tokens,
		      struct egd_ledger *after);
/* A consistent copy of the ledger (models not copied: NULL). */
void egd_budget_snapshot(struct egd_budget *b, struct egd_ledger *out);
/* Compact JSON of the usage summary, malloc'ed; NULL + errno. */
char *egd_budget_usage_dump(struct egd_budget *b);

/*
 * Read proxy_usage.json back at start. A missing file is a fresh run (0).
 * A file that cannot be read or parsed is an error (-EBADMSG, -EIO...) with
 * a reason in @err: starting from zero would silently refill the budget.
 */
int egd_budget_load(struct egd_budget *b, char *err, size_t errlen);
/* Rewrite proxy_usage.json atomically: temp file in the same directory,
 * fsync, rename, fsync of the directory. */
int egd_budget_save(struct egd_budget *b);

/* The same, on explicit paths: exposed for tests and tools. */
int egd_usage_file_read(const char *path, json_t **out, char *err, size_t errlen);

/* ---- proxy_inferences.jsonl -------------------------------------------- */

struct egd_inference {
	const char *endpoint; /* "/api/v1/chat/completions" */
	const char *model;    /* the model the agent asked for; NULL if none */
	int status_code;      /* what the agent got */
	double total_cost_usd;       /* spend after this request */
	double budget_remaining_usd; /* remaining after this request */
	struct timespec timestamp;   /* CLOCK_REALTIME at completion */
	const struct egd_usage *usage; /* may be NULL */
	double cost_usd;               /* charged for this request */
	int64_t latency_ms;
	const char *error; /* proxy-side error; else usage->error; else null */
};

/* One JSON line with the reference fields, "\n"-terminated, malloc'ed. */
char *egd_inference_line(const struct egd_inference *r);
/* The same through a jansson tree: what egd_inference_line() falls back to
 * when a string needs escaping, and what the tests compare it with. */
char *egd_inference_line_json(const struct egd_inference *r);

/*
 * Group commit for a busy proxy, from any thread. The caller holds back the
 * answers of the requests it settled, gathers their inference lines, and
 * commits them here once for many (the policy proxy: once per event-loop
 * turn): the lines are appended (one write on an O_APPEND descriptor kept
 * open) and the usage file rewritten with the newest state (temp file
 * swapped in; skipped when another thread already wrote that state). Only
 * then do the answers leave, so a daemon killed at any point loses nothing
 * it answered. (A stream's content leaves as it comes; what waits is its
 * terminating chunk. A commit that fails, a full disk say, is logged and
 * the answers still leave: the ledger in memory keeps enforcing the cap.)
 * The fsyncs that guard against a crash of the machine run on a syncer
 * thread, one per file per round; the event loops never wait for the disk.
 * destroy() flushes. @len may be 0 (usage file only). 0 or the first
 * -errno.
 */
int egd_budget_commit(struct egd_budget *b, const char *lines, size_t len);
/* Wait until everything written so far is fsync'ed; the last round's
 * error, or 0. */
int egd_budget_flush(struct egd_budget *b);

/* Python's datetime.now(timezone.utc).isoformat(): the reference format,
 * "2026-01-02T03:04:05.123456+00:00". @out needs 33 bytes. */
#define EGD_ISO_TIME_MAX_BYTES 40
void egd_iso_time(const struct timespec *ts, char out[EGD_ISO_TIME_MAX_BYTES]);

#endif /* EGD_PROXY_BUDGET_H */
