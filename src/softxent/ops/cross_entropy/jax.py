"""Cross-entropy for JAX: the spec's rules (ops/cross_entropy/spec.py) on jax.numpy, one fused row pass.

The spec runs here with ``xp = jax.numpy``: the target's kind, the coefficients a_j, the mean's
denominator with `num_items`, the gradient scale and the reduction are the very functions the NumPy
and torch layers call. This module only computes rows:

1. z = softcap(x) (a -inf logit stays -inf), then the row kernel (ops/logsumexp/jax.py): the shift,
   ``d = (z - m) / T`` split exactly, e = exp(d), the sum without the max's term, L = log1p(rest);
2. the loss ``sum_j a_j (L - d_j) + z_loss lse^2``, a sum of terms >= 0;
3. the gradient ``s (A + 2 z_loss lse) p_j - s a_j`` (A = sum_j a_j, s the mean's scale), with the
   target's entry at the max computed as ``-sum_{j != t} p_j`` (rule 11), then softcap's and T's chain
   rule -- all in the forward sweep. `jax.custom_jvp` gives the loss's tangent as <gradient, d logits>,
   linear in the tangent: reverse mode (JAX's transpose) keeps the gradient as its only residual and
   the backward is one multiplication by the cotangent; forward mode and second derivatives
   (jax.hessian) differentiate this module's code again. For probability targets the tangent adds
   <d loss / d p, d p>, with ``d loss / d p_j = s (1 - eps) w_j (L - d_j)`` computed only when the
   target is differentiated (symbolic zeros tell).

Value checks under jit: JAX cannot raise on traced values. Eager calls (concrete arrays) run the spec's
value checks and raise ValueError as the other layers do. Under jit the checks that read values do
not run; instead a class index outside [0, C) other than ignore_index makes its row's loss and gradient
NaN (never a wrapped-around gather, never a silent number), and negative or NaN probabilities and
negative class weights go through unchecked. `check_inputs` runs every value check eagerly, or under
``jax.experimental.checkify.checkify`` inside jit.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from softxent import _validation as v
from softxent._jax import arrays as ja
from softxent._options import LossOptions
from softxent.ops.cross_entropy import spec
from softxent.ops.logsumexp.jax import RowStats, row_stats


# --- the problem, resolved by the spec ------------------------------------------------------------------


class Problem(NamedTuple):
    """Static facts of one call: custom_jvp's non-differentiable argument and a jit static argument,
    so equal by value (two calls with the same options share one compiled function)."""

    options: LossOptions
    kind: str  # spec.INDEX or spec.PROBS
    num_classes: int

    def _key(self):
        o = self.options
        return (o.ignore_index, o.reduction, o.label_smoothing, o.z_loss, o.softcap, o.temperature, self.kind,
                self.num_classes)

    def __eq__(self, other):
        return isinstance(other, Problem) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())


class RowPlan(NamedTuple):
    """Per-row quantities the gradient columns need (all (R,) arrays, work dtype unless said)."""

    kept: Any  # bool: counts (not ignored, not fully masked)
    bad: Any  # bool: a label outside [0, C) (only reachable under jit): NaN row
    safe: Any  # int: the label, 0 where ignored
    at_top: Any  # bool: the target holds the row max (d_t = 0)
    target: Any  # a_t's part (1 - eps) w_t
    uniform: Any  # eps / C where kept
    factor: Any  # s (A + 2 z lse) / sum e: the coefficient of e_j in the gradient
    at_max: Any  # the target's entry when it holds the max: s (u W + 2 z lse - a_t rest) / sum e
    s: Any  # the scale of the row (mean's 1 / denominator, 0 where not kept)


def softcapped(x, options: LossOptions):
    """(z, t): z = softcap * tanh(x / softcap) with -inf kept (a mask, not a score), t = tanh (or None)."""
    if options.softcap is None:
        return x, None
    t = jnp.tanh(x / options.softcap)
    return jnp.where(x == -jnp.inf, x, options.softcap * t), t


def target_gap_of(stats: RowStats, safe):
    """(d_t, its exact low part) at column `safe` of each row (the low part 0 where the gap is clamped)."""
    pick = lambda a: jnp.take_along_axis(a, safe[..., None], axis=-1)[..., 0]
    z_t = jnp.minimum(pick(stats.raw), stats.cap)  # the cap per row: gathering from the capped rows
    #                                                 would write them out as an (N, V) array
    # per row: the gap z_t - m split exactly (TwoSum), then / T; -inf targets and the finite entries
    # of a row holding +inf (shifted by the largest float) are -inf
    d_t, d_lo_t = _pair_diff(z_t, stats.center)
    if stats.temperature != 1.0:
        d_t, d_lo_t = d_t / stats.temperature, d_lo_t / stats.temperature
    off = (z_t == -jnp.inf) | (stats.infinite & (z_t < stats.center))
    return jnp.where(off, -jnp.inf, d_t), jnp.where(off | ~jnp.isfinite(d_lo_t), 0.0, d_lo_t)


def _pair_diff(a, b):
    s = a - b
    bb = s - a
    return s, (a - (s - bb)) - (b + bb)


def chain(grad, t, options: LossOptions):
    """d/dz -> d/dx through z = softcap tanh(x / softcap); the temperature's 1 / T is in the kernel's d."""
    if t is not None:
        grad = grad * (1.0 - t * t)
    if options.temperature != 1.0:
        grad = grad / options.temperature
    return grad


def _weighted_sum(d, coef):
    """sum_j coef_j d_j per row, with 0 * -inf = 0 (rule 4) and NaN logits kept NaN."""
    terms = jnp.where(coef > 0, coef * d, jnp.where(jnp.isnan(d), jnp.nan, 0.0))
    return jnp.sum(terms, axis=-1)


def row_losses(stats: RowStats, labels, probs, weight, problem: Problem, scale, work, *, target_gap=None,
               class_sum=None):
    """Per-row losses and the RowPlan of the gradient, from the row kernel's statistics.

    `labels` (R,) for class indices or `probs` (R, C) for probabilities; `scale` the 0-d gradient scale.
    When `stats` covers only a slice of the classes (vocab-parallel), the caller passes the target's
    gap ``(d_t, d_t_lo)`` gathered over the slices and `class_sum`, which completes a per-row sum over
    the local classes into the sum over all of them (an all-reduce).
    """
    class_sum = class_sum or (lambda a: a)
    options, C = problem.options, problem.num_classes
    L, lse = stats.log_sum, stats.lse
    d = stats.d
    if problem.kind == spec.INDEX:
        co = spec.index_coefficients(jnp, labels, weight, options, C, work)
        kept, safe = co.kept, co.safe
        bad = spec.bad_labels(labels, C, options.ignore_index)
        safe = jnp.clip(safe, 0, max(0, C - 1))  # a bad label never faults nor wraps: its row is NaN below
        if target_gap is None:
            d_t, d_t_lo = target_gap_of(stats, safe)
        else:
            d_t, d_t_lo = target_gap
        # (-d_t) + (L - d_t_lo): terms >= 0, the exact gap -d_t kept apart from L
        loss = jnp.where(co.target > 0, co.target * ((-d_t) + (L - d_t_lo)), 0.0)
        w_sum = float(C) if weight is None else jnp.sum(weight.astype(work))
        if options.label_smoothing:
            smooth_d = class_sum(jnp.sum(d, axis=-1) if weight is None else _weighted_sum(d, weight.astype(work)))
            loss = loss + co.uniform * (w_sum * L - smooth_d)
        total_coef, target_coef, uniform = co.total, co.target, co.uniform
        at_top = d_t == 0
    else:
        coef = spec.probability_coefficients(jnp, probs, weight, options, C, work)
        kept = jnp.ones(L.shape, bool)
        bad = jnp.zeros(L.shape, bool)
        safe = jnp.zeros(L.shape, jnp.int32)
        total_coef = class_sum(jnp.sum(coef, axis=-1))
        loss = total_coef * L - class_sum(_weighted_sum(d, coef))
        target_coef = uniform = w_sum = None
        at_top = jnp.zeros(L.shape, bool)
    if options.z_loss:
        loss = loss + options.z_loss * jnp.where(kept, lse * lse, 0.0)
    kept = kept & ~stats.masked  # a fully masked row carries no information (rule 2): 0, counted
    # ignored rows give exactly 0 even when their logits are +inf or NaN (padding)
    loss = jnp.where(kept, loss, 0.0)
    loss = jnp.where(bad, jnp.nan, loss)

    s = jnp.where(kept, scale, 0.0).astype(work)
    finite_lse = jnp.where(jnp.isinf(lse), stats.shift + L, lse)  # +inf rows: the limit's
    total = jnp.where(kept & (stats.total > 0), stats.total, 1.0)
    zl = 2.0 * options.z_loss * finite_lse if options.z_loss else 0.0
    factor = s * (total_coef + zl) / total
    if problem.kind == spec.INDEX:
        # p_t - 1 at the max as -sum_{j != t} p_j: s (u W + 2 z lse - a_t rest) / sum e, no cancellation
        # (with ties at the max, rest holds the other maxima's 1s: still the sum over j != t)
        at_max = s * (uniform * w_sum + zl - target_coef * stats.rest) / total
    else:
        at_max = None
    plan = RowPlan(kept, bad, safe, at_top, target_coef, uniform, factor, at_max, s)
    return loss, plan


def grad_columns(e, columns, plan: RowPlan, problem: Problem, weight_cols=None, coef_cols=None):
    """d(scale * sum of losses)/dz on some columns (`columns`: their global ids) from e = exp(d)."""
    grad = e * plan.factor[..., None]
    if problem.kind == spec.INDEX:
        at_t = columns == plan.safe[..., None]
        grad = grad - jnp.where(at_t, (plan.s * plan.target)[..., None], 0.0)
        at_max = at_t & plan.at_top[..., None]
        grad = jnp.where(at_max, plan.at_max[..., None], grad)
        if problem.options.label_smoothing:
            smooth = (plan.s * plan.uniform)[..., None]
            grad = grad - (smooth if weight_cols is None else smooth * weight_cols)
    else:
        grad = grad - plan.s[..., None] * coef_cols
    return grad


def finish_grad(grad, plan: RowPlan, t, options: LossOptions, dtype):
    grad = chain(grad, t, options)
    grad = jnp.where(plan.kept[..., None], grad, 0.0)  # ignored rows with NaN logits: NaN * 0 above
    return jnp.where(plan.bad[..., None], jnp.nan, grad).astype(dtype)


def denominator(problem: Problem, labels, weight, num_rows: int, num_items, work):
    """What "mean" divides by (None for "sum" and "none"): the spec's rule, on jax.numpy."""
    if problem.options.reduction != "mean":
        return None
    with ja.quiet_int64():
        return spec.mean_denominator(jnp, problem.kind, labels, weight, problem.options.ignore_index, num_rows,
                                     work, num_classes=problem.num_classes, num_items=num_items)


