"""logsumexp for torch, with softxent's limits: -inf for a fully masked row and a zero gradient there."""

from __future__ import annotations

import torch

from softxent import _validation as v
from softxent.ops.softmax.torch import _check_input, _masked, probabilities


def logsumexp(input: torch.Tensor, dim: int | tuple[int, ...] = -1, *, keepdim: bool = False,
              where: torch.Tensor | None = None) -> torch.Tensor:
    """``log sum_j exp(x_j)`` along `dim` (an int or a tuple), shifted by the max so nothing overflows.

    A fully masked (or empty) row gives -inf, +inf entries give +inf, NaN propagates. The gradient is
    softmax(x), with the limits above: 0 for a fully masked row (torch: NaN).

    Example:
        >>> import torch, softxent.torch as sxt
        >>> sxt.logsumexp(torch.tensor([1000.0, 1000.0], dtype=torch.float64))   # 1000 + log 2
        tensor(1000.6931, dtype=torch.float64)

    References:
        Blanchard, Higham & Higham 2021, "Accurately computing the log-sum-exp and softmax functions".
    """
    _check_input(input)
    dims = v.normalize_axes(dim, input.dim(), "dim") if input.dim() else ()
    x = _masked(input, where)
    return _LogSumExp.apply(x, dims, bool(keepdim))


class _LogSumExp(torch.autograd.Function):
    """torch.logsumexp forward; backward grad * softmax(x) with the limits (torch's is NaN on masked rows)."""

    @staticmethod
    def forward(ctx, x, dims, keepdim):
        ctx.save_for_backward(x)
        ctx.dims, ctx.keepdim = dims, keepdim
        if not dims:
            return x.clone()
        return torch.logsumexp(x, dim=dims, keepdim=keepdim)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if not ctx.dims:
            return grad, None, None
        if not ctx.keepdim:
            for d in ctx.dims:  # sorted ascending, so each unsqueeze lands where its dim was
                grad = grad.unsqueeze(d)
        return grad * probabilities(x, ctx.dims), None, None
