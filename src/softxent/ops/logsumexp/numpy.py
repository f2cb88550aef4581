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

import numbers
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, overload

import numpy as np

from softxent import _validation as v
from softxent._arrays import Rows, accurate_dtype, as_float_array, block_rows, blocks, for_row_spans
from softxent._typing import ArrayLike, Axis, FloatResult


def class_axes(axis: Axis, ndim: int) -> tuple[int, ...]:
    """The class axes, with NumPy's reductions' (and SciPy's) reading of a 0-d input: axis 0 or -1 of one
    score is that score, so ``softmax(1000)`` is 1 as in SciPy rather than an out-of-range axis."""
    if type(axis) is int and -ndim <= axis < ndim:  # one axis in range (the common case): no further checks
        return (axis % ndim,)
    if ndim == 0 and isinstance(axis, numbers.Integral) and not isinstance(axis, bool) and axis in (0, -1):
        return ()
    return v.normalize_axes(axis, ndim)


@dataclass
class Shift:
    value: np.ndarray  # per-row shift: the row max, 0 for fully masked rows and for rows holding +inf
    first: np.ndarray  # column of the first maximum (of the first NaN in a NaN row)
    masked: np.ndarray | None  # rows whose entries are all -inf, or None when there are none
    infinite: np.ndarray | None  # rows holding +inf, or None when there are none
    # flat positions (in the C-contiguous (rows, C) layout, see `flat`) of each row's start and of its
    # first maximum: NumPy gathers and scatters one entry per row several times faster by flat position
    # than by (row, column) pairs, which is much of a small problem's cost
    starts: np.ndarray | None = None
    at_first: np.ndarray | None = None

    def lse(self, log_sum: np.ndarray) -> np.ndarray:
        """The row log-sum-exp from the shifted one: m + L, with +inf for rows holding +inf."""
        lse = self.value + log_sum
        if self.infinite is not None:
            lse[self.infinite] = np.inf
        return lse


def flat(rows: np.ndarray) -> np.ndarray:
    """A C-contiguous (rows, C) array as one flat view of its memory, for `Shift`'s flat positions."""
    if not rows.flags.c_contiguous:  # a reshape would copy, and writes to the copy would be lost
        raise ValueError(f"flat positions need a C-contiguous array; got strides {rows.strides}")
    return rows.reshape(-1)


def shift_rows(x: np.ndarray, out: np.ndarray) -> Shift:
    """out = x - max(x) row by row, in out's dtype (exact for float32 x and float64 out)."""
    num_rows, num_classes = x.shape
    first = x.argmax(axis=1)
    starts = np.arange(0, num_rows * num_classes, num_classes)
    at_first = starts + first
    value = x.reshape(-1)[at_first] if x.flags.c_contiguous else x[np.arange(num_rows), first]
    if value.dtype != out.dtype:
        value = value.astype(out.dtype)
    masked = infinite = None
    special = np.isinf(value)
    if np.count_nonzero(special):  # (count_nonzero: the cheapest test, one C call)
        masked = np.flatnonzero(value == -np.inf)
        infinite = np.flatnonzero(value == np.inf)
        masked, infinite = (rows if rows.size else None for rows in (masked, infinite))
        value[special] = 0.0
    if out.dtype.itemsize > x.dtype.itemsize:  # a wider dtype holds every difference (float32 in float64)
        np.subtract(x, value[:, None], out=out)
    else:
        # a row spanning more than the float range (1e308 and -1e308) overflows to -inf here: exp(-inf)
        # = 0 is what the entry rounds to anyway, so the overflow is silenced, not an error
        with np.errstate(over="ignore"):
            np.subtract(x, value[:, None], out=out)
    if infinite is not None:
        out[infinite] = np.where(x[infinite] == np.inf, 0.0, -np.inf)
    return Shift(value, first, masked, infinite, starts, at_first)


class ExpSums(NamedTuple):
    log_sum: np.ndarray  # L = log(sum_j e_j)
    total: np.ndarray  # sum_j e_j
    rest: np.ndarray  # sum_{j != first} e_j


def exp_log_sum(shifted: np.ndarray, at_first: np.ndarray, out: np.ndarray) -> "ExpSums":
    """out = exp(shifted); returns L = log(sum exp(shifted)) per row (exact via log1p), the sum, and the
    sum without the max's own term (what a gradient at the max needs instead of 1 - p, which cancels).

    `out` (C-contiguous) may be `shifted` itself (in place). `at_first` holds the flat positions of each
    row's 0, its maximum (`Shift.at_first`).
    """
    np.exp(shifted, out=out)
    entries = flat(out)
    top = entries[at_first]  # (a copy) 1, or 0 in a fully masked row, or NaN in a NaN row
    entries[at_first] = 0.0
    rest = out.sum(axis=1, dtype=np.float64 if out.dtype == np.float32 else None)  # float32 e summed in float64
    entries[at_first] = top
    total = top + rest
    log_sum = np.log1p(rest)  # the sum is 1 + rest
    odd = top != 1.0  # fully masked rows (top 0: log 0 = -inf, the intended limit) and NaN rows
    if np.count_nonzero(odd):
        with np.errstate(divide="ignore"):
            log_sum[odd] = np.log(total[odd])
    return ExpSums(log_sum, total, rest)


