"""Token log-probabilities and entropy for JAX (RL: policy log-probs and an entropy bonus).

With z = softcap-then-temperature(logits), d = (z - m) / T split exactly and L = log1p(sum without the
max) from the row kernel (ops/logsumexp/jax.py):

    log p_t = -((-d_t) + L),        H = L + sum_j p_j (-d_j)

each a sum of terms >= 0, so both stay exact where a confident policy has p_t near 1 and H near 0.
Their derivatives in d are ``onehot(t) - p`` (at the max, ``1 - p_t`` as ``sum_{j != t} p_j``) and
``-p_j (log p_j + H)``; softcap's and T's chain rule follow. The semantics are softxent.torch's:
ignored rows (and fully masked rows) give 0 and a zero gradient; 16-bit inputs give float32.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from softxent import _validation as v
from softxent._jax import arrays as ja
from softxent._options import LossOptions
from softxent.ops.cross_entropy import spec
from softxent.ops.cross_entropy.jax import Problem, chain, checked_logits, softcapped, target_gap_of
from softxent.ops.linear_cross_entropy.jax import (checked_layer, chunk_sizes, column_sweep, logits_of,
                                                   row_sweep)
from softxent.ops.logsumexp.jax import RowStats, limit_rows, row_stats, shifted_exp


class TokenRows(NamedTuple):
    """What the gradient needs per row."""

    kept: Any
    bad: Any
    safe: Any
    at_top: Any  # the target holds the row max
    rest: Any
    total: Any
    log_sum: Any
    entropy: Any


def _checked_labels(logits_shape, num_classes, target, class_axis, ignore_index, logits_name="logits"):
    kind = spec.check_target(logits_shape, ja.kind_view(target), class_axis, logits_name=logits_name)
    if kind != spec.INDEX:
        raise TypeError(f"target must hold class indices (the shape of {logits_name} without the class axis, an "
                        f"integer dtype); got probabilities of shape {tuple(target.shape)}")
    if ja.is_concrete(target):
        with jax.ensure_compile_time_eval():  # concrete arrays captured by a jitted function: still eager
            spec.check_labels(jnp, target, num_classes, ignore_index)


def token_rows(stats: RowStats, labels, options: LossOptions, num_classes: int):
    """(log_probs, entropy, TokenRows) per row from the row kernel's statistics."""
    kept = (labels != options.ignore_index) & ~stats.masked
    bad = spec.bad_labels(labels, num_classes, options.ignore_index)
    safe = jnp.clip(jnp.where(kept, labels, 0), 0, max(0, num_classes - 1))
    d_t, d_t_lo = target_gap_of(stats, safe)
    L = stats.log_sum
    log_prob = -((-d_t) + (L - d_t_lo))
    total = jnp.where(stats.total > 0, stats.total, 1.0)
    p = stats.e / total[..., None]
    # the clamped gap: p = 0 there, so p * d_c = 0 without a select (a -inf gap would give 0 * inf)
    entropy = L + jnp.sum(p * -stats.d_c, axis=-1)
    log_prob = jnp.where(bad, jnp.nan, jnp.where(kept, log_prob, 0.0))
    entropy = jnp.where(bad, jnp.nan, jnp.where(kept, entropy, 0.0))
    return log_prob, entropy, TokenRows(kept, bad, safe, d_t == 0, stats.rest, total, L, entropy)


def token_grad_columns(e, d_c, d_lo, columns, rows: TokenRows, g_lp, g_h, t, options: LossOptions, dtype):
    """d(sum g_lp log_p + sum g_h H)/dz on some columns (global ids `columns`), from e = exp(d)."""
    p = e / rows.total[..., None]
    at_t = columns == rows.safe[..., None]
    dlp = jnp.where(at_t, 1.0 - p, -p)
    # 1 - p_t at the max as sum_{j != t} p_j: no cancellation when p_t is near 1 (rule 11)
    dlp = jnp.where(at_t & rows.at_top[..., None], (rows.rest / rows.total)[..., None], dlp)
    grad = g_lp[..., None] * dlp
    if g_h is not None:
        log_p = (d_c - rows.log_sum[..., None]) + d_lo  # finite: p = 0 where the gap is clamped
        grad = grad - g_h[..., None] * (p * (log_p + rows.entropy[..., None]))
    grad = chain(grad, t, options)
    grad = jnp.where(rows.kept[..., None], grad, 0.0)
    return jnp.where(rows.bad[..., None], jnp.nan, grad).astype(dtype)


