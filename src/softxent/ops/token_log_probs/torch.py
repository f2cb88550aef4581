"""Token log-probabilities and entropy for torch: differentiable, fused, and linear without the (N, V) logits.

Layers, as cross_entropy's: `token_log_probs` / `linear_token_log_probs` (validation) -> the autograd
Functions -> the row kernels, picked per tensor by `_kernels` (`torch_cpu.py` on the CPU and anywhere
without Triton, `triton.py` on CUDA). The math is the package docstring's.

The outputs are per row, so the upstream gradient of each row is only known in the backward. The
forward therefore keeps three numbers per row (the max, L and E, `stats`), and the backward rebuilds
p = exp(d - L) in one sweep and writes the gradient: nothing of size (N, V) is kept between the two.
The linear form computes each chunk's logits again in the backward (one matrix product more than the
unfused computation, which holds the (N, V) logits instead); when every row fits in one chunk, that
chunk is kept from the forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from softxent import _validation as v
from softxent._options import LossOptions
from softxent._torch import backend as _backend
from softxent._torch import memory
from softxent._torch.matmul import fold_chunk
from softxent.ops.cross_entropy import spec
from softxent.ops.cross_entropy.torch_cpu import accumulation_dtype, work_dtype
from softxent.ops.linear_cross_entropy.torch import _check_arguments as _check_layer_arguments
from softxent.ops.linear_cross_entropy.torch import choose_chunk_size
from softxent.ops.token_log_probs.torch_cpu import token_backward_rows, token_forward_rows


def _kernels(logits: torch.Tensor, check_labels: bool = False):
    """(forward_rows, backward_rows) for these logits: Triton's on CUDA, the torch ones elsewhere; under
    torch.compile the custom ops below, opaque to tracing (the kernels branch on data), whose forward
    also checks the labels if asked (eagerly, the caller has)."""
    if torch.compiler.is_compiling():
        return partial(_compiled_forward_rows, check=check_labels), _compiled_backward_rows
    return _eager_kernels(logits)


def _stats_dtype(logits: torch.Tensor) -> torch.dtype:
    """The precision the row kernels work in and return lp, h and stats in: float32 in the Triton kernels,
    cross_entropy's `work_dtype` in the torch ones (float64 for float32 logits: exact p = exp(d - L))."""
    return torch.float32 if _backend.uses_triton(logits) else work_dtype(logits.dtype)


def _eager_kernels(logits: torch.Tensor):
    if _backend.uses_triton(logits):
        from softxent.ops.token_log_probs import triton as kernels

        return kernels.token_forward_rows, kernels.token_backward_rows
    return token_forward_rows, token_backward_rows


