"""softmax and log-softmax for JAX, with `jax.custom_vjp` gradients.

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


def softmax(x: Any, axis: Any = -1, *, temperature: float = 1.0, where: Any = None) -> jax.Array:
    """Probabilities from scores along `axis`, for JAX.

    .. math:: \\mathrm{softmax}(x)_j = \\frac{e^{(x_j - m)/T}}{\\sum_k e^{(x_k - m)/T}}, \\quad m = \\max_k x_k

    Shifted by the max before the temperature divides (``x / T`` first overflows). The gradient,
    ``p * (g - sum_k p_k g_k) / T``, comes from ``jax.custom_vjp`` with the output as its only residual.

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
    return ja.axes_restore(_softmax_jit(ja.axes_last(x, axes), temperature), x.shape, axes)


def log_softmax(x: Any, axis: Any = -1, *, temperature: float = 1.0, where: Any = None) -> jax.Array:
    """Log-probabilities along `axis`, for JAX: ``x_j / T - logsumexp(x / T)``.

    .. math:: \\log\\mathrm{softmax}(x)_j = d_j - \\operatorname{log1p}\\Big(\\sum_{k \\ne \\arg\\max}
       e^{d_k}\\Big), \\quad d = (x - \\max x) / T

    Both terms are <= 0, so nothing cancels: within 2 ulp (float32, without x64) / 4 ulp (float64) of
    exact. The gradient ``(g - softmax(x) sum_k g_k) / T`` comes from ``jax.custom_vjp`` with the
    output as its only residual; a fully masked row has gradient 0.

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
    return ja.axes_restore(_log_softmax_jit(ja.axes_last(x, axes), temperature), x.shape, axes)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _softmax(rows, temperature):
    return _softmax_fwd(rows, temperature)[0]


def _softmax_fwd(rows, temperature):
    stats = row_stats(rows.astype(ja.work_dtype(rows.dtype)), temperature)
    probs = stats.probs.astype(rows.dtype)
    # fully masked rows and rows holding +inf are constant in x (their limits): gradient 0 (rule 2)
    return probs, (probs, stats.masked | stats.infinite)


def _softmax_bwd(temperature, residual, g):
    probs, constant = residual
    work = ja.work_dtype(probs.dtype)
    p, g = probs.astype(work), g.astype(work)
    dot = jnp.sum(p * g, axis=-1, keepdims=True)
    grad = jnp.where(constant[..., None], 0.0, p * (g - dot) / temperature)
    return (grad.astype(probs.dtype),)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)
_softmax_jit = jax.jit(_softmax, static_argnums=(1,))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
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
    out = out.astype(rows.dtype)
    return out, (out, stats.masked | stats.infinite)


def _log_softmax_bwd(temperature, residual, g):
    out, constant = residual  # fully masked and +inf rows: constant in x, gradient 0 (rule 2)
    work = ja.work_dtype(out.dtype)
    lp, g = out.astype(work), g.astype(work)
    grad = (g - jnp.exp(lp) * jnp.sum(g, axis=-1, keepdims=True)) / temperature
    return (jnp.where(constant[..., None], 0.0, grad).astype(out.dtype),)


_log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)
_log_softmax_jit = jax.jit(_log_softmax, static_argnums=(1,))
