"""softxent.torch softmax, log_softmax, logsumexp and hardmax: torch's values, softxent's limits.

Oracles: torch's own functions on ordinary rows; the NumPy layer (the spec) for masked rows, +inf rows,
`where` and temperature; gradcheck in float64 with a random upstream gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softxent as sx
import softxent.torch as sxt
from compare import assert_close

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
    assert_close(sxt.softmax(x), sx.softmax(x.numpy()), dtype="float64")
    assert_close(sxt.log_softmax(x), sx.log_softmax(x.numpy()), dtype="float64")
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
    assert torch.isnan(sxt.softmax(x)[0]).all() and torch.isnan(sxt.logsumexp(x)[0])
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
        return sxt.softmax(x).sum() + sxt.log_softmax(x, 0)[0, 0] + sxt.logsumexp(x).sum()

    x = _special_rows().float()
    x[1] = 0.0  # no infinities in the compiled check's values; the op handles them at run time
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.compile(f, fullgraph=True, dynamic=False)(xc).backward()
    f(xe).backward()
    assert_close(xc.grad, xe.grad, dtype="float32")


def test_bad_arguments():
    with pytest.raises(TypeError, match="input must have a real floating-point dtype"):
        sxt.softmax(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sxt.softmax(torch.zeros(3), temperature=0.0)
    with pytest.raises(ValueError, match="dim 2 is out of range"):
        sxt.log_softmax(torch.zeros(3, 4), 2)
    with pytest.raises(TypeError, match="where must be a boolean tensor"):
        sxt.softmax(torch.zeros(3), where=torch.ones(3))
    with pytest.raises(ValueError, match="does not broadcast"):
        sxt.logsumexp(torch.zeros(3, 4), where=torch.ones(5, dtype=torch.bool))
    np.testing.assert_allclose(sxt.softmax(torch.tensor([1.0, 2.0, 3.0])).numpy(), [0.09003057, 0.24472847,
                                                                                    0.66524096], rtol=1e-6)
