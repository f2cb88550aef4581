"""RL head, forward + backward: softxent.torch.linear_token_log_probs with the entropy beside the unfused
torch computation (logits, log_softmax, gather, -sum p log p).

Each provider computes, from hidden states x (N, D) and the head W (V, D), a policy-gradient loss with an
entropy bonus, ``-(advantage * log p_t).mean() - 0.01 * H.mean()``, and the gradients of x and W, in a
fresh process (harness.py), dropping the gradients before returning. Peak extra memory is over the
inputs and includes the gradients: (N + V) * D * itemsize is the least any provider can allocate;
`peak_over_grads` divides by it. FLOPs: softxent runs four matrix products of 2 N D V (the logits in the
forward, again in the backward, then grad_x and grad_W); the unfused computation three, holding the
(N, V) logits and their softmax instead.
"""

import numpy as np
import torch

from harness import main

CASES = {"4096x1024x32000-float32": {"rows": 4096, "features": 1024, "classes": 32000, "dtype": "float32"}}
QUICK = {"256x64x1000-float32": {"rows": 256, "features": 64, "classes": 1000, "dtype": "float32"}}
ENTROPY_BONUS = 0.01


def _inputs(case):
    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, case["dtype"])
    x = torch.randn(case["rows"], case["features"], generator=g).to(dtype)
    w = (torch.randn(case["classes"], case["features"], generator=g) / case["features"] ** 0.5).to(dtype)
    t = torch.randint(0, case["classes"], (case["rows"],), generator=g)
    advantage = torch.randn(case["rows"], generator=g)
    return x, w, t, advantage


def _runner(log_probs_fn, case, device):
    x, w, t, advantage = _inputs(case)
    x, w, t, advantage = x.to(device).requires_grad_(), w.to(device).requires_grad_(), t.to(device), advantage.to(device)

    def run():
        lp, h = log_probs_fn(x, w, t)
        loss = -(advantage * lp).mean() - ENTROPY_BONUS * h.mean()
        loss.backward()
        x.grad = w.grad = None  # counted in the peak, not in the next call's baseline
        return loss

    return run


def make_softxent(case, device):
    import softxent.torch as sxt

    return _runner(lambda x, w, t: sxt.linear_token_log_probs(x, w, t, return_entropy=True), case, device)


def unfused(x, w, t):
    log_p = torch.log_softmax(x @ w.T, dim=-1)
    lp = log_p.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    h = -(log_p.exp() * log_p).sum(-1)
    return lp, h


def make_unfused(case, device):
    return _runner(unfused, case, device)


def describe(case, row):
    itemsize = np.dtype(case["dtype"]).itemsize
    grads = (case["rows"] + case["classes"]) * case["features"] * itemsize
    return {"grads_bytes": grads, "peak_over_grads": row["peak_extra_bytes"] / grads}


if __name__ == "__main__":
    main("linear_token_log_probs", CASES, QUICK, {"softxent": make_softxent, "unfused": make_unfused},
         describe=describe)
