"""softmax and log-softmax along an axis, and their vector-Jacobian products."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from softxent import _validation as v
from softxent._arrays import (Rows, accurate_dtype, as_float_array, block_rows, blocks, fast_dtype, for_row_spans,
                              thread_buffer)
from softxent._typing import ArrayLike, Axis, FloatArray
from softxent.ops.logsumexp.numpy import Shift, class_axes, exp_log_sum, shift_rows


def softmax(x: ArrayLike, axis: Axis = -1, *, temperature: float = 1.0,
            where: ArrayLike | None = None) -> FloatArray:
    """Probabilities from scores: ``softmax(x)_j = exp(x_j / T) / sum_k exp(x_k / T)``.

    Shifted by the row max first, so exp never overflows (float32 scores all within [-64, 64], where
    it cannot, go unshifted). Unlike hardmax, which keeps only the arg max, softmax keeps every score's
    share, and its gradient is useful. float32 is computed in float32 with sums in float64, float16 in
    float32, float64 in float64. Each probability is within ``|x_j - max x| + 4`` ulp (float32; + 2 for
    float64) of exact: exp turns the rounding of the gap ``x_j - max x`` into that many ulp, as in every
    shifted softmax (4 ulp for unshifted float32). When tiny probabilities must be exact to the last
    bit, use `log_softmax`, which is.

    Args:
        x: real array of any shape; integers are taken as float64.
        axis: the class axis, a tuple of axes, or None for every element.
        temperature: T > 0; T > 1 flattens the distribution, T < 1 sharpens it.
        where: boolean mask broadcastable to `x`; False entries get probability 0.

    Returns:
        An array of the shape and float dtype of `x` whose entries along `axis` sum to 1. A fully
        masked row (all -inf, or where all False) gives zeros; +inf entries share the mass equally.
        A 0-d input gives a NumPy scalar, 1 (or NaN), as SciPy's softmax.

    Example:
        >>> import softxent as sx
        >>> sx.softmax([1.0, 2.0, 3.0]).round(3)
        array([0.09 , 0.245, 0.665])
    """
    def probabilities(out: np.ndarray, x: np.ndarray, scratch: np.ndarray, spare: None, temperature: float) -> None:
        masked = None
        if x.dtype == np.float32 and temperature == 1.0 and _within(x, 64.0):
            # every score within [-64, 64] (no NaN, no mask): exp(x) neither overflows nor leaves float32's
            # normal range, so no shift is needed, and x, unlike x - max x, carries no rounding into exp:
            # each probability is within 4 ulp (exp's 2.5, the sum's rounding and the division's)
            total = np.exp(x, out=scratch).sum(axis=1, dtype=np.float64)
        elif scratch.dtype.itemsize < 8:
            shift = _shifted(x, scratch, temperature)
            # float32 exps summed in float64: within (log2 C) 2^-53 of their sum, far below a float32 ulp
            total, masked = np.exp(scratch, out=scratch).sum(axis=1, dtype=np.float64), shift.masked
        else:
            shift = _shifted(x, scratch, temperature)
            # the sum without the max's own 1, then 1 + rest: adding a million tiny terms onto 1 one by
            # one would round at every step
            total, masked = exp_log_sum(scratch, shift.at_first, scratch).total, shift.masked
        if masked is not None:
            total[masked] = 1.0  # a row of zeros stays zeros
        np.divide(scratch, total.astype(scratch.dtype)[:, None], out=out, casting="unsafe")

    return _rowwise(x, axis, temperature, where, fast_dtype, probabilities, spare=False)


def log_softmax(x: ArrayLike, axis: Axis = -1, *, temperature: float = 1.0,
                where: ArrayLike | None = None) -> FloatArray:
    """Log-probabilities: ``log_softmax(x)_j = x_j / T - logsumexp(x / T)``.

    Computed as ``(x_j - m) - log1p(sum_{k != argmax} exp(x_k - m))``: both terms are <= 0 in sign,
    so nothing cancels, and the result is within 2 ulp (float32) / 4 ulp (float64) of exact.

    Args:
        x: real array of any shape; integers are taken as float64.
        axis: the class axis, a tuple of axes, or None for every element.
        temperature: T > 0 dividing the scores first.
        where: boolean mask broadcastable to `x`; False entries get -inf.

    Returns:
        An array of the shape and float dtype of `x`. A fully masked row gives -inf everywhere.
        A 0-d input gives a NumPy scalar, 0 (or NaN), as SciPy's log_softmax.

    Example:
        >>> import softxent as sx
        >>> sx.log_softmax([1.0, 2.0, 3.0]).round(4)
        array([-2.4076, -1.4076, -0.4076])
    """
    def log_probabilities(out: np.ndarray, x: np.ndarray, scratch: np.ndarray, spare: np.ndarray,
                          temperature: float) -> None:
        shift = _shifted(x, scratch, temperature)
        log_sum = exp_log_sum(scratch, shift.at_first, spare).log_sum
        if shift.masked is not None:
            log_sum[shift.masked] = 0.0  # -inf - 0 keeps the masked row at -inf, never NaN
        # worked in float64, a log-probability can lie below float32's range (-6e38 for [3e38, 0] at T =
        # 0.5): -inf is the float32 it rounds to, so that overflow on the way out is the answer, not an error
        with np.errstate(over="ignore"):
            np.subtract(scratch, log_sum[:, None], out=out, casting="unsafe")

    return _rowwise(x, axis, temperature, where, accurate_dtype, log_probabilities, spare=True)


# finish(out, x, scratch, spare, temperature) writes a block's output from its scores x, working in
# scratch (and spare) in the working precision; scratch may be out itself
Finish = Callable[[np.ndarray, np.ndarray, np.ndarray, Any, float], None]


def _rowwise(x: Any, axis: Any, temperature: float, where: Any, precision: Callable, finish: Finish,
             *, spare: bool):
    """Let `finish` write the output block by block, working in `precision`.

    Rows go block by block through a scratch buffer (and, if `spare`, a second one) of cache size.
    """
    x = as_float_array(x, "x")
    if type(temperature) is not float or temperature != 1.0:  # the default needs no checks
        temperature = v.check_temperature(temperature)
    rows = Rows(x, class_axes(axis, x.ndim))
    data = rows.data
    if where is not None:
        where = np.asarray(where)
        if where.dtype != bool:
            raise TypeError(f"where must be a boolean array; got dtype {where.dtype}")
        try:
            keep = rows.like(where)
        except ValueError:
            raise ValueError(f"where of shape {where.shape} does not broadcast to x of shape {x.shape}") from None
        data = np.where(keep, data, -np.inf).astype(x.dtype, copy=False)

    out = np.empty(data.shape, dtype=x.dtype)
    num_rows, num_classes = data.shape
    work_dtype = precision(x.dtype)
    in_place = out.dtype == work_dtype  # then each block is worked in the output itself
    step = block_rows(num_classes, work_dtype.itemsize)

    def work(start: int, stop: int) -> None:
        shape = (min(step, stop - start), num_classes)
        scratch = None if in_place else thread_buffer("rowwise.scratch", shape, work_dtype)
        spare_rows = thread_buffer("rowwise.spare", shape, work_dtype) if spare else None
        for block in blocks(start, stop, step):
            size = block.stop - block.start
            finish(out[block], data[block], out[block] if in_place else scratch[:size],
                   None if spare_rows is None else spare_rows[:size], temperature)

    if 0 < num_rows <= step and num_classes:  # one block (every small problem): no spans, no views
        finish(out, data, out if in_place else thread_buffer("rowwise.scratch", data.shape, work_dtype),
               thread_buffer("rowwise.spare", data.shape, work_dtype) if spare else None, temperature)
    elif num_classes:
        for_row_spans(num_rows, num_classes, work)
    result = rows.restore(out)
    # a 0-d input (one score, axis=None) gives a NumPy scalar, as SciPy's softmax and NumPy's reductions do
    return result[()] if result.ndim == 0 else result


def _within(x: np.ndarray, bound: float) -> bool:
    """Every entry of the (rows, C) block x within [-bound, bound] (False for NaN): two arg-reductions,
    single C calls that write nothing (where min and max go through Python wrappers)."""
    num_classes = x.shape[1]
    low, high = (x[divmod(int(index), num_classes)] for index in (x.argmin(), x.argmax()))
    return bool(-bound <= low and high <= bound)


def _shifted(x: np.ndarray, scratch: np.ndarray, temperature: float) -> Shift:
    """scratch = (x - max x) / T in scratch's precision, and the shift."""
    shift = shift_rows(x, scratch)
    if temperature != 1.0:
        with np.errstate(over="ignore"):  # d / T below the float range is -inf, its exp 0
            scratch /= temperature  # (x - m) / T: max(x / T) is max(x) / T for T > 0
    return shift


