"""The cross-entropy row kernel of the PyTorch layer: the CPU path, and the generic one on any device.

`cross_entropy_rows` is the device-specific seam of `softxent.torch.cross_entropy` (the Triton kernels
implement the same contract on CUDA; `_backend.backend_for` picks one). For rows of logits x and their
targets it returns each row's loss and log-sum-exp and, when asked, writes the gradient of
``grad_scale * sum(losses)`` in the same sweep, so nothing of size (rows, C) is kept for the backward.

The math is the NumPy layer's (`softxent.ops.cross_entropy.numpy`, the spec), per row, with z the logits
after softcap and temperature, m = max z, d = z - m <= 0, e = exp(d), s = sum e, L = log s:

    loss = sum_j a_j (L - d_j) + zl * lse**2,     lse = m + L
    dloss/dz_j = (A + 2 zl lse) e_j / s - a_j,    A = sum_j a_j

where the target's coefficients are a = (1 - eps) w_t onehot(t) + eps/C w (class indices) or
a = ((1 - eps) p + eps/C) w (probabilities). For a class-index target the sum leaves the target's own
term out, rest = sum_{j != t} e_j, so that when the target holds the max (d_t = 0, e_t = 1) the loss is
log1p(rest), exact however small, and its gradient -a_t rest / s never cancels (Blanchard, Higham &
Higham 2021, for the log1p form of log-sum-exp).

The common problem (float32 or bfloat16 logits, class-index targets, no softcap) runs in the compiled
kernel `cpu_rows.c` (the extension `_cpu_rows`): per row, one read for the max, one for the exps into a
float64 scratch row and one write of the gradient. Everything else, and the rows that kernel leaves (a
max that is not finite, a NaN), goes through torch ops here: chunks of about `CHUNK_BYTES` of the working
precision, a few passes each (max, shift, exp, sum, scale) over data that stays in cache. Large problems
run one span of rows per core (`softxent._torch.threads.for_row_spans`) on either path.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

import array_api_compat.torch as xp

from softxent._options import LossOptions
from softxent.ops.cross_entropy import spec
from softxent._torch import memory
from softxent._torch.threads import for_row_spans

try:
    from softxent.ops.cross_entropy import _cpu_rows
except ImportError:  # built without a C compiler (setup.py makes the extension optional): torch ops only
    _cpu_rows = None

# One chunk of rows in the working precision. Small enough that its passes hit the cache (L2/L3), large
# enough that the ~20 op dispatches per chunk (a few microseconds each) stay well under its arithmetic.
CHUNK_BYTES = 4 << 20


_LOG2E = 1.0 / math.log(2.0)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are accumulated in float32 (rule 8 of docs/semantics.md)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where the kernel works: float64 for float32 and float64 logits, float32 for 16-bit ones.

    float32 logits are exact in float64 and so is d = x - max x; in float32 d rounds, and exp turns an
    absolute error of |d| 2^-24 into that relative error of e^d: 40 ulp at d = -40, well past rule 11's
    2 ulp for the loss and 4 for the gradient. Worked in float64, each e^d is within an ulp of float64
    and the float64 sums carry the terms far below a float32 ulp, so the results, rounded once to
    float32, are within 1 ulp. 16-bit logits worked in float32 are exact to far below their own ulp.
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else torch.float64


def chunk_rows(num_classes: int, dtype: torch.dtype) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, CHUNK_BYTES // max(1, num_classes * itemsize))


@torch.no_grad()
def cross_entropy_rows(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                       options: LossOptions, *, grad_scale: float | torch.Tensor = 1.0,
                       grad_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy losses and log-sum-exps of (N, C) logits; the gradient into grad_out.

    Args:
        logits: (N, C) floating tensor, any strides (a K-dimensional input's rows are strided views).
        target: (N,) int64 class indices in [0, C) or equal to options.ignore_index (already checked),
            or (N, C) floating probabilities.
        weight: (C,) class weights or None (options.weight is not read: the caller passes it here).
        options: ignore_index, label_smoothing, z_loss, softcap, temperature (reduction is the caller's).
        grad_scale: factor of the gradient, a float or a 0-d tensor on the logits' device (1 / the
            "mean" denominator, computed on the device without a host sync).
        grad_out: None (no gradient work at all), or an (N, C) tensor of the logits' dtype that receives
            d(grad_scale * sum(losses))/d(logits); it may be `logits` itself (each chunk is read before
            its gradient is written).

    Returns:
        losses (N,): 0 for ignored and fully masked rows, with weights, smoothing and z_loss; and
        lse (N,): the log-sum-exp of the softcapped / tempered logits (-inf for a fully masked row,
        +inf for a row holding +inf). Both in float32, or float64 for float64 logits.
    """
    num_rows, num_classes = logits.shape
    acc = accumulation_dtype(logits.dtype)
    device = logits.device
    losses = torch.zeros(num_rows, dtype=acc, device=device)
    lse = torch.full((num_rows,), -float("inf"), dtype=acc, device=device)
    if num_rows == 0 or num_classes == 0:
        if grad_out is not None:
            grad_out.zero_()
        return losses, lse
    if _compiled_kernel_takes(logits, target, options, grad_out):
        return _compiled_rows(logits, target, weight, options, grad_scale, grad_out, losses, lse)
    kernel = _Kernel(logits, target, weight, options, grad_scale, grad_out)
    for_row_spans(num_rows, num_classes, kernel.run, device=device, align=kernel.step)
    return kernel.finish(losses, lse)


