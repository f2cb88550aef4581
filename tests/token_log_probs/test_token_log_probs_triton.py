"""The Triton token log-probability kernels under TRITON_INTERPRET=1 (compiled on a GPU with
SOFTXENT_TEST_DEVICE=cuda): softxent.torch.token_log_probs / linear_token_log_probs forced onto Triton,
against the torch CPU path and plain torch, on small shapes."""

from __future__ import annotations

from triton_env import DEVICE, pytestmark, torch  # noqa: F401  (pytestmark: the interpreter's skips)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import softxent.ops.token_log_probs.torch as module  # noqa: E402
import softxent.torch as sxt  # noqa: E402
from compare import assert_close, ulp_error  # noqa: E402
from softxent._torch import backend  # noqa: E402
from test_token_log_probs_numpy import confident_rows, exact_log_prob_and_entropy  # noqa: E402
from test_token_log_probs_torch import plain_torch  # noqa: E402


def _run(fn, leaves, g, h):
    for leaf in leaves:
        leaf.grad = None
    lp, ent = fn()
    (lp * g + ent * h).sum().backward()
    return lp.detach(), ent.detach(), [leaf.grad.detach() for leaf in leaves]


@pytest.mark.parametrize("opts", [{}, {"temperature": 0.7}, {"softcap": 3.0, "temperature": 1.4}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_the_torch_path(opts, dtype, monkeypatch):
    used = []
    real = module._kernels
    monkeypatch.setattr(module, "_kernels", lambda t, **kw: used.append(backend.uses_triton(t)) or real(t, **kw))
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(5, 37, generator=gen) * 3)
    x[1, :10] = -float("inf")
    x[2] = -float("inf")
    x = x.to(dtype).to(DEVICE).requires_grad_(True)
    target = torch.tensor([0, 20, 3, -100, 36], device=DEVICE)
    g, h = torch.randn(5, generator=gen).to(DEVICE), torch.randn(5, generator=gen).to(DEVICE)
    with backend.forced("triton"):
        t_lp, t_ent, (t_grad,) = _run(lambda: sxt.token_log_probs(x, target, return_entropy=True, **opts), [x], g, h)
    assert used and all(used)  # the Triton kernels ran, forward and backward
    c_lp, c_ent, (c_grad,) = _run(lambda: sxt.token_log_probs(x.cpu(), target.cpu(), return_entropy=True, **opts),
                                  [x], g.cpu(), h.cpu())
    assert t_lp.dtype == torch.float32
    name = "float32" if dtype == torch.float32 else "bfloat16"
    assert_close(t_lp, c_lp, what="log-probs", scale=2)
    assert_close(t_ent, c_ent, what="entropy", scale=2)
    assert_close(t_grad, c_grad, dtype=name, what="gradient", scale=4)


def test_triton_confident_policy_within_2_ulp():
    with backend.forced("triton"):
        for row, t in confident_rows(np.float32):
            exact_lp, exact_h = exact_log_prob_and_entropy(row, t)
            if float(exact_h) < 2.0 ** -100:
                continue  # float32 subnormal terms (see the torch test)
            lp, h = sxt.token_log_probs(torch.tensor(row[None], device=DEVICE), torch.tensor([t], device=DEVICE),
                                        return_entropy=True)
            assert ulp_error(lp.cpu().numpy(), [exact_lp]).max() <= 2, (row, lp)
            assert ulp_error(h.cpu().numpy(), [exact_h]).max() <= 2, (row, h)


def test_triton_linear_matches_plain_torch():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(9, 6, generator=gen).to(DEVICE).requires_grad_(True)
    w = (torch.randn(29, 6, generator=gen) / 2).to(DEVICE).requires_grad_(True)
    target = torch.randint(0, 29, (9,), generator=gen).to(DEVICE)
    target[4] = -100
    g, h = torch.randn(9, generator=gen).to(DEVICE), torch.randn(9, generator=gen).to(DEVICE)
    with backend.forced("triton"):
        lp, ent, grads = _run(lambda: sxt.linear_token_log_probs(x, w, target, return_entropy=True, chunk_size=4,
                                                                 temperature=0.8), [x, w], g, h)
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w)]
    r_lp, r_ent, r_grads = _run(lambda: plain_torch(leaves[0] @ leaves[1].T, target, temperature=0.8), leaves, g, h)
    assert_close(lp, r_lp, what="log-probs", scale=2)
    assert_close(ent, r_ent, what="entropy", scale=2)
    for what, a, b in zip(("dx", "dw"), grads, r_grads):
        assert_close(a, b, what=what, scale=4)
