/* The distillation row kernel of the PyTorch layer on the CPU, compiled: softxent.ops.distillation._cpu_rows.
 *
 * `torch_cpu.distill_rows` calls it for float32 or bfloat16 logits on the CPU (student and teacher each
 * either) and keeps its torch-op path for the rest; both compute the same math, that module's docstring
 * gives it. Per row, for the student s and the teacher t, with T the temperature:
 *
 *   d_j = (x_j - max x) / T <= 0,  L = log1p(rest) (rest: sum_j exp(d_j) less one exp(0) = 1),
 *   log q = d^s - L^s, q = exp(d^s) / (1 + rest^s), and log p, p from the teacher alike; 0 log 0 = 0:
 *   "kl":          D = sum_j p_j (log p_j - log q_j),        dD/du_j = q_j - p_j
 *   "reverse_kl":  D = sum_j q_j (log q_j - log p_j),        dD/du_j = q_j ((log q_j - log p_j) - D)
 *   "jsd":         log m_j = log(beta p_j + (1 - beta) q_j) (from log p_j, log q_j), a_j = (1 - beta)(log q_j - log m_j),
 *                  D = beta sum_j p_j (log p_j - log m_j) + sum_j q_j a_j,  dD/du_j = q_j (a_j - sum_k q_k a_k)
 *
 * with u = s / T; the loss is T^2 D and the gradient row_scale T dD/du (d/ds = dD/du / T, times T^2).
 * Each row is read three times (1. both maxes, 2. both sums, 3. the divergence's terms; "kl" writes its
 * gradient in pass 3, the others keep q_j and their factor a_j in a float64 scratch row pair and write in
 * 4.), so the gradient may be written over the student (out = s: pass 3 reads an entry before it writes it).
 *
 * Rows left to the caller (a flag per row; the torch-op path gives them their limits): a NaN in either
 * row, or a +inf. Rows not kept, or with a fully masked student or teacher row, are 0 here (loss and
 * gradient), as on the torch-op path.
 *
 * Error bound. Every quantity is worked in float64 from exact float64 copies of the logits: x_j - max x
 * is exact and d_j one rounding from it; `exp_nonpositive` is within 1e-11 relative and each float64 sum
 * of V terms >= 0 adds V 2^-53 (1.2e-10 up to 2^20 classes). So L, and with it log p_j = d_j - L and
 * log q_j, carry absolute errors below 2e-10 + |d_j| 2^-52, and p_j, q_j relative errors below 3e-10.
 * The divergence is a sum of terms of either sign: its error is below 1e-9 times the size of its terms,
 * sum_j p_j (|log p_j - log q_j| + 1), and each gradient entry's below 1e-9 times its terms' (p_j + q_j,
 * or q_j (|log q_j - log p_j| + |D| + 1)): 0.02 float32 ulp where the terms do not cancel (the torch-op
 * path's float32 work is a few ulp off there). Rounded once to float32, within 0.52 ulp of the exact
 * result wherever the terms do not cancel; bfloat16 gradients are rounded to float32, then once to
 * bfloat16.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>

#include "../cpu_rowmath.h"

enum { KL = 0, REVERSE_KL = 1, JSD = 2 };

typedef struct {
    const void *s, *t;
    int s_dtype, t_dtype;
    int64_t num_rows, num_classes, s_row_stride, s_class_stride, t_row_stride, t_class_stride;
    const uint8_t *kept;       /* bool per row */
    int divergence;
    double beta, temperature;
    const double *row_scale;   /* NULL: no gradient */
    int64_t scale_stride;      /* 0 (one for all rows) or 1 */
    void *grad;
    int grad_dtype;
    int64_t grad_row_stride, grad_class_stride;
    float *losses;
    uint8_t *special;          /* out: 1 where the row is the caller's */
} Problem;

/* a row's shift and log-sum: d_j = (x_j - m) / T, L = log1p(rest); 1 / (1 + rest) for the probabilities */
typedef struct {
    double m, log_sum, inverse_sum;
} Softmax;

/* 2. e_j = exp(d_j) summed in two parts: the terms below the max and the count of ties at it, so that
 * log(sum e) = log1p(ties - 1 + below) keeps a tiny tail exact */
