"""softxent.jax.cross_entropy against the NumPy layer (every option), optax, and under jit/grad/vmap.

Shapes are tiny (compiles dominate on the CPU): (5, 7) rows for the option grid, a (2, 4, 3) input
with classes on axis 1 for the class axis, and 0-row batches for rule 5.
"""

import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp

import softxent as sx
import softxent.jax as sxj
from compare import assert_close

RNG = np.random.default_rng(20261202)
N, C = 5, 7
LOGITS = RNG.standard_normal((N, C)).astype(np.float32) * 2
LABELS = RNG.integers(0, C, N)
LABELS[1] = -100  # one ignored row everywhere
PROBS = RNG.dirichlet(np.ones(C), N).astype(np.float32)
WEIGHT = (RNG.random(C) + 0.2).astype(np.float32)

# each set of options is one compile (value and gradient together), so the grid combines options
OPTIONS = [
    {},
    {"weight": WEIGHT, "label_smoothing": 0.1},
    {"z_loss": 1e-2, "softcap": 2.5},
    {"temperature": 0.6, "reduction": "sum"},
    {"softcap": 3.0, "temperature": 1.7, "z_loss": 1e-3, "label_smoothing": 0.2},
    {"reduction": "none", "weight": WEIGHT, "label_smoothing": 0.1},
    {"num_items": 11, "weight": WEIGHT},
]


def _upstream(reduction):
    """A random upstream gradient: per row for "none", a scalar otherwise (never just .sum())."""
    return RNG.standard_normal(N).astype(np.float32) if reduction == "none" else np.float32(RNG.normal())


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_value_and_gradient_match_numpy_layer(kind, options):
    target = LABELS if kind == "index" else PROBS
    upstream = _upstream(options.get("reduction", "mean"))
    expected, grad = sx.cross_entropy(LOGITS.astype(np.float64), target, return_grad=True, **options)
    grad = grad * (upstream[:, None] if options.get("reduction") == "none" else upstream)

    @jax.jit
    def value_and_grad(x):
        value, pullback = jax.vjp(lambda a: sxj.cross_entropy(a, jnp.asarray(target), **options), x)
        return value, pullback(jnp.asarray(upstream))[0]

    value, got = value_and_grad(jnp.asarray(LOGITS))
    assert value.dtype == jnp.float32
    assert_close(value, expected, dtype="float32", what="loss")
    assert_close(got, grad, dtype="float32", what="gradient")


def test_class_axis_and_per_row_shape():
    x = RNG.standard_normal((2, 4, 3)).astype(np.float32)  # classes on axis 1
    t = RNG.integers(0, 4, (2, 3))
    got = sxj.cross_entropy(jnp.asarray(x), jnp.asarray(t), axis=1, reduction="none")
    assert got.shape == (2, 3)
    assert_close(got, sx.cross_entropy(x.astype(np.float64), t, axis=1, reduction="none"), dtype="float32")
    grad = jax.grad(lambda a: sxj.cross_entropy(a, jnp.asarray(t), axis=1))(jnp.asarray(x))
    assert_close(grad, sx.cross_entropy(x.astype(np.float64), t, axis=1, return_grad=True)[1], dtype="float32")


# --- optax --------------------------------------------------------------------------------------------


def test_matches_optax_integer_labels_and_probabilities():
    labels = jnp.asarray(np.where(LABELS < 0, 0, LABELS))
    probs = jnp.asarray(PROBS)

    @jax.jit  # optax's ops compile one by one when called eagerly
    def both(x):
        ours = (sxj.cross_entropy(x, labels, reduction="none"), sxj.cross_entropy(x, probs, reduction="none"),
                jax.grad(lambda a: sxj.cross_entropy(a, labels, reduction="sum"))(x),
                jax.grad(lambda a: sxj.cross_entropy(a, probs, reduction="sum"))(x))
        theirs = (optax.softmax_cross_entropy_with_integer_labels(x, labels), optax.softmax_cross_entropy(x, probs),
                  jax.grad(lambda a: optax.softmax_cross_entropy_with_integer_labels(a, labels).sum())(x),
                  jax.grad(lambda a: optax.softmax_cross_entropy(a, probs).sum())(x))
        return ours, theirs

    for ours, theirs in zip(*both(jnp.asarray(LOGITS))):
        assert_close(ours, theirs, dtype="float32")


