"""Bad input to the NumPy layer: one case per mistake and public function (API.md rule 10, issue 2 point 4).

Every case checks the exception type and that the message names the argument (as a whole word); where
the message must also say what was received (the bad label and its position, the bad reduction), the
case carries that text too. The table is the test: add a row, not a function.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

import numpy as np
import pytest

import softxent as sx


class Case(NamedTuple):
    call: Callable[[], object]
    error: type
    names: str  # the argument the message must name
    says: tuple = ()  # further text the message must hold (what was received)


X = np.array([[1.0, 2.0, 3.0, 0.5], [0.0, -1.0, 2.0, 2.0]])  # (N=2, C=4)
LABELS = np.array([3, 0])
PROBS = np.full((2, 4), 0.25)
X3 = np.zeros((2, 4, 3))  # (N, C, d) with classes on axis 1
LABELS3 = np.zeros((2, 3), dtype=np.int64)
XL = np.ones((5, 3))  # linear layer: (N, D) inputs, (V, D) weight
WL = np.ones((4, 3))
TL = np.array([0, 1, 2, 3, 0])

TEXT = np.array(["a", "b", "c"])
BOOLS = np.array([True, False, True])
COMPLEX = np.array([1 + 1j, 2.0, 3.0])
OBJECTS = np.array([1.0, None, 2.0], dtype=object)
RAGGED = [[1.0, 2.0], [3.0]]

SOFTMAX_LIKE = {"softmax": sx.softmax, "log_softmax": sx.log_softmax, "logsumexp": sx.logsumexp,
                "hardmax": sx.hardmax}


def _ce(**kw):
    return lambda: sx.cross_entropy(kw.pop("logits", X), kw.pop("target", LABELS), **kw)


def _lce(**kw):
    return lambda: sx.linear_cross_entropy(kw.pop("x", XL), kw.pop("w", WL), kw.pop("target", TL), **kw)


CASES: dict[str, Case] = {}

# --- non-numeric input: text, bool, complex, object arrays (TypeError), ragged lists (ValueError) ---------
for fname, f in SOFTMAX_LIKE.items():
    for kind, bad in {"text": TEXT, "bool": BOOLS, "complex": COMPLEX, "object": OBJECTS}.items():
        CASES[f"{fname}-x-{kind}"] = Case(lambda f=f, bad=bad: f(bad), TypeError, "x", (str(bad.dtype),))
    CASES[f"{fname}-x-ragged"] = Case(lambda f=f: f(RAGGED), ValueError, "x")
CASES.update({
    "softmax-where-float": Case(lambda: sx.softmax(X, where=np.ones(4)), TypeError, "where", ("float64",)),
    "log_softmax-where-int": Case(lambda: sx.log_softmax(X, where=np.ones(4, int)), TypeError, "where"),
    "logsumexp-where-float": Case(lambda: sx.logsumexp(X, where=np.ones(4)), TypeError, "where"),
    "logsumexp-b-text": Case(lambda: sx.logsumexp(X, b=np.array(["1"] * 4)), TypeError, "b"),
    "one_hot-labels-text": Case(lambda: sx.one_hot(TEXT, 3), TypeError, "labels"),
    "softmax_grad-probs-text": Case(lambda: sx.softmax_grad(TEXT, np.ones(3)), TypeError, "probs"),
    "softmax_grad-grad-bool": Case(lambda: sx.softmax_grad(np.ones(3) / 3, BOOLS), TypeError, "grad"),
    "log_softmax_grad-log_probs-complex": Case(lambda: sx.log_softmax_grad(COMPLEX, np.ones(3)),
                                               TypeError, "log_probs"),
    "log_softmax_grad-grad-text": Case(lambda: sx.log_softmax_grad(np.zeros(3), TEXT), TypeError, "grad"),
    "entropy-p-text": Case(lambda: sx.entropy(TEXT), TypeError, "p"),
    "kl_divergence-q-bool": Case(lambda: sx.kl_divergence(np.ones(3) / 3, BOOLS), TypeError, "q"),
    "kl_divergence-p-ragged": Case(lambda: sx.kl_divergence(RAGGED, np.ones(2)), ValueError, "p"),
    "cross_entropy-logits-text": Case(_ce(logits=np.array([["a", "b"]]), target=[0]), TypeError, "logits"),
    "cross_entropy-logits-bool": Case(_ce(logits=X > 0), TypeError, "logits"),
    "cross_entropy-logits-ragged": Case(_ce(logits=RAGGED), ValueError, "logits"),
    "cross_entropy-weight-text": Case(_ce(weight=np.array(["1"] * 4)), TypeError, "weight"),
    "linear_cross_entropy-x-text": Case(_lce(x=np.array([["a", "b", "c"]]), target=[0]), TypeError, "x"),
    "linear_cross_entropy-w-complex": Case(_lce(w=WL + 1j), TypeError, "w"),
    "linear_cross_entropy-bias-text": Case(_lce(bias=np.array(["1"] * 4)), TypeError, "bias"),
})

# --- rank and shape pairing ------------------------------------------------------------------------
CASES.update({
    "cross_entropy-target-short": Case(_ce(target=np.array([0, 1, 2])), ValueError, "target", ("(3,)",)),
    "cross_entropy-target-transposed-probs": Case(_ce(target=PROBS.T), ValueError, "target"),
    "cross_entropy-target-extra-dim": Case(_ce(target=LABELS[:, None]), ValueError, "target"),
    "cross_entropy-kdim-target-wrong-axis": Case(_ce(logits=X3, target=np.zeros((4, 3), int), axis=1),
                                                 ValueError, "target"),
    "cross_entropy-kdim-target-default-axis": Case(_ce(logits=X3, target=LABELS3), ValueError, "target"),
    "cross_entropy-logits-scalar": Case(_ce(logits=1.0, target=0), ValueError, "logits"),
    "softmax_grad-grad-shape": Case(lambda: sx.softmax_grad(np.ones((2, 3)) / 3, np.ones((3, 2))),
                                    ValueError, "grad"),
    "log_softmax_grad-grad-shape": Case(lambda: sx.log_softmax_grad(np.zeros((2, 3)), np.ones(3)),
                                        ValueError, "grad"),
    "softmax-where-shape": Case(lambda: sx.softmax(X, where=np.ones(3, bool)), ValueError, "where"),
    "log_softmax-where-shape": Case(lambda: sx.log_softmax(X, where=np.ones((3, 4), bool)), ValueError, "where"),
    "logsumexp-where-shape": Case(lambda: sx.logsumexp(X, where=np.ones(5, bool)), ValueError, "where"),
    "logsumexp-b-shape": Case(lambda: sx.logsumexp(X, b=np.ones(3)), ValueError, "b"),
    "kl_divergence-q-shape": Case(lambda: sx.kl_divergence(np.ones(3) / 3, np.ones(2) / 2), ValueError, "q"),
    "linear_cross_entropy-w-rank": Case(_lce(w=np.ones(3)), ValueError, "w"),
    "linear_cross_entropy-w-features": Case(_lce(w=np.ones((4, 2))), ValueError, "w"),
    "linear_cross_entropy-x-scalar": Case(_lce(x=1.0, target=0), ValueError, "x"),
    "linear_cross_entropy-bias-shape": Case(_lce(bias=np.zeros(5)), ValueError, "bias"),
    "linear_cross_entropy-bias-rank": Case(_lce(bias=np.zeros((1, 4))), ValueError, "bias"),
    "linear_cross_entropy-target-shape": Case(_lce(target=np.zeros(4, int)), ValueError, "target"),
    "linear_cross_entropy-probs-shape": Case(_lce(target=np.full((5, 3), 1 / 3)), ValueError, "target"),
})

# --- class labels: integer dtype, range [0, C) or ignore_index ----------------------------------------
CASES.update({
    "cross_entropy-labels-float": Case(_ce(target=LABELS.astype(float)), TypeError, "target", ("float64",)),
    "cross_entropy-labels-bool": Case(_ce(target=np.array([True, False])), TypeError, "target"),
    "cross_entropy-probs-int": Case(_ce(target=np.ones((2, 4), int)), TypeError, "target"),
    "one_hot-labels-float": Case(lambda: sx.one_hot([0.0, 1.0], 3), TypeError, "labels"),
    "linear_cross_entropy-labels-float": Case(_lce(target=TL.astype(np.float32)), TypeError, "target"),
    # the first bad label and its position, as (row,) or (row, position) for K-dim targets
    "cross_entropy-label-too-big": Case(_ce(target=np.array([0, 4])), ValueError, "target",
                                        ("index 4", "position (1")),
    "cross_entropy-label-negative": Case(_ce(target=np.array([-1, 0])), ValueError, "target",
                                         ("index -1", "position (0")),
    "cross_entropy-label-first-bad-named": Case(_ce(target=np.array([[0, 1], [7, 9]]), logits=np.zeros((2, 2, 4))),
                                                ValueError, "target", ("index 7", "position (1, 0)")),
    "cross_entropy-label-kdim-axis1": Case(_ce(logits=X3, target=np.array([[0, 1, 2], [3, 4, 0]]), axis=1),
                                           ValueError, "target", ("index 4", "position (1, 1)")),
    "cross_entropy-label-default-ignore-with-other-ignore": Case(
        _ce(target=np.array([-100, 0]), ignore_index=-1), ValueError, "target", ("index -100", "position (0")),
    "cross_entropy-label-uint8": Case(_ce(target=np.array([0, 200], np.uint8)), ValueError, "target",
                                      ("index 200",)),
    "cross_entropy-label-1d-logits": Case(_ce(logits=X[0], target=4), ValueError, "target", ("index 4",)),
    "one_hot-label-too-big": Case(lambda: sx.one_hot([0, 1, 3], 3), ValueError, "labels",
                                  ("index 3", "position (2")),
    "one_hot-label-negative": Case(lambda: sx.one_hot([[0], [-2]], 3), ValueError, "labels",
                                   ("index -2", "position (1, 0)")),
    "linear_cross_entropy-label-too-big": Case(_lce(target=np.array([0, 1, 2, 3, 4])), ValueError, "target",
                                               ("index 4", "position (4")),
    "one_hot-num_classes-negative": Case(lambda: sx.one_hot([0], -1), ValueError, "num_classes"),
    "one_hot-num_classes-float": Case(lambda: sx.one_hot([0], 3.0), TypeError, "num_classes"),
})

# --- probability targets and probability inputs: >= 0, no NaN ------------------------------------------
NEGATIVE = np.array([[0.5, 0.5, 0.25, -0.25], [0.25] * 4])
WITH_NAN = np.array([[0.25] * 4, [0.25, np.nan, 0.5, 0.25]])
CASES.update({
    "cross_entropy-probs-negative": Case(_ce(target=NEGATIVE), ValueError, "target", ("-0.25", "(0, 3)")),
    "cross_entropy-probs-nan": Case(_ce(target=WITH_NAN), ValueError, "target", ("nan", "(1, 1)")),
    "cross_entropy-probs-inf": Case(_ce(target=np.where(PROBS > 0, np.inf, 0)), ValueError, "target"),
    "linear_cross_entropy-probs-negative": Case(_lce(target=np.full((5, 4), -0.25)), ValueError, "target"),
    "entropy-p-negative": Case(lambda: sx.entropy([0.5, -0.5, 1.0]), ValueError, "p", ("-0.5",)),
    "entropy-p-nan": Case(lambda: sx.entropy([0.5, np.nan]), ValueError, "p"),
    "kl_divergence-p-negative": Case(lambda: sx.kl_divergence([-0.5, 1.5], [0.5, 0.5]), ValueError, "p"),
    "kl_divergence-q-nan": Case(lambda: sx.kl_divergence([0.5, 0.5], [np.nan, 0.5]), ValueError, "q"),
})

# --- class weights: one finite value >= 0 per class ------------------------------------------------------
for fname, make in {"cross_entropy": _ce, "linear_cross_entropy": _lce}.items():
    CASES.update({
        f"{fname}-weight-short": Case(make(weight=np.ones(3)), ValueError, "weight", ("(3,)",)),
        f"{fname}-weight-long": Case(make(weight=np.ones(5)), ValueError, "weight"),
        f"{fname}-weight-2d": Case(make(weight=np.ones((1, 4))), ValueError, "weight"),
        f"{fname}-weight-negative": Case(make(weight=[1.0, 1.0, -2.0, 1.0]), ValueError, "weight", ("-2.0",)),
        f"{fname}-weight-nan": Case(make(weight=[1.0, np.nan, 1.0, 1.0]), ValueError, "weight"),
        f"{fname}-weight-inf": Case(make(weight=[1.0, np.inf, 1.0, 1.0]), ValueError, "weight"),
    })
CASES["cross_entropy-weight-probs-short"] = Case(_ce(target=PROBS, weight=np.ones(2)), ValueError, "weight")

# --- scalar options -------------------------------------------------------------------------------
for fname, make in {"cross_entropy": _ce, "linear_cross_entropy": _lce}.items():
    for bad in ("avg", "MEAN", None, ""):
        CASES[f"{fname}-reduction-{bad!r}"] = Case(make(reduction=bad), ValueError, "reduction", (repr(bad),))
    for bad in (-0.1, 1.5, np.nan, np.inf):
        CASES[f"{fname}-label_smoothing-{bad}"] = Case(make(label_smoothing=bad), ValueError, "label_smoothing")
    CASES[f"{fname}-label_smoothing-text"] = Case(make(label_smoothing="0.1"), TypeError, "label_smoothing")
    for bad in (0.0, -1.0, np.nan):
        CASES[f"{fname}-softcap-{bad}"] = Case(make(softcap=bad), ValueError, "softcap")
    CASES[f"{fname}-softcap-text"] = Case(make(softcap="30"), TypeError, "softcap")
    CASES[f"{fname}-z_loss-negative"] = Case(make(z_loss=-1e-4), ValueError, "z_loss")
    CASES[f"{fname}-ignore_index-float"] = Case(make(ignore_index=-100.0), TypeError, "ignore_index")
temperature_takers = {"softmax": lambda **kw: sx.softmax(X, **kw), "log_softmax": lambda **kw: sx.log_softmax(X, **kw),
                      "cross_entropy": lambda **kw: sx.cross_entropy(X, LABELS, **kw)}
for fname, f in temperature_takers.items():
    for bad in (0.0, -0.5, np.nan, np.inf):
        CASES[f"{fname}-temperature-{bad}"] = Case(lambda f=f, bad=bad: f(temperature=bad), ValueError, "temperature")
    CASES[f"{fname}-temperature-text"] = Case(lambda f=f: f(temperature="2"), TypeError, "temperature")
    CASES[f"{fname}-temperature-bool"] = Case(lambda f=f: f(temperature=True), TypeError, "temperature")
CASES.update({
    "linear_cross_entropy-chunk_size-zero": Case(_lce(chunk_size=0), ValueError, "chunk_size"),
    "linear_cross_entropy-chunk_size-negative": Case(_lce(chunk_size=-4), ValueError, "chunk_size"),
    "linear_cross_entropy-chunk_size-float": Case(_lce(chunk_size=2.0), TypeError, "chunk_size"),
})

# --- token log-probs and distillation: the same checks, the same messages ------------------------------------
CASES.update({
    "token_log_probs-target-out-of-range": Case(lambda: sx.token_log_probs(X, np.array([4, 0])), ValueError,
                                                "target", ("4", "(0,)")),
    "token_log_probs-temperature-zero": Case(lambda: sx.token_log_probs(X, LABELS, temperature=0), ValueError,
                                             "temperature"),
    "token_log_probs-target-float": Case(lambda: sx.token_log_probs(X, np.array([1.0, 0.0])), TypeError, "target"),
    "linear_token_log_probs-target-out-of-range": Case(
        lambda: sx.linear_token_log_probs(XL, WL, np.array([0, 1, 2, 3, 9])), ValueError, "target", ("9", "(4,)")),
    "linear_token_log_probs-chunk_size-zero": Case(lambda: sx.linear_token_log_probs(XL, WL, TL, chunk_size=0),
                                                   ValueError, "chunk_size"),
    "distillation_loss-divergence-unknown": Case(lambda: sx.distillation_loss(X, X, divergence="js"), ValueError,
                                                 "divergence", ("'js'",)),
    "distillation_loss-beta-out-of-range": Case(lambda: sx.distillation_loss(X, X, divergence="jsd", beta=2.0),
                                                ValueError, "beta"),
    "distillation_loss-teacher-shape": Case(lambda: sx.distillation_loss(X, X[:, :3]), ValueError, "teacher_logits"),
    "linear_distillation_loss-chunk_size-zero": Case(
        lambda: sx.linear_distillation_loss(XL, WL, XL, WL, chunk_size=0), ValueError, "chunk_size"),
    "linear_distillation_loss-divergence-unknown": Case(
        lambda: sx.linear_distillation_loss(XL, WL, XL, WL, divergence="x"), ValueError, "divergence"),
})

# --- axes: out of range, repeated, wrong type -----------------------------------------------------------
axis_takers = {
    "softmax": lambda a: sx.softmax(X, axis=a), "log_softmax": lambda a: sx.log_softmax(X, axis=a),
    "logsumexp": lambda a: sx.logsumexp(X, axis=a), "hardmax": lambda a: sx.hardmax(X, axis=a),
    "softmax_grad": lambda a: sx.softmax_grad(PROBS, X, axis=a),
    "log_softmax_grad": lambda a: sx.log_softmax_grad(np.log(PROBS), X, axis=a),
    "entropy": lambda a: sx.entropy(PROBS, axis=a), "kl_divergence": lambda a: sx.kl_divergence(PROBS, PROBS, axis=a),
    "cross_entropy": lambda a: sx.cross_entropy(X, LABELS, axis=a),
    "one_hot": lambda a: sx.one_hot(LABELS, 4, axis=a),  # the new axis: labels.ndim + 1 = 2 dimensions
}
for fname, f in axis_takers.items():
    for bad in (2, -3):
        CASES[f"{fname}-axis-{bad}"] = Case(lambda f=f, bad=bad: f(bad), ValueError, "axis", (str(bad),))
    CASES[f"{fname}-axis-float"] = Case(lambda f=f: f(1.0), TypeError, "axis")
    if fname not in ("cross_entropy", "one_hot"):  # the functions that take a tuple of axes
        CASES[f"{fname}-axis-tuple-out-of-range"] = Case(lambda f=f: f((0, 5)), ValueError, "axis")
        CASES[f"{fname}-axis-tuple-repeated"] = Case(lambda f=f: f((1, -1)), ValueError, "axis")
CASES["cross_entropy-axis-tuple"] = Case(lambda: sx.cross_entropy(X, LABELS, axis=(0, 1)), TypeError, "axis")
CASES["cross_entropy-axis-none"] = Case(lambda: sx.cross_entropy(X, LABELS, axis=None), TypeError, "axis")


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_raises_naming_the_argument(case: Case):
    with pytest.raises(case.error) as info:
        case.call()
    message = str(info.value)
    assert re.search(rf"(?<![\w.]){re.escape(case.names)}(?!\w)", message), \
        f"message does not name {case.names!r}: {message!r}"
    for text in case.says:
        assert text in message, f"message does not say {text!r}: {message!r}"


def test_every_public_function_is_covered():
    """A new public function needs rows in the table above."""
    covered = {name.split("-")[0] for name in CASES}
    assert covered == set(sx.__all__)


def test_valid_calls_in_the_table_pass():
    """The fixtures themselves are valid: each case fails because of its one mistake, not another."""
    sx.cross_entropy(X, LABELS)
    sx.cross_entropy(X, PROBS)
    sx.cross_entropy(X3, LABELS3, axis=1)
    sx.linear_cross_entropy(XL, WL, TL, bias=np.zeros(4), weight=np.ones(4), chunk_size=2)
    sx.one_hot(LABELS, 4, axis=0)
    sx.softmax_grad(PROBS, X)
    sx.log_softmax_grad(np.log(PROBS), X)
    sx.kl_divergence(PROBS, PROBS)
    sx.logsumexp(X, b=np.ones(4), where=np.ones(4, bool))


def test_regression_cross_entropy_axis_none_failed_unpacking():
    """axis=None went through normalize_axes to every axis and failed deep inside with 'too many values
    to unpack'; cross_entropy has one class axis, so None is refused like a tuple, naming axis."""
    with pytest.raises(TypeError, match=r"axis must be an int .* got None"):
        sx.cross_entropy(X, LABELS, axis=None)
    with pytest.raises(TypeError, match="axis"):
        sx.cross_entropy(X[0], 1, axis=None)  # even where None would mean the one axis there is
