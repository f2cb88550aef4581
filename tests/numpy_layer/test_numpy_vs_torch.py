"""The NumPy layer against torch as an oracle: losses and gradients over the option grid torch supports.

torch computes in the input's dtype (float32 in float32, accumulating in float32), so each comparison is
made in that dtype with the table's tolerance; softxent's float32 results are closer to the exact value
than torch's (see the exactness suite), which is why float32 allows a few of torch's own roundings.
Where the contract departs from torch (all targets ignored with "mean": 0, not NaN) the grid avoids it;
tests/test_numpy_semantics.py pins those cases.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import softxent as sx
from compare import assert_close

torch = pytest.importorskip("torch")
F = torch.nn.functional

# float32: torch's float32 log-softmax and reduction carry a few ulp of their own
SCALE = {"float64": 1, "float32": 4, "float16": 1}
DTYPES = {"float32": (np.float32, torch.float32), "float64": (np.float64, torch.float64)}


def _t(a, dtype=None):
    tensor = torch.from_numpy(np.array(a))  # a copy; np.array keeps 0-d targets 0-d
    return tensor if dtype is None else tensor.to(dtype)


# --- cross_entropy: the grid ------------------------------------------------------------------------------

# shapes: (C,) single sample, (N, C), odd (N, C) with a real vocabulary's awkward size, (N, C, d1, d2)
SHAPES = {"1d": (7,), "2d": (9, 7), "odd": (3, 423), "kdim": (2, 7, 3, 2)}
IGNORES = {"none": None, "default -100": -100, "inside range": 3}


def _grid():
    for shape, targets, ignore, weight, smoothing, reduction, dtype in itertools.product(
            SHAPES, ("index", "probs"), IGNORES, (False, True), (0.0, 0.15), ("none", "mean", "sum"), DTYPES):
        if targets == "probs" and ignore != "none":
            continue  # ignore_index does not apply to probability targets
        if shape == "1d" and ignore != "none":
            continue  # one sample: ignoring it is the all-ignored case, where torch gives NaN
        if shape == "odd" and (weight or smoothing or dtype == "float32"):
            continue  # the long row is there for the summation, not for every option again
        yield pytest.param(shape, targets, ignore, weight, smoothing, reduction, dtype,
                           id=f"{shape}-{targets}-ignore {ignore}-{'w' if weight else 'no w'}-ls{smoothing}-"
                              f"{reduction}-{dtype}")


def _ce_inputs(shape_name, targets, ignore, seed=0):
    rng = np.random.default_rng(seed)
    shape = SHAPES[shape_name]
    x = rng.normal(scale=2.0, size=shape)
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    batch = () if len(shape) == 1 else (shape[0],) + shape[2:]
    if targets == "probs":
        raw = rng.random(shape) ** 2
        axis = 0 if len(shape) == 1 else 1
        return x, raw / raw.sum(axis=axis, keepdims=True), num_classes
    t = rng.integers(0, num_classes, size=batch)
    if IGNORES[ignore] == -100:
        t.flat[::3] = -100
    return x, t, num_classes


@pytest.mark.parametrize("shape,targets,ignore,weight,smoothing,reduction,dtype", list(_grid()))
def test_cross_entropy_matches_torch(shape, targets, ignore, weight, smoothing, reduction, dtype):
    np_dtype, torch_dtype = DTYPES[dtype]
    x, t, num_classes = _ce_inputs(shape, targets, ignore)
    x = x.astype(np_dtype)
    if targets == "probs":
        t = t.astype(np_dtype)
    w = np.linspace(0.25, 2.0, num_classes) if weight else None
    ignore_index = -100 if IGNORES[ignore] is None else IGNORES[ignore]
    axis = 0 if x.ndim == 1 else 1  # torch's class axis

    loss, grad = sx.cross_entropy(x, t, axis=axis, weight=w, ignore_index=ignore_index, reduction=reduction,
                                  label_smoothing=smoothing, return_grad=True)

    tx = _t(x).requires_grad_(True)
    tt = _t(t)
    tw = None if w is None else _t(w, torch_dtype)
    ref = F.cross_entropy(tx, tt, weight=tw, ignore_index=ignore_index, reduction=reduction,
                          label_smoothing=smoothing)
    ref.sum().backward()  # "none": the gradient of the sum, as return_grad defines it
    assert loss.dtype == np_dtype and grad.dtype == np_dtype
    assert_close(loss, ref, dtype=dtype, scale=SCALE[dtype], what="loss")
    assert_close(grad, tx.grad, dtype=dtype, scale=SCALE[dtype], what="grad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_half_inputs_match_torch_computed_wider(dtype):
    """float16 logits: softxent accumulates wider and rounds once, as torch's float32 result rounded."""
    x, t, _ = _ce_inputs("2d", "index", "default -100", seed=5)
    x16 = x.astype(np.float16)
    loss, grad = sx.cross_entropy(x16, t, label_smoothing=0.1, return_grad=True)
    tx = _t(x16.astype(DTYPES[dtype][0])).requires_grad_(True)
    ref = F.cross_entropy(tx, _t(t), label_smoothing=0.1)
    ref.backward()
    assert loss.dtype == grad.dtype == np.float16
    assert_close(loss, ref.to(torch.float16), dtype="float16")
    assert_close(grad, tx.grad.to(torch.float16), dtype="float16")


