"""log-sum-exp for JAX, and the row kernel every softxent.jax op shares.

For rows z (classes last) in the work dtype and a temperature T, `row_stats` computes

    m     = max_j z_j                    (0 for fully masked and +inf rows)
    d_j   = (z_j - m) / T                as hi + lo: z_j - m is split exactly (TwoSum), so the gap
                                         to the max is not rounded before exp sees it
    e_j   = exp(d_hi) * (1 + d_lo)       exp of the unrounded gap, to first order
    rest  = sum_j (e_j - floor(e_j))     the sum without one max's own term, which is exactly 1: e - floor(e)
            + (k - 1)                    is 0 at the max (e <= 1); k entries at the max add k - 1 ones
    L     = log1p(rest)                  exact when one class dominates and the sum is 1 + tiny

This is how float32 stays exact without float64 (JAX without x64 has none): the two roundings that
ruin a naive float32 log-sum-exp are the gap ``z_j - m`` and ``log(1 + tiny)``; TwoSum removes the
first and log1p of the sum without the max removes the second (Blanchard, Higham & Higham 2021). The
sum itself is XLA's float32 reduction, a tree of vectorised partial sums whose error on the
adversarial set (tests/adversarial.py, up to 10^6 terms) stays far below an ulp of L: worst errors
0.52 ulp (lse), 1.26 (log-softmax), 1.14 (loss), 1.53 (gradient) in float32 without x64
(benchmarks/results/jax_accuracy.json). A fully compensated (double-float) reduction measured 6x
slower on the CPU and bought nothing measurable.

Written for XLA's CPU backend as measured with jaxlib 0.10: no argmax over whole rows (a variadic
reduction, several times slower), no select inside a reduction (gaps are clamped instead), sibling
reductions kept apart (a multi-output loop runs 4x slower), no scalar constant inside a reduction's
fusion (it is written out as an (N, V) broadcast). Reductions fused with elementwise work run through
YNNPACK, which gives each intermediate a row-sized buffer allocated per row and per call: the TwoSum sum
then ran 2-4x slower than a plain sum (most of it page faults when malloc maps such buffers afresh).
So two forms: without a gradient the entries are recomputed inside each consumer's loop (no (N, V)
temporary); with one (`row_stats(..., kept_terms=True)`) the sum's terms are written once, summed
plainly, and the gradient reads them back and overwrites them in place, as optax's exp(x - m) is;
the entries at the max are then counted in the first block of 128 classes holding one (`_kept_sums`).

The limits of rules 2 and 3 of docs/semantics.md are handled once, here: a fully masked row keeps shift 0, so
e = 0 and L = -inf; a row holding +inf is shifted by the largest float with its +inf entries capped
there (`limit_rows`), so those entries share the mass equally and lse = +inf. NaN propagates.

Two float32 limits, pinned by tests/jax/test_jax_exactness.py: XLA flushes subnormal results to zero
(an absolute error below 1.2e-38), and lse = m + L cancels when m is near -L (the exact answer then
needs L to more than 24 bits; the error is within half an ulp of |m|).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from softxent import _validation as v
from softxent._jax import arrays as ja
from jax import lax


class RowStats:
    """Per-row statistics of rows z, and their entries computed on demand.

    Only per-row arrays are computed here; the entries (d, d_c, d_lo, e) are recomputed from z where a
    consumer needs them, so XLA fuses them into that consumer's loop instead of writing (N, V) arrays.
    """

    def __init__(self, raw, cap, temperature, center, rest, total, log_sum, masked, infinite, terms=None):
        self.raw, self.cap, self.temperature = raw, cap, temperature
        self.terms = terms  # the sum's terms e - [e >= 1] written out (`row_stats(..., kept_terms=True)`)
        self.center = center  # m itself (what z is shifted by before T divides)
        self.shift = center / temperature if temperature != 1.0 else center  # m / T
        self.rest = rest  # sum of e without one max's term
        self.total = total  # 1 + rest (0 for a fully masked row)
        self.log_sum = log_sum  # L = log(total), via log1p(rest)
        self.masked = masked  # row all -inf
        self.infinite = infinite  # row holds +inf
        self._entries = None

    @property
    def z(self):
        """The rows, those holding +inf at their limit (`limit_rows`)."""
        return jnp.minimum(self.raw, self.cap[..., None])

    def entries(self):
        """(d, d_c, d_lo, e): `shifted_exp` of the rows, from inputs behind an optimization barrier so
        that XLA recomputes them inside the consumer's loop rather than sharing (and writing out) the
        sums' own copy."""
        if self._entries is None:
            raw, cap, center = lax.optimization_barrier((self.raw, self.cap, self.center))
            d, d_c, d_lo, e = shifted_exp(jnp.minimum(raw, cap[..., None]), center, self.temperature)
            if self.terms is not None:  # e from the written terms: no second exp, nor TwoSum
                e = self.terms + _is_top(self.terms, d)
            self._entries = d, d_c, d_lo, e
        return self._entries

    d = property(lambda self: self.entries()[0])  # (z - m) / T, hi part (-inf where z is)
    d_c = property(lambda self: self.entries()[1])  # the same, clamped at -CLAMP (finite)
    d_lo = property(lambda self: self.entries()[2])  # its exact low part where exp(d) > 0
    e = property(lambda self: self.entries()[3])  # exp(d), the max's entry 1

    @property
    def lse(self) -> jax.Array:
        """The row log-sum-exp of z / T: m / T + L, +inf for rows holding +inf."""
        return jnp.where(self.infinite, jnp.inf, self.shift + self.log_sum)

    @property
    def probs(self) -> jax.Array:
        """softmax(z / T): e / total, zeros for a fully masked row."""
        total = jnp.where(self.masked, 1.0, self.total)
        return self.e / total[..., None]


