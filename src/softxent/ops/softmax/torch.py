"""softmax, log_softmax, logsumexp and hardmax for torch, with softxent's limits (API.md rules 2, 3, 9).

On CUDA (float16, bfloat16, float32) softmax and log_softmax and their backward run softxent's Triton
kernels, which take the limits themselves. Elsewhere torch's fused kernels do the work, and what is
added is the limit of the rows torch turns into NaN: a fully masked row (all -inf) gives softmax 0,
log_softmax -inf, logsumexp -inf and a zero gradient; a row holding +inf shares the mass equally among
its +inf entries. softmax and log_softmax are custom ops (their row fix-up looks at values, which
torch.compile should not trace into); the fix-up's check is free on the CPU.
"""

from __future__ import annotations

import torch

from softxent import _validation as v
from softxent._torch import backend as _backend

_INF = float("inf")


def softmax(input: torch.Tensor, dim: int = -1, *, temperature: float = 1.0,
            where: torch.Tensor | None = None) -> torch.Tensor:
    """Probabilities from scores: ``softmax(x)_j = exp(x_j / T) / sum_k exp(x_k / T)`` along `dim`.

    torch.softmax's fused kernel (shifted by the row max, so exp never overflows), with the limits of
    API.md: a fully masked row gives zeros and a zero gradient, +inf entries share the mass equally.

    Args:
        input: floating tensor of any shape.
        dim: the class dimension.
        temperature: T > 0 dividing the scores first.
        where: boolean mask broadcastable to `input`; False entries get probability 0.

    Returns:
        A tensor of the shape and dtype of `input` whose entries along `dim` sum to 1 (or are all 0).

    Example:
        >>> import torch, softxent.torch as sxt
        >>> sxt.softmax(torch.tensor([1.0, 2.0, 3.0])).round(decimals=3)
        tensor([0.0900, 0.2450, 0.6650])
        >>> sxt.softmax(torch.tensor([-float("inf"), -float("inf")]))   # masked: zeros, not NaN
        tensor([0., 0.])

    References:
        Milakov & Gimelshein 2018, "Online normalizer calculation for softmax".
    """
    x, dim = _prepare(input, dim, temperature, where)
    return torch.ops.softxent.softmax(x, dim)


