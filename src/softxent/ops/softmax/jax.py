"""softmax and log-softmax for JAX, with `jax.custom_jvp` derivatives (any order, either mode).

Both share the row kernel of ops/logsumexp/jax.py (the shift split exactly, the sum without the
max's own term, log1p), so log_softmax is exact in float32 without x64 and softmax is as exact as a
shifted softmax can be (exp turns the rounding of ``(x_j - m) / T`` into ``|d_j|`` ulp).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from softxent import _validation as v
from softxent._jax import arrays as ja
from softxent.ops.logsumexp.jax import row_stats


def _prepare(x: Any, axis: Any, temperature: float, where: Any):
    x = ja.as_float(x, "x")
    temperature = v.check_temperature(temperature)
    axes = v.normalize_axes(axis, x.ndim)
    keep = ja.check_where(where, x.shape)
    if keep is not None:
        x = jnp.where(keep, x, -jnp.inf)  # a masked entry is a -inf logit; jnp.where's gradient there is 0
    return x, axes, temperature


def _no_classes(x, axes) -> bool:
    """Whether the class axes hold no entry (a max over nothing has no value: nothing to compute)."""
    return any(x.shape[a] == 0 for a in axes)


def softmax(x: Any, axis: Any = -1, *, temperature: float = 1.0, where: Any = None) -> jax.Array:
    """Probabilities from scores along `axis`, for JAX.

    .. math:: \\mathrm{softmax}(x)_j = \\frac{e^{(x_j - m)/T}}{\\sum_k e^{(x_k - m)/T}}, \\quad m = \\max_k x_k

    Shifted by the max before the temperature divides (``x / T`` first overflows). The gradient,
    ``p * (g - sum_k p_k g_k) / T``, comes from ``jax.custom_jvp`` (forward and reverse mode, higher
    derivatives) with the output as its only residual.

    Args:
        x: real array; integers are taken as the default float dtype; 16-bit floats work in float32.
        axis: the class axis, a tuple of axes, or None for every element.
        temperature: T > 0.
        where: boolean mask broadcastable to `x`; False entries get probability 0 and gradient 0.

    Returns:
        An array of the shape and dtype of `x`, rows summing to 1. A fully masked row gives zeros (and
        zero gradients); +inf entries share the mass equally; NaN propagates.

    Example:
        >>> import softxent.jax as sxj
        >>> sxj.softmax(jnp.array([1.0, 2.0, 3.0])).round(3)
        Array([0.09 , 0.245, 0.665], dtype=float32)

    See also: ``softxent.softmax`` (NumPy), ``softxent.torch.softmax``.
    """
    x, axes, temperature = _prepare(x, axis, temperature, where)
    if _no_classes(x, axes):
        return jnp.zeros_like(x)  # nothing to normalise: an empty result, as the NumPy and torch layers
    return ja.axes_restore(_softmax_jit(ja.axes_last(x, axes), temperature), x.shape, axes)


def log_softmax(x: Any, axis: Any = -1, *, temperature: float = 1.0, where: Any = None) -> jax.Array:
    """Log-probabilities along `axis`, for JAX: ``x_j / T - logsumexp(x / T)``.

    .. math:: \\log\\mathrm{softmax}(x)_j = d_j - \\operatorname{log1p}\\Big(\\sum_{k \\ne \\arg\\max}
       e^{d_k}\\Big), \\quad d = (x - \\max x) / T

    Both terms are <= 0, so nothing cancels: within 2 ulp (float32, without x64) / 4 ulp (float64) of
    exact. The gradient ``(g - softmax(x) sum_k g_k) / T`` comes from ``jax.custom_jvp`` (forward and
    reverse mode, higher derivatives) with the output as its only residual; a fully masked row has
    gradient 0.

    Args:
        x: real array; integers are taken as the default float dtype.
        axis: the class axis, a tuple of axes, or None for every element.
        temperature: T > 0 dividing the (shifted) scores.
        where: boolean mask broadcastable to `x`; False entries get -inf and gradient 0.

    Example:
        >>> import softxent.jax as sxj
        >>> [round(float(v), 4) for v in sxj.log_softmax(jnp.array([1.0, 2.0, 3.0]))]
        [-2.4076, -1.4076, -0.4076]

    See also: ``softxent.log_softmax`` (NumPy), ``softxent.torch.log_softmax``.
    """
    x, axes, temperature = _prepare(x, axis, temperature, where)
    if _no_classes(x, axes):
        return jnp.zeros_like(x)
    return ja.axes_restore(_log_softmax_jit(ja.axes_last(x, axes), temperature), x.shape, axes)


# custom_jvp rather than custom_vjp: the tangent rules below are linear in the tangent, so JAX's
# transpose gives the same backward (the output as the residual) and forward mode (jax.jacfwd,
# jax.hessian) works as well; the rules are JAX code that can be differentiated again.


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _softmax(rows, temperature):
    return _softmax_fwd(rows, temperature)[0]


def _softmax_fwd(rows, temperature):
    # the sum's terms written out once: the probabilities are written over them (ops/logsumexp/jax.py)
    stats = row_stats(rows.astype(ja.work_dtype(rows.dtype)), temperature, kept_terms=True)
    probs = stats.probs.astype(rows.dtype)
    # fully masked rows and rows holding +inf are constant in x (their limits): derivative 0 (rule 2)
    return probs, stats.masked | stats.infinite


def _softmax_jvp(temperature, primals, tangents):
    # d softmax = p * (dx - <p, dx>) / T
    probs, constant = _softmax_fwd(primals[0], temperature)
    work = ja.work_dtype(probs.dtype)
    p, dx = probs.astype(work), tangents[0].astype(work)
    dot = jnp.sum(p * dx, axis=-1, keepdims=True)
    tangent = jnp.where(constant[..., None], 0.0, p * (dx - dot) / temperature)
    return probs, tangent.astype(probs.dtype)


_softmax.defjvp(_softmax_jvp)
_softmax_jit = jax.jit(_softmax, static_argnums=(1,))


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _log_softmax(rows, temperature):
    return _log_softmax_fwd(rows, temperature)[0]


def _log_softmax_fwd(rows, temperature):
    stats = row_stats(rows.astype(ja.work_dtype(rows.dtype)), temperature)
    log_sum = jnp.where(stats.masked, 0.0, stats.log_sum)  # -inf - 0 keeps a masked row -inf, never NaN
    # (d_hi - L) + d_lo: both parts <= 0 (d_lo is below half an ulp of d_hi)
    d_lo = jnp.where(stats.d == stats.d_c, stats.d_lo, 0.0)  # no low part where the gap is clamped
    out = (stats.d - log_sum[..., None]) + d_lo
    # a row holding +inf: -inf off its +inf entries (the kernel shifted them by the largest float)
    out = jnp.where(stats.infinite[..., None] & (stats.z < stats.center[..., None]), -jnp.inf, out)
    return out.astype(rows.dtype), stats.masked | stats.infinite


def _log_softmax_jvp(temperature, primals, tangents):
    # d log_softmax = (dx - <softmax, dx>) / T; fully masked and +inf rows are constant (rule 2)
    out, constant = _log_softmax_fwd(primals[0], temperature)
    work = ja.work_dtype(out.dtype)
    lp, dx = out.astype(work), tangents[0].astype(work)
    tangent = (dx - jnp.sum(jnp.exp(lp) * dx, axis=-1, keepdims=True)) / temperature
    return out, jnp.where(constant[..., None], 0.0, tangent).astype(out.dtype)


_log_softmax.defjvp(_log_softmax_jvp)
_log_softmax_jit = jax.jit(_log_softmax, static_argnums=(1,))
