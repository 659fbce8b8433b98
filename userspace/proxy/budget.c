/* SPDX-License-Identifier: MIT */
/*
 * The ledger and its files (see budget.h). Floating-point dollars, as in the
 * reference proxy and in OpenRouter's own usage.cost; the in-flight sum is
 * reset to exactly zero whenever nothing is in flight so rounding never
 * accumulates across a long run.
 */
#include "proxy/budget.h"
#include "proxy/jsonw.h"
#include "proxy/proxy_config.h"
#include "core/fsutil.h"
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int egd_ledger_init(struct egd_ledger *l, double cap_usd, double reserve_usd)
{
	memset(l, 0, sizeof(*l));
	l->cap_usd = cap_usd;
	l->reserve_usd = reserve_usd;
	l->models = json_object();
	return l->models ? 0 : -ENOMEM;
}

void egd_ledger_fini(struct egd_ledger *l)
{
	json_decref(l->models);
	l->models = NULL;
}

int egd_ledger_can_admit(const struct egd_ledger *l)
{
	return l->spent_usd + l->reserved_usd < l->cap_usd;
}

int egd_ledger_admit(struct egd_ledger *l, double *reservation_usd)
{
	if (!egd_ledger_can_admit(l))
		return -EDQUOT;
	l->reserved_usd += l->reserve_usd;
	l->in_flight++;
	*reservation_usd = l->reserve_usd;
	return 0;
}

void egd_ledger_release(struct egd_ledger *l, double reservation_usd)
{
	if (l->in_flight)
		l->in_flight--;
	l->reserved_usd -= reservation_usd;
	if (!l->in_flight || l->reserved_usd < 0)
		l->reserved_usd = 0;
}

static int add_int(json_t *o, const char *key, int64_t n)
{
	json_int_t v = json_integer_value(json_object_get(o, key));

	return json_object_set_new(o, key, json_integer(v + n));
}

/* The key @model is counted under in @models: its own while the bounds
 * allow (budget.h), else EGD_LEDGER_MODEL_OTHER. */
static const char *model_key(const json_t *models, const char *model)
{
	if (!model || !*model)
		model = "unknown";
	if (strnlen(model, EGD_LEDGER_MODEL_NAME_MAX_BYTES + 1) > EGD_LEDGER_MODEL_NAME_MAX_BYTES)
		return EGD_LEDGER_MODEL_OTHER;
	if (json_object_get(models, model) || json_object_size(models) < EGD_LEDGER_MODELS_MAX)
		return model;
	return EGD_LEDGER_MODEL_OTHER;
}

/* Add counts to the entry of @model in @models, created when missing. */
static int count_model(json_t *models, const char *model, int64_t requests, double cost, int64_t pt,
		       int64_t ct)
{
	const char *key = model_key(models, model);
	json_t *m = json_object_get(models, key);

	if (!json_is_object(m)) {
		m = json_object();
		if (!m || json_object_set_new(models, key, m))
			return -ENOMEM;
	}
	if (add_int(m, "requests", requests) || add_int(m, "prompt_tokens", pt) ||
	    add_int(m, "completion_tokens", ct) ||
	    json_object_set_new(
		    m, "cost_usd",
		    json_real(json_number_value(json_object_get(m, "cost_usd")) + cost)))
		return -ENOMEM;
	return 0;
}

int egd_ledger_settle(struct egd_ledger *l, double reservation_usd, const char *model,
		      double cost_usd, int64_t prompt_tokens, int64_t completion_tokens)
{
	/* A negative or NaN cost would hand budget back: never. */
	if (!(cost_usd >= 0) || !isfinite(cost_usd))
		cost_usd = 0;
	if (prompt_tokens < 0)
		prompt_tokens = 0;
	if (completion_tokens < 0)
		completion_tokens = 0;
	egd_ledger_release(l, reservation_usd);
	l->spent_usd += cost_usd;
	l->requests++;
	l->prompt_tokens += (uint64_t)prompt_tokens;
	l->completion_tokens += (uint64_t)completion_tokens;
	/* Per-model stats are informational; the totals above are what the
	 * budget relies on, so a failure here is not an accounting error. */
	count_model(l->models, model, 1, cost_usd, prompt_tokens, completion_tokens);
	return l->spent_usd > l->cap_usd;
}