def _two_diff(a, b):
    """(s, err) with s = fl(a - b) and s + err = a - b exactly (Knuth's TwoSum on a and -b)."""
    s = a - b
    bb = s - a
    err = (a - (s - bb)) - (b + bb)
    return s, err


# Gaps (after T) below -CLAMP have exp 0 in the work dtype (exp(-120) < float32's smallest subnormal,
# exp(-800) < float64's): clamping the scores there keeps TwoSum finite for -inf entries without a
# select, which on XLA's CPU backend costs a reduction its vectorisation (3x slower measured)
CLAMP = {"float32": 120.0, "float64": 800.0}


def _clamp(dtype) -> float:
    return CLAMP["float64" if dtype == jnp.float64 else "float32"]


def limit_rows(z: jax.Array, infinite: jax.Array):  # noqa: D401
    """(z, center) with the rows holding +inf at their limit (rule 3), without a select per entry.

    Such a row's +inf entries are capped at the largest float and the row shifted by it: they get e = 1
    and share the mass equally, every finite entry gets e = exp(-huge) = 0. (Consumers that return
    the entries themselves, log_softmax and the target's gap, turn those into -inf.)
    """
    cap = limit_cap(infinite, z.dtype)
    return jnp.minimum(z, cap[..., None]), cap


def limit_cap(infinite, dtype):
    """Per row: the largest float for rows holding +inf, +inf (no cap) for the others."""
    return jnp.where(infinite, jnp.finfo(dtype).max, jnp.inf).astype(dtype)


def shifted_exp(z: jax.Array, center: jax.Array, temperature: float = 1.0):
    """(d, d_c, d_lo, e) of z given each row's shift `center` (its max, 0 for special rows).

    d = (z - c) / T as computed (-inf stays -inf); d_c the same gap clamped at -CLAMP (finite); d_lo
    the exact low part of z - c (TwoSum, on the clamped scores: exact wherever exp is not 0); and
    e = exp(d_c) (1 + d_lo), exp of the unrounded gap to first order. Steps 1-2 of `row_stats`, also
    run on a slice of columns by the chunked and the vocab-parallel losses.
    """
    d, s, d_lo = _gaps(z, center, temperature)
    d_c = jnp.maximum(s, -_clamp(z.dtype))
    e = jnp.exp(d_c)
    return d, d_c, d_lo, e + e * d_lo


def _gaps(z, center, temperature):
    """(d, s, d_lo): the gap as computed, its hi part from the clamped scores (>= about -CLAMP, finite)
    and the exact low part; exp(s) is already 0 where s is below -CLAMP."""
    c = center[..., None]
    clamp = _clamp(z.dtype)
    big = float(jnp.finfo(z.dtype).max)
    # scores below the threshold have exp 0; it is relative to |c| (c - 120 is c itself when c = 1e30)
    # and never below -max or more than max under c, so that z - c stays finite for TwoSum
    threshold = jnp.maximum(c - (clamp * temperature + jnp.abs(c) * 2.0**-10), jnp.maximum(c, 0.0) - big)
    zc = jnp.maximum(z, threshold)
    s, d_lo = _two_diff(zc, c)
    d = z - c
    if temperature != 1.0:
        # (z - m) / T after the shift, never z / T before it (which overflows)
        d, s, d_lo = d / temperature, s / temperature, d_lo / temperature
    return d, s, d_lo