@overload
def logsumexp(x: ArrayLike, axis: Axis = -1, *, b: ArrayLike | None = None, keepdims: bool = False,
              return_sign: Literal[False] = False, where: ArrayLike | None = None) -> FloatResult: ...
@overload
def logsumexp(x: ArrayLike, axis: Axis = -1, *, b: ArrayLike | None = None, keepdims: bool = False,
              return_sign: Literal[True], where: ArrayLike | None = None) -> tuple[FloatResult, FloatResult]: ...
@overload
def logsumexp(x: ArrayLike, axis: Axis = -1, *, b: ArrayLike | None = None, keepdims: bool = False,
              return_sign: bool = False, where: ArrayLike | None = None
              ) -> FloatResult | tuple[FloatResult, FloatResult]: ...
def logsumexp(x: ArrayLike, axis: Axis = -1, *, b: ArrayLike | None = None, keepdims: bool = False,
              return_sign: bool = False, where: ArrayLike | None = None
              ) -> FloatResult | tuple[FloatResult, FloatResult]:
    """Log of the sum of exponentials, ``log(sum_j b_j * exp(x_j))``, along `axis`.

    Computed as ``m + log1p(sum_{j != argmax} exp(x_j - m))`` with ``m = max_j x_j``: shifting by the
    max means exp never overflows, and leaving the max's own term (exactly 1) out of the sum lets log1p
    keep the result exact when one entry dominates (Blanchard, Higham & Higham 2021). float16, float32
    and float64 inputs are worked in float64 and come back in their own dtype, within 2 ulp (float32)
    and 4 ulp (float64) of the exact value for ``b=None``.

    Args:
        x: real array of any shape; integers are taken as float64.
        axis: the axis to reduce, a tuple of axes, or None for every element (as SciPy).
        b: scale factors that broadcast with `x` (the sum then runs over the broadcast shape, as in
            SciPy); entries with ``b == 0`` are left out (so ``0 * exp(inf)`` contributes 0). A negative
            sum gives NaN unless `return_sign` is set, as in SciPy.
        keepdims: keep the reduced axes with length 1.
        return_sign: also return the sign of the sum (1, -1, or 0 for an empty sum).
        where: boolean mask broadcastable to `x` (to its broadcast with `b`); False entries are left out
            of the sum.

    Returns:
        The log-sum-exp with `axis` reduced, in the dtype of `x` (with `b`, NumPy's result type of `x`
        and `b`); ``(lse, sign)`` with `return_sign`. Reducing every axis gives a NumPy scalar.
        A fully masked or empty row gives -inf (the log of an empty sum); +inf entries give +inf;
        NaN propagates.

    Example:
        >>> import softxent as sx
        >>> float(sx.logsumexp([1.0, 2.0, 3.0]))
        3.40760596444438
        >>> float(sx.logsumexp([1000.0, 1000.0]))   # no overflow: 1000 + log 2
        1000.6931471805599
    """
    given = x
    x = as_float_array(x, "x")
    dtype = x.dtype
    if b is not None:
        # as SciPy: x and b broadcast together (b may enlarge x), and the result has NumPy's result type
        # of the two (float32 x with float64 or int32 b gives float64)
        scale_given = b
        b = as_float_array(b, "b")
        dtype = _result_dtype(given, x, scale_given, b)
        try:
            shape = np.broadcast_shapes(x.shape, b.shape)
        except ValueError:
            raise ValueError(f"b of shape {b.shape} does not broadcast with x of shape {x.shape}") from None
        x = np.broadcast_to(x, shape)
    axes = class_axes(axis, x.ndim)
    rows = Rows(x, axes)
    data = rows.data
    keep = _mask(rows, where, b)
    if keep is not None:
        data = np.where(keep, data, -np.inf).astype(x.dtype, copy=False)
    scale = None if b is None else rows.like(b)

    num_rows, num_classes = data.shape
    lse = np.full(num_rows, -np.inf, dtype=accurate_dtype(dtype))
    sign = np.ones(num_rows, dtype=lse.dtype)
    if num_classes:
        step = block_rows(num_classes)

        def work(start: int, stop: int) -> None:
            buffer = np.empty((min(step, stop - start), num_classes), dtype=lse.dtype)
            for block in blocks(start, stop, step):
                shifted = buffer[: block.stop - block.start]
                shift = shift_rows(data[block], shifted)
                if scale is None:
                    lse[block] = shift.lse(exp_log_sum(shifted, shift.at_first, shifted)[0])
                else:
                    lse[block], sign[block] = _scaled(data[block], shifted, scale[block], shift)

        for_row_spans(num_rows, num_classes, work)
    sign[lse == -np.inf] = 0.0
    result = rows.reduced(lse, keepdims).astype(dtype)[()]
    if return_sign:
        return result, rows.reduced(sign, keepdims).astype(dtype)[()]
    if b is not None:
        result = np.where(rows.reduced(sign, keepdims) < 0, np.nan, result).astype(dtype)[()]
    return result


