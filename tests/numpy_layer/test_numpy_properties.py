"""Properties of the NumPy layer, checked with hypothesis on arrays of varied shapes and dtypes.

Bounded finite logits (tests/strategies.py) for the identities, plus the edge strategy (-inf masks,
fully masked rows, ties, huge magnitudes) where a property must survive them. Tolerances come from
tests/compare.py, scaled where an identity compounds several roundings (said at each place).
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import softxent as sx
from compare import assert_close
from strategies import axes, edge_logits, finite_arrays, labels_for, logits, probabilities

REDUCTIONS = st.sampled_from(["none", "mean", "sum"])


def _options(draw_weight: bool, num_classes: int):
    """Strategy for cross_entropy's options (weight drawn only when asked)."""
    return st.fixed_dictionaries({
        "label_smoothing": st.sampled_from([0.0, 0.1, 0.5, 1.0]),
        "z_loss": st.sampled_from([0.0, 1e-3, 0.1]),
        "softcap": st.sampled_from([None, 0.5, 30.0]),
        "temperature": st.sampled_from([1.0, 0.3, 2.0]),
    # weights 0 or >= 0.1: a sum of weights near 0 makes "mean" (and its unweighted z-loss) overflow float32
    }, optional={"weight": hnp.arrays(np.float64, num_classes, elements=st.one_of(st.just(0.0), st.floats(0.1, 4.0)))}
        if draw_weight else {})


def _class_moved(x, axis):
    return np.moveaxis(x, axis, -1)


# --- softmax, log_softmax, logsumexp ----------------------------------------------------------------