def exp_sums(raw, cap, center, temperature: float = 1.0):
    """(below, ties): the sum of e below 1 and the number of entries at the max (e == 1).

    Two plain sums of one row each, kept in separate loops: XLA fuses sibling reductions into one
    multi-output loop, which its CPU backend runs 4x slower. e - floor(e)
    is e below the max and 0 at it (e <= 1): the max's 1s stay out of the sum without a select. Both
    start from the raw rows (`raw`, capped by `cap`, see `limit_rows`): anything computed before the
    barrier would be written out as an (N, V) array. The count uses exp of the rounded gap: it is 1
    exactly where the corrected e is (a gap whose low part matters has |d| far above 2^-24).
    """
    # e without shifted_exp's clamp of the gap (exp(s) is 0 there anyway): a constant operand of a
    # reduction's fusion is written out as an (N, V) broadcast on XLA's CPU backend (measured: a full
    # extra pass, and a fresh (N, V) buffer to fault in)
    _, s, d_lo = _gaps(jnp.minimum(raw, cap[..., None]), center, temperature)
    e = jnp.exp(s)
    e = e + e * d_lo
    below = jnp.sum(e - jnp.floor(e), axis=-1)
    return below, tie_count(raw, cap, center, temperature)


def tie_count(raw, cap, center, temperature: float = 1.0):
    """The number of entries at the max (e == 1), per row, over the raw rows capped by `cap`."""
    # the count over a (..., V / k, k) view of the rows, reduced over both axes: XLA then does not fuse
    # it with `below` into one multi-output loop (whose operands its CPU backend writes out as (N, V));
    # k, the largest power of two up to 128 dividing V, keeps the inner loop vectorised
    v = raw.shape[-1]
    k = _block(v)
    raw2 = raw.reshape(raw.shape[:-1] + (v // k, k))
    # no clamp here: exp(-inf) is 0 and floor(exp(gap)) is 0 below the max, and a scalar operand of the
    # reduction's fusion is written out as a (N, V) broadcast on XLA's CPU backend (measured: a full pass)
    gap = jnp.minimum(raw2, cap[..., None, None]) - center[..., None, None]
    return jnp.sum(jnp.floor(jnp.exp(gap / temperature if temperature != 1.0 else gap)), axis=(-2, -1))


def combine_rest(below, ties):
    """The sum without one max's own term: every other entry at the max adds exactly 1."""
    return below + jnp.maximum(ties - 1.0, 0.0)


def log_sum(rest: jax.Array, masked: jax.Array, row_max: jax.Array):
    """(top, total, L): the max's own term (1; 0 in a fully masked or empty row, NaN in a NaN row),
    1 + rest, and log1p(rest): 1 + tiny is never formed and rounded."""
    top = jnp.where(masked, 0.0, jnp.where(jnp.isnan(row_max), jnp.nan, 1.0)).astype(rest.dtype)
    total = top + rest
    return top, total, jnp.where(top == 1.0, jnp.log1p(rest), jnp.log(total))


def row_stats(z: jax.Array, temperature: float = 1.0, *, kept_terms: bool = False) -> RowStats:
    """The shared row statistics of z (classes on the last axis, work dtype); see the module docstring.

    `kept_terms`: write the sum's terms out once (an (N, V) array that the consumer's own (N, V) output
    can take over, as the gradient does) instead of recomputing them in each loop; see `_kept_sums`.
    """
    v = z.shape[-1]
    k = _block(v)
    blocks = None
    if kept_terms and k > 1 and z.size:
        # 1. the max through the maxima of blocks of k entries: the blocks locate the ties below
        # (behind a barrier: XLA would otherwise fold max(blocks) into a second full pass over z)
        blocks = lax.optimization_barrier(jnp.max(z.reshape(z.shape[:-1] + (v // k, k)), axis=-1))
        m = jnp.max(blocks, axis=-1)
    else:
        m = jnp.max(z, axis=-1)
    masked, infinite = m == -jnp.inf, m == jnp.inf
    cap = limit_cap(infinite, z.dtype)
    center = jnp.where(infinite, cap, jnp.where(jnp.isinf(m), jnp.zeros_like(m), m))
    # 3. the sum without the max's 1, then log1p
    terms = None
    if blocks is None:
        rest = combine_rest(*exp_sums(z, cap, center, temperature))
    else:
        rest, terms = _kept_sums(z, cap, center, temperature, blocks, k)
    top, total, L = log_sum(rest, masked, m)
    return RowStats(z, cap, temperature, center, rest, total, L, masked, infinite, terms)


def _block(v: int) -> int:
    """The largest power of two up to 128 dividing V: rows seen as (V / k, k) keep loops vectorised."""
    return next(k for k in (128, 64, 32, 16, 8, 4, 2, 1) if v % k == 0)


def _is_top(terms, d):
    """1 where e >= 1 (the max, its ties, and gaps too small for exp to see), else 0: those terms are 0
    and every other entry with a gap above -1 has e > 1/e, so a zero term there marks them."""
    return ((terms == 0) & (d > -1.0)).astype(terms.dtype)


def _kept_sums(raw, cap, center, temperature, blocks, k):
    """(rest, terms): the sum without one max's term, from terms = min(e, 1) - floor(e) written out.

    On XLA's CPU backend a reduction fused with elementwise work (YNNPACK) gives each intermediate its
    own row-sized buffer, allocated per row and per call (measured: the exp-and-TwoSum sum ran 2-4x
    slower than a plain sum, most of it in page faults of those buffers). Here the terms are written
    once by a loop, as optax writes exp(x - m), and summed plainly; the gradient then reads them back
    (e = terms, plus 1 at the top entries) and overwrites them in place.

    The count of entries with e >= 1 needs no pass over the rows: only a block whose max has a gap
    above -2^-20 can hold one (exp of anything lower is below 1), so the count is taken in the first
    such block; a row with several such blocks (ties far apart, or +inf entries) sends the whole batch
    through a full count (`lax.cond`: a rare, slower path, never a wrong one).
    """
    d, s, d_lo = _gaps(jnp.minimum(raw, cap[..., None]), center, temperature)
    e = jnp.exp(s)
    e = e + e * d_lo
    # e <= 1 + 2^-24 (gaps <= 0): min(e, 1) - floor(e) is e below 1 and 0 at the top, NaN kept
    terms = lax.optimization_barrier(jnp.minimum(e, 1.0) - jnp.floor(e))
    below = jnp.sum(terms, axis=-1)
    gap = (jnp.minimum(blocks, cap[..., None]) - center[..., None])
    gap = gap / temperature if temperature != 1.0 else gap
    candidate = gap > -(2.0**-20)
    count = jnp.sum(candidate.astype(raw.dtype), axis=-1)
    first = jnp.argmax(candidate, axis=-1)
    v = raw.shape[-1]
    as_blocks = lambda a: a.reshape(a.shape[:-1] + (v // k, k))
    pick = lambda a: jnp.take_along_axis(as_blocks(a), first[..., None, None], axis=-2)[..., 0, :]
    block_d = _gaps(jnp.minimum(pick(raw), cap[..., None]), center, temperature)[0]
    in_block = jnp.sum(_is_top(pick(terms), block_d), axis=-1)

    # the full count from the raw rows, not from the terms: terms passed into the cond would keep XLA
    # from writing the gradient over them in place (measured: a second (N, V) buffer)
    every_row = lambda raw, cap, center: tie_count(raw, cap, center, temperature)
    first_block = lambda *_: jnp.where(count > 0, in_block, 0.0)
    ties = lax.cond(jnp.any(count > 1), every_row, first_block, raw, cap, center)
    return combine_rest(below, ties), terms


def logsumexp(x: Any, axis: Any = -1, *, b: Any = None, where: Any = None) -> jax.Array:
    """Log of the sum of exponentials, ``log(sum_j b_j exp(x_j))``, along `axis`, for JAX.

    .. math:: \\mathrm{lse}(x) = m + \\operatorname{log1p}\\Big(\\sum_{j \\ne \\arg\\max} e^{x_j - m}\\Big),
       \\quad m = \\max_j x_j

    Shifting by the max keeps exp from overflowing; the gap ``x_j - m`` is split exactly (TwoSum) and
    the max's own term (exactly 1) stays out of the sum, so log1p keeps the result exact in float32
    without x64 (the row kernel: this module's docstring). Differentiable by ``jax.custom_jvp`` (either
    mode, any order): the gradient is ``softmax(x)`` (``b_j e^{x_j} / sum``), computed in the forward sweep. Works under jit,
    grad, vmap and shard_map; float16 and bfloat16 are accumulated in float32 (rule 8 of docs/semantics.md).

    Args:
        x: real array; integers are taken as the default float dtype.
        axis: the axis to reduce, a tuple of axes, or None for every element.
        b: scale factors broadcastable to `x`; entries with ``b == 0`` are left out (so
            ``0 * exp(inf)`` contributes 0). A negative sum gives NaN, as SciPy without return_sign.
        where: boolean mask broadcastable to `x`; False entries are left out of the sum (their
            gradient is 0, never NaN).

    Returns:
        The log-sum-exp with `axis` reduced, in the dtype of `x`. A fully masked or empty row gives
        -inf and a zero gradient; +inf entries give +inf; NaN propagates.

    Example:
        >>> import softxent.jax as sxj
        >>> round(float(sxj.logsumexp(jnp.array([1.0, 2.0, 3.0]))), 5)
        3.40761
        >>> float(sxj.logsumexp(jnp.array([1000.0, 1000.0])))   # no overflow: 1000 + log 2
        1000.6931762695312

    See also: ``softxent.logsumexp`` (NumPy), ``softxent.torch.logsumexp``.

    References: Blanchard, Higham & Higham (2021), "Accurately computing the log-sum-exp and softmax
    functions", IMA J. Numer. Anal.
    """
    x = ja.as_float(x, "x")
    axes = v.normalize_axes(axis, x.ndim)
    keep = ja.check_where(where, x.shape)
    if b is not None:
        b = ja.as_float(b, "b")
        try:
            b = jnp.broadcast_to(b, x.shape).astype(x.dtype)
        except ValueError:
            raise ValueError(f"b of shape {tuple(b.shape)} does not broadcast to x of shape {x.shape}") from None
    if keep is not None:
        x = jnp.where(keep, x, -jnp.inf)  # a masked entry leaves the sum; jnp.where's gradient there is 0
    # entries with b == 0 leave the sum inside _lse_b, which keeps their gradient in b
    rows = ja.axes_last(x, axes)
    out_shape = ja.reduced_shape(x.shape, axes)
    if rows.shape[-1] == 0:  # an empty sum: -inf, as the NumPy and torch layers (a max over nothing has no value)
        return jnp.full(out_shape, -jnp.inf, x.dtype)
    if b is None:
        return _lse_jit(rows).reshape(out_shape)
    return _lse_b_jit(rows, ja.axes_last(b, axes)).reshape(out_shape)


# custom_jvp: the tangent <gradient, dx> is linear in dx, so JAX's transpose keeps the gradient as the
# only residual (as a custom_vjp would) while forward mode and higher derivatives work too


def _contract(grad, tangent):
    work = ja.work_dtype(grad.dtype)
    return jnp.sum(grad.astype(work) * tangent.astype(work), axis=-1)


@jax.custom_jvp
def _lse(rows):
    return _lse_fwd(rows)[0]


def _lse_fwd(rows, kept_terms=False):
    stats = row_stats(rows.astype(ja.work_dtype(rows.dtype)), kept_terms=kept_terms)
    return stats.lse.astype(rows.dtype), stats.probs.astype(rows.dtype)


@_lse.defjvp
def _lse_jvp(primals, tangents):
    # d lse / dx = softmax(x): the residual is the gradient itself (written over the sum's terms);
    # masked rows hold zeros
    lse, probs = _lse_fwd(primals[0], kept_terms=True)
    return lse, _contract(probs, tangents[0]).astype(lse.dtype)


_lse_jit = jax.jit(_lse)


@jax.custom_jvp
def _lse_b(rows, b):
    return _lse_b_fwd(rows, b)[0]


def _lse_b_fwd(rows, b):
    # signed scale factors may cancel: no log1p here, log|sum b e| with the sign checked
    work = ja.work_dtype(rows.dtype)
    x, b = rows.astype(work), b.astype(work)
    stats = row_stats(jnp.where(b != 0, x, -jnp.inf), 1.0)  # b == 0 leaves the sum: 0 * exp(inf) is 0
    e = jnp.where(b != 0, stats.e, 0.0)
    total = jnp.sum(b * e, axis=-1)
    lse = stats.shift + jnp.log(jnp.where(total > 0, total, jnp.where(total == 0, 0.0, jnp.nan)))
    lse = jnp.where(stats.infinite, jnp.where(total > 0, jnp.inf, jnp.nan), lse)
    safe = jnp.where(total > 0, total, 1.0)[..., None]
    # d/db_j = exp(x_j - lse) also where b_j = 0 (there exp is taken outside the sum's shift)
    with jax.numpy_rank_promotion("allow"):
        e_all = jnp.where(b != 0, stats.e, jnp.exp(x - stats.center[..., None]))
    grad_x, grad_b = b * e / safe, e_all / safe
    return lse.astype(rows.dtype), (grad_x.astype(rows.dtype), grad_b.astype(rows.dtype))


@_lse_b.defjvp
def _lse_b_jvp(primals, tangents):
    lse, (grad_x, grad_b) = _lse_b_fwd(*primals)
    dx, db = tangents
    return lse, (_contract(grad_x, dx) + _contract(grad_b, db)).astype(lse.dtype)


_lse_b_jit = jax.jit(_lse_b)
