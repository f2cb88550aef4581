"""softxent.torch.cross_entropy against torch.nn.functional.cross_entropy, the NumPy layer and gradcheck.

Oracles: torch's own cross_entropy over its whole option grid (loss and gradient with a random upstream
gradient); the NumPy layer (softxent.cross_entropy, float64) for the options torch lacks and for the
semantics where softxent decides differently; torch.autograd.gradcheck in float64.
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
from softxent._torch import backend as _backend, memory as _memory
from compare import assert_close

ce_torch = importlib.import_module("softxent.ops.cross_entropy.torch")  # the package exports the function


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
# input shapes: unbatched (C,), a batch (N, C), and K-dimensional (N, C, d1, d2); C = 7 is odd on purpose
SHAPES = {"1d": (7,), "2d": (5, 7), "kdim": (3, 7, 2, 3)}


def _inputs(shape, kind, ignore, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2.5).to(dtype)
    class_dim = 0 if len(shape) == 1 else 1
    num_classes = shape[class_dim]
    batch = shape[:class_dim] + shape[class_dim + 1:]
    if kind == "index":
        t = torch.randint(0, num_classes, batch, generator=g)
        if ignore:
            flat = t.view(-1)
            flat[::3] = -100  # every third row ignored, never all of them
    else:
        t = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype if dtype != torch.bfloat16 else torch.float32)
        t = t / t.sum(dim=class_dim, keepdim=True)
    return x, t


def _upstream(loss, seed):
    g = torch.Generator().manual_seed(seed + 1)
    return (torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5).to(loss.dtype)


GRID = [
    (dtype, shape, kind, ignore, reduction, weighted, smoothing)
    for dtype, shape, (kind, ignore), reduction, weighted, smoothing in itertools.product(
        DTYPES, SHAPES, [("index", False), ("index", True), ("probs", False)], ["none", "mean", "sum"],
        [False, True], [0.0, 0.15])
    if not (shape == "1d" and ignore)  # one row ignored is "all ignored": torch's NaN, tested below
]


@pytest.mark.parametrize("dtype,shape,kind,ignore,reduction,weighted,smoothing", GRID)
def test_matches_torch_cross_entropy(dtype, shape, kind, ignore, reduction, weighted, smoothing):
    """Loss and gradient (random upstream) equal torch's over reductions x weights x ignore x smoothing x
    target kinds x K-dim x dtypes.

    The reference is torch's cross_entropy on the same values in float64 (for float32 and bfloat16
    inputs too: torch's own float32 loses the small losses that softxent keeps, see
    test_target_dominates_loss_is_exact), compared with the input dtype's tolerance. A gradient entry
    is a difference of terms as large as weight * upstream, so its tolerance scales with that.
    A looser check against torch in the input's own dtype keeps the drop-in honest.
    """
    torch_dtype = DTYPES[dtype]
    seed = zlib.crc32(repr((dtype, shape, kind, ignore, reduction, weighted, smoothing)).encode()) % 10_000
    x, t = _inputs(SHAPES[shape], kind, ignore, torch_dtype, seed)
    num_classes = x.shape[0 if x.dim() == 1 else 1]
    weight = torch.linspace(0.2, 2.0, num_classes, dtype=torch.float64).to(torch_dtype) if weighted else None
    options = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)

    ours_x = x.clone().requires_grad_()
    loss = sxt.cross_entropy(ours_x, t, **options)
    upstream = _upstream(loss, seed)
    loss.backward(upstream)
    assert loss.dtype == torch_dtype and ours_x.grad.dtype == torch_dtype

    grad_scale = float(upstream.float().max()) * (2.0 if weighted else 1.0)
    for ref_dtype, scale in ((torch.float64, 1.0), (torch_dtype, 4.0)):
        ref_x = x.to(ref_dtype).clone().requires_grad_()
        ref_options = dict(options, weight=None if weight is None else weight.to(ref_dtype))
        ref = F.cross_entropy(ref_x, t.to(ref_dtype) if kind == "probs" else t, **ref_options)
        ref.backward(upstream.to(ref_dtype))
        assert loss.shape == ref.shape
        assert_close(loss, ref, dtype=dtype, what=f"loss vs torch {ref_dtype}", scale=scale)
        assert_close(ours_x.grad, ref_x.grad, dtype=dtype, what=f"grad vs torch {ref_dtype}",
                     scale=scale * grad_scale)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_bfloat16_close_to_torch_bfloat16(reduction):
    """Against torch computing in bfloat16 itself: equal within bfloat16's tolerance (torch rounds its
    log-probabilities to bfloat16, so twice the table's tolerance)."""
    x, t = _inputs((64, 50), "index", True, torch.bfloat16, 3)
    ours = sxt.cross_entropy(x, t, reduction=reduction)
    theirs = F.cross_entropy(x, t, reduction=reduction)
    assert_close(ours, theirs, dtype="bfloat16", what="loss", scale=2.0)


