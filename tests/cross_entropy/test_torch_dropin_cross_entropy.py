"""softxent.torch.cross_entropy as a drop-in for F.cross_entropy under everything torch does with it.

Issue 11: torch's positional order (the deprecated size_average / reduce), the small-problem paths (lean
and composite) as exact as the fused chunked one, double backward against torch's own and gradgradcheck,
torch.func (grad, vmap, jacrev, a Hessian), CPU autocast's output dtypes, torch.compile with dynamic
shapes and fullgraph without a recompile per batch size, state_dict interchange with
torch.nn.CrossEntropyLoss, nothing heavy imported by a first call.

Oracles: torch's own F.cross_entropy (values, gradients, second derivatives), mpmath at 50 digits (the
adversarial set of tests/adversarial.py: loss within 2 ulp, every gradient entry within 4 ulp), and the
fused path itself for the seam between the paths.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, jacrev, vmap

import adversarial
import softxent.torch as sxt
from compare import assert_close, ulp_error

ce_torch = importlib.import_module("softxent.ops.cross_entropy.torch")  # the package exports the function


def _path(monkeypatch, path):
    """Force one eager path for every size: "lean", "composite" or "fused"."""
    if path == "fused":
        monkeypatch.setattr(ce_torch, "SMALL_MAX_ELEMENTS", -1)
        monkeypatch.setattr(ce_torch, "_compiled_lean", lambda *args: False)
        return
    monkeypatch.setattr(ce_torch, "SMALL_MAX_ELEMENTS", 1 << 40)
    if path == "composite":
        monkeypatch.setattr(ce_torch, "_is_lean", lambda *args: False)


def _problem(shape, seed, dtype=torch.float32, ignore=False):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    batch = () if len(shape) == 1 else shape[:1] + shape[2:]
    t = torch.randint(0, num_classes, batch, generator=g)
    if ignore and t.dim():
        t.view(-1)[::4] = -100
    return x, t


# --- the paths agree, and each is exact ----------------------------------------------------------------


OPTION_SETS = {
    "plain": {},
    "weight": dict(weight=torch.linspace(0.2, 2.0, 7)),
    "ignore-smooth-sum": dict(label_smoothing=0.2, reduction="sum", ignore=True),
    "zloss-softcap-temperature-none": dict(z_loss=1e-3, softcap=4.0, temperature=0.7, reduction="none"),
    "probs-weight-smooth": dict(probs=True, weight=torch.linspace(0.5, 1.5, 7), label_smoothing=0.1),
}


@pytest.mark.parametrize("options", list(OPTION_SETS))
@pytest.mark.parametrize("shape", [(7,), (6, 7), (3, 7, 2, 3)])
def test_small_paths_agree_with_the_fused_path(monkeypatch, options, shape):
    """The lean and composite paths give the fused path's loss and gradient (random upstream) on float32:
    no seam where the size picks another path. Special rows included: a fully masked one, a -inf entry,
    a +inf row."""
    kwargs = dict(OPTION_SETS[options])
    probs, ignore = kwargs.pop("probs", False), kwargs.pop("ignore", False)
    x, t = _problem(shape, 3, ignore=ignore)
    if len(shape) == 2:
        x[1] = -float("inf")
        x[2, 4] = -float("inf")
        x[3, 1] = float("inf")
    if probs:
        scores = torch.randn(shape, generator=torch.Generator().manual_seed(4))
        t = torch.softmax(scores, dim=0 if len(shape) == 1 else 1)
    results = {}
    for path in ("lean", "composite", "fused"):
        _path(monkeypatch, path)
        xr = x.clone().requires_grad_()
        loss = sxt.cross_entropy(xr, t, **kwargs)
        upstream = torch.linspace(0.5, 1.5, loss.numel()).view(loss.shape)
        loss.backward(upstream)
        results[path] = (loss.detach(), xr.grad)
    for path in ("lean", "composite"):
        assert_close(results[path][0], results["fused"][0], dtype="float32", what=f"{path} loss")
        assert_close(results[path][1], results["fused"][1], dtype="float32", what=f"{path} grad")
        assert torch.equal(torch.isfinite(results[path][1]), torch.isfinite(results["fused"][1]))


def _exact_gradient(case):
    """d loss / d x_j = p_j off the target, -(sum_{j != t} p_j) = expm1(log p_t) on it, in mpmath."""
    exact = [mpmath.exp(case.exact_log_softmax_of(float(v))) for v in case.logits]
    exact[case.target] = mpmath.expm1(case.exact_log_softmax_of(float(case.logits[case.target])))
    return exact


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path", ["lean", "composite"])
def test_small_paths_exact_on_the_adversarial_set(monkeypatch, dtype, path):
    """API rule 11 on the small paths: per-row loss within 2 ulp (float32) / 4 ulp (float64) of mpmath's,
    every gradient entry within 4 ulp, the target's p_t - 1 included (rows where it is -1e-30)."""
    _path(monkeypatch, path)
    bound = 2 if dtype == "float32" else 4
    checked = 0
    for case in adversarial.cases(dtype, long_rows=False):
        if not np.isfinite(case.logits).all() or case.logits.size > 4096:
            continue  # the limits of rules 2 and 3 are tested by value above and in the main file
        x = torch.from_numpy(case.logits.copy()).unsqueeze(0).requires_grad_()
        loss = sxt.cross_entropy(x, torch.tensor([case.target]), reduction="sum")
        loss.backward()
        loss_ulp = ulp_error(loss.detach().numpy().reshape(1), [case.exact_loss()])
        assert loss_ulp.max() <= bound, f"{case.name}: loss {loss_ulp.max():.1f} ulp"
        grad_ulp = ulp_error(x.grad.numpy().reshape(-1), _exact_gradient(case))
        assert grad_ulp.max() <= 4, f"{case.name}: gradient {grad_ulp.max():.1f} ulp at {int(grad_ulp.argmax())}"
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("num_classes", [10, 1000, 30000])
def test_lean_native_exact_on_both_sides_of_its_threshold(monkeypatch, num_classes):
    """The lean path's torch-native form (float64 log_softmax + nll_loss, torch's autograd) takes a batch
    only while every loss is >= C 2^-26, where it is exact (rule 11); a dominant target just below goes
    to the log1p form. Both sides: loss within 2 ulp and every gradient entry within 4 ulp of mpmath's."""
    taken = []
    native = ce_torch._lean_native
    monkeypatch.setattr(ce_torch, "_compiled_lean", lambda *args: False)  # else the compiled kernel runs it
    monkeypatch.setattr(ce_torch, "_lean_native", lambda *args: taken.append(native(*args)) or taken[-1])
    rng = np.random.default_rng(num_classes)
    for k in (0.5, 0.9, 1.1, 4.0):  # the loss as a multiple of the threshold
        loss_wanted = k * num_classes * ce_torch.FLOAT64_LOG_SOFTMAX_MARGIN
        logits = (rng.standard_normal(num_classes) * 0.01).astype(np.float32)
        logits[0] += np.float32(np.log((num_classes - 1) / loss_wanted))  # (C - 1) e^-margin = L
        case = adversarial.Case(f"dominant-{k}", logits, 0)
        x = torch.from_numpy(logits.copy()).unsqueeze(0).requires_grad_()
        loss = sxt.cross_entropy(x, torch.tensor([0]), reduction="sum")
        loss.backward()
        assert (taken[-1] is not None) == (k > 1), f"k={k}: native path {'not ' * (k > 1)}taken"
        loss_ulp = ulp_error(loss.detach().numpy().reshape(1), [case.exact_loss()])
        assert loss_ulp.max() <= 2, f"k={k}: loss {loss_ulp.max():.1f} ulp"
        grad_ulp = ulp_error(x.grad.numpy().reshape(-1), _exact_gradient(case))
        assert grad_ulp.max() <= 4, f"k={k}: gradient {grad_ulp.max():.1f} ulp at {int(grad_ulp.argmax())}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_double_backward_on_the_lean_native_path_matches_torch(dtype):
    """The common small call (float32 / bfloat16, class indices, "mean") runs on torch's own autograd: its
    second derivative is torch's, to float tolerance."""
    x, t = _problem((6, 5), 8, dtype)
    results = []
    for fn in (sxt.cross_entropy, F.cross_entropy):
        xr = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(xr, t), xr, create_graph=True)
        (h,) = torch.autograd.grad((g.float() ** 2).sum(), xr)
        results.append((g.detach(), h))
    name = str(dtype).removeprefix("torch.")
    assert results[0][0].dtype == results[1][0].dtype == dtype
    assert_close(results[0][0], results[1][0], dtype=name, what="gradient")
    assert_close(results[0][1], results[1][1], dtype=name, what="second derivative", scale=4.0)