COMPILED_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # cpu_rows.c's dtype codes


def _compiled_kernel_takes(logits, target, options: LossOptions, grad_out) -> bool:
    return (_cpu_rows is not None and logits.device.type == "cpu" and logits.dtype in COMPILED_DTYPES
            and not target.dtype.is_floating_point and options.softcap is None
            and (grad_out is None or grad_out.dtype == logits.dtype))


def _compiled_rows(logits, target, weight, options: LossOptions, grad_scale, grad_out, losses, lse):
    """`cross_entropy_rows` through cpu_rows.c: the spec resolves each row's coefficients here (float64,
    N values), the C kernel computes the rows; rows it flags (a max that is not finite, a NaN) are
    recomputed on the torch-op path, which gives them their limits."""
    num_rows, num_classes = logits.shape
    w = None if weight is None else weight.to(dtype=torch.float64).contiguous()
    coefficients = spec.index_coefficients(xp, target.reshape(num_rows), w, options, num_classes, torch.float64)
    row_scale = None
    if grad_out is not None:
        row_scale = (grad_scale * coefficients.kept.to(torch.float64) / options.temperature).contiguous()
    special = _run_compiled(logits, coefficients, row_scale, 1, w, options, grad_out, losses, lse)
    if special is not None:
        rows = special.nonzero().view(-1)
        part_grad = None if grad_out is None else torch.empty(len(rows), num_classes, dtype=logits.dtype)
        kernel = _Kernel(logits[rows], target.reshape(num_rows)[rows], weight, options, grad_scale, part_grad)
        kernel.run(0, len(rows))
        part_losses, part_lse = kernel.finish(losses.new_zeros(len(rows)), lse.new_empty(len(rows)))
        losses[rows], lse[rows] = part_losses, part_lse
        if grad_out is not None:
            grad_out[rows] = part_grad
    return losses, lse


def compiled_kernel_takes(logits: torch.Tensor, options: LossOptions) -> bool:
    """Whether `lean_rows` can run these logits (class-index targets assumed)."""
    return (_cpu_rows is not None and logits.device.type == "cpu" and logits.dtype in COMPILED_DTYPES
            and options.softcap is None)


_LEAN_SCALARS: dict = {}  # (options, C) -> the lean problem's scalar arguments (`_lean_scalars`)


def _lean_scalars(options: LossOptions, num_classes: int) -> tuple:
    """(ignore_index, a_t, u, A, z_loss, T, smoothing, 1 / T): what cpu_rows.c's `lean` reads of the options,
    the coefficients of a kept row without class weights from the spec, once per (options, C)."""
    key = (options, num_classes)
    scalars = _LEAN_SCALARS.get(key)
    if scalars is None:
        row = spec.index_coefficients(xp, torch.zeros(1, dtype=torch.int64), None, options, num_classes,
                                      torch.float64)
        scalars = (options.ignore_index, float(row.target[0]), float(row.uniform[0]), float(row.total[0]),
                   float(options.z_loss), float(options.temperature), int(bool(options.label_smoothing)),
                   1.0 / options.temperature)
        if len(_LEAN_SCALARS) < 64:
            _LEAN_SCALARS[key] = scalars
    return scalars


class LeanRows(NamedTuple):
    """What `lean_rows` computed: the sum of the rows' losses (unrounded: float64), and per row only what
    was asked for."""

    loss_sum: float
    grad: torch.Tensor | None  # the logits' shape and dtype
    losses: torch.Tensor | None = None  # float32, one per row
    lse: torch.Tensor | None = None  # float32, one per row


