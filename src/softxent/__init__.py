"""softxent: exact, memory-lean, fast softmax and cross-entropy losses.

The NumPy layer lives here (``import softxent as sx``); the PyTorch layer is ``softxent.torch``.
"""

from softxent.ops.cross_entropy.numpy import cross_entropy
from softxent.ops.distillation.numpy import distillation_loss, linear_distillation_loss
from softxent.ops.entropy.numpy import entropy, kl_divergence
from softxent.ops.hardmax.numpy import hardmax, one_hot
from softxent.ops.linear_cross_entropy.numpy import linear_cross_entropy
from softxent.ops.logsumexp.numpy import logsumexp
from softxent.ops.softmax.numpy import log_softmax, log_softmax_grad, softmax, softmax_grad
from softxent.ops.token_log_probs.numpy import linear_token_log_probs, token_log_probs

__version__ = "0.1.0"

__all__ = [
    "softmax", "log_softmax", "logsumexp", "hardmax", "one_hot", "softmax_grad", "log_softmax_grad",
    "entropy", "kl_divergence", "cross_entropy", "linear_cross_entropy",
    "token_log_probs", "linear_token_log_probs", "distillation_loss", "linear_distillation_loss",
]
