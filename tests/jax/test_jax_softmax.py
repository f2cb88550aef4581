"""softxent.jax softmax, log_softmax and logsumexp against the NumPy layer and jax.nn, with gradients.

One jitted function per option set computes the three values and their gradients with a random
upstream gradient; shapes are tiny: (3, 4, 5) with the class axis moved about, and a row with masks.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import softxent as sx
import softxent.jax as sxj
from compare import assert_close

RNG = np.random.default_rng(11)
X = RNG.standard_normal((3, 4, 5)).astype(np.float32) * 3
UP = RNG.standard_normal(X.shape).astype(np.float32)


@pytest.mark.parametrize("axis, temperature", [(-1, 1.0), (1, 0.5), ((0, 2), 2.0), (None, 1.0)])
def test_match_numpy_layer_with_gradients(axis, temperature):
    @jax.jit
    def run(x):
        sm, sm_vjp = jax.vjp(lambda a: sxj.softmax(a, axis, temperature=temperature), x)
        lsm, lsm_vjp = jax.vjp(lambda a: sxj.log_softmax(a, axis, temperature=temperature), x)
        lse, lse_vjp = jax.vjp(lambda a: sxj.logsumexp(a, axis), x)
        up = jnp.asarray(UP)
        return sm, lsm, lse, sm_vjp(up)[0], lsm_vjp(up)[0], lse_vjp(jnp.ones_like(lse) * 0.7)[0]

    sm, lsm, lse, d_sm, d_lsm, d_lse = run(jnp.asarray(X))
    x64 = X.astype(np.float64)
    p = sx.softmax(x64, axis, temperature=temperature)
    lp = sx.log_softmax(x64, axis, temperature=temperature)
    assert_close(sm, p, dtype="float32")
    assert_close(lsm, lp, dtype="float32")
    assert_close(lse, sx.logsumexp(x64, axis), dtype="float32")
    # the vector-Jacobian products round g - sum_k p_k g_k in float32, with |g| up to 3 and 1 / T = 2
    assert_close(d_sm, sx.softmax_grad(p, UP.astype(np.float64), axis) / temperature, dtype="float32", scale=8)
    assert_close(d_lsm, sx.log_softmax_grad(lp, UP.astype(np.float64), axis) / temperature, dtype="float32",
                 scale=8)
    assert_close(d_lse, 0.7 * sx.softmax(x64, axis), dtype="float32")


def test_match_jax_nn():
    x = jnp.asarray(X)
    assert_close(sxj.softmax(x, 1), jax.nn.softmax(x, axis=1), dtype="float32")
    assert_close(sxj.log_softmax(x), jax.nn.log_softmax(x), dtype="float32")
    assert_close(sxj.logsumexp(x, (0, 1)), jax.nn.logsumexp(x, axis=(0, 1)), dtype="float32")


def test_masks_limits_and_nan_free_gradients():
    x = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [np.inf, 1.0, np.inf]], dtype=jnp.float32)
    where = jnp.array([[True, False, True], [False, False, False], [True, True, True]])

    @jax.jit
    def run(x):
        out = (sxj.softmax(x, where=where), sxj.log_softmax(x, where=where), sxj.logsumexp(x, where=where))
        grads = [jax.grad(lambda a, f=f: jnp.sum(jnp.where(jnp.isfinite(f(a)), f(a), 0.0) * jnp.arange(3.0)))(x)
                 for f in (lambda a: sxj.softmax(a, where=where), lambda a: sxj.log_softmax(a, where=where))]
        grads.append(jax.grad(lambda a: jnp.sum(jnp.where(jnp.isfinite(sxj.logsumexp(a, where=where)),
                                                          sxj.logsumexp(a, where=where), 0.0)))(x))
        return out, grads

    (sm, lsm, lse), grads = run(x)
    np.testing.assert_array_equal(np.asarray(sm[1]), 0.0)  # fully masked row: zeros (rule 2)
    assert np.all(np.asarray(lsm[1]) == -np.inf) and float(lse[1]) == -np.inf
    np.testing.assert_array_equal(np.asarray(sm[2]), [0.5, 0.0, 0.5])  # +inf entries share the mass (rule 3)
    assert float(lse[2]) == np.inf
    assert_close(sm[0], sx.softmax(np.array([1.0, 3.0]))[[0, 0, 1]] * np.array([1, 0, 1]), dtype="float32")
    for g in grads:
        assert np.isfinite(np.asarray(g)[:2]).all() and not np.asarray(g)[1].any()
    for g in grads[:2]:  # regression: a row holding +inf is constant in x (its limit): zero gradient
        assert not np.asarray(g)[2].any()
        assert not np.asarray(g)[0, 1]  # a masked entry: zero gradient


def test_logsumexp_b_and_bfloat16():
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    b = RNG.random((4, 6)).astype(np.float32)
    b[0, 2] = 0.0
    got, (gx, gb) = jax.jit(jax.value_and_grad(lambda a, c: jnp.sum(sxj.logsumexp(a, b=c)), argnums=(0, 1)))(
        jnp.asarray(x), jnp.asarray(b))
    assert_close(got, np.sum(sx.logsumexp(x.astype(np.float64), b=b.astype(np.float64))), dtype="float32")
    e = b * np.exp(x.astype(np.float64))
    assert_close(gx, e / e.sum(-1, keepdims=True), dtype="float32")
    assert_close(gb, np.exp(x.astype(np.float64)) / e.sum(-1, keepdims=True), dtype="float32")
    h = jnp.asarray(x).astype(jnp.bfloat16)
    out = sxj.log_softmax(h)
    assert out.dtype == jnp.bfloat16
    exact = sx.log_softmax(np.asarray(h.astype(jnp.float32), np.float64))
    assert_close(out, exact, dtype="bfloat16")


def test_errors_match_numpy_layer():
    for mistake in (lambda m: m.softmax(X, axis=3), lambda m: m.log_softmax(X, temperature=-1.0),
                    lambda m: m.logsumexp(X, axis=(1, 1)), lambda m: m.softmax(X, where=np.ones((2, 5), bool)),
                    lambda m: m.softmax(X, where=np.ones(X.shape, np.float32))):
        with pytest.raises((ValueError, TypeError)) as ours:
            mistake(sxj)
        with pytest.raises((ValueError, TypeError)) as theirs:
            mistake(sx)
        assert (ours.type, str(ours.value)) == (theirs.type, str(theirs.value))


@pytest.mark.parametrize("shape, axis", [((3, 0), -1), ((0, 4), 0), ((2, 0, 5), (1, 2))])
def test_an_empty_class_axis_gives_what_the_numpy_layer_gives(shape, axis):
    """No classes: logsumexp is -inf (an empty sum), softmax and log_softmax an empty array; under jit
    and grad as well (it raised "zero-size array to reduction", the max over nothing)."""
    x = np.zeros(shape, np.float32)
    assert_close(np.asarray(sxj.logsumexp(x, axis=axis)), sx.logsumexp(x, axis=axis), dtype="float32")
    for name in ("softmax", "log_softmax"):
        ours = jax.jit(lambda a, f=getattr(sxj, name): f(a, axis=axis))(jnp.asarray(x))
        assert ours.shape == getattr(sx, name)(x, axis=axis).shape == shape
    assert jax.grad(lambda a: sxj.logsumexp(a, axis=axis).sum())(jnp.asarray(x)).shape == shape
