"""softxent.torch.linear_cross_entropy against the unfused reference, torch's own fused op and NumPy.

Oracles: `F.cross_entropy(F.linear(x, W, b), t)` (loss and the three gradients, random upstream) over
the option grid with odd shapes; torch.nn.functional.linear_cross_entropy's chunked path; the NumPy
layer's linear_cross_entropy (float64). A dispatch mode counts allocations to show no (N, V) buffer.
"""

from __future__ import annotations

import importlib
import itertools
import warnings
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import softxent as sx
import softxent.torch as sxt
from softxent._options import LossOptions
from softxent._torch import threads as _threads
from compare import assert_close
from memory import allocations

lce = importlib.import_module("softxent.ops.linear_cross_entropy.torch")  # the package exports the function
_backend = importlib.import_module("softxent._torch.backend")

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
# odd shapes: 7 rows (or 2 x 3 with a leading batch dimension), 5 features, 11 classes
SHAPES = {"rows": (7,), "batched": (2, 3)}


def _problem(dtype, shape, kind, bias, seed, features=5, classes=11):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, features, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(classes, features, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    b = torch.randn(classes, generator=g, dtype=torch.float64).to(dtype) if bias else None
    if kind == "index":
        t = torch.randint(0, classes, shape, generator=g)
        t.view(-1)[1] = -100
    else:
        t = torch.softmax(torch.randn(*shape, classes, generator=g, dtype=torch.float64), -1)
        t = t.to(dtype if dtype != torch.bfloat16 else torch.float32)
    return x, w, b, t


def _run(fn, x, w, b, t, upstream_seed, **options):
    leaves = [a.clone().requires_grad_() if a is not None else None for a in (x, w, b)]
    loss = fn(*leaves, t, **options)
    g = torch.Generator().manual_seed(upstream_seed)
    upstream = (torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5).to(loss.dtype)
    loss.backward(upstream)
    return loss, [None if a is None else a.grad for a in leaves], upstream


def _ours(x, w, b, t, **options):
    return sxt.linear_cross_entropy(x, w, t, linear_bias=b, **options)


def _unfused(x, w, b, t, **options):
    return F.cross_entropy(F.linear(x, w, b).movedim(-1, 1) if x.dim() > 2 else F.linear(x, w, b),
                           t.movedim(-1, 1) if t.is_floating_point() and x.dim() > 2 else t, **options)


GRID = list(itertools.product(
    ["float32", "float64", "bfloat16"], ["none", "mean", "sum"], [False, True], ["index", "probs"],
    [dict(), dict(weight=True, label_smoothing=0.1), dict(label_smoothing=0.2)], ["rows", "batched"]))


@pytest.mark.parametrize("dtype,reduction,bias,kind,extra,shape", GRID,
                         ids=[f"{d}-{r}-{'bias' if b else 'nobias'}-{k}-{'+'.join(e) or 'plain'}-{s}"
                              for d, r, b, k, e, s in GRID])
def test_matches_unfused_reference(dtype, reduction, bias, kind, extra, shape):
    """Loss, grad_input, grad_linear_weight and grad_linear_bias equal the unfused reference computed in
    float64 on the same values (chunk_size=3 cuts the rows unevenly). Gradients are sums over rows or
    classes of products of O(1) terms, so their tolerance is scaled by the rows and classes summed."""
    torch_dtype = DTYPES[dtype]
    seed = zlib.crc32(repr((dtype, reduction, bias, kind, extra, shape)).encode()) % 10_000
    x, w, b, t = _problem(torch_dtype, SHAPES[shape], kind, bias, seed)
    options = dict(reduction=reduction, label_smoothing=extra.get("label_smoothing", 0.0))
    if extra.get("weight"):
        options["weight"] = torch.linspace(0.5, 1.5, 11, dtype=torch.float64).to(torch_dtype)
    loss, grads, upstream = _run(_ours, x, w, b, t, seed, chunk_size=3, **options)
    ref_options = dict(options, weight=None if "weight" not in options else options["weight"].double())
    ref_loss, ref_grads, _ = _run(_unfused, x.double(), w.double(), None if b is None else b.double(),
                                  t.double() if kind == "probs" else t, seed, **ref_options)
    assert loss.dtype == torch_dtype
    # bfloat16 logits come from a bfloat16 matrix product, as in the unfused reference
    scale = 4.0 if torch_dtype == torch.bfloat16 else 1.0
    assert_close(loss, ref_loss, dtype=dtype, what="loss", scale=scale)
    for name, grad, ref in zip(("grad_input", "grad_linear_weight", "grad_linear_bias"), grads, ref_grads):
        if ref is None:
            assert grad is None
            continue
        assert grad.dtype == torch_dtype
        assert_close(grad, ref, dtype=dtype, what=name, scale=scale * 10.0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("options", [dict(), dict(label_smoothing=0.1, ignore_index=3), dict(weight=True)])
def test_matches_torch_linear_cross_entropy(reduction, options):
    """torch's own F.linear_cross_entropy, chunked path (LinearCrossEntropyOptions()), float32."""
    x, w, b, t = _problem(torch.float32, (40,), "index", False, 5, features=16, classes=50)
    options = dict(options)
    t[1] = options.get("ignore_index", -100)
    if options.pop("weight", False):
        options["weight"] = torch.linspace(0.5, 1.5, 50)

    def torchs(x, w, b, t, **kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return F.linear_cross_entropy(x, w, t, options=torch.nn.LinearCrossEntropyOptions(), **kw)

    loss, grads, _ = _run(_ours, x, w, None, t, 1, reduction=reduction, **options)
    ref_loss, ref_grads, _ = _run(torchs, x, w, None, t, 1, reduction=reduction, **options)
    assert_close(loss, ref_loss, dtype="float32", what="loss", scale=4.0)
    for grad, ref in zip(grads[:2], ref_grads[:2]):
        assert_close(grad, ref, dtype="float32", what="grad", scale=10.0)


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_numpy_layer(kind, reduction):
    """float64 against softxent.linear_cross_entropy (NumPy, fused too), with z_loss and softcap, which
    torch lacks. The NumPy gradient is that of the returned loss (of its sum for "none")."""
    x, w, b, t = _problem(torch.float64, (9,), kind, True, 21)
    options = dict(reduction=reduction, z_loss=1e-2, softcap=2.0, label_smoothing=0.1)
    leaves = [a.clone().requires_grad_() for a in (x, w, b)]
    loss = sxt.linear_cross_entropy(leaves[0], leaves[1], t, linear_bias=leaves[2], chunk_size=4, **options)
    loss.sum().backward()
    ref_loss, ref_grads = sx.linear_cross_entropy(x.numpy(), w.numpy(), t.numpy(), bias=b.numpy(),
                                                  return_grad=True, chunk_size=4, **options)
    assert_close(loss, ref_loss, dtype="float64", what="loss")
    for name, leaf, ref in zip(("dx", "dw", "dbias"), leaves, ref_grads):
        assert_close(leaf.grad, ref, dtype="float64", what=name, scale=10.0)



def test_no_rows_by_vocabulary_allocation(monkeypatch):
    """No op returns N x V elements (nor half of that): the chunk of logits is the largest. The same mode
    sees the unfused reference allocate N x V, so the test can fail."""
    monkeypatch.setattr(_threads, "INLINE_MAX_ELEMENTS", 1 << 40)  # the row kernel on this thread, seen
    rows, classes, features, chunk = 512, 1000, 16, 32
    x, w, b, t = _problem(torch.float32, (rows,), "index", True, 3, features=features, classes=classes)
    grad_scale = torch.tensor(1.0 / rows)
    with allocations() as seen:
        options = LossOptions(label_smoothing=0.1, z_loss=1e-4)
        lce._chunked(x, w, b, t, None, options, grad_scale, None, True, True, True, chunk, True, True)
    assert max(seen.sizes) < rows * classes // 2
    assert chunk * classes in seen.sizes  # the chunk buffer itself
    with allocations() as unfused:
        _run(_unfused, x, w, b, t, 0)
    assert max(unfused.sizes) >= rows * classes


def test_bfloat16_weight_gradient_accumulates_in_float32():
    """Over many chunks a bfloat16 accumulator drifts; the float32 one rounds once."""
    x, w, b, t = _problem(torch.bfloat16, (512,), "index", False, 8, features=8, classes=64)
    exact = _run(_unfused, x.double(), w.double(), None, t, 0)[1][1]
    errors = {}
    for wide in (True, False):
        grads = _run(_ours, x, w, None, t, 0, chunk_size=4, float32_weight_grad=wide)[1]
        errors[wide] = float((grads[1].double() - exact).abs().max())
    assert errors[True] < errors[False]
    assert errors[True] <= 2 ** -8 * float(exact.abs().max()) * 2


def test_chunk_size_none_uses_the_shapes_and_free_memory(monkeypatch):
    # N=4096, D=1024, V=32000 float32: gradients 147 MB, a quarter of that in logits = 287 rows
    assert lce.choose_chunk_size(4096, 32000, 1024, torch.float32, torch.device("cpu")) in range(200, 400)
    monkeypatch.setattr(lce, "_free_bytes", lambda device: 64 << 20)  # 64 MiB free: 8 MiB of logits
    assert lce.choose_chunk_size(4096, 32000, 1024, torch.float32, torch.device("cpu")) == (8 << 20) // 128000
    assert lce.choose_chunk_size(3, 10, 4, torch.float32, torch.device("cpu")) == 3


def test_no_gradient_work_without_requires_grad(monkeypatch):
    calls = []
    real = _backend.backend_for(torch.zeros(1))
    monkeypatch.setattr(_backend, "backend_for",
                        lambda logits: lambda *a, **k: calls.append(k["grad_out"]) or real(*a, **k))
    x, w, b, t = _problem(torch.float32, (6,), "index", True, 4)
    loss = sxt.linear_cross_entropy(x, w, t, linear_bias=b)
    assert loss.grad_fn is None and calls == [None]


def test_second_backward_recomputes_for_fused_reductions():
    """retain_graph: the forward's gradients went to the first backward; the second runs the sweep again
    (the same bits: gradcheck's reentrancy test)."""
    x, w, b, t = _problem(torch.float32, (6,), "index", False, 4)
    w.requires_grad_()
    loss = sxt.linear_cross_entropy(x, w, t)
    (first,) = torch.autograd.grad(loss, w, retain_graph=True)
    (second,) = torch.autograd.grad(loss, w, torch.tensor(2.0))
    assert torch.equal(second, 2.0 * first)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, w, b, t = _problem(torch.float32, (6,), "index", True, 4)
    compiled = torch.compile(lambda x, w, b: sxt.linear_cross_entropy(x, w, t, linear_bias=b, chunk_size=4),
                             fullgraph=True, dynamic=False)
    loss, grads, _ = _run(lambda x, w, b, t: compiled(x, w, b), x, w, b, t, 0)
    ref, ref_grads, _ = _run(_ours, x, w, b, t, 0, chunk_size=4)
    assert_close(loss, ref, dtype="float32")
    for grad, expected in zip(grads, ref_grads):
        assert_close(grad, expected, dtype="float32")


def test_module_and_errors():
    x, w, b, t = _problem(torch.float32, (6,), "index", True, 4)
    module = sxt.LinearCrossEntropyLoss(reduction="sum", label_smoothing=0.1)
    assert_close(module(x, w, t, b), _unfused(x, w, b, t, reduction="sum", label_smoothing=0.1), dtype="float32")
    with pytest.raises(ValueError, match=r"linear_weight must have shape \(V, 5\) to match input's last dimension 5"):
        sxt.linear_cross_entropy(x, w[:, :3], t)
    with pytest.raises(ValueError, match=r"linear_bias must have the shape of linear_weight's first dimension"):
        sxt.linear_cross_entropy(x, w, t, linear_bias=b[:4])
    with pytest.raises(ValueError, match="chunk_size must be >= 1; got 0"):
        sxt.linear_cross_entropy(x, w, t, chunk_size=0)
    bad = t.clone()
    bad[4] = 11
    with pytest.raises(ValueError, match=r"target holds class index 11 at position \(4,\), outside \[0, 11\)"):
        sxt.linear_cross_entropy(x, w, bad)
    with pytest.raises(TypeError, match="linear_weight must have input's dtype"):
        sxt.linear_cross_entropy(x, w.double(), t)
    assert np.isfinite(module(x, w, t).item())
