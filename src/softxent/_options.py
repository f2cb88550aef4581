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

    def encode(self) -> list[float]:
        """The scalar options as one list of floats, for a torch custom op's schema (`decode` reverses it;
        ignore_index is exact in a float up to 2**53)."""
        return [float(self.ignore_index), self.label_smoothing, self.z_loss, self.softcap or 0.0, self.temperature]

    @classmethod
    def decode(cls, values: list[float], weight: Any = None, reduction: str = "mean") -> "LossOptions":
        ignore_index, label_smoothing, z_loss, softcap, temperature = values
        return cls(weight=weight, ignore_index=int(ignore_index), reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap or None, temperature=temperature)

    @property
    def transforms_logits(self) -> bool:
        """True when the logits are soft-capped or tempered before the softmax."""
        return self.softcap is not None or self.temperature != 1.0
