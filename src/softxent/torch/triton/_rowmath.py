"""Triton building blocks shared by the softmax and cross-entropy kernels: the online row state.

A row (or a chunk of one) is summarised by a state ``(m, rest, s, b)``, in float32 whatever the input:

    m     the row max of the transformed logits z (-inf for an empty or fully masked row, +inf if any is)
    rest  sum_j exp(d_j) without the first maximum's own term (which is exactly 1), d_j = z_j - m
    s     sum_j b_j d_j  for coefficients b_j >= 0 (target probabilities, class weights), 0 * -inf = 0
    b     sum_j b_j

Two states combine exactly as blocks of a row do in online softmax (Milakov & Gimelshein 2018, "Online
normalizer calculation for softmax"): the larger max wins, the other side's sums are rescaled by
exp(m_lo - m_hi), and the loser's maximum joins `rest`. Keeping the maximum's 1 out of `rest` is what keeps
``L = log1p(rest)``, the log-sum-exp ``m + L`` and the loss ``L - d_target`` exact when one class dominates
and the sum is 1 + tiny (Blanchard, Higham & Higham 2021), as in the NumPy layer's _rowmath. The empty
state ``(-inf, -1, 0, 0)`` is the identity of `combine`, so a chunk with no columns is harmless.

Limits (API.md rules 2 and 3): ``d_j`` is taken as 0 where ``z_j == m``, so a row holding +inf has d = 0
at its +inf entries and -inf elsewhere (the +inf entries share the mass), and a fully masked row never
computes -inf - -inf. NaN anywhere reaches `rest` through exp and makes the row NaN.

Only the core of triton.language is used (no libdevice: the interpreter lacks it, and its import path
moved between releases); tanh and log1p are written out below.
"""

import triton
import triton.language as tl


@triton.jit
def log1p(x):
    """log(1 + x), exact for tiny x (Kahan's trick: log(u) * x / (u - 1) with u = fl(1 + x))."""
    u = 1.0 + x
    denominator = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, x, tl.log(u) * (x / denominator))


@triton.jit
def tanh_sech2(y):
    """tanh(y) and its derivative 1 - tanh(y)^2 = sech(y)^2, both without cancellation.

    For |y| >= 0.25, tanh = (1 - e) / (1 + e) and sech^2 = 4e / (1 + e)^2 with e = exp(-2|y|) <= 0.61;
    below, the odd Taylor series to y^9 (next term < 1e-8 relative). +-inf give +-1 and 0; NaN stays NaN.
    """
    a = tl.abs(y)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    a2 = a * a
    small = a * (1.0 + a2 * (-0.3333333333333333 + a2 * (0.13333333333333333
                                                         + a2 * (-0.05396825396825397 + a2 * 0.021869488536155203))))
    t = tl.where(a < 0.25, small, big)
    t = tl.where(y < 0.0, -t, t)
    one_plus = 1.0 + e
    return t, 4.0 * e / (one_plus * one_plus)


@triton.jit
def transform(x, softcap, inv_temperature, HAS_SOFTCAP: tl.constexpr, HAS_TEMPERATURE: tl.constexpr):
    """z = softcap * tanh(x / softcap) / T (Gemma 2's soft cap, then temperature), in float32."""
    if HAS_SOFTCAP:
        t, _ = tanh_sech2(x / softcap)
        z = t * (softcap * inv_temperature)
    elif HAS_TEMPERATURE:
        z = x * inv_temperature
    else:
        z = x
    return z


@triton.jit
def transform_slope(x, softcap, inv_temperature, HAS_SOFTCAP: tl.constexpr):
    """dz/dx for `transform`: sech^2(x / softcap) / T, or 1 / T."""
    if HAS_SOFTCAP:
        _, slope = tanh_sech2(x / softcap)
        slope = slope * inv_temperature
    else:
        slope = tl.zeros_like(x) + inv_temperature
    return slope


@triton.jit
def shifted(z, m):
    """d = z - m, taken as 0 where z == m (so +inf - +inf and -inf - -inf never make NaN)."""
    return tl.where(z == m, 0.0, z - m)


@triton.jit
def block_state(z, valid, coef, HAS_COEF: tl.constexpr):
    """The state (m, rest, s, b) of one block of transformed logits z; `valid` masks the columns.

    z must be -inf where not valid; coef (b_j) must be 0 there. Without HAS_COEF, s = b = 0.
    """
    m = tl.max(z, 0)
    tie = (z == m) & valid
    e = tl.where(tie | (valid == 0), 0.0, tl.exp(z - m))
    # each tie past the first is a full exp(0) = 1 of the rest; the first is the max's own term
    rest = tl.sum(e, 0) + (tl.sum(tie.to(tl.float32), 0) - 1.0)
    if HAS_COEF:
        d = tl.where(tie, 0.0, z - m)
        s = tl.sum(tl.where(coef == 0.0, 0.0, coef * d), 0)
        b = tl.sum(coef, 0)
    else:
        s = tl.full([], 0.0, tl.float32)
        b = tl.full([], 0.0, tl.float32)
    return m, rest, s, b


@triton.jit
def combine(m1, r1, s1, b1, m2, r2, s2, b2):
    """Merge two states (of disjoint column sets) into the state of their union."""
    m = tl.maximum(m1, m2)
    first_wins = m1 >= m2
    lo_m = tl.where(first_wins, m2, m1)
    lo_r = tl.where(first_wins, r2, r1)
    hi_r = tl.where(first_wins, r1, r2)
    # the losing side's maximum (its implicit 1) joins the rest, scaled like the rest of its sum
    rest = hi_r + (lo_r + 1.0) * tl.exp(shifted(lo_m, m))
    # s_i was taken against m_i; against m every d_j moves by m_i - m (b_i = 0: nothing moves, no 0 * inf)
    c1 = tl.where(b1 == 0.0, 0.0, b1 * shifted(m1, m))
    c2 = tl.where(b2 == 0.0, 0.0, b2 * shifted(m2, m))
    return m, rest, (s1 + c1) + (s2 + c2), b1 + b2
