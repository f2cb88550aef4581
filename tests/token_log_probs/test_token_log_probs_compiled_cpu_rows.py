"""The compiled CPU token log-prob kernels (cpu_rows.c) against mpmath and against the torch-op path they replace.

`torch_cpu.token_forward_rows` and `token_backward_rows` send float32 and bfloat16 logits without a softcap
to the compiled kernels and everything else to torch ops; the two must agree on every option, layout and
special row (the kernels hand rows whose max is not finite, or that hold a NaN, back to the torch-op path).
These tests call the row kernels themselves, toggling the module's `_cpu_rows` for the torch-op path.
"""

import math

import mpmath
import numpy as np
import pytest
import torch

import adversarial
from compare import ulp_error
from row_kernels import row_kernel
from softxent._options import LossOptions
from softxent.ops.token_log_probs import torch_cpu


def test_the_compiled_kernel_is_built():
    # setup.py makes the extension optional (a machine without a C compiler still installs softxent);
    # a development install has gcc, and without the kernel every test below would test the other path
    assert torch_cpu._cpu_rows is not None, "softxent.ops.token_log_probs._cpu_rows was not built: `pip install -e .`"


def _forward_backward(logits, labels, options, g, hg, *, compiled: bool, entropy: bool, inplace: bool = False):
    with row_kernel(torch_cpu, compiled):
        lp, h, stats = torch_cpu.token_forward_rows(logits, labels, options, entropy=entropy)
        logits = logits.clone() if inplace else logits
        out = logits if inplace else torch.empty_like(logits)
        torch_cpu.token_backward_rows(logits, labels, options, lp, stats, g.to(lp.dtype),
                                      None if hg is None else hg.to(lp.dtype), out)
        return lp, h, stats, out


# --- exactness: the adversarial rows, float32, against mpmath ------------------------------------------


def _exact_entropy(case) -> mpmath.mpf:
    """H = sum_j p_j (-log p_j) over the distinct values (a long row holds 4096 of them)."""
    values, counts = np.unique(case.logits, return_counts=True)
    with mpmath.workdps(adversarial.DIGITS):
        total = mpmath.mpf(0)
        for value, count in zip(values, counts):
            if np.isfinite(value):
                log_p = case.exact_log_softmax_of(float(value))
                total += int(count) * mpmath.exp(log_p) * -log_p
        return total


def _worst_gradient_ulps(case, grad: np.ndarray) -> float:
    """The gradient of log p_t (g = 1): -p_j, and the target's 1 - p_t = -expm1(log p_t); entries holding
    one value share its exact gradient, so the extremes of each group are checked."""
    target_value = float(case.logits[case.target])
    with mpmath.workdps(adversarial.DIGITS):
        exact_target = -mpmath.expm1(case.exact_log_softmax_of(target_value))
    worst = float(ulp_error(grad[case.target:case.target + 1], [exact_target]).max())
    others = np.delete(np.arange(len(grad)), case.target)
    values, inverse = np.unique(case.logits[others], return_inverse=True)
    lowest = np.full(values.shape, np.inf, dtype=grad.dtype)
    highest = np.full(values.shape, -np.inf, dtype=grad.dtype)
    np.minimum.at(lowest, inverse, grad[others])
    np.maximum.at(highest, inverse, grad[others])
    with mpmath.workdps(adversarial.DIGITS):
        exact = [-mpmath.exp(case.exact_log_softmax_of(float(v))) if np.isfinite(v) else mpmath.mpf(0) for v in values]
    return max(worst, float(ulp_error(lowest, exact).max()), float(ulp_error(highest, exact).max()))


@pytest.mark.parametrize("case", adversarial.cases("float32"), ids=lambda case: case.name)
def test_compiled_log_prob_entropy_and_gradient_are_within_ulps_of_mpmath(case):
    logits = torch.from_numpy(case.logits).unsqueeze(0)
    labels = torch.tensor([case.target])
    lp, h, _, grad = _forward_backward(logits, labels, LossOptions(), torch.ones(1), None, compiled=True,
                                       entropy=True)
    assert ulp_error(lp.float().numpy(), [-case.exact_loss()]).max() <= 2.0
    assert ulp_error(h.float().numpy(), [_exact_entropy(case)]).max() <= 2.0
    assert _worst_gradient_ulps(case, grad[0].numpy()) <= 4.0


# --- agreement with the torch-op path ----------------------------------------------------------------


