/* The cross-entropy row kernel of the PyTorch layer on the CPU, compiled: softxent.ops.cross_entropy._cpu_rows.
 *
 * `torch_cpu.cross_entropy_rows` calls it for the common problem (float32 or bfloat16 logits, class-index
 * targets, no softcap) and keeps its torch-op path for the rest; both compute the same math, that module's
 * docstring gives it. The spec has already resolved the problem: each row arrives with its safe label t,
 * its coefficients a_t (target), u (uniform, times w_j) and A (their total), and its gradient factor s_r
 * (grad_scale * kept / T). This file only computes rows.
 *
 * Each row is read twice and written once, with a scratch row of float64 exps that stays in the core's L2:
 *   1. m = max_j x_j (exact), and whether the row holds a NaN;
 *   2. d_j = (x_j - m) / T in float64 (x_j - m is exact there), e_j = exp(d_j) into the scratch row, the
 *      sum without the target's term, rest = sum_{j != t} e_j, kept as the count of ties at the max plus
 *      the terms below it (and sum_j w_j d_j for label smoothing);
 *   3. the row's loss and log-sum-exp, and the gradient s_r ((A + 2 zl lse) e_j / s - a_j) written once.
 * Rows whose max is not finite or that hold a NaN are left to the caller (a flag per row): the torch-op
 * path gives them their limits (rules 2 and 3 of docs/semantics.md).
 *
 * A K-dimensional input (N, C, d...) comes whole, as N samples of d... rows whose classes are strided and
 * whose rows lie next to each other: those go TILE rows at a time, the same steps vectorized across the
 * rows (`rows_across`; 21 classes along a row would leave the vector units idle).
 *
 * Error bound (rule 11 of the API: 2 ulp for the loss, 4 for the gradient, of float32). `exp_nonpositive`
 * (../cpu_rowmath.h) is within 1e-11 relative of e^d; the float64 sums of C terms add C 2^-53 (below
 * 1.2e-10 up to 2^20 classes). So s, and with it L = log s (or log1p(rest) when the target
 * holds the max: relative, however small), carry a relative error below 2e-10, i.e. 0.003 float32 ulp,
 * and p_j = e_j / s below 4e-10. Rounded once to float32 (0.5 ulp), every loss and gradient entry is
 * within 0.51 ulp; bfloat16 gradients are rounded to float32 first, then once to bfloat16, as the torch
 * path's float32 work rounds them (rule 11: computed exactly in float32, then rounded once).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>

#include "../cpu_rowmath.h"

typedef struct {
    const void *x;
    int x_dtype;
    int64_t num_rows, num_classes, x_row_stride, x_class_stride;
    /* rows come in samples of rows_per_sample (a K-dimensional input's (N, C, d...) is N samples of
     * d... rows); row r is sample r / rows_per_sample, row r % rows_per_sample within it */
    int64_t rows_per_sample, x_sample_stride, grad_sample_stride;
    const int64_t *labels;     /* safe labels: in [0, C) */
    const uint8_t *kept;       /* bool: the label is not ignore_index */
    const double *target_coef, *uniform_coef, *total_coef, *row_scale;  /* a_t, u, A, s_r */
    int64_t coef_stride;       /* of kept, a_t, u, A and s_r: 1 (a value per row) or 0 (one for all rows) */
    const double *weight;      /* (C,) or NULL */
    double weight_sum, z_loss, temperature;
    int smoothing;
    void *grad;                /* NULL: no gradient */
    int grad_dtype;
    int64_t grad_row_stride, grad_class_stride;
    float *losses, *lse;       /* out, per row; either may be NULL (the lean entry's "mean" and "sum") */
    uint8_t *special;          /* out: 1 where the row is the caller's (max not finite, or a NaN) */
} Problem;

static inline int64_t row_offset(const Problem *p, int64_t r, int64_t sample_stride, int64_t row_stride) {
    return (r / p->rows_per_sample) * sample_stride + (r % p->rows_per_sample) * row_stride;
}

static inline const char *x_row(const Problem *p, int64_t r) {
    return (const char *)p->x + row_offset(p, r, p->x_sample_stride, p->x_row_stride) * (p->x_dtype == F32 ? 4 : 2);
}

