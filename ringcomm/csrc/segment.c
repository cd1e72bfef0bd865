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
    rc_memory mem; /* the host's segment */
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

/* The most data a slot holds after its header. */
static inline Py_ssize_t slot_room(Segment *s) { return s->slot_bytes - HEADER_BYTES; }

static void segment_dealloc(Segment *self)
{
    memory_release(&self->mem);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Read a list of `count` socket descriptors (-1 for none) into `fds`. */
static int wake_fds(PyObject *list, int count, int *fds)
{
    if (!PyList_Check(list) || PyList_GET_SIZE(list) != count) {
        PyErr_SetString(PyExc_ValueError, "wake_fds: a list of descriptors, one per rank");
        return -1;
    }
    /* A copy: reading an item may run Python code (__index__), which may change the list. */
    PyObject *items = PyList_AsTuple(list);
    if (items == NULL)
        return -1;
    int rc = 0;
    for (int j = 0; j < count && rc == 0; j++) {
        long fd;
        rc = long_arg(PyTuple_GET_ITEM(items, j), -1, INT_MAX, "wake_fds: a descriptor", &fd);
        fds[j] = (int)fd;
    }
    Py_DECREF(items);
    return rc;
}

/* Segment(mem, index, count, region, slots_at, slot_bytes, wake_fds): `count` regions of
 * `region` bytes from the start of `mem`, each its control line (POSTED, SLEEPING, GONE_FLAG)
 * and at `slots_at` two slots of `slot_bytes` (a header, then data); wake_fds[j] is a datagram
 * socket connected to local rank j's wake-up socket. Every argument is checked before
 * anything is stored: a call that fails leaves the segment as it was. */
static int segment_init(Segment *self, PyObject *args, PyObject *kw)
{
    PyObject *mem, *fds;
    int index, count;
    Py_ssize_t region, slots_at, slot_bytes;
    int wake_to[MAX_RANKS];
    if (!PyArg_ParseTuple(args, "OiinnnO", &mem, &index, &count, &region, &slots_at,
                          &slot_bytes, &fds))
        return -1;
    if (count < 1 || count > MAX_RANKS || index < 0 || index >= count) {
        PyErr_Format(PyExc_ValueError, "a segment of %d ranks (this one %d): at most %d",
                     count, index, MAX_RANKS);
        return -1;
    }
    /* The control words are 8-byte atomics: every region starts 8-byte aligned, and its
     * slots come after them and inside it. */
    if (region <= 0 || region % 8 || slots_at < 3 * 8 || slot_bytes < HEADER_BYTES ||
        slots_at > region || slot_bytes > (region - slots_at) / 2) {
        PyErr_SetString(PyExc_ValueError,
                        "a segment's regions: 8-byte aligned, each its control words, then two "
                        "slots of a header and more");
        return -1;
    }
    if (wake_fds(fds, count, wake_to) < 0)
        return -1;
    if (memory_busy(&self->mem, "segment") < 0)
        return -1;
    Py_buffer view;
    if (PyObject_GetBuffer(mem, &view, PyBUF_WRITABLE) < 0)
        return -1;
    if (view.len / count < region || (uintptr_t)view.buf % 8) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError,
                        "the segment is smaller than its regions (or not 8-byte aligned)");
        return -1;
    }
    if (memory_busy(&self->mem, "segment") < 0) { /* GetBuffer may have run Python code */
        PyBuffer_Release(&view);
        return -1;
    }
    memory_replace(&self->mem, &view);
    self->base = (char *)view.buf;
    self->index = index;
    self->count = count;
    self->region = region;
    self->slots_at = slots_at;
    self->slot_bytes = slot_bytes;
    memcpy(self->wake_to, wake_to, sizeof(int) * (size_t)count);
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

/* Ready (1) when every other rank has posted; stop (2) once the segment is being closed. */
static int poll_posts(void *ctx)
{
    struct posts_wait *w = ctx;
    if (memory_closing(&w->s->mem))
        return 2;
    return all_posted(w->s, w->goal) ? 1 : WAIT_IDLE;
}

/* After every rank posted into slot `which`: check that nobody left, compare headers, reduce
 * `n` elements (n * itemsize <= slot_room: the callers check). */
static int finish(Segment *s, int which, char *out, Py_ssize_t n, int kind, int op)
{
    for (int j = 0; j < s->count; j++)
        if (j != s->index && __atomic_load_n(word(s, j, GONE_FLAG), __ATOMIC_ACQUIRE))
            return GONE;
    const char *mine = slot(s, s->index, which);
    for (int j = 0; j < s->count; j++)
        if (j != s->index && memcmp(slot(s, j, which), mine, HEADER_BYTES) != 0)
            return MISMATCH;
    if (!reducible(kind, op))
        return REDUCE;
    char *rows[MAX_RANKS];
    for (int j = 0; j < s->count; j++) rows[j] = slot(s, j, which) + HEADER_BYTES;
    rc_reducers[kind][op](out, rows, s->count, n);
    return DONE;
}

