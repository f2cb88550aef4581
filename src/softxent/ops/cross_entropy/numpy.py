"""Cross-entropy of softmax probabilities against class indices or class probabilities, with its gradient."""

from __future__ import annotations

import contextlib
import functools
from copy import copy
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np

from softxent._arrays import (Rows, accurate_dtype, as_float_array, block_rows, blocks, for_row_spans,
                              thread_buffer, xp)
from softxent._options import LossOptions
from softxent._typing import ArrayLike, FloatArray, FloatResult, Reduction
from softxent.ops.cross_entropy import spec
from softxent.ops.logsumexp.numpy import class_axes, exp_log_sum, flat, shift_rows


@overload
def cross_entropy(logits: ArrayLike, target: ArrayLike, *, axis: int = -1, weight: ArrayLike | None = None,
                  ignore_index: int = -100, reduction: Reduction = "mean", label_smoothing: float = 0.0,
                  z_loss: float = 0.0, softcap: float | None = None, temperature: float = 1.0,
                  num_items: int | ArrayLike | None = None, return_grad: Literal[False] = False) -> FloatResult: ...
@overload
def cross_entropy(logits: ArrayLike, target: ArrayLike, *, axis: int = -1, weight: ArrayLike | None = None,
                  ignore_index: int = -100, reduction: Reduction = "mean", label_smoothing: float = 0.0,
                  z_loss: float = 0.0, softcap: float | None = None, temperature: float = 1.0,
                  num_items: int | ArrayLike | None = None, return_grad: Literal[True]
                  ) -> tuple[FloatResult, FloatArray]: ...
@overload
def cross_entropy(logits: ArrayLike, target: ArrayLike, *, axis: int = -1, weight: ArrayLike | None = None,
                  ignore_index: int = -100, reduction: Reduction = "mean", label_smoothing: float = 0.0,
                  z_loss: float = 0.0, softcap: float | None = None, temperature: float = 1.0,
                  num_items: int | ArrayLike | None = None, return_grad: bool = False
                  ) -> FloatResult | tuple[FloatResult, FloatArray]: ...
