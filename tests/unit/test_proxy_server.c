// SPDX-License-Identifier: MIT
/*
 * The policy proxy end to end on loopback: a real event loop with the
 * proxy's plain listener (and one TLS connection handed over with its
 * ClientHello prefix, as the daemon does), the fake OpenRouter fixture as
 * the upstream over TLS with its own CA, and blocking clients on a thread.
 * Asserts what the agent gets, what the upstream received, and what the
 * usage files say.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/resolve.h"
#include "proxy/budget.h"
#include "proxy/ca.h"
#include "proxy/proxy_config.h"
#include "proxy/server.h"

#define FIXTURE EGD_TEST_DATA "/../e2e/fixtures/fake_openrouter.py"
#define KEY "sk-or-test-key"
/* sha256("sk-or-test-key") */
#define KEY_SHA "df17e87ada04b7d35d8168afaf70e93d1453380ab74ef6af6a6d1512fb34b4ca"
/* A test that has not finished by then is stuck, not slow. */
#define TEST_DEADLINE_MS 20000
#define RESP_MAX_BYTES (1024 * 1024)
#define MAX_REQS 4
#define MAX_ENV 24

struct env {
	const char *kv[MAX_ENV][2];
};

/* Shared by the group: the temp dir, the CA and the fake upstream. */
static char g_dir[64];
static char g_ca_file[128], g_data_dir[128], g_record[128];
static char g_base_url[64], g_resolve[96];
static pid_t g_fake = -1;
static struct egd_ca *g_ca;
/* The proxy's plain listener: 127.0.0.1, any port. */
static struct egd_addr any_port = { .family = EGD_AF_INET };

static const char *env_get(void *ctx, const char *name)
{
	struct env *e = ctx;

	for (int i = 0; i < MAX_ENV && e->kv[i][0]; i++)
		if (!strcmp(e->kv[i][0], name))
			return e->kv[i][1];
	return NULL;
}

static void env_set(struct env *e, const char *name, const char *value)
{
	int i;

	for (i = 0; i < MAX_ENV - 1 && e->kv[i][0]; i++)
		if (!strcmp(e->kv[i][0], name))
			break;
	e->kv[i][0] = name;
	e->kv[i][1] = value;
}

static void write_pem(const char *path, X509 *x, EVP_PKEY *k)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	if (x)
		PEM_write_X509(f, x);
	if (k)
		PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
	fclose(f);
}

static char g_crt[128], g_key[128];

/* Start the fixture with an extra "--flag value" (or none); its pid, and its
 * port in *port. */
static pid_t start_fake(const char *const extra[2], int *port)
{
	char port_file[160], buf[16];
	static int seq;
	pid_t pid;
	FILE *f;

	snprintf(port_file, sizeof(port_file), "%s/port.%d", g_dir, seq++);
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		/* "--plain" as the flag: no TLS, the fixture's default. */
		int plain = extra && !strcmp(extra[0], "--plain");

		execlp("python3", "python3", FIXTURE, "--record", g_record, "--port-file",
		       port_file, "--slow-s", "3", "--cert", plain ? "" : g_crt, "--key",
		       plain ? "" : g_key, plain ? NULL : extra ? extra[0] : NULL,
		       extra ? extra[1] : NULL, (char *)NULL);
		_exit(127);
	}
	*port = 0;
	for (int i = 0; i < 200 && !*port; i++) {
		f = fopen(port_file, "r");
		if (f) {
			if (fgets(buf, sizeof(buf), f))
				*port = atoi(buf);
			fclose(f);
		}
		if (!*port)
			usleep(50 * 1000);
	}
	return *port ? pid : -1;
}

static void stop_fake(pid_t pid)
{
	if (pid > 0) {
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
	}
}

static int group_setup(void **state)
{
	char key_dir[128], pub_dir[128];
	EVP_PKEY *k;
	X509 *x;
	int port = 0;

	(void)state;
	signal(SIGPIPE, SIG_IGN);
	egd_log_set_level(EGD_LOG_WARN);
	strcpy(g_dir, "/tmp/egd-proxy-test.XXXXXX");
	assert_non_null(mkdtemp(g_dir));
	snprintf(key_dir, sizeof(key_dir), "%s/key", g_dir);
	snprintf(pub_dir, sizeof(pub_dir), "%s/pub", g_dir);
	snprintf(g_ca_file, sizeof(g_ca_file), "%s/ca.crt", pub_dir);
	snprintf(g_data_dir, sizeof(g_data_dir), "%s/data", g_dir);
	snprintf(g_record, sizeof(g_record), "%s/upstream.jsonl", g_dir);
	snprintf(g_crt, sizeof(g_crt), "%s/up.crt", g_dir);
	snprintf(g_key, sizeof(g_key), "%s/up.key", g_dir);
	assert_int_equal(mkdir(g_data_dir, 0700), 0);

	/* One CA for both sides: the upstream's certificate is a leaf for
	 * openrouter.ai, trusted by the proxy through UPSTREAM_CA_FILE. */
	g_ca = egd_ca_open(key_dir, pub_dir, NULL);
	assert_non_null(g_ca);
	assert_int_equal(egd_ca_mint(g_ca, "openrouter.ai", &x, &k), 0);
	write_pem(g_crt, x, NULL);
	write_pem(g_key, NULL, k);
	X509_free(x);
	EVP_PKEY_free(k);

	g_fake = start_fake(NULL, &port);
	assert_true(g_fake > 0);
	snprintf(g_base_url, sizeof(g_base_url), "https://openrouter.ai:%d", port);
	snprintf(g_resolve, sizeof(g_resolve), "openrouter.ai:%d:127.0.0.1", port);
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[128];

	(void)state;
	stop_fake(g_fake);
	egd_ca_destroy(g_ca);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
	return system(cmd) ? -1 : 0;
}

