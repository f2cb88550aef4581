"""Value checks of the torch layer: torch ops find the bad entry, `_validation` words the error.

Shapes and dtypes are checked with `_validation` directly; these look at values, so on a GPU they cost
a host sync (hence `check_labels=False`).
"""

from __future__ import annotations

import torch

from softxent import _validation as v


def _first(bad: torch.Tensor) -> tuple[int, ...]:
    flat = int(torch.argmax(bad.reshape(-1).to(torch.uint8)))
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), bad.shape)) if bad.dim() else ()


def check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int | None, name: str = "target") -> None:
    """Every label in [0, num_classes) or equal to ignore_index (API rule 7), else a ValueError."""
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        position = _first(bad)
        raise v.bad_label_error(int(labels[position]), position, num_classes, ignore_index, name)


def check_probabilities(probs: torch.Tensor, name: str = "target") -> None:
    """Every entry finite and >= 0, else a ValueError naming the first bad one."""
    bad = ~(probs >= 0) | torch.isinf(probs)
    if bool(bad.any()):
        position = _first(bad)
        raise v.bad_probability_error(float(probs[position]), position, name)


def check_weight_argument(weight, num_classes: int) -> None:
    """weight is None or a floating (C,) tensor; its values are checked where they are read."""
    if weight is None:
        return
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor or None; got {type(weight).__name__}")
    v.check_numeric(weight, "weight")
    v.check_weight_shape(weight.shape, num_classes)


def check_weight(weight: torch.Tensor, num_classes: int, name: str = "weight") -> None:
    v.check_numeric(weight, name)
    v.check_weight_shape(weight.shape, num_classes, name)
    bad = ~(weight >= 0) | torch.isinf(weight)
    if bool(bad.any()):
        index = int(torch.argmax(bad.to(torch.uint8)))
        raise v.bad_weight_error(float(weight[index]), index, name)