def cross_entropy(logits: ArrayLike, target: ArrayLike, *, axis: int = -1, weight: ArrayLike | None = None,
                  ignore_index: int = -100, reduction: Reduction = "mean", label_smoothing: float = 0.0,
                  z_loss: float = 0.0, softcap: float | None = None, temperature: float = 1.0,
                  num_items: int | ArrayLike | None = None, return_grad: bool = False
                  ) -> FloatResult | tuple[FloatResult, FloatArray]:
    """Cross-entropy between ``softmax(logits)`` and a target: the softmax loss of every classifier.

    For a row of logits x with class-index target t, the loss is ``-log softmax(x)_t = lse(x) - x_t``,
    computed as ``(m - x_t) + log1p(sum_{j != argmax} exp(x_j - m))``: two terms >= 0, so nothing cancels
    and the loss stays exact (within 2 ulp in float32, 4 ulp in float64) even at 1e-10, where the target
    dominates. For probability targets p the loss is ``-sum_j p_j log softmax(x)_j`` with 0 log 0 = 0;
    cross-entropy between distributions p and q is ``cross_entropy(log(q), p) = entropy(p) +
    kl_divergence(p, q)``. Options apply in PyTorch's way (rules 5-7 of docs/semantics.md):

    - `softcap` c: logits become ``c * tanh(logits / c)`` first (Gemma 2); then `temperature` T divides them.
    - `weight` w: the loss of a row with target t is scaled by ``w_t`` (probability targets: ``w_j`` inside
      the sum); ``"mean"`` divides by ``sum w_t`` over the rows not ignored (by the number of rows for
      probability targets), as PyTorch.
    - `label_smoothing` e: the target becomes ``(1 - e) * onehot(t) + e / C`` (weighted as above).
    - `z_loss` z: adds ``z * lse(x)**2`` per row (PaLM), unweighted, normalised as the rest.
    - `ignore_index`: rows with that label contribute 0 loss and 0 gradient and are not counted.
    - A fully masked row (all logits -inf) contributes 0 loss and 0 gradient but is counted. With every
      row ignored, ``"mean"`` gives 0 (PyTorch: NaN). Labels outside [0, C) raise ValueError.
    - `num_items` n: ``"mean"`` divides by n instead (the global number of target tokens over
      micro-batches and ranks), so that summing such losses gives the mean over the global batch.

    The rules are the ones every layer shares (`softxent.ops.cross_entropy.spec`).

    Args:
        logits: real array with classes on `axis`; float16 is accumulated in float32 or wider.
        target: integer class indices with the shape of `logits` minus `axis`, or float probabilities
            with the shape of `logits`.
        axis: the class axis.
        weight, ignore_index, reduction, label_smoothing, z_loss, softcap, temperature, num_items: as above;
            `reduction` is ``"none"`` (per-row losses), ``"mean"`` or ``"sum"``.
        return_grad: also return d(loss)/d(logits) (for ``"none"``, of the sum of the losses).

    Returns:
        The loss in the dtype of `logits` (an array for ``"none"``), or ``(loss, grad)`` with `return_grad`.

    Example:
        >>> import softxent as sx
        >>> round(float(sx.cross_entropy([[1.0, 2.0, 3.0]], [2])), 4)   # -log 0.665
        0.4076
        >>> loss, grad = sx.cross_entropy([[1.0, 2.0, 3.0]], [2], return_grad=True)
        >>> grad.round(3)                                                # softmax - onehot
        array([[ 0.09 ,  0.245, -0.335]])
    """
    logits = as_float_array(logits, "logits")
    if logits.ndim == 0:
        raise ValueError("logits must have at least one dimension (the classes); got a scalar")
    options = loss_options(ignore_index, reduction, label_smoothing, z_loss, softcap, temperature)
    if axis is None or isinstance(axis, tuple):
        raise TypeError(f"axis must be an int for cross_entropy (one class axis); got {axis!r}")
    (class_axis,) = class_axes(axis, logits.ndim)
    rows = Rows(logits, (class_axis,))
    problem = CrossEntropyRows.build(logits.shape, rows.num_classes, target, weight, options, class_axis,
                                     to_rows=rows.like, num_items=num_items)

    scale = problem.grad_scale()
    grad = np.empty(rows.data.shape, dtype=logits.dtype) if return_grad else None
    losses = problem.losses(rows.data, grad, scale)
    loss = problem.reduce(losses, rows.batch_shape, logits.dtype)
    return (loss, rows.restore(grad)) if return_grad else loss


def loss_options(ignore_index: Any, reduction: Any, label_smoothing: Any, z_loss: Any, softcap: Any,
                 temperature: Any) -> LossOptions:
    """The call's LossOptions, validated once per distinct set of values (most calls repeat the defaults,
    and building them costs more than a small problem's arithmetic)."""
    try:
        return _cached_options(ignore_index, reduction, label_smoothing, z_loss, softcap, temperature)
    except TypeError:  # an unhashable value (the options' own checks refuse it, with their message)
        return _cached_options.__wrapped__(ignore_index, reduction, label_smoothing, z_loss, softcap, temperature)


# typed: 0, 0.0, False and np.float64(0) are separate entries, each checked by LossOptions on its first call
@functools.lru_cache(maxsize=64, typed=True)
def _cached_options(ignore_index, reduction, label_smoothing, z_loss, softcap, temperature) -> LossOptions:
    return LossOptions(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                       z_loss=z_loss, softcap=softcap, temperature=temperature)