def test_label_smoothing_is_optax_smooth_labels():
    labels = jnp.asarray(np.where(LABELS < 0, 0, LABELS))
    alpha = 0.3

    @jax.jit
    def three(x):
        smoothed = optax.smooth_labels(jax.nn.one_hot(labels, C), alpha)
        # class indices smoothed by us, and optax's smoothed distribution as a probability target
        return (optax.softmax_cross_entropy(x, smoothed),
                sxj.cross_entropy(x, labels, label_smoothing=alpha, reduction="none"),
                sxj.cross_entropy(x, smoothed, reduction="none"))

    theirs, ours_index, ours_probs = three(jnp.asarray(LOGITS))
    assert_close(ours_index, theirs, dtype="float32")
    assert_close(ours_probs, theirs, dtype="float32")


def test_where_masks_are_nan_free_and_match_optax_where_it_is_defined():
    x = jnp.asarray(LOGITS)
    where = jnp.asarray(RNG.random((N, C)) < 0.7).at[:, 0].set(True).at[3].set(False)  # row 3 fully masked
    labels = jnp.asarray(np.zeros(N, dtype=np.int64))  # class 0 is never masked but in row 3
    loss = lambda a: sxj.cross_entropy(a, labels, where=where, reduction="sum")
    grad = jax.grad(loss)(x)
    assert np.isfinite(np.asarray(grad)).all() and np.isfinite(float(loss(x)))
    assert not np.asarray(grad)[~np.asarray(where)].any()  # masked entries: zero gradient
    per_row = sxj.cross_entropy(x, labels, where=where, reduction="none")
    assert float(per_row[3]) == 0.0  # a fully masked row: 0 (rule 2)
    theirs = jax.jit(optax.softmax_cross_entropy_with_integer_labels)(x, labels, where=where)
    keep = np.arange(N) != 3
    assert_close(np.asarray(per_row)[keep], np.asarray(theirs)[keep], dtype="float32")
    # the same masks as -inf logits with a probability target that is 0 there (rule 4): optax's
    # -sum p log q gives 0 * -inf = NaN; ours is finite and equal to the where= form
    masked = jnp.where(where, x, -jnp.inf)
    p = jnp.where(where, jnp.asarray(PROBS), 0.0)
    p = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-30)
    ours = sxj.cross_entropy(masked, p, reduction="none")
    assert np.isfinite(np.asarray(ours)).all()
    assert np.isfinite(np.asarray(jax.grad(lambda a: sxj.cross_entropy(a, p))(masked))).all()
    assert_close(ours, sxj.cross_entropy(x, p, where=where, reduction="none"), dtype="float32")


# --- transformations, dtypes --------------------------------------------------------------------------


def test_vmap_equals_a_loop_and_nests_under_jit_and_grad():
    xs = jnp.asarray(RNG.standard_normal((3, N, C)).astype(np.float32))
    ts = jnp.asarray(RNG.integers(0, C, (3, N)))
    f = lambda x, t: sxj.cross_entropy(x, t, label_smoothing=0.1, z_loss=1e-3)
    batched = jax.jit(jax.vmap(jax.value_and_grad(f)))(xs, ts)
    for i in range(3):
        value, grad = jax.value_and_grad(f)(xs[i], ts[i])
        assert_close(batched[0][i], value, dtype="float32")
        assert_close(batched[1][i], grad, dtype="float32")
    # grad of a jitted function of a vmapped one
    outer = jax.grad(jax.jit(lambda x: jnp.sum(jax.vmap(f)(x, ts) ** 2)))(xs)
    inner = jax.vmap(jax.grad(f))(xs, ts) * (2 * jax.vmap(f)(xs, ts))[:, None, None]
    assert_close(outer, inner, dtype="float32")


