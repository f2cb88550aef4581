"""Distillation losses for NumPy: the reference, with the student's gradient (see the package docstring)."""

from __future__ import annotations

from typing import Any

import numpy as np

from softxent import _validation as v
from softxent._arrays import Rows, as_float_array, block_rows, blocks, xp
from softxent._options import LossOptions
from softxent.ops.cross_entropy import spec
from softxent.ops.linear_cross_entropy.numpy import LinearHead, _checked_layer
from softxent.ops.logsumexp.numpy import shift_rows


class DistillationProblem:
    """One call's resolved problem: the divergence, the options, the rows that count, the denominator."""

    def __init__(self, divergence: str, beta: float, temperature: float, labels: np.ndarray | None,
                 num_rows: int, num_classes: int, reduction: str, ignore_index: int, num_items: Any):
        self.divergence, self.beta = spec.check_divergence(divergence, beta)
        self.options = LossOptions(ignore_index=ignore_index, reduction=reduction, temperature=temperature)
        self.num_items = spec.check_num_items(num_items, self.options.reduction)
        self.labels, self.num_rows, self.num_classes = labels, num_rows, num_classes
        self.kept = np.ones(num_rows, dtype=bool) if labels is None else labels != ignore_index

    def denominator(self):
        if self.options.reduction != "mean":
            return None
        return spec.row_denominator(xp, self.labels, self.options.ignore_index, self.num_rows, np.float64,
                                    num_classes=self.num_classes, num_items=self.num_items)

    def grad_scale(self) -> float:
        return float(spec.gradient_scale(xp, self.denominator(), np.float64))

    def reduce(self, losses: np.ndarray, batch_shape: tuple, dtype):
        if self.options.reduction == "none":
            return losses.reshape(batch_shape).astype(dtype)
        return np.asarray(spec.reduce(xp, losses, self.options.reduction, self.denominator()), dtype=dtype)[()]

    def losses(self, student: np.ndarray, teacher: np.ndarray, grad_out: np.ndarray | None, grad_scale: float,
               rows: slice = slice(None)) -> np.ndarray:
        """Per-row losses (float64) of (n, V) logits, the problem's `rows`; grad_out (may be `student`)
        receives d(grad_scale * sum of losses)/d(student)."""
        kept = self.kept[rows]
        num_rows, num_classes = student.shape
        losses = np.zeros(num_rows)
        if num_classes == 0:
            if grad_out is not None:
                grad_out[...] = 0.0
            return losses
        for block in blocks(0, num_rows, block_rows(num_classes, 16)):
            losses[block] = self._block(student[block], teacher[block], kept[block],
                                        None if grad_out is None else grad_out[block], grad_scale)
        return losses

    def _block(self, student, teacher, kept, grad_out, grad_scale):
        temperature, beta = self.options.temperature, self.beta
        # 1. log-probabilities from the shifted, tempered scores: log q = d - L (exact, never log of q)
        log_q, live_q = _log_probs(student, temperature)
        log_p, live_p = _log_probs(teacher, temperature)
        live = kept & live_q & live_p  # a row of -inf logits only (either model) carries no information
        q, p = np.exp(log_q), np.exp(log_p)

        # 2. the divergence and its gradient with respect to the student's scores u = student / T
        with np.errstate(invalid="ignore"):  # inf - inf, 0 * inf where a probability is 0: dropped (0 log 0)
            if self.divergence == "kl":
                loss = np.where(p > 0, p * (log_p - log_q), 0.0).sum(axis=1)
                grad = q - p
            elif self.divergence == "reverse_kl":
                ratio = np.where(q > 0, log_q - log_p, 0.0)
                loss = (q * ratio).sum(axis=1)
                grad = q * (ratio - loss[:, None])
            else:
                with np.errstate(divide="ignore"):  # log 0 = -inf for beta 0 or 1: logaddexp takes the other
                    log_m = np.logaddexp(np.log(beta) + log_p, np.log1p(-beta) + log_q)
                to_p = np.where(p > 0, p * (log_p - log_m), 0.0).sum(axis=1)
                g = np.where(q > 0, (1.0 - beta) * (log_q - log_m), 0.0)
                to_q = (q * g).sum(axis=1) / (1.0 - beta) if beta < 1.0 else np.zeros(len(q))
                loss = beta * to_p + (1.0 - beta) * to_q
                grad = q * (g - (q * g).sum(axis=1)[:, None])
        scale = temperature * temperature  # T^2 (Hinton et al. 2015)
        loss = np.where(live, loss * scale, 0.0)
        if grad_out is not None:
            # d(T^2 D)/d student = T^2 / T dD/du; rows that do not count get exactly 0, also over NaN
            grad = np.where(live[:, None], grad * (grad_scale * temperature), 0.0)
            np.copyto(grad_out, grad, casting="unsafe")
        return loss


