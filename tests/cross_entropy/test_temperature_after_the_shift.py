"""Regression: the temperature divides the logits after the max shift, never before (the x / T overflow).

softxent.torch used to divide by T first: softmax([3e38, 2.9e38, 0] / 0.5) overflowed to [inf, inf, 0]
and gave [0.5, 0.5, 0] where the exact answer (and the NumPy layer's) is [1, 0, 0]. The rule is
softcap, then the max shift, then the temperature: (x - max x) / T. Here the losses that take a
temperature (cross_entropy, linear_cross_entropy) on every layer; softmax and log_softmax have their
own test in tests/test_torch_softmax.py. Exact values: with m = 3e38, d = (x - m) / T = [0, -2e37, -6e38]
in float64, so the loss of target 1 is 2e37 + log1p(exp(-2e37) + exp(-6e38)) = 2e37 (the float32 logits'
gap over T, exactly), and its gradient
softmax(d) - onehot(1) divided by T is [2, -2, 0].
"""

import numpy as np
import pytest
from triton_env import DEVICE, sxtt, torch  # noqa: F401  (before triton loads: sets TRITON_INTERPRET)

import softxent as sx
import softxent.torch as sxt
from softxent._torch import backend

LOGITS = [[3e38, 2.9e38, 0.0]]
# the float32 logits' gap, exact in float64, over T: the loss; exp(-that) and exp(-6e38) vanish beside 1
EXPECTED_LOSS = np.float32((np.float64(np.float32(3e38)) - np.float64(np.float32(2.9e38))) / 0.5)
EXPECTED_GRAD = np.array([[2.0, -2.0, 0.0]], dtype=np.float32)

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    DEVICE == "cpu" and not sxtt.interpreted(), reason="Triton kernels were compiled for a GPU"))]


def test_temperature_after_the_max_shift_numpy_cross_entropy():
    loss, grad = sx.cross_entropy(np.array(LOGITS, dtype=np.float32), [1], temperature=0.5, return_grad=True)
    assert loss == EXPECTED_LOSS
    np.testing.assert_array_equal(grad, EXPECTED_GRAD)


def test_temperature_after_the_max_shift_numpy_linear_cross_entropy():
    # logits = x @ w.T = [3e38, 2.9e38, 0] with x = 1e19 and w = [3e19, 2.9e19, 0]
    x, w = np.array([[1e19]], dtype=np.float32), np.array([[3e19], [2.9e19], [0.0]], dtype=np.float32)
    loss, (dx, dw, _) = sx.linear_cross_entropy(x, w, [1], temperature=0.5, return_grad=True)
    assert loss == pytest.approx(float(EXPECTED_LOSS), rel=1e-6)  # the logits are rounded products here
    np.testing.assert_allclose(dw, EXPECTED_GRAD.T * 1e19, rtol=1e-6)


@pytest.mark.parametrize("name", BACKENDS)
def test_temperature_after_the_max_shift_torch_cross_entropy(name):
    x = torch.tensor(LOGITS, device=DEVICE, requires_grad=True)
    with backend.forced(name):
        loss = sxt.cross_entropy(x, torch.tensor([1], device=DEVICE), temperature=0.5)
        loss.backward()
    assert loss.item() == EXPECTED_LOSS
    np.testing.assert_array_equal(x.grad.cpu().numpy(), EXPECTED_GRAD)


@pytest.mark.parametrize("name", BACKENDS)
def test_temperature_after_the_max_shift_torch_linear_cross_entropy(name):
    x = torch.tensor([[1e19]], device=DEVICE, requires_grad=True)
    w = torch.tensor([[3e19], [2.9e19], [0.0]], device=DEVICE, requires_grad=True)
    with backend.forced(name):
        loss = sxt.linear_cross_entropy(x, w, torch.tensor([1], device=DEVICE), temperature=0.5)
        loss.backward()
    assert loss.item() == pytest.approx(float(EXPECTED_LOSS), rel=1e-6)
    np.testing.assert_allclose(w.grad.cpu().numpy(), EXPECTED_GRAD.T * 1e19, rtol=1e-6)
