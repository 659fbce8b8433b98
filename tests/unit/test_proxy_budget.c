/* SPDX-License-Identifier: MIT */
/*
 * The budget ledger: its arithmetic, the concurrency invariant (admitted
 * spend passes the cap by at most one reservation), and the two files it
 * shares with the reference proxy.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "proxy/budget.h"
#include "proxy/jsonw.h"
#include "proxy/usage.h"
#include "core/fsutil.h"

#define EPS 1e-12
#define CONCURRENT_REQUESTS 200

static void test_admit_reserves_and_settle_charges_cost(void **state)
{
	struct egd_ledger l;
	double r;

	(void)state;
	assert_int_equal(egd_ledger_init(&l, 1.0, 0.01), 0);
	assert_int_equal(egd_ledger_admit(&l, &r), 0);
	assert_true(r == 0.01);
	assert_true(l.reserved_usd == 0.01);
	assert_int_equal(l.in_flight, 1);
	assert_int_equal(egd_ledger_settle(&l, r, "m", 0.25, 100, 20), 0);
	assert_true(l.reserved_usd == 0);
	assert_true(l.spent_usd == 0.25);
	assert_true(egd_ledger_remaining(&l) == 0.75);
	assert_int_equal(l.requests, 1);
	assert_int_equal(l.prompt_tokens, 100);
	assert_int_equal(l.completion_tokens, 20);
	egd_ledger_fini(&l);
}

static void test_admission_refused_at_cap(void **state)
{
	struct egd_ledger l;
	double r;

	(void)state;
	egd_ledger_init(&l, 0.02, 0.01);
	assert_int_equal(egd_ledger_admit(&l, &r), 0);
	assert_int_equal(egd_ledger_admit(&l, &r), 0);
	/* spent + reserved == cap: no more. */
	assert_int_equal(egd_ledger_admit(&l, &r), -EDQUOT);
	egd_ledger_fini(&l);
}

static void test_release_charges_nothing(void **state)
{
	struct egd_ledger l;
	double r;

	(void)state;
	egd_ledger_init(&l, 1.0, 0.01);
	egd_ledger_admit(&l, &r);
	egd_ledger_release(&l, r);
	assert_int_equal(l.in_flight, 0);
	assert_true(l.reserved_usd == 0);
	assert_true(l.spent_usd == 0);
	assert_int_equal(l.requests, 0);
	egd_ledger_fini(&l);
}

static void test_negative_or_nan_cost_never_credits(void **state)
{
	struct egd_ledger l;
	double r;

	(void)state;
	egd_ledger_init(&l, 1.0, 0.01);
	egd_ledger_admit(&l, &r);
	egd_ledger_settle(&l, r, "m", -5.0, -1, -1);
	egd_ledger_admit(&l, &r);
	egd_ledger_settle(&l, r, "m", 0.0 / 0.0, 0, 0);
	assert_true(l.spent_usd == 0);
	assert_int_equal(l.prompt_tokens, 0);
	egd_ledger_fini(&l);
}

static void test_cap_1e10_cost_0001_is_over(void **state)
{
	struct egd_ledger l;
	double r;

	(void)state;
	egd_ledger_init(&l, 1e-10, 0.01);
	assert_int_equal(egd_ledger_admit(&l, &r), 0);
	assert_int_equal(egd_ledger_settle(&l, r, "m", 0.001, 1, 1), 1);
	assert_int_equal(egd_ledger_admit(&l, &r), -EDQUOT);
	assert_true(egd_ledger_remaining(&l) == 0);
	egd_ledger_fini(&l);
}

static void test_charge_rule(void **state)
{
	struct egd_usage u = { 0 };

	(void)state;
	assert_true(egd_ledger_charge(NULL, 200, 0.01) == 0.01);
	assert_true(egd_ledger_charge(&u, 200, 0.01) == 0.01);
	assert_true(egd_ledger_charge(&u, 500, 0.01) == 0);
	u.has_cost = 1;
	u.cost_usd = 0.003;
	assert_true(egd_ledger_charge(&u, 200, 0.01) == 0.003);
	assert_true(egd_ledger_charge(&u, 400, 0.01) == 0.003);
}

