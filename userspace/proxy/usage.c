/* SPDX-License-Identifier: MIT */
/*
 * Extraction of cost, tokens, model, provider, id and error from an
 * OpenRouter response object. OpenRouter puts the charge in usage.cost (USD)
 * when the request asked for usage: {"include": true}, which the policy
 * forces on chat requests.
 */
#include "proxy/usage.h"
#include "proxy/jsonw.h"

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

int egd_usage_from_body_full(const char *body, size_t len, struct egd_usage *u)
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

/*
 * ---- the answer scanned, not parsed ---------------------------------------
 *
 * A chat answer is mostly the model's text; building a jansson tree of all
 * of it to read five members was a tenth of the proxy's CPU per request. The
 * scanner below walks the text once without allocating, checks it as
 * jansson's decoder would, and notes where the top-level members the
 * accounting reads ("usage", "model", "provider", "id", "error"; the last
 * of each, as jansson keeps) begin and end; those few bytes then go through
 * jansson. Wherever the scanner cannot be sure that jansson would accept the
 * text and read the same values (a top-level key with an escape, \u0000 or
 * a surrogate escape, a number that could overflow, deep nesting), it gives
 * up and the whole text goes through jansson, so the two paths agree on
 * every input (fuzz/fuzz_usage.c checks it). Written here because no
 * packaged JSON library scans without building values.
 */

/* Deeper than any OpenRouter answer; jansson's own limit is 2048. */
#define SCAN_DEPTH_MAX 32
/* A number token this long might overflow where jansson refuses it. */
#define SCAN_NUMBER_MAX_BYTES 40

enum { M_USAGE, M_MODEL, M_PROVIDER, M_ID, M_ERROR, M_COUNT };
static const char *const member_names[M_COUNT] = { "usage", "model", "provider", "id",
						   "error" };

struct scan {
	const unsigned char *p, *end;
	int depth;
};

static void skip_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* One UTF-8 sequence at s->p (first byte >= 0x80), as jansson checks it:
 * no overlong forms, no surrogates, nothing past U+10FFFF. */
static int scan_utf8(struct scan *s)
{
	const unsigned char *p = s->p;
	unsigned int cp, n, i;

	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		n = 1;
		cp = p[0] & 0x1f;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		n = 2;
		cp = p[0] & 0x0f;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		n = 3;
		cp = p[0] & 0x07;
	} else {
		return -1;
	}
	if ((size_t)(s->end - p) <= n)
		return -1;
	for (i = 1; i <= n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return -1;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return -1;
	s->p += n + 1;
	return 0;
}

/* A string at s->p ('"'); *escaped when it held a backslash escape. */
static int scan_string(struct scan *s, int *escaped)
{
	*escaped = 0;
	s->p++;
	while (s->p < s->end) {
		unsigned char c = *s->p;

		if (c == '"') {
			s->p++;
			return 0;
		}
		if (c < 0x20)
			return -1;
		if (c >= 0x80) {
			if (scan_utf8(s))
				return -1;
			continue;
		}
		if (c != '\\') {
			s->p++;
			continue;
		}
		*escaped = 1;
		if (s->end - s->p < 2)
			return -1;
		c = s->p[1];
		if (c == 'u') {
			unsigned int cp = 0;

			if (s->end - s->p < 6)
				return -1;
			for (int i = 2; i < 6; i++) {
				int h = hexval(s->p[i]);

				if (h < 0)
					return -1;
				cp = cp << 4 | (unsigned int)h;
			}
			/* \u0000 and surrogate pairs: jansson's rules, not
			 * worth repeating here. */
			if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff))
				return -1;
			s->p += 6;
			continue;
		}
		if (!strchr("\"\\/bfnrt", c) || !c)
			return -1;
		s->p += 2;
	}
	return -1;
}

static int scan_number(struct scan *s)
{
	const unsigned char *start = s->p;

	if (*s->p == '-')
		s->p++;
	if (s->p >= s->end || *s->p < '0' || *s->p > '9')
		return -1;
	if (*s->p == '0') {
		s->p++;
	} else {
		while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
			s->p++;
	}
	if (s->p < s->end && *s->p == '.') {
		s->p++;
		if (s->p >= s->end || *s->p < '0' || *s->p > '9')
			return -1;
		while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
			s->p++;
	}
	if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
		const unsigned char *exp;

		s->p++;
		if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
			s->p++;
		exp = s->p;
		while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
			s->p++;
		/* No digits, or an exponent that might overflow a double. */
		if (s->p == exp || s->p - exp > 2)
			return -1;
	}
	/* An integer beyond 18 digits may overflow json_int_t, which jansson
	 * refuses; a long real too. Leave both to jansson. */
	if (s->p - start > SCAN_NUMBER_MAX_BYTES)
		return -1;
	for (const unsigned char *q = start; q < s->p; q++)
		if (*q == '.' || *q == 'e' || *q == 'E')
			return 0;
	return s->p - start - (*start == '-') > 18 ? -1 : 0;
}

