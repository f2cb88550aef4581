"""Token log-probabilities and entropy for NumPy: the reference, with its gradient (see the package docstring)."""

from __future__ import annotations

from typing import Any

import numpy as np

from softxent import _validation as v
from softxent._arrays import Rows, as_float_array, block_rows, blocks, xp
from softxent._options import LossOptions
from softxent.ops.cross_entropy import spec
from softxent.ops.linear_cross_entropy.numpy import LinearHead, _checked_layer
from softxent.ops.logsumexp.numpy import shift_rows


def token_log_probs(logits: Any, target: Any, *, axis: int = -1, temperature: float = 1.0,
                    softcap: float | None = None, ignore_index: int = -100, return_entropy: bool = False,
                    return_grad: bool = False, grad_log_probs: Any = None, grad_entropy: Any = None):
    """The log-probability of each target token, ``log softmax(z)_t``, and optionally the entropy of softmax(z).

    With z = softcap-then-temperature(logits), m = max z, d = z - m and L = log sum_j exp(d_j):

    .. math::  \\log p_t = -((-d_t) + L), \\qquad H = L + \\sum_j p_j (-d_j)

    each a sum of terms >= 0, so both stay exact (rule 11 of docs/semantics.md) where a confident policy has p_t near 1
    and H near 0. Rows whose target is `ignore_index` and fully masked rows give 0 (and a zero
    gradient). This is ``-cross_entropy(logits, target, reduction="none")`` for the log-probabilities.

    Args:
        logits: real array with the classes on `axis`; float16 and float32 are computed in float64.
        target: integer class indices, the shape of `logits` without `axis`.
        axis: the class axis.
        temperature, softcap: as `cross_entropy` (softcap first, then the temperature, after the shift).
        ignore_index: the label of rows to leave out.
        return_entropy: also return the per-row entropy H of softmax(z).
        return_grad: also return the gradient with respect to `logits` of
            ``sum(grad_log_probs * log_probs) + sum(grad_entropy * entropy)``.
        grad_log_probs, grad_entropy: extension for `return_grad`: the upstream gradients, shape of
            `target` (default ones; `grad_entropy` only with `return_entropy`).

    Returns:
        log_probs (shape of `target`, dtype of `logits`); ``(log_probs, entropy)`` with `return_entropy`;
        and the gradient appended with `return_grad`.

    Example:
        >>> import softxent as sx
        >>> lp, h = sx.token_log_probs([[1.0, 2.0, 3.0]], [2], return_entropy=True)
        >>> round(float(lp[0]), 4), round(float(h[0]), 4)     # log 0.665, H(0.090, 0.245, 0.665)
        (-0.4076, 0.8324)

    See also: `softxent.torch.token_log_probs`, `softxent.torch.distributed.vocab_parallel_token_log_probs`,
    `linear_token_log_probs`.

    References:
        Blanchard, Higham & Higham 2021, "Accurately computing the log-sum-exp and softmax functions";
        Schulman et al. 2017, "Proximal policy optimization algorithms" (the entropy bonus).
    """
    logits = as_float_array(logits, "logits")
    if logits.ndim == 0:
        raise ValueError("logits must have at least one dimension (the classes); got a scalar")
    if axis is None or isinstance(axis, tuple):
        raise TypeError(f"axis must be an int for token_log_probs (one class axis); got {axis!r}")
    (class_axis,) = v.normalize_axes(axis, logits.ndim)
    options = LossOptions(ignore_index=ignore_index, softcap=softcap, temperature=temperature)
    rows = Rows(logits, (class_axis,))
    labels = checked_labels(logits.shape, rows.num_classes, target, class_axis, options.ignore_index)
    upstream = _upstream(return_grad, return_entropy, labels.shape, rows.batch_shape, grad_log_probs, grad_entropy)
    grad = np.empty(rows.data.shape, dtype=logits.dtype) if return_grad else None
    lp, h = token_rows(rows.data, labels, options, grad_out=grad, upstream=upstream)
    out = [lp.reshape(rows.batch_shape).astype(logits.dtype)]
    if return_entropy:
        out.append(h.reshape(rows.batch_shape).astype(logits.dtype))
    if return_grad:
        out.append(rows.restore(grad))
    return out[0] if len(out) == 1 else tuple(out)