def test_bfloat16_is_accumulated_in_float32_and_rounded_once():
    x = jnp.asarray(LOGITS).astype(jnp.bfloat16)
    labels = jnp.asarray(LABELS)
    value = sxj.cross_entropy(x, labels, reduction="none", label_smoothing=0.1)
    assert value.dtype == jnp.bfloat16
    exact = sx.cross_entropy(np.asarray(x.astype(jnp.float32), np.float64), LABELS, reduction="none",
                             label_smoothing=0.1)
    assert np.array_equal(np.asarray(value.astype(jnp.float32)), np.asarray(jnp.asarray(exact).astype(jnp.bfloat16)
                                                                         .astype(jnp.float32)))
    grad = jax.grad(lambda a: sxj.cross_entropy(a, labels).astype(jnp.float32))(x)
    assert grad.dtype == jnp.bfloat16
    assert_close(grad, sx.cross_entropy(np.asarray(x.astype(jnp.float32), np.float64), LABELS, return_grad=True)[1],
                 dtype="bfloat16")


def test_float64_with_x64():
    with jax.enable_x64(True):
        x = jnp.asarray(LOGITS, dtype=jnp.float64)
        value = sxj.cross_entropy(x, jnp.asarray(LABELS), z_loss=1e-3, weight=jnp.asarray(WEIGHT, jnp.float64))
        assert value.dtype == jnp.float64
        expected, grad = sx.cross_entropy(LOGITS.astype(np.float64), LABELS, z_loss=1e-3, weight=WEIGHT,
                                          return_grad=True)
        assert_close(value, expected, dtype="float64")
        g = jax.grad(lambda a: sxj.cross_entropy(a, jnp.asarray(LABELS), z_loss=1e-3,
                                                 weight=jnp.asarray(WEIGHT, jnp.float64)))(x)
        assert_close(g, grad, dtype="float64")


# --- rule 5, errors --------------------------------------------------------------------------------------


def test_all_ignored_mean_is_zero_with_zero_gradient_and_empty_batches():
    labels = jnp.full((N,), -100)
    value, grad = jax.value_and_grad(lambda a: sxj.cross_entropy(a, labels))(jnp.asarray(LOGITS))
    assert float(value) == 0.0 and not np.asarray(grad).any()
    empty = jnp.zeros((0, C))
    assert float(sxj.cross_entropy(empty, jnp.zeros((0,), jnp.int32))) == 0.0
    assert sxj.cross_entropy(empty, jnp.zeros((0,), jnp.int32), reduction="none").shape == (0,)


def _message(fn):
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    return info.type, str(info.value)


@pytest.mark.parametrize("mistake", [
    lambda m: m.cross_entropy(LOGITS, LABELS[:3]),  # target shape
    lambda m: m.cross_entropy(LOGITS, LABELS.astype(np.float32)),  # float labels without the logits' shape
    lambda m: m.cross_entropy(LOGITS, LABELS, reduction="avg"),
    lambda m: m.cross_entropy(LOGITS, LABELS, label_smoothing=1.5),
    lambda m: m.cross_entropy(LOGITS, LABELS, temperature=0.0),
    lambda m: m.cross_entropy(LOGITS, LABELS, softcap=-1.0),
    lambda m: m.cross_entropy(LOGITS, LABELS, weight=WEIGHT[:3]),
    lambda m: m.cross_entropy(LOGITS, LABELS, num_items=4, reduction="sum"),
    lambda m: m.cross_entropy(LOGITS, LABELS, axis=2),
    lambda m: m.cross_entropy(LOGITS, np.where(LABELS < 0, 9, LABELS)),  # value check, eager
    lambda m: m.cross_entropy(LOGITS, -PROBS),
    lambda m: m.cross_entropy(LOGITS, LABELS, weight=-WEIGHT),
], ids=["shape", "float-labels", "reduction", "smoothing", "temperature", "softcap", "weight-shape",
        "num-items", "axis", "label-value", "probability-value", "weight-value"])