/* ---- one proxy on one loop per test ---------------------------------------- */

struct req {
	const char *raw;
	int tls;
	/* Stall the proxy's loop while the request is written, so all of it
	 * is queued before the proxy reads; headers and body as two writes
	 * (as Python's http.client sends them). */
	int queue_whole;
	pid_t kill_first; /* take the upstream down before this request */
	char resp[RESP_MAX_BYTES];
	size_t len;
};

struct t {
	struct env env;
	struct egd_proxy_config cfg;
	struct egd_loop *loop;
	struct egd_resolver *resolver; /* the loop's, as each worker has one */
	struct egd_proxy *proxy;
	struct egd_proxy_shared *sh;
	int port;
	/* The TLS handover: the test plays the daemon's accept and peek. */
	struct egd_watch tls_listen;
	int tls_port;
	/* The client thread says it is done through this. */
	struct egd_watch done;
	struct egd_watch stall; /* a busy loop, on demand (req.queue_whole) */
	struct egd_timer deadline;
	struct req reqs[MAX_REQS];
	size_t nreqs;
};

static struct t *g_t;

static struct env base_env(const char *base_url)
{
	struct env e = { 0 };

	env_set(&e, "OPENROUTER_EXPECTED_API_KEY_SHA256", KEY_SHA);
	env_set(&e, "OPENROUTER_MANAGEMENT_KEY", "mgmt-key");
	env_set(&e, "OPENROUTER_WORKSPACE_ID", "ws-1");
	env_set(&e, "PROVIDER_ORDER", "openai,anthropic");
	env_set(&e, "UPSTREAM_BASE_URL", base_url);
	env_set(&e, "UPSTREAM_RESOLVE", g_resolve);
	env_set(&e, "UPSTREAM_CA_FILE", g_ca_file);
	env_set(&e, "UPSTREAM_TIMEOUT_S", "1");
	env_set(&e, "PROXY_DATA_DIR", g_data_dir);
	env_set(&e, "EVALUATION_RUN_ID", "run-test");
	return e;
}

static void tls_accept_cb(struct egd_watch *w, uint32_t events)
{
	struct t *t = g_t;
	uint8_t prefix[100];
	ssize_t n;
	int fd;

	(void)events;
	fd = accept(w->fd, NULL, NULL);
	if (fd < 0)
		return;
	{
		/* Room for a whole large request while the loop is stalled. */
		int big = 4 << 20;

		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
	}
	/* A blocking read of part of the ClientHello: the rest stays on the
	 * socket, so both the prefix and the socket path are exercised. */
	n = recv(fd, prefix, sizeof(prefix), 0);
	assert_true(n > 0);
	assert_int_equal(egd_proxy_serve_tls(t->proxy, fd, "openrouter.ai", prefix, (size_t)n), 0);
}

/* The loop is busy elsewhere for half a second. */
static void stall_cb(struct egd_watch *w, uint32_t events)
{
	uint64_t n;

	(void)events;
	if (read(w->fd, &n, sizeof(n)) == sizeof(n))
		usleep(500 * 1000);
}

static void done_cb(struct egd_watch *w, uint32_t events)
{
	uint64_t v;

	(void)events;
	(void)!read(w->fd, &v, sizeof(v));
	egd_loop_stop(g_t->loop);
}

static void deadline_cb(struct egd_timer *timer)
{
	(void)timer;
	egd_loop_stop(g_t->loop);
}

static int listen_any(int *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t l = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 16) ||
	    getsockname(fd, (struct sockaddr *)&a, &l))
		return -1;
	*port = ntohs(a.sin_port);
	return fd;
}

static struct t *t_new(struct env env)
{
	char err[256] = "";
	struct t *t = calloc(1, sizeof(*t));

	assert_non_null(t);
	g_t = t;
	t->env = env;
	assert_int_equal(egd_proxy_config_load(&t->cfg, env_get, &t->env, err, sizeof(err)), 0);
	t->loop = egd_loop_new();
	assert_non_null(t->loop);
	t->resolver = egd_resolver_new(t->loop);
	assert_non_null(t->resolver);
	t->sh = egd_proxy_shared_new(&t->cfg, err, sizeof(err));
	if (!t->sh)
		fail_msg("egd_proxy_shared_new: %s", err);
	t->proxy = egd_proxy_new(t->loop, t->sh, g_ca, err, sizeof(err));
	if (!t->proxy)
		fail_msg("egd_proxy_new: %s", err);
	any_port.addr[0] = htonl(INADDR_LOOPBACK);
	t->port = egd_proxy_listen(t->proxy, &any_port);
	assert_true(t->port > 0);
	t->tls_listen.fd = listen_any(&t->tls_port);
	assert_true(t->tls_listen.fd >= 0);
	t->tls_listen.cb = tls_accept_cb;
	assert_int_equal(egd_loop_add(t->loop, &t->tls_listen, EPOLLIN), 0);
	t->done.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	t->done.cb = done_cb;
	assert_int_equal(egd_loop_add(t->loop, &t->done, EPOLLIN), 0);
	t->deadline.cb = deadline_cb;
	t->stall.cb = stall_cb;
	t->stall.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	assert_true(t->stall.fd >= 0);
	assert_int_equal(egd_loop_add(t->loop, &t->stall, EPOLLIN), 0);
	return t;
}