def _result_dtype(x_given: Any, x: np.ndarray, b_given: Any, b: np.ndarray) -> np.dtype:
    """NumPy's result type of x and b as the caller gave them, floating (integers alone give float64).

    The given dtypes count, not those after conversion: float16 x with int8 b is float16 in NumPy, while
    int8 converted to float64 would make it float64. A Python scalar is weak, as in NumPy (NEP 50).
    """
    def given_dtype(given: Any, converted: np.ndarray) -> Any:
        if isinstance(given, (np.ndarray, np.generic)):
            return given.dtype
        if isinstance(given, (int, float)) and not isinstance(given, bool):
            return given
        return converted.dtype  # a list: NumPy makes it int64 or float64, whose promotion is the same

    dtype = np.result_type(given_dtype(x_given, x), given_dtype(b_given, b))
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def _mask(rows: Rows, where: Any, b: Any) -> np.ndarray | None:
    """Entries that take part: where True and b nonzero; None when all do."""
    keep = None
    if where is not None:
        where = np.asarray(where)
        if where.dtype != bool:
            raise TypeError(f"where must be a boolean array; got dtype {where.dtype}")
        keep = _broadcast(rows, where, "where")
    if b is not None:
        nonzero = rows.like(b) != 0
        keep = nonzero if keep is None else keep & nonzero
    return keep


def _broadcast(rows: Rows, array: np.ndarray, name: str) -> np.ndarray:
    try:
        return rows.like(array)
    except ValueError:
        raise ValueError(f"{name} of shape {array.shape} does not broadcast to x of shape {rows.shape}") from None


def _scaled(x: np.ndarray, shifted: np.ndarray, scale: np.ndarray, shift: Shift
            ) -> tuple[np.ndarray, np.ndarray]:
    """log|sum_j b_j exp(d_j)| and its sign, row by row (`shifted` holds d and is overwritten).

    With t_j = b_j exp(x_j - m) and t_k the term of largest magnitude, the sum is t_k (1 + r) with
    r = sum_{j != k} t_j / t_k, so lse = x_k + log|b_k| + log1p(r): exact when t_k dominates (as the
    b = None path: with b_k = 1 it is x_k + log1p(r)), since the sum 1 + tiny never rounds to 1, and
    x_k is taken as given rather than as m + log(exp(x_k - m)), which would cancel when k is not the
    arg max of x (b = [1, -0.01] at x = [0, 1]). When r <= -1 the terms cancel past t_k (the sum's sign
    is not t_k's, or it is 0), and log|sum| is taken as it is: no formula recovers digits that
    cancellation has lost.
    """
    terms = np.multiply(np.exp(shifted, out=shifted), scale, out=shifted)
    rows = np.arange(terms.shape[0])
    pivot = np.argmax(np.abs(terms), axis=1)  # the first NaN in a NaN row
    top = terms[rows, pivot].copy()
    terms[rows, pivot] = 0.0
    rest = terms.sum(axis=1)
    total = top + rest
    # top = 0 only when every term is (a fully masked row): r = 0/0 is NaN, the fallback gives log 0 =
    # -inf; NaN rows give NaN either way
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = rest / top
        # x_k and b_k in the working precision: log of a float32 b_k in float32 would cost float64 digits
        x_k, b_k = (a[rows, pivot].astype(terms.dtype) for a in (x, scale))
        lse = np.where(ratio > -1.0, x_k + np.log(np.abs(b_k)) + np.log1p(ratio),
                       shift.value + np.log(np.abs(total)))
    if shift.infinite is not None:  # b-weighted count of the +inf entries: +inf unless it cancels to 0
        lse[shift.infinite] = np.where(total[shift.infinite] == 0, np.nan, np.inf)
    return lse, np.sign(total)
