"""scikit-learn's LogisticRegression on the same split, minimising the same objective as `--model softmax`.

softxent minimises ``mean_i CE_i + (l2 / 2) ||W||^2``; LogisticRegression minimises
``C * sum_i CE_i + (1 / 2) ||W||^2`` (biases unpenalised in both). Dividing the latter by ``C * n``
shows they agree when ``C = 1 / (l2 * n)``, n the number of training rows.

With two classes LogisticRegression fits one weight vector d for the logit difference, while softmax
regression fits two rows w0, w1 with d = w1 - w0; at the optimum w0 = -w1, so the penalty on both rows
is ``(l2 / 2) * |d|^2 / 2`` and the matching value is ``C = 2 / (l2 * n)``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np


@dataclass
class Baseline:
    test_logits: np.ndarray
    train_logits: np.ndarray
    C: float
    fit_seconds: float
    iterations: int
    converged: bool


def matching_C(l2: float, rows: int, classes: int) -> float:
    """LogisticRegression's C whose minimiser is that of mean CE + (l2 / 2) ||W||^2 on `rows` rows."""
    if l2 <= 0:
        return float("inf")  # no penalty at all
    return (2.0 if classes == 2 else 1.0) / (l2 * rows)


def logistic_regression(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, classes: int,
                        l2: float) -> Baseline:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    C = matching_C(l2, len(y_train), classes)
    # a tight tolerance: we compare against its optimum, not against an early stop of lbfgs
    model = LogisticRegression(C=C, tol=1e-8, max_iter=10_000)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_train, y_train)
    seconds = time.perf_counter() - start
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return Baseline(test_logits=_logits(model, x_test), train_logits=_logits(model, x_train), C=C,
                    fit_seconds=seconds, iterations=int(np.max(model.n_iter_)), converged=converged)


def _logits(model, x: np.ndarray) -> np.ndarray:
    """Per-class logits whose softmax is predict_proba: (n, C), or (n, 2) built from the binary margin."""
    scores = model.decision_function(x)
    if scores.ndim == 1:  # binary: p(class 1) = sigmoid(d) = softmax([0, d])[1]
        scores = np.stack([np.zeros_like(scores), scores], axis=1)
    return scores