@torch.library.custom_op("softxent::token_forward_rows", mutates_args=())
def _forward_rows_op(logits: torch.Tensor, labels: torch.Tensor, options: list[float], entropy: bool, check: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    decoded = LossOptions.decode(options)
    if check:  # the label check, here where it runs eagerly: tracing cannot branch on the labels' values
        _backend.check_labels(labels, logits.shape[-1], decoded.ignore_index, logits)
    forward_rows, _ = _eager_kernels(logits)
    return forward_rows(logits, labels, decoded, entropy=entropy)


@_forward_rows_op.register_fake
def _(logits, labels, options, entropy, check):
    acc = _stats_dtype(logits)
    rows = logits.shape[0]
    return logits.new_empty(rows, dtype=acc), logits.new_empty(rows, dtype=acc), logits.new_empty(rows, 3, dtype=acc)


@torch.library.custom_op("softxent::token_backward_rows", mutates_args=())
def _backward_rows_op(logits: torch.Tensor, labels: torch.Tensor, options: list[float], lp: torch.Tensor,
                      stats: torch.Tensor, g: torch.Tensor, h_grad: torch.Tensor | None) -> torch.Tensor:
    grad = memory.empty_like(logits)
    _, backward_rows = _eager_kernels(logits)
    backward_rows(logits, labels, LossOptions.decode(options), lp, stats, g, h_grad, grad)
    return grad


@_backward_rows_op.register_fake
def _(logits, labels, options, lp, stats, g, h_grad):
    return torch.empty_like(logits)  # a fake tensor: no memory to advise


def _compiled_forward_rows(logits, labels, options: LossOptions, *, entropy: bool, check: bool):
    return torch.ops.softxent.token_forward_rows(logits, labels, options.encode(), entropy, check)


def _compiled_backward_rows(logits, labels, options: LossOptions, lp, stats, g, h_grad, out) -> None:
    # functional under tracing: a fresh gradient copied into `out` (in place over the logits eagerly)
    out.copy_(torch.ops.softxent.token_backward_rows(logits, labels, options.encode(), lp, stats, g, h_grad))


def token_log_probs(logits: torch.Tensor, target: torch.Tensor, *, temperature: float = 1.0,
                    softcap: float | None = None, ignore_index: int = -100, return_entropy: bool = False,
                    check_labels: bool = True):
    """The log-probability of each target token, ``log softmax(z)_target``, and optionally the entropy.

    With z = softcap-then-temperature(logits), d = z - max z and L = log sum_j exp(d_j):
    ``log p_t = -((-d_t) + L)`` and ``H = L + sum_j p_j (-d_j)``, sums of terms >= 0, so both stay
    exact where a confident policy has p_t near 1 and H near 0 (rule 11 of docs/semantics.md). Differentiable, the
    entropy included (RL: the policy's log-probabilities and an entropy bonus); the backward rebuilds
    the softmax from three numbers per row kept by the forward, in one sweep.

    Args:
        logits: (..., V) floating tensor (classes last, the LLM layout).
        target: integer class indices of shape ``logits.shape[:-1]``; `ignore_index` rows give 0 and a
            zero gradient (as do rows whose logits are all -inf).
        temperature, softcap: as `cross_entropy` (softcap first, the temperature after the max shift).
        ignore_index: the label of rows to leave out.
        return_entropy: also return the per-row entropy of softmax(z), differentiable.
        check_labels: extension, as `cross_entropy` (False skips the range check: no host sync).

    Returns:
        log_probs of the target's shape, float32 for 16-bit logits (else their dtype); with
        `return_entropy`, ``(log_probs, entropy)``.

    Example:
        >>> import torch, softxent.torch as sxt
        >>> logits = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
        >>> lp, h = sxt.token_log_probs(logits, torch.tensor([2]), return_entropy=True)
        >>> round(lp.item(), 4), round(h.item(), 4)
        (-0.4076, 0.8324)
        >>> (lp.sum() + 0.01 * h.sum()).backward()

    See also: `softxent.token_log_probs` (NumPy), `linear_token_log_probs`,
    `softxent.torch.distributed.vocab_parallel_token_log_probs`.

    References:
        Blanchard, Higham & Higham 2021, "Accurately computing the log-sum-exp and softmax functions";
        Schulman et al. 2017, "Proximal policy optimization algorithms".
    """
    options = LossOptions(ignore_index=ignore_index, softcap=softcap, temperature=temperature)
    _check_plain(logits, target)
    compiling = torch.compiler.is_compiling()
    if check_labels and not compiling:  # compiled, the kernel's op checks them (tracing cannot branch on values)
        _backend.check_labels(target, logits.shape[-1], options.ignore_index, logits)
    lp, h = _TokenLogProbs.apply(logits, target, options, bool(return_entropy), bool(check_labels))
    return (lp, h) if return_entropy else lp


def _check_plain(logits, target) -> None:
    for name, tensor in (("logits", logits), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
    v.check_numeric(logits, "logits", allow_int=False)
    if logits.dim() == 0:
        raise ValueError("logits must have at least one dimension (the classes); got a scalar")
    if spec.check_target(logits.shape, target, logits.dim() - 1) != spec.INDEX:
        raise v.probabilities_target_error(tuple(target.shape))
    if target.device != logits.device:
        raise ValueError(f"target must be on logits' device {logits.device}; got {target.device}")


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for 16-bit inputs (the API's rule for these per-token quantities), else the input's."""
    return accumulation_dtype(dtype)


class _TokenLogProbs(torch.autograd.Function):
    """Forward: log p_t, H and three numbers per row; backward: one sweep from them."""

    @staticmethod
    def forward(ctx, logits, target, options: LossOptions, entropy: bool, check: bool):
        num_classes = logits.shape[-1]
        rows = logits.reshape(-1, num_classes)
        labels = target.reshape(-1).to(torch.int64)
        forward_rows, _ = _kernels(rows, check_labels=check)
        lp, h, stats = forward_rows(rows, labels, options, entropy=entropy)
        ctx.save_for_backward(logits, labels, lp, stats)
        ctx.options, ctx.entropy = options, entropy
        ctx.set_materialize_grads(False)
        shape = target.shape
        return lp.view(shape).to(_out_dtype(logits.dtype)), h.view(shape).to(_out_dtype(logits.dtype))

    @staticmethod
    def backward(ctx, grad_lp, grad_h):
        logits, labels, lp, stats = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (grad_lp is None and grad_h is None):
            return None, None, None, None, None
        acc = lp.dtype
        g = torch.zeros_like(lp) if grad_lp is None else grad_lp.reshape(-1).to(acc)
        hg = None if grad_h is None or not ctx.entropy else grad_h.reshape(-1).to(acc)
        rows = logits.reshape(-1, logits.shape[-1])
        grad = memory.empty_like(rows)
        _, backward_rows = _kernels(rows)
        backward_rows(rows.detach(), labels, ctx.options, lp, stats, g, hg, grad)
        return grad.view(logits.shape), None, None, None, None


# --- the linear form ----------------------------------------------------------------------------------


def linear_token_log_probs(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor, *,
                           linear_bias: torch.Tensor | None = None, temperature: float = 1.0,
                           softcap: float | None = None, ignore_index: int = -100, return_entropy: bool = False,
                           chunk_size: int | None = None, check_labels: bool = True):
    """`token_log_probs` of ``input @ linear_weight.T + linear_bias``, never holding the (N, V) logits.

    The policy's per-token log-probabilities (and entropy) straight from the hidden states and the LM
    head. The forward computes the logits a chunk of rows at a time, reduces each chunk to its rows'
    results and three numbers per row, and drops it; the backward computes each chunk again, turns it
    into its gradient in place and folds it into the gradients of the input, the weight and the bias
    before the next chunk. Memory beyond the inputs and the gradients: one chunk of logits (7/32 of
    the gradients' size by default) and a cache-sized scratch per thread. 16-bit weights accumulate
    their gradient in float32.

    Args:
        input: (..., D) hidden states; linear_weight: (V, D); linear_bias: (V,) or None; one dtype.
        target: class indices of shape ``input.shape[:-1]``.
        temperature, softcap, ignore_index, return_entropy, check_labels: as `token_log_probs`.
        chunk_size: rows per chunk; None chooses from the shapes and the free memory.

    Returns:
        As `token_log_probs`.

    Example:
        >>> import torch, softxent.torch as sxt
        >>> x = torch.randn(4, 3, requires_grad=True)
        >>> w = torch.randn(5, 3, requires_grad=True)
        >>> lp, h = sxt.linear_token_log_probs(x, w, torch.tensor([0, 1, 2, -100]), return_entropy=True,
        ...                                    chunk_size=2)
        >>> ref = sxt.token_log_probs(x @ w.T, torch.tensor([0, 1, 2, -100]))
        >>> bool(torch.allclose(lp, ref, atol=1e-6))
        True
        >>> (-lp.sum() - 0.01 * h.sum()).backward()

    See also: `softxent.linear_token_log_probs` (NumPy), `linear_cross_entropy`.

    References:
        Wijmans et al. 2024, "Cut your losses in large-vocabulary language models".
    """
    options = LossOptions(ignore_index=ignore_index, softcap=softcap, temperature=temperature)
    chunk_size = v.check_chunk_size(chunk_size)
    _check_layer_arguments(input, linear_weight, target, linear_bias, None)
    if target.dtype.is_floating_point:
        raise v.probabilities_target_error(tuple(target.shape), "input @ linear_weight.T")
    num_classes = linear_weight.shape[0]
    compiling = torch.compiler.is_compiling()
    if check_labels and not compiling:  # compiled, the forward's op checks them
        _backend.check_labels(target, num_classes, options.ignore_index, input)
    # compiled, the chunk is chosen inside the ops from the actual shapes (0): no recompile per size
    chunk = chunk_size or (0 if compiling else _default_chunk(input, linear_weight))
    plan = _LinearPlan(options, bool(return_entropy), chunk, bool(check_labels) and compiling)
    lp, h = _LinearTokenLogProbs.apply(input, linear_weight, linear_bias, target, plan)
    return (lp, h) if return_entropy else lp


def _default_chunk(input, weight) -> int:
    """Rows per chunk: 7/32 of the gradients' size in logits.

    The backward holds the chunk, dx, dW and the row kernel's scratch at once (a quarter measured
    1.3015x the gradients at 4096 x 1024 x 32000; 7/32 1.271x). Smaller chunks cost time: each reads W
    twice and dW twice (at 72 rows of 1024 x 32000 the products run 1.8x slower than at 289).
    """
    num_classes, features = weight.shape
    rows = input.numel() // max(1, features)
    return max(1, min(rows, choose_chunk_size(rows, num_classes, features, input.dtype, input.device, share=7 / 32)))


@dataclass
class _LinearPlan:
    options: LossOptions
    entropy: bool
    chunk: int  # rows per chunk; 0: chosen inside the compiled ops
    check: bool = False  # check the labels inside the forward's op (compiled only)
    kept_logits: torch.Tensor | None = None  # the only chunk, kept from the forward for the backward (eager)


def _chunk_logits(x, w, b, out) -> torch.Tensor:
    if b is not None:
        return torch.addmm(b, x, w.t(), out=out)
    return torch.mm(x, w.t(), out=out)


def _linear_forward(x, weight, bias, labels, options: LossOptions, entropy: bool, chunk: int, keep: bool):
    """(lp, h, stats, kept): the rows' results a chunk of logits at a time; kept is the logits buffer when
    `keep` and one chunk holds every row (the backward then reuses it), else None."""
    num_classes = weight.shape[0]
    num_rows = x.shape[0]
    acc = _stats_dtype(x)
    lp = torch.zeros(num_rows, dtype=acc, device=x.device)
    h = torch.zeros_like(lp)
    stats = torch.zeros(num_rows, 3, dtype=acc, device=x.device)
    chunk = max(1, min(chunk or _default_chunk(x, weight), num_rows))
    buffer = memory.empty(chunk, num_classes, dtype=x.dtype, device=x.device)
    forward_rows, _ = _eager_kernels(buffer)
    for lo in range(0, num_rows, chunk):
        hi = min(lo + chunk, num_rows)
        logits = _chunk_logits(x[lo:hi], weight, bias, buffer[: hi - lo])
        lp[lo:hi], h[lo:hi], stats[lo:hi] = forward_rows(logits, labels[lo:hi], options, entropy=entropy)
    return lp, h, stats, (buffer if keep and num_rows <= chunk else None)


def _linear_backward(x, weight, bias, labels, options: LossOptions, lp, stats, g, hg, chunk: int, need_dx: bool,
                     need_dw: bool, need_db: bool, buffer: torch.Tensor | None):
    """(dx, dw, db) of sum(g lp + hg h): each chunk's logits again (or `buffer`, the forward's only chunk),
    turned into their gradient in place and folded into the layer's gradients before the next chunk."""
    acc = lp.dtype
    num_classes, features = weight.shape
    num_rows = x.shape[0]
    dtype = x.dtype
    wide = dtype in (torch.float16, torch.bfloat16)
    dx = memory.empty_like(x) if need_dx else None
    dw = memory.zeros(weight.shape, dtype=acc if wide else dtype, device=weight.device) if need_dw else None
    db = torch.zeros(num_classes, dtype=acc, device=weight.device) if need_db and bias is not None else None
    chunk = max(1, min(chunk or _default_chunk(x, weight), num_rows))
    reuse = buffer is not None
    if buffer is None:
        buffer = memory.empty(chunk, num_classes, dtype=dtype, device=x.device)
    _, backward_rows = _eager_kernels(buffer)
    slice_rows = max(64, (chunk * num_classes) // (4 * max(1, features)))
    for lo in range(0, num_rows, chunk):
        hi = min(lo + chunk, num_rows)
        logits = buffer[: hi - lo]
        if not reuse:
            _chunk_logits(x[lo:hi], weight, bias, logits)
        # the chunk's logits become d(outputs)/d(logits) in place
        backward_rows(logits, labels[lo:hi], options, lp[lo:hi], stats[lo:hi], g[lo:hi],
                      None if hg is None else hg[lo:hi], logits)
        fold_chunk(logits, x[lo:hi], weight, None if dx is None else dx[lo:hi], dw, db, wide=wide,
                   slice_rows=slice_rows, acc=acc)
    return dx, None if dw is None else dw.to(weight.dtype), None if db is None else db.to(bias.dtype)


# under torch.compile the two sweeps run as custom ops, opaque to tracing (their loops and kernels
# branch on shapes and data); eagerly their bodies run directly (an op's wrapper costs tens of microseconds)


@torch.library.custom_op("softxent::linear_token_forward", mutates_args=())
def _linear_forward_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                       options: list[float], entropy: bool, chunk: int, check: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    decoded = LossOptions.decode(options)
    if check:
        _backend.check_labels(labels, weight.shape[0], decoded.ignore_index, x)
    lp, h, stats, _ = _linear_forward(x, weight, bias, labels, decoded, entropy, chunk, keep=False)
    return lp, h, stats


@_linear_forward_op.register_fake
def _(x, weight, bias, labels, options, entropy, chunk, check):
    acc = _stats_dtype(x)
    rows = x.shape[0]
    return x.new_empty(rows, dtype=acc), x.new_empty(rows, dtype=acc), x.new_empty(rows, 3, dtype=acc)


@torch.library.custom_op("softxent::linear_token_backward", mutates_args=())
def _linear_backward_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                        options: list[float], lp: torch.Tensor, stats: torch.Tensor, g: torch.Tensor,
                        hg: torch.Tensor | None, chunk: int, need_dx: bool, need_dw: bool, need_db: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db = _linear_backward(x, weight, bias, labels, LossOptions.decode(options), lp, stats, g, hg, chunk,
                                  need_dx, need_dw, need_db, None)
    # a custom op returns tensors, none aliasing another: a new empty one for each gradient not asked for
    return tuple(x.new_empty(0) if grad is None else grad for grad in (dx, dw, db))


@_linear_backward_op.register_fake
def _(x, weight, bias, labels, options, lp, stats, g, hg, chunk, need_dx, need_dw, need_db):
    return (torch.empty_like(x) if need_dx else x.new_empty(0), torch.empty_like(weight) if need_dw else x.new_empty(0),
            weight.new_empty(weight.shape[0]) if need_db and bias is not None else x.new_empty(0))


class _LinearTokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, target, plan: _LinearPlan):
        features = weight.shape[1]
        x = input.reshape(-1, features)
        labels = target.reshape(-1).to(torch.int64)
        ctx.compiling = torch.compiler.is_compiling()
        if ctx.compiling:
            lp, h, stats = torch.ops.softxent.linear_token_forward(x, weight, bias, labels, plan.options.encode(),
                                                                   plan.entropy, plan.chunk, plan.check)
        else:
            want_grad = any(ctx.needs_input_grad[:3])
            lp, h, stats, plan.kept_logits = _linear_forward(x, weight, bias, labels, plan.options, plan.entropy,
                                                             plan.chunk, keep=want_grad)
        ctx.save_for_backward(input, weight, bias, labels, lp, stats)
        ctx.plan = plan
        ctx.set_materialize_grads(False)
        shape = target.shape
        return lp.view(shape).to(_out_dtype(input.dtype)), h.view(shape).to(_out_dtype(input.dtype))

    @staticmethod
    def backward(ctx, grad_lp, grad_h):
        input, weight, bias, labels, lp, stats = ctx.saved_tensors
        plan = ctx.plan
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        need_db = need_db and bias is not None
        if grad_lp is None and grad_h is None or not (need_dx or need_dw or need_db):
            return None, None, None, None, None
        acc = lp.dtype
        g = torch.zeros_like(lp) if grad_lp is None else grad_lp.reshape(-1).to(acc)
        hg = None if grad_h is None or not plan.entropy else grad_h.reshape(-1).to(acc)
        x = input.reshape(-1, weight.shape[1])
        if ctx.compiling:
            dx, dw, db = torch.ops.softxent.linear_token_backward(x, weight, bias, labels, plan.options.encode(), lp,
                                                                  stats, g, hg, plan.chunk, need_dx, need_dw, need_db)
        else:
            buffer, plan.kept_logits = plan.kept_logits, None
            dx, dw, db = _linear_backward(x, weight, bias, labels, plan.options, lp, stats, g, hg, plan.chunk,
                                          need_dx, need_dw, need_db, buffer)
        return (dx.view(input.shape) if need_dx else None, dw if need_dw else None, db if need_db else None,
                None, None)
