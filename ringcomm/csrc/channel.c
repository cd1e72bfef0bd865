/* Channel: one end of a shared-memory link's pair of ring buffers (transport/shm.py's
 * ShmLink), for send and recv of whole small messages.
 *
 * A send writes a message (header and data) whole when the ring has room for it, and a recv
 * takes one whole when all of it is there within a short wait (spin_then_yield) and its
 * header is the one expected; otherwise they move nothing and say so, and the Python link
 * does the call (its waits, its deadline and its error messages). The counters live in the
 * shared words, so both ends' Python and C code may take turns on one channel.
 *
 * A channel's layout (transport/shm.py): the sender's line (head, its sleeping flag), the
 * receiver's line (tail, its sleeping flag), then `cap` bytes of ring (a power of two).
 */
#include "core.h"

#define LINE 64

typedef struct {
    PyObject_HEAD
    Py_buffer mem;
    int held, shut;
    Py_ssize_t cap;
    uint64_t *out_head, *out_tail, *out_peer_sleep; /* the channel this end writes */
    uint64_t *in_head, *in_tail, *in_peer_sleep;    /* the channel this end reads */
    char *out_data, *in_data;
    int reader, writer; /* sockets connected to where the peer waits for data, and for room */
} Channel;

static void channel_release(Channel *self)
{
    if (self->held) {
        PyBuffer_Release(&self->mem);
        self->held = 0;
    }
}

static void channel_dealloc(Channel *self)
{
    channel_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Channel(mem, out, in, cap, reader_fd, writer_fd): `out` and `in` are the offsets of the
 * channel this end sends on and of the one it receives on; the descriptors are datagram
 * sockets connected to where the peer waits for data, and for room (-1: none). */
static int channel_init(Channel *self, PyObject *args, PyObject *kw)
{
    PyObject *mem;
    Py_ssize_t out, in;
    if (!PyArg_ParseTuple(args, "Onnnii", &mem, &out, &in, &self->cap, &self->reader,
                          &self->writer))
        return -1;
    if (self->cap < 256 || (self->cap & (self->cap - 1)) || out < 0 || in < 0 ||
        (out | in) % 64) {
        PyErr_SetString(PyExc_ValueError, "a channel: aligned offsets, a power-of-two ring");
        return -1;
    }
    channel_release(self);
    if (PyObject_GetBuffer(mem, &self->mem, PyBUF_WRITABLE) < 0)
        return -1;
    self->held = 1;
    Py_ssize_t end = (out > in ? out : in) + 2 * LINE + self->cap;
    if (self->mem.len < end) {
        channel_release(self);
        PyErr_SetString(PyExc_ValueError, "the segment is smaller than the channel");
        return -1;
    }
    char *base = (char *)self->mem.buf;
    self->out_head = (uint64_t *)(base + out);
    self->out_tail = (uint64_t *)(base + out + LINE);
    self->out_peer_sleep = self->out_tail + 1;
    self->in_head = (uint64_t *)(base + in);
    self->in_peer_sleep = self->in_head + 1;
    self->in_tail = (uint64_t *)(base + in + LINE);
    self->out_data = base + out + 2 * LINE;
    self->in_data = base + in + 2 * LINE;
    self->shut = 0;
    return 0;
}

/* Copy n bytes into the ring at counter position `at`, or out of it, wrapping at its end. */
static void ring_put(char *ring, Py_ssize_t cap, uint64_t at, const char *src, Py_ssize_t n)
{
    Py_ssize_t pos = (Py_ssize_t)(at & (uint64_t)(cap - 1)), first = cap - pos;
    if (first > n)
        first = n;
    memcpy(ring + pos, src, (size_t)first);
    memcpy(ring, src + first, (size_t)(n - first));
}

static void ring_get(const char *ring, Py_ssize_t cap, uint64_t at, char *dst, Py_ssize_t n)
{
    Py_ssize_t pos = (Py_ssize_t)(at & (uint64_t)(cap - 1)), first = cap - pos;
    if (first > n)
        first = n;
    memcpy(dst, ring + pos, (size_t)first);
    memcpy(dst + first, ring, (size_t)(n - first));
}

static int channel_args(Channel *self, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                        const char *name, char *header, long long *seq)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, want);
        return -1;
    }
    if (!self->held) {
        PyErr_SetString(PyExc_ValueError, "the channel was released");
        return -1;
    }
    char *tmpl;
    Py_ssize_t tn;
    if (PyBytes_AsStringAndSize(args[0], &tmpl, &tn) < 0)
        return -1;
    if (tn != HEADER_BYTES) {
        PyErr_SetString(PyExc_ValueError, "the header template must be 128 bytes");
        return -1;
    }
    *seq = PyLong_AsLongLong(args[1]);
    if (*seq == -1 && PyErr_Occurred())
        return -1;
    stamp_header(header, tmpl, *seq);
    return 0;
}