# --- argument checks (trace time) and value checks (eager, or checkify) ---------------------------------


def checked_problem(logits_shape, num_classes, target, weight, num_items, options: LossOptions, class_axis: int,
                    logits_name: str = "logits"):
    """The spec's shape and dtype rules, which JAX knows at trace time; the value checks when concrete."""
    kind = spec.check_target(logits_shape, ja.kind_view(target), class_axis, logits_name=logits_name)
    num_items = spec.check_num_items(num_items, options.reduction)
    if weight is not None:
        weight = ja.as_float(weight, "weight")
        v.check_weight_shape(weight.shape, num_classes)
    if ja.is_concrete(target, weight):
        with jax.ensure_compile_time_eval():  # concrete arrays captured by a jitted function: still eager
            check_values(kind, target, weight, num_classes, options.ignore_index)
    if num_items is not None:
        num_items = jnp.asarray(num_items)
    return Problem(options, kind, num_classes), weight, num_items


def check_values(kind, target, weight, num_classes, ignore_index):
    """rule 7 of docs/semantics.md's value checks through the spec, eagerly (raises ValueError)."""
    if kind == spec.INDEX:
        spec.check_labels(jnp, target, num_classes, ignore_index)
    else:
        spec.check_probabilities(jnp, target)
    if weight is not None:
        # bfloat16 reads as kind "V" to the spec's dtype check: its values are checked in float32 (exact)
        spec.check_weight(jnp, weight if weight.dtype.kind == "f" else weight.astype(jnp.float32), num_classes)


