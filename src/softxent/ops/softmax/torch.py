"""softmax and log_softmax for torch: F.softmax's signature, softxent's limits and exact values.

The order of docs/semantics.md: mask (`where`), then the max shift, then the temperature: d = (x - max x) / T, so
x / T never overflows (3e38 / 0.5 is inf; (3e38 - 3e38) / 0.5 is 0).

On CUDA (float16, bfloat16, float32) the Triton kernels do the rows (they take T and apply it after the
shift). Elsewhere a few torch ops do, branch-free (no host sync, nothing data-dependent, so
torch.compile, vmap and the other torch.func transforms trace straight through):

    m, first = max_j x_j and where it is          d = (x - m) / T   (masked rows: shift 0, so d = -inf)
    e = exp(d)                                    rest = sum_{j != first} e_j
    log_softmax = d - log1p(rest)                 softmax = e / (1 + rest)

Leaving the max's own term (exactly 1) out of `rest` and taking log1p keeps log_softmax exact when one
class dominates, as in the NumPy layer (Blanchard, Higham & Higham 2021). log_softmax works in float64
for every input dtype: float32 scores shifted in float64 are exact (24-bit significands, so the difference
needs at most 53 bits unless the gap is beyond 2^29 times the smaller, where the rounding is 2^-53
relative), their exps are within 1 ulp of float64 and the float64 sum carries each term far below a
float32 ulp, so the only float32-visible rounding is the last one: within 1 ulp (float32), and 16-bit
results are rounded once. softmax (no last-bit promise: each p_j is within |d_j| + 4 ulp, exp amplifying
the rounding of d_j as in every shifted softmax) works in the input's precision (16-bit in float32), its
sum in float64.

Limits (rules 2, 3): a fully masked row gives softmax 0, log_softmax -inf; a row holding +inf shares
the mass among its +inf entries (d = 0 there, -inf elsewhere); both kinds of row are constant, so their
gradient is 0. NaN makes its row NaN. The backward is torch's fused vector-Jacobian product on the saved
output, times a per-row 1 / T (0 on the constant rows); it is differentiable, so double backward is exact.
"""

from __future__ import annotations

import math

import torch

from softxent import _validation as v
from softxent._torch import backend as _backend

_INF = float("inf")
_NAN = float("nan")


def softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None,
            *, temperature: float = 1.0, where: torch.Tensor | None = None) -> torch.Tensor:
    """Probabilities from scores: ``softmax(x)_j = exp(x_j / T) / sum_k exp(x_k / T)`` along `dim`.

    A drop-in for ``torch.nn.functional.softmax`` (same positional order and defaults), computed as
    ``exp(d_j) / sum_k exp(d_k)`` with ``d = (x - max x) / T``, so nothing overflows, with the limits of
    docs/semantics.md: a fully masked row gives zeros and a zero gradient, +inf entries share the mass equally.

    Args:
        input: floating tensor of any shape.
        dim: the class dimension; None picks it as torch does (0 for 0-, 1- and 3-d input, else 1), with
            torch's deprecation warning.
        _stacklevel: where that warning points (torch's argument).
        dtype: cast the input to this dtype first (as torch); the result has it.
        temperature: T > 0 dividing the shifted scores.
        where: boolean mask broadcastable to `input`; False entries get probability 0.

    Returns:
        A tensor of the shape of `input` (dtype: `dtype`, else the input's; float32 under CUDA autocast,
        as torch) whose entries along `dim` sum to 1 (or are all 0).

    Example:
        >>> import torch, softxent.torch as sxt
        >>> sxt.softmax(torch.tensor([1.0, 2.0, 3.0]), 0).round(decimals=3)
        tensor([0.0900, 0.2450, 0.6650])
        >>> sxt.softmax(torch.tensor([-float("inf"), -float("inf")]), 0)   # masked: zeros, not NaN
        tensor([0., 0.])
        >>> sxt.softmax(torch.tensor([3e38, 2.9e38, 0.0]), 0, temperature=0.5)   # T after the shift
        tensor([1., 0., 0.])

    See also: softxent.softmax (NumPy), softxent.torch.triton.softmax_rows (the CUDA kernel).

    References:
        Milakov & Gimelshein 2018, "Online normalizer calculation for softmax".
    """
    x, dim, temperature = _prepare("softmax", input, dim, _stacklevel, dtype, temperature, where)
    if _backend.uses_triton(x):
        return _TritonRows.apply(x, dim, temperature, False)
    out = _native(False, x, dim, temperature)
    return _Rows.apply(x, dim, temperature, False)[0] if out is None else out


