"""softxent.torch.distillation_loss / linear_distillation_loss on the CPU: against plain torch (values and the
student's gradients with a random upstream gradient), float64 gradcheck, the NumPy layer, the linear form's
chunks, the teacher's lack of gradient, num_items, and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softxent as sx
import softxent.ops.distillation.torch as module
import softxent.torch as sxt
from compare import assert_close
from test_distillation_numpy import DIVERGENCES, torch_divergence


def plain_torch(student, teacher, *, divergence="kl", beta=0.5, temperature=1.0, target=None, reduction="mean",
                num_items=None):
    rows = torch_divergence(student.double() if student.dtype == torch.float64 else student.float(),
                            teacher.to(student.dtype if student.dtype == torch.float64 else torch.float32),
                            divergence, beta, temperature)
    kept = torch.ones(rows.shape, dtype=torch.bool) if target is None else target != -100
    rows = torch.where(kept, rows, 0.0)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / (num_items if num_items is not None else kept.sum().clamp(min=1))


CASES = [(d, r) for d in DIVERGENCES for r in ("none", "mean", "sum")]


@pytest.mark.parametrize("divergence,reduction", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_plain_torch_and_numpy(divergence, reduction, dtype):
    gen = torch.Generator().manual_seed(len(divergence) * 7 + len(reduction))
    s = (torch.randn(3, 4, 37, generator=gen) * 2).to(dtype).requires_grad_(True)
    t = (torch.randn(3, 4, 37, generator=gen) * 2).to(dtype)
    target = torch.randint(0, 37, (3, 4), generator=gen)
    target[1, ::2] = -100
    upstream = (torch.rand((3, 4) if reduction == "none" else (), generator=gen) + 0.5).to(dtype)
    opts = dict(divergence=divergence, beta=0.35, temperature=1.7, target=target, reduction=reduction,
                num_items=torch.tensor(11) if reduction == "mean" else None)
    loss = sxt.distillation_loss(s, t, **opts)
    (loss * upstream).sum().backward()
    s64 = s.detach().double().requires_grad_(True)
    ref = plain_torch(s64, t.double(), **opts)
    (ref * upstream.double()).sum().backward()
    name = str(dtype).replace("torch.", "")
    assert loss.dtype == dtype and loss.shape == ref.shape
    assert_close(loss, ref, dtype=name, what="loss vs torch", scale=2)
    assert_close(s.grad, s64.grad, dtype=name, what="student gradient vs torch", scale=2)
    n_opts = dict(opts, target=target.numpy(), num_items=11 if reduction == "mean" else None)
    n_loss, n_grad = sx.distillation_loss(s.detach().numpy(), t.numpy(), return_grad=True, **n_opts)
    n_grad = n_grad * (upstream.numpy()[..., None] if reduction == "none" else upstream.numpy())
    assert_close(loss, n_loss, dtype=name, what="loss vs NumPy", scale=2)
    assert_close(s.grad, n_grad, dtype=name, what="gradient vs NumPy", scale=2)


def test_bfloat16_and_the_teacher_gets_no_gradient():
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(6, 50, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(6, 50, generator=gen).bfloat16().requires_grad_(True)
    loss = sxt.distillation_loss(s, t, divergence="jsd")
    loss.backward()
    assert loss.dtype == torch.bfloat16 and s.grad.dtype == torch.bfloat16 and t.grad is None
    assert_close(loss, plain_torch(s.detach(), t.detach(), divergence="jsd"), dtype="bfloat16", what="loss")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(reduction):
    gen = torch.Generator().manual_seed(5)
    t = torch.randn(4, 6, dtype=torch.float64, generator=gen)
    target = torch.tensor([1, -100, 0, 5])
    for divergence in DIVERGENCES:
        s = torch.randn(4, 6, dtype=torch.float64, generator=gen, requires_grad=True)
        assert torch.autograd.gradcheck(lambda s_: sxt.distillation_loss(
            s_, t, divergence=divergence, beta=0.7, temperature=0.6, target=target, reduction=reduction), (s,), fast_mode=True)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_gradcheck_float64(reduction):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(7, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(9, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, generator=gen, requires_grad=True)
    tx, tw = torch.randn(7, 3, dtype=torch.float64, generator=gen), torch.randn(9, 3, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(lambda *a: sxt.linear_distillation_loss(
        a[0], a[1], tx, tw, student_bias=a[2], divergence="reverse_kl", temperature=2.0, reduction=reduction,
        chunk_size=3), (x, w, b), fast_mode=True)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_matches_unfused_and_holds_one_chunk_per_model(divergence, reduction, monkeypatch):
    rows_seen = []
    original = module._logits
    monkeypatch.setattr(module, "_logits", lambda x, *a: rows_seen.append(x.shape[0]) or original(x, *a))
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 9, 8, generator=gen, requires_grad=True)
    w = (torch.randn(41, 8, generator=gen) / 2).requires_grad_(True)
    b = torch.randn(41, generator=gen, requires_grad=True)
    tx, tw, tb = torch.randn(2, 9, 5, generator=gen), torch.randn(41, 5, generator=gen), torch.randn(41, generator=gen)
    target = torch.randint(0, 41, (2, 9), generator=gen)
    target[0, ::3] = -100
    upstream = torch.rand((2, 9) if reduction == "none" else (), generator=gen) + 0.5
    opts = dict(divergence=divergence, beta=0.2, temperature=1.4, target=target, reduction=reduction)
    loss = sxt.linear_distillation_loss(x, w, tx, tw, student_bias=b, teacher_bias=tb, chunk_size=4, **opts)
    (loss * upstream).sum().backward()
    passes = 2 if reduction == "none" else 1  # "none" sweeps again in the backward
    assert max(rows_seen) <= 4 and len(rows_seen) == 2 * 5 * passes  # both heads, 5 chunks of 4 rows
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
    ref = plain_torch(leaves[0] @ leaves[1].T + leaves[2], tx @ tw.T + tb, **opts)
    (ref * upstream).sum().backward()
    assert_close(loss, ref.detach(), what="loss", scale=2)
    for what, leaf, r in zip(("dx", "dw", "db"), (x, w, b), leaves):
        assert_close(leaf.grad, r.grad, what=what, scale=4)


def test_num_items_and_every_row_skipped():
    gen = torch.Generator().manual_seed(10)
    s = torch.randn(8, 12, generator=gen, requires_grad=True)
    t = torch.randn(8, 12, generator=gen)
    target = torch.full((8,), -100)
    loss = sxt.distillation_loss(s, t, target=target)
    loss.backward()
    assert loss.item() == 0 and (s.grad == 0).all()  # every row skipped: 0, never NaN
    target[:5] = 1
    whole = sxt.distillation_loss(s, t, target=target)
    parts = sum(sxt.distillation_loss(s[i:i + 4], t[i:i + 4], target=target[i:i + 4], num_items=5) for i in (0, 4))
    assert_close(parts.detach(), whole.detach(), what="micro-batches with num_items")


@pytest.mark.parametrize("call,error,words", [
    (lambda: sxt.distillation_loss(torch.ones(2, 3), torch.ones(2, 3), divergence="kld"), ValueError, "divergence"),
    (lambda: sxt.distillation_loss(torch.ones(2, 3), torch.ones(2, 4)), ValueError, "teacher_logits"),
    (lambda: sxt.distillation_loss(torch.ones(2, 3), torch.ones(2, 3), target=torch.tensor([0, 3])), ValueError,
     "class index 3"),
    (lambda: sxt.distillation_loss(torch.ones(2, 3), torch.ones(2, 3), beta="a"), TypeError, "beta"),
    (lambda: sxt.linear_distillation_loss(torch.ones(2, 3), torch.ones(4, 3), torch.ones(2, 5), torch.ones(3, 5)),
     ValueError, "vocabulary"),
    (lambda: sxt.linear_distillation_loss(torch.ones(2, 3), torch.ones(4, 3), torch.ones(3, 5), torch.ones(4, 5)),
     ValueError, "rows"),
])
def test_bad_arguments_raise_naming_them(call, error, words):
    with pytest.raises(error, match=words):
        call()


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_dynamic_fullgraph_matches_eager_without_a_recompile_per_batch_size(reduction):
    """torch.compile(dynamic=True, fullgraph=True) through the row kernel's custom op: values and the
    student's gradient as eager, one graph for batch sizes 6 to 30, and a bad label still refused."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def step(s, te, t, up):
        loss = sxt.distillation_loss(s, te, divergence="jsd", beta=0.3, temperature=2.0, target=t,
                                     reduction=reduction)
        return (loss * up).sum() if reduction == "none" else loss

    compiled = torch.compile(step, backend=counter, dynamic=True, fullgraph=True)
    frames = []
    for rows in (6, 12, 30):
        gen = torch.Generator().manual_seed(rows)
        s, te = torch.randn(rows, 17, generator=gen) * 3, torch.randn(rows, 17, generator=gen) * 3
        t = torch.randint(0, 17, (rows,), generator=gen)
        t[::4] = -100
        up = torch.randn(rows, generator=gen)
        sc, se = s.clone().requires_grad_(), s.clone().requires_grad_()
        value = compiled(sc, te, t, up)
        value.backward()
        expected = step(se, te, t, up)
        expected.backward()
        assert_close(value.detach(), expected.detach(), what="compiled loss vs eager")
        assert_close(sc.grad, se.grad, what="compiled gradient vs eager")
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames == frames[:1] * 3  # compiled once, then reused
    with pytest.raises(ValueError, match="class index 17"):
        compiled(torch.zeros(6, 17), torch.zeros(6, 17), torch.tensor([0, 1, 2, 17, 4, 5]), torch.ones(6))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_compile_dynamic_fullgraph_matches_eager_without_a_recompile_per_batch_size(reduction):
    """linear_distillation_loss under torch.compile(dynamic=True, fullgraph=True): its sweep runs as a
    custom op, the chunk chosen inside it; the student's gradients as eager, a bad label refused."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def step(x, w, b, tx, tw, t, up):
        loss = sxt.linear_distillation_loss(x, w, tx, tw, student_bias=b, divergence="reverse_kl", target=t,
                                            temperature=1.5, reduction=reduction)
        return (loss * up).sum() if reduction == "none" else loss

    compiled = torch.compile(step, backend=counter, dynamic=True, fullgraph=True)
    frames = []
    for rows in (6, 12, 30):
        gen = torch.Generator().manual_seed(rows)
        leaves = [torch.randn(rows, 7, generator=gen), torch.randn(19, 7, generator=gen), torch.randn(19, generator=gen)]
        tx, tw = torch.randn(rows, 5, generator=gen), torch.randn(19, 5, generator=gen)
        t = torch.randint(0, 19, (rows,), generator=gen)
        t[::4] = -100
        up = torch.randn(rows, generator=gen)
        ours = [a.clone().requires_grad_() for a in leaves]
        eager = [a.clone().requires_grad_() for a in leaves]
        value = compiled(*ours, tx, tw, t, up)
        value.backward()
        expected = step(*eager, tx, tw, t, up)
        expected.backward()
        assert_close(value.detach(), expected.detach(), what="compiled loss vs eager")
        for name, a, b in zip(("dx", "dw", "db"), ours, eager):
            assert_close(a.grad, b.grad, what=f"compiled {name} vs eager")
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames == frames[:1] * 3
    with pytest.raises(ValueError, match="class index 19"):
        compiled(torch.zeros(6, 7), torch.zeros(19, 7), torch.zeros(19), torch.zeros(6, 5), torch.zeros(19, 5),
                 torch.tensor([0, 1, 2, 19, 4, 5]), torch.ones(6))
