"""softxent.torch.linear_cross_entropy beside torch's own F.linear_cross_entropy (torch >= 2.10) under
what torch does with it: CPU autocast's dtypes, double backward (gradgradcheck), torch.func, and
torch.compile with dynamic shapes and fullgraph without a recompile per batch size.

Oracles: torch.nn.functional.linear_cross_entropy where torch has it, else F.cross_entropy of F.linear.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

import softxent.torch as sxt
from compare import assert_close


def _reference(x, w, t, b=None, **options):
    if hasattr(F, "linear_cross_entropy"):
        return F.linear_cross_entropy(x, w, t, linear_bias=b, ignore_index=-100, **options)
    return F.cross_entropy(F.linear(x, w, b), t, **options)


def _problem(rows, seed, dtype=torch.float64, features=4, classes=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(classes, features, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(classes, generator=g, dtype=torch.float64).to(dtype)
    t = torch.randint(0, classes, (rows,), generator=g)
    t[1] = -100
    return x, w, b, t


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_autocast_dtype_matches_torch(dtype):
    """Under CPU autocast (bfloat16) the head runs in bfloat16 and the loss comes back float32, as torch's."""
    x, w, b, t = _problem(6, 1, dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = sxt.linear_cross_entropy(x, w, t, linear_bias=b), _reference(x, w, t, b)
    assert ours.dtype == theirs.dtype == torch.float32
    assert_close(ours, theirs, dtype="bfloat16")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradgradcheck_float64(reduction):
    """Double backward: gradgradcheck in float64, with a bias, label smoothing and an ignored row."""
    x, w, b, t = (a.requires_grad_() if a.is_floating_point() else a for a in _problem(5, 2))

    def f(a, c, d):
        return sxt.linear_cross_entropy(a, c, t, linear_bias=d, reduction=reduction, label_smoothing=0.1)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_double_backward_matches_torch():
    """A gradient penalty on the input: d/dw |d loss / dx|^2 as torch's own."""
    x, w, b, t = _problem(6, 3)
    results = []
    for fn in (lambda a, c: sxt.linear_cross_entropy(a, c, t, linear_bias=b), lambda a, c: _reference(a, c, t, b)):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        (gx,) = torch.autograd.grad(fn(xr, wr), xr, create_graph=True)
        (hw,) = torch.autograd.grad((gx * gx).sum(), wr)
        results.append(hw)
    assert_close(results[0], results[1], dtype="float64", what="second derivative")


def test_torch_func_grad_and_vmap():
    x, w, b, t = _problem(6, 4)
    ours = grad(lambda c: sxt.linear_cross_entropy(x, c, t, linear_bias=b), argnums=0)(w)
    theirs = grad(lambda c: _reference(x, c, t, b))(w)
    assert_close(ours, theirs, dtype="float64", what="grad")
    batched = vmap(lambda a, c: sxt.linear_cross_entropy(a, w, c))(x.unsqueeze(1), t.clamp(min=0).unsqueeze(1))
    assert_close(batched, F.cross_entropy(x @ w.T, t.clamp(min=0), reduction="none"), dtype="float64")


def test_compile_dynamic_fullgraph_without_a_recompile_per_batch_size():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda a, c, d: sxt.linear_cross_entropy(a, c, d), backend=counter, dynamic=True,
                             fullgraph=True)
    frames = []
    for rows in (6, 10, 14):
        x, w, _, t = _problem(rows, rows, torch.float32)
        xr = x.clone().requires_grad_()
        loss = compiled(xr, w, t)
        loss.backward()
        ref = x.clone().requires_grad_()
        _reference(ref, w, t).backward()
        assert_close(loss, _reference(x, w, t), dtype="float32")
        assert_close(xr.grad, ref.grad, dtype="float32")
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames == frames[:1] * 3