static inline char *grad_row(const Problem *p, int64_t r) {
    return (char *)p->grad + row_offset(p, r, p->grad_sample_stride, p->grad_row_stride) * (p->grad_dtype == F32 ? 4 : 2);
}

/* 2. e_j = exp((x_j - m) / T) for j in [lo, hi) into scratch, summed in two parts: the terms below the
 * max (d_j < 0) and the count of ties at it (e_j = 1), so that log(sum e) = log1p(ties - 1 + below) keeps
 * a tiny sum exact even when the max is not the target's */
#define EXP_TERM(value)                        \
    {                                          \
        double d = (double)(value) - m;        \
        if (scaled)                            \
            d *= inverse_temperature;          \
        double e = exp_nonpositive(d);         \
        if (store)                             \
            scratch[j] = e;                    \
        below += d < 0.0 ? e : 0.0;            \
        ties += d == 0.0 ? 1.0 : 0.0;          \
    }

typedef struct {
    double below, ties;
} Sums;

/* `scaled` and `store` are constants at each call (the function is inlined), so that the loop without a
 * temperature has no multiply and no blend (with one, d (x - m) / T is d times 1/T, a float64 rounding
 * (1e-16) apart), and the forward alone writes no scratch (the exps are then only summed) */
static inline __attribute__((always_inline)) Sums exps(const void *x, int dtype, int64_t lo, int64_t hi, int64_t stride,
                                                      double m, const int scaled, double inverse_temperature,
                                                      double *scratch, const int store) {
    double below = 0.0, ties = 0.0;
    if (stride == 1 && dtype == F32) {
        const float *row = x;
#pragma omp simd reduction(+ : below, ties)
        for (int64_t j = lo; j < hi; j++)
            EXP_TERM(row[j])
    } else if (stride == 1) {
#pragma omp simd reduction(+ : below, ties)
        for (int64_t j = lo; j < hi; j++)
            EXP_TERM(load(x, BF16, j))
    } else {
        for (int64_t j = lo; j < hi; j++)
            EXP_TERM(load(x, dtype, j * stride))
    }
    return (Sums){below, ties};
}

/* sum_j w_j d_j (w = 1 without class weights); a class of weight 0 adds 0 even at d_j = -inf (rule 4) */
static double weighted_shift_sum(const void *x, int dtype, int64_t n, int64_t stride, double m, double temperature,
                                 const double *weight) {
    double sum = 0.0;
    for (int64_t j = 0; j < n; j++) {
        double d = ((double)load(x, dtype, j * stride) - m) / temperature;
        if (weight == NULL)
            sum += d;
        else if (weight[j] != 0.0)
            sum += weight[j] * d;
    }
    return sum;
}

/* What one row's gradient needs once its sums are known: s_r ((A + 2 zl lse) e_j / s - a_j) is
 * scale e_j - smooth w_j off the target, and `value` on it. */
typedef struct {
    double scale, smooth, value;
    double loss;  /* the row's loss, unrounded: the lean entry sums them */
} RowGradient;

/* L = log sum_j e_j from the sums below the max and the ties at it (the target's own term left out):
 * log1p keeps a tiny sum exact */
static inline __attribute__((always_inline)) double log_sum_of(double below, double ties, double target_d,
                                                              double target_e) {
    return log1p_nonnegative(target_d == 0.0 ? ties + below : (ties - 1.0) + below + target_e);
}

/* 3. the row's loss and log-sum-exp (into losses and lse) from m, its sums below the max and ties at it
 * (the target's own term left out), d_t and e_t, L, and sum_j w_j d_j (label smoothing only) */