static void test_per_model_stats(void **state)
{
	struct egd_ledger l;
	json_t *m;
	double r;

	(void)state;
	egd_ledger_init(&l, 10, 0.01);
	egd_ledger_admit(&l, &r);
	egd_ledger_settle(&l, r, "a/b", 0.5, 10, 1);
	egd_ledger_admit(&l, &r);
	egd_ledger_settle(&l, r, "a/b", 0.25, 5, 2);
	egd_ledger_admit(&l, &r);
	egd_ledger_settle(&l, r, NULL, 0, 0, 0);
	m = json_object_get(l.models, "a/b");
	assert_int_equal(json_integer_value(json_object_get(m, "requests")), 2);
	assert_true(json_real_value(json_object_get(m, "cost_usd")) == 0.75);
	assert_int_equal(json_integer_value(json_object_get(m, "prompt_tokens")), 15);
	assert_int_equal(json_integer_value(json_object_get(m, "completion_tokens")), 3);
	assert_non_null(json_object_get(l.models, "unknown"));
	egd_ledger_fini(&l);
}

struct race {
	struct egd_budget *b;
	pthread_barrier_t *start;
	double reservation;
	int admitted;
};

static void *admit_one(void *arg)
{
	struct race *r = arg;

	pthread_barrier_wait(r->start);
	r->admitted = !egd_budget_admit(r->b, &r->reservation);
	return NULL;
}

/* 200 requests at once against a budget with room for one more: at most one
 * reservation's worth beyond the cap is ever admitted. */
static void run_race(double cap, double spent_before, double reserve)
{
	pthread_t th[CONCURRENT_REQUESTS];
	struct race r[CONCURRENT_REQUESTS];
	pthread_barrier_t start;
	struct egd_budget *b = egd_budget_new(cap, reserve, "run", NULL);
	struct egd_ledger snap;
	double admitted_sum = 0, res;
	int admitted = 0;

	assert_non_null(b);
	if (spent_before > 0) {
		assert_int_equal(egd_budget_admit(b, &res), 0);
		egd_budget_settle(b, res, "m", spent_before, 0, 0, NULL);
	}
	pthread_barrier_init(&start, NULL, CONCURRENT_REQUESTS);
	for (int i = 0; i < CONCURRENT_REQUESTS; i++) {
		r[i] = (struct race){ .b = b, .start = &start };
		assert_int_equal(pthread_create(&th[i], NULL, admit_one, &r[i]), 0);
	}
	for (int i = 0; i < CONCURRENT_REQUESTS; i++) {
		pthread_join(th[i], NULL);
		if (r[i].admitted) {
			admitted++;
			admitted_sum += r[i].reservation;
		}
	}
	pthread_barrier_destroy(&start);
	assert_true(admitted >= 1);
	assert_true(spent_before + admitted_sum <= cap + reserve + EPS);
	/* Every admitted request then costs exactly its reservation. */
	for (int i = 0; i < CONCURRENT_REQUESTS; i++)
		if (r[i].admitted)
			egd_budget_settle(b, r[i].reservation, "m", r[i].reservation, 1, 1, NULL);
	egd_budget_snapshot(b, &snap);
	assert_true(snap.spent_usd <= cap + reserve + EPS);
	assert_int_equal(snap.in_flight, 0);
	assert_true(snap.reserved_usd == 0);
	egd_budget_destroy(b);
}

static void test_concurrent_admissions_at_cap_one_request(void **state)
{
	(void)state;
	run_race(1.0, 0.995, 0.01);
}

static void test_concurrent_admissions_from_zero(void **state)
{
	(void)state;
	run_race(1.0, 0, 0.01);
}