# --- torch's signature ----------------------------------------------------------------------------------


def test_positional_arguments_in_torch_order():
    """F.cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing)."""
    x, t = _problem((6, 5), 1)
    t[0] = 4
    w = torch.linspace(0.5, 1.5, 5)
    assert_close(sxt.cross_entropy(x, t, None, None, 4), F.cross_entropy(x, t, None, None, 4), dtype="float32")
    positional = (w, None, 2, None, "sum", 0.1)  # all eight of torch's positions
    assert_close(sxt.cross_entropy(x, t, *positional), F.cross_entropy(x, t, *positional), dtype="float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = sxt.cross_entropy(x, t, None, False)  # size_average=False: "sum", with torch's warning
        theirs = F.cross_entropy(x, t, None, False)
    assert_close(ours, theirs, dtype="float32")
    assert sum("size_average and reduce" in str(w.message) for w in caught) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sxt.cross_entropy(x, t, reduce=False).shape == (6,)


# --- double backward -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["lean", "composite", "fused"])
def test_double_backward_matches_torch(monkeypatch, path):
    """A gradient penalty: d/dx |d loss / dx|^2 equals torch's own double backward, on every path."""
    _path(monkeypatch, path)
    x, t = _problem((5, 6), 6, torch.float64, ignore=path == "composite")
    w = torch.linspace(0.5, 1.5, 6, dtype=torch.float64) if path != "lean" else None
    results = []
    for fn in (sxt.cross_entropy, F.cross_entropy):
        xr = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(xr, t, w), xr, create_graph=True)
        (h,) = torch.autograd.grad((g * g).sum(), xr)
        results.append((g.detach(), h))
    assert_close(results[0][0], results[1][0], dtype="float64", what="gradient")
    assert_close(results[0][1], results[1][1], dtype="float64", what="second derivative")


