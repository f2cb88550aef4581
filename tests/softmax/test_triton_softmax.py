"""The Triton softmax / log-softmax kernels, forward and backward, under the Triton interpreter.

Oracles: torch.softmax / log_softmax in float64 (with the mask applied as -inf first) for the forward,
the NumPy layer's softmax_grad / log_softmax_grad in float64 on the same forward outputs for the backward
(divided by T: the kernels differentiate with respect to the untempered input). Shapes as in
test_triton_cross_entropy: (3, 423) in 64-column blocks, (5, 1), and (2, 4097) split over 5 programs.
"""

import numpy as np
import pytest
from triton_env import DEVICE, pytestmark, sxtt, torch  # noqa: F401  (before triton loads: sets TRITON_INTERPRET)

import softxent as sx
from softxent.torch.triton import configured

from compare import assert_close


SHAPES = {"3x423": ((3, 423), dict(block=64)), "5x1": ((5, 1), {}),
          "2x4097-split": ((2, 4097), dict(block=512, program_columns=1024))}


def problem(shape, dtype, masked: bool, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g) * 3).to(dtype)
    where = None
    if masked:
        where = torch.rand(*shape, generator=g) > 0.3
        where[0] = False  # a fully masked row
        if shape[0] > 2:
            where[2] = torch.rand(shape[1], generator=g) > 0.9  # a sparse row
    return x.to(DEVICE), None if where is None else where.to(DEVICE)