static inline __attribute__((always_inline)) Softmax softmax_of(const void *x, int dtype, int64_t n, int64_t stride,
                                                               double m, double inverse_temperature) {
    double below = 0.0, ties = 0.0;
#define SUM_TERM(value)                                         \
    {                                                           \
        double d = ((double)(value) - m) * inverse_temperature; \
        double e = exp_nonpositive(d);                          \
        below += d < 0.0 ? e : 0.0;                             \
        ties += d == 0.0 ? 1.0 : 0.0;                           \
    }
    if (stride == 1 && dtype == F32) {
        const float *row = x;
#pragma omp simd reduction(+ : below, ties)
        for (int64_t j = 0; j < n; j++)
            SUM_TERM(row[j])
    } else if (stride == 1) {
#pragma omp simd reduction(+ : below, ties)
        for (int64_t j = 0; j < n; j++)
            SUM_TERM(load(x, BF16, j))
    } else {
        for (int64_t j = 0; j < n; j++)
            SUM_TERM(load(x, dtype, j * stride))
    }
#undef SUM_TERM
    const double rest = (ties - 1.0) + below;
    return (Softmax){m, log1p(rest), 1.0 / (rest + 1.0)};
}

/* log q_j and q_j (or log p_j and p_j) of entry value: q_j from the same exp as its sum's term */
#define LOG_AND_PROB(value, sm, log_out, prob_out)                     \
    double log_out, prob_out;                                          \
    {                                                                  \
        double d = ((double)(value) - sm.m) * inverse_temperature;     \
        log_out = d - sm.log_sum;                                      \
        prob_out = exp_nonpositive(d) * sm.inverse_sum;                \
    }

/* log m_j = log(beta p_j + (1 - beta) q_j) from the log-probabilities (logaddexp, libm's exp and log1p:
 * within a few float64 ulp of |log m_j|). Not the log of the mixture of p_j and q_j: their 1e-11 relative
 * error (exp_nonpositive's) would put 1e-11 into log m_j - log p_j, and D = 0 for beta at 0 or 1 (or
 * equal models) would come out 1e-13, not 0 */
static inline double log_mixture(double lp, double lq, double log_beta, double log_other) {
    const double a = lp + log_beta, b = lq + log_other;
    const double high = a > b ? a : b, low = a > b ? b : a;
    if (high == -INFINITY)
        return -INFINITY;
    return high + log1p(exp(low - high));
}

/* 3. (and 4.) one row's divergence; its gradient (times factor = row_scale T) into g when g is not NULL.
 * sd, td, unit: constants at each call (the function is inlined), so that the common layouts vectorize */
