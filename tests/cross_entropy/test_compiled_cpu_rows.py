"""The compiled CPU row kernel (cpu_rows.c) against mpmath and against the torch-op path it replaces.

`torch_cpu.cross_entropy_rows` sends float32 and bfloat16 class-index problems without a softcap to the
compiled kernel and everything else to torch ops; the two must agree on every option, layout and special
row (the kernel hands rows whose max is not finite, or that hold a NaN, back to the torch-op path). Public
calls on small problems take other paths, so these tests call the row kernel itself.
"""

import math

import numpy as np
import pytest
import torch

import adversarial
from compare import ulp_error
from row_kernels import row_kernel
from softxent._options import LossOptions
from softxent.ops.cross_entropy import torch_cpu


def test_the_compiled_kernel_is_built():
    # setup.py makes the extension optional (a machine without a C compiler still installs softxent);
    # a development install has gcc, and without the kernel every test below would test the other path
    assert torch_cpu._cpu_rows is not None, "softxent.ops.cross_entropy._cpu_rows was not built: `pip install -e .`"


def _rows(logits, target, weight, options, *, compiled: bool, grad: bool = True, inplace: bool = False,
          grad_scale=0.5):
    with row_kernel(torch_cpu, compiled):
        logits = logits.clone() if inplace else logits
        grad_out = (logits if inplace else torch.empty_like(logits)) if grad else None
        losses, lse = torch_cpu.cross_entropy_rows(logits, target, weight, options, grad_scale=grad_scale,
                                                   grad_out=grad_out)
        return losses, lse, grad_out


@pytest.mark.parametrize("case", adversarial.cases("float32"), ids=lambda case: case.name)
def test_compiled_loss_and_lse_are_within_2_ulp_of_mpmath(case):
    logits = torch.from_numpy(case.logits).unsqueeze(0)
    losses, lse, _ = _rows(logits, torch.tensor([case.target]), None, LossOptions(), compiled=True, grad=False)
    assert ulp_error(losses.numpy(), [case.exact_loss()]).max() <= 2.0
    assert ulp_error(lse.numpy(), [case.exact_lse()]).max() <= 2.0


def _problem(dtype, layout, rows=37, classes=301):
    g = torch.Generator().manual_seed(7)
    if layout == "k-dim":  # a K-dimensional input's sample (C, d) seen as rows (d, C): classes strided
        logits = (torch.randn(classes, rows, generator=g) * 6).to(dtype).t()
    else:
        logits = (torch.randn(rows, classes, generator=g) * 6).to(dtype)
    target = torch.randint(0, classes, (logits.shape[0],), generator=g)
    target[::5] = -100  # ignored rows
    target[1] = int(logits[1].float().argmax())  # a target holding the max: log1p(rest)
    logits[2, 10] = -math.inf  # a masked class
    logits[3] = -math.inf  # a fully masked row: handed back to the torch-op path
    logits[4, 7] = math.inf  # a row holding +inf: likewise
    logits[6, 8] = math.nan  # a NaN row: likewise
    return logits, target


OPTIONS = {
    "plain": dict(),
    "smoothing": dict(label_smoothing=0.1),
    "weights-smoothing-zloss-temperature": dict(weight=True, label_smoothing=0.2, z_loss=1e-3, temperature=0.7),
    "zloss-temperature": dict(z_loss=1e-2, temperature=1.9),
    "weights": dict(weight=True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "k-dim", "in-place"])
