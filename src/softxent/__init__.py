"""softxent: exact, memory-lean, fast softmax and cross-entropy losses.

The NumPy layer lives here (``import softxent as sx``); the PyTorch layer is ``softxent.torch``.
"""

from .core.cross_entropy import cross_entropy
from .core.entropy import entropy, kl_divergence
from .core.hardmax import hardmax, one_hot
from .core.linear_cross_entropy import linear_cross_entropy
from .core.logsumexp import logsumexp
from .core.softmax import log_softmax, log_softmax_grad, softmax, softmax_grad

__version__ = "0.1.0"

__all__ = [
    "softmax", "log_softmax", "logsumexp", "hardmax", "one_hot", "softmax_grad", "log_softmax_grad",
    "entropy", "kl_divergence", "cross_entropy", "linear_cross_entropy",
]