def _log_probs(logits: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """log softmax(logits / T) per row in float64 (max shift first, then T), and which rows are not all -inf."""
    d = logits.astype(np.float64)
    shift = shift_rows(d, d)
    if temperature != 1.0:
        d /= temperature
    rows = np.arange(d.shape[0])
    e = np.exp(d)
    top = e[rows, shift.first].copy()  # 1, or 0 in a masked row
    e[rows, shift.first] = 0.0
    rest = e.sum(axis=1)  # without the max's own 1: a tiny tail is not rounded into 1 + tail
    with np.errstate(divide="ignore"):  # a fully masked row: log 0, flagged as not live
        log_sum = np.where(top == 1.0, np.log1p(rest), np.log(top + rest))
    live = np.ones(len(d), dtype=bool) if shift.masked is None else ~np.isin(rows, shift.masked)
    with np.errstate(invalid="ignore"):  # -inf - -inf in masked rows (not live)
        return d - log_sum[:, None], live


def _checked_pair(student: Any, teacher: Any, target: Any, class_axis_arg: int, ignore_index: int,
                  names=("student_logits", "teacher_logits")):
    student = as_float_array(student, names[0])
    teacher = as_float_array(teacher, names[1])
    if student.ndim == 0:
        raise ValueError(f"{names[0]} must have at least one dimension (the classes); got a scalar")
    v.check_same_shape(student.shape, teacher.shape, names[0], names[1])
    return student, teacher


def checked_rows_target(target: Any, logits_shape: tuple, class_axis: int, num_classes: int, ignore_index: int,
                        logits_name: str) -> np.ndarray | None:
    """None, or class indices marking the rows (their values checked like any label: rule 7)."""
    if target is None:
        return None
    from softxent.ops.token_log_probs.numpy import checked_labels

    return checked_labels(logits_shape, num_classes, target, class_axis, ignore_index, logits_name=logits_name)


def distillation_loss(student_logits: Any, teacher_logits: Any, *, axis: int = -1, divergence: str = "kl",
                      beta: float = 0.5, temperature: float = 1.0, target: Any = None, ignore_index: int = -100,
                      reduction: str = "mean", num_items: Any = None, return_grad: bool = False):
    """A divergence between the teacher's softmax p and the student's q, per row, times T^2.

    .. math::  \\mathrm{KL}(p \\| q) = \\sum_j p_j (\\log p_j - \\log q_j),\\quad
               p = \\mathrm{softmax}(t / T),\\ q = \\mathrm{softmax}(s / T)

    `divergence` "kl" (forward), "reverse_kl" (KL(q || p)) or "jsd" (``beta KL(p || m) + (1 - beta)
    KL(q || m)``, m = beta p + (1 - beta) q; 0 at beta = 0 and 1). Gradients go to the student only.

    Args:
        student_logits, teacher_logits: real arrays of the same shape, classes on `axis`.
        axis: the class axis.
        divergence, beta, temperature: as above (temperature divides after the max shift).
        target: optional class indices (the logits' shape without `axis`): rows whose target is
            `ignore_index` give 0 and are not counted.
        reduction: "none", "mean" (over the rows counted, or `num_items`) or "sum".
        num_items: "mean"'s denominator instead (the global count over micro-batches and ranks).
        return_grad: also return the gradient with respect to `student_logits` (for "none", of the sum).

    Returns:
        The loss (per row for "none"), in the dtype of the student's logits; ``(loss, grad)`` with
        `return_grad`.

    Example:
        >>> import softxent as sx
        >>> float(sx.distillation_loss([[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]]))   # same distributions
        0.0
        >>> round(float(sx.distillation_loss([[0.0, 0.0]], [[0.0, 1.0]])), 4)     # KL((.27, .73) || (.5, .5))
        0.1109

    See also: `softxent.torch.distillation_loss`, `linear_distillation_loss`, `kl_divergence`.

    References:
        Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network"; Agarwal et al. 2024,
        "On-policy distillation of language models" (GKD: the generalized JSD).
    """
    student, teacher = _checked_pair(student_logits, teacher_logits, target, axis, ignore_index)
    if axis is None or isinstance(axis, tuple):
        raise TypeError(f"axis must be an int for distillation_loss (one class axis); got {axis!r}")
    (class_axis,) = v.normalize_axes(axis, student.ndim)
    s_rows, t_rows = Rows(student, (class_axis,)), Rows(teacher, (class_axis,))
    labels = checked_rows_target(target, student.shape, class_axis, s_rows.num_classes, ignore_index,
                                 "student_logits")
    problem = DistillationProblem(divergence, beta, temperature, labels, s_rows.data.shape[0], s_rows.num_classes,
                                  reduction, ignore_index, num_items)
    grad = np.empty(s_rows.data.shape, dtype=student.dtype) if return_grad else None
    losses = problem.losses(s_rows.data, t_rows.data, grad, problem.grad_scale())
    loss = problem.reduce(losses, s_rows.batch_shape, student.dtype)
    return (loss, s_rows.restore(grad)) if return_grad else loss


def linear_distillation_loss(student_x: Any, student_w: Any, teacher_x: Any, teacher_w: Any, *,
                             student_bias: Any = None, teacher_bias: Any = None, divergence: str = "kl",
                             beta: float = 0.5, temperature: float = 1.0, target: Any = None,
                             ignore_index: int = -100, reduction: str = "mean", num_items: Any = None,
                             chunk_size: int | None = None, return_grad: bool = False):
    """`distillation_loss` of two linear heads, ``student_x @ student_w.T`` against ``teacher_x @ teacher_w.T``.

    Both models' logits are computed `chunk_size` rows at a time and never held whole; the student's
    chunk becomes its gradient in place and goes into ``(dx, dw, dbias)`` before the next chunk. The
    heads share the vocabulary V; their widths may differ.

    Args:
        student_x (..., Ds), student_w (V, Ds), teacher_x (..., Dt), teacher_w (V, Dt); the biases (V,) or None.
        divergence, beta, temperature, target, ignore_index, reduction, num_items: as `distillation_loss`.
        chunk_size: rows per chunk; None picks about 4M logits per chunk (per model).
        return_grad: also return the student's ``(dx, dw, dbias)`` (`dbias` None without a bias).

    Returns:
        The loss, or ``(loss, (dx, dw, dbias))``.

    Example:
        >>> import numpy as np, softxent as sx
        >>> x, w = np.eye(2), np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> loss = sx.linear_distillation_loss(x, w, x, 2 * w, chunk_size=1)
        >>> bool(np.isclose(loss, sx.distillation_loss(x @ w.T, x @ (2 * w).T)))
        True

    See also: `softxent.torch.linear_distillation_loss`.
    """
    chunk_size = v.check_chunk_size(chunk_size)
    sx_, sw, sb = _checked_layer(student_x, student_w, student_bias)
    tx, tw, tb = _checked_layer(teacher_x, teacher_w, teacher_bias)
    if sx_.shape[:-1] != tx.shape[:-1]:
        raise ValueError(f"teacher_x must have the rows of student_x, shape {sx_.shape[:-1]} + (D,); got shape "
                         f"{tx.shape}")
    if sw.shape[0] != tw.shape[0]:
        raise ValueError(f"teacher_w must have the vocabulary of student_w, {sw.shape[0]} rows; got shape {tw.shape}")
    student = LinearHead(sx_, sw, sb, chunk_size, want_grad=return_grad)
    teacher = LinearHead(tx, tw, tb, student.chunk, want_grad=False)  # the same chunks of rows, no gradient
    num_classes, num_rows = student.num_classes, student.num_rows
    batch_shape = sx_.shape[:-1]
    labels = checked_rows_target(target, batch_shape + (num_classes,), len(batch_shape), num_classes, ignore_index,
                                 "the logits student_x @ student_w.T")
    problem = DistillationProblem(divergence, beta, temperature, labels, num_rows, num_classes, reduction,
                                  ignore_index, num_items)
    scale = problem.grad_scale()
    losses = np.zeros(num_rows)
    for (part, s_logits), (_, t_logits) in zip(student.chunks(), teacher.chunks()):
        losses[part] = problem.losses(s_logits, t_logits, s_logits if return_grad else None, scale, rows=part)
        if return_grad:
            student.fold(part, s_logits)
    loss = problem.reduce(losses, batch_shape, student.dtype)
    return (loss, student.gradients()) if return_grad else loss