# --- the NumPy layer decides the options torch lacks and the semantics where softxent differs ---------------


def _numpy_reference(x, t, **options):
    with warnings.catch_warnings():  # the NumPy layer's own 0 * -inf fix-up warns; not what is tested here
        warnings.simplefilter("ignore", RuntimeWarning)
        return sx.cross_entropy(x.detach().double().numpy(), t.numpy(), axis=0 if x.dim() == 1 else 1,
                                return_grad=True, **options)


NUMPY_GRID = list(itertools.product(["index", "probs"], ["none", "mean", "sum"], [None, "w"], [0.0, 0.2],
                                    [0.0, 1e-3], [None, 4.0], [1.0, 0.6]))


@pytest.mark.parametrize("kind,reduction,weighted,smoothing,z_loss,softcap,temperature", NUMPY_GRID)
def test_matches_numpy_layer(kind, reduction, weighted, smoothing, z_loss, softcap, temperature):
    """float64 against the NumPy spec, with z_loss, softcap and temperature, a fully masked row, -inf
    entries (with target probability 0), a +inf entry and an ignored row."""
    x, t = _inputs((6, 9), kind, False, torch.float64, 11)
    x[1] = -float("inf")  # fully masked row
    x[2, 3] = -float("inf")
    if softcap is None:
        x[4, 5] = float("inf")
    if kind == "index":
        t[0] = -100
        t[2] = 1
    else:
        t[2, 3] = 0.0
        t[2] /= t[2].sum()
    weight = torch.linspace(0.5, 1.5, 9, dtype=torch.float64) if weighted else None
    options = dict(weight=weight, reduction=reduction, label_smoothing=smoothing, z_loss=z_loss, softcap=softcap,
                   temperature=temperature)
    xr = x.clone().requires_grad_()
    loss = sxt.cross_entropy(xr, t, **options)
    upstream = _upstream(loss, 5)
    loss.backward(upstream)
    ref_loss, ref_grad = _numpy_reference(x, t, **dict(options, weight=None if weight is None else weight.numpy()))
    ref_grad = ref_grad * (upstream.numpy()[:, None] if reduction == "none" else upstream.item())
    assert_close(loss, ref_loss, dtype="float64", what="loss")
    assert_close(xr.grad, ref_grad, dtype="float64", what="grad")


def test_fully_masked_row_counts_in_mean_with_zero_gradient():
    x = torch.randn(4, 5, dtype=torch.float64)
    x[2] = -float("inf")
    t = torch.tensor([0, 1, 2, 3])
    xr = x.clone().requires_grad_()
    loss = sxt.cross_entropy(xr, t)
    loss.backward()
    expected = F.cross_entropy(x[[0, 1, 3]], t[[0, 1, 3]], reduction="sum") / 4  # counted, contributes 0
    assert_close(loss, expected, dtype="float64")
    assert torch.equal(xr.grad[2], torch.zeros(5, dtype=torch.float64))
    assert torch.isfinite(xr.grad).all()


@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_mean_is_zero_with_zero_gradient(weighted):
    x = torch.randn(3, 4, requires_grad=True)
    t = torch.full((3,), -100)
    loss = sxt.cross_entropy(x, t, torch.ones(4) if weighted else None, label_smoothing=0.1, z_loss=0.01)
    loss.backward()
    assert loss.item() == 0.0 and torch.isnan(F.cross_entropy(x, t)).item()  # torch: NaN
    assert torch.equal(x.grad, torch.zeros(3, 4))
    assert sxt.cross_entropy(x, t, reduction="sum").item() == 0.0


