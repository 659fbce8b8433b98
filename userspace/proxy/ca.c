// SPDX-License-Identifier: MIT
/*
 * The pod CA: generate or reload it, publish its certificate for the agent,
 * and mint per-host leaf certificates for the proxy's TLS server. See ca.h.
 * The key is written with mode 0600 from creation (never chmod'ed after a
 * world-readable moment) and only ever into the key directory.
 */
#include "proxy/ca.h"
#include "core/fsutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "core/log.h"
#include "proxy/proxy_config.h"

/* The system bundle is a few hundred KiB; a bigger file is not a bundle. */
#define CA_SYSTEM_BUNDLE_MAX_BYTES (16 * 1024 * 1024)
/* Serial numbers are random, 159 bits as RFC 5280 allows at most 20 bytes. */
#define CA_SERIAL_BYTES 19
/* Longest DNS name (RFC 1035). */
#define CA_HOST_MAX_BYTES 253

struct leaf {
	char *host;
	SSL_CTX *ctx;
	time_t not_after;
};

struct egd_ca {
	EVP_PKEY *key;
	X509 *cert;
	/* One key for every leaf: minting then costs one signature, and the
	 * key never leaves memory. */
	EVP_PKEY *leaf_key;
	int generated;
	pthread_mutex_t lock; /* the leaf cache */
	struct leaf leaves[EGD_CA_LEAF_CACHE_MAX];
	size_t nleaves;
};

static int mkdir_p(const char *path, mode_t mode)
{
	char buf[4096];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0755) && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) && errno != EEXIST)
		return -errno;
	return 0;
}

static int random_serial(X509 *x)
{
	unsigned char buf[CA_SERIAL_BYTES];
	BIGNUM *bn;
	int ok;

	if (RAND_bytes(buf, sizeof(buf)) != 1)
		return -EIO;
	buf[0] &= 0x7f; /* positive */
	bn = BN_bin2bn(buf, sizeof(buf), NULL);
	if (!bn)
		return -ENOMEM;
	ok = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
	BN_free(bn);
	return ok ? 0 : -ENOMEM;
}

static int add_ext(X509 *issuer, X509 *x, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (!ext)
		return -EINVAL;
	ok = X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	return ok ? 0 : -ENOMEM;
}

static EVP_PKEY *gen_key(void)
{
	return EVP_EC_gen("P-256");
}

/* A certificate skeleton: version 3, random serial, validity, subject CN. */
static X509 *new_cert(const char *cn, long backdate_s, long valid_s, EVP_PKEY *pub)
{
	X509 *x = X509_new();
	X509_NAME *name;

	if (!x)
		return NULL;
	if (!X509_set_version(x, 2) || random_serial(x) ||
	    !X509_gmtime_adj(X509_getm_notBefore(x), -backdate_s) ||
	    !X509_gmtime_adj(X509_getm_notAfter(x), valid_s) || !X509_set_pubkey(x, pub))
		goto err;
	name = X509_get_subject_name(x);
	if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"egressd",
					-1, -1, 0) ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
					-1, 0))
		goto err;
	return x;
err:
	X509_free(x);
	return NULL;
}

static X509 *make_ca_cert(EVP_PKEY *key)
{
	X509 *x = new_cert("egressd pod CA", EGD_CA_BACKDATE_S, 86400L * EGD_CA_VALIDITY_DAYS, key);

	if (!x)
		return NULL;
	if (!X509_set_issuer_name(x, X509_get_subject_name(x)) ||
	    add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") ||
	    add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") ||
	    add_ext(x, x, NID_subject_key_identifier, "hash") ||
	    !X509_sign(x, key, EVP_sha256())) {
		X509_free(x);
		return NULL;
	}
	return x;
}