def check_inputs(logits: Any, target: Any, *, axis: int = -1, weight: Any = None, ignore_index: int = -100) -> None:
    """Run the value checks that `cross_entropy` cannot raise under jit (rule 7 of docs/semantics.md).

    Eagerly (concrete arrays) this raises the ValueError every layer raises: the first class index
    outside [0, C) other than `ignore_index` with its position, the first negative or NaN probability,
    the first negative or non-finite class weight. Inside ``jax.jit`` the same conditions go through
    ``jax.experimental.checkify.check``: wrap the jitted function with ``checkify.checkify`` and call
    ``err.throw()`` on the error it returns.

    Example:
        >>> import softxent.jax as sxj
        >>> sxj.check_inputs(jnp.zeros((2, 3)), jnp.array([0, 2]))        # fine: returns None
        >>> sxj.check_inputs(jnp.zeros((2, 3)), jnp.array([0, 3]))
        Traceback (most recent call last):
        ...
        ValueError: target holds class index 3 at position (1,), outside [0, 3) and not ignore_index (-100)
    """
    logits, class_axis = checked_logits(logits, axis, "check_inputs")
    target = ja.as_labels(target, "target")
    num_classes = logits.shape[class_axis]
    kind = spec.check_target(logits.shape, ja.kind_view(target), class_axis)
    ignore_index = v.check_ignore_index(ignore_index)
    if weight is not None:
        weight = ja.as_float(weight, "weight")
        v.check_weight_shape(weight.shape, num_classes)
    if ja.is_concrete(target, weight):
        with jax.ensure_compile_time_eval():
            check_values(kind, target, weight, num_classes, ignore_index)
        return
    from jax.experimental import checkify

    if kind == spec.INDEX:
        bad = spec.bad_labels(target, num_classes, ignore_index)
        flat = jnp.argmax(bad.reshape(-1))
        checkify.check(~jnp.any(bad), f"target holds class index {{label}} at flat position {{pos}}, outside "
                       f"[0, {num_classes}) and not ignore_index ({ignore_index})",
                       label=target.reshape(-1)[flat], pos=flat)
    else:
        bad = ~(target >= 0) | jnp.isinf(target)
        flat = jnp.argmax(bad.reshape(-1))
        checkify.check(~jnp.any(bad), "target must hold probabilities >= 0 (no NaN); got {value} at flat "
                       "position {pos}", value=target.reshape(-1)[flat].astype(jnp.float32), pos=flat)
    if weight is not None:
        bad = ~(weight >= 0) | jnp.isinf(weight)
        index = jnp.argmax(bad)
        checkify.check(~jnp.any(bad), "weight must hold finite values >= 0; got {value} for class {index}",
                       value=weight[index].astype(jnp.float32), index=index)