static inline __attribute__((always_inline)) RowGradient finish_row(const Problem *p, int64_t r, double m,
                                                                   double below, double ties, double target_d,
                                                                   double target_e, double log_sum,
                                                                   double shift_sum) {
    const double rest = ties + below;  /* sum_{j != t} e_j */
    /* a sum of terms >= 0 (d <= 0 <= L): nothing cancels */
    const double shift = p->temperature != 1.0 ? m / p->temperature : m;
    const double row_lse = shift + log_sum;
    const int64_t c = r * p->coef_stride;
    const double a_t = p->target_coef[c], u = p->uniform_coef[c];
    const int kept = p->kept[c];
    double loss = a_t > 0.0 ? a_t * (log_sum - target_d) : 0.0;
    if (p->smoothing && kept)
        loss += u * (p->weight_sum * log_sum - shift_sum);
    if (p->z_loss != 0.0 && kept)
        loss += p->z_loss * row_lse * row_lse;
    if (p->losses != NULL)
        p->losses[r] = (float)loss;
    if (p->lse != NULL)
        p->lse[r] = (float)row_lse;
    RowGradient out = {0.0, 0.0, 0.0, loss};
    if (p->grad == NULL)
        return out;
    /* the target's entry as s_r ((A - a_t + 2 zl lse) e_t - a_t rest) / s, never 1 - p_t */
    const double total_sum = rest + target_e;
    const double q = p->row_scale[c] / total_sum;
    double factor = p->total_coef[c];
    if (p->z_loss != 0.0)
        factor += 2.0 * p->z_loss * row_lse;
    out.scale = q * factor;
    out.smooth = p->smoothing ? q * total_sum * u : 0.0; /* s_r u, times w_j */
    double value = (p->z_loss != 0.0 || p->smoothing) ? (factor - a_t) * target_e - a_t * rest : -(a_t * rest);
    value *= q;
    if (p->smoothing)
        value -= out.smooth * (p->weight == NULL ? 1.0 : p->weight[p->labels[r]]);
    out.value = value;
    return out;
}

/* Rows one at a time, their classes contiguous (vectorized along the row) or strided; the sum of their
 * losses (special rows left out). */
static inline __attribute__((always_inline)) double rows_along(const Problem *p, int64_t start, int64_t stop,
                                                              double *scratch) {
    const int64_t n = p->num_classes, xs = p->x_class_stride;
    const int divide = p->temperature != 1.0;
    double loss_sum = 0.0;
    for (int64_t r = start; r < stop; r++) {
        const char *x = x_row(p, r);
        int has_nan;
        float m32 = row_max_and_nan(x, p->x_dtype, n, xs, &has_nan);  /* 1. */
        if (has_nan || !isfinite(m32)) {
            p->special[r] = 1;
            continue;
        }
        p->special[r] = 0;
        const double m = m32;
        const int64_t t = p->labels[r];

        /* 2. the exps in one loop over the row (two, split at the target, left long scalar remainders at
         * a hundred classes); then the target's own term out of its part: at the max it is one of the
         * ties (an exact count), below it the rest holds the max's 1, so rest = sum_{j != t} e_j never
         * loses a tiny sum to 1 and the subtraction costs at most an ulp of rest */
        const int keep = p->grad != NULL;  /* the exps, kept in scratch for the gradient */
        Sums all = divide ? (keep ? exps(x, p->x_dtype, 0, n, xs, m, 1, 1.0 / p->temperature, scratch, 1)
                                  : exps(x, p->x_dtype, 0, n, xs, m, 1, 1.0 / p->temperature, scratch, 0))
                          : (keep ? exps(x, p->x_dtype, 0, n, xs, m, 0, 1.0, scratch, 1)
                                  : exps(x, p->x_dtype, 0, n, xs, m, 0, 1.0, scratch, 0));
        double target_d = (double)load(x, p->x_dtype, t * xs) - m;
        if (divide)
            target_d *= 1.0 / p->temperature;  /* as the loop scales it */
        /* the loop's own value (the same d, the same exp): the subtraction below leaves no residue */
        const double target_e = keep ? scratch[t] : exp_nonpositive(target_d);
        const double shift_sum =
            p->smoothing ? weighted_shift_sum(x, p->x_dtype, n, xs, m, p->temperature, p->weight) : 0.0;

        /* 3. the loss, and the gradient written once */
        const double below = target_d < 0.0 ? all.below - target_e : all.below;
        const double ties = target_d < 0.0 ? all.ties : all.ties - 1.0;
        RowGradient rg = finish_row(p, r, m, below, ties, target_d, target_e,
                                    log_sum_of(below, ties, target_d, target_e), shift_sum);
        loss_sum += rg.loss;
        if (p->grad == NULL)
            continue;
        char *g = grad_row(p, r);
        const int64_t gs = p->grad_class_stride;
        const double scale = rg.scale;
        if (gs == 1 && p->grad_dtype == F32 && !p->smoothing) {
            float *row = (float *)g;
#pragma omp simd
            for (int64_t j = 0; j < n; j++)
                row[j] = (float)(scale * scratch[j]);
        } else if (gs == 1 && p->grad_dtype == BF16 && !p->smoothing) {
#pragma omp simd
            for (int64_t j = 0; j < n; j++)
                store(g, BF16, j, scale * scratch[j]);
        } else {
            for (int64_t j = 0; j < n; j++) {
                double w = p->weight == NULL ? 1.0 : p->weight[j];
                store(g, p->grad_dtype, j * gs, scale * scratch[j] - rg.smooth * w);
            }
        }
        store(g, p->grad_dtype, t * gs, rg.value);
    }
    return loss_sum;
}