/* The first answer of the last test fixture freed, for tests running two. */
static char t_last_resp[RESP_MAX_BYTES];

static void t_free(struct t *t)
{
	memcpy(t_last_resp, t->reqs[0].resp, sizeof(t_last_resp));
	egd_proxy_destroy(t->proxy);
	egd_proxy_shared_destroy(t->sh);
	egd_resolver_free(t->resolver);
	egd_loop_del(t->loop, &t->tls_listen);
	close(t->tls_listen.fd);
	egd_loop_del(t->loop, &t->done);
	close(t->done.fd);
	egd_loop_del(t->loop, &t->stall);
	close(t->stall.fd);
	egd_timer_cancel(t->loop, &t->deadline);
	egd_loop_free(t->loop);
	egd_proxy_config_free(&t->cfg);
	free(t);
	g_t = NULL;
}

static void t_add(struct t *t, const char *raw, int tls)
{
	assert_true(t->nreqs < MAX_REQS);
	t->reqs[t->nreqs].raw = raw;
	t->reqs[t->nreqs].tls = tls;
	t->nreqs++;
}

static int tcp_connect(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct timeval tv = { .tv_sec = 10 };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Send the whole request, read until the proxy closes. */
static void do_plain(int port, struct req *r)
{
	int fd = tcp_connect(port);
	ssize_t n;

	if (fd < 0)
		return;
	(void)!write(fd, r->raw, strlen(r->raw));
	while (r->len < sizeof(r->resp) - 1 &&
	       (n = read(fd, r->resp + r->len, sizeof(r->resp) - 1 - r->len)) > 0)
		r->len += (size_t)n;
	r->resp[r->len] = 0;
	close(fd);
}

/* An agent trusting only the pod CA, asking for openrouter.ai by name. */
static void do_tls(int port, struct req *r)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl = NULL;
	int fd = tcp_connect(port), n;

	if (fd < 0 || !ctx)
		goto out;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (SSL_CTX_load_verify_locations(ctx, g_ca_file, NULL) != 1)
		goto out;
	SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x02h2\x08http/1.1", 12);
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	SSL_set_tlsext_host_name(ssl, "openrouter.ai");
	SSL_set1_host(ssl, "openrouter.ai");
	if (SSL_connect(ssl) != 1) {
		snprintf(r->resp, sizeof(r->resp), "handshake failed: %s",
			 ERR_reason_error_string(ERR_get_error()));
		goto out;
	}
	{
		const unsigned char *alpn;
		unsigned int alen;

		SSL_get0_alpn_selected(ssl, &alpn, &alen);
		r->len = (size_t)snprintf(r->resp, sizeof(r->resp), "ALPN=%.*s\n", (int)alen,
					  alpn);
	}
	if (r->queue_whole) {
		static const uint64_t one = 1;
		const char *head_end = strstr(r->raw, "\r\n\r\n");
		size_t hl = head_end ? (size_t)(head_end + 4 - r->raw) : strlen(r->raw);

		assert_int_equal(write(g_t->stall.fd, &one, sizeof(one)), sizeof(one));
		SSL_write(ssl, r->raw, (int)hl);
		if (strlen(r->raw) > hl)
			SSL_write(ssl, r->raw + hl, (int)(strlen(r->raw) - hl));
	} else {
		SSL_write(ssl, r->raw, (int)strlen(r->raw));
	}
	while (r->len < sizeof(r->resp) - 1 &&
	       (n = SSL_read(ssl, r->resp + r->len, (int)(sizeof(r->resp) - 1 - r->len))) > 0)
		r->len += (size_t)n;
	r->resp[r->len] = 0;
out:
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	if (fd >= 0)
		close(fd);
}

static void *client_main(void *arg)
{
	struct t *t = arg;
	uint64_t one = 1;

	for (size_t i = 0; i < t->nreqs; i++) {
		stop_fake(t->reqs[i].kill_first);
		if (t->reqs[i].tls)
			do_tls(t->tls_port, &t->reqs[i]);
		else
			do_plain(t->port, &t->reqs[i]);
	}
	(void)!write(t->done.fd, &one, sizeof(one));
	return NULL;
}

/* Run the loop on this thread while the clients run on another. */
static void t_run(struct t *t)
{
	pthread_t th;

	assert_int_equal(egd_timer_arm(t->loop, &t->deadline, egd_now_ms() + TEST_DEADLINE_MS), 0);
	assert_int_equal(pthread_create(&th, NULL, client_main, t), 0);
	assert_int_equal(egd_loop_run(t->loop), 0);
	pthread_join(th, NULL);
}

