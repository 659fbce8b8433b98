/* SPDX-License-Identifier: MIT */
/* List and watch the pods of a node, on the event loop; see api.h. */
#include "k8s/api.h"
#include "core/log.h"
#include "core/loop.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

/* A service account token is a JWT of about 1 KiB; a file much larger is
 * not one. */
#define K8S_TOKEN_MAX_BYTES 16384
/* One watch event is one object; etcd caps objects at 1.5 MiB. */
#define K8S_EVENT_MAX_BYTES (4u << 20)
/* A whole PodList of one node: 110 pods by default, a few KiB to a few tens
 * of KiB each. */
#define K8S_LIST_MAX_BYTES (64u << 20)
#define K8S_CONNECT_TIMEOUT_MS 5000
#define K8S_LIST_TIMEOUT_MS 60000
/* A watch gets the server's timeoutSeconds plus this before curl gives up. */
#define K8S_WATCH_SLACK_MS 30000
/* TCP keepalive notices an API that vanished without a reset. */
#define K8S_KEEPALIVE_IDLE_S 30
#define K8S_KEEPALIVE_INTVL_S 10
#define K8S_RV_MAX_BYTES 64

enum state { ST_IDLE, ST_LISTING, ST_WATCHING };

struct sock {
	struct egd_watch w;
	struct egd_k8s_client *c;
};

