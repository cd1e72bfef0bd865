/* pair_allreduce: the latency path of a group of two ranks joined by sockets
 * (backends/ring/backend.py's _pair_reduce; transport/net.py's exchange, in C).
 *
 * One call sends this rank's message and takes the other's without blocking for a short spin
 * (spin_then_yield), checks the other's header and reduces; what it does not finish, Python's
 * socket loop goes on with.
 */
#include "core.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* Python ignores SIGPIPE; where this flag is missing, the signal too */
#endif

static int would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK || e == EINTR; }

/* Both ranks' messages moving: this rank's row out on `out_fd`, the other's in on `in_fd`. */
struct exchange {
    int out_fd, in_fd;
    char *mine, *theirs;
    Py_ssize_t n, sent, got;
    int send_err, recv_err, differs;
};

/* One step of the exchange, neither call blocking: stop (1) when both rows moved or it failed,
 * WAIT_MOVED when bytes moved, WAIT_IDLE when none did. */
static int poll_exchange(void *ctx)
{
    struct exchange *x = ctx;
    int moved = 0;
    if (x->sent < x->n) {
        ssize_t k = send(x->out_fd, x->mine + x->sent, (size_t)(x->n - x->sent),
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (k > 0) {
            x->sent += k;
            moved = 1;
        } else if (k < 0 && !would_block(errno)) {
            x->send_err = errno;
            return 1;
        }
    }
    if (x->got < x->n) {
        ssize_t k = recv(x->in_fd, x->theirs + x->got, (size_t)(x->n - x->got), MSG_DONTWAIT);
        if (k > 0) {
            int had = x->got >= HEADER_BYTES;
            x->got += k;
            moved = 1;
            if (!had && x->got >= HEADER_BYTES && !same_call(x->theirs, x->mine)) {
                x->differs = 1; /* a shorter message would never fill the row */
                return 1;
            }
        } else if (k == 0) {
            x->recv_err = -1;
            return 1;
        } else if (!would_block(errno)) {
            x->recv_err = errno;
            return 1;
        }
    }
    if (x->sent == x->n && x->got == x->n)
        return 1;
    return moved ? WAIT_MOVED : WAIT_IDLE;
}

/* pair_allreduce(out_fd, in_fd, rows, rank, template, seq, src, out, kind, op, spin)
 *     -> (code, sent, got, send_errno, recv_errno)
 *
 * `rows` holds both ranks' messages (header and data) in rank order; this rank writes its own
 * (the template, this rank's header, with call number `seq`; then `src`), sends it on
 * `out_fd` and receives the other's on `in_fd`, neither call blocking, for up to `spin`
 * seconds without progress, with the GIL released. Then it compares the other's header with
 * its own (but for the rank) and reduces both rows, in rank order, into `out`.
 *
 * DONE: `out` holds the result. PENDING: the spin ran out with `sent` and `got` bytes moved;
 * Python goes on from there (its waits, deadline and messages). MISMATCH: the other's
 * header (in its row) differs. REDUCE: checked, Python reduces this dtype. GONE: a send or
 * a receive failed (its errno; a receive's -1: the peer closed the connection). */
PyObject *rc_pair_allreduce(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "pair_allreduce takes 11 arguments");
        return NULL;
    }
    long out_fd, in_fd, rank;
    long long seq;
    int kind, op;
    double spin;
    const char *tmpl;
    if (long_arg(args[0], 0, INT_MAX, "pair_allreduce: out_fd", &out_fd) < 0 ||
        long_arg(args[1], 0, INT_MAX, "pair_allreduce: in_fd", &in_fd) < 0)
        return NULL;
    int overflow;
    rank = PyLong_AsLongAndOverflow(args[3], &overflow);
    if (rank == -1 && PyErr_Occurred())
        return NULL;
    seq = PyLong_AsLongLong(args[5]);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    if (code_arg(args[8], N_KINDS, &kind) < 0 || code_arg(args[9], N_OPS, &op) < 0 ||
        seconds_arg(args[10], "pair_allreduce: spin", &spin) < 0)
        return NULL;
    char *t;
    Py_ssize_t tn;
    if (PyBytes_AsStringAndSize(args[4], &t, &tn) < 0)
        return NULL;
    if (tn != HEADER_BYTES || overflow || (rank != 0 && rank != 1)) {
        PyErr_SetString(PyExc_ValueError, "pair_allreduce: a 128-byte template, rank 0 or 1");
        return NULL;
    }
    tmpl = t;
    Py_buffer rows, src, out;
    if (PyObject_GetBuffer(args[2], &rows, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[6], &src, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&rows);
        return NULL;
    }
    if (PyObject_GetBuffer(args[7], &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&rows);
        PyBuffer_Release(&src);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t isz = kind >= 0 ? rc_itemsize[kind] : 1;
    if (out.len != src.len || src.len > PY_SSIZE_T_MAX / 2 - HEADER_BYTES ||
        rows.len != 2 * (HEADER_BYTES + src.len)) {
        PyErr_SetString(PyExc_ValueError, "pair_allreduce: the buffers differ in size");
        goto done;
    }
    if (src.len % isz) {
        PyErr_Format(PyExc_ValueError, "pair_allreduce: %zd bytes are not whole elements of "
                     "%zd bytes", src.len, isz);
        goto done;
    }
    Py_ssize_t n = HEADER_BYTES + src.len;
    struct exchange x = {(int)out_fd, (int)in_fd, (char *)rows.buf + rank * n,
                         (char *)rows.buf + (1 - rank) * n, n, 0, 0, 0, 0, 0};
    stamp_header(x.mine, tmpl, seq);
    memmove(x.mine + HEADER_BYTES, src.buf, (size_t)src.len); /* `src` may be in `rows` */
    spin_then_yield(poll_exchange, &x, spin, spin); /* spins only: a socket's bytes come soon */
    int code;
    if (x.send_err || x.recv_err)
        code = GONE;
    else if (x.differs)
        code = MISMATCH;
    else if (x.sent < n || x.got < n)
        code = PENDING;
    else if (!reducible(kind, op))
        code = REDUCE;
    else {
        char *r[2] = {(char *)rows.buf + HEADER_BYTES, (char *)rows.buf + n + HEADER_BYTES};
        rc_reducers[kind][op](out.buf, r, 2, src.len / isz);
        code = DONE;
    }
    result = Py_BuildValue("(innii)", code, x.sent, x.got, x.send_err, x.recv_err);
done:
    PyBuffer_Release(&rows);
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    return result;
}
