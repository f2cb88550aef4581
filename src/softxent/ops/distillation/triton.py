"""Distillation rows on the GPU: the contract of `torch_cpu.distill_rows`, one program per row.

Three sweeps of the row (the second and third mostly from L2): 1. the online states (m, rest) of the
student's and the teacher's scores (`softxent._triton.rowmath`, so L = log1p(rest) is exact); 2. the
divergence from log q = d^u - L^u and log p = d^v - L^v (and, for "jsd", log m by logaddexp), with
0 log 0 = 0; 3. the student's gradient (the package docstring's), which for "reverse_kl" and "jsd"
needs the row's sums of sweep 2 first. float32 accumulation for 16-bit and float32 logits.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from softxent._triton.config import check_dtype, plan_rows
from softxent._triton.rowmath import log1p, row_state, shifted

_CODES = {"kl": 0, "reverse_kl": 1, "jsd": 2}


@triton.jit
def _state(row_ptr, num_classes, post, BLOCK: tl.constexpr):
    """The row's max and its exact L = log1p(rest) (distillation's logits are never soft-capped)."""
    m, rest = row_state(row_ptr, num_classes, 1.0, 1.0, post, BLOCK, False)
    return m, log1p(rest)


@triton.jit
def _log_probs(s_row, t_row, start, num_classes, m_s, l_s, m_t, l_t, post, BLOCK: tl.constexpr):
    """Columns [start, start + BLOCK): their validity, log q (student), log p (teacher), q and p."""
    cols = start + tl.arange(0, BLOCK)
    valid = cols < num_classes
    s = tl.load(s_row + cols, mask=valid, other=float("-inf")).to(tl.float32)
    t = tl.load(t_row + cols, mask=valid, other=float("-inf")).to(tl.float32)
    lq = shifted(s, m_s, post) - l_s
    lp = shifted(t, m_t, post) - l_t
    return cols, valid, lq, lp, tl.exp(lq), tl.exp(lp)


@triton.jit
def _log_mix(lp, lq, log_beta, log_other):
    """log(beta p + (1 - beta) q) = logaddexp(log beta + log p, log(1 - beta) + log q), -inf kept."""
    a = lp + log_beta
    b = lq + log_other
    top = tl.maximum(a, b)
    low = tl.minimum(a, b)
    return tl.where(top == float("-inf"), float("-inf"), top + log1p(tl.exp(low - top)))


@triton.jit
def _distill_kernel(s_ptr, s_stride, t_ptr, t_stride, g_ptr, g_stride, kept_ptr, scale_ptr, loss_ptr, num_classes,
                    post, beta, log_beta, log_other, t2, DIVERGENCE: tl.constexpr, BLOCK: tl.constexpr,
                    HAS_GRAD: tl.constexpr, PER_ROW: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * s_stride
    t_row = t_ptr + row * t_stride
    # 1. both rows' max and exact L
    m_s, l_s = _state(s_row, num_classes, post, BLOCK)
    m_t, l_t = _state(t_row, num_classes, post, BLOCK)
    live = (tl.load(kept_ptr + row) != 0) & (m_s != float("-inf")) & (m_t != float("-inf"))
    # 2. the divergence's sums
    acc = tl.zeros([BLOCK], tl.float32)
    acc2 = tl.zeros([BLOCK], tl.float32)
    for start in range(0, num_classes, BLOCK):
        _, _, lq, lp, q, p = _log_probs(s_row, t_row, start, num_classes, m_s, l_s, m_t, l_t, post, BLOCK)
        if DIVERGENCE == 0:
            acc += tl.where(p > 0.0, p * (lp - lq), 0.0)
        elif DIVERGENCE == 1:
            acc += tl.where(q > 0.0, q * (lq - lp), 0.0)
        else:
            lm = _log_mix(lp, lq, log_beta, log_other)
            acc += tl.where(p > 0.0, p * (lp - lm), 0.0)
            acc2 += tl.where(q > 0.0, q * ((1.0 - beta) * (lq - lm)), 0.0)
    first = tl.sum(acc, 0)
    second = tl.sum(acc2, 0)
    if DIVERGENCE == 2:
        to_q = tl.where(beta < 1.0, second / tl.where(beta < 1.0, 1.0 - beta, 1.0), 0.0)
        loss = beta * first + (1.0 - beta) * to_q
    else:
        loss = first
    tl.store(loss_ptr + row, tl.where(live, loss * t2, 0.0))
    if HAS_GRAD:
        # 3. d(T^2 D)/d student = T dD/du, times the row's scale
        if PER_ROW:
            scale = tl.load(scale_ptr + row).to(tl.float32)
        else:
            scale = tl.load(scale_ptr).to(tl.float32)
        factor = tl.where(live, scale * tl.sqrt(t2), 0.0)
        g_row = g_ptr + row * g_stride
        for start in range(0, num_classes, BLOCK):
            cols, valid, lq, lp, q, p = _log_probs(s_row, t_row, start, num_classes, m_s, l_s, m_t, l_t, post,
                                                    BLOCK)
            if DIVERGENCE == 0:
                g = q - p
            elif DIVERGENCE == 1:
                g = q * (tl.where(q > 0.0, lq - lp, 0.0) - first)
            else:
                lm = _log_mix(lp, lq, log_beta, log_other)
                g = q * (tl.where(q > 0.0, (1.0 - beta) * (lq - lm), 0.0) - second)
            g = tl.where(live, g * factor, 0.0)
            tl.store(g_row + cols, g.to(g_row.dtype.element_ty), mask=valid)


def distill_rows(student: torch.Tensor, teacher: torch.Tensor, kept: torch.Tensor, divergence: str, beta: float,
                 temperature: float, *, row_scale: torch.Tensor | None = None,
                 grad_out: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row losses (float32); grad_out (may be `student`) gets d(sum row_scale * losses)/d(student)."""
    check_dtype(student, "student_logits")
    check_dtype(teacher, "teacher_logits")
    num_rows, num_classes = student.shape
    losses = torch.zeros(num_rows, dtype=torch.float32, device=student.device)
    if num_rows == 0 or num_classes == 0:
        if grad_out is not None:
            grad_out.zero_()
        return losses
    s = student if student.stride(1) == 1 else student.contiguous()
    t = teacher if teacher.stride(1) == 1 else teacher.contiguous()
    grad = None
    if grad_out is not None:
        grad = grad_out if grad_out.stride(1) == 1 else torch.empty_like(grad_out, memory_format=torch.contiguous_format)
    scale = torch.ones((), dtype=torch.float32, device=s.device) if row_scale is None else \
        row_scale.to(torch.float32).contiguous()
    per_row = scale.dim() > 0
    plan = plan_rows(num_rows, num_classes, s.device)
    log_beta = math.log(beta) if beta > 0 else -math.inf
    log_other = math.log1p(-beta) if beta < 1 else -math.inf
    _distill_kernel[(num_rows,)](
        s, s.stride(0), t, t.stride(0), grad if grad is not None else s, grad.stride(0) if grad is not None else 0,
        kept.to(torch.int8).contiguous(), scale, losses, num_classes, 1.0 / temperature, float(beta), log_beta,
        log_other, float(temperature * temperature), DIVERGENCE=_CODES[divergence], BLOCK=plan.block,
        HAS_GRAD=grad is not None, PER_ROW=per_row, num_warps=plan.num_warps)
    if grad is not None and grad is not grad_out:
        grad_out.copy_(grad)
    return losses
