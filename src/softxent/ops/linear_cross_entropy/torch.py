"""Fused linear layer + cross-entropy for torch: the LLM head's loss without its (N, V) logits.

Layers, as cross_entropy.py: `linear_cross_entropy` / `LinearCrossEntropyLoss` (validation) ->
`_LinearCrossEntropyFunction` (autograd) -> `linear_cross_entropy_forward` / `_backward` (chunks of
rows: logits, the row kernel, the three gradients) -> the custom ops `softxent::linear_cross_entropy`
and `softxent::linear_cross_entropy_backward` (opaque to torch.compile) -> `_backend.backend_for`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from softxent import _validation as v
from softxent._options import LossOptions
from softxent._torch import backend as _backend
from softxent._torch import checks as _checks
from softxent._torch import memory
from softxent._torch.matmul import fold_chunk
from softxent.ops.cross_entropy.torch_cpu import accumulation_dtype
from softxent.ops.cross_entropy import spec
from softxent.ops.cross_entropy.torch import denominator, xp

# chunk_size=None: a chunk of logits holds about 0.23 of the gradients' own size (at least 16 MiB, so
# the matrix products run at full speed), and never more than an eighth of the free memory. With the
# gradients, the chunk and the row kernel's float64 scratch per thread (rule 11) the peak stays under 1.3x
# the gradients: a quarter measured 1.3017x at 4096 x 1024 x 32000 float32 on 2 threads.
_CHUNK_SHARE = 0.23
_CHUNK_MIN_BYTES = 16 << 20
_FREE_SHARE = 1 / 8


def linear_cross_entropy(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor, *,
                         linear_bias: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                         ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                         z_loss: float = 0.0, softcap: float | None = None, temperature: float = 1.0,
                         num_items=None, chunk_size: int | None = None, float32_weight_grad: bool = True,
                         check_labels: bool = True):
    """``cross_entropy(input @ linear_weight.T + linear_bias, target)``, never holding the (N, V) logits.

    The rows of `input` go through in chunks: each chunk's logits are computed once, turned into their
    gradient in place by the cross-entropy row kernel, and folded into ``grad_input`` (``dlogits @ W``),
    ``grad_linear_weight`` (``dlogits.T @ x``, accumulated over chunks) and ``grad_linear_bias`` before the
    next chunk. The memory beyond inputs and gradients is one chunk of logits (Wijmans et al. 2024 do the
    same on the GPU, blockwise). With reduction "mean" or "sum" the gradients are computed in the forward
    pass and the backward only scales them; with "none" the per-row upstream gradient is needed first,
    so the backward runs the chunks again (the logits are computed twice).

    Keyword names follow torch.nn.functional.linear_cross_entropy; every option of
    `softxent.torch.cross_entropy` applies with the same semantics (`softxent.ops.cross_entropy.spec`).

    Args:
        input: (..., D) hidden states (the rows); floating point.
        linear_weight: (V, D), the head's weight.
        target: class indices of shape input.shape[:-1], or probabilities of shape input.shape[:-1] + (V,).
        linear_bias: (V,) or None.
        weight, ignore_index, reduction, label_smoothing, z_loss, softcap, temperature, num_items: as
            `cross_entropy`.
        chunk_size: rows per chunk; None chooses from the shapes and the free memory.
        float32_weight_grad: extension. A 16-bit weight's gradient is accumulated over the chunks in
            float32 (then rounded once to the weight's dtype); False accumulates in the weight's dtype.
        check_labels: extension, as `cross_entropy`.

    Returns:
        The loss in the input's dtype (per row, shape input.shape[:-1], for "none").

    Example:
        >>> import torch, softxent.torch as sxt
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
        >>> loss = sxt.linear_cross_entropy(x, w, torch.tensor([0, 2]), chunk_size=1)
        >>> bool(torch.isclose(loss, torch.nn.functional.cross_entropy(x @ w.T, torch.tensor([0, 2]))))
        True
        >>> loss.backward()
        >>> w.grad.shape
        torch.Size([3, 2])

    References:
        Wijmans et al. 2024, "Cut your losses in large-vocabulary language models".
    """
    options = LossOptions(weight=weight, ignore_index=ignore_index, reduction=reduction,
                          label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, temperature=temperature)
    chunk_size = v.check_chunk_size(chunk_size)
    _check_arguments(input, linear_weight, target, linear_bias, weight)
    num_items = spec.check_num_items(num_items, options.reduction)
    out_dtype = input.dtype
    if torch.is_autocast_enabled(input.device.type) and input.dtype != torch.float64:
        # torch's policy: the linear layer in the autocast dtype, the loss in float32 (as F.linear_cross_entropy)
        low = torch.get_autocast_dtype(input.device.type)
        input, linear_weight = input.to(low), linear_weight.to(low)
        linear_bias = None if linear_bias is None else linear_bias.to(low)
        out_dtype = torch.float32
    if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        # torch.func (grad, vmap, jacrev): the composite, logits and all, through cross_entropy's own rule
        from softxent.ops.cross_entropy.torch import cross_entropy

        logits = torch.nn.functional.linear(input, linear_weight, linear_bias)
        return cross_entropy(logits.movedim(-1, 1) if logits.dim() > 2 else logits, target.movedim(-1, 1)
                             if target.dtype.is_floating_point and target.dim() > 2 else target, options.weight,
                             ignore_index=options.ignore_index, reduction=options.reduction,
                             label_smoothing=options.label_smoothing, z_loss=options.z_loss, softcap=options.softcap,
                             temperature=options.temperature, num_items=num_items,
                             check_labels=check_labels).to(out_dtype)
    needs = tuple(t is not None and t.requires_grad for t in (input, linear_weight, linear_bias))
    want_grad = torch.is_grad_enabled() and any(needs)
    call = _Call(want_grad=want_grad, needs=needs, chunk_size=chunk_size, float32_weight_grad=bool(float32_weight_grad),
                 check=bool(check_labels), num_items=num_items)
    loss = _LinearCrossEntropyFunction.apply(input, linear_weight, linear_bias, target, options, call)
    return loss if loss.dtype == out_dtype else loss.to(out_dtype)


class LinearCrossEntropyLoss(nn.Module):
    """`linear_cross_entropy` as a module. It holds no weight: forward(input, linear_weight, target,
    linear_bias=None), so the head's parameters stay where the model keeps them.

    Example:
        >>> import torch, softxent.torch as sxt
        >>> loss_fn = sxt.LinearCrossEntropyLoss(reduction="sum")
        >>> x, w = torch.eye(2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> round(loss_fn(x, w, torch.tensor([0, 2])).item(), 4)
        1.724
    """

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, z_loss: float = 0.0, softcap: float | None = None,
                 temperature: float = 1.0, chunk_size: int | None = None, float32_weight_grad: bool = True,
                 check_labels: bool = True):
        super().__init__()
        LossOptions(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                    z_loss=z_loss, softcap=softcap, temperature=temperature)
        self.temperature = temperature
        self.register_buffer("weight", weight)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.z_loss, self.softcap, self.chunk_size = z_loss, softcap, v.check_chunk_size(chunk_size)
        self.float32_weight_grad, self.check_labels = float32_weight_grad, check_labels

    def forward(self, input, linear_weight, target, linear_bias=None):
        return linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
                                    ignore_index=self.ignore_index, reduction=self.reduction,
                                    label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
                                    temperature=self.temperature, chunk_size=self.chunk_size, float32_weight_grad=self.float32_weight_grad,
                                    check_labels=self.check_labels)


# --- validation -----------------------------------------------------------------------------------------


def _check_arguments(input, linear_weight, target, linear_bias, weight) -> None:
    for name, tensor in (("input", input), ("linear_weight", linear_weight), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
    v.check_numeric(input, "input", allow_int=False)
    v.check_numeric(linear_weight, "linear_weight", allow_int=False)
    if input.dim() < 1:
        raise ValueError("input must have at least one dimension (the features); got a scalar")
    if linear_weight.dim() != 2:
        raise ValueError(f"linear_weight must have shape (V, D), two dimensions; got shape {tuple(linear_weight.shape)}")
    features = input.shape[-1]
    if linear_weight.shape[1] != features:
        raise ValueError(f"linear_weight must have shape (V, {features}) to match input's last dimension "
                         f"{features}; got shape {tuple(linear_weight.shape)}")
    if input.dtype != linear_weight.dtype:
        raise TypeError(f"linear_weight must have input's dtype {input.dtype}; got {linear_weight.dtype}")
    num_classes = linear_weight.shape[0]
    if linear_bias is not None:
        if not isinstance(linear_bias, torch.Tensor):
            raise TypeError(f"linear_bias must be a torch.Tensor or None; got {type(linear_bias).__name__}")
        v.check_same_shape((num_classes,), linear_bias.shape, "linear_weight's first dimension", "linear_bias")
        if linear_bias.dtype != input.dtype:
            raise TypeError(f"linear_bias must have input's dtype {input.dtype}; got {linear_bias.dtype}")
    logits_shape = tuple(input.shape[:-1]) + (num_classes,)
    spec.check_target(logits_shape, target, len(logits_shape) - 1, logits_name="the logits")
    _checks.check_weight_argument(weight, num_classes)
    for name, tensor in (("linear_weight", linear_weight), ("target", target), ("linear_bias", linear_bias),
                         ("weight", weight)):
        if tensor is not None and tensor.device != input.device:
            raise ValueError(f"{name} must be on input's device {input.device}; got {tensor.device}")


# --- forward and backward --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    want_grad: bool
    needs: tuple  # (input, linear_weight, linear_bias) require grad
    chunk_size: int | None
    float32_weight_grad: bool
    check: bool
    num_items: object = None


def choose_chunk_size(num_rows: int, num_classes: int, features: int, dtype: torch.dtype,
                      device: torch.device, share: float = _CHUNK_SHARE) -> int:
    """Rows per chunk: `share` of the gradients' size in logits, at least 16 MiB, at most 1/8 of free memory."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    grads = (num_rows + num_classes) * features * itemsize
    budget = max(_CHUNK_MIN_BYTES, share * grads)
    free = _free_bytes(device)
    if free:
        budget = min(budget, _FREE_SHARE * free)
    return int(max(1, min(num_rows, budget // max(1, num_classes * itemsize))))


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def linear_cross_entropy_forward(input, linear_weight, linear_bias, target, options: LossOptions, call: _Call):
    """(loss, losses, grads): the reduced loss, per-row losses, and (dx, dw, dbias) of the returned loss
    (or Nones: no gradient, or reduction "none", whose gradients wait for the backward)."""
    num_classes, features = linear_weight.shape
    acc = accumulation_dtype(input.dtype)
    # the logits would be input.shape[:-1] + (V,): one row per row of input
    denom = denominator(target, options, call.num_items, num_classes=num_classes,
                        num_rows=input.numel() // max(1, features), dtype=acc, device=input.device)
    grad_scale = spec.gradient_scale(xp, denom, acc, input.device)
    fused = call.want_grad and options.reduction != "none"
    losses, dx, dw, dbias = _op()(
        input, linear_weight, linear_bias, target, options.weight, options.encode(), grad_scale, None,
        fused and call.needs[0], fused and call.needs[1], fused and call.needs[2], _chunk(call, input, linear_weight),
        call.float32_weight_grad, call.check)
    loss = spec.reduce(xp, losses, options.reduction, denom)
    grads = tuple(g if want else None for g, want in zip((dx, dw, dbias), call.needs)) if fused \
        else (None, None, None)
    return loss.to(input.dtype), grads


def _chunk(call: _Call, input, linear_weight) -> int:
    if call.chunk_size is not None:
        return call.chunk_size
    if torch.compiler.is_compiling():
        return 0  # chosen inside the op from the actual shapes: no specialisation, no recompile per size
    rows = input.numel() // max(1, input.shape[-1])
    return choose_chunk_size(rows, linear_weight.shape[0], linear_weight.shape[1], input.dtype, input.device)


class _LinearCrossEntropyFunction(torch.autograd.Function):
    """mean/sum: gradients from the forward, scaled in the backward. none: the backward runs the chunks."""

    @staticmethod
    def forward(ctx, input, linear_weight, linear_bias, target, options: LossOptions, call: _Call):
        loss, grads = linear_cross_entropy_forward(input, linear_weight, linear_bias, target, options, call)
        ctx.options, ctx.call = options, call
        ctx.compiling = torch.compiler.is_compiling()
        if options.reduction == "none":
            ctx.save_for_backward(input, linear_weight, linear_bias, target)
        elif ctx.compiling:
            ctx.save_for_backward(*grads)
        else:
            ctx.grads = list(grads)  # handed over in the backward, no copy
        if not ctx.compiling and options.reduction != "none":
            ctx.inputs = (input, linear_weight, linear_bias, target)  # held for a double backward
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        options, call = ctx.options, ctx.call
        if torch.is_grad_enabled() and not ctx.compiling:  # create_graph: a differentiable backward
            inputs = ctx.saved_tensors if options.reduction == "none" else ctx.inputs
            return (*_differentiable_grads(*inputs, grad_loss, options, call), None, None, None)
        if options.reduction == "none":
            input, linear_weight, linear_bias, target = ctx.saved_tensors
            grads = linear_cross_entropy_backward(input, linear_weight, linear_bias, target, grad_loss, options, call)
        else:
            if ctx.compiling:
                grads = [None if g is None else g * grad_loss for g in ctx.saved_tensors]
            else:
                grads, ctx.grads = ctx.grads, None
                if grads is None:  # they went to an earlier backward (retain_graph): the same sweep again
                    with torch.no_grad():
                        _, grads = linear_cross_entropy_forward(*ctx.inputs, options, replace(call, check=False))
                    grads = list(grads)
                # on the CPU an upstream gradient of exactly 1 skips the pass (reading it costs no sync)
                skip = grad_loss.device.type == "cpu" and bool(grad_loss == 1)
                grads = [g if g is None or skip else g.mul_(grad_loss.to(g.dtype)) for g in grads]
        dx, dw, dbias = grads
        return dx, dw, dbias, None, None, None


def _differentiable_grads(input, linear_weight, linear_bias, target, grad_loss, options, call):
    """(dx, dw, dbias) from differentiable ops, for a double backward: the logits again (whole, not
    chunked: create_graph keeps the graph of its result anyway), cross-entropy's differentiable gradient
    of them, and the linear layer's chain rule."""
    from softxent.ops.cross_entropy.torch import _Call as _CrossEntropyCall, _differentiable_grad

    features = input.shape[-1]
    rows = input.reshape(-1, features)
    logits = torch.nn.functional.linear(rows, linear_weight, linear_bias)
    labels = target.reshape(-1) if not target.dtype.is_floating_point else target.reshape(logits.shape)
    ce_call = _CrossEntropyCall(want_grad=True, inplace=False, check=False, num_items=call.num_items)
    dlogits = _differentiable_grad(logits, labels, options, ce_call,
                                   grad_loss.reshape(-1) if grad_loss.dim() else grad_loss, None)
    dx = (dlogits @ linear_weight).view(input.shape) if call.needs[0] else None
    dw = dlogits.t() @ rows if call.needs[1] else None
    dbias = dlogits.sum(dim=0) if call.needs[2] else None
    return dx, dw, dbias


def linear_cross_entropy_backward(input, linear_weight, linear_bias, target, grad_loss, options, call):
    """reduction "none": the chunks again, each row's gradient scaled by its upstream gradient."""
    grad_scale = torch.ones((), dtype=accumulation_dtype(input.dtype), device=input.device)
    _, dx, dw, dbias = _op()(
        input, linear_weight, linear_bias, target, options.weight, options.encode(), grad_scale,
        grad_loss.reshape(-1), *call.needs, _chunk(call, input, linear_weight), call.float32_weight_grad, False)
    return tuple(g if want else None for g, want in zip((dx, dw, dbias), call.needs))


# --- the op: chunks of rows through the row kernel, opaque to torch.compile -------------------------------


def _chunked(input, linear_weight, linear_bias, target, weight, options: LossOptions, grad_scale, row_grad,
             need_dx, need_dw, need_dbias, chunk_size, float32_weight_grad, check):
    """Per-row losses and the three gradients (empty where not needed), a chunk of rows at a time."""
    ignore_index = options.ignore_index
    num_classes, features = linear_weight.shape
    rows = input.reshape(-1, features)
    num_rows = rows.shape[0]
    index = not target.dtype.is_floating_point
    if check:
        _backend.check_values(target, weight, num_classes, ignore_index, rows)
    targets = target.reshape(-1).to(torch.int64) if index else target.reshape(num_rows, num_classes)
    want_grad = need_dx or need_dw or need_dbias
    dtype, device = input.dtype, input.device
    acc = accumulation_dtype(dtype)
    wide = float32_weight_grad and dtype in (torch.float16, torch.bfloat16)
    losses = torch.empty(num_rows, dtype=acc, device=device)
    dx = memory.empty_like(rows) if need_dx else rows.new_empty(0)
    dw = memory.zeros(linear_weight.shape, dtype=acc if wide else dtype, device=device) if need_dw \
        else linear_weight.new_empty(0)
    dbias = torch.zeros(num_classes, dtype=acc, device=device) if need_dbias else linear_weight.new_empty(0)
    kernel = _backend.backend_for(rows)
    if chunk_size <= 0:
        chunk_size = choose_chunk_size(num_rows, num_classes, features, dtype, device)
    chunk = max(1, min(chunk_size, num_rows))
    # the float32 weight gradient's fallback slices of V hold at most a quarter of a chunk of logits
    slice_rows = max(64, (chunk * num_classes) // (4 * max(1, features)))
    buffer = memory.empty(chunk, num_classes, dtype=dtype, device=device)
    weight_t = linear_weight.t()
    for lo in range(0, num_rows, chunk):
        hi = min(lo + chunk, num_rows)
        x = rows[lo:hi]
        logits = buffer[: hi - lo]
        # 1. the chunk's logits, once
        if linear_bias is not None:
            torch.addmm(linear_bias, x, weight_t, out=logits)
        else:
            torch.mm(x, weight_t, out=logits)
        # 2. the row kernel overwrites them with d(loss)/d(logits)
        losses[lo:hi], _ = kernel(logits, targets[lo:hi], weight, options, grad_scale=grad_scale,
                                  grad_out=logits if want_grad else None)
        if not want_grad:
            continue
        if row_grad is not None:  # reduction "none" in the backward: each row's upstream gradient
            logits.mul_(row_grad[lo:hi].to(dtype).unsqueeze(1))
        # 3. fold the chunk into the gradients: dx = dlogits W, dw += dlogits^T x, dbias += sum dlogits
        fold_chunk(logits, x, linear_weight, dx[lo:hi] if need_dx else None, dw if need_dw else None,
                   dbias if need_dbias else None, wide=wide, slice_rows=slice_rows, acc=acc)
    dx = dx.view(input.shape) if need_dx else dx
    dw = dw.to(linear_weight.dtype) if need_dw else dw
    dbias = dbias.to(linear_weight.dtype) if need_dbias else dbias
    return losses.view(input.shape[:-1]), dx, dw, dbias


def _op():
    """The custom op under torch.compile (opaque to tracing); eager, its body itself: the op's wrapper
    costs tens of microseconds a call, and its first call imports torch._dynamo (seconds)."""
    return torch.ops.softxent.linear_cross_entropy if torch.compiler.is_compiling() else _linear_cross_entropy


def _linear_cross_entropy(input: torch.Tensor, linear_weight: torch.Tensor, linear_bias: torch.Tensor | None,
                          target: torch.Tensor, weight: torch.Tensor | None, options: list[float],
                          grad_scale: torch.Tensor, row_grad: torch.Tensor | None, need_dx: bool, need_dw: bool,
                          need_dbias: bool, chunk_size: int, float32_weight_grad: bool, check: bool
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _chunked(input, linear_weight, linear_bias, target, weight, LossOptions.decode(options), grad_scale,
                    row_grad, need_dx, need_dw, need_dbias, chunk_size, float32_weight_grad, check)


_linear_cross_entropy_op = torch.library.custom_op("softxent::linear_cross_entropy", _linear_cross_entropy,
                                                   mutates_args=())


@_linear_cross_entropy_op.register_fake
def _(input, linear_weight, linear_bias, target, weight, options, grad_scale, row_grad, need_dx, need_dw, need_dbias, chunk_size, float32_weight_grad, check):
    losses = input.new_empty(input.shape[:-1], dtype=accumulation_dtype(input.dtype))
    dx = torch.empty_like(input) if need_dx else input.new_empty(0)
    dw = torch.empty_like(linear_weight) if need_dw else linear_weight.new_empty(0)
    dbias = linear_weight.new_empty(linear_weight.shape[0]) if need_dbias else linear_weight.new_empty(0)
    return losses, dx, dw, dbias
