"""The one place that picks the device-specific kernels: Triton on CUDA, PyTorch ops everywhere else.

Every cross-entropy row kernel has the contract of `ops.cross_entropy.torch_cpu.cross_entropy_rows`:

    kernel(logits (N, C), target (N,) int64 | (N, C) float, weight (C,) | None, options, *,
           grad_scale, grad_out (N, C) | None) -> (losses (N,), lse (N,))

The ops' torch layers (`ops/<op>/torch.py`) do validation, layout,
the "mean" denominator, reduction and autograd, and asks `uses_triton(tensor)` which kernels run.

Triton takes CUDA tensors of float16, bfloat16 and float32 when the triton package is installed;
float64 (gradcheck) stays on the PyTorch path. Tests run the Triton kernels on CPU tensors under
TRITON_INTERPRET=1 through `forced("triton")`, or for a whole process with SOFTXENT_BACKEND=triton.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from functools import lru_cache, partial
from typing import Callable, Iterator

import torch

import array_api_compat.torch as xp

from softxent.ops.cross_entropy import spec
from softxent.ops.cross_entropy.torch_cpu import cross_entropy_rows

RowKernel = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BACKENDS = ("triton", "torch")


def _from_environment() -> str | None:
    """SOFTXENT_BACKEND=triton|torch forces a backend for every tensor, CPU tensors included.

    Forcing Triton on a machine without CUDA runs the kernels under the Triton interpreter, so the
    switch sets TRITON_INTERPRET=1 (before triton is first imported) unless the user set it.
    """
    value = os.environ.get("SOFTXENT_BACKEND", "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise ValueError(f"SOFTXENT_BACKEND must be 'triton' or 'torch'; got {value!r}")
    if value == "triton" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return value


_forced: str | None = _from_environment()  # "triton" or "torch" when forced; None: by device


@lru_cache(maxsize=None)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def uses_triton(tensor: torch.Tensor) -> bool:
    """True when the Triton kernels take this tensor."""
    if _forced is not None:
        return _forced == "triton" and tensor.dtype in _TRITON_DTYPES
    return tensor.is_cuda and tensor.dtype in _TRITON_DTYPES and _triton_installed()


@contextmanager
def forced(backend: str) -> Iterator[None]:
    """Run every tensor on `backend` ("triton" or "torch") inside the block: for tests on the CPU."""
    global _forced
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'triton' or 'torch'; got {backend!r}")
    previous, _forced = _forced, backend
    try:
        yield
    finally:
        _forced = previous


def backend_for(logits: torch.Tensor) -> RowKernel:
    """The cross-entropy row kernel for these logits.

    The Triton kernel runs with its own label flag off: the caller checks the whole target once with
    `check_labels` (below), so a bad label is named by its position in the caller's target, not in a
    chunk of it.
    """
    if uses_triton(logits):
        from softxent.torch import triton as kernels

        return partial(kernels.cross_entropy_rows, label_check="off")
    return cross_entropy_rows


def check_labels(target: torch.Tensor, num_classes: int, ignore_index: int, logits: torch.Tensor) -> None:
    """Rule 7 (docs/semantics.md) for class indices: at once on the PyTorch path; on CUDA without a host sync.

    On the Triton path the check runs on the device and the ValueError comes at the next call (or at
    `softxent.torch.triton.check_labels()`); meanwhile the rows with a bad label have a NaN loss and
    gradient, never a read out of bounds.
    """
    if uses_triton(logits):
        from softxent.torch.triton import watch_target

        watch_target(target, num_classes, ignore_index)
    else:
        spec.check_labels(xp, target, num_classes, ignore_index)


def check_values(target: torch.Tensor, weight: torch.Tensor | None, num_classes: int, ignore_index: int,
                 logits: torch.Tensor) -> None:
    """Rule 7 (docs/semantics.md) on the values: class indices (`check_labels`), probabilities, class weights."""
    if target.dtype.is_floating_point:
        spec.check_probabilities(xp, target)
    else:
        check_labels(target, num_classes, ignore_index, logits)
    if weight is not None:
        spec.check_weight(xp, weight, num_classes)