/* Rows TILE at a time, vectorized across the rows: the same three steps. Either a K-dimensional input's
 * rows, whose classes are strided and which lie next to each other (class j of rows r.. r + TILE is
 * contiguous), or (`strided`) short rows of (N, C) logits, read across with the row stride: along such a
 * row the vector loops would be all remainder, at a hundred nanoseconds a row of 10. */
enum { TILE = 16 };

/* `dtype`, `smoothing` and `strided` are constants at each call (the function is inlined): loops without
 * branches, and the K-dimensional one's row stride a constant 1 */
static inline __attribute__((always_inline)) double rows_across(const Problem *p, int64_t start, int64_t stop,
                                                               double *scratch, const int dtype, const int smoothing,
                                                               const int strided) {
    const int64_t n = p->num_classes, xs = p->x_class_stride, gs = p->grad_class_stride;
    const int64_t rs = strided ? p->x_row_stride : 1, grs = strided ? p->grad_row_stride : 1;
    const double inverse_temperature = 1.0 / p->temperature;
    double loss_sum = 0.0;
    for (int64_t r0 = start; r0 < stop;) {
        /* a tile never crosses a sample: its rows are one stride-1 run */
        const int64_t in_sample = p->rows_per_sample - r0 % p->rows_per_sample;
        const int count = (int)(stop - r0 < TILE ? (stop - r0 < in_sample ? stop - r0 : in_sample)
                                                 : (TILE < in_sample ? TILE : in_sample));
        const char *x = x_row(p, r0);
        const int size = dtype == F32 ? 4 : 2;
        float m[TILE], nan[TILE];  /* nan: 1 where the row holds a NaN (a float, so the loop vectorizes) */
        for (int r = 0; r < TILE; r++) {
            m[r] = -INFINITY;
            nan[r] = 0.0f;
        }
        /* 1. the maxima, class by class */
#define MAX_TERM                                   \
    {                                              \
        float v = load(column, dtype, r * rs);     \
        m[r] = v > m[r] ? v : m[r];                \
        nan[r] = v != v ? 1.0f : nan[r];           \
    }
        for (int64_t j = 0; j < n; j++) {
            const char *column = x + j * xs * size;
            if (count == TILE) {  /* a fixed trip count: gcc vectorizes this one */
#pragma omp simd
                for (int r = 0; r < TILE; r++)
                    MAX_TERM
            } else {
                for (int r = 0; r < count; r++)
                    MAX_TERM
            }
        }
        int special = 0;
        for (int r = 0; r < count; r++)
            special |= nan[r] != 0.0f || !isfinite(m[r]);
        if (special) {  /* the caller's rows among them: the row-at-a-time path flags them, writes the rest */
            loss_sum += rows_along(p, r0, r0 + count, scratch);
            r0 += count;
            continue;
        }
        /* 2. the exps into scratch (class-major), their sums without each row's target */
        double below[TILE] = {0}, ties[TILE] = {0}, shift_sum[TILE] = {0};
        int64_t labels[TILE];
        for (int r = 0; r < count; r++)
            labels[r] = p->labels[r0 + r];
        for (int64_t j = 0; j < n; j++) {
            const char *column = x + j * xs * size;
            const double w = p->weight == NULL ? 1.0 : p->weight[j];
#pragma omp simd
            for (int r = 0; r < count; r++) {
                double d = ((double)load(column, dtype, r * rs) - (double)m[r]) * inverse_temperature;
                double e = exp_nonpositive(d);
                scratch[j * TILE + r] = e;
                int other = j != labels[r];
                below[r] += other && d < 0.0 ? e : 0.0;
                ties[r] += other && d == 0.0 ? 1.0 : 0.0;
                if (smoothing)  /* a class of weight 0 adds 0 even at d = -inf (rule 4) */
                    shift_sum[r] += w != 0.0 ? w * d : 0.0;
            }
        }
        /* 3. per row: the loss, and what its gradient needs */
        double target_d[TILE], target_e[TILE], log_sum[TILE];
        for (int r = 0; r < count; r++)
            target_d[r] = ((double)load(x + labels[r] * xs * size, dtype, r * rs) - (double)m[r]) / p->temperature;
#pragma omp simd
        for (int r = 0; r < count; r++) {  /* vectorized too: at 21 classes a row's own work is a third */
            target_e[r] = exp_nonpositive(target_d[r]);
            log_sum[r] = log_sum_of(below[r], ties[r], target_d[r], target_e[r]);
        }
        RowGradient rg[TILE];
        for (int r = 0; r < count; r++) {
            scratch[labels[r] * TILE + r] = target_e[r];
            p->special[r0 + r] = 0;
            rg[r] = finish_row(p, r0 + r, m[r], below[r], ties[r], target_d[r], target_e[r], log_sum[r],
                               shift_sum[r]);
            loss_sum += rg[r].loss;
        }
        if (p->grad != NULL) {
            char *g = grad_row(p, r0);
            double scale[TILE], smooth[TILE], value[TILE];
            for (int r = 0; r < count; r++) {
                scale[r] = rg[r].scale;
                smooth[r] = rg[r].smooth;
                value[r] = rg[r].value;
            }
            for (int64_t j = 0; j < n; j++) {
                char *column = g + j * gs * (p->grad_dtype == F32 ? 4 : 2);
                const double w = p->weight == NULL ? 1.0 : p->weight[j];
#pragma omp simd
                for (int r = 0; r < count; r++) {
                    double out = j == labels[r] ? value[r] : scale[r] * scratch[j * TILE + r] - smooth[r] * w;
                    store(column, p->grad_dtype, r * grs, out);
                }
            }
        }
        r0 += count;
    }
    return loss_sum;
}