struct egd_k8s_client {
	struct egd_loop *loop;
	struct egd_k8s_config cfg;
	egd_k8s_event_cb cb;
	void *arg;
	CURLM *multi;
	CURL *easy;		     /* the request in flight, or NULL */
	struct curl_slist *headers;
	enum state state;
	bool need_list;		     /* no list yet, or 410 seen */
	bool failing;		     /* the last request failed */
	bool too_big;
	char rv[K8S_RV_MAX_BYTES];   /* last resourceVersion seen */
	char *buf;
	size_t len, cap, max;
	size_t consumed;	     /* watch: bytes of @buf already handled */
	unsigned backoff_ms;
	unsigned long long last_start_ms; /* when the last request started */
	struct egd_timer curl_timer; /* curl's own timeouts */
	struct egd_timer retry;	     /* the next request */
	json_t *cache;		     /* uid -> trimmed Pod */
	struct egd_k8s_stats st;
	char last_token_err[128];
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

const char *egd_k8s_event_name(enum egd_k8s_event ev)
{
	switch (ev) {
	case EGD_K8S_ADDED:
		return "ADDED";
	case EGD_K8S_MODIFIED:
		return "MODIFIED";
	case EGD_K8S_DELETED:
		return "DELETED";
	case EGD_K8S_SYNCED:
		return "SYNCED";
	}
	return "?";
}

/* --- settings ------------------------------------------------------------ */

static int copy_setting(char *dst, size_t len, const char *val, const char *var, char *err,
			size_t errlen)
{
	if (snprintf(dst, len, "%s", val) >= (int)len) {
		snprintf(err, errlen, "%s: value longer than %zu bytes", var, len - 1);
		return -EINVAL;
	}
	return 0;
}

int egd_k8s_config_from_env(struct egd_k8s_config *cfg, char *err, size_t errlen)
{
	const char *api = getenv("EGRESSD_K8S_API"), *v;
	int rc;

	memset(cfg, 0, sizeof(*cfg));
	cfg->watch_timeout_s = EGD_K8S_WATCH_TIMEOUT_S;
	cfg->backoff_min_ms = EGD_K8S_BACKOFF_MIN_MS;
	cfg->backoff_max_ms = EGD_K8S_BACKOFF_MAX_MS;
	if (api && *api) {
		rc = copy_setting(cfg->api, sizeof(cfg->api), api, "EGRESSD_K8S_API", err, errlen);
		if (rc)
			return rc;
	} else {
		const char *host = getenv("KUBERNETES_SERVICE_HOST");
		const char *port = getenv("KUBERNETES_SERVICE_PORT");

		if (!host || !*host) {
			snprintf(err, errlen,
				 "EGRESSD_K8S_API is not set and KUBERNETES_SERVICE_HOST is empty: "
				 "not in a cluster?");
			return -EINVAL;
		}
		/* An IPv6 service address needs brackets in a URL. */
		if (snprintf(cfg->api, sizeof(cfg->api), strchr(host, ':') ? "https://[%s]:%s" :
									      "https://%s:%s",
			     host, port && *port ? port : "443") >= (int)sizeof(cfg->api)) {
			snprintf(err, errlen, "KUBERNETES_SERVICE_HOST: too long");
			return -EINVAL;
		}
	}
	if (strncmp(cfg->api, "https://", 8) && strncmp(cfg->api, "http://", 7)) {
		snprintf(err, errlen, "EGRESSD_K8S_API: \"%s\" is not an http:// or https:// URL",
			 cfg->api);
		return -EINVAL;
	}
	for (size_t n = strlen(cfg->api); n > 0 && cfg->api[n - 1] == '/'; n--)
		cfg->api[n - 1] = '\0';

	v = getenv("EGRESSD_K8S_TOKEN_FILE");
	if (!v)
		v = EGD_K8S_DEFAULT_TOKEN_FILE;
	rc = copy_setting(cfg->token_file, sizeof(cfg->token_file), v, "EGRESSD_K8S_TOKEN_FILE",
			  err, errlen);
	if (rc)
		return rc;
	v = getenv("EGRESSD_K8S_CA_FILE");
	rc = copy_setting(cfg->ca_file, sizeof(cfg->ca_file), v ? v : EGD_K8S_DEFAULT_CA_FILE,
			  "EGRESSD_K8S_CA_FILE", err, errlen);
	if (rc)
		return rc;
	v = getenv("NODE_NAME");
	if (!v || !*v) {
		snprintf(err, errlen, "NODE_NAME is not set (the downward API's spec.nodeName)");
		return -EINVAL;
	}
	rc = copy_setting(cfg->node_name, sizeof(cfg->node_name), v, "NODE_NAME", err, errlen);
	if (rc)
		return rc;
	v = getenv("EGRESSD_POD_SELECTOR");
	return copy_setting(cfg->selector, sizeof(cfg->selector), v ? v : EGD_K8S_DEFAULT_SELECTOR,
			    "EGRESSD_POD_SELECTOR", err, errlen);
}

/* --- pods ------------------------------------------------------------------ */

static const char *str_at(const json_t *obj, const char *a, const char *b)
{
	const json_t *o = json_object_get(obj, a);
	const char *s = json_string_value(json_object_get(o, b));

	return s ? s : "";
}

int egd_k8s_pod_from_json(const json_t *obj, struct egd_k8s_pod *pod)
{
	const json_t *md = json_object_get(obj, "metadata");
	const json_t *status = json_object_get(obj, "status");
	const json_t *ips = json_object_get(status, "podIPs");
	size_t i;
	json_t *ip;

	memset(pod, 0, sizeof(*pod));
	pod->uid = str_at(obj, "metadata", "uid");
	if (!*pod->uid)
		return -EINVAL;
	pod->name = str_at(obj, "metadata", "name");
	pod->ns = str_at(obj, "metadata", "namespace");
	pod->resource_version = str_at(obj, "metadata", "resourceVersion");
	pod->node_name = str_at(obj, "spec", "nodeName");
	pod->phase = str_at(obj, "status", "phase");
	pod->qos_class = str_at(obj, "status", "qosClass");
	pod->host_network = json_is_true(json_object_get(json_object_get(obj, "spec"),
							 "hostNetwork"));
	pod->terminating = json_object_get(md, "deletionTimestamp") &&
			   !json_is_null(json_object_get(md, "deletionTimestamp"));
	pod->labels = json_object_get(md, "labels");
	if (!json_is_object(pod->labels))
		pod->labels = NULL;
	pod->annotations = json_object_get(md, "annotations");
	if (!json_is_object(pod->annotations))
		pod->annotations = NULL;
	json_array_foreach(ips, i, ip) {
		const char *s = json_string_value(json_object_get(ip, "ip"));

		if (s && *s && pod->n_pod_ips < EGD_K8S_POD_IPS_MAX)
			pod->pod_ips[pod->n_pod_ips++] = s;
	}
	if (!pod->n_pod_ips && *str_at(obj, "status", "podIP"))
		pod->pod_ips[pod->n_pod_ips++] = str_at(obj, "status", "podIP");
	return 0;
}

const char *egd_k8s_pod_label(const struct egd_k8s_pod *pod, const char *key)
{
	return json_string_value(json_object_get(pod->labels, key));
}

const char *egd_k8s_pod_annotation(const struct egd_k8s_pod *pod, const char *key)
{
	return json_string_value(json_object_get(pod->annotations, key));
}

static void copy_keys(json_t *dst, const char *name, const json_t *src, const char *const *keys)
{
	const json_t *from = json_object_get(src, name);
	json_t *to;

	if (!json_is_object(from))
		return;
	to = json_object();
	if (!to)
		return;
	for (; *keys; keys++) {
		json_t *v = json_object_get(from, *keys);

		if (v)
			json_object_set(to, *keys, v);
	}
	json_object_set_new(dst, name, to);
}

/* What the cache keeps of a Pod: the fields egd_k8s_pod_from_json() reads,
 * not managedFields, container specs and the rest. */
static json_t *pod_trim(const json_t *obj)
{
	static const char *const md[] = { "uid",    "name",	   "namespace",
					  "resourceVersion", "labels", "annotations",
					  "deletionTimestamp", NULL };
	static const char *const spec[] = { "nodeName", "hostNetwork", NULL };
	static const char *const status[] = { "phase", "podIP", "podIPs", "qosClass", NULL };
	json_t *t = json_object();

	if (!t)
		return NULL;
	copy_keys(t, "metadata", obj, md);
	copy_keys(t, "spec", obj, spec);
	copy_keys(t, "status", obj, status);
	return t;
}

/* --- events to the callback ------------------------------------------------- */

static void emit(struct egd_k8s_client *c, enum egd_k8s_event ev, const json_t *obj)
{
	struct egd_k8s_pod pod;

	if (ev == EGD_K8S_SYNCED) {
		c->cb(c->arg, ev, NULL);
		return;
	}
	if (egd_k8s_pod_from_json(obj, &pod))
		return;
	c->st.events++;
	c->cb(c->arg, ev, &pod);
}

static void set_rv(struct egd_k8s_client *c, const json_t *obj)
{
	const char *rv = str_at(obj, "metadata", "resourceVersion");

	if (*rv)
		snprintf(c->rv, sizeof(c->rv), "%s", rv);
}

/* A pod seen by a watch or a list: into the cache, out as ADDED or
 * MODIFIED (by what the cache had, whatever the event said). */
static void upsert(struct egd_k8s_client *c, const json_t *obj, bool from_list)
{
	const char *uid = str_at(obj, "metadata", "uid");
	json_t *old, *t;
	bool changed;

	if (!*uid)
		return;
	old = json_object_get(c->cache, uid);
	changed = !old || strcmp(str_at(old, "metadata", "resourceVersion"),
				 str_at(obj, "metadata", "resourceVersion"));
	if (from_list && !changed)
		return;
	t = pod_trim(obj);
	if (!t)
		return;
	json_object_set_new(c->cache, uid, t); /* frees @old */
	emit(c, old ? EGD_K8S_MODIFIED : EGD_K8S_ADDED, t);
}

static void remove_pod(struct egd_k8s_client *c, const json_t *obj)
{
	const char *uid = str_at(obj, "metadata", "uid");
	json_t *t;

	if (!*uid)
		return;
	t = pod_trim(obj);
	if (!t)
		return;
	json_object_del(c->cache, uid);
	emit(c, EGD_K8S_DELETED, t);
	json_decref(t);
}

/* A complete PodList: reconcile the cache with it. */
static int handle_list(struct egd_k8s_client *c)
{
	json_error_t jerr;
	json_t *list = json_loadb(c->buf, c->len, 0, &jerr), *items, *item, *seen, *v;
	const char *uid;
	size_t i;
	void *tmp;

	if (!list) {
		egd_err("k8s: the pod list is not JSON: %s", jerr.text);
		return -EPROTO;
	}
	items = json_object_get(list, "items");
	if (!json_is_array(items) && !json_is_null(items) && items) {
		json_decref(list);
		egd_err("k8s: the pod list has no items array");
		return -EPROTO;
	}
	seen = json_object();
	if (!seen) {
		json_decref(list);
		return -ENOMEM;
	}
	json_array_foreach(items, i, item)
		json_object_set(seen, str_at(item, "metadata", "uid"), json_true());
	/* Gone while we were not watching. */
	json_object_foreach_safe(c->cache, tmp, uid, v) {
		if (!json_object_get(seen, uid)) {
			json_incref(v);
			json_object_del(c->cache, uid);
			emit(c, EGD_K8S_DELETED, v);
			json_decref(v);
		}
	}
	json_decref(seen);
	json_array_foreach(items, i, item)
		upsert(c, item, true);
	c->rv[0] = '\0';
	set_rv(c, list);
	json_decref(list);
	c->need_list = false;
	emit(c, EGD_K8S_SYNCED, NULL);
	return 0;
}

/* One line of a watch. Returns 0, 1 when the watch must end for a relist,
 * or -errno when it must end for a retry. */
static int handle_event(struct egd_k8s_client *c, const char *line, size_t len)
{
	json_error_t jerr;
	json_t *ev = json_loadb(line, len, 0, &jerr), *obj;
	const char *type;
	int rc = 0;

	if (!ev) {
		egd_err("k8s: a watch event is not JSON: %s", jerr.text);
		return -EPROTO;
	}
	type = json_string_value(json_object_get(ev, "type"));
	obj = json_object_get(ev, "object");
	if (!type || !json_is_object(obj)) {
		rc = -EPROTO;
	} else if (!strcmp(type, "ADDED") || !strcmp(type, "MODIFIED")) {
		upsert(c, obj, false);
		set_rv(c, obj);
	} else if (!strcmp(type, "DELETED")) {
		remove_pod(c, obj);
		set_rv(c, obj);
	} else if (!strcmp(type, "BOOKMARK")) {
		c->st.bookmarks++;
		set_rv(c, obj);
	} else if (!strcmp(type, "ERROR")) {
		json_int_t code = json_integer_value(json_object_get(obj, "code"));

		egd_warn("k8s: watch error %lld: %s", (long long)code,
			 json_string_value(json_object_get(obj, "message")) ?: "");
		if (code == 410) {
			c->st.gone++;
			rc = 1;
		} else {
			rc = -EPROTO;
		}
	} else {
		rc = -EPROTO;
	}
	if (rc == -EPROTO)
		egd_err("k8s: unexpected watch event (type %s)", type ? type : "none");
	json_decref(ev);
	return rc;
}

/* --- requests ------------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
	struct egd_k8s_client *c = userp;
	size_t n = size * nmemb;

	if (c->len + n > c->max) {
		c->too_big = true;
		return 0; /* curl ends the transfer with CURLE_WRITE_ERROR */
	}
	if (c->len + n + 1 > c->cap) {
		size_t cap = c->cap ? c->cap : 16384;
		char *b;

		while (cap < c->len + n + 1)
			cap *= 2;
		b = realloc(c->buf, cap);
		if (!b)
			return 0;
		c->buf = b;
		c->cap = cap;
	}
	memcpy(c->buf + c->len, data, n);
	c->len += n;
	c->buf[c->len] = '\0';
	return n;
}