def log_softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None,
                *, temperature: float = 1.0, where: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probabilities: ``log_softmax(x)_j = d_j - log sum_k exp(d_k)``, ``d = (x - max x) / T``.

    A drop-in for ``torch.nn.functional.log_softmax`` (arguments as `softmax`), computed as
    ``d_j - log1p(sum_{k != argmax} exp(d_k))`` so that it is exact to the last bit, a dominant class
    included (torch gives 0 for float64 [40, 0, 0, 0]; the exact value is -log1p(3 e^-40) = -1.27e-17).
    A fully masked row gives -inf everywhere and a zero gradient; a row holding +inf gives ``-log k`` at
    its k +inf entries and -inf elsewhere.

    Example:
        >>> import torch, softxent.torch as sxt
        >>> sxt.log_softmax(torch.tensor([1.0, 2.0, 3.0]), 0).round(decimals=4)
        tensor([-2.4076, -1.4076, -0.4076])
        >>> float(sxt.log_softmax(torch.tensor([40.0, 0, 0, 0], dtype=torch.float64), 0)[0])
        -1.2745062765874767e-17

    See also: softxent.log_softmax (NumPy), softxent.torch.triton.log_softmax_rows (the CUDA kernel).

    References:
        Blanchard, Higham & Higham 2021, "Accurately computing the log-sum-exp and softmax functions".
    """
    x, dim, temperature = _prepare("log_softmax", input, dim, _stacklevel, dtype, temperature, where)
    if _backend.uses_triton(x):
        return _TritonRows.apply(x, dim, temperature, True)
    out = _native(True, x, dim, temperature)
    return _Rows.apply(x, dim, temperature, True)[0] if out is None else out


def probabilities(z: torch.Tensor, dim) -> torch.Tensor:
    """softmax(z) over `dim` (an int or a tuple) with the limits of rules 2 and 3, without branches."""
    m = z.amax(dim=dim, keepdim=True)
    e = torch.exp(z - torch.where(torch.isinf(m), 0.0, m))
    e = torch.where(m == _INF, (z == _INF).to(z.dtype), e)  # +inf rows: 1 at each +inf entry
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total == 0, 1.0, total)


# --- arguments --------------------------------------------------------------------------------------------


def _check_input(input) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor; got {type(input).__name__}")
    v.check_numeric(input, "input", allow_int=False)


def _masked(input: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
    if where is None:
        return input
    if not isinstance(where, torch.Tensor) or where.dtype != torch.bool:
        raise TypeError(f"where must be a boolean tensor; got {getattr(where, 'dtype', type(where).__name__)}")
    try:
        torch.broadcast_shapes(where.shape, input.shape)
    except RuntimeError:
        raise ValueError(f"where of shape {tuple(where.shape)} does not broadcast to input of shape "
                         f"{tuple(input.shape)}") from None
    return input.masked_fill(~where, -_INF)


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """What CUDA autocast does to softmax, log_softmax and logsumexp: float32 (their "fp32" list).

    CPU autocast leaves them in the input dtype (torch 2.4 to 2.13), and so do we.
    """
    if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled("cuda"):
        return x.float()
    return x


def check_temperature(temperature) -> float:
    """`_validation.check_temperature`, which dynamo cannot trace (math.isfinite on a float it made symbolic
    under dynamic=True): while compiling, the same rule by comparisons, the check itself only to raise."""
    if torch.compiler.is_compiling() and not isinstance(temperature, bool) and isinstance(temperature, float):
        if not 0.0 < temperature < _INF:
            v.check_temperature(temperature)
        return temperature
    return v.check_temperature(temperature)


def _prepare(name, input, dim, stacklevel, dtype, temperature, where):
    _check_input(input)
    temperature = check_temperature(temperature)
    if dim is None:  # torch's implicit choice, with torch's warning, pointing at the caller
        if torch.compiler.is_compiling():  # dynamo cannot trace warnings.warn: the choice alone
            dim = 0 if input.dim() in (0, 1, 3) else 1
        else:
            dim = torch.nn.functional._get_softmax_dim(name, input.dim(), stacklevel + 1)
    if isinstance(dim, tuple):
        raise TypeError(f"dim must be an int for softmax and log_softmax (one class dimension); got {dim!r}")
    (dim,) = v.normalize_axes(dim, max(1, input.dim()), "dim")
    if dtype is not None:  # as torch: cast first, then compute in that dtype
        input = input.to(dtype)
        _check_input(input)
    else:
        input = autocast_input(input)
    return _masked(input, where), dim, temperature


# --- torch's own float64 kernels, where they are exact ------------------------------------------------------

# torch's float64 log_softmax of d = x - max x (the shift exact for logits below float64) is within C 2^-53
# of exact, absolutely (the rounding of s = sum_j e^{d_j}, C terms); no entry of a row is closer to 0 than
# its largest, -log s, so every entry is within 2^-27 relative (a sixteenth of a float32 ulp) when each
# row's largest log-probability is <= -C 2^-26. cross_entropy's lean path takes the same bound for -lsm_t.
FLOAT64_LOG_SOFTMAX_MARGIN = 2.0 ** -26


def _native(log: bool, x: torch.Tensor, dim: int, temperature: float) -> torch.Tensor | None:
    """softmax or log_softmax of `x` by torch's own float64 kernels and autograd (a few aten calls where
    `_Rows` takes a dozen and a Python backward), or None where the general path must
    decide: a row whose limit rules 2 and 3 set (NaN from torch), a dominant class beyond
    `FLOAT64_LOG_SOFTMAX_MARGIN`, float64 log_softmax (its last bit needs the log1p form), a
    temperature, or a trace (torch.compile and torch.func: no host read there).

    The results are rounded once from float64: softmax within 1 ulp, log_softmax as above; the gradient
    is torch's float64 vector-Jacobian product rounded once, and double backward is torch's.
    """
    if (temperature != 1.0 or x.numel() == 0 or (log and x.dtype == torch.float64)
            or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()):
        return None
    if log:
        m = x.detach().amax(dim, keepdim=True).to(torch.float64)
        out = torch.log_softmax(x.to(torch.float64).sub_(m), dim)  # exact; x below float64: .to copies
        exact = float(out.detach().amax()) <= -FLOAT64_LOG_SOFTMAX_MARGIN * x.shape[dim]  # False on NaN
    else:
        out = torch.softmax(x, dim, dtype=torch.float64)
        exact = not math.isnan(float(out.detach().sum()))  # masked and +inf rows are NaN in torch
    return out.to(x.dtype) if exact else None


# --- the rows on torch ops ----------------------------------------------------------------------------------


def shifted(x: torch.Tensor, dim: int, temperature: float, work: torch.dtype):
    """d = (x - m) / T in `work` precision, the shift, the row max m and the first max's position.

    The shift is m, or 0 in a fully masked row (so d = -inf - 0 = -inf, never -inf - -inf). In a row
    holding +inf, x - m is NaN at the +inf entries and -inf elsewhere; NaN becomes 0 (d = 0 at the +inf
    entries: they share the mass). A NaN row then holds zeros too: its results are made NaN by the caller
    from m, per row.
    """
    m, first = x.max(dim, keepdim=True)
    shift = torch.where(m == -_INF, 0.0, m).to(work)
    # x converted first: torch's mixed-dtype subtraction takes a slow, unvectorised path (10x)
    d = torch.sub(x, shift) if x.dtype == work else x.to(work).sub_(shift)
    d = d.nan_to_num_(nan=0.0, posinf=_INF, neginf=-_INF)
    if temperature != 1.0:
        d = d.div_(temperature)  # after the shift: (x - m) / T <= 0 never overflows
    return d, shift, m, first


def _scale(m: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """Per row: 1 / T, or 0 on the constant rows (fully masked, or holding +inf)."""
    return torch.isfinite(m).to(dtype) * (1.0 / temperature)  # NaN rows: their gradient is NaN anyway


def _softmax_rows(x, dim, temperature):
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    d, _, m, _ = shifted(x, dim, temperature, work)
    e = d.exp_()
    # summed in float64 with the max's 1 in it: a division by 1 + rest needs no log1p
    total = e.sum(dim, keepdim=True, dtype=torch.float64)
    total = torch.where(total == 0, 1.0, total)  # a fully masked row stays zeros
    total = torch.where(torch.isnan(m), _NAN, total)  # NaN rows (their d was zeroed)
    return e.div_(total.to(e.dtype)).to(x.dtype), m  # same dtypes: the vectorised division


def _log_softmax_rows(x, dim, temperature):
    d, _, m, first = shifted(x, dim, temperature, torch.float64)
    e = torch.exp(d)
    e.scatter_(dim, first, 0.0)  # the max's own term, exactly 1 (0 in a masked row), left out
    log_sum = torch.log1p(e.sum(dim, keepdim=True))
    log_sum = torch.where(torch.isnan(m), _NAN, log_sum)  # NaN rows (their d was zeroed)
    return d.sub_(log_sum).to(x.dtype), m  # d <= 0 and -log_sum <= 0: nothing cancels


class _Rows(torch.autograd.Function):
    """softmax (or log_softmax, `log`) over `dim` on torch ops; outputs (result, row max), the max for the
    backward's constant rows. The backward is torch's fused product: p (g - sum p g), or g - exp(out) sum g."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, dim, temperature, log):
        if x.dim() == 0 or x.shape[dim] == 0:
            empty = torch.empty_like(x) if x.dim() else (torch.zeros_like(x) if log else torch.ones_like(x))
            return empty, _row_max(x, dim)
        return (_log_softmax_rows if log else _softmax_rows)(x, dim, temperature)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        _, ctx.dim, ctx.temperature, ctx.log = inputs
        out, m = outputs
        ctx.mark_non_differentiable(m)
        ctx.save_for_backward(out, m)

    @staticmethod
    def backward(ctx, grad, _):
        vjp = torch._log_softmax_backward_data if ctx.log else torch._softmax_backward_data
        return *_backward(vjp, ctx, grad), None


