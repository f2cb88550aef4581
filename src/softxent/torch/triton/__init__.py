"""Triton GPU kernels behind softxent.torch on CUDA tensors (CPU tensors under TRITON_INTERPRET=1).

The seam with the PyTorch layer is a handful of plain row functions over (N, C) tensors:

    cross_entropy_rows(logits, target, weight, options, *, grad_scale, grad_out) -> (losses, lse)
    softmax_rows / log_softmax_rows(x, *, temperature, where) -> y
    softmax_backward_rows / log_softmax_backward_rows(y, grad, *, temperature, where) -> dx

each a torch.library custom op underneath, so torch.compile sees one opaque call with a fake (meta)
implementation. softxent.torch dispatches to them (`softxent._torch.backend`); its linear cross-entropy
feeds cuBLAS chunks of logits to `cross_entropy_rows`. `mean_scale` gives the "mean" reduction's
1 / denominator on the device (no sync); `watch_target` checks class indices on the device and raises at
a later call, `check_labels` is its sync point; `configured` tunes block sizes and splits. Importing this
package imports triton; softxent.torch imports it only for CUDA tensors.
"""

from softxent._triton.config import CONFIG, SUPPORTED_DTYPES, KernelConfig, configured
from softxent._triton.labels import check_labels, watch_target
from softxent.ops.cross_entropy.triton import cross_entropy_forward, cross_entropy_rows, mean_scale
from softxent.ops.softmax.triton import (log_softmax_backward_rows, log_softmax_rows, softmax_backward, softmax_backward_rows,
                      softmax_forward, softmax_rows)


def interpreted() -> bool:
    """True when these kernels were built for the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    from triton.runtime.interpreter import InterpretedFunction

    from softxent.ops.cross_entropy.triton import _ce_fused_kernel

    return isinstance(_ce_fused_kernel, InterpretedFunction)


__all__ = [
    "CONFIG", "SUPPORTED_DTYPES", "KernelConfig", "configured", "interpreted", "check_labels", "watch_target", "mean_scale",
    "cross_entropy_rows", "cross_entropy_forward",
    "softmax_rows", "log_softmax_rows", "softmax_backward_rows", "log_softmax_backward_rows",
    "softmax_forward", "softmax_backward",
]