static void test_usage_dump_has_reference_keys(void **state)
{
	static const char *const keys[] = {
		"evaluation_run_id", "total_cost_usd", "max_cost_usd", "budget_remaining_usd",
		"requests",          "prompt_tokens",  "completion_tokens", "models",
	};
	struct egd_budget *b = egd_budget_new(2.0, 0.01, "eval-42", NULL);
	json_t *o;
	char *s;
	double r;

	(void)state;
	egd_budget_admit(b, &r);
	egd_budget_settle(b, r, "a/b", 0.5, 7, 3, NULL);
	s = egd_budget_usage_dump(b);
	o = json_loads(s, 0, NULL);
	assert_int_equal(json_object_size(o), sizeof(keys) / sizeof(keys[0]));
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		assert_non_null(json_object_get(o, keys[i]));
	assert_string_equal(json_string_value(json_object_get(o, "evaluation_run_id")), "eval-42");
	assert_true(json_number_value(json_object_get(o, "total_cost_usd")) == 0.5);
	assert_true(json_number_value(json_object_get(o, "max_cost_usd")) == 2.0);
	assert_true(json_number_value(json_object_get(o, "budget_remaining_usd")) == 1.5);
	assert_int_equal(json_integer_value(json_object_get(o, "requests")), 1);
	assert_int_equal(json_integer_value(json_object_get(o, "prompt_tokens")), 7);
	assert_int_equal(json_integer_value(json_object_get(o, "completion_tokens")), 3);
	json_decref(o);
	free(s);
	egd_budget_destroy(b);
}

static void test_usage_dump_numbers_exact_and_short(void **state)
{
	struct egd_budget *b = egd_budget_new(1.0, 0.01, "run", NULL);
	double r, spent = 0;
	char *s;

	(void)state;
	egd_budget_admit(b, &r);
	egd_budget_settle(b, r, "m", 0.1, 0, 0, NULL);
	s = egd_budget_usage_dump(b);
	assert_non_null(strstr(s, "\"total_cost_usd\":0.1,"));
	free(s);
	/* 0.1 + 0.2 needs 17 digits; it must survive the round trip exactly. */
	egd_budget_admit(b, &r);
	egd_budget_settle(b, r, "m", 0.2, 0, 0, NULL);
	s = egd_budget_usage_dump(b);
	sscanf(strstr(s, "\"total_cost_usd\":") + strlen("\"total_cost_usd\":"), "%lf", &spent);
	assert_true(spent == 0.1 + 0.2);
	free(s);
	egd_budget_destroy(b);
}

static char *make_tmpdir(void)
{
	char *d = strdup("/tmp/egd-budget-XXXXXX");

	assert_non_null(mkdtemp(d));
	return d;
}

static void rm_tmpdir(char *d)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d);
	assert_int_equal(system(cmd), 0);
	free(d);
}

static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static void test_atomic_save_and_readback(void **state)
{
	char *dir = make_tmpdir(), err[256];
	struct egd_budget *b = egd_budget_new(5.0, 0.01, "run", dir);
	struct egd_budget *b2;
	struct egd_ledger snap;
	double r;

	(void)state;
	egd_budget_admit(b, &r);
	egd_budget_settle(b, r, "a/b", 1.25, 10, 20, NULL);
	assert_int_equal(egd_budget_save(b), 0);
	egd_budget_admit(b, &r);
	egd_budget_settle(b, r, "c/d", 0.5, 1, 2, NULL);
	assert_int_equal(egd_budget_save(b), 0);
	/* Only the usage file is left: no temp file survives a save. */
	assert_int_equal(count_entries(dir), 1);

	b2 = egd_budget_new(5.0, 0.01, "run", dir);
	assert_int_equal(egd_budget_load(b2, err, sizeof(err)), 0);
	egd_budget_snapshot(b2, &snap);
	assert_true(snap.spent_usd == 1.75);
	assert_int_equal(snap.requests, 2);
	assert_int_equal(snap.prompt_tokens, 11);
	assert_int_equal(snap.completion_tokens, 22);
	/* The restored ledger still refuses past the cap. */
	assert_int_equal(egd_budget_admit(b2, &r), 0);
	egd_budget_release(b2, r);
	egd_budget_destroy(b);
	egd_budget_destroy(b2);
	rm_tmpdir(dir);
}

/* Model names are the agent's to choose. 100 000 distinct ones of 100
 * bytes each (under the name bound) would make a usage file of about 19 MB
 * if every one were kept, past what the loader reads back: the next start
 * would fail. Bounded, the file stays small and the restart loads it, every
 * request still counted. */
#define MANY_MODELS 100000
#define MANY_MODELS_NAME_BYTES 100