@pytest.mark.parametrize("reduction,expected_shape", [("none", (0,)), ("mean", ()), ("sum", ())])
def test_empty_batch(reduction, expected_shape):
    x = torch.zeros(0, 5, requires_grad=True)
    loss = sxt.cross_entropy(x, torch.zeros(0, dtype=torch.int64), reduction=reduction)
    assert loss.shape == expected_shape and (loss.numel() == 0 or loss.item() == 0.0)
    loss.sum().backward()
    assert x.grad.shape == (0, 5)


def test_positive_infinity_shares_the_mass_and_nan_propagates():
    x = torch.tensor([[float("inf"), 0.0, float("inf")], [1.0, float("nan"), 0.0], [1.0, 2.0, 3.0]],
                     requires_grad=True)
    loss = sxt.cross_entropy(x, torch.tensor([0, 0, 2]), reduction="none")
    loss.sum().backward()
    assert loss[0].item() == pytest.approx(np.log(2.0)) and torch.isnan(loss[1])
    assert torch.allclose(x.grad[0], torch.tensor([-0.5, 0.0, 0.5]))
    assert torch.isnan(x.grad[1]).all() and torch.isfinite(x.grad[2]).all()


def test_target_dominates_loss_is_exact():
    """The loss stays exact when the target's probability is 1 - 1e-9 (log1p of the rest, no 1 - p)."""
    x = torch.tensor([[30.0, 9.0, 10.0]], dtype=torch.float32)
    exact = np.log1p(np.exp(9.0 - 30.0) + np.exp(10.0 - 30.0))  # float64 reference, ~2.8e-9
    loss = sxt.cross_entropy(x, torch.tensor([0]))
    assert abs(loss.item() - exact) / exact < 1e-6
    assert F.cross_entropy(x, torch.tensor([0])).item() != pytest.approx(exact, rel=1e-2)  # torch: 0 or noise


# --- autograd --------------------------------------------------------------------------------------------


GRADCHECK_CASES = {
    "index-weight-smooth-ignore-mean": dict(shape=(4, 5), kind="index", weight=True, label_smoothing=0.2),
    "probs-zloss-softcap-none": dict(shape=(3, 5), kind="probs", weight=True, z_loss=0.01, softcap=3.0,
                                     reduction="none"),
    "kdim-temperature-sum": dict(shape=(2, 4, 3), kind="index", temperature=0.7, reduction="sum"),
    "unbatched": dict(shape=(6,), kind="index"),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradcheck_float64(case):
    spec = dict(GRADCHECK_CASES[case])
    shape, kind = spec.pop("shape"), spec.pop("kind")
    x, t = _inputs(shape, kind, kind == "index" and len(shape) > 1, torch.float64, 7)
    if spec.pop("weight", False):
        spec["weight"] = torch.linspace(0.3, 1.7, shape[0 if len(shape) == 1 else 1], dtype=torch.float64)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: sxt.cross_entropy(a, t, **spec), (x,))


def test_gradcheck_lse_and_probability_target():
    """return_lse's lse is differentiable, and so is the loss in probability targets (as torch)."""
    x, t = _inputs((3, 5), "probs", False, torch.float64, 9)
    x.requires_grad_()
    t.requires_grad_()

    def f(a, p):
        loss, lse = sxt.cross_entropy(a, p, softcap=5.0, label_smoothing=0.1, return_lse=True)
        return loss + (lse * torch.tensor([0.3, -0.2, 0.7], dtype=torch.float64)).sum()

    assert torch.autograd.gradcheck(f, (x, t))
    loss, lse = sxt.cross_entropy(x.detach(), t.detach(), softcap=5.0, return_lse=True)
    assert_close(lse, torch.logsumexp(5.0 * torch.tanh(x.detach() / 5.0), dim=1), dtype="float64")


def test_probability_target_gradient_matches_torch():
    x, t = _inputs((4, 6), "probs", False, torch.float64, 2)
    w = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    ours_t, ref_t = t.clone().requires_grad_(), t.clone().requires_grad_()
    sxt.cross_entropy(x, ours_t, w, label_smoothing=0.3).backward()
    F.cross_entropy(x, ref_t, w, label_smoothing=0.3).backward()
    assert_close(ours_t.grad, ref_t.grad, dtype="float64", what="target grad")


