"""Array plumbing for the NumPy layer: conversion, class axes as rows, precision, row spans on threads."""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

from softxent import _validation as v

# The array namespace the ops' spec runs on for NumPy arrays: NumPy's own main namespace where it speaks the
# array API (2.1 and later: np.astype), without array_api_compat's wrappers, whose few microseconds a call
# are most of a small problem's cost; older NumPy through the compatibility layer.
if hasattr(np, "astype"):
    xp = np
else:  # pragma: no cover - NumPy < 2.1
    import array_api_compat.numpy as xp
from softxent._spans import SpanPool, configured_threads


def as_float_array(x: Any, name: str) -> np.ndarray:
    """x as a floating NumPy array: floats kept as they are, integers as float64, anything else refused."""
    if type(x) is np.ndarray and x.dtype.kind == "f":  # the common case: nothing to convert or check
        return x
    try:
        array = np.asarray(x)
    except (ValueError, TypeError) as err:  # ragged nested lists, unconvertible objects
        raise ValueError(f"{name} must be a rectangular numeric array; {err}") from None
    v.check_numeric(array, name)
    return array if array.dtype.kind == "f" else array.astype(np.float64)


def as_label_array(labels: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(labels)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name} must be a rectangular integer array; {err}") from None
    v.check_integer_labels(array, name)
    return array


def accurate_dtype(dtype: np.dtype) -> np.dtype:
    """Where log-domain results are computed: float64 for half, single and double inputs.

    float32 logits are exact in float64 and so are their differences, so the loss, the log-sum-exp and
    the log-probabilities come back correctly rounded to float32 but for the last rounding.
    """
    return _LONGDOUBLE if dtype == _LONGDOUBLE else _FLOAT64


def fast_dtype(dtype: np.dtype) -> np.dtype:
    """Where probabilities are computed: float16 is accumulated in float32 (rule 8 of docs/semantics.md),
    others as given."""
    return _FLOAT32 if dtype == _FLOAT16 else np.dtype(dtype)


_FLOAT16, _FLOAT32, _FLOAT64, _LONGDOUBLE = (np.dtype(t) for t in (np.float16, np.float32, np.float64, np.longdouble))


class Rows:
    """A view of `x` as a 2-D (rows, classes) array with the class axes last, and the way back."""

    def __init__(self, x: np.ndarray, axes: tuple[int, ...]):
        self.shape = x.shape
        self.axes = axes
        if x.ndim == 2 and axes == (1,):  # already (rows, classes): the common case, at no cost
            self.order, self.batch_shape, self.num_classes, self.data = None, x.shape[:1], x.shape[1], x
            return
        num_batch = x.ndim - len(axes)
        # class axes already last: no transposes
        self.order = None if axes == tuple(range(num_batch, x.ndim)) else \
            [a for a in range(x.ndim) if a not in axes] + list(axes)
        moved = x if self.order is None else x.transpose(self.order)
        self.batch_shape = moved.shape[:num_batch]
        self.num_classes = math.prod(moved.shape[num_batch:])
        # reshape copies only when the class axes are not already last and contiguous
        self.data = moved.reshape(math.prod(self.batch_shape), self.num_classes)

    def like(self, other: np.ndarray) -> np.ndarray:
        """Another array of x's shape (a mask, scale factors, targets) in the same row layout."""
        moved = np.broadcast_to(other, self.shape)
        return (moved if self.order is None else moved.transpose(self.order)).reshape(self.data.shape)

    def restore(self, rows: np.ndarray) -> np.ndarray:
        """A (rows, classes) result back to x's shape and axis order."""
        if self.order is None:
            return rows if rows.shape == self.shape else rows.reshape(self.shape)
        moved = rows.reshape(self.batch_shape + tuple(self.shape[a] for a in self.axes))
        return moved.transpose(np.argsort(self.order))

    def reduced(self, per_row: np.ndarray, keepdims: bool = False) -> np.ndarray:
        """A per-row result with the class axes dropped (or kept with length 1)."""
        out = per_row.reshape(self.batch_shape)
        if keepdims:
            for axis in self.axes:
                out = np.expand_dims(out, axis)
        return out


# --- rows in cache-sized blocks, spans of rows on threads --------------------------------------------

# A block of rows is about 2 MiB in the working precision (8 rows of 32000 float64): small enough that
# the several sweeps over it (max, subtract, exp, sum, scale) hit the cache, large enough that the
# few dozen NumPy calls per block cost little next to the arithmetic. Python holds the GIL between
# those calls, so with blocks of one short row the threads would wait on each other.
_BLOCK_BYTES = 2 * 1024 * 1024
# Below this many elements a thread pool costs more than it saves.
_PARALLEL_MIN_ELEMENTS = 1 << 20

_SPANS = SpanPool(lambda size: ThreadPoolExecutor(max_workers=size, thread_name_prefix="softxent"))


# Each thread keeps its kernels' block buffers from call to call: where the allocator hands a fresh
# block-sized buffer fresh pages (large blocks, or the benchmarks' malloc settings), their faults cost
# about 1 us per 4 KiB page here, as much as the arithmetic on them.
_SCRATCH = threading.local()


def thread_buffer(role: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised buffer of `shape` and `dtype` that this thread reuses for `role` from call to call.

    A role names one buffer of one kernel (``"cross_entropy.main"``): the kernel must be done with it
    before it asks again in the same thread, and never return it. Buffers above a block's size
    (`_BLOCK_BYTES`) are made anew, so a thread keeps at most a block per role.
    """
    kept = _SCRATCH.__dict__
    last = kept.get(role)  # (bytes, the view last handed out)
    if last is not None and last[1].shape == shape and last[1].dtype == dtype:
        return last[1]
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > _BLOCK_BYTES:
        return np.empty(shape, dtype=dtype)
    memory = last[0] if last is not None and last[0].nbytes >= nbytes else np.empty(max(nbytes, 64), dtype=np.uint8)
    view = memory[:nbytes].view(dtype).reshape(shape)
    kept[role] = (memory, view)
    return view


def num_threads() -> int:
    """SOFTXENT_NUM_THREADS, else the cores this process may run on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return configured_threads(cores)


def block_rows(num_classes: int, itemsize: int = 8) -> int:
    return max(1, _BLOCK_BYTES // max(1, num_classes * itemsize))


def blocks(start: int, stop: int, step: int) -> Iterator[slice]:
    for lo in range(start, stop, step):
        yield slice(lo, min(lo + step, stop))


def for_row_spans(num_rows: int, num_classes: int, work: Callable[[int, int], None]) -> None:
    """Run work(start, stop) over contiguous spans covering range(num_rows), on several threads if large."""
    threads = 1 if num_rows * num_classes < _PARALLEL_MIN_ELEMENTS else min(num_threads(), num_rows)
    if threads <= 1:
        work(0, num_rows)
        return
    _SPANS.run(num_rows, threads, work)
