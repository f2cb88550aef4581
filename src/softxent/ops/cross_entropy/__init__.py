"""cross-entropy: the softmax loss of every classifier, and its gradient in the same sweep.

With z the logits after softcap and temperature, m = max z, d = z - m <= 0, L = log1p(sum_{j != argmax}
exp(d_j)) and the target as coefficients a_j >= 0 (class index t: (1 - eps) w_t onehot(t) + (eps / C) w;
probabilities p: ((1 - eps) p + eps / C) w):

    loss = sum_j a_j (L - d_j) + z_loss * lse**2,       lse = m + L        (terms >= 0: nothing cancels)
    dloss/dz_j = (A + 2 z_loss lse) softmax(z)_j - a_j,  A = sum_j a_j

and where the target holds the max its entry p_t - 1 is computed as -sum_{j != t} p_j.

Start with spec.py (the rules every layer shares: target kind, value checks, coefficients, the mean's
denominator, reductions), then numpy.py (the readable reference). torch.py is the drop-in for
F.cross_entropy, torch_cpu.py its fused CPU kernel, triton.py the CUDA kernels, distributed.py and
distributed_rows.py the vocab-parallel loss, jax.py and jax_distributed.py the JAX layer.
"""