double egd_ledger_remaining(const struct egd_ledger *l)
{
	double r = l->cap_usd - l->spent_usd;

	return r > 0 ? r : 0;
}

double egd_ledger_charge(const struct egd_usage *u, int status, double reservation_usd)
{
	if (u && u->has_cost)
		return u->cost_usd;
	if (status >= 200 && status < 300)
		return reservation_usd;
	return 0;
}

char *egd_ledger_usage_text(const struct egd_ledger *l, const char *run_id)
{
	double remaining = egd_ledger_remaining(l);
	const char *key;
	struct egd_jw w;
	json_t *m, *v, *o;
	char *s;
	int digits = egd_json_real_digits(l->spent_usd) > 15 ||
				     egd_json_real_digits(l->cap_usd) > 15 ||
				     egd_json_real_digits(remaining) > 15
			     ? 17
			     : 15;

	/* egd_json_dumps() writes every real with 17 digits if one needs it. */
	json_object_foreach(l->models, key, m) {
		const char *k2;

		json_object_foreach(m, k2, v)
			if (json_is_real(v) && egd_json_real_digits(json_real_value(v)) > 15)
				digits = 17;
	}
	egd_jw_init(&w, digits);
	egd_jw_raw(&w, "{\"evaluation_run_id\":", 21);
	egd_jw_str(&w, run_id ? run_id : EGD_EVALUATION_RUN_ID_DEFAULT);
	egd_jw_raw(&w, ",\"total_cost_usd\":", 18);
	egd_jw_real(&w, l->spent_usd);
	egd_jw_raw(&w, ",\"max_cost_usd\":", 16);
	egd_jw_real(&w, l->cap_usd);
	egd_jw_raw(&w, ",\"budget_remaining_usd\":", 24);
	egd_jw_real(&w, remaining);
	egd_jw_raw(&w, ",\"requests\":", 12);
	egd_jw_int(&w, (long long)l->requests);
	egd_jw_raw(&w, ",\"prompt_tokens\":", 17);
	egd_jw_int(&w, (long long)l->prompt_tokens);
	egd_jw_raw(&w, ",\"completion_tokens\":", 21);
	egd_jw_int(&w, (long long)l->completion_tokens);
	egd_jw_raw(&w, ",\"models\":{", 11);
	json_object_foreach(l->models, key, m) {
		if (w.len && w.p[w.len - 1] != '{')
			egd_jw_raw(&w, ",", 1);
		egd_jw_str(&w, key);
		egd_jw_raw(&w, ":", 1);
		egd_jw_flat_object(&w, m);
	}
	egd_jw_raw(&w, "}}", 2);
	s = egd_jw_take(&w);
	if (s)
		return s;
	/* A name jansson must escape, or a model entry restored from a file
	 * in another shape. */
	o = egd_ledger_usage_json(l, run_id);
	s = o ? egd_json_dumps(o) : NULL;
	json_decref(o);
	return s;
}

json_t *egd_ledger_usage_json(const struct egd_ledger *l, const char *run_id)
{
	return json_pack("{s:s, s:f, s:f, s:f, s:I, s:I, s:I, s:O}", "evaluation_run_id",
			 run_id ? run_id : EGD_EVALUATION_RUN_ID_DEFAULT, "total_cost_usd",
			 l->spent_usd, "max_cost_usd", l->cap_usd, "budget_remaining_usd",
			 egd_ledger_remaining(l), "requests", (json_int_t)l->requests,
			 "prompt_tokens", (json_int_t)l->prompt_tokens, "completion_tokens",
			 (json_int_t)l->completion_tokens, "models", l->models);
}

