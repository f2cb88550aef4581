"""Cross-entropy rows on the GPU: loss, log-sum-exp and gradient of a (N, C) block of logits in one launch.

Layering: Triton kernels (the row state of _rowmath, the loss, the gradient), then the allocating
`cross_entropy_forward`, then the torch.library custom ops that make it opaque to torch.compile, then
`cross_entropy_rows`, the seam the PyTorch layer dispatches to for CUDA tensors.

The math is the NumPy layer's (softxent/core/cross_entropy.py, its `_block`): with z the scores
(softcap * tanh(x / softcap) / T, a -inf logit staying -inf; without a cap x / T, divided after the
shift so it cannot overflow; see _rowmath), a_j >= 0 the target's coefficients (class index t:
(1 - e) w_t at t plus (e / C) w_j everywhere; probabilities p: ((1 - e) p_j + e / C) w_j),
A = sum_j a_j, L = log1p(rest) and d = z - max z,

    loss = sum_j a_j (L - d_j) + z_loss * lse^2             (every term >= 0: nothing cancels)
    dloss/dz_j = s * ((A + 2 z_loss lse) p_j - a_j),        p_j = exp(d_j) / (1 + rest)

with s = grad_scale on rows that count and 0 on ignored and fully masked rows, then the chain rule
through softcap and temperature.

How a row is read: one program per row sweeps it once, keeping the online state (m, rest, s, b) of
_rowmath, and writes the loss and lse. The gradient needs the final max and sum before its first entry
can be written, so a program asked for the gradient sweeps its row a second time, only to write it; the
row was read moments earlier by the same program, so that second read comes mostly from L2, and HBM
traffic stays close to one read of the logits and one write of the gradient. Rows longer than
CONFIG.program_columns (vocabularies past 256k), or few long rows on a large GPU, are split: a first
launch writes each chunk's state, a second combines the states of a row by log-sum-exp, writes the loss
and, chunk by chunk, the gradient. The gradient may be written over the logits (the in-place opt-in):
each block is read before it is written, and the split path reads the target logit in the first launch.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from softxent._options import LossOptions
from softxent.ops.cross_entropy import spec
from softxent._triton import labels as _labels
from softxent._triton.config import CONFIG, check_dtype, plan_rows
from softxent._triton.rowmath import block_state, combine, log1p, post_scale, shifted, transform, transform_slope

# --- kernels --------------------------------------------------------------------------------------------


@triton.jit
def _flag_key(row, label):
    """row * 2**32 + (label mod 2**32), in int64 arithmetic alone (see _labels)."""
    return row * 4294967296 + (label - ((label >> 32) << 32))


@triton.jit
def _label_info(target_ptr, target_stride, weight_ptr, row, num_classes, ignore_index, keep_target,
                HAS_WEIGHT: tl.constexpr, PROBS: tl.constexpr):
    """The row's class index and what it implies: safe (to gather with), kept (not ignored), bad (out of
    range), t_coef.

    The range test is the spec's (`spec.bad_labels`, which the caller runs on the whole target); it is
    repeated here only so that the kernel never reads outside the row, and a bad row is NaN, not garbage.
    """
    if PROBS:  # probability targets: no label, every row counts
        return row * 0 - 1, row * 0, row >= 0, row < 0, 0.0
    label = tl.load(target_ptr + row * target_stride).to(tl.int64)
    kept = label != ignore_index
    in_range = (label >= 0) & (label < num_classes)
    bad = kept & (in_range == 0)
    safe = tl.where(in_range, label, 0)  # never read outside the row, whatever the label
    if HAS_WEIGHT:
        w_t = tl.load(weight_ptr + safe).to(tl.float32)
    else:
        w_t = 1.0
    t_coef = tl.where(kept & in_range, keep_target * w_t, 0.0)
    return label, safe, kept, bad, t_coef


@triton.jit
def _coef(probs_row, weight_ptr, cols, valid, keep_target, uniform, PROBS: tl.constexpr,
          HAS_WEIGHT: tl.constexpr):
    """b_j of the block: ((1 - e) p_j + e / C) w_j for probabilities, w_j (or 1) for smoothed indices."""
    if PROBS:
        c = tl.load(probs_row + cols, mask=valid, other=0.0).to(tl.float32) * keep_target + uniform
    else:
        c = tl.full(cols.shape, 1.0, tl.float32)
    if HAS_WEIGHT:
        c = c * tl.load(weight_ptr + cols, mask=valid, other=0.0).to(tl.float32)
    return tl.where(valid, c, 0.0)


@triton.jit
def _chunk_state(x_row, probs_row, weight_ptr, lo, hi, keep_target, uniform, softcap, inv_temperature,
                 BLOCK: tl.constexpr, PROBS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_COEF: tl.constexpr,
                 HAS_SOFTCAP: tl.constexpr, HAS_TEMPERATURE: tl.constexpr):
    """1. The online state (m, rest, s, b) of columns [lo, hi) of a row, BLOCK columns at a time."""
    post = post_scale(inv_temperature, HAS_SOFTCAP)
    m = tl.full([], float("-inf"), tl.float32)
    rest = tl.full([], -1.0, tl.float32)  # (-inf, -1, 0, 0) is the empty state, combine's identity
    s = tl.full([], 0.0, tl.float32)
    b = tl.full([], 0.0, tl.float32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < hi
        x = tl.load(x_row + cols, mask=valid, other=0.0).to(tl.float32)  # float32 whatever the storage
        z = tl.where(valid, transform(x, softcap, inv_temperature, HAS_SOFTCAP), float("-inf"))
        if HAS_COEF:
            coef = _coef(probs_row, weight_ptr, cols, valid, keep_target, uniform, PROBS, HAS_WEIGHT)
        else:
            coef = z
        bm, br, bs, bb = block_state(z, valid, coef, post, HAS_COEF)
        m, rest, s, b = combine(m, rest, s, b, bm, br, bs, bb, post)
    return m, rest, s, b


@triton.jit
def _finish(m, rest, s, b, z_t, t_coef, kept, bad, uniform, z_loss, post, PROBS: tl.constexpr,
            SMOOTH: tl.constexpr, HAS_Z: tl.constexpr):
    """2. The row's loss and lse from its state; also L, A = sum_j a_j, the smoothing share, keep."""
    log_sum = log1p(rest)
    lse = m * post + log_sum
    if PROBS:
        loss = b * log_sum - s
        total = b
        smooth = 0.0
    else:
        loss = tl.where(t_coef > 0.0, t_coef * (log_sum - shifted(z_t, m, post)), 0.0)
        total = t_coef
        if SMOOTH:
            smooth = tl.where(kept, uniform, 0.0)
            loss += smooth * (b * log_sum - s)
            total += smooth * b
        else:
            smooth = 0.0
    if HAS_Z:
        loss += z_loss * lse * lse
    keep = kept & (m != float("-inf"))  # a fully masked row carries no information (rule 2)
    loss = tl.where(keep, loss, 0.0)
    loss = tl.where(bad, float("nan"), loss)
    return loss, lse, log_sum, total, smooth, keep