def checked_labels(logits_shape: tuple, num_classes: int, target: Any, class_axis: int, ignore_index: int,
                   logits_name: str = "logits") -> np.ndarray:
    """Class indices (the spec's checks: shape, integer dtype, range), flattened to rows."""
    try:
        target = np.asarray(target)
    except (ValueError, TypeError) as err:
        raise ValueError(f"target must be a rectangular integer array; {err}") from None
    if spec.check_target(logits_shape, target, class_axis, logits_name=logits_name) != spec.INDEX:
        raise v.probabilities_target_error(target.shape, logits_name)
    spec.check_labels(xp, target, num_classes, ignore_index)
    return target.reshape(-1)


def _upstream(return_grad, return_entropy, shape, batch_shape, grad_log_probs, grad_entropy):
    """(g, h) per row, float64, for the gradient; None without return_grad."""
    if not return_grad:
        return None

    def per_row(value, default, name):
        if value is None:
            return np.full(shape, default, dtype=np.float64)
        value = as_float_array(value, name)
        v.check_same_shape(tuple(batch_shape), value.shape, "target", name)
        return value.reshape(-1).astype(np.float64)

    return per_row(grad_log_probs, 1.0, "grad_log_probs"), per_row(grad_entropy, 1.0 if return_entropy else 0.0,
                                                                   "grad_entropy")


