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


# --- token log-probabilities and entropy --------------------------------------------------------------------

def _entropy(row: Row):
    """H = sum_j p_j (-log p_j) of the row's softmax, 0 log 0 = 0 (log k for k +inf entries)."""
    return mpmath.fsum(row.p(j) * row.neg_log_p(j) for j in range(row.n) if row.p(j) != 0)


def exact_log_prob_and_entropy(row: np.ndarray, t: int, temperature: float = 1.0, softcap: float | None = None):
    """(log p_t, H) of one finite row of logits, as mpmath numbers at DIGITS digits."""
    with mpmath.workdps(DIGITS):
        r = Row(row, softcap, temperature)
        return -r.neg_log_p(t), _entropy(r)


def token_log_probs_family(x: np.ndarray, target: np.ndarray, upstream: np.ndarray, upstream_entropy=None, *,
                           temperature: float = 1.0, softcap: float | None = None, ignore_index: int = -100,
                           return_entropy: bool = True) -> dict:
    """Exact log p_t and H per row, and the gradient of ``g . log p + h . H`` (g, h the upstreams).

    From first principles, on the scores s of `Row`: d log p_t / ds_j = [j = t] - p_j (the target's
    1 - p_t without cancellation: `Row.one_minus_p`), dH / ds_j = p_j (-log p_j - H); then the chain
    rule to the logits (`Row.chain`: 1/T, the soft cap's 1 - tanh^2, 0 at a -inf mask). Ignored and
    fully masked rows give 0 and a zero gradient; +inf rows the limit (p = 1/k on the +inf entries, H =
    log k). "scale:d_x" is the size of the terms each entry adds, |g| |[j = t] - p_j| + |h| p_j (-d_j + E)
    with d the shifted scores and E = H - L: a random upstream makes the two parts cancel wherever they
    nearly meet, whatever the algorithm (as softmax_family's).
    """
    with mpmath.workdps(DIGITS):
        c = x.shape[-1]
        rows = _rows(x, softcap, temperature)
        labels = np.asarray(target).reshape(-1)
        g = [mpmath.mpf(float(v)) for v in np.ravel(upstream)]
        h = [mpmath.mpf(float(v)) for v in np.ravel(upstream_entropy)] if return_entropy else [0] * len(rows)
        zero = mpmath.mpf(0)
        lps, ents, grads, scale = [], [], [], np.zeros((len(rows), c))
        for i, r in enumerate(rows):
            t = int(labels[i])
            if t == ignore_index or r.kind == "masked":
                lps.append(zero)
                ents.append(zero)
                grads.append([zero] * c)
                continue
            ent = _entropy(r)
            lps.append(-r.neg_log_p(t))
            ents.append(ent)
            row_grad = []
            for j in range(c):
                p = r.p(j)
                d_lp = r.one_minus_p(t) if j == t else -p
                d_h = p * (r.neg_log_p(j) - ent) if p != 0 else zero
                chain = r.chain(j)
                row_grad.append((g[i] * d_lp + h[i] * d_h) * chain)
                spread = (-r.s[j] + ent - r.log_sum) if r.kind == "finite" and p != 0 else zero
                scale[i, j] = float((abs(g[i] * d_lp) + abs(h[i]) * p * spread) * abs(chain))
            grads.append(row_grad)
        batch = np.asarray(target).shape
        out = {"value": to_exact(np.asarray(lps, dtype=object).reshape(batch)),
               "d_x": to_exact(np.asarray(grads, dtype=object).reshape(x.shape)), "scale:d_x": scale.reshape(x.shape)}
        if return_entropy:
            out["entropy"] = to_exact(np.asarray(ents, dtype=object).reshape(batch))
        return out


# --- distillation ------------------------------------------------------------------------------------------

def _log_probs(row: Row) -> list:
    return [-row.neg_log_p(j) for j in range(row.n)]


