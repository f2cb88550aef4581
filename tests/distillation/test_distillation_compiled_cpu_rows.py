"""The compiled CPU distillation kernel (cpu_rows.c) against mpmath and against the torch-op path it replaces.

`torch_cpu.distill_rows` sends float32 and bfloat16 logits to the compiled kernel and everything else to
torch ops; the two must agree on every divergence, option, layout and special row (the kernel hands rows
holding a NaN or a +inf back to the torch-op path). The kernel works float32 logits in float64 and the
torch-op path in float32 (a few ulp off), so the torch-op path is run on float64 copies of the same
logits (the same rules, exact far below a float32 ulp) as the reference. These tests call the row
kernel itself, toggling the module's `_cpu_rows` for the torch-op path.
"""

import math

import numpy as np
import pytest
import torch

import adversarial
from conformance.oracle import distillation_family, ulp_distance
from row_kernels import row_kernel
from softxent.ops.distillation import torch_cpu

DIVERGENCES = ("kl", "reverse_kl", "jsd")


def test_the_compiled_kernel_is_built():
    # setup.py makes the extension optional (a machine without a C compiler still installs softxent);
    # a development install has gcc, and without the kernel every test below would test the other path
    assert torch_cpu._cpu_rows is not None, "softxent.ops.distillation._cpu_rows was not built: `pip install -e .`"


def _rows(student, teacher, kept, divergence, beta, temperature, row_scale, *, compiled: bool,
          grad: bool = True, inplace: bool = False):
    with row_kernel(torch_cpu, compiled):
        student = student.clone() if inplace else student
        grad_out = (student if inplace else torch.empty_like(student)) if grad else None
        losses = torch_cpu.distill_rows(student, teacher, kept, divergence, beta, temperature,
                                        row_scale=row_scale if grad else None, grad_out=grad_out)
        return losses, grad_out


# --- exactness: the adversarial rows as the student, float32, against mpmath -----------------------------