/* The token as the kubelet last wrote it. */
static int read_token(struct egd_k8s_client *c, char *tok, size_t len)
{
	int fd = open(c->cfg.token_file, O_RDONLY | O_CLOEXEC);
	ssize_t got = -1;
	size_t n = 0;
	int err = 0;

	if (fd < 0) {
		err = -errno;
	} else {
		got = read(fd, tok, len - 1);
		err = got < 0 ? -errno : 0;
		close(fd);
	}
	if (!err) {
		n = (size_t)got;
		if (n == len - 1)
			err = -EFBIG;
		while (n > 0 && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' '))
			n--;
		tok[n < len ? n : len - 1] = '\0';
		if (!err && (!n || strpbrk(tok, "\r\n")))
			err = -EINVAL;
	}
	if (err) {
		char msg[sizeof(c->last_token_err)];

		snprintf(msg, sizeof(msg), "%s: %s", c->cfg.token_file, strerror(-err));
		if (strcmp(msg, c->last_token_err))
			egd_err("k8s: cannot read the service account token %s", msg);
		snprintf(c->last_token_err, sizeof(c->last_token_err), "%s", msg);
		return err;
	}
	c->last_token_err[0] = '\0';
	return 0;
}

/* The next request after @delay_ms, and never sooner than backoff_min_ms
 * after the last one started: an API that ends every watch at once, or a
 * list whose version is gone again at once, costs a few requests a second,
 * not a busy loop. */
