"""The adversarial exactness set: rows of logits that break naive softmax code, with exact answers.

Each case is a row of logits, a target class and a name. The exact log-sum-exp, log-softmax and loss
come from mpmath at 50 significant digits, computed from the row's float values (exactly representable,
so the only rounding is ours). Long rows (1e6 classes) draw their entries from a pool of 4096 distinct
values, shuffled: the code under test still sums a million terms in its own order, while the oracle
sums ``count(v) * exp(v)`` over the distinct values, which keeps it to milliseconds.

Used by tests/test_numpy_exactness.py (softxent's bounds) and benchmarks/accuracy_peers.py (the same
errors for SciPy and torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mpmath
import numpy as np

DIGITS = 50


@dataclass
class Case:
    name: str
    logits: np.ndarray  # one row, in the case's dtype
    target: int
    _exact: dict = field(default_factory=dict, repr=False)

    @property
    def dtype(self) -> str:
        return str(self.logits.dtype)

    def _distinct(self):
        values, counts = np.unique(self.logits, return_counts=True)
        return [(mpmath.mpf(float(v)), int(c)) for v, c in zip(values, counts)]

    def _top_and_log_sum(self):
        """max m and log(sum exp(x - m)) = log1p(sum of the non-max terms): 1 + 1e-322 needs log1p even
        at 50 digits, and lse - x_j needs (m - x_j) + log1p(...) since m may be 1e300."""
        if "top" not in self._exact:
            with mpmath.workdps(DIGITS):
                finite = [(v, c) for v, c in self._distinct() if mpmath.isfinite(v)]
                top = max(v for v, _ in finite)
                rest = mpmath.fsum((c - (v == top)) * mpmath.exp(v - top) for v, c in finite)
                self._exact["top"] = (top, mpmath.log1p(rest))
        return self._exact["top"]

    def exact_lse(self) -> mpmath.mpf:
        top, log_sum = self._top_and_log_sum()
        with mpmath.workdps(DIGITS):
            return top + log_sum

    def exact_log_softmax_of(self, value: float) -> mpmath.mpf:
        """The exact log-softmax of an entry holding `value` (the same for every entry that holds it)."""
        if not np.isfinite(value):
            return mpmath.mpf("-inf")
        top, log_sum = self._top_and_log_sum()
        with mpmath.workdps(2000):  # x - m exactly, whatever the exponents
            shifted = mpmath.mpf(float(value)) - top
        with mpmath.workdps(DIGITS):
            return shifted - log_sum

    def exact_loss(self) -> mpmath.mpf:
        return -self.exact_log_softmax_of(float(self.logits[self.target]))

    def log_softmax_ulp_errors(self, result: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distinct logits, worst ulp error of `result` over the entries holding each): entries holding the
        same logit share one exact log-softmax, so the extremes of their outputs are checked against it."""
        from compare import ulp_error

        values, inverse = np.unique(self.logits, return_inverse=True)
        lowest = np.full(values.shape, np.inf, dtype=result.dtype)
        highest = np.full(values.shape, -np.inf, dtype=result.dtype)
        np.minimum.at(lowest, inverse, result)
        np.maximum.at(highest, inverse, result)
        exact = [self.exact_log_softmax_of(float(v)) for v in values]
        return values, np.maximum(ulp_error(lowest, exact), ulp_error(highest, exact))


def _row(values, dtype) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(dtype)


def _long_row(dtype, size: int, rng: np.random.Generator, scale: float, dominant: float | None = None):
    pool = rng.standard_normal(4096) * scale
    row = rng.choice(pool, size=size).astype(dtype)
    if dominant is not None:
        row[size // 3] = dominant
    return row


def cases(dtype: str, long_rows: bool = True) -> list[Case]:
    """The adversarial rows for float32 or float64 (the ranges scale with the dtype's)."""
    rng = np.random.default_rng(20261123)
    big = 1e30 if dtype == "float32" else 1e300
    tiny = 1e-30 if dtype == "float32" else 1e-300
    subnormal = float(np.finfo(dtype).smallest_subnormal)
    # the gap that puts the smaller probability among the subnormals of the dtype
    underflow = 100.0 if dtype == "float32" else 740.0
    # a gap with exp(-gap) around 1e-10 (float32) or 1e-17 (float64): the loss of a dominant target
    dominant = 23.0 if dtype == "float32" else 39.0
    inf = np.inf
    out = [
        Case("textbook", _row([1, 2, 3], dtype), 2),
        Case("textbook-wrong", _row([1, 2, 3], dtype), 0),
        Case("huge", _row([big, 0.5 * big, -big], dtype), 1),
        Case("huge-tie", _row([big, big], dtype), 0),
        Case("huge-negative", _row([-big, -big, -2 * big], dtype), 0),
        Case("tiny", _row([tiny, -tiny, subnormal, 0.0], dtype), 2),
        Case("dominant-target", _row([dominant, 0.0, -1.5], dtype), 0),
        Case("dominant-target-3", _row([dominant + 7, 7, 5, -3], dtype), 0),
        Case("dominant-other", _row([dominant, 0.0, -1.5], dtype), 1),
        Case("near-tie", _row([1.0, np.nextafter(1.0, 2.0, dtype=np.float64), 0.5], dtype), 0),
        Case("ties", np.zeros(1000, dtype=dtype), 7),
        Case("ties-at-max", _row([5, 5, 5, -1], dtype), 3),
        Case("masked", _row([0.0, -inf, 1.0, -inf], dtype), 2),
        Case("masked-target-far", _row([0.0, -inf, 1.0, -inf, -50.0], dtype), 4),
        Case("subnormal-probability", _row([0.0, -underflow, -underflow - 3.9], dtype), 1),
        Case("subnormal-probability-target", _row([0.0, -underflow, -underflow - 3.9], dtype), 2),
        Case("wide-range", (rng.standard_normal(257) * 1e3).astype(dtype), 100),
        Case("negative-shift", (rng.standard_normal(64) - 1e4).astype(dtype), 5),
        Case("positive-shift", (rng.standard_normal(64) * 0.01 + 3e3).astype(dtype), 9),
    ]
    if dtype == "float32":
        # lse = -log2 + log 2 ~ 1e-8: a cancellation, well conditioned only because float32 inputs are
        # worked in float64 (for float64 inputs it would need double-double arithmetic)
        out.append(Case("lse-near-zero", _row([-np.log(2.0), -np.log(2.0)], dtype), 0))
    if long_rows:
        out.append(Case("long-row", _long_row(dtype, 1_000_000, rng, 2.0), 12345))
        out.append(Case("long-row-dominant", _long_row(dtype, 1_000_000, rng, 1.0, dominant=40.0), 333333))
    return out