static void test_restart_after_100k_distinct_models(void **state)
{
	char *dir = make_tmpdir(), err[256], name[MANY_MODELS_NAME_BYTES + 1], path[512];
	struct egd_budget *b = egd_budget_new(1e9, 0.01, "run", dir);
	struct egd_budget *b2;
	struct egd_ledger snap;
	json_t *usage, *models, *other;
	struct stat st;
	double r;

	(void)state;
	assert_non_null(b);
	for (int i = 0; i < MANY_MODELS; i++) {
		snprintf(name, sizeof(name), "vendor/%0*d", MANY_MODELS_NAME_BYTES - 7, i);
		assert_int_equal(egd_budget_admit(b, &r), 0);
		egd_budget_settle(b, r, name, 0.001, 2, 1, NULL);
	}
	assert_int_equal(egd_budget_save(b), 0);
	snprintf(path, sizeof(path), "%s/" EGD_USAGE_FILE_NAME, dir);
	assert_int_equal(stat(path, &st), 0);
	assert_true(st.st_size < EGD_USAGE_FILE_MAX_BYTES);

	b2 = egd_budget_new(1e9, 0.01, "run", dir);
	assert_int_equal(egd_budget_load(b2, err, sizeof(err)), 0);
	egd_budget_snapshot(b2, &snap);
	assert_int_equal(snap.requests, MANY_MODELS);
	assert_int_equal(snap.prompt_tokens, 2 * MANY_MODELS);
	egd_budget_destroy(b);

	/* The first EGD_LEDGER_MODELS_MAX by name, the rest as one. */
	assert_int_equal(egd_usage_file_read(path, &usage, err, sizeof(err)), 0);
	models = json_object_get(usage, "models");
	assert_int_equal(json_object_size(models), EGD_LEDGER_MODELS_MAX + 1);
	other = json_object_get(models, EGD_LEDGER_MODEL_OTHER);
	assert_int_equal(json_integer_value(json_object_get(other, "requests")),
			 MANY_MODELS - EGD_LEDGER_MODELS_MAX);
	assert_int_equal(json_integer_value(json_object_get(other, "completion_tokens")),
			 MANY_MODELS - EGD_LEDGER_MODELS_MAX);
	json_decref(usage);
	egd_budget_destroy(b2);
	rm_tmpdir(dir);
}

/* A name past EGD_LEDGER_MODEL_NAME_MAX_BYTES is not kept, even when there
 * is room for more models. */
static void test_overlong_model_name_counted_as_other(void **state)
{
	char name[EGD_LEDGER_MODEL_NAME_MAX_BYTES + 2];
	struct egd_ledger l;
	json_t *other;
	double r;

	(void)state;
	memset(name, 'm', sizeof(name) - 1);
	name[sizeof(name) - 1] = 0;
	assert_int_equal(egd_ledger_init(&l, 10, 0.01), 0);
	egd_ledger_admit(&l, &r);
	egd_ledger_settle(&l, r, name, 0.5, 3, 4);
	name[EGD_LEDGER_MODEL_NAME_MAX_BYTES] = 0;
	egd_ledger_admit(&l, &r);
	egd_ledger_settle(&l, r, name, 0.25, 1, 1);
	assert_int_equal(json_object_size(l.models), 2);
	assert_non_null(json_object_get(l.models, name));
	other = json_object_get(l.models, EGD_LEDGER_MODEL_OTHER);
	assert_int_equal(json_integer_value(json_object_get(other, "requests")), 1);
	assert_int_equal(json_integer_value(json_object_get(other, "prompt_tokens")), 3);
	assert_true(json_real_value(json_object_get(other, "cost_usd")) == 0.5);
	egd_ledger_fini(&l);
}

/* A usage file written before the bound (or by hand) with more models than
 * it allows is folded on load, totals kept. */