GRADGRAD_CASES = {
    "index-weight-smooth-mean": dict(weight=True, label_smoothing=0.2),
    "kdim-ignore-zloss-softcap-none": dict(shape=(2, 4, 3), ignore=True, z_loss=0.01, softcap=3.0,
                                           reduction="none"),
    "probs-temperature-sum": dict(probs=True, temperature=0.7, reduction="sum"),
    "unbatched-lse": dict(shape=(5,), return_lse=True),
}


@pytest.mark.parametrize("case", list(GRADGRAD_CASES))
def test_gradgradcheck_float64(case):
    options = dict(GRADGRAD_CASES[case])
    shape, probs, ignore = options.pop("shape", (4, 5)), options.pop("probs", False), options.pop("ignore", False)
    x, t = _problem(shape, 8, torch.float64, ignore=ignore)
    if options.pop("weight", False):
        options["weight"] = torch.linspace(0.3, 1.7, shape[1], dtype=torch.float64)
    if probs:
        t = torch.softmax(torch.randn(shape, dtype=torch.float64), dim=1)
    lse_weight = options.get("return_lse") and torch.tensor(0.3, dtype=torch.float64)

    def f(a):
        out = sxt.cross_entropy(a, t, **options)
        return out[0] + lse_weight * out[1] if options.get("return_lse") else out

    x.requires_grad_()
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


# --- torch.func -------------------------------------------------------------------------------------------


def test_torch_func_grad_vmap_jacrev_hessian():
    """grad, vmap (per-example losses and gradients), jacrev of "none" and a Hessian equal F's."""
    x, t = _problem((4, 6), 9, torch.float64)
    w = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    for fn_name, transform in {
        "grad": lambda f: grad(lambda a: f(a, t, w, label_smoothing=0.1))(x),
        "vmap": lambda f: vmap(lambda a, b: f(a, b))(x, t),
        "vmap-grad": lambda f: vmap(grad(lambda a, b: f(a, b)))(x, t),
        "jacrev": lambda f: jacrev(lambda a: f(a, t, reduction="none"))(x),
        "hessian": lambda f: jacrev(jacrev(lambda a: f(a, t)))(x),
    }.items():
        assert_close(transform(sxt.cross_entropy), transform(F.cross_entropy), dtype="float64", what=fn_name)


