// SPDX-License-Identifier: MIT
/*
 * The pod CA: generated once with its key private, reused across restarts,
 * published with the system roots, and minting leaves that a client checking
 * chain and hostname accepts.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "proxy/ca.h"

struct dirs {
	char root[64];
	char key_dir[128];
	char out_dir[128];
	char sys[128];
};

static int setup(void **state)
{
	struct dirs *d = calloc(1, sizeof(*d));
	FILE *f;

	strcpy(d->root, "/tmp/egd-ca-test.XXXXXX");
	assert_non_null(mkdtemp(d->root));
	snprintf(d->key_dir, sizeof(d->key_dir), "%s/key", d->root);
	snprintf(d->out_dir, sizeof(d->out_dir), "%s/pub/ca", d->root);
	snprintf(d->sys, sizeof(d->sys), "%s/system.crt", d->root);
	/* Stand-in for the system roots: any marker the bundle must keep. */
	f = fopen(d->sys, "w");
	assert_non_null(f);
	fputs("# system roots marker", f);
	fclose(f);
	*state = d;
	return 0;
}

static int teardown(void **state)
{
	struct dirs *d = *state;
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", d->root);
	if (system(cmd))
		return -1;
	free(d);
	return 0;
}

static char *slurp(const char *dir, const char *name)
{
	char path[256];
	FILE *f;
	char *buf = calloc(1, 1 << 20);

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "r");
	if (!f) {
		free(buf);
		return NULL;
	}
	if (fread(buf, 1, (1 << 20) - 1, f) == 0) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

static void test_generate_private_key_and_publish(void **state)
{
	struct dirs *d = *state;
	char path[256], *pub, *bundle, *ours;
	struct stat st;
	struct egd_ca *ca = egd_ca_open(d->key_dir, d->out_dir, d->sys);

	assert_non_null(ca);
	assert_true(egd_ca_generated(ca));
	snprintf(path, sizeof(path), "%s/%s", d->key_dir, EGD_CA_KEY_FILE);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(stat(d->key_dir, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	/* The published directory holds the certificate, never the key. */
	snprintf(path, sizeof(path), "%s/%s", d->out_dir, EGD_CA_KEY_FILE);
	assert_int_not_equal(access(path, F_OK), 0);
	pub = slurp(d->out_dir, EGD_CA_CERT_FILE);
	bundle = slurp(d->out_dir, EGD_CA_BUNDLE_FILE);
	assert_non_null(pub);
	assert_non_null(bundle);
	assert_null(strstr(pub, "PRIVATE KEY"));
	assert_null(strstr(bundle, "PRIVATE KEY"));
	assert_non_null(strstr(bundle, "# system roots marker\n"));
	ours = strstr(bundle, pub);
	assert_non_null(ours);
	free(pub);
	free(bundle);
	egd_ca_destroy(ca);
}

static void test_reload_reuses_ca(void **state)
{
	struct dirs *d = *state;
	struct egd_ca *a = egd_ca_open(d->key_dir, d->out_dir, d->sys), *b;

	assert_non_null(a);
	b = egd_ca_open(d->key_dir, d->out_dir, d->sys);
	assert_non_null(b);
	assert_false(egd_ca_generated(b));
	assert_int_equal(X509_cmp(egd_ca_cert(a), egd_ca_cert(b)), 0);
	egd_ca_destroy(a);
	egd_ca_destroy(b);
}

static void test_corrupt_key_regenerates(void **state)
{
	struct dirs *d = *state;
	char path[256];
	struct egd_ca *a = egd_ca_open(d->key_dir, d->out_dir, NULL), *b;
	FILE *f;

	assert_non_null(a);
	snprintf(path, sizeof(path), "%s/%s", d->key_dir, EGD_CA_KEY_FILE);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("garbage", f);
	fclose(f);
	b = egd_ca_open(d->key_dir, d->out_dir, NULL);
	assert_non_null(b);
	assert_true(egd_ca_generated(b));
	assert_int_not_equal(X509_cmp(egd_ca_cert(a), egd_ca_cert(b)), 0);
	egd_ca_destroy(a);
	egd_ca_destroy(b);
}

static int verify_leaf(X509 *root, X509 *leaf, const char *host)
{
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	X509_VERIFY_PARAM *param;
	int ok;

	X509_STORE_add_cert(store, root);
	X509_STORE_CTX_init(ctx, store, leaf, NULL);
	param = X509_STORE_CTX_get0_param(ctx);
	X509_VERIFY_PARAM_set1_host(param, host, 0);
	X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER);
	ok = X509_verify_cert(ctx);
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	return ok;
}

static void test_leaf_verifies_for_its_host_only(void **state)
{
	struct dirs *d = *state;
	struct egd_ca *ca = egd_ca_open(d->key_dir, d->out_dir, NULL);
	EVP_PKEY *key;
	X509 *leaf;

	assert_non_null(ca);
	assert_int_equal(egd_ca_mint(ca, "openrouter.ai", &leaf, &key), 0);
	assert_int_equal(verify_leaf(egd_ca_cert(ca), leaf, "openrouter.ai"), 1);
	assert_int_not_equal(verify_leaf(egd_ca_cert(ca), leaf, "evil.example"), 1);
	assert_int_equal(X509_check_private_key(leaf, key), 1);
	X509_free(leaf);
	EVP_PKEY_free(key);

	/* An IP literal gets an iPAddress SAN. */
	assert_int_equal(egd_ca_mint(ca, "127.0.0.1", &leaf, &key), 0);
	assert_int_equal(X509_check_ip_asc(leaf, "127.0.0.1", 0), 1);
	X509_free(leaf);
	EVP_PKEY_free(key);

	assert_int_equal(egd_ca_mint(ca, "bad host\r\n", &leaf, &key), -EINVAL);
	egd_ca_destroy(ca);
}

static void test_server_ctx_cached_per_host(void **state)
{
	struct dirs *d = *state;
	struct egd_ca *ca = egd_ca_open(d->key_dir, d->out_dir, NULL);
	SSL_CTX *a, *b, *c;

	assert_non_null(ca);
	a = egd_ca_server_ctx(ca, "openrouter.ai");
	b = egd_ca_server_ctx(ca, "OpenRouter.ai");
	c = egd_ca_server_ctx(ca, "other.example");
	assert_non_null(a);
	assert_ptr_equal(a, b);
	assert_ptr_not_equal(a, c);
	assert_non_null(SSL_CTX_get0_certificate(a));
	assert_int_equal(X509_check_host(SSL_CTX_get0_certificate(a), "openrouter.ai", 0, 0, NULL),
			 1);
	assert_null(egd_ca_server_ctx(ca, ""));
	SSL_CTX_free(a);
	SSL_CTX_free(b);
	/* The caller's reference outlives the cache. */
	egd_ca_destroy(ca);
	assert_non_null(SSL_CTX_get0_certificate(c));
	SSL_CTX_free(c);
	egd_ca_destroy(NULL);
}

static void test_same_dir_refused(void **state)
{
	struct dirs *d = *state;

	errno = 0;
	assert_null(egd_ca_open(d->key_dir, d->key_dir, NULL));
	assert_int_equal(errno, EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_generate_private_key_and_publish, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_reload_reuses_ca, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_key_regenerates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_leaf_verifies_for_its_host_only, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_server_ctx_cached_per_host, setup, teardown),
		cmocka_unit_test_setup_teardown(test_same_dir_refused, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
