/* Shared definitions of ringcomm's compiled core (the module ringcomm._native).
 *
 * The core is the hot loop of a few small calls, each the twin of Python code that does the
 * same where the core is not built (ringcomm/native.py says which runs):
 *
 *   segment.c  Segment: post into this rank's slot of the host's segment, wait for the other
 *              local ranks' posts, check, reduce (transport/shm.py's Shared and
 *              backends/ring/local.py's small reduction);
 *   channel.c  Channel: one end of a shared-memory link's two ring buffers, whole small
 *              messages of send and recv (transport/shm.py's ShmLink);
 *   pair.c     pair_allreduce: two ranks over TCP, one small all-reduce in one call
 *              (backends/ring/backend.py's _pair_reduce);
 *   reduce.c   the rank-order reductions per kind and op;
 *   module.c   the module: its types, functions and constants.
 *
 * Every call does what it can within a short wait and otherwise returns a code, and Python
 * goes on with the same state (its waits, deadlines and error messages). Nothing here blocks
 * without a bound.
 *
 * Memory ordering: data stores, then a release store of a count; an acquire load of a peer's
 * count, then reads of its data. A sleeping flag is read only after a full fence that follows
 * the count's store; the waiter's side mirrors it (transport/shm.py says why).
 */
#ifndef RINGCOMM_CORE_H
#define RINGCOMM_CORE_H

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

/* The shared counters are 8-byte words that other processes read and write while this one
 * does: on a 32-bit host they would tear. The package runs its pure-Python path there
 * (native.py refuses the core too, at load). */
#if UINTPTR_MAX < UINT64_MAX || SIZE_MAX < UINT64_MAX
#error "ringcomm's compiled core needs a 64-bit host (its 8-byte shared counters would tear on a 32-bit one); the package runs its pure-Python path without it"
#endif
_Static_assert(sizeof(void *) == 8 && sizeof(Py_ssize_t) == 8, "a 64-bit host");
_Static_assert(__atomic_always_lock_free(sizeof(uint64_t), 0),
               "8-byte atomics without a lock: the counters are shared between processes");

/* Names shared between the core's files, not exported from the module's library. */
#if defined(__GNUC__)
#define RC_INTERNAL __attribute__((visibility("hidden")))
#else
#define RC_INTERNAL
#endif

/* The 128-byte header every message and slot starts with, as transport/header.py lays it out
 * (struct "<4sBBBxqQii11q": magic, op, dtype code, ndim, seq, group, rank, arg, dims). The
 * module exports these; native.py checks at load that header.py's layout agrees. */
#define HEADER_BYTES 128
#define SEQ_AT 8    /* the call number: 8 bytes, little-endian (native.py checks the host) */
#define SEQ_BYTES 8
#define RANK_AT 24  /* the sender's rank: 4 bytes, the one field a receiver does not compare */
#define RANK_BYTES 4

#define MAX_RANKS 256

/* Return codes, mirrored in native.py's Codes. */
enum { DONE = 0, PENDING = 1, MISMATCH = 2, GONE = 3, REDUCE = 4 };
/* Element kinds (native.py's KINDS) and ops (backends/ring's _OPCODES). */
enum { K_F32, K_F64, K_I8, K_I16, K_I32, K_I64, K_U8, K_U16, K_U32, K_U64, K_BOOL, N_KINDS };
enum { OP_SUM = 0, OP_MAX = 1, OP_MIN = 2, OP_PROD = 3, OP_BAND = 4, OP_BOR = 5, OP_BXOR = 6, N_OPS = 7 };

static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Wake a waiter through a connected datagram socket: a full queue means it wakes anyway, a
 * gone peer is found by the checks. */
static inline void wake(int fd)
{
    if (fd >= 0)
        (void)send(fd, "\1", 1, MSG_DONTWAIT);
}

/* Write a call's header at `dst`: the template with call number `seq` at SEQ_AT. */
static inline void stamp_header(char *dst, const char *tmpl, long long seq)
{
    int64_t s64 = (int64_t)seq;
    memcpy(dst, tmpl, HEADER_BYTES);
    memcpy(dst + SEQ_AT, &s64, SEQ_BYTES); /* little-endian hosts only: native.py checks */
}

/* Compare a received header with the expected one, but for the sender's rank. */
static inline int same_call(const char *a, const char *b)
{
    return memcmp(a, b, RANK_AT) == 0 &&
           memcmp(a + RANK_AT + RANK_BYTES, b + RANK_AT + RANK_BYTES,
                  HEADER_BYTES - RANK_AT - RANK_BYTES) == 0;
}

/* ---- the one wait of the core: spin, then yield the core, with the GIL released ---------
 *
 * `poll(ctx)` is asked again and again, without the GIL (it must not touch Python objects):
 * it returns WAIT_IDLE when nothing happened yet, WAIT_MOVED when it made progress but is not
 * done, or a positive value to stop with. The clock starts at the first idle poll: the wait
 * polls (spinning) until `spin` seconds have passed, then yields the core between polls
 * until `yield` seconds have passed, and returns WAIT_IDLE then. The first poll runs with the
 * GIL held, so a call whose answer is there already does not release it. */
enum { WAIT_MOVED = -1, WAIT_IDLE = 0 };