def _out_dtype(dtype):
    """float32 for 16-bit inputs (docs/semantics.md), else the input's dtype."""
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def token_log_probs(logits: Any, target: Any, *, axis: int = -1, temperature: float = 1.0,
                    softcap: float | None = None, ignore_index: int = -100, return_entropy: bool = False):
    """The log-probability of each target token, ``log softmax(z)_t``, and optionally the entropy, for JAX.

    .. math:: \\log p_t = -\\big((-d_t) + L\\big), \\qquad H = L + \\sum_j p_j\\,(-d_j),
       \\quad d = (\\mathrm{softcap}(x) - m) / T,\\ L = \\log\\sum_j e^{d_j}

    Both exact in float32 without x64 (terms >= 0). Differentiable by ``jax.custom_jvp`` (either mode,
    any order) with the Jacobian rows computed in the forward sweep. Ignored and fully masked rows give 0 and a zero
    gradient. Same as ``-cross_entropy(logits, target, reduction="none")`` for the log-probabilities.

    Args:
        logits: real array with the classes on `axis`.
        target: integer class indices, the shape of `logits` without `axis`.
        axis: the class axis (an int; ``dim`` in the torch layer).
        temperature, softcap: as `cross_entropy` (softcap first, then the temperature after the shift).
        ignore_index: the label of rows to leave out.
        return_entropy: also return the per-row entropy of softmax(z).

    Returns:
        log_probs with the shape of `target` (float32 for 16-bit logits), or ``(log_probs, entropy)``.

    Example:
        >>> import softxent.jax as sxj
        >>> lp, h = sxj.token_log_probs(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([2]), return_entropy=True)
        >>> round(float(lp[0]), 4), round(float(h[0]), 4)
        (-0.4076, 0.8324)

    See also: ``softxent.token_log_probs`` (NumPy), ``softxent.torch.token_log_probs``,
    `linear_token_log_probs`.

    References: Blanchard, Higham & Higham (2021); Schulman et al. (2017), PPO (the entropy bonus).
    """
    logits, class_axis = checked_logits(logits, axis, "token_log_probs")
    options = LossOptions(ignore_index=ignore_index, softcap=softcap, temperature=temperature)
    target = ja.as_labels(target, "target")
    num_classes = logits.shape[class_axis]
    _checked_labels(logits.shape, num_classes, target, class_axis, options.ignore_index)
    rows = ja.axes_last(logits, (class_axis,)).reshape(-1, num_classes)
    problem = Problem(options, spec.INDEX, num_classes)
    lp, h = _token_jit(rows, target.reshape(-1), (problem, bool(return_entropy)))
    lp = lp.reshape(target.shape)
    return (lp, h.reshape(target.shape)) if return_entropy else lp


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _token(rows, labels, static):
    return _token_fwd(rows, labels, static)[0]


def _token_fwd(rows, labels, static, kept_terms=False):
    """((log_probs, entropy), (d log_probs / d rows, d entropy / d rows or None)), one row pass."""
    problem, with_entropy = static
    options = problem.options
    work, out = ja.work_dtype(rows.dtype), _out_dtype(rows.dtype)
    num_rows, num_classes = rows.shape
    if num_rows == 0 or num_classes == 0:
        zeros = jnp.zeros((num_rows,), out)
        return (zeros, zeros), (jnp.zeros(rows.shape, rows.dtype), jnp.zeros(rows.shape, rows.dtype))
    z, t = softcapped(rows.astype(work), options)
    stats = row_stats(z, options.temperature, kept_terms=kept_terms)  # the Jacobian rows take them over
    lp, h, token = token_rows(stats, labels, options, num_classes)
    columns = jnp.arange(num_classes)
    ones, nothing = jnp.ones((num_rows,), work), jnp.zeros((num_rows,), work)
    # the two Jacobian rows, in the forward sweep: the backward only scales them by the cotangents
    d_lp = token_grad_columns(stats.e, stats.d_c, stats.d_lo, columns, token, ones, None, t, options, rows.dtype)
    d_h = None
    if with_entropy:
        d_h = token_grad_columns(stats.e, stats.d_c, stats.d_lo, columns, token, nothing, ones, t, options,
                                 rows.dtype)
    return (lp.astype(out), h.astype(out)), (d_lp, d_h)


def _token_jvp(static, primals, tangents):
    # the tangents <Jacobian row, d rows> are linear: JAX's transpose keeps the Jacobian rows as the
    # only residuals, and forward mode and higher derivatives work (custom_jvp, not custom_vjp)
    (lp, h), (d_lp, d_h) = _token_fwd(primals[0], primals[1], static, kept_terms=True)
    work = ja.work_dtype(d_lp.dtype)
    d_rows = tangents[0].astype(work)
    t_lp = jnp.sum(d_lp.astype(work) * d_rows, axis=-1).astype(lp.dtype)
    t_h = jnp.zeros_like(h) if d_h is None else jnp.sum(d_h.astype(work) * d_rows, axis=-1).astype(h.dtype)
    return (lp, h), (t_lp, t_h)


_token.defjvp(_token_jvp)
_token_jit = jax.jit(_token, static_argnums=(2,))