def reference(x, where, temperature, log):
    z = x.double()
    if where is not None:
        z = z.masked_fill(~where, float("-inf"))
    y = (torch.log_softmax if log else torch.softmax)(z / temperature, dim=1)
    masked_rows = torch.all(z == float("-inf"), dim=1, keepdim=True)
    return torch.where(masked_rows, float("-inf") if log else 0.0, y)  # rule 2, where torch gives NaN


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "where"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_forward_and_backward_match_references(shape, temperature, masked, log):
    size, config = SHAPES[shape]
    x, where = problem(size, torch.float32, masked)
    grad = torch.randn(*size, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    forward = sxtt.log_softmax_rows if log else sxtt.softmax_rows
    backward = sxtt.log_softmax_backward_rows if log else sxtt.softmax_backward_rows
    with configured(**config):
        y = forward(x, temperature=temperature, where=where)
        dx = backward(y, grad, temperature=temperature, where=where)
    assert y.dtype == x.dtype and dx.dtype == x.dtype
    assert_close(y, reference(x, where, temperature, log), what="forward", scale=2)

    y64, g64 = y.double().cpu().numpy(), grad.double().cpu().numpy()
    if log:
        keep = np.ones(size, bool) if where is None else where.cpu().numpy()
        expected = sx.log_softmax_grad(y64, np.where(keep, g64, 0.0)) / temperature
        expected = np.where(keep & np.isfinite(y64).any(axis=1, keepdims=True), expected, 0.0)
    else:
        expected = sx.softmax_grad(y64, g64) / temperature
    assert_close(dx, expected, what="backward", scale=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_16bit_accumulates_in_float32(dtype, log):
    x, where = problem((3, 423), dtype, masked=True)
    with configured(block=64):
        y = (sxtt.log_softmax_rows if log else sxtt.softmax_rows)(x, temperature=1.3, where=where)
    assert y.dtype == dtype
    assert_close(y, reference(x, where, 1.3, log), what="forward")


@pytest.mark.skipif(DEVICE == "cpu", reason="a real vocabulary takes minutes in the interpreter")
@pytest.mark.parametrize("classes", [128256, 300000])  # 300000: split with the default configuration
def test_real_vocabularies_match_torch(classes):
    x = torch.randn(32, classes, device=DEVICE, dtype=torch.bfloat16) * 4
    assert_close(sxtt.softmax_rows(x), torch.softmax(x.float(), dim=1), what="softmax")
    assert_close(sxtt.log_softmax_rows(x), torch.log_softmax(x.float(), dim=1), what="log_softmax")


def test_rows_sum_to_one_and_infinities_share_the_mass():
    x = (torch.randn(3, 423) * 3).to(DEVICE)
    x[1, [7, 200, 400]] = float("inf")
    x[2, 10] = float("nan")
    with configured(block=64):
        p = sxtt.softmax_rows(x)
        lp = sxtt.log_softmax_rows(x)
    assert abs(p[0].double().sum().item() - 1.0) < 1e-6
    expected = torch.zeros(423, device=DEVICE)
    expected[[7, 200, 400]] = 1.0 / 3.0
    assert_close(p[1], expected)
    assert_close(lp[1, [7, 200, 400]], torch.full((3,), -np.log(3.0)))
    assert torch.all(lp[1, :7] == float("-inf"))
    assert torch.isnan(p[2]).all() and torch.isnan(lp[2]).all()


def test_regression_temperature_overflowed_before_the_shift():
    x = torch.tensor([[3e38, 2.9e38, 0.0]], device=DEVICE)
    p = sxtt.softmax_rows(x, temperature=0.5)
    lp = sxtt.log_softmax_rows(x, temperature=0.5)
    assert_close(p, torch.tensor([[1.0, 0.0, 0.0]]))
    assert_close(lp[0, :2], torch.tensor([0.0, -0.1e38 / 0.5]))


def test_log_softmax_is_exact_for_a_dominant_class():
    """log p of the dominant class is -log1p(tiny), not 0 (Blanchard, Higham & Higham 2021)."""
    x = torch.tensor([[40.0, 10.0, 11.0]], device=DEVICE)
    lp = sxtt.log_softmax_rows(x)
    exact = -np.log1p(np.exp(-30.0) + np.exp(-29.0))
    assert abs(lp[0, 0].item() - exact) <= 2e-7 * abs(exact)


def test_strided_and_broadcast_inputs():
    wide = torch.randn(4, 300, device=DEVICE)
    x = wide[:, 50:250]  # row stride 300
    where = torch.rand(1, 200, device=DEVICE) > 0.2  # broadcast over rows: stride 0, no copy
    y = sxtt.softmax_rows(x, where=where)
    assert_close(y, reference(x, where.expand(4, 200), 1.0, False))
    xt = x.contiguous().T.contiguous().T  # column stride 4: read through a copy
    assert_close(sxtt.log_softmax_rows(xt), reference(xt, None, 1.0, True))


def test_seam_rejects_wiring_mistakes():
    x = torch.randn(2, 5, device=DEVICE)
    with pytest.raises(TypeError, match="float64"):
        sxtt.softmax_rows(x.double())
    with pytest.raises(ValueError, match=r"\(N, C\) rows"):
        sxtt.softmax_rows(x[0])
    with pytest.raises(ValueError, match="broadcast"):
        sxtt.log_softmax_rows(x, where=torch.ones(3, 5, dtype=torch.bool, device=DEVICE))
    with pytest.raises(TypeError, match="boolean"):
        sxtt.softmax_rows(x, where=torch.ones(2, 5, device=DEVICE))
    with pytest.raises(ValueError, match="grad"):
        sxtt.softmax_backward_rows(x, x[:, :3])


def test_empty():
    empty = torch.empty(0, 5, device=DEVICE)
    assert sxtt.softmax_rows(empty).shape == (0, 5)
    assert sxtt.log_softmax_rows(torch.empty(3, 0, device=DEVICE)).shape == (3, 0)
    assert sxtt.softmax_backward_rows(empty, empty).shape == (0, 5)


# --- the public layer forced onto the kernels ---------------------------------------------------------------

import softxent.torch as sxt  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from softxent._torch import backend  # noqa: E402


@pytest.mark.parametrize("temperature", [0.5, 0.01])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_temperature_after_the_max_shift_never_overflows(name, temperature):
    """Regression: softxent.torch divided x / T before handing rows to the kernels: [0.5, 0.5, 0]."""
    x = torch.tensor([[3e38, 2.9e38, 0.0], [-3e38, 1.0, 0.0]], device=DEVICE)
    with backend.forced("triton"):
        ours = getattr(sxt, name)(x, 1, temperature=temperature)
    with np.errstate(over="ignore"):  # the NumPy layer warns as -6e38 rounds to float32's -inf (its issue)
        spec = getattr(sx, name)(x.cpu().numpy(), 1, temperature=temperature)
    assert_close(ours, spec, dtype="float32")
    if name == "softmax":
        assert torch.equal(ours[0].cpu(), torch.tensor([1.0, 0.0, 0.0]))


FORCED = {"softmax": (lambda x: sxt.softmax(x, 1, temperature=0.7), lambda x: F.softmax(x / 0.7, 1)),
          "log_softmax": (lambda x: sxt.log_softmax(x, -1, temperature=1.3), lambda x: F.log_softmax(x / 1.3, -1))}


@pytest.mark.parametrize("name", list(FORCED))
def test_double_backward_and_torch_func_on_the_kernels(name):
    ours, theirs = FORCED[name]
    g = torch.Generator().manual_seed(5)
    x0, v, u = (torch.randn(3, 4, 6, generator=g).to(DEVICE) for _ in range(3))
    results = []
    with backend.forced("triton"):
        for f in (ours, theirs):
            x = x0.clone().requires_grad_()
            (dx,) = torch.autograd.grad((f(x) * v).sum(), x, create_graph=True)
            (ddx,) = torch.autograd.grad((dx * u).sum(), x)
            results.append((dx.detach(), ddx))
        assert_close(results[0][0], results[1][0], what="first derivative", scale=2)
        assert_close(results[0][1], results[1][1], what="second derivative", scale=4)
        assert_close(torch.func.vmap(ours)(x0), torch.func.vmap(theirs)(x0), what="vmap", scale=2)
        scalar = (lambda f: lambda a: f(a).sin().sum())
        assert_close(torch.func.grad(scalar(ours))(x0[0]), torch.func.grad(scalar(theirs))(x0[0]), what="grad",
                     scale=2)
        assert_close(torch.func.jacrev(ours)(x0[0]), torch.func.jacrev(theirs)(x0[0]), what="jacrev", scale=2)
