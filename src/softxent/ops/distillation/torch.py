"""Distillation losses for torch: fused gradients to the student, and linear heads without (N, V) logits.

Layers: `distillation_loss` / `linear_distillation_loss` (validation) -> the autograd Functions -> the
row kernel `torch_cpu.distill_rows`. With reduction "mean" or "sum" the student's gradient is computed in
the forward sweep (the linear form folds it into the head's gradients chunk by chunk) and the backward
only scales it; with "none" each row's upstream gradient is needed first, so the backward sweeps again.
The math is the package docstring's.
"""

from __future__ import annotations

from dataclasses import dataclass

import array_api_compat.torch as xp
import torch

from softxent import _validation as v
from softxent._options import LossOptions
from softxent._torch import backend as _backend
from softxent._torch import memory
from softxent._torch.matmul import fold_chunk
from softxent.ops.cross_entropy import spec
from softxent.ops.cross_entropy.torch_cpu import accumulation_dtype
from softxent.ops.distillation import torch_cpu
from softxent.ops.linear_cross_entropy.torch import choose_chunk_size


def distill_rows(student, teacher, kept, divergence, beta, temperature, *, row_scale=None, grad_out=None):
    """The row kernel for these logits: Triton's on CUDA (same dtype for both models), the torch one elsewhere;
    under torch.compile a custom op around them, opaque to tracing (the kernels branch on data)."""
    if torch.compiler.is_compiling():
        return torch.ops.softxent.distill_rows(student, teacher, kept, divergence, beta, temperature, row_scale,
                                               grad_out)
    return _eager_distill_rows(student, teacher, kept, divergence, beta, temperature, row_scale, grad_out)


def _eager_distill_rows(student: torch.Tensor, teacher: torch.Tensor, kept: torch.Tensor, divergence: str,
                        beta: float, temperature: float, row_scale: torch.Tensor | None,
                        grad_out: torch.Tensor | None) -> torch.Tensor:
    if _backend.uses_triton(student) and _backend.uses_triton(teacher):
        from softxent.ops.distillation import triton as kernels

        return kernels.distill_rows(student, teacher, kept, divergence, beta, temperature, row_scale=row_scale,
                                    grad_out=grad_out)
    return torch_cpu.distill_rows(student, teacher, kept, divergence, beta, temperature, row_scale=row_scale,
                                  grad_out=grad_out)


_distill_rows_op = torch.library.custom_op("softxent::distill_rows", _eager_distill_rows, mutates_args=("grad_out",))


@_distill_rows_op.register_fake
def _(student, teacher, kept, divergence, beta, temperature, row_scale, grad_out):
    return student.new_empty(student.shape[0], dtype=accumulation_dtype(student.dtype))


@dataclass(frozen=True)
class _Problem:
    divergence: str
    beta: float
    options: LossOptions  # temperature, ignore_index, reduction
    num_items: object

    @property
    def temperature(self) -> float:
        return self.options.temperature


def _problem(divergence, beta, temperature, ignore_index, reduction, num_items) -> _Problem:
    divergence, beta = spec.check_divergence(divergence, beta)
    options = LossOptions(ignore_index=ignore_index, reduction=reduction, temperature=temperature)
    return _Problem(divergence, beta, options, spec.check_num_items(num_items, options.reduction))


def _kept(target, num_rows: int, problem: _Problem, device, num_classes: int, check: bool) -> torch.Tensor:
    """The rows that count: target != ignore_index (all of them without a target).

    `check` is set only under torch.compile, where the labels are checked here, inside a custom op whose
    output the loss needs (tracing cannot branch on their values; eagerly `_check_target` did it)."""
    if target is None:
        return torch.ones(num_rows, dtype=torch.bool, device=device)
    if check:
        return torch.ops.softxent.checked_kept_rows(target.reshape(-1), num_classes, problem.options.ignore_index)
    return target.reshape(-1) != problem.options.ignore_index


