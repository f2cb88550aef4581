"""acc += a @ b into a float32 accumulator from 16-bit factors, without a full-size float32 temporary.

The weight gradient of a 16-bit LLM head is a sum over chunks of rows; rounding each chunk's share to
bfloat16 loses the small ones, so it is accumulated in float32. On CUDA one GEMM with a float32 output
does it (``torch.addmm(..., out_dtype=torch.float32)``, cuBLAS accumulating in float32). Where that
overload is missing (the CPU, older torch), the product goes through in slices of acc's rows, each
slice's factors widened to float32: the temporaries are a slice, never acc's size.
"""

from __future__ import annotations

import torch

_FP32_ADDMM: dict[str, bool] = {}  # device type -> whether addmm(..., out_dtype=float32, out=acc) works


def addmm_float32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slice_rows: int) -> None:
    """acc += a @ b, acc float32 and (rows, cols); a (rows, k) and b (k, cols) 16-bit."""
    kind = acc.device.type
    if _FP32_ADDMM.get(kind, True):
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            _FP32_ADDMM[kind] = True
            return
        except (TypeError, RuntimeError, NotImplementedError):
            if kind in _FP32_ADDMM:  # it worked before: this is a real error
                raise
            _FP32_ADDMM[kind] = False
    b32 = b.float()
    for lo in range(0, acc.shape[0], slice_rows):
        hi = min(lo + slice_rows, acc.shape[0])
        acc[lo:hi].addmm_(a[lo:hi].float(), b32)


def has_float32_addmm(device_type: str) -> bool | None:
    """Whether the one-GEMM path ran on this device type (None: not tried yet)."""
    return _FP32_ADDMM.get(device_type)


def fold_chunk(dlogits: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dx: torch.Tensor | None,
               dw: torch.Tensor | None, db: torch.Tensor | None, *, wide: bool, slice_rows: int,
               acc: torch.dtype) -> None:
    """A chunk's d(loss)/d(logits) into a linear head's gradients, for the linear form of every loss:
    dx = dlogits W (dx: the chunk's rows), dw += dlogits^T x (in float32 from 16-bit factors when `wide`),
    db += the column sums of dlogits (in `acc`). A None gradient is not wanted."""
    if dx is not None:
        torch.mm(dlogits, weight, out=dx)
    if dw is not None:
        if wide:  # 16-bit: the chunk's product accumulated in float32
            addmm_float32_(dw, dlogits.t(), x, slice_rows)
        else:
            dw.addmm_(dlogits.t(), x)
    if db is not None:
        db += dlogits.sum(dim=0, dtype=acc)
