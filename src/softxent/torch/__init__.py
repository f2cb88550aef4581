"""The PyTorch layer: drop-in losses for torch.nn.functional, fused and memory-lean.

Import as ``import softxent.torch as sxt``. Needs the `torch` extra (``pip install 'softxent[torch]'``).

- `cross_entropy`, `CrossEntropyLoss`: torch.nn.functional.cross_entropy's drop-in; the gradient is
  computed in the forward sweep into one logits-sized buffer.
- `linear_cross_entropy`, `LinearCrossEntropyLoss`: the linear head and its loss in chunks of rows,
  never holding the (N, V) logits.
- `softmax`, `log_softmax`, `logsumexp`, `hardmax`: with softxent's limits for masked and +inf rows.
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised in a subprocess without torch
    raise ImportError("softxent.torch needs PyTorch: pip install 'softxent[torch]'") from err

from softxent.ops.cross_entropy.torch import CrossEntropyLoss, cross_entropy
from softxent.ops.distillation.torch import distillation_loss, linear_distillation_loss
from softxent.ops.hardmax.torch import hardmax
from softxent.ops.linear_cross_entropy.torch import LinearCrossEntropyLoss, linear_cross_entropy
from softxent.ops.logsumexp.torch import logsumexp
from softxent.ops.softmax.torch import log_softmax, softmax
from softxent.ops.token_log_probs.torch import linear_token_log_probs, token_log_probs

__all__ = ["softmax", "log_softmax", "logsumexp", "hardmax", "cross_entropy", "CrossEntropyLoss",
           "linear_cross_entropy", "LinearCrossEntropyLoss",
           "token_log_probs", "linear_token_log_probs", "distillation_loss", "linear_distillation_loss"]