static inline __attribute__((always_inline)) double divergence_row(
    const Problem *p, const char *s, const char *t, char *g, Softmax sq, Softmax sp, double factor,
    double *q_scratch, double *a_scratch, const int sd, const int td, const int gd, const int unit) {
    const int64_t n = p->num_classes;
    const int64_t ss = unit ? 1 : p->s_class_stride, ts = unit ? 1 : p->t_class_stride;
    const int64_t gs = unit ? 1 : p->grad_class_stride;
    const double inverse_temperature = 1.0 / p->temperature;
    double loss = 0.0;
    if (p->divergence == KL) {
        if (g != NULL) {
#pragma omp simd reduction(+ : loss)
            for (int64_t j = 0; j < n; j++) {
                LOG_AND_PROB(load(s, sd, j * ss), sq, lq, q)
                LOG_AND_PROB(load(t, td, j * ts), sp, lp, pj)
                loss += pj > 0.0 ? pj * (lp - lq) : 0.0;
                store(g, gd, j * gs, (q - pj) * factor);
            }
        } else {
#pragma omp simd reduction(+ : loss)
            for (int64_t j = 0; j < n; j++) {
                LOG_AND_PROB(load(s, sd, j * ss), sq, lq, q)
                LOG_AND_PROB(load(t, td, j * ts), sp, lp, pj)
                (void)q;
                loss += pj > 0.0 ? pj * (lp - lq) : 0.0;
            }
        }
        return loss;
    }
    double centre;  /* the gradient is q_j (a_j - centre) */
    if (p->divergence == REVERSE_KL) {
#pragma omp simd reduction(+ : loss)
        for (int64_t j = 0; j < n; j++) {
            LOG_AND_PROB(load(s, sd, j * ss), sq, lq, q)
            LOG_AND_PROB(load(t, td, j * ts), sp, lp, pj)
            (void)pj;
            double ratio = q > 0.0 ? lq - lp : 0.0;
            loss += q * ratio;
            q_scratch[j] = q;
            a_scratch[j] = ratio;
        }
        centre = loss;
    } else {
        const double beta = p->beta;
        const double log_beta = beta > 0.0 ? log(beta) : -INFINITY;
        const double log_other = beta < 1.0 ? log1p(-beta) : -INFINITY;
        double to_p = 0.0, qa = 0.0;
        for (int64_t j = 0; j < n; j++) {  /* libm's exp and log1p per entry: scalar */
            LOG_AND_PROB(load(s, sd, j * ss), sq, lq, q)
            LOG_AND_PROB(load(t, td, j * ts), sp, lp, pj)
            const double lm = log_mixture(lp, lq, log_beta, log_other);
            to_p += pj > 0.0 ? pj * (lp - lm) : 0.0;
            const double a = q > 0.0 ? (lq - lm) * (1.0 - beta) : 0.0;
            qa += q * a;
            q_scratch[j] = q;
            a_scratch[j] = a;
        }
        loss = beta * to_p + (beta < 1.0 ? qa : 0.0);
        centre = qa;
    }
    if (g != NULL) {
        /* 4. the gradient from the scratch rows */
#pragma omp simd
        for (int64_t j = 0; j < n; j++)
            store(g, gd, j * gs, q_scratch[j] * (a_scratch[j] - centre) * factor);
    }
    return loss;
}

static inline __attribute__((always_inline)) const char *row_of(const void *base, int dtype, int64_t r,
                                                               int64_t stride) {
    return (const char *)base + r * stride * (dtype == F32 ? 4 : 2);
}

VECTOR_CLONES
static void distill_rows(const Problem *p, int64_t start, int64_t stop, double *q_scratch, double *a_scratch) {
    const int64_t n = p->num_classes;
    const double inverse_temperature = 1.0 / p->temperature;
    const int unit = p->s_class_stride == 1 && p->t_class_stride == 1
                     && (p->grad == NULL || p->grad_class_stride == 1);
    for (int64_t r = start; r < stop; r++) {
        const char *s = row_of(p->s, p->s_dtype, r, p->s_row_stride);
        const char *t = row_of(p->t, p->t_dtype, r, p->t_row_stride);
        char *g = p->grad == NULL ? NULL : (char *)row_of(p->grad, p->grad_dtype, r, p->grad_row_stride);
        p->special[r] = 0;
        int live = p->kept[r];
        if (live) {
            /* 1. both maxes, and whether either row holds a NaN */
            int nan_s, nan_t;
            const float ms = row_max_and_nan(s, p->s_dtype, n, p->s_class_stride, &nan_s);
            const float mt = row_max_and_nan(t, p->t_dtype, n, p->t_class_stride, &nan_t);
            if (nan_s || nan_t || ms == INFINITY || mt == INFINITY) {
                p->special[r] = 1;
                continue;
            }
            live = ms != -INFINITY && mt != -INFINITY;  /* a fully masked row counts 0 */
            if (live) {
                /* 2. both softmaxes' sums */
                const Softmax sq = softmax_of(s, p->s_dtype, n, p->s_class_stride, ms, inverse_temperature);
                const Softmax sp = softmax_of(t, p->t_dtype, n, p->t_class_stride, mt, inverse_temperature);
                const double factor = g == NULL ? 0.0 : p->row_scale[r * p->scale_stride] * p->temperature;
                /* 3. the divergence (and the gradient) */
                double loss;
                if (unit && p->s_dtype == F32 && p->t_dtype == F32 && p->grad_dtype == F32)
                    loss = divergence_row(p, s, t, g, sq, sp, factor, q_scratch, a_scratch, F32, F32, F32, 1);
                else if (unit && p->s_dtype == BF16 && p->t_dtype == BF16 && p->grad_dtype == BF16)
                    loss = divergence_row(p, s, t, g, sq, sp, factor, q_scratch, a_scratch, BF16, BF16, BF16, 1);
                else
                    loss = divergence_row(p, s, t, g, sq, sp, factor, q_scratch, a_scratch, p->s_dtype,
                                          p->t_dtype, p->grad_dtype, 0);
                p->losses[r] = (float)(loss * p->temperature * p->temperature);
            }
        }
        if (!live) {  /* a row that does not count: 0, even over a NaN */
            p->losses[r] = 0.0f;
            if (g != NULL)
                for (int64_t j = 0; j < n; j++)
                    store(g, p->grad_dtype, j * p->grad_class_stride, 0.0);
        }
    }
}

