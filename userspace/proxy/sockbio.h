/* SPDX-License-Identifier: MIT */
/*
 * An OpenSSL BIO over a non-blocking socket that remembers whether its last
 * read() came back short. OpenSSL's own socket BIO does not say, and the
 * proxy needs it to stop reading a socket it knows is empty: a short read
 * means the socket held no more, so the read that would only say EAGAIN is
 * skipped (the event loop is level-triggered: a later byte is reported
 * again). The flag is conservative: OpenSSL sometimes asks for exactly the
 * rest of a record, and a full read then says "maybe more" when there was
 * none, which costs one read, never a stall.
 */
#ifndef EGD_PROXY_SOCKBIO_H
#define EGD_PROXY_SOCKBIO_H

#include <openssl/bio.h>

/* A BIO reading and writing @fd (not closed by the BIO); NULL with errno. */
BIO *egd_sockbio_new(int fd);

/* 1 when @b is an egd_sockbio whose last read returned less than asked
 * (or EAGAIN, or end of stream): the socket held no more at that moment. */
int egd_sockbio_drained(BIO *b);

#endif
