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