/* send(template, seq, data) -> code: DONE when the message (header, then data) is in the ring,
 * PENDING when the ring has no room for all of it (nothing was written). */
static PyObject *channel_send(Channel *self, PyObject *const *args, Py_ssize_t nargs)
{
    char header[HEADER_BYTES];
    long long seq;
    if (channel_args(self, args, nargs, 3, "send", header, &seq) < 0)
        return NULL;
    Py_buffer data;
    if (PyObject_GetBuffer(args[2], &data, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    uint64_t head = __atomic_load_n(self->out_head, __ATOMIC_RELAXED); /* this end's own */
    uint64_t tail = __atomic_load_n(self->out_tail, __ATOMIC_ACQUIRE);
    Py_ssize_t n = HEADER_BYTES + data.len;
    int code = PENDING;
    if (!__atomic_load_n(&self->shut, __ATOMIC_RELAXED) &&
        n <= self->cap - (Py_ssize_t)(head - tail)) {
        ring_put(self->out_data, self->cap, head, header, HEADER_BYTES);
        ring_put(self->out_data, self->cap, head + HEADER_BYTES, data.buf, data.len);
        __atomic_store_n(self->out_head, head + (uint64_t)n, __ATOMIC_RELEASE);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(self->out_peer_sleep, __ATOMIC_RELAXED))
            wake(self->reader);
        code = DONE;
    }
    PyBuffer_Release(&data);
    return PyLong_FromLong(code);
}

struct bytes_wait {
    Channel *c;
    uint64_t tail;
    Py_ssize_t need;
};

/* Ready when `need` bytes are there past `tail`; stop (without them) once the link is shut. */
static int poll_bytes(void *ctx)
{
    struct bytes_wait *w = ctx;
    if (__atomic_load_n(&w->c->shut, __ATOMIC_RELAXED))
        return 2;
    return (Py_ssize_t)(__atomic_load_n(w->c->in_head, __ATOMIC_ACQUIRE) - w->tail) >= w->need
               ? 1 : WAIT_IDLE;
}

/* recv(template, seq, out, spin, yield) -> code: DONE when a whole message was there within the
 * short wait, its header the template's (but for the sender's rank) and its data now in `out`;
 * PENDING when it was not all there, MISMATCH when its header differs (nothing was taken). */
static PyObject *channel_recv(Channel *self, PyObject *const *args, Py_ssize_t nargs)
{
    char want[HEADER_BYTES], got[HEADER_BYTES];
    long long seq;
    if (channel_args(self, args, nargs, 5, "recv", want, &seq) < 0)
        return NULL;
    double spin = PyFloat_AsDouble(args[3]);
    double yield = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer out;
    if (PyObject_GetBuffer(args[2], &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        return NULL;
    uint64_t tail = __atomic_load_n(self->in_tail, __ATOMIC_RELAXED); /* this end's own */
    Py_ssize_t need = HEADER_BYTES + out.len;
    int code = PENDING;
    struct bytes_wait w = {self, tail, need};
    if (need <= self->cap && spin_then_yield(poll_bytes, &w, spin, yield) == 1) {
        ring_get(self->in_data, self->cap, tail, got, HEADER_BYTES);
        if (!same_call(got, want)) {
            code = MISMATCH;
        } else {
            ring_get(self->in_data, self->cap, tail + HEADER_BYTES, out.buf, out.len);
            /* The reads are done before the sender may write there again. */
            __atomic_store_n(self->in_tail, tail + (uint64_t)need, __ATOMIC_RELEASE);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (__atomic_load_n(self->in_peer_sleep, __ATOMIC_RELAXED))
                wake(self->writer);
            code = DONE;
        }
    }
    PyBuffer_Release(&out);
    return PyLong_FromLong(code);
}

/* shut(): from now on every send and recv moves nothing (the link was shut down). */
static PyObject *channel_shut(Channel *self, PyObject *unused)
{
    __atomic_store_n(&self->shut, 1, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *channel_close(Channel *self, PyObject *unused)
{
    self->shut = 1;
    channel_release(self);
    Py_RETURN_NONE;
}

static PyMethodDef channel_methods[] = {
    {"send", (PyCFunction)(void (*)(void))channel_send, METH_FASTCALL,
     "send(template, seq, data) -> code"},
    {"recv", (PyCFunction)(void (*)(void))channel_recv, METH_FASTCALL,
     "recv(template, seq, out, spin, yield) -> code"},
    {"shut", (PyCFunction)channel_shut, METH_NOARGS, "Move nothing from now on."},
    {"close", (PyCFunction)channel_close, METH_NOARGS, "Release the segment's memory."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject rc_ChannelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ringcomm._native.Channel",
    .tp_basicsize = sizeof(Channel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One end of a shared-memory link: whole small messages of send and recv.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)channel_init,
    .tp_dealloc = (destructor)channel_dealloc,
    .tp_methods = channel_methods,
};
