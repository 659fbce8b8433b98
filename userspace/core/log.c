/* SPDX-License-Identifier: MIT */
/* Diagnostics on stderr and the JSON audit stream; see log.h. */
#include "core/log.h"

#include <stdarg.h>
#include <time.h>

static enum egd_log_level log_level = EGD_LOG_INFO;
static FILE *audit;

void egd_log_set_level(enum egd_log_level level)
{
	log_level = level;
}

void egd_log(enum egd_log_level level, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };
	char ts[40];
	va_list ap;

	if (level > log_level)
		return;
	egd_timestamp(ts, sizeof(ts));
	/* One line per message, whichever worker thread logs at once. */
	flockfile(stderr);
	fprintf(stderr, "%s egressd %s: ", ts, names[level]);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	funlockfile(stderr);
}

void egd_audit_set_stream(FILE *f)
{
	audit = f;
	setvbuf(f, NULL, _IOLBF, 0);
}

FILE *egd_audit_stream(void)
{
	if (!audit)
		egd_audit_set_stream(stdout);
	return audit;
}

void egd_timestamp(char *buf, size_t len)
{
	struct timespec ts;
	struct tm tm;
	size_t n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

unsigned long long egd_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