@triton.jit
def _grad_factors(m, rest, lse, log_sum, total, t_coef, keep, bad, scale_ptr, scale_value, z_loss,
                  HAS_Z: tl.constexpr, HAS_SCALE_PTR: tl.constexpr):
    """The row's s (scale on rows that count, NaN for a bad label), factor = s (A + 2 z lse) / sum e, and
    the target's entry where the target holds the max: s ((F - a_t) - a_t rest) / sum e, with F the factor's
    A + 2 z lse and rest the sum without the max's own 1, so p_t - 1 is -rest / sum e, never a cancellation
    (rule 11). F - a_t is the smoothing share and the z-loss's, 0 without either."""
    scale = scale_value
    if HAS_SCALE_PTR:
        scale = scale * tl.load(scale_ptr).to(tl.float32)  # "mean" stays on the device: no sync
    row_scale = tl.where(keep, scale, 0.0)
    row_scale = tl.where(bad, float("nan"), row_scale)
    other = total - t_coef
    if HAS_Z:
        # a row holding +inf: the z-loss slope is taken at the finite log of its +inf count (the NumPy spec)
        z_share = 2.0 * z_loss * tl.where(m == float("inf"), log_sum, lse)
        total = total + z_share
        other = other + z_share
    factor = tl.where(row_scale == 0.0, 0.0, row_scale * total / (1.0 + rest))
    target_value = tl.where(row_scale == 0.0, 0.0, row_scale * (other - t_coef * rest) / (1.0 + rest))
    return row_scale, factor, target_value


