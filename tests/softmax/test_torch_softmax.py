"""softxent.torch softmax, log_softmax, logsumexp and hardmax: torch's values, softxent's limits.

Oracles: torch's own functions in float64 on ordinary rows; the NumPy layer (the spec) for masked rows,
+inf rows, `where` and temperature; mpmath (tests/adversarial.py) for exactness; gradcheck and
gradgradcheck in float64 with a random upstream gradient; torch's own double backward, torch.func and
autocast dtypes. The same through the Triton kernels: tests/test_triton_softmax.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softxent as sx
import softxent.torch as sxt
import torch.nn.functional as F
from adversarial import cases
from compare import assert_close, ulp_error

INF = float("inf")


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_matches_torch_on_ordinary_rows(dtype, dim):
    x = (torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3).to(
        getattr(torch, dtype))
    x64 = x.double()  # torch in float64 on the same values: torch's float32 log_softmax is off by ~2 ulp
    assert_close(sxt.softmax(x, dim), torch.softmax(x64, dim), dtype=dtype)
    assert_close(sxt.log_softmax(x, dim), torch.log_softmax(x64, dim), dtype=dtype)
    assert_close(sxt.logsumexp(x, dim), torch.logsumexp(x64, dim), dtype=dtype)
    assert_close(sxt.logsumexp(x, (0, 2), keepdim=True), torch.logsumexp(x64, (0, 2), keepdim=True), dtype=dtype)
    assert sxt.softmax(x, dim).dtype == sxt.log_softmax(x, dim).dtype == sxt.logsumexp(x, dim).dtype == x.dtype


def _special_rows():
    x = torch.tensor([[1.0, 2.0, 3.0, 0.5],
                      [-INF, -INF, -INF, -INF],  # fully masked
                      [INF, 0.0, INF, -INF],  # two +inf entries share the mass
                      [-INF, 2.0, -INF, 1.0]], dtype=torch.float64)
    return x


def test_limits_match_the_numpy_layer():
    x = _special_rows()
    assert_close(sxt.softmax(x, -1), sx.softmax(x.numpy()), dtype="float64")
    assert_close(sxt.log_softmax(x, -1), sx.log_softmax(x.numpy()), dtype="float64")
    assert_close(sxt.logsumexp(x), sx.logsumexp(x.numpy(), axis=-1), dtype="float64")
    assert torch.isnan(torch.softmax(x, -1)[1]).all()  # what torch does instead


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_gradients_of_special_rows_are_zero_not_nan(name):
    x = _special_rows().requires_grad_()
    out = getattr(sxt, name)(x, -1)
    out = torch.where(torch.isfinite(out), out, 0.0)
    (out * torch.randn(out.shape, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[1], torch.zeros(4, dtype=torch.float64))
    if name != "logsumexp":  # a +inf row is constant: zero gradient
        assert torch.equal(x.grad[2], torch.zeros(4, dtype=torch.float64))


def test_nan_propagates():
    x = torch.tensor([[1.0, float("nan"), 0.0], [1.0, 2.0, 3.0]])
    assert torch.isnan(sxt.softmax(x, 1)[0]).all() and torch.isnan(sxt.logsumexp(x)[0])
    assert torch.isnan(sxt.hardmax(x)[0]).all() and torch.equal(sxt.hardmax(x)[1], torch.tensor([0.0, 0.0, 1.0]))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_where_and_temperature_match_numpy(name):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64)
    where = torch.rand(3, 5, generator=g) > 0.3
    where[1] = False  # a row masked entirely by where
    ours = getattr(sxt, name)(x, 1, temperature=0.7, where=where)
    theirs = getattr(sx, name)(x.numpy(), 1, temperature=0.7, where=where.numpy())
    assert_close(ours, theirs, dtype="float64")


def test_logsumexp_where():
    x = torch.randn(3, 5, dtype=torch.float64)
    where = torch.tensor([True, False, True, True, False])
    assert_close(sxt.logsumexp(x, where=where), sx.logsumexp(x.numpy(), where=where.numpy()), dtype="float64")


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_gradcheck_float64(name):
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    kwargs = {"temperature": 1.3} if name != "logsumexp" else {}
    assert torch.autograd.gradcheck(lambda a: getattr(sxt, name)(a, 1, **kwargs), (x,))


def test_hardmax_first_maximum():
    x = torch.tensor([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]])
    assert torch.equal(sxt.hardmax(x), torch.from_numpy(sx.hardmax(x.numpy())))
    assert torch.equal(sxt.hardmax(x, 0), torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))
    assert sxt.hardmax(x).grad_fn is None


def test_compile_fullgraph():
    torch._dynamo.reset()

    def f(x):
        return sxt.softmax(x, 1).sum() + sxt.log_softmax(x, 0)[0, 0] + sxt.logsumexp(x).sum()

    x = _special_rows().float()
    x[1] = 0.0  # no infinities in the compiled check's values; the op handles them at run time
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.compile(f, fullgraph=True, dynamic=False)(xc).backward()
    f(xe).backward()
    assert_close(xc.grad, xe.grad, dtype="float32")


def test_bad_arguments():
    with pytest.raises(TypeError, match="input must have a real floating-point dtype"):
        sxt.softmax(torch.tensor([1, 2]), 0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sxt.softmax(torch.zeros(3), 0, temperature=0.0)
    with pytest.raises(ValueError, match="dim 2 is out of range"):
        sxt.log_softmax(torch.zeros(3, 4), 2)
    with pytest.raises(TypeError, match="where must be a boolean tensor"):
        sxt.softmax(torch.zeros(3), 0, where=torch.ones(3))
    with pytest.raises(ValueError, match="does not broadcast"):
        sxt.logsumexp(torch.zeros(3, 4), where=torch.ones(5, dtype=torch.bool))
    np.testing.assert_allclose(sxt.softmax(torch.tensor([1.0, 2.0, 3.0]), 0).numpy(), [0.09003057, 0.24472847,
                                                                                    0.66524096], rtol=1e-6)


# --- the temperature comes after the max shift (issue 10) -------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 0.01])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_temperature_after_the_max_shift_never_overflows(name, temperature):
    """Regression: x / T before the shift made 3e38 / 0.5 = inf, and [3e38, 2.9e38, 0] gave [0.5, 0.5, 0]."""
    x = torch.tensor([[3e38, 2.9e38, 0.0], [-3e38, 1.0, 0.0]])
    ours = getattr(sxt, name)(x, 1, temperature=temperature)
    with np.errstate(over="ignore"):  # the NumPy layer warns as -6e38 rounds to float32's -inf (its issue)
        spec = getattr(sx, name)(x.numpy(), 1, temperature=temperature)
    assert_close(ours, spec, dtype="float32")
    assert torch.isfinite(ours[0, 0] if name == "log_softmax" else ours).all()
    if name == "softmax":
        assert torch.equal(ours[0], torch.tensor([1.0, 0.0, 0.0]))


# --- exactness (API.md rule 11) against mpmath ----------------------------------------------------------------

BOUND = {"float32": 2.0, "float64": 4.0}
CASES = {dtype: cases(dtype) for dtype in BOUND}
EXACT = [pytest.param(dtype, case, id=f"{dtype}-{case.name}") for dtype in BOUND for case in CASES[dtype]]


@pytest.mark.parametrize("dtype, case", EXACT)
def test_log_softmax_and_logsumexp_are_exact(dtype, case):
    x = torch.from_numpy(case.logits)
    lse = sxt.logsumexp(x, 0)
    assert lse.dtype == x.dtype
    error = ulp_error(lse.numpy()[None], [case.exact_lse()])
    assert error.max() <= BOUND[dtype], f"logsumexp {case.name}: {error.max():.2f} ulp"
    result = sxt.log_softmax(x, 0).numpy()
    values, error = case.log_softmax_ulp_errors(result)
    assert error.max() <= BOUND[dtype], f"log_softmax {case.name}: {error.max():.2f} ulp at {values[error.argmax()]!r}"


def test_dominant_class_log_softmax_is_not_rounded_to_zero():
    """Regression: torch's log(1 + 3e-40-ish) is 0; the exact value is -log1p(3 e^-40) = -1.2745e-17."""
    x = torch.tensor([40.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.log_softmax(x, 0)[0] == 0.0  # torch's
    assert sxt.log_softmax(x, 0)[0].item() == pytest.approx(-np.log1p(3 * np.exp(-40.0)), rel=1e-15)
    assert sxt.logsumexp(x.float(), 0).item() == 40.0


def test_masked_entries_under_a_temperature_are_exact():
    import mpmath

    x = torch.tensor([[2.5, -INF, 0.25, -INF, -3.0]], dtype=torch.float64)
    y = sxt.log_softmax(x, 1, temperature=0.3).numpy()[0]
    with mpmath.workdps(50):
        z = [mpmath.mpf(2.5) / mpmath.mpf(0.3), mpmath.mpf(0.25) / mpmath.mpf(0.3), mpmath.mpf(-3.0) / mpmath.mpf(0.3)]
        # the exact result of (x - max x) / T for the float64 T = 0.3
        lse = mpmath.log(sum(mpmath.exp(v - z[0]) for v in z))
        exact = [z[0] - z[0] - lse, mpmath.mpf("-inf"), z[1] - z[0] - lse, mpmath.mpf("-inf"), z[2] - z[0] - lse]
    assert ulp_error(y, exact).max() <= 4.0


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_log_softmax_exact_on_both_sides_of_the_native_margin(num_classes):
    """float32 log_softmax takes torch's float64 kernel only while every row's largest log-probability is
    <= -C 2^-26 (FLOAT64_LOG_SOFTMAX_MARGIN), where that kernel is exact; a more dominant class takes the
    log1p form. Either side: every entry within 2 ulp of mpmath's."""
    from adversarial import Case
    from softxent.ops.softmax.torch import FLOAT64_LOG_SOFTMAX_MARGIN

    rng = np.random.default_rng(num_classes)
    for k in (0.5, 0.9, 1.1, 4.0):  # -log p_max as a multiple of the margin
        logits = (rng.standard_normal(num_classes) * 0.01).astype(np.float32)
        logits[0] += np.float32(np.log((num_classes - 1) / (k * num_classes * FLOAT64_LOG_SOFTMAX_MARGIN)))
        case = Case(f"dominant-{k}", logits, 0)
        result = sxt.log_softmax(torch.from_numpy(logits), 0).numpy()
        error = ulp_error(result, [case.exact_log_softmax_of(float(v)) for v in logits])
        assert error.max() <= 2.0, f"k={k}: {error.max():.2f} ulp at {int(error.argmax())}"


def test_long_float32_rows_accumulate_exactly():
    """torch accumulates float32 in float32: its error grows with the row length; ours does not."""
    row = next(c for c in CASES["float32"] if c.name == "long-row")
    x = torch.from_numpy(row.logits)
    assert ulp_error(sxt.logsumexp(x, 0).numpy()[None], [row.exact_lse()]).max() <= 1.0


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_16bit_is_computed_in_float32_and_rounded_once(name):
    x = (torch.randn(6, 50, generator=torch.Generator().manual_seed(3)) * 4).bfloat16()
    out = getattr(sxt, name)(x, 1)
    assert out.dtype == torch.bfloat16
    reference = getattr(torch, name)(x.double(), 1).bfloat16()  # the exact value, rounded once
    assert (out.float() - reference.float()).abs().max() <= (reference.float().abs() * 2 ** -8).max()


# --- torch's signature and what torch does with these functions (issue 11) ---------------------------------


@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_implicit_dim_is_torchs_with_its_warning(name, ndim):
    x = torch.randn([3] * ndim, dtype=torch.float64)
    with pytest.warns(UserWarning, match="Implicit dimension choice") as ours:
        out = getattr(sxt, name)(x)
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        expected = getattr(F, name)(x)
    assert_close(out, expected, dtype="float64")
    assert ours[0].filename == __file__  # _stacklevel points at the caller, as torch's


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_positional_arguments_and_dtype_as_torch(name):
    x = torch.randn(4, 7)
    out = getattr(sxt, name)(x, 1, 3, torch.float64)
    assert out.dtype == torch.float64
    assert_close(out, getattr(F, name)(x, 1, 3, torch.float64), dtype="float64")
    assert getattr(sxt, name)(x.double(), 1, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_autocast_output_dtypes_as_torch(dtype):
    x = torch.randn(4, 7).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sxt.softmax(x, 1).dtype == F.softmax(x, 1).dtype
        assert sxt.log_softmax(x, 1).dtype == F.log_softmax(x, 1).dtype
        assert sxt.logsumexp(x, 1).dtype == torch.logsumexp(x, 1).dtype


FUNCS = {"softmax": (lambda x: sxt.softmax(x, 1, temperature=0.7), lambda x: F.softmax(x / 0.7, 1)),
         "log_softmax": (lambda x: sxt.log_softmax(x, 1, temperature=1.3), lambda x: F.log_softmax(x / 1.3, 1)),
         "logsumexp": (lambda x: sxt.logsumexp(x, 1), lambda x: torch.logsumexp(x, 1))}


@pytest.mark.parametrize("name", list(FUNCS))
def test_gradgradcheck_float64(name):
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(FUNCS[name][0], (x,))


@pytest.mark.parametrize("name", list(FUNCS))
def test_double_backward_matches_torch(name):
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(4, 6, generator=g, dtype=torch.float64)
    v = torch.randn(4, 6 if name != "logsumexp" else 1, generator=g, dtype=torch.float64).squeeze(-1)
    u = torch.randn(4, 6, generator=g, dtype=torch.float64)
    results = []
    for f in FUNCS[name]:
        x = x0.clone().requires_grad_()
        (dx,) = torch.autograd.grad((f(x) * v).sum(), x, create_graph=True)
        (ddx,) = torch.autograd.grad((dx * u).sum(), x)
        results.append((dx.detach(), ddx))
    assert_close(results[0][0], results[1][0], dtype="float64", what="first derivative")
    assert_close(results[0][1], results[1][1], dtype="float64", what="second derivative")


@pytest.mark.parametrize("name", list(FUNCS))
def test_torch_func_grad_vmap_jacrev(name):
    ours, theirs = FUNCS[name]
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    assert_close(torch.func.vmap(ours)(x), torch.func.vmap(theirs)(x), dtype="float64", what="vmap")
    scalar = (lambda f: lambda a: f(a).sin().sum())
    assert_close(torch.func.grad(scalar(ours))(x[0]), torch.func.grad(scalar(theirs))(x[0]), dtype="float64",
                 what="grad")
    assert_close(torch.func.jacrev(ours)(x[0]), torch.func.jacrev(theirs)(x[0]), dtype="float64", what="jacrev")
    assert_close(torch.func.vmap(torch.func.jacrev(ours))(x), torch.func.vmap(torch.func.jacrev(theirs))(x),
                 dtype="float64", what="vmap(jacrev)")


def test_compile_dynamic_fullgraph_without_a_recompile_per_size():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def f(x):
        return (sxt.softmax(x, 1, temperature=0.5).sum() + sxt.log_softmax(x, -1)[:, 0].sum()
                + sxt.logsumexp(x, 1).sum())

    compiled = torch.compile(f, backend=counter, dynamic=True, fullgraph=True)
    counts = []
    for rows, classes in [(3, 5), (7, 11), (16, 9), (5, 130)]:
        x = torch.randn(rows, classes)
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        compiled(xc).backward()
        f(xe).backward()
        assert_close(xc.grad, xe.grad, dtype="float32")
        counts.append(counter.frame_count)
    assert counts == [counts[0]] * 4, f"frames compiled after each size: {counts}"  # compiled once, for every size
