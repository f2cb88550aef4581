"""Argument checks shared by every layer.

NumPy, torch and the command line call these functions, so the same mistake gets the same message
everywhere. Each error names the argument, what was expected and what was received (rule 10 of docs/semantics.md).

The checks work on plain Python values, shapes and dtype kinds, so this module imports neither NumPy
arrays' nor torch's machinery: a backend computes a value check with its own ops (which labels are out
of range, say) and raises the error built here.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

REDUCTIONS = ("none", "mean", "sum")

# numpy-style dtype kinds: f float, i signed int, u unsigned int, b bool, c complex, anything else exotic
_TORCH_KINDS = {"torch.bool": "b", "torch.uint8": "u", "torch.uint16": "u", "torch.uint32": "u", "torch.uint64": "u"}


def dtype_kind(array: Any) -> str:
    """The numpy-style kind letter of a NumPy array's or a torch tensor's dtype."""
    dtype = array.dtype
    kind = getattr(dtype, "kind", None)
    if isinstance(kind, str):  # numpy.dtype
        return kind
    if getattr(dtype, "is_complex", False):
        return "c"
    if getattr(dtype, "is_floating_point", False):
        return "f"
    return _TORCH_KINDS.get(str(dtype), "i")


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


# --- scalar options ---------------------------------------------------------------------------------


def check_reduction(reduction: Any) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean' or 'sum'; got {reduction!r}")
    return reduction


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    # comparisons, not math.isfinite: torch.compile(dynamic=True) cannot trace math.isfinite (torch 2.13)
    if not -math.inf < value < math.inf:
        raise ValueError(f"{name} must be finite; got {value!r}")
    return value


def check_label_smoothing(label_smoothing: Any) -> float:
    value = _real(label_smoothing, "label_smoothing")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1]; got {value!r}")
    return value


def check_z_loss(z_loss: Any) -> float:
    value = _real(z_loss, "z_loss")
    if value < 0.0:
        raise ValueError(f"z_loss must be >= 0; got {value!r}")
    return value


def check_temperature(temperature: Any) -> float:
    value = _real(temperature, "temperature")
    if value <= 0.0:
        raise ValueError(f"temperature must be > 0; got {value!r}")
    return value


def check_softcap(softcap: Any) -> float | None:
    if softcap is None:
        return None
    value = _real(softcap, "softcap")
    if value <= 0.0:
        raise ValueError(f"softcap must be > 0 or None; got {value!r}")
    return value


def check_integer(value: Any, name: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def check_ignore_index(ignore_index: Any) -> int:
    return check_integer(ignore_index, "ignore_index")


def check_chunk_size(chunk_size: Any) -> int | None:
    if chunk_size is None:
        return None
    return check_integer(chunk_size, "chunk_size", minimum=1)


# --- dtypes -----------------------------------------------------------------------------------------


def check_numeric(array: Any, name: str, *, allow_int: bool = True) -> None:
    """Floating input (or integers, converted by the caller, where allow_int): never bool, complex, text."""
    kind = dtype_kind(array)
    if kind == "f" or (allow_int and kind in "iu"):
        return
    expected = "a real floating-point" + (" or integer" if allow_int else "")
    raise TypeError(f"{name} must have {expected} dtype; got {array.dtype}")


def check_integer_labels(labels: Any, name: str) -> None:
    if dtype_kind(labels) not in "iu":
        raise TypeError(
            f"{name} holds class indices and must have an integer dtype; got {labels.dtype} "
            f"(probability targets have the shape of the logits)"
        )


# --- axes and shapes --------------------------------------------------------------------------------


def normalize_axes(axis: Any, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """An int, a tuple of ints or None (every axis) -> sorted non-negative axes, each checked."""
    if axis is None:
        return tuple(range(ndim))
    items = axis if isinstance(axis, tuple) else (axis,)
    axes = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise TypeError(f"{name} must be an int, a tuple of ints or None; got {axis!r}")
        if not -ndim <= item < ndim:
            raise ValueError(f"{name} {int(item)} is out of range for an input with {ndim} dimension(s)")
        axes.append(int(item) % ndim)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{name} has a repeated axis: {axis!r}")
    return tuple(sorted(axes))


def check_same_shape(shape_a: Sequence[int], shape_b: Sequence[int], name_a: str, name_b: str) -> None:
    if tuple(shape_a) != tuple(shape_b):
        raise ValueError(
            f"{name_b} must have the shape of {name_a}, {_shape(shape_a)}; got {_shape(shape_b)}"
        )


def target_shape_error(index_shape: Sequence[int], logits_shape: Sequence[int], target_shape: Sequence[int],
                       class_axis: int, logits_name: str = "logits", target_name: str = "target") -> ValueError:
    """A target whose shape is neither class indices' nor probabilities' (the decision: the ops' spec)."""
    return ValueError(
        f"{target_name} must hold class indices of shape {_shape(index_shape)} or probabilities of shape "
        f"{_shape(logits_shape)} to match {logits_name} of shape {_shape(logits_shape)} with classes on "
        f"axis {class_axis}; got shape {_shape(target_shape)}"
    )


def probabilities_target_error(target_shape: Sequence[int], logits_name: str = "logits") -> TypeError:
    """A probabilities target where only class indices are taken (token log-probs, distillation's rows)."""
    return TypeError(f"target must hold class indices (the shape of {logits_name} without the class axis, an "
                     f"integer dtype); got probabilities of shape {_shape(target_shape)}")


def check_weight_shape(weight_shape: Sequence[int], num_classes: int, name: str = "weight") -> None:
    if tuple(weight_shape) != (num_classes,):
        raise ValueError(
            f"{name} must hold one value per class, shape ({num_classes},); got shape {_shape(weight_shape)}"
        )


# --- value errors, raised by a backend after its own check ---------------------------------------------


def bad_label_error(label: int, position: Sequence[int], num_classes: int, ignore_index: int | None,
                    name: str = "target") -> ValueError:
    where = str(tuple(int(p) for p in position))
    ignored = "" if ignore_index is None else f" and not ignore_index ({ignore_index})"
    return ValueError(
        f"{name} holds class index {int(label)} at position {where}, outside [0, {num_classes}){ignored}"
    )


def bad_probability_error(value: float, position: Sequence[int], name: str = "target") -> ValueError:
    where = str(tuple(int(p) for p in position))
    return ValueError(f"{name} must hold probabilities >= 0 (no NaN); got {value!r} at position {where}")


def bad_weight_error(value: float, position: int, name: str = "weight") -> ValueError:
    return ValueError(f"{name} must hold finite values >= 0; got {value!r} for class {int(position)}")
