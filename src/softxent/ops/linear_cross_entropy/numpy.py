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
    head = LinearHead(x, w, bias, chunk_size, want_grad=return_grad)
    num_classes = head.num_classes
    logits_shape = x.shape[:-1] + (num_classes,)
    problem = CrossEntropyRows.build(logits_shape, num_classes, target, weight, options, x.ndim - 1,
                                     to_rows=lambda a: a.reshape(-1, num_classes), num_items=num_items)
    scale = problem.grad_scale()
    losses = np.zeros(head.num_rows, dtype=np.float64)
    for part, logits in head.chunks():
        # the kernel overwrites the chunk's logits with d(loss)/d(logits)
        losses[part] = problem.losses(logits, logits if return_grad else None, scale, rows=part)
        if return_grad:
            head.fold(part, logits)
    loss = problem.reduce(losses, x.shape[:-1], head.dtype)
    return (loss, head.gradients()) if return_grad else loss


class LinearHead:
    """A linear layer ``x @ w.T + bias`` a chunk of rows at a time, for the linear form of every loss.

    Cross-entropy, token log-probs and distillation compute each chunk's logits here (`chunks`), let
    their row kernel turn them into d(loss)/d(logits) in place, and fold that into the layer's gradients
    here (`fold`): the memory beyond inputs and gradients is one chunk of logits. x, w and bias are
    checked by the caller (`_checked_layer`).
    """

    def __init__(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, chunk_size: int | None, *,
                 want_grad: bool):
        self.x, self.w, self.bias = x, w, bias
        self.num_classes, features = w.shape
        compute = np.result_type(x, w, bias if bias is not None else x, np.float32)
        self.rows = x.reshape(-1, features).astype(compute, copy=False)
        self.weight = w.astype(compute, copy=False)
        self.num_rows = self.rows.shape[0]
        self.chunk = min(chunk_size or max(1, _CHUNK_ELEMENTS // max(1, self.num_classes)), max(1, self.num_rows))
        self._buffer = np.empty((self.chunk, self.num_classes), dtype=compute)
        self.dx = self.dw = self.dbias = None
        if want_grad:
            self.dx = np.empty_like(self.rows)
            self.dw = np.zeros_like(self.weight)
            self.dbias = None if bias is None else np.zeros(self.num_classes, dtype=compute)
            self._accumulate = _Accumulator(self.dw, self.chunk)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the layer's outputs: x's, w's and bias's result type."""
        return np.result_type(self.x, self.w, self.bias if self.bias is not None else self.x)

    def chunks(self):
        """(rows, logits) per chunk of rows; the logits live in one reused buffer: use them before the next."""
        for start in range(0, self.num_rows, self.chunk):
            part = slice(start, min(start + self.chunk, self.num_rows))
            logits = self._buffer[: part.stop - part.start]
            np.matmul(self.rows[part], self.weight.T, out=logits)
            if self.bias is not None:
                logits += self.bias
            yield part, logits

    def fold(self, part: slice, dlogits: np.ndarray) -> None:
        """A chunk's d(loss)/d(logits) into dx = dlogits w, dw += dlogits^T x and dbias += sum dlogits."""
        np.matmul(dlogits, self.weight, out=self.dx[part])
        self._accumulate(dlogits, self.rows[part])
        if self.dbias is not None:
            self.dbias += dlogits.sum(axis=0)

    def gradients(self) -> tuple:
        """(dx, dw, dbias) in the shapes and dtypes of x, w and bias (dbias None without a bias)."""
        dx = self.dx.reshape(self.x.shape).astype(self.x.dtype, copy=False)
        dbias = None if self.dbias is None else self.dbias.astype(self.bias.dtype, copy=False)
        return dx, self.dw.astype(self.w.dtype, copy=False), dbias


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
    bias = None if bias is None else as_float_array(bias, "bias")
    check_layer_shapes(x.shape, w.shape, None if bias is None else bias.shape)
    return x, w, bias


def check_layer_shapes(x_shape: tuple, w_shape: tuple, bias_shape: tuple | None) -> None:
    """The linear layer's shape rule, for every layer: x (..., D), w (V, D), bias (V,) or None."""
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    if len(x_shape) < 1:
        raise ValueError("x must have at least one dimension (the features); got a scalar")
    if len(w_shape) != 2:
        raise ValueError(f"w must have shape (V, D), two dimensions; got shape {w_shape}")
    if w_shape[1] != x_shape[-1]:
        raise ValueError(f"w must have shape (V, {x_shape[-1]}) to match x's last dimension {x_shape[-1]}; "
                         f"got shape {w_shape}")
    if bias_shape is not None:
        v.check_same_shape((w_shape[0],), tuple(bias_shape), "w's first dimension", "bias")
