/* The token log-probability row kernels of the PyTorch layer on the CPU, compiled:
 * softxent.ops.token_log_probs._cpu_rows.
 *
 * `torch_cpu.token_forward_rows` and `token_backward_rows` call it for the common problem (float32 or
 * bfloat16 logits, no softcap; a temperature is fine) and keep their torch-op path for the rest; both
 * compute the same math, that module's docstring gives it. Per row, with d_j = (x_j - m) / T <= 0,
 * e_j = exp(d_j), rest = sum_j e_j less one of the entries equal to 1 (the max), L = log1p(rest):
 *
 *   forward:  lp = -((-d_t) + L),  E = sum_j e_j (-d_j) / (1 + rest),  h = L + E,  stats = (m, L, E)
 *   backward: p_j = exp(d_j - L),  grad_j = p_j (hg ((-d_j) - E) - g) / T,
 *             the target's entry (-g expm1(lp) + hg p_t ((-d_t) - E)) / T: never 1 - p_t by cancellation
 *
 * Every sum is of terms >= 0, so nothing cancels. The forward reads each row twice (1. the max, 2. the
 * exps and the three sums); the backward reads it once and writes the gradient once (out may be the
 * logits: each entry is read before it is written, the target's before the loop). No scratch row.
 *
 * Rows left to the caller (a flag per row; the torch-op path gives them their limits, rules 2 and 3 of
 * docs/semantics.md): in the forward a max that is not finite (a fully masked row, +inf) or a NaN; in the
 * backward a kept row whose stats' m or L is not finite. A label outside [0, V) that is not ignore_index
 * is flagged too, so the torch-op path raises what it raised before. Ignored rows get a zero gradient here.
 *
 * Error bound (rule 11 of the API: 2 ulp for log-probs and entropies, 4 for gradients, of float32).
 * x_j - m is exact in float64 and d_j is one float64 rounding from (x_j - m) / T; `exp_nonpositive`
 * (../cpu_rowmath.h) is within 1e-11 relative; each float64 sum of C terms >= 0 adds at most C 2^-53
 * relative (1.2e-10 up to 2^20 classes). So rest, L = log1p(rest) (relative, however small), E and
 * lp = -((-d_t) + L) carry relative errors below 2e-10 (0.003 float32 ulp), and in the backward
 * p_j = exp(d_j - L) with |d_j - L| <= 745 is off by 745 2^-53 + 1e-11 + L's error, below 3e-10.
 * Rounded once to float32 (0.5 ulp), every output is within 0.51 ulp. bfloat16 logits: the same float64
 * work, lp, h and stats come back in float32 (the torch path's precision for them), and each gradient
 * entry is rounded to float32, then once to bfloat16.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../cpu_rowmath.h"

typedef struct {
    const void *x;
    int x_dtype;
    int64_t num_rows, num_classes, x_row_stride, x_class_stride;
    const int64_t *labels;  /* in [0, V) or ignore_index */
    int64_t ignore_index;
    double temperature;
    int stats_double;       /* lp, h, stats, g, hg: float64 (1) or float32 (0) arrays, contiguous */
    uint8_t *special;       /* out: 1 where the row is the caller's */
} Rows;

static inline __attribute__((always_inline)) double get(const void *base, int is_double, int64_t index) {
    return is_double ? ((const double *)base)[index] : (double)((const float *)base)[index];
}

static inline __attribute__((always_inline)) void put(void *base, int is_double, int64_t index, double value) {
    if (is_double)
        ((double *)base)[index] = value;
    else
        ((float *)base)[index] = (float)value;
}

static inline __attribute__((always_inline)) const char *row_start(const Rows *p, int64_t r) {
    return (const char *)p->x + r * p->x_row_stride * (p->x_dtype == F32 ? 4 : 2);
}

/* 2. the forward's sums over the row: the terms below the max (d < 0), the count of ties at it (e = 1),
 * and sum_j e_j (-d_j), whose masked entries (d = -inf, e = 0) add 0, not 0 * inf */
#define FORWARD_TERM(value)                               \
    {                                                     \
        double d = (double)(value) - m;                   \
        if (scaled)                                       \
            d *= inverse_temperature;                     \
        double e = exp_nonpositive(d);                    \
        below += d < 0.0 ? e : 0.0;                       \
        ties += d == 0.0 ? 1.0 : 0.0;                     \
        if (entropy)                                      \
            spread += e > 0.0 ? e * -d : 0.0;             \
    }