@triton.jit
def _chunk_grad(x_row, g_row, probs_row, weight_ptr, lo, hi, m, factor, row_scale, label, t_coef, target_value,
                smooth, keep_target, uniform, softcap, inv_temperature, BLOCK: tl.constexpr, PROBS: tl.constexpr,
                HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                HAS_TEMPERATURE: tl.constexpr):
    """3. Write dloss/dx over columns [lo, hi): each block is read, then written (in place is safe)."""
    post = post_scale(inv_temperature, HAS_SOFTCAP)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < hi
        x = tl.load(x_row + cols, mask=valid, other=0.0).to(tl.float32)
        z = transform(x, softcap, inv_temperature, HAS_SOFTCAP)
        d = shifted(z, m, post)
        g = factor * tl.exp(d)
        if PROBS:
            g -= row_scale * _coef(probs_row, weight_ptr, cols, valid, keep_target, uniform, PROBS, HAS_WEIGHT)
        else:
            at_target = cols == label
            g -= tl.where(at_target, row_scale * t_coef, 0.0)
            g = tl.where(at_target & (d == 0.0), target_value, g)  # the target holds the max: see _grad_factors
            if SMOOTH:
                g -= (row_scale * smooth) * _coef(probs_row, weight_ptr, cols, valid, keep_target, uniform,
                                                  PROBS, HAS_WEIGHT)
        if HAS_SOFTCAP or HAS_TEMPERATURE:
            g = g * transform_slope(x, softcap, inv_temperature, HAS_SOFTCAP)
        tl.store(g_row + cols, g.to(g_row.dtype.element_ty), mask=valid)


@triton.jit
def _ce_fused_kernel(x_ptr, x_stride, target_ptr, target_stride, weight_ptr, grad_ptr, grad_stride,
                     loss_ptr, lse_ptr, flag_ptr, scale_ptr, scale_value, num_classes, ignore_index,
                     keep_target, uniform, z_loss, softcap, inv_temperature,
                     BLOCK: tl.constexpr, PROBS: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
                     HAS_Z: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_TEMPERATURE: tl.constexpr,
                     HAS_GRAD: tl.constexpr, CHECK: tl.constexpr, HAS_SCALE_PTR: tl.constexpr):
    """One program per row: state, loss and lse, then (HAS_GRAD) the gradient."""
    row = tl.program_id(0).to(tl.int64)  # int64: N * C passes 2**31 at LLM sizes
    x_row = x_ptr + row * x_stride
    probs_row = target_ptr + row * target_stride
    label, safe, kept, bad, t_coef = _label_info(target_ptr, target_stride, weight_ptr, row, num_classes,
                                                 ignore_index, keep_target, HAS_WEIGHT, PROBS)
    z_t = 0.0
    if not PROBS:
        if CHECK:
            tl.atomic_min(flag_ptr, _flag_key(row, label), mask=bad)
        z_t = transform(tl.load(x_row + safe).to(tl.float32), softcap, inv_temperature, HAS_SOFTCAP)
    m, rest, s, b = _chunk_state(x_row, probs_row, weight_ptr, 0, num_classes, keep_target, uniform, softcap,
                                 inv_temperature, BLOCK, PROBS, HAS_WEIGHT, PROBS or SMOOTH, HAS_SOFTCAP,
                                 HAS_TEMPERATURE)
    loss, lse, log_sum, total, smooth, keep = _finish(m, rest, s, b, z_t, t_coef, kept, bad, uniform, z_loss,
                                                      post_scale(inv_temperature, HAS_SOFTCAP), PROBS, SMOOTH,
                                                      HAS_Z)
    tl.store(loss_ptr + row, loss)
    tl.store(lse_ptr + row, lse)
    if HAS_GRAD:
        row_scale, factor, target_value = _grad_factors(m, rest, lse, log_sum, total, t_coef, keep, bad,
                                                        scale_ptr, scale_value, z_loss, HAS_Z, HAS_SCALE_PTR)
        _chunk_grad(x_row, grad_ptr + row * grad_stride, probs_row, weight_ptr, 0, num_classes, m, factor,
                    row_scale, label, t_coef, target_value, smooth, keep_target, uniform, softcap, inv_temperature, BLOCK,
                    PROBS, HAS_WEIGHT, SMOOTH, HAS_SOFTCAP, HAS_TEMPERATURE)