@torch.library.custom_op("softxent::checked_kept_rows", mutates_args=())
def _checked_kept_rows(labels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    _backend.check_labels(labels, num_classes, ignore_index, labels)
    return labels != ignore_index


@_checked_kept_rows.register_fake
def _(labels, num_classes, ignore_index):
    return torch.empty_like(labels, dtype=torch.bool)


def _denominator(target, num_rows: int, num_classes: int, problem: _Problem, acc, device):
    if problem.options.reduction != "mean":
        return None
    labels = None if target is None else target.reshape(-1)
    return spec.row_denominator(xp, labels, problem.options.ignore_index, num_rows, acc, num_classes=num_classes,
                                num_items=problem.num_items, device=device)


def _check_target(target, batch_shape: tuple, num_classes: int, problem: _Problem, reference, check: bool,
                  logits_name: str = "student_logits"):
    if target is None:
        return
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor or None; got {type(target).__name__}")
    if spec.check_target(tuple(batch_shape) + (num_classes,), target, len(batch_shape)) != spec.INDEX:
        raise v.probabilities_target_error(tuple(target.shape), logits_name)
    if target.device != reference.device:
        raise ValueError(f"target must be on {reference.device}; got {target.device}")
    if check and not torch.compiler.is_compiling():  # compiled: `_kept` checks them
        _backend.check_labels(target, num_classes, problem.options.ignore_index, reference)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, divergence: str = "kl",
                      beta: float = 0.5, temperature: float = 1.0, target: torch.Tensor | None = None,
                      ignore_index: int = -100, reduction: str = "mean", num_items=None, check_labels: bool = True):
    """A divergence between softmax(teacher / T) = p and softmax(student / T) = q, per row, times T^2.

    "kl": KL(p || q); "reverse_kl": KL(q || p); "jsd": ``beta KL(p || m) + (1 - beta) KL(q || m)`` with
    m = beta p + (1 - beta) q. Log-probabilities come from the shifted scores (exact, never the log of a
    rounded probability), 0 log 0 = 0. The gradient flows to the student only (the teacher is detached)
    and, for "mean" and "sum", is computed in the forward sweep into one buffer of the student's size.

    Args:
        student_logits, teacher_logits: (..., V) floating tensors of the same shape (classes last).
        divergence, beta, temperature: as above.
        target: optional class indices of shape ``student_logits.shape[:-1]``: rows whose target is
            `ignore_index` give 0 and are not counted by "mean".
        reduction: "none" (per row), "mean" (over the rows counted) or "sum".
        num_items: with "mean", divide by this (int or 0-d tensor) instead: the global number of rows.
        check_labels: extension: check target's values (a host sync on a GPU).

    Returns:
        The loss in the student's dtype (per row for "none").

    Example:
        >>> import torch, softxent.torch as sxt
        >>> student = torch.tensor([[0.0, 0.0]], requires_grad=True)
        >>> loss = sxt.distillation_loss(student, torch.tensor([[0.0, 1.0]]))   # KL((.27, .73) || (.5, .5))
        >>> round(loss.item(), 4)
        0.1109
        >>> loss.backward(); student.grad.round(decimals=4)                      # q - p
        tensor([[ 0.2311, -0.2311]])

    See also: `softxent.distillation_loss` (NumPy), `linear_distillation_loss`.

    References:
        Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network"; Agarwal et al. 2024,
        "On-policy distillation of language models".
    """
    problem = _problem(divergence, beta, temperature, ignore_index, reduction, num_items)
    for name, tensor in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
        v.check_numeric(tensor, name, allow_int=False)
    if student_logits.dim() == 0:
        raise ValueError("student_logits must have at least one dimension (the classes); got a scalar")
    v.check_same_shape(tuple(student_logits.shape), tuple(teacher_logits.shape), "student_logits", "teacher_logits")
    if teacher_logits.device != student_logits.device:
        raise ValueError(f"teacher_logits must be on {student_logits.device}; got {teacher_logits.device}")
    _check_target(target, student_logits.shape[:-1], student_logits.shape[-1], problem, student_logits,
                  check_labels)
    want_grad = torch.is_grad_enabled() and student_logits.requires_grad
    compiled_check = bool(check_labels) and torch.compiler.is_compiling()
    return _Distillation.apply(student_logits, teacher_logits.detach(), target, problem, want_grad, compiled_check)