static void test_restore_folds_models_past_the_bound(void **state)
{
	struct egd_ledger l;
	char err[256], name[32];
	json_t *usage, *models, *other;

	(void)state;
	models = json_object();
	for (int i = 0; i < EGD_LEDGER_MODELS_MAX + 10; i++) {
		snprintf(name, sizeof(name), "m%d", i);
		json_object_set_new(models, name,
				    json_pack("{s:i, s:f, s:i, s:i}", "requests", 2, "cost_usd",
					      0.5, "prompt_tokens", 3, "completion_tokens", 4));
	}
	usage = json_pack("{s:f, s:i, s:i, s:i, s:o}", "total_cost_usd", 1.0, "requests", 1,
			  "prompt_tokens", 1, "completion_tokens", 1, "models", models);
	assert_int_equal(egd_ledger_init(&l, 10, 0.01), 0);
	assert_int_equal(egd_ledger_restore(&l, usage, err, sizeof(err)), 0);
	assert_int_equal(json_object_size(l.models), EGD_LEDGER_MODELS_MAX + 1);
	other = json_object_get(l.models, EGD_LEDGER_MODEL_OTHER);
	assert_int_equal(json_integer_value(json_object_get(other, "requests")), 2 * 10);
	assert_int_equal(json_integer_value(json_object_get(other, "completion_tokens")), 4 * 10);
	assert_true(json_real_value(json_object_get(other, "cost_usd")) == 0.5 * 10);
	json_decref(usage);
	egd_ledger_fini(&l);
}

static void test_missing_usage_file_is_fresh_run(void **state)
{
	char *dir = make_tmpdir(), err[256];
	struct egd_budget *b = egd_budget_new(5.0, 0.01, "run", dir);

	(void)state;
	assert_int_equal(egd_budget_load(b, err, sizeof(err)), 0);
	egd_budget_destroy(b);
	rm_tmpdir(dir);
}

static void write_usage(const char *dir, const char *content)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", dir, EGD_USAGE_FILE_NAME);
	assert_int_equal(egd_write_file_atomic(path, content, strlen(content), 0644), 0);
}

static void test_corrupt_usage_file_is_an_error(void **state)
{
	static const char *const bad[] = {
		"",
		"{\"total_cost_usd\": 1.0,",
		"[]",
		"{\"total_cost_usd\":\"1\",\"requests\":1,\"prompt_tokens\":1,"
		"\"completion_tokens\":1,\"models\":{}}",
		"{\"total_cost_usd\":1,\"requests\":1,\"prompt_tokens\":1,\"models\":{}}",
		"{\"total_cost_usd\":-1,\"requests\":1,\"prompt_tokens\":1,"
		"\"completion_tokens\":1,\"models\":{}}",
	};
	char *dir = make_tmpdir(), err[256];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct egd_budget *b = egd_budget_new(5.0, 0.01, "run", dir);

		write_usage(dir, bad[i]);
		err[0] = '\0';
		assert_int_equal(egd_budget_load(b, err, sizeof(err)), -EBADMSG);
		assert_non_null(strstr(err, EGD_USAGE_FILE_NAME));
		egd_budget_destroy(b);
	}
	rm_tmpdir(dir);
}

static void test_inference_line_has_reference_fields(void **state)
{
	static const char *const keys[] = {
		"endpoint",      "model",          "status_code", "total_cost_usd",
		"budget_remaining_usd", "timestamp", "routed_model", "provider",
		"prompt_tokens", "completion_tokens", "cost_usd", "latency_ms",
		"generation_id", "error",
	};
	struct egd_usage u = { .has_cost = 1, .cost_usd = 0.002, .prompt_tokens = 12,
			       .completion_tokens = 34 };
	struct egd_inference rec = {
		.endpoint = "/api/v1/chat/completions",
		.model = "a/b",
		.status_code = 200,
		.total_cost_usd = 0.5,
		.budget_remaining_usd = 1.5,
		.timestamp = { .tv_sec = 1767225600, .tv_nsec = 123456789 },
		.usage = &u,
		.cost_usd = 0.002,
		.latency_ms = 321,
	};
	char *line;
	json_t *o;

	(void)state;
	strcpy(u.model, "a/b-2024");
	strcpy(u.provider, "Anthropic");
	line = egd_inference_line(&rec);
	assert_non_null(line);
	assert_int_equal(line[strlen(line) - 1], '\n');
	/* One line: the only newline is the last byte. */
	assert_ptr_equal(strchr(line, '\n'), line + strlen(line) - 1);
	o = json_loads(line, 0, NULL);
	assert_int_equal(json_object_size(o), sizeof(keys) / sizeof(keys[0]));
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		assert_non_null(json_object_get(o, keys[i]));
	assert_string_equal(json_string_value(json_object_get(o, "timestamp")),
			    "2026-01-01T00:00:00.123456+00:00");
	assert_string_equal(json_string_value(json_object_get(o, "routed_model")), "a/b-2024");
	assert_int_equal(json_integer_value(json_object_get(o, "latency_ms")), 321);
	assert_true(json_is_null(json_object_get(o, "generation_id")));
	assert_true(json_is_null(json_object_get(o, "error")));
	json_decref(o);
	free(line);
}

