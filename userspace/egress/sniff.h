/* SPDX-License-Identifier: MIT */
/*
 * Sniffers: read who a client is trying to reach from the first bytes it
 * sends. Pure functions of a byte buffer; no sockets, no allocation, no
 * globals. The daemon calls egd_sniff() each time more bytes arrive and
 * stops reading once the answer is no longer EGD_SNIFF_MORE.
 */
#ifndef EGD_SNIFF_H
#define EGD_SNIFF_H

#include <stddef.h>
#include <stdint.h>

/* Post-quantum key shares make 2-4 KiB ClientHellos common; 16 KiB is the
 * largest TLS record plaintext, and more than any real hello needs. */
#define CLIENTHELLO_MAX_BYTES 16384
/* An HTTP request line plus headers up to Host must fit in this. */
#define HTTP_SNIFF_MAX_BYTES 16384
/* DNS names are at most 253 characters; one more for the NUL. */
#define EGD_HOST_MAX 254

enum egd_proto {
	EGD_PROTO_UNKNOWN = 0, /* nothing recognisable (or nothing sent) */
	EGD_PROTO_TLS,
	EGD_PROTO_HTTP,
};

enum egd_sniff_status {
	EGD_SNIFF_MORE = 0, /* need more bytes to answer */
	EGD_SNIFF_DONE,     /* out is filled in */
};

struct egd_sniff_out {
	enum egd_proto proto;
	/* Lowercase host, trailing dot removed, port removed (HTTP). Empty when
	 * the client named none or named it in a way we refuse to trust. */
	char host[EGD_HOST_MAX];
	/* Set when the client named an IP literal instead of a DNS name. */
	int host_is_ip;
	/* Set when a TLS ClientHello carried encrypted_client_hello (0xfe0d). */
	int tls_ech;
	/* NULL when well-formed; else a short static reason ("truncated",
	 * "oversize", "bad sni", "duplicate host", ...) for the audit log. */
	const char *error;
};

/*
 * Look at the first @len bytes a client sent. TLS records are reassembled
 * until the whole ClientHello is present (at most CLIENTHELLO_MAX_BYTES of
 * handshake). Returns EGD_SNIFF_MORE while the answer depends on bytes not
 * yet seen; the caller gives up at its own deadline or when its buffer is
 * full and then calls egd_sniff_finish().
 */
enum egd_sniff_status egd_sniff(const uint8_t *buf, size_t len, struct egd_sniff_out *out);

/* Answer for what has been seen when no more bytes will come (deadline, EOF
 * or buffer full): fills @out with the protocol guessed so far and no host. */
void egd_sniff_finish(const uint8_t *buf, size_t len, struct egd_sniff_out *out);

/* The two sniffers egd_sniff() dispatches to, exposed for tests. */
enum egd_sniff_status egd_sniff_tls(const uint8_t *buf, size_t len, struct egd_sniff_out *out);
enum egd_sniff_status egd_sniff_http(const uint8_t *buf, size_t len, struct egd_sniff_out *out);

/* Canonicalise a host name in place (lowercase, strip one trailing dot) and
 * check it is a plausible DNS name. Returns 0, or -1 if it is not. */
int egd_host_normalize(char *host);

#endif
