"""softxent for JAX (``import softxent.jax as sxj``): the same exact, fused losses under jit, grad, vmap
and shard_map.

Every function is pure and traceable; gradients come from custom rules computed in the forward sweep
(``jax.custom_jvp`` for the row functions, which also serves forward mode and jax.hessian;
``jax.custom_vjp`` for the chunked linear forms and the vocab-parallel loss). The rules (target kind, coefficients, the mean's denominator, the reduction) are the ones the
NumPy and torch layers run: ``softxent.ops.cross_entropy.spec`` called with ``xp = jax.numpy``.

Exactness without x64: float32 rows are worked in float32 with the gap to the max split exactly
(TwoSum) and the sum taken without the max's own term through log1p (ops/logsumexp/jax.py).

Value checks that JAX cannot raise under jit (labels in range, probabilities >= 0, class weights >= 0)
raise on eager calls; `check_inputs` runs them eagerly or through ``jax.experimental.checkify``.
"""

from softxent.ops.cross_entropy.jax import check_inputs, cross_entropy
from softxent.ops.cross_entropy.jax_distributed import vocab_parallel_cross_entropy
from softxent.ops.linear_cross_entropy.jax import linear_cross_entropy
from softxent.ops.logsumexp.jax import logsumexp
from softxent.ops.softmax.jax import log_softmax, softmax
from softxent.ops.token_log_probs.jax import linear_token_log_probs, token_log_probs

__all__ = [
    "softmax", "log_softmax", "logsumexp", "cross_entropy", "linear_cross_entropy", "token_log_probs",
    "linear_token_log_probs", "vocab_parallel_cross_entropy", "check_inputs",
]