def _recording_backend(monkeypatch):
    calls = []
    real = _backend.backend_for(torch.zeros(1))

    def record(*args, **kwargs):
        calls.append(kwargs.get("grad_out"))
        return real(*args, **kwargs)

    monkeypatch.setattr(_backend, "backend_for", lambda logits: record)
    return calls


def _fused_only(monkeypatch):
    """Every size on the fused chunked path (the custom op), as large problems with options run."""
    monkeypatch.setattr(ce_torch, "SMALL_MAX_ELEMENTS", -1)
    monkeypatch.setattr(ce_torch, "_compiled_lean", lambda *args: False)


def test_no_gradient_work_without_requires_grad(monkeypatch):
    """requires_grad=False, or torch.no_grad(): the row kernel gets grad_out=None (no gradient computed)."""
    _fused_only(monkeypatch)
    calls = _recording_backend(monkeypatch)
    x, t = _inputs((8, 10), "index", False, torch.float32, 1)
    loss = sxt.cross_entropy(x, t)
    assert loss.grad_fn is None
    with torch.no_grad():
        sxt.cross_entropy(x.requires_grad_(), t)
    assert calls == [None, None]
    sxt.cross_entropy(x, t)
    assert calls[-1] is not None and calls[-1].shape == x.shape


def test_backward_hands_over_the_forward_buffer(monkeypatch):
    """loss.backward(): x.grad is the very buffer the forward wrote (no copy, no extra pass); another
    upstream gradient scales it in place."""
    buffers = []  # addresses only: holding the tensor itself would make autograd copy it
    real_empty_like = _memory.empty_like

    def record(t):
        out = real_empty_like(t)
        buffers.append(out.data_ptr())
        return out

    monkeypatch.setattr(_memory, "empty_like", record)
    _fused_only(monkeypatch)
    x, t = _inputs((8, 10), "index", False, torch.float32, 1)
    for upstream in (None, torch.tensor(2.5)):
        xr = x.clone().requires_grad_()
        sxt.cross_entropy(xr, t).backward(upstream)
        assert xr.grad.data_ptr() == buffers[-1]
    ref = x.clone().requires_grad_()
    F.cross_entropy(ref, t).backward(torch.tensor(2.5))
    assert_close(xr.grad, ref.grad, dtype="float32")


def test_second_backward_recomputes():
    """retain_graph: the buffer went to the first backward; the second recomputes it from the logits."""
    x, t = _inputs((5, 6), "index", True, torch.float64, 4)
    x.requires_grad_()
    loss = sxt.cross_entropy(x, t, label_smoothing=0.1)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, torch.tensor(3.0, dtype=torch.float64))
    assert_close(g2, 3.0 * g1, dtype="float64")


@pytest.mark.parametrize("path", ["native", "compiled", "fused"])
def test_second_backward_after_the_logits_are_dropped(monkeypatch, path):
    """The function holds the logits (as torch holds its log_softmax): a temporary's second backward
    recomputes the gradient; on the fused and compiled paths, logits modified in place since the forward
    raise. The small lean path without the compiled kernel is torch's own float64 graph, which saved its
    own copy: there, as with torch, the second backward is still the gradient at the forward's logits."""
    if path == "fused":
        _fused_only(monkeypatch)
    if path == "native":
        monkeypatch.setattr(ce_torch, "_compiled_lean", lambda *args: False)
    base = torch.randn(4, 5, requires_grad=True)
    loss = sxt.cross_entropy(base * 2.0, torch.tensor([0, 1, 2, 3]))
    loss.backward(retain_graph=True)
    first = base.grad.clone()
    loss.backward()
    assert_close(base.grad, 2.0 * first, dtype="float32")
    logits = base * 2.0
    loss = sxt.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    loss.backward(retain_graph=True)
    with torch.no_grad():
        logits.mul_(3.0)
    if path == "native":
        base.grad = None
        loss.backward()
        assert_close(base.grad, first, dtype="float32")
        return
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_inplace_grad_writes_into_the_logits():
    x, t = _inputs((6, 9), "index", True, torch.float32, 8)
    expected = x.clone().requires_grad_()
    F.cross_entropy(expected, t, label_smoothing=0.1).backward(torch.tensor(0.5))
    xr = x.clone().requires_grad_()
    storage = xr.data_ptr()
    loss = sxt.cross_entropy(xr, t, label_smoothing=0.1, inplace_grad=True)
    assert_close(loss, F.cross_entropy(x, t, label_smoothing=0.1), dtype="float32")
    loss.backward(torch.tensor(0.5), retain_graph=True)
    assert xr.grad.data_ptr() == storage  # zero extra memory: the input's buffer holds the gradient
    assert_close(xr.grad, expected.grad, dtype="float32")
    with pytest.raises(RuntimeError, match="inplace_grad=True overwrote"):
        loss.backward()


