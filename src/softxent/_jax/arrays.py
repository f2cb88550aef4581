"""JAX array plumbing: conversion, dtype kinds that bfloat16 understands, class axes moved last.

The shared checks (softxent._validation, the ops' spec) read ``array.dtype.kind``; ml_dtypes' bfloat16
reports kind "V", so the checks here look at the dtype through `kind_view`, a shape-and-dtype stand-in
whose 16-bit floats read as float32 (what they are accumulated in anyway, rule 8 of docs/semantics.md).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from softxent import _validation as v


def is_floating(dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))


def kind_view(array: Any) -> Any:
    """A stand-in with `array`'s shape whose dtype the shared checks read (16-bit floats as float32)."""
    dtype = jnp.float32 if is_floating(array.dtype) else array.dtype
    return jax.ShapeDtypeStruct(tuple(array.shape), dtype)


def as_float(x: Any, name: str) -> jax.Array:
    """x as a floating JAX array: floats kept as they are, integers as the default float dtype."""
    try:
        array = jnp.asarray(x)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name} must be a rectangular numeric array; {err}") from None
    v.check_numeric(kind_view(array), name)
    return array if is_floating(array.dtype) else array.astype(jnp.result_type(float))


def as_labels(labels: Any, name: str) -> jax.Array:
    try:
        array = jnp.asarray(labels)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name} must be a rectangular integer array; {err}") from None
    return array


def work_dtype(dtype) -> Any:
    """Where rows are computed: float64 stays float64; float32 and the 16-bit floats work in float32,
    with the compensation of ops/logsumexp/jax.py standing in for NumPy's float64 (no x64 needed)."""
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def is_concrete(*arrays: Any) -> bool:
    """True when every array holds values (eager call): the value checks can read and raise."""
    return not any(isinstance(a, jax.core.Tracer) for a in arrays if a is not None)


@contextlib.contextmanager
def quiet_int64():
    """The spec counts in int64; without x64 JAX truncates it to int32 (and says so). Counts of rows
    fit in int32, so the warning is silenced where the spec runs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*int64.*not available.*")
        yield


def check_where(where: Any, shape: tuple, name: str = "where", target: str = "x") -> jax.Array | None:
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"{name} must be a boolean array; got dtype {where.dtype}")
    try:
        return jnp.broadcast_to(where, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {tuple(where.shape)} does not broadcast to {target} of shape "
                         f"{tuple(shape)}") from None


def axes_last(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """x with `axes` moved last and merged into one class axis: (batch..., C)."""
    rest = [a for a in range(x.ndim) if a not in axes]
    moved = jnp.transpose(x, rest + list(axes))
    batch = moved.shape[: len(rest)]
    return moved.reshape(batch + (int(np.prod([x.shape[a] for a in axes], dtype=np.int64)),))


def axes_restore(rows: jax.Array, shape: tuple, axes: tuple[int, ...]) -> jax.Array:
    """The inverse of `axes_last` for an array of the input's shape."""
    rest = [a for a in range(len(shape)) if a not in axes]
    order = rest + list(axes)
    moved = rows.reshape(tuple(shape[a] for a in order))
    return jnp.transpose(moved, np.argsort(order))


def reduced_shape(shape: tuple, axes: tuple[int, ...]) -> tuple:
    return tuple(s for a, s in enumerate(shape) if a not in axes)
