"""Token log-probabilities and entropy on the GPU: the row kernels behind softxent.torch on CUDA tensors.

The contract of `torch_cpu.py` (the math is the package docstring's), one program per row:

- forward: sweep 1 keeps the online state (m, rest) of `softxent._triton.rowmath` (the max of the
  scores and the sum of exp(d) without the max's own 1), so L = log1p(rest) is exact; sweep 2 reads
  the row again (mostly from L2, right after sweep 1) for E = sum_j p_j (-d_j). Writes log p_t, H and
  the row's (m, L, E).
- backward: one sweep: p_j = exp(d_j - L) from the saved (m, L), then
  ``g ([j = t] - p_j) + h p_j ((-d_j) - E)`` times the slope of softcap / temperature, the target's
  ``g (1 - p_t)`` taken as ``-g expm1(log p_t)`` (rule 11); the gradient may overwrite the logits.

Rows never split across programs here (vocabularies up to CONFIG.program_columns per row, 256k); a
longer row runs the same kernels in one program. Accumulation in float32 for 16-bit and float32 logits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from softxent._options import LossOptions
from softxent._triton.config import check_dtype, plan_rows
from softxent._triton.rowmath import log1p, post_scale, row_state, shifted, transform, transform_slope


@triton.jit
def _expm1(x):
    """exp(x) - 1, exact for tiny x (Kahan: (u - 1) * x / log(u) with u = fl(exp(x)))."""
    u = tl.exp(x)
    um1 = u - 1.0
    log_u = tl.where(u == 1.0, 1.0, tl.log(u))
    return tl.where(u == 1.0, x, tl.where(um1 == -1.0, -1.0, um1 * (x / log_u)))


@triton.jit
def _token_forward_kernel(x_ptr, x_stride, label_ptr, lp_ptr, h_ptr, stats_ptr, num_classes, ignore_index,
                          softcap, inv_temperature, BLOCK: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                          ENTROPY: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: N * V passes 2**31 at LLM sizes
    x_row = x_ptr + row * x_stride
    label = tl.load(label_ptr + row)
    kept = label != ignore_index
    safe = tl.where(kept & (label >= 0) & (label < num_classes), label, 0)
    post = post_scale(inv_temperature, HAS_SOFTCAP)
    # 1. the online state (m, rest) of the row
    m, rest = row_state(x_row, num_classes, softcap, inv_temperature, post, BLOCK, HAS_SOFTCAP)
    log_sum = log1p(rest)
    z_t = transform(tl.load(x_row + safe).to(tl.float32), softcap, inv_temperature, HAS_SOFTCAP)
    neg_d_t = -shifted(z_t, m, post)
    live = kept & (m != float("-inf"))  # a fully masked row carries no information (rule 2)
    # log p_t = -((-d_t) + L): two terms >= 0
    tl.store(lp_ptr + row, tl.where(live, -(neg_d_t + log_sum), 0.0))
    spread = 0.0
    if ENTROPY:
        # 2. E = sum_j e_j (-d_j) / (1 + rest), every term >= 0 (0 where e_j = 0: d_j = -inf)
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, num_classes, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            valid = cols < num_classes
            x = tl.load(x_row + cols, mask=valid, other=0.0).to(tl.float32)
            z = tl.where(valid, transform(x, softcap, inv_temperature, HAS_SOFTCAP), float("-inf"))
            d = shifted(z, m, post)
            e = tl.exp(d)
            acc += tl.where(e > 0.0, e * (-d), 0.0)
        spread = tl.sum(acc, 0) / (1.0 + rest)
        tl.store(h_ptr + row, tl.where(live, log_sum + spread, 0.0))
    else:
        tl.store(h_ptr + row, 0.0)
    tl.store(stats_ptr + row * 3, m)
    tl.store(stats_ptr + row * 3 + 1, tl.where(m != float("-inf"), log_sum, float("-inf")))
    tl.store(stats_ptr + row * 3 + 2, spread)


@triton.jit
def _token_backward_kernel(x_ptr, x_stride, g_out_ptr, g_stride, label_ptr, lp_ptr, stats_ptr, g_ptr, h_ptr,
                           num_classes, ignore_index, softcap, inv_temperature, BLOCK: tl.constexpr,
                           HAS_SOFTCAP: tl.constexpr, HAS_TEMPERATURE: tl.constexpr, ENTROPY: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    out_row = g_out_ptr + row * g_stride
    label = tl.load(label_ptr + row)
    kept = label != ignore_index
    m = tl.load(stats_ptr + row * 3)
    log_sum = tl.load(stats_ptr + row * 3 + 1)
    spread = tl.load(stats_ptr + row * 3 + 2)
    live = kept & (log_sum != float("-inf"))
    g = tl.where(live, tl.load(g_ptr + row).to(tl.float32), 0.0)
    if ENTROPY:
        h = tl.where(live, tl.load(h_ptr + row).to(tl.float32), 0.0)
    else:
        h = 0.0
    lp = tl.load(lp_ptr + row)
    target_part = -g * _expm1(lp)  # g (1 - p_t), never 1 - p_t by cancellation
    post = post_scale(inv_temperature, HAS_SOFTCAP)
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < num_classes
        x = tl.load(x_row + cols, mask=valid, other=0.0).to(tl.float32)
        z = transform(x, softcap, inv_temperature, HAS_SOFTCAP)
        d = shifted(z, m, post)
        p = tl.exp(d - log_sum)
        centred = tl.where(p > 0.0, p * ((-d) - spread), 0.0)
        grad = h * centred - g * p
        grad = tl.where(cols == label, target_part + h * centred, grad)
        grad = tl.where(live, grad, 0.0)
        if HAS_SOFTCAP or HAS_TEMPERATURE:
            grad = grad * transform_slope(x, softcap, inv_temperature, HAS_SOFTCAP)
        tl.store(out_row + cols, grad.to(out_row.dtype.element_ty), mask=valid)


def _prepared(logits: torch.Tensor, labels: torch.Tensor):
    check_dtype(logits, "logits")
    if logits.dim() != 2:
        raise ValueError(f"logits must be (n, V); got shape {tuple(logits.shape)}")
    x = logits if logits.stride(1) == 1 else logits.contiguous()
    return x, labels.reshape(-1).to(torch.int64).contiguous()


def token_forward_rows(logits: torch.Tensor, labels: torch.Tensor, options: LossOptions, *, entropy: bool):
    """(lp, h, stats), each float32: log p_t, the entropy (zeros without `entropy`), and (m, L, E) per row."""
    x, labels = _prepared(logits, labels)
    num_rows, num_classes = x.shape
    device = x.device
    lp = torch.zeros(num_rows, dtype=torch.float32, device=device)
    h = torch.zeros_like(lp)
    stats = torch.zeros(num_rows, 3, dtype=torch.float32, device=device)
    if num_rows == 0 or num_classes == 0:
        return lp, h, stats
    plan = plan_rows(num_rows, num_classes, device)
    _token_forward_kernel[(num_rows,)](
        x, x.stride(0), labels, lp, h, stats, num_classes, options.ignore_index,
        1.0 if options.softcap is None else float(options.softcap), 1.0 / options.temperature,
        BLOCK=plan.block, HAS_SOFTCAP=options.softcap is not None, ENTROPY=bool(entropy), num_warps=plan.num_warps)
    return lp, h, stats


def token_backward_rows(logits: torch.Tensor, labels: torch.Tensor, options: LossOptions, lp: torch.Tensor,
                        stats: torch.Tensor, g: torch.Tensor, h_grad: torch.Tensor | None, out: torch.Tensor) -> None:
    """out = d(sum g lp + sum h_grad h)/d(logits); out may be `logits` (each block is read, then written)."""
    x, labels = _prepared(logits, labels)
    num_rows, num_classes = x.shape
    if num_rows == 0 or num_classes == 0:
        out.zero_()
        return
    in_place = out.data_ptr() == logits.data_ptr() and x is logits
    target = out if out.stride(1) == 1 else torch.empty_like(out, memory_format=torch.contiguous_format)
    if in_place:
        target = x
    plan = plan_rows(num_rows, num_classes, x.device)
    g = g.to(torch.float32).contiguous()
    h_arg = g if h_grad is None else h_grad.to(torch.float32).contiguous()
    _token_backward_kernel[(num_rows,)](
        x, x.stride(0), target, target.stride(0), labels, lp.contiguous(), stats.contiguous(), g, h_arg,
        num_classes, options.ignore_index, 1.0 if options.softcap is None else float(options.softcap),
        1.0 / options.temperature, BLOCK=plan.block, HAS_SOFTCAP=options.softcap is not None,
        HAS_TEMPERATURE=options.temperature != 1.0, ENTROPY=h_grad is not None, num_warps=plan.num_warps)
    if target is not out:
        out.copy_(target)
