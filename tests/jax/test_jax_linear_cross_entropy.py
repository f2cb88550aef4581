"""softxent.jax.linear_cross_entropy and linear_token_log_probs: equal to the unfused computation,
never holding (N, V) logits in the forward or the backward (compiled temporaries measured).

Shapes: N = 7 rows, D = 5, V = 11 classes, chunks of 3 rows (which divide neither N nor V: the last
chunk overlaps), and for the memory check N = 256, V = 2048 with chunks of 16 rows.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import softxent as sx
import softxent.jax as sxj
from compare import assert_close

RNG = np.random.default_rng(5)
N, D, V = 7, 5, 11
X = RNG.standard_normal((N, D)).astype(np.float32)
W = RNG.standard_normal((V, D)).astype(np.float32)
B = RNG.standard_normal(V).astype(np.float32)
T = RNG.integers(0, V, N)
T[2] = -100
P = RNG.dirichlet(np.ones(V), N).astype(np.float32)


@pytest.mark.parametrize("kind, options", [
    ("index", {}),
    ("index", {"weight": RNG.random(V).astype(np.float32) + 0.1, "label_smoothing": 0.1, "z_loss": 1e-2}),
    ("index", {"softcap": 3.0, "temperature": 0.7, "reduction": "none"}),
    ("probs", {"label_smoothing": 0.2, "reduction": "sum"}),
], ids=["plain", "weighted-smoothed-zloss", "softcap-temperature-none", "probs"])
def test_equals_unfused_cross_entropy_with_gradients(kind, options):
    target = jnp.asarray(T if kind == "index" else P)
    upstream = jnp.asarray(RNG.standard_normal(N).astype(np.float32)) if options.get("reduction") == "none" else 1.3

    @jax.jit
    def both(x, w, b):
        fused = lambda *a: jnp.sum(sxj.linear_cross_entropy(a[0], a[1], target, bias=a[2], chunk_size=3,
                                                            **options) * upstream)
        unfused = lambda *a: jnp.sum(sxj.cross_entropy(a[0] @ a[1].T + a[2], target, **options) * upstream)
        return (jax.value_and_grad(fused, argnums=(0, 1, 2))(x, w, b),
                jax.value_and_grad(unfused, argnums=(0, 1, 2))(x, w, b))

    (value, grads), (expected, expected_grads) = both(jnp.asarray(X), jnp.asarray(W), jnp.asarray(B))
    assert_close(value, expected, dtype="float32")
    for got, want, name in zip(grads, expected_grads, ("dx", "dw", "dbias")):
        assert_close(got, want, dtype="float32", what=name, scale=2)
    # and the NumPy layer's value in float64
    np_value = sx.linear_cross_entropy(X.astype(np.float64), W.astype(np.float64), np.asarray(target), bias=B,
                                       **options)
    assert_close(value, np.sum(np_value * np.asarray(upstream)), dtype="float32")


def test_token_log_probs_fused_equals_unfused_and_numpy():
    g = jnp.asarray(RNG.standard_normal(N).astype(np.float32))
    h = jnp.asarray(RNG.standard_normal(N).astype(np.float32))
    t = jnp.asarray(T)
    opts = {"softcap": 4.0, "temperature": 1.3}

    @jax.jit
    def both(x, w):
        def fused(x, w):
            lp, ent = sxj.linear_token_log_probs(x, w, t, return_entropy=True, chunk_size=3, **opts)
            return jnp.sum(g * lp + h * ent)

        def unfused(x, w):
            lp, ent = sxj.token_log_probs(x @ w.T, t, return_entropy=True, **opts)
            return jnp.sum(g * lp + h * ent)

        return jax.value_and_grad(fused, (0, 1))(x, w), jax.value_and_grad(unfused, (0, 1))(x, w)

    (v1, g1), (v2, g2) = both(jnp.asarray(X), jnp.asarray(W))
    assert_close(v1, v2, dtype="float32")
    for a, b in zip(g1, g2):
        assert_close(a, b, dtype="float32", scale=2)
    logits = X.astype(np.float64) @ W.astype(np.float64).T
    lp, ent, grad = sx.token_log_probs(logits, T, return_entropy=True, return_grad=True, grad_log_probs=np.asarray(g),
                                       grad_entropy=np.asarray(h), **opts)
    assert_close(v2, np.sum(np.asarray(g) * lp + np.asarray(h) * ent), dtype="float32")
    unfused_grad = jax.grad(lambda a: jnp.sum(g * sxj.token_log_probs(a, t, **opts)))(jnp.asarray(logits, jnp.float32))
    np_grad = sx.token_log_probs(logits, T, return_grad=True, grad_log_probs=np.asarray(g), **opts)[1]
    assert_close(unfused_grad, np_grad, dtype="float32")


def test_token_log_probs_ignored_rows_and_16_bit_output():
    x = jnp.asarray(X @ W.T).astype(jnp.bfloat16)
    lp, ent = sxj.token_log_probs(x, jnp.asarray(T), return_entropy=True)
    assert lp.dtype == ent.dtype == jnp.float32  # API.md: float32 for 16-bit inputs
    assert float(lp[2]) == 0.0 and float(ent[2]) == 0.0
    grad = jax.grad(lambda a: jnp.sum(sxj.token_log_probs(a, jnp.asarray(T))))(x)
    assert grad.dtype == jnp.bfloat16 and not np.asarray(grad.astype(jnp.float32))[2].any()
    expected = sx.token_log_probs(np.asarray(x.astype(jnp.float32), np.float64), T)
    assert_close(lp, expected, dtype="float32")


def test_temporaries_stay_below_a_third_of_the_logits():
    n, d, v = 256, 32, 2048
    x = jax.ShapeDtypeStruct((n, d), jnp.float32)
    w = jax.ShapeDtypeStruct((v, d), jnp.float32)
    t = jax.ShapeDtypeStruct((n,), jnp.int32)
    logits_bytes = n * v * 4

    def temp(f):
        return jax.jit(jax.value_and_grad(f, (0, 1))).lower(x, w, t).compile().memory_analysis().temp_size_in_bytes

    fused = temp(lambda x, w, t: sxj.linear_cross_entropy(x, w, t, chunk_size=16))
    unfused = temp(lambda x, w, t: sxj.cross_entropy(x @ w.T, t))
    assert unfused >= logits_bytes  # the unfused computation holds the logits (and their gradient)
    assert fused <= 0.35 * logits_bytes, (fused, logits_bytes)


def test_layer_errors_match_numpy_layer():
    for mistake in (lambda m: m.linear_cross_entropy(X, W[:, :3], T), lambda m: m.linear_cross_entropy(X, W, T, bias=B[:2]),
                    lambda m: m.linear_cross_entropy(X, W, T, chunk_size=0),
                    lambda m: m.linear_token_log_probs(X, W, P)):
        with pytest.raises((ValueError, TypeError)) as ours:
            mistake(sxj)
        with pytest.raises((ValueError, TypeError)) as theirs:
            mistake(sx)
        assert (ours.type, str(ours.value)) == (theirs.type, str(theirs.value))
