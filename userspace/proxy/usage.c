/* SPDX-License-Identifier: MIT */
/*
 * Extraction of cost, tokens, model, provider, id and error from an
 * OpenRouter response object. OpenRouter puts the charge in usage.cost (USD)
 * when the request asked for usage: {"include": true}, which the policy
 * forces on chat requests.
 */
#include "proxy/usage.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void copy_str(char *dst, size_t cap, const json_t *v)
{
	if (json_is_string(v))
		snprintf(dst, cap, "%s", json_string_value(v));
}

static int get_tokens(const json_t *usage, const char *key, int64_t *out)
{
	const json_t *v = json_object_get(usage, key);

	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return -1;
	*out = json_integer_value(v);
	return 0;
}

static void merge_error(struct egd_usage *u, const json_t *err)
{
	const json_t *msg = json_is_object(err) ? json_object_get(err, "message") : err;

	u->has_error = 1;
	if (json_is_string(msg)) {
		snprintf(u->error, sizeof(u->error), "%s", json_string_value(msg));
	} else {
		char *s = json_dumps(err, JSON_COMPACT | JSON_ENCODE_ANY);

		snprintf(u->error, sizeof(u->error), "%s", s ? s : "error");
		free(s);
	}
}

void egd_usage_merge(struct egd_usage *u, const json_t *o)
{
	const json_t *usage, *err, *cost;

	if (!json_is_object(o))
		return;
	copy_str(u->model, sizeof(u->model), json_object_get(o, "model"));
	copy_str(u->provider, sizeof(u->provider), json_object_get(o, "provider"));
	copy_str(u->generation_id, sizeof(u->generation_id), json_object_get(o, "id"));
	err = json_object_get(o, "error");
	if (err && !json_is_null(err))
		merge_error(u, err);

	usage = json_object_get(o, "usage");
	if (!json_is_object(usage))
		return;
	cost = json_object_get(usage, "cost");
	/* A negative or non-finite cost would credit the budget: ignore it. */
	if (json_is_number(cost) && isfinite(json_number_value(cost)) &&
	    json_number_value(cost) >= 0) {
		u->has_cost = 1;
		u->cost_usd = json_number_value(cost);
	}
	get_tokens(usage, "prompt_tokens", &u->prompt_tokens);
	get_tokens(usage, "completion_tokens", &u->completion_tokens);
}

int egd_usage_from_body(const char *body, size_t len, struct egd_usage *u)
{
	json_t *o;

	memset(u, 0, sizeof(*u));
	o = json_loadb(body, len, 0, NULL);
	if (!json_is_object(o)) {
		json_decref(o);
		return -EBADMSG;
	}
	egd_usage_merge(u, o);
	json_decref(o);
	return 0;
}

/* Digits that reproduce the typical double exactly, and those that always do. */
#define REAL_SHORT_DIGITS 15
#define REAL_EXACT_DIGITS 17

/* 1 when every real in @o survives a round trip through %.15g. */
static int reals_short(const json_t *o)
{
	const char *key;
	json_t *v;
	size_t i;

	switch (json_typeof(o)) {
	case JSON_REAL: {
		char buf[64];

		snprintf(buf, sizeof(buf), "%.*g", REAL_SHORT_DIGITS, json_real_value(o));
		return strtod(buf, NULL) == json_real_value(o);
	}
	case JSON_OBJECT:
		json_object_foreach((json_t *)o, key, v)
			if (!reals_short(v))
				return 0;
		return 1;
	case JSON_ARRAY:
		json_array_foreach(o, i, v)
			if (!reals_short(v))
				return 0;
		return 1;
	default:
		return 1;
	}
}

char *egd_json_dumps(const json_t *o)
{
	int digits = reals_short(o) ? REAL_SHORT_DIGITS : REAL_EXACT_DIGITS;

	return json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(digits));
}