static int status_of(const char *resp)
{
	const char *s = strstr(resp, "HTTP/1.");
	int status = 0;

	if (s)
		sscanf(s, "HTTP/1.%*d %d", &status);
	return status;
}

/* A POST with the right Content-Length, Connection: close. Not inlined:
 * GCC 12 at -O2 then takes the returned string for a pointer to the local
 * `s` (-Wdangling-pointer, a false positive). */
__attribute__((noinline)) static char *post(const char *path, const char *headers, const char *body)
{
	char *s;

	assert_true(asprintf(&s,
			     "POST %s HTTP/1.1\r\nHost: openrouter.ai\r\n%s"
			     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
			     path, headers, strlen(body), body) > 0);
	return s;
}

static char *chat(const char *body, const char *extra_headers)
{
	char hdrs[512];

	snprintf(hdrs, sizeof(hdrs),
		 "Authorization: Bearer " KEY "\r\nContent-Type: application/json\r\n%s",
		 extra_headers ? extra_headers : "");
	return post("/api/v1/chat/completions", hdrs, body);
}

/* The last request the fake upstream recorded for @path. */
static json_t *last_upstream(const char *path)
{
	char line[65536];
	json_t *last = NULL;
	FILE *f = fopen(g_record, "r");

	if (!f)
		return NULL;
	while (fgets(line, sizeof(line), f)) {
		json_t *o = json_loads(line, 0, NULL);

		if (o && !strcmp(json_string_value(json_object_get(o, "path")), path)) {
			json_decref(last);
			last = o;
		} else {
			json_decref(o);
		}
	}
	fclose(f);
	return last;
}

static json_t *usage_file(void)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", g_data_dir, EGD_USAGE_FILE_NAME);
	return json_load_file(path, 0, NULL);
}

static size_t inference_lines(void)
{
	char path[256], line[8192];
	size_t n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", g_data_dir, EGD_INFERENCES_FILE_NAME);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		n++;
	fclose(f);
	return n;
}

/* ---- tests ------------------------------------------------------------------- */

static void test_chat_forwarded_sanitized_and_accounted(void **state)
{
	struct t *t = t_new(base_env(g_base_url));
	char *req = chat("{\"model\":\"openai/gpt-4o\",\"messages\":[],\"plugins\":[1],"
			 "\"provider\":{\"allow_fallbacks\":false,\"data_collection\":\"allow\"}}",
			 "X-Custom: leak\r\nUser-Agent: agent/1\r\n");
	size_t lines_before = inference_lines();
	json_t *up, *body, *hdrs, *usage;
	const char *k;
	json_t *v;

	(void)state;
	t_add(t, req, 0);
	t_run(t);
	assert_int_equal(status_of(t->reqs[0].resp), 200);
	assert_non_null(strstr(t->reqs[0].resp, "\"hello\""));

	up = last_upstream("/api/v1/chat/completions");
	assert_non_null(up);
	body = json_object_get(up, "body");
	assert_null(json_object_get(body, "plugins"));
	assert_true(json_is_true(json_object_get(json_object_get(body, "provider"), "zdr")));
	assert_true(json_is_true(
		json_object_get(json_object_get(body, "provider"), "allow_fallbacks")));
	assert_null(json_object_get(json_object_get(body, "provider"), "data_collection"));
	v = json_object_get(json_object_get(body, "provider"), "order");
	assert_string_equal(json_string_value(json_array_get(v, 0)), "openai");
	assert_true(json_is_true(json_object_get(json_object_get(body, "usage"), "include")));
	hdrs = json_object_get(up, "headers");
	json_object_foreach(hdrs, k, v) {
		if (strcasecmp(k, "Host") && strcasecmp(k, "Content-Length") &&
		    strcasecmp(k, "Authorization") && strcasecmp(k, "Content-Type"))
			fail_msg("header %s reached the upstream", k);
	}
	assert_string_equal(json_string_value(json_object_get(hdrs, "Authorization")),
			    "Bearer " KEY);
	json_decref(up);

	usage = usage_file();
	assert_non_null(usage);
	assert_true(json_integer_value(json_object_get(usage, "requests")) >= 1);
	assert_true(json_real_value(json_object_get(usage, "total_cost_usd")) >= 0.001 - 1e-12);
	assert_string_equal(json_string_value(json_object_get(usage, "evaluation_run_id")),
			    "run-test");
	json_decref(usage);
	assert_int_equal(inference_lines(), lines_before + 1);
	free(req);
	t_free(t);
}

static void test_stream_relayed_as_sse(void **state)
{
	struct t *t = t_new(base_env(g_base_url));
	char *req = chat("{\"model\":\"openai/gpt-4o\",\"messages\":[],\"stream\":true}", NULL);
	struct egd_ledger before, after;

	(void)state;
	t_add(t, req, 0);
	egd_budget_snapshot(egd_proxy_budget(t->proxy), &before);
	t_run(t);
	egd_budget_snapshot(egd_proxy_budget(t->proxy), &after);
	assert_int_equal(status_of(t->reqs[0].resp), 200);
	assert_non_null(strstr(t->reqs[0].resp, "Transfer-Encoding: chunked"));
	assert_non_null(strstr(t->reqs[0].resp, "text/event-stream"));
	assert_non_null(strstr(t->reqs[0].resp, ": OPENROUTER PROCESSING"));
	assert_non_null(strstr(t->reqs[0].resp, "data: [DONE]"));
	/* The chunked body ends properly. */
	assert_non_null(strstr(t->reqs[0].resp, "\r\n0\r\n\r\n"));
	/* Charged the final chunk's usage.cost, not the reservation. */
	assert_true(after.spent_usd - before.spent_usd > 0.001 - 1e-9);
	assert_true(after.spent_usd - before.spent_usd < 0.001 + 1e-9);
	assert_int_equal(after.requests, before.requests + 1);
	free(req);
	t_free(t);
}

