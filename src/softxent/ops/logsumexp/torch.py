"""logsumexp for torch, exact and with softxent's limits: -inf for a fully masked row, a zero gradient there.

The row work is softmax's (`ops.softmax.torch.shifted`), in float64 for every input dtype:
``lse = m + log1p(sum_{j != argmax} exp(x_j - m))``, then rounded once to the input's dtype (Blanchard,
Higham & Higham 2021). torch.logsumexp accumulates float32 in float32 (its error grows with the row
length) and loses the log1p.
"""

from __future__ import annotations

import torch

from softxent import _validation as v
from softxent.ops.softmax.torch import _check_input, _masked, autocast_input, probabilities, shifted

_INF = float("inf")


def logsumexp(input: torch.Tensor, dim: int | tuple[int, ...] = -1, keepdim: bool = False, *,
              where: torch.Tensor | None = None) -> torch.Tensor:
    """``log sum_j exp(x_j)`` along `dim` (an int or a tuple), shifted by the max so nothing overflows.

    Within 2 ulp (float32) / 4 ulp (float64) of exact; 16-bit inputs are computed exactly and rounded
    once. A fully masked (or empty) row gives -inf, +inf entries give +inf, NaN propagates. The gradient
    is softmax(x), with the limits above: 0 for a fully masked row (torch: NaN).

    Args:
        input: floating tensor of any shape.
        dim: the dimension(s) to reduce (torch.logsumexp's argument).
        keepdim: keep the reduced dimensions with length 1.
        where: boolean mask broadcastable to `input`; False entries are left out of the sum.

    Example:
        >>> import torch, softxent.torch as sxt
        >>> sxt.logsumexp(torch.tensor([1000.0, 1000.0], dtype=torch.float64))   # 1000 + log 2
        tensor(1000.6931, dtype=torch.float64)

    See also: softxent.logsumexp (NumPy).

    References:
        Blanchard, Higham & Higham 2021, "Accurately computing the log-sum-exp and softmax functions".
    """
    _check_input(input)
    dims = v.normalize_axes(dim, input.dim(), "dim") if input.dim() else ()
    x = _masked(autocast_input(input), where)
    return _LogSumExp.apply(x, dims, bool(keepdim))


def _row_lse(z: torch.Tensor) -> torch.Tensor:
    """The exact log-sum-exp of the last dim of z, keepdim, in z's dtype."""
    if z.shape[-1] == 0:
        return torch.full((*z.shape[:-1], 1), -_INF, dtype=z.dtype, device=z.device)
    d, shift, m, first = shifted(z, -1, 1.0, torch.float64)
    e = d.exp_()
    e.scatter_(-1, first, 0.0)  # the max's own term, exactly 1 (0 in a masked row), left out
    lse = shift + torch.log1p(e.sum(-1, keepdim=True))  # +inf rows: inf + log k; NaN rows: NaN
    return torch.where(m == -_INF, -_INF, lse).to(z.dtype)  # masked rows: the log of an empty sum


class _LogSumExp(torch.autograd.Function):
    """Exact forward; backward grad * softmax(x) with the limits (torch's is NaN on masked rows)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, dims, keepdim):
        if not dims:
            return x.clone()
        rest = [d for d in range(x.dim()) if d not in dims]
        z = x.permute(*rest, *dims).flatten(len(rest)) if x.dim() else x.reshape(1)
        z = z.unsqueeze(0) if z.dim() == 1 else z
        lse = _row_lse(z).reshape([1 if d in dims else x.shape[d] for d in range(x.dim())])
        return lse if keepdim else lse.squeeze(dims)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, dims, keepdim = inputs
        ctx.save_for_backward(x)
        ctx.dims, ctx.keepdim = dims, keepdim

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if not ctx.dims:
            return grad, None, None
        if not ctx.keepdim:
            for d in ctx.dims:  # sorted ascending, so each unsqueeze lands where its dim was
                grad = grad.unsqueeze(d)
        return grad * probabilities(x, ctx.dims), None, None
