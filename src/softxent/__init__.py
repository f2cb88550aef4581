"""softxent: exact, memory-lean, fast softmax and cross-entropy losses.

The NumPy layer lives here (``import softxent as sx``); the PyTorch layer is ``softxent.torch``.

The NumPy layer's names load on first use (PEP 562): ``import softxent.torch`` passes through this
package, and importing NumPy and the NumPy layer there would add half of softxent.torch's import time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_WHERE = {  # name -> the module that defines it
    "cross_entropy": "softxent.ops.cross_entropy.numpy",
    "distillation_loss": "softxent.ops.distillation.numpy",
    "linear_distillation_loss": "softxent.ops.distillation.numpy",
    "entropy": "softxent.ops.entropy.numpy",
    "kl_divergence": "softxent.ops.entropy.numpy",
    "hardmax": "softxent.ops.hardmax.numpy",
    "one_hot": "softxent.ops.hardmax.numpy",
    "linear_cross_entropy": "softxent.ops.linear_cross_entropy.numpy",
    "logsumexp": "softxent.ops.logsumexp.numpy",
    "log_softmax": "softxent.ops.softmax.numpy",
    "log_softmax_grad": "softxent.ops.softmax.numpy",
    "softmax": "softxent.ops.softmax.numpy",
    "softmax_grad": "softxent.ops.softmax.numpy",
    "linear_token_log_probs": "softxent.ops.token_log_probs.numpy",
    "token_log_probs": "softxent.ops.token_log_probs.numpy",
}

__all__ = [
    "softmax", "log_softmax", "logsumexp", "hardmax", "one_hot", "softmax_grad", "log_softmax_grad",
    "entropy", "kl_divergence", "cross_entropy", "linear_cross_entropy",
    "token_log_probs", "linear_token_log_probs", "distillation_loss", "linear_distillation_loss",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'softxent' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # once: later reads are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs read
    from softxent.ops.cross_entropy.numpy import cross_entropy
    from softxent.ops.distillation.numpy import distillation_loss, linear_distillation_loss
    from softxent.ops.entropy.numpy import entropy, kl_divergence
    from softxent.ops.hardmax.numpy import hardmax, one_hot
    from softxent.ops.linear_cross_entropy.numpy import linear_cross_entropy
    from softxent.ops.logsumexp.numpy import logsumexp
    from softxent.ops.softmax.numpy import log_softmax, log_softmax_grad, softmax, softmax_grad
    from softxent.ops.token_log_probs.numpy import linear_token_log_probs, token_log_probs
