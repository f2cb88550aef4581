"""softxent.distillation_loss / linear_distillation_loss (NumPy): against float64 torch autograd (values and
the student's gradient with a random upstream gradient), mpmath, central differences, properties, rows
skipped, num_items, the linear form and argument errors."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch

import softxent as sx
from compare import assert_close

DIVERGENCES = ("kl", "reverse_kl", "jsd")


def torch_divergence(student, teacher, divergence, beta=0.5, temperature=1.0):
    """The textbook per-row divergence, float64 torch autograd (the oracle), times T^2."""
    log_q = torch.log_softmax(student / temperature, -1)
    log_p = torch.log_softmax(teacher / temperature, -1)
    p, q = log_p.exp(), log_q.exp()
    if divergence == "kl":
        rows = (p * (log_p - log_q)).sum(-1)
    elif divergence == "reverse_kl":
        rows = (q * (log_q - log_p)).sum(-1)
    else:
        m = beta * p + (1 - beta) * q
        rows = beta * (p * (log_p - m.log())).sum(-1) + (1 - beta) * (q * (log_q - m.log())).sum(-1)
    return rows * temperature ** 2


def torch_reference(student, teacher, *, divergence, beta, temperature, target, reduction, num_items, upstream):
    s = torch.tensor(student, dtype=torch.float64, requires_grad=True)
    rows = torch_divergence(s, torch.tensor(teacher, dtype=torch.float64), divergence, beta, temperature)
    kept = torch.ones(rows.shape, dtype=torch.bool) if target is None else torch.as_tensor(target) != -100
    rows = torch.where(kept, rows, 0.0)
    if reduction == "none":
        loss = rows
    elif reduction == "sum":
        loss = rows.sum()
    else:
        loss = rows.sum() / (num_items if num_items is not None else max(int(kept.sum()), 1))
    (loss * torch.as_tensor(upstream)).sum().backward()
    return loss.detach().numpy(), s.grad.numpy()


CASES = [(d, r, t) for d in DIVERGENCES for r in ("none", "mean", "sum") for t in (1.0, 2.5)]


@pytest.mark.parametrize("divergence,reduction,temperature", CASES)
def test_loss_and_student_gradient_match_torch_autograd(divergence, reduction, temperature):
    rng = np.random.default_rng(len(divergence) + len(reduction))
    student, teacher = rng.normal(size=(2, 5, 23)) * 2, rng.normal(size=(2, 5, 23)) * 2
    target = rng.integers(0, 23, size=(2, 5))
    target[0, ::2] = -100
    upstream = rng.uniform(0.5, 1.5, size=(2, 5) if reduction == "none" else ())
    num_items = 17 if reduction == "mean" else None
    opts = dict(divergence=divergence, beta=0.3, temperature=temperature, target=target, reduction=reduction,
                num_items=num_items)
    loss, grad = sx.distillation_loss(student, teacher, return_grad=True, **opts)
    ref_loss, ref_grad = torch_reference(student, teacher, upstream=upstream, **opts)
    grad = grad * (upstream[..., None] if reduction == "none" else upstream)
    assert_close(loss, ref_loss, what="loss")
    assert_close(grad, ref_grad, what="student gradient")


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_against_mpmath(divergence):
    student, teacher = np.array([[0.5, -1.0, 2.0, 0.0]]), np.array([[1.0, 1.5, -2.0, 0.25]])
    beta, temperature = 0.25, 1.5
    with mpmath.workdps(50):
        def softmax(row):
            e = [mpmath.exp(mpmath.mpf(float(v)) / temperature) for v in row]
            s = mpmath.fsum(e)
            return [v / s for v in e]
        q, p = softmax(student[0]), softmax(teacher[0])
        kl = lambda a, b: mpmath.fsum(x * mpmath.log(x / y) for x, y in zip(a, b))  # noqa: E731
        if divergence == "kl":
            exact = kl(p, q)
        elif divergence == "reverse_kl":
            exact = kl(q, p)
        else:
            m = [beta * x + (1 - beta) * y for x, y in zip(p, q)]
            exact = beta * kl(p, m) + (1 - beta) * kl(q, m)
        exact *= temperature ** 2
    loss = sx.distillation_loss(student, teacher, divergence=divergence, beta=beta, temperature=temperature)
    assert abs(float(loss) - float(exact)) <= 4 * np.spacing(float(exact)) + 1e-16


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_gradient_against_central_differences(divergence):
    rng = np.random.default_rng(7)
    student, teacher = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    f = lambda s: float(sx.distillation_loss(s, teacher, divergence=divergence, beta=0.6, temperature=0.8))  # noqa
    _, grad = sx.distillation_loss(student, teacher, divergence=divergence, beta=0.6, temperature=0.8,
                                   return_grad=True)
    numeric = np.zeros_like(student)
    for i in np.ndindex(student.shape):
        e = np.zeros_like(student)
        e[i] = 1e-5
        numeric[i] = (f(student + e) - f(student - e)) / 2e-5
    assert_close(grad, numeric, dtype="finite_difference", what="gradient vs central differences")


def test_properties():
    rng = np.random.default_rng(9)
    s, t = rng.normal(size=(30, 12)) * 3, rng.normal(size=(30, 12)) * 3
    for divergence in DIVERGENCES:
        rows = sx.distillation_loss(s, t, divergence=divergence, reduction="none")
        assert (rows >= -1e-15).all()  # a divergence is >= 0
        assert np.abs(sx.distillation_loss(t, t, divergence=divergence, reduction="none")).max() < 1e-14
    # KL(p || q) = cross-entropy(q; p) - H(p), and reverse KL swaps the roles
    p = sx.softmax(t)
    kl = sx.distillation_loss(s, t, reduction="none")
    assert_close(kl, sx.cross_entropy(s, p, reduction="none") - sx.entropy(p), what="KL = CE - H")
    assert_close(sx.distillation_loss(s, t, divergence="reverse_kl", reduction="none"),
                 sx.distillation_loss(t, s, reduction="none"), what="reverse KL")
    # jsd at beta 0 and 1 is 0 (m equals the other distribution): the formula as API.md writes it
    for beta in (0.0, 1.0):
        assert np.abs(sx.distillation_loss(s, t, divergence="jsd", beta=beta, reduction="none")).max() < 1e-14
    # jsd with beta 1/2 is symmetric
    assert_close(sx.distillation_loss(s, t, divergence="jsd", reduction="none"),
                 sx.distillation_loss(t, s, divergence="jsd", reduction="none"), what="symmetric JSD")


def test_masks_and_skipped_rows():
    s = np.array([[0.0, 1.0, -np.inf], [-np.inf] * 3, [1.0, 2.0, 3.0]])
    t = np.array([[0.5, 0.0, -np.inf], [1.0, 2.0, 3.0], [np.nan, 0.0, 0.0]])
    loss, grad = sx.distillation_loss(s, t, target=np.array([0, 1, -100]), reduction="none", return_grad=True)
    assert np.isfinite(loss[0]) and loss[1] == 0 and loss[2] == 0  # a masked class (0 log 0); masked; ignored
    assert (grad[1:] == 0).all() and np.isfinite(grad).all()
    mean, mean_grad = sx.distillation_loss(s, t, target=np.array([-100, -100, -100]), return_grad=True)
    assert mean == 0 and (mean_grad == 0).all()  # every row skipped with "mean": 0, never NaN


def test_num_items_sums_micro_batches_to_the_global_mean():
    rng = np.random.default_rng(11)
    s, t = rng.normal(size=(8, 10)), rng.normal(size=(8, 10))
    target = rng.integers(0, 10, size=8)
    target[[1, 2, 6]] = -100
    whole = sx.distillation_loss(s, t, target=target)
    parts = sum(sx.distillation_loss(s[i:i + 4], t[i:i + 4], target=target[i:i + 4], num_items=5)
                for i in (0, 4))
    assert_close(parts, whole, what="sum of micro-batch losses with num_items")


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_linear_equals_plain_on_the_logits(divergence):
    rng = np.random.default_rng(13)
    sx_, sw, sb = rng.normal(size=(9, 4)), rng.normal(size=(15, 4)), rng.normal(size=15)
    tx, tw = rng.normal(size=(9, 6)), rng.normal(size=(15, 6))
    target = rng.integers(0, 15, size=9)
    target[3] = -100
    opts = dict(divergence=divergence, beta=0.4, temperature=1.3, target=target)
    loss, grad = sx.distillation_loss(sx_ @ sw.T + sb, tx @ tw.T, return_grad=True, **opts)
    for chunk in (2, None):
        l_loss, (dx, dw, db) = sx.linear_distillation_loss(sx_, sw, tx, tw, student_bias=sb, chunk_size=chunk,
                                                           return_grad=True, **opts)
        assert_close(l_loss, loss, what="loss")
        assert_close(dx, grad @ sw, what="dx")
        assert_close(dw, grad.T @ sx_, what="dw")
        assert_close(db, grad.sum(0), what="dbias")


@pytest.mark.parametrize("call,error,words", [
    (lambda: sx.distillation_loss([[1.0, 2.0]], [[1.0, 2.0]], divergence="js"), ValueError, "divergence"),
    (lambda: sx.distillation_loss([[1.0, 2.0]], [[1.0, 2.0]], divergence="jsd", beta=1.5), ValueError, "beta"),
    (lambda: sx.distillation_loss([[1.0, 2.0]], [[1.0, 2.0, 3.0]]), ValueError, "teacher_logits"),
    (lambda: sx.distillation_loss([[1.0, 2.0]], [[1.0, 2.0]], target=[5]), ValueError, "class index 5"),
    (lambda: sx.distillation_loss([[1.0, 2.0]], [[1.0, 2.0]], reduction="sum", num_items=3), ValueError,
     "num_items"),
    (lambda: sx.distillation_loss([[1.0, 2.0]], [[1.0, 2.0]], temperature=-1.0), ValueError, "temperature"),
])
def test_bad_arguments_raise_naming_them(call, error, words):
    with pytest.raises(error, match=words):
        call()
