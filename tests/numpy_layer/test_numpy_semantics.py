"""The ten semantic decisions of API.md, each pinned on small hand-made inputs, plus axes, keepdims,
logsumexp's `b` (against scipy.special) and `where`.

References are float64 NumPy written out here the naive way, on inputs small enough for that to be
exact to float64 rounding, or scipy.special; hand values are explained where they appear.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special as ss

import softxent as sx
from compare import assert_close

INF = np.inf
ROWS = np.array([[1.0, 2.0, 3.0, -1.0], [0.5, 0.5, -2.0, 4.0], [3.0, -3.0, 0.0, 1.0]])  # (3, 4)


def _no_nan(*arrays):
    for a in arrays:
        assert not np.isnan(np.asarray(a, dtype=np.float64)).any(), a


# --- rule 1: axis as int, tuple of ints or None; keepdims ---------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, -1, 2, (0, 2), (2, 0), (-1, 1), (0, 1, 2), None])
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_axis_int_tuple_none_match_scipy(name, axis):
    x = np.random.default_rng(1).normal(scale=3, size=(2, 3, 4))
    assert_close(getattr(sx, name)(x, axis=axis), getattr(ss, name)(x, axis=axis), what=f"{name} axis={axis}")


@pytest.mark.parametrize("axis", [1, (0, 2), None])
def test_logsumexp_keepdims_matches_scipy(axis):
    x = np.random.default_rng(2).normal(size=(2, 3, 4))
    got = sx.logsumexp(x, axis=axis, keepdims=True)
    assert_close(got, ss.logsumexp(x, axis=axis, keepdims=True))
    # keepdims is what makes x - lse broadcast back: that is log_softmax over the same axes
    assert_close(x - got, sx.log_softmax(x, axis=axis))


@pytest.mark.parametrize("axis", [(0, 2), None])
def test_hardmax_over_several_axes_marks_the_first_maximum_in_c_order(axis):
    x = np.zeros((2, 3, 2))
    x[1, 0, 0] = x[1, 2, 1] = 5.0  # a tie across the reduced axes
    expected = np.zeros_like(x)
    if axis is None:
        expected[1, 0, 0] = 1.0
    else:  # each of the 3 groups x[:, k, :] has its own first maximum
        expected[1, 0, 0] = expected[0, 1, 0] = expected[1, 2, 1] = 1.0
    np.testing.assert_array_equal(sx.hardmax(x, axis=axis), expected)


def test_cross_entropy_class_axis_one_equals_moving_it_last():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 3, 4))  # (N, C, d1, d2)
    t = rng.integers(0, 5, size=(2, 3, 4))
    for reduction in ("none", "mean", "sum"):
        got, grad = sx.cross_entropy(x, t, axis=1, reduction=reduction, return_grad=True)
        ref, ref_grad = sx.cross_entropy(np.moveaxis(x, 1, -1), t, reduction=reduction, return_grad=True)
        assert_close(got, ref)
        assert_close(grad, np.moveaxis(ref_grad, -1, 1))


def test_one_hot_axis_places_the_class_axis():
    labels = np.array([[0, 2, 1], [1, 1, 0]])
    for axis in (0, 1, 2, -1, -3):
        got = sx.one_hot(labels, 3, axis=axis)
        np.testing.assert_array_equal(got, np.moveaxis(np.eye(3)[labels], -1, axis))
    assert sx.one_hot(labels, 3, dtype=np.float32).dtype == np.float32
    assert sx.one_hot(np.zeros(0, int), 4).shape == (0, 4)


# --- rule 2: fully masked rows ---------------------------------------------------------------------


def _masked_rows():
    x = ROWS.copy()
    x[1] = -INF  # a fully masked row between two ordinary ones
    return x


def test_fully_masked_row_softmax_zeros_log_softmax_and_logsumexp_minus_inf():
    x = _masked_rows()
    for temperature in (1.0, 0.5):
        p = sx.softmax(x, temperature=temperature)
        lp = sx.log_softmax(x, temperature=temperature)
        np.testing.assert_array_equal(p[1], 0.0)
        np.testing.assert_array_equal(lp[1], -INF)
        assert_close(p[[0, 2]], ss.softmax(ROWS[[0, 2]] / temperature, axis=-1))
        assert_close(lp[[0, 2]], ss.log_softmax(ROWS[[0, 2]] / temperature, axis=-1))
    lse, sign = sx.logsumexp(x, return_sign=True)
    assert lse[1] == -INF and sign[1] == 0.0
    assert sx.logsumexp(x, b=np.ones(4))[1] == -INF
    assert sx.logsumexp(x, keepdims=True)[1, 0] == -INF


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_where_all_false_is_a_fully_masked_row(name):
    where = np.ones_like(ROWS, dtype=bool)
    where[1] = False
    got = getattr(sx, name)(ROWS, where=where)
    expected = getattr(sx, name)(_masked_rows())
    np.testing.assert_array_equal(got, expected)
    _no_nan(got)


def test_fully_masked_row_has_zero_vjp():
    x = _masked_rows()
    g = np.random.default_rng(4).normal(size=x.shape)
    dp = sx.softmax_grad(sx.softmax(x), g)
    dlp = sx.log_softmax_grad(sx.log_softmax(x), g)
    np.testing.assert_array_equal(dp[1], 0.0)
    np.testing.assert_array_equal(dlp[1], 0.0)
    _no_nan(dp, dlp)


CE_OPTIONS = [
    {},
    {"weight": np.array([1.0, 2.0, 0.5, 3.0])},
    {"label_smoothing": 0.2},
    {"z_loss": 1e-2},
    {"softcap": 2.0},
    {"temperature": 0.7},
    {"weight": np.array([1.0, 2.0, 0.5, 3.0]), "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0,
     "temperature": 2.0},
]


@pytest.mark.parametrize("options", CE_OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("targets", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_fully_masked_row_is_zero_and_counted(options, targets, reduction):
    """Loss 0 and gradient 0 on the masked row, and "mean" still counts it (API.md rule 2)."""
    x = _masked_rows()
    t = np.array([2, 1, 0]) if targets == "index" else ss.softmax(ROWS * 0.3, axis=-1)
    loss, grad = sx.cross_entropy(x, t, reduction=reduction, return_grad=True, **options)
    _no_nan(loss, grad)
    np.testing.assert_array_equal(grad[1], 0.0)
    # the two other rows, alone, with the masked row's share of the denominator put back
    per_row = sx.cross_entropy(x, t, reduction="none", **options)
    assert per_row[1] == 0.0
    others = sx.cross_entropy(ROWS[[0, 2]], t[[0, 2]], reduction="none", **options)
    assert_close(per_row[[0, 2]], others)
    if reduction == "mean":
        weight = options.get("weight")
        counted = 3.0 if targets == "probs" or weight is None else weight[t].sum()
        assert_close(loss, others.sum() / counted)


def test_linear_cross_entropy_masks_padded_vocabulary_with_minus_inf_bias():
    """A -inf bias masks classes (vocabulary padding): finite loss and gradients, as cross_entropy."""
    rng = np.random.default_rng(5)
    x, w = rng.normal(size=(6, 3)), rng.normal(size=(5, 3))
    bias = np.array([0.1, -0.2, 0.3, -INF, -INF])
    t = np.array([0, 1, 2, 0, -100, 2])
    loss, (dx, dw, db) = sx.linear_cross_entropy(x, w, t, bias=bias, chunk_size=4, return_grad=True,
                                                 label_smoothing=0.0, z_loss=1e-3)
    ref, dlogits = sx.cross_entropy(x @ w.T + bias, t, z_loss=1e-3, return_grad=True)
    _no_nan(loss, dx, dw, db)
    assert_close(loss, ref)
    assert_close(dx, dlogits @ w)
    assert_close(dw, dlogits.T @ x)
    assert_close(db, dlogits.sum(axis=0))
    np.testing.assert_array_equal(dw[3:], 0.0)


# --- rule 3: +inf takes the limit, NaN propagates ----------------------------------------------------


def test_plus_inf_logits_share_the_mass_equally():
    x = np.array([[INF, 1.0, INF, -INF], [1.0, 2.0, 3.0, 4.0]])
    p = sx.softmax(x)
    np.testing.assert_array_equal(p[0], [0.5, 0.0, 0.5, 0.0])
    np.testing.assert_array_equal(sx.softmax(x, temperature=3.0)[0], [0.5, 0.0, 0.5, 0.0])
    np.testing.assert_array_equal(sx.log_softmax(x)[0], [-np.log(2), -INF, -np.log(2), -INF])
    assert sx.logsumexp(x)[0] == INF
    assert_close(p[1], ss.softmax(x[1]))
    np.testing.assert_array_equal(sx.hardmax(x)[0], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(sx.softmax(np.array([INF, INF, INF], np.float32)), np.float32(1 / 3))


def test_cross_entropy_plus_inf_logits_take_the_limit():
    """lse(x) - x_t -> log k when x_t is one of k entries going to +inf, and the gradient p - onehot."""
    x = np.array([[INF, 1.0, INF, 0.0]])
    loss, grad = sx.cross_entropy(x, [0], return_grad=True)
    assert_close(loss, np.log(2.0))
    assert_close(grad, [[-0.5, 0.0, 0.5, 0.0]])
    assert sx.cross_entropy(x, [1]) == INF  # a finite target under +inf entries has probability 0


def test_nan_propagates_to_its_own_row_only():
    x = ROWS.copy()
    x[1, 2] = np.nan
    for name in ("softmax", "log_softmax", "hardmax"):
        out = getattr(sx, name)(x)
        assert np.isnan(out[1]).all(), name
        assert not np.isnan(out[[0, 2]]).any(), name
    lse = sx.logsumexp(x)
    assert np.isnan(lse[1]) and not np.isnan(lse[[0, 2]]).any()
    per_row, grad = sx.cross_entropy(x, [0, 1, 2], reduction="none", return_grad=True)
    assert np.isnan(per_row[1]) and np.isnan(grad[1]).all()
    assert not np.isnan(per_row[[0, 2]]).any() and not np.isnan(grad[[0, 2]]).any()
    assert np.isnan(sx.cross_entropy(x, [0, 1, 2]))
    # NaN beside +inf or -inf is still NaN, not the +inf limit nor a masked row
    assert np.isnan(sx.softmax([np.nan, INF])).all()
    assert np.isnan(sx.softmax([-INF, np.nan])).all()
    assert np.isnan(sx.logsumexp([INF, np.nan]))


# --- rule 4: 0 log 0 = 0 with probability targets ------------------------------------------------------


@pytest.mark.parametrize("weight", [None, [1.0, 2.0, 3.0]])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_zero_probability_on_minus_inf_logit_gives_a_finite_loss(weight, reduction):
    x = np.array([[-INF, 0.0, 1.0], [2.0, -INF, -INF]])
    p = np.array([[0.0, 0.25, 0.75], [1.0, 0.0, 0.0]])
    loss, grad = sx.cross_entropy(x, p, weight=weight, reduction=reduction, return_grad=True)
    w = np.ones(3) if weight is None else np.asarray(weight)
    row0 = -(w[1] * 0.25 * ss.log_softmax([0.0, 1.0])[0] + w[2] * 0.75 * ss.log_softmax([0.0, 1.0])[1])
    expected = np.array([row0, 0.0])  # row 1: all its mass on the one finite logit, log 1 = 0
    expected = {"none": expected, "mean": expected.mean(), "sum": expected.sum()}[reduction]
    assert_close(loss, expected)
    assert np.isfinite(grad).all()


def test_regression_weighted_row_sums_warned_on_zero_times_minus_inf():
    """The 0 * -inf fallback of _weighted_row_sums ran outside np.errstate and raised RuntimeWarning
    (an error under the suite's filterwarnings) for a zero target probability on a -inf logit."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = sx.cross_entropy([[-INF, 0.0]], np.array([[0.0, 1.0]]), return_grad=True)[0]
        weighted = sx.cross_entropy([[-INF, 0.0, 1.0]], [1], weight=[0.0, 1.0, 1.0], label_smoothing=0.1)
    assert loss == 0.0
    assert np.isfinite(weighted)


def test_entropy_and_kl_use_zero_log_zero():
    assert sx.entropy([1.0, 0.0, 0.0]) == 0.0
    assert_close(sx.entropy([0.5, 0.0, 0.5]), np.log(2.0))
    assert sx.kl_divergence([1.0, 0.0], [1.0, 0.0]) == 0.0
    assert_close(sx.kl_divergence([0.5, 0.5, 0.0], [0.25, 0.25, 0.5]), np.log(2.0))
    assert sx.kl_divergence([0.5, 0.5], [1.0, 0.0]) == INF  # mass where q has none
    assert_close(sx.entropy(np.array([[0.2, 0.8], [1.0, 0.0]]), axis=None), ss.entr([0.2, 0.8]).sum())


def test_label_smoothing_on_a_masked_class_is_infinite_not_nan():
    """Smoothing puts e/C of the target on every class, so a -inf logit costs +inf (as torch)."""
    loss = sx.cross_entropy([[-INF, 0.0, 1.0]], [2], label_smoothing=0.1)
    assert loss == INF


# --- rule 5: all ignored, empty batch ----------------------------------------------------------------


@pytest.mark.parametrize("options", CE_OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_all_ignored_mean_is_zero_with_zero_gradient(options):
    t = np.array([-100, -100, -100])
    for reduction, expected in (("mean", 0.0), ("sum", 0.0), ("none", np.zeros(3))):
        loss, grad = sx.cross_entropy(ROWS, t, reduction=reduction, return_grad=True, **options)
        np.testing.assert_array_equal(loss, expected)
        np.testing.assert_array_equal(grad, 0.0)
    linear_options = {k: v for k, v in options.items() if k != "temperature"}  # no temperature there
    loss, (dx, dw, db) = sx.linear_cross_entropy(ROWS[:, :3], ROWS.T, t, bias=np.zeros(4), return_grad=True,
                                                 **linear_options)
    assert loss == 0.0
    for g in (dx, dw, db):
        np.testing.assert_array_equal(g, 0.0)


def test_zero_weight_on_every_kept_target_gives_zero_not_nan():
    """sum of weight[t] is 0: "mean" is 0/0, decided like the all-ignored case (rule 5)."""
    loss, grad = sx.cross_entropy(ROWS, [0, 0, 1], weight=[0.0, 0.0, 1.0, 1.0], return_grad=True)
    assert loss == 0.0
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("targets", ["index", "probs"])
def test_empty_batch(targets):
    x = np.zeros((0, 4), np.float32)
    t = np.zeros(0, np.int64) if targets == "index" else np.zeros((0, 4), np.float32)
    none, grad = sx.cross_entropy(x, t, reduction="none", return_grad=True)
    assert none.shape == (0,) and none.dtype == np.float32 and grad.shape == (0, 4)
    for reduction in ("mean", "sum"):
        loss, grad = sx.cross_entropy(x, t, reduction=reduction, return_grad=True)
        assert loss == 0.0 and loss.dtype == np.float32 and grad.shape == (0, 4)
    loss, (dx, dw, db) = sx.linear_cross_entropy(np.zeros((0, 3)), np.ones((4, 3)), t, bias=np.ones(4),
                                                 return_grad=True)
    assert loss == 0.0 and dx.shape == (0, 3)
    np.testing.assert_array_equal(dw, 0.0)
    np.testing.assert_array_equal(db, 0.0)
    # K-dim with an empty spatial axis
    assert sx.cross_entropy(np.zeros((2, 4, 0)), np.zeros((2, 0), int), axis=1) == 0.0
    assert sx.softmax(np.zeros((0, 3))).shape == (0, 3)
    assert sx.logsumexp(np.zeros((0, 3))).shape == (0,)


@pytest.mark.parametrize("options", [{"z_loss": 0.1}, {"label_smoothing": 0.1},
                                     {"label_smoothing": 0.1, "weight": [1.0, 2.0, 3.0], "softcap": 2.0}],
                         ids=lambda o: ",".join(o))
def test_regression_ignored_rows_with_nonfinite_logits_gave_nan(options):
    """An ignored row's z_loss and smoothing terms were multiplied by the kept mask, and its gradient by 0,
    so +inf or NaN logits there (padding positions) gave inf * 0 = NaN and poisoned the whole loss.
    Ignored rows contribute exactly 0 loss and 0 gradient, whatever their logits (torch: NaN gradient)."""
    x = np.array([[INF, 0.0, 1.0], [np.nan, 0.0, 1.0], [1.0, 2.0, 3.0]])
    t = np.array([-100, -100, 2])
    loss, grad = sx.cross_entropy(x, t, return_grad=True, **options)
    ref, ref_grad = sx.cross_entropy(x[2:], t[2:], return_grad=True, **options)
    assert_close(loss, ref)
    np.testing.assert_array_equal(grad[:2], 0.0)
    assert_close(grad[2:], ref_grad)
    np.testing.assert_array_equal(sx.cross_entropy(x, t, reduction="none", **options)[:2], 0.0)


# --- rule 6: PyTorch's weighted mean and label smoothing ---------------------------------------------


def _reference_ce(x, t, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """PyTorch's documented formula written out in float64, class-index targets."""
    lp = ss.log_softmax(x, axis=-1)
    n, c = x.shape
    w = np.ones(c) if weight is None else np.asarray(weight, float)
    kept = t != ignore_index
    safe = np.where(kept, t, 0)
    nll = -lp[np.arange(n), safe] * w[safe] * kept
    smooth = -(lp * w).sum(axis=1) * kept
    if reduction == "none":
        return (1 - label_smoothing) * nll + label_smoothing / c * smooth
    if reduction == "sum":
        return (1 - label_smoothing) * nll.sum() + label_smoothing / c * smooth.sum()
    denominator = (w[safe] * kept).sum()
    return ((1 - label_smoothing) * nll.sum() + label_smoothing / c * smooth.sum()) / denominator


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_weighted_mean_and_smoothing_follow_pytorch(reduction, label_smoothing, ignore_index):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(7, 4))
    t = np.array([0, 1, 2, 3, -100, 1, 2]) if ignore_index == -100 else np.array([0, 1, 2, 3, 1, 1, 2])
    weight = np.array([0.5, 2.0, 1.0, 4.0])
    got = sx.cross_entropy(x, t, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                           reduction=reduction)
    assert_close(got, _reference_ce(x, t, weight, ignore_index, label_smoothing, reduction))


def test_probability_targets_mean_divides_by_rows_even_with_weights():
    x = np.random.default_rng(7).normal(size=(2, 3, 5))  # K-dim: 2 * 5 = 10 rows, classes on axis 1
    p = ss.softmax(np.random.default_rng(8).normal(size=x.shape), axis=1)
    w = np.array([1.0, 3.0, 0.5])
    per_row = -(p * ss.log_softmax(x, axis=1) * w[:, None]).sum(axis=1)
    assert_close(sx.cross_entropy(x, p, axis=1, weight=w), per_row.sum() / 10)
    # smoothing mixes the target with the uniform distribution first
    q = 0.8 * p + 0.2 / 3
    ref = -(q * ss.log_softmax(x, axis=1) * w[:, None]).sum(axis=1).mean()
    assert_close(sx.cross_entropy(x, p, axis=1, weight=w, label_smoothing=0.2), ref)


def test_z_loss_is_unweighted_and_shares_the_mean_denominator():
    x = np.random.default_rng(9).normal(size=(4, 3))
    t = np.array([0, 2, -100, 1])
    w = np.array([2.0, 1.0, 0.5])
    lse = ss.logsumexp(x, axis=-1)
    z = 1e-2 * (lse ** 2) * (t != -100)
    base = _reference_ce(x, t, w, reduction="none")
    denominator = w[[0, 2, 1]].sum()
    assert_close(sx.cross_entropy(x, t, weight=w, z_loss=1e-2), (base + z).sum() / denominator)
    assert_close(sx.cross_entropy(x, t, weight=w, z_loss=1e-2, reduction="none"), base + z)


def test_softcap_comes_before_temperature():
    x = np.random.default_rng(10).normal(scale=5, size=(3, 4))
    t = np.array([0, 3, 1])
    z = 2.0 * np.tanh(x / 2.0) / 0.5
    assert_close(sx.cross_entropy(x, t, softcap=2.0, temperature=0.5), _reference_ce(z, t))


# --- rule 7: labels are never wrapped around -------------------------------------------------------


def test_negative_label_is_an_error_not_a_wrap_around():
    with pytest.raises(ValueError, match=r"index -1 at position \(2"):
        sx.cross_entropy(ROWS, [0, 1, -1])


def test_ignore_index_inside_the_class_range_ignores_that_class():
    got = sx.cross_entropy(ROWS, [0, 1, 2], ignore_index=1, reduction="none")
    assert got[1] == 0.0
    assert_close(got[[0, 2]], _reference_ce(ROWS[[0, 2]], np.array([0, 2]), reduction="none"))


def test_ignore_index_applies_to_linear_cross_entropy():
    rng = np.random.default_rng(11)
    x, w = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    t = np.array([0, -7, 4, -7])
    assert_close(sx.linear_cross_entropy(x, w, t, ignore_index=-7), sx.cross_entropy(x @ w.T, t, ignore_index=-7))


# --- rule 8: float16 accumulated in float32 (or wider), results in float16 ------------------------------


def _within_float16_rounding(actual, exact, what):
    assert actual.dtype == np.float16, (what, actual.dtype)
    rounded = np.asarray(exact).astype(np.float16)
    ulp = np.spacing(np.abs(rounded)).astype(np.float64)
    error = np.abs(actual.astype(np.float64) - exact)
    assert (error <= ulp).all(), f"{what}: {np.max(error / ulp):.2f} float16 ulp"


@pytest.mark.parametrize("classes", [5, 4099])
def test_float16_results_are_float64_results_rounded(classes):
    """Long rows too: summing 4099 float16 terms in float16 would lose most of the tail."""
    rng = np.random.default_rng(12)
    x16 = rng.normal(scale=2, size=(3, classes)).astype(np.float16)
    x = x16.astype(np.float64)
    _within_float16_rounding(sx.softmax(x16), ss.softmax(x, axis=-1), "softmax")
    _within_float16_rounding(sx.softmax(x16, temperature=0.5), ss.softmax(2 * x, axis=-1), "softmax T")
    _within_float16_rounding(sx.log_softmax(x16), ss.log_softmax(x, axis=-1), "log_softmax")
    _within_float16_rounding(sx.logsumexp(x16), ss.logsumexp(x, axis=-1), "logsumexp")
    t = rng.integers(0, classes, size=3)
    lp = ss.log_softmax(x, axis=-1)
    loss, grad = sx.cross_entropy(x16, t, return_grad=True)
    _within_float16_rounding(loss, -lp[np.arange(3), t].mean(), "cross_entropy")
    exact_grad = np.exp(lp)
    exact_grad[np.arange(3), t] -= 1
    _within_float16_rounding(grad, exact_grad / 3, "cross_entropy grad")
    assert sx.hardmax(x16).dtype == np.float16


def test_float16_sum_of_many_equal_terms_is_not_saturated():
    """In float16, 1 + 1 + ... stops growing at 2048; 20000 equal logits must still give 1/20000."""
    x = np.zeros(20000, np.float16)
    _within_float16_rounding(sx.softmax(x), np.full(20000, 1 / 20000), "softmax")
    _within_float16_rounding(sx.logsumexp(x), np.log(20000.0), "logsumexp")
    _within_float16_rounding(sx.cross_entropy(x, 7), np.log(20000.0), "cross_entropy")


def test_float16_linear_cross_entropy_and_probability_functions():
    rng = np.random.default_rng(13)
    x, w = rng.normal(size=(6, 4)).astype(np.float16), rng.normal(size=(9, 4)).astype(np.float16)
    t = rng.integers(0, 9, size=6)
    loss, (dx, dw, db) = sx.linear_cross_entropy(x, w, t, bias=np.zeros(9, np.float16), return_grad=True)
    assert loss.dtype == dx.dtype == dw.dtype == db.dtype == np.float16
    logits = x.astype(np.float64) @ w.astype(np.float64).T
    # the product itself is formed in float32, so compare to the float64 loss at float16's tolerance
    assert_close(loss, sx.cross_entropy(logits, t), dtype="float16")
    p = np.array([0.25, 0.25, 0.5], np.float16)
    _within_float16_rounding(sx.entropy(p), ss.entr(p.astype(float)).sum(), "entropy")
    _within_float16_rounding(sx.kl_divergence(p, p[::-1]), ss.rel_entr(p.astype(float), p[::-1].astype(float)).sum(),
                             "kl_divergence")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_dtype_follows_the_input(dtype):
    x = ROWS.astype(dtype)
    for out in (sx.softmax(x), sx.log_softmax(x), sx.logsumexp(x), sx.hardmax(x), sx.cross_entropy(x, [0, 1, 2]),
                sx.cross_entropy(x, [0, 1, 2], return_grad=True)[1], sx.softmax_grad(x, x),
                sx.log_softmax_grad(x, x), sx.entropy(np.abs(x)), sx.kl_divergence(np.abs(x), np.abs(x))):
        assert out.dtype == dtype
    assert sx.softmax([1, 2, 3]).dtype == np.float64  # integers are taken as float64


# --- rule 9: hardmax -------------------------------------------------------------------------------


def test_hardmax_ties_go_to_the_first_maximum_and_nan_rows_are_nan():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [-INF, -INF, -INF], [0.0, np.nan, 5.0], [INF, 1.0, INF]])
    expected = np.array([[0, 1, 0], [1, 0, 0], [1, 0, 0], [np.nan] * 3, [1, 0, 0]], dtype=float)
    np.testing.assert_array_equal(sx.hardmax(x), expected)
    np.testing.assert_array_equal(sx.hardmax(x[:3].T, axis=0), expected[:3].T)