static int scan_literal(struct scan *s, const char *word)
{
	size_t n = strlen(word);

	if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n))
		return -1;
	s->p += n;
	return 0;
}

static int scan_value(struct scan *s);

/* An object or array at s->p. */
static int scan_container(struct scan *s)
{
	unsigned char close = *s->p == '{' ? '}' : ']';
	int escaped, first = 1;

	if (++s->depth > SCAN_DEPTH_MAX)
		return -1;
	s->p++;
	for (;;) {
		skip_ws(s);
		if (s->p >= s->end)
			return -1;
		if (*s->p == close && first) {
			s->p++;
			break;
		}
		if (close == '}') {
			if (*s->p != '"' || scan_string(s, &escaped))
				return -1;
			skip_ws(s);
			if (s->p >= s->end || *s->p++ != ':')
				return -1;
		}
		if (scan_value(s))
			return -1;
		first = 0;
		skip_ws(s);
		if (s->p >= s->end)
			return -1;
		if (*s->p == ',') {
			s->p++;
			skip_ws(s);
			/* No trailing comma. */
			if (s->p < s->end && *s->p == close)
				return -1;
			continue;
		}
		if (*s->p++ != close)
			return -1;
		break;
	}
	s->depth--;
	return 0;
}

static int scan_value(struct scan *s)
{
	int escaped;

	skip_ws(s);
	if (s->p >= s->end)
		return -1;
	switch (*s->p) {
	case '{':
	case '[':
		return scan_container(s);
	case '"':
		return scan_string(s, &escaped);
	case 't':
		return scan_literal(s, "true");
	case 'f':
		return scan_literal(s, "false");
	case 'n':
		return scan_literal(s, "null");
	default:
		return scan_number(s);
	}
}

/* The top-level object: checked whole, and the span of the last value of
 * each member the accounting reads. 0, or -1 to leave it to jansson. */
static int scan_answer(const char *body, size_t len, const unsigned char *span[M_COUNT][2])
{
	struct scan s = { (const unsigned char *)body, (const unsigned char *)body + len, 1 };
	int escaped, first = 1;

	memset(span, 0, sizeof(const unsigned char *) * 2 * M_COUNT);
	skip_ws(&s);
	if (s.p >= s.end || *s.p++ != '{')
		return -1;
	for (;;) {
		const unsigned char *key, *value;
		size_t klen;
		int m;

		skip_ws(&s);
		if (s.p >= s.end)
			return -1;
		if (*s.p == '}' && first) {
			s.p++;
			break;
		}
		key = s.p + 1;
		if (*s.p != '"' || scan_string(&s, &escaped) || escaped)
			return -1; /* an escaped name might spell "usage" */
		klen = (size_t)(s.p - 1 - key);
		skip_ws(&s);
		if (s.p >= s.end || *s.p++ != ':')
			return -1;
		skip_ws(&s);
		value = s.p;
		if (scan_value(&s))
			return -1;
		for (m = 0; m < M_COUNT; m++) {
			if (strlen(member_names[m]) == klen && !memcmp(key, member_names[m], klen)) {
				span[m][0] = value;
				span[m][1] = s.p;
			}
		}
		first = 0;
		skip_ws(&s);
		if (s.p >= s.end)
			return -1;
		if (*s.p == ',') {
			s.p++;
			skip_ws(&s);
			if (s.p < s.end && *s.p == '}')
				return -1;
			continue;
		}
		if (*s.p++ != '}')
			return -1;
		break;
	}
	skip_ws(&s);
	return s.p == s.end ? 0 : -1;
}

int egd_usage_scannable(const char *body, size_t len)
{
	const unsigned char *span[M_COUNT][2];

	return scan_answer(body, len, span) == 0;
}

/* A number token that checked text holds at [a, b): as jansson reads it,
 * an integer (*is_int) unless it has a fraction or an exponent. The scanner
 * let through only integers that fit and reals that do not overflow. */
static double number_value(const unsigned char *a, const unsigned char *b, int *is_int,
			   long long *i)
{
	char buf[SCAN_NUMBER_MAX_BYTES + 1];
	size_t n = (size_t)(b - a);

	memcpy(buf, a, n);
	buf[n] = '\0';
	*is_int = !strpbrk(buf, ".eE");
	if (*is_int) {
		*i = strtoll(buf, NULL, 10);
		return (double)*i;
	}
	return strtod(buf, NULL);
}

/*
 * The members read straight from the checked text, as egd_usage_merge()
 * reads them from a tree (the strings cut as its snprintf() cuts them); -1
 * where that would take more than this: an escaped string, an error, an
 * escaped name inside "usage". @u is zeroed by the caller.
 */