# --- softmax, log_softmax, logsumexp -------------------------------------------------------------------

# tiny, odd, a real vocabulary row, and a 3-D array reduced along each axis
TENSORS = {"tiny": (3,), "odd": (3, 423), "vocab": (2, 32000), "3d": (2, 3, 5)}


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("shape", TENSORS)
def test_softmax_family_matches_torch(shape, dtype):
    """float16: against torch computed in float32 on the same float16 inputs and rounded to float16
    (torch's own half logsumexp rounds max and log-sum separately and is off by an ulp of the max)."""
    rng = np.random.default_rng(7)
    np_dtype = {"float64": np.float64, "float32": np.float32, "float16": np.float16}[dtype]
    x = rng.normal(scale=3.0, size=TENSORS[shape]).astype(np_dtype)
    tx = _t(x).float() if dtype == "float16" else _t(x)

    def oracle(result):
        return result.to(torch.float16) if dtype == "float16" else result

    for axis in range(-x.ndim, x.ndim):
        for temperature in (1.0, 0.5):
            assert_close(sx.softmax(x, axis=axis, temperature=temperature),
                         oracle(torch.softmax(tx / temperature, axis)),
                         dtype=dtype, scale=SCALE[dtype], what=f"softmax axis={axis} T={temperature}")
        assert_close(sx.log_softmax(x, axis=axis), oracle(torch.log_softmax(tx, axis)), dtype=dtype,
                     scale=SCALE[dtype], what=f"log_softmax axis={axis}")
        for keepdims in (False, True):
            assert_close(sx.logsumexp(x, axis=axis, keepdims=keepdims), oracle(torch.logsumexp(tx, axis, keepdims)),
                         dtype=dtype, scale=SCALE[dtype], what=f"logsumexp axis={axis}")


def test_logsumexp_over_several_axes_matches_torch():
    x = np.random.default_rng(8).normal(size=(2, 3, 4, 5))
    for axis in ((0, 2), (1, 3), (0, 1, 2, 3)):
        for keepdims in (False, True):
            assert_close(sx.logsumexp(x, axis=axis, keepdims=keepdims), torch.logsumexp(_t(x), axis, keepdims))
    assert_close(sx.logsumexp(x, axis=None), torch.logsumexp(_t(x).flatten(), 0))


def test_masked_and_infinite_rows_against_torch_where_torch_agrees():
    """torch agrees on -inf entries in an otherwise finite row and on log_softmax's -inf; on fully masked
    rows torch's softmax is NaN, where the contract says zeros (pinned in the semantics tests)."""
    x = np.array([[1.0, -np.inf, 3.0, -np.inf], [0.0, 0.0, -np.inf, 2.0]])
    assert_close(sx.softmax(x), torch.softmax(_t(x), -1))
    assert_close(sx.log_softmax(x), torch.log_softmax(_t(x), -1))
    assert_close(sx.logsumexp(x), torch.logsumexp(_t(x), -1))
    assert_close(sx.cross_entropy(x, [0, 3]), F.cross_entropy(_t(x), _t(np.array([0, 3]))))