def test_hardmax_is_one_hot_of_argmax():
    x = np.random.default_rng(14).integers(0, 3, size=(5, 6)).astype(float)  # many ties
    np.testing.assert_array_equal(sx.hardmax(x), sx.one_hot(np.argmax(x, axis=-1), 6))


# --- logsumexp's b and return_sign against scipy; where --------------------------------------------------


@pytest.mark.parametrize("axis", [-1, 0, (0, 1), None])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_b_with_signs_matches_scipy(axis, keepdims):
    rng = np.random.default_rng(15)
    x = rng.normal(scale=4, size=(3, 4))
    b = rng.normal(size=(3, 4))
    b[0, 1] = 0.0
    got, sign = sx.logsumexp(x, axis=axis, b=b, keepdims=keepdims, return_sign=True)
    ref, ref_sign = ss.logsumexp(x, axis=axis, b=b, keepdims=keepdims, return_sign=True)
    # signed sums cancel, so the result is only as good as float64 summation: allow a few ulp more
    assert_close(got, ref, scale=10)
    np.testing.assert_array_equal(sign, ref_sign)
    positive = np.abs(b)
    assert_close(sx.logsumexp(x, axis=axis, b=positive, keepdims=keepdims),
                 ss.logsumexp(x, axis=axis, b=positive, keepdims=keepdims))


