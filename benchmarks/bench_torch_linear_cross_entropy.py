"""Linear layer + cross-entropy, forward + backward: softxent's fused op beside the unfused reference,
torch's own chunked F.linear_cross_entropy, Cut Cross-Entropy's torch.compile implementation (the one
that runs on the CPU; `pip install -e '.[bench]'`), and the NumPy layer's fused op.

Each provider computes the loss of `input @ linear_weight.T` against class indices and the gradients of
input and linear_weight, in a fresh process (harness.py), and drops the gradients before returning.
Peak extra memory is over the inputs, gradients included (linear_heads.py, which the token log-prob
and distillation benchmarks share).
FLOPs: three matrix products of 2 * N * D * V each (logits, grad_input, grad_weight).
"""

import torch

from harness import Unavailable, main
from linear_heads import CASES, QUICK, head, over_gradients, training_step


def _inputs(case):
    g = torch.Generator().manual_seed(0)
    x, w = head(case, g)
    return x, w, torch.randint(0, case["classes"], (case["rows"],), generator=g)


def _runner(loss_fn, case, device):
    x, w, t = _inputs(case)
    return training_step(loss_fn, x, w, t, device=device)


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
    flops = 3 * 2 * case["rows"] * case["features"] * case["classes"]
    return {**over_gradients(case, row), "gflop_per_s": flops / row["time_s"] / 1e9}


if __name__ == "__main__":
    main("torch_linear_cross_entropy", CASES, QUICK,
         {"softxent": make_softxent, "unfused": make_unfused, "torch-chunked": make_torch_chunked,
          "cce-torch-compile": make_cce_torch_compile, "softxent-numpy": make_softxent_numpy}, describe=describe)