class CrossEntropyRows:
    """A cross-entropy problem over rows of logits, resolved by the spec, and the row kernel.

    Built once per call; `losses` can run over the whole (rows, C) array or over chunks of it (the fused
    linear layer computes its logits a chunk of rows at a time and passes `rows` to select targets).
    """

    def __init__(self, num_classes: int, labels: np.ndarray | None, probs: np.ndarray | None,
                 weight: np.ndarray | None, options: LossOptions, num_items: Any = None, *,
                 every_label_counts: bool = False):
        self.num_classes = num_classes
        self.labels = labels  # (rows,) class indices, or None
        self.probs = probs  # (rows, C) probabilities, or None
        self.weight = weight  # (C,) float64, or None
        self.options = options
        self.num_items = num_items
        # class indices, every one a class and none ignored, without weight or smoothing: the target's
        # coefficients are onehot(t) on every row (`spec.index_coefficients` in that case), taken as such
        self.plain = every_label_counts and weight is None and not options.label_smoothing
        # without weights or num_items, every row counted: "mean" divides by the number of rows
        self._count = labels.size if self.plain and num_items is None else None
        self._denominator = None

    @classmethod
    def build(cls, logits_shape: tuple, num_classes: int, target: Any, weight: Any, options: LossOptions,
              class_axis: int, to_rows, num_items: Any = None) -> "CrossEntropyRows":
        """Check target, weight and num_items against the logits (the spec's rules); targets as rows."""
        try:
            target = target if type(target) is np.ndarray else np.asarray(target)
        except (ValueError, TypeError) as err:
            raise ValueError(f"target must be a rectangular numeric array; {err}") from None
        num_items = spec.check_num_items(num_items, options.reduction)
        labels = probs = None
        every_label_counts = False
        if spec.check_target(logits_shape, target, class_axis) == spec.INDEX:
            labels = target.reshape(-1)
            # (arg-reductions: single C calls, without min's and max's Python wrappers)
            every_label_counts = labels.size > 0 and spec.labels_in_range(
                int(labels[labels.argmin()]), int(labels[labels.argmax()]), num_classes, options.ignore_index)
            if not every_label_counts:
                spec.check_labels(xp, target, num_classes, options.ignore_index)
        else:
            spec.check_probabilities(xp, target)
            probs = to_rows(target)
        if weight is not None:
            weight = as_float_array(weight, "weight")
            spec.check_weight(xp, weight, num_classes)
            weight = weight.astype(np.float64)
        return cls(num_classes, labels, probs, weight, options, num_items, every_label_counts=every_label_counts)

    # --- reduction ---------------------------------------------------------------------------------

    def denominator(self) -> np.ndarray:
        """What "mean" divides by (the spec's rule 6, or num_items), computed once."""
        if self._denominator is None:
            kind = spec.INDEX if self.labels is not None else spec.PROBS
            num_rows = self.labels.size if self.labels is not None else self.probs.shape[0]
            self._denominator = spec.mean_denominator(
                xp, kind, self.labels, self.weight, self.options.ignore_index, num_rows, np.float64,
                num_classes=self.num_classes, num_items=self.num_items)
        return self._denominator

    def grad_scale(self) -> float:
        if self.options.reduction == "mean" and self._count:
            return 1.0 / self._count  # a count of rows > 0: nothing for spec.gradient_scale's 0 to guard
        denominator = self.denominator() if self.options.reduction == "mean" else None
        return float(spec.gradient_scale(xp, denominator, np.float64))

    def reduce(self, losses: np.ndarray, batch_shape: tuple, dtype: np.dtype):
        reduction = self.options.reduction
        if reduction == "mean" and self._count:  # the mean of a count of rows > 0, as spec.reduce takes it
            mean = float(losses.sum()) / self._count
            if abs(mean) <= _largest(dtype):
                return dtype.type(mean)
        # worked in float64, a float32 loss can lie beyond float32's range (a gap of 2.9e38 at T = 0.5):
        # inf is the float32 it rounds to, so that overflow on the way out is the answer, not an error
        with np.errstate(over="ignore"):
            if reduction == "none":
                return losses.reshape(batch_shape).astype(dtype)
            denominator = self.denominator() if reduction == "mean" else None
            return np.asarray(spec.reduce(xp, losses, reduction, denominator), dtype=dtype)[()]

    # --- the row kernel ----------------------------------------------------------------------------

    def losses(self, logits: np.ndarray, grad_out: np.ndarray | None, grad_scale: float,
               rows: slice = slice(None)) -> np.ndarray:
        """Per-row losses (float64) of logits (n, C), the targets' `rows`; fills grad_out if given.

        grad_out receives d(grad_scale * sum of losses)/d(logits) and may be `logits` itself: each block
        of rows is read into scratch before its gradient is written.
        """
        labels = None if self.labels is None else self.labels[rows]
        probs = None if self.probs is None else self.probs[rows]
        num_rows, num_classes = logits.shape
        if num_classes == 0:
            return np.zeros(num_rows, dtype=np.float64)
        work_dtype = accurate_dtype(logits.dtype)
        step = block_rows(num_classes, work_dtype.itemsize)
        # without `main` the blocks are worked in grad_out itself, which has the working precision
        main = grad_out is None or grad_out.dtype != work_dtype
        tanh = grad_out is not None and self.options.softcap is not None
        if num_rows <= step:  # one block (every small problem): no spans, no views
            scratch = _Scratch((num_rows, num_classes), work_dtype, main, tanh, probs is not None)
            return self._block(logits, labels, probs, grad_out, grad_scale, scratch).astype(np.float64, copy=False)

        losses = np.empty(num_rows, dtype=np.float64)

        def work(start: int, stop: int) -> None:
            scratch = _Scratch((min(step, stop - start), num_classes), work_dtype, main, tanh, probs is not None)
            for block in blocks(start, stop, step):
                losses[block] = self._block(
                    logits[block], None if labels is None else labels[block],
                    None if probs is None else probs[block],
                    None if grad_out is None else grad_out[block], grad_scale,
                    scratch.first(block.stop - block.start))

        for_row_spans(num_rows, num_classes, work)
        return losses

    def _block(self, logits, labels, probs, grad_out, grad_scale, scratch) -> np.ndarray:
        options, weight, num_classes = self.options, self.weight, self.num_classes
        smoothing = options.label_smoothing
        n = logits.shape[0]
        buf = grad_out if scratch.main is None else scratch.main

        # 1. z = softcap * tanh(x / softcap) / T in the working precision, then d = z - max z
        if options.softcap is not None:
            # a -inf logit is a mask, not a score: the cap would lift it to -softcap and give the masked
            # class mass, so it stays -inf (masks apply after the cap, as in Gemma 2); found before buf,
            # which may be the logits' own memory, is written
            capped_masks = np.isneginf(logits)
            np.copyto(buf, logits, casting="unsafe")
            with np.errstate(over="ignore"):  # x / softcap beyond the float range: tanh(inf) = 1 is right
                buf /= options.softcap
            np.tanh(buf, out=buf)
            if scratch.tanh is not None:
                scratch.tanh[...] = buf  # for the chain rule: dz/dx = (1 - tanh^2) / T
            buf *= options.softcap / options.temperature
            np.copyto(buf, -np.inf, where=capped_masks)
            shift = shift_rows(buf, buf)
        else:
            shift = shift_rows(logits, buf)
            if options.temperature != 1.0:
                # (x - m) / T after the shift, so x / T never overflows; max(x / T) is m / T for T > 0.
                # Beyond the float range (T < 1 and |x| near the maximum) the result is that large
                with np.errstate(over="ignore"):
                    buf /= options.temperature
                    shift.value /= options.temperature

        # 2. the target's coefficients a_j (loss = sum_j a_j (lse - z_j), the spec's) and the sums that need d;
        # kept None: every row counts
        if labels is not None:
            if self.plain:  # a = onehot(t) on every row: scalars
                kept, safe, target_coef, smooth_coef, total_coef = None, labels, 1.0, 0.0, 1.0
            else:
                coefficients = spec.index_coefficients(xp, labels, weight, options, num_classes, np.float64)
                kept, safe = coefficients.kept, coefficients.safe
                target_coef, smooth_coef, total_coef = coefficients.target, coefficients.uniform, coefficients.total
            entries = flat(buf)
            at_target = shift.starts + safe.astype(np.intp, copy=False)  # flat positions of the targets' entries
            target_d = entries[at_target]
            w_sum = num_classes if weight is None else weight.sum()
            if smoothing:
                smooth_d = _weighted_row_sums(buf, weight)
        else:
            kept = None
            coef = scratch.coef
            coef[...] = spec.probability_coefficients(xp, probs, weight, options, num_classes, coef.dtype)
            coef_d = _weighted_row_sums(buf, coef)
            total_coef = coef.sum(axis=1)
        if shift.masked is not None:
            kept = np.ones(n, dtype=bool) if kept is None else kept
            kept[shift.masked] = False  # a fully masked row carries no information (rule 2)
        # plain targets, every row counted, no z-loss, a gradient scale <= 1: no inf * 0, -inf - -inf or
        # overflow can arise below
        calm = self.plain and kept is None and not options.z_loss and 0.0 <= grad_scale <= 1.0

        # 3. e = exp(d) and L = log sum e, exact; lse = max + L; rest = the sum without the max's own 1.
        # In float64 for float32 logits, not in float32: NumPy's float32 exp is off by up to 2.54 ulp
        # (measured over [-103, 0]), and a float32 d = x - m carries a rounding of up to |d| 2^-24 that exp
        # turns into as much relative error (up to 40 ulp of e at d = -40): the gradient's 4 ulp would not hold.
        # A float64 d is exact and its exp within 2^-52, so each p_j = e_j / sum e is within 2^-50 before
        # its one rounding to float32 (0.5 ulp), and the loss L - d_t within 2^-50 before its own.
        log_sum, total, rest = exp_log_sum(buf, shift.at_first, buf)
        lse = shift.lse(log_sum) if options.z_loss else None

        # 4. the loss: sum_j a_j (L - d_j) + z lse^2, a sum of terms >= 0 (d <= 0 <= L)
        # 0 * inf where a coefficient is 0 and -inf - -inf in a fully masked row: dropped just below;
        # z * lse**2 may overflow to +inf, the value it rounds to (and 0 for an ignored row)
        with _quiet(calm, invalid="ignore", over="ignore"):
            if labels is None:
                loss = total_coef * log_sum - coef_d
            elif self.plain:
                loss = log_sum - target_d
            else:
                loss = np.where(target_coef > 0, target_coef * (log_sum - target_d), 0.0)
                if smoothing:
                    loss += smooth_coef * (w_sum * log_sum - smooth_d)
            if options.z_loss:
                loss += options.z_loss * lse * lse * (1.0 if kept is None else kept)
        # masked and ignored rows give exactly 0, even when their logits are +inf or NaN (padding), where
        # the products with kept above are inf * 0 = NaN
        if kept is not None:
            loss[~kept] = 0.0

        # 5. the gradient: dz_j = s (A + 2 z lse) p_j - s a_j, with p = e / sum e and A = sum_j a_j
        if grad_out is not None:
            s = grad_scale if kept is None else grad_scale * kept
            # z-loss's share of the row factor, 2 z lse; without a z-loss none at all, so that an lse beyond
            # the float range (1.7e308 at T = 0.5) cannot turn 0 * inf into NaN
            z_share = 0.0
            if options.z_loss:
                finite_lse = np.where(np.isinf(lse), shift.value + log_sum, lse)  # +inf rows: the limit's
                z_share = 2.0 * options.z_loss * finite_lse
            with _quiet(calm, all="ignore"):  # masked rows divide by 0 here; they are zeroed just below
                row_factor = s * (total_coef + z_share) / total
            if kept is not None:
                row_factor[~kept] = 0.0
            if not calm:
                huge = np.flatnonzero(np.isinf(row_factor))  # a z-loss beyond the range: inf where p > 0, 0 else
                if huge.size:
                    part = buf[huge]
                    np.multiply(part, row_factor[huge, None], out=part, where=part != 0)
                    buf[huge] = part
                    row_factor[huge] = 1.0
            buf *= row_factor[:, None]
            if labels is not None:
                # the target's entry s (F e_t - a_t sum e) / sum e; where the target holds the max (e_t = 1)
                # it is taken as s ((F - a_t) - a_t rest) / sum e, rest = sum_{j != t} e_j: p_t - 1 computed
                # as -sum_{j != t} p_j, never by cancellation (rule 11), exact when p_t is near 1 (rows not
                # kept get any value here: they are zeroed below)
                with _quiet(calm, all="ignore"):
                    if self.plain and not options.z_loss:
                        at_max = rest * -s / total  # the same with F - a_t = 0 and a_t = 1, in fewer steps
                    else:
                        other = smooth_coef * w_sum + z_share  # F - a_t, without the cancellation
                        at_max = s * (other - target_coef * rest) / total
                entries[at_target] = np.where(safe == shift.first, at_max, entries[at_target] - s * target_coef)
                if smoothing:
                    buf -= (s * smooth_coef)[:, None] * (1.0 if weight is None else weight)
            else:
                scratch.coef *= s if kept is None else s[:, None]
                buf -= scratch.coef
            if options.softcap is not None:  # chain rule through softcap * tanh(x / softcap) / T
                np.square(scratch.tanh, out=scratch.tanh)
                np.subtract(1.0, scratch.tanh, out=scratch.tanh)
                buf *= scratch.tanh
            if options.temperature != 1.0:
                buf /= options.temperature
            if kept is not None:
                buf[~kept] = 0.0  # ignored rows with NaN logits: NaN * 0 left NaN above
            if buf is not grad_out:
                # beyond float32's range (p / T at T = 1e-40): inf, as above
                with _quiet(calm and options.temperature == 1.0, over="ignore"):
                    np.copyto(grad_out, buf, casting="unsafe")
        return loss