def test_logsumexp_b_broadcasts_and_edge_cases_match_scipy():
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    b = np.array([2.0, 0.5, 1.0])  # broadcast along rows
    assert_close(sx.logsumexp(x, b=b), ss.logsumexp(x, b=b, axis=-1))
    # an exact cancellation gives log 0 = -inf with sign 0
    assert sx.logsumexp([1.0, 1.0], b=[1.0, -1.0], return_sign=True) == (-INF, 0.0)
    # a negative sum without return_sign is NaN, as scipy
    assert np.isnan(sx.logsumexp([1.0, 2.0], b=[1.0, -1.0]))
    # b = 0 drops an entry, even an infinite one: 0 * exp(inf) contributes 0
    assert_close(sx.logsumexp([INF, 1.0], b=[0.0, 1.0]), 1.0)
    assert sx.logsumexp([INF, 1.0], b=[2.0, 1.0]) == INF


def test_where_drops_entries():
    rng = np.random.default_rng(16)
    x = rng.normal(size=(4, 6))
    where = rng.random((4, 6)) < 0.6
    where[:, 0] = True
    masked = np.where(where, x, -INF)
    assert_close(sx.softmax(x, where=where), ss.softmax(masked, axis=-1))
    assert_close(sx.log_softmax(x, where=where), ss.log_softmax(masked, axis=-1))
    assert_close(sx.logsumexp(x, where=where), ss.logsumexp(masked, axis=-1))
    # a where broadcast along rows, and entries dropped even when they are +inf or NaN
    column = np.array([True, False, True, True, False, True])
    y = x.copy()
    y[:, 1], y[:, 4] = INF, np.nan
    assert_close(sx.softmax(y, where=column), ss.softmax(np.where(column, x, -INF), axis=-1))
    assert_close(sx.logsumexp(x, where=column, b=np.full(6, 2.0)),
                 ss.logsumexp(np.where(column, x, -INF), b=2.0, axis=-1))


