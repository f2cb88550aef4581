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
        torch_cpu.lean_rows = lambda *args: calls.append(args[0].shape) or real(*args)
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
