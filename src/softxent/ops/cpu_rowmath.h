/* What the compiled CPU row kernels of softxent's ops share: dtype loads and stores, and e^d for d <= 0.
 *
 * Included by each op's cpu_rows.c (ops/<op>/cpu_rows.c, built by setup.py as ops/<op>/_cpu_rows).
 * Everything is static inline: each kernel's clones (x86-64-v4, v3, baseline) get their own vector code.
 */
#ifndef SOFTXENT_CPU_ROWMATH_H
#define SOFTXENT_CPU_ROWMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

enum { F32 = 0, BF16 = 1 };

/* The kernels run on every x86-64; where the machine has AVX2 or AVX-512 (x86-64-v3, v4) the loader
 * picks that clone (an ifunc: no platform detection in Python). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif

static inline __attribute__((always_inline)) double bits_to_double(uint64_t bits) {
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline __attribute__((always_inline)) uint64_t double_to_bits(double value) {
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

/* e^d for d <= 0 (not NaN), vectorizable: e^d = 2^k e^r with k = round(d / ln 2) and |r| <= ln(2)/2,
 * within 1e-11 relative: a degree-9 Taylor polynomial on |r| <= ln(2)/2 truncates at r^10/10! = 7e-12,
 * and the float64 range reduction and the polynomial's steps add a few 1e-16 (0.0002 float32 ulp).
 * Below d = -708 (2^k would leave the normal range) the result is 0: those terms are below 1e-307 next
 * to the row's largest, e^0 = 1, and below any float32 gradient entry's least subnormal, 1.4e-45. */
static inline __attribute__((always_inline)) double exp_nonpositive(double d) {
    const double shifter = 0x1.8p52;  /* adding it rounds to an integer held in the low mantissa bits */
    const double ln2_hi = 0x1.62e42fefa3800p-1, ln2_lo = 0x1.ef35793c76730p-45;  /* Cody & Waite */
    double clamped = d < -708.0 ? -708.0 : d;
    double kd = clamped * 0x1.71547652b82fep0 + shifter;
    uint64_t scale_bits = (double_to_bits(kd) << 52) + ((uint64_t)1023 << 52);  /* 2^k */
    kd -= shifter;
    double r = fma(-kd, ln2_lo, fma(-kd, ln2_hi, clamped));
    /* e^r by its degree-9 Taylor polynomial in Estrin's form: a dependency chain of 5 multiply-adds
     * instead of Horner's 9, so that the loop is bound by throughput, not by the FMA latency */
    double r2 = r * r, r4 = r2 * r2;
    double a0 = r + 1.0, a1 = fma(r, 1.0 / 6.0, 0.5), a2 = fma(r, 1.0 / 120.0, 1.0 / 24.0);
    double a3 = fma(r, 1.0 / 5040.0, 1.0 / 720.0), a4 = fma(r, 1.0 / 362880.0, 1.0 / 40320.0);
    double p = fma(fma(a3, r2, a2), r4, fma(a1, r2, a0));
    p = fma(a4, r4 * r4, p);
    double e = p * bits_to_double(scale_bits);
    return d < -708.0 ? 0.0 : e;
}

/* log(1 + x) for x >= 0 (finite), vectorizable (libm's log1p is a call per row: a third of the time at
 * 21 classes), within 1.3e-15 relative (against libm's at 2e6 points from 1e-20 to 1e6): u = 1 + x rounds, so log1p(x) = log(u) + (x - (u - 1)) / u
 * (Goldberg 1991); log u = k ln 2 + log f with f = u / 2^k in [sqrt(1/2), sqrt(2)), and log f =
 * 2 atanh(s), s = (f - 1) / (f + 1) (f - 1 exact), |s| <= 0.1716, a series in s^2 <= 0.0295 to s^16
 * (the next term, 0.0295^9 / 19, is 7e-16). */
static inline __attribute__((always_inline)) double log1p_nonnegative(double x) {
    const double ln2_hi = 0x1.62e42fefa3800p-1, ln2_lo = 0x1.ef35793c76730p-45;
    double u = 1.0 + x;
    double correction = (x - (u - 1.0)) / u;
    /* the exponent k of u, offset so that the rest f lies in [sqrt(1/2), sqrt(2)) */
    int64_t k = (int64_t)(double_to_bits(u) - 0x3fe6a09e667f3bcdULL) >> 52;
    double f = bits_to_double(double_to_bits(u) - ((uint64_t)k << 52));
    double s = (f - 1.0) / (f + 1.0), z = s * s, z2 = z * z, z4 = z2 * z2;
    double series = fma(fma(fma(1.0 / 15.0, z, 1.0 / 13.0), z2, fma(1.0 / 11.0, z, 1.0 / 9.0)), z4,
                        fma(fma(1.0 / 7.0, z, 1.0 / 5.0), z2, fma(1.0 / 3.0, z, 1.0)));
    series = fma(1.0 / 17.0, z4 * z4, series);
    double kd = (double)k;
    return fma(kd, ln2_hi, fma(2.0 * s, series, fma(kd, ln2_lo, correction)));
}

static inline __attribute__((always_inline)) float load(const void *base, int dtype, int64_t index) {
    if (dtype == F32)
        return ((const float *)base)[index];
    uint32_t bits = (uint32_t)((const uint16_t *)base)[index] << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* float32 to bfloat16, round to nearest even (NaN is not reached: NaN rows are the caller's). */
static inline __attribute__((always_inline)) uint16_t to_bfloat16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static inline __attribute__((always_inline)) void store(void *base, int dtype, int64_t index, double value) {
    float rounded = (float)value;
    if (dtype == F32)
        ((float *)base)[index] = rounded;
    else
        ((uint16_t *)base)[index] = to_bfloat16(rounded);
}

/* The max of a row of n entries (stride apart), and whether it holds a NaN (the max ignores NaN, so it
 * is counted apart): the first pass of every kernel. -inf for a row of -inf (a fully masked row). */
static inline __attribute__((always_inline)) float row_max_and_nan(const void *x, int dtype, int64_t n, int64_t stride,
                                                                  int *has_nan) {
    float m = -INFINITY;
    int nan = 0;
    if (stride == 1 && dtype == F32) {
        const float *row = x;
#pragma omp simd reduction(max : m) reduction(| : nan)
        for (int64_t j = 0; j < n; j++) {
            m = row[j] > m ? row[j] : m;
            nan |= row[j] != row[j];
        }
    } else if (stride == 1) {
#pragma omp simd reduction(max : m) reduction(| : nan)
        for (int64_t j = 0; j < n; j++) {
            float v = load(x, BF16, j);
            m = v > m ? v : m;
            nan |= v != v;
        }
    } else {
        for (int64_t j = 0; j < n; j++) {
            float v = load(x, dtype, j * stride);
            m = v > m ? v : m;
            nan |= v != v;
        }
    }
    *has_nan = nan;
    return m;
}

#endif