@triton.jit
def _ce_partial_kernel(x_ptr, x_stride, target_ptr, target_stride, weight_ptr, state_ptr, z_t_ptr, flag_ptr,
                       num_classes, chunk, splits, ignore_index, keep_target, uniform, softcap, inv_temperature,
                       BLOCK: tl.constexpr, PROBS: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
                       HAS_SOFTCAP: tl.constexpr, HAS_TEMPERATURE: tl.constexpr, CHECK: tl.constexpr):
    """Split rows, launch 1: the state of chunk (row, split); split 0 also keeps the target logit."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    x_row = x_ptr + row * x_stride
    lo = split * chunk
    hi = tl.minimum(lo + chunk, num_classes)
    if not PROBS:
        # read now: the second launch may already have written the gradient over this logit
        label, safe, kept, bad, t_coef = _label_info(target_ptr, target_stride, weight_ptr, row, num_classes,
                                                     ignore_index, keep_target, HAS_WEIGHT, PROBS)
        first = split == 0
        if CHECK:
            tl.atomic_min(flag_ptr, _flag_key(row, label), mask=bad & first)
        z_t = transform(tl.load(x_row + safe).to(tl.float32), softcap, inv_temperature, HAS_SOFTCAP)
        tl.store(z_t_ptr + row, z_t, mask=first)
    m, rest, s, b = _chunk_state(x_row, target_ptr + row * target_stride, weight_ptr, lo, hi, keep_target,
                                 uniform, softcap, inv_temperature, BLOCK, PROBS, HAS_WEIGHT, PROBS or SMOOTH,
                                 HAS_SOFTCAP, HAS_TEMPERATURE)
    out = state_ptr + (row * splits + split) * 4
    tl.store(out, m)
    tl.store(out + 1, rest)
    tl.store(out + 2, s)
    tl.store(out + 3, b)


@triton.jit
def _ce_finish_kernel(x_ptr, x_stride, target_ptr, target_stride, weight_ptr, grad_ptr, grad_stride,
                      loss_ptr, lse_ptr, state_ptr, z_t_ptr, scale_ptr, scale_value, num_classes, chunk, splits,
                      ignore_index, keep_target, uniform, z_loss, softcap, inv_temperature,
                      BLOCK: tl.constexpr, PROBS: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
                      HAS_Z: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_TEMPERATURE: tl.constexpr,
                      HAS_GRAD: tl.constexpr, HAS_SCALE_PTR: tl.constexpr):
    """Split rows, launch 2: combine the row's chunk states, write loss and lse (split 0), the gradient."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    probs_row = target_ptr + row * target_stride
    label, safe, kept, bad, t_coef = _label_info(target_ptr, target_stride, weight_ptr, row, num_classes,
                                                 ignore_index, keep_target, HAS_WEIGHT, PROBS)
    z_t = 0.0
    if not PROBS:
        z_t = tl.load(z_t_ptr + row)
    states = state_ptr + row * splits * 4
    m = tl.full([], float("-inf"), tl.float32)
    rest = tl.full([], -1.0, tl.float32)
    s = tl.full([], 0.0, tl.float32)
    b = tl.full([], 0.0, tl.float32)
    post = post_scale(inv_temperature, HAS_SOFTCAP)
    for k in range(0, splits):
        m, rest, s, b = combine(m, rest, s, b, tl.load(states + 4 * k), tl.load(states + 4 * k + 1),
                                tl.load(states + 4 * k + 2), tl.load(states + 4 * k + 3), post)
    loss, lse, log_sum, total, smooth, keep = _finish(m, rest, s, b, z_t, t_coef, kept, bad, uniform, z_loss,
                                                      post_scale(inv_temperature, HAS_SOFTCAP), PROBS, SMOOTH,
                                                      HAS_Z)
    tl.store(loss_ptr + row, loss, mask=split == 0)
    tl.store(lse_ptr + row, lse, mask=split == 0)
    if HAS_GRAD:
        row_scale, factor, target_value = _grad_factors(m, rest, lse, log_sum, total, t_coef, keep, bad,
                                                        scale_ptr, scale_value, z_loss, HAS_Z, HAS_SCALE_PTR)
        lo = split * chunk
        hi = tl.minimum(lo + chunk, num_classes)
        _chunk_grad(x_ptr + row * x_stride, grad_ptr + row * grad_stride, probs_row, weight_ptr, lo, hi, m,
                    factor, row_scale, label, t_coef, target_value, smooth, keep_target, uniform, softcap, inv_temperature,
                    BLOCK, PROBS, HAS_WEIGHT, SMOOTH, HAS_SOFTCAP, HAS_TEMPERATURE)