def test_torch_func_grad_at_a_fused_size():
    """Under torch.func a large problem takes the composite path too (the custom op has no batching rule)."""
    x, t = _problem((64, 600), 10)
    ours = grad(lambda a: sxt.cross_entropy(a, t))(x)
    theirs = grad(lambda a: F.cross_entropy(a, t))(x)
    assert_close(ours, theirs, dtype="float32")


# --- autocast, compile, modules, imports ----------------------------------------------------------------


@pytest.mark.parametrize("cast", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cpu_autocast_output_dtypes_match_torch(cast, dtype):
    """Under CPU autocast F.cross_entropy runs in float32 for 16-bit inputs (float64 stays): same dtypes,
    values, and the input's gradient in its own dtype."""
    x, t = _problem((6, 5), 11, dtype)
    probs = torch.softmax(torch.randn(6, 5), dim=1).to(dtype)
    for target in (t, probs):
        ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=cast):
            a, b = sxt.cross_entropy(ours, target), F.cross_entropy(theirs, target)
        assert a.dtype == b.dtype
        a.backward()
        b.backward()
        assert ours.grad.dtype == theirs.grad.dtype == dtype
        assert_close(a, b, dtype=str(b.dtype).removeprefix("torch."))
        assert_close(ours.grad, theirs.grad, dtype=str(dtype).removeprefix("torch."))


def test_compile_dynamic_fullgraph_without_a_recompile_per_batch_size():
    """torch.compile(dynamic=True, fullgraph=True): one graph for batch sizes 8 to 40, values as eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def step(x, t):
        return sxt.cross_entropy(x, t, label_smoothing=0.1)

    compiled = torch.compile(step, backend=counter, dynamic=True, fullgraph=True)
    frames = []
    for rows in (8, 16, 24, 40):
        x, t = _problem((rows, 11), rows)
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        loss = compiled(xc, t)
        loss.backward()
        step(xe, t).backward()
        assert_close(loss, F.cross_entropy(x, t, label_smoothing=0.1), dtype="float32")
        assert_close(xc.grad, xe.grad, dtype="float32")
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames == frames[:1] * 4  # compiled once (the first size), then reused


def test_module_state_dict_interchange():
    """sxt.CrossEntropyLoss loads torch.nn.CrossEntropyLoss's state_dict and torch's loads ours."""
    w = torch.linspace(0.5, 2.0, 5)
    theirs = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    ours = sxt.CrossEntropyLoss(weight=torch.ones(5), label_smoothing=0.1)
    ours.load_state_dict(theirs.state_dict())
    x, t = _problem((6, 5), 12)
    assert_close(ours(x, t), theirs(x, t), dtype="float32")
    back = torch.nn.CrossEntropyLoss(weight=torch.zeros(5), label_smoothing=0.1)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.weight, w)
    assert sxt.CrossEntropyLoss().state_dict().keys() == torch.nn.CrossEntropyLoss().state_dict().keys()


def test_first_call_imports_nothing_heavy():
    """import softxent.torch and a first call (both paths) import no torch._dynamo (2.6 s before), nor
    the NumPy layer (softxent's names load on first use); `softxent.softmax` still loads it."""
    script = ("import sys, torch, softxent.torch as sxt\n"
              "x = torch.randn(8, 10, requires_grad=True)\n"
              "sxt.cross_entropy(x, torch.arange(8)).backward()\n"
              "y = torch.randn(512, 1000, requires_grad=True)\n"
              "sxt.cross_entropy(y, torch.randint(0, 1000, (512,))).backward()\n"
              "print(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'torch._inductor'))\n"
              "             or m.startswith('softxent.ops.') and m.endswith('.numpy')))\n"
              "import softxent\n"
              "print(softxent.softmax.__module__, 'softxent.ops.softmax.numpy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "softxent.ops.softmax.numpy True"], out.stdout