def linear_token_log_probs(x: Any, w: Any, target: Any, *, bias: Any = None, temperature: float = 1.0,
                           softcap: float | None = None, ignore_index: int = -100, return_entropy: bool = False,
                           chunk_size: int | None = None):
    """`token_log_probs` of ``x @ w.T + bias`` without the (N, V) logits, for JAX.

    Chunked as `linear_cross_entropy`: the forward scans chunks of rows and keeps O(N) statistics, the
    backward scans slices of the vocabulary, recomputing their logits, and folds each slice's gradient
    into dx, dw and dbias.

    Args:
        x: inputs (..., D); w: (V, D); target: class indices of shape x.shape[:-1]; bias: (V,) or None.
        temperature, softcap, ignore_index, return_entropy: as `token_log_probs`.
        chunk_size: rows of logits per forward chunk; None picks about 8M logits per chunk.

    Returns:
        log_probs (shape of target; float32 for 16-bit inputs), or ``(log_probs, entropy)``.

    Example:
        >>> import softxent.jax as sxj
        >>> x = jnp.array([[1.0, 0.0]]); w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
        >>> round(float(sxj.linear_token_log_probs(x, w, jnp.array([0]))[0]), 4)   # log softmax([1, 0])_0
        -0.3133

    See also: ``softxent.linear_token_log_probs`` (NumPy), ``softxent.torch.linear_token_log_probs``.
    """
    options = LossOptions(ignore_index=ignore_index, softcap=softcap, temperature=temperature)
    chunk_size = v.check_chunk_size(chunk_size)
    x, w, bias = checked_layer(x, w, bias)
    num_classes, features = w.shape
    target = ja.as_labels(target, "target")
    _checked_labels(tuple(x.shape[:-1]) + (num_classes,), num_classes, target, x.ndim - 1, options.ignore_index,
                    logits_name="the logits x @ w.T")
    rows = x.reshape(-1, features)
    steps = chunk_sizes(rows.shape[0], num_classes, chunk_size)
    problem = Problem(options, spec.INDEX, num_classes)
    lp, h = _linear_token_jit(rows, w, bias, target.reshape(-1), (problem, bool(return_entropy), steps))
    lp = lp.reshape(target.shape)
    return (lp, h.reshape(target.shape)) if return_entropy else lp


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _linear_token(rows, w, bias, labels, static):
    return _linear_token_fwd(rows, w, bias, labels, static)[0]


def _linear_token_fwd(rows, w, bias, labels, static):
    problem, _, (row_step, _) = static
    options = problem.options
    in_dtype = jnp.result_type(rows, w, *(() if bias is None else (bias,)))
    work, out = ja.work_dtype(in_dtype), _out_dtype(in_dtype)
    num_rows, num_classes = rows.shape[0], w.shape[0]
    if num_rows == 0 or num_classes == 0:
        zeros = jnp.zeros((num_rows,), out)
        return (zeros, zeros), (rows, w, bias, None)

    def body(start):
        chunk = lax.dynamic_slice_in_dim(rows, start, row_step, 0)
        t = lax.dynamic_slice_in_dim(labels, start, row_step, 0)
        z, _ = softcapped(logits_of(chunk, w, bias, work), options)
        stats = row_stats(z, options.temperature)
        lp, h, token = token_rows(stats, t, options, num_classes)
        return lp, h, token, stats.center, stats.infinite

    init = jax.eval_shape(lambda: body(0))
    init = jax.tree.map(lambda s: jnp.zeros((num_rows,) + s.shape[1:], s.dtype), init)
    lp, h, token, center, infinite = row_sweep(num_rows, row_step, body, init)
    return (lp.astype(out), h.astype(out)), (rows, w, bias, (token, center, infinite))


def _linear_token_bwd(static, residual, cotangents):
    problem, with_entropy, (_, col_step) = static
    options = problem.options
    rows, w, bias, saved = residual
    work = ja.work_dtype(jnp.result_type(rows, w, *(() if bias is None else (bias,))))
    num_classes = w.shape[0]
    dx, dw = jnp.zeros(rows.shape, work), jnp.zeros(w.shape, work)
    db = None if bias is None else jnp.zeros(bias.shape, work)
    if saved is not None:
        token, center, infinite = saved
        g_lp = cotangents[0].astype(work)
        g_h = cotangents[1].astype(work) if with_entropy else None

        def body(start):
            w_slice = lax.dynamic_slice_in_dim(w, start, col_step, 0)
            b_slice = None if bias is None else lax.dynamic_slice_in_dim(bias, start, col_step, 0)
            z, t = softcapped(logits_of(rows, w_slice, b_slice, work), options)
            _, d_c, d_lo, e = shifted_exp(limit_rows(z, infinite)[0], center, options.temperature)
            columns = start + jnp.arange(col_step)
            grad = token_grad_columns(e, d_c, d_lo, columns, token, g_lp, g_h, t, options, work)
            return grad, w_slice.astype(work), rows.astype(work)

        dx, dw, db = column_sweep(num_classes, col_step, body, dx, dw, db)
    return (dx.astype(rows.dtype), dw.astype(w.dtype), None if bias is None else db.astype(bias.dtype), None)


_linear_token.defvjp(_linear_token_fwd, _linear_token_bwd)
_linear_token_jit = jax.jit(_linear_token, static_argnums=(4,))