def lean_rows(logits, labels, options: LossOptions, grad_scale: float, want_grad: bool, *,
              per_row: bool = False, want_lse: bool = False) -> LeanRows | None:
    """The lean problem in the compiled kernel: (N, C) logits, or a contiguous (N, C, d...) input, with
    contiguous int64 labels (one per row, flat) and no class weights, so that every row has the same
    coefficients (the spec gives them once, cached). The kernel checks the labels itself; None when one
    is outside [0, C) or ignored, or when a row is special (a max that is not finite, a NaN): the
    caller's general path decides those calls. `per_row`: the rows' losses too ("none"), `want_lse`:
    their log-sum-exps. Every small call (the training loop of a small classifier) passes here: each
    line costs a measurable share of it."""
    num_rows, num_classes = labels.numel(), logits.shape[1]
    ignore_index, target_coef, uniform_coef, total_coef, z_loss, temperature, smoothing, inverse_temperature = \
        _LEAN_SCALARS.get((options, num_classes)) or _lean_scalars(options, num_classes)
    if logits.dim() == 2:
        row_stride, class_stride = logits.stride()
        layout = (num_rows, num_classes, row_stride, class_stride, num_rows, 0)
    else:
        layout = _layout(logits)
    grad, grad_address, grad_strides = None, 0, (0, 0, 0)
    if want_grad:
        # contiguous (N, C), or a K-dim input's own layout (it is contiguous there)
        grad = memory.empty_like(logits, memory_format=torch.contiguous_format)  # 1 us below torch.empty's
        grad_address = grad.data_ptr()
        grad_strides = (0, num_classes, 1) if logits.dim() == 2 else (layout[5], layout[2], layout[3])
    losses = torch.empty(num_rows, dtype=torch.float32) if per_row else None
    lse = torch.empty(num_rows, dtype=torch.float32) if want_lse else None
    arguments = (
        logits.data_ptr(), COMPILED_DTYPES[logits.dtype], *layout, labels.data_ptr(), ignore_index, target_coef,
        uniform_coef, total_coef, z_loss, temperature, smoothing, grad_scale * inverse_temperature, grad_address,
        *grad_strides, 0 if losses is None else losses.data_ptr(), 0 if lse is None else lse.data_ptr())
    if num_rows * num_classes <= COMPILED_SPAN_ELEMENTS:  # one span, here: no hand-off
        loss_sum = _cpu_rows.lean(*arguments, 0, num_rows)
        if loss_sum is None:
            return None
    else:
        sums = []
        for_row_spans(num_rows, num_classes, lambda start, stop: sums.append(_cpu_rows.lean(*arguments, start, stop)),
                      span_elements=COMPILED_SPAN_ELEMENTS, torch_ops=False)
        if None in sums:
            return None
        loss_sum = math.fsum(sums)
    return LeanRows(loss_sum, grad, losses, lse)


# Below this many logits a span of rows is not worth a worker thread of its own: the kernel takes about a
# nanosecond per logit, the hand-off tens of microseconds.
COMPILED_SPAN_ELEMENTS = 1 << 17


