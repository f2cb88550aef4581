"""What the linear-head CPU benchmarks share (cross-entropy, token log-probs, distillation): the shapes,
a case's random hidden states and head, the training-step runner, and the peak over the gradients.

Peak extra memory is measured over the inputs and includes the gradients themselves: grad_input +
grad_weight = (N + V) * D * itemsize is the least any provider can allocate; `over_gradients` divides by it.
"""

from __future__ import annotations

import numpy as np
import torch

CASES = {"4096x1024x32000-float32": {"rows": 4096, "features": 1024, "classes": 32000, "dtype": "float32"}}
QUICK = {"256x64x1000-float32": {"rows": 256, "features": 64, "classes": 1000, "dtype": "float32"}}


def head(case: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states (N, D), head weight (V, D) scaled by 1/sqrt(D): logits of unit size) in the case's dtype."""
    dtype = getattr(torch, case["dtype"])
    x = torch.randn(case["rows"], case["features"], generator=generator).to(dtype)
    w = (torch.randn(case["classes"], case["features"], generator=generator) / case["features"] ** 0.5).to(dtype)
    return x, w


def training_step(loss_fn, x: torch.Tensor, w: torch.Tensor, *rest, device: str):
    """A run() doing loss_fn(x, w, *rest).backward() into fresh gradients of x and w each call."""
    x, w = x.to(device).requires_grad_(), w.to(device).requires_grad_()
    rest = tuple(r.to(device) for r in rest)

    def run():
        loss = loss_fn(x, w, *rest)
        loss.backward()
        x.grad = w.grad = None  # counted in the peak, not in the next call's baseline
        return loss

    return run


def over_gradients(case: dict, row: dict) -> dict:
    itemsize = np.dtype(case["dtype"]).itemsize
    grads = (case["rows"] + case["classes"]) * case["features"] * itemsize
    return {"grads_bytes": grads, "peak_over_grads": row["peak_extra_bytes"] / grads}
