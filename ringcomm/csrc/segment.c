/* Segment: one rank's view of its host's shared segment, for the small all-reduce.
 *
 * One small call of the ranks of a host, all in one C call per rank: write the call's header
 * and data into this rank's slot, publish the post (a release store of the posted count),
 * wake the ranks that sleep, wait for every other rank's post (spin_then_yield), then check
 * that no rank left the job, compare every rank's header with this rank's, and reduce every
 * rank's slot in rank order into the result: the same bits on every rank, the same as NumPy's
 * rank-order reduction.
 *
 * The segment's layout, the header, the checks and the long (blocking) wait belong to the
 * Python side (transport/shm.py, backends/ring/local.py): when the short wait runs out, when
 * headers differ, when a rank left, or when the dtype is one the core does not reduce, the
 * call returns a code and Python goes on with the same state.
 */
#include "core.h"

/* Words of a region's control line (transport/shm.py's Shared). */
#define POSTED 0
#define SLEEPING 1
#define GONE_FLAG 2

typedef struct {
    PyObject_HEAD
    Py_buffer mem;
    int held;
    char *base;
    Py_ssize_t region, slots_at, slot_bytes;
    int index, count;
    int wake_to[MAX_RANKS]; /* a datagram socket connected to each rank's wake-up (-1: none) */
} Segment;

static inline uint64_t *word(Segment *s, int j, int k)
{
    return (uint64_t *)(s->base + (Py_ssize_t)j * s->region) + k;
}

static inline char *slot(Segment *s, int j, int which)
{
    return s->base + (Py_ssize_t)j * s->region + s->slots_at + (Py_ssize_t)which * s->slot_bytes;
}

static void segment_release(Segment *self)
{
    if (self->held) {
        PyBuffer_Release(&self->mem);
        self->held = 0;
        self->base = NULL;
    }
}

static void segment_dealloc(Segment *self)
{
    segment_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Read a list of `count` socket descriptors (-1 for none) into `fds`. */
static int wake_fds(PyObject *list, int count, int *fds)
{
    if (!PyList_Check(list) || PyList_GET_SIZE(list) != count) {
        PyErr_SetString(PyExc_ValueError, "wake_fds: a list of descriptors, one per rank");
        return -1;
    }
    for (int j = 0; j < count; j++) {
        long fd = PyLong_AsLong(PyList_GET_ITEM(list, j));
        if (fd == -1 && PyErr_Occurred())
            return -1;
        if (fd < -1 || fd > INT_MAX) {
            PyErr_SetString(PyExc_ValueError, "wake_fds: a descriptor out of range");
            return -1;
        }
        fds[j] = (int)fd;
    }
    return 0;
}

/* Segment(mem, index, count, region, slots_at, slot_bytes, wake_fds): wake_fds[j] is a
 * datagram socket connected to local rank j's wake-up socket. */
static int segment_init(Segment *self, PyObject *args, PyObject *kw)
{
    PyObject *mem, *fds;
    if (!PyArg_ParseTuple(args, "OiinnnO", &mem, &self->index, &self->count, &self->region,
                          &self->slots_at, &self->slot_bytes, &fds))
        return -1;
    if (self->count < 1 || self->count > MAX_RANKS || self->index < 0 ||
        self->index >= self->count) {
        PyErr_Format(PyExc_ValueError, "a segment of %d ranks (this one %d): at most %d",
                     self->count, self->index, MAX_RANKS);
        return -1;
    }
    if (wake_fds(fds, self->count, self->wake_to) < 0)
        return -1;
    segment_release(self);
    if (PyObject_GetBuffer(mem, &self->mem, PyBUF_WRITABLE) < 0)
        return -1;
    self->held = 1;
    if (self->mem.len < self->region * self->count ||
        self->slots_at + 2 * self->slot_bytes > self->region) {
        segment_release(self);
        PyErr_SetString(PyExc_ValueError, "the segment is smaller than its regions");
        return -1;
    }
    self->base = (char *)self->mem.buf;
    return 0;
}

/* ---- posting and waiting ---------------------------------------------------------------- */

static int all_posted(Segment *s, uint64_t goal)
{
    for (int j = 0; j < s->count; j++)
        if (j != s->index && __atomic_load_n(word(s, j, POSTED), __ATOMIC_ACQUIRE) < goal)
            return 0;
    return 1;
}

/* Publish post number `goal`, then wake the local ranks that sleep. */
static void post(Segment *s, uint64_t goal)
{
    __atomic_store_n(word(s, s->index, POSTED), goal, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (int j = 0; j < s->count; j++) {
        if (j != s->index && __atomic_load_n(word(s, j, SLEEPING), __ATOMIC_RELAXED))
            wake(s->wake_to[j]);
    }
}

struct posts_wait {
    Segment *s;
    uint64_t goal;
};

static int poll_posts(void *ctx)
{
    struct posts_wait *w = ctx;
    return all_posted(w->s, w->goal) ? 1 : WAIT_IDLE;
}

/* After every rank posted into slot `which`: check that nobody left, compare headers, reduce. */
static int finish(Segment *s, int which, char *out, Py_ssize_t n, int kind, int op)
{
    for (int j = 0; j < s->count; j++)
        if (j != s->index && __atomic_load_n(word(s, j, GONE_FLAG), __ATOMIC_ACQUIRE))
            return GONE;
    const char *mine = slot(s, s->index, which);
    for (int j = 0; j < s->count; j++)
        if (j != s->index && memcmp(slot(s, j, which), mine, HEADER_BYTES) != 0)
            return MISMATCH;
    if (kind < 0 || kind >= N_KINDS || op < 0 || op >= N_OPS)
        return REDUCE;
    char *rows[MAX_RANKS];
    for (int j = 0; j < s->count; j++) rows[j] = slot(s, j, which) + HEADER_BYTES;
    rc_reducers[kind][op](out, rows, s->count, n);
    return DONE;
}

static int check_ready(Segment *s)
{
    if (!s->held) {
        PyErr_SetString(PyExc_ValueError, "the segment was released");
        return -1;
    }
    return 0;
}

/* allreduce(src, out, template, seq, posts, kind, op, spin, yield) -> code
 *
 * `template` is the call's 128-byte header (its call number is written at SEQ_AT);
 * `posts` this rank's post count before the call, so the call is post `posts + 1` and uses
 * slot `(posts + 1) & 1`. PENDING: posted, not every rank has; wait, then call `finish`. */
static PyObject *segment_allreduce(Segment *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "allreduce takes 9 arguments");
        return NULL;
    }
    if (check_ready(self) < 0)
        return NULL;
    char *tmpl;
    Py_ssize_t tn;
    if (PyBytes_AsStringAndSize(args[2], &tmpl, &tn) < 0)
        return NULL;
    long long seq = PyLong_AsLongLong(args[3]);
    long long posts = PyLong_AsLongLong(args[4]);
    int kind = (int)PyLong_AsLong(args[5]);
    int op = (int)PyLong_AsLong(args[6]);
    double spin = PyFloat_AsDouble(args[7]);
    double yield = PyFloat_AsDouble(args[8]);
    if (PyErr_Occurred())
        return NULL;
    if (tn != HEADER_BYTES) {
        PyErr_SetString(PyExc_ValueError, "the header template must be 128 bytes");
        return NULL;
    }
    Py_buffer src, out;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    int code = -1;
    if (src.len != out.len || src.len > self->slot_bytes - HEADER_BYTES) {
        PyErr_SetString(PyExc_ValueError, "allreduce: the buffers differ or exceed a slot");
        goto done;
    }
    Py_ssize_t isz = kind >= 0 && kind < N_KINDS ? rc_itemsize[kind] : 1;
    uint64_t goal = (uint64_t)posts + 1;
    int which = (int)(goal & 1);
    char *mine = slot(self, self->index, which);
    stamp_header(mine, tmpl, seq);
    memcpy(mine + HEADER_BYTES, src.buf, (size_t)src.len);
    post(self, goal);
    struct posts_wait w = {self, goal};
    if (!spin_then_yield(poll_posts, &w, spin, yield)) {
        code = PENDING;
        goto done;
    }
    code = finish(self, which, out.buf, src.len / isz, kind, op);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    if (code < 0)
        return NULL;
    return PyLong_FromLong(code);
}