def checked_logits(logits, axis, name):
    """(logits as a float array, its one class axis) for the function `name`, or the other layers' errors."""
    logits = ja.as_float(logits, "logits")
    if logits.ndim == 0:
        raise ValueError("logits must have at least one dimension (the classes); got a scalar")
    if axis is None or isinstance(axis, tuple):
        raise TypeError(f"axis must be an int for {name} (one class axis); got {axis!r}")
    return logits, v.normalize_axes(axis, logits.ndim)[0]


# --- the public function ----------------------------------------------------------------------------------


def cross_entropy(logits: Any, target: Any, *, axis: int = -1, weight: Any = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                  softcap: float | None = None, temperature: float = 1.0, num_items: Any = None,
                  where: Any = None) -> jax.Array:
    """Cross-entropy between ``softmax(logits)`` and a target, for JAX: fused, exact, NaN-free.

    .. math:: \\ell = \\sum_j a_j\\,(\\mathrm{lse}(z) - z_j) + \\zeta\\,\\mathrm{lse}(z)^2,
       \\quad z = \\mathrm{softcap}(x) / T

    with a = onehot(t) for class index t (smoothed: ``(1 - eps) w_t onehot(t) + (eps / C) w``) or the
    probabilities p (``((1 - eps) p + eps / C) w``). Computed as ``(m - z_t) + log1p(sum_{j != argmax}
    exp(z_j - m))``, exact in float32 without x64 (rule 11 of docs/semantics.md). The options are the other layers'
    (rules 5-7 of docs/semantics.md, the rules themselves in ``softxent.ops.cross_entropy.spec``): `weight`, `ignore_index`,
    `label_smoothing`, `z_loss` (PaLM), `softcap` (Gemma 2, applied first), `temperature` (after the
    max shift), `num_items` (the global count that ``"mean"`` divides by), and `where`, a class mask:
    False entries leave the softmax as -inf logits do, with gradient 0 there and a fully masked row
    giving loss 0 and gradient 0 (optax's `where` gives NaN gradients there).

    Derivatives by ``jax.custom_jvp``, the gradient computed in the forward sweep and kept as the only
    residual; forward mode and higher derivatives (``jax.hessian``, ``jax.jacfwd``) work too. A
    probability target is differentiable (``d loss / d p_j = s (1 - eps) w_j (lse - z_j)``, s the
    reduction's scale); class weights and `num_items` are constants. Pure and traceable under jit, grad,
    vmap, nesting; float32, bfloat16 (accumulated in float32) and float64 with x64.

    Errors: shapes and options raise ValueError / TypeError at trace time with the other layers'
    messages. Value checks (labels in range, probabilities >= 0, weights >= 0) raise on eager calls;
    under jit they cannot, and a label outside [0, C) gives a NaN loss for its row instead: see
    `check_inputs` for a checkify-based check.

    Args:
        logits: real array with classes on `axis`.
        target: integer class indices (the shape of logits without `axis`) or float probabilities
            (the shape of logits).
        axis: the class axis (an int).
        weight: (C,) class weights or None.
        ignore_index, reduction, label_smoothing, z_loss, softcap, temperature, num_items: as
            ``softxent.cross_entropy``.
        where: boolean class mask broadcastable to `logits`, or None.

    Returns:
        The loss in the dtype of `logits` (per row for ``"none"``, with the shape of the target rows).

    Example:
        >>> import softxent.jax as sxj
        >>> round(float(sxj.cross_entropy(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([2]))), 4)   # -log 0.665
        0.4076
        >>> jax.grad(sxj.cross_entropy)(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([2])).round(3)
        Array([[ 0.09 ,  0.245, -0.335]], dtype=float32)

    See also: ``softxent.cross_entropy`` (NumPy), ``softxent.torch.cross_entropy``,
    `vocab_parallel_cross_entropy`, `linear_cross_entropy`, `check_inputs`.

    References: Blanchard, Higham & Higham (2021); Chowdhery et al. (2022), PaLM (z-loss); Gemma Team
    (2024), Gemma 2 (softcap); Szegedy et al. (2016) (label smoothing).
    """
    logits, class_axis = checked_logits(logits, axis, "cross_entropy")
    options = LossOptions(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                          z_loss=z_loss, softcap=softcap, temperature=temperature)
    target = ja.as_labels(target, "target")
    num_classes = logits.shape[class_axis]
    problem, weight, num_items = checked_problem(logits.shape, num_classes, target, weight, num_items, options,
                                                 class_axis)
    keep = ja.check_where(where, logits.shape, target="logits")
    if keep is not None:
        logits = jnp.where(keep, logits, -jnp.inf)  # masked classes leave the softmax; jnp.where's gradient is 0
    rows = ja.axes_last(logits, (class_axis,))
    batch_shape = rows.shape[:-1]
    rows = rows.reshape(-1, num_classes)
    if problem.kind == spec.INDEX:
        target_rows = target.reshape(-1)
    else:
        target_rows = ja.axes_last(target, (class_axis,)).reshape(-1, num_classes)
    loss = _cross_entropy_jit(rows, target_rows, weight, num_items, problem)
    return loss.reshape(batch_shape) if options.reduction == "none" else loss