/* The number of elements of `kind` in `len` bytes that fit a slot, or -1 (ValueError). */
static Py_ssize_t elements(Segment *s, Py_ssize_t len, int kind, const char *what)
{
    Py_ssize_t isz = kind >= 0 ? rc_itemsize[kind] : 1;
    if (len > slot_room(s)) {
        PyErr_Format(PyExc_ValueError, "%s: the buffers differ or exceed a slot (%zd bytes of "
                     "at most %zd)", what, len, slot_room(s));
        return -1;
    }
    if (len % isz) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes are not whole elements of %zd bytes",
                     what, len, isz);
        return -1;
    }
    return len / isz;
}

/* allreduce(src, out, template, seq, posts, kind, op, spin, yield) -> code
 *
 * `template` is the call's 128-byte header (its call number is written at SEQ_AT);
 * `posts` this rank's post count before the call, so the call is post `posts + 1` and uses
 * slot `(posts + 1) & 1`. PENDING: posted, not every rank has; wait, then call `finish`.
 * A kind or op the core does not reduce is checked, then REDUCE: Python reduces. */
static PyObject *segment_allreduce(Segment *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "allreduce takes 9 arguments");
        return NULL;
    }
    /* Every argument first: converting one may run Python code (which may close this). */
    const char *tmpl;
    long long seq, posts;
    int kind, op;
    double spin, yield;
    if (template_arg(args[2], &tmpl) < 0)
        return NULL;
    seq = PyLong_AsLongLong(args[3]);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    posts = PyLong_AsLongLong(args[4]);
    if (posts == -1 && PyErr_Occurred())
        return NULL;
    if (posts < 0) {
        PyErr_SetString(PyExc_ValueError, "allreduce: a post count is not negative");
        return NULL;
    }
    if (code_arg(args[5], N_KINDS, &kind) < 0 || code_arg(args[6], N_OPS, &op) < 0 ||
        seconds_arg(args[7], "allreduce: spin", &spin) < 0 ||
        seconds_arg(args[8], "allreduce: yield", &yield) < 0)
        return NULL;
    Py_buffer src, out;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    int code = -1;
    if (memory_pin(&self->mem, "segment") < 0)
        goto released;
    Py_ssize_t n = elements(self, src.len, kind, "allreduce");
    if (n < 0)
        goto done;
    if (src.len != out.len) {
        PyErr_SetString(PyExc_ValueError, "allreduce: the buffers differ or exceed a slot");
        goto done;
    }
    uint64_t goal = (uint64_t)posts + 1;
    int which = (int)(goal & 1);
    char *mine = slot(self, self->index, which);
    stamp_header(mine, tmpl, seq);
    memmove(mine + HEADER_BYTES, src.buf, (size_t)src.len); /* `src` may be in the segment */
    post(self, goal);
    struct posts_wait w = {self, goal};
    if (spin_then_yield(poll_posts, &w, spin, yield) != 1)
        code = PENDING;
    else
        code = finish(self, which, out.buf, n, kind, op);
done:
    memory_unpin(&self->mem);
released:
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    if (code < 0)
        return NULL;
    return PyLong_FromLong(code);
}

/* finish(out, posts, kind, op) -> code: after a PENDING allreduce's long wait (posts: the
 * count it posted). `out` is bounded by a slot, as allreduce's buffers are. */
static PyObject *segment_finish(Segment *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "finish takes 4 arguments");
        return NULL;
    }
    long long posts = PyLong_AsLongLong(args[1]);
    if (posts == -1 && PyErr_Occurred())
        return NULL;
    int kind, op;
    if (code_arg(args[2], N_KINDS, &kind) < 0 || code_arg(args[3], N_OPS, &op) < 0)
        return NULL;
    if (posts < 1) {
        PyErr_SetString(PyExc_ValueError, "finish: the post count of a call made (at least 1)");
        return NULL;
    }
    Py_buffer out;
    if (PyObject_GetBuffer(args[0], &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        return NULL;
    int code = -1;
    if (memory_pin(&self->mem, "segment") < 0)
        goto released;
    Py_ssize_t n = elements(self, out.len, kind, "finish");
    if (n < 0)
        goto done;
    if (!all_posted(self, (uint64_t)posts)) {
        PyErr_SetString(PyExc_RuntimeError, "finish: not every rank has posted");
        goto done;
    }
    code = finish(self, (int)(posts & 1), out.buf, n, kind, op);
done:
    memory_unpin(&self->mem);
released:
    PyBuffer_Release(&out);
    if (code < 0)
        return NULL;
    return PyLong_FromLong(code);
}

/* close(): release the segment's memory, now or, while a call is in flight (another thread's
 * wait), when the last one ends; from now on every call raises ValueError. */
static PyObject *segment_close(Segment *self, PyObject *unused)
{
    memory_close(&self->mem);
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
