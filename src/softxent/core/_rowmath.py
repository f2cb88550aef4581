"""The row kernel behind softmax, log-softmax, log-sum-exp and cross-entropy.

For a block of rows x (rows, classes) it computes, in the precision of the output buffer,

    m     = max_j x_j                      (the first maximum, at position `first`)
    d_j   = x_j - m                        (<= 0, so exp never overflows)
    e_j   = exp(d_j)
    L     = log(sum_j e_j) = log1p(sum_{j != first} e_j)

Summing without the maximum's own term (which is exactly 1) and taking log1p is what keeps L, and with it
lse = m + L and the loss L - d_target, accurate to the last bit when one class dominates and the sum is
1 + tiny (Blanchard, Higham & Higham 2021, "Accurately computing the log-sum-exp and softmax functions").

The limits of API.md rules 2 and 3 are handled here, once:
- a fully masked row (every entry -inf) keeps shift 0, so e = 0 and L = -inf, never -inf - -inf = NaN;
- a row holding +inf is replaced by its limit: 0 at the +inf entries, -inf elsewhere, so the +inf
  entries share the mass equally; its log-sum-exp is +inf.
NaN anywhere in a row makes the whole row NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def exp_log_sum(shifted: np.ndarray, first: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """out = exp(shifted); returns L = log(sum exp(shifted)) per row, exact via log1p, and the sum.

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
        return np.where(top == 1.0, np.log1p(rest), np.log(total)), total