def _layout(tensor: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """(rows, classes, row stride, class stride, rows per sample, sample stride) of (N, C) logits, or of a
    contiguous (N, C, d...) input seen as N samples of d... rows (row stride 1, class stride d...)."""
    if tensor.dim() == 2:
        return (*tensor.shape, *tensor.stride(), max(1, tensor.shape[0]), 0)
    per_sample = math.prod(tensor.shape[2:])
    return tensor.shape[0] * per_sample, tensor.shape[1], 1, tensor.stride(1), max(1, per_sample), tensor.stride(0)


def _run_compiled(logits, coefficients, row_scale, coef_stride: int, w, options: LossOptions, grad_out, losses, lse):
    """cpu_rows.c over all rows, one span per core when large; the special rows' flags, or None if none."""
    num_rows, num_classes, row_stride, class_stride, per_sample, sample_stride = _layout(logits)
    grad_layout = (0,) * 6 if grad_out is None else _layout(grad_out)
    special = torch.empty(num_rows, dtype=torch.uint8)
    dtype_code = COMPILED_DTYPES[logits.dtype]
    labels = coefficients.safe.contiguous()
    address = lambda tensor: 0 if tensor is None else tensor.data_ptr()  # noqa: E731
    arguments = (
        logits.data_ptr(), dtype_code, num_rows, num_classes, row_stride, class_stride, per_sample, sample_stride,
        grad_layout[5], labels.data_ptr(), address(coefficients.kept), address(coefficients.target),
        address(coefficients.uniform), address(coefficients.total), address(row_scale), coef_stride, address(w),
        float(num_classes) if w is None else float(w.sum()), float(options.z_loss), float(options.temperature),
        int(bool(options.label_smoothing)), address(grad_out), dtype_code, grad_layout[2], grad_layout[3],
        losses.data_ptr(), lse.data_ptr(), special.data_ptr())
    flagged = []

    def work(start: int, stop: int) -> None:
        flagged.append(_cpu_rows.rows(*arguments, start, stop))

    for_row_spans(num_rows, num_classes, work, span_elements=COMPILED_SPAN_ELEMENTS, torch_ops=False)
    return special if sum(flagged) else None


class _Kernel:
    """One call's state: per-row coefficients, per-row results of the sweep, and the chunk loop."""

    def __init__(self, logits, target, weight, options: LossOptions, grad_scale, grad_out):
        self.x, self.options, self.grad_out = logits, options, grad_out
        num_rows, num_classes = logits.shape
        self.num_classes = num_classes
        acc = self.acc = work_dtype(logits.dtype)
        device = logits.device
        self.step = chunk_rows(num_classes, acc)
        self.eps = options.label_smoothing
        self.on_target, self.uniform = spec.smoothing_split(self.eps, num_classes)
        self.w = None if weight is None else weight.to(device=device, dtype=acc)
        self.w_sum = float(num_classes) if self.w is None else self.w.sum()
        per_row = lambda: torch.empty(num_rows, 1, dtype=acc, device=device)  # noqa: E731

        if target.dtype.is_floating_point:  # probability targets: every row counts, no ignore_index
            self.labels = None
            self.probs = target
            self.kept = torch.ones(num_rows, 1, dtype=torch.bool, device=device)
            self.total = per_row()  # A = sum_j a_j
            self.coef_d = per_row()  # sum_j a_j d_j
        else:
            coefficients = spec.index_coefficients(xp, target.reshape(num_rows, 1), self.w, options, num_classes, acc)
            self.kept = coefficients.kept
            self.labels = coefficients.safe  # safe to gather with
            self.probs = None
            self.target_coef = coefficients.target  # a_t
            self.smooth_coef = coefficients.uniform  # a_j - [j = t] a_t, over w_j
            self.total = coefficients.total
            self.target_d = per_row()
            self.target_e = per_row()
            if self.eps:
                self.smooth_d = per_row()  # sum_j w_j d_j
        self.shift = per_row()  # m, or 0 for rows that are fully masked or hold +inf
        self.rest = per_row()  # sum_{j != t} e_j (probability targets: the whole sum)
        self.infinite = torch.zeros(num_rows, 1, dtype=torch.bool, device=device)  # rows holding +inf
        self.row_scale = None
        if grad_out is not None:
            # s_r: the gradient's factor per row; temperature's 1/T folded in (z = x / T is linear)
            self.row_scale = grad_scale * self.kept.to(acc) / options.temperature

    # --- the sweep ------------------------------------------------------------------------------------

    def run(self, start: int, stop: int) -> None:
        """Chunks of rows [start, stop): the loss's per-row sums and, if asked, the gradient."""
        options, acc = self.options, self.acc
        chunk = min(self.step, stop - start)
        in_place = (self.grad_out is not None and self.grad_out.dtype == acc
                    and not options.transforms_logits)
        scratch = None if in_place else self._buffer(chunk)
        tanh = self._buffer(chunk) if self.grad_out is not None and options.softcap is not None else None
        coef = self._buffer(chunk) if self.probs is not None else None
        for lo in range(start, stop, self.step):
            hi = min(lo + self.step, stop)
            n = hi - lo
            buf = self.grad_out[lo:hi] if in_place else scratch[:n]
            self._chunk(lo, hi, buf, None if tanh is None else tanh[:n], None if coef is None else coef[:n])

    def _buffer(self, rows: int) -> torch.Tensor:
        """A (rows, C) scratch buffer in the logits' layout: row-major, or column-major where the classes
        are strided and the rows are not (a K-dimensional input's rows: (N, C, d...) seen per sample as
        (d..., C)). There a reduction over the classes then runs across rows, vectorized, instead of over
        a short row at a time (21 classes: 4x slower), and the copies in and out keep their order."""
        if self.x.stride(0) == 1 and self.x.stride(1) != 1:
            return torch.empty(self.num_classes, rows, dtype=self.acc, device=self.x.device).t()
        return torch.empty(rows, self.num_classes, dtype=self.acc, device=self.x.device)

    def _chunk(self, lo: int, hi: int, buf, tanh, coef) -> None:
        options = self.options
        rows = slice(lo, hi)
        x = self.x[rows]

        # 1. z = softcap * tanh(x / softcap) / T in the working precision, then d = z - max z (<= 0,
        #    so exp never overflows). Temperature alone divides d instead: max(x / T) = max(x) / T.
        if options.softcap is not None or x.dtype != buf.dtype:
            # 16-bit logits are widened once, into the chunk's buffer: an op mixing dtypes would widen
            # them into a temporary at every pass
            buf.copy_(x)
        if options.softcap is not None:
            buf.div_(options.softcap).tanh_()
            if tanh is not None:
                tanh.copy_(buf)  # for the chain rule: dz/dx = (1 - tanh^2) / T
            buf.mul_(options.softcap / options.temperature)
            # a -inf logit is a mask, not a score: the cap would lift it to -softcap and give the
            # masked class mass, so it stays -inf (masks apply after the cap, as in Gemma 2 and the
            # NumPy layer); x is intact here, buf is scratch whenever a softcap is set
            buf.masked_fill_(torch.isneginf(x), -math.inf)
        source = buf if options.softcap is not None or x.dtype != buf.dtype else x
        shift = self.shift[rows]
        shift.copy_(source.amax(dim=1, keepdim=True))  # exact in any precision
        if math.isfinite(float(shift.sum())):  # one number tells: no -inf, +inf or NaN row here
            torch.sub(source, shift, out=buf)
        else:  # rare: fully masked, +inf or NaN rows; reading the number is free on the CPU
            self._special_rows(source, buf, shift, ~torch.isfinite(shift), self.infinite[rows])
        if options.temperature != 1.0 and options.softcap is None:
            buf.div_(options.temperature)
            shift.div_(options.temperature)  # the max of z = x / T

        # 2. the sums of the loss that need d: d_t, and sum_j a_j d_j for smoothing or probabilities
        if self.labels is not None:
            labels = self.labels[rows]
            torch.gather(buf, 1, labels, out=self.target_d[rows])
            if self.eps:
                self.smooth_d[rows] = _weighted_row_sums(buf, self.w)
        else:
            coef.copy_(self.probs[rows])  # in the working precision before any arithmetic
            if self.eps:  # the spec's a = ((1 - eps) p + eps / C) w, in place
                coef.mul_(self.on_target).add_(self.uniform)
            if self.w is not None:
                coef.mul_(self.w)
            torch.sum(coef, dim=1, keepdim=True, out=self.total[rows])
            self.coef_d[rows] = _weighted_row_sums(buf, coef)

        # 3. e = exp(d); the sum without the target's term (the whole sum for probabilities).
        #    A float32 buffer (16-bit logits, see `work_dtype`): exp2(d log2 e) is a quarter faster than
        #    exp(d) in torch's vector math, and its rounding is far below a 16-bit ulp; d itself (for d_t
        #    and the sums above) was taken before the scaling.
        if buf.dtype == torch.float32:
            buf.mul_(_LOG2E).exp2_()
        else:
            buf.exp_()
        rest = self.rest[rows]
        if self.labels is not None:
            torch.gather(buf, 1, labels, out=self.target_e[rows])
            buf.scatter_(1, labels, 0.0)
        torch.sum(buf, dim=1, keepdim=True, out=rest)

        # 4. the gradient: dz_j = s_r ((A + 2 zl lse) e_j / s - a_j), written over e in place
        if self.grad_out is None:
            return
        total_sum = rest + self.target_e[rows] if self.labels is not None else rest
        # q = s_r / s; 0 for a fully masked row (s = 0: zero gradient, rule 2), NaN stays NaN
        masked = total_sum == 0
        q = torch.where(masked, 0.0, self.row_scale[rows] / total_sum)
        factor = self.total[rows]
        if options.z_loss:  # lse = -inf on a masked row: keep its factor finite (q = 0 there)
            log_sum = self._log_sum(rest, self.target_e[rows] if self.labels is not None else None,
                                    self.target_d[rows] if self.labels is not None else None)
            factor = torch.where(masked, 0.0, factor + 2.0 * options.z_loss * (shift + log_sum))
        buf.mul_(q * factor)
        row_scale = q * total_sum  # s_r, or 0 for a fully masked row
        if self.labels is not None:
            a_t = self.target_coef[rows]
            # the target's entry: s_r ((A - a_t + 2 zl lse) e_t - a_t rest) / s, never 1 - p_t
            value = torch.mul(a_t, rest)
            if options.z_loss or self.eps:
                value = torch.addcmul(-value, factor - a_t, self.target_e[rows])
            else:
                value.neg_()
            value.mul_(q)
            if self.eps:
                smooth = row_scale * self.smooth_coef[rows]  # s_r eps / C per row, times w_j
                if self.w is None:
                    buf.sub_(smooth)
                    value.sub_(smooth)
                else:
                    buf.addcmul_(smooth, self.w, value=-1.0)
                    value.sub_(smooth * self.w[labels])
            buf.scatter_(1, labels, value)
        else:
            buf.addcmul_(coef, row_scale, value=-1.0)
        if tanh is not None:  # chain rule through softcap * tanh(x / softcap)
            tanh.square_().neg_().add_(1.0)
            buf.mul_(tanh)
        out = self.grad_out[rows]
        if buf.data_ptr() != out.data_ptr() or buf.dtype != out.dtype:
            out.copy_(buf)

    def _special_rows(self, source, buf, shift, special, infinite) -> None:
        """Shift rows whose max is not finite: -inf rows stay -inf, +inf rows become their limit.

        A fully masked row keeps shift 0 so that e = 0 and L = -inf, never -inf - -inf = NaN; a row
        holding +inf gets d = 0 at its +inf entries and -inf elsewhere, so they share the mass equally
        (rules 2 and 3 of docs/semantics.md). A NaN row keeps shift 0 and stays NaN.
        """
        positive = shift == float("inf")
        infinite.copy_(positive)
        shift.masked_fill_(special, 0.0)
        torch.sub(source, shift, out=buf)
        if positive.any():
            rows = positive.view(-1)
            infinite = source[rows] == float("inf")
            buf[rows] = torch.where(infinite, 0.0, -float("inf")).to(buf.dtype)

    # --- per-row results ---------------------------------------------------------------------------

    def _log_sum(self, rest, target_e, target_d):
        """L = log(sum e), as log1p(rest) where the target holds the max (e_t = 1): exact when tiny."""
        if target_d is None:
            return torch.log(rest)
        return torch.where(target_d == 0, torch.log1p(rest), torch.log(rest + target_e))

    def finish(self, losses, lse):
        options = self.options
        if self.labels is not None:
            log_sum = self._log_sum(self.rest, self.target_e, self.target_d)
            a_t = self.target_coef
            # a sum of terms >= 0 (d <= 0 <= L): nothing cancels
            loss = torch.where(a_t > 0, a_t * (log_sum - self.target_d), 0.0)
            if self.eps:
                smooth = self.smooth_coef * (self.w_sum * log_sum - self.smooth_d)
                loss = loss + torch.where(self.kept, smooth, 0.0)
        else:
            log_sum = self._log_sum(self.rest, None, None)
            loss = self.total * log_sum - self.coef_d
        row_lse = torch.where(self.infinite, float("inf"), self.shift + log_sum)
        if options.z_loss:
            loss = loss + torch.where(self.kept, options.z_loss * row_lse * row_lse, 0.0)
        masked = row_lse == -float("inf")
        loss = torch.where(masked, 0.0, loss)  # a fully masked row carries no information (rule 2)
        losses.copy_(loss.view(-1))
        lse.copy_(row_lse.view(-1))
        return losses, lse


def _weighted_row_sums(shifted: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """sum_j weight_j d_j per row (weight a vector, a matrix of rows or None), with 0 * -inf = 0.

    A -inf logit on a class of weight 0 contributes 0 (rule 4 of docs/semantics.md); NaN logits stay NaN.
    """
    if weight is None:
        return shifted.sum(dim=1, keepdim=True)
    if weight.dim() == 1:
        sums = (shifted @ weight).unsqueeze(1)
    else:  # a batched dot product through BLAS, without an (n, C) temporary
        sums = torch.bmm(shifted.unsqueeze(1), weight.unsqueeze(2)).view(-1, 1)
    broken = torch.isnan(sums).view(-1)
    if broken.any():
        part = shifted[broken]
        w = weight if weight.dim() == 1 else weight[broken]
        fixed = torch.where(w > 0, part * w, torch.where(torch.isnan(part), float("nan"), 0.0))
        sums[broken] = fixed.sum(dim=1, keepdim=True)
    return sums