static inline int spin_then_yield(int (*poll)(void *), void *ctx, double spin, double yield)
{
    int r = poll(ctx);
    if (r > 0)
        return r;
    Py_BEGIN_ALLOW_THREADS
    double start = -1.0, t = 0.0;
    unsigned k = 0;
    for (;;) {
        if (r == WAIT_IDLE) {
            if (start < 0.0) {
                start = t = now();
            } else if ((++k & 15) == 0) {
                t = now();
                if (t - start >= yield)
                    break;
            }
            if (t - start >= spin)
                sched_yield();
        }
        if ((r = poll(ctx)) > 0)
            break;
    }
    Py_END_ALLOW_THREADS
    return r > 0 ? r : WAIT_IDLE;
}

/* ---- arguments: every one checked before anything is stored or written ----------------- */

/* An int argument in [lo, hi] (ValueError outside it, TypeError when not an int). */
static inline int long_arg(PyObject *o, long lo, long hi, const char *what, long *v)
{
    int overflow;
    long x = PyLong_AsLongAndOverflow(o, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (overflow || x < lo || x > hi) {
        PyErr_Format(PyExc_ValueError, "%s: out of range [%ld, %ld]", what, lo, hi);
        return -1;
    }
    *v = x;
    return 0;
}

/* A kind or op number: any int; one out of the core's range means Python reduces (REDUCE). */
static inline int code_arg(PyObject *o, int limit, int *v)
{
    int overflow;
    long x = PyLong_AsLongAndOverflow(o, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    *v = overflow || x < 0 || x >= limit ? -1 : (int)x;
    return 0;
}

/* A wait's length in seconds: finite and not negative (NaN would never end a wait). */
static inline int seconds_arg(PyObject *o, const char *what, double *v)
{
    double x = PyFloat_AsDouble(o);
    if (x == -1.0 && PyErr_Occurred())
        return -1;
    if (!isfinite(x) || x < 0.0) {
        PyErr_Format(PyExc_ValueError, "%s: a finite number of seconds, not negative", what);
        return -1;
    }
    *v = x;
    return 0;
}

/* A call's 128-byte header template (bytes). */
static inline int template_arg(PyObject *o, const char **tmpl)
{
    char *t;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(o, &t, &n) < 0)
        return -1;
    if (n != HEADER_BYTES) {
        PyErr_SetString(PyExc_ValueError, "the header template must be 128 bytes");
        return -1;
    }
    *tmpl = t;
    return 0;
}

/* ---- the memory a Segment or Channel maps, and the calls in flight on it --------------------
 *
 * A call that releases the GIL (a wait) keeps using the memory meanwhile, and another thread
 * may call close() then: close only marks the memory closed while calls are in flight (the
 * waits see the mark and end), and the last call out releases it. `busy` changes only with
 * the GIL held; `closed` is read by waits without it. */
typedef struct {
    Py_buffer view;
    int held;   /* `view` holds the memory */
    int busy;   /* calls in flight */
    int closed; /* close() was called */
} rc_memory;

/* Begin a call on the memory: ValueError when it was released (or never held). */
static inline int memory_pin(rc_memory *m, const char *what)
{
    if (!m->held || __atomic_load_n(&m->closed, __ATOMIC_RELAXED)) {
        PyErr_Format(PyExc_ValueError, "the %s was released", what);
        return -1;
    }
    m->busy++;
    return 0;
}

static inline void memory_release(rc_memory *m)
{
    if (m->held) {
        m->held = 0;
        PyBuffer_Release(&m->view);
    }
}

/* End a call: the last one out of a closed memory releases it. */
static inline void memory_unpin(rc_memory *m)
{
    if (--m->busy == 0 && __atomic_load_n(&m->closed, __ATOMIC_RELAXED))
        memory_release(m);
}

static inline int memory_closing(rc_memory *m)
{
    return __atomic_load_n(&m->closed, __ATOMIC_RELAXED);
}

static inline void memory_close(rc_memory *m)
{
    __atomic_store_n(&m->closed, 1, __ATOMIC_RELAXED);
    if (m->busy == 0)
        memory_release(m);
}

/* -1 (RuntimeError) while a call is in flight: a re-__init__ then changes nothing. */
static inline int memory_busy(rc_memory *m, const char *what)
{
    if (m->busy) {
        PyErr_Format(PyExc_RuntimeError, "the %s is in use by a call in flight", what);
        return -1;
    }
    return 0;
}

/* Take `fresh` (a writable buffer of the object's new memory, its geometry checked) in place
 * of the memory held now (no call is in flight). */
static inline void memory_replace(rc_memory *m, Py_buffer *fresh)
{
    memory_release(m);
    m->view = *fresh;
    m->held = 1;
    __atomic_store_n(&m->closed, 0, __ATOMIC_RELAXED);
}

/* ---- what each file gives the others ----------------------------------------------------- */

/* reduce.c: out = rows[0] op rows[1] op ... op rows[p-1] over n elements of `kind`, in rank
 * order, NumPy's bits. */
typedef void (*reducer)(char *out, char *const *rows, int p, Py_ssize_t n);
RC_INTERNAL extern const reducer rc_reducers[N_KINDS][N_OPS];
RC_INTERNAL extern const int rc_itemsize[N_KINDS];

/* Whether the core reduces `kind` by `op` (both as code_arg gave them): a code out of range,
 * or an op the kind has not (bitwise ops of floats), is Python's to reduce (REDUCE). */
static inline int reducible(int kind, int op)
{
    return kind >= 0 && op >= 0 && rc_reducers[kind][op] != NULL;
}

/* segment.c, channel.c, pair.c */
RC_INTERNAL extern PyTypeObject rc_SegmentType;
RC_INTERNAL extern PyTypeObject rc_ChannelType;
RC_INTERNAL PyObject *rc_pair_allreduce(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);

#endif /* RINGCOMM_CORE_H */