static void schedule(struct egd_k8s_client *c, unsigned delay_ms)
{
	unsigned long long at = egd_now_ms() + delay_ms;

	if (c->last_start_ms && at < c->last_start_ms + c->cfg.backoff_min_ms)
		at = c->last_start_ms + c->cfg.backoff_min_ms;
	egd_timer_arm(c->loop, &c->retry, at);
}

/* A failed request: the next one after a growing, jittered wait. */
static void fail(struct egd_k8s_client *c)
{
	unsigned d;

	c->st.failures++;
	c->failing = true;
	c->st.synced = false;
	c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : c->cfg.backoff_min_ms;
	if (c->backoff_ms > c->cfg.backoff_max_ms)
		c->backoff_ms = c->cfg.backoff_max_ms;
	/* 75% to 100% of the step, so many nodes do not come back at once. */
	d = c->backoff_ms - (unsigned)(random() % (c->backoff_ms / 4 + 1));
	schedule(c, d);
}

static void succeeded(struct egd_k8s_client *c)
{
	c->failing = false;
	c->backoff_ms = 0;
	c->st.synced = !c->need_list;
}

static int url_for(struct egd_k8s_client *c, bool watch, char *url, size_t len)
{
	char *node = curl_easy_escape(c->easy, c->cfg.node_name, 0);
	char sel_part[EGD_K8S_SELECTOR_MAX_BYTES * 3 + 32] = "";
	char *rv = NULL;
	int n;

	if (!node)
		return -ENOMEM;
	if (c->cfg.selector[0]) {
		char *sel = curl_easy_escape(c->easy, c->cfg.selector, 0);

		if (!sel) {
			curl_free(node);
			return -ENOMEM;
		}
		snprintf(sel_part, sizeof(sel_part), "&labelSelector=%s", sel);
		curl_free(sel);
	}
	if (watch)
		rv = curl_easy_escape(c->easy, c->rv, 0);
	if (watch && rv)
		n = snprintf(url, len,
			     "%s/api/v1/pods?fieldSelector=spec.nodeName%%3D%s%s&watch=1"
			     "&resourceVersion=%s&allowWatchBookmarks=true&timeoutSeconds=%u",
			     c->cfg.api, node, sel_part, rv, c->cfg.watch_timeout_s);
	else
		n = snprintf(url, len, "%s/api/v1/pods?fieldSelector=spec.nodeName%%3D%s%s",
			     c->cfg.api, node, sel_part);
	curl_free(node);
	curl_free(rv);
	if (watch && !rv)
		return -ENOMEM;
	return n >= (int)len ? -ENAMETOOLONG : 0;
}

