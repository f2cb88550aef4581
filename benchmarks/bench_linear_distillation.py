"""Distillation between two LM heads, forward + backward: softxent.torch.linear_distillation_loss (forward
KL, temperature 2) beside the unfused torch computation (both models' logits, log_softmax, F.kl_div).

The student's hidden states x (N, D) and head W (V, D) get gradients; the teacher's (N, D) and (V, D)
are constants. Peak extra memory is over the inputs and includes the student's gradients,
(N + V) * D * itemsize; `peak_over_grads` divides by it. FLOPs: four matrix products of 2 N D V for
both providers (the two heads' logits, grad_x, grad_W): softxent computes the student's gradient in the
forward sweep, so nothing is computed twice.
"""

import torch
import torch.nn.functional as F

from harness import main
from linear_heads import CASES, QUICK, head, over_gradients, training_step

TEMPERATURE = 2.0


def _runner(loss_fn, case, device):
    g = torch.Generator().manual_seed(0)
    x, w = head(case, g)
    tx, tw = head(case, g)  # the teacher: another random head on other hidden states
    return training_step(loss_fn, x, w, tx, tw, device=device)


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


if __name__ == "__main__":
    main("linear_distillation", CASES, QUICK, {"softxent": make_softxent, "unfused": make_unfused},
         describe=over_gradients)