static int read_direct(const unsigned char *span[M_COUNT][2], struct egd_usage *u)
{
	static const int str_members[] = { M_MODEL, M_PROVIDER, M_ID };
	char *const dst[] = { u->model, u->provider, u->generation_id };
	enum { K_COST, K_PROMPT, K_COMPLETION, K_COUNT };
	static const char *const keys[K_COUNT] = { "cost", "prompt_tokens", "completion_tokens" };
	const unsigned char *kv[K_COUNT][2] = { { 0 } };
	struct scan s;
	long long iv;
	int is_int;
	double v;

	if (span[M_ERROR][0] && !(span[M_ERROR][1] - span[M_ERROR][0] == 4 &&
				  !memcmp(span[M_ERROR][0], "null", 4)))
		return -1;
	for (size_t k = 0; k < 3; k++) {
		const unsigned char *a = span[str_members[k]][0], *b = span[str_members[k]][1];
		size_t n;

		if (!a || *a != '"')
			continue;
		a++;
		b--;
		if (memchr(a, '\\', (size_t)(b - a)))
			return -1;
		n = (size_t)(b - a) < EGD_USAGE_NAME_MAX_BYTES - 1 ? (size_t)(b - a)
								   : EGD_USAGE_NAME_MAX_BYTES - 1;
		memcpy(dst[k], a, n);
		dst[k][n] = '\0';
	}
	if (!span[M_USAGE][0] || *span[M_USAGE][0] != '{')
		return 0;
	/* The object was checked whole: walk its members, last one wins. */
	s = (struct scan){ span[M_USAGE][0] + 1, span[M_USAGE][1], 2 };
	for (;;) {
		const unsigned char *key, *value;
		int escaped;

		skip_ws(&s);
		if (*s.p == '}')
			break;
		key = s.p + 1;
		if (scan_string(&s, &escaped) || escaped)
			return -1;
		for (int k = 0; k < K_COUNT; k++) {
			if (strlen(keys[k]) == (size_t)(s.p - 1 - key) &&
			    !memcmp(key, keys[k], strlen(keys[k]))) {
				skip_ws(&s);
				s.p++; /* ':' */
				skip_ws(&s);
				value = s.p;
				if (scan_value(&s))
					return -1;
				kv[k][0] = value;
				kv[k][1] = s.p;
				goto next;
			}
		}
		skip_ws(&s);
		s.p++; /* ':' */
		if (scan_value(&s))
			return -1;
next:
		skip_ws(&s);
		if (*s.p++ == '}')
			break;
	}
	for (int k = 0; k < K_COUNT; k++) {
		const unsigned char *a = kv[k][0];

		if (!a || !(*a == '-' || (*a >= '0' && *a <= '9')))
			continue; /* absent, or not a number */
		v = number_value(a, kv[k][1], &is_int, &iv);
		if (k == K_COST) {
			/* A negative or non-finite cost would credit the budget. */
			if (isfinite(v) && v >= 0) {
				u->has_cost = 1;
				u->cost_usd = v;
			}
		} else if (is_int && iv >= 0) {
			*(k == K_PROMPT ? &u->prompt_tokens : &u->completion_tokens) = iv;
		}
	}
	return 0;
}

int egd_usage_from_body(const char *body, size_t len, struct egd_usage *u)
{
	const unsigned char *span[M_COUNT][2];
	char small[4096], *text = small;
	size_t n = 1, need = 2;
	json_t *o;

	if (scan_answer(body, len, span))
		return egd_usage_from_body_full(body, len, u);
	memset(u, 0, sizeof(*u));
	if (!read_direct(span, u))
		return 0;
	for (int m = 0; m < M_COUNT; m++)
		if (span[m][0])
			need += strlen(member_names[m]) + 4 + (size_t)(span[m][1] - span[m][0]);
	if (need > sizeof(small) && !(text = malloc(need)))
		return egd_usage_from_body_full(body, len, u);
	/* {"usage":...,"model":...}: the members as they were, nothing else. */
	text[0] = '{';
	for (int m = 0; m < M_COUNT; m++) {
		size_t vlen;

		if (!span[m][0])
			continue;
		vlen = (size_t)(span[m][1] - span[m][0]);
		n += (size_t)sprintf(text + n, "%s\"%s\":", n > 1 ? "," : "", member_names[m]);
		memcpy(text + n, span[m][0], vlen);
		n += vlen;
	}
	text[n++] = '}';
	memset(u, 0, sizeof(*u));
	o = json_loadb(text, n, 0, NULL);
	if (text != small)
		free(text);
	if (!json_is_object(o)) {
		/* Cannot happen for a checked text; jansson has the last word. */
		json_decref(o);
		return egd_usage_from_body_full(body, len, u);
	}
	egd_usage_merge(u, o);
	json_decref(o);
	return 0;
}

/* 1 when every real in @o needs only 15 digits (egd_json_real_digits()). */
static int reals_short(const json_t *o)
{
	const char *key;
	json_t *v;
	size_t i;

	switch (json_typeof(o)) {
	case JSON_REAL:
		return egd_json_real_digits(json_real_value(o)) == 15;
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
	size_t digits = reals_short(o) ? 15 : 17;

	return json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(digits));
}
