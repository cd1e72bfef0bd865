/* The compiled core of ringcomm's shared-memory hot loop (optional: ringcomm/native.py).
 *
 * One small call of the ranks of a host, all in one C call per rank: write the
 * call's header and data into this rank's slot, publish the post (a release
 * store of the posted count), wake the ranks that sleep, wait for every other
 * rank's post (spin, then yield the core, with the GIL released), then check
 * that no rank left the job, compare every rank's header with this rank's, and
 * reduce every rank's slot in rank order into the result: the same bits on
 * every rank, the same as NumPy's rank-order reduction.
 *
 * The segment's layout, the header, the checks and the long (blocking) wait
 * belong to the Python side (transport/shm.py, backends/ring/local.py): when
 * the short wait runs out, when headers differ, when a rank left, or when the
 * dtype is one this file does not reduce, the call returns a code and Python
 * goes on with the same state. Nothing here blocks without a bound.
 *
 * A `Channel` is one end of a shared-memory link's pair of ring buffers
 * (transport/shm.py's ShmLink) for send and recv: a send writes a message
 * (header and data) whole when the ring has room for it, and a recv takes one
 * whole when all of it is there within a short wait and its header is the one
 * expected; otherwise they move nothing and say so, and the Python link does
 * the call (its waits, its deadline and its error messages).
 *
 * `pair_allreduce` is the latency path of a group of two ranks joined by sockets: one call
 * sends this rank's message and takes the other's without blocking for a short spin, checks
 * the other's header and reduces; what it does not finish, Python's socket loop goes on with.
 *
 * Memory ordering: data stores, then a release store of the count; an acquire
 * load of a peer's count, then reads of its data. A sleeping flag is read only
 * after a full fence that follows the count's store, the waiter's side mirrors
 * it (transport/shm.py says why).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define HEADER_BYTES 128
#define SEQ_AT 8
#define MAX_RANKS 256

/* Return codes, mirrored in native.py. */
enum { DONE = 0, PENDING = 1, MISMATCH = 2, GONE = 3, REDUCE = 4 };
/* Element kinds (native.py's KINDS). */
enum { K_F32, K_F64, K_I8, K_I16, K_I32, K_I64, K_U8, K_U16, K_U32, K_U64, K_BOOL, K_NONE = -1 };
enum { OP_SUM = 0, OP_MAX = 1, OP_MIN = 2 };

typedef struct {
    PyObject_HEAD
    Py_buffer mem;
    int held;
    char *base;
    Py_ssize_t region, slots_at, slot_bytes;
    int index, count;
    int wake_to[MAX_RANKS]; /* a datagram socket connected to each rank's wake-up (-1: none) */
} Segment;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline uint64_t *word(Segment *s, int j, int k)
{
    return (uint64_t *)(s->base + (Py_ssize_t)j * s->region) + k;
}

static inline char *slot(Segment *s, int j, int which)
{
    return s->base + (Py_ssize_t)j * s->region + s->slots_at + (Py_ssize_t)which * s->slot_bytes;
}

/* Words of a region's control line. */
#define POSTED 0
#define SLEEPING 1
#define GONE_FLAG 2

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

/* Wake a waiter through a connected datagram socket: a full queue means it wakes anyway, a
 * gone peer is found by the checks. */