def test_inplace_grad_on_strided_kdim_input():
    """Per-sample blocks whose gradient view cannot be formed are written back."""
    base = torch.randn(3, 5, 4, 6)
    x = base[:, :, ::2, 1:4]  # (3, 5, 2, 3), non-contiguous in every way
    t = torch.randint(0, 5, (3, 2, 3))
    expected = x.clone().requires_grad_()
    F.cross_entropy(expected, t).backward()
    view = base.clone()[:, :, ::2, 1:4].requires_grad_()
    sxt.cross_entropy(view, t, inplace_grad=True).backward()
    assert_close(view.grad, expected.grad, dtype="float32")


@pytest.mark.parametrize("layout", ["transposed", "sliced", "kdim-permuted", "kdim-sliced", "channels-last"])
def test_non_contiguous_inputs(layout):
    g = torch.Generator().manual_seed(5)
    if layout == "transposed":
        x = torch.randn(7, 6, generator=g).t()
        t = torch.randint(0, 7, (6,), generator=g)
    elif layout == "sliced":
        x = torch.randn(6, 15, generator=g)[:, ::2]
        t = torch.randint(0, 8, (6,), generator=g)
    elif layout == "kdim-permuted":
        x = torch.randn(2, 4, 3, 5, generator=g).permute(0, 3, 2, 1)  # (2, 5, 3, 4)
        t = torch.randint(0, 5, (2, 3, 4), generator=g)
    elif layout == "kdim-sliced":
        x = torch.randn(3, 5, 8, generator=g)[:, :, 1::3]
        t = torch.randint(0, 5, (3, 3), generator=g)
    else:
        x = torch.randn(2, 6, 3, 4, generator=g).to(memory_format=torch.channels_last)
        t = torch.randint(0, 6, (2, 3, 4), generator=g)
    probs = torch.softmax(torch.randn(x.shape, generator=g), dim=1).transpose(-1, -2).contiguous().transpose(-1, -2)
    for target in (t, probs):
        ours, ref = x.detach().requires_grad_(), x.clone().requires_grad_()
        loss = sxt.cross_entropy(ours, target, reduction="none", label_smoothing=0.05)
        upstream = _upstream(loss, 3)
        loss.backward(upstream)
        ref_loss = F.cross_entropy(ref, target, reduction="none", label_smoothing=0.05)
        ref_loss.backward(upstream)
        assert_close(loss, ref_loss, dtype="float32", what="loss")
        assert_close(ours.grad, ref.grad, dtype="float32", what="grad")


