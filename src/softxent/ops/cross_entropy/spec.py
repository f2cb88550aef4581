"""The rules of the cross-entropy family, written once over an array namespace.

Every layer (the NumPy blocks, the torch CPU spans, the Triton kernels, the distributed row statistics)
gets its problem from here, resolved, and only computes rows. This module decides, once:

- the target's kind: class indices (the logits' shape without the class axis, integer dtype) or class
  probabilities (the logits' shape, floating dtype) -- `check_target`;
- the value checks (rule 7 of docs/semantics.md): labels in [0, C) or `ignore_index`, probabilities >= 0 and not NaN,
  class weights finite and >= 0 -- `check_labels`, `check_probabilities`, `check_weight`;
- the target's coefficients a_j, with which the loss of a row is ``sum_j a_j (lse - z_j)``:
  class index t: ``a = (1 - eps) w_t onehot(t) + (eps / C) w`` (PyTorch's label smoothing, weighted);
  probabilities p: ``a = ((1 - eps) p + eps / C) w`` -- `index_coefficients`, `probability_coefficients`;
- which rows count: a row whose label is `ignore_index` gives 0 loss and 0 gradient and is not counted;
  a fully masked row (every logit -inf) gives 0 loss and 0 gradient but is counted (rule 2);
- what ``"mean"`` divides by: ``sum_t w_t`` over the rows not ignored (their number without weights),
  the number of rows for probability targets (rule 6), or `num_items` when given (the global count over
  micro-batches and ranks); 0 gives loss 0 and a zero gradient, never NaN (rule 5) --
  `mean_denominator`, `gradient_scale`, `reduce`.

The order of the logit transforms is a rule too: ``z = softcap * tanh(x / softcap)`` first (a -inf logit
stays -inf: a mask, not a score), then the max shift ``d = z - max z``, then the temperature ``d / T``:
never ``x / T`` before the shift, which overflows (3e38 / 0.5 is inf; (3e38 - 3e38) / 0.5 is not). The
kernels apply it in that order; `transformed_scores` is the reference over an array namespace.

The functions take `xp`, an array-API namespace (``array_api_compat.array_namespace(x)``), so NumPy,
torch and JAX run this very code; they read values only to raise errors (a host sync on a GPU, which
the torch layer turns off with ``check_labels=False``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Sequence

from softxent import _validation as v

INDEX, PROBS = "index", "probs"


# --- the target's kind and its dtype --------------------------------------------------------------------


def target_kind(logits_shape: Sequence[int], target_shape: Sequence[int], class_axis: int,
                *, logits_name: str = "logits", target_name: str = "target") -> str:
    """INDEX when target drops the class axis of the logits, PROBS when it matches them."""
    logits_shape, target_shape = tuple(logits_shape), tuple(target_shape)
    index_shape = logits_shape[:class_axis] + logits_shape[class_axis + 1:]
    if target_shape == logits_shape:
        return PROBS
    if target_shape == index_shape:
        return INDEX
    raise v.target_shape_error(index_shape, logits_shape, target_shape, class_axis, logits_name, target_name)


def check_target(logits_shape: Sequence[int], target: Any, class_axis: int, *, logits_name: str = "logits",
                 target_name: str = "target") -> str:
    """`target_kind`, then the dtype that kind needs: integer class indices, floating probabilities."""
    kind = target_kind(logits_shape, target.shape, class_axis, logits_name=logits_name, target_name=target_name)
    if kind == INDEX:
        v.check_integer_labels(target, target_name)
    elif v.dtype_kind(target) != "f":
        raise TypeError(f"{target_name} with the shape of {logits_name} holds probabilities and must be floating; "
                        f"got dtype {target.dtype}")
    return kind


# --- value checks (rule 7) --------------------------------------------------------------------------------


def _first(xp, bad) -> tuple[int, ...]:
    """The position of the first True of `bad` (row-major)."""
    flat = int(xp.argmax(xp.astype(xp.reshape(bad, (-1,)), xp.int8)))
    position = []
    for size in reversed(bad.shape):
        flat, index = divmod(flat, int(size))
        position.append(index)
    return tuple(reversed(position))


def bad_labels(labels, num_classes: int, ignore_index: int | None):
    """The label-range rule: True where a label is outside [0, num_classes) and not ignore_index."""
    bad = (labels < 0) | (labels >= num_classes)
    return bad if ignore_index is None else bad & (labels != ignore_index)


def labels_in_range(low: int, high: int, num_classes: int, ignore_index: int | None) -> bool:
    """True when labels spanning [low, high] (their min and max) are all classes, in [0, num_classes),
    none of them ignore_index: then `check_labels` passes and every row counts. Two reductions give
    low and high, where `bad_labels` takes five passes; False says only that the range does not show
    it (an ignored row, say): the full rules decide."""
    return 0 <= low and high < num_classes and (ignore_index is None or not low <= ignore_index <= high)


def check_labels(xp, labels, num_classes: int, ignore_index: int | None, name: str = "target") -> None:
    """Every label in [0, num_classes) or equal to ignore_index, else a ValueError naming the first bad one."""
    bad = bad_labels(labels, num_classes, ignore_index)
    if bool(xp.any(bad)):
        position = _first(xp, bad)
        raise v.bad_label_error(int(labels[position]), position, num_classes, ignore_index, name)


def check_probabilities(xp, probs, name: str = "target") -> None:
    """Every entry finite and >= 0 (no NaN), else a ValueError naming the first bad one."""
    bad = ~(probs >= 0) | xp.isinf(probs)
    if bool(xp.any(bad)):
        position = _first(xp, bad)
        raise v.bad_probability_error(float(probs[position]), position, name)


def check_weight(xp, weight, num_classes: int, name: str = "weight") -> None:
    """A (C,) floating vector of finite values >= 0."""
    v.check_numeric(weight, name)
    v.check_weight_shape(weight.shape, num_classes, name)
    bad = ~(weight >= 0) | xp.isinf(weight)
    if bool(xp.any(bad)):
        (index,) = _first(xp, bad)
        raise v.bad_weight_error(float(weight[index]), index, name)


def check_num_items(num_items: Any, reduction: str) -> Any:
    """None, an int >= 0 or a 0-d array (a device tensor is not read: no sync); only with "mean"."""
    if num_items is None:
        return None
    if reduction != "mean":
        raise ValueError(f"num_items replaces the denominator of reduction='mean'; got reduction={reduction!r}")
    if isinstance(num_items, numbers.Integral) and not isinstance(num_items, bool):
        return v.check_integer(num_items, "num_items", minimum=0)
    shape = getattr(num_items, "shape", None)
    if shape is None or tuple(shape) != () or v.dtype_kind(num_items) not in "iuf":
        raise TypeError(f"num_items must be an int or a 0-d numeric array; got {type(num_items).__name__} "
                        f"{num_items!r}")
    return num_items


# --- the target's coefficients ---------------------------------------------------------------------------


def smoothing_split(label_smoothing: float, num_classes: int) -> tuple[float, float]:
    """(1 - eps, eps / C): the target class's share and every class's uniform share (0 when C = 0)."""
    return 1.0 - label_smoothing, (label_smoothing / num_classes if num_classes else 0.0)


@dataclass(frozen=True)
class IndexCoefficients:
    """Per-row coefficients of class-index targets, each of shape `labels.shape` (in `dtype`)."""

    kept: Any  # bool: the label is not ignore_index
    safe: Any  # the label, or 0 where ignored: safe to gather with
    target: Any  # a_t's part on the target: (1 - eps) w_t, 0 where ignored
    uniform: Any  # eps / C where kept (class j's coefficient is uniform * w_j), else 0
    total: Any  # A = sum_j a_j = target + uniform * sum_j w_j


def index_coefficients(xp, labels, weight, options, num_classes: int, dtype) -> IndexCoefficients:
    """The coefficients a_j of class-index targets (see the module docstring)."""
    on_target, uniform = smoothing_split(options.label_smoothing, num_classes)
    kept = labels != options.ignore_index
    safe = xp.where(kept, labels, xp.zeros_like(labels))
    kept_f = xp.astype(kept, dtype)
    if weight is None:
        w_t, w_sum = kept_f, float(num_classes)
    else:
        weight = xp.astype(weight, dtype)
        w_t, w_sum = xp.take(weight, xp.reshape(safe, (-1,)), axis=0), xp.sum(weight)
        w_t = xp.reshape(w_t, labels.shape) * kept_f
    target = on_target * w_t
    uniform_row = uniform * kept_f
    return IndexCoefficients(kept, safe, target, uniform_row, target + uniform_row * w_sum)


def probability_coefficients(xp, probs, weight, options, num_classes: int, dtype):
    """a = ((1 - eps) p + eps / C) w for probability targets, shape of `probs` (classes last), in `dtype`."""
    on_target, uniform = smoothing_split(options.label_smoothing, num_classes)
    coef = xp.astype(probs, dtype)
    if options.label_smoothing:
        coef = coef * on_target + uniform
    if weight is not None:
        coef = coef * xp.astype(weight, dtype)
    return coef


# --- the logit transforms, in their order ---------------------------------------------------------------


def transformed_scores(xp, x, options, axis: int = -1):
    """(d, m): d = (softcap(x) - m) / T with m the row max of softcap(x), and m / T (the max of z / T).

    The reference for paths that are not fused kernels. Rows whose max is not finite keep shift 0 (a
    fully masked row stays -inf, a +inf row is the kernels' business: see `logsumexp`'s rules).
    """
    z = x
    if options.softcap is not None:
        z = options.softcap * xp.tanh(x / options.softcap)
        z = xp.where(xp.isinf(x) & (x < 0), x, z)  # a -inf logit is a mask: it stays -inf
    m = xp.max(z, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    d = z - m
    if options.temperature != 1.0:
        d, m = d / options.temperature, m / options.temperature
    return d, m


# --- what "mean" divides by, the gradient's scale, the reduction ----------------------------------------


def mean_denominator(xp, kind: str, labels, weight, ignore_index: int, num_rows: int, dtype, *,
                     num_classes: int, num_items: Any = None, device: Any = None):
    """What "mean" divides by, as a 0-d array (on the device: no sync).

    `num_items` when given; else the sum of weight[t] over rows not ignored (their count without
    weights) for class indices, the number of rows for probabilities.
    """
    if num_items is not None:
        return xp.astype(xp.asarray(num_items, device=device), dtype)
    if kind == PROBS:
        return xp.asarray(float(num_rows), dtype=dtype, device=device)
    labels = xp.reshape(labels, (-1,))
    kept = labels != ignore_index
    if weight is None:
        return xp.astype(xp.sum(xp.astype(kept, xp.int64)), dtype)
    # clamped so that a bad label cannot fault the gather: the value check reports it
    safe = xp.clip(xp.where(kept, labels, xp.zeros_like(labels)), 0, max(0, num_classes - 1))
    return xp.sum(xp.take(xp.astype(weight, dtype), xp.astype(safe, xp.int64), axis=0) * xp.astype(kept, dtype))


def gradient_scale(xp, denominator, dtype, device: Any = None):
    """1 / the "mean" denominator (0 when nothing counts: rule 5), or 1 (denominator None: "sum", "none")."""
    if denominator is None:
        return xp.asarray(1.0, dtype=dtype, device=device)
    safe = xp.where(denominator > 0, denominator, xp.ones_like(denominator))
    return xp.where(denominator > 0, 1.0 / safe, xp.zeros_like(denominator))


def reduce(xp, losses, reduction: str, denominator):
    """The per-row losses as asked: themselves, their sum, or their sum over the "mean" denominator."""
    if reduction == "none":
        return losses
    total = xp.sum(losses)
    if reduction == "sum":
        return total
    denominator = xp.astype(denominator, total.dtype)
    safe = xp.where(denominator > 0, denominator, xp.ones_like(denominator))
    return xp.where(denominator > 0, total / safe, xp.zeros_like(total))



# --- token log-probabilities and distillation (the RL and distillation losses share the rules above) ------
#
# Their rows follow the cross-entropy family's: a row whose class index is `ignore_index` gives 0 and a
# zero gradient and is not counted; a fully masked row (every logit -inf) gives 0 and a zero gradient;
# the transforms run softcap -> max shift -> temperature (`transformed_scores`); "mean" divides by the
# rows not ignored, or by `num_items` (`mean_denominator` with kind INDEX and no class weights, or PROBS
# with every row counted when no target marks rows). Only the divergence is new.

DIVERGENCES = ("kl", "reverse_kl", "jsd")


def check_divergence(divergence: Any, beta: Any) -> tuple[str, float]:
    """("kl" | "reverse_kl" | "jsd", beta in [0, 1]); the messages name the argument (rule 10 of docs/semantics.md)."""
    if not isinstance(divergence, str) or divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(map(repr, DIVERGENCES))}; got {divergence!r}")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"beta must be a real number in [0, 1]; got {type(beta).__name__} {beta!r}")
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1]; got {beta!r}")
    return divergence, beta


def row_denominator(xp, labels, ignore_index: int, num_rows: int, dtype, *, num_classes: int,
                    num_items: Any = None, device: Any = None):
    """"mean"'s denominator for losses without class weights: the rows not ignored (all rows when
    `labels` is None: nothing marks rows), or `num_items`."""
    kind = PROBS if labels is None else INDEX
    return mean_denominator(xp, kind, labels, None, ignore_index, num_rows, dtype, num_classes=num_classes,
                            num_items=num_items, device=device)