static void test_embeddings_and_local_answers(void **state)
{
	struct t *t = t_new(base_env(g_base_url));
	char *emb = post("/api/v1/embeddings", "Authorization: Bearer " KEY "\r\n",
			 "{\"model\":\"openai/emb\",\"input\":\"hi\",\"transforms\":[]}");
	char *noauth = post("/api/v1/chat/completions", "", "{\"model\":\"a/b\"}");
	char *notobj = post("/api/v1/chat/completions", "", "[1]");
	static const char other[] = "GET /api/v1/models HTTP/1.1\r\nHost: openrouter.ai\r\n"
				    "Connection: close\r\n\r\n";
	json_t *up;

	(void)state;
	t_add(t, emb, 0);
	t_add(t, other, 0);
	t_add(t, noauth, 0);
	t_add(t, notobj, 0);
	t_run(t);
	assert_int_equal(status_of(t->reqs[0].resp), 200);
	assert_non_null(strstr(t->reqs[0].resp, "embedding"));
	up = last_upstream("/api/v1/embeddings");
	assert_non_null(up);
	assert_null(json_object_get(json_object_get(up, "body"), "transforms"));
	json_decref(up);
	assert_int_equal(status_of(t->reqs[1].resp), 403);
	assert_non_null(strstr(t->reqs[1].resp, "Path '/api/v1/models' is not allowed"));
	assert_int_equal(status_of(t->reqs[2].resp), 401);
	assert_non_null(strstr(t->reqs[2].resp, "Missing Authorization header"));
	assert_int_equal(status_of(t->reqs[3].resp), 422);
	free(emb);
	free(noauth);
	free(notobj);
	t_free(t);
}

static void test_pipelined_answers_in_order(void **state)
{
	struct t *t = t_new(base_env(g_base_url));
	static const char two[] = "GET /healthz HTTP/1.1\r\nHost: openrouter.ai\r\n\r\n"
				  "GET /api/v1/usage HTTP/1.1\r\nHost: openrouter.ai\r\n"
				  "Connection: close\r\n\r\n";
	const char *first, *second;

	(void)state;
	t_add(t, two, 0);
	t_run(t);
	first = strstr(t->reqs[0].resp, "HTTP/1.1 200");
	assert_non_null(first);
	second = strstr(first + 1, "HTTP/1.1 200");
	assert_non_null(second);
	/* healthz's "ok" comes before the usage summary. */
	assert_true(strstr(t->reqs[0].resp, "\r\n\r\nok") < second);
	assert_non_null(strstr(second, "evaluation_run_id"));
	t_free(t);
}

static void test_many_pipelined_requests(void **state)
{
	static const char one[] = "GET /healthz HTTP/1.1\r\nHost: openrouter.ai\r\n\r\n";
	static const char last[] = "GET /healthz HTTP/1.1\r\nHost: openrouter.ai\r\n"
				   "Connection: close\r\n\r\n";
	enum { N = 8000 };
	struct t *t = t_new(base_env(g_base_url));
	char *all = malloc(N * sizeof(one) + sizeof(last)), *p;
	size_t off = 0, count = 0;

	(void)state;
	/* More than the pipeline buffer holds at once, answered in turn. */
	for (int i = 0; i < N - 1; i++) {
		memcpy(all + off, one, sizeof(one) - 1);
		off += sizeof(one) - 1;
	}
	memcpy(all + off, last, sizeof(last));
	t_add(t, all, 0);
	t_run(t);
	for (p = t->reqs[0].resp; (p = strstr(p, "HTTP/1.1 200 OK")); p++)
		count++;
	assert_int_equal(count, N);
	free(all);
	t_free(t);
}

static void test_upstream_failures_mapped(void **state)
{
	struct t *t = t_new(base_env(g_base_url));
	char *e500 = chat("{\"model\":\"fail/500\",\"messages\":[]}", NULL);
	char *reset = chat("{\"model\":\"fail/reset\",\"messages\":[]}", NULL);
	char *slow = chat("{\"model\":\"fail/slow\",\"messages\":[]}", NULL);

	(void)state;
	t_add(t, e500, 0);
	t_add(t, reset, 0);
	t_add(t, slow, 0);
	t_run(t);
	/* Upstream errors pass through with their status and body. */
	assert_int_equal(status_of(t->reqs[0].resp), 500);
	assert_non_null(strstr(t->reqs[0].resp, "upstream exploded"));
	assert_int_equal(status_of(t->reqs[1].resp), 502);
	assert_non_null(strstr(t->reqs[1].resp, "{\"detail\""));
	assert_int_equal(status_of(t->reqs[2].resp), 504);
	assert_non_null(strstr(t->reqs[2].resp, "{\"detail\""));
	{
		char *m = egd_proxy_metrics(&t->proxy, 1);

		assert_non_null(m);
		assert_non_null(strstr(m, "egressd_proxy_requests_total{code=\"500\"} 1\n"));
		assert_non_null(strstr(m, "egressd_proxy_requests_total{code=\"502\"} 1\n"));
		assert_non_null(strstr(m, "egressd_proxy_requests_total{code=\"504\"} 1\n"));
		assert_non_null(strstr(m, "egressd_proxy_upstream_failures_total 2\n"));
		assert_non_null(strstr(m, "egressd_proxy_in_flight 0\n"));
		free(m);
	}
	free(e500);
	free(reset);
	free(slow);
	t_free(t);
}

