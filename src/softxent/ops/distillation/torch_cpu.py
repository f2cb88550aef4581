"""The distillation row kernel of the PyTorch layer (the CPU path, and the generic one on any device).

    distill_rows(student (n, V), teacher (n, V), kept (n,), divergence, beta, temperature, *,
                 row_scale, grad_out) -> losses (n,)

The math is the package docstring's, in float32 (float64 for float64 logits), a cache-sized chunk of
rows at a time, one span of rows per core. `row_scale` (a 0-d tensor, or (n,) for reduction "none")
multiplies each row's gradient; `grad_out` (may be `student` itself) receives
d(sum_i row_scale_i losses_i)/d(student).

float32 and bfloat16 logits on the CPU (student and teacher each either) run in the compiled kernel of
`cpu_rows.c` (the extension `_cpu_rows`): the same math in float64, each row read three times, the
gradient written once, no (chunk, V) buffers. Everything else, and the rows that kernel leaves (a NaN,
a +inf), goes through the torch ops here.
"""

from __future__ import annotations

import math

import torch

from softxent._torch.threads import for_row_spans
from softxent.ops.cross_entropy.torch_cpu import COMPILED_SPAN_ELEMENTS, accumulation_dtype, chunk_rows

try:
    from softxent.ops.distillation import _cpu_rows
except ImportError:  # built without a C compiler (setup.py makes the extension optional): torch ops only
    _cpu_rows = None

_INF = float("inf")
_COMPILED_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # cpu_rows.c's dtype codes
_DIVERGENCES = {"kl": 0, "reverse_kl": 1, "jsd": 2}


