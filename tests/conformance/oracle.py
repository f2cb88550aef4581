"""Exact answers for the conformance suite: mpmath values and gradients, and a vectorised ulp distance.

How the constants are made: every input is a float32/float64 array, and each of its entries is a binary
number that mpmath holds exactly (``mpf(float(v))``). Everything after that runs in mpmath at DIGITS
significant digits: the softcap ``c tanh(x / c)``, the max shift and the temperature ``(x - max) / T``
(the same number as ``x / T - max(x / T)`` in exact arithmetic, so the oracle cannot tell the order, the
layers can), ``exp``, the row sums, ``log1p``, the smoothing coefficients and the reduction. Two places
would cancel even at 60 digits and are written so they don't:

- ``1 - p_j`` (the target's ``p_t - 1``) is ``(S - e_j) / S`` with ``S - e_j`` summed from the other
  terms, never ``1 - p_j``: for float64 logits [0, -740, ...] it is 4e-322, below 60 digits of 1.
- ``-log p_j`` is ``log1p(rest) - s_j`` where ``rest`` is the sum of the row's terms other than its
  first maximum (the maximum's term is exactly 1).

The exact numbers come back as pairs of float64 arrays (hi, lo) with hi + lo equal to the exact value
to about 106 bits, which is what `ulp_distance` needs to measure float64 results to a fraction of an ulp
without calling mpmath per entry (1e6-class rows stay fast).
"""

from __future__ import annotations

from dataclasses import dataclass

import mpmath
import numpy as np

DIGITS = 60
mp = mpmath.mp
INF = mpmath.mpf("inf")


# --- exact numbers as float64 pairs and the ulp distance -------------------------------------------------

@dataclass
class Exact:
    """An exact array as hi + lo (float64 each); NaN in hi where the exact value is NaN."""

    hi: np.ndarray
    lo: np.ndarray

    @property
    def shape(self):
        return self.hi.shape


def to_exact(values) -> Exact:
    """An array (any shape, object dtype or nested lists) of mpf or floats, as hi + lo float64 pairs."""
    values = np.asarray(values, dtype=object)
    hi = np.empty(values.shape, dtype=np.float64)
    lo = np.zeros(values.shape, dtype=np.float64)
    with mpmath.workdps(DIGITS):
        for i, v in enumerate(values.flat):
            v = mpmath.mpf(v)
            if mpmath.isnan(v):
                hi.flat[i] = np.nan
            elif mpmath.isinf(v):
                hi.flat[i] = float(v)
            else:
                h = float(v)
                hi.flat[i] = h
                lo.flat[i] = float(v - mpmath.mpf(h)) if np.isfinite(h) else 0.0
    return Exact(hi, lo)


def ulp_distance(actual, exact: Exact, dtype) -> np.ndarray:
    """|actual - exact| in units of the last place of `dtype` at the exact value (0 where both are the
    same infinity or both NaN; inf where only one is). The spacing of 0 is the smallest subnormal."""
    dtype = np.dtype(dtype)
    a = np.asarray(actual, dtype=np.float64)
    assert a.shape == exact.shape, f"shape {a.shape} != exact {exact.shape}"
    hi, lo = exact.hi, exact.lo
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where both are infinite: masked below
        # a - hi is exact when a and hi are within a factor 2 (Sterbenz); farther off, its rounding is
        # far below the error it measures
        difference = np.abs((a - hi) - lo)
        rounded = np.abs(hi.astype(dtype)).astype(dtype)
        spacing = np.where(rounded == 0, float(np.finfo(dtype).smallest_subnormal),
                           np.spacing(rounded).astype(np.float64))
        distance = difference / spacing
        # an exact value beyond the dtype's range rounds to its infinity: that is the exact result there
        target = np.where(np.isfinite(hi) & np.isinf(rounded), np.copysign(np.inf, hi), hi)
    nonfinite = ~np.isfinite(a) | ~np.isfinite(target)
    same = (a == target) | (np.isnan(a) & np.isnan(target))
    return np.where(nonfinite, np.where(same, 0.0, np.inf), distance)


# --- one row of the softmax family --------------------------------------------------------------------------

