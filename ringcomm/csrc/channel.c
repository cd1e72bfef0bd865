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
    rc_memory mem; /* the segment the two channels are in */
    int shut;
    Py_ssize_t cap;
    uint64_t *out_head, *out_tail, *out_peer_sleep; /* the channel this end writes */
    uint64_t *in_head, *in_tail, *in_peer_sleep;    /* the channel this end reads */
    char *out_data, *in_data;
    int reader, writer; /* sockets connected to where the peer waits for data, and for room */
} Channel;

static void channel_dealloc(Channel *self)
{
    memory_release(&self->mem);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Channel(mem, out, in, cap, reader_fd, writer_fd): `out` and `in` are the offsets of the
 * channel this end sends on and of the one it receives on; the descriptors are datagram
 * sockets connected to where the peer waits for data, and for room (-1: none). Every
 * argument is checked before anything is stored: a call that fails leaves the channel as it
 * was. */
static int channel_init(Channel *self, PyObject *args, PyObject *kw)
{
    PyObject *mem;
    Py_ssize_t out, in, cap;
    int reader, writer;
    if (!PyArg_ParseTuple(args, "Onnnii", &mem, &out, &in, &cap, &reader, &writer))
        return -1;
    if (cap < 256 || (cap & (cap - 1)) || out < 0 || in < 0 || (out | in) % LINE) {
        PyErr_SetString(PyExc_ValueError, "a channel: aligned offsets, a power-of-two ring");
        return -1;
    }
    Py_ssize_t span = 2 * LINE + cap; /* cap <= 2**62: no overflow */
    if (reader < -1 || writer < -1) {
        PyErr_SetString(PyExc_ValueError, "a channel: a descriptor, or -1 for none");
        return -1;
    }
    if (memory_busy(&self->mem, "channel") < 0)
        return -1;
    Py_buffer view;
    if (PyObject_GetBuffer(mem, &view, PyBUF_WRITABLE) < 0)
        return -1;
    if (view.len < span || (out > in ? out : in) > view.len - span ||
        (uintptr_t)view.buf % 8) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError,
                        "the segment is smaller than the channel (or not 8-byte aligned)");
        return -1;
    }
    if ((out > in ? out - in : in - out) < span) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "a channel: the two channels overlap");
        return -1;
    }
    if (memory_busy(&self->mem, "channel") < 0) { /* GetBuffer may have run Python code */
        PyBuffer_Release(&view);
        return -1;
    }
    memory_replace(&self->mem, &view);
    char *base = (char *)view.buf;
    self->cap = cap;
    self->reader = reader;
    self->writer = writer;
    self->out_head = (uint64_t *)(base + out);
    self->out_tail = (uint64_t *)(base + out + LINE);
    self->out_peer_sleep = self->out_tail + 1;
    self->in_head = (uint64_t *)(base + in);
    self->in_peer_sleep = self->in_head + 1;
    self->in_tail = (uint64_t *)(base + in + LINE);
    self->out_data = base + out + 2 * LINE;
    self->in_data = base + in + 2 * LINE;
    __atomic_store_n(&self->shut, 0, __ATOMIC_RELAXED);
    return 0;
}

/* Copy n <= cap bytes into the ring at counter position `at`, or out of it, wrapping at its
 * end (memmove: the caller's buffer may be in the segment too). */
static void ring_put(char *ring, Py_ssize_t cap, uint64_t at, const char *src, Py_ssize_t n)
{
    Py_ssize_t pos = (Py_ssize_t)(at & (uint64_t)(cap - 1)), first = cap - pos;
    if (first > n)
        first = n;
    memmove(ring + pos, src, (size_t)first);
    memmove(ring, src + first, (size_t)(n - first));
}

static void ring_get(const char *ring, Py_ssize_t cap, uint64_t at, char *dst, Py_ssize_t n)
{
    Py_ssize_t pos = (Py_ssize_t)(at & (uint64_t)(cap - 1)), first = cap - pos;
    if (first > n)
        first = n;
    memmove(dst, ring + pos, (size_t)first);
    memmove(dst + first, ring, (size_t)(n - first));
}

/* The bytes a channel holds, head - tail, in unsigned arithmetic: both counters only grow
 * (64 bits never wrap), and a peer writes one of them, so neither is trusted: a tail beyond
 * the head, or a head more than `cap` past the tail, gives more than `cap` here. */
static inline uint64_t held(uint64_t head, uint64_t tail) { return head - tail; }

static int corrupt(Channel *self, const char *what, uint64_t head, uint64_t tail)
{
    PyErr_Format(PyExc_RuntimeError,
                 "%s: the channel's counters are corrupt (head %llu, tail %llu, a ring of %zd "
                 "bytes): the peer wrote a %s", what, (unsigned long long)head,
                 (unsigned long long)tail, self->cap,
                 tail > head ? "tail beyond the head" : "head more than the ring past the tail");
    return -1;
}

static int channel_args(Channel *self, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                        const char *name, char *header)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, want);
        return -1;
    }
    const char *tmpl;
    if (template_arg(args[0], &tmpl) < 0)
        return -1;
    long long seq = PyLong_AsLongLong(args[1]);
    if (seq == -1 && PyErr_Occurred())
        return -1;
    stamp_header(header, tmpl, seq);
    return 0;
}

