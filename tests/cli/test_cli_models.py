"""The pieces under `softxent train`: gradients of the two models, the C rule that makes scikit-learn's
LogisticRegression minimise the same objective, the metrics, and the torch backend."""

from __future__ import annotations

import numpy as np
import pytest

from softxent.cli.metrics import calibration_bins, confusion_matrix, evaluate, expected_calibration_error
from softxent.cli.models import Adam, NumpyModel, cosine_lr, init_params


def problem(rows=12, features=5, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, features)), rng.integers(0, classes, rows)


@pytest.mark.parametrize("model", ["softmax", "mlp"])
def test_gradients_match_finite_differences(model):
    """loss_and_grads (softxent's loss gradient + the hand-written hidden-layer backward + L2) against
    central differences of the loss, every parameter, at a random point."""
    x, y = problem()
    rng = np.random.default_rng(1)
    params = {name: rng.standard_normal(value.shape) * 0.5
              for name, value in init_params(model, 5, 4, hidden=6, seed=0).items()}
    net = NumpyModel(model, params, l2=0.3)
    _, grads = net.loss_and_grads(x, y)
    step = 1e-6
    for name, value in net.params.items():
        numeric = np.empty_like(value)
        for index in np.ndindex(value.shape):
            keep = value[index]
            value[index] = keep + step
            up, _ = net.loss_and_grads(x, y)
            value[index] = keep - step
            down, _ = net.loss_and_grads(x, y)
            value[index] = keep
            numeric[index] = (up - down) / (2 * step)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("classes", [2, 4])
def test_sklearn_optimum_is_ours_with_matching_C(classes):
    """At LogisticRegression's solution with C = matching_C(l2, n, classes), the gradient of
    mean CE + (l2/2)||W||^2 vanishes: the two minimise the same objective (the binary case needs C doubled)."""
    pytest.importorskip("sklearn")
    from softxent.cli.baseline import logistic_regression

    x, y = problem(rows=200, features=4, classes=classes, seed=2)
    x[np.arange(200), y % 4] += 1.5  # some signal, so the optimum is not at zero
    l2 = 0.05
    fitted = logistic_regression(x, y, x, classes, l2)
    assert fitted.converged
    # recover weights from the logits it produces: logits = x @ W.T + b, a least-squares solve
    design = np.hstack([x, np.ones((len(x), 1))])
    solution, *_ = np.linalg.lstsq(design, fitted.train_logits, rcond=None)
    w, b = solution[:-1].T, solution[-1]
    if classes == 2:  # binary: logits [0, d]; the symmetric two-row model with the same softmax is [-d/2, d/2]
        w, b = w - w.mean(axis=0), b - b.mean()
    _, grads = NumpyModel("softmax", {"w": w, "b": b}, l2).loss_and_grads(x, y)
    assert np.abs(grads["w"]).max() < 1e-5 and np.abs(grads["b"]).max() < 1e-5


def test_adam_with_cosine_steps_minimises_a_quadratic():
    target = np.array([3.0, -2.0])
    params = {"w": np.zeros(2)}
    optimiser = Adam(params)
    for step in range(2000):
        optimiser.step({"w": 2 * (params["w"] - target)}, cosine_lr(0.1, step, 2000))
    np.testing.assert_allclose(params["w"], target, atol=1e-4)
    assert cosine_lr(0.1, 0, 10) == 0.1 and cosine_lr(0.1, 10, 10) == 0.0


def test_metrics_on_a_hand_worked_example():
    # confidences 0.9 (right), 0.9 (wrong), 0.5 (right), 0.45 (wrong): bins (13/15, 14/15] and (6/15, 7/15]
    probs = np.array([[0.9, 0.1, 0.0], [0.05, 0.05, 0.9], [0.5, 0.25, 0.25], [0.3, 0.25, 0.45]])
    y = np.array([0, 0, 0, 1])
    count, confidence, accuracy = calibration_bins(probs, y)
    assert count[13] == 2 and count[7] == 1 and count[6] == 1 and count.sum() == 4
    np.testing.assert_allclose([confidence[13], accuracy[13]], [0.9, 0.5])
    # ECE = 2/4 |0.5 - 0.9| + 1/4 |1 - 0.5| + 1/4 |0 - 0.45|
    assert expected_calibration_error(probs, y) == pytest.approx(0.2 + 0.125 + 0.1125)
    assert confusion_matrix(y, probs.argmax(axis=1), 3).tolist() == [[2, 0, 1], [0, 0, 1], [0, 0, 0]]
    scores = evaluate(np.log(np.clip(probs, 1e-300, None)), y)
    assert scores.accuracy == 0.5
    assert scores.cross_entropy == pytest.approx(-np.mean(np.log([0.9, 0.05, 0.5, 0.25])))


# --- the torch backend ----------------------------------------------------------------------------


def reference_linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, **_):
    import torch

    return torch.nn.functional.cross_entropy(torch.nn.functional.linear(input, linear_weight, linear_bias), target)


@pytest.mark.parametrize("loss", ["softxent.torch", "torch.nn.functional"])
@pytest.mark.parametrize("model", ["softmax", "mlp"])
def test_torch_backend_matches_numpy_backend(model, loss, monkeypatch):
    """30 Adam steps of both backends from the same start on the same batches: the same losses and
    logits to float64 rounding. With loss="softxent.torch" this is the real `--backend torch`; with
    torch.nn.functional's loss standing in for softxent.torch.linear_cross_entropy it checks the
    backend's plumbing alone (same start, same Adam, L2 on weights only), so a failure of the first
    alone points at the loss."""
    pytest.importorskip("torch")
    import softxent.torch as sxt
    from softxent.cli.models import NumpyBackend
    from softxent.cli.torch_backend import TorchBackend

    if loss == "torch.nn.functional":
        monkeypatch.setattr(sxt, "linear_cross_entropy", reference_linear_cross_entropy)
    x, y = problem(rows=40, features=5, classes=3, seed=3)
    params = init_params(model, 5, 3, hidden=7, seed=0)
    backends = [NumpyBackend(model, params, 0.01), TorchBackend(model, params, 0.01, threads=1)]
    rng = np.random.default_rng(0)
    for step in range(30):
        rows = rng.permutation(40)[:16]
        losses = [b.train_step(x[rows], y[rows], cosine_lr(0.05, step, 30)) for b in backends]
        assert losses[0] == pytest.approx(losses[1], rel=1e-9), step
    np.testing.assert_allclose(backends[0].logits(x), backends[1].logits(x), rtol=1e-8, atol=1e-10)
    for name, value in backends[0].parameters().items():
        np.testing.assert_allclose(backends[1].parameters()[name], value, rtol=1e-8, atol=1e-10, err_msg=name)
