"""logsumexp with scale factors b is as exact as without (rule 11), now that b can make the result float64.

Before, the b path took log(sum_j b_j exp(x_j - m)) directly: when one term dominates, the sum is 1 + tiny,
rounds to 1, and the log loses every digit of tiny (x = [0, -40] gave 0 instead of 4.25e-18). It now
factors out the largest term t_k and takes log|t_k| + log1p(r), as the b = None path does. With float32 x
and float64 b (float64 result, issue 15) that is float64 accuracy, not float32's.

Oracle: mpmath at 60 digits, sum_j b_j exp(x_j) of the exact float inputs, then log|.|.
"""

import mpmath
import numpy as np
import pytest

import softxent as sx
from adversarial import cases
from compare import ulp_error

mpmath.mp.dps = 60
ULP = {"float32": 2, "float64": 4}  # rule 11


def exact_log_abs_sum(x, b) -> mpmath.mpf:
    total = mpmath.fsum(mpmath.mpf(float(bj)) * mpmath.exp(mpmath.mpf(float(xj)))
                        for xj, bj in zip(x, b) if bj != 0 and xj != -np.inf)
    return mpmath.log(abs(total)) if total != 0 else mpmath.mpf("-inf")


def _scales(shape, dtype, rng):
    return {
        "ones": np.ones(shape, dtype),
        "positive": rng.uniform(0.1, 3.0, shape).astype(dtype),
        # a few small negative factors, which cannot cancel much of the sum: where they do, log|sum| is
        # ill-conditioned (sum |t_j| / |sum t_j| amplifies the inputs' rounding) and no algorithm owes
        # digits the inputs do not determine
        "signed": np.where(rng.random(shape) < 0.2, -0.01, 1.0).astype(dtype),
    }


# the log1p regime, where the old path failed: the result is far below 1 in magnitude
DOMINANT = {
    "float64": [[0.0, -40.0], [0.0, -37.5, -39.0, -41.0], [1e-3, -36.0]],
    "float32": [[0.0, -20.0], [0.0, -18.0, -19.5]],
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logsumexp_with_b_is_within_rule_11_ulp(dtype):
    rng = np.random.default_rng(15)
    rows = [(c.name, c.logits) for c in cases(dtype, long_rows=False)
            # lse itself subnormal (exp(-740) in float64): ulp of a subnormal is not a relative measure,
            # and b = None gives the same there
            if not c.name.startswith("subnormal-probability")]
    rows += [(f"dominant-{i}", np.array(x, dtype)) for i, x in enumerate(DOMINANT[dtype])]
    for name, x in rows:
        for kind, b in _scales(x.shape, dtype, rng).items():
            got, sign = sx.logsumexp(x, b=b, return_sign=True)
            assert got.dtype == dtype
            error = float(ulp_error(np.asarray([got]), [exact_log_abs_sum(x, b)])[0])
            assert error <= ULP[dtype], f"{name}, b {kind}: {error:.2f} ulp"


def test_logsumexp_float32_x_float64_b_has_float64_accuracy():
    x = np.array([0.0, -40.0, -42.5], dtype=np.float32)  # exactly representable
    for b in (np.ones(3), np.array([1.0, 2.0, -0.5])):
        got = sx.logsumexp(x, b=b)
        assert got.dtype == np.float64
        assert float(ulp_error(np.asarray([got]), [exact_log_abs_sum(x, b)])[0]) <= ULP["float64"]


def test_logsumexp_b_limits_are_unchanged():
    # the control for the new path's special rows: masked (all b = 0 or all -inf), exact cancellation,
    # +inf entries, NaN
    inf = np.inf
    assert sx.logsumexp([1.0, 2.0], b=[0.0, 0.0], return_sign=True) == (-inf, 0.0)
    assert sx.logsumexp([-inf, -inf], b=[1.0, 2.0], return_sign=True) == (-inf, 0.0)
    assert sx.logsumexp([3.0, 3.0], b=[1.0, -1.0], return_sign=True) == (-inf, 0.0)
    lse, sign = sx.logsumexp([0.0, 0.0], b=[1.0, -2.0], return_sign=True)  # terms cancel past the pivot
    assert sign == -1.0 and lse == 0.0
    assert sx.logsumexp([inf, 1.0], b=[2.0, 1.0]) == inf
    assert np.isnan(sx.logsumexp([inf, inf], b=[1.0, -1.0]))
    assert np.isnan(sx.logsumexp([np.nan, 1.0], b=[1.0, 1.0]))
    assert np.isnan(sx.logsumexp([1.0, 1.0], b=[np.nan, 1.0]))


def test_logsumexp_float64_x_float32_b_takes_log_b_in_float64():
    # log(0.1f) rounded to float32 would be off by ~1e-8 relative: thousands of float64 ulp
    x = np.array([0.0, -3.0])
    b = np.array([0.1, 0.2], dtype=np.float32)
    got = sx.logsumexp(x, b=b)
    assert got.dtype == np.float64
    assert float(ulp_error(np.asarray([got]), [exact_log_abs_sum(x, b)])[0]) <= ULP["float64"]