# --- linear_cross_entropy ------------------------------------------------------------------------------


def _lce_grid():
    for targets, weight, ignore, smoothing, reduction, bias, dtype in itertools.product(
            ("index", "probs"), (False, True), (False, True), (0.0, 0.1), ("none", "mean", "sum"), (False, True),
            DTYPES):
        if targets == "probs" and ignore:
            continue
        yield pytest.param(targets, weight, ignore, smoothing, reduction, bias, dtype,
                           id=f"{targets}-{'w' if weight else 'no w'}-{'ign' if ignore else 'no ign'}-ls{smoothing}-"
                              f"{reduction}-{'b' if bias else 'no b'}-{dtype}")


@pytest.mark.parametrize("targets,weight,ignore,smoothing,reduction,bias,dtype", list(_lce_grid()))
def test_linear_cross_entropy_matches_torch(targets, weight, ignore, smoothing, reduction, bias, dtype):
    """Against x @ w.T + b then F.cross_entropy, with autograd's dx, dw, dbias; 11 rows in chunks of 4."""
    np_dtype, torch_dtype = DTYPES[dtype]
    rng = np.random.default_rng(9)
    n, d, v = 11, 6, 13
    x = rng.normal(size=(n, d)).astype(np_dtype)
    w = (rng.normal(size=(v, d)) / np.sqrt(d)).astype(np_dtype)
    b = rng.normal(size=v).astype(np_dtype) if bias else None
    if targets == "probs":
        raw = rng.random((n, v)) ** 2
        t = (raw / raw.sum(axis=1, keepdims=True)).astype(np_dtype)
    else:
        t = rng.integers(0, v, size=n)
        if ignore:
            t[[1, 5, 6]] = -100
    cw = np.linspace(0.5, 1.5, v) if weight else None
    loss, (dx, dw, db) = sx.linear_cross_entropy(x, w, t, bias=b, weight=cw, reduction=reduction,
                                                 label_smoothing=smoothing, chunk_size=4, return_grad=True)

    tx, tw = _t(x).requires_grad_(True), _t(w).requires_grad_(True)
    tb = None if b is None else _t(b).requires_grad_(True)
    logits = tx @ tw.T + (0 if tb is None else tb)
    ref = F.cross_entropy(logits, _t(t), weight=None if cw is None else _t(cw, torch_dtype), reduction=reduction,
                          label_smoothing=smoothing)
    ref.sum().backward()
    # the logits' own rounding in float32 feeds every later step: allow a few more ulp
    scale = SCALE[dtype] * (4 if dtype == "float32" else 1)
    assert loss.dtype == dx.dtype == dw.dtype == np_dtype
    assert_close(loss, ref, dtype=dtype, scale=scale, what="loss")
    assert_close(dx, tx.grad, dtype=dtype, scale=scale, what="dx")
    assert_close(dw, tw.grad, dtype=dtype, scale=scale, what="dw")
    if bias:
        assert_close(db, tb.grad, dtype=dtype, scale=scale, what="dbias")
    else:
        assert db is None


@pytest.mark.skipif(not hasattr(F, "linear_cross_entropy"), reason="torch without F.linear_cross_entropy")
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_linear_cross_entropy_matches_torchs_own(reduction):
    """torch's F.linear_cross_entropy, whose keyword names the contract borrows (its ignore_index
    defaults to None, so it is passed explicitly)."""
    rng = np.random.default_rng(10)
    x, w, b = rng.normal(size=(2, 5, 4)), rng.normal(size=(9, 4)), rng.normal(size=9)
    t = rng.integers(0, 9, size=(2, 5))
    t[0, 1] = -100
    cw = np.linspace(0.5, 1.5, 9)
    got = sx.linear_cross_entropy(x, w, t, bias=b, weight=cw, reduction=reduction, label_smoothing=0.1)
    # torch's takes (N, D) inputs only: flatten the batch dimensions, and unflatten "none"
    ref = F.linear_cross_entropy(_t(x.reshape(-1, 4)), _t(w), _t(t.reshape(-1)), linear_bias=_t(b), weight=_t(cw),
                                 reduction=reduction, ignore_index=-100, label_smoothing=0.1)
    assert_close(got, ref.reshape(t.shape) if reduction == "none" else ref)
