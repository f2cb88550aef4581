"""log-sum-exp: log(sum_j b_j exp(x_j)) along an axis, without overflow and exact to the last bit.

The row kernel here is shared by softmax, log-softmax and cross-entropy.

For a block of rows x (rows, classes) it computes, in the precision of the output buffer,

    m     = max_j x_j                      (the first maximum, at position `first`)
    d_j   = x_j - m                        (<= 0, so exp never overflows)
    e_j   = exp(d_j)
    L     = log(sum_j e_j) = log1p(sum_{j != first} e_j)

Summing without the maximum's own term (which is exactly 1) and taking log1p is what keeps L, and with it
lse = m + L and the loss L - d_target, accurate to the last bit when one class dominates and the sum is
1 + tiny (Blanchard, Higham & Higham 2021, "Accurately computing the log-sum-exp and softmax functions").

The limits of rules 2 and 3 of docs/semantics.md are handled here, once:
- a fully masked row (every entry -inf) keeps shift 0, so e = 0 and L = -inf, never -inf - -inf = NaN;
- a row holding +inf is replaced by its limit: 0 at the +inf entries, -inf elsewhere, so the +inf
  entries share the mass equally; its log-sum-exp is +inf.
NaN anywhere in a row makes the whole row NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from softxent import _validation as v
from softxent._arrays import Rows, accurate_dtype, as_float_array, block_rows, blocks, for_row_spans


@dataclass
class Shift:
    value: np.ndarray  # per-row shift: the row max, 0 for fully masked rows and for rows holding +inf
    first: np.ndarray  # column of the first maximum (of the first NaN in a NaN row)
    masked: np.ndarray | None  # rows whose entries are all -inf, or None when there are none
    infinite: np.ndarray | None  # rows holding +inf, or None when there are none

    def lse(self, log_sum: np.ndarray) -> np.ndarray:
        """The row log-sum-exp from the shifted one: m + L, with +inf for rows holding +inf."""
        lse = self.value + log_sum
        if self.infinite is not None:
            lse[self.infinite] = np.inf
        return lse


def shift_rows(x: np.ndarray, out: np.ndarray) -> Shift:
    """out = x - max(x) row by row, in out's dtype (exact for float32 x and float64 out)."""
    first = np.argmax(x, axis=1)
    rows = np.arange(x.shape[0])
    value = x[rows, first].astype(out.dtype)
    with np.errstate(invalid="ignore"):  # NaN rows stay NaN
        special = np.isinf(value)
    masked = infinite = None
    if special.any():
        masked = np.flatnonzero(value == -np.inf)
        infinite = np.flatnonzero(value == np.inf)
        value[special] = 0.0
    # a row spanning more than the float range (1e308 and -1e308) overflows to -inf here: exp(-inf) = 0
    # is what the entry rounds to anyway, so the overflow is silenced, not an error
    with np.errstate(over="ignore"):
        np.subtract(x, value[:, None], out=out, dtype=out.dtype)
    if infinite is not None and infinite.size:
        out[infinite] = np.where(x[infinite] == np.inf, 0.0, -np.inf)
    return Shift(value, first, masked if masked is not None and masked.size else None,
                 infinite if infinite is not None and infinite.size else None)


class ExpSums(NamedTuple):
    log_sum: np.ndarray  # L = log(sum_j e_j)
    total: np.ndarray  # sum_j e_j
    rest: np.ndarray  # sum_{j != first} e_j


def exp_log_sum(shifted: np.ndarray, first: np.ndarray, out: np.ndarray) -> "ExpSums":
    """out = exp(shifted); returns L = log(sum exp(shifted)) per row (exact via log1p), the sum, and the
    sum without the max's own term (what a gradient at the max needs instead of 1 - p, which cancels).

    `out` may be `shifted` itself (in place). `first` is the column holding each row's 0 (its maximum).
    """
    np.exp(shifted, out=out)
    rows = np.arange(out.shape[0])
    top = out[rows, first].copy()  # 1, or 0 in a fully masked row, or NaN in a NaN row
    out[rows, first] = 0.0
    rest = out.sum(axis=1, dtype=np.promote_types(out.dtype, np.float64))  # float32 e summed in float64
    out[rows, first] = top
    total = top + rest
    with np.errstate(divide="ignore"):  # log(0) = -inf for fully masked rows is the intended limit
        return ExpSums(np.where(top == 1.0, np.log1p(rest), np.log(total)), total, rest)


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