def _log_softmax(x: torch.Tensor, temperature: float, buf: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """buf = log softmax(x / T) = d - L (the shift first, then T), exact, and probs = softmax from the same
    exp(d) (one exp per entry, not two); returns the rows not all -inf."""
    buf.copy_(x)
    shift = buf.amax(dim=1, keepdim=True)
    live = shift != -_INF
    if not math.isfinite(float(shift.sum())):  # rare: -inf, +inf or NaN rows
        infinite = (shift == _INF).view(-1)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        buf.sub_(shift)
        if infinite.any():  # +inf entries share the mass
            buf[infinite] = torch.where(buf[infinite] == _INF, 0.0, -_INF).to(buf.dtype)
    else:
        buf.sub_(shift)
    if temperature != 1.0:
        buf.div_(temperature)
    torch.exp(buf, out=probs)
    # the sum without the max's own 1 (entries equal to 1 counted apart), so log1p keeps a tiny tail
    ones = probs == 1.0
    probs.masked_fill_(ones, 0.0)
    rest = probs.sum(dim=1, keepdim=True) + (ones.sum(dim=1, keepdim=True).to(probs.dtype) - 1.0)
    probs.masked_fill_(ones, 1.0)
    probs.mul_((rest + 1.0).reciprocal_())
    buf.sub_(torch.log1p(rest))
    return live.view(-1)


@torch.no_grad()
def distill_rows(student: torch.Tensor, teacher: torch.Tensor, kept: torch.Tensor, divergence: str, beta: float,
                 temperature: float, *, row_scale: torch.Tensor | None = None,
                 grad_out: torch.Tensor | None = None) -> torch.Tensor:
    num_rows, num_classes = student.shape
    acc = accumulation_dtype(student.dtype)
    device = student.device
    losses = torch.zeros(num_rows, dtype=acc, device=device)
    if num_rows == 0 or num_classes == 0:
        if grad_out is not None:
            grad_out.zero_()
        return losses
    if _compiled_kernel_takes(student, teacher, kept, divergence, grad_out):
        special = _run_compiled(student, teacher, kept, divergence, beta, temperature, row_scale, grad_out, losses)
        if special is not None:  # the rows the kernel left (before writing them: grad_out may be the student)
            rows = special.nonzero().view(-1)
            per_row = row_scale is not None and row_scale.dim() > 0
            part = None if grad_out is None else torch.empty(len(rows), num_classes, dtype=grad_out.dtype)
            losses[rows] = _torch_distill_rows(student[rows], teacher[rows], kept[rows], divergence, beta,
                                               temperature, row_scale[rows] if per_row else row_scale, part)
            if grad_out is not None:
                grad_out[rows] = part
        return losses
    return _torch_distill_rows(student, teacher, kept, divergence, beta, temperature, row_scale, grad_out, losses)


def _compiled_kernel_takes(student, teacher, kept, divergence: str, grad_out) -> bool:
    return (_cpu_rows is not None and student.device.type == "cpu" and teacher.device.type == "cpu"
            and student.dtype in _COMPILED_DTYPES and teacher.dtype in _COMPILED_DTYPES
            and divergence in _DIVERGENCES and kept.dtype == torch.bool and kept.device.type == "cpu"
            and (grad_out is None or grad_out.dtype == student.dtype))


def _run_compiled(student, teacher, kept, divergence, beta, temperature, row_scale, grad_out, losses):
    """cpu_rows.c over all rows, one span per core when large; the special rows' flags, or None if none."""
    num_rows, num_classes = student.shape
    special = torch.empty(num_rows, dtype=torch.uint8)
    kept = kept.contiguous()
    scale = None
    if grad_out is not None:  # float64, one value for all rows (stride 0) or one per row
        scale = row_scale.to(device="cpu", dtype=torch.float64).reshape(-1).contiguous()
    arguments = (
        student.data_ptr(), _COMPILED_DTYPES[student.dtype], teacher.data_ptr(), _COMPILED_DTYPES[teacher.dtype],
        num_rows, num_classes, student.stride(0), student.stride(1), teacher.stride(0), teacher.stride(1),
        kept.data_ptr(), _DIVERGENCES[divergence], float(beta), float(temperature),
        0 if scale is None else scale.data_ptr(), int(scale is not None and scale.numel() > 1),
        0 if grad_out is None else grad_out.data_ptr(), _COMPILED_DTYPES[student.dtype],
        0 if grad_out is None else grad_out.stride(0), 0 if grad_out is None else grad_out.stride(1),
        losses.data_ptr(), special.data_ptr())
    flagged = []

    def work(start: int, stop: int) -> None:
        flagged.append(_cpu_rows.rows(*arguments, start, stop))

    for_row_spans(num_rows, num_classes, work, span_elements=COMPILED_SPAN_ELEMENTS, torch_ops=False)
    return special if sum(flagged) else None


def _torch_distill_rows(student, teacher, kept, divergence, beta, temperature, row_scale, grad_out, losses=None):
    num_rows, num_classes = student.shape
    acc = accumulation_dtype(student.dtype)
    device = student.device
    if losses is None:
        losses = torch.zeros(num_rows, dtype=acc, device=device)
    # five buffers of a chunk each: a quarter of the usual chunk, so that they stay in cache together
    step = max(1, chunk_rows(num_classes, acc) // 4)
    per_row = row_scale is not None and row_scale.dim() > 0
    scale = None if row_scale is None else (row_scale.to(acc) * temperature)  # T^2 / T: d/ds = T d/du
    log_beta = math.log(beta) if beta > 0 else -_INF
    log_other = math.log1p(-beta) if beta < 1 else -_INF

    def work(start: int, stop: int) -> None:
        n = min(step, stop - start)
        lq_buf, lp_buf, q_buf, p_buf, t_buf = (torch.empty(n, num_classes, dtype=acc, device=device)
                                               for _ in range(5))
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            rows = slice(lo, hi)
            lq, lp, q, p, tmp = (b[: hi - lo] for b in (lq_buf, lp_buf, q_buf, p_buf, t_buf))
            # 1. log q and log p, exact, and q and p from the same exponentials
            live = _log_softmax(student[rows], temperature, lq, q) & _log_softmax(teacher[rows], temperature, lp, p)
            live &= kept[rows]
            # 2. the divergence and its gradient with respect to u = student / T (0 log 0 = 0)
            if divergence == "kl":
                terms = torch.sub(lp, lq, out=tmp).mul_(p)
                loss = terms.sum(dim=1)
                broken = torch.isnan(loss)
                if broken.any():  # p_j = 0 where log p_j = -inf: 0 * inf, whose term is 0
                    part = terms[broken]
                    loss[broken] = torch.where(p[broken] > 0, part, 0.0).sum(dim=1)
                grad = q.sub_(p) if grad_out is not None else None
            elif divergence == "reverse_kl":
                ratio = torch.where(q > 0, lq - lp, 0.0)
                loss = (q * ratio).sum(dim=1)
                grad = ratio.sub_(loss[:, None]).mul_(q) if grad_out is not None else None
            else:
                lm = torch.logaddexp(lp + log_beta, lq + log_other)
                to_p = torch.where(p > 0, p * (lp - lm), 0.0).sum(dim=1)
                g = torch.where(q > 0, (lq - lm) * (1.0 - beta), 0.0)
                qg = (q * g).sum(dim=1, keepdim=True)
                to_q = qg.view(-1) / (1.0 - beta) if beta < 1.0 else torch.zeros_like(to_p)
                loss = beta * to_p + (1.0 - beta) * to_q
                grad = g.sub_(qg).mul_(q) if grad_out is not None else None
            losses[rows] = torch.where(live, loss * (temperature * temperature), 0.0)
            if grad_out is not None:
                factor = (scale[rows] if per_row else scale).to(acc)
                factor = torch.where(live, factor, 0.0).view(-1, 1)
                grad.mul_(factor)
                grad.masked_fill_(~live.view(-1, 1), 0.0)  # rows that do not count: 0, even over NaN
                grad_out[rows].copy_(grad)

    for_row_spans(num_rows, num_classes, work, device=device, align=step)
    return losses
