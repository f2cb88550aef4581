"""The token log-probability row kernels of the PyTorch layer: the CPU path, and the generic one anywhere.

The contract, which the Triton kernels (`triton.py`) share on CUDA:

    token_forward_rows(logits (n, V), labels (n,) int64, options, *, entropy) -> (lp, h, stats)
    token_backward_rows(logits, labels, options, lp, stats, g, h_grad, out)

`stats` (n, 3) holds per row what the backward needs to rebuild p without a second max and sum: the
max m of the (soft-capped) logits, L = log sum_j exp(d_j) and E = sum_j p_j (-d_j). The math is the
package docstring's, a cache-sized chunk of rows at a time, one span of rows per core
(`softxent._torch.threads.for_row_spans`), in cross_entropy's working precision (`work_dtype`): float64
for float32 and float64 logits, float32 for 16-bit ones. In float32, p = exp(d - L) would carry the
rounding of d - L as a relative error |d| eps / 2 (5-8 ulp at |d| ~ 10-90, past rule 11's 4), and the
entropy's gradient p_j ((-d_j) - E) would multiply a subnormal p_j by |d_j|. lp, h and stats come back
in that precision: the backward rebuilds p from stats, so rounding them to float32 would bring the
error back; the caller rounds the outputs once.
"""

from __future__ import annotations

import math

import torch

from softxent._options import LossOptions
from softxent._torch.threads import for_row_spans
from softxent.ops.cross_entropy.torch_cpu import COMPILED_SPAN_ELEMENTS, chunk_rows, work_dtype

try:
    from softxent.ops.token_log_probs import _cpu_rows
except ImportError:  # built without a C compiler (setup.py makes the extension optional): torch ops only
    _cpu_rows = None

_INF = float("inf")


def _scores(x: torch.Tensor, options: LossOptions, buf: torch.Tensor, shift: torch.Tensor | None, tanh=None):
    """buf = d = (softcap(x) - m) / T in the working precision; m is found (shift None) or given.

    Returns (m, masked): the per-row max as found (the shift is 0 where it is not finite) and the fully
    masked rows (None when there are none). A -inf logit stays -inf under the cap (a mask).
    """
    buf.copy_(x)
    if options.softcap is not None:
        buf.div_(options.softcap).tanh_()
        if tanh is not None:
            tanh.copy_(buf)
        buf.mul_(options.softcap)
        buf.masked_fill_(torch.isneginf(x), -math.inf)
    if shift is None:
        shift = buf.amax(dim=1, keepdim=True)
    raw = shift
    masked = infinite = None
    if not math.isfinite(float(shift.sum())):  # rare: -inf, +inf or NaN rows (reading it is free on the CPU)
        masked = (shift == -_INF).view(-1)
        infinite = (shift == _INF).view(-1)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    buf.sub_(shift)
    if infinite is not None and infinite.any():  # +inf entries share the mass: d = 0 there, -inf elsewhere
        buf[infinite] = torch.where(buf[infinite] == _INF, 0.0, -_INF).to(buf.dtype)
    if options.temperature != 1.0:
        buf.div_(options.temperature)
    return raw, masked if masked is not None and masked.any() else None


def _rest(e: torch.Tensor) -> torch.Tensor:
    """sum_j e_j without one exactly-1 entry (the max's exp(0)), per row; -1 for a row of zeros. e is changed."""
    ones = e == 1.0
    e.masked_fill_(ones, 0.0)
    return e.sum(dim=1, keepdim=True) + (ones.sum(dim=1, keepdim=True).to(e.dtype) - 1.0)


@torch.no_grad()
def token_forward_rows(logits: torch.Tensor, labels: torch.Tensor, options: LossOptions, *, entropy: bool):
    """(lp, h, stats) of (n, V) logits: log p_t, the entropy (zeros without `entropy`) and (m, L, E) per row.

    labels are int64 in [0, V) or options.ignore_index (checked); ignored and fully masked rows give 0.
    """
    num_rows, num_classes = logits.shape
    acc = work_dtype(logits.dtype)  # float32 logits in float64: exp of a rounded d would be off |d| eps / 2
    device = logits.device
    lp = torch.zeros(num_rows, dtype=acc, device=device)
    h = torch.zeros(num_rows, dtype=acc, device=device)
    stats = torch.zeros(num_rows, 3, dtype=acc, device=device)
    if num_rows == 0 or num_classes == 0:
        return lp, h, stats
    if _compiled_kernel_takes(logits, labels, options):
        special = _run_compiled("forward", logits, labels, options, int(bool(entropy)), lp, h, stats)
        if special is not None:  # the rows the kernel left: their limits from the torch-op path
            rows = special.nonzero().view(-1)
            lp[rows], h[rows], stats[rows] = _torch_forward_rows(logits[rows], labels[rows], options, entropy, acc)
        return lp, h, stats
    return _torch_forward_rows(logits, labels, options, entropy, acc, (lp, h, stats))