def test_errors_say_what_the_numpy_layer_says(mistake):
    expected = _message(lambda: mistake(sx))
    assert _message(lambda: mistake(sxj)) == expected


def test_shape_errors_raise_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="target must hold class indices of shape"):
        jax.jit(lambda x, t: sxj.cross_entropy(x, t))(jnp.asarray(LOGITS), jnp.asarray(LABELS[:3]))


def test_bad_label_under_jit_is_a_nan_row_and_check_inputs_reports_it():
    from jax.experimental import checkify

    labels = jnp.asarray(np.where(np.arange(N) == 2, C, LABELS))  # class C at row 2: out of range
    per_row = jax.jit(lambda x, t: sxj.cross_entropy(x, t, reduction="none"))(jnp.asarray(LOGITS), labels)
    assert np.isnan(per_row[2]) and np.isfinite(np.delete(np.asarray(per_row), 2)).all()
    grad = jax.jit(jax.grad(lambda x, t: sxj.cross_entropy(x, t, reduction="sum")))(jnp.asarray(LOGITS), labels)
    assert np.isnan(np.asarray(grad)[2]).all()
    with pytest.raises(ValueError, match=r"class index 7 at position \(2,\)"):
        sxj.check_inputs(LOGITS, labels)
    checked = jax.jit(checkify.checkify(lambda x, t: sxj.check_inputs(x, t)))
    err, _ = checked(jnp.asarray(LOGITS), labels)
    with pytest.raises(checkify.JaxRuntimeError, match="class index 7 at flat position 2"):
        err.throw()
    err, _ = checked(jnp.asarray(LOGITS), jnp.asarray(LABELS))
    err.throw()  # good labels: nothing to throw


def _tie_rows(C):
    """Rows whose top entries (e = 1) the gradient's kernel must count: ties inside one block of 128
    classes, ties in blocks far apart (the full count's path), a near-tie whose exp rounds to 1, +inf
    entries in two blocks, a fully masked row, and a plain row."""
    rows = RNG.standard_normal((6, C)).astype(np.float32)
    rows[0, [3, 7]] = 5.0                                   # two maxima in the first block
    rows[1, [3, 300, C - 1]] = 5.0                          # three maxima in three blocks
    rows[2, 10] = 0.25
    rows[2, 11] = np.nextafter(np.float32(0.25), np.float32(-1))  # gap -1.5e-8: exp rounds to 1
    rows[3, [5, 200]] = np.inf
    rows[4] = -np.inf
    return rows


@pytest.mark.parametrize("C", [512, 384, 7 * 64])
def test_value_and_gradient_count_every_top_entry(C):
    """Regression for the gradient's kernel (terms written out, the top entries located by blocks)."""
    x = _tie_rows(C)
    t = np.array([7, 300, 10, 5, 0, 1])
    expected, grad = sx.cross_entropy(x.astype(np.float64), t, reduction="sum", return_grad=True)
    value, got = jax.jit(jax.value_and_grad(lambda a: sxj.cross_entropy(a, jnp.asarray(t), reduction="sum")))(
        jnp.asarray(x))
    assert_close(value, expected, dtype="float32", what="loss")
    assert_close(got, grad, dtype="float32", what="gradient")
    # only the first block of ties: the cheap path (no row with top entries in two blocks)
    value, got = jax.jit(jax.value_and_grad(lambda a: sxj.cross_entropy(a, jnp.asarray(t[[0, 2, 4, 5]]),
                                                                        reduction="sum")))(jnp.asarray(x[[0, 2, 4, 5]]))
    expected, grad = sx.cross_entropy(x[[0, 2, 4, 5]].astype(np.float64), t[[0, 2, 4, 5]], reduction="sum",
                                      return_grad=True)
    assert_close(value, expected, dtype="float32", what="loss")
    assert_close(got, grad, dtype="float32", what="gradient")
