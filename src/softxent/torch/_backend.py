"""The one place that picks the device-specific row kernel of cross-entropy.

Every kernel has the contract of `_rows.cross_entropy_rows`:

    kernel(logits (N, C), target (N,) int64 | (N, C) float, weight (C,) | None, options, *,
           grad_scale, grad_out (N, C) | None) -> (losses (N,), lse (N,))

The public layer (`cross_entropy.py`, `linear_cross_entropy.py`) does validation, layout, the "mean"
denominator, reduction and autograd, and calls `backend_for(logits)` for the rows.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._rows import cross_entropy_rows

RowKernel = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]


def backend_for(logits: torch.Tensor) -> RowKernel:
    """The row kernel for logits on their device: for now the PyTorch path everywhere.

    The Triton kernels (softxent.torch.triton) take CUDA tensors once the dispatch is wired here.
    """
    return cross_entropy_rows