static void end_request(struct egd_k8s_client *c)
{
	if (c->easy) {
		curl_multi_remove_handle(c->multi, c->easy);
		curl_easy_cleanup(c->easy);
		c->easy = NULL;
	}
	curl_slist_free_all(c->headers);
	c->headers = NULL;
	c->state = ST_IDLE;
	c->len = c->consumed = 0;
	c->too_big = false;
}

static void start_request(struct egd_timer *t)
{
	struct egd_k8s_client *c = (void *)((char *)t - offsetof(struct egd_k8s_client, retry));
	bool watch = !c->need_list && c->rv[0];
	char url[EGD_K8S_URL_MAX_BYTES + EGD_K8S_SELECTOR_MAX_BYTES * 3 + 512];
	char tok[K8S_TOKEN_MAX_BYTES], auth[K8S_TOKEN_MAX_BYTES + 32];
	long timeout_ms = watch ? (long)c->cfg.watch_timeout_s * 1000 + K8S_WATCH_SLACK_MS :
				  K8S_LIST_TIMEOUT_MS;
	struct curl_slist *h;

	end_request(c);
	c->last_start_ms = egd_now_ms();
	if (c->cfg.token_file[0] && read_token(c, tok, sizeof(tok))) {
		fail(c);
		return;
	}
	c->easy = curl_easy_init();
	if (!c->easy || url_for(c, watch, url, sizeof(url))) {
		end_request(c);
		fail(c);
		return;
	}
	h = curl_slist_append(NULL, "Accept: application/json");
	if (h && c->cfg.token_file[0]) {
		struct curl_slist *h2;

		snprintf(auth, sizeof(auth), "Authorization: Bearer %s", tok);
		h2 = curl_slist_append(h, auth);
		explicit_bzero(auth, sizeof(auth));
		if (!h2) {
			curl_slist_free_all(h);
			h = NULL;
		}
	}
	explicit_bzero(tok, sizeof(tok));
	if (!h) {
		end_request(c);
		fail(c);
		return;
	}
	c->headers = h;
	curl_easy_setopt(c->easy, CURLOPT_URL, url);
	curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers);
	curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
	curl_easy_setopt(c->easy, CURLOPT_PRIVATE, c);
	curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c->easy, CURLOPT_PROTOCOLS_STR, "http,https");
	/* The API is the service address of this cluster: never through an
	 * HTTP proxy from the environment. */
	curl_easy_setopt(c->easy, CURLOPT_NOPROXY, "*");
	curl_easy_setopt(c->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)K8S_CONNECT_TIMEOUT_MS);
	curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(c->easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(c->easy, CURLOPT_TCP_KEEPIDLE, (long)K8S_KEEPALIVE_IDLE_S);
	curl_easy_setopt(c->easy, CURLOPT_TCP_KEEPINTVL, (long)K8S_KEEPALIVE_INTVL_S);
	if (c->cfg.ca_file[0] && !strncmp(c->cfg.api, "https://", 8))
		curl_easy_setopt(c->easy, CURLOPT_CAINFO, c->cfg.ca_file);
	c->max = watch ? K8S_EVENT_MAX_BYTES : K8S_LIST_MAX_BYTES;
	c->state = watch ? ST_WATCHING : ST_LISTING;
	if (watch)
		c->st.watches++;
	else
		c->st.lists++;
	egd_debug("k8s: %s %s", watch ? "watch" : "list", url);
	if (curl_multi_add_handle(c->multi, c->easy) != CURLM_OK) {
		end_request(c);
		fail(c);
	}
}