/* The digits rule, from jansson itself: 15 when jansson's 15-digit text
 * reads back as the same double, else 17. */
static int digits_by_jansson(double v)
{
	json_t *a = json_pack("[f]", v);
	char *s15 = json_dumps(a, JSON_COMPACT | JSON_REAL_PRECISION(15));
	json_t *back = json_loads(s15, 0, NULL);
	int digits = json_real_value(json_array_get(back, 0)) == v ? 15 : 17;

	json_decref(back);
	json_decref(a);
	free(s15);
	return digits;
}

/* The record writer and jansson agree byte for byte on reals: the digits
 * rule, ".0" on integral values, the exponent without "+" or zeros. */
static void test_jsonw_reals_match_jansson(void **state)
{
	static const double cases[] = {
		0.0, 1.0, 0.5, 0.7, 0.001, 1e-10, 1e-5, 1e20, 1e100, 1.5e-300, 5e-324,
		123456789012345678.0, 0.1 + 0.2, 1.0 / 3.0, 999999999.999, 9999.0, 2.5e15,
		1e15, 1e16, 1e17, 1e21, 0.000123456789012345678,
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (int digits = 15; digits <= 17; digits += 2) {
			json_t *o = json_pack("[f]", cases[i]);
			char *want = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(digits));
			struct egd_jw w;
			char *got;

			egd_jw_init(&w, digits);
			egd_jw_raw(&w, "[", 1);
			egd_jw_real(&w, cases[i]);
			egd_jw_raw(&w, "]", 1);
			got = egd_jw_take(&w);
			assert_non_null(got);
			assert_string_equal(got, want);
			free(got);
			/* Formatted once for the digits rule, then written. */
			{
				struct egd_jreal r;

				egd_jreal_prepare(&r, cases[i]);
				assert_int_equal(r.digits, digits_by_jansson(cases[i]));
				egd_jw_init(&w, digits);
				egd_jw_raw(&w, "[", 1);
				egd_jw_real_prepared(&w, &r);
				egd_jw_raw(&w, "]", 1);
				got = egd_jw_take(&w);
				assert_string_equal(got, want);
				free(got);
			}
			free(want);
			json_decref(o);
		}
	}
}

/* A string jansson would escape beyond \" and \\ fails the writer, so the
 * caller falls back; quotes and backslashes are escaped as jansson does. */
static void test_jsonw_strings(void **state)
{
	struct egd_jw w;
	char *got;

	(void)state;
	egd_jw_init(&w, 15);
	egd_jw_str(&w, "a\"b\\c/d");
	got = egd_jw_take(&w);
	assert_string_equal(got, "\"a\\\"b\\\\c/d\"");
	free(got);
	egd_jw_init(&w, 15);
	egd_jw_str(&w, "line\nbreak");
	assert_null(egd_jw_take(&w));
	egd_jw_init(&w, 15);
	egd_jw_str(&w, "caf\xc3\xa9");
	assert_null(egd_jw_take(&w));
}

/* The inference line written from the fields is the jansson line, for
 * plain names, names with quotes, names jansson must escape (the fallback),
 * nulls and empty strings, and reals that need 17 digits. */
