"""SciPy's own tests of logsumexp, softmax and log_softmax, run against softxent's NumPy layer (issue 15, item 1).

The installed scipy's ``scipy/special/tests/test_logsumexp.py`` is imported, its module globals
``logsumexp``, ``softmax`` and ``log_softmax`` are pointed at softxent's for the duration of each test, and
its test classes and functions are collected here as if they were ours. Its ``xp`` fixture is supplied as
NumPy (SciPy's conftest would also try array_api_strict, torch, JAX and Dask: softxent is the NumPy layer,
so no other backend's case is collected, and SciPy's per-backend skip/xfail marks never apply).

One translation, not a skip: SciPy's functions reduce over every element by default (``axis=None``);
softxent's default is ``axis=-1`` (rule 1 of docs/semantics.md, fixed by API.md). A SciPy test that passes
no axis means "every element", so the wrapper passes ``axis=None`` when the test gives none. Every axis a
test does pass reaches softxent unchanged.

Skipped, each by name below with its reason: the complex-valued cases (softxent is real-valued and refuses
complex input with a TypeError, checked at the bottom of this file) and one test of a SciPy private
helper. No SciPy case conflicts with a rule of docs/semantics.md: every real-valued case passes.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

import softxent as sx

scipy_suite = pytest.importorskip("scipy.special.tests.test_logsumexp",
                                  reason="scipy's own test files are not installed")

REAL_VALUED = "softxent is real-valued: complex input raises TypeError (tested below), it is not supported"

# whole SciPy tests skipped, by name
SKIPPED_TESTS = {
    "test_wrap_radians": "tests SciPy's private _wrap_radians (the phase of complex results), not a function "
                         "softxent has",
    "test_logsumexp_complex_sign": f"complex input and a complex sign; {REAL_VALUED}",
    "test_gh21610": f"complex64/complex128 input (the imaginary part's range); {REAL_VALUED}",
    "test_gh21709_small_imaginary": f"complex input (a tiny imaginary part); {REAL_VALUED}",
}
# parametrised SciPy tests whose complex cases are skipped, by test name and parameter; their real
# cases run (float32, float64, int32, int64 dtypes; real +-inf pairs; a real and an empty device array)
COMPLEX_PARAMETERS = {
    "test_dtypes_a": ("dtype",),
    "test_dtypes_ab": ("dtype_a", "dtype_b"),
    "test_gh22601_infinite_elements": ("x", "y"),
    "test_device": ("x_raw",),
}


def _with_scipy_default_axis(function):
    """softxent's function with SciPy's default axis (None: every element) when the caller passes none."""
    @functools.wraps(function)
    def call(x, *args, **kwargs):
        if not args and "axis" not in kwargs:
            kwargs["axis"] = None
        return function(x, *args, **kwargs)
    return call


@pytest.fixture
def xp():
    return np


@pytest.fixture
def devices():
    # NumPy's one device, and None (the default), as SciPy's fixture gives for NumPy
    return ["cpu", None]


def _is_complex(value) -> bool:
    return isinstance(value, complex) or (isinstance(value, str) and value.startswith("complex"))


def _skip_reason(item) -> str | None:
    name = item.originalname
    if name in SKIPPED_TESTS:
        return SKIPPED_TESTS[name]
    params = getattr(getattr(item, "callspec", None), "params", {})
    complex_params = [f"{p}={params[p]!r}" for p in COMPLEX_PARAMETERS.get(name, ()) if _is_complex(params[p])]
    if complex_params:
        return f"complex case ({', '.join(complex_params)}); {REAL_VALUED}"
    return None


@pytest.fixture(autouse=True)
def _softxent_in_scipy_suite(request, monkeypatch):
    if request.node.originalname.startswith("test_softxent_"):  # this file's own checks below
        yield
        return
    reason = _skip_reason(request.node)
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setattr(scipy_suite, "logsumexp", _with_scipy_default_axis(sx.logsumexp))
    monkeypatch.setattr(scipy_suite, "softmax", _with_scipy_default_axis(sx.softmax))
    monkeypatch.setattr(scipy_suite, "log_softmax", _with_scipy_default_axis(sx.log_softmax))
    # SciPy's classes ignore float warnings (its own code raises them on purpose); softxent raises none
    # (its intended infs and NaNs sit under np.errstate), so here a float warning from softxent fails
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=RuntimeWarning, module=r"softxent\.")
        yield


# SciPy's test classes and functions, collected in this module (subclasses keep SciPy's methods and marks)
class TestLogSumExp(scipy_suite.TestLogSumExp):
    pass


class TestSoftmax(scipy_suite.TestSoftmax):
    pass


class TestLogSoftmax(scipy_suite.TestLogSoftmax):
    pass


test_wrap_radians = scipy_suite.test_wrap_radians


# --- checks of this file itself ----------------------------------------------------------------------


def test_softxent_skips_name_tests_that_exist_in_scipy_suite():
    # a skip whose test SciPy has renamed or removed would hide nothing and mean nothing
    names = {name for cls in (TestLogSumExp, TestSoftmax, TestLogSoftmax) for name in dir(cls)}
    names |= {name for name in vars(scipy_suite) if name.startswith("test_")}
    assert set(SKIPPED_TESTS) | set(COMPLEX_PARAMETERS) <= names
    # and the suite is SciPy's full one, not an empty shell: dozens of real-valued tests
    methods = [name for cls in (TestLogSumExp, TestSoftmax, TestLogSoftmax) for name in dir(cls)
               if name.startswith("test_") and name not in SKIPPED_TESTS]
    assert len(methods) >= 30


@pytest.mark.parametrize("function", [sx.logsumexp, sx.softmax, sx.log_softmax])
def test_softxent_refuses_complex_input_which_is_why_the_complex_cases_are_skipped(function):
    with pytest.raises(TypeError, match="^x must have a real floating-point or integer dtype; got complex128"):
        function(np.array([1.0 + 1.0j, 2.0]))
