"""softxent.jax is exact in float32 without x64 (API rule 11), measured on tests/adversarial.py's set.

The rows of the set have different lengths; they are padded with -inf (which changes no result: a
masked class) and stacked, so each function compiles once for the short rows and once for the two
10^6-class rows. Bounds: 2 ulp for the log-domain values (lse, every log-softmax entry, the loss, the
token log-prob), 4 ulp for every gradient entry, including the target's p_t - 1 near p_t = 1.

Two cases are outside what float32 arithmetic on XLA can give, and are pinned as such:
- "subnormal-probability*": XLA's CPU backend flushes subnormal results to zero (FTZ), so a log-softmax
  or lse of size 4e-44 comes back 0: an absolute error below the smallest normal float32 (1.2e-38).
- "lse-near-zero": lse = m + L cancels (m = -log 2 rounded, L = log 2): its exact value 2.4e-8 needs L
  to more than float32's 24 bits, which the NumPy layer gets from float64. Here the error is bounded
  by half an ulp of |m| (absolute); log-softmax and the loss of that row have no cancellation.
"""

import mpmath
import numpy as np
import pytest

import jax
import jax.numpy as jnp

import softxent.jax as sxj
from adversarial import cases
from compare import ulp_error

# make test runs the suite on xdist workers (--dist loadgroup): this group keeps the module on one worker,
# so its module-scoped mpmath report runs once, not once on each worker
pytestmark = pytest.mark.xdist_group("test_jax_exactness")

WIDTH = 1024  # the longest short row is 1000 classes
FTZ = ("subnormal-probability", "subnormal-probability-target")


def _batch(rows, dtype):
    out = np.full((len(rows), max(WIDTH, max(len(r) for r in rows))), -np.inf, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@jax.jit
def _all(x, t):
    loss, grad = jax.value_and_grad(lambda a: sxj.cross_entropy(a, t, reduction="sum"))(x)
    return (sxj.logsumexp(x), sxj.log_softmax(x), sxj.cross_entropy(x, t, reduction="none"),
            sxj.token_log_probs(x, t), grad)


def _exact_grad(case, j):
    """d loss / d x_j = p_j - [j == t], with p_j = exp(exact log-softmax) at 50 digits (x_j - lse is
    formed exactly there, whatever the exponents)."""
    with mpmath.workdps(60):
        p = mpmath.exp(case.exact_log_softmax_of(float(case.logits[j])))
        return p - (1 if j == case.target else 0)


def _measure(dtype, long_rows):
    chosen = [c for c in cases(dtype) if (len(c.logits) > WIDTH) == long_rows]
    x = _batch([c.logits for c in chosen], dtype)
    t = np.array([c.target for c in chosen])
    lse, lsm, loss, lp, grad = (np.asarray(a) for a in _all(jnp.asarray(x), jnp.asarray(t)))
    report = {}
    for i, case in enumerate(chosen):
        n = len(case.logits)
        values, inverse = np.unique(case.logits, return_inverse=True)
        lowest = np.full(values.shape, np.inf, dtype=dtype)
        highest = np.full(values.shape, -np.inf, dtype=dtype)
        np.minimum.at(lowest, inverse, lsm[i, :n])
        np.maximum.at(highest, inverse, lsm[i, :n])
        exact = [case.exact_log_softmax_of(float(v)) for v in values]
        row = {
            "lse": float(ulp_error(lse[i : i + 1], [case.exact_lse()]).max()),
            "log_softmax": float(np.maximum(ulp_error(lowest, exact), ulp_error(highest, exact)).max()),
            "loss": float(ulp_error(loss[i : i + 1], [case.exact_loss()]).max()),
            "token_log_prob": float(ulp_error(lp[i : i + 1], [-case.exact_loss()]).max()),
            "lse_abs": abs(float(mpmath.mpf(float(lse[i])) - case.exact_lse())),
            "padding_grad_zero": bool(not grad[i, n:].any()),
        }
        if not long_rows:  # every gradient entry of the short rows (the long ones: the target's)
            entries = range(n)
        else:
            entries = [case.target, int(np.argmax(case.logits))]
        g = np.array([grad[i, j] for j in entries], dtype=dtype)
        row["grad"] = float(ulp_error(g, [_exact_grad(case, j) for j in entries]).max())
        report[case.name] = row
    return report


@pytest.fixture(scope="module")
def float32_report():
    return {**_measure("float32", False), **_measure("float32", True)}


BOUNDS = {"lse": 2.0, "log_softmax": 2.0, "loss": 2.0, "token_log_prob": 2.0, "grad": 4.0}


@pytest.mark.parametrize("quantity", list(BOUNDS))
def test_float32_within_rule_11_without_x64(float32_report, quantity):
    assert not jax.config.jax_enable_x64
    bad = {}
    for name, row in float32_report.items():
        assert row["padding_grad_zero"], name
        if name in FTZ or (name == "lse-near-zero" and quantity == "lse"):
            continue
        if row[quantity] > BOUNDS[quantity]:
            bad[name] = row[quantity]
    assert not bad, f"{quantity}: ulp errors above {BOUNDS[quantity]}: {bad}"


def test_the_two_documented_float32_limits(float32_report):
    smallest_normal = float(np.finfo(np.float32).tiny)
    for name in FTZ:  # flushed subnormals: absolute error below the smallest normal
        assert float32_report[name]["lse_abs"] < smallest_normal
    # the cancelling lse: half an ulp of |m| = log 2
    assert float32_report["lse-near-zero"]["lse_abs"] <= 0.5 * float(np.spacing(np.float32(np.log(2.0))))
    assert float32_report["lse-near-zero"]["log_softmax"] <= 2.0


def test_float64_with_x64_within_4_ulp():
    with jax.enable_x64(True):
        report = _measure("float64", False)
    bad = {(n, q): r[q] for n, r in report.items() for q in BOUNDS if r[q] > 4.0 and n not in FTZ}
    assert not bad, bad
