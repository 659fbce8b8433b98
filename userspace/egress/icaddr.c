/* SPDX-License-Identifier: MIT */
/*
 * The intercept-address table; see icaddr.h. An open-addressing hash of
 * EGD_ICADDR_MAX_ENTRIES slots with linear probing, looked up by the whole
 * struct egd_ip. Deleting leaves a tombstone, so probes stay correct.
 */
#include "egress/icaddr.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Twice the entries, so that probes stay short when the table is full. */
#define ICADDR_SLOTS (2 * EGD_ICADDR_MAX_ENTRIES)

enum slot_state { SLOT_EMPTY = 0, SLOT_USED, SLOT_GONE };

struct slot {
	enum slot_state state;
	struct egd_ip ip;
	uint64_t expires_ns;
	char host[EGD_HOST_MAX];
};

struct egd_icaddr_table {
	pthread_rwlock_t lock;
	struct slot slots[ICADDR_SLOTS];
	size_t used, gone; /* live entries, tombstones */
	egd_icaddr_put_fn put;
	void *put_arg;
	uint64_t sink_errors;
};

uint64_t egd_icaddr_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void egd_ip_from_addr(struct egd_ip *ip, const struct egd_addr *a)
{
	static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	memset(ip, 0, sizeof(*ip));
	ip->family = a->family;
	/* The agent may dial an IPv4 answer as ::ffff:a.b.c.d. */
	if (a->family == EGD_AF_INET6 && !memcmp(a->addr, mapped, sizeof(mapped))) {
		ip->family = EGD_AF_INET;
		ip->addr[0] = a->addr[3];
		return;
	}
	memcpy(ip->addr, a->addr, a->family == EGD_AF_INET ? 4 : 16);
}

/* FNV-1a over the key's bytes. */
static size_t hash(const struct egd_ip *ip)
{
	const uint8_t *p = (const uint8_t *)ip;
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < sizeof(*ip); i++)
		h = (h ^ p[i]) * 16777619u;
	return h % ICADDR_SLOTS;
}

struct egd_icaddr_table *egd_icaddr_new(void)
{
	struct egd_icaddr_table *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	pthread_rwlock_init(&t->lock, NULL);
	return t;
}

void egd_icaddr_free(struct egd_icaddr_table *t)
{
	if (!t)
		return;
	pthread_rwlock_destroy(&t->lock);
	free(t);
}

void egd_icaddr_set_sink(struct egd_icaddr_table *t, egd_icaddr_put_fn put, void *arg)
{
	pthread_rwlock_wrlock(&t->lock);
	t->put = put;
	t->put_arg = arg;
	pthread_rwlock_unlock(&t->lock);
}

/* The slot holding @ip, or NULL. Under either lock. */
static struct slot *find(struct egd_icaddr_table *t, const struct egd_ip *ip)
{
	size_t i = hash(ip);

	for (size_t n = 0; n < ICADDR_SLOTS; n++, i = (i + 1) % ICADDR_SLOTS) {
		struct slot *s = &t->slots[i];

		if (s->state == SLOT_EMPTY)
			return NULL;
		if (s->state == SLOT_USED && !memcmp(&s->ip, ip, sizeof(*ip)))
			return s;
	}
	return NULL;
}

static size_t expire_locked(struct egd_icaddr_table *t, uint64_t now_ns)
{
	for (size_t i = 0; i < ICADDR_SLOTS; i++) {
		struct slot *s = &t->slots[i];

		if (s->state == SLOT_USED && s->expires_ns <= now_ns) {
			s->state = SLOT_GONE;
			t->used--;
			t->gone++;
		}
	}
	return t->used;
}

/* Put the live entries back without tombstones, which a long-running
 * table would otherwise fill up with until every miss probes it whole. */
