"""Fused linear layer + cross-entropy that holds at most `chunk_size` rows of logits at once."""

from __future__ import annotations

from typing import Any, Literal, Optional, Tuple, overload

import numpy as np

from softxent import _validation as v
from softxent._options import LossOptions
from softxent._arrays import as_float_array
from softxent._typing import ArrayLike, FloatArray, FloatResult, Reduction
from softxent.ops.cross_entropy.numpy import CrossEntropyRows

# The default chunk holds about this many logits: 16 MiB in float32, large enough for BLAS to run at
# full speed, small next to the (rows, V) logits of an LLM head and next to the gradient of w.
_CHUNK_ELEMENTS = 1 << 22


# (dx, dw, dbias): dbias is None without a bias
Grads = Tuple[FloatArray, FloatArray, Optional[FloatArray]]


@overload
def linear_cross_entropy(x: ArrayLike, w: ArrayLike, target: ArrayLike, *, bias: ArrayLike | None = None,
                         weight: ArrayLike | None = None, ignore_index: int = -100, reduction: Reduction = "mean",
                         label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
                         temperature: float = 1.0, num_items: int | ArrayLike | None = None,
                         chunk_size: int | None = None, return_grad: Literal[False] = False) -> FloatResult: ...
@overload
def linear_cross_entropy(x: ArrayLike, w: ArrayLike, target: ArrayLike, *, bias: ArrayLike | None = None,
                         weight: ArrayLike | None = None, ignore_index: int = -100, reduction: Reduction = "mean",
                         label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
                         temperature: float = 1.0, num_items: int | ArrayLike | None = None,
                         chunk_size: int | None = None, return_grad: Literal[True]) -> tuple[FloatResult, Grads]: ...
@overload
def linear_cross_entropy(x: ArrayLike, w: ArrayLike, target: ArrayLike, *, bias: ArrayLike | None = None,
                         weight: ArrayLike | None = None, ignore_index: int = -100, reduction: Reduction = "mean",
                         label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
                         temperature: float = 1.0, num_items: int | ArrayLike | None = None,
                         chunk_size: int | None = None, return_grad: bool = False
                         ) -> FloatResult | tuple[FloatResult, Grads]: ...