typedef struct {
    double below, ties, spread;
} Sums;

/* `scaled` and `entropy` are constants at each call (the function is inlined): the loop without a
 * temperature has no multiply, the one without entropy no third sum */
static inline __attribute__((always_inline)) Sums forward_sums(const void *x, int dtype, int64_t n, int64_t stride,
                                                              double m, const int scaled, double inverse_temperature,
                                                              const int entropy) {
    double below = 0.0, ties = 0.0, spread = 0.0;
    if (stride == 1 && dtype == F32) {
        const float *row = x;
#pragma omp simd reduction(+ : below, ties, spread)
        for (int64_t j = 0; j < n; j++)
            FORWARD_TERM(row[j])
    } else if (stride == 1) {
#pragma omp simd reduction(+ : below, ties, spread)
        for (int64_t j = 0; j < n; j++)
            FORWARD_TERM(load(x, BF16, j))
    } else {
        for (int64_t j = 0; j < n; j++)
            FORWARD_TERM(load(x, dtype, j * stride))
    }
    return (Sums){below, ties, spread};
}

static inline __attribute__((always_inline)) int label_of(const Rows *p, int64_t r, int *kept) {
    const int64_t label = p->labels[r];
    *kept = label != p->ignore_index;
    if (!*kept)
        return 0;
    return (label < 0 || label >= p->num_classes) ? -1 : 1;
}

VECTOR_CLONES
static void forward_rows(const Rows *p, int entropy, void *lp, void *h, void *stats, int64_t start, int64_t stop) {
    const int64_t n = p->num_classes, xs = p->x_class_stride;
    const int divide = p->temperature != 1.0;
    const double inverse_temperature = 1.0 / p->temperature;
    const int wide = p->stats_double;
    for (int64_t r = start; r < stop; r++) {
        const char *x = row_start(p, r);
        int kept;
        if (label_of(p, r, &kept) < 0) {
            p->special[r] = 1;
            continue;
        }
        /* 1. the row max, and whether it holds a NaN */
        int has_nan;
        const float m32 = row_max_and_nan(x, p->x_dtype, n, xs, &has_nan);
        if (has_nan || !isfinite(m32)) {
            p->special[r] = 1;
            continue;
        }
        p->special[r] = 0;
        const double m = m32;
        Sums sums;
        if (divide)
            sums = entropy ? forward_sums(x, p->x_dtype, n, xs, m, 1, inverse_temperature, 1)
                           : forward_sums(x, p->x_dtype, n, xs, m, 1, inverse_temperature, 0);
        else
            sums = entropy ? forward_sums(x, p->x_dtype, n, xs, m, 0, 1.0, 1)
                           : forward_sums(x, p->x_dtype, n, xs, m, 0, 1.0, 0);
        /* 3. the row's results: rest leaves one exp(0) = 1 out, so log1p keeps a tiny tail exact */
        const double rest = (sums.ties - 1.0) + sums.below;
        const double log_sum = log1p(rest);
        const double e_mean = entropy ? sums.spread / (rest + 1.0) : 0.0;
        const int64_t t = kept ? p->labels[r] : 0;
        double neg_d_t = m - (double)load(x, p->x_dtype, t * xs);
        if (divide)
            neg_d_t *= inverse_temperature;
        put(lp, wide, r, kept ? -(neg_d_t + log_sum) : 0.0);
        put(h, wide, r, kept && entropy ? log_sum + e_mean : 0.0);
        put(stats, wide, 3 * r, m);
        put(stats, wide, 3 * r + 1, log_sum);
        put(stats, wide, 3 * r + 2, e_mean);
    }
}

/* the backward's entry j: p_j (hg ((-d_j) - E) - g) / T, 0 at a masked entry (p_j = 0, -d_j = inf) */
#define BACKWARD_TERM(value)                                                            \
    double d = (double)(value) - m;                                                     \
    if (scaled)                                                                         \
        d *= inverse_temperature;                                                       \
    double q = exp_nonpositive(d - log_sum);                                            \
    double grad = entropy ? (q > 0.0 ? q * (hg * (-d - e_mean) - g) : 0.0) : q * -g;    \
    if (scaled)                                                                         \
        grad *= inverse_temperature;

