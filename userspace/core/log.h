/* SPDX-License-Identifier: MIT */
/*
 * Two outputs with two audiences. Diagnostics (egd_err/egd_warn/egd_info)
 * are plain text on stderr for the operator. Decisions are one JSON object
 * per line on the audit stream (stdout unless redirected), for machines.
 */
#ifndef EGD_LOG_H
#define EGD_LOG_H

#include <stdio.h>

enum egd_log_level { EGD_LOG_ERR, EGD_LOG_WARN, EGD_LOG_INFO, EGD_LOG_DEBUG };

void egd_log_set_level(enum egd_log_level level);
void egd_log(enum egd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define egd_err(...) egd_log(EGD_LOG_ERR, __VA_ARGS__)
#define egd_warn(...) egd_log(EGD_LOG_WARN, __VA_ARGS__)
#define egd_info(...) egd_log(EGD_LOG_INFO, __VA_ARGS__)
#define egd_debug(...) egd_log(EGD_LOG_DEBUG, __VA_ARGS__)

/* The audit stream. Defaults to stdout; line-buffered so that every decision
 * is visible as soon as it is made. */
void egd_audit_set_stream(FILE *f);
FILE *egd_audit_stream(void);

/* Wall clock as RFC 3339 with milliseconds, UTC, into @buf (>= 32 bytes). */
void egd_timestamp(char *buf, size_t len);

/* Monotonic milliseconds. */
unsigned long long egd_now_ms(void);

#endif
