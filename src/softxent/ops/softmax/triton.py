"""softmax and log_softmax over the rows of a (N, C) tensor on the GPU, forward and backward.

Layering: Triton kernels, then the allocating `softmax_forward` / `softmax_backward`, then custom ops
(opaque to torch.compile, with fake implementations), then the row functions the PyTorch layer calls.

Forward: one program per row keeps the online state (m, rest) of _rowmath over one sweep, then sweeps
the row again to write ``exp(d_j) / (1 + rest)`` (softmax) or ``d_j - log1p(rest)`` (log_softmax, exact
in the Blanchard-Higham-Higham way), with d = (x - max x) / T, divided after the shift so that x / T
never overflows; masked entries (`where` False) are -inf before anything else. The second sweep only
writes: the output cannot start before the row's sum is known, and the row, just read by the same
program, comes back mostly from L2. Rows longer than CONFIG.program_columns are split into chunks whose
states a second launch combines.

Backward (vector-Jacobian products, as softxent.softmax_grad / log_softmax_grad, divided by T):
    softmax:      dx = y * (g - sum_k y_k g_k) / T
    log_softmax:  dx = (g - exp(y) * sum_k g_k) / T, summing over unmasked k only; masked entries and
                  fully masked rows (y all -inf) get 0.
One sweep for the row sum, one to write; split rows add their chunk sums in a second launch.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from softxent._triton.config import check_dtype, plan_rows
from softxent._triton.rowmath import block_state, combine, log1p, shifted

# --- kernels --------------------------------------------------------------------------------------------


@triton.jit
def _load_scores(x_row, where_row, where_col_stride, cols, valid, HAS_WHERE: tl.constexpr):
    """x in float32, -inf where masked or outside the row (1 / T multiplies x - max x, later)."""
    x = tl.load(x_row + cols, mask=valid, other=float("-inf")).to(tl.float32)
    keep = valid
    if HAS_WHERE:
        keep = keep & (tl.load(where_row + cols * where_col_stride, mask=valid, other=0) != 0)
    return tl.where(keep, x, float("-inf"))


@triton.jit
def _chunk_max_sum(x_row, where_row, where_col_stride, lo, hi, inv_temperature, BLOCK: tl.constexpr,
                   HAS_WHERE: tl.constexpr):
    """1. Online (m, rest) of columns [lo, hi)."""
    m = tl.full([], float("-inf"), tl.float32)
    rest = tl.full([], -1.0, tl.float32)
    zero = tl.full([], 0.0, tl.float32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < hi
        z = _load_scores(x_row, where_row, where_col_stride, cols, valid, HAS_WHERE)
        bm, br, _, _ = block_state(z, valid, z, inv_temperature, False)
        m, rest, _, _ = combine(m, rest, zero, zero, bm, br, zero, zero, inv_temperature)
    return m, rest


@triton.jit
def _chunk_write(x_row, y_row, where_row, where_col_stride, lo, hi, m, rest, inv_temperature,
                 BLOCK: tl.constexpr, LOG: tl.constexpr, HAS_WHERE: tl.constexpr):
    """2. Write the probabilities (or log-probabilities) of columns [lo, hi)."""
    masked = m == float("-inf")
    log_sum = log1p(rest)
    inv_total = 1.0 / (1.0 + rest)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < hi
        d = shifted(_load_scores(x_row, where_row, where_col_stride, cols, valid, HAS_WHERE), m, inv_temperature)
        if LOG:
            y = tl.where(masked, float("-inf"), d - log_sum)
        else:
            y = tl.where(masked, 0.0, tl.exp(d) * inv_total)
        tl.store(y_row + cols, y.to(y_row.dtype.element_ty), mask=valid)


@triton.jit
def _softmax_fused_kernel(x_ptr, x_stride, y_ptr, y_stride, where_ptr, where_row_stride, where_col_stride,
                          num_classes, inv_temperature, BLOCK: tl.constexpr, LOG: tl.constexpr,
                          HAS_WHERE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    where_row = where_ptr + row * where_row_stride
    m, rest = _chunk_max_sum(x_row, where_row, where_col_stride, 0, num_classes, inv_temperature, BLOCK,
                             HAS_WHERE)
    _chunk_write(x_row, y_ptr + row * y_stride, where_row, where_col_stride, 0, num_classes, m, rest,
                 inv_temperature, BLOCK, LOG, HAS_WHERE)


@triton.jit
def _softmax_partial_kernel(x_ptr, x_stride, where_ptr, where_row_stride, where_col_stride, state_ptr,
                            num_classes, chunk, splits, inv_temperature, BLOCK: tl.constexpr,
                            HAS_WHERE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    lo = split * chunk
    m, rest = _chunk_max_sum(x_ptr + row * x_stride, where_ptr + row * where_row_stride, where_col_stride, lo,
                             tl.minimum(lo + chunk, num_classes), inv_temperature, BLOCK, HAS_WHERE)
    out = state_ptr + (row * splits + split) * 2
    tl.store(out, m)
    tl.store(out + 1, rest)


@triton.jit
def _softmax_finish_kernel(x_ptr, x_stride, y_ptr, y_stride, where_ptr, where_row_stride, where_col_stride,
                           state_ptr, num_classes, chunk, splits, inv_temperature, BLOCK: tl.constexpr,
                           LOG: tl.constexpr, HAS_WHERE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    states = state_ptr + row * splits * 2
    m = tl.full([], float("-inf"), tl.float32)
    rest = tl.full([], -1.0, tl.float32)
    zero = tl.full([], 0.0, tl.float32)
    for k in range(0, splits):
        m, rest, _, _ = combine(m, rest, zero, zero, tl.load(states + 2 * k), tl.load(states + 2 * k + 1),
                                zero, zero, inv_temperature)
    lo = split * chunk
    _chunk_write(x_ptr + row * x_stride, y_ptr + row * y_stride, where_ptr + row * where_row_stride,
                 where_col_stride, lo, tl.minimum(lo + chunk, num_classes), m, rest, inv_temperature, BLOCK,
                 LOG, HAS_WHERE)


@triton.jit
def _backward_block(y_row, g_row, where_row, where_col_stride, cols, valid, LOG: tl.constexpr,
                    HAS_WHERE: tl.constexpr):
    keep = valid
    if HAS_WHERE:
        keep = keep & (tl.load(where_row + cols * where_col_stride, mask=valid, other=0) != 0)
    if LOG:
        y = tl.load(y_row + cols, mask=keep, other=float("-inf")).to(tl.float32)
    else:
        y = tl.load(y_row + cols, mask=keep, other=0.0).to(tl.float32)
    g = tl.load(g_row + cols, mask=keep, other=0.0).to(tl.float32)
    return y, g, keep


@triton.jit
def _chunk_sums(y_row, g_row, where_row, where_col_stride, lo, hi, BLOCK: tl.constexpr, LOG: tl.constexpr,
                HAS_WHERE: tl.constexpr):
    """1. sum_k y_k g_k (softmax) or sum_k g_k (log_softmax) over unmasked [lo, hi), and max y."""
    total = tl.full([], 0.0, tl.float32)
    top = tl.full([], float("-inf"), tl.float32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < hi
        y, g, keep = _backward_block(y_row, g_row, where_row, where_col_stride, cols, valid, LOG, HAS_WHERE)
        if LOG:
            total += tl.sum(g, 0)
            top = tl.maximum(top, tl.max(y, 0))
        else:
            total += tl.sum(tl.where(keep, y * g, 0.0), 0)
    return total, top


@triton.jit
def _chunk_backward_write(y_row, g_row, dx_row, where_row, where_col_stride, lo, hi, total, top,
                          inv_temperature, BLOCK: tl.constexpr, LOG: tl.constexpr, HAS_WHERE: tl.constexpr):
    """2. Write dx over [lo, hi) (dx may be g itself: each block is read before it is written)."""
    live = top != float("-inf")
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < hi
        y, g, keep = _backward_block(y_row, g_row, where_row, where_col_stride, cols, valid, LOG, HAS_WHERE)
        if LOG:
            # nested where, not keep & live: the interpreter mis-broadcasts a scalar int1 in `&`
            dx = tl.where(live, tl.where(keep, (g - tl.exp(y) * total) * inv_temperature, 0.0), 0.0)
        else:
            dx = tl.where(keep, y * (g - total) * inv_temperature, 0.0)
        tl.store(dx_row + cols, dx.to(dx_row.dtype.element_ty), mask=valid)


@triton.jit
def _backward_fused_kernel(y_ptr, y_stride, g_ptr, g_stride, dx_ptr, dx_stride, where_ptr, where_row_stride,
                           where_col_stride, num_classes, inv_temperature, BLOCK: tl.constexpr, LOG: tl.constexpr,
                           HAS_WHERE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    y_row = y_ptr + row * y_stride
    g_row = g_ptr + row * g_stride
    where_row = where_ptr + row * where_row_stride
    total, top = _chunk_sums(y_row, g_row, where_row, where_col_stride, 0, num_classes, BLOCK, LOG, HAS_WHERE)
    _chunk_backward_write(y_row, g_row, dx_ptr + row * dx_stride, where_row, where_col_stride, 0, num_classes,
                          total, top, inv_temperature, BLOCK, LOG, HAS_WHERE)


@triton.jit
def _backward_partial_kernel(y_ptr, y_stride, g_ptr, g_stride, where_ptr, where_row_stride, where_col_stride,
                             state_ptr, num_classes, chunk, splits, BLOCK: tl.constexpr, LOG: tl.constexpr,
                             HAS_WHERE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    lo = split * chunk
    total, top = _chunk_sums(y_ptr + row * y_stride, g_ptr + row * g_stride, where_ptr + row * where_row_stride,
                             where_col_stride, lo, tl.minimum(lo + chunk, num_classes), BLOCK, LOG, HAS_WHERE)
    out = state_ptr + (row * splits + split) * 2
    tl.store(out, total)
    tl.store(out + 1, top)


@triton.jit
def _backward_finish_kernel(y_ptr, y_stride, g_ptr, g_stride, dx_ptr, dx_stride, where_ptr, where_row_stride,
                            where_col_stride, state_ptr, num_classes, chunk, splits, inv_temperature,
                            BLOCK: tl.constexpr, LOG: tl.constexpr, HAS_WHERE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    states = state_ptr + row * splits * 2
    total = tl.full([], 0.0, tl.float32)
    top = tl.full([], float("-inf"), tl.float32)
    for k in range(0, splits):
        total += tl.load(states + 2 * k)
        top = tl.maximum(top, tl.load(states + 2 * k + 1))
    lo = split * chunk
    _chunk_backward_write(y_ptr + row * y_stride, g_ptr + row * g_stride, dx_ptr + row * dx_stride,
                          where_ptr + row * where_row_stride, where_col_stride, lo,
                          tl.minimum(lo + chunk, num_classes), total, top, inv_temperature, BLOCK, LOG, HAS_WHERE)


# --- allocating forward and backward -------------------------------------------------------------------------


def _where_args(where: Optional[torch.Tensor], shape, dummy: torch.Tensor):
    """A boolean mask broadcast to `shape` (no copy: stride 0 on broadcast axes) as uint8, and its strides."""
    if where is None:
        return dummy, 0, 0
    mask = where.expand(shape).view(torch.uint8)
    return mask, mask.stride(0), mask.stride(1)


def _unit_columns(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def softmax_forward(x: torch.Tensor, temperature: float, where: Optional[torch.Tensor], log: bool) -> torch.Tensor:
    """softmax (or log_softmax, `log`) of every row of a 2-D x, in x's dtype."""
    num_rows, num_classes = x.shape
    y = torch.empty((num_rows, num_classes), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    x = _unit_columns(x)
    mask, mask_rs, mask_cs = _where_args(where, x.shape, x)
    plan = plan_rows(num_rows, num_classes, x.device)
    flags = dict(BLOCK=plan.block, HAS_WHERE=where is not None)
    if plan.splits == 1:
        _softmax_fused_kernel[(num_rows,)](x, x.stride(0), y, y.stride(0), mask, mask_rs, mask_cs, num_classes,
                                           1.0 / temperature, LOG=log, num_warps=plan.num_warps, **flags)
    else:
        states = torch.empty((num_rows, plan.splits, 2), dtype=torch.float32, device=x.device)
        _softmax_partial_kernel[(num_rows, plan.splits)](x, x.stride(0), mask, mask_rs, mask_cs, states, num_classes,
                                                         plan.chunk, plan.splits, 1.0 / temperature,
                                                         num_warps=plan.num_warps, **flags)
        _softmax_finish_kernel[(num_rows, plan.splits)](x, x.stride(0), y, y.stride(0), mask, mask_rs, mask_cs,
                                                        states, num_classes, plan.chunk, plan.splits,
                                                        1.0 / temperature, LOG=log, num_warps=plan.num_warps,
                                                        **flags)
    return y


def softmax_backward(y: torch.Tensor, grad: torch.Tensor, temperature: float, where: Optional[torch.Tensor],
                     log: bool, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dL/dx from the forward's output y and dL/dy; into `out` if given (it may be `grad`)."""
    num_rows, num_classes = y.shape
    dx = out if out is not None else torch.empty((num_rows, num_classes), dtype=y.dtype, device=y.device)
    if dx.numel() == 0:
        return dx
    y, grad = _unit_columns(y), _unit_columns(grad)
    target = dx if dx.stride(-1) == 1 else torch.empty_like(dx, memory_format=torch.contiguous_format)
    if target is not dx and out is not None and out.data_ptr() == grad.data_ptr():
        grad = grad.clone()  # out aliases grad with another layout: read a copy
    mask, mask_rs, mask_cs = _where_args(where, y.shape, y)
    plan = plan_rows(num_rows, num_classes, y.device)
    flags = dict(BLOCK=plan.block, LOG=log, HAS_WHERE=where is not None)
    if plan.splits == 1:
        _backward_fused_kernel[(num_rows,)](y, y.stride(0), grad, grad.stride(0), target, target.stride(0), mask,
                                            mask_rs, mask_cs, num_classes, 1.0 / temperature,
                                            num_warps=plan.num_warps, **flags)
    else:
        states = torch.empty((num_rows, plan.splits, 2), dtype=torch.float32, device=y.device)
        _backward_partial_kernel[(num_rows, plan.splits)](y, y.stride(0), grad, grad.stride(0), mask, mask_rs,
                                                          mask_cs, states, num_classes, plan.chunk, plan.splits,
                                                          num_warps=plan.num_warps, **flags)
        _backward_finish_kernel[(num_rows, plan.splits)](y, y.stride(0), grad, grad.stride(0), target,
                                                         target.stride(0), mask, mask_rs, mask_cs, states,
                                                         num_classes, plan.chunk, plan.splits, 1.0 / temperature,
                                                         num_warps=plan.num_warps, **flags)
    if target is not dx:
        dx.copy_(target)
    return dx


# --- custom ops -------------------------------------------------------------------------------------------------


@torch.library.custom_op("softxent_triton::softmax", mutates_args=())
def _softmax_op(x: torch.Tensor, temperature: float, where: Optional[torch.Tensor], log: bool) -> torch.Tensor:
    return softmax_forward(x, temperature, where, log)


@_softmax_op.register_fake
def _(x, temperature, where, log):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("softxent_triton::softmax_backward", mutates_args=())
def _softmax_backward_op(y: torch.Tensor, grad: torch.Tensor, temperature: float, where: Optional[torch.Tensor],
                         log: bool) -> torch.Tensor:
    return softmax_backward(y, grad, temperature, where, log)


@_softmax_backward_op.register_fake
def _(y, grad, temperature, where, log):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _rows_vmap(op, num_tensors: int):
    """vmap rule of a row op (torch.func over the Triton path): the batch dimension joins the rows.

    The op's arguments are `num_tensors` (N, C) tensors, a temperature, `where` (or None), `log`.
    """

    def rule(info, in_dims, *args):
        size = info.batch_size

        def batched(a, d):
            return a.movedim(d, 0) if d is not None else a.expand(size, *a.shape)

        tensors = [batched(a, d) for a, d in zip(args[:num_tensors], in_dims[:num_tensors])]
        shape = tensors[0].shape  # (batch, N, C)
        rest = list(args[num_tensors:])
        where = rest[1]
        if where is not None:  # (batch, *where's shape), that shape broadcastable to (N, C)
            w = batched(where, in_dims[num_tensors + 1])
            w = w.reshape(size, *([1] * (2 - where.dim())), *where.shape)
            rest[1] = w.expand(shape).reshape(-1, shape[-1])
        out = op(*(t.reshape(-1, shape[-1]) for t in tensors), *rest)
        return out.reshape(shape), 0

    return rule


torch.library.register_vmap("softxent_triton::softmax", _rows_vmap(torch.ops.softxent_triton.softmax, 1))
torch.library.register_vmap("softxent_triton::softmax_backward", _rows_vmap(torch.ops.softxent_triton.softmax_backward, 2))


# --- the seam ------------------------------------------------------------------------------------------------------


def softmax_rows(x: torch.Tensor, *, temperature: float = 1.0, where: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Row softmax of a (N, C) tensor: ``y_ij = exp(x_ij / T) / sum_k exp(x_ik / T)``, in x's dtype.

    Entries where `where` (a boolean tensor broadcastable to x) is False get 0; a fully masked row (all
    -inf, or where all False) is all 0; +inf entries share the mass equally; NaN makes its row NaN.
    Accumulates in float32. One read of x (its second sweep mostly from L2) and one write of y.

    Example:
        >>> import torch
        >>> from softxent.torch.triton import softmax_rows          # doctest: +SKIP
        >>> softmax_rows(torch.tensor([[1.0, 2.0, 3.0]], device="cuda")).cpu()   # doctest: +SKIP
        tensor([[0.0900, 0.2447, 0.6652]])

    References: Milakov & Gimelshein 2018, "Online normalizer calculation for softmax".
    """
    _check_input(x, where)
    return torch.ops.softxent_triton.softmax(x, float(temperature), where, False)


def log_softmax_rows(x: torch.Tensor, *, temperature: float = 1.0,
                     where: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Row log-softmax of a (N, C) tensor: ``x_ij / T - logsumexp_k(x_ik / T)``, computed as
    ``(z_j - m) - log1p(sum_{k != argmax} exp(z_k - m))`` so nothing cancels (Blanchard, Higham & Higham
    2021). Masked entries and fully masked rows give -inf.

    Example:
        >>> import torch
        >>> from softxent.torch.triton import log_softmax_rows      # doctest: +SKIP
        >>> log_softmax_rows(torch.tensor([[1.0, 2.0, 3.0]], device="cuda")).cpu()   # doctest: +SKIP
        tensor([[-2.4076, -1.4076, -0.4076]])
    """
    _check_input(x, where)
    return torch.ops.softxent_triton.softmax(x, float(temperature), where, True)


def softmax_backward_rows(probs: torch.Tensor, grad: torch.Tensor, *, temperature: float = 1.0,
                          where: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Vector-Jacobian product of `softmax_rows`: ``dx = p * (g - sum_k p_k g_k) / T``, from p and g = dL/dp.

    Example:
        >>> import torch
        >>> from softxent.torch.triton import softmax_backward_rows  # doctest: +SKIP
        >>> p = torch.tensor([[0.0900, 0.2447, 0.6652]], device="cuda")           # doctest: +SKIP
        >>> softmax_backward_rows(p, torch.tensor([[0.0, 0.0, 1.0]], device="cuda")).cpu()   # doctest: +SKIP
        tensor([[-0.0599, -0.1628,  0.2227]])
    """
    _check_input(probs, where, grad)
    return torch.ops.softxent_triton.softmax_backward(probs, grad, float(temperature), where, False)


def log_softmax_backward_rows(log_probs: torch.Tensor, grad: torch.Tensor, *, temperature: float = 1.0,
                              where: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Vector-Jacobian product of `log_softmax_rows`: ``dx = (g - exp(log_p) * sum_k g_k) / T``.

    Sums run over unmasked entries only; masked entries and fully masked rows get 0.

    Example:
        >>> import torch
        >>> from softxent.torch.triton import log_softmax_backward_rows   # doctest: +SKIP
        >>> lp = torch.tensor([[-2.4076, -1.4076, -0.4076]], device="cuda")   # doctest: +SKIP
        >>> log_softmax_backward_rows(lp, torch.tensor([[0.0, 0.0, -1.0]], device="cuda")).cpu()   # doctest: +SKIP
        tensor([[ 0.0900,  0.2447, -0.3348]])
    """
    _check_input(log_probs, where, grad)
    return torch.ops.softxent_triton.softmax_backward(log_probs, grad, float(temperature), where, True)


def _check_input(x, where, grad=None) -> None:
    """Shapes and dtypes at the seam (values are the public layer's business)."""
    if x.dim() != 2:
        raise ValueError(f"the Triton softmax kernels take (N, C) rows; got shape {tuple(x.shape)}")
    check_dtype(x, "input")
    if grad is not None and (grad.shape != x.shape or grad.device != x.device):
        raise ValueError(f"grad must match the forward output, {tuple(x.shape)} on {x.device}; "
                         f"got {tuple(grad.shape)} on {grad.device}")
    if where is not None:
        if where.dtype != torch.bool:
            raise TypeError(f"where must be a boolean tensor; got {where.dtype}")
        try:
            torch.broadcast_shapes(where.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"where of shape {tuple(where.shape)} does not broadcast to {tuple(x.shape)}") from None
        if where.device != x.device:
            raise ValueError(f"where must be on {x.device} like the input; got {where.device}")
