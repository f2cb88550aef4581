"""The options of a cross-entropy loss, gathered once and checked once.

Every backend (NumPy, torch, Triton, distributed) receives one frozen `LossOptions` instead of a tail of
positional arguments, so adding an option means touching one place, not every `Function.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from softxent import _validation as v


@dataclass(frozen=True, eq=False)
class LossOptions:
    """Scalar options of cross_entropy and linear_cross_entropy, validated on construction.

    `weight` (per-class weights) is an array of the backend's own type, or None; its shape and values are
    checked by the backend, which knows the number of classes.
    """

    weight: Any = None
    ignore_index: int = -100
    reduction: str = "mean"
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    temperature: float = 1.0

    def __post_init__(self) -> None:
        # frozen: write the normalised values through object.__setattr__
        set_ = object.__setattr__
        set_(self, "ignore_index", v.check_ignore_index(self.ignore_index))
        set_(self, "reduction", v.check_reduction(self.reduction))
        set_(self, "label_smoothing", v.check_label_smoothing(self.label_smoothing))
        set_(self, "z_loss", v.check_z_loss(self.z_loss))
        set_(self, "softcap", v.check_softcap(self.softcap))
        set_(self, "temperature", v.check_temperature(self.temperature))

    @property
    def transforms_logits(self) -> bool:
        """True when the logits are soft-capped or tempered before the softmax."""
        return self.softcap is not None or self.temperature != 1.0