/* A base URL and resolve entry for a fixture of the test's own. */
static struct env own_fake_env(int port, char url[64], char resolve[96])
{
	struct env e;

	snprintf(url, 64, "https://openrouter.ai:%d", port);
	snprintf(resolve, 96, "openrouter.ai:%d:127.0.0.1", port);
	e = base_env(url);
	env_set(&e, "UPSTREAM_RESOLVE", resolve);
	return e;
}

static void test_upstream_down_is_502(void **state)
{
	char url[64], resolve[96];
	char *req = chat("{\"model\":\"openai/gpt-4o\",\"messages\":[]}", NULL);
	int port;
	pid_t pid = start_fake(NULL, &port);
	struct t *t;

	(void)state;
	assert_true(pid > 0);
	t = t_new(own_fake_env(port, url, resolve));
	/* The first request works (and caches the workspace answer); then
	 * the upstream goes away, pooled connection and all. */
	t_add(t, req, 0);
	t_add(t, req, 0);
	t->reqs[1].kill_first = pid;
	t_run(t);
	assert_int_equal(status_of(t->reqs[0].resp), 200);
	assert_int_equal(status_of(t->reqs[1].resp), 502);
	assert_non_null(strstr(t->reqs[1].resp, "{\"detail\":"));
	free(req);
	t_free(t);
}

static void test_workspace_unsafe_or_failing_refused(void **state)
{
	static const char *const unsafe[2] = { "--workspace", "unsafe" };
	static const char *const failing[2] = { "--workspace", "fail" };
	char url[64], resolve[96];
	char *req = chat("{\"model\":\"openai/gpt-4o\",\"messages\":[]}", NULL);
	int port;
	pid_t pid;
	struct t *t;

	(void)state;
	pid = start_fake(unsafe, &port);
	assert_true(pid > 0);
	t = t_new(own_fake_env(port, url, resolve));
	t_add(t, req, 0);
	t_run(t);
	t_free(t);
	stop_fake(pid);
	assert_int_equal(status_of(t_last_resp), 403);
	assert_non_null(strstr(t_last_resp, "workspace logging or data-sharing"));

	pid = start_fake(failing, &port);
	assert_true(pid > 0);
	t = t_new(own_fake_env(port, url, resolve));
	t_add(t, req, 0);
	t_run(t);
	t_free(t);
	stop_fake(pid);
	assert_int_equal(status_of(t_last_resp), 503);
	free(req);
}

static void test_over_cap_answer_withheld(void **state)
{
	char dir[160];
	struct env e = base_env(g_base_url);
	char *req = chat("{\"model\":\"openai/gpt-4o\",\"messages\":[]}", NULL);
	json_t *usage;
	struct t *t;

	(void)state;
	snprintf(dir, sizeof(dir), "%s/data-cap", g_dir);
	assert_int_equal(mkdir(dir, 0700), 0);
	env_set(&e, "PROXY_DATA_DIR", dir);
	env_set(&e, "MAX_COST_USD", "1e-10");
	t = t_new(e);
	t_add(t, req, 0);
	t_add(t, req, 0);
	t_run(t);
	/* The first answer costs 0.001, over the cap: withheld, still
	 * charged. The second is not admitted at all. */
	assert_int_equal(status_of(t->reqs[0].resp), 429);
	assert_int_equal(status_of(t->reqs[1].resp), 429);
	assert_non_null(strstr(t->reqs[1].resp, "Evaluation run cost budget exceeded"));
	t_free(t);
	{
		char path[200];

		snprintf(path, sizeof(path), "%s/%s", dir, EGD_USAGE_FILE_NAME);
		usage = json_load_file(path, 0, NULL);
	}
	assert_non_null(usage);
	assert_int_equal(json_integer_value(json_object_get(usage, "requests")), 1);
	assert_true(json_real_value(json_object_get(usage, "total_cost_usd")) > 0.00099);
	json_decref(usage);
	free(req);
}

/* @first without chat()'s "Connection: close", then @second, written at
 * once on one keep-alive connection to the proxy, which is run until both
 * are answered. Takes both strings. The caller frees the result. */
static struct t *keep_alive_run(char *first, char *second)
{
	static const char close_hdr[] = "Connection: close\r\n";
	struct t *t = t_new(base_env(g_base_url));
	char *a = strstr(first, close_hdr), *both;

	assert_non_null(a);
	memmove(a, a + strlen(close_hdr), strlen(a + strlen(close_hdr)) + 1);
	assert_true(asprintf(&both, "%s%s", first, second) > 0);
	t_add(t, both, 0);
	t_run(t);
	free(first);
	free(second);
	free(both);
	return t;
}