static void wake(int fd)
{
    if (fd >= 0)
        (void)send(fd, "\1", 1, MSG_DONTWAIT);
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

/* ---- reductions, in rank order: out = r0 op r1 op ... ---------------------------------- */

#define SUM_LOOP(T, U)                                                                         \
    static void sum_##T(char *out_, char *const *rows, int p, Py_ssize_t n)                   \
    {                                                                                          \
        T *out = (T *)out_;                                                                    \
        const T *r0 = (const T *)rows[0];                                                      \
        for (Py_ssize_t i = 0; i < n; i++) out[i] = r0[i];                                     \
        for (int j = 1; j < p; j++) {                                                          \
            const T *r = (const T *)rows[j];                                                   \
            for (Py_ssize_t i = 0; i < n; i++) out[i] = (T)((U)out[i] + (U)r[i]);              \
        }                                                                                      \
    }

/* NumPy's maximum and minimum: NaN wins. */
#define CMP_LOOP(T, NAME, CMP)                                                                 \
    static void NAME##_##T(char *out_, char *const *rows, int p, Py_ssize_t n)                \
    {                                                                                          \
        T *out = (T *)out_;                                                                    \
        const T *r0 = (const T *)rows[0];                                                      \
        for (Py_ssize_t i = 0; i < n; i++) out[i] = r0[i];                                     \
        for (int j = 1; j < p; j++) {                                                          \
            const T *r = (const T *)rows[j];                                                   \
            for (Py_ssize_t i = 0; i < n; i++) {                                               \
                T a = out[i], b = r[i];                                                        \
                out[i] = (a CMP b || a != a) ? a : b;                                          \
            }                                                                                  \
        }                                                                                      \
    }

#define ALL_LOOPS(T, U) SUM_LOOP(T, U) CMP_LOOP(T, max, >=) CMP_LOOP(T, min, <=)

ALL_LOOPS(float, float)
ALL_LOOPS(double, double)
ALL_LOOPS(int8_t, uint8_t)
ALL_LOOPS(int16_t, uint16_t)
ALL_LOOPS(int32_t, uint32_t)
ALL_LOOPS(int64_t, uint64_t)
ALL_LOOPS(uint8_t, uint8_t)
ALL_LOOPS(uint16_t, uint16_t)
ALL_LOOPS(uint32_t, uint32_t)
ALL_LOOPS(uint64_t, uint64_t)

/* bool: sum is logical or (as NumPy's add), max is or, min is and. */
static void or_bool(char *out_, char *const *rows, int p, Py_ssize_t n)
{
    uint8_t *out = (uint8_t *)out_;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t v = 0;
        for (int j = 0; j < p; j++) v |= (uint8_t)rows[j][i];
        out[i] = v ? 1 : 0;
    }
}

static void and_bool(char *out_, char *const *rows, int p, Py_ssize_t n)
{
    uint8_t *out = (uint8_t *)out_;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t v = 1;
        for (int j = 0; j < p; j++) v &= (uint8_t)(rows[j][i] != 0);
        out[i] = v;
    }
}

typedef void (*reducer)(char *, char *const *, int, Py_ssize_t);

#define ROW(T) {sum_##T, max_##T, min_##T}
static const reducer REDUCERS[][3] = {
    ROW(float), ROW(double), ROW(int8_t), ROW(int16_t), ROW(int32_t), ROW(int64_t),
    ROW(uint8_t), ROW(uint16_t), ROW(uint32_t), ROW(uint64_t), {or_bool, or_bool, and_bool},
};
static const int ITEMSIZE[] = {4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 1};
#define N_KINDS ((int)(sizeof(ITEMSIZE) / sizeof(ITEMSIZE[0])))

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

/* Wait up to `spin` seconds polling, then yielding until `yield` seconds; return whether all
 * posted. The GIL is released while waiting. */