/* Rows of at most this many classes, each contiguous, go across rows too (`rows_across`, strided) */
enum { ACROSS_MAX_CLASSES = 64 };

/* 0: along each row; 1: across rows next to each other (a K-dimensional input's: classes strided, rows
 * next to each other, the gradient alike); 2: across short contiguous rows (strided) */
static int goes_across(const Problem *p) {
    if (p->x_class_stride != 1 && p->x_row_stride == 1 && (p->grad == NULL || p->grad_row_stride == 1))
        return 1;
    if (p->num_classes <= ACROSS_MAX_CLASSES && p->x_class_stride == 1 && (p->grad == NULL || p->grad_class_stride == 1))
        return 2;
    return 0;
}

/* rows [start, stop); the sum of their losses, unrounded (special rows left out) */
VECTOR_CLONES
static double cross_entropy_rows(const Problem *p, int64_t start, int64_t stop, double *scratch) {
    const int across = goes_across(p);
    if (across == 1) {
        if (p->x_dtype == F32)
            return p->smoothing ? rows_across(p, start, stop, scratch, F32, 1, 0)
                                : rows_across(p, start, stop, scratch, F32, 0, 0);
        return p->smoothing ? rows_across(p, start, stop, scratch, BF16, 1, 0)
                            : rows_across(p, start, stop, scratch, BF16, 0, 0);
    }
    if (across == 2) {
        if (p->x_dtype == F32)
            return p->smoothing ? rows_across(p, start, stop, scratch, F32, 1, 1)
                                : rows_across(p, start, stop, scratch, F32, 0, 1);
        return p->smoothing ? rows_across(p, start, stop, scratch, BF16, 1, 1)
                            : rows_across(p, start, stop, scratch, BF16, 0, 1);
    }
    return rows_along(p, start, stop, scratch);
}

