"""Triton building blocks shared by the softmax and cross-entropy kernels: the online row state.

The scores of a row are y = softcap * tanh(x / softcap) / T with a soft cap (-inf logits stay -inf: a
mask, not a score), else y = x / T. With a cap, z = y is computed first (it is bounded); without one,
the kernels keep z = x and divide after the shift, d = (z - max z) * post with post = 1 / T, so x / T
never overflows (the NumPy layer's order). A row (or a chunk of one) is then summarised by a state
``(m, rest, s, b)``, in float32 whatever the input:

    m     the row max of z (-inf for an empty or fully masked row, +inf if any entry is)
    rest  sum_j exp(d_j) without the first maximum's own term (which is exactly 1), d_j = (z_j - m) * post
    s     sum_j b_j d_j  for coefficients b_j >= 0 (target probabilities, class weights), 0 * -inf = 0
    b     sum_j b_j

and the row's log-sum-exp of y is ``m * post + log1p(rest)``. Two states combine exactly as blocks of a
row do in online softmax (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"): the
larger max wins, the other side's sums are rescaled by exp((m_lo - m_hi) * post), and the loser's maximum
joins `rest`. Keeping the maximum's 1 out of `rest` is what keeps ``L = log1p(rest)``, the log-sum-exp
and the loss ``L - d_target`` exact when one class dominates and the sum is 1 + tiny (Blanchard, Higham &
Higham 2021), as in the NumPy layer's _rowmath. The empty state ``(-inf, -1, 0, 0)`` is the identity of
`combine`, so a chunk with no columns is harmless.

Limits (rules 2 and 3 of docs/semantics.md): ``z_j - m`` is taken as 0 where ``z_j == m``, so a row holding +inf has
d = 0 at its +inf entries and -inf elsewhere (the +inf entries share the mass), and a fully masked row
never computes -inf - -inf. NaN anywhere reaches `rest` through exp and makes the row NaN.

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
def transform(x, softcap, inv_temperature, HAS_SOFTCAP: tl.constexpr):
    """z = softcap * tanh(x / softcap) / T with a soft cap (Gemma 2), -inf kept as a mask; else z = x."""
    if HAS_SOFTCAP:
        t, _ = tanh_sech2(x / softcap)
        z = tl.where(x == float("-inf"), float("-inf"), t * (softcap * inv_temperature))
    else:
        z = x
    return z


@triton.jit
def post_scale(inv_temperature, HAS_SOFTCAP: tl.constexpr):
    """What multiplies z - max z: 1 / T, unless the soft cap has already divided by T."""
    if HAS_SOFTCAP:
        post = 1.0
    else:
        post = inv_temperature
    return post


@triton.jit
def transform_slope(x, softcap, inv_temperature, HAS_SOFTCAP: tl.constexpr):
    """dy/dx for the scores y: sech^2(x / softcap) / T, or 1 / T (0 at a masked -inf under the cap)."""
    if HAS_SOFTCAP:
        _, slope = tanh_sech2(x / softcap)
        slope = slope * inv_temperature
    else:
        slope = tl.zeros_like(x) + inv_temperature
    return slope


@triton.jit
def shifted(z, m, post):
    """d = (z - m) * post, taken as 0 where z == m (so +inf - +inf and -inf - -inf never make NaN)."""
    return tl.where(z == m, 0.0, (z - m) * post)


@triton.jit
def block_state(z, valid, coef, post, HAS_COEF: tl.constexpr):
    """The state (m, rest, s, b) of one block of z; `valid` masks the columns.

    z must be -inf where not valid; coef (b_j) must be 0 there. Without HAS_COEF, s = b = 0.
    """
    m = tl.max(z, 0)
    tie = (z == m) & valid
    d = tl.where(tie, 0.0, (z - m) * post)
    e = tl.where(tie | (valid == 0), 0.0, tl.exp(d))
    # each tie past the first is a full exp(0) = 1 of the rest; the first is the max's own term
    rest = tl.sum(e, 0) + (tl.sum(tie.to(tl.float32), 0) - 1.0)
    if HAS_COEF:
        s = tl.sum(tl.where(coef == 0.0, 0.0, coef * d), 0)
        b = tl.sum(coef, 0)
    else:
        s = tl.full([], 0.0, tl.float32)
        b = tl.full([], 0.0, tl.float32)
    return m, rest, s, b


@triton.jit
def combine(m1, r1, s1, b1, m2, r2, s2, b2, post):
    """Merge two states (of disjoint column sets) into the state of their union."""
    m = tl.maximum(m1, m2)
    first_wins = m1 >= m2
    lo_m = tl.where(first_wins, m2, m1)
    lo_r = tl.where(first_wins, r2, r1)
    hi_r = tl.where(first_wins, r1, r2)
    # the losing side's maximum (its implicit 1) joins the rest, scaled like the rest of its sum
    rest = hi_r + (lo_r + 1.0) * tl.exp(shifted(lo_m, m, post))
    # s_i was taken against m_i; against m every d_j moves by (m_i - m) * post (b_i = 0: no 0 * inf)
    c1 = tl.where(b1 == 0.0, 0.0, b1 * shifted(m1, m, post))
    c2 = tl.where(b2 == 0.0, 0.0, b2 * shifted(m2, m, post))
    return m, rest, (s1 + c1) + (s2 + c2), b1 + b2


@triton.jit
def row_state(x_row, num_classes, softcap, inv_temperature, post, BLOCK: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
    """1. One sweep of a row's scores z = transform(x): their max m and rest = sum_j exp(d_j) - 1 (the
    max's own 1 left out, so L = log1p(rest) is exact however small)."""
    m = tl.full([], float("-inf"), tl.float32)
    rest = tl.full([], -1.0, tl.float32)
    zero = tl.full([], 0.0, tl.float32)
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < num_classes
        x = tl.load(x_row + cols, mask=valid, other=0.0).to(tl.float32)
        z = tl.where(valid, transform(x, softcap, inv_temperature, HAS_SOFTCAP), float("-inf"))
        bm, br, bs, bb = block_state(z, valid, z, post, False)
        m, rest, _, _ = combine(m, rest, zero, zero, bm, br, bs, bb, post)
    return m, rest
