/* SPDX-License-Identifier: MIT */
/*
 * The socket BIO of sockbio.h. Written here rather than taken from OpenSSL
 * because BIO_s_socket() keeps no trace of a short read; the few controls
 * libssl asks of a socket BIO (flush, the fd, end of stream) are answered
 * as BIO_s_socket() answers them.
 */
#include "proxy/sockbio.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

struct sockbio {
	int fd;
	int drained; /* the last read came back short */
	int eof;     /* a read returned 0 */
};

static int sb_read(BIO *b, char *out, int len)
{
	struct sockbio *s = BIO_get_data(b);
	ssize_t n;

	BIO_clear_retry_flags(b);
	if (len <= 0)
		return 0;
	n = read(s->fd, out, (size_t)len);
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR) {
			BIO_set_retry_read(b);
			s->drained = errno == EAGAIN;
		}
		return -1;
	}
	s->drained = n < len;
	if (n == 0)
		s->eof = 1;
	return (int)n;
}

static int sb_write(BIO *b, const char *in, int len)
{
	struct sockbio *s = BIO_get_data(b);
	ssize_t n;

	BIO_clear_retry_flags(b);
	if (len <= 0)
		return 0;
	n = send(s->fd, in, (size_t)len, MSG_NOSIGNAL);
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			BIO_set_retry_write(b);
		return -1;
	}
	return (int)n;
}

static long sb_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct sockbio *s = BIO_get_data(b);

	(void)num;
	switch (cmd) {
	case BIO_C_GET_FD:
		if (ptr)
			*(int *)ptr = s->fd;
		return s->fd;
	case BIO_CTRL_EOF:
		/* libssl tells an unexpected end of stream from a reset by it. */
		return s->eof;
	case BIO_CTRL_FLUSH:
	case BIO_CTRL_DUP:
		return 1;
	default:
		return 0;
	}
}

static int sb_destroy(BIO *b)
{
	free(BIO_get_data(b));
	BIO_set_data(b, NULL);
	return 1;
}

static BIO_METHOD *method; /* made once, kept for the process's life */
static int method_type;
static pthread_once_t method_once = PTHREAD_ONCE_INIT;

static void method_init(void)
{
	int type = BIO_get_new_index();
	BIO_METHOD *m;

	if (type < 0)
		return;
	type |= BIO_TYPE_SOURCE_SINK;
	m = BIO_meth_new(type, "egd socket");
	if (!m)
		return;
	if (BIO_meth_set_read(m, sb_read) != 1 || BIO_meth_set_write(m, sb_write) != 1 ||
	    BIO_meth_set_ctrl(m, sb_ctrl) != 1 || BIO_meth_set_destroy(m, sb_destroy) != 1) {
		BIO_meth_free(m);
		return;
	}
	method_type = type;
	method = m;
}

BIO *egd_sockbio_new(int fd)
{
	struct sockbio *s;
	BIO *b;

	pthread_once(&method_once, method_init);
	if (!method) {
		errno = ENOMEM;
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->fd = fd;
	b = BIO_new(method);
	if (!b) {
		free(s);
		errno = ENOMEM;
		return NULL;
	}
	BIO_set_data(b, s);
	BIO_set_init(b, 1);
	return b;
}

int egd_sockbio_drained(BIO *b)
{
	struct sockbio *s;

	pthread_once(&method_once, method_init);
	if (!b || !method || BIO_method_type(b) != method_type)
		return 0;
	s = BIO_get_data(b);
	return s && s->drained;
}