static void rebuild(struct egd_icaddr_table *t)
{
	struct slot *old = malloc(sizeof(t->slots));

	if (!old)
		return; /* tombstones stay; probes are still correct */
	memcpy(old, t->slots, sizeof(t->slots));
	memset(t->slots, 0, sizeof(t->slots));
	t->gone = 0;
	for (size_t i = 0; i < ICADDR_SLOTS; i++) {
		size_t j;

		if (old[i].state != SLOT_USED)
			continue;
		j = hash(&old[i].ip);
		while (t->slots[j].state != SLOT_EMPTY)
			j = (j + 1) % ICADDR_SLOTS;
		t->slots[j] = old[i];
	}
	free(old);
}

/* Make room for one more: the expired first, else the entry that expires
 * soonest (it would have been the next to go). */
static void make_room(struct egd_icaddr_table *t, uint64_t now_ns)
{
	if (expire_locked(t, now_ns) >= EGD_ICADDR_MAX_ENTRIES) {
		struct slot *soonest = NULL;

		for (size_t i = 0; i < ICADDR_SLOTS; i++)
			if (t->slots[i].state == SLOT_USED &&
			    (!soonest || t->slots[i].expires_ns < soonest->expires_ns))
				soonest = &t->slots[i];
		soonest->state = SLOT_GONE;
		t->used--;
		t->gone++;
	}
}

int egd_icaddr_add(struct egd_icaddr_table *t, const struct egd_ip *ip, const char *host,
		   uint64_t expires_ns)
{
	egd_icaddr_put_fn put;
	void *arg;
	struct slot *s;
	uint64_t exp = expires_ns;
	int err = 0;

	pthread_rwlock_wrlock(&t->lock);
	s = find(t, ip);
	if (!s) {
		size_t i;

		if (t->used >= EGD_ICADDR_MAX_ENTRIES)
			make_room(t, egd_icaddr_now_ns());
		if (t->gone > EGD_ICADDR_MAX_ENTRIES / 2)
			rebuild(t);
		for (i = hash(ip); t->slots[i].state == SLOT_USED; i = (i + 1) % ICADDR_SLOTS)
			;
		s = &t->slots[i];
		if (s->state == SLOT_GONE)
			t->gone--;
		s->state = SLOT_USED;
		s->ip = *ip;
		s->expires_ns = 0;
		t->used++;
	}
	if (s->expires_ns > exp)
		exp = s->expires_ns;
	s->expires_ns = exp;
	snprintf(s->host, sizeof(s->host), "%s", host);
	put = t->put;
	arg = t->put_arg;
	if (put) {
		err = put(arg, ip, exp);
		if (err)
			t->sink_errors++;
	}
	pthread_rwlock_unlock(&t->lock);
	return err;
}

int egd_icaddr_lookup(struct egd_icaddr_table *t, const struct egd_ip *ip, uint64_t now_ns,
		      char *host, size_t len)
{
	struct slot *s;
	int hit = 0;

	pthread_rwlock_rdlock(&t->lock);
	s = find(t, ip);
	if (s && s->expires_ns > now_ns) {
		hit = 1;
		if (host && len)
			snprintf(host, len, "%s", s->host);
	}
	pthread_rwlock_unlock(&t->lock);
	return hit;
}

size_t egd_icaddr_expire(struct egd_icaddr_table *t, uint64_t now_ns)
{
	size_t n;

	pthread_rwlock_wrlock(&t->lock);
	n = expire_locked(t, now_ns);
	pthread_rwlock_unlock(&t->lock);
	return n;
}

size_t egd_icaddr_count(struct egd_icaddr_table *t)
{
	size_t n;

	pthread_rwlock_rdlock(&t->lock);
	n = t->used;
	pthread_rwlock_unlock(&t->lock);
	return n;
}

uint64_t egd_icaddr_sink_errors(struct egd_icaddr_table *t)
{
	uint64_t n;

	pthread_rwlock_rdlock(&t->lock);
	n = t->sink_errors;
	pthread_rwlock_unlock(&t->lock);
	return n;
}
