"""softxent.jax in forward mode and to second order, and the gradient with respect to a probability target.

The references are plain float64 jax.numpy formulas differentiated by JAX itself (no softxent code):
`_reference_loss` writes the loss family's rules out in full (softcap, then the temperature, the
smoothed and weighted coefficients, z-loss, PyTorch's weighted mean with ignore_index). Shapes are
tiny: a Hessian of (R, C) logits has (R C)^2 entries, and each option set is one compile.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import softxent.jax as sxj
from compare import assert_close

RNG = np.random.default_rng(20261214)
R, C = 3, 5
LOGITS = RNG.standard_normal((R, C)) * 2
LABELS = np.array([1, -100, 4])  # one ignored row
PROBS = RNG.dirichlet(np.ones(C), R)
WEIGHT = RNG.random(C) + 0.3

# one ignored row, weights with smoothing, the logit transforms with z-loss, and "none"
OPTIONS = [
    {},
    {"weight": WEIGHT, "label_smoothing": 0.2},
    {"softcap": 3.0, "temperature": 0.7, "z_loss": 1e-2},
    {"reduction": "none", "weight": WEIGHT, "label_smoothing": 0.1, "temperature": 1.6},
]


def _reference_loss(x, target, *, kind, weight=None, label_smoothing=0.0, z_loss=0.0, softcap=None,
                    temperature=1.0, reduction="mean"):
    """The loss family's rules in plain jax.numpy (float64): a reference that autodiff differentiates."""
    z = x if softcap is None else softcap * jnp.tanh(x / softcap)
    z = z / temperature
    lse = jax.nn.logsumexp(z, axis=-1)
    minus_log_q = lse[:, None] - z
    w = jnp.ones(C) if weight is None else jnp.asarray(weight)
    eps = label_smoothing
    if kind == "index":
        kept = target != -100
        onehot = jax.nn.one_hot(jnp.where(kept, target, 0), C)
        coef = ((1 - eps) * onehot + eps / C) * w * kept[:, None]
        denominator = jnp.sum(jnp.where(kept, w[jnp.where(kept, target, 0)], 0.0))
    else:
        kept = jnp.ones(R, bool)
        coef = ((1 - eps) * target + eps / C) * w
        denominator = R
    losses = jnp.sum(coef * minus_log_q, axis=-1) + z_loss * jnp.where(kept, lse ** 2, 0.0)
    if reduction == "none":
        return losses
    return jnp.sum(losses) / (denominator if reduction == "mean" else 1.0)


def _options(options):
    return {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in options.items()}


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_cross_entropy_hessian_matches_autodiff_of_the_plain_formula(kind, options):
    with jax.enable_x64(True):
        x = jnp.asarray(LOGITS)
        target = jnp.asarray(LABELS if kind == "index" else PROBS)
        loss = lambda a: sxj.cross_entropy(a, target, **_options(options))
        reference = lambda a: _reference_loss(a, target, kind=kind, **_options(options))
        if options.get("reduction") == "none":  # the Hessian of a weighted sum of the rows' losses
            upstream = jnp.asarray(RNG.standard_normal(R))
            loss, reference = (lambda f: (lambda a: jnp.dot(upstream, f(a))))(loss), \
                (lambda f: (lambda a: jnp.dot(upstream, f(a))))(reference)
        assert_close(jax.hessian(loss)(x), jax.hessian(reference)(x), dtype="float64", what="hessian")
        # forward mode on its own: the Jacobian of the gradient, columns by jvp
        assert_close(jax.jacfwd(loss)(x), jax.grad(reference)(x), dtype="float64", what="jacfwd")


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp", "token_log_probs", "entropy"])
def test_softmax_family_hessians_match_autodiff_of_jax_nn(name):
    labels = jnp.asarray([1, 0, 4])
    ours = {
        "softmax": lambda a: sxj.softmax(a, temperature=0.8),
        "log_softmax": lambda a: sxj.log_softmax(a, temperature=1.3),
        "logsumexp": sxj.logsumexp,
        "token_log_probs": lambda a: sxj.token_log_probs(a, labels, softcap=4.0),
        "entropy": lambda a: sxj.token_log_probs(a, labels, return_entropy=True)[1],
    }[name]
    plain = {
        "softmax": lambda a: jax.nn.softmax(a / 0.8),
        "log_softmax": lambda a: jax.nn.log_softmax(a / 1.3),
        "logsumexp": lambda a: jax.nn.logsumexp(a, axis=-1),
        "token_log_probs": lambda a: jnp.take_along_axis(jax.nn.log_softmax(4.0 * jnp.tanh(a / 4.0)),
                                                         labels[:, None], axis=-1)[:, 0],
        "entropy": lambda a: -jnp.sum(jax.nn.softmax(a) * jax.nn.log_softmax(a), axis=-1),
    }[name]
    with jax.enable_x64(True):
        x = jnp.asarray(LOGITS)
        assert_close(jax.hessian(ours)(x), jax.hessian(plain)(x), dtype="float64", what=f"{name} hessian")
        assert_close(jax.jacfwd(ours)(x), jax.jacrev(plain)(x), dtype="float64", what=f"{name} jacfwd")


@pytest.mark.parametrize("options", OPTIONS + [{"num_items": 7}], ids=lambda o: ",".join(o) or "plain")
def test_probability_target_gradient_is_the_true_derivative(options):
    """d loss / d p_j = s (1 - eps) w_j (lse - z_j), in float32 without x64, against float64 autodiff."""
    reduction = options.get("reduction", "mean")
    upstream = RNG.standard_normal(R) if reduction == "none" else np.float64(RNG.normal())
    opts = _options(options)

    @jax.jit
    def pullback(x, p):
        value, vjp = jax.vjp(lambda a, b: sxj.cross_entropy(a, b, **opts), x, p)
        return vjp(jnp.asarray(upstream, value.dtype))

    d_x, d_p = pullback(jnp.asarray(LOGITS, jnp.float32), jnp.asarray(PROBS, jnp.float32))
    assert d_p.dtype == jnp.float32
    with jax.enable_x64(True):
        reference = {k: v for k, v in opts.items() if k != "num_items"}
        scale = R / options["num_items"] if "num_items" in options else 1.0  # num_items replaces R in the mean
        f = lambda a, b: scale * _reference_loss(a, b, kind="probs", **reference)
        x64, p64 = (jnp.asarray(np.asarray(a, np.float32), jnp.float64) for a in (LOGITS, PROBS))
        _, vjp = jax.vjp(f, x64, p64)
        want_x, want_p = vjp(jnp.asarray(upstream))
    assert_close(d_p, want_p, dtype="float32", what="d loss / d target")
    assert_close(d_x, want_x, dtype="float32", what="d loss / d logits")


def test_probability_target_gradient_of_a_fully_masked_row_is_zero():
    x = jnp.asarray(LOGITS, jnp.float32).at[1].set(-jnp.inf)
    d_p = jax.grad(sxj.cross_entropy, argnums=1)(x, jnp.asarray(PROBS, jnp.float32))
    assert np.all(np.asarray(d_p[1]) == 0) and np.all(np.isfinite(np.asarray(d_p)))


def test_forward_only_calls_do_no_gradient_work():
    """custom_jvp: the loss alone compiles to the row statistics and the loss, no (R, C) gradient."""
    x = jax.ShapeDtypeStruct((64, 1000), jnp.float32)
    t = jax.ShapeDtypeStruct((64,), jnp.int32)
    text = jax.jit(sxj.cross_entropy).lower(x, t).compile().as_text()
    assert "f32[64,1000]{1,0} fusion" not in text