static void test_inference_line_fast_matches_jansson(void **state)
{
	static const char *const names[] = { "a/b", "", "quo\"te\\back", "new\nline",
					     "caf\xc3\xa9", NULL };
	static const double reals[] = { 0.002, 0.1 + 0.2, 0, 1e-10, 1e20, 999999999.999 };
	struct egd_usage u = { .has_cost = 1, .prompt_tokens = 12, .completion_tokens = 34 };
	struct egd_inference rec = {
		.endpoint = "/api/v1/chat/completions",
		.status_code = 200,
		.timestamp = { .tv_sec = 1767225600, .tv_nsec = 123456789 },
		.usage = &u,
		.latency_ms = 321,
	};

	(void)state;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		for (size_t j = 0; j < sizeof(reals) / sizeof(reals[0]); j++) {
			char *fast, *slow;

			rec.model = names[i];
			rec.error = names[(i + 1) % 6];
			rec.usage = j % 2 ? &u : NULL;
			snprintf(u.model, sizeof(u.model), "%s", names[(i + 2) % 6] ?: "");
			snprintf(u.provider, sizeof(u.provider), "%s", names[(i + 3) % 6] ?: "");
			snprintf(u.generation_id, sizeof(u.generation_id), "%s",
				 names[(i + 4) % 6] ?: "");
			rec.total_cost_usd = reals[j];
			rec.budget_remaining_usd = reals[(j + 1) % 6];
			rec.cost_usd = reals[(j + 2) % 6];
			fast = egd_inference_line(&rec);
			slow = egd_inference_line_json(&rec);
			assert_non_null(fast);
			assert_non_null(slow);
			assert_string_equal(fast, slow);
			free(fast);
			free(slow);
		}
	}
}

/* The usage summary written without a tree is egd_json_dumps() of the
 * tree, as settled, with names that need escaping, and as restored from a
 * file whose model entries hold other fields. */
static void test_usage_text_matches_jansson(void **state)
{
	static const char *const models[] = { "a/b", "quo\"te", "new\nline", "caf\xc3\xa9",
					      "" };
	struct egd_ledger l;
	char *fast, *slow, err[256];
	json_t *o, *restored;
	double r;

	(void)state;
	assert_int_equal(egd_ledger_init(&l, 10.0, 0.01), 0);
	for (size_t i = 0; i < 5; i++) {
		for (size_t k = 0; k <= i; k++) {
			assert_int_equal(egd_ledger_admit(&l, &r), 0);
			egd_ledger_settle(&l, r, models[k], k ? 0.1 + 0.2 : 0.001, 10, 20);
		}
		fast = egd_ledger_usage_text(&l, i % 2 ? "run \"x\"" : "run-1");
		o = egd_ledger_usage_json(&l, i % 2 ? "run \"x\"" : "run-1");
		slow = egd_json_dumps(o);
		assert_non_null(fast);
		assert_string_equal(fast, slow);
		free(fast);
		free(slow);
		json_decref(o);
	}
	restored = json_loads("{\"total_cost_usd\":1.5,\"requests\":3,\"prompt_tokens\":1,"
			      "\"completion_tokens\":2,\"models\":{\"m\":{\"requests\":3,"
			      "\"note\":\"kept\",\"cost_usd\":1.5}}}",
			      0, NULL);
	assert_int_equal(egd_ledger_restore(&l, restored, err, sizeof(err)), 0);
	fast = egd_ledger_usage_text(&l, "run");
	o = egd_ledger_usage_json(&l, "run");
	slow = egd_json_dumps(o);
	assert_string_equal(fast, slow);
	free(fast);
	free(slow);
	json_decref(o);
	json_decref(restored);
	egd_ledger_fini(&l);
}

struct writer_arg {
	struct egd_budget *b;
	int n;
};

static void *settle_and_log(void *arg)
{
	struct writer_arg *w = arg;
	struct egd_inference rec = { .endpoint = "/api/v1/chat/completions",
				     .model = "a/b",
				     .status_code = 200 };
	char *line;
	double r;

	for (int i = 0; i < w->n; i++) {
		if (egd_budget_admit(w->b, &r))
			abort();
		egd_budget_settle(w->b, r, "a/b", 0.001, 1, 2, NULL);
		line = egd_inference_line(&rec);
		if (!line || egd_budget_commit(w->b, line, strlen(line)))
			abort();
		free(line);
	}
	return NULL;
}

/* Two threads book and log at once: every line is whole, and the usage
 * file left in place is the newest state, before any flush. */