def test_regression_softcap_unmasked_minus_inf_logits():
    """softcap * tanh(-inf / softcap) = -softcap, so a -inf (masked) logit came back as a live class:
    a fully masked row gave loss log C instead of 0, and a masked class took probability mass.
    Decided: -inf stays a mask under softcap (masks apply after the cap, as in Gemma 2)."""
    x = np.array([[-INF, -INF, -INF], [-INF, 0.5, 2.0]])
    loss, grad = sx.cross_entropy(x, [0, 2], softcap=3.0, reduction="none", return_grad=True)
    capped = 3.0 * np.tanh(np.array([0.5, 2.0]) / 3.0)
    assert loss[0] == 0.0
    assert_close(loss[1], -ss.log_softmax(capped)[1])
    np.testing.assert_array_equal(grad[:, 0], 0.0)
    np.testing.assert_array_equal(grad[0], 0.0)
    # with probability targets the masked class keeps 0 log 0 = 0
    p = np.array([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]])
    assert sx.cross_entropy(x, p, softcap=3.0, reduction="none")[0] == 0.0
    # the fused linear layer, whose kernel may work in the logits' own memory, masks with a -inf bias
    rng = np.random.default_rng(0)
    h, w = rng.normal(size=(4, 2)), rng.normal(size=(3, 2))
    bias = np.array([0.0, -INF, 0.5])
    loss, (dh, dw, db) = sx.linear_cross_entropy(h, w, [0, 2, 0, 2], bias=bias, softcap=3.0, return_grad=True)
    ref, dz = sx.cross_entropy(h @ w.T + bias, [0, 2, 0, 2], softcap=3.0, return_grad=True)
    assert_close(loss, ref)
    assert_close(dh, dz @ w)
    np.testing.assert_array_equal(dz[:, 1], 0.0)
    assert_close(loss, sx.cross_entropy(3.0 * np.tanh((h @ w[[0, 2]].T + bias[[0, 2]]) / 3.0), [0, 1, 0, 1]))


