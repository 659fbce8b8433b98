/* SPDX-License-Identifier: MIT */
/* The record writer of jsonw.h. */
#include "proxy/jsonw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/grow.h"

/* Room for the records the proxy writes (a few hundred bytes), grown on
 * demand for a usage summary with many models. */
#define JW_INITIAL_BYTES 512

void egd_jw_init(struct egd_jw *w, int digits)
{
	memset(w, 0, sizeof(*w));
	w->digits = digits;
}

void egd_jw_fini(struct egd_jw *w)
{
	free(w->p);
	w->p = NULL;
	w->len = w->cap = 0;
}

void egd_jw_raw(struct egd_jw *w, const char *s, size_t n)
{
	if (w->failed)
		return;
	if (w->len + n + 1 > w->cap) {
		char *p = egd_grow(w->p, &w->cap, w->len + n + 1, JW_INITIAL_BYTES);

		if (!p) {
			w->failed = 1;
			return;
		}
		w->p = p;
	}
	memcpy(w->p + w->len, s, n);
	w->len += n;
	w->p[w->len] = '\0';
}

void egd_jw_str(struct egd_jw *w, const char *s)
{
	const char *run = s;

	egd_jw_raw(w, "\"", 1);
	for (;; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch >= 0x20 && ch <= 0x7e && ch != '"' && ch != '\\')
			continue;
		egd_jw_raw(w, run, (size_t)(s - run));
		if (!ch)
			break;
		if (ch != '"' && ch != '\\') {
			w->failed = 1; /* jansson's escaping or UTF-8 checks */
			return;
		}
		egd_jw_raw(w, "\\", 1);
		run = s;
	}
	egd_jw_raw(w, "\"", 1);
}

void egd_jw_str_or_null(struct egd_jw *w, const char *s)
{
	if (s)
		egd_jw_str(w, s);
	else
		egd_jw_raw(w, "null", 4);
}

void egd_jw_int(struct egd_jw *w, long long v)
{
	char num[24];
	int n = snprintf(num, sizeof(num), "%lld", v);

	egd_jw_raw(w, num, (size_t)n);
}

/* @num (@n bytes of %g output, room for 3 more) as jansson writes it. */
static void put_g(struct egd_jw *w, char *num, int n)
{
	char *e = strchr(num, 'e');

	if (!e && !strchr(num, '.')) {
		memcpy(num + n, ".0", 3);
		n += 2;
	} else if (e) {
		/* "1e+20" -> "1e20", "1e-05" -> "1e-5", as jansson. */
		char *from = e + 1, *to = e + 1;

		if (*from == '-')
			from = ++to;
		else if (*from == '+')
			from++;
		while (*from == '0' && from[1])
			from++;
		memmove(to, from, strlen(from) + 1);
		n = (int)strlen(num);
	}
	egd_jw_raw(w, num, (size_t)n);
}

void egd_jw_real(struct egd_jw *w, double v)
{
	char num[40];
	int n;

	if (!isfinite(v)) {
		w->failed = 1;
		return;
	}
	n = snprintf(num, sizeof(num), "%.*g", w->digits, v);
	if (n < 0 || (size_t)n >= sizeof(num) - 3) {
		w->failed = 1;
		return;
	}
	put_g(w, num, n);
}

void egd_jreal_prepare(struct egd_jreal *r, double v)
{
	int n = snprintf(r->s15, sizeof(r->s15), "%.15g", v);

	r->v = v;
	if (n < 0 || (size_t)n >= sizeof(r->s15) - 3)
		r->s15[0] = '\0'; /* not kept: egd_jw_real_prepared formats */
	r->digits = strtod(r->s15, NULL) == v && r->s15[0] ? 15 : 17;
}

void egd_jw_real_prepared(struct egd_jw *w, const struct egd_jreal *r)
{
	char num[40];

	if (w->digits != 15 || !r->s15[0] || !isfinite(r->v)) {
		egd_jw_real(w, r->v);
		return;
	}
	memcpy(num, r->s15, sizeof(r->s15));
	put_g(w, num, (int)strlen(num));
}

void egd_jw_flat_object(struct egd_jw *w, const json_t *o)
{
	const char *key;
	json_t *v;
	int first = 1;

	if (!json_is_object(o)) {
		w->failed = 1;
		return;
	}
	egd_jw_raw(w, "{", 1);
	json_object_foreach((json_t *)o, key, v) {
		if (!first)
			egd_jw_raw(w, ",", 1);
		first = 0;
		egd_jw_str(w, key);
		egd_jw_raw(w, ":", 1);
		if (json_is_integer(v))
			egd_jw_int(w, (long long)json_integer_value(v));
		else if (json_is_real(v))
			egd_jw_real(w, json_real_value(v));
		else
			w->failed = 1;
	}
	egd_jw_raw(w, "}", 1);
}

char *egd_jw_take(struct egd_jw *w)
{
	char *p;

	if (w->failed || !w->p) {
		egd_jw_fini(w);
		return NULL;
	}
	p = w->p;
	w->p = NULL;
	w->len = w->cap = 0;
	return p;
}

int egd_json_real_digits(double v)
{
	struct egd_jreal r;

	egd_jreal_prepare(&r, v);
	return r.digits;
}
