"""linear cross-entropy: cross_entropy(x @ w.T + bias, target) without ever holding the (N, V) logits.

The rows of x go through in chunks: each chunk's logits are computed once, turned into d(loss)/d(logits)
in place by cross-entropy's row kernel, and folded into dx = dlogits w, dw += dlogits^T x and dbias before
the next chunk (Wijmans et al. 2024 make the same point on the GPU). The memory beyond inputs and
gradients is one chunk of logits.

Start with numpy.py (`LinearHead` serves the linear forms of every loss); torch.py, distributed.py and
jax.py follow it.
"""
