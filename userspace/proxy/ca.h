/* SPDX-License-Identifier: MIT */
/*
 * The pod's certificate authority for the TLS-terminating policy proxy. The
 * agent must trust a CA for the proxy to speak TLS as openrouter.ai, and the
 * reference proxy baked that CA's key into its image, world-readable. egressd
 * generates the CA (EC P-256) at first start, keeps the key 0600 in a
 * directory the agent does not mount, reuses it across restarts of the same
 * pod, and publishes only the certificate (ca.crt, and ca-bundle.crt: system
 * roots plus ours) where the agent reads it.
 *
 * Leaf certificates are minted per SNI host on demand, short-lived, and kept
 * in memory with a ready server SSL_CTX (ALPN http/1.1) per host.
 */
#ifndef EGD_PROXY_CA_H
#define EGD_PROXY_CA_H

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "proxy/proxy_config.h" /* EGD_CA_KEY_DIR_DEFAULT, EGD_CA_DIR_DEFAULT */
/* The system roots the bundle starts from (Debian's layout). */
#define EGD_CA_SYSTEM_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

#define EGD_CA_KEY_FILE "ca.key"
#define EGD_CA_CERT_FILE "ca.crt"
#define EGD_CA_BUNDLE_FILE "ca-bundle.crt"

/* A pod lives days at most; ten years only avoids an expiry nobody plans for,
 * while a restart with a lost key directory simply makes a new CA. */
#define EGD_CA_VALIDITY_DAYS 3650
/* A stored CA that expires sooner than this is replaced at start. */
#define EGD_CA_MIN_REMAINING_S (7 * 24 * 3600)
/* Leaves are minted on the fly, so they can be short-lived. */
#define EGD_CA_LEAF_VALIDITY_S (24 * 3600)
/* A cached leaf this close to expiry is minted again. */
#define EGD_CA_LEAF_RENEW_MARGIN_S 3600
/* Clock skew between the daemon and the agent's idea of "now". */
#define EGD_CA_BACKDATE_S 3600
/* The agent names few hosts; past this the cache starts over. */
#define EGD_CA_LEAF_CACHE_MAX 256

struct egd_ca;

/*
 * Load the CA from @key_dir, or generate it there when absent or unusable,
 * and publish ca.crt and ca-bundle.crt (from @system_bundle, which may be
 * NULL or missing) atomically into @out_dir. Directories are created (the
 * key directory 0700). @out_dir must not be @key_dir. NULL + errno.
 */
struct egd_ca *egd_ca_open(const char *key_dir, const char *out_dir, const char *system_bundle);
void egd_ca_destroy(struct egd_ca *ca);

/* egd_ca_open() with EGRESSD_CA_KEY_DIR and EGRESSD_CA_DIR (their flags or
 * variables, else the defaults) and the system bundle: what the daemon calls
 * at start. */
struct egd_ca *egd_ca_open_env(void);

/* 1 when egd_ca_open() generated a new CA rather than reusing one. */
int egd_ca_generated(const struct egd_ca *ca);
/* The CA certificate (borrowed). */
X509 *egd_ca_cert(const struct egd_ca *ca);

/*
 * The server SSL_CTX for @host, cached per host; a new reference the caller
 * releases with SSL_CTX_free() (after SSL_new(), which takes its own).
 * Callable from any thread. NULL + errno (-EINVAL for an unusable name).
 */
SSL_CTX *egd_ca_server_ctx(struct egd_ca *ca, const char *host);

/* A leaf for @host in new references the caller frees (tests, fixtures). */
int egd_ca_mint(struct egd_ca *ca, const char *host, X509 **cert, EVP_PKEY **key);

#endif /* EGD_PROXY_CA_H */
