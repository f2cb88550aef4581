"""Linear layer + cross-entropy, forward + backward: softxent's fused op beside the unfused reference,
torch's own chunked F.linear_cross_entropy, Cut Cross-Entropy's torch.compile implementation (the one
that runs on the CPU; `pip install -e '.[bench]'`), and the NumPy layer's fused op.

Each provider computes the loss of `input @ linear_weight.T` against class indices and the gradients of
input and linear_weight, in a fresh process (harness.py), and drops the gradients before returning.
Peak extra memory is over the inputs, and includes the gradients themselves: grad_input + grad_weight
= (N + V) * D * itemsize is the least any provider can allocate; `peak_over_grads` divides by it.
FLOPs: three matrix products of 2 * N * D * V each (logits, grad_input, grad_weight).
"""

import numpy as np
import torch

from harness import Unavailable, main

CASES = {"4096x1024x32000-float32": {"rows": 4096, "features": 1024, "classes": 32000, "dtype": "float32"}}
QUICK = {"256x64x1000-float32": {"rows": 256, "features": 64, "classes": 1000, "dtype": "float32"}}


def _inputs(case):
    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, case["dtype"])
    x = torch.randn(case["rows"], case["features"], generator=g).to(dtype)
    w = (torch.randn(case["classes"], case["features"], generator=g) / case["features"] ** 0.5).to(dtype)
    t = torch.randint(0, case["classes"], (case["rows"],), generator=g)
    return x, w, t


def _runner(loss_fn, case, device):
    x, w, t = _inputs(case)
    x, w, t = x.to(device).requires_grad_(), w.to(device).requires_grad_(), t.to(device)

    def run():
        loss = loss_fn(x, w, t)
        loss.backward()
        x.grad = w.grad = None  # counted in the peak, not in the next call's baseline
        return loss

    return run


def make_softxent(case, device):
    import softxent.torch as sxt

    return _runner(sxt.linear_cross_entropy, case, device)


def make_unfused(case, device):
    return _runner(lambda x, w, t: torch.nn.functional.cross_entropy(x @ w.T, t), case, device)


def make_torch_chunked(case, device):
    functional = getattr(torch.nn.functional, "linear_cross_entropy", None)
    options = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if functional is None or options is None:
        raise Unavailable(f"torch {torch.__version__} has no F.linear_cross_entropy")
    return _runner(lambda x, w, t: functional(x, w, t, options=options()), case, device)


def make_cce_torch_compile(case, device):
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:
        raise Unavailable("cut-cross-entropy not installed (pip install -e '.[bench]')") from None
    return _runner(lambda x, w, t: linear_cross_entropy(x, w, t, impl="torch_compile"), case, device)


def make_softxent_numpy(case, device):
    if device != "cpu":
        raise Unavailable("the NumPy layer runs on the CPU")
    import softxent as sx

    x, w, t = (a.numpy() for a in _inputs(case))
    return lambda: sx.linear_cross_entropy(x, w, t, return_grad=True)


def describe(case, row):
    itemsize = np.dtype(case["dtype"]).itemsize
    grads = (case["rows"] + case["classes"]) * case["features"] * itemsize
    flops = 3 * 2 * case["rows"] * case["features"] * case["classes"]
    return {"grads_bytes": grads, "peak_over_grads": row["peak_extra_bytes"] / grads,
            "gflop_per_s": flops / row["time_s"] / 1e9}


if __name__ == "__main__":
    main("torch_linear_cross_entropy", CASES, QUICK,
         {"softxent": make_softxent, "unfused": make_unfused, "torch-chunked": make_torch_chunked,
          "cce-torch-compile": make_cce_torch_compile, "softxent-numpy": make_softxent_numpy}, describe=describe)