/* The next answer with @status_line in @resp: asserted present. */
static const char *answer(const char *resp, const char *status_line)
{
	const char *a = strstr(resp, status_line);

	assert_non_null(a);
	return a;
}

static void test_keep_alive_requests_reuse_upstream(void **state)
{
	struct t *t = keep_alive_run(
		chat("{\"model\":\"openai/gpt-4o\",\"messages\":[]}",
		     "Connection: keep-alive\r\n"),
		chat("{\"model\":\"openai/gpt-4o\",\"messages\":[],\"stream\":true}", NULL));
	const char *a = answer(t->reqs[0].resp, "HTTP/1.1 200");
	const char *b = answer(a + 1, "HTTP/1.1 200");

	(void)state;
	/* In order: the JSON answer, then the stream. */
	assert_non_null(strstr(a, "\"hello\""));
	assert_true(strstr(a, "\"hello\"") < b);
	assert_non_null(strstr(b, "data: [DONE]"));
	t_free(t);
}

/* An upstream that sends bytes nobody asked for after an answer (here a
 * whole second answer, in its own TLS record, which read-ahead takes into
 * OpenSSL with the first) must not have its connection reused: the next
 * request would get those bytes as its answer. */
static void test_upstream_bytes_past_answer_not_reused(void **state)
{
	struct t *t = keep_alive_run(
		chat("{\"model\":\"fail/trailing\",\"messages\":[]}",
		     "Connection: keep-alive\r\n"),
		chat("{\"model\":\"anthropic/claude-sonnet-4\",\"messages\":[]}", NULL));
	const char *a = answer(t->reqs[0].resp, "HTTP/1.1 200");
	const char *b = answer(a + 1, "HTTP/1.1 200");

	(void)state;
	assert_non_null(strstr(b, "\"hello\""));
	assert_null(strstr(t->reqs[0].resp, "smuggled"));
	t_free(t);
}

/* The key check is skipped for a header this connection already proved;
 * another key on the same connection is still checked (and refused). */
static void test_keep_alive_other_key_still_checked(void **state)
{
	struct t *t = keep_alive_run(
		chat("{\"model\":\"openai/gpt-4o\",\"messages\":[]}",
		     "Connection: keep-alive\r\n"),
		post("/api/v1/chat/completions",
		     "Authorization: Bearer not-the-key\r\n"
		     "Content-Type: application/json\r\n",
		     "{\"model\":\"openai/gpt-4o\",\"messages\":[]}"));
	const char *a = answer(t->reqs[0].resp, "HTTP/1.1 200");

	(void)state;
	answer(a + 1, "HTTP/1.1 403");
	t_free(t);
}

static void test_stream_broken_midway_truncated_and_charged(void **state)
{
	struct t *t = t_new(base_env(g_base_url));
	char *req = chat("{\"model\":\"fail/midstream\",\"messages\":[],\"stream\":true}", NULL);
	struct egd_ledger before, after;

	(void)state;
	t_add(t, req, 0);
	egd_budget_snapshot(egd_proxy_budget(t->proxy), &before);
	t_run(t);
	egd_budget_snapshot(egd_proxy_budget(t->proxy), &after);
	assert_int_equal(status_of(t->reqs[0].resp), 200);
	assert_non_null(strstr(t->reqs[0].resp, "hel"));
	/* No last chunk: the agent sees a truncated stream, not a clean end. */
	assert_null(strstr(t->reqs[0].resp, "\r\n0\r\n\r\n"));
	assert_null(strstr(t->reqs[0].resp, "[DONE]"));
	/* No usage arrived: the reservation is what it costs. */
	assert_true(after.spent_usd - before.spent_usd >= t->cfg.budget_reserve_usd - 1e-12);
	assert_int_equal(after.in_flight, 0);
	free(req);
	t_free(t);
}