static void test_group_commit_from_two_threads(void **state)
{
	char *dir = make_tmpdir(), path[512], buf[1024], err[256];
	struct egd_budget *b = egd_budget_new(100.0, 0.01, "run", dir);
	struct writer_arg w = { b, 200 };
	pthread_t t1, t2;
	json_t *u;
	FILE *f;
	int lines = 0;

	(void)state;
	assert_int_equal(pthread_create(&t1, NULL, settle_and_log, &w), 0);
	assert_int_equal(pthread_create(&t2, NULL, settle_and_log, &w), 0);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	snprintf(path, sizeof(path), "%s/%s", dir, EGD_USAGE_FILE_NAME);
	assert_int_equal(egd_usage_file_read(path, &u, err, sizeof(err)), 0);
	assert_int_equal(json_integer_value(json_object_get(u, "requests")), 400);
	json_decref(u);
	snprintf(path, sizeof(path), "%s/%s", dir, EGD_INFERENCES_FILE_NAME);
	f = fopen(path, "r");
	assert_non_null(f);
	while (fgets(buf, sizeof(buf), f)) {
		json_t *o = json_loads(buf, 0, NULL);

		assert_non_null(o);
		json_decref(o);
		lines++;
	}
	fclose(f);
	assert_int_equal(lines, 400);
	assert_int_equal(egd_budget_flush(b), 0);
	/* No temp file is left beside the usage file. */
	assert_int_equal(count_entries(dir), 2);
	egd_budget_destroy(b);
	rm_tmpdir(dir);
}

/* In a child exec'ed with umask 077: write @dir's usage file twice, exit 0
 * when it is 0644 and no temp file is left. */
static int umask_child(const char *dir)
{
	char path[512];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", dir, EGD_USAGE_FILE_NAME);
	if (egd_write_file_atomic_sync(path, "{}", 2, 0644, 0) ||
	    egd_write_file_atomic_sync(path, "{}", 2, 0644, 0) || stat(path, &st))
		return 2;
	return (st.st_mode & 0777) == 0644 && count_entries(dir) == 1 ? 0 : 1;
}

/* The usage file is 0644 (readable by the platform) whatever the umask:
 * with the usual 022 the mode is given at creation, with 077 it is set
 * after (the daemon reads its umask once, so the child is a new process). */
static void test_usage_file_mode_despite_umask(void **state)
{
	char *dir = make_tmpdir(), path[512];
	struct stat st;
	mode_t old = umask(022);
	int status;
	pid_t pid;

	(void)state;
	snprintf(path, sizeof(path), "%s/%s", dir, EGD_USAGE_FILE_NAME);
	assert_int_equal(egd_write_file_atomic_sync(path, "{}", 2, 0644, 0), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0644);
	unlink(path);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		umask(077);
		execl("/proc/self/exe", "test_proxy_budget", "umask-child", dir, (char *)NULL);
		_exit(3);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	umask(old);
	rm_tmpdir(dir);
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "umask-child"))
		return umask_child(argv[2]);

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_admit_reserves_and_settle_charges_cost),
		cmocka_unit_test(test_admission_refused_at_cap),
		cmocka_unit_test(test_release_charges_nothing),
		cmocka_unit_test(test_negative_or_nan_cost_never_credits),
		cmocka_unit_test(test_cap_1e10_cost_0001_is_over),
		cmocka_unit_test(test_charge_rule),
		cmocka_unit_test(test_per_model_stats),
		cmocka_unit_test(test_concurrent_admissions_at_cap_one_request),
		cmocka_unit_test(test_concurrent_admissions_from_zero),
		cmocka_unit_test(test_usage_dump_has_reference_keys),
		cmocka_unit_test(test_usage_dump_numbers_exact_and_short),
		cmocka_unit_test(test_atomic_save_and_readback),
		cmocka_unit_test(test_missing_usage_file_is_fresh_run),
		cmocka_unit_test(test_restart_after_100k_distinct_models),
		cmocka_unit_test(test_overlong_model_name_counted_as_other),
		cmocka_unit_test(test_restore_folds_models_past_the_bound),
		cmocka_unit_test(test_corrupt_usage_file_is_an_error),
		cmocka_unit_test(test_inference_line_has_reference_fields),
		cmocka_unit_test(test_jsonw_reals_match_jansson),
		cmocka_unit_test(test_jsonw_strings),
		cmocka_unit_test(test_inference_line_fast_matches_jansson),
		cmocka_unit_test(test_usage_text_matches_jansson),
		cmocka_unit_test(test_group_commit_from_two_threads),
		cmocka_unit_test(test_usage_file_mode_despite_umask),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