/* one row's gradient, read then written in one pass; `scaled` and `entropy` are constants at each call
 * (the function is inlined), so that each loop has only its own arithmetic */
static inline __attribute__((always_inline)) void backward_row(const void *x, int x_dtype, int64_t xs, void *o,
                                                              int out_dtype, int64_t os, int64_t n, double m,
                                                              double log_sum, double e_mean, double g, double hg,
                                                              double inverse_temperature, const int scaled,
                                                              const int entropy) {
    if (xs == 1 && os == 1 && x_dtype == F32 && out_dtype == F32) {
        const float *row = x;
        float *dst = o;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            BACKWARD_TERM(row[j])
            dst[j] = (float)grad;
        }
    } else if (xs == 1 && os == 1 && x_dtype == BF16 && out_dtype == BF16) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            BACKWARD_TERM(load(x, BF16, j))
            store(o, BF16, j, grad);
        }
    } else {
        for (int64_t j = 0; j < n; j++) {
            BACKWARD_TERM(load(x, x_dtype, j * xs))
            store(o, out_dtype, j * os, grad);
        }
    }
}

VECTOR_CLONES
static void backward_rows(const Rows *p, const void *lp, const void *stats, const void *g_in, const void *hg_in,
                          void *out, int out_dtype, int64_t out_row_stride, int64_t out_class_stride,
                          int64_t start, int64_t stop) {
    const int64_t n = p->num_classes, xs = p->x_class_stride, os = out_class_stride;
    const int divide = p->temperature != 1.0;
    const double inverse_temperature = divide ? 1.0 / p->temperature : 1.0;
    const int wide = p->stats_double, entropy = hg_in != NULL;
    for (int64_t r = start; r < stop; r++) {
        char *o = (char *)out + r * out_row_stride * (out_dtype == F32 ? 4 : 2);
        int kept;
        const int label = label_of(p, r, &kept);
        const double m = get(stats, wide, 3 * r), log_sum = get(stats, wide, 3 * r + 1);
        if (label < 0 || (kept && !(isfinite(m) && isfinite(log_sum)))) {
            p->special[r] = 1;
            continue;
        }
        p->special[r] = 0;
        if (!kept) {  /* an ignored row: 0, even over a NaN */
            for (int64_t j = 0; j < n; j++)
                store(o, out_dtype, j * os, 0.0);
            continue;
        }
        const char *x = row_start(p, r);
        const double e_mean = get(stats, wide, 3 * r + 2);
        const double g = get(g_in, wide, r), hg = entropy ? get(hg_in, wide, r) : 0.0;
        const int64_t t = p->labels[r];
        /* 1. the target's entry first (out may be the logits): -g expm1(lp) + hg p_t ((-d_t) - E) */
        double d_t = (double)load(x, p->x_dtype, t * xs) - m;
        if (divide)
            d_t *= inverse_temperature;
        const double p_t = exp_nonpositive(d_t - log_sum);
        double target = -g * expm1(get(lp, wide, r));
        if (entropy && p_t > 0.0)
            target += hg * p_t * (-d_t - e_mean);
        target *= inverse_temperature;
        /* 2. every entry */
        if (divide && entropy)
            backward_row(x, p->x_dtype, xs, o, out_dtype, os, n, m, log_sum, e_mean, g, hg, inverse_temperature, 1, 1);
        else if (divide)
            backward_row(x, p->x_dtype, xs, o, out_dtype, os, n, m, log_sum, e_mean, g, hg, inverse_temperature, 1, 0);
        else if (entropy)
            backward_row(x, p->x_dtype, xs, o, out_dtype, os, n, m, log_sum, e_mean, g, hg, 1.0, 0, 1);
        else
            backward_row(x, p->x_dtype, xs, o, out_dtype, os, n, m, log_sum, e_mean, g, hg, 1.0, 0, 0);
        /* 3. the target's own entry over the loop's */
        store(o, out_dtype, t * os, target);
    }
}

