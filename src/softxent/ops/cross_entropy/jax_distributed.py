"""Vocab-parallel cross-entropy for JAX, inside ``shard_map``: each device holds a slice of the classes.

The row statistics are all-reduced over the mesh axis and the rest is local:

1. m = pmax of the local row maxima;
2. the sum of e below the max and the number of entries at the max, psum'd, give the sum without one
   max's own term, ``rest``, and L = log1p(rest): the single-device kernel's sums split over devices
   (the psum adds a handful of float32 partial sums, one rounding each);
3. the target's gap ``d_t`` (split exactly, hi and lo) lives on one device: psum of the masked local
   gather; label smoothing's ``sum_j d_j`` is psum'd the same way;
4. the loss and the local slice of the gradient then come from the single-device code
   (`row_losses`, `grad_columns`), with global class ids.

The spec's rules (coefficients, denominator, scale, reduction) run unchanged: the target rows are
the same on every device of the axis, so every device computes the same loss.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from softxent._jax import arrays as ja
from softxent._options import LossOptions
from softxent.ops.cross_entropy import spec
from softxent.ops.cross_entropy.jax import (Problem, denominator, finish_grad, grad_columns, row_losses)
from softxent.ops.logsumexp.jax import RowStats, combine_rest, exp_sums, limit_cap, log_sum


def vocab_parallel_cross_entropy(local_logits: Any, target: Any, *, axis_name: Any, ignore_index: int = -100,
                                 reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                                 num_items: Any = None) -> jax.Array:
    """Cross-entropy with the vocabulary sharded over a mesh axis, for use inside ``jax.shard_map``.

    .. math:: \\ell_i = \\mathrm{lse}(x_i) - x_{i, t_i}, \\quad \\mathrm{lse} \\text{ all-reduced over the
       shards of the class axis}

    Equal to ``cross_entropy(logits, target, ...)`` on the full vocabulary, loss and gradient (the
    local slice of it), exact as the single-device loss. Device k of `axis_name` holds classes
    ``[k V_local, (k + 1) V_local)`` (shard_map's even split of the last axis); `target` holds global
    class indices, the same on every device of the axis.

    Args:
        local_logits: (..., V_local) this device's slice of the logits (classes last).
        target: integer class indices of shape local_logits.shape[:-1] (global ids).
        axis_name: the mesh axis the vocabulary is sharded over (a name or a tuple of names).
        ignore_index, reduction, label_smoothing, z_loss, num_items: as `cross_entropy`.

    Returns:
        The loss (per row for ``"none"``), the same on every device of the axis.

    Example:
        >>> import softxent.jax as sxj
        >>> from jax.sharding import Mesh, PartitionSpec as P
        >>> mesh = Mesh(jax.devices()[:1], ("v",))
        >>> f = jax.shard_map(partial(sxj.vocab_parallel_cross_entropy, axis_name="v"), mesh=mesh,
        ...                   in_specs=(P(None, "v"), P()), out_specs=P())
        >>> round(float(f(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([2]))), 4)
        0.4076

    See also: ``softxent.torch.distributed.vocab_parallel_cross_entropy``, `cross_entropy`.

    References: Shoeybi et al. (2019), Megatron-LM (vocab-parallel cross-entropy).
    """
    local_logits = ja.as_float(local_logits, "local_logits")
    if local_logits.ndim == 0:
        raise ValueError("local_logits must have at least one dimension (the classes); got a scalar")
    options = LossOptions(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                          z_loss=z_loss)
    target = ja.as_labels(target, "target")
    world = lax.axis_size(axis_name)
    local = local_logits.shape[-1]
    num_classes = local * world
    logits_shape = tuple(local_logits.shape[:-1]) + (num_classes,)
    kind = spec.check_target(logits_shape, ja.kind_view(target), local_logits.ndim - 1, logits_name="logits")
    if kind != spec.INDEX:
        raise TypeError("target must hold class indices for vocab_parallel_cross_entropy (the shape of "
                        f"local_logits without the class axis, an integer dtype); got shape {tuple(target.shape)}")
    num_items = spec.check_num_items(num_items, options.reduction)
    num_items = None if num_items is None else jnp.asarray(num_items)
    if ja.is_concrete(target):
        with jax.ensure_compile_time_eval():
            spec.check_labels(jnp, target, num_classes, options.ignore_index)
    rows = local_logits.reshape(-1, local)
    loss = _vocab_parallel_jit(rows, target.reshape(-1), num_items, (Problem(options, kind, num_classes), axis_name))
    return loss.reshape(target.shape) if options.reduction == "none" else loss


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _vocab_parallel(rows, labels, num_items, static):
    return _vocab_parallel_fwd(rows, labels, num_items, static)[0]


def _vocab_parallel_fwd(rows, labels, num_items, static):
    problem, axis_name = static
    options = problem.options
    work = ja.work_dtype(rows.dtype)
    num_rows, local = rows.shape
    offset = lax.axis_index(axis_name) * local
    denom = denominator(problem, labels, None, num_rows, num_items, work)
    scale = spec.gradient_scale(jnp, denom, work)
    if num_rows == 0 or local == 0:
        losses, grad = jnp.zeros((num_rows,), work), jnp.zeros(rows.shape, rows.dtype)
    else:
        z = rows.astype(work)
        columns = offset + jnp.arange(local)
        # 1. the global max
        m = lax.pmax(jnp.max(z, axis=-1), axis_name)
        masked, infinite = m == -jnp.inf, m == jnp.inf
        cap = limit_cap(infinite, z.dtype)
        center = jnp.where(infinite, cap, jnp.where(jnp.isinf(m), jnp.zeros_like(m), m))
        # 2. the sum without one max's own term, over every device: the parts all-reduced, then combined
        below, ties = lax.psum(exp_sums(z, cap, center), axis_name)
        rest = combine_rest(below, ties)
        _, total, L = log_sum(rest, masked, m)
        stats = RowStats(z, cap, 1.0, center, rest, total, L, masked, infinite)
        d, d_c, d_lo, e = stats.entries()
        # 3. the target's gap, held by one device
        z = stats.z
        mine = columns == labels[:, None]
        gap = lax.psum(jnp.stack([jnp.sum(jnp.where(mine, d, 0.0), axis=-1),
                                  jnp.sum(jnp.where(mine & (d == d_c), d_lo, 0.0), axis=-1)]), axis_name)
        losses, plan = row_losses(stats, labels, None, None, problem, scale, work, target_gap=(gap[0], gap[1]),
                                  class_sum=partial(lax.psum, axis_name=axis_name))
        grad = finish_grad(grad_columns(e, columns, plan, problem), plan, None, options, rows.dtype)
    loss = spec.reduce(jnp, losses, options.reduction, denom).astype(rows.dtype)
    return loss, grad


def _vocab_parallel_bwd(static, grad, g):
    problem, _ = static
    g = g[..., None] if problem.options.reduction == "none" else g
    return grad * g.astype(grad.dtype), None, None


_vocab_parallel.defvjp(_vocab_parallel_fwd, _vocab_parallel_bwd)
_vocab_parallel_jit = jax.jit(_vocab_parallel, static_argnums=(3,))