def test_regression_row_spanning_more_than_the_float_range_warned_overflow():
    """x - max(x) overflowed to -inf for a row holding 1e308 and -1e308 and NumPy warned (an error in
    this suite); -inf is the right shifted value, since its exp rounds to 0 either way."""
    x = np.array([[1e308, -1e308, 1e308], [-1e308, 0.0, 1.0]])
    assert_close(sx.logsumexp(x), [1e308 + np.log(2.0), ss.logsumexp(x[1])])
    np.testing.assert_array_equal(sx.softmax(x)[0], [0.5, 0.0, 0.5])
    np.testing.assert_array_equal(sx.softmax(x, temperature=0.5)[0], [0.5, 0.0, 0.5])
    np.testing.assert_array_equal(sx.log_softmax(x)[0], [-np.log(2.0), -INF, -np.log(2.0)])
    loss, grad = sx.cross_entropy(x, [0, 2], reduction="none", return_grad=True)
    assert_close(loss, [np.log(2.0), -ss.log_softmax(x[1])[2]])
    assert_close(grad[0], [-0.5, 0.0, 0.5])


def test_regression_z_loss_overflow_warned_on_huge_logits():
    """z * lse**2 overflows float64 for lse ~ 1e160 and up: NumPy warned (an error in this suite), even
    for an ignored row, which contributes 0. A kept row's z-loss is +inf, the value it rounds to."""
    x = np.array([[4e307, 0.0], [1.0, 2.0]])
    loss, grad = sx.cross_entropy(x, [-100, 1], z_loss=1e-3, return_grad=True)
    ref, ref_grad = sx.cross_entropy(x[1:], [1], z_loss=1e-3, return_grad=True)
    assert_close(loss, ref)
    np.testing.assert_array_equal(grad[0], 0.0)
    assert_close(grad[1:], ref_grad)
    assert sx.cross_entropy(x, [0, 1], z_loss=1e-3, reduction="none")[0] == INF


def test_regression_temperature_overflowed_before_the_shift():
    # x / T was formed before subtracting the max: 1e308 / 0.5 overflowed and the loss came out log 2
    logits = np.array([[1e308, 0.9e308, 0.0]])
    loss = sx.cross_entropy(logits, np.array([1]), temperature=0.5)
    assert np.isclose(loss, 0.1e308 / 0.5, rtol=1e-12)
    exact = sx.cross_entropy(logits / 1e300, np.array([1]), temperature=0.5)  # the same row, scaled down
    assert np.isclose(loss, exact * 1e300, rtol=1e-12)