static int short_wait(Segment *s, uint64_t goal, double spin, double yield)
{
    if (all_posted(s, goal))
        return 1;
    int ok = 0;
    Py_BEGIN_ALLOW_THREADS
    double start = now(), t = start;
    unsigned k = 0;
    while (!(ok = all_posted(s, goal))) {
        if ((++k & 15) == 0) {
            t = now();
            if (t - start >= yield)
                break;
        }
        if (t - start >= spin)
            sched_yield();
    }
    Py_END_ALLOW_THREADS
    return ok;
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
    if (kind < 0 || kind >= N_KINDS || op < 0 || op > 2)
        return REDUCE;
    char *rows[MAX_RANKS];
    for (int j = 0; j < s->count; j++) rows[j] = slot(s, j, which) + HEADER_BYTES;
    REDUCERS[kind][op](out, rows, s->count, n);
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
    Py_ssize_t isz = kind >= 0 && kind < N_KINDS ? ITEMSIZE[kind] : 1;
    uint64_t goal = (uint64_t)posts + 1;
    int which = (int)(goal & 1);
    char *mine = slot(self, self->index, which);
    memcpy(mine, tmpl, HEADER_BYTES);
    int64_t s64 = (int64_t)seq;
    memcpy(mine + SEQ_AT, &s64, 8); /* little-endian hosts only: native.py checks */
    memcpy(mine + HEADER_BYTES, src.buf, (size_t)src.len);
    post(self, goal);
    if (!short_wait(self, goal, spin, yield)) {
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
    Py_ssize_t isz = kind >= 0 && kind < N_KINDS ? ITEMSIZE[kind] : 1;
    int code = finish(self, (int)(posts & 1), out.buf, out.len / isz, kind, op);
    PyBuffer_Release(&out);
    return PyLong_FromLong(code);
}

/* ---- point to point: one end of a link's two ring buffers ------------------------------- */

/* A channel's layout (transport/shm.py): the sender's line (head, its sleeping flag), the
 * receiver's line (tail, its sleeping flag), then `cap` bytes of ring (a power of two). */
#define RANK_AT 24 /* the sender's rank in a header: a recv does not compare it */

/* Compare a received header with the expected one, but for the sender's rank. */
static int same_call(const char *a, const char *b)
{
    return memcmp(a, b, RANK_AT) == 0 &&
           memcmp(a + RANK_AT + 4, b + RANK_AT + 4, HEADER_BYTES - RANK_AT - 4) == 0;
}

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
    Py_ssize_t end = (out > in ? out : in) + 2 * 64 + self->cap;
    if (self->mem.len < end) {
        channel_release(self);
        PyErr_SetString(PyExc_ValueError, "the segment is smaller than the channel");
        return -1;
    }
    char *base = (char *)self->mem.buf;
    self->out_head = (uint64_t *)(base + out);
    self->out_tail = (uint64_t *)(base + out + 64);
    self->out_peer_sleep = self->out_tail + 1;
    self->in_head = (uint64_t *)(base + in);
    self->in_peer_sleep = self->in_head + 1;
    self->in_tail = (uint64_t *)(base + in + 64);
    self->out_data = base + out + 128;
    self->in_data = base + in + 128;
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
    memcpy(header, tmpl, HEADER_BYTES);
    int64_t s64 = (int64_t)*seq;
    memcpy(header + SEQ_AT, &s64, 8); /* little-endian hosts only: native.py checks */
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
    if (!__atomic_load_n(&self->shut, __ATOMIC_RELAXED) && n <= self->cap - (Py_ssize_t)(head - tail)) {
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

/* Wait up to `spin` seconds polling, then yielding until `yield` seconds, for `need` bytes
 * past `tail`; the GIL is released while waiting. */
static int channel_wait(Channel *self, uint64_t tail, Py_ssize_t need, double spin, double yield)
{
    if (__atomic_load_n(&self->shut, __ATOMIC_RELAXED))
        return 0;
    if ((Py_ssize_t)(__atomic_load_n(self->in_head, __ATOMIC_ACQUIRE) - tail) >= need)
        return 1;
    int ok = 0;
    Py_BEGIN_ALLOW_THREADS
    double start = now(), t = start;
    unsigned k = 0;
    while (!(ok = (Py_ssize_t)(__atomic_load_n(self->in_head, __ATOMIC_ACQUIRE) - tail) >=
                  need) && !__atomic_load_n(&self->shut, __ATOMIC_RELAXED)) {
        if ((++k & 15) == 0) {
            t = now();
            if (t - start >= yield)
                break;
        }
        if (t - start >= spin)
            sched_yield();
    }
    Py_END_ALLOW_THREADS
    return ok && !__atomic_load_n(&self->shut, __ATOMIC_RELAXED);
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
    if (need <= self->cap && channel_wait(self, tail, need, spin, yield)) {
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

static PyTypeObject ChannelType = {
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

/* ---- two ranks over TCP: one small all-reduce in one call ------------------------------ */

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* Python ignores SIGPIPE; where this flag is missing, the signal too */
#endif

static int would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK || e == EINTR; }

/* pair_allreduce(out_fd, in_fd, rows, rank, template, seq, src, out, kind, op, spin)
 *     -> (code, sent, got, send_errno, recv_errno)
 *
 * The latency path of a group of two ranks joined by two sockets (transport/net.py's
 * exchange, in C): `rows` holds both ranks' messages (header and data) in rank order; this
 * rank writes its own (the template, this rank's header, with call number `seq`; then
 * `src`), sends it on `out_fd` and receives the other's on `in_fd`, neither call blocking,
 * for up to `spin` seconds with the GIL released. Then it compares the other's header with
 * its own (but for the rank) and reduces both rows, in rank order, into `out`.
 *
 * DONE: `out` holds the result. PENDING: the spin ran out with `sent` and `got` bytes moved;
 * Python goes on from there (its waits, deadline and messages). MISMATCH: the other's
 * header (in its row) differs. REDUCE: checked, Python reduces this dtype. GONE: a send or
 * a receive failed (its errno; a receive's -1: the peer closed the connection). */
static PyObject *pair_allreduce(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "pair_allreduce takes 11 arguments");
        return NULL;
    }
    int out_fd = (int)PyLong_AsLong(args[0]);
    int in_fd = (int)PyLong_AsLong(args[1]);
    int rank = (int)PyLong_AsLong(args[3]);
    long long seq = PyLong_AsLongLong(args[5]);
    int kind = (int)PyLong_AsLong(args[8]);
    int op = (int)PyLong_AsLong(args[9]);
    double spin = PyFloat_AsDouble(args[10]);
    if (PyErr_Occurred())
        return NULL;
    char *tmpl;
    Py_ssize_t tn;
    if (PyBytes_AsStringAndSize(args[4], &tmpl, &tn) < 0)
        return NULL;
    if (tn != HEADER_BYTES || (rank != 0 && rank != 1)) {
        PyErr_SetString(PyExc_ValueError, "pair_allreduce: a 128-byte template, rank 0 or 1");
        return NULL;
    }
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
    Py_ssize_t n = HEADER_BYTES + src.len;
    if (out.len != src.len || rows.len != 2 * n) {
        PyErr_SetString(PyExc_ValueError, "pair_allreduce: the buffers differ in size");
        goto done;
    }
    char *mine = (char *)rows.buf + rank * n, *theirs = (char *)rows.buf + (1 - rank) * n;
    memcpy(mine, tmpl, HEADER_BYTES);
    int64_t s64 = (int64_t)seq;
    memcpy(mine + SEQ_AT, &s64, 8); /* little-endian hosts only: native.py checks */
    memcpy(mine + HEADER_BYTES, src.buf, (size_t)src.len);
    Py_ssize_t sent = 0, got = 0;
    int send_err = 0, recv_err = 0, differs = 0;
    Py_BEGIN_ALLOW_THREADS
    double start = 0.0;
    for (;;) {
        int moved = 0;
        if (sent < n) {
            ssize_t k = send(out_fd, mine + sent, (size_t)(n - sent), MSG_DONTWAIT | MSG_NOSIGNAL);
            if (k > 0) {
                sent += k;
                moved = 1;
            } else if (k < 0 && !would_block(errno)) {
                send_err = errno;
                break;
            }
        }
        if (got < n) {
            ssize_t k = recv(in_fd, theirs + got, (size_t)(n - got), MSG_DONTWAIT);
            if (k > 0) {
                int had = got >= HEADER_BYTES;
                got += k;
                moved = 1;
                if (!had && got >= HEADER_BYTES && !same_call(theirs, mine)) {
                    differs = 1; /* a shorter message would never fill the row */
                    break;
                }
            } else if (k == 0) {
                recv_err = -1;
                break;
            } else if (!would_block(errno)) {
                recv_err = errno;
                break;
            }
        }
        if (sent == n && got == n)
            break;
        if (!moved) {
            double t = now();
            if (start == 0.0)
                start = t;
            else if (t - start >= spin)
                break;
        }
    }
    Py_END_ALLOW_THREADS
    int code;
    if (send_err || recv_err)
        code = GONE;
    else if (differs)
        code = MISMATCH;
    else if (sent < n || got < n)
        code = PENDING;
    else if (kind < 0 || kind >= N_KINDS || op < 0 || op > 2)
        code = REDUCE;
    else {
        char *r[2] = {(char *)rows.buf + HEADER_BYTES, (char *)rows.buf + n + HEADER_BYTES};
        REDUCERS[kind][op](out.buf, r, 2, src.len / ITEMSIZE[kind]);
        code = DONE;
    }
    result = Py_BuildValue("(innii)", code, sent, got, send_err, recv_err);
done:
    PyBuffer_Release(&rows);
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    return result;
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

static PyTypeObject SegmentType = {
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

static PyMethodDef module_methods[] = {
    {"pair_allreduce", (PyCFunction)(void (*)(void))pair_allreduce, METH_FASTCALL,
     "pair_allreduce(out_fd, in_fd, rows, rank, template, seq, src, out, kind, op, spin) -> "
     "(code, sent, got, send_errno, recv_errno)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ringcomm._native",
    "The compiled core of ringcomm's small calls and messages (optional).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&SegmentType) < 0 || PyType_Ready(&ChannelType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SegmentType);
    if (PyModule_AddObject(m, "Segment", (PyObject *)&SegmentType) < 0) {
        Py_DECREF(&SegmentType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ChannelType);
    if (PyModule_AddObject(m, "Channel", (PyObject *)&ChannelType) < 0) {
        Py_DECREF(&ChannelType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "HEADER", HEADER_BYTES);
    PyModule_AddIntConstant(m, "MAX_RANKS", MAX_RANKS);
    return m;
}