def token_rows(logits: np.ndarray, labels: np.ndarray, options: LossOptions, *, grad_out: np.ndarray | None = None,
               upstream: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(log_probs, entropy) per row (float64) of logits (n, V); grad_out receives the gradient.

    `upstream` = (g, h) per row: grad_out gets d(sum g log_probs + sum h entropy)/d(logits). grad_out
    may be `logits` itself: each block is read into float64 scratch before its gradient is written.
    """
    num_rows, num_classes = logits.shape
    lp = np.zeros(num_rows)
    h = np.zeros(num_rows)
    if num_classes == 0:
        return lp, h
    step = block_rows(num_classes)
    for block in blocks(0, num_rows, step):
        lp[block], h[block] = _block(logits[block], labels[block], options,
                                     None if grad_out is None else grad_out[block],
                                     None if upstream is None else (upstream[0][block], upstream[1][block]))
    return lp, h


def _block(x, labels, options: LossOptions, grad_out, upstream):
    n = x.shape[0]
    rows = np.arange(n)
    kept = labels != options.ignore_index
    safe = np.where(kept, labels, 0)

    # 1. the scores: softcap (a -inf logit stays -inf: a mask), the max shift, then the temperature
    d = x.astype(np.float64)
    tanh = None
    if options.softcap is not None:
        masks = np.isneginf(d)
        with np.errstate(over="ignore"):  # x / softcap beyond the float range: tanh(inf) = 1 is right
            tanh = np.tanh(d / options.softcap)
        d = np.where(masks, -np.inf, options.softcap * tanh)
    shift = shift_rows(d, d)
    if options.temperature != 1.0:
        d /= options.temperature

    # 2. e = exp(d), S and L = log S, exact through log1p when the max's own 1 is left out of the sum
    e = np.exp(d)
    top = e[rows, shift.first].copy()  # 1, or 0 in a masked row
    e[rows, shift.first] = 0.0
    rest = e.sum(axis=1)  # without the max's own 1, so that a tiny tail is not rounded into 1 + tail
    e[rows, shift.first] = top
    total = top + rest
    with np.errstate(divide="ignore"):  # log(0) = -inf for a fully masked row, zeroed below
        log_sum = np.where(top == 1.0, np.log1p(rest), np.log(total))

    # 3. log p_t = -((-d_t) + L) and H = L + E with E = sum_j p_j (-d_j): sums of terms >= 0
    neg_d = -d
    with np.errstate(invalid="ignore"):  # 0 * inf where e_j = 0 (d_j = -inf): that term is 0
        weighted = np.where(e > 0, e * neg_d, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):  # masked rows: 0 / 0, zeroed below
        spread = weighted.sum(axis=1) / total
    with np.errstate(invalid="ignore"):  # inf + -inf in fully masked rows, zeroed below
        lp = -(neg_d[rows, safe] + log_sum)
        h = log_sum + spread
    if shift.infinite is not None:  # +inf entries share the mass: the spread of their d = 0 is 0
        spread[shift.infinite] = 0.0
        h[shift.infinite] = log_sum[shift.infinite]
    live = kept & (total > 0)  # fully masked rows (S = 0) carry no information (rule 2)
    lp = np.where(live, lp, 0.0)
    h = np.where(live, h, 0.0)

    # 4. the gradient: g ([j = t] - p_j) + h p_j ((-d_j) - E), the target's g (1 - p_t) as -g expm1(log p_t)
    if grad_out is not None:
        g, hg = upstream
        g = np.where(live, g, 0.0)
        hg = np.where(live, hg, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):  # masked and ignored rows: zeroed below
            p = e / total[:, None]
            centred = np.where(p > 0, p * (neg_d - spread[:, None]), 0.0)
            grad = hg[:, None] * centred - g[:, None] * p
            grad[rows, safe] = -g * np.expm1(lp) + hg * centred[rows, safe]
        grad[~live] = 0.0
        if options.temperature != 1.0:
            grad /= options.temperature
        if tanh is not None:  # the chain rule through softcap * tanh(x / softcap)
            grad *= 1.0 - tanh * tanh
            grad[np.isneginf(x)] = 0.0
        np.copyto(grad_out, grad, casting="unsafe")
    return lp, h


def linear_token_log_probs(x: Any, w: Any, target: Any, *, bias: Any = None, temperature: float = 1.0,
                           softcap: float | None = None, ignore_index: int = -100, return_entropy: bool = False,
                           chunk_size: int | None = None, return_grad: bool = False, grad_log_probs: Any = None,
                           grad_entropy: Any = None):
    """`token_log_probs` of a linear layer's logits ``x @ w.T + bias``, never holding more than a chunk of them.

    The LLM head's per-token log-probabilities (and entropy) from its hidden states: each chunk of
    `chunk_size` rows of logits is computed, reduced to its rows' results and, with `return_grad`,
    turned into its gradient and folded into ``(dx, dw, dbias)`` before the next chunk.

    Args:
        x: (..., D) inputs; w: (V, D) the layer's weight; bias: (V,) or None.
        target: class indices of shape x.shape[:-1].
        temperature, softcap, ignore_index, return_entropy, grad_log_probs, grad_entropy: as `token_log_probs`.
        chunk_size: rows of logits per chunk; None picks about 4M logits per chunk.
        return_grad: also return ``(dx, dw, dbias)`` (`dbias` None without a bias).

    Returns:
        As `token_log_probs`, with ``(dx, dw, dbias)`` in place of the logits' gradient.

    Example:
        >>> import numpy as np, softxent as sx
        >>> x, w = np.eye(2), np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> lp = sx.linear_token_log_probs(x, w, [0, 2], chunk_size=1)
        >>> bool(np.allclose(lp, sx.token_log_probs(x @ w.T, [0, 2])))
        True

    See also: `softxent.torch.linear_token_log_probs`, `linear_cross_entropy`.
    """
    options = LossOptions(ignore_index=ignore_index, softcap=softcap, temperature=temperature)
    chunk_size = v.check_chunk_size(chunk_size)
    x, w, bias = _checked_layer(x, w, bias)
    head = LinearHead(x, w, bias, chunk_size, want_grad=return_grad)
    num_classes = head.num_classes
    batch_shape = x.shape[:-1]
    labels = checked_labels(batch_shape + (num_classes,), num_classes, target, x.ndim - 1, options.ignore_index,
                            logits_name="the logits x @ w.T")
    upstream = _upstream(return_grad, return_entropy, labels.shape, batch_shape, grad_log_probs, grad_entropy)
    lp, h = np.zeros(head.num_rows), np.zeros(head.num_rows)
    for part, logits in head.chunks():
        # with return_grad the chunk's logits become d(outputs)/d(logits) in place
        lp[part], h[part] = token_rows(logits, labels[part], options, grad_out=logits if return_grad else None,
                                       upstream=None if upstream is None else (upstream[0][part], upstream[1][part]))
        if return_grad:
            head.fold(part, logits)
    out = [lp.reshape(batch_shape).astype(head.dtype)]
    if return_entropy:
        out.append(h.reshape(batch_shape).astype(head.dtype))
    if return_grad:
        out.append(head.gradients())
    return out[0] if len(out) == 1 else tuple(out)
