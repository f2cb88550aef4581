"""Cross-entropy for torch: a drop-in for torch.nn.functional.cross_entropy, fused and memory-lean.

Layers, top to bottom: `cross_entropy` / `CrossEntropyLoss` (validation, torch's autocast policy, the
path) -> `_CrossEntropyFunction` (autograd: setup_context, a generated vmap rule, a differentiable
backward for double backward) -> `cross_entropy_forward` / `cross_entropy_backward` -> one of three paths,
chosen by size and context, with the same results (rule 11 of docs/semantics.md on each).

Before all of it, `_fast_lane` takes the commonest call (eager, CPU, float32 or bfloat16 logits, int64
class indices, no class weights, no softcap) straight to the compiled kernel's lean problem
(`_lean_compiled`, autograd by `_LeanFunction`): a small classifier's step is mostly fixed cost, and the
general path's checks and bookkeeping were several times the kernel's work. Anything the kernel declines
(a label out of range or ignored, a special row) goes the general way, its errors included.

- lean (eager, at most `SMALL_MAX_ELEMENTS` logits, class indices all kept, at most class weights): torch's
  own float64 log_softmax and nll_loss, differentiated by torch's autograd, where that is exact
  (`_lean_native`), else about twenty aten calls in float64 on the calling thread (`_lean`);
- composite (eager calls of at most `COMPOSITE_MAX_ELEMENTS` logits with any other option, and every call
  under torch.func): the same math for every option, branch-free under torch.func (`_composite`);
- fused (everything larger, and every call under torch.compile): the layout and value checks, then the
  row kernel `_backend.backend_for(logits)` (`torch_cpu.cross_entropy_rows` on the CPU, chunks of rows on
  single-threaded workers); eager calls its body directly, torch.compile the custom op
  `softxent::cross_entropy` (opaque to tracing, shapes from its fake).
"""

from __future__ import annotations

