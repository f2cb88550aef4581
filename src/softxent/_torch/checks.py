"""Argument checks of the torch layers that only torch arguments need: tensor types and devices.

Value checks (labels, probabilities, weights) are the ops' spec (`softxent.ops.cross_entropy.spec`), and
every message is worded in `softxent._validation`.
"""

from __future__ import annotations

from typing import Any

import torch

from softxent import _validation as v


def tensor(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    return value


def floating(value: Any, name: str) -> torch.Tensor:
    value = tensor(value, name)
    v.check_numeric(value, name, allow_int=False)
    return value


def same_device(value: torch.Tensor, reference: torch.Tensor, name: str, reference_name: str) -> None:
    if value.device != reference.device:
        raise ValueError(f"{name} must be on the device of {reference_name}, {reference.device}; got {value.device}")


def check_weight_argument(weight, num_classes: int) -> None:
    """weight is None or a floating (C,) tensor; its values are checked where they are read."""
    if weight is None:
        return
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor or None; got {type(weight).__name__}")
    v.check_numeric(weight, "weight")
    v.check_weight_shape(weight.shape, num_classes)