/* The stored pair, if it is one we can keep using. */
static int load_stored(struct egd_ca *ca, const char *key_path, const char *cert_path)
{
	struct stat st;
	FILE *f;
	time_t soon;

	f = fopen(key_path, "re");
	if (!f)
		return -errno;
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077)) {
		/* Someone widened it; the key may have leaked, but the pod
		 * already trusts this CA, so narrow it and say so. */
		egd_warn("ca: %s was mode %o; setting 0600", key_path, st.st_mode & 0777);
		if (fchmod(fileno(f), 0600)) {
			fclose(f);
			return -errno;
		}
	}
	ca->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	f = fopen(cert_path, "re");
	if (!f)
		return -errno;
	ca->cert = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (!ca->key || !ca->cert)
		return -EBADMSG;
	soon = time(NULL) + EGD_CA_MIN_REMAINING_S;
	if (X509_check_private_key(ca->cert, ca->key) != 1 || X509_check_ca(ca->cert) != 1 ||
	    X509_cmp_time(X509_get0_notAfter(ca->cert), &soon) <= 0)
		return -EKEYREJECTED;
	return 0;
}

static char *pem_of(int (*write)(BIO *, void *), void *obj, size_t *len)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *out = NULL;
	long n;

	if (!b)
		return NULL;
	if (write(b, obj) == 1) {
		n = BIO_get_mem_data(b, &data);
		out = malloc((size_t)n + 1);
		if (out) {
			memcpy(out, data, (size_t)n);
			out[n] = 0;
			*len = (size_t)n;
		}
	}
	BIO_free(b);
	return out;
}

static int write_key_pem(BIO *b, void *k)
{
	return PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
}

static int write_cert_pem(BIO *b, void *x)
{
	return PEM_write_bio_X509(b, x);
}

static int generate(struct egd_ca *ca, const char *key_path, const char *cert_path)
{
	char *pem = NULL;
	size_t len;
	int err = -ENOMEM;

	EVP_PKEY_free(ca->key);
	X509_free(ca->cert);
	ca->key = gen_key();
	ca->cert = ca->key ? make_ca_cert(ca->key) : NULL;
	if (!ca->cert)
		return -ENOMEM;
	pem = pem_of(write_key_pem, ca->key, &len);
	if (!pem)
		return -ENOMEM;
	err = egd_write_file_atomic(key_path, pem, len, 0600);
	OPENSSL_cleanse(pem, len);
	free(pem);
	if (err)
		return err;
	pem = pem_of(write_cert_pem, ca->cert, &len);
	if (!pem)
		return -ENOMEM;
	err = egd_write_file_atomic(cert_path, pem, len, 0644);
	free(pem);
	ca->generated = 1;
	return err;
}

static char *read_small(const char *path, size_t *len)
{
	struct stat st;
	char *buf = NULL;
	FILE *f = fopen(path, "re");

	if (!f)
		return NULL;
	if (fstat(fileno(f), &st) || st.st_size > CA_SYSTEM_BUNDLE_MAX_BYTES)
		goto out;
	buf = malloc((size_t)st.st_size + 1);
	if (!buf)
		goto out;
	*len = fread(buf, 1, (size_t)st.st_size, f);
	buf[*len] = 0;
out:
	fclose(f);
	return buf;
}

static int publish(struct egd_ca *ca, const char *out_dir, const char *system_bundle)
{
	char *pem, *sys = NULL, *bundle = NULL, *path = NULL;
	size_t len, sys_len = 0;
	int err;

	err = mkdir_p(out_dir, 0755);
	if (err)
		return err;
	pem = pem_of(write_cert_pem, ca->cert, &len);
	if (!pem)
		return -ENOMEM;
	err = -ENOMEM;
	if (asprintf(&path, "%s/%s", out_dir, EGD_CA_CERT_FILE) < 0) {
		path = NULL;
		goto out;
	}
	err = egd_write_file_atomic(path, pem, len, 0644);
	if (err)
		goto out;
	if (system_bundle) {
		sys = read_small(system_bundle, &sys_len);
		if (!sys)
			egd_warn("ca: no system roots in %s; bundle holds only ours",
				 system_bundle);
	}
	err = -ENOMEM;
	bundle = malloc(sys_len + len + 2);
	if (!bundle)
		goto out;
	memcpy(bundle, sys ? sys : "", sys_len);
	/* Keep PEM blocks on their own lines even if the system file lacks
	 * a final newline. */
	if (sys_len && sys[sys_len - 1] != '\n')
		bundle[sys_len++] = '\n';
	memcpy(bundle + sys_len, pem, len);
	free(path);
	if (asprintf(&path, "%s/%s", out_dir, EGD_CA_BUNDLE_FILE) < 0) {
		path = NULL;
		goto out;
	}
	err = egd_write_file_atomic(path, bundle, sys_len + len, 0644);
out:
	free(bundle);
	free(sys);
	free(path);
	free(pem);
	return err;
}