class Row:
    """The exact softmax statistics of z = softcap-then-temperature(x) for one row of logits.

    kind: "finite" (a finite maximum), "masked" (every entry -inf) or "posinf" (k entries +inf: the
    softmax is the limit, 1/k on each, API rule 3). For a "finite" row, with m = max of the capped row:
    s_j = (capped_j - m) / T, e_j = exp(s_j) (the first maximum's is 1), S = sum e_j,
    rest = S - 1 (summed without the 1), lse = m / T + log1p(rest).
    """

    def __init__(self, x: np.ndarray, softcap: float | None = None, temperature: float = 1.0):
        self.n = len(x)
        T = mpmath.mpf(float(temperature))
        self.T = T
        capped, self.tanh = [], []
        for v in x:
            v = v if isinstance(v, mpmath.mpf) else mpmath.mpf(float(v))
            if softcap is not None and v != -INF:  # -inf is a mask and stays one (the NumPy layer's rule)
                c = mpmath.mpf(float(softcap))
                t = mpmath.tanh(v / c)
                capped.append(c * t)
                self.tanh.append(t)
            else:
                capped.append(v)
                self.tanh.append(None)
        self.capped = capped
        positive = [j for j, v in enumerate(capped) if v == INF]
        finite = [j for j, v in enumerate(capped) if mpmath.isfinite(v)]
        if positive:
            self.kind, self.k, self.positive = "posinf", len(positive), set(positive)
            return
        if not finite:
            self.kind = "masked"
            return
        self.kind = "finite"
        m = max(capped[j] for j in finite)
        self.top = next(j for j in finite if capped[j] == m)
        self.s = [(v - m) / T if mpmath.isfinite(v) else -INF for v in capped]
        self.e = [mpmath.exp(s) if mpmath.isfinite(s) else mpmath.mpf(0) for s in self.s]
        self.e[self.top] = mpmath.mpf(1)
        self.rest = mpmath.fsum(e for j, e in enumerate(self.e) if j != self.top)
        self.S = 1 + self.rest
        self.log_sum = mpmath.log1p(self.rest)
        self.lse_value = m / T + self.log_sum

    # values
    def lse(self):
        if self.kind == "masked":
            return -INF
        if self.kind == "posinf":
            return INF
        return self.lse_value

    def p(self, j):
        if self.kind == "masked":
            return mpmath.mpf(0)
        if self.kind == "posinf":
            return mpmath.mpf(1) / self.k if j in self.positive else mpmath.mpf(0)
        return self.e[j] / self.S

    def one_minus_p(self, j):
        """1 - p_j without cancellation: the other terms' sum over S."""
        if self.kind != "finite":
            return 1 - self.p(j)
        if j == self.top:
            return self.rest / self.S
        return (self.S - self.e[j]) / self.S  # >= 1 / S: S - e_j >= 1 holds the maximum's term

    def neg_log_p(self, j):
        """-log softmax_j (+inf where p_j = 0)."""
        if self.kind == "masked":
            return INF
        if self.kind == "posinf":
            return mpmath.log(self.k) if j in self.positive else INF
        if self.s[j] == -INF:
            return INF
        return self.log_sum - self.s[j]

    def chain(self, j):
        """dz_j / dx_j: 1/T, times 1 - tanh^2 under a softcap; 0 at a -inf mask."""
        if self.capped[j] == -INF:
            return mpmath.mpf(0)
        t = self.tanh[j]
        return (1 - t * t) / self.T if t is not None else 1 / self.T


def _rows(x: np.ndarray, softcap=None, temperature=1.0) -> list[Row]:
    return [Row(row, softcap, temperature) for row in x.reshape(-1, x.shape[-1])]


def _constant(row: Row) -> bool:
    """Masked and +inf rows are constant in x: every gradient entry 0 (API rule 2; the +inf limit)."""
    return row.kind != "finite"