static const char rows_doc[] =
    "rows(x, x_dtype, num_rows, num_classes, x_row_stride, x_class_stride, rows_per_sample, x_sample_stride,\n"
    "     grad_sample_stride, labels, kept, target_coef,\n"
    "     uniform_coef, total_coef, row_scale, coef_stride, weight, weight_sum, z_loss, temperature, smoothing,\n"
    "     grad, grad_dtype, grad_row_stride, grad_class_stride, losses, lse, special, start, stop) -> int\n\n"
    "Cross-entropy rows [start, stop) of a resolved problem; pointers are addresses (0 for none),\n"
    "dtypes 0 = float32, 1 = bfloat16. Returns the number of rows flagged in `special`. Releases the GIL.";

static PyObject *rows(PyObject *self, PyObject *args) {
    (void)self;
    Problem p;
    unsigned long long x, labels, kept, target_coef, uniform_coef, total_coef, row_scale, weight, grad, losses,
        lse, special;
    long long start, stop;
    if (!PyArg_ParseTuple(args, "KiLLLLLLLKKKKKKLKdddiKiLLKKKLL", &x, &p.x_dtype, &p.num_rows, &p.num_classes,
                          &p.x_row_stride, &p.x_class_stride, &p.rows_per_sample, &p.x_sample_stride,
                          &p.grad_sample_stride, &labels, &kept, &target_coef, &uniform_coef,
                          &total_coef, &row_scale, &p.coef_stride, &weight, &p.weight_sum, &p.z_loss, &p.temperature,
                          &p.smoothing, &grad, &p.grad_dtype, &p.grad_row_stride, &p.grad_class_stride,
                          &losses, &lse, &special, &start, &stop))
        return NULL;
    if (start < 0 || stop > p.num_rows || start > stop || p.num_classes <= 0 || p.rows_per_sample <= 0 || (p.coef_stride != 0 && p.coef_stride != 1)
        || (p.x_dtype != F32 && p.x_dtype != BF16) || (grad && p.grad_dtype != F32 && p.grad_dtype != BF16)) {
        PyErr_SetString(PyExc_ValueError, "rows: a bad problem (rows, classes or dtypes out of range)");
        return NULL;
    }
    p.x = (const void *)(uintptr_t)x;
    p.labels = (const int64_t *)(uintptr_t)labels;
    p.kept = (const uint8_t *)(uintptr_t)kept;
    p.target_coef = (const double *)(uintptr_t)target_coef;
    p.uniform_coef = (const double *)(uintptr_t)uniform_coef;
    p.total_coef = (const double *)(uintptr_t)total_coef;
    p.row_scale = (const double *)(uintptr_t)row_scale;
    p.weight = (const double *)(uintptr_t)weight;
    p.grad = (void *)(uintptr_t)grad;
    p.losses = (float *)(uintptr_t)losses;
    p.lse = (float *)(uintptr_t)lse;
    p.special = (uint8_t *)(uintptr_t)special;
    /* a row of exps, or a tile's */
    double *scratch = malloc((size_t)p.num_classes * (goes_across(&p) ? TILE : 1) * sizeof(double));
    if (scratch == NULL)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    cross_entropy_rows(&p, start, stop, scratch);
    Py_END_ALLOW_THREADS
    free(scratch);
    long long flagged = 0;
    for (long long r = start; r < stop; r++)
        flagged += p.special[r];
    return PyLong_FromLongLong(flagged);
}

