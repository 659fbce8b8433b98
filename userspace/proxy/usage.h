/* SPDX-License-Identifier: MIT */
/*
 * Response accounting: what one OpenRouter answer says it cost. The same
 * extraction serves a whole non-streaming JSON body and each chunk of an SSE
 * stream (the final chunk carries the usage), so both paths charge the ledger
 * identically. Pure: bytes in, struct out.
 */
#ifndef EGD_PROXY_USAGE_H
#define EGD_PROXY_USAGE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* Model, provider and generation ids are short; longer ones are cut. */
#define EGD_USAGE_NAME_MAX_BYTES 256
/* An upstream error message is kept for the inference log, cut here. */
#define EGD_USAGE_ERROR_MAX_BYTES 512

struct egd_usage {
	int has_cost; /* usage.cost was present and a non-negative number */
	double cost_usd;
	int64_t prompt_tokens;
	int64_t completion_tokens;
	char model[EGD_USAGE_NAME_MAX_BYTES];       /* routed model, "" if unknown */
	char provider[EGD_USAGE_NAME_MAX_BYTES];    /* "" if unknown */
	char generation_id[EGD_USAGE_NAME_MAX_BYTES]; /* "id", "" if unknown */
	int has_error;
	char error[EGD_USAGE_ERROR_MAX_BYTES];
};

/*
 * Fold what the JSON object @o says into @u: fields present in @o overwrite
 * earlier ones (a stream repeats model and id in every chunk and sends the
 * usage last). Non-objects are ignored.
 */
void egd_usage_merge(struct egd_usage *u, const json_t *o);

/*
 * Account a non-streaming response body. Returns 0 with @u filled (fields
 * the body lacks stay zero or empty), or -EBADMSG when the body is not a JSON
 * object (an error page from a middlebox, say); @u is then zeroed.
 */
int egd_usage_from_body(const char *body, size_t len, struct egd_usage *u);
/* The same through a jansson tree of the whole body: what the above falls
 * back to where its scanner is unsure, and what the fuzz target and the
 * tests compare it with. */
int egd_usage_from_body_full(const char *body, size_t len, struct egd_usage *u);
/* 1 when egd_usage_from_body() reads @body without the whole-text jansson
 * fallback: for the tests that keep the fast path alive. */
int egd_usage_scannable(const char *body, size_t len);

/*
 * Compact JSON of @o with numbers written as a person (or Python) would:
 * 15 significant digits when that reproduces every real exactly, else 17.
 * jansson's default of 17 turns 0.7 into 0.69999999999999996, which is the
 * same double but not what the agent or the usage files' readers expect.
 * Malloc'ed; NULL on failure.
 */
char *egd_json_dumps(const json_t *o);

#endif /* EGD_PROXY_USAGE_H */