static int parse_rows(Rows *p, unsigned long long x, unsigned long long labels, unsigned long long special,
                      long long start, long long stop) {
    if (start < 0 || stop > p->num_rows || start > stop || p->num_classes <= 0
        || (p->x_dtype != F32 && p->x_dtype != BF16)) {
        PyErr_SetString(PyExc_ValueError, "a bad problem (rows, classes or dtypes out of range)");
        return 0;
    }
    p->x = (const void *)(uintptr_t)x;
    p->labels = (const int64_t *)(uintptr_t)labels;
    p->special = (uint8_t *)(uintptr_t)special;
    return 1;
}

static PyObject *flagged(const Rows *p, long long start, long long stop) {
    long long count = 0;
    for (long long r = start; r < stop; r++)
        count += p->special[r];
    return PyLong_FromLongLong(count);
}

static const char forward_doc[] =
    "forward(x, x_dtype, num_rows, num_classes, x_row_stride, x_class_stride, labels, ignore_index,\n"
    "        temperature, stats_double, entropy, lp, h, stats, special, start, stop) -> int\n\n"
    "Token log-prob rows [start, stop): lp, h (n,) and stats (n, 3), contiguous, float64 if stats_double\n"
    "else float32; pointers are addresses, dtypes 0 = float32, 1 = bfloat16. Returns the number of rows\n"
    "flagged in `special`. Releases the GIL.";

static PyObject *forward(PyObject *self, PyObject *args) {
    (void)self;
    Rows p;
    unsigned long long x, labels, lp, h, stats, special;
    long long start, stop;
    int entropy;
    if (!PyArg_ParseTuple(args, "KiLLLLKLdiiKKKKLL", &x, &p.x_dtype, &p.num_rows, &p.num_classes, &p.x_row_stride,
                          &p.x_class_stride, &labels, &p.ignore_index, &p.temperature, &p.stats_double, &entropy,
                          &lp, &h, &stats, &special, &start, &stop))
        return NULL;
    if (!parse_rows(&p, x, labels, special, start, stop))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    forward_rows(&p, entropy, (void *)(uintptr_t)lp, (void *)(uintptr_t)h, (void *)(uintptr_t)stats, start, stop);
    Py_END_ALLOW_THREADS
    return flagged(&p, start, stop);
}

static const char backward_doc[] =
    "backward(x, x_dtype, num_rows, num_classes, x_row_stride, x_class_stride, labels, ignore_index,\n"
    "         temperature, stats_double, lp, stats, g, hg, out, out_dtype, out_row_stride, out_class_stride,\n"
    "         special, start, stop) -> int\n\n"
    "The gradient of rows [start, stop) into out (which may be x); hg 0: no entropy term. Returns the\n"
    "number of rows flagged in `special`. Releases the GIL.";

static PyObject *backward(PyObject *self, PyObject *args) {
    (void)self;
    Rows p;
    unsigned long long x, labels, lp, stats, g, hg, out, special;
    long long start, stop, out_row_stride, out_class_stride;
    int out_dtype;
    if (!PyArg_ParseTuple(args, "KiLLLLKLdiKKKKKiLLKLL", &x, &p.x_dtype, &p.num_rows, &p.num_classes,
                          &p.x_row_stride, &p.x_class_stride, &labels, &p.ignore_index, &p.temperature,
                          &p.stats_double, &lp, &stats, &g, &hg, &out, &out_dtype, &out_row_stride,
                          &out_class_stride, &special, &start, &stop))
        return NULL;
    if (!parse_rows(&p, x, labels, special, start, stop))
        return NULL;
    if (out_dtype != F32 && out_dtype != BF16) {
        PyErr_SetString(PyExc_ValueError, "a bad problem (the gradient's dtype)");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    backward_rows(&p, (const void *)(uintptr_t)lp, (const void *)(uintptr_t)stats, (const void *)(uintptr_t)g,
                  hg ? (const void *)(uintptr_t)hg : NULL, (void *)(uintptr_t)out, out_dtype, out_row_stride,
                  out_class_stride, start, stop);
    Py_END_ALLOW_THREADS
    return flagged(&p, start, stop);
}

static PyMethodDef methods[] = {
    {"forward", forward, METH_VARARGS, forward_doc},
    {"backward", backward, METH_VARARGS, backward_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cpu_rows",
    "The compiled CPU token log-prob row kernels (see cpu_rows.c); softxent.ops.token_log_probs.torch_cpu calls them.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cpu_rows(void) { return PyModule_Create(&module); }