def _problem(dtype, layout, rows=37, classes=301):
    g = torch.Generator().manual_seed(11)
    if layout == "strided":  # rows of a transposed buffer: the classes strided
        logits = (torch.randn(classes, rows, generator=g) * 6).to(dtype).t()
    else:
        logits = (torch.randn(rows, classes, generator=g) * 6).to(dtype)
    labels = torch.randint(0, classes, (rows,), generator=g)
    labels[::5] = -100  # ignored rows
    labels[1] = int(logits[1].float().argmax())  # a target holding the max: log1p(rest)
    logits[2, 10] = -math.inf  # a masked class
    logits[3] = -math.inf  # a fully masked row: handed back to the torch-op path
    logits[4, 7] = math.inf  # a row holding +inf: likewise
    logits[6, 8] = math.nan  # a NaN row: likewise
    logits[8, labels[8]] = -math.inf  # a masked target: lp = -inf, its gradient g
    logits[10, 3] = math.nan  # a NaN in an ignored row: its gradient is 0 all the same
    upstream = torch.randn(rows, generator=g, dtype=torch.float64)
    upstream_entropy = torch.randn(rows, generator=g, dtype=torch.float64)
    return logits, labels, upstream, upstream_entropy


def _assert_agree(what, a, b, dtype):
    a, b = a.double().numpy(), b.double().numpy()
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    # float32 logits: both work in float64 and round once, each within about 1 ulp of exact, 2 of float32
    # apart. bfloat16 logits: the torch-op path works in float32, where exp of a rounded d is off |d| 2^-24
    # (|d| up to 50 here: 2^-18.6), the kernel in float64; their float32 lp, h and stats agree to 2^-17,
    # their bfloat16 gradients (each rounded once) to 1 bfloat16 ulp
    if dtype == torch.float32:
        ulp = 2.0 ** -23
    else:
        ulp = 2.0 ** -7 if what == "grad" else 2.0 ** -18
    allowed = 2 * ulp * np.maximum(np.abs(a), np.abs(b)) + np.finfo(np.float32).tiny
    with np.errstate(invalid="ignore"):
        bad = ~same & ~(np.abs(a - b) <= allowed)
    assert not bad.any(), f"{what}: {int(bad.sum())} entries differ, first at {np.argwhere(bad)[0]}"


OPTIONS = {
    "plain": dict(entropy=False),
    "entropy": dict(entropy=True),
    "entropy-temperature": dict(entropy=True, temperature=0.7),
    "temperature": dict(entropy=False, temperature=1.9),
    "entropy-only-upstream": dict(entropy=True, only_entropy=True),
    "ignore-index-7": dict(entropy=True, ignore_index=7),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "in-place"])
@pytest.mark.parametrize("name", OPTIONS)
def test_compiled_rows_agree_with_the_torch_op_path(dtype, layout, name):
    logits, labels, g, hg = _problem(dtype, layout)
    options = dict(OPTIONS[name])
    entropy = options.pop("entropy")
    if options.pop("only_entropy", False):
        g = torch.zeros_like(g)
    if "ignore_index" in options:
        labels = torch.where(labels == -100, options["ignore_index"], labels)
    opts = LossOptions(**options)
    hg = hg if entropy else None
    inplace = layout == "in-place"
    ours = _forward_backward(logits, labels, opts, g, hg, compiled=True, entropy=entropy, inplace=inplace)
    theirs = _forward_backward(logits, labels, opts, g, hg, compiled=False, entropy=entropy, inplace=inplace)
    for what, a, b in zip(("lp", "h", "stats", "grad"), ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        _assert_agree(what, a, b, dtype)


def test_softcap_and_other_dtypes_take_the_torch_op_path(monkeypatch):
    calls = []
    real = torch_cpu._run_compiled
    monkeypatch.setattr(torch_cpu, "_run_compiled", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(4, 9)
    labels = torch.tensor([0, 1, 2, 3])
    torch_cpu.token_forward_rows(x, labels, LossOptions(softcap=5.0), entropy=True)
    torch_cpu.token_forward_rows(x.double(), labels, LossOptions(), entropy=True)
    torch_cpu.token_forward_rows(x.half(), labels, LossOptions(), entropy=True)
    assert not calls
    torch_cpu.token_forward_rows(x, labels, LossOptions(temperature=2.0), entropy=True)
    assert calls
