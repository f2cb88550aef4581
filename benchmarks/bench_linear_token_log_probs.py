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

import torch

from harness import main
from linear_heads import CASES, QUICK, head, over_gradients, training_step

ENTROPY_BONUS = 0.01


def _runner(log_probs_fn, case, device):
    g = torch.Generator().manual_seed(0)
    x, w = head(case, g)
    t = torch.randint(0, case["classes"], (case["rows"],), generator=g)
    advantage = torch.randn(case["rows"], generator=g)

    def rl_loss(x, w, t, advantage):
        lp, h = log_probs_fn(x, w, t)
        return -(advantage * lp).mean() - ENTROPY_BONUS * h.mean()

    return training_step(rl_loss, x, w, t, advantage, device=device)


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


if __name__ == "__main__":
    main("linear_token_log_probs", CASES, QUICK, {"softxent": make_softxent, "unfused": make_unfused},
         describe=over_gradients)