@pytest.mark.parametrize("name", OPTIONS)
def test_compiled_rows_agree_with_the_torch_op_path(dtype, layout, name):
    logits, target = _problem(dtype, layout)
    options = dict(OPTIONS[name])
    weight = torch.rand(logits.shape[1], generator=torch.Generator().manual_seed(3)) if options.pop("weight", False) else None
    if weight is not None:
        weight[10] = 0.0  # a masked class of weight 0 adds nothing to the smoothing sum (rule 4)
    opts = LossOptions(**options)
    inplace = layout == "in-place"
    ours = _rows(logits, target, weight, opts, compiled=True, inplace=inplace)
    # the reference: the torch-op path on float64 copies (the same rules, exact far below a float32 ulp;
    # in float32 that path is itself up to ~2 ulp off, by how the machine's torch kernels round)
    theirs = _rows(logits.double(), target, None if weight is None else weight.double(), opts, compiled=False,
                   inplace=inplace)
    for what, a, b in zip(("losses", "lse", "grad"), ours, theirs):
        b = b.to(a.dtype)  # rounded once to what the kernel returns
        a, b = a.float().numpy().astype(np.float64), b.float().numpy().astype(np.float64)
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        # the kernel is within about 1 ulp of exact, the reference rounded once: 2 ulp apart at most
        ulp = 2.0 ** -23 if dtype == torch.float32 or what != "grad" else 2.0 ** -7
        tiny = np.finfo(np.float32).tiny if dtype == torch.float32 or what != "grad" else 1e-38
        allowed = 2 * ulp * np.maximum(np.abs(a), np.abs(b)) + tiny
        with np.errstate(invalid="ignore"):
            bad = ~same & ~(np.abs(a - b) <= allowed)
        assert not bad.any(), f"{what}: {int(bad.sum())} entries differ, first at {np.argwhere(bad)[0]}"


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}, {"reduction": "none"}], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_k_dimensional_input_in_one_call_matches_torch(dtype, options):
    """A contiguous (N, C, d1, d2) input goes to the compiled kernel whole, N samples of d1 d2 rows whose
    classes are strided: tiles that never cross a sample (7 * 9 = 63 rows: full tiles and a short one)."""
    import softxent.torch as sxt

    g = torch.Generator().manual_seed(11)
    x = (torch.randn(3, 5, 7, 9, generator=g) * 4).to(dtype)
    t = torch.randint(0, 5, (3, 7, 9), generator=g)
    calls = []
    real = torch_cpu.lean_rows
    try:
        torch_cpu.lean_rows = lambda *args, **kwargs: calls.append(args[0].shape) or real(*args, **kwargs)
        ours_x = x.clone().requires_grad_()
        ours = sxt.cross_entropy(ours_x, t, **options)
    finally:
        torch_cpu.lean_rows = real
    assert calls == [x.shape], "the K-dimensional input did not go to the compiled kernel in one call"
    torch_x = x.double().requires_grad_()
    expected = torch.nn.functional.cross_entropy(torch_x, t, **options)
    upstream = torch.rand(ours.shape, generator=g)
    ours.backward(upstream.to(ours.dtype))
    expected.backward(upstream.double())
    tolerance = dict(rtol=2e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=8e-3, atol=1e-3)
    torch.testing.assert_close(ours.double(), expected.detach().to(dtype).double(), **tolerance)
    torch.testing.assert_close(ours_x.grad.double(), torch_x.grad.to(dtype).double(), **tolerance)


# --- the lean entry (cpu_rows.c's `lean`) through the public call: the fast lane of small classifiers ---------


def _lean_inputs(shape, layout, dtype, seed=5):
    """Logits of `shape` in a layout the lean entry reads in place, and class indices (a target holding
    the max in row 0, so that its loss is log1p(rest))."""
    g = torch.Generator().manual_seed(seed)
    if layout == "transposed":  # classes strided, rows next to each other
        logits = (torch.randn(shape[::-1], generator=g) * 5).to(dtype).t()
    elif layout == "sliced":  # rows strided, classes contiguous
        logits = (torch.randn(shape[0], shape[1] + 3, generator=g) * 5).to(dtype)[:, 2:-1]
    elif layout == "expanded":  # every row the same memory (row stride 0)
        logits = (torch.randn(1, shape[1], generator=g) * 5).to(dtype).expand(shape)
    else:
        logits = (torch.randn(shape, generator=g) * 5).to(dtype)
    class_dim = 0 if logits.dim() == 1 else 1
    batch = logits.shape[:class_dim] + logits.shape[class_dim + 1:]
    target = torch.randint(0, logits.shape[class_dim], batch, generator=g)
    if logits.dim() >= 2:
        target.view(-1)[0] = int(logits.movedim(class_dim, -1).reshape(-1, logits.shape[class_dim])[0].argmax())
    return logits, target


@pytest.fixture
def fast_lane_taken(monkeypatch):
    """A list that records, call by call, whether cross_entropy's fast lane computed the result."""
    from softxent.ops.cross_entropy import torch as ce_torch

    taken, real = [], ce_torch._fast_lane
    monkeypatch.setattr(ce_torch, "_fast_lane", lambda *args: taken.append(real(*args)) or taken[-1])
    return taken


# (N, C) across rows (C <= 64: cpu_rows.c's ACROSS_MAX_CLASSES) in full and short tiles of 16, along rows
# beyond; an unbatched (C,) row; a K-dimensional input
LEAN_CASES = [((1, 10), "contiguous"), ((17, 10), "contiguous"), ((33, 64), "contiguous"),
              ((16, 65), "contiguous"), ((5, 1000), "contiguous"), ((19, 10), "transposed"),
              ((19, 10), "sliced"), ((40, 30), "sliced"), ((19, 10), "expanded"), ((10,), "contiguous"),
              ((3, 5, 7, 9), "contiguous")]