@given(st.data())
def test_softmax_rows_sum_to_one(data):
    x = data.draw(logits(max_dims=3))
    axis = data.draw(axes(x.ndim))
    p = sx.softmax(x, axis=axis)
    assert p.dtype == x.dtype and p.shape == x.shape
    assert ((p >= 0) & (p <= 1)).all()
    dtype = str(x.dtype)
    # a sum of n correctly rounded terms: n/2 ulp at worst, inside the table's tolerance times n
    assert_close(p.sum(axis=axis, dtype=np.float64), np.ones_like(sx.logsumexp(x, axis=axis), dtype=np.float64),
                 dtype=dtype, scale=max(1, p.size // max(1, np.size(sx.logsumexp(x, axis=axis)))))


@given(edge_logits())
def test_softmax_on_edge_rows_sums_to_one_or_zero_never_nan(x):
    p = sx.softmax(x)
    lp = sx.log_softmax(x)
    lse = sx.logsumexp(x)
    masked = (x == -np.inf).all(axis=1)
    assert not np.isnan(p).any() and not np.isnan(lp).any() and not np.isnan(lse).any()
    np.testing.assert_array_equal(p[masked], 0.0)
    np.testing.assert_array_equal(lse[masked], -np.inf)
    assert_close(p[~masked].sum(axis=1, dtype=np.float64), np.ones((~masked).sum()), dtype=str(x.dtype),
                 scale=x.shape[1])
    # a -inf entry gets probability 0 and log-probability -inf, in every row
    np.testing.assert_array_equal(p[x == -np.inf], 0.0)
    np.testing.assert_array_equal(lp[x == -np.inf], -np.inf)
    assert (lp <= 0).all() and (lse[~masked] >= x[~masked].max(axis=1)).all()


@given(st.data())
def test_translation_invariance(data):
    """softmax(x + c) = softmax(x), log_softmax likewise, lse(x + c) = lse(x) + c, c constant per row."""
    x = data.draw(logits(max_dims=3, dtypes=(np.float64,), bound=20.0))
    axis = data.draw(axes(x.ndim))
    shape = np.shape(sx.logsumexp(x, axis=axis, keepdims=True))
    # integer shifts: x + c is exact for |x| <= 20 and |c| <= 64 in float64 up to the last bits of x
    c = data.draw(hnp.arrays(np.float64, shape, elements=st.integers(-64, 64).map(float)))
    y = x + c
    assert_close(sx.softmax(y, axis=axis), sx.softmax(x, axis=axis), scale=100)
    assert_close(sx.log_softmax(y, axis=axis), sx.log_softmax(x, axis=axis), scale=100)
    assert_close(sx.logsumexp(y, axis=axis, keepdims=True), sx.logsumexp(x, axis=axis, keepdims=True) + c,
                 scale=100)
    # the loss too (without z_loss, which sees lse, and softcap, which is not a shift), with its gradient
    if isinstance(axis, int):
        batch = tuple(int(s) for i, s in enumerate(x.shape) if i != axis % x.ndim)
        labels = data.draw(labels_for(batch, x.shape[axis], ignore_index=-100))
        smoothing = data.draw(st.sampled_from([0.0, 0.2]))
        loss, grad = sx.cross_entropy(y, labels, axis=axis, label_smoothing=smoothing, return_grad=True)
        ref, ref_grad = sx.cross_entropy(x, labels, axis=axis, label_smoothing=smoothing, return_grad=True)
        assert_close(loss, ref, scale=100)
        assert_close(grad, ref_grad, scale=100)


@given(logits(min_dims=1, max_dims=2, dtypes=(np.float64,), bound=10.0, max_side=5))
def test_softmax_is_the_gradient_of_logsumexp(x):
    h = 1e-6
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = h
        grad[index] = (sx.logsumexp(x + step, axis=None) - sx.logsumexp(x - step, axis=None)) / (2 * h)
    assert_close(grad, sx.softmax(x, axis=None), dtype="finite_difference", scale=10)


@given(st.data())
def test_log_softmax_is_log_of_softmax_where_finite(data):
    x = data.draw(logits(max_dims=3))
    axis = data.draw(axes(x.ndim))
    p = sx.softmax(x, axis=axis)
    lp = sx.log_softmax(x, axis=axis)
    normal = p > np.finfo(x.dtype).tiny  # log of a subnormal or 0 probability is not representative
    with np.errstate(divide="ignore"):
        logp = np.log(p.astype(np.float64))
    # log p has error ~ (p's relative error), which is a few ulp, but in absolute terms
    rtol, _ = (1e-12, None) if x.dtype == np.float64 else (2e-6, None)
    assert np.all(np.abs(lp[normal] - logp[normal]) <= 8 * rtol * (1 + np.abs(logp[normal])))


@given(st.data())
def test_temperature_equals_dividing_the_logits(data):
    x = data.draw(logits(max_dims=2, dtypes=(np.float64,), bound=20.0))
    temperature = data.draw(st.sampled_from([0.25, 0.5, 2.0, 4.0]))  # powers of 2: x / T is exact
    assert_close(sx.softmax(x, temperature=temperature), sx.softmax(x / temperature))
    assert_close(sx.log_softmax(x, temperature=temperature), sx.log_softmax(x / temperature))
    labels = data.draw(labels_for(x.shape[:-1], x.shape[-1]))
    loss, grad = sx.cross_entropy(x, labels, temperature=temperature, return_grad=True, reduction="sum")
    ref, ref_grad = sx.cross_entropy(x / temperature, labels, return_grad=True, reduction="sum")
    assert_close(loss, ref)
    assert_close(grad, ref_grad / temperature)  # chain rule through x / T


@given(st.data())
def test_hardmax_is_one_hot_of_argmax(data):
    x = data.draw(logits(min_dims=1, max_dims=3))
    if data.draw(st.booleans()):  # ties: round to a few levels
        x = np.round(x / 20.0).astype(x.dtype)
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    expected = sx.one_hot(np.argmax(x, axis=axis), x.shape[axis], axis=axis, dtype=x.dtype)
    np.testing.assert_array_equal(sx.hardmax(x, axis=axis), expected)


# --- cross-entropy -------------------------------------------------------------------------------------


@st.composite
def ce_problem(draw, probs: bool = False, weight: bool = True, ignore: bool = True):
    """(logits, target, axis, options) with classes on the last axis or on axis 1 of a K-dim input."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    ndim = draw(st.integers(1, 4))
    shape = draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=5))
    axis = 1 if ndim >= 3 and draw(st.booleans()) else -1
    x = draw(finite_arrays(shape, dtype, bound=30.0))
    num_classes = shape[axis]
    batch = shape[:axis % ndim] + shape[axis % ndim + 1:]
    if probs:
        target = draw(probabilities(shape, axis=axis))
    else:
        target = draw(labels_for(batch, num_classes, ignore_index=-100 if ignore else None))
    options = draw(_options(weight, num_classes))
    return x, target, axis, options


@given(ce_problem(), REDUCTIONS)
def test_loss_is_nonnegative(problem, reduction):
    x, t, axis, options = problem
    loss = sx.cross_entropy(x, t, axis=axis, reduction=reduction, **options)
    assert loss.dtype == x.dtype
    assert np.all(loss >= 0), loss


@given(ce_problem(probs=True), REDUCTIONS)
def test_loss_with_probability_targets_is_nonnegative(problem, reduction):
    x, p, axis, options = problem
    assert np.all(sx.cross_entropy(x, p, axis=axis, reduction=reduction, **options) >= 0)


@given(ce_problem(ignore=False))
def test_class_index_loss_equals_one_hot_probability_loss(problem):
    """Class t is the distribution onehot(t), label smoothing included. With weights "mean" normalises
    the two kinds differently (PyTorch), so "none" and "sum" are compared, and "mean" without weights.
    (Ignored rows have no probability-target twin once smoothing is on: see the ignored-rows property.)"""
    x, t, axis, options = problem
    onehot = sx.one_hot(t, x.shape[axis], axis=axis, dtype=x.dtype)
    reductions = ("none", "sum") if "weight" in options else ("none", "sum", "mean")
    for reduction in reductions:
        index_loss, index_grad = sx.cross_entropy(x, t, axis=axis, reduction=reduction, return_grad=True, **options)
        probs_loss, probs_grad = sx.cross_entropy(x, onehot, axis=axis, reduction=reduction, return_grad=True,
                                                  **options)
        assert_close(index_loss, probs_loss, dtype=str(x.dtype), scale=50, what=f"loss {reduction}")
        assert_close(index_grad, probs_grad, dtype=str(x.dtype), scale=50, what=f"grad {reduction}")


@given(st.data())
def test_cross_entropy_splits_into_entropy_plus_kl(data):
    """cross_entropy(log q, p) = H(p) + KL(p || q) for distributions p, q (q > 0)."""
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    p = data.draw(probabilities(shape))
    q = data.draw(probabilities(shape, allow_zeros=False))
    loss = sx.cross_entropy(np.log(q), p, reduction="none")
    expected = sx.entropy(p) + sx.kl_divergence(p, q)
    # log q is rounded, and the sum of p log q against H + KL differ by a few roundings of terms <= 7
    assert_close(loss, expected, scale=1000)


@given(ce_problem(), REDUCTIONS)
def test_ignored_rows_contribute_nothing(problem, reduction):
    """Dropping the ignored rows changes nothing (their share of "mean"'s denominator is 0 already)."""
    x, t, axis, options = problem
    kept = t != -100
    assume(kept.any() and not kept.all())
    loss, grad = sx.cross_entropy(x, t, axis=axis, reduction=reduction, return_grad=True, **options)
    moved, moved_grad = _class_moved(x, axis), _class_moved(grad, axis)
    np.testing.assert_array_equal(moved_grad[~kept], 0.0)
    rest, rest_grad = sx.cross_entropy(moved[kept], t[kept], reduction=reduction, return_grad=True, **options)
    if reduction == "none":
        np.testing.assert_array_equal(loss[~kept], 0.0)
        loss = loss[kept]
    assert_close(loss, rest, dtype=str(x.dtype), scale=10)
    assert_close(moved_grad[kept], rest_grad, dtype=str(x.dtype), scale=10)


@given(ce_problem(weight=False))
def test_mean_is_sum_over_kept_rows(problem):
    x, t, axis, options = problem
    kept = (t != -100).sum()
    total = sx.cross_entropy(x, t, axis=axis, reduction="sum", **options)
    mean = sx.cross_entropy(x, t, axis=axis, reduction="mean", **options)
    assert_close(mean, total / kept if kept else 0.0, dtype=str(x.dtype), scale=10)


@given(ce_problem(), st.sampled_from([1, 2, 3, 7, None]))
def test_linear_cross_entropy_equals_cross_entropy_of_the_product(problem, chunk_size):
    """x @ w.T + b then cross_entropy, for any chunk size (dividing the rows or not)."""
    logits_, t, axis, options = problem
    assume(axis == -1)
    options.pop("temperature")
    rng = np.random.default_rng(0)
    v = logits_.shape[-1]
    x = rng.normal(size=t.shape + (3,)).astype(logits_.dtype)
    w = rng.normal(size=(v, 3)).astype(logits_.dtype)
    b = rng.normal(size=v).astype(logits_.dtype)
    loss, (dx, dw, db) = sx.linear_cross_entropy(x, w, t, bias=b, chunk_size=chunk_size, return_grad=True,
                                                 reduction="sum", **options)
    z = x.astype(np.float64) @ w.astype(np.float64).T + b
    ref, dz = sx.cross_entropy(z, t, reduction="sum", return_grad=True, **options)
    dz = dz.reshape(-1, v)
    scale = 100 * max(1, t.size)  # the float32 product is rounded before the loss sees it
    assert_close(loss, ref, dtype=str(x.dtype), scale=scale)
    assert_close(dx, (dz @ w).reshape(x.shape), dtype=str(x.dtype), scale=scale)
    assert_close(dw, dz.T @ x.reshape(-1, 3), dtype=str(x.dtype), scale=scale)
    assert_close(db, dz.sum(axis=0), dtype=str(x.dtype), scale=scale)


@given(edge_logits(dtypes=(np.float64,)), st.data())
def test_cross_entropy_on_edge_rows_is_never_nan(x, data):
    labels = data.draw(labels_for(x.shape[:1], x.shape[1], ignore_index=-100))
    options = data.draw(_options(True, x.shape[1]))
    loss, grad = sx.cross_entropy(x, labels, reduction="none", return_grad=True, **options)
    assert not np.isnan(loss).any() and not np.isnan(grad).any()
    assert (loss >= 0).all()
    masked = (x == -np.inf).all(axis=1)
    np.testing.assert_array_equal(loss[masked], 0.0)
    np.testing.assert_array_equal(grad[masked], 0.0)
