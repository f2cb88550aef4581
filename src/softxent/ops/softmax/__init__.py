"""softmax and log-softmax: probabilities from scores, and their logarithms.

    softmax(x)_j     = exp(d_j) / sum_k exp(d_k)           d = (x - max x) / T
    log_softmax(x)_j = d_j - log1p(sum_{k != argmax} exp(d_k))

Shifted by the max so exp never overflows, then divided by the temperature (never x / T first); the
max's own term, exactly 1, is left out of the sum so log1p keeps log_softmax exact when one class
dominates. A fully masked row gives softmax 0 and log_softmax -inf; +inf entries share the mass. The
vector-Jacobian products: p * (g - sum p g) and g - p sum g.

Start with numpy.py (the reference); torch.py is the drop-in for F.softmax / F.log_softmax, triton.py the
CUDA kernels, jax.py the JAX layer.
"""