# --- the allocating forward -------------------------------------------------------------------------------


def cross_entropy_forward(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                          grad_scale: Optional[torch.Tensor], grad_scale_value: float, options: LossOptions,
                          check_labels: bool, grad_out: Optional[torch.Tensor]):
    """Launch the kernels; returns (losses, lse, flag). grad_out (may be `logits`) receives the gradient.

    flag is a (1,) int64 tensor (see _labels) when `check_labels` and the target holds class indices,
    else an empty one.
    """
    num_rows, num_classes = logits.shape
    ignore_index, label_smoothing, z_loss = options.ignore_index, options.label_smoothing, options.z_loss
    softcap, temperature = options.softcap, options.temperature
    device = logits.device
    losses = torch.empty(num_rows, dtype=torch.float32, device=device)
    lse = torch.empty(num_rows, dtype=torch.float32, device=device)
    probs = target.is_floating_point()
    check = check_labels and not probs
    flag = _labels.new_flag(device) if check else torch.empty(0, dtype=torch.int64, device=device)
    if num_rows == 0:
        return losses, lse, flag
    if num_classes == 0:
        return _no_classes(target, probs, ignore_index, flag, losses, lse)

    # the kernels read and write rows with unit column stride; other layouts go through a copy
    x = logits if logits.stride(1) == 1 else logits.contiguous()
    if probs and target.stride(1) != 1:
        target = target.contiguous()
    in_place = grad_out is not None and _same_memory(grad_out, logits)
    if grad_out is None:
        grad = None
    elif in_place:
        grad = x
    else:
        grad = grad_out if grad_out.stride(1) == 1 else torch.empty_like(grad_out,
                                                                          memory_format=torch.contiguous_format)
    if weight is not None and weight.stride(0) != 1:
        weight = weight.contiguous()

    plan = plan_rows(num_rows, num_classes, device)
    keep_target, uniform = spec.smoothing_split(label_smoothing, num_classes)
    flags = dict(BLOCK=plan.block, PROBS=probs, HAS_WEIGHT=weight is not None,
                 SMOOTH=label_smoothing > 0.0 and not probs, HAS_SOFTCAP=softcap is not None,
                 HAS_TEMPERATURE=temperature != 1.0)
    scalars = dict(ignore_index=ignore_index, keep_target=keep_target, uniform=uniform,
                   softcap=1.0 if softcap is None else float(softcap), inv_temperature=1.0 / temperature)
    grad_flags = dict(HAS_Z=z_loss > 0.0, HAS_GRAD=grad is not None, HAS_SCALE_PTR=grad_scale is not None)
    weight_arg = weight if weight is not None else x
    grad_arg, grad_stride = (grad, grad.stride(0)) if grad is not None else (x, 0)
    scale_arg = grad_scale if grad_scale is not None else losses
    target_stride = target.stride(0)

    if plan.splits == 1:
        _ce_fused_kernel[(num_rows,)](
            x, x.stride(0), target, target_stride, weight_arg, grad_arg, grad_stride, losses, lse, flag,
            scale_arg, float(grad_scale_value), num_classes, z_loss=float(z_loss), CHECK=check,
            num_warps=plan.num_warps, **scalars, **flags, **grad_flags)
    else:
        states = torch.empty((num_rows, plan.splits, 4), dtype=torch.float32, device=device)
        z_t = torch.empty(num_rows, dtype=torch.float32, device=device)
        _ce_partial_kernel[(num_rows, plan.splits)](
            x, x.stride(0), target, target_stride, weight_arg, states, z_t, flag, num_classes, plan.chunk,
            plan.splits, CHECK=check, num_warps=plan.num_warps, **scalars, **flags)
        finish_splits = plan.splits if grad is not None else 1
        _ce_finish_kernel[(num_rows, finish_splits)](
            x, x.stride(0), target, target_stride, weight_arg, grad_arg, grad_stride, losses, lse, states, z_t,
            scale_arg, float(grad_scale_value), num_classes, plan.chunk, plan.splits, z_loss=float(z_loss),
            num_warps=plan.num_warps, **scalars, **flags, **grad_flags)

    if in_place and x is not logits:
        logits.copy_(x)
    elif grad is not None and not in_place and grad is not grad_out:
        grad_out.copy_(grad)
    return losses, lse, flag


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                      and a.dtype == b.dtype)


