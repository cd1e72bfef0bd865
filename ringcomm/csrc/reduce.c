/* The rank-order reductions of the core: out = r0 op r1 op ... op r(p-1), element by element,
 * as NumPy's ufuncs give it when called in that order (out = r0; ufunc(out, r1, out=out); ...),
 * bit for bit, so that every rank, and the Python path, has the same result. */
#include "core.h"

/* The rows and the result are any caller's bytes (a slot, an array, a row of a message at an
 * odd offset): every element is read and written through a type of alignment 1, which the
 * compiler turns into plain (unaligned) loads and stores, vectorised as before. */
#define UNALIGNED(T) typedef T T##_u __attribute__((aligned(1), may_alias));
UNALIGNED(float)
UNALIGNED(double)
UNALIGNED(int8_t)
UNALIGNED(int16_t)
UNALIGNED(int32_t)
UNALIGNED(int64_t)
UNALIGNED(uint8_t)
UNALIGNED(uint16_t)
UNALIGNED(uint32_t)
UNALIGNED(uint64_t)

/* One rank-order loop: out = r0, then out[i] = EXPR of a = out[i] and b = the next row's
 * element, row by row, as NumPy's out = r0; ufunc(out, r1, out=out); ... gives it. */
#define OP_LOOP(T, NAME, EXPR)                                                                 \
    static void NAME##_##T(char *out_, char *const *rows, int p, Py_ssize_t n)                \
    {                                                                                          \
        T##_u *out = (T##_u *)out_;                                                            \
        const T##_u *r0 = (const T##_u *)rows[0];                                              \
        for (Py_ssize_t i = 0; i < n; i++) out[i] = r0[i];                                     \
        for (int j = 1; j < p; j++) {                                                          \
            const T##_u *r = (const T##_u *)rows[j];                                           \
            for (Py_ssize_t i = 0; i < n; i++) {                                               \
                T a = out[i], b = r[i];                                                        \
                out[i] = (T)(EXPR);                                                            \
            }                                                                                  \
        }                                                                                      \
    }

/* Sums wrap: integers add as their unsigned type U. */
#define SUM_LOOP(T, U) OP_LOOP(T, sum, (U)a + (U)b)

/* NumPy's maximum and minimum, as np.maximum(a, b) and np.minimum(a, b) give them: a when it
 * is NaN or strictly greater (less), else b. So NaN wins (the first NaN, its bits as they
 * are), and on a tie the second operand wins: maximum(+0.0, -0.0) is -0.0 and
 * maximum(-0.0, +0.0) is +0.0, and the same for minimum. In rank order the last rank of a
 * tie wins, as it does in NumPy's out = r0; maximum(out, r1, out=out); ... */
#define CMP_LOOP(T, NAME, CMP) OP_LOOP(T, NAME, (a CMP b || a != a) ? a : b)

/* A product, and the bitwise ops. Integers multiply as uint64_t and keep their low bits, as
 * NumPy's wrap-around gives (a narrower unsigned type would be promoted to int, where
 * 65535 * 65535 overflows). */

#define ALL_LOOPS(T, U) SUM_LOOP(T, U) CMP_LOOP(T, max, >) CMP_LOOP(T, min, <)
#define FLOAT_LOOPS(T) ALL_LOOPS(T, T) OP_LOOP(T, prod, a * b)
#define INT_LOOPS(T, U)                                                                        \
    ALL_LOOPS(T, U)                                                                            \
    OP_LOOP(T, prod, (uint64_t)a * (uint64_t)b)                                                \
    OP_LOOP(T, band, a & b) OP_LOOP(T, bor, a | b) OP_LOOP(T, bxor, a ^ b)

FLOAT_LOOPS(float)
FLOAT_LOOPS(double)
INT_LOOPS(int8_t, uint8_t)
INT_LOOPS(int16_t, uint16_t)
INT_LOOPS(int32_t, uint32_t)
INT_LOOPS(int64_t, uint64_t)
INT_LOOPS(uint8_t, uint8_t)
INT_LOOPS(uint16_t, uint16_t)
INT_LOOPS(uint32_t, uint32_t)
INT_LOOPS(uint64_t, uint64_t)

/* bool: sum is logical or (as NumPy's add), max is or, min is and; prod and band are and,
 * bor is or, bxor is parity. */
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

static void xor_bool(char *out_, char *const *rows, int p, Py_ssize_t n)
{
    uint8_t *out = (uint8_t *)out_;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t v = 0;
        for (int j = 0; j < p; j++) v ^= (uint8_t)(rows[j][i] != 0);
        out[i] = v;
    }
}

/* NULL: an op the kind does not have (bitwise ops of floats); callers check rc_reducible. */
#define FLOAT_ROW(T) {sum_##T, max_##T, min_##T, prod_##T, NULL, NULL, NULL}
#define INT_ROW(T) {sum_##T, max_##T, min_##T, prod_##T, band_##T, bor_##T, bxor_##T}
const reducer rc_reducers[N_KINDS][N_OPS] = {
    FLOAT_ROW(float), FLOAT_ROW(double), INT_ROW(int8_t), INT_ROW(int16_t), INT_ROW(int32_t),
    INT_ROW(int64_t), INT_ROW(uint8_t), INT_ROW(uint16_t), INT_ROW(uint32_t), INT_ROW(uint64_t),
    {or_bool, or_bool, and_bool, and_bool, and_bool, or_bool, xor_bool},
};
const int rc_itemsize[N_KINDS] = {4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 1};