def softmax_family(x: np.ndarray, name: str, upstream: np.ndarray, temperature: float = 1.0) -> dict:
    """Exact value and vector-Jacobian product of logsumexp, log_softmax or softmax over the last axis.

    upstream: (N,) for logsumexp, (N, C) otherwise, float64 holding values of the case's dtype (every
    layer receives the very same numbers). The gradient of logsumexp is g * softmax (the +inf limit
    included, as softmax is the gradient of logsumexp); softmax and log_softmax rows that are masked or
    hold +inf are constant in x: gradient 0 (API rule 2 and the limit of rule 3).
    """
    with mpmath.workdps(DIGITS):
        rows = _rows(x, temperature=temperature)
        c = x.shape[-1]
        G = upstream.reshape(len(rows), -1) if len(rows) else np.zeros((0, 1))
        if name == "logsumexp":
            return {"value": to_exact(np.asarray([r.lse() for r in rows], dtype=object).reshape(x.shape[:-1])),
                    "d_x": to_exact(np.asarray([[mpmath.mpf(float(G[i, 0])) * r.p(j) for j in range(c)]
                                                for i, r in enumerate(rows)], dtype=object).reshape(x.shape))}
        # scale: the magnitude of the terms each gradient entry adds, |g_j| + p_j |sum g| (log_softmax) or
        # p_j (|g_j| + |p . g|) (softmax), over T: a vjp with a random upstream cancels wherever the terms
        # nearly meet, whatever the algorithm, so its entries are held to 4 ulp of the result or 4 eps of
        # these terms, whichever is larger
        grads, scale = [], np.zeros(x.shape, dtype=np.float64).reshape(len(rows), c)
        for i, r in enumerate(rows):
            g = [mpmath.mpf(float(v)) for v in G[i]]
            if _constant(r):
                grads.append([mpmath.mpf(0)] * c)
            elif name == "log_softmax":  # g_j - p_j sum_k g_k, over T
                total = mpmath.fsum(g)
                grads.append([(g[j] - r.p(j) * total) / r.T for j in range(c)])
                scale[i] = [float((abs(g[j]) + r.p(j) * abs(total)) / r.T) for j in range(c)]
            else:  # p_j (g_j - sum_k p_k g_k), over T
                dot = mpmath.fsum(r.p(j) * g[j] for j in range(c))
                grads.append([r.p(j) * (g[j] - dot) / r.T for j in range(c)])
                scale[i] = [float(r.p(j) * (abs(g[j]) + abs(dot)) / r.T) for j in range(c)]
        if name == "log_softmax":
            values = [[-r.neg_log_p(j) for j in range(c)] for r in rows]
        else:
            values = [[r.p(j) for j in range(c)] for r in rows]
        return {"value": to_exact(np.asarray(values, dtype=object).reshape(x.shape)),
                "d_x": to_exact(np.asarray(grads, dtype=object).reshape(x.shape)), "scale:d_x": scale.reshape(x.shape)}


# --- cross-entropy ------------------------------------------------------------------------------------------

def _mpf_or_none(array):
    return None if array is None else [mpmath.mpf(float(v)) for v in np.ravel(array)]


