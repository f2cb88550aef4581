"""Linear cross-entropy for JAX: ``cross_entropy(x @ w.T + bias, target)`` without the (N, V) logits.

Each sweep is a ``lax.scan`` over chunks, so neither the forward nor the backward holds more than one
chunk of logits.

``"mean"`` and ``"sum"`` (a scalar cotangent): one forward sweep over chunks of rows computes a chunk's
logits (rows, V), its losses and its gradient (the row kernel), and folds the gradient into dx (the
chunk's rows written), dw and dbias (accumulated) before the next chunk: three matrix products, as the
unfused computation, and the residual of ``jax.custom_vjp`` is the gradient itself.

``"none"`` and the token log-probs (a cotangent per row): dw = sum_i g_i dlogits_i^T x_i needs the
cotangents, which only the backward has. The forward sweep keeps O(N) per-row statistics (the shift,
the sum without the max, the spec's coefficients); the backward sweeps slices of the vocabulary,
recomputing the logits of all rows on a slice of V columns from x and that slice of w, and folds
their gradient into dx (accumulated), dw and dbias (their slice written): four matrix products, and
the residuals are x, w, bias, the targets and the per-row statistics, never (N, V).
A chunk boundary that does not divide N or V is handled by clamping the last chunk's start (it
overlaps the one before, which it recomputes bit for bit), so nothing is padded or copied.
(Wijmans et al. 2024, "Cut your losses in large-vocabulary language models", recompute the same way.)
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from softxent import _validation as v
from softxent._jax import arrays as ja
from softxent._options import LossOptions
from softxent.ops.cross_entropy import spec
from softxent.ops.cross_entropy.jax import (checked_problem, denominator, finish_grad,
                                            grad_columns, row_losses, softcapped)
from softxent.ops.linear_cross_entropy.numpy import check_layer_shapes
from softxent.ops.logsumexp.jax import limit_rows, row_stats, shifted_exp

# Logits per chunk, about 8M (32 MiB in float32): XLA keeps a few chunk-sized temporaries alive (the
# logits and their terms, the gradient), which stays far below one (N, V) array at LLM sizes. Each chunk
# also adds its g.T @ x into the whole (V, D) dw, a pass over dw per chunk: 8M rather than 4M measured
# 1.5x faster at N=2048, D=1024, V=32000 (compiled temporaries 0.32x one (N, V) array at N=4096).
CHUNK_ELEMENTS = 1 << 23


def checked_layer(x: Any, w: Any, bias: Any):
    """x, w, bias as JAX float arrays, with the NumPy layer's shape rule (one rule, one set of messages)."""
    x, w = ja.as_float(x, "x"), ja.as_float(w, "w")
    bias = None if bias is None else ja.as_float(bias, "bias")
    check_layer_shapes(x.shape, w.shape, None if bias is None else bias.shape)
    return x, w, bias