@partial(jax.custom_jvp, nondiff_argnums=(4,))
def _cross_entropy(rows, target, weight, num_items, problem):
    # the loss alone: XLA drops the gradient's work, which this output does not use
    return _forward(rows, target, weight, num_items, problem, with_grad=False)[0]


def _forward(rows, target, weight, num_items, problem: Problem, target_grad: bool = False, with_grad: bool = True):
    """(loss, d loss / d rows, d loss / d target or None): one fused sweep over the rows.

    The gradients are those of the returned loss (for "none", of each row's own loss). `target_grad`
    (probability targets only) adds ``d loss / d p_j = s (1 - eps) w_j (lse - z_j)``, s the row's scale.
    """
    options = problem.options
    work = ja.work_dtype(rows.dtype)
    num_rows = rows.shape[0]
    labels = target if problem.kind == spec.INDEX else None
    probs = target.astype(work) if problem.kind == spec.PROBS else None
    denom = denominator(problem, labels, weight, num_rows, num_items, work)
    scale = spec.gradient_scale(jnp, denom, work)
    d_target = None
    if num_rows and problem.num_classes:
        z, t = softcapped(rows.astype(work), options)
        # with the gradient, the sum's terms are written out and the gradient takes them over in place
        stats = row_stats(z, options.temperature, kept_terms=with_grad)
        losses, plan = row_losses(stats, labels, probs, weight, problem, scale, work)
        columns = jnp.arange(problem.num_classes)
        weight_cols = None if weight is None else weight.astype(work)
        coef_cols = None
        if problem.kind == spec.PROBS:
            coef_cols = spec.probability_coefficients(jnp, probs, weight, options, problem.num_classes, work)
            if target_grad:
                d_target = target_gradient(stats, plan, weight_cols, problem).astype(target.dtype)
        grad = grad_columns(stats.e, columns, plan, problem, weight_cols, coef_cols)
        grad = finish_grad(grad, plan, t, options, rows.dtype)
    else:  # empty batch or no classes: "none" gives an empty array (or zeros), "mean" and "sum" 0 (rule 5)
        losses = jnp.zeros((num_rows,), work)
        grad = jnp.zeros(rows.shape, rows.dtype)
        if target_grad:
            d_target = jnp.zeros(target.shape, target.dtype)
    loss = spec.reduce(jnp, losses, options.reduction, denom).astype(rows.dtype)
    return loss, grad, d_target