@pytest.mark.parametrize("options", [{}, {"reduction": "sum"}, {"reduction": "none"}, {"label_smoothing": 0.2},
                                     {"z_loss": 1e-3, "temperature": 0.7}], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape, layout", LEAN_CASES, ids=str)
def test_lean_calls_are_exact(shape, layout, dtype, options, fast_lane_taken):
    """Loss and gradient (random upstream) of the fast lane against torch in float64: the loss within 2 ulp,
    every gradient entry within 4 (rule 11); bfloat16 rounded once from float32."""
    import softxent.torch as sxt

    logits, target = _lean_inputs(shape, layout, dtype)
    ours_x = logits.detach().requires_grad_()
    ours = sxt.cross_entropy(ours_x, target, **options)
    assert fast_lane_taken[0] is ours, "the call left the fast lane"
    torch_options = {k: v for k, v in options.items() if k not in ("z_loss", "temperature")}
    exact_x = logits.double().requires_grad_()
    scaled = exact_x / options.get("temperature", 1.0)
    exact = torch.nn.functional.cross_entropy(scaled, target, **torch_options)
    if "z_loss" in options:
        lse = torch.logsumexp(scaled, dim=0 if logits.dim() == 1 else 1)
        exact = exact + options["z_loss"] * (lse * lse).mean()
    upstream = torch.rand(ours.shape, generator=torch.Generator().manual_seed(3)) + 0.5
    ours.backward(upstream.to(ours.dtype))
    exact.backward(upstream.to(ours.dtype).double())
    if dtype == torch.float32:
        assert ulp_error(ours.detach().numpy(), exact.detach().numpy()).max() <= 2.0
        assert ulp_error(ours_x.grad.numpy(), exact_x.grad.numpy()).max() <= 4.0
    else:  # the loss rounded once from float32: within half a bfloat16 step of the exact value; the
        # gradient once more by the backward's product with the upstream gradient, in bfloat16 as torch's
        torch.testing.assert_close(ours.double(), exact.detach(), rtol=2 ** -8, atol=1e-6)
        torch.testing.assert_close(ours_x.grad.double(), exact_x.grad, rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no grad", "grad"])
def test_the_fast_lane_hands_back_what_the_kernel_declines(requires_grad, fast_lane_taken):
    """A label out of range gets the general path's ValueError; ignored rows and a NaN row the general
    path's results (the kernel wrote nothing it keeps)."""
    import softxent.torch as sxt
    from softxent.ops.cross_entropy import torch as ce_torch

    logits, target = _lean_inputs((12, 10), "contiguous", torch.float32)
    bad = target.clone()
    bad[7] = 10
    with pytest.raises(ValueError, match=r"10.*position|position.*10"):
        sxt.cross_entropy(logits.clone().requires_grad_(requires_grad), bad)
    ignored = target.clone()
    ignored[::3] = -100
    nan_row = logits.clone()
    nan_row[4, 2] = math.nan
    for x, t in ((logits, ignored), (nan_row, target)):
        fast_lane_taken.clear()
        ours_x = x.clone().requires_grad_(requires_grad)
        ours = sxt.cross_entropy(ours_x, t, reduction="none")
        assert fast_lane_taken == [None]
        with row_kernel(torch_cpu, False):
            general_x = x.clone().requires_grad_(requires_grad)
            saved = ce_torch._compiled_lean
            ce_torch._compiled_lean = lambda *args: False
            try:
                general = sxt.cross_entropy(general_x, t, reduction="none")
            finally:
                ce_torch._compiled_lean = saved
        torch.testing.assert_close(ours, general, equal_nan=True, rtol=0, atol=0)
        if requires_grad:
            ours.nansum().backward()
            general.nansum().backward()
            torch.testing.assert_close(ours_x.grad, general_x.grad, equal_nan=True, rtol=0, atol=0)


def test_the_fast_lane_keeps_double_and_second_backward(fast_lane_taken):
    """create_graph through the fast lane: the second derivative of torch's own float64 loss; a second
    backward through the same graph recomputes the gradient from the held logits."""
    import softxent.torch as sxt

    logits, target = _lean_inputs((6, 10), "contiguous", torch.float32)
    x = logits.clone().requires_grad_()
    (g,) = torch.autograd.grad(sxt.cross_entropy(x, target), x, create_graph=True)
    assert fast_lane_taken[0] is not None
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    (hv,) = torch.autograd.grad((g * direction).sum(), x)
    x64 = logits.double().requires_grad_()
    (g64,) = torch.autograd.grad(torch.nn.functional.cross_entropy(x64, target), x64, create_graph=True)
    (hv64,) = torch.autograd.grad((g64 * direction.double()).sum(), x64)
    torch.testing.assert_close(hv.double(), hv64, rtol=1e-5, atol=1e-7)
    loss = sxt.cross_entropy(x, target)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
