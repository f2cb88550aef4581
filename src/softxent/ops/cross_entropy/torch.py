"""Cross-entropy for torch: a drop-in for torch.nn.functional.cross_entropy, fused and memory-lean.

Layers, top to bottom: `cross_entropy` / `CrossEntropyLoss` (validation) -> `_CrossEntropyFunction`
(autograd) -> `cross_entropy_forward` / `cross_entropy_backward` (denominator, reduction, scaling) ->
the custom op `softxent::cross_entropy` (layout and value checks, opaque to torch.compile) -> the row
kernel `_backend.backend_for(logits)` (`_rows.cross_entropy_rows` on the CPU).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import array_api_compat.torch as xp
import torch
from torch import nn

from softxent import _validation as v
from softxent._options import LossOptions
from softxent.ops.cross_entropy import spec
from softxent._torch import backend as _backend
from softxent._torch import checks as _checks
from softxent._torch import memory as _memory
from softxent.ops.cross_entropy.torch_cpu import accumulation_dtype


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  size_average: bool | None = None, ignore_index: int = -100, reduce: bool | None = None,
                  reduction: str = "mean", label_smoothing: float = 0.0, *, z_loss: float = 0.0,
                  softcap: float | None = None, temperature: float = 1.0, num_items=None,
                  return_lse: bool = False, inplace_grad: bool = False, check_labels: bool = True):
    """Cross-entropy between ``softmax(input)`` and a target, with its gradient fused into the forward.

    A drop-in for ``torch.nn.functional.cross_entropy``: same positional arguments, defaults, shapes and
    results. For a row of logits x and class-index target t the loss is ``lse(x) - x_t`` with
    ``lse(x) = log sum_j exp(x_j)``; for probabilities p it is ``-sum_j p_j log softmax(x)_j``. When the
    input requires grad, the same sweep over the logits writes ``dloss/dx = softmax(x) - onehot(t)``
    (scaled) into one logits-sized buffer, in chunks of rows that stay in cache; nothing else of size
    (N, C) is kept, and the backward only multiplies by the incoming gradient (not even that when it is
    exactly 1 on the CPU). Peak extra memory: the gradient. float16 / bfloat16 are accumulated in
    float32, results come back in the input's dtype.

    Options, as PyTorch: `weight` w scales a row's loss by ``w_t`` (probabilities: ``w_j`` inside the
    sum), and ``"mean"`` divides by ``sum w_t`` over rows not ignored (by the number of rows for
    probability targets); `label_smoothing` e makes the target ``(1 - e) onehot(t) + e / C``;
    `ignore_index` rows give 0 loss and 0 gradient and are not counted. Beyond PyTorch: `z_loss` z adds
    ``z * lse**2`` per row not ignored (PaLM), unweighted, normalised as the rest; `softcap` c makes the
    logits ``c * tanh(x / c)`` first (Gemma 2), then `temperature` T divides them.

    Where softxent decides differently from PyTorch (shared/API.md): a fully masked row (all logits
    -inf) gives 0 loss and 0 gradient but is counted in ``"mean"`` (PyTorch: NaN); with every row
    ignored ``"mean"`` gives 0 and a zero gradient (PyTorch: NaN); class indices outside [0, C) other
    than `ignore_index` raise ValueError naming the first one and its position, as do negative or NaN
    probabilities and negative or non-finite weights; any integer dtype holds class indices.

    Args:
        input: logits of shape (C,), (N, C) or (N, C, d1, ..., dk), floating point.
        target: class indices of shape (), (N,) or (N, d1, ..., dk), any integer dtype; or class
            probabilities with the shape of `input`, floating point.
        weight: (C,) class weights, or None.
        ignore_index: the class index whose rows are left out (class-index targets only).
        size_average, reduce: torch's deprecated pair, mapped to `reduction` as torch maps them.
        reduction: ``"none"`` (the per-row losses, shape of `target` for class indices), ``"mean"`` or
            ``"sum"``.
        label_smoothing: e in [0, 1].
        z_loss, softcap, temperature: as above.
        num_items: with ``"mean"``, divide the (weighted) sum by this number (an int or a 0-d tensor)
            instead: the global count of target tokens over micro-batches and ranks (Hugging Face's
            `num_items_in_batch`), so that summing such losses gives the mean over the global batch.
        return_lse: also return the per-row log-sum-exp of the (softcapped, tempered) logits, in the
            input's dtype and the batch shape, differentiable.
        inplace_grad: extension. Write the gradient into `input`'s own buffer instead of a new one:
            zero extra memory, but the input's values are destroyed by the forward (they become the
            gradient), so the input must not be read again, nor saved by the op that produced it
            (autograd then raises its in-place modification error), and a second backward through the
            same graph is impossible.
        check_labels: extension. Check target values (label range, probabilities) and weights; on a GPU
            that is a host sync, which CUDA graphs cannot hold: pass False there when the data is known
            good (out-of-range labels are then undefined behaviour).

    Returns:
        The loss in the input's dtype (a tensor of the batch shape for ``"none"``), or ``(loss, lse)``
        with `return_lse`.

    Example:
        >>> import torch, softxent.torch as sxt
        >>> logits = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
        >>> loss = sxt.cross_entropy(logits, torch.tensor([2]))     # -log 0.665
        >>> round(loss.item(), 4)
        0.4076
        >>> loss.backward()
        >>> logits.grad.round(decimals=3)                            # softmax - onehot
        tensor([[ 0.0900,  0.2450, -0.3350]])

    References:
        Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"; Blanchard, Higham &
        Higham 2021, "Accurately computing the log-sum-exp and softmax functions"; Wijmans et al. 2024,
        "Cut your losses in large-vocabulary language models" (gradients in the forward pass).
    """
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce)
    options = LossOptions(weight=weight, ignore_index=ignore_index, reduction=reduction,
                          label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, temperature=temperature)
    _check_arguments(input, target, weight)
    num_items = spec.check_num_items(num_items, options.reduction)
    want_grad = torch.is_grad_enabled() and input.requires_grad
    # under torch.compile the graph is functional: the gradient gets a buffer of its own
    inplace = bool(inplace_grad) and want_grad and not torch.compiler.is_compiling()
    call = _Call(want_grad=want_grad, inplace=inplace, check=bool(check_labels), return_lse=bool(return_lse),
                 num_items=num_items)
    return _CrossEntropyFunction.apply(input, target, options, call)


def _legacy_reduction(size_average, reduce) -> str:
    """torch's deprecated size_average / reduce pair as a reduction, with torch's own warning."""
    from torch.nn import _reduction

    return _reduction.legacy_get_string(size_average, reduce, emit_warning=True)


class CrossEntropyLoss(nn.Module):
    """`cross_entropy` as a module: torch.nn.CrossEntropyLoss's constructor plus softxent's extensions.

    Example:
        >>> import torch, softxent.torch as sxt
        >>> loss_fn = sxt.CrossEntropyLoss(label_smoothing=0.1)
        >>> round(loss_fn(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([2])).item(), 4)
        0.5076
    """

    def __init__(self, weight: torch.Tensor | None = None, size_average=None, ignore_index: int = -100,
                 reduce=None, reduction: str = "mean", label_smoothing: float = 0.0, *, z_loss: float = 0.0,
                 softcap: float | None = None, temperature: float = 1.0, return_lse: bool = False,
                 inplace_grad: bool = False, check_labels: bool = True):
        super().__init__()
        if size_average is not None or reduce is not None:  # torch's deprecated pair, mapped as torch does
            reduction = _legacy_reduction(size_average, reduce)
        # validated now, so a bad option fails at construction, not at the first batch
        LossOptions(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                    z_loss=z_loss, softcap=softcap, temperature=temperature)
        self.register_buffer("weight", weight)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.z_loss, self.softcap, self.temperature = z_loss, softcap, temperature
        self.return_lse, self.inplace_grad, self.check_labels = return_lse, inplace_grad, check_labels

    def forward(self, input: torch.Tensor, target: torch.Tensor):
        return cross_entropy(input, target, self.weight, None, self.ignore_index, None, self.reduction,
                             self.label_smoothing,
                             z_loss=self.z_loss, softcap=self.softcap, temperature=self.temperature,
                             return_lse=self.return_lse, inplace_grad=self.inplace_grad,
                             check_labels=self.check_labels)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, softcap={self.softcap}")


# --- validation ---------------------------------------------------------------------------------------


def _check_arguments(input, target, weight) -> None:
    """Types, dtypes and shapes (values are checked inside the op, where they are read)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor; got {type(input).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor; got {type(target).__name__}")
    v.check_numeric(input, "input", allow_int=False)
    if input.dim() == 0:
        raise ValueError("input must have at least one dimension (the classes); got a scalar")
    spec.check_target(input.shape, target, _class_dim(input), logits_name="input")
    _checks.check_weight_argument(weight, input.shape[_class_dim(input)])
    for name, tensor in (("target", target), ("weight", weight)):
        if tensor is not None and tensor.device != input.device:
            raise ValueError(f"{name} must be on input's device {input.device}; got {tensor.device}")


def _class_dim(input: torch.Tensor) -> int:
    return 0 if input.dim() == 1 else 1


# --- forward and backward -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """How one call runs, beside the loss options: gradient wanted, written in place, values checked."""

    want_grad: bool
    inplace: bool
    check: bool
    return_lse: bool = False  # also return the lse, whose gradient reads the logits
    num_items: object = None  # "mean"'s global denominator (an int or a 0-d tensor), or None

    @property
    def keep_input(self) -> bool:
        return self.return_lse and self.want_grad and not self.inplace


def denominator(target: torch.Tensor, options: LossOptions, num_items, *, num_classes: int, num_rows: int,
                dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """What "mean" divides by (the spec's rule, on the device: no sync), or None for "sum" and "none"."""
    if options.reduction != "mean":
        return None
    kind = spec.PROBS if target.dtype.is_floating_point else spec.INDEX
    return spec.mean_denominator(xp, kind, target, options.weight, options.ignore_index, num_rows, dtype,
                                 num_classes=num_classes, num_items=num_items, device=device)


def cross_entropy_forward(input: torch.Tensor, target: torch.Tensor, options: LossOptions, call: _Call):
    """(loss, lse, grad): the reduced loss in input's dtype, lse per row, and the gradient or None.

    The gradient is that of the returned loss, already divided by the "mean" denominator.
    """
    acc = accumulation_dtype(input.dtype)
    num_classes = input.shape[_class_dim(input)]
    denom = denominator(target, options, call.num_items, num_classes=num_classes,
                        num_rows=input.numel() // max(1, num_classes), dtype=acc, device=input.device)
    grad_scale = spec.gradient_scale(xp, denom, acc, input.device)
    arguments = (target, options.weight, options.encode(), grad_scale)
    if call.inplace:
        losses, lse = torch.ops.softxent.cross_entropy_(input, *arguments, call.check)
        grad = input.detach()  # a tensor of its own on input's memory, so autograd can adopt it as .grad
    else:
        losses, lse, grad = torch.ops.softxent.cross_entropy(input, *arguments, call.want_grad, call.check)
        grad = grad if call.want_grad else None
    loss = spec.reduce(xp, losses, options.reduction, denom)
    return loss.to(input.dtype), lse.to(input.dtype), grad


def cross_entropy_backward(grad: torch.Tensor, grad_loss: torch.Tensor, class_dim: int) -> torch.Tensor:
    """grad * grad_loss, in place (grad is this call's own buffer): 0 for a scalar loss, a row for "none".

    On the CPU an upstream gradient of exactly 1 (loss.backward()) skips the pass: reading one number
    there costs no device sync.
    """
    if grad_loss.dim():
        grad_loss = grad_loss.unsqueeze(class_dim)
    if grad_loss.device.type == "cpu" and not torch.compiler.is_compiling() and bool((grad_loss == 1).all()):
        return grad
    return grad.mul_(grad_loss)


class _CrossEntropyFunction(torch.autograd.Function):
    """Autograd for the fused op: the forward writes the gradient, the backward scales it.

    The eager backward hands the buffer to autograd without a copy and keeps no reference to it (so a
    leaf's .grad becomes that very buffer). A second backward through the same graph (retain_graph,
    gradcheck) recomputes the gradient from the input, if it is still alive and unmodified.
    """

    @staticmethod
    def forward(ctx, input, target, options: LossOptions, call: _Call):
        loss, lse, grad = cross_entropy_forward(input, target, options, call)
        ctx.set_materialize_grads(False)
        ctx.options, ctx.call, ctx.class_dim = options, call, _class_dim(input)
        ctx.target_grad = target.dtype.is_floating_point and target.requires_grad
        compiling = torch.compiler.is_compiling()
        ctx.compiling = compiling
        if compiling:  # traced: everything the backward reads goes through save_for_backward
            needs_input = call.return_lse or ctx.target_grad  # else the logits may die after the forward
            ctx.save_for_backward(grad, input if needs_input else None, target)
        else:
            ctx.grad = grad
            ctx.input = weakref.ref(input)
            ctx.input_version = input._version
            ctx.target = target
            # the lse's and the target's gradients need the logits themselves: keep them for those
            ctx.saved = input if ctx.target_grad or call.keep_input else None
        return (loss, lse) if call.return_lse else loss

    @staticmethod
    def backward(ctx, grad_loss, grad_lse=None):
        options, call, class_dim = ctx.options, ctx.call, ctx.class_dim
        if ctx.compiling:
            grad, input, target = ctx.saved_tensors
        else:
            grad, ctx.grad = ctx.grad, None  # hand over: autograd may keep this very buffer as .grad
            input, target = _alive_input(ctx), ctx.target
        grad_input = grad_target = None
        if call.want_grad and (grad_loss is not None or grad_lse is not None):
            if grad_loss is not None:
                if grad is None:  # the buffer went to an earlier backward: compute it again
                    grad = _recompute_grad(ctx, input, target)
                grad_input = (grad * grad_loss.unsqueeze(class_dim) if grad_loss.dim() else grad * grad_loss) \
                    if ctx.compiling else cross_entropy_backward(grad, grad_loss, class_dim)
            if grad_lse is not None:
                extra = _lse_grad(_need(input, call, "the log-sum-exp's gradient"), grad_lse, options, class_dim)
                grad_input = extra if grad_input is None else grad_input.add_(extra)
        if ctx.target_grad and grad_loss is not None:
            grad_target = _target_grad(_need(input, call, "the target's gradient"), target, grad_loss, options,
                                       class_dim)
        return grad_input, grad_target, None, None


def _alive_input(ctx):
    if ctx.saved is not None:
        return ctx.saved
    input = ctx.input()
    if input is not None and input._version != ctx.input_version:
        return None  # modified since the forward (inplace_grad, or by the caller)
    return input


def _need(input, call: _Call, what: str) -> torch.Tensor:
    if input is None or call.inplace:
        raise RuntimeError(f"softxent.torch.cross_entropy: {what} needs the logits, which "
                           + ("inplace_grad=True overwrote" if call.inplace else "are gone or were modified"))
    return input


def _recompute_grad(ctx, input, target) -> torch.Tensor:
    if input is None or ctx.call.inplace:
        raise RuntimeError(
            "softxent.torch.cross_entropy computes its gradient in the forward pass and handed it to the first "
            "backward; a second backward through the same graph recomputes it from the logits, which "
            + ("inplace_grad=True overwrote." if ctx.call.inplace
               else "are no longer alive or were modified in place. Keep a reference to the logits."))
    with torch.no_grad():
        _, _, grad = cross_entropy_forward(input, target, ctx.options,
                                           replace(ctx.call, want_grad=True, inplace=False, check=False))
    return grad


def _transformed(input: torch.Tensor, options: LossOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z = softcap * tanh(x / softcap) / T in the working precision, and dz/dx (None when 1)."""
    z = input.to(accumulation_dtype(input.dtype))
    dz = None
    if options.softcap is not None:
        t = torch.tanh(z / options.softcap)
        z = t * options.softcap
        dz = 1.0 - t * t
    if options.temperature != 1.0:
        z = z / options.temperature
        dz = (dz if dz is not None else torch.ones_like(z)) / options.temperature
    return z, dz


def _probabilities(z: torch.Tensor, dim: int) -> torch.Tensor:
    """softmax(z) with API rules 2 and 3: 0 for fully masked rows, +inf entries share the mass."""
    from softxent.ops.softmax.torch import probabilities

    return probabilities(z, dim)


def _lse_grad(input, grad_lse, options: LossOptions, class_dim: int) -> torch.Tensor:
    """d(sum grad_lse * lse)/dx = grad_lse * softmax(z) * dz/dx (not fused: return_lse's rare path)."""
    z, dz = _transformed(input, options)
    grad = _probabilities(z, class_dim) * grad_lse.to(z.dtype).unsqueeze(class_dim)
    if dz is not None:
        grad = grad * dz
    return grad.to(input.dtype)


def _target_grad(input, target, grad_loss, options: LossOptions, class_dim: int) -> torch.Tensor:
    """d loss / d p_j = (1 - e) w_j (lse - z_j) per row, times the row's scale (probability targets)."""
    z, _ = _transformed(input, options)
    log_probs = z - torch.logsumexp(z, dim=class_dim, keepdim=True)
    grad = -(1.0 - options.label_smoothing) * log_probs
    if options.weight is not None:
        shape = [1] * z.dim()
        shape[class_dim] = -1
        grad = grad * options.weight.to(z.dtype).view(shape)
    masked = torch.isneginf(z).all(dim=class_dim, keepdim=True)
    grad = torch.where(masked, 0.0, grad)
    if options.reduction == "mean":
        rows = z.numel() // max(1, z.shape[class_dim])
        grad = grad / rows if rows else grad
    grad_loss = grad_loss.to(z.dtype)
    grad = grad * (grad_loss.unsqueeze(class_dim) if grad_loss.dim() else grad_loss)
    return grad.to(target.dtype)


# --- the op: layout, value checks and the row kernel, opaque to torch.compile ----------------------------


def _fused(input, target, weight, options: LossOptions, grad_scale, grad, check):
    """losses and lse in the batch shape; the gradient written into `grad` (None: no gradient work)."""
    ignore_index = options.ignore_index
    class_dim = _class_dim(input)
    num_classes = input.shape[class_dim]
    index = not target.dtype.is_floating_point
    if check:
        _backend.check_values(target, weight, num_classes, ignore_index, input)
    batch_shape = input.shape[:class_dim] + input.shape[class_dim + 1:]
    acc = accumulation_dtype(input.dtype)
    kernel = _backend.backend_for(input)
    if index:
        target = target.reshape(-1).to(torch.int64)
    blocks = list(_row_blocks(input, target, grad, index))
    if len(blocks) == 1:
        x, t, g, _, write_back = blocks[0]
        losses, lse = kernel(x, t, weight, options, grad_scale=grad_scale, grad_out=g)
        if write_back is not None:
            write_back()
        return losses.view(batch_shape), lse.view(batch_shape)
    losses = torch.empty(batch_shape, dtype=acc, device=input.device).view(-1)
    lse = torch.empty_like(losses)
    for x, t, g, rows, write_back in blocks:
        losses[rows], lse[rows] = kernel(x, t, weight, options, grad_scale=grad_scale, grad_out=g)
        if write_back is not None:
            write_back()
    return losses.view(batch_shape), lse.view(batch_shape)


def _row_blocks(input, target, grad, index):
    """(x, target, grad, rows, write_back) blocks of (rows, C) views covering the input.

    (C,) and (N, C) are one block. (N, C, d1, ..., dk) is one block when its class dimension can be
    viewed last (channels-last memory, or d's of size 1), else one block per sample n, each x[n] seen
    as (d1 * ... * dk, C) with strided classes: the logits are never copied whole. A gradient view that
    cannot be formed is computed in a per-sample buffer and written back.
    """
    if input.dim() == 1:
        yield (input.unsqueeze(0), target if index else target.unsqueeze(0),
               None if grad is None else grad.unsqueeze(0), slice(None), None)
        return
    num_classes = input.shape[1]
    if input.dim() == 2:
        yield input, target, grad, slice(None), None
        return
    whole = _rows_view(input, num_classes)
    whole_grad = None if grad is None else _rows_view(grad, num_classes)
    if whole is not None and (grad is None or whole_grad is not None):
        probs = None if index else target.movedim(1, -1).reshape(-1, num_classes)
        yield whole, target if index else probs, whole_grad, slice(None), None
        return
    per_sample = input[0].numel() // max(1, num_classes)
    for n in range(input.shape[0]):
        rows = slice(n * per_sample, (n + 1) * per_sample)
        x = input[n].movedim(0, -1).reshape(-1, num_classes)
        t = target[rows] if index else target[n].movedim(0, -1).reshape(-1, num_classes)
        g, write_back = None, None
        if grad is not None:
            g = _rows_view(grad[n].unsqueeze(0), num_classes)
            if g is None:
                g = torch.empty(x.shape, dtype=grad.dtype, device=grad.device)
                target_view = grad[n].movedim(0, -1)
                write_back = (lambda dst=target_view, src=g: dst.copy_(src.view(dst.shape)))
            if grad.data_ptr() == input.data_ptr():  # in place: read the logits from the gradient's view
                x = g if write_back is None else x
        yield x, t, g, rows, write_back


def _rows_view(tensor, num_classes):
    """tensor (N, C, d...) as an (N * d..., C) view with classes last, or None where only a copy would do."""
    try:
        return tensor.movedim(1, -1).view(-1, num_classes)
    except RuntimeError:
        return None


@torch.library.custom_op("softxent::cross_entropy", mutates_args=())
def _cross_entropy_op(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, options: list[float],
                      grad_scale: torch.Tensor, want_grad: bool, check: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad = _memory.empty_like(input) if want_grad else input.new_empty(0)
    losses, lse = _fused(input, target, weight, LossOptions.decode(options), grad_scale, grad if want_grad else None,
                         check)
    return losses, lse, grad


@_cross_entropy_op.register_fake
def _(input, target, weight, options, grad_scale, want_grad, check):
    class_dim = _class_dim(input)
    batch_shape = input.shape[:class_dim] + input.shape[class_dim + 1:]
    acc = accumulation_dtype(input.dtype)
    losses = input.new_empty(batch_shape, dtype=acc)
    return losses, torch.empty_like(losses), torch.empty_like(input) if want_grad else input.new_empty(0)


@torch.library.custom_op("softxent::cross_entropy_", mutates_args=("input",))
def _cross_entropy_inplace_op(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                              options: list[float], grad_scale: torch.Tensor, check: bool
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    losses, lse = _fused(input, target, weight, LossOptions.decode(options), grad_scale, input, check)
    return losses, lse


@_cross_entropy_inplace_op.register_fake
def _(input, target, weight, options, grad_scale, check):
    class_dim = _class_dim(input)
    batch_shape = input.shape[:class_dim] + input.shape[class_dim + 1:]
    losses = input.new_empty(batch_shape, dtype=accumulation_dtype(input.dtype))
    return losses, torch.empty_like(losses)