def target_gradient(stats: RowStats, plan: RowPlan, weight_cols, problem: Problem):
    """d loss / d p_j = s (1 - eps) w_j (L - d_j): -log q_j, the exact gap's low part kept, times the
    share of p in the coefficients (spec.probability_coefficients) and the row's scale s; 0 in rows that
    do not count (fully masked), +inf where q_j = 0 (a -inf logit), as the torch layer."""
    on_target, _ = spec.smoothing_split(problem.options.label_smoothing, problem.num_classes)
    d_lo = jnp.where(stats.d == stats.d_c, stats.d_lo, 0.0)  # no low part where the gap is clamped
    minus_log_q = (stats.log_sum[..., None] - stats.d) - d_lo
    share = plan.s * on_target
    grad = share[..., None] * minus_log_q if weight_cols is None else share[..., None] * weight_cols * minus_log_q
    return jnp.where(plan.kept[..., None], grad, 0.0)


def _is_zero(tangent) -> bool:
    return tangent is None or isinstance(tangent, SymbolicZero)


def _contract(grad, tangent, problem: Problem, work):
    """<grad, tangent> per row for "none", over everything otherwise: the loss's tangent."""
    product = grad.astype(work) * tangent.astype(work)
    return jnp.sum(product, axis=-1) if problem.options.reduction == "none" else jnp.sum(product)


def _cross_entropy_jvp(problem, primals, tangents):
    """Forward mode, and through it reverse mode: the tangent <gradient, d rows> (+ <d loss / d p, d p>)
    is linear in the tangents, so JAX's transpose keeps the gradient as the only residual and the
    backward is one multiplication by the cotangent. The gradient itself is differentiable JAX code,
    so jax.hessian and jax.jacfwd work; class weights and num_items are constants."""
    rows, target, weight, num_items = primals
    d_rows, d_target = tangents[0], tangents[1]
    wants_target = problem.kind == spec.PROBS and not _is_zero(d_target)
    loss, grad, target_grad = _forward(rows, target, weight, num_items, problem, target_grad=wants_target)
    work = ja.work_dtype(rows.dtype)
    tangent = jnp.zeros(loss.shape, work)
    if not _is_zero(d_rows):
        tangent = tangent + _contract(grad, d_rows, problem, work)
    if wants_target:
        tangent = tangent + _contract(target_grad, d_target, problem, work)
    return loss, tangent.astype(loss.dtype)


_cross_entropy.defjvp(_cross_entropy_jvp, symbolic_zeros=True)
# one compiled program per call signature: eager JAX would compile each of the kernel's ops on its own
_cross_entropy_jit = jax.jit(_cross_entropy, static_argnums=(4,))