/* The complete lines of a watch that answered 200. */
static int drain_lines(struct egd_k8s_client *c)
{
	long code = 0;

	curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &code);
	if (code != 200)
		return 0;
	for (;;) {
		char *start = c->buf + c->consumed;
		char *nl = memchr(start, '\n', c->len - c->consumed);
		int rc;

		if (!nl)
			break;
		c->consumed = (size_t)(nl - c->buf) + 1;
		if (nl == start)
			continue;
		rc = handle_event(c, start, (size_t)(nl - start));
		if (rc)
			return rc;
	}
	/* Keep the buffer small: drop what has been handled. */
	if (c->consumed && c->consumed == c->len) {
		c->len = c->consumed = 0;
	} else if (c->consumed > c->max / 2) {
		memmove(c->buf, c->buf + c->consumed, c->len - c->consumed);
		c->len -= c->consumed;
		c->consumed = 0;
	}
	return 0;
}

static void finish(struct egd_k8s_client *c, CURLcode res)
{
	long code = 0;
	bool watch = c->state == ST_WATCHING;

	curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &code);
	if (res != CURLE_OK) {
		if (c->too_big)
			egd_err("k8s: %s larger than %zu bytes",
				watch ? "a watch event" : "the pod list", c->max);
		else
			egd_warn("k8s: %s failed: %s", watch ? "watch" : "list",
				 curl_easy_strerror(res));
		/* A watch cut mid-stream resumes from the last version seen. */
		if (res == CURLE_OPERATION_TIMEDOUT && watch && code == 200) {
			end_request(c);
			schedule(c, 0);
			return;
		}
		end_request(c);
		fail(c);
		return;
	}
	if (code == 410) {
		egd_info("k8s: resourceVersion %s is gone; listing again", c->rv);
		c->st.gone++;
		c->need_list = true;
		end_request(c);
		schedule(c, 0);
		return;
	}
	if (code != 200) {
		if (code == 401) {
			c->st.unauthorized++;
			egd_warn("k8s: the API refused the token (401); reading %s again",
				 c->cfg.token_file);
		} else {
			egd_warn("k8s: %s answered HTTP %ld", watch ? "watch" : "list", code);
		}
		end_request(c);
		fail(c);
		return;
	}
	if (!watch) {
		int rc = handle_list(c);

		end_request(c);
		if (rc) {
			fail(c);
			return;
		}
		succeeded(c);
		schedule(c, 0);
		return;
	}
	/* The server closed the watch: handle what is left, resume. */
	if (c->len > c->consumed) {
		c->buf[c->len] = '\n';
		c->len++;
		if (drain_lines(c) < 0) {
			end_request(c);
			fail(c);
			return;
		}
	}
	succeeded(c);
	end_request(c);
	schedule(c, 0);
}