def _backward(vjp, ctx, grad):
    """torch's fused vector-Jacobian product `vjp` on the saved output, times 1 / T (0 on constant rows)."""
    out, m = ctx.saved_tensors
    if out.dim() == 0 or out.shape[ctx.dim] == 0:
        return torch.zeros_like(grad), None, None
    dx = vjp(grad, out, ctx.dim, out.dtype)
    return dx * _scale(m, ctx.temperature, dx.dtype), None, None


def _row_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The row max for the backward's constant rows (a second max pass: forward's m is internal)."""
    if x.dim() == 0 or x.shape[dim] == 0:
        return x.detach().sum(dim=dim, keepdim=True) if x.dim() else x.detach()
    return x.detach().amax(dim, keepdim=True)


# --- the rows on the Triton kernels ---------------------------------------------------------------------------


class _TritonRows(torch.autograd.Function):
    """softmax (or log_softmax, `log`) over `dim` by the Triton row kernels: that dim last, rows flattened."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, dim, temperature, log):
        from softxent.ops.softmax import triton as kernels  # imports triton: only for tensors that use it

        rows = kernels.log_softmax_rows if log else kernels.softmax_rows
        return _over_rows(lambda r: rows(r, temperature=temperature), dim, x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, dim, temperature, log = inputs
        ctx.dim, ctx.temperature, ctx.log = dim, temperature, log
        ctx.save_for_backward(output, _row_max(x, dim))

    @staticmethod
    def backward(ctx, grad):
        out, m = ctx.saved_tensors
        if out.dim() == 0 or out.shape[ctx.dim] == 0 or torch.is_grad_enabled():
            # create_graph: torch's differentiable products, for double backward
            vjp = torch._log_softmax_backward_data if ctx.log else torch._softmax_backward_data
            return *_backward(vjp, ctx, grad), None
        from softxent.ops.softmax import triton as kernels

        rows = kernels.log_softmax_backward_rows if ctx.log else kernels.softmax_backward_rows
        dx = _over_rows(lambda y, g: rows(y, g, temperature=ctx.temperature), ctx.dim, out, grad)
        return torch.where(torch.isinf(m), 0.0, dx), None, None, None  # +inf rows are constant (rule 3)


def _over_rows(function, dim: int, *tensors: torch.Tensor) -> torch.Tensor:
    moved = [t.movedim(dim, -1) for t in tensors] if tensors[0].dim() else [t.reshape(1) for t in tensors]
    shape = moved[0].shape
    out = function(*(t.reshape(-1, shape[-1]) for t in moved))
    out = out.reshape(shape)
    return out.movedim(-1, dim) if tensors[0].dim() else out.reshape(())
