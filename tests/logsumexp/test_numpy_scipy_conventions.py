"""SciPy's conventions in the NumPy layer where softxent differed (issue 15, item 1), checked on their own.

The six real-valued SciPy tests that failed before the fix (run from SciPy's own file in
test_scipy_logsumexp_suite.py) come down to three conventions: `b` may broadcast `x` to a larger shape,
the result dtype is NumPy's result type of `x` and `b`, and a 0-d softmax / log_softmax is a scalar.
Oracles: float64 NumPy sums (small, well-conditioned cases) and scipy.special itself.
"""

import numpy as np
import pytest
import scipy.special

import softxent as sx


def test_logsumexp_b_broadcasts_x_to_a_larger_shape():
    # SciPy's test_logsumexp_b_shape: a (4, 1, 2, 1) with b (3, 1, 5) sums over the (4, 3, 2, 5) broadcast
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 1, 2, 1))
    b = rng.uniform(0.5, 2.0, (3, 1, 5))
    full = np.broadcast_to(a, (4, 3, 2, 5))
    scale = np.broadcast_to(b, (4, 3, 2, 5))
    np.testing.assert_allclose(sx.logsumexp(a, b=b, axis=None), np.log(np.sum(scale * np.exp(full))),
                               rtol=1e-14)
    # softxent's own default axis (-1) reduces the broadcast shape's last axis
    np.testing.assert_allclose(sx.logsumexp(a, b=b), np.log(np.sum(scale * np.exp(full), axis=-1)), rtol=1e-14)
    np.testing.assert_allclose(sx.logsumexp(a, b=b, axis=1, keepdims=True),
                               scipy.special.logsumexp(a, b=b, axis=1, keepdims=True), rtol=1e-14)
    lse, sign = sx.logsumexp(a, b=-b, axis=(0, 2), return_sign=True)
    assert lse.shape == sign.shape == (3, 5) and np.all(sign == -1)


def test_logsumexp_where_broadcasts_to_the_shape_x_and_b_make():
    a = np.zeros((2, 1))
    b = np.ones((1, 3))
    where = np.array([True, False, True])
    np.testing.assert_allclose(sx.logsumexp(a, b=b, where=where), np.full(2, np.log(2.0)), rtol=1e-15)


def test_logsumexp_b_that_does_not_broadcast_names_b():
    with pytest.raises(ValueError, match=r"b of shape \(3,\) does not broadcast with x of shape \(2, 2\)"):
        sx.logsumexp(np.zeros((2, 2)), b=np.ones(3))


@pytest.mark.parametrize("x_dtype, b_dtype", [
    ("float32", "float64"), ("float32", "int32"), ("float32", "int64"),  # SciPy's failing cases: float64
    ("float32", "int16"), ("float16", "int8"), ("float16", "float32"),   # NumPy keeps the smaller float
    ("float64", "float32"), ("float32", "float32"), ("int32", "int64"),  # integers alone: float64
])
def test_logsumexp_result_dtype_is_numpys_result_type_of_x_and_b(x_dtype, b_dtype):
    expected = np.result_type(x_dtype, b_dtype)
    expected = expected if expected.kind == "f" else np.dtype(np.float64)
    x = np.array([2, 1], dtype=x_dtype)
    b = np.array([1, -1], dtype=b_dtype)
    lse = sx.logsumexp(x, b=b)
    assert lse.dtype == expected == scipy.special.logsumexp(x, b=b).dtype
    lse, sign = sx.logsumexp(x, b=b, return_sign=True)
    assert lse.dtype == sign.dtype == expected
    np.testing.assert_allclose(lse, np.log(np.exp(2.0) - np.exp(1.0)), rtol=np.finfo(expected).eps * 4)


def test_logsumexp_python_scalar_b_is_weak_and_keeps_x_dtype():
    # NEP 50: a Python number does not widen a NumPy array's dtype
    assert sx.logsumexp(np.array([1.0, 2.0], np.float32), b=2.0).dtype == np.float32
    assert sx.logsumexp(np.array([1.0, 2.0], np.float32)).dtype == np.float32  # b=None: x's dtype


def test_logsumexp_float32_x_with_float64_b_keeps_float64_accuracy():
    # the result is float64 now, so it must be as accurate as float64: x = [0, -40] (as float32, exactly
    # representable) with b = 1 is log1p(exp(-40)) = exp(-40) (1 - exp(-40) / 2 ...), correct to the last bit
    x = np.array([0.0, -40.0], dtype=np.float32)
    lse = sx.logsumexp(x, b=np.ones(2))
    assert lse.dtype == np.float64
    assert abs(lse - np.log1p(np.exp(-40.0))) <= 2 * np.spacing(np.log1p(np.exp(-40.0)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("function", [sx.softmax, sx.log_softmax])
def test_softmax_of_a_0d_input_is_a_numpy_scalar(function, dtype):
    out = function(dtype(1000.0), axis=None)
    assert isinstance(out, np.generic) and not isinstance(out, np.ndarray)
    assert out.dtype == dtype and out == (1.0 if function is sx.softmax else 0.0)
    assert type(out) is type(getattr(scipy.special, function.__name__)(dtype(1000.0)))


def test_softmax_of_arrays_stays_an_array():
    # the control: only a 0-d result becomes a scalar; a (1,) row keeps its axis
    assert isinstance(sx.softmax(np.array([3.0])), np.ndarray) and sx.softmax(np.array([3.0])).shape == (1,)
    assert isinstance(sx.log_softmax(np.zeros((0, 3))), np.ndarray)


def test_a_0d_input_with_the_default_axis_is_one_score_as_in_numpy_and_scipy():
    # NumPy's reductions read axis 0 or -1 of a 0-d array as the whole of it, and SciPy's functions follow:
    # softmax(1000) is 1, not an out-of-range axis
    assert sx.softmax(1000) == scipy.special.softmax(1000, axis=-1) == 1.0
    assert sx.log_softmax(np.float32(1.0)) == 0.0 and sx.log_softmax(np.float32(1.0)).dtype == np.float32
    assert sx.logsumexp(1000.0) == scipy.special.logsumexp(1000.0, axis=-1) == 1000.0
    assert sx.logsumexp(3.0, axis=0) == 3.0
    assert sx.softmax(-np.inf) == 0.0  # rule 2: a fully masked row (of one) gives zeros, never NaN
    with pytest.raises(ValueError, match="axis 1 is out of range for an input with 0 dimension"):
        sx.softmax(3.0, axis=1)
    with pytest.raises(TypeError, match="axis must be an int"):
        sx.logsumexp(3.0, axis=False)
