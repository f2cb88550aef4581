"""Entropy and KL divergence of probability vectors, with 0 log 0 = 0."""

from __future__ import annotations

from typing import Any

import numpy as np

from softxent import _validation as v
from softxent._arrays import as_float_array, xp
from softxent._typing import ArrayLike, Axis, FloatResult
from softxent.ops.cross_entropy import spec


def entropy(p: ArrayLike, axis: Axis = -1) -> FloatResult:
    """Shannon entropy in nats: ``H(p) = -sum_j p_j log p_j``, with ``0 log 0 = 0``.

    `p` is taken as given, not renormalised. Cross-entropy splits as ``H(p) + KL(p || q)``.

    Args:
        p: probabilities (>= 0, no NaN) of any shape.
        axis: the class axis, a tuple of axes, or None for every element.

    Returns:
        The entropy with `axis` reduced, in the float dtype of `p` (accumulated in float64).

    Example:
        >>> import softxent as sx
        >>> float(sx.entropy([0.5, 0.5]))   # log 2
        0.6931471805599453
        >>> float(sx.entropy([1.0, 0.0]))   # a certain outcome carries no information
        0.0
    """
    p = check_probabilities(p, "p")
    axes = v.normalize_axes(axis, p.ndim)
    wide = p.astype(np.float64)
    terms = np.zeros_like(wide)
    np.multiply(wide, np.log(wide, where=wide > 0, out=np.zeros_like(wide)), where=wide > 0, out=terms)
    return (-terms.sum(axis=axes)).astype(p.dtype)[()]


def kl_divergence(p: ArrayLike, q: ArrayLike, axis: Axis = -1) -> FloatResult:
    """Kullback-Leibler divergence ``KL(p || q) = sum_j p_j log(p_j / q_j)`` in nats.

    Terms with ``p_j = 0`` are 0; a term with ``p_j > 0`` and ``q_j = 0`` makes the divergence +inf.

    Args:
        p, q: probabilities (>= 0, no NaN) of broadcastable shapes.
        axis: the class axis, a tuple of axes, or None for every element.

    Returns:
        The divergence with `axis` reduced, in the common float dtype of `p` and `q`.

    Example:
        >>> import softxent as sx
        >>> round(float(sx.kl_divergence([0.5, 0.5], [0.9, 0.1])), 6)
        0.510826
    """
    p, q = check_probabilities(p, "p"), check_probabilities(q, "q")
    try:
        wide_p, wide_q = np.broadcast_arrays(p.astype(np.float64), q.astype(np.float64))
    except ValueError:
        raise ValueError(f"q of shape {q.shape} does not broadcast with p of shape {p.shape}") from None
    axes = v.normalize_axes(axis, wide_p.ndim)
    support = wide_p > 0
    with np.errstate(divide="ignore"):  # q = 0 where p > 0: an infinite divergence, on purpose
        ratio = np.log(wide_p, where=support, out=np.zeros_like(wide_p)) - np.log(
            wide_q, where=support, out=np.zeros_like(wide_q))
    terms = np.multiply(wide_p, ratio, where=support, out=np.zeros_like(wide_p))
    return terms.sum(axis=axes).astype(np.result_type(p, q))[()]


def check_probabilities(p: Any, name: str) -> np.ndarray:
    """p as a float array whose entries are finite and >= 0 (rule 7 of docs/semantics.md), else a ValueError."""
    p = as_float_array(p, name)
    spec.check_probabilities(xp, p, name)
    return p
