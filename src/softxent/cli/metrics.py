"""What `softxent train` reports about a classifier's logits, computed the same way for every model.

- accuracy: the fraction of rows whose largest logit is the true class (the hardmax prediction).
- cross-entropy: the mean softmax loss, ``softxent.cross_entropy(logits, y)`` = mean of lse - logit_y.
- expected calibration error (ECE, Guo et al. 2017, "On calibration of modern neural networks"): the
  top-label confidence max_j p_j of each row is put in one of 15 equal-width bins (lo, hi] of [0, 1];
  ECE = sum over bins of (rows in bin / rows) * |accuracy in bin - mean confidence in bin|.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import softxent as sx

ECE_BINS = 15


@dataclass
class Scores:
    accuracy: float
    cross_entropy: float
    ece: float


def evaluate(logits: np.ndarray, y: np.ndarray) -> Scores:
    probs = sx.softmax(logits)
    return Scores(accuracy=float(np.mean(logits.argmax(axis=1) == y)),
                  cross_entropy=float(sx.cross_entropy(logits, y)),
                  ece=expected_calibration_error(probs, y))


def calibration_bins(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS):
    """Per bin of top-label confidence: (count, mean confidence, accuracy); empty bins hold NaN."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    # bin k holds confidences in (k / bins, (k + 1) / bins]; a confidence of exactly 0 cannot occur
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins: 0 / 0 is NaN on purpose
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    return count, mean_confidence, accuracy


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    count, confidence, accuracy = calibration_bins(probs, y, bins)
    used = count > 0
    return float(np.sum(count[used] / count.sum() * np.abs(accuracy[used] - confidence[used])))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """counts[i, j] = test rows of true class i predicted as class j."""
    return np.bincount(y_true * classes + y_pred, minlength=classes * classes).reshape(classes, classes)
