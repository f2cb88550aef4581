"""Analytic gradients of the NumPy layer against central finite differences in float64.

Each check differentiates a scalar  f = <upstream, output>  with a random upstream gradient, not only the
plain sum: per-row losses ("none") get one random weight per row, scalar losses a random factor, and
softmax/log_softmax a random upstream array. Step h = 1e-5; the tolerance is TOLERANCE["finite_difference"].
"""

from __future__ import annotations

import numpy as np
import pytest

import softxent as sx
from compare import assert_close

H = 1e-5


def numeric_grad(f, x: np.ndarray) -> np.ndarray:
    """d f / d x by central differences, one entry at a time (the inputs here are tiny)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + H
        up = f(x)
        x[index] = saved - H
        down = f(x)
        x[index] = saved
        grad[index] = (up - down) / (2 * H)
    return grad


def assert_fd(analytic, numeric, what):
    assert_close(analytic, numeric, dtype="finite_difference", what=what)


# --- cross_entropy ------------------------------------------------------------------------------------

N, C = 4, 5
WEIGHT = np.array([0.5, 2.0, 1.0, 3.0, 0.25])
CE_CONFIGS = {
    "plain": {},
    "weight": {"weight": WEIGHT},
    "ignore_index": {"ignore": True},
    "weight+ignore_index": {"weight": WEIGHT, "ignore": True},
    "label_smoothing": {"label_smoothing": 0.2},
    "smoothing+weight+ignore": {"label_smoothing": 0.3, "weight": WEIGHT, "ignore": True},
    "z_loss": {"z_loss": 0.05},
    "softcap": {"softcap": 1.5},
    "temperature": {"temperature": 0.6},
    "everything": {"weight": WEIGHT, "ignore": True, "label_smoothing": 0.1, "z_loss": 0.02, "softcap": 2.5,
                   "temperature": 1.7},
    "partially masked": {"masked": True, "z_loss": 0.01, "weight": WEIGHT},
    "probs": {"probs": True},
    "probs+weight+smoothing": {"probs": True, "weight": WEIGHT, "label_smoothing": 0.2},
    "probs+z_loss+softcap+temperature": {"probs": True, "z_loss": 0.03, "softcap": 2.0, "temperature": 0.8},
    "kdim axis=1": {"kdim": True, "weight": WEIGHT, "ignore": True, "label_smoothing": 0.1},
    "kdim probs axis=1": {"kdim": True, "probs": True, "z_loss": 0.01},
}


def _problem(config: dict, seed: int):
    config = dict(config)
    rng = np.random.default_rng(seed)
    shape = (2, C, 3) if config.pop("kdim", False) else (N, C)
    axis = 1 if len(shape) == 3 else -1
    x = rng.normal(scale=1.5, size=shape)
    batch = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    if config.pop("probs", False):
        raw = rng.random(shape) ** 3  # skewed, some near 0
        t = raw / raw.sum(axis=axis, keepdims=True)
    else:
        t = rng.integers(0, C, size=batch)
        if config.pop("ignore", False):
            t.flat[1] = -100
            t.flat[-1] = -100
    if config.pop("masked", False):  # -inf on classes that are not targets
        for row in range(N):
            x[row, (t[row] + 1 + row) % C] = -np.inf
    return x, t, axis, config


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", CE_CONFIGS)
def test_cross_entropy_gradient(name, reduction):
    x, t, axis, options = _problem(CE_CONFIGS[name], seed=len(name))
    rng = np.random.default_rng(17)
    loss, grad = sx.cross_entropy(x, t, axis=axis, reduction=reduction, return_grad=True, **options)
    # the returned gradient is that of sum(losses) for "none", of the loss otherwise; rows are
    # independent, so an upstream gradient g gives g (per row) times it
    upstream = rng.normal(size=np.shape(loss))
    vjp = grad * np.expand_dims(upstream, axis) if reduction == "none" else grad * upstream
    numeric = numeric_grad(
        lambda z: np.sum(upstream * sx.cross_entropy(z, t, axis=axis, reduction=reduction, **options)), x)
    finite = np.isfinite(x)
    assert_fd(vjp[finite], numeric[finite], f"d cross_entropy / d logits ({name}, {reduction})")
    np.testing.assert_array_equal(grad[~finite], 0.0)  # masked classes get no gradient


def test_cross_entropy_gradient_float32_matches_float64():
    x, t, _, options = _problem(CE_CONFIGS["everything"], seed=3)
    _, g64 = sx.cross_entropy(x, t, return_grad=True, **options)
    loss32, g32 = sx.cross_entropy(x.astype(np.float32), t, return_grad=True, **options)
    assert g32.dtype == np.float32
    assert_close(g32, g64.astype(np.float32).astype(np.float64), dtype="float32", scale=2)


# --- linear_cross_entropy -------------------------------------------------------------------------------

LCE_CONFIGS = {
    "plain": {},
    "weight+ignore": {"weight": np.array([1.0, 0.5, 2.0, 3.0]), "ignore": True},
    "smoothing+z_loss+softcap": {"label_smoothing": 0.2, "z_loss": 0.05, "softcap": 2.0},
    "probs+weight": {"probs": True, "weight": np.array([1.0, 0.5, 2.0, 3.0])},
}


@pytest.mark.parametrize("chunk_size", [1, 2, 5, None], ids=lambda c: f"chunk={c}")
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", LCE_CONFIGS)
def test_linear_cross_entropy_gradients(name, reduction, chunk_size):
    """dx, dw, dbias for N = 5 rows: chunks of 1 and 5 divide N, 2 leaves a short last chunk."""
    config = dict(LCE_CONFIGS[name])
    rng = np.random.default_rng(18)
    n, d, v = 5, 3, 4
    x, w, bias = rng.normal(size=(n, d)), rng.normal(size=(v, d)), rng.normal(size=v)
    if config.pop("probs", False):
        raw = rng.random((n, v))
        t = raw / raw.sum(axis=1, keepdims=True)
    else:
        t = rng.integers(0, v, size=n)
        if config.pop("ignore", False):
            t[2] = -100
    options = dict(config, reduction=reduction, chunk_size=chunk_size)
    # "none" returns the gradient of the sum; otherwise scale the scalar loss by a random upstream
    c = 1.0 if reduction == "none" else rng.normal()
    _, (dx, dw, db) = sx.linear_cross_entropy(x, w, t, bias=bias, return_grad=True, **options)

    def f(x_, w_, b_):
        return c * np.sum(sx.linear_cross_entropy(x_, w_, t, bias=b_, **options))

    assert_fd(c * dx, numeric_grad(lambda z: f(z, w, bias), x), "dx")
    assert_fd(c * dw, numeric_grad(lambda z: f(x, z, bias), w), "dw")
    assert_fd(c * db, numeric_grad(lambda z: f(x, w, z), bias), "dbias")


def test_linear_cross_entropy_without_bias_and_with_batch_dims():
    rng = np.random.default_rng(19)
    x, w = rng.normal(size=(2, 3, 4)), rng.normal(size=(6, 4))  # (B, T, D) inputs
    t = rng.integers(0, 6, size=(2, 3))
    loss, (dx, dw, db) = sx.linear_cross_entropy(x, w, t, return_grad=True, chunk_size=4, z_loss=0.01)
    assert db is None and dx.shape == x.shape
    assert_fd(dx, numeric_grad(lambda z: sx.linear_cross_entropy(z, w, t, z_loss=0.01), x), "dx")
    assert_fd(dw, numeric_grad(lambda z: sx.linear_cross_entropy(x, z, t, z_loss=0.01), w), "dw")


# --- softmax_grad and log_softmax_grad --------------------------------------------------------------


@pytest.mark.parametrize("axis", [-1, 0, 1, (0, 2), None])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_softmax_and_log_softmax_vjp(axis, temperature):
    rng = np.random.default_rng(20)
    x = rng.normal(size=(2, 3, 4))
    g = rng.normal(size=x.shape)
    # temperature T: d/dx = (1/T) * VJP at the tempered output
    p = sx.softmax(x, axis=axis, temperature=temperature)
    lp = sx.log_softmax(x, axis=axis, temperature=temperature)
    assert_fd(sx.softmax_grad(p, g, axis=axis) / temperature,
              numeric_grad(lambda z: np.sum(g * sx.softmax(z, axis=axis, temperature=temperature)), x),
              f"softmax_grad axis={axis}")
    assert_fd(sx.log_softmax_grad(lp, g, axis=axis) / temperature,
              numeric_grad(lambda z: np.sum(g * sx.log_softmax(z, axis=axis, temperature=temperature)), x),
              f"log_softmax_grad axis={axis}")


def test_vjp_with_partially_masked_rows():
    """-inf entries: zero gradient into them, the rest as for the finite entries alone."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(3, 5))
    x[0, 1] = x[2, [0, 4]] = -np.inf
    g = rng.normal(size=x.shape)
    finite = np.isfinite(x)
    for forward, vjp in ((sx.softmax, sx.softmax_grad), (sx.log_softmax, sx.log_softmax_grad)):
        out = forward(x)
        analytic = vjp(out, np.where(np.isfinite(out), g, 0.0))
        numeric = numeric_grad(lambda z: np.sum(np.where(finite, g * forward(z), 0.0)), x)
        assert_fd(analytic[finite], numeric[finite], vjp.__name__)
        np.testing.assert_array_equal(analytic[~finite], 0.0)


def test_logsumexp_gradient_is_softmax():
    x = np.random.default_rng(22).normal(size=(3, 4))
    c = np.random.default_rng(23).normal(size=3)
    assert_fd(c[:, None] * sx.softmax(x), numeric_grad(lambda z: np.sum(c * sx.logsumexp(z)), x), "d lse")


def test_vjp_float32_matches_float64():
    rng = np.random.default_rng(24)
    x, g = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    for forward, vjp in ((sx.softmax, sx.softmax_grad), (sx.log_softmax, sx.log_softmax_grad)):
        ref = vjp(forward(x), g)
        got = vjp(forward(x.astype(np.float32)), g.astype(np.float32))
        assert got.dtype == np.float32
        assert_close(got, ref, dtype="float32", scale=4, what=vjp.__name__)