def softmax_grad(probs: ArrayLike, grad: ArrayLike, axis: Axis = -1) -> FloatArray:
    """Vector-Jacobian product of softmax: ``p * (g - sum_k p_k g_k)``.

    With ``p = softmax(x)`` and an upstream gradient ``g = dL/dp``, returns ``dL/dx``. The Jacobian
    ``diag(p) - p p^T`` is never formed.

    Example:
        >>> import softxent as sx
        >>> p = sx.softmax([1.0, 2.0, 3.0])
        >>> sx.softmax_grad(p, [0.0, 0.0, 1.0]).round(4)   # d p_3 / dx
        array([-0.0599, -0.1628,  0.2227])
    """
    probs, grad, axes = _pair(probs, grad, axis, "probs")
    dot = np.sum(probs * grad, axis=axes, keepdims=True, dtype=np.float64)
    return (probs * (grad - dot)).astype(np.result_type(probs, grad))


def log_softmax_grad(log_probs: ArrayLike, grad: ArrayLike, axis: Axis = -1) -> FloatArray:
    """Vector-Jacobian product of log-softmax: ``g - exp(log_p) * sum_k g_k``.

    With ``log_p = log_softmax(x)`` and an upstream gradient ``g = dL/dlog_p``, returns ``dL/dx``.
    Fully masked rows (log_p all -inf) give a zero gradient.

    Example:
        >>> import softxent as sx
        >>> lp = sx.log_softmax([1.0, 2.0, 3.0])
        >>> sx.log_softmax_grad(lp, [0.0, 0.0, -1.0]).round(4)   # gradient of the loss for label 2
        array([ 0.09  ,  0.2447, -0.3348])
    """
    log_probs, grad, axes = _pair(log_probs, grad, axis, "log_probs")
    total = np.sum(grad, axis=axes, keepdims=True, dtype=np.float64)
    result = grad - np.exp(log_probs) * total
    masked = np.all(log_probs == -np.inf, axis=axes, keepdims=True)
    return np.where(masked, 0.0, result).astype(np.result_type(log_probs, grad))


def _pair(values: Any, grad: Any, axis: Any, name: str):
    values = as_float_array(values, name)
    grad = as_float_array(grad, "grad")
    v.check_same_shape(values.shape, grad.shape, name, "grad")
    return values, grad, v.normalize_axes(axis, values.ndim)
