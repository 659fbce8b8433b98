/* SPDX-License-Identifier: MIT */
/*
 * The Kubernetes API client of node mode: it lists the pods of one node that
 * carry the opt-in label, then watches them, and hands each change to a
 * callback as ADDED, MODIFIED or DELETED with the few fields enrolment needs.
 * It enrols nothing itself.
 *
 * It runs on the daemon's event loop (curl's multi-socket interface, with
 * curl's sockets and timer as loop watches and a loop timer), so events
 * arrive on the thread that owns the per-pod state and never need a lock;
 * nothing in it blocks but reading the token file, a local file of a few
 * hundred bytes. The watch follows the API's rules (research/kubernetes.md
 * §4): it resumes from the last resourceVersion seen (bookmarks included),
 * relists on 410 Gone (as an HTTP status or as an ERROR event), backs off
 * exponentially while the API cannot be reached, and reads the service
 * account token again before every request, so a rotated token is used as
 * soon as the kubelet writes it (and after a 401, the next try reads it).
 *
 * After a relist the client reconciles with what it had: pods gone from the
 * list are reported DELETED, new ones ADDED, changed ones MODIFIED, then
 * SYNCED says the set is complete (also after the first list, which a
 * restarted daemon uses to re-adopt its pods and to drop state of pods that
 * are gone).
 */
#ifndef EGD_K8S_API_H
#define EGD_K8S_API_H

#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

struct egd_loop;
struct egd_k8s_client;

#define EGD_K8S_DEFAULT_TOKEN_FILE "/var/run/secrets/kubernetes.io/serviceaccount/token"
#define EGD_K8S_DEFAULT_CA_FILE "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
#define EGD_K8S_DEFAULT_SELECTOR "egressd.io/enforce=true"
/* The API server ends a watch after this long and the client resumes it;
 * client-go picks 5-10 minutes at random. */
#define EGD_K8S_WATCH_TIMEOUT_S 300
/* First and longest wait before trying an unreachable API again. */
#define EGD_K8S_BACKOFF_MIN_MS 200
#define EGD_K8S_BACKOFF_MAX_MS 30000

#define EGD_K8S_URL_MAX_BYTES 512
#define EGD_K8S_NODE_MAX_BYTES 254     /* a DNS subdomain, + NUL */
#define EGD_K8S_SELECTOR_MAX_BYTES 1024
/* Dual-stack pods have one IP per family. */
#define EGD_K8S_POD_IPS_MAX 2

struct egd_k8s_config {
	char api[EGD_K8S_URL_MAX_BYTES]; /* http(s)://host[:port], no trailing '/' */
	char token_file[PATH_MAX];	 /* "" = send no token (tests) */
	char ca_file[PATH_MAX];		 /* "" = the system store */
	char node_name[EGD_K8S_NODE_MAX_BYTES];
	char selector[EGD_K8S_SELECTOR_MAX_BYTES]; /* a label selector; "" = every pod */
	unsigned watch_timeout_s;
	unsigned backoff_min_ms, backoff_max_ms;
};

/* The settings from EGRESSD_K8S_API (default https:// from
 * KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT), EGRESSD_K8S_TOKEN_FILE,
 * EGRESSD_K8S_CA_FILE, NODE_NAME and EGRESSD_POD_SELECTOR. -EINVAL with the
 * reason in @err (naming the variable) on a missing or bad value. */
int egd_k8s_config_from_env(struct egd_k8s_config *cfg, char *err, size_t errlen);

enum egd_k8s_event {
	EGD_K8S_ADDED,
	EGD_K8S_MODIFIED,
	EGD_K8S_DELETED,
	EGD_K8S_SYNCED, /* a list has been fully reported; the pod is NULL */
};

const char *egd_k8s_event_name(enum egd_k8s_event ev);

/* A pod as the callback sees it. Every string is non-NULL ("" when the API
 * left it out) and, like the two objects, valid only during the callback
 * (json_object_foreach() over a NULL object runs zero times). */
struct egd_k8s_pod {
	const char *uid;
	const char *name;
	const char *ns;
	const char *node_name;
	const char *phase;     /* status.phase: Pending, Running, ... */
	const char *qos_class; /* status.qosClass: Guaranteed, Burstable, BestEffort */
	const char *resource_version;
	const char *pod_ips[EGD_K8S_POD_IPS_MAX]; /* status.podIPs, else status.podIP */
	size_t n_pod_ips;
	bool host_network;
	bool terminating; /* metadata.deletionTimestamp is set */
	const json_t *labels;	   /* JSON object, NULL when there are none */
	const json_t *annotations; /* JSON object, NULL when there are none */
};

/* The value of label or annotation @key, or NULL. */
const char *egd_k8s_pod_label(const struct egd_k8s_pod *pod, const char *key);
const char *egd_k8s_pod_annotation(const struct egd_k8s_pod *pod, const char *key);

/* Fill @pod from a Pod object (pure; pointers into @obj). -EINVAL when it
 * has no metadata.uid. */
int egd_k8s_pod_from_json(const json_t *obj, struct egd_k8s_pod *pod);

/* Called on the loop's thread, never from inside curl. It must not free the
 * client. */
typedef void (*egd_k8s_event_cb)(void *arg, enum egd_k8s_event ev, const struct egd_k8s_pod *pod);

/* Start listing at once. NULL with errno set on failure. */
struct egd_k8s_client *egd_k8s_client_new(struct egd_loop *loop, const struct egd_k8s_config *cfg,
					  egd_k8s_event_cb cb, void *arg);
void egd_k8s_client_free(struct egd_k8s_client *c);

struct egd_k8s_stats {
	unsigned long lists;	  /* list requests started */
	unsigned long watches;	  /* watch requests started */
	unsigned long gone;	  /* 410 Gone seen (status or ERROR event) */
	unsigned long failures;	  /* requests that failed (unreachable, 4xx/5xx, bad JSON) */
	unsigned long unauthorized; /* 401s */
	unsigned long bookmarks;
	unsigned long events; /* ADDED/MODIFIED/DELETED handed to the callback */
	size_t pods;	      /* pods known now */
	bool synced;	      /* the last list succeeded and the watch is not failing */
};
void egd_k8s_client_stats(const struct egd_k8s_client *c, struct egd_k8s_stats *st);

#endif