static const char rows_doc[] =
    "rows(s, s_dtype, t, t_dtype, num_rows, num_classes, s_row_stride, s_class_stride, t_row_stride,\n"
    "     t_class_stride, kept, divergence, beta, temperature, row_scale, scale_stride, grad, grad_dtype,\n"
    "     grad_row_stride, grad_class_stride, losses, special, start, stop) -> int\n\n"
    "Distillation rows [start, stop); pointers are addresses (row_scale and grad 0: no gradient), dtypes\n"
    "0 = float32, 1 = bfloat16, divergence 0 = kl, 1 = reverse_kl, 2 = jsd. Returns the number of rows\n"
    "flagged in `special`. Releases the GIL.";

static PyObject *rows(PyObject *self, PyObject *args) {
    (void)self;
    Problem p;
    unsigned long long s, t, kept, row_scale, grad, losses, special;
    long long start, stop;
    if (!PyArg_ParseTuple(args, "KiKiLLLLLLKiddKLKiLLKKLL", &s, &p.s_dtype, &t, &p.t_dtype, &p.num_rows,
                          &p.num_classes, &p.s_row_stride, &p.s_class_stride, &p.t_row_stride, &p.t_class_stride,
                          &kept, &p.divergence, &p.beta, &p.temperature, &row_scale, &p.scale_stride, &grad,
                          &p.grad_dtype, &p.grad_row_stride, &p.grad_class_stride, &losses, &special, &start, &stop))
        return NULL;
    if (start < 0 || stop > p.num_rows || start > stop || p.num_classes <= 0
        || (p.s_dtype != F32 && p.s_dtype != BF16) || (p.t_dtype != F32 && p.t_dtype != BF16)
        || (grad && p.grad_dtype != F32 && p.grad_dtype != BF16) || (grad && !row_scale)
        || p.divergence < KL || p.divergence > JSD || (p.scale_stride != 0 && p.scale_stride != 1)) {
        PyErr_SetString(PyExc_ValueError, "rows: a bad problem (rows, classes, dtypes or divergence out of range)");
        return NULL;
    }
    p.s = (const void *)(uintptr_t)s;
    p.t = (const void *)(uintptr_t)t;
    p.kept = (const uint8_t *)(uintptr_t)kept;
    p.row_scale = (const double *)(uintptr_t)row_scale;
    p.grad = (void *)(uintptr_t)grad;
    p.losses = (float *)(uintptr_t)losses;
    p.special = (uint8_t *)(uintptr_t)special;
    double *scratch = NULL;
    if (p.divergence != KL) {
        scratch = malloc(2 * (size_t)p.num_classes * sizeof(double));
        if (scratch == NULL)
            return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    distill_rows(&p, start, stop, scratch, scratch == NULL ? NULL : scratch + p.num_classes);
    Py_END_ALLOW_THREADS
    free(scratch);
    long long flagged = 0;
    for (long long r = start; r < stop; r++)
        flagged += p.special[r];
    return PyLong_FromLongLong(flagged);
}

static PyMethodDef methods[] = {
    {"rows", rows, METH_VARARGS, rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cpu_rows",
    "The compiled CPU distillation row kernel (see cpu_rows.c); softxent.ops.distillation.torch_cpu calls it.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cpu_rows(void) { return PyModule_Create(&module); }