static void test_request_limits(void **state)
{
	struct env e = base_env(g_base_url);
	char *big;
	char body[200];
	struct t *t;

	(void)state;
	env_set(&e, "MAX_REQUEST_BYTES", "100");
	t = t_new(e);
	memset(body, 'x', sizeof(body) - 1);
	body[sizeof(body) - 1] = 0;
	big = chat(body, NULL);
	t_add(t, big, 0);
	t_add(t, "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 0);
	t_run(t);
	assert_int_equal(status_of(t->reqs[0].resp), 413);
	assert_int_equal(status_of(t->reqs[1].resp), 400);
	free(big);
	t_free(t);
}

static void test_upstream_name_verified(void **state)
{
	struct env e = base_env(g_base_url);
	char url[64], resolve[96];
	const char *port = strrchr(g_base_url, ':') + 1;
	char *req = chat("{\"model\":\"openai/gpt-4o\",\"messages\":[]}", NULL);
	struct t *t;

	(void)state;
	/* The fixture's certificate names openrouter.ai, not this host. */
	snprintf(url, sizeof(url), "https://openrouter.example:%s", port);
	snprintf(resolve, sizeof(resolve), "openrouter.example:%s:127.0.0.1", port);
	env_set(&e, "UPSTREAM_BASE_URL", url);
	env_set(&e, "UPSTREAM_RESOLVE", resolve);
	t = t_new(e);
	t_add(t, req, 0);
	t_run(t);
	/* Even the workspace lookup fails the TLS check: fail closed. */
	assert_int_equal(status_of(t->reqs[0].resp), 503);
	free(req);
	t_free(t);
}

static void test_dns_resolved_off_loop(void **state)
{
	static const char *const plain[2] = { "--plain", NULL };
	char url[64];
	char *req = chat("{\"model\":\"openai/gpt-4o\",\"messages\":[]}", NULL);
	int port;
	pid_t pid = start_fake(plain, &port);
	struct env e;
	struct t *t;

	(void)state;
	assert_true(pid > 0);
	/* No UPSTREAM_RESOLVE: "localhost" goes through the loop's resolver
	 * (and ::1 first, where nothing listens, then 127.0.0.1). */
	snprintf(url, sizeof(url), "http://localhost:%d", port);
	e = base_env(url);
	env_set(&e, "UPSTREAM_RESOLVE", NULL);
	t = t_new(e);
	t_add(t, req, 0);
	t_run(t);
	stop_fake(pid);
	assert_int_equal(status_of(t->reqs[0].resp), 200);
	free(req);
	t_free(t);
}

static void test_tls_handover_with_prefix(void **state)
{
	struct t *t = t_new(base_env(g_base_url));
	char *req = chat("{\"model\":\"openai/gpt-4o\",\"messages\":[]}", NULL);
	static const char fronted[] = "GET /healthz HTTP/1.1\r\nHost: evil.example\r\n"
				      "Connection: close\r\n\r\n";

	(void)state;
	t_add(t, req, 1);
	t_add(t, fronted, 1);
	t_run(t);
	assert_non_null(strstr(t->reqs[0].resp, "ALPN=http/1.1\n"));
	assert_int_equal(status_of(t->reqs[0].resp), 200);
	assert_non_null(strstr(t->reqs[0].resp, "\"hello\""));
	/* Host must be the SNI on an intercepted flow. */
	assert_int_equal(status_of(t->reqs[1].resp), 421);
	free(req);
	t_free(t);
}

/*
 * A request larger than the pipeline buffer (256 KiB), all of it queued
 * before the proxy reads: reading stops at the cap with the last TLS
 * record already inside OpenSSL (read-ahead), where no epoll event will
 * announce it. The proxy must read it once there is room, not wait for the
 * client until the idle timeout. (Found in review; fails without
 * conn_check_pending().)
 */
static void test_tls_request_beyond_pipeline_cap(void **state)
{
	static const char pre[] = "{\"model\":\"openai/gpt-4o\",\"messages\":[{\"role\":"
				  "\"user\",\"content\":\"";
	static const char post_[] = "\"}]}";
	size_t pad = 16800, blen = 15 * 16384 + 200;
	struct t *t = t_new(base_env(g_base_url));
	char *padv = malloc(pad + 1), *body = malloc(blen + 1), *req;
	unsigned long long t0;

	(void)state;
	memset(padv, 'p', pad);
	padv[pad] = '\0';
	memcpy(body, pre, sizeof(pre) - 1);
	memset(body + sizeof(pre) - 1, 'a', blen - (sizeof(pre) - 1) - (sizeof(post_) - 1));
	memcpy(body + blen - (sizeof(post_) - 1), post_, sizeof(post_));
	assert_true(asprintf(&req,
			     "POST /api/v1/chat/completions HTTP/1.1\r\nHost: openrouter.ai\r\n"
			     "Authorization: Bearer " KEY "\r\nContent-Type: application/json\r\n"
			     "X-Pad: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
			     padv, blen, body) > 0);
	t_add(t, req, 1);
	t->reqs[0].queue_whole = 1;
	t0 = egd_now_ms();
	t_run(t);
	assert_int_equal(status_of(t->reqs[0].resp), 200);
	/* The stall is 0.5 s; the idle timeout is minutes. */
	assert_true(egd_now_ms() - t0 < 5000);
	free(padv);
	free(body);
	free(req);
	t_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chat_forwarded_sanitized_and_accounted),
		cmocka_unit_test(test_stream_relayed_as_sse),
		cmocka_unit_test(test_embeddings_and_local_answers),
		cmocka_unit_test(test_pipelined_answers_in_order),
		cmocka_unit_test(test_many_pipelined_requests),
		cmocka_unit_test(test_upstream_failures_mapped),
		cmocka_unit_test(test_upstream_down_is_502),
		cmocka_unit_test(test_workspace_unsafe_or_failing_refused),
		cmocka_unit_test(test_over_cap_answer_withheld),
		cmocka_unit_test(test_keep_alive_requests_reuse_upstream),
		cmocka_unit_test(test_upstream_bytes_past_answer_not_reused),
		cmocka_unit_test(test_keep_alive_other_key_still_checked),
		cmocka_unit_test(test_tls_request_beyond_pipeline_cap),
		cmocka_unit_test(test_stream_broken_midway_truncated_and_charged),
		cmocka_unit_test(test_request_limits),
		cmocka_unit_test(test_upstream_name_verified),
		cmocka_unit_test(test_dns_resolved_off_loop),
		cmocka_unit_test(test_tls_handover_with_prefix),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
