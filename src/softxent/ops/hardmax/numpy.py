"""hardmax (the one-hot of the arg max) and one_hot: the two ends of the softmax story."""

from __future__ import annotations

import numpy as np

from softxent import _validation as v
from softxent._arrays import Rows, as_float_array, as_label_array, xp
from softxent._typing import ArrayLike, Axis, DTypeLike, FloatArray
from softxent.ops.cross_entropy import spec


def hardmax(x: ArrayLike, axis: Axis = -1) -> FloatArray:
    """The one-hot of the first maximum along `axis` (ONNX Hardmax semantics).

    hardmax keeps only the winner: it is softmax's limit as the temperature goes to 0, and its gradient
    is zero almost everywhere, which is why classifiers are trained through softmax instead.

    Args:
        x: real array of any shape; integers are taken as float64.
        axis: the class axis, a tuple of axes (flattened in order), or None for every element.

    Returns:
        An array of the shape and float dtype of `x` with a single 1 per row, at the first maximum;
        a row holding NaN gives NaN everywhere.

    Example:
        >>> import softxent as sx
        >>> sx.hardmax([1.0, 3.0, 3.0])   # ties go to the first maximum
        array([0., 1., 0.])
    """
    x = as_float_array(x, "x")
    rows = Rows(x, v.normalize_axes(axis, x.ndim))
    out = np.zeros(rows.data.shape, dtype=x.dtype)
    if rows.num_classes:
        winners = np.argmax(rows.data, axis=1)  # the first maximum; the first NaN in a NaN row
        out[np.arange(out.shape[0]), winners] = 1.0
        out[np.isnan(rows.data).any(axis=1)] = np.nan
    return rows.restore(out)


def one_hot(labels: ArrayLike, num_classes: int, *, axis: int = -1, dtype: DTypeLike = np.float64) -> np.ndarray:
    """Class indices as one-hot vectors: ``one_hot(labels, C)[..., j] = (labels == j)``.

    Args:
        labels: integer array of class indices in [0, num_classes).
        num_classes: the number of classes C >= 1 (0 only for empty `labels`).
        axis: where the new class axis goes in the output (as ``numpy.expand_dims``).
        dtype: the output dtype.

    Returns:
        An array of shape ``labels.shape`` with a class axis of length C inserted at `axis`.

    Example:
        >>> import softxent as sx
        >>> sx.one_hot([0, 2], 3)
        array([[1., 0., 0.],
               [0., 0., 1.]])
    """
    labels = as_label_array(labels, "labels")
    # no class to index: say so about num_classes, not about the first label (which cannot be in [0, 0));
    # empty labels with num_classes = 0 are fine and give an empty class axis
    num_classes = v.check_integer(num_classes, "num_classes", minimum=1 if labels.size else 0)
    spec.check_labels(xp, labels, num_classes, ignore_index=None, name="labels")
    out_axis = v.normalize_axes(axis, labels.ndim + 1)[0]
    classes = np.arange(num_classes).reshape((-1,) + (1,) * (labels.ndim - out_axis))
    return (np.expand_dims(labels, out_axis) == classes).astype(dtype)