def log_softmax(input: torch.Tensor, dim: int = -1, *, temperature: float = 1.0,
                where: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probabilities: ``log_softmax(x)_j = x_j / T - logsumexp(x / T)`` along `dim`.

    A fully masked row gives -inf everywhere and a zero gradient; a row holding +inf gives ``-log k``
    at its k +inf entries and -inf elsewhere.

    Example:
        >>> import torch, softxent.torch as sxt
        >>> sxt.log_softmax(torch.tensor([1.0, 2.0, 3.0])).round(decimals=4)
        tensor([-2.4076, -1.4076, -0.4076])

    References:
        Blanchard, Higham & Higham 2021, "Accurately computing the log-sum-exp and softmax functions".
    """
    x, dim = _prepare(input, dim, temperature, where)
    return torch.ops.softxent.log_softmax(x, dim)


def probabilities(z: torch.Tensor, dim) -> torch.Tensor:
    """softmax(z) over `dim` (an int or a tuple) with the limits of rules 2 and 3, without branches."""
    m = z.amax(dim=dim, keepdim=True)
    e = torch.exp(z - torch.where(torch.isinf(m), 0.0, m))
    e = torch.where(m == _INF, (z == _INF).to(z.dtype), e)  # +inf rows: 1 at each +inf entry
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total == 0, 1.0, total)


# --- shared checks ---------------------------------------------------------------------------------------


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


def _prepare(input, dim, temperature, where):
    _check_input(input)
    temperature = v.check_temperature(temperature)
    if isinstance(dim, tuple):
        raise TypeError(f"dim must be an int for softmax and log_softmax (one class dimension); got {dim!r}")
    (dim,) = v.normalize_axes(dim, max(1, input.dim()), "dim")
    x = _masked(input, where)
    if temperature != 1.0:
        x = x / temperature
    return x, dim


# --- softmax and log_softmax: torch's kernels, then the rows torch gets wrong ---------------------------


def _special_rows(x: torch.Tensor, dim: int):
    """Rows (keepdim masks) that are fully masked and that hold +inf; None when there are none."""
    m = x.amax(dim=dim, keepdim=True) if x.numel() else x.sum(dim=dim, keepdim=True)
    masked, positive = m == -_INF, m == _INF
    if not bool((masked | positive).any()):
        return None
    return masked, positive


def _on_triton(name: str, dim: int, *tensors: torch.Tensor) -> torch.Tensor:
    """softxent.torch.triton's row function `name` over `dim`: that dim last, the rest flattened to rows."""
    from softxent.torch import triton as kernels

    moved = [t.movedim(dim, -1) for t in tensors]
    shape = moved[0].shape
    out = getattr(kernels, name)(*(t.reshape(-1, shape[-1]) for t in moved))
    return out.reshape(shape).movedim(-1, dim)


def _zero_constant_rows(result: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """Masked and +inf rows are constant in x (rules 2, 3): zero gradient, chosen on the device, no sync."""
    if x.shape[dim] == 0:
        return result
    return torch.where(torch.isinf(x.amax(dim=dim, keepdim=True)), 0.0, result)


@torch.library.custom_op("softxent::softmax", mutates_args=())
def _softmax_op(x: torch.Tensor, dim: int) -> torch.Tensor:
    if _backend.uses_triton(x):
        return _on_triton("softmax_rows", dim, x)
    out = torch.softmax(x, dim)
    special = _special_rows(x, dim)
    if special is not None:
        masked, positive = special
        share = probabilities(x, dim)
        out = torch.where(masked, 0.0, torch.where(positive, share, out))
    return out


@_softmax_op.register_fake
def _(x, dim):
    return torch.empty_like(x)


@torch.library.custom_op("softxent::softmax_backward", mutates_args=())
def _softmax_backward_op(grad: torch.Tensor, out: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    if _backend.uses_triton(out):
        return _zero_constant_rows(_on_triton("softmax_backward_rows", dim, out, grad), x, dim)
    result = torch._softmax_backward_data(grad, out, dim, out.dtype)  # p * (g - sum p g)
    special = _special_rows(x, dim)
    if special is not None:  # masked rows and +inf rows are constant: zero gradient
        result = torch.where(special[0] | special[1], 0.0, result)
    return result


@_softmax_backward_op.register_fake
def _(grad, out, x, dim):
    return torch.empty_like(out)


def _softmax_setup(ctx, inputs, output):
    x, dim = inputs
    ctx.save_for_backward(output, x)
    ctx.dim = dim


def _softmax_backward(ctx, grad):
    out, x = ctx.saved_tensors
    return torch.ops.softxent.softmax_backward(grad, out, x, ctx.dim), None


_softmax_op.register_autograd(_softmax_backward, setup_context=_softmax_setup)


@torch.library.custom_op("softxent::log_softmax", mutates_args=())
def _log_softmax_op(x: torch.Tensor, dim: int) -> torch.Tensor:
    if _backend.uses_triton(x):
        return _on_triton("log_softmax_rows", dim, x)
    out = torch.log_softmax(x, dim)
    special = _special_rows(x, dim)
    if special is not None:
        masked, positive = special
        with torch.no_grad():
            share = torch.log(probabilities(x, dim))
        out = torch.where(masked, -_INF, torch.where(positive, share, out))
    return out


@_log_softmax_op.register_fake
def _(x, dim):
    return torch.empty_like(x)


@torch.library.custom_op("softxent::log_softmax_backward", mutates_args=())
def _log_softmax_backward_op(grad: torch.Tensor, out: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    if _backend.uses_triton(out):
        return _zero_constant_rows(_on_triton("log_softmax_backward_rows", dim, out, grad), x, dim)
    result = torch._log_softmax_backward_data(grad, out, dim, out.dtype)  # g - exp(out) sum g
    special = _special_rows(x, dim)
    if special is not None:
        result = torch.where(special[0] | special[1], 0.0, result)
    return result


@_log_softmax_backward_op.register_fake
def _(grad, out, x, dim):
    return torch.empty_like(out)


def _log_softmax_backward(ctx, grad):
    out, x = ctx.saved_tensors
    return torch.ops.softxent.log_softmax_backward(grad, out, x, ctx.dim), None


_log_softmax_op.register_autograd(_log_softmax_backward, setup_context=_softmax_setup)