/* After curl ran: events out, finished transfers handled. */
static void after_curl(struct egd_k8s_client *c)
{
	CURLMsg *m;
	int left;

	if (c->state == ST_WATCHING && c->easy) {
		int rc = drain_lines(c);

		if (rc) {
			bool gone = rc > 0;

			end_request(c);
			if (gone) {
				c->need_list = true;
				schedule(c, 0);
			} else {
				fail(c);
			}
			return;
		}
		if (c->failing) {
			long code = 0;

			curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &code);
			if (code == 200)
				succeeded(c);
		}
	}
	while ((m = curl_multi_info_read(c->multi, &left))) {
		if (m->msg == CURLMSG_DONE && m->easy_handle == c->easy) {
			finish(c, m->data.result);
			break;
		}
	}
}

/* --- curl on the loop ------------------------------------------------------- */

static void on_sock_ready(struct egd_watch *w, uint32_t events)
{
	struct sock *s = (void *)((char *)w - offsetof(struct sock, w));
	struct egd_k8s_client *c = s->c;
	int flags = 0, running;

	if (events & EPOLLIN)
		flags |= CURL_CSELECT_IN;
	if (events & EPOLLOUT)
		flags |= CURL_CSELECT_OUT;
	if (events & (EPOLLERR | EPOLLHUP))
		flags |= CURL_CSELECT_ERR;
	/* @s may be freed inside (CURL_POLL_REMOVE): not used after. */
	curl_multi_socket_action(c->multi, w->fd, flags, &running);
	after_curl(c);
}