def test_threaded_spans_agree_with_one_thread(monkeypatch):
    """A problem large enough for the worker threads gives what one thread gives."""
    x, t = _inputs((1100, 1000), "index", True, torch.float32, 12)
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("SOFTXENT_NUM_THREADS", threads)
        xr = x.clone().requires_grad_()
        loss = sxt.cross_entropy(xr, t, reduction="none", label_smoothing=0.1)
        loss.sum().backward()
        results.append((loss, xr.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    ref = F.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
    assert_close(results[1][0], ref, dtype="float32")


def test_large_vocabulary_bfloat16():
    """A real vocabulary (128256 classes) in bfloat16: float32 accumulation, one rounding."""
    x, t = _inputs((3, 128256), "index", False, torch.bfloat16, 13)
    xr = x.clone().requires_grad_()
    loss = sxt.cross_entropy(xr, t)
    loss.backward()
    ref_x = x.float().requires_grad_()
    ref = F.cross_entropy(ref_x, t)
    ref.backward()
    assert_close(loss, ref, dtype="bfloat16")
    assert_close(xr.grad, ref_x.grad, dtype="bfloat16")


def test_torch_compile_fullgraph():
    """torch.compile(fullgraph=True) traces it without a graph break (the kernel and the value checks
    are a custom op); loss and gradient equal eager's, and the label check still raises."""
    torch._dynamo.reset()

    def step(x, t, w):
        return sxt.cross_entropy(x, t, w, label_smoothing=0.1, z_loss=1e-3)

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    x, t = _inputs((6, 11), "index", True, torch.float32, 14)
    w = torch.linspace(0.5, 1.5, 11)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled(xc, t, w).backward()
    step(xe, t, w).backward()
    assert_close(xc.grad, xe.grad, dtype="float32")
    bad = t.clone()
    bad[1] = 11
    with pytest.raises(ValueError, match="class index 11 at position"):
        compiled(x, bad, w)


# --- the module and validation ---------------------------------------------------------------------------


def test_module_matches_functional():
    w = torch.linspace(0.5, 1.5, 7)
    module = sxt.CrossEntropyLoss(weight=w, ignore_index=3, label_smoothing=0.1, reduction="sum")
    assert torch.equal(module.weight, w) and "weight" in dict(module.named_buffers())
    x, t = _inputs((5, 7), "index", False, torch.float32, 15)
    assert_close(module(x, t), F.cross_entropy(x, t, w, ignore_index=3, label_smoothing=0.1, reduction="sum"),
                 dtype="float32")
    with pytest.warns(UserWarning):
        legacy = sxt.CrossEntropyLoss(size_average=False)
    assert legacy.reduction == "sum"
    with pytest.raises(ValueError, match="reduction must be one of"):
        sxt.CrossEntropyLoss(reduction="avg")


def _numpy_message(logits, target, **options):
    with pytest.raises((ValueError, TypeError)) as info:
        sx.cross_entropy(logits, target, axis=1, **options)
    return str(info.value)


@pytest.mark.parametrize("case", ["label-high", "label-negative", "probability", "weight", "reduction",
                                  "smoothing", "z_loss"])
def test_errors_say_what_the_numpy_layer_says(case):
    x = np.zeros((3, 5), dtype=np.float32)
    target, options = np.array([0, 1, 2]), {}
    if case == "label-high":
        target = np.array([0, 7, 9])
    elif case == "label-negative":
        target = np.array([0, -100, -2])
    elif case == "probability":
        target = np.full((3, 5), 0.2, dtype=np.float32)
        target[2, 1] = -0.5
    elif case == "weight":
        options = dict(weight=np.array([1.0, 1.0, -1.0, 1.0, 1.0]))
    elif case == "reduction":
        options = dict(reduction="avg")
    elif case == "smoothing":
        options = dict(label_smoothing=1.5)
    else:
        options = dict(z_loss=-1.0)
    expected = _numpy_message(x, target, **options)
    torch_options = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    with pytest.raises(ValueError) as info:
        sxt.cross_entropy(torch.from_numpy(x), torch.from_numpy(target), **torch_options)
    assert str(info.value) == expected


def test_bad_arguments():
    x = torch.zeros(3, 5)
    with pytest.raises(TypeError, match="input must have a real floating-point dtype; got torch.int64"):
        sxt.cross_entropy(torch.zeros(3, 5, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"target must hold class indices of shape \(3,\) or probabilities"):
        sxt.cross_entropy(x, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="target holds class indices and must have an integer dtype"):
        sxt.cross_entropy(x, torch.zeros(3))
    with pytest.raises(TypeError, match="holds probabilities and must be floating"):
        sxt.cross_entropy(x, torch.zeros(3, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"weight must hold one value per class, shape \(5,\); got shape \(4,\)"):
        sxt.cross_entropy(x, torch.zeros(3, dtype=torch.int64), torch.ones(4))
    with pytest.raises(ValueError, match="at least one dimension"):
        sxt.cross_entropy(torch.tensor(1.0), torch.tensor(0))
    # check_labels=False skips the value checks (for CUDA graphs): a label equal to C - 1 still works
    assert torch.isfinite(sxt.cross_entropy(x, torch.tensor([4, 4, 4]), check_labels=False))


def test_int32_labels_and_ignore_index_inside_the_range():
    x, t = _inputs((6, 5), "index", False, torch.float64, 16)
    ours = sxt.cross_entropy(x, t.to(torch.int32), ignore_index=2)
    assert_close(ours, F.cross_entropy(x, t, ignore_index=2), dtype="float64")
