"""log-sum-exp: log(sum_j b_j exp(x_j)) along an axis, without overflow and exact to the last bit."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _validation as v
from ._arrays import Rows, accurate_dtype, as_float_array, block_rows, blocks, for_row_spans
from ._rowmath import exp_log_sum, shift_rows


def logsumexp(x: Any, axis: Any = -1, *, b: Any = None, keepdims: bool = False,
              return_sign: bool = False, where: Any = None):
    """Log of the sum of exponentials, ``log(sum_j b_j * exp(x_j))``, along `axis`.

    Computed as ``m + log1p(sum_{j != argmax} exp(x_j - m))`` with ``m = max_j x_j``: shifting by the
    max means exp never overflows, and leaving the max's own term (exactly 1) out of the sum lets log1p
    keep the result exact when one entry dominates (Blanchard, Higham & Higham 2021). float16, float32
    and float64 inputs are worked in float64 and come back in their own dtype, within 2 ulp (float32)
    and 4 ulp (float64) of the exact value for ``b=None``.

    Args:
        x: real array of any shape; integers are taken as float64.
        axis: the axis to reduce, a tuple of axes, or None for every element (as SciPy).
        b: scale factors broadcastable to `x`; entries with ``b == 0`` are left out (so ``0 * exp(inf)``
            contributes 0). A negative sum gives NaN unless `return_sign` is set, as in SciPy.
        keepdims: keep the reduced axes with length 1.
        return_sign: also return the sign of the sum (1, -1, or 0 for an empty sum).
        where: boolean mask broadcastable to `x`; False entries are left out of the sum.

    Returns:
        The log-sum-exp with `axis` reduced, in the dtype of `x`; ``(lse, sign)`` with `return_sign`.
        A fully masked or empty row gives -inf (the log of an empty sum); +inf entries give +inf;
        NaN propagates.

    Example:
        >>> import softxent as sx
        >>> float(sx.logsumexp([1.0, 2.0, 3.0]))
        3.40760596444438
        >>> float(sx.logsumexp([1000.0, 1000.0]))   # no overflow: 1000 + log 2
        1000.6931471805599
    """
    x = as_float_array(x, "x")
    axes = v.normalize_axes(axis, x.ndim)
    rows = Rows(x, axes)
    data = rows.data
    keep = _mask(rows, where, b)
    if keep is not None:
        data = np.where(keep, data, -np.inf).astype(x.dtype, copy=False)
    scale = None if b is None else rows.like(as_float_array(b, "b"))

    num_rows, num_classes = data.shape
    lse = np.full(num_rows, -np.inf, dtype=accurate_dtype(x.dtype))
    sign = np.ones(num_rows, dtype=lse.dtype)
    if num_classes:
        step = block_rows(num_classes)

        def work(start: int, stop: int) -> None:
            buffer = np.empty((min(step, stop - start), num_classes), dtype=lse.dtype)
            for block in blocks(start, stop, step):
                shifted = buffer[: block.stop - block.start]
                shift = shift_rows(data[block], shifted)
                if scale is None:
                    lse[block] = shift.lse(exp_log_sum(shifted, shift.first, shifted)[0])
                else:
                    lse[block], sign[block] = _scaled(shifted, scale[block], shift)

        for_row_spans(num_rows, num_classes, work)
    sign[lse == -np.inf] = 0.0
    result = rows.reduced(lse, keepdims).astype(x.dtype)[()]
    if return_sign:
        return result, rows.reduced(sign, keepdims).astype(x.dtype)[()]
    if b is not None:
        result = np.where(rows.reduced(sign, keepdims) < 0, np.nan, result).astype(x.dtype)[()]
    return result


def _mask(rows: Rows, where: Any, b: Any) -> np.ndarray | None:
    """Entries that take part: where True and b nonzero; None when all do."""
    keep = None
    if where is not None:
        where = np.asarray(where)
        if where.dtype != bool:
            raise TypeError(f"where must be a boolean array; got dtype {where.dtype}")
        keep = _broadcast(rows, where, "where")
    if b is not None:
        nonzero = _broadcast(rows, as_float_array(b, "b"), "b") != 0
        keep = nonzero if keep is None else keep & nonzero
    return keep


def _broadcast(rows: Rows, array: np.ndarray, name: str) -> np.ndarray:
    try:
        return rows.like(array)
    except ValueError:
        raise ValueError(f"{name} of shape {array.shape} does not broadcast to x of shape {rows.shape}") from None


def _scaled(shifted: np.ndarray, scale: np.ndarray, shift) -> tuple[np.ndarray, np.ndarray]:
    """log|sum b exp(d)| and its sign: with signed scale factors the sum may cancel, so no log1p."""
    np.exp(shifted, out=shifted)
    total = np.einsum("ij,ij->i", shifted, scale)
    with np.errstate(divide="ignore"):
        log_abs = np.log(np.abs(total))
    lse = shift.value + log_abs
    if shift.infinite is not None:  # b-weighted count of the +inf entries: +inf unless it cancels to 0
        lse[shift.infinite] = np.where(total[shift.infinite] == 0, np.nan, np.inf)
    return lse, np.sign(total)