def linear_cross_entropy(x: ArrayLike, w: ArrayLike, target: ArrayLike, *, bias: ArrayLike | None = None,
                         weight: ArrayLike | None = None, ignore_index: int = -100, reduction: Reduction = "mean",
                         label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
                         temperature: float = 1.0, num_items: int | ArrayLike | None = None,
                         chunk_size: int | None = None, return_grad: bool = False
                         ) -> FloatResult | tuple[FloatResult, Grads]:
    """Cross-entropy of a linear layer's logits, ``cross_entropy(x @ w.T + bias, target)``, chunked.

    The logits of softmax regression and of an LLM head are (rows, V); this never holds more than
    `chunk_size` rows of them. Each chunk's logits are computed once, turned into their gradient in
    place (the cross-entropy kernel writes d(loss)/d(logits) over them), and folded into the gradients
    of x, w and bias before the next chunk: the memory beyond inputs and outputs is one chunk of logits
    and, while a chunk is in the kernel, at most as many rows of float64 scratch (Wijmans et al. 2024,
    "Cut your losses in large-vocabulary language models", make the same point on the GPU).

    Args:
        x: inputs of shape (..., D); float16 is computed in float32.
        w: the layer's weight, shape (V, D).
        target: class indices of shape x.shape[:-1], or probabilities of shape x.shape[:-1] + (V,).
        bias: the layer's bias, shape (V,), or None.
        weight, ignore_index, reduction, label_smoothing, z_loss, softcap, temperature, num_items: as
            `cross_entropy`.
        chunk_size: rows of logits per chunk; None picks about 8M logits per chunk.
        return_grad: also return the gradients ``(dx, dw, dbias)`` of the returned loss (for
            ``"none"``, of its sum); `dbias` is None without a bias.

    Returns:
        The loss, or ``(loss, (dx, dw, dbias))`` with `return_grad`.

    Example:
        >>> import numpy as np, softxent as sx
        >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> loss, (dx, dw, db) = sx.linear_cross_entropy(x, w, [0, 2], return_grad=True, chunk_size=1)
        >>> bool(np.isclose(loss, sx.cross_entropy(x @ w.T, [0, 2])))
        True
    """
    options = LossOptions(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                          z_loss=z_loss, softcap=softcap, temperature=temperature)
    chunk_size = v.check_chunk_size(chunk_size)
    x, w, bias = _checked_layer(x, w, bias)
    num_classes, features = w.shape
    compute = np.result_type(x, w, bias if bias is not None else x, np.float32)
    rows = x.reshape(-1, features).astype(compute, copy=False)
    weight_matrix = w.astype(compute, copy=False)
    num_rows = rows.shape[0]

    logits_shape = x.shape[:-1] + (num_classes,)
    problem = CrossEntropyRows.build(logits_shape, num_classes, target, weight, options, x.ndim - 1,
                                     to_rows=lambda a: a.reshape(-1, num_classes), num_items=num_items)
    scale = problem.grad_scale()
    chunk = chunk_size or max(1, _CHUNK_ELEMENTS // max(1, num_classes))
    chunk = min(chunk, max(1, num_rows))

    logits_buffer = np.empty((chunk, num_classes), dtype=compute)
    losses = np.zeros(num_rows, dtype=np.float64)
    if return_grad:
        dx = np.empty_like(rows)
        dw = np.zeros_like(weight_matrix)
        dbias = None if bias is None else np.zeros(num_classes, dtype=compute)
        accumulate = _Accumulator(dw, chunk)
    for start in range(0, num_rows, chunk):
        part = slice(start, min(start + chunk, num_rows))
        inputs = rows[part]
        logits = logits_buffer[: part.stop - part.start]
        np.matmul(inputs, weight_matrix.T, out=logits)
        if bias is not None:
            logits += bias
        # the kernel overwrites the chunk's logits with d(loss)/d(logits)
        losses[part] = problem.losses(logits, logits if return_grad else None, scale, rows=part)
        if return_grad:
            np.matmul(logits, weight_matrix, out=dx[part])
            accumulate(logits, inputs)
            if dbias is not None:
                dbias += logits.sum(axis=0)

    loss = problem.reduce(losses, x.shape[:-1], np.result_type(x, w, bias if bias is not None else x))
    if not return_grad:
        return loss
    grads = (dx.reshape(x.shape).astype(x.dtype, copy=False), dw.astype(w.dtype, copy=False),
             None if dbias is None else dbias.astype(bias.dtype, copy=False))
    return loss, grads


class _Accumulator:
    """dw += dlogits.T @ inputs without a (V, D) temporary: the product goes through in slices of V."""

    def __init__(self, dw: np.ndarray, chunk: int):
        num_classes, features = dw.shape
        self.dw = dw
        # a slice's product is at most a quarter of a chunk of logits, and at least 64 rows for BLAS
        self.step = max(64, (chunk * num_classes) // (4 * max(1, features)))
        self.step = min(self.step, num_classes)
        self.product = np.empty((self.step, features), dtype=dw.dtype)

    def __call__(self, dlogits: np.ndarray, inputs: np.ndarray) -> None:
        num_classes = self.dw.shape[0]
        for lo in range(0, num_classes, self.step):
            hi = min(lo + self.step, num_classes)
            product = self.product[: hi - lo]
            np.matmul(dlogits[:, lo:hi].T, inputs, out=product)
            self.dw[lo:hi] += product


def _checked_layer(x: Any, w: Any, bias: Any):
    x = as_float_array(x, "x")
    w = as_float_array(w, "w")
    if x.ndim < 1:
        raise ValueError("x must have at least one dimension (the features); got a scalar")
    if w.ndim != 2:
        raise ValueError(f"w must have shape (V, D), two dimensions; got shape {w.shape}")
    if w.shape[1] != x.shape[-1]:
        raise ValueError(f"w must have shape (V, {x.shape[-1]}) to match x's last dimension {x.shape[-1]}; "
                         f"got shape {w.shape}")
    if bias is not None:
        bias = as_float_array(bias, "bias")
        v.check_same_shape((w.shape[0],), bias.shape, "w's first dimension", "bias")
    return x, w, bias