def _no_classes(target, probs, ignore_index, flag, losses, lse):
    """C = 0: every loss is 0 (the NumPy spec), lse is -inf, and any kept class index is out of range."""
    losses.zero_()
    lse.fill_(float("-inf"))
    if not probs:
        bad = target != ignore_index
        losses.masked_fill_(bad, float("nan"))
        if flag.numel():
            first = torch.argmax(bad.to(torch.int8)).to(torch.int64)
            key = first * (1 << 32) + target[first].to(torch.int64) % (1 << 32)
            flag.copy_(torch.where(bad.any(), key, flag[0]).reshape(1))
    return losses, lse, flag


# --- custom ops: opaque to torch.compile, with fake implementations for tracing ----------------------------


@torch.library.custom_op("softxent_triton::cross_entropy", mutates_args=("grad_out",))
def _cross_entropy_op(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                      grad_scale: Optional[torch.Tensor], grad_scale_value: float, options: list[float],
                      check_labels: bool, grad_out: Optional[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return cross_entropy_forward(logits, target, weight, grad_scale, grad_scale_value, LossOptions.decode(options),
                                 check_labels, grad_out)


@torch.library.custom_op("softxent_triton::cross_entropy_inplace", mutates_args=("logits",))
def _cross_entropy_inplace_op(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                              grad_scale: Optional[torch.Tensor], grad_scale_value: float, options: list[float],
                              check_labels: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return cross_entropy_forward(logits, target, weight, grad_scale, grad_scale_value, LossOptions.decode(options),
                                 check_labels, logits)


def _fake(logits, target, weight, grad_scale, grad_scale_value, options, check_labels, grad_out=None):
    num_rows = logits.shape[0]
    flag_size = 1 if check_labels and not target.is_floating_point() else 0
    return (logits.new_empty((num_rows,), dtype=torch.float32), logits.new_empty((num_rows,), dtype=torch.float32),
            logits.new_empty((flag_size,), dtype=torch.int64))


_cross_entropy_op.register_fake(_fake)
_cross_entropy_inplace_op.register_fake(_fake)


# --- the seam ------------------------------------------------------------------------------------------------


def cross_entropy_rows(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                       options: LossOptions, *, grad_scale: float | torch.Tensor = 1.0,
                       grad_out: Optional[torch.Tensor] = None, label_check: Optional[str] = None,
                       label_shape: Optional[tuple] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy losses and log-sum-exps of (N, C) logits, and their gradient, in one launch.

    For row i with scores z = softcap * tanh(x / softcap) / T (-inf logits stay -inf, masks) and target
    coefficients a
    (class index t: ``(1 - e) w_t`` at t plus ``(e / C) w_j`` everywhere; probabilities p:
    ``((1 - e) p_j + e / C) w_j``), ``losses[i] = sum_j a_j (lse_i - z_j) + z_loss * lse_i**2`` with
    ``lse_i = log sum_j exp(z_j)``: PyTorch's weighted, label-smoothed cross-entropy plus PaLM's z-loss,
    as the NumPy layer defines it (softxent.cross_entropy with reduction="none"). Ignored rows and
    fully masked rows (all logits -inf) get loss 0 and gradient 0. No host synchronisation: a tensor
    `grad_scale` (1 / the "mean" denominator, say) is read on the device. One pass over the logits with
    online softmax (Milakov & Gimelshein 2018) gives loss and lse; the gradient costs a second sweep of
    each row, only to write it, mostly served from L2.

    Args:
        logits: (N, C) float16, bfloat16 or float32 CUDA tensor (CPU under TRITON_INTERPRET=1), rows of
            any length and any row stride; accumulated in float32.
        target: (N,) integer class indices, or (N, C) float probabilities.
        weight: (C,) class weights, or None.
        options: ignore_index, label_smoothing, z_loss, softcap, temperature (reduction and
            options.weight are the caller's business: pass the weight explicitly).
        grad_scale: a float or a 0-d float tensor on the device; the gradient is that of
            ``grad_scale * losses.sum()``.
        grad_out: (N, C) tensor receiving the gradient, in its own dtype; may be `logits` itself (the
            gradient then overwrites the logits, zero extra memory). None: no gradient work at all.
        label_check: "lazy", "sync" or "off" (None: CONFIG.label_check); see _labels. Class indices
            outside [0, C) always give NaN loss and gradient on their row; the check turns them into the
            ValueError of rule 7 of docs/semantics.md, at once ("sync") or at a later call ("lazy").
        label_shape: shape of the caller's target before flattening, to name a bad label's position.

    Returns:
        ``(losses, lse)``, both (N,) float32.

    Example:
        >>> import torch
        >>> from softxent._options import LossOptions
        >>> from softxent.torch.triton import cross_entropy_rows   # doctest: +SKIP
        >>> logits = torch.tensor([[1.0, 2.0, 3.0]], device="cuda")  # doctest: +SKIP
        >>> grad = torch.empty_like(logits)                          # doctest: +SKIP
        >>> losses, lse = cross_entropy_rows(logits, torch.tensor([2], device="cuda"), None, LossOptions(),
        ...                                  grad_out=grad)          # doctest: +SKIP
        >>> round(losses.item(), 4), grad.cpu().round(decimals=3)    # doctest: +SKIP
        (0.4076, tensor([[ 0.0900,  0.2450, -0.3350]]))

    References:
        Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"; Blanchard, Higham &
        Higham 2021, "Accurately computing the log-sum-exp and softmax functions".
    """
    compiling = torch.compiler.is_compiling()
    mode = label_check or CONFIG.label_check
    if mode not in ("lazy", "sync", "off"):
        raise ValueError(f"label_check must be one of 'lazy', 'sync' or 'off'; got {mode!r}")
    if compiling or (logits.is_cuda and torch.cuda.is_current_stream_capturing()):
        mode = "off"  # no host work can be traced or captured; bad rows still come out NaN
    elif mode == "lazy":
        _labels.raise_arrived()
    _check_rows(logits, target, weight, grad_out)
    if isinstance(grad_scale, torch.Tensor):
        scale, scale_value = grad_scale.reshape(()), 1.0
    else:
        scale, scale_value = None, float(grad_scale)
    args = (target, weight, scale, scale_value, options.encode(), mode != "off")
    if grad_out is not None and (grad_out is logits or (not compiling and _same_memory(grad_out, logits))):
        losses, lse, flag = torch.ops.softxent_triton.cross_entropy_inplace(logits, *args)
    else:
        losses, lse, flag = torch.ops.softxent_triton.cross_entropy(logits, *args, grad_out)
    if mode != "off" and flag.numel():
        _labels.watch(flag, logits.shape[1], options.ignore_index, label_shape, mode)
    return losses, lse


def _check_rows(logits, target, weight, grad_out) -> None:
    """Shapes and dtypes at the seam (the public layer checks values; these catch wiring mistakes)."""
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a (N, C) floating tensor; got shape {tuple(logits.shape)} "
                         f"and dtype {logits.dtype}")
    check_dtype(logits, "logits")
    num_rows, num_classes = logits.shape
    _check_targets(num_rows, num_classes, logits.device, target, weight)
    if grad_out is not None:
        if tuple(grad_out.shape) != (num_rows, num_classes) or not grad_out.is_floating_point():
            raise ValueError(f"grad_out must be a floating tensor of shape {(num_rows, num_classes)}; "
                             f"got shape {tuple(grad_out.shape)} and dtype {grad_out.dtype}")
        if grad_out.device != logits.device:
            raise ValueError(f"grad_out must be on {logits.device} like logits; got {grad_out.device}")


def _check_targets(num_rows: int, num_classes: int, device, target, weight) -> None:
    if target.is_floating_point():
        if tuple(target.shape) != (num_rows, num_classes):
            raise ValueError(f"probability target must have shape {(num_rows, num_classes)}; "
                             f"got {tuple(target.shape)}")
    elif target.dtype == torch.bool or target.is_complex() or tuple(target.shape) != (num_rows,):
        raise ValueError(f"class-index target must be an integer tensor of shape ({num_rows},); got shape "
                         f"{tuple(target.shape)} and dtype {target.dtype}")
    if weight is not None and (tuple(weight.shape) != (num_classes,) or not weight.is_floating_point()):
        raise ValueError(f"weight must be a floating tensor of shape ({num_classes},); got shape "
                         f"{tuple(weight.shape)} and dtype {weight.dtype}")
    for name, tensor in (("target", target), ("weight", weight)):
        if tensor is not None and tensor.device != device:
            raise ValueError(f"{name} must be on {device} like the logits; got {tensor.device}")


def mean_scale(target: torch.Tensor, weight: Optional[torch.Tensor], ignore_index: int,
               num_classes: int) -> torch.Tensor:
    """1 / (what "mean" divides by) as a 0-d float32 tensor on target's device, 0 when nothing counts.

    The spec's rule (`softxent.ops.cross_entropy.spec.mean_denominator`), computed on the device: bad
    labels are clamped for the gather, so no device assert fires and nothing waits for the host.

    Example:
        >>> import torch
        >>> from softxent.torch.triton import mean_scale
        >>> float(mean_scale(torch.tensor([0, 2, -100]), torch.tensor([1.0, 1.0, 3.0]), -100, 3))
        0.25
    """
    import array_api_compat.torch as xp

    from softxent.ops.cross_entropy import spec

    kind = spec.PROBS if target.dtype.is_floating_point else spec.INDEX
    denominator = spec.mean_denominator(xp, kind, target, weight, ignore_index, target.shape[0], torch.float32,
                                        num_classes=num_classes, device=target.device)
    return spec.gradient_scale(xp, denominator, torch.float32, target.device)