def chunk_sizes(num_rows: int, num_classes: int, chunk_size: int | None) -> tuple[int, int]:
    """(rows per forward chunk, columns per backward chunk), each chunk about the same number of logits."""
    rows = chunk_size or max(1, CHUNK_ELEMENTS // max(1, num_classes))
    rows = max(1, min(rows, num_rows))
    cols = max(1, min(num_classes, (rows * num_classes) // max(1, num_rows)))
    return rows, cols


def logits_of(x, w, bias, work):
    """x @ w.T + bias accumulated in the work dtype (float32 for 16-bit inputs)."""
    out = lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=work)
    return out if bias is None else out + bias.astype(work)


def row_sweep(num_rows: int, step: int, body: Callable, init):
    """Run body(start) -> per-row pytree of `step` rows over chunks of rows; write them into `init`."""
    count = -(-num_rows // step)

    def scan(carry, k):
        start = jnp.minimum(k * step, num_rows - step)  # the last chunk overlaps: same rows, same bits
        out = body(start)
        carry = jax.tree.map(lambda c, o: lax.dynamic_update_slice_in_dim(c, o.astype(c.dtype), start, 0), carry, out)
        return carry, None

    return lax.scan(scan, init, jnp.arange(count))[0]


def column_sweep(num_classes: int, step: int, body: Callable, dx, dw, db):
    """body(start, fresh) -> (g, w_slice) per slice of `step` columns; dx += g @ w_slice on fresh columns,
    dw[slice] = g.T @ x-rows and dbias[slice] = sum g are written by `body`'s caller through `finish`."""
    count = -(-num_classes // step)

    def scan(carry, k):
        dx, dw, db = carry
        start = jnp.minimum(k * step, num_classes - step)
        fresh = (start + jnp.arange(step)) >= k * step  # columns the previous slice did not cover
        g, w_slice, rows = body(start)
        dx = dx + jnp.where(fresh, g, 0.0) @ w_slice
        dw = lax.dynamic_update_slice_in_dim(dw, (g.T @ rows).astype(dw.dtype), start, 0)
        if db is not None:
            db = lax.dynamic_update_slice_in_dim(db, jnp.sum(g, axis=0).astype(db.dtype), start, 0)
        return (dx, dw, db), None

    return lax.scan(scan, (dx, dw, db), jnp.arange(count))[0]


def linear_cross_entropy(x: Any, w: Any, target: Any, *, bias: Any = None, weight: Any = None,
                         ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                         z_loss: float = 0.0, softcap: float | None = None, temperature: float = 1.0,
                         num_items: Any = None, chunk_size: int | None = None) -> jax.Array:
    """Cross-entropy of a linear layer's logits for JAX, ``cross_entropy(x @ w.T + bias, target)``, chunked.

    .. math:: \\ell_i = \\mathrm{CE}(x_i W^\\top + b,\\ t_i)

    The LLM head's loss and softmax regression's: the (N, V) logits are never materialised, neither
    in the forward (chunks of `chunk_size` rows, ``lax.scan``) nor in the backward (slices of the
    vocabulary holding as many logits). Same options, semantics and errors as `cross_entropy`
    (the spec's rules on jax.numpy); exact in float32 without x64.

    Args:
        x: inputs (..., D); 16-bit floats are multiplied and accumulated in float32.
        w: the layer's weight, (V, D).
        target: class indices of shape x.shape[:-1], or probabilities of shape x.shape[:-1] + (V,).
        bias: (V,) or None.
        weight, ignore_index, reduction, label_smoothing, z_loss, softcap, temperature, num_items: as
            `cross_entropy`.
        chunk_size: rows of logits per forward chunk (the backward's vocabulary slices hold as many
            logits); None picks about 8M logits per chunk.

    Returns:
        The loss in the dtype of x (per row for ``"none"``). Differentiable in x, w and bias.

    Example:
        >>> import softxent.jax as sxj
        >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]]); w = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> bool(jnp.isclose(sxj.linear_cross_entropy(x, w, jnp.array([0, 2]), chunk_size=1),
        ...                  sxj.cross_entropy(x @ w.T, jnp.array([0, 2]))))
        True

    See also: ``softxent.linear_cross_entropy`` (NumPy), ``softxent.torch.linear_cross_entropy``.

    References: Wijmans et al. (2024), "Cut your losses in large-vocabulary language models".
    """
    options = LossOptions(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                          z_loss=z_loss, softcap=softcap, temperature=temperature)
    chunk_size = v.check_chunk_size(chunk_size)
    x, w, bias = checked_layer(x, w, bias)
    num_classes, features = w.shape
    target = ja.as_labels(target, "target")
    logits_shape = tuple(x.shape[:-1]) + (num_classes,)
    problem, weight, num_items = checked_problem(logits_shape, num_classes, target, weight, num_items, options,
                                                 x.ndim - 1)
    rows = x.reshape(-1, features)
    num_rows = rows.shape[0]
    target_rows = target.reshape(-1) if problem.kind == spec.INDEX else target.reshape(-1, num_classes)
    steps = chunk_sizes(num_rows, num_classes, chunk_size)
    loss = _linear_jit(rows, w, bias, target_rows, weight, num_items, (problem, steps))
    return loss.reshape(x.shape[:-1]) if options.reduction == "none" else loss


def _dtypes(rows, w, bias):
    out = jnp.result_type(rows, w, *(() if bias is None else (bias,)))
    return out, ja.work_dtype(out)


@partial(jax.custom_vjp, nondiff_argnums=(6,))
def _linear(rows, w, bias, target, weight, num_items, static):
    return _linear_fwd(rows, w, bias, target, weight, num_items, static)[0]


def _linear_fwd(rows, w, bias, target, weight, num_items, static):
    problem, (row_step, _) = static
    out_dtype, work = _dtypes(rows, w, bias)
    num_rows, num_classes = rows.shape[0], w.shape[0]
    labels = target if problem.kind == spec.INDEX else None
    denom = denominator(problem, labels, weight, num_rows, num_items, work)
    scale = spec.gradient_scale(jnp, denom, work)
    options = problem.options
    in_forward = options.reduction != "none"  # a scalar cotangent: the gradients in this very sweep
    saved = grads = None
    if num_rows == 0 or num_classes == 0:
        losses = jnp.zeros((num_rows,), work)
        if in_forward:
            grads = (jnp.zeros(rows.shape, work), jnp.zeros(w.shape, work),
                     None if bias is None else jnp.zeros(bias.shape, work))
    else:
        def body(start):
            chunk = lax.dynamic_slice_in_dim(rows, start, row_step, 0)
            t = lax.dynamic_slice_in_dim(target, start, row_step, 0)
            z, tanh = softcapped(logits_of(chunk, w, bias, work), options)
            stats = row_stats(z, options.temperature, kept_terms=in_forward)  # the gradient takes them over
            probs = t.astype(work) if labels is None else None
            losses, plan = row_losses(stats, t if labels is not None else None, probs, weight, problem, scale, work)
            if not in_forward:
                return (losses, plan, stats.center, stats.infinite), None
            coef_cols = None
            if labels is None:
                coef_cols = spec.probability_coefficients(jnp, probs, weight, options, num_classes, work)
            weight_cols = None if weight is None else weight.astype(work)
            grad = grad_columns(stats.e, jnp.arange(num_classes), plan, problem, weight_cols, coef_cols)
            grad = finish_grad(grad, plan, tanh, options, work)
            return (losses, grad @ w.astype(work)), (grad, chunk.astype(work))

        if in_forward:
            # chunks of rows, each chunk's gradient folded into dw and dbias before the next one; the last
            # chunk overlaps the one before (clamped start): its repeated rows are not added twice
            count = -(-num_rows // row_step)

            def scan(carry, k):
                losses, dx, dw, db = carry
                start = jnp.minimum(k * row_step, num_rows - row_step)
                (chunk_losses, chunk_dx), (grad, chunk) = body(start)
                fresh = ((start + jnp.arange(row_step)) >= k * row_step)[:, None]
                grad = jnp.where(fresh, grad, 0.0)
                losses = lax.dynamic_update_slice_in_dim(losses, chunk_losses, start, 0)
                dx = lax.dynamic_update_slice_in_dim(dx, chunk_dx, start, 0)
                dw = dw + grad.T @ chunk
                db = None if db is None else db + jnp.sum(grad, axis=0)
                return (losses, dx, dw, db), None

            init = (jnp.zeros((num_rows,), work), jnp.zeros(rows.shape, work), jnp.zeros(w.shape, work),
                    None if bias is None else jnp.zeros(bias.shape, work))
            losses, *grads = lax.scan(scan, init, jnp.arange(count))[0]
            grads = tuple(grads)
        else:
            first = lambda start: body(start)[0]
            init = jax.eval_shape(lambda: first(0))
            init = jax.tree.map(lambda s: jnp.zeros((num_rows,) + s.shape[1:], s.dtype), init)
            losses, plan, center, infinite = row_sweep(num_rows, row_step, first, init)
            saved = (plan, center, infinite)
    loss = spec.reduce(jnp, losses, options.reduction, denom).astype(out_dtype)
    if in_forward:  # the residual is the gradient itself, in the inputs' dtypes
        dx, dw, db = grads
        grads = (dx.astype(rows.dtype), dw.astype(w.dtype), None if bias is None else db.astype(bias.dtype))
        return loss, (None, None, None, None, None, None, grads)
    return loss, (rows, w, bias, target, weight, saved, None)


def _linear_bwd(static, residual, g):
    problem, (_, col_step) = static
    rows, w, bias, target, weight, saved, grads = residual
    if grads is not None:  # "mean" / "sum": computed in the forward sweep, scaled by the cotangent
        dx, dw, db = grads
        return (dx * g.astype(dx.dtype), dw * g.astype(dw.dtype), None if db is None else db * g.astype(db.dtype),
                None, None, None)
    out_dtype, work = _dtypes(rows, w, bias)
    num_classes = w.shape[0]
    dx, dw = jnp.zeros(rows.shape, work), jnp.zeros(w.shape, work)
    db = None if bias is None else jnp.zeros(bias.shape, work)
    if saved is not None:
        plan, center, infinite = saved
        upstream = g.astype(work)
        options = problem.options

        def body(start):
            w_slice = lax.dynamic_slice_in_dim(w, start, col_step, 0)
            b_slice = None if bias is None else lax.dynamic_slice_in_dim(bias, start, col_step, 0)
            z, t = softcapped(logits_of(rows, w_slice, b_slice, work), options)
            e = shifted_exp(limit_rows(z, infinite)[0], center, options.temperature)[3]
            columns = start + jnp.arange(col_step)
            weight_cols = None if weight is None else lax.dynamic_slice_in_dim(weight, start, col_step, 0).astype(work)
            coef_cols = None
            if problem.kind == spec.PROBS:
                probs = lax.dynamic_slice_in_dim(target, start, col_step, 1).astype(work)
                coef_cols = spec.probability_coefficients(jnp, probs, weight_cols, options, num_classes, work)
            grad = grad_columns(e, columns, plan, problem, weight_cols, coef_cols)
            grad = finish_grad(grad, plan, t, options, work) * upstream[:, None]
            return grad, w_slice.astype(work), rows.astype(work)

        dx, dw, db = column_sweep(num_classes, col_step, body, dx, dw, db)
    return (dx.astype(rows.dtype), dw.astype(w.dtype), None if bias is None else db.astype(bias.dtype),
            None, None, None)


_linear.defvjp(_linear_fwd, _linear_bwd)
_linear_jit = jax.jit(_linear, static_argnums=(6,))