def cross_entropy_exact(x: np.ndarray, target: np.ndarray, upstream: np.ndarray, *, weight=None,
                        ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                        temperature=1.0, return_logits_grad=True):
    """The exact loss and d(upstream . loss)/dx of softxent's cross-entropy, classes on the last axis.

    Per row, with coefficients a (class index t: ``(1 - e) w_t [j = t] + (e / C) w_j``; probabilities
    p: ``((1 - e) p_j + e / C) w_j``) and A = sum_j a_j (PyTorch's label smoothing, API rule 6):
    ``loss = sum_j a_j (-log p_j) + z lse^2`` with 0 * inf = 0 (rule 4), and
    ``dloss/dz_j = A p_j - a_j + 2 z lse p_j``, written ``(A - a_j) p_j - a_j (1 - p_j)`` so that the
    target's ``p_t - 1`` keeps its digits. "mean" divides by sum w_t over the rows not ignored (the
    number of rows for probabilities); a zero denominator gives 0. Ignored rows give 0; fully masked
    rows give 0 and are counted; +inf rows have the limit softmax and the gradient A p - a.
    """
    with mpmath.workdps(DIGITS):
        c = x.shape[-1]
        xr = x.reshape(-1, c)
        probs = np.issubdtype(np.asarray(target).dtype, np.floating)
        tr = np.asarray(target).reshape(-1, c) if probs else np.asarray(target).reshape(-1)
        rows = _rows(xr, softcap, temperature)
        w = _mpf_or_none(weight) or [mpmath.mpf(1)] * c
        e = mpmath.mpf(float(label_smoothing))
        zl = mpmath.mpf(float(z_loss))
        losses, grads, denominator = [], [], mpmath.mpf(0)
        for i, r in enumerate(rows):
            if probs:
                a = [((1 - e) * mpmath.mpf(float(tr[i, j])) + e / c) * w[j] for j in range(c)]
                denominator += 1
            else:
                t = int(tr[i])
                if t == ignore_index:
                    losses.append(mpmath.mpf(0))
                    grads.append([mpmath.mpf(0)] * c)
                    continue
                a = [(e / c) * w[j] for j in range(c)]
                a[t] += (1 - e) * w[t]
                denominator += w[t]
            if r.kind == "masked":
                losses.append(mpmath.mpf(0))
                grads.append([mpmath.mpf(0)] * c)
                continue
            A = mpmath.fsum(a)
            loss = mpmath.fsum(a[j] * r.neg_log_p(j) for j in range(c) if a[j] != 0)
            if zl != 0:
                loss += zl * r.lse() ** 2
            losses.append(loss)
            if r.kind == "posinf":
                grads.append([A * r.p(j) - a[j] for j in range(c)])
                continue
            row_grad = []
            for j in range(c):
                dz = (A - a[j]) * r.p(j) - a[j] * r.one_minus_p(j)
                if zl != 0:
                    dz += 2 * zl * r.lse() * r.p(j)
                row_grad.append(dz * r.chain(j))
            grads.append(row_grad)
        g = [mpmath.mpf(float(v)) for v in np.ravel(upstream)]
        if reduction == "none":
            value = losses
            grad = [[g[i] * d for d in row] for i, row in enumerate(grads)]
        else:
            scale = mpmath.mpf(1)
            if reduction == "mean":
                scale = 1 / denominator if denominator != 0 else mpmath.mpf(0)
            total = mpmath.fsum(losses)
            value = total * scale if scale != 0 else mpmath.mpf(0)
            grad = [[g[0] * scale * d for d in row] for row in grads]
        batch = x.shape[:-1]
        value = np.asarray(value, dtype=object).reshape(batch if reduction == "none" else ())
        grad = np.asarray(grad, dtype=object).reshape(x.shape)
        return value, grad


def cross_entropy_family(x, target, upstream, **options) -> dict:
    value, grad = cross_entropy_exact(x, target, upstream, **options)
    return {"value": to_exact(value), "d_x": to_exact(grad)}


def linear_cross_entropy_family(x, w, b, target, upstream, **options) -> dict:
    """logits = x @ w.T + b exactly (mpmath), their exact loss, then dx = G w, dw = G^T x, db = sum G."""
    with mpmath.workdps(DIGITS):
        X = mpmath.matrix([[mpmath.mpf(float(v)) for v in row] for row in x]) if len(x) else None
        W = mpmath.matrix([[mpmath.mpf(float(v)) for v in row] for row in w])
        n, c, d = x.shape[0], w.shape[0], w.shape[1]
        logits = np.empty((n, c), dtype=object)
        for i in range(n):
            for j in range(c):
                z = mpmath.fsum(X[i, k] * W[j, k] for k in range(d))
                logits[i, j] = z + (mpmath.mpf(float(b[j])) if b is not None else 0)
        value, G = cross_entropy_exact(logits, target, upstream, **options)  # Row takes mpf entries as they are
        dx = [[mpmath.fsum(G[i, j] * W[j, k] for j in range(c)) for k in range(d)] for i in range(n)]
        dw = [[mpmath.fsum(G[i, j] * X[i, k] for i in range(n)) for k in range(d)] for j in range(c)]
        out = {"value": to_exact(value), "d_x": to_exact(np.asarray(dx, dtype=object).reshape(n, d)),
               "d_w": to_exact(np.asarray(dw, dtype=object).reshape(c, d))}
        if b is not None:
            out["d_b"] = to_exact([mpmath.fsum(G[i, j] for i in range(n)) for j in range(c)])
        return out