/* send(template, seq, data) -> code: DONE when the message (header, then data) is in the ring,
 * PENDING when the ring has no room for all of it, or never would (nothing was written).
 * RuntimeError when the counters are corrupt. */
static PyObject *channel_send(Channel *self, PyObject *const *args, Py_ssize_t nargs)
{
    char header[HEADER_BYTES];
    if (channel_args(self, args, nargs, 3, "send", header) < 0)
        return NULL;
    Py_buffer data;
    if (PyObject_GetBuffer(args[2], &data, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    int code = -1;
    if (memory_pin(&self->mem, "channel") < 0)
        goto released;
    code = PENDING;
    if (__atomic_load_n(&self->shut, __ATOMIC_RELAXED) || data.len > self->cap - HEADER_BYTES)
        goto done;
    uint64_t head = __atomic_load_n(self->out_head, __ATOMIC_RELAXED); /* this end's own */
    uint64_t tail = __atomic_load_n(self->out_tail, __ATOMIC_ACQUIRE); /* the peer's */
    uint64_t used = held(head, tail), n = (uint64_t)(HEADER_BYTES + data.len);
    if (used > (uint64_t)self->cap) {
        code = corrupt(self, "send", head, tail);
        goto done;
    }
    if (n <= (uint64_t)self->cap - used) {
        ring_put(self->out_data, self->cap, head, header, HEADER_BYTES);
        ring_put(self->out_data, self->cap, head + HEADER_BYTES, data.buf, data.len);
        __atomic_store_n(self->out_head, head + n, __ATOMIC_RELEASE);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(self->out_peer_sleep, __ATOMIC_RELAXED))
            wake(self->reader);
        code = DONE;
    }
done:
    memory_unpin(&self->mem);
released:
    PyBuffer_Release(&data);
    return code < 0 ? NULL : PyLong_FromLong(code);
}

struct bytes_wait {
    Channel *c;
    uint64_t tail, need, head;
};

/* Ready (1) when `need` bytes are there past `tail`; stop without them once the link is shut
 * or the channel closed (2), or when the peer's head is corrupt (3). */
static int poll_bytes(void *ctx)
{
    struct bytes_wait *w = ctx;
    if (__atomic_load_n(&w->c->shut, __ATOMIC_RELAXED) || memory_closing(&w->c->mem))
        return 2;
    w->head = __atomic_load_n(w->c->in_head, __ATOMIC_ACQUIRE);
    uint64_t there = held(w->head, w->tail);
    if (there > (uint64_t)w->c->cap)
        return 3;
    return there >= w->need ? 1 : WAIT_IDLE;
}

/* recv(template, seq, out, spin, yield) -> code: DONE when a whole message was there within the
 * short wait, its header the template's (but for the sender's rank) and its data now in `out`;
 * PENDING when it was not all there (or never could be: more than the ring holds), MISMATCH
 * when its header differs (nothing was taken). RuntimeError when the counters are corrupt. */
static PyObject *channel_recv(Channel *self, PyObject *const *args, Py_ssize_t nargs)
{
    char want[HEADER_BYTES], got[HEADER_BYTES];
    if (channel_args(self, args, nargs, 5, "recv", want) < 0)
        return NULL;
    double spin, yield;
    if (seconds_arg(args[3], "recv: spin", &spin) < 0 ||
        seconds_arg(args[4], "recv: yield", &yield) < 0)
        return NULL;
    Py_buffer out;
    if (PyObject_GetBuffer(args[2], &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        return NULL;
    int code = -1;
    if (memory_pin(&self->mem, "channel") < 0)
        goto released;
    code = PENDING;
    if (out.len > self->cap - HEADER_BYTES)
        goto done;
    uint64_t tail = __atomic_load_n(self->in_tail, __ATOMIC_RELAXED); /* this end's own */
    struct bytes_wait w = {self, tail, (uint64_t)(HEADER_BYTES + out.len), 0};
    int r = spin_then_yield(poll_bytes, &w, spin, yield);
    if (r == 3) {
        code = corrupt(self, "recv", w.head, tail);
    } else if (r == 1) {
        ring_get(self->in_data, self->cap, tail, got, HEADER_BYTES);
        if (!same_call(got, want)) {
            code = MISMATCH;
        } else {
            ring_get(self->in_data, self->cap, tail + HEADER_BYTES, out.buf, out.len);
            /* The reads are done before the sender may write there again. */
            __atomic_store_n(self->in_tail, tail + w.need, __ATOMIC_RELEASE);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (__atomic_load_n(self->in_peer_sleep, __ATOMIC_RELAXED))
                wake(self->writer);
            code = DONE;
        }
    }
done:
    memory_unpin(&self->mem);
released:
    PyBuffer_Release(&out);
    return code < 0 ? NULL : PyLong_FromLong(code);
}

/* shut(): from now on every send and recv moves nothing (the link was shut down); a recv
 * waiting in another thread stops. */
static PyObject *channel_shut(Channel *self, PyObject *unused)
{
    __atomic_store_n(&self->shut, 1, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

/* close(): shut, and release the segment's memory, now or, while a call is in flight
 * (another thread's wait), when the last one ends; from now on every call raises ValueError. */
static PyObject *channel_close(Channel *self, PyObject *unused)
{
    __atomic_store_n(&self->shut, 1, __ATOMIC_RELAXED);
    memory_close(&self->mem);
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