def _torch_forward_rows(logits, labels, options: LossOptions, entropy: bool, acc, out=None):
    num_rows, num_classes = logits.shape
    device = logits.device
    if out is None:
        out = tuple(torch.zeros(shape, dtype=acc, device=device) for shape in (num_rows, num_rows, (num_rows, 3)))
    lp, h, stats = out
    kept = (labels != options.ignore_index).view(-1, 1)
    safe = torch.where(kept.view(-1), labels, 0).view(-1, 1)
    step = max(1, chunk_rows(num_classes, acc) // 2)  # two or three such buffers per thread: half a chunk

    def work(start: int, stop: int) -> None:
        most = min(step, stop - start)  # the buffers' rows: the longest chunk
        buf = torch.empty(most, num_classes, dtype=acc, device=device)
        scratch = torch.empty(most, num_classes, dtype=acc, device=device) if entropy else None
        for rows, n in _chunks(start, stop, step):
            d = buf[:n]
            # 1. d = (softcap(x) - m) / T <= 0
            shift, masked = _scores(logits[rows], options, d, None)
            neg_d_t = d.gather(1, safe[rows]).neg_()  # -d_t >= 0 (+inf when the target is masked)
            # 2. E's sum before d becomes e: sum_j e_j (-d_j)
            if entropy:
                e = torch.exp(d, out=scratch[:n])
                # torch.sum's cascade keeps float32 exact over 1e5 terms where a BLAS dot drifts (1e-5 at 32k)
                spread = d.mul_(e).sum(dim=1, keepdim=True).neg_()
                broken = torch.isnan(spread).view(-1)
                if broken.any():  # a -inf logit: e_j d_j = 0 * -inf there, whose term is 0 (a NaN logit stays)
                    part = d[broken]
                    part.masked_fill_(torch.isnan(part) & ~torch.isnan(logits[rows][broken]), 0.0)
                    spread[broken] = part.sum(dim=1, keepdim=True).neg_()
                d = e
            else:
                d.exp_()
            # 3. the sum without the maximum's own exp(0) = 1, so that log1p keeps a tiny tail exact: the
            #    entries equal to 1 (the max and its ties) are counted apart and one of them left out
            #    (an argmax for the first maximum costs 20x a sum here, torch 2.13 on the CPU)
            rest = _rest(d)
            log_sum = torch.log1p(rest)  # -inf where rest = -1: a fully masked row (no entry is 1)
            keep = kept[rows] if masked is None else kept[rows] & ~masked.view(-1, 1)
            lp[rows] = torch.where(keep, (neg_d_t + log_sum).neg_(), 0.0).view(-1)
            s = stats[rows]
            s[:, 0:1] = shift
            # L = -inf marks a fully masked row for the backward (its gradient is 0)
            s[:, 1:2] = log_sum if masked is None else log_sum.masked_fill(masked.view(-1, 1), -_INF)
            if entropy:
                e_mean = spread / (rest + 1.0)
                s[:, 2:3] = e_mean
                h[rows] = torch.where(keep, log_sum + e_mean, 0.0).view(-1)

    for_row_spans(num_rows, num_classes, work, device=device, align=step)
    return lp, h, stats


@torch.no_grad()
def token_backward_rows(logits: torch.Tensor, labels: torch.Tensor, options: LossOptions, lp: torch.Tensor,
                        stats: torch.Tensor, g: torch.Tensor, h_grad: torch.Tensor | None, out: torch.Tensor) -> None:
    """out = d(sum g lp + sum h_grad h)/d(logits) from the forward's stats (out may be `logits`).

    g, h_grad: (n,) upstream gradients in the working precision (h_grad None: no entropy term).
    """
    num_rows, num_classes = logits.shape
    acc = work_dtype(logits.dtype)
    device = logits.device
    if num_rows == 0 or num_classes == 0:
        out.zero_()
        return
    if _compiled_kernel_takes(logits, labels, options) and out.dtype == logits.dtype:
        g = g.to(acc).contiguous()
        hg = None if h_grad is None else h_grad.to(acc).contiguous()
        special = _run_compiled("backward", logits, labels, options, lp.to(acc).contiguous(),
                                stats.to(acc).contiguous(), g, hg, out)
        if special is not None:  # the rows the kernel left (before writing them: out may be the logits)
            rows = special.nonzero().view(-1)
            part = torch.empty(len(rows), num_classes, dtype=out.dtype)
            _torch_backward_rows(logits[rows], labels[rows], options, lp[rows], stats[rows], g[rows],
                                 None if hg is None else hg[rows], part)
            out[rows] = part
        return
    _torch_backward_rows(logits, labels, options, lp, stats, g, h_grad, out)


def _torch_backward_rows(logits, labels, options: LossOptions, lp, stats, g, h_grad, out) -> None:
    num_rows, num_classes = logits.shape
    acc = work_dtype(logits.dtype)
    device = logits.device
    kept = labels != options.ignore_index
    live = kept & (stats[:, 1] != -_INF)
    g = torch.where(live, g, 0.0).view(-1, 1)
    hg = None if h_grad is None else torch.where(live, h_grad, 0.0).view(-1, 1)
    safe = torch.where(kept, labels, 0).view(-1, 1)
    # the target's own g (1 - p_t) as -g expm1(log p_t): never 1 - p_t by cancellation (rule 11)
    target_part = (-torch.expm1(lp.view(-1, 1))) * g
    step = max(1, chunk_rows(num_classes, acc) // 2)  # two or three such buffers per thread: half a chunk
    lowest = torch.finfo(acc).min
    softcap = options.softcap is not None

    def work(start: int, stop: int) -> None:
        most = min(step, stop - start)  # the buffers' rows: the longest chunk
        scratch = torch.empty(most, num_classes, dtype=acc, device=device)
        p_scratch = torch.empty(most, num_classes, dtype=acc, device=device)
        tanh = torch.empty(most, num_classes, dtype=acc, device=device) if softcap else None
        for rows, n in _chunks(start, stop, step):
            d = scratch[:n]
            t = None if tanh is None else tanh[:n]
            x = logits[rows]
            mask = torch.isneginf(x) if softcap else None
            _scores(x, options, d, stats[rows, 0:1], t)
            d.clamp_(min=lowest)
            # p = exp(d - L); grad = p (h ((-d) - E) - g), the target's entry replaced below
            p = torch.sub(d, stats[rows, 1:2], out=p_scratch[:n]).exp_()
            if hg is not None:
                centred = d.neg_().sub_(stats[rows, 2:3]).mul_(p)  # p_j ((-d_j) - E)
                p_t_centred = centred.gather(1, safe[rows])
                grad = centred.mul_(hg[rows]).addcmul_(p, g[rows], value=-1.0)
                value = target_part[rows] + hg[rows] * p_t_centred
            else:
                grad = p.mul_(g[rows].neg())
                value = target_part[rows]
            grad.scatter_(1, safe[rows], value)
            grad.masked_fill_(~live[rows].view(-1, 1), 0.0)  # ignored, masked rows: 0 even over NaN
            if options.temperature != 1.0:
                grad.div_(options.temperature)
            if t is not None:  # the chain rule through softcap * tanh(x / softcap); 0 at a masked -inf
                grad.mul_(t.square_().neg_().add_(1.0))
                grad.masked_fill_(mask, 0.0)
            out[rows].copy_(grad)

    for_row_spans(num_rows, num_classes, work, device=device, align=step)


_COMPILED_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # cpu_rows.c's dtype codes


def _compiled_kernel_takes(logits: torch.Tensor, labels: torch.Tensor, options: LossOptions) -> bool:
    return (_cpu_rows is not None and logits.device.type == "cpu" and logits.dtype in _COMPILED_DTYPES
            and labels.dtype == torch.int64 and labels.device.type == "cpu" and options.softcap is None)


def _run_compiled(which: str, logits, labels, options: LossOptions, *arrays):
    """cpu_rows.c's `forward` (arrays: entropy, lp, h, stats) or `backward` (lp, stats, g, hg, out) over
    all rows, one span per core when large; the special rows' flags, or None if none."""
    num_rows, num_classes = logits.shape
    special = torch.empty(num_rows, dtype=torch.uint8)
    labels = labels.contiguous()
    wide = int(work_dtype(logits.dtype) == torch.float64)  # lp, h, stats, g, hg: float64, else float32
    head = (logits.data_ptr(), _COMPILED_DTYPES[logits.dtype], num_rows, num_classes, logits.stride(0),
            logits.stride(1), labels.data_ptr(), int(options.ignore_index), float(options.temperature), wide)
    if which == "forward":
        entropy, lp, h, stats = arrays
        tail = (entropy, lp.data_ptr(), h.data_ptr(), stats.data_ptr())
        kernel = _cpu_rows.forward
    else:
        lp, stats, g, hg, out = arrays
        tail = (lp.data_ptr(), stats.data_ptr(), g.data_ptr(), 0 if hg is None else hg.data_ptr(), out.data_ptr(),
                _COMPILED_DTYPES[out.dtype], out.stride(0), out.stride(1))
        kernel = _cpu_rows.backward
    arguments = head + tail + (special.data_ptr(),)
    flagged = []

    def work(start: int, stop: int) -> None:
        flagged.append(kernel(*arguments, start, stop))

    for_row_spans(num_rows, num_classes, work, span_elements=COMPILED_SPAN_ELEMENTS, torch_ops=False)
    return special if sum(flagged) else None


def _chunks(start: int, stop: int, step: int):
    """(rows, n): slices of at most `step` rows covering [start, stop), and their lengths."""
    for lo in range(start, stop, step):
        hi = min(lo + step, stop)
        yield slice(lo, hi), hi - lo
