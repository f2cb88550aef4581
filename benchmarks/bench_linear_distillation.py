"""Distillation between two LM heads, forward + backward: softxent.torch.linear_distillation_loss (forward
KL, temperature 2) beside the unfused torch computation (both models' logits, log_softmax, F.kl_div).

The student's hidden states x (N, D) and head W (V, D) get gradients; the teacher's (N, D) and (V, D)
are constants. Peak extra memory is over the inputs and includes the student's gradients,
(N + V) * D * itemsize; `peak_over_grads` divides by it. FLOPs: four matrix products of 2 N D V for
both providers (the two heads' logits, grad_x, grad_W): softxent computes the student's gradient in the
forward sweep, so nothing is computed twice.
"""

import numpy as np
import torch
import torch.nn.functional as F

from harness import main

CASES = {"4096x1024x32000-float32": {"rows": 4096, "features": 1024, "classes": 32000, "dtype": "float32"}}
QUICK = {"256x64x1000-float32": {"rows": 256, "features": 64, "classes": 1000, "dtype": "float32"}}
TEMPERATURE = 2.0


def _inputs(case):
    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, case["dtype"])
    n, d, v = case["rows"], case["features"], case["classes"]
    x, tx = (torch.randn(n, d, generator=g).to(dtype) for _ in range(2))
    w, tw = ((torch.randn(v, d, generator=g) / d ** 0.5).to(dtype) for _ in range(2))
    return x, w, tx, tw


def _runner(loss_fn, case, device):
    x, w, tx, tw = (t.to(device) for t in _inputs(case))
    x.requires_grad_()
    w.requires_grad_()

    def run():
        loss = loss_fn(x, w, tx, tw)
        loss.backward()
        x.grad = w.grad = None  # counted in the peak, not in the next call's baseline
        return loss

    return run


def make_softxent(case, device):
    import softxent.torch as sxt

    return _runner(lambda x, w, tx, tw: sxt.linear_distillation_loss(x, w, tx, tw, temperature=TEMPERATURE),
                   case, device)


def unfused(x, w, tx, tw):
    with torch.no_grad():
        teacher = torch.log_softmax((tx @ tw.T) / TEMPERATURE, dim=-1)
    student = torch.log_softmax((x @ w.T) / TEMPERATURE, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * TEMPERATURE ** 2


def make_unfused(case, device):
    return _runner(unfused, case, device)


def describe(case, row):
    itemsize = np.dtype(case["dtype"]).itemsize
    grads = (case["rows"] + case["classes"]) * case["features"] * itemsize
    return {"grads_bytes": grads, "peak_over_grads": row["peak_extra_bytes"] / grads}


if __name__ == "__main__":
    main("linear_distillation", CASES, QUICK, {"softxent": make_softxent, "unfused": make_unfused},
         describe=describe)