def _largest(dtype: np.dtype) -> float:
    largest = _LARGEST.get(dtype.char)
    if largest is None:
        largest = _LARGEST[dtype.char] = float(np.finfo(dtype).max)
    return largest


_LARGEST: dict[str, float] = {}


_CALM = contextlib.nullcontext()


def _quiet(calm: bool, **errors) -> Any:
    """np.errstate(**errors) for the steps where inf or NaN arithmetic is intended, or nothing at all
    for a calm block (where none can arise), whose small problems would feel its cost."""
    return _CALM if calm else np.errstate(**errors)


@dataclass
class _Scratch:
    """A thread's scratch buffers: the working rows (None: work in grad_out), tanh for softcap's chain
    rule, probability targets' coefficients; kept by the thread from call to call (`thread_buffer`)."""

    main: np.ndarray | None
    tanh: np.ndarray | None
    coef: np.ndarray | None

    def __init__(self, shape: tuple, dtype: np.dtype, main: bool, tanh: bool, coef: bool):
        self.main = thread_buffer("cross_entropy.main", shape, dtype) if main else None
        self.tanh = thread_buffer("cross_entropy.tanh", shape, dtype) if tanh else None
        self.coef = thread_buffer("cross_entropy.coef", shape, dtype) if coef else None

    def first(self, size: int) -> "_Scratch":
        """The same buffers cut to a block's first `size` rows."""
        view = copy(self)
        view.main, view.tanh, view.coef = (None if b is None else b[:size] for b in (self.main, self.tanh, self.coef))
        return view


def _weighted_row_sums(shifted: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """sum_j weight_j d_j per row (weight a vector, a matrix or None for ones), with 0 * -inf = 0."""
    if weight is None:
        return shifted.sum(axis=1)
    with np.errstate(invalid="ignore"):  # 0 * -inf here and in the fallback: replaced by 0 below
        sums = shifted @ weight if weight.ndim == 1 else np.einsum("ij,ij->i", shifted, weight)
        broken = np.flatnonzero(np.isnan(sums))
        if broken.size:  # a -inf logit on a class of weight 0: that term is 0 (rule 4), NaN logits stay NaN
            part = shifted[broken]
            w = weight if weight.ndim == 1 else weight[broken]
            sums[broken] = np.where(w > 0, part * w, np.where(np.isnan(part), np.nan, 0.0)).sum(axis=1)
    return sums