import math
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
from softxent.ops.cross_entropy import torch_cpu
from softxent.ops.cross_entropy.torch_cpu import accumulation_dtype
from softxent.ops.softmax.torch import FLOAT64_LOG_SOFTMAX_MARGIN


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

    Everything torch does with F.cross_entropy works: double backward (create_graph: the backward is
    then built from differentiable ops, its value still the exact gradient), torch.func's grad, vmap
    and jacrev, autocast (16-bit inputs run in float32 and the loss is float32, as torch's),
    torch.compile with static or dynamic shapes and fullgraph=True. Small problems (up to
    `SMALL_MAX_ELEMENTS` logits) take a path of a few aten calls in float64 on the calling thread,
    larger ones the fused chunked kernel; both meet rule 11 of docs/semantics.md. The function holds the logits until
    the backward (as torch holds its log_softmax), for a second or double backward.

    Where softxent decides differently from PyTorch (docs/semantics.md): a fully masked row (all logits
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

    See also: softxent.cross_entropy (NumPy), softxent.torch.linear_cross_entropy (the head and its loss
    in chunks), softxent.torch.triton.cross_entropy_rows (the CUDA kernel).

    References:
        Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"; Blanchard, Higham &
        Higham 2021, "Accurately computing the log-sum-exp and softmax functions"; Wijmans et al. 2024,
        "Cut your losses in large-vocabulary language models" (gradients in the forward pass).
    """
    if (weight is None and size_average is None and reduce is None and softcap is None and num_items is None
            and not return_lse and not inplace_grad):
        loss = _fast_lane(input, target, ignore_index, reduction, label_smoothing, z_loss, temperature)
        if loss is not None:
            return loss
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce)
    options = _loss_options(weight, ignore_index, reduction, label_smoothing, z_loss, softcap, temperature)
    _check_arguments(input, target, weight)
    num_items = spec.check_num_items(num_items, options.reduction)
    input, target, options = _autocast(input, target, options)
    want_grad = torch.is_grad_enabled() and input.requires_grad
    # under torch.compile the graph is functional: the gradient gets a buffer of its own
    inplace = bool(inplace_grad) and want_grad and not torch.compiler.is_compiling()
    path, robust = _choose_path(input, inplace)
    if robust:
        want_grad = True  # torch.func.grad's inputs need not say requires_grad
    check = bool(check_labels)
    compiled = not robust and not inplace and not torch.compiler.is_compiling() and _compiled_lean(input, options)
    if (path == COMPOSITE or compiled) and not robust and _is_lean(input, target, options, num_items, check,
                                                                   compiled):
        path = LEAN
    elif path == COMPOSITE and not robust and input.numel() > COMPOSITE_MAX_ELEMENTS:
        path = FUSED
    elif check and path == COMPOSITE:  # the custom op checks inside; here, on the values under any wrapper
        _backend.check_values(_plain(target), _plain(options.weight), input.shape[_class_dim(input)],
                              options.ignore_index, input)
    lean_alone = path == LEAN and (options.weight is None or not options.weight.requires_grad)
    if lean_alone and input.dtype != torch.float64 and not return_lse and not compiled:
        loss = _small(_lean_native, input, target, options)
        if loss is not None:
            return loss
    call = _Call(want_grad=want_grad, inplace=inplace, check=check, return_lse=bool(return_lse),
                 num_items=num_items, path=path, robust=robust)
    if lean_alone and not want_grad:  # nothing to differentiate: no autograd.Function's bookkeeping
        loss, lse, _ = cross_entropy_forward(input, target, options, call)
        return (loss, lse) if return_lse else loss
    if robust or torch.compiler.is_compiling():
        loss, lse, _ = _CrossEntropyFunction.apply(input, target, options, call)
    else:  # eager: the C apply itself, without Function.apply's per-call inspect.signature (~20 us)
        loss, lse, _ = _apply_function(_CrossEntropyFunction, input, target, options, call)
    return (loss, lse) if return_lse else loss


def _fast_lane(input, target, ignore_index, reduction, label_smoothing, z_loss, temperature):
    """The loss of the commonest call, or None for the general path: eager, on the CPU, float32 or
    bfloat16 (N, C), (C,) or contiguous (N, C, d...) logits, int64 class indices, no class weights, no
    softcap. The compiled kernel's lean problem (`_lean_compiled`) runs it after a few attribute reads,
    its labels checked in the kernel (a label out of range or ignored, or a special row, and the general
    path decides, its errors included): at a 32 x 10 classifier the general path's checks and
    bookkeeping cost several times the kernel. Same results, to the bit, as the general path's choice."""
    if (torch.compiler.is_compiling() or type(input) is not torch.Tensor or type(target) is not torch.Tensor
            or torch._C._are_functorch_transforms_active()):
        return None
    if not (input.is_cpu and input.dtype in torch_cpu.COMPILED_DTYPES and target.dtype == torch.int64
            and input.layout == torch.strided and not torch.is_autocast_enabled("cpu")):
        return None
    dim = input.dim()
    if dim == 2:
        if target.dim() != 1 or target.shape[0] != input.shape[0]:
            return None
    elif dim == 1:
        if target.dim() != 0:
            return None
    elif dim == 0 or not input.is_contiguous() or target.shape != input.shape[:1] + input.shape[2:]:
        return None
    if input.shape[_class_dim(input)] == 0 or target.numel() == 0:
        return None
    options = _loss_options(None, ignore_index, reduction, label_smoothing, z_loss, None, temperature)
    if not _compiled_lean(input, options):
        return None
    if input.requires_grad and torch.is_grad_enabled():
        try:
            return _apply_function(_LeanFunction, input, target, options)
        except _Declined:
            return None
    result = _lean_compiled(input, target, options, _FAST_CALL)
    return None if result is None else result[0]


class _Declined(Exception):
    """The lean kernel declined a call (a label out of range or ignored, a special row): the general path
    decides it."""


class _LeanFunction(torch.autograd.Function):
    """`_fast_lane`'s autograd, the least bookkeeping a Function can have: one output (the loss), the
    gradient from the kernel kept on ctx, the backward its scaling (`cross_entropy_backward`), handing the
    buffer to autograd. A double backward (create_graph) and a second backward through the same graph
    take `_CrossEntropyFunction`'s way: the gradient from differentiable ops, or recomputed from the
    logits, held until then."""

    @staticmethod
    def forward(ctx, input, target, options: LossOptions):
        result = _lean_compiled(input, target, options, _FAST_CALL_GRAD)
        if result is None:
            raise _Declined
        loss, _, ctx.grad = result
        ctx.input, ctx.input_version, ctx.target, ctx.options = input, input._version, target, options
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad, ctx.grad = ctx.grad, None  # hand over: autograd may keep this very buffer as .grad
        class_dim = _class_dim(ctx.input)
        if grad is None or torch.is_grad_enabled():
            input, call = _alive_input(ctx), _FAST_CALL_GRAD
            if grad is None:
                ctx.call = call
                grad = _recompute_grad(ctx, input, ctx.target)
            if torch.is_grad_enabled():
                return _differentiable_grad(_need(input, call, "the second derivative"), ctx.target, ctx.options,
                                            call, grad_loss, grad), None, None
        return cross_entropy_backward(grad, grad_loss, class_dim), None, None


_OPTIONS: dict[tuple, LossOptions] = {}  # validated options without class weights, by their scalars
_PLAIN = (int, float, str, type(None))  # option types whose value alone decides (no bool, no tensor; an int
# ignore_index, so that -100.0, equal to -100 as a key, is still refused)


def _loss_options(weight, ignore_index, reduction, label_smoothing, z_loss, softcap, temperature) -> LossOptions:
    """LossOptions, validated once per distinct set of plain scalar options (a training loop passes the
    same ones every step: its validation then costs a dict lookup, not microseconds)."""
    key = (ignore_index, reduction, label_smoothing, z_loss, softcap, temperature)
    # not while compiling: dynamo would guard on the dict's contents, and its first insertion recompile
    plain = _PLAIN  # spelled out, not all(... for ...): a generator costs a microsecond of a small call's ten
    if (weight is None and type(ignore_index) is int and type(reduction) is str and type(label_smoothing) in plain
            and type(z_loss) in plain and type(softcap) in plain and type(temperature) in plain
            and not torch.compiler.is_compiling()):
        options = _OPTIONS.get(key)
        if options is None:
            options = LossOptions(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                                  z_loss=z_loss, softcap=softcap, temperature=temperature)
            if len(_OPTIONS) < 64:
                _OPTIONS[key] = options
        return options
    return LossOptions(weight=weight, ignore_index=ignore_index, reduction=reduction,
                       label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, temperature=temperature)


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

# At most this many logits take a small path in eager mode (float64 aten calls on the calling thread):
# the lean one up to SMALL_MAX_ELEMENTS (its float64 log_softmax beat the fused op's chunks at 128 x 512
# and 256 x 1000, 1.1x to 4x, not at 1024 x 1000), the composite one (thirty calls) up to
# COMPOSITE_MAX_ELEMENTS (even with the fused op at 128 x 512, 2x slower at 256 x 1000); above, the fused
# chunked op. Measured interleaved on the shared 2-core machine (/tmp scripts beside
# benchmarks/bench_torch_shapes.py).
SMALL_MAX_ELEMENTS = 1 << 18
COMPOSITE_MAX_ELEMENTS = 1 << 15

LEAN, COMPOSITE, FUSED = "lean", "composite", "fused"


@dataclass(frozen=True)
class _Call:
    """How one call runs, beside the loss options: gradient wanted, written in place, values checked."""

    want_grad: bool
    inplace: bool
    check: bool
    return_lse: bool = False  # also return the lse, whose gradient reads the logits
    num_items: object = None  # "mean"'s global denominator (an int or a 0-d tensor), or None
    path: str = FUSED  # COMPOSITE (aten calls) or FUSED (the custom op)
    robust: bool = False  # under torch.func transforms: branch-free, nothing read on the host

    @property
    def keep_input(self) -> bool:
        return self.return_lse and self.want_grad and not self.inplace


_FAST_CALL = _Call(want_grad=False, inplace=False, check=True, path=LEAN)  # `_fast_lane`'s two calls
_FAST_CALL_GRAD = _Call(want_grad=True, inplace=False, check=True, path=LEAN)


def _choose_path(input: torch.Tensor, inplace: bool) -> tuple[str, bool]:
    """(path, robust): compiled -> the custom op; torch.func transforms -> composite, branch-free;
    eager -> composite when small (and not on the Triton backend), else the custom op."""
    if torch.compiler.is_compiling():
        return FUSED, False
    if torch._C._are_functorch_transforms_active():
        return COMPOSITE, True
    if input.numel() <= SMALL_MAX_ELEMENTS and not inplace and not _backend.uses_triton(input):
        return COMPOSITE, False
    return FUSED, False


def _plain(tensor):
    """The tensor under torch.func's wrappers (a vmap batch, a grad level), to read its values."""
    if tensor is None:
        return None
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(tensor):
        tensor = functorch.get_unwrapped(tensor)
    return tensor


def _autocast(input, target, options: LossOptions):
    """torch's autocast policy for cross_entropy (CPU and CUDA): 16-bit floating arguments run in float32,
    so the loss comes back float32, as F.cross_entropy's does; float32 and float64 are left alone."""
    if not torch.is_autocast_enabled(input.device.type):
        return input, target, options
    low = (torch.float16, torch.bfloat16)
    if input.dtype in low:
        input = input.float()
    if target.dtype in low:
        target = target.float()
    if options.weight is not None and options.weight.dtype in low:
        options = replace(options, weight=options.weight.float())
    return input, target, options


def denominator(target: torch.Tensor, options: LossOptions, num_items, *, num_classes: int, num_rows: int,
                dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """What "mean" divides by (the spec's rule, on the device: no sync), or None for "sum" and "none"."""
    if options.reduction != "mean":
        return None
    kind = spec.PROBS if target.dtype.is_floating_point else spec.INDEX
    return spec.mean_denominator(xp, kind, target, options.weight, options.ignore_index, num_rows, dtype,
                                 num_classes=num_classes, num_items=num_items, device=device)


def _work_dtype(input: torch.Tensor, call: _Call) -> torch.dtype:
    """The composite path works in float64 (exact to the last float32 bit, and cheap at its sizes); a large
    problem under torch.func transforms works in the accumulation dtype, as the fused op."""
    if call.path in (LEAN, COMPOSITE) and (not call.robust or input.numel() <= COMPOSITE_MAX_ELEMENTS):
        return torch.float64
    return accumulation_dtype(input.dtype)


def cross_entropy_forward(input: torch.Tensor, target: torch.Tensor, options: LossOptions, call: _Call):
    """(loss, lse, grad): the reduced loss in input's dtype, lse per row, and the gradient (empty if none).

    The gradient is that of the returned loss, already divided by the "mean" denominator.
    """
    if call.path == LEAN and not call.robust and _compiled_lean(input, options):
        result = _lean_compiled(input, target, options, call)
        if result is not None:
            loss, lse, grad = result
            return loss, input.new_empty(0) if lse is None else lse, input.new_empty(0) if grad is None else grad
        # a label out of range or ignored, or a fully masked, +inf or NaN row: the general path decides,
        # the composite one after the value check that the fused op does inside
        small = input.numel() <= SMALL_MAX_ELEMENTS
        call = replace(call, path=COMPOSITE if small else FUSED)
        if small and call.check:
            _backend.check_values(target, options.weight, input.shape[_class_dim(input)], options.ignore_index, input)
    if call.path in (LEAN, COMPOSITE) and not call.robust:
        return _small(_small_forward, input, target, options, call)
    return _forward(input, target, options, call)


def _small(function, *args):
    """function(*args) on one thread: torch's vector math (exp, log) forks its pool from 2048 elements on,
    and at the small paths' sizes the fork and join cost more than the work (milliseconds when the
    machine is busy)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        return function(*args)
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _small_forward(input, target, options: LossOptions, call: _Call):
    if call.path == LEAN:
        result = _lean(input, target, options, call)
        if result is not None:
            return result
        call = replace(call, path=COMPOSITE)  # a fully masked, +inf or NaN row: the general path decides
    return _forward(input, target, options, call)


def _forward(input, target, options: LossOptions, call: _Call):
    acc = _work_dtype(input, call)
    num_classes = input.shape[_class_dim(input)]
    denom = denominator(target, options, call.num_items, num_classes=num_classes,
                        num_rows=input.numel() // max(1, num_classes), dtype=acc, device=input.device)
    grad_scale = spec.gradient_scale(xp, denom, acc, input.device)
    if call.path == COMPOSITE:
        losses, lse, grad = _composite(input, target, options, grad_scale, call, acc)
    elif call.inplace:
        # eager, the op's body itself: the custom op's wrapper costs tens of microseconds a call, and its
        # first call imports torch._dynamo (seconds); torch.compile needs the op, opaque to tracing
        op = torch.ops.softxent.cross_entropy_ if torch.compiler.is_compiling() else _cross_entropy_inplace
        losses, lse = op(input, target, options.weight, options.encode(), grad_scale, call.check)
        grad = input.new_empty(0)  # the gradient is the input's own buffer (setup_context takes it)
    else:
        op = torch.ops.softxent.cross_entropy if torch.compiler.is_compiling() else _cross_entropy
        losses, lse, grad = op(input, target, options.weight, options.encode(), grad_scale, call.want_grad,
                               call.check)
    loss = spec.reduce(xp, losses, options.reduction, denom)
    return loss.to(input.dtype), lse.to(input.dtype), grad


def cross_entropy_backward(grad: torch.Tensor, grad_loss: torch.Tensor, class_dim: int) -> torch.Tensor:
    """grad * grad_loss, in place (grad is this call's own buffer): 0 for a scalar loss, a row for "none".

    On the CPU an upstream gradient of exactly 1 (loss.backward()) skips the pass: reading one number
    there costs no device sync.
    """
    if grad_loss.dim():
        grad_loss = grad_loss.unsqueeze(class_dim)
        if grad_loss.device.type == "cpu" and bool((grad_loss == 1).all()):
            return grad
    elif grad_loss.device.type == "cpu" and grad_loss.item() == 1.0:
        return grad
    return grad.mul_(grad_loss)


_C_APPLY = torch._C._FunctionBase.__dict__["apply"]


def _apply_function(function, *args):
    """function.apply(*args) outside torch.func and torch.compile: what Function.apply does there, less the
    binding of default arguments (forward has none) that it redoes on every call of a setup_context Function."""
    return _C_APPLY.__get__(None, function)(*args)


class _CrossEntropyFunction(torch.autograd.Function):
    """Autograd for cross-entropy: the forward writes the gradient, the backward scales it.

    Eager, the backward hands the buffer to autograd without a copy and keeps no reference to it (so a
    leaf's .grad becomes that very buffer). A second backward through the same graph (retain_graph,
    gradcheck) recomputes the gradient from the input, if it is unmodified. With create_graph (double
    backward) and under torch.func transforms the backward is built from differentiable ops
    (`_differentiable_grad`) whose value is the exact gradient. setup_context and generate_vmap_rule let
    torch.func's grad, vmap and jacrev through (their forward takes the composite path).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, options: LossOptions, call: _Call):
        return cross_entropy_forward(input, target, options, call)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, options, call = inputs
        grad = output[2]
        ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)
        if call.inplace:
            grad = input.detach()  # a tensor of its own on input's memory, so autograd can adopt it as .grad
        ctx.options, ctx.call, ctx.class_dim = options, call, _class_dim(input)
        ctx.target_grad = target.dtype.is_floating_point and target.requires_grad
        ctx.saving = torch.compiler.is_compiling() or call.robust
        if ctx.saving:  # traced or transformed: everything the backward reads goes through save_for_backward
            needs_input = call.robust or call.return_lse or ctx.target_grad  # else the logits may die early
            ctx.save_for_backward(grad, input if needs_input else None, target)
        else:
            ctx.grad = grad
            # held, not weakly: a double backward (create_graph) and a second backward read the logits
            ctx.input = input
            ctx.input_version = input._version
            ctx.target = target

    @staticmethod
    def backward(ctx, grad_loss, grad_lse=None, _grad_grad=None):
        options, call, class_dim = ctx.options, ctx.call, ctx.class_dim
        if not call.return_lse:
            grad_lse = None  # the lse is an output only with return_lse (compiled graphs pass zeros)
        if ctx.saving:
            grad, input, target = ctx.saved_tensors
        else:
            grad, ctx.grad = ctx.grad, None  # hand over: autograd may keep this very buffer as .grad
            input, target = _alive_input(ctx), ctx.target
        differentiable = call.robust or torch.is_grad_enabled()  # create_graph, or an outer torch.func level
        grad_input = grad_target = None
        if call.want_grad and (grad_loss is not None or grad_lse is not None):
            if grad_loss is not None:
                if grad is None or grad.numel() != input_numel(ctx, input, grad):
                    grad = _recompute_grad(ctx, input, target)
                if differentiable:
                    grad_input = _differentiable_grad(_need(input, call, "the second derivative"), target, options,
                                                      call, grad_loss, grad)
                elif ctx.saving:
                    grad_input = grad * grad_loss.unsqueeze(class_dim) if grad_loss.dim() else grad * grad_loss
                else:
                    grad_input = cross_entropy_backward(grad, grad_loss, class_dim)
            if grad_lse is not None:
                extra = _lse_grad(_need(input, call, "the log-sum-exp's gradient"), grad_lse, options, class_dim)
                grad_input = extra if grad_input is None else grad_input + extra if differentiable or ctx.saving \
                    else grad_input.add_(extra)
        if ctx.target_grad and grad_loss is not None:
            grad_target = _target_grad(_need(input, call, "the target's gradient"), target, grad_loss, options,
                                       class_dim)
        return grad_input, grad_target, None, None


def input_numel(ctx, input, grad) -> int:
    """The size the gradient must have (an empty placeholder means it was not computed)."""
    return grad.numel() if input is None else input.numel()


def _alive_input(ctx):
    input = ctx.input
    if input is not None and input._version != ctx.input_version:
        return None  # modified since the forward (inplace_grad, or by the caller)
    return input


def _need(input, call: _Call, what: str) -> torch.Tensor:
    if input is None or call.inplace:
        raise RuntimeError(f"softxent.torch.cross_entropy: {what} needs the logits, which "
                           + ("inplace_grad=True overwrote" if call.inplace else "were modified in place"))
    return input


def _recompute_grad(ctx, input, target) -> torch.Tensor:
    if input is None or ctx.call.inplace:
        raise RuntimeError(
            "softxent.torch.cross_entropy computes its gradient in the forward pass and handed it to the first "
            "backward; a second backward through the same graph recomputes it from the logits, which "
            + ("inplace_grad=True overwrote." if ctx.call.inplace else "were modified in place since."))
    with torch.no_grad():
        _, _, grad = cross_entropy_forward(input, target, ctx.options,
                                           replace(ctx.call, want_grad=True, inplace=False, check=False))
    return grad


# --- the lean path: the commonest small call in about twenty aten calls -----------------------------------


def _is_lean(input, target, options: LossOptions, num_items, check: bool, compiled: bool = False) -> bool:
    """Class indices all in [0, C) and none equal to ignore_index (so the value check passes: one min/max
    read does both), at most class weights, "mean" over the rows or their weights: the spec's coefficients
    are then a_t = w_t (1 without weights), A = a_t, and "mean" divides by sum_t w_t (N without weights).
    The compiled kernel (`compiled`) also takes label smoothing, z_loss and temperature: every row's
    coefficients are then still the same, and "mean" still divides by N."""
    if target.dtype.is_floating_point or target.numel() == 0 or num_items is not None:
        return False
    if compiled:
        return True  # the kernel checks the labels itself (a bad or ignored one: the general path decides)
    if options.label_smoothing or options.z_loss or options.transforms_logits:
        return False
    if options.weight is not None and check:
        spec.check_weight(xp, options.weight, input.shape[_class_dim(input)])
    low, high = (int(bound) for bound in torch.aminmax(target))
    return 0 <= low and high < input.shape[_class_dim(input)] and not low <= options.ignore_index <= high


def _lean(input, target, options: LossOptions, call: _Call):
    """(loss, lse, grad) as `_composite`, for `_is_lean` calls, with the reduction done here; None when a
    row is fully masked, +inf or NaN.

    In float64, five passes over the logits (max, shift, exp, sum, the gradient's scaling written
    straight into the input's dtype) and a few row-sized calls: d = x - max x (straight from the
    input: its max is exact, and the shift is computed in float64), e = exp(d), R = sum_{j != t} e_j,
    s = e_t + R; loss = log1p(R) where the target holds the max (d_t = 0), else log s - d_t; gradient
    w_t / D (e_j / s) off the target and -w_t / D (R / s) on it (D the "mean" denominator, 1 for "sum").
    """
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    labels = (target.unsqueeze(0) if unbatched else target).unsqueeze(1)
    if labels.dtype != torch.int64:
        labels = labels.long()
    m = x.amax(dim=1, keepdim=True).to(torch.float64)
    # in float64, converted first (torch's mixed-dtype subtraction is unvectorised), never in place on x
    e = torch.sub(x, m) if x.dtype == torch.float64 else x.to(torch.float64).sub_(m)
    d_t = e.gather(1, labels)
    e = e.exp_().scatter_(1, labels, 0.0)  # e off the target: the gradient's buffer
    rest = e.sum(dim=1, keepdim=True)
    total = d_t.exp().add_(rest)  # s >= 1: the max's own term is exactly 1
    losses = torch.where(d_t == 0, rest.log1p(), total.log().sub_(d_t))
    w_t = None
    if options.weight is not None:
        w_t = options.weight.to(torch.float64).take(labels)
        losses = losses.mul_(w_t)
    if not math.isfinite(float(losses.sum())):
        return None  # a fully masked, +inf or NaN row (or the target's logit -inf): the general path decides
    loss, scale = _lean_reduce(losses, w_t, options.reduction, target.shape)
    loss = loss.to(input.dtype)
    lse = loss.new_empty(0)
    if call.return_lse:
        lse = (m + total.log()).view(target.shape).to(input.dtype)
    if not call.want_grad:
        return loss, lse, input.new_empty(0)
    q = (scale if w_t is None else w_t * scale) / total
    e.scatter_(1, labels, rest.neg())  # the target's entry -R, never e_t - s (p_t - 1 by cancellation)
    grad = torch.mul(e, q, out=x.new_empty(e.shape))  # rounded once, to the input's dtype
    return loss, lse, grad.squeeze(0) if unbatched else grad


def _compiled_lean(input: torch.Tensor, options: LossOptions) -> bool:
    """Whether a lean call runs in the compiled CPU kernel (`_lean_compiled`): (C,), (N, C) or contiguous
    (N, C, d...) float32 or bfloat16 logits on the CPU, no class weights, no softcap."""
    return ((input.dim() <= 2 or input.is_contiguous()) and options.weight is None
            and torch_cpu.compiled_kernel_takes(input, options) and not _backend.uses_triton(input))


def _lean_compiled(input, target, options: LossOptions, call: _Call):
    """(loss, lse or None, grad or None) of a call on the compiled kernel's lean problem (`torch_cpu.lean_rows`: int64 labels
    all in [0, C), none ignored, no class weights), any size (one span of rows per core when large); None
    when a label is not that, or a row is fully masked, +inf or NaN: the general path decides those.
    "mean" and "sum" come from the kernel's float64 sum of the unrounded losses, rounded once."""
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    labels = target if target.dim() == 1 else target.reshape(-1)  # a row's label each, (N, d...) flat
    if labels.dtype != torch.int64:  # any integer dtype holds class indices; the kernel reads int64
        labels = labels.long()
    if not labels.is_contiguous():
        labels = labels.contiguous()
    reduction = options.reduction
    scale = 1.0 / labels.numel() if reduction == "mean" else 1.0  # the "mean" over the rows, all kept
    result = torch_cpu.lean_rows(x, labels, options, scale, call.want_grad, per_row=reduction == "none",
                                 want_lse=call.return_lse)
    if result is None:
        return None
    if reduction == "none":
        loss = result.losses.view(target.shape).to(input.dtype)
    else:
        value = result.loss_sum * scale
        # scalar_tensor, the cheapest 0-d tensor, raises beyond float32's range, where torch.tensor gives inf
        loss = torch.scalar_tensor(value, dtype=input.dtype) if abs(value) < 3e38 else torch.tensor(value, dtype=input.dtype)
    lse = result.lse.view(target.shape).to(input.dtype) if call.return_lse else None
    grad = result.grad
    return loss, lse, grad.squeeze(0) if unbatched and grad is not None else grad


def _lean_native(input, target, options: LossOptions):
    """The loss of a `_is_lean` call on logits below float64 as torch's own float64 ops, differentiated by
    torch's autograd (double backward and all), or None where a loss is below
    `FLOAT64_LOG_SOFTMAX_MARGIN` times C (a target holding nearly all the mass: `_lean`'s log1p form).

    d = x - max x is computed in float64 straight from the input (the max is exact and left out of the
    graph, so log_softmax's own shift by max d = 0 is exact too); then nll_loss of log_softmax(d), which
    autograd turns into w_t / D (p_j - [j = t]) rounded once to the input's dtype: about a dozen aten
    calls forward and five C++ nodes backward, where the `_CrossEntropyFunction` path costs twice that.
    """
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    labels = target.unsqueeze(0) if unbatched else target
    if labels.dtype != torch.int64:  # any integer dtype holds class indices; nll_loss takes int64
        labels = labels.long()
    m = x.detach().amax(dim=1, keepdim=True).to(torch.float64)
    # x - m in float64 (x below float64, so .to copies), converted first: the mixed-dtype subtraction
    # is unvectorised
    lsm = torch.log_softmax(x.to(torch.float64).sub_(m), 1)
    low, high = torch.aminmax(lsm.detach().gather(1, labels.unsqueeze(1)))
    # -lsm_t is exact where log_softmax is (every loss >= C 2^-26); p_t - 1 too, its error being lsm_t's
    if not (float(high) <= -FLOAT64_LOG_SOFTMAX_MARGIN * x.shape[1] and float(low) > -math.inf):
        return None  # a dominant target, a NaN or an infinite loss: _lean's exact form, or the general path
    weight = options.weight
    if weight is not None:
        weight = weight.to(torch.float64)
    loss = torch.nn.functional.nll_loss(lsm, labels, weight, ignore_index=options.ignore_index,
                                        reduction=options.reduction)
    if weight is not None and not math.isfinite(float(loss.detach().sum())):
        return None  # zero weights: rule 5's "mean" and 0 * inf are the general path's
    if unbatched and options.reduction == "none":
        loss = loss.squeeze(0)
    return loss.to(input.dtype)


def _lean_reduce(losses, w_t, reduction: str, shape):
    """(loss, the gradient's scale): "none" the rows, "sum", "mean" over the rows or their weights
    (a zero weight sum giving loss 0 and a zero gradient, rule 5)."""
    if reduction == "none":
        return losses.view(shape), 1.0
    summed = losses.sum()
    if reduction == "sum":
        return summed, 1.0
    if w_t is None:
        return summed / losses.numel(), 1.0 / losses.numel()
    denom = w_t.sum()
    scale = torch.where(denom > 0, denom.reciprocal(), 0.0)
    return summed * scale, scale


# --- the composite path: a few aten calls, exact, branch-free under torch.func ---------------------------


def _composite(input, target, options: LossOptions, grad_scale, call: _Call, work: torch.dtype):
    """losses, lse (batch shape, `work` dtype) and the gradient (input's dtype; empty when not wanted).

    The rows' math, over the class dimension 1 of (N, C, d...) directly (no copy of a K-dim input), with
    lsm = log_softmax(z) in `work` (float64 for every small input: the shift and the sums are then exact
    far below a float32 ulp, and the results are rounded once):

        loss = a_t l_t + u sum_j w_j (-lsm_j) + zl lse^2        (class index t)
        l_t  = -log1p(-R) where p_t > 1/2, else -lsm_t,         R = sum_{j != t} p_j
        grad = s (F p_j - a_j),  target entry s (-a_t R + (F - a_t) p_t - u w_t),  F = A + 2 zl lse

    so neither the loss of a dominant target (-log p_t for p_t near 1) nor its gradient p_t - 1 is a
    cancellation (rule 11 of docs/semantics.md). Eager, one number read at the end tells whether a row was fully masked,
    +inf or NaN; such a call is done again branch-free (`robust`), as it always is under torch.func.
    """
    if input.dim() == 1:
        losses, lse, grad = _composite(input.unsqueeze(0), target.unsqueeze(0), options, grad_scale, call, work)
        return losses.squeeze(0), lse.squeeze(0), grad.squeeze(0) if grad.numel() else grad
    result = _composite_rows(input, target, options, grad_scale, call, work, call.robust)
    if result is None:  # a special row: again, with the limits of rules 2 and 3
        result = _composite_rows(input, target, options, grad_scale, call, work, True)
    return result


def _composite_rows(input, target, options: LossOptions, grad_scale, call: _Call, work, robust):
    num_classes = input.shape[1]
    index = not target.dtype.is_floating_point
    weight = options.weight
    w = None if weight is None else weight.to(work)
    w_view = None if w is None else w.view([num_classes] + [1] * (input.dim() - 2))  # along dim 1
    temperature, z_loss = options.temperature, options.z_loss

    # 1. z = softcap * tanh(x / softcap) (a -inf logit stays a mask), then d = z - max z <= 0, then d / T.
    #    Plain aten calls, not log_softmax: its row loop forks torch's thread pool even for a 32 x 10 input.
    z = input.to(work)
    cap = None
    if options.softcap is not None:
        cap = torch.tanh(z / options.softcap)
        z = torch.where(torch.isneginf(z), z, cap * options.softcap)
    m = z.amax(dim=1, keepdim=True)
    masked = positive = None
    if robust:
        masked = m == -math.inf  # rule 2: loss 0, gradient 0
        positive = m == math.inf  # rule 3: the +inf entries share the mass
        z = torch.where(positive, torch.where(z == math.inf, 0.0, -math.inf), z)
        m = torch.where(torch.isfinite(m), m, 0.0)
    d = z - m
    if robust:
        d = torch.where(masked, 0.0, d)  # a finite stand-in; its row is zeroed below
    if temperature != 1.0:
        d, m = d / temperature, m / temperature
    e = d.exp()
    total_e = e.sum(dim=1, keepdim=True)  # s >= 1: the max's own term is exactly 1
    if not robust and not math.isfinite(float(total_e.sum())):
        return None  # a fully masked, +inf or NaN row: the robust pass decides
    log_s = total_e.log()
    shifted_lse = lse = m + log_s
    if robust:  # the gradient keeps the shifted rows' own lse (finite), as the fused kernel does
        lse = torch.where(positive, math.inf, torch.where(masked, -math.inf, lse))

    # 2. the loss, a sum of terms >= 0 (d <= 0 <= log s), and the gradient's per-row factor F
    scale = grad_scale / temperature
    if robust:
        scale = torch.where(masked, 0.0, scale)
    if index:
        c = spec.index_coefficients(xp, target.unsqueeze(1).to(torch.int64), w, options, num_classes, work)
        d_t = d.gather(1, c.safe)
        e_t = e.gather(1, c.safe)
        rest = e.scatter(1, c.safe, 0.0)  # e off the target: the gradient's buffer
        rest_e = rest.sum(dim=1, keepdim=True)
        # where the target holds the max (d_t = 0, e_t = 1) the loss is log1p of the rest, exact however small
        exact_t = torch.where(d_t == 0, torch.log1p(rest_e), log_s - d_t)
        losses = torch.where(c.target > 0, c.target * exact_t, 0.0)
        if options.label_smoothing:  # sum_j w_j (log s - d_j), a class of weight 0 giving 0 even at d_j = -inf
            dot = d.sum(dim=1, keepdim=True) if w_view is None \
                else torch.where(w_view > 0, d * w_view, 0.0).sum(dim=1, keepdim=True)
            w_sum = float(num_classes) if w is None else w.sum()
            losses = losses + torch.where(c.kept, c.uniform * (w_sum * log_s - dot), 0.0)
        factor = c.total
        if z_loss:
            losses = losses + torch.where(c.kept, z_loss * lse * lse, 0.0)
            factor = factor + torch.where(c.kept, 2.0 * z_loss * shifted_lse, 0.0)
    else:
        coef = spec.probability_coefficients(xp, target, w_view, options, num_classes, work)
        factor = coef.sum(dim=1, keepdim=True)
        dot = torch.where(coef > 0, coef * d, 0.0).sum(dim=1, keepdim=True)  # 0 log 0 = 0 (rule 4)
        losses = factor * log_s - dot
        if z_loss:
            losses = losses + z_loss * lse * lse
            factor = factor + 2.0 * z_loss * shifted_lse
    if robust:
        losses = torch.where(masked, 0.0, losses)
        factor = torch.where(masked, 0.0, factor)  # lse = -inf there: keep F finite (its scale is 0)
    row_lse = lse.squeeze(1) if call.return_lse else losses.new_empty(0)
    if not call.want_grad:
        return losses.squeeze(1), row_lse, input.new_empty(0)

    # 3. the gradient s (F p_j - a_j); the target's entry s (-a_t R + (F - a_t) p_t - u w_t), never 1 - p_t
    if index:
        q = scale / total_e
        grad = rest * (q * factor) if robust else rest.mul_(q * factor)
        if options.label_smoothing:
            grad = grad - scale * c.uniform * (1.0 if w_view is None else w_view)
        w_t = 1.0 if w is None else w.take(c.safe)
        value = q * ((factor - c.target) * e_t - c.target * rest_e) - scale * c.uniform * w_t
        # out of place under torch.func (vmap has no batching rule for scatter_)
        grad = grad.scatter(1, c.safe, value) if robust else grad.scatter_(1, c.safe, value)
    else:
        grad = (e * (factor / total_e) - coef) * scale
    if cap is not None:  # chain rule through softcap * tanh(x / softcap)
        grad = grad * (1.0 - cap * cap)
    return losses.squeeze(1), row_lse, grad.to(input.dtype)


def _differentiable_grad(input, target, options: LossOptions, call: _Call, grad_loss, exact) -> torch.Tensor:
    """grad_loss times d loss / d input, from differentiable ops, with the value of `exact`.

    The fused and composite paths write the gradient with in-place, non-differentiable ops; a double
    backward (create_graph) differentiates this formula instead, s (F p - a) dz/dx, built on softmax(z),
    whose own derivative torch knows; its value is replaced by the exact gradient's (the difference is a
    few ulp, so the second derivative is that of the formula).
    """
    class_dim = _class_dim(input)
    x = input.unsqueeze(0) if input.dim() == 1 else input
    work = accumulation_dtype(input.dtype)
    num_classes = x.shape[1]
    z = x.to(work)
    dz = None
    if options.softcap is not None:
        cap = torch.tanh(z / options.softcap)
        dz = 1.0 - cap * cap
    d, m = spec.transformed_scores(xp, z, options, axis=1)
    p = _probabilities(d, 1)
    lse = m + torch.logsumexp(d, dim=1, keepdim=True)
    live = torch.isfinite(lse)  # fully masked rows: zero gradient (rule 2)
    w = None if options.weight is None else options.weight.to(work)
    w_view = None if w is None else w.view([num_classes] + [1] * (x.dim() - 2))
    if target.dtype.is_floating_point:
        t = target.unsqueeze(0) if input.dim() == 1 else target
        a = spec.probability_coefficients(xp, t, w_view, options, num_classes, work)
        kept = torch.ones_like(live)
    else:
        labels = (target.unsqueeze(0) if input.dim() == 1 else target).unsqueeze(1).to(torch.int64)
        c = spec.index_coefficients(xp, labels, w, options, num_classes, work)
        a = torch.zeros_like(p).scatter(1, c.safe, c.target)
        if options.label_smoothing:
            a = a + c.uniform * (1.0 if w_view is None else w_view)
        kept = c.kept
    factor = a.sum(dim=1, keepdim=True)
    if options.z_loss:
        factor = factor + torch.where(kept & live, 2.0 * options.z_loss * torch.where(live, lse, 0.0), 0.0)
    num_rows = x.numel() // max(1, num_classes)
    denom = denominator(target, options, call.num_items, num_classes=num_classes, num_rows=num_rows, dtype=work,
                        device=x.device)
    scale = spec.gradient_scale(xp, denom, work, x.device) / options.temperature
    grad = torch.where(live, (p * factor - a) * scale, 0.0)
    if dz is not None:
        grad = grad * dz
    upstream = grad_loss.to(work)
    if upstream.dim():
        upstream = upstream.unsqueeze(0) if input.dim() == 1 else upstream
        upstream = upstream.unsqueeze(1)
    grad = grad * upstream
    if input.dim() == 1:
        grad = grad.squeeze(0)
    grad = grad.to(input.dtype)
    if exact is None:
        return grad
    exact_value = exact * (grad_loss.unsqueeze(class_dim) if grad_loss.dim() else grad_loss)
    return exact_value.detach() + (grad - grad.detach())


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
    """softmax(z) with rules 2 and 3 of docs/semantics.md: 0 for fully masked rows, +inf entries share the mass."""
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


def _cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, options: list[float],
                   grad_scale: torch.Tensor, want_grad: bool, check: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad = _memory.empty_like(input) if want_grad else input.new_empty(0)
    losses, lse = _fused(input, target, weight, LossOptions.decode(options), grad_scale, grad if want_grad else None,
                         check)
    return losses, lse, grad


def _cross_entropy_inplace(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                           options: list[float], grad_scale: torch.Tensor, check: bool
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    losses, lse = _fused(input, target, weight, LossOptions.decode(options), grad_scale, input, check)
    return losses, lse


_cross_entropy_op = torch.library.custom_op("softxent::cross_entropy", _cross_entropy, mutates_args=())


@_cross_entropy_op.register_fake
def _(input, target, weight, options, grad_scale, want_grad, check):
    class_dim = _class_dim(input)
    batch_shape = input.shape[:class_dim] + input.shape[class_dim + 1:]
    acc = accumulation_dtype(input.dtype)
    losses = input.new_empty(batch_shape, dtype=acc)
    return losses, torch.empty_like(losses), torch.empty_like(input) if want_grad else input.new_empty(0)


_cross_entropy_inplace_op = torch.library.custom_op("softxent::cross_entropy_", _cross_entropy_inplace,
                                                    mutates_args=("input",))


@_cross_entropy_inplace_op.register_fake
def _(input, target, weight, options, grad_scale, check):
    class_dim = _class_dim(input)
    batch_shape = input.shape[:class_dim] + input.shape[class_dim + 1:]
    losses = input.new_empty(batch_shape, dtype=accumulation_dtype(input.dtype))
    return losses, torch.empty_like(losses)