def _within(actual, exact, scale, ulps: float) -> bool:
    """Within `ulps` float32 ulp of the exact value, or that many eps of the size of its terms (where the
    two models nearly agree, D and its gradient cancel in every algorithm: the oracle's `scale`)."""
    distance = ulp_distance(actual, exact, np.float32)
    allowed = ulps * 2.0 ** -23 * np.asarray(scale, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        difference = np.abs(np.asarray(actual, dtype=np.float64) - exact.hi)
    return bool(np.all((distance <= ulps) | (difference <= allowed)))


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("case", adversarial.cases("float32", long_rows=False), ids=lambda case: case.name)
def test_compiled_loss_and_gradient_are_within_ulps_of_mpmath(case, divergence):
    student = case.logits[None]
    teacher = np.roll(case.logits, 1)[None]  # the same values one class over: the models disagree
    temperature = 1.5
    exact = distillation_family(student, teacher, np.ones(1), divergence=divergence, beta=0.3,
                                temperature=temperature, reduction="none")
    losses, grad = _rows(torch.from_numpy(student), torch.from_numpy(teacher), torch.ones(1, dtype=torch.bool),
                         divergence, 0.3, temperature, torch.ones(1), compiled=True)
    assert _within(losses.numpy(), exact["value"], exact["scale:value"], 2.0)
    # at a masked student class (-inf) the oracle's chain rule gives 0; the torch layer's rows (both paths)
    # give the softmax's q_j - p_j there, which only an infinite loss (a masked q_j under p_j > 0) reaches
    open_classes = np.isfinite(student[0])
    grad, d_x = grad.numpy()[:, open_classes], exact["d_x"]
    d_x = type(d_x)(d_x.hi[:, open_classes], d_x.lo[:, open_classes])
    assert _within(grad, d_x, exact["scale:d_x"][:, open_classes], 4.0)


# --- agreement with the torch-op path ----------------------------------------------------------------


def _problem(dtype, teacher_dtype, layout, rows=37, classes=301):
    g = torch.Generator().manual_seed(5)
    if layout == "strided":  # rows of a transposed buffer: the classes strided
        student = (torch.randn(classes, rows, generator=g) * 4).to(dtype).t()
    else:
        student = (torch.randn(rows, classes, generator=g) * 4).to(dtype)
    teacher = (student.float() + torch.randn(rows, classes, generator=g)).to(teacher_dtype)  # a nearby model
    teacher[11] = student[11].to(teacher_dtype)  # the models agree: D = 0 up to rounding
    kept = torch.ones(rows, dtype=torch.bool)
    kept[::5] = False  # rows whose target is ignore_index
    student[2, 5] = -math.inf  # a masked student class
    teacher[3, 6] = -math.inf  # a masked teacher class
    student[9, 3] = teacher[9, 3] = -math.inf  # a class masked in both
    student[4] = -math.inf  # a fully masked row: 0
    teacher[6, 1] = math.nan  # a NaN row: handed back to the torch-op path
    student[7, 2] = math.inf  # a row holding +inf: likewise
    student[10, 4] = math.nan  # a NaN in a row that does not count: 0 all the same
    row_scale = torch.rand(rows, generator=g, dtype=torch.float64).float()
    return student, teacher, kept, row_scale


def _sizes(student, teacher, temperature, row_scale):
    """The size of each row's loss terms and of each gradient entry's (float64): T^2 sum_j (p_j + q_j)
    (|log p_j| + |log q_j| + 1), and T |row_scale| (p_j + q_j) (|log p_j| + |log q_j| + 1 + D's size / T^2)."""
    log_q = torch.log_softmax(student.double() / temperature, dim=1)
    log_p = torch.log_softmax(teacher.double() / temperature, dim=1)
    weight = log_q.exp() + log_p.exp()
    terms = torch.where(weight > 0, weight * (log_q.abs() + log_p.abs() + 1.0), 0.0)
    terms = torch.nan_to_num(terms, nan=0.0, posinf=0.0)
    loss = terms.sum(dim=1)
    grad = temperature * row_scale.double().abs().reshape(-1, 1) * (terms + weight * loss.view(-1, 1))
    return loss * temperature ** 2, grad


def _assert_agree(what, a, b, dtype, size):
    a, b = a.double().numpy(), b.double().numpy()
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    # both round once from results far more exact than float32: 2 float32 ulp apart, a bfloat16 gradient 1
    # bfloat16 ulp; where the terms cancel (D and q_j - p_j of nearby models) the kernel's float64 work is
    # within 1e-9 of their size (cpu_rows.c's bound)
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 and what == "grad" else 2.0 ** -23
    allowed = 2 * ulp * np.maximum(np.abs(a), np.abs(b)) + 1e-9 * size.numpy() + np.finfo(np.float32).tiny
    with np.errstate(invalid="ignore"):
        bad = ~same & ~(np.abs(a - b) <= allowed)
    assert not bad.any(), f"{what}: {int(bad.sum())} entries differ, first at {np.argwhere(bad)[0]}"


DTYPES = {"float32": (torch.float32, torch.float32), "bfloat16": (torch.bfloat16, torch.bfloat16),
          "bfloat16-student-float32-teacher": (torch.bfloat16, torch.float32)}


@pytest.mark.parametrize("dtypes", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "in-place"])
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("scale", ["per-row", "shared"])
@pytest.mark.parametrize("beta, temperature", [(0.5, 1.0), (0.2, 2.0)])
def test_compiled_rows_agree_with_the_torch_op_path(dtypes, layout, divergence, scale, beta, temperature):
    dtype, teacher_dtype = DTYPES[dtypes]
    student, teacher, kept, row_scale = _problem(dtype, teacher_dtype, layout)
    if scale == "shared":  # a 0-d gradient scale ("mean" and "sum")
        row_scale = torch.tensor(0.25)
    inplace = layout == "in-place"
    ours = _rows(student, teacher, kept, divergence, beta, temperature, row_scale, compiled=True, inplace=inplace)
    reference = _rows(student.double(), teacher.double(), kept, divergence, beta, temperature, row_scale.double(),
                      compiled=False)
    theirs = _rows(student, teacher, kept, divergence, beta, temperature, row_scale, compiled=False, inplace=inplace)
    # the rows the kernel leaves (a NaN, a +inf) are the torch-op path's own, in its precision
    special = (student.double().isnan() | teacher.double().isnan() | (student.double() == math.inf)
               | (teacher.double() == math.inf)).any(dim=1) & kept
    sizes = _sizes(student, teacher, temperature, row_scale.expand(len(kept)))
    for what, a, b, c, size in zip(("losses", "grad"), ours, reference, theirs, sizes):
        assert a.dtype == c.dtype and a.shape == c.shape, what
        b = torch.where(special.view((-1,) + (1,) * (a.dim() - 1)), c.double(), b)
        _assert_agree(what, a, b.to(a.dtype), dtype, size)


def test_losses_only_and_beta_at_the_ends():
    student, teacher, kept, _ = _problem(torch.float32, torch.float32, "contiguous")
    for beta in (0.0, 1.0):
        ours, _ = _rows(student, teacher, kept, "jsd", beta, 1.0, None, compiled=True, grad=False)
        reference, _ = _rows(student.double(), teacher.double(), kept, "jsd", beta, 1.0, None, compiled=False,
                             grad=False)
        _assert_agree("losses", ours, reference.float(), torch.float32, _sizes(student, teacher, 1.0, kept)[0])


def test_other_dtypes_take_the_torch_op_path(monkeypatch):
    calls = []
    real = torch_cpu._run_compiled
    monkeypatch.setattr(torch_cpu, "_run_compiled", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(4, 9)
    kept = torch.ones(4, dtype=torch.bool)
    torch_cpu.distill_rows(x.double(), x.double(), kept, "kl", 0.5, 1.0)
    torch_cpu.distill_rows(x.half(), x.half(), kept, "kl", 0.5, 1.0)
    torch_cpu.distill_rows(x, x.double(), kept, "kl", 0.5, 1.0)
    assert not calls
    torch_cpu.distill_rows(x, x.bfloat16(), kept, "kl", 0.5, 2.0)
    assert calls