def _divergence(name: str, beta, q: list, log_q: list, p: list, log_p: list):
    """(D, dD/du, the size of D's terms, the size of each dD/du_j's terms) of one row, u the student's
    scores, from first principles (0 log 0 = 0):

    kl: D = sum p (log p - log q), dD/du_j = q_j - p_j; reverse_kl: D = sum q (log q - log p),
    dD/du_j = q_j (log q_j - log p_j - D); jsd: D = beta KL(p || m) + (1 - beta) KL(q || m) with
    m = beta p + (1 - beta) q, whose derivative in q_j is (1 - beta)(log q_j - log m_j) (the other terms
    sum to 0), and dD/du_j = q_j (G_j - sum_k q_k G_k) through the softmax.

    The sizes are the magnitudes the layers add and subtract (|log p_j| + |log q_j|, not their
    difference): where the models nearly agree D and its gradient cancel in every algorithm, so an entry
    is held to the ulp bound of its value or to that many eps of these sizes, whichever is larger.
    """
    n = len(q)
    zero = mpmath.mpf(0)

    def size(weights, *logs):  # sum_j w_j (|log a_j| + |log b_j|), 0 where w_j = 0
        return mpmath.fsum(weights[j] * sum(abs(lg[j]) for lg in logs) for j in range(n) if weights[j] != 0)

    if name == "kl":
        value = mpmath.fsum(p[j] * (log_p[j] - log_q[j]) for j in range(n) if p[j] != 0)
        return value, [q[j] - p[j] for j in range(n)], size(p, log_p, log_q), [q[j] + p[j] for j in range(n)]
    if name == "reverse_kl":
        value = mpmath.fsum(q[j] * (log_q[j] - log_p[j]) for j in range(n) if q[j] != 0)
        grad = [q[j] * (log_q[j] - log_p[j] - value) if q[j] != 0 else zero for j in range(n)]
        sizes = [q[j] * (abs(log_q[j]) + abs(log_p[j]) + abs(value)) if q[j] != 0 else zero for j in range(n)]
        return value, grad, size(q, log_q, log_p), sizes
    m = [beta * p[j] + (1 - beta) * q[j] for j in range(n)]
    log_m = [mpmath.log(v) if v != 0 else -INF for v in m]
    to_p = mpmath.fsum(p[j] * (log_p[j] - log_m[j]) for j in range(n) if p[j] != 0)
    to_q = mpmath.fsum(q[j] * (log_q[j] - log_m[j]) for j in range(n) if q[j] != 0)
    G = [(1 - beta) * (log_q[j] - log_m[j]) if q[j] != 0 else zero for j in range(n)]
    G_size = [(1 - beta) * (abs(log_q[j]) + abs(log_m[j])) if q[j] != 0 else zero for j in range(n)]
    mean = mpmath.fsum(q[j] * G[j] for j in range(n))
    mean_size = mpmath.fsum(q[j] * G_size[j] for j in range(n))
    return (beta * to_p + (1 - beta) * to_q, [q[j] * (G[j] - mean) for j in range(n)],
            beta * size(p, log_p, log_m) + (1 - beta) * size(q, log_q, log_m),
            [q[j] * (G_size[j] + mean_size) for j in range(n)])


def distillation_family(student: np.ndarray, teacher: np.ndarray, upstream: np.ndarray, *, divergence="kl",
                        beta=0.5, temperature=1.0, target=None, ignore_index=-100, reduction="mean",
                        num_items=None) -> dict:
    """The exact loss T^2 D(p, q) per row (p the teacher's softmax, q the student's, both at T) and
    d(upstream . loss)/d(student): T^2 dD/du times du/dx = 1/T. Rows whose target is ignore_index give 0
    and are not counted; a row of -inf logits (either model) gives 0 and is counted; "mean" divides by
    the rows counted or num_items, a zero denominator giving 0. "scale:value" and "scale:d_x": the sizes
    of the terms (`_divergence`), through the same factors."""
    with mpmath.workdps(DIGITS):
        c = student.shape[-1]
        qs, ps = _rows(student, None, temperature), _rows(teacher, None, temperature)
        labels = None if target is None else np.asarray(target).reshape(-1)
        beta, T = mpmath.mpf(float(beta)), mpmath.mpf(float(temperature))
        zero = mpmath.mpf(0)
        losses, grads, loss_sizes, grad_sizes, counted = [], [], [], [], 0
        for i, (q, p) in enumerate(zip(qs, ps)):
            kept = labels is None or int(labels[i]) != ignore_index
            counted += kept
            if not kept or q.kind == "masked" or p.kind == "masked":
                losses.append(zero)
                loss_sizes.append(zero)
                grads.append([zero] * c)
                grad_sizes.append([zero] * c)
                continue
            value, d, value_size, d_size = _divergence(divergence, beta, [q.p(j) for j in range(c)], _log_probs(q),
                                                       [p.p(j) for j in range(c)], _log_probs(p))
            losses.append(T * T * value)
            loss_sizes.append(T * T * value_size)
            grads.append([T * T * d[j] * q.chain(j) for j in range(c)])
            grad_sizes.append([T * T * d_size[j] * abs(q.chain(j)) for j in range(c)])
        up = [mpmath.mpf(float(v)) for v in np.ravel(upstream)]
        if reduction == "none":
            factors = up
            value, value_size = losses, [abs(u) * s for u, s in zip(up, loss_sizes)]
        else:
            denominator = mpmath.mpf(counted if num_items is None else int(num_items))
            factor = (1 / denominator if denominator != 0 else zero) if reduction == "mean" else mpmath.mpf(1)
            factors = [up[0] * factor] * len(losses)
            value = mpmath.fsum(losses) * factor
            value_size = abs(factor) * mpmath.fsum(loss_sizes)
        grad = [[f * d for d in row] for f, row in zip(factors, grads)]
        grad_size = [[float(abs(f) * d) for d in row] for f, row in zip(factors, grad_sizes)]
        batch = student.shape[:-1] if reduction == "none" else ()
        return {"value": to_exact(np.asarray(value, dtype=object).reshape(batch)),
                "scale:value": np.asarray([float(s) for s in np.ravel(np.asarray(value_size, dtype=object))],
                                          dtype=np.float64).reshape(batch),
                "d_x": to_exact(np.asarray(grad, dtype=object).reshape(student.shape)),
                "scale:d_x": np.asarray(grad_size, dtype=np.float64).reshape(student.shape)}
