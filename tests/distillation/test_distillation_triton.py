"""The Triton distillation kernel under TRITON_INTERPRET=1 (compiled on a GPU with SOFTXENT_TEST_DEVICE=cuda):
softxent.torch.distillation_loss / linear_distillation_loss forced onto Triton, against the torch path."""

from __future__ import annotations

from triton_env import DEVICE, pytestmark, torch  # noqa: F401  (pytestmark: the interpreter's skips)

import pytest  # noqa: E402

import softxent.ops.distillation.triton as kernels  # noqa: E402
import softxent.torch as sxt  # noqa: E402
from compare import assert_close  # noqa: E402
from softxent._torch import backend  # noqa: E402


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_triton_matches_the_torch_path(divergence, reduction, monkeypatch):
    calls = []
    real = kernels.distill_rows
    monkeypatch.setattr(kernels, "distill_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(len(divergence))
    s = torch.randn(6, 45, generator=gen) * 2
    t = torch.randn(6, 45, generator=gen) * 2
    s[1, :5] = -float("inf")  # masked classes: 0 log 0 = 0
    t[1, :5] = -float("inf")
    t[2] = -float("inf")  # a fully masked teacher row: 0
    target = torch.tensor([0, 1, 2, -100, 4, 5])
    up = torch.rand((6,) if reduction == "none" else (), generator=gen) + 0.5
    opts = dict(divergence=divergence, beta=0.3, temperature=1.5, target=target, reduction=reduction)
    leaf = s.detach().clone().to(DEVICE).requires_grad_(True)
    with backend.forced("triton"):
        loss = sxt.distillation_loss(leaf, t.to(DEVICE), **{**opts, "target": target.to(DEVICE)})
        (loss * up.to(DEVICE)).sum().backward()
    assert calls  # the Triton kernel ran
    ref_leaf = s.detach().clone().requires_grad_(True)
    ref = sxt.distillation_loss(ref_leaf, t, **opts)
    (ref * up).sum().backward()
    assert_close(loss.detach().cpu(), ref.detach(), what="loss", scale=4)
    assert_close(leaf.grad.cpu(), ref_leaf.grad, what="student gradient", scale=4)


def test_triton_linear_distillation_matches_the_torch_path():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5, generator=gen)
    w = torch.randn(23, 5, generator=gen) / 2
    tx, tw = torch.randn(7, 4, generator=gen), torch.randn(23, 4, generator=gen) / 2
    leaves = [x.detach().clone().to(DEVICE).requires_grad_(True), w.detach().clone().to(DEVICE).requires_grad_(True)]
    with backend.forced("triton"):
        loss = sxt.linear_distillation_loss(*leaves, tx.to(DEVICE), tw.to(DEVICE), divergence="jsd", chunk_size=3)
        loss.backward()
    refs = [x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)]
    ref = sxt.linear_distillation_loss(*refs, tx, tw, divergence="jsd", chunk_size=3)
    ref.backward()
    assert_close(loss.detach().cpu(), ref.detach(), what="loss", scale=4)
    for what, a, b in zip(("dx", "dw"), leaves, refs):
        assert_close(a.grad.cpu(), b.grad, what=what, scale=4)