def _reduce(losses, problem: _Problem, denom, batch_shape, dtype):
    if problem.options.reduction == "none":
        return losses.view(batch_shape).to(dtype)
    return spec.reduce(xp, losses, problem.options.reduction, denom).to(dtype)


def _scale_(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """grad * grad_loss in place; an upstream gradient of exactly 1 on the CPU skips the pass."""
    if grad_loss.device.type == "cpu" and not torch.compiler.is_compiling() and bool(grad_loss == 1):
        return grad
    return grad.mul_(grad_loss.to(grad.dtype))


class _Distillation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, target, problem: _Problem, want_grad: bool, check: bool):
        num_classes = student.shape[-1]
        s, t = student.reshape(-1, num_classes), teacher.reshape(-1, num_classes)
        num_rows = s.shape[0]
        acc = accumulation_dtype(student.dtype)
        kept = _kept(target, num_rows, problem, student.device, num_classes, check)
        denom = _denominator(target, num_rows, num_classes, problem, acc, student.device)
        fused = want_grad and problem.options.reduction != "none"
        grad = memory.empty_like(s) if fused else None
        scale = spec.gradient_scale(xp, denom, acc, student.device) if fused else None
        losses = distill_rows(s, t, kept, problem.divergence, problem.beta, problem.temperature, row_scale=scale,
                              grad_out=grad)
        ctx.problem, ctx.shape, ctx.grad, ctx.scale = problem, student.shape, grad, scale
        # the logits themselves (no new memory): "none" sweeps them again, and so does a second backward
        # through the same graph (retain_graph, gradcheck) after the fused gradient was handed over
        ctx.save_for_backward(s, t, kept)
        return _reduce(losses, problem, denom, student.shape[:-1], student.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        problem = ctx.problem
        if ctx.grad is not None:
            grad, ctx.grad = ctx.grad, None  # handed over without a copy
            return _scale_(grad, grad_loss).view(ctx.shape), None, None, None, None, None
        s, t, kept = ctx.saved_tensors
        grad = memory.empty_like(s)
        row_scale = grad_loss.reshape(-1) if ctx.scale is None else ctx.scale * grad_loss
        distill_rows(s, t, kept, problem.divergence, problem.beta, problem.temperature, row_scale=row_scale,
                     grad_out=grad)
        return grad.view(ctx.shape), None, None, None, None, None


# --- the linear form ----------------------------------------------------------------------------------


def linear_distillation_loss(student_input: torch.Tensor, student_weight: torch.Tensor, teacher_input: torch.Tensor,
                             teacher_weight: torch.Tensor, *, student_bias: torch.Tensor | None = None,
                             teacher_bias: torch.Tensor | None = None, divergence: str = "kl", beta: float = 0.5,
                             temperature: float = 1.0, target: torch.Tensor | None = None, ignore_index: int = -100,
                             reduction: str = "mean", num_items=None, chunk_size: int | None = None,
                             check_labels: bool = True):
    """`distillation_loss` of two linear heads, never holding the (N, V) logits of either model.

    Each chunk of rows computes the student's logits ``student_input @ student_weight.T + student_bias``
    and the teacher's (without autograd: the teacher gets no gradient), the divergence of each row and,
    for "mean" and "sum", the student's logit gradient in place, folded into the gradients of
    `student_input`, `student_weight` and `student_bias` before the next chunk. Memory beyond inputs and
    gradients: two chunks of logits (one per model, together 3/16 of the gradients' size by
    default). With "none" the backward runs the chunks again with each row's upstream gradient.

    Args:
        student_input (..., Ds), student_weight (V, Ds), teacher_input (..., Dt), teacher_weight (V, Dt):
            the heads (the widths may differ, the vocabulary is shared); the biases (V,) or None.
        divergence, beta, temperature, target, ignore_index, reduction, num_items, check_labels: as
            `distillation_loss`.
        chunk_size: rows per chunk; None chooses from the shapes and the free memory.

    Returns:
        The loss in the student input's dtype (per row for "none").

    Example:
        >>> import torch, softxent.torch as sxt
        >>> x, w = torch.randn(4, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
        >>> tx, tw = torch.randn(4, 6), torch.randn(5, 6)
        >>> loss = sxt.linear_distillation_loss(x, w, tx, tw, divergence="jsd", chunk_size=2)
        >>> ref = sxt.distillation_loss(x @ w.T, tx @ tw.T, divergence="jsd")
        >>> bool(torch.isclose(loss, ref, atol=1e-6))
        True
        >>> loss.backward()

    See also: `softxent.linear_distillation_loss` (NumPy), `linear_cross_entropy`.
    """
    problem = _problem(divergence, beta, temperature, ignore_index, reduction, num_items)
    chunk_size = v.check_chunk_size(chunk_size)
    _check_head(student_input, student_weight, student_bias, "student")
    _check_head(teacher_input, teacher_weight, teacher_bias, "teacher")
    if tuple(teacher_input.shape[:-1]) != tuple(student_input.shape[:-1]):
        raise ValueError(f"teacher_input must have the rows of student_input, shape "
                         f"{tuple(student_input.shape[:-1])} + (D,); got shape {tuple(teacher_input.shape)}")
    if teacher_weight.shape[0] != student_weight.shape[0]:
        raise ValueError(f"teacher_weight must have the vocabulary of student_weight, {student_weight.shape[0]} "
                         f"rows; got shape {tuple(teacher_weight.shape)}")
    for name, tensor in (("teacher_input", teacher_input), ("teacher_weight", teacher_weight)):
        if tensor.device != student_input.device:
            raise ValueError(f"{name} must be on {student_input.device}; got {tensor.device}")
    num_classes, features = student_weight.shape
    _check_target(target, student_input.shape[:-1], num_classes, problem, student_input, check_labels,
                  "the logits student_input @ student_weight.T")
    compiling = torch.compiler.is_compiling()
    # compiled, the chunk is chosen inside the op from the actual shapes (0): no recompile per size
    chunk = chunk_size or (0 if compiling else _default_chunk(student_input, student_weight))
    needs = tuple(t is not None and t.requires_grad for t in (student_input, student_weight, student_bias))
    want_grad = torch.is_grad_enabled() and any(needs)
    plan = _LinearPlan(problem, chunk, want_grad, bool(check_labels) and compiling)
    return _LinearDistillation.apply(student_input, student_weight, student_bias, teacher_input.detach(),
                                     teacher_weight.detach(), None if teacher_bias is None else teacher_bias.detach(),
                                     target, plan)


def _default_chunk(input, weight) -> int:
    """Rows per chunk: two chunks of logits live at once (student's and teacher's), together 3/16 of the
    gradients' size (linear_cross_entropy's one chunk is 0.23): the peak stays within 1.3x the gradients,
    and the chunks are not so small that reading W and dW once per chunk dominates (72 rows: the
    products 1.8x slower)."""
    num_classes, features = weight.shape
    rows = input.numel() // max(1, features)
    return max(1, min(rows, choose_chunk_size(rows, num_classes, features, input.dtype, input.device,
                                              share=3 / 32)))


def _check_head(input, weight, bias, who: str) -> None:
    names = (f"{who}_input", f"{who}_weight", f"{who}_bias")
    for name, tensor in zip(names, (input, weight, bias)):
        if tensor is None and name.endswith("bias"):
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
        v.check_numeric(tensor, name, allow_int=False)
    if input.dim() < 1:
        raise ValueError(f"{names[0]} must have at least one dimension (the features); got a scalar")
    if weight.dim() != 2 or weight.shape[1] != input.shape[-1]:
        raise ValueError(f"{names[1]} must have shape (V, {input.shape[-1]}) to match {names[0]}'s last dimension; "
                         f"got shape {tuple(weight.shape)}")
    if weight.dtype != input.dtype:
        raise TypeError(f"{names[1]} must have {names[0]}'s dtype {input.dtype}; got {weight.dtype}")
    if bias is not None:
        v.check_same_shape((weight.shape[0],), tuple(bias.shape), f"{names[1]}'s first dimension", names[2])
        if bias.dtype != input.dtype:
            raise TypeError(f"{names[2]} must have {names[0]}'s dtype {input.dtype}; got {bias.dtype}")
    for name, tensor in zip(names[1:], (weight, bias)):
        if tensor is not None and tensor.device != input.device:
            raise ValueError(f"{name} must be on {input.device}; got {tensor.device}")


@dataclass
class _LinearPlan:
    problem: _Problem
    chunk: int  # rows per chunk; 0: chosen inside the compiled op
    want_grad: bool
    check: bool = False  # check the labels inside an op (compiled only)


def _logits(x, w, b, out):
    return torch.addmm(b, x, w.t(), out=out) if b is not None else torch.mm(x, w.t(), out=out)


def _linear_sweep(sx, sw, sb, tx, tw, tb, kept, problem: _Problem, chunk: int, row_scale, needs):
    """Chunks of rows: both heads' logits, the row kernel, and (row_scale given) the student's gradients."""
    num_classes, features = sw.shape
    num_rows = sx.shape[0]
    dtype, device = sx.dtype, sx.device
    acc = accumulation_dtype(dtype)
    wide = dtype in (torch.float16, torch.bfloat16)
    want = row_scale is not None
    need_dx, need_dw, need_db = (want and n for n in needs)
    losses = torch.zeros(num_rows, dtype=acc, device=device)
    dx = memory.empty_like(sx) if need_dx else None
    dw = memory.zeros(sw.shape, dtype=acc if wide else dtype, device=device) if need_dw else None
    db = torch.zeros(num_classes, dtype=acc, device=device) if need_db and sb is not None else None
    chunk = max(1, min(chunk or _default_chunk(sx, sw), max(1, num_rows)))
    s_buffer = memory.empty(chunk, num_classes, dtype=dtype, device=device)
    t_buffer = memory.empty(chunk, num_classes, dtype=tx.dtype, device=device)
    slice_rows = max(64, (chunk * num_classes) // (4 * max(1, features)))
    per_row = want and row_scale.dim() > 0
    for lo in range(0, num_rows, chunk):
        hi = min(lo + chunk, num_rows)
        s_logits = _logits(sx[lo:hi], sw, sb, s_buffer[: hi - lo])
        t_logits = _logits(tx[lo:hi], tw, tb, t_buffer[: hi - lo])
        scale = (row_scale[lo:hi] if per_row else row_scale) if want else None
        # the student's chunk becomes d(loss)/d(logits) in place
        losses[lo:hi] = _eager_distill_rows(s_logits, t_logits, kept[lo:hi], problem.divergence, problem.beta,
                                            problem.temperature, scale, s_logits if want else None)
        if not want:
            continue
        fold_chunk(s_logits, sx[lo:hi], sw, None if dx is None else dx[lo:hi], dw, db, wide=wide,
                   slice_rows=slice_rows, acc=acc)
    grads = (dx, None if dw is None else dw.to(sw.dtype), None if db is None else db.to(sb.dtype))
    return losses, grads


def _sweep(sx, sw, sb, tx, tw, tb, kept, problem: _Problem, chunk: int, row_scale, needs):
    """`_linear_sweep`, as a custom op under torch.compile (its loop and kernel branch on shapes and data)."""
    if not torch.compiler.is_compiling():
        return _linear_sweep(sx, sw, sb, tx, tw, tb, kept, problem, chunk, row_scale, needs)
    wanted = [row_scale is not None and need for need in needs]
    losses, *grads = torch.ops.softxent.linear_distill_sweep(
        sx, sw, sb, tx, tw, tb, kept, problem.divergence, problem.beta, problem.temperature, chunk, row_scale, *wanted)
    wanted[2] = wanted[2] and sb is not None
    return losses, tuple(g if want else None for g, want in zip(grads, wanted))


@torch.library.custom_op("softxent::linear_distill_sweep", mutates_args=())
def _sweep_op(sx: torch.Tensor, sw: torch.Tensor, sb: torch.Tensor | None, tx: torch.Tensor, tw: torch.Tensor,
              tb: torch.Tensor | None, kept: torch.Tensor, divergence: str, beta: float, temperature: float,
              chunk: int, row_scale: torch.Tensor | None, need_dx: bool, need_dw: bool, need_db: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    problem = _Problem(divergence, beta, LossOptions(temperature=temperature), None)
    losses, grads = _linear_sweep(sx, sw, sb, tx, tw, tb, kept, problem, chunk, row_scale, (need_dx, need_dw, need_db))
    # a custom op returns tensors, none aliasing another: a new empty one for each gradient not computed
    return (losses, *(sx.new_empty(0) if g is None else g for g in grads))


@_sweep_op.register_fake
def _(sx, sw, sb, tx, tw, tb, kept, divergence, beta, temperature, chunk, row_scale, need_dx, need_dw, need_db):
    want = row_scale is not None
    return (sx.new_empty(sx.shape[0], dtype=accumulation_dtype(sx.dtype)),
            torch.empty_like(sx) if want and need_dx else sx.new_empty(0),
            torch.empty_like(sw) if want and need_dw else sx.new_empty(0),
            sw.new_empty(sw.shape[0]) if want and need_db and sb is not None else sx.new_empty(0))


class _LinearDistillation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_input, student_weight, student_bias, teacher_input, teacher_weight, teacher_bias,
                target, plan: _LinearPlan):
        problem = plan.problem
        num_classes, features = student_weight.shape
        sx = student_input.reshape(-1, features)
        tx = teacher_input.reshape(-1, teacher_input.shape[-1])
        num_rows = sx.shape[0]
        acc = accumulation_dtype(student_input.dtype)
        kept = _kept(target, num_rows, problem, sx.device, num_classes, plan.check)
        denom = _denominator(target, num_rows, num_classes, problem, acc, sx.device)
        fused = plan.want_grad and problem.options.reduction != "none"
        needs = ctx.needs_input_grad[:3]
        scale = spec.gradient_scale(xp, denom, acc, sx.device) if fused else None
        losses, grads = _sweep(sx, student_weight, student_bias, tx, teacher_weight, teacher_bias, kept, problem,
                               plan.chunk, scale, needs)
        ctx.plan, ctx.input_shape, ctx.scale = plan, student_input.shape, scale
        ctx.compiling = torch.compiler.is_compiling()
        ctx.fused = fused
        if fused and ctx.compiling:  # traced: the gradients go through save_for_backward
            ctx.save_for_backward(*grads)
        else:
            ctx.grads = list(grads) if fused else None
            # the inputs themselves (no new memory): "none" sweeps again, and so does a second backward
            ctx.save_for_backward(sx, student_weight, student_bias, tx, teacher_weight, teacher_bias, kept)
        return _reduce(losses, problem, denom, student_input.shape[:-1], student_input.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.fused and ctx.compiling:
            grads = [None if g is None else g * grad_loss.to(g.dtype) for g in ctx.saved_tensors]
        elif ctx.grads is not None:
            grads, ctx.grads = ctx.grads, None  # handed over without a copy
            grads = [None if g is None else _scale_(g, grad_loss) for g in grads]
        else:
            sx, sw, sb, tx, tw, tb, kept = ctx.saved_tensors
            row_scale = grad_loss.reshape(-1) if ctx.scale is None else ctx.scale * grad_loss
            _, grads = _sweep(sx, sw, sb, tx, tw, tb, kept, ctx.plan.problem, ctx.plan.chunk, row_scale,
                              ctx.needs_input_grad[:3])
        dx, dw, db = grads
        return (None if dx is None else dx.view(ctx.input_shape), dw, db, None, None, None, None, None)
