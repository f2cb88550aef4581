"""The PyTorch layer: drop-in losses for torch.nn.functional, fused and memory-lean.

Import as ``import softxent.torch as sxt``. Needs the `torch` extra.

- `cross_entropy`, `CrossEntropyLoss`: torch.nn.functional.cross_entropy's drop-in; the gradient is
  computed in the forward sweep into one logits-sized buffer.
- `linear_cross_entropy`, `LinearCrossEntropyLoss`: the linear head and its loss in chunks of rows,
  never holding the (N, V) logits.
- `softmax`, `log_softmax`, `logsumexp`, `hardmax`: with softxent's limits for masked and +inf rows.
"""

from .cross_entropy import CrossEntropyLoss, cross_entropy
from .linear_cross_entropy import LinearCrossEntropyLoss, linear_cross_entropy
from .softmax import hardmax, log_softmax, logsumexp, softmax

__all__ = ["softmax", "log_softmax", "logsumexp", "hardmax", "cross_entropy", "CrossEntropyLoss",
           "linear_cross_entropy", "LinearCrossEntropyLoss"]