static int on_curl_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct egd_k8s_client *c = userp;
	struct sock *s = socketp;
	uint32_t ev = 0;

	(void)e;
	if (what == CURL_POLL_REMOVE) {
		if (s) {
			egd_loop_del(c->loop, &s->w);
			curl_multi_assign(c->multi, fd, NULL);
			free(s);
		}
		return 0;
	}
	if (what & CURL_POLL_IN)
		ev |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev |= EPOLLOUT;
	if (!s) {
		s = calloc(1, sizeof(*s));
		if (!s)
			return -1;
		s->c = c;
		s->w.fd = fd;
		s->w.cb = on_sock_ready;
		if (egd_loop_add(c->loop, &s->w, ev)) {
			free(s);
			return -1;
		}
		curl_multi_assign(c->multi, fd, s);
		return 0;
	}
	return egd_loop_mod(c->loop, &s->w, ev) ? -1 : 0;
}

static void on_curl_timer_fired(struct egd_timer *t)
{
	struct egd_k8s_client *c =
		(void *)((char *)t - offsetof(struct egd_k8s_client, curl_timer));
	int running;

	curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	after_curl(c);
}

static int on_curl_timer(CURLM *m, long timeout_ms, void *userp)
{
	struct egd_k8s_client *c = userp;

	(void)m;
	if (timeout_ms < 0) {
		egd_timer_cancel(c->loop, &c->curl_timer);
		return 0;
	}
	return egd_timer_arm(c->loop, &c->curl_timer, egd_now_ms() + (unsigned long)timeout_ms) ?
		       -1 :
		       0;
}

struct egd_k8s_client *egd_k8s_client_new(struct egd_loop *loop, const struct egd_k8s_config *cfg,
					  egd_k8s_event_cb cb, void *arg)
{
	struct egd_k8s_client *c;

	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK) {
		errno = EIO;
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->loop = loop;
	c->cfg = *cfg;
	if (!c->cfg.backoff_min_ms)
		c->cfg.backoff_min_ms = EGD_K8S_BACKOFF_MIN_MS;
	if (c->cfg.backoff_max_ms < c->cfg.backoff_min_ms)
		c->cfg.backoff_max_ms = c->cfg.backoff_min_ms;
	if (!c->cfg.watch_timeout_s)
		c->cfg.watch_timeout_s = EGD_K8S_WATCH_TIMEOUT_S;
	c->cb = cb;
	c->arg = arg;
	c->need_list = true;
	c->curl_timer.cb = on_curl_timer_fired;
	c->retry.cb = start_request;
	c->cache = json_object();
	c->multi = curl_multi_init();
	if (!c->cache || !c->multi) {
		egd_k8s_client_free(c);
		errno = ENOMEM;
		return NULL;
	}
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
	if (egd_timer_arm(loop, &c->retry, egd_now_ms())) {
		egd_k8s_client_free(c);
		errno = ENOMEM;
		return NULL;
	}
	return c;
}

void egd_k8s_client_free(struct egd_k8s_client *c)
{
	if (!c)
		return;
	end_request(c); /* curl's REMOVE callbacks free the socket watches */
	if (c->multi)
		curl_multi_cleanup(c->multi);
	egd_timer_cancel(c->loop, &c->retry);
	egd_timer_cancel(c->loop, &c->curl_timer);
	json_decref(c->cache);
	free(c->buf);
	free(c);
}

void egd_k8s_client_stats(const struct egd_k8s_client *c, struct egd_k8s_stats *st)
{
	*st = c->st;
	st->pods = json_object_size(c->cache);
}
