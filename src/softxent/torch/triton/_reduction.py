"""The "mean" reduction's scale, computed on the device so the gradient can be written in the forward."""

from __future__ import annotations

from typing import Optional

import torch


def mean_scale(target: torch.Tensor, weight: Optional[torch.Tensor], ignore_index: int,
               num_classes: int) -> torch.Tensor:
    """1 / (what "mean" divides by) as a 0-d float32 tensor on target's device, 0 when nothing counts.

    The denominator is PyTorch's (API.md rule 6): the sum of ``weight[t]`` over rows whose class index t
    is not ignore_index (their count without weights), or the number of rows for probability targets.
    Labels outside [0, C) are clamped for the gather (their rows' losses are NaN anyway), so no device
    assert fires and nothing waits for the host. All rows ignored gives 0: loss 0 and zero gradient
    (rule 5).

    Example:
        >>> import torch
        >>> from softxent.torch.triton import mean_scale
        >>> float(mean_scale(torch.tensor([0, 2, -100]), torch.tensor([1.0, 1.0, 3.0]), -100, 3))
        0.25
    """
    if target.is_floating_point():
        rows = target.shape[0]
        return torch.full((), 1.0 / rows if rows else 0.0, dtype=torch.float32, device=target.device)
    kept = target != ignore_index
    if weight is None:
        denominator = kept.sum(dtype=torch.float32)
    else:
        safe = target.clamp(0, max(num_classes - 1, 0))
        picked = weight.to(torch.float32).gather(0, safe.reshape(-1)).reshape(target.shape)
        denominator = torch.where(kept, picked, 0.0).sum(dtype=torch.float32)
    return torch.where(denominator > 0, 1.0 / denominator, 0.0)
