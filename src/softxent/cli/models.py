"""The two classifiers of `softxent train` in NumPy, trained on softxent's own loss and gradient.

Both end in a linear layer whose loss is `softxent.linear_cross_entropy(h, W, y, bias=b,
return_grad=True)`: it returns the mean softmax loss and its gradients with respect to h, W and b in
one call, without holding more than a chunk of logits. Softmax regression is that layer on the
features; the MLP puts one ReLU hidden layer in front, whose backward pass is written out below.

The objective is the one scikit-learn's LogisticRegression minimises, rescaled:
    mean_i CE_i + (l2 / 2) * sum of squared weights (biases are not penalised),
which is LogisticRegression's ``C * sum_i CE_i + 1/2 ||W||^2`` divided by ``C * n`` with
``C = 1 / (l2 * n)``: the same minimiser.
"""

from __future__ import annotations

import math

import numpy as np

import softxent as sx

MODELS = ("softmax", "mlp")


def init_params(model: str, features: int, classes: int, hidden: int, seed: int) -> dict[str, np.ndarray]:
    """Starting weights, shared by both backends so that numpy and torch runs start from the same point.

    Softmax regression is convex: it starts at zero (every class equally likely). The MLP's hidden
    layer needs asymmetry: He initialisation, N(0, 2 / fan_in), suits ReLU; its output layer starts at
    zero so the first predictions are uniform, as for softmax regression.
    """
    if model == "softmax":
        return {"w": np.zeros((classes, features)), "b": np.zeros(classes)}
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the split and the batches use others
    return {"w1": rng.standard_normal((hidden, features)) * math.sqrt(2.0 / features), "b1": np.zeros(hidden),
            "w2": np.zeros((classes, hidden)), "b2": np.zeros(classes)}


def penalised(name: str) -> bool:
    """Weights carry the L2 penalty, biases do not (as in LogisticRegression)."""
    return name.startswith("w")


class NumpyModel:
    """Parameters, forward pass and loss gradient of softmax regression or the MLP, in float64."""

    def __init__(self, model: str, params: dict[str, np.ndarray], l2: float):
        self.model = model
        self.params = {name: value.astype(np.float64, copy=True) for name, value in params.items()}
        self.l2 = l2

    def _hidden(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pre = x @ self.params["w1"].T + self.params["b1"]
        return pre, np.maximum(pre, 0.0)

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.model == "softmax":
            return x @ self.params["w"].T + self.params["b"]
        return self._hidden(x)[1] @ self.params["w2"].T + self.params["b2"]

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean softmax loss plus the L2 penalty on a batch, and its gradient for every parameter."""
        p = self.params
        if self.model == "softmax":
            loss, (_, dw, db) = sx.linear_cross_entropy(x, p["w"], y, bias=p["b"], return_grad=True)
            grads = {"w": dw, "b": db}
        else:
            pre, hidden = self._hidden(x)
            # softxent gives d loss / d hidden along with the output layer's gradients ...
            loss, (dhidden, dw2, db2) = sx.linear_cross_entropy(hidden, p["w2"], y, bias=p["b2"], return_grad=True)
            # ... and the chain rule goes on by hand: ReLU passes the gradient where its input was > 0
            dpre = dhidden * (pre > 0)
            grads = {"w1": dpre.T @ x, "b1": dpre.sum(axis=0), "w2": dw2, "b2": db2}
        loss = float(loss)
        for name, value in p.items():
            if penalised(name):
                loss += 0.5 * self.l2 * float(np.sum(value * value))
                grads[name] = grads[name] + self.l2 * value
        return loss, grads


class Adam:
    """Adam (Kingma & Ba 2015) on a dict of arrays, updated in place; the step size is set per step.

    The L2 penalty is part of the gradient (not decoupled weight decay), so the optimiser minimises
    exactly the objective above, the one LogisticRegression minimises; torch.optim.Adam's
    `weight_decay` does the same, which keeps the two backends' runs alike.
    """

    def __init__(self, params: dict[str, np.ndarray], beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.params = params
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m = {name: np.zeros_like(value) for name, value in params.items()}
        self.v = {name: np.zeros_like(value) for name, value in params.items()}
        self.t = 0

    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        self.t += 1
        correction1 = 1.0 - self.beta1 ** self.t
        correction2 = 1.0 - self.beta2 ** self.t
        for name, value in self.params.items():
            g = grads[name]
            self.m[name] = self.beta1 * self.m[name] + (1.0 - self.beta1) * g
            self.v[name] = self.beta2 * self.v[name] + (1.0 - self.beta2) * g * g
            value -= lr * (self.m[name] / correction1) / (np.sqrt(self.v[name] / correction2) + self.eps)


def cosine_lr(base: float, step: int, total: int) -> float:
    """Half a cosine from `base` at step 0 down to 0 at the last step: large steps early, a settled end.

    Mini-batch noise keeps a constant-step Adam hovering around the optimum; decaying the step lets it
    land there, which is what brings the test loss to LogisticRegression's.
    """
    return base * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))


class NumpyBackend:
    """`softxent train --backend numpy`: NumpyModel + Adam."""

    name = "numpy"

    def __init__(self, model: str, params: dict[str, np.ndarray], l2: float):
        self.net = NumpyModel(model, params, l2)
        self.optimiser = Adam(self.net.params)

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        loss, grads = self.net.loss_and_grads(x, y)
        self.optimiser.step(grads, lr)
        return loss

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.net.logits(x)

    def parameters(self) -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self.net.params.items()}
