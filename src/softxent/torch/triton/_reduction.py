"""The "mean" reduction's scale, computed on the device so the gradient can be written in the forward."""

from __future__ import annotations

from typing import Optional

import torch

from softxent.ops.cross_entropy.torch import gradient_scale, mean_denominator


def mean_scale(target: torch.Tensor, weight: Optional[torch.Tensor], ignore_index: int,
               num_classes: int) -> torch.Tensor:
    """1 / (what "mean" divides by) as a 0-d float32 tensor on target's device, 0 when nothing counts.

    The denominator is softxent.torch's (`mean_denominator`, PyTorch's rule 6): the sum of ``weight[t]``
    over rows whose class index t is not ignore_index (their count without weights), or the number of
    rows for probability targets; bad labels are clamped for the gather, so no device assert fires and
    nothing waits for the host. All rows ignored gives 0: loss 0 and zero gradient (rule 5).

    Example:
        >>> import torch
        >>> from softxent.torch.triton import mean_scale
        >>> float(mean_scale(torch.tensor([0, 2, -100]), torch.tensor([1.0, 1.0, 3.0]), -100, 3))
        0.25
    """
    denominator = mean_denominator(target, weight, ignore_index, num_classes=num_classes, num_rows=target.shape[0],
                                   dtype=torch.float32, device=target.device)
    return gradient_scale(denominator, torch.float32, target.device)
