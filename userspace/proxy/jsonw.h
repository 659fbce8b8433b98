/* SPDX-License-Identifier: MIT */
/*
 * Writing the proxy's own JSON records (an inference line per request, the
 * usage summary per commit) straight from their fields, without building a
 * jansson tree to dump it: the trees and their dumps were a tenth of the
 * proxy's CPU per request. The text is byte for byte what egd_json_dumps()
 * writes for the same object; a string that would need escaping beyond \"
 * and \\ marks the writer failed, and the caller falls back to jansson.
 */
#ifndef EGD_PROXY_JSONW_H
#define EGD_PROXY_JSONW_H

#include <stddef.h>

#include <jansson.h>

struct egd_jw {
	char *p; /* malloc'ed, NUL-terminated while not failed */
	size_t len, cap;
	int failed; /* out of memory, or a string jansson must escape */
	int digits; /* significant digits for reals: 15 or 17 */
};

/* Start empty, with reals at @digits (egd_json_real_digits()). */
void egd_jw_init(struct egd_jw *w, int digits);
void egd_jw_fini(struct egd_jw *w);

void egd_jw_raw(struct egd_jw *w, const char *s, size_t n);
/* "s" (egd_jw_str_or_null(): null for NULL); a string that needs more than
 * \" and \\ (a control byte, a non-ASCII byte) fails the writer. */
void egd_jw_str(struct egd_jw *w, const char *s);
void egd_jw_str_or_null(struct egd_jw *w, const char *s);
void egd_jw_int(struct egd_jw *w, long long v);
/* As jansson writes a real: %.<digits>g, ".0" added to an integral value, no
 * "+" or leading zeros in the exponent. A non-finite value fails the writer
 * (jansson refuses it too). */
void egd_jw_real(struct egd_jw *w, double v);
/* Append the members of a flat object (integers and reals, plain keys) as
 * {"k":v,...}; anything else fails the writer. */
void egd_jw_flat_object(struct egd_jw *w, const json_t *o);

/* The text, malloc'ed (ownership moves to the caller), or NULL when the
 * writer failed. */
char *egd_jw_take(struct egd_jw *w);

/* 15 when %.15g reproduces @v exactly, else 17: egd_json_dumps()'s rule,
 * which takes the smaller for an object only when all its reals allow it. */
int egd_json_real_digits(double v);

/* A real formatted once at 15 digits for the rule above and kept, so that
 * writing it at 15 digits does not format it again. */
struct egd_jreal {
	double v;
	int digits; /* egd_json_real_digits(v) */
	char s15[32];
};
void egd_jreal_prepare(struct egd_jreal *r, double v);
/* As egd_jw_real(w, r->v). */
void egd_jw_real_prepared(struct egd_jw *w, const struct egd_jreal *r);

#endif /* EGD_PROXY_JSONW_H */