static const char lean_doc[] =
    "lean(x, x_dtype, num_rows, num_classes, x_row_stride, x_class_stride, rows_per_sample, x_sample_stride,\n"
    "     labels, ignore_index, target_coef, uniform_coef, total_coef, z_loss, temperature, smoothing,\n"
    "     row_scale, grad, grad_sample_stride, grad_row_stride, grad_class_stride, losses, lse, start, stop)\n"
    "     -> float or None\n\n"
    "Rows [start, stop) of the lean problem: raw labels (int64), every row with the same coefficients a_t,\n"
    "u, A and gradient factor s_r (row_scale), no class weights, the gradient in x's dtype (grad 0: none),\n"
    "losses and lse per row only where their addresses are given. Returns the sum of the rows' losses,\n"
    "unrounded, or None, having written nothing, when a label is outside [0, C) or equal to ignore_index,\n"
    "and, having written part, when a row's max is not finite or it holds a NaN: the caller's general path\n"
    "decides those calls. Releases the GIL.";

/* The lean problem (`torch_cpu.lean_rows`): what a training step's common call needs, checks included,
 * with no per-row coefficient arrays and no per-row outputs unless asked for. */
static PyObject *lean(PyObject *self, PyObject *args) {
    (void)self;
    Problem p;
    unsigned long long x, labels, grad, losses, lse;
    long long ignore_index, start, stop;
    double target_coef, uniform_coef, total_coef, row_scale;
    if (!PyArg_ParseTuple(args, "KiLLLLLLKLdddddidKLLLKKLL", &x, &p.x_dtype, &p.num_rows, &p.num_classes,
                          &p.x_row_stride, &p.x_class_stride, &p.rows_per_sample, &p.x_sample_stride, &labels,
                          &ignore_index, &target_coef, &uniform_coef, &total_coef, &p.z_loss, &p.temperature,
                          &p.smoothing, &row_scale, &grad, &p.grad_sample_stride, &p.grad_row_stride,
                          &p.grad_class_stride, &losses, &lse, &start, &stop))
        return NULL;
    if (start < 0 || stop > p.num_rows || start > stop || p.num_classes <= 0 || p.rows_per_sample <= 0
        || (p.x_dtype != F32 && p.x_dtype != BF16)) {
        PyErr_SetString(PyExc_ValueError, "lean: a bad problem (rows, classes or dtype out of range)");
        return NULL;
    }
    p.labels = (const int64_t *)(uintptr_t)labels;
    for (long long r = start; r < stop; r++) {  /* the values check: a label the lean problem cannot hold */
        const int64_t t = p.labels[r];
        if (t < 0 || t >= p.num_classes || t == ignore_index)
            Py_RETURN_NONE;
    }
    const uint8_t kept = 1;
    p.x = (const void *)(uintptr_t)x;
    p.kept = &kept;
    p.target_coef = &target_coef;
    p.uniform_coef = &uniform_coef;
    p.total_coef = &total_coef;
    p.row_scale = &row_scale;
    p.coef_stride = 0;
    p.weight = NULL;
    p.weight_sum = (double)p.num_classes;
    p.grad = (void *)(uintptr_t)grad;
    p.grad_dtype = p.x_dtype;
    p.losses = (float *)(uintptr_t)losses;
    p.lse = (float *)(uintptr_t)lse;
    double *scratch = malloc((size_t)p.num_classes * (goes_across(&p) ? TILE : 1) * sizeof(double));
    uint8_t *special = malloc((size_t)(stop - start) + 1);
    if (scratch == NULL || special == NULL) {
        free(scratch);
        free(special);
        return PyErr_NoMemory();
    }
    p.special = special - start;  /* indexed by row */
    double loss_sum;
    Py_BEGIN_ALLOW_THREADS
    loss_sum = cross_entropy_rows(&p, start, stop, scratch);
    Py_END_ALLOW_THREADS
    free(scratch);
    int flagged = 0;
    for (long long r = 0; r < stop - start; r++)
        flagged |= special[r];
    free(special);
    if (flagged)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(loss_sum);
}

static PyMethodDef methods[] = {
    {"rows", rows, METH_VARARGS, rows_doc},
    {"lean", lean, METH_VARARGS, lean_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cpu_rows",
    "The compiled CPU cross-entropy row kernel (see cpu_rows.c); softxent.ops.cross_entropy.torch_cpu calls it.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cpu_rows(void) { return PyModule_Create(&module); }