/* finish(out, posts, kind, op) -> code: after a PENDING allreduce's long wait (posts: the
 * count it posted). */
static PyObject *segment_finish(Segment *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "finish takes 4 arguments");
        return NULL;
    }
    if (check_ready(self) < 0)
        return NULL;
    long long posts = PyLong_AsLongLong(args[1]);
    int kind = (int)PyLong_AsLong(args[2]);
    int op = (int)PyLong_AsLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (!all_posted(self, (uint64_t)posts)) {
        PyErr_SetString(PyExc_RuntimeError, "finish: not every rank has posted");
        return NULL;
    }
    Py_buffer out;
    if (PyObject_GetBuffer(args[0], &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        return NULL;
    Py_ssize_t isz = kind >= 0 && kind < N_KINDS ? rc_itemsize[kind] : 1;
    int code = finish(self, (int)(posts & 1), out.buf, out.len / isz, kind, op);
    PyBuffer_Release(&out);
    return PyLong_FromLong(code);
}

static PyObject *segment_close(Segment *self, PyObject *unused)
{
    segment_release(self);
    Py_RETURN_NONE;
}

static PyMethodDef segment_methods[] = {
    {"allreduce", (PyCFunction)(void (*)(void))segment_allreduce, METH_FASTCALL,
     "allreduce(src, out, template, seq, posts, kind, op, spin, yield) -> code"},
    {"finish", (PyCFunction)(void (*)(void))segment_finish, METH_FASTCALL,
     "finish(out, posts, kind, op) -> code"},
    {"close", (PyCFunction)segment_close, METH_NOARGS, "Release the segment's memory."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject rc_SegmentType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ringcomm._native.Segment",
    .tp_basicsize = sizeof(Segment),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One rank's view of its host's shared segment: the small-call hot loop.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)segment_init,
    .tp_dealloc = (destructor)segment_dealloc,
    .tp_methods = segment_methods,
};
