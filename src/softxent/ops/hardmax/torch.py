"""hardmax for torch: the one-hot of the first maximum (ONNX Hardmax)."""

from __future__ import annotations

import torch

from softxent import _validation as v
from softxent.ops.softmax.torch import _check_input


def hardmax(input: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The one-hot of the first maximum along `dim` (ONNX Hardmax); a row holding NaN gives NaN.

    softmax's limit as the temperature goes to 0. Piecewise constant, so it carries no gradient.

    Example:
        >>> import torch, softxent.torch as sxt
        >>> sxt.hardmax(torch.tensor([1.0, 3.0, 3.0]))   # ties go to the first maximum
        tensor([0., 1., 0.])
    """
    _check_input(input)
    (dim,) = v.normalize_axes(dim, max(1, input.dim()), "dim")
    x = input.detach()
    if x.dim() == 0:
        return torch.where(torch.isnan(x), x, torch.ones_like(x))
    out = torch.zeros_like(x)
    if x.shape[dim]:
        winners = torch.argmax(x, dim=dim, keepdim=True)  # the first maximum; torch ranks NaN highest
        out.scatter_(dim, winners, 1.0)
        out = torch.where(torch.isnan(x).any(dim=dim, keepdim=True), float("nan"), out)
    return out