static int get_count(const json_t *o, const char *key, uint64_t *out, char *err, size_t errlen)
{
	const json_t *v = json_object_get(o, key);

	if (!json_is_integer(v) || json_integer_value(v) < 0) {
		snprintf(err, errlen, "\"%s\" missing or not a non-negative integer", key);
		return -EBADMSG;
	}
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

/* A copy of the "models" of a usage file, within the bounds: a file written
 * before them (or by hand) may hold more, and what does not fit is added to
 * EGD_LEDGER_MODEL_OTHER. NULL when out of memory. */
static json_t *restore_models(const json_t *models)
{
	json_t *copy = json_object(), *m;
	const char *key;

	if (!copy)
		return NULL;
	json_object_foreach((json_t *)models, key, m) {
		const char *k = model_key(copy, key);
		json_t *dup;

		if (!strcmp(k, key) && !json_object_get(copy, key)) {
			dup = json_deep_copy(m);
			if (!dup || json_object_set_new(copy, key, dup))
				goto err_free;
			continue;
		}
		if (json_is_object(m) &&
		    count_model(copy, k, json_integer_value(json_object_get(m, "requests")),
				json_number_value(json_object_get(m, "cost_usd")),
				json_integer_value(json_object_get(m, "prompt_tokens")),
				json_integer_value(json_object_get(m, "completion_tokens"))))
			goto err_free;
	}
	return copy;

err_free:
	json_decref(copy);
	return NULL;
}

int egd_ledger_restore(struct egd_ledger *l, const json_t *usage, char *err, size_t errlen)
{
	const json_t *cost = json_object_get(usage, "total_cost_usd");
	const json_t *models = json_object_get(usage, "models");
	uint64_t req, pt, ct;
	json_t *copy;

	if (!json_is_object(usage)) {
		snprintf(err, errlen, "not a JSON object");
		return -EBADMSG;
	}
	if (!json_is_number(cost) || !isfinite(json_number_value(cost)) ||
	    json_number_value(cost) < 0) {
		snprintf(err, errlen, "\"total_cost_usd\" missing or not a non-negative number");
		return -EBADMSG;
	}
	if (get_count(usage, "requests", &req, err, errlen) ||
	    get_count(usage, "prompt_tokens", &pt, err, errlen) ||
	    get_count(usage, "completion_tokens", &ct, err, errlen))
		return -EBADMSG;
	if (!json_is_object(models)) {
		snprintf(err, errlen, "\"models\" missing or not an object");
		return -EBADMSG;
	}
	copy = restore_models(models);
	if (!copy) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	json_decref(l->models);
	l->models = copy;
	l->spent_usd = json_number_value(cost);
	l->requests = req;
	l->prompt_tokens = pt;
	l->completion_tokens = ct;
	return 0;
}

/* ---- locked ledger ------------------------------------------------------ */

struct egd_budget {
	pthread_mutex_t mu;
	struct egd_ledger l;
	uint64_t version; /* bumped by every change the usage file shows */
	char *run_id;
	char *usage_path;      /* NULL without a data dir */
	char *inferences_path; /* NULL without a data dir */
	int inferences_fd;     /* O_APPEND, opened on first use; -1 */

	/* Usage file writers from several threads: the newest snapshot must
	 * be the one left in place. */
	pthread_mutex_t file_mu;
	uint64_t written_version; /* under file_mu */

	/* Group commit: the syncer thread fsyncs, in one go, whatever was
	 * written since its last round (under mu). */
	pthread_t syncer;
	int syncer_started;
	pthread_cond_t work_cv; /* the syncer waits for work */
	pthread_cond_t done_cv; /* egd_budget_flush() waits for a round */
	int dirty_usage, dirty_inferences;
	int syncing;  /* a round is in progress */
	int idle;     /* the syncer sleeps until signalled */
	int flushers; /* egd_budget_flush() callers waiting */
	int stop;
	int sync_err; /* the last round's error, logged once */
};

static char *join_path(const char *dir, const char *name)
{
	char *s;

	if (asprintf(&s, "%s/%s", dir, name) < 0)
		return NULL;
	return s;
}

struct egd_budget *egd_budget_new(double cap_usd, double reserve_usd, const char *run_id,
				  const char *data_dir)
{
	struct egd_budget *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	if (egd_ledger_init(&b->l, cap_usd, reserve_usd))
		goto err_free;
	b->run_id = strdup(run_id ? run_id : EGD_EVALUATION_RUN_ID_DEFAULT);
	if (!b->run_id)
		goto err_fini;
	if (data_dir) {
		b->usage_path = join_path(data_dir, EGD_USAGE_FILE_NAME);
		b->inferences_path = join_path(data_dir, EGD_INFERENCES_FILE_NAME);
		if (!b->usage_path || !b->inferences_path)
			goto err_paths;
	}
	b->inferences_fd = -1;
	pthread_mutex_init(&b->mu, NULL);
	pthread_mutex_init(&b->file_mu, NULL);
	pthread_cond_init(&b->work_cv, NULL);
	pthread_cond_init(&b->done_cv, NULL);
	return b;

err_paths:
	free(b->usage_path);
	free(b->inferences_path);
	free(b->run_id);
err_fini:
	egd_ledger_fini(&b->l);
err_free:
	free(b);
	errno = ENOMEM;
	return NULL;
}

void egd_budget_destroy(struct egd_budget *b)
{
	if (!b)
		return;
	if (egd_budget_flush(b))
		egd_warn("budget: the last usage records could not be written");
	if (b->syncer_started) {
		pthread_mutex_lock(&b->mu);
		b->stop = 1;
		pthread_cond_signal(&b->work_cv);
		pthread_mutex_unlock(&b->mu);
		pthread_join(b->syncer, NULL);
	}
	if (b->inferences_fd >= 0)
		close(b->inferences_fd);
	pthread_cond_destroy(&b->work_cv);
	pthread_cond_destroy(&b->done_cv);
	pthread_mutex_destroy(&b->file_mu);
	pthread_mutex_destroy(&b->mu);
	egd_ledger_fini(&b->l);
	free(b->run_id);
	free(b->usage_path);
	free(b->inferences_path);
	free(b);
}

int egd_budget_admit(struct egd_budget *b, double *reservation_usd)
{
	int err;

	pthread_mutex_lock(&b->mu);
	err = egd_ledger_admit(&b->l, reservation_usd);
	pthread_mutex_unlock(&b->mu);
	return err;
}

void egd_budget_release(struct egd_budget *b, double reservation_usd)
{
	pthread_mutex_lock(&b->mu);
	egd_ledger_release(&b->l, reservation_usd);
	pthread_mutex_unlock(&b->mu);
}

int egd_budget_settle(struct egd_budget *b, double reservation_usd, const char *model,
		      double cost_usd, int64_t prompt_tokens, int64_t completion_tokens,
		      struct egd_ledger *after)
{
	int over;

	pthread_mutex_lock(&b->mu);
	over = egd_ledger_settle(&b->l, reservation_usd, model, cost_usd, prompt_tokens,
				 completion_tokens);
	b->version++;
	if (after) {
		*after = b->l;
		after->models = NULL;
	}
	pthread_mutex_unlock(&b->mu);
	return over;
}

void egd_budget_snapshot(struct egd_budget *b, struct egd_ledger *out)
{
	pthread_mutex_lock(&b->mu);
	*out = b->l;
	out->models = NULL;
	pthread_mutex_unlock(&b->mu);
}

char *egd_budget_usage_dump(struct egd_budget *b)
{
	char *s;

	pthread_mutex_lock(&b->mu);
	s = egd_ledger_usage_text(&b->l, b->run_id);
	pthread_mutex_unlock(&b->mu);
	if (!s)
		errno = ENOMEM;
	return s;
}

int egd_usage_file_read(const char *path, json_t **out, char *err, size_t errlen)
{
	json_error_t jerr;
	struct stat st;
	char *buf;
	ssize_t n;
	int fd, ret;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return ret;
	}
	if (fstat(fd, &st) || st.st_size > EGD_USAGE_FILE_MAX_BYTES) {
		snprintf(err, errlen, "%s: unreadable or larger than %d bytes", path,
			 EGD_USAGE_FILE_MAX_BYTES);
		close(fd);
		return -EFBIG;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	n = pread(fd, buf, (size_t)st.st_size, 0);
	ret = n < 0 ? -errno : 0;
	close(fd);
	if (ret || n != st.st_size) {
		snprintf(err, errlen, "%s: short read", path);
		free(buf);
		return ret ? ret : -EIO;
	}
	*out = json_loadb(buf, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
	free(buf);
	if (!*out) {
		snprintf(err, errlen, "%s: corrupt JSON at line %d: %s", path, jerr.line,
			 jerr.text);
		return -EBADMSG;
	}
	return 0;
}

int egd_budget_load(struct egd_budget *b, char *err, size_t errlen)
{
	char why[256];
	json_t *o;
	int ret;

	if (!b->usage_path)
		return 0;
	ret = egd_usage_file_read(b->usage_path, &o, err, errlen);
	if (ret == -ENOENT)
		return 0;
	if (ret)
		return ret;
	pthread_mutex_lock(&b->mu);
	ret = egd_ledger_restore(&b->l, o, why, sizeof(why));
	b->version++;
	pthread_mutex_unlock(&b->mu);
	json_decref(o);
	if (ret)
		snprintf(err, errlen, "%s: %s", b->usage_path, why);
	return ret;
}

int egd_budget_save(struct egd_budget *b)
{
	char *s;
	int err;

	if (!b->usage_path)
		return 0;
	s = egd_budget_usage_dump(b);
	if (!s)
		return -ENOMEM;
	/* Saves from two threads may interleave; each file written is a
	 * complete snapshot, and the later rename wins. */
	err = egd_write_file_atomic(b->usage_path, s, strlen(s), 0644);
	free(s);
	return err;
}

void egd_iso_time(const struct timespec *ts, char out[EGD_ISO_TIME_MAX_BYTES])
{
	unsigned int usec = (unsigned int)((ts->tv_nsec / 1000) % 1000000);
	time_t t = ts->tv_sec;
	struct tm tm;
	size_t n;

	gmtime_r(&t, &tm);
	n = strftime(out, EGD_ISO_TIME_MAX_BYTES, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + n, EGD_ISO_TIME_MAX_BYTES - n, ".%06u+00:00", usec);
}

static json_t *str_or_null(const char *s)
{
	return s && *s ? json_string(s) : json_null();
}

static const char *nonempty(const char *s)
{
	return s && *s ? s : NULL;
}

/* The line egd_inference_line_json() writes, from the fields; NULL when a
 * string needs jansson's escaping. */
static char *inference_line_fast(const struct egd_inference *r, const struct egd_usage *u,
				 const char *error, const char *ts)
{
	struct egd_jreal total, remaining, cost;
	struct egd_jw w;

	egd_jreal_prepare(&total, r->total_cost_usd);
	egd_jreal_prepare(&remaining, r->budget_remaining_usd);
	egd_jreal_prepare(&cost, r->cost_usd);
	egd_jw_init(&w, total.digits > 15 || remaining.digits > 15 || cost.digits > 15 ? 17 : 15);
	egd_jw_raw(&w, "{\"endpoint\":", 12);
	egd_jw_str(&w, r->endpoint ? r->endpoint : "");
	egd_jw_raw(&w, ",\"model\":", 9);
	egd_jw_str_or_null(&w, nonempty(r->model));
	egd_jw_raw(&w, ",\"status_code\":", 15);
	egd_jw_int(&w, r->status_code);
	egd_jw_raw(&w, ",\"total_cost_usd\":", 18);
	egd_jw_real_prepared(&w, &total);
	egd_jw_raw(&w, ",\"budget_remaining_usd\":", 24);
	egd_jw_real_prepared(&w, &remaining);
	egd_jw_raw(&w, ",\"timestamp\":", 13);
	egd_jw_str(&w, ts);
	egd_jw_raw(&w, ",\"routed_model\":", 16);
	egd_jw_str_or_null(&w, nonempty(u->model));
	egd_jw_raw(&w, ",\"provider\":", 12);
	egd_jw_str_or_null(&w, nonempty(u->provider));
	egd_jw_raw(&w, ",\"prompt_tokens\":", 17);
	egd_jw_int(&w, u->prompt_tokens);
	egd_jw_raw(&w, ",\"completion_tokens\":", 21);
	egd_jw_int(&w, u->completion_tokens);
	egd_jw_raw(&w, ",\"cost_usd\":", 12);
	egd_jw_real_prepared(&w, &cost);
	egd_jw_raw(&w, ",\"latency_ms\":", 14);
	egd_jw_int(&w, r->latency_ms);
	egd_jw_raw(&w, ",\"generation_id\":", 17);
	egd_jw_str_or_null(&w, nonempty(u->generation_id));
	egd_jw_raw(&w, ",\"error\":", 9);
	egd_jw_str_or_null(&w, nonempty(error));
	egd_jw_raw(&w, "}\n", 2);
	return egd_jw_take(&w);
}

char *egd_inference_line(const struct egd_inference *r)
{
	static const struct egd_usage none;
	const struct egd_usage *u = r->usage ? r->usage : &none;
	const char *error = r->error ? r->error : (u->has_error ? u->error : NULL);
	char ts[EGD_ISO_TIME_MAX_BYTES], *line;

	egd_iso_time(&r->timestamp, ts);
	line = inference_line_fast(r, u, error, ts);
	return line ? line : egd_inference_line_json(r);
}

char *egd_inference_line_json(const struct egd_inference *r)
{
	static const struct egd_usage none;
	const struct egd_usage *u = r->usage ? r->usage : &none;
	const char *error = r->error ? r->error : (u->has_error ? u->error : NULL);
	char ts[EGD_ISO_TIME_MAX_BYTES], *s, *line = NULL;
	json_t *o;

	egd_iso_time(&r->timestamp, ts);
	o = json_pack("{s:s, s:o, s:i, s:f, s:f, s:s, s:o, s:o, s:I, s:I, s:f, s:I, s:o, s:o}",
		      "endpoint", r->endpoint ? r->endpoint : "", "model", str_or_null(r->model),
		      "status_code", r->status_code, "total_cost_usd", r->total_cost_usd,
		      "budget_remaining_usd", r->budget_remaining_usd, "timestamp", ts,
		      "routed_model", str_or_null(u->model), "provider",
		      str_or_null(u->provider), "prompt_tokens", (json_int_t)u->prompt_tokens,
		      "completion_tokens", (json_int_t)u->completion_tokens, "cost_usd",
		      r->cost_usd, "latency_ms", (json_int_t)r->latency_ms, "generation_id",
		      str_or_null(u->generation_id), "error", str_or_null(error));
	if (!o) {
		errno = EINVAL;
		return NULL;
	}
	s = egd_json_dumps(o);
	json_decref(o);
	if (s && asprintf(&line, "%s\n", s) < 0)
		line = NULL;
	free(s);
	if (!line)
		errno = ENOMEM;
	return line;
}

/* ---- group commit -------------------------------------------------------- */

static int sync_files(struct egd_budget *b, int usage, int inferences)
{
	int fd = __atomic_load_n(&b->inferences_fd, __ATOMIC_ACQUIRE), err = 0;

	if (inferences && fd >= 0 && fdatasync(fd))
		err = -errno;
	if (usage) {
		int e = egd_fsync_path(b->usage_path);

		err = err ? err : e;
	}
	return err;
}

/* The syncer: one fsync per file for everything written since its last
 * round, so N requests finishing during one fsync share the next. */
static void *syncer_main(void *arg)
{
	struct egd_budget *b = arg;
	struct timespec next = { 0 };

	pthread_mutex_lock(&b->mu);
	for (;;) {
		int usage, inferences, err = 0;

		/* At most one round per interval, so a busy proxy on a fast
		 * disk does not wake this thread for every request; a flush
		 * or the end does not wait. */
		while (!b->stop && !b->flushers &&
		       pthread_cond_timedwait(&b->work_cv, &b->mu, &next) != ETIMEDOUT)
			;
		while (!b->stop && !b->dirty_usage && !b->dirty_inferences) {
			b->idle = 1;
			pthread_cond_wait(&b->work_cv, &b->mu);
			b->idle = 0;
		}
		usage = b->dirty_usage;
		inferences = b->dirty_inferences;
		if (!usage && !inferences)
			break; /* stopping, nothing left */
		b->dirty_usage = b->dirty_inferences = 0;
		b->syncing = 1;
		pthread_mutex_unlock(&b->mu);
		clock_gettime(CLOCK_REALTIME, &next);
		next.tv_nsec += EGD_BUDGET_SYNC_INTERVAL_MS * 1000000L;
		if (next.tv_nsec >= 1000000000L) {
			next.tv_sec++;
			next.tv_nsec -= 1000000000L;
		}
		err = sync_files(b, usage, inferences);
		pthread_mutex_lock(&b->mu);
		b->syncing = 0;
		if (err && err != b->sync_err)
			egd_warn("budget: cannot sync the usage files in %s: %s",
				 b->usage_path, strerror(-err));
		b->sync_err = err;
		pthread_cond_broadcast(&b->done_cv);
	}
	pthread_mutex_unlock(&b->mu);
	return NULL;
}

/* Under mu: the files changed; start the syncer on first use. */
static void dirty_locked(struct egd_budget *b, int usage, int inferences)
{
	b->dirty_usage |= usage;
	b->dirty_inferences |= inferences;
	if (!b->syncer_started && !b->stop) {
		if (pthread_create(&b->syncer, NULL, syncer_main, b) == 0)
			b->syncer_started = 1;
		else
			egd_warn("budget: no syncer thread; the usage files are fsync'ed "
				 "only by egd_budget_flush() (at exit)");
	}
	/* A busy syncer looks again before it sleeps. */
	if (b->idle) {
		b->idle = 0;
		pthread_cond_signal(&b->work_cv);
	}
}

/* One write on O_APPEND: lines from several threads never interleave. */
static int append_lines(struct egd_budget *b, const char *lines, size_t len)
{
	/* Opened once, by the first commit; read without the lock after. */
	int fd = __atomic_load_n(&b->inferences_fd, __ATOMIC_ACQUIRE);

	if (fd < 0) {
		pthread_mutex_lock(&b->mu);
		fd = b->inferences_fd;
		if (fd < 0) {
			fd = open(b->inferences_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
				  0644);
			if (fd < 0)
				fd = -errno;
			else
				__atomic_store_n(&b->inferences_fd, fd, __ATOMIC_RELEASE);
		}
		pthread_mutex_unlock(&b->mu);
		if (fd < 0)
			return fd;
	}
	return egd_write_all(fd, lines, len);
}

/* Put the newest state in the usage file unless another thread already
 * did; 1 when this call wrote it, 0 when it had no need, or -errno. */
static int write_usage(struct egd_budget *b)
{
	uint64_t version;
	char *s = NULL;
	int err = 0;

	pthread_mutex_lock(&b->file_mu);
	pthread_mutex_lock(&b->mu);
	version = b->version;
	if (version != b->written_version) {
		s = egd_ledger_usage_text(&b->l, b->run_id);
		if (!s)
			err = -ENOMEM;
	}
	pthread_mutex_unlock(&b->mu);
	if (s) {
		err = egd_write_file_atomic_sync(b->usage_path, s, strlen(s), 0644, 0);
		if (!err)
			b->written_version = version;
	}
	pthread_mutex_unlock(&b->file_mu);
	free(s);
	return err ? err : s != NULL;
}

int egd_budget_commit(struct egd_budget *b, const char *lines, size_t len)
{
	int err = 0, wrote = 0, ret;

	if (len && b->inferences_path)
		err = append_lines(b, lines, len);
	if (b->usage_path) {
		ret = write_usage(b);
		if (ret < 0)
			err = err ? err : ret;
		else
			wrote = ret;
	}
	if ((len && b->inferences_path) || wrote) {
		pthread_mutex_lock(&b->mu);
		dirty_locked(b, wrote, len && b->inferences_path);
		pthread_mutex_unlock(&b->mu);
	}
	return err;
}

int egd_budget_flush(struct egd_budget *b)
{
	int err;

	pthread_mutex_lock(&b->mu);
	if (!b->syncer_started) {
		/* Never started (nothing written), or could not be: sync here. */
		int usage = b->dirty_usage, inferences = b->dirty_inferences;

		b->dirty_usage = b->dirty_inferences = 0;
		pthread_mutex_unlock(&b->mu);
		return sync_files(b, usage, inferences);
	}
	/* Wait for a round that starts after everything written so far. */
	b->flushers++;
	pthread_cond_signal(&b->work_cv);
	while (b->dirty_usage || b->dirty_inferences || b->syncing)
		pthread_cond_wait(&b->done_cv, &b->mu);
	b->flushers--;
	err = b->sync_err;
	pthread_mutex_unlock(&b->mu);
	return err;
}
