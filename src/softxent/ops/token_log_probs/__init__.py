"""Token log-probabilities and the policy's entropy: the per-token quantities of RL fine-tuning.

For a row of logits x and the sampled token t, with the scores z = softcap-then-temperature(x) (the
cross-entropy family's order, `softxent.ops.cross_entropy.spec.transformed_scores`), m = max z,
d = z - m <= 0, e = exp(d), S = sum_j e_j and L = log S = log1p(sum_{j != argmax} e_j) >= 0:

    log p_t = d_t - L = -((-d_t) + L)                    two terms >= 0: nothing cancels
    H       = -sum_j p_j log p_j = L + E,  E = sum_j p_j (-d_j) >= 0

so a confident policy's entropy, near 0, is a sum of two small nonnegative terms, never the
difference of two large ones (the textbook ``lse - sum_j p_j z_j`` cancels to nothing in float32 when
one class holds almost all the mass). With upstream gradients g (of log p_t) and h (of H) per row, the
gradient with respect to the scores is

    d/dz_j = g ([j = t] - p_j) + h p_j ((-d_j) - E)

with the target's own entry g (1 - p_t) taken as ``-g expm1(log p_t)``: never 1 - p_t by
cancellation when p_t is near 1 (rule 11 of docs/semantics.md). Then the chain rule through the temperature (1 / T) and
the soft cap (1 - tanh^2). Rows whose target is `ignore_index`, and fully masked rows (every logit
-inf), give 0 and a zero gradient, as cross-entropy's (spec rule).

Layers: `numpy.py` (the reference, with its gradient), `torch.py` (autograd on the CPU kernels here and
Triton's on CUDA), `triton.py` (the CUDA row kernels), `distributed.py` (the vocabulary split over
ranks). Each holds the plain form and the linear one (``input @ weight.T + bias``, chunked, never holding
the (N, V) logits).
"""