struct egd_ca *egd_ca_open(const char *key_dir, const char *out_dir, const char *system_bundle)
{
	char *key_path = NULL, *cert_path = NULL;
	struct egd_ca *ca;
	int err;

	if (!key_dir || !out_dir || !strcmp(key_dir, out_dir)) {
		errno = EINVAL;
		return NULL;
	}
	ca = calloc(1, sizeof(*ca));
	if (!ca) {
		errno = ENOMEM;
		return NULL;
	}
	pthread_mutex_init(&ca->lock, NULL);
	err = mkdir_p(key_dir, 0700);
	if (err)
		goto err_free;
	/* An existing directory may have been created wider. */
	if (chmod(key_dir, 0700)) {
		err = -errno;
		goto err_free;
	}
	err = -ENOMEM;
	if (asprintf(&key_path, "%s/%s", key_dir, EGD_CA_KEY_FILE) < 0 ||
	    asprintf(&cert_path, "%s/%s", key_dir, EGD_CA_CERT_FILE) < 0)
		goto err_free;
	err = load_stored(ca, key_path, cert_path);
	if (err && err != -ENOENT)
		egd_warn("ca: stored CA in %s unusable (%s); generating a new one", key_dir,
			 strerror(-err));
	if (err) {
		err = generate(ca, key_path, cert_path);
		if (err)
			goto err_free;
	}
	err = -ENOMEM;
	ca->leaf_key = gen_key();
	if (!ca->leaf_key)
		goto err_free;
	err = publish(ca, out_dir, system_bundle);
	if (err)
		goto err_free;
	free(key_path);
	free(cert_path);
	return ca;

err_free:
	free(key_path);
	free(cert_path);
	egd_ca_destroy(ca);
	errno = -err;
	return NULL;
}

struct egd_ca *egd_ca_open_env(void)
{
	const char *key_dir = egd_proxy_getenv(NULL, "EGRESSD_CA_KEY_DIR");
	const char *out_dir = egd_proxy_getenv(NULL, "EGRESSD_CA_DIR");

	return egd_ca_open(key_dir && *key_dir ? key_dir : EGD_CA_KEY_DIR_DEFAULT,
			   out_dir && *out_dir ? out_dir : EGD_CA_DIR_DEFAULT,
			   EGD_CA_SYSTEM_BUNDLE);
}

static void leaves_clear(struct egd_ca *ca)
{
	for (size_t i = 0; i < ca->nleaves; i++) {
		free(ca->leaves[i].host);
		SSL_CTX_free(ca->leaves[i].ctx);
	}
	ca->nleaves = 0;
}

void egd_ca_destroy(struct egd_ca *ca)
{
	if (!ca)
		return;
	leaves_clear(ca);
	pthread_mutex_destroy(&ca->lock);
	EVP_PKEY_free(ca->leaf_key);
	EVP_PKEY_free(ca->key);
	X509_free(ca->cert);
	free(ca);
}

int egd_ca_generated(const struct egd_ca *ca)
{
	return ca->generated;
}

X509 *egd_ca_cert(const struct egd_ca *ca)
{
	return ca->cert;
}

static int host_ok(const char *host)
{
	size_t n = host ? strlen(host) : 0;

	if (n == 0 || n > CA_HOST_MAX_BYTES)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = host[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == ':' || c == '*'))
			return 0;
	}
	return 1;
}

int egd_ca_mint(struct egd_ca *ca, const char *host, X509 **cert, EVP_PKEY **key)
{
	unsigned char ip[16];
	char san[CA_HOST_MAX_BYTES + 8];
	X509 *x;

	if (!host_ok(host))
		return -EINVAL;
	/* An IP literal goes in an iPAddress SAN; clients check that one. */
	if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1)
		snprintf(san, sizeof(san), "IP:%s", host);
	else
		snprintf(san, sizeof(san), "DNS:%s", host);
	x = new_cert(host, EGD_CA_BACKDATE_S, EGD_CA_LEAF_VALIDITY_S, ca->leaf_key);
	if (!x)
		return -ENOMEM;
	if (!X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) ||
	    add_ext(ca->cert, x, NID_basic_constraints, "critical,CA:FALSE") ||
	    add_ext(ca->cert, x, NID_key_usage, "critical,digitalSignature") ||
	    add_ext(ca->cert, x, NID_ext_key_usage, "serverAuth") ||
	    add_ext(ca->cert, x, NID_authority_key_identifier, "keyid:always") ||
	    add_ext(ca->cert, x, NID_subject_alt_name, san) ||
	    !X509_sign(x, ca->key, EVP_sha256())) {
		X509_free(x);
		return -ENOMEM;
	}
	if (!EVP_PKEY_up_ref(ca->leaf_key)) {
		X509_free(x);
		return -ENOMEM;
	}
	*cert = x;
	*key = ca->leaf_key;
	return 0;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
		       const unsigned char *in, unsigned int inlen, void *arg)
{
	static const unsigned char h11[] = "\x08http/1.1";
	unsigned char *sel;

	(void)ssl;
	(void)arg;
	/* Only HTTP/1.1 is spoken; a client offering only h2 gets no ALPN
	 * and may still try HTTP/1.1, rather than a handshake failure. */
	if (SSL_select_next_proto(&sel, outlen, h11, sizeof(h11) - 1, in, inlen) !=
	    OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *make_server_ctx(struct egd_ca *ca, const char *host, time_t *not_after)
{
	EVP_PKEY *key = NULL;
	X509 *x = NULL;
	SSL_CTX *ctx;
	int err;

	err = egd_ca_mint(ca, host, &x, &key);
	if (err) {
		errno = -err;
		return NULL;
	}
	ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx)
		goto err;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* Whole records in one read(), and a short one means drained
	 * (sockbio.h). */
	SSL_CTX_set_read_ahead(ctx, 1);
	if (SSL_CTX_use_certificate(ctx, x) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
	    SSL_CTX_add1_chain_cert(ctx, ca->cert) != 1)
		goto err;
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
	*not_after = time(NULL) + EGD_CA_LEAF_VALIDITY_S;
	X509_free(x);
	EVP_PKEY_free(key);
	return ctx;
err:
	SSL_CTX_free(ctx);
	X509_free(x);
	EVP_PKEY_free(key);
	errno = ENOMEM;
	return NULL;
}

SSL_CTX *egd_ca_server_ctx(struct egd_ca *ca, const char *host)
{
	time_t now = time(NULL), not_after;
	SSL_CTX *ctx = NULL;
	size_t i;

	if (!host_ok(host)) {
		errno = EINVAL;
		return NULL;
	}
	pthread_mutex_lock(&ca->lock);
	for (i = 0; i < ca->nleaves; i++)
		if (!strcasecmp(ca->leaves[i].host, host))
			break;
	if (i < ca->nleaves && ca->leaves[i].not_after - EGD_CA_LEAF_RENEW_MARGIN_S > now) {
		ctx = ca->leaves[i].ctx;
		goto out;
	}
	ctx = make_server_ctx(ca, host, &not_after);
	if (!ctx)
		goto out;
	if (i == ca->nleaves) {
		char *h = strdup(host);

		if (!h) {
			SSL_CTX_free(ctx);
			ctx = NULL;
			errno = ENOMEM;
			goto out;
		}
		if (ca->nleaves == EGD_CA_LEAF_CACHE_MAX) {
			/* Only an agent making up names gets here; starting
			 * over bounds memory without an LRU. */
			leaves_clear(ca);
			i = 0;
		}
		ca->leaves[i].host = h;
		ca->leaves[i].ctx = NULL;
		ca->nleaves = i + 1 > ca->nleaves ? i + 1 : ca->nleaves;
	}
	/* Connections hold their own references through their SSL. */
	SSL_CTX_free(ca->leaves[i].ctx);
	ca->leaves[i].ctx = ctx;
	ca->leaves[i].not_after = not_after;
out:
	/* The caller's reference: another thread may renew the leaf or start
	 * the cache over before the caller has made its SSL. */
	if (ctx)
		SSL_CTX_up_ref(ctx);
	pthread_mutex_unlock(&ca->lock);
	return ctx;
}
