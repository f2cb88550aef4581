"""softxent.token_log_probs / linear_token_log_probs (NumPy): exactness against mpmath, values and gradients
against float64 torch autograd, properties, and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softxent as sx
from compare import assert_close, ulp_error
from conformance.oracle import exact_log_prob_and_entropy  # the token tests' oracle (mpmath), one for all


def confident_rows(dtype):
    """Rows where the target holds almost all the mass: log p_t ~ -1e-20 and H ~ 1e-18, both of which
    the textbook lse - z_t and lse - sum p z cancel to 0 (or to noise) in float32 and float64."""
    rows = []
    for gap in (10.0, 25.0, 45.0, 80.0):
        row = np.array([0.0, -gap, -gap - 1.0, -gap - 3.0, -2 * gap], dtype=dtype)
        rows.append((row, 0))
    rows.append((np.array([3.0, 1.0, -2.0, 0.5], dtype=dtype), 2))  # an ordinary row, a non-max target
    rows.append((np.array([1e4, 1e4 - 30.0, -1e4], dtype=dtype), 1))  # large logits, shift matters
    return rows


@pytest.mark.parametrize("dtype,ulps", [(np.float32, 2), (np.float64, 4)])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_confident_policy_log_prob_and_entropy_within_ulps_of_mpmath(dtype, ulps, temperature):
    for row, t in confident_rows(dtype):
        lp, h = sx.token_log_probs(row[None], [t], return_entropy=True, temperature=temperature)
        exact_lp, exact_h = exact_log_prob_and_entropy(row, t, temperature)
        assert ulp_error(lp, [exact_lp]).max() <= ulps, (row, lp, exact_lp)
        assert ulp_error(h, [exact_h]).max() <= ulps, (row, h, exact_h)
        assert h[0] > 0 or float(exact_h) < np.finfo(dtype).smallest_subnormal  # never cancelled to 0


def test_textbook_entropy_would_cancel_so_the_test_can_fail():
    """The control: lse - sum_j p_j z_j, in float32, gives 0 or a negative number on the confident rows."""
    row = np.array([0.0, -25.0, -26.0, -28.0, -50.0], dtype=np.float32)
    z = torch.tensor(row)
    p = torch.softmax(z, -1)
    naive = torch.logsumexp(z, -1) - (p * z).sum()
    _, exact = exact_log_prob_and_entropy(row, 0)
    assert ulp_error(naive.numpy().reshape(1), [exact]).max() > 1000


def torch_reference(x, target, g, h, temperature=1.0, softcap=None, ignore_index=-100):
    """log_softmax-gather and -sum p log p in float64 torch, and the gradient of g . lp + h . H."""
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    t = torch.as_tensor(target)
    z = x if softcap is None else softcap * torch.tanh(x / softcap)
    log_p = torch.log_softmax(z / temperature, dim=-1)
    kept = t != ignore_index
    lp = torch.where(kept, log_p.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1), 0.0)
    ent = torch.where(kept, -(log_p.exp() * log_p).sum(-1), 0.0)
    (lp * torch.as_tensor(g) + ent * torch.as_tensor(h)).sum().backward()
    return lp.detach().numpy(), ent.detach().numpy(), x.grad.numpy()


# tiny, odd (3 x 423), 3-D batch; with temperature and softcap
SHAPES = [(2, 2), (3, 423), (2, 3, 17)]
OPTIONS = [{}, {"temperature": 0.7}, {"softcap": 4.0}, {"softcap": 3.0, "temperature": 1.6}]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("opts", OPTIONS)
def test_values_and_gradient_match_torch_autograd_with_random_upstream(shape, opts):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape) * 3
    target = rng.integers(0, shape[-1], size=shape[:-1])
    target.reshape(-1)[::3] = -100
    g, h = rng.normal(size=shape[:-1]), rng.normal(size=shape[:-1])
    lp, ent, grad = sx.token_log_probs(x, target, return_entropy=True, return_grad=True, grad_log_probs=g,
                                       grad_entropy=h, **opts)
    ref_lp, ref_ent, ref_grad = torch_reference(x, target, g, h, **opts)
    assert_close(lp, ref_lp, what="log-probs")
    assert_close(ent, ref_ent, what="entropy")
    assert_close(grad, ref_grad, what="gradient")


def test_gradient_against_central_differences():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 6))
    target = np.array([1, 5, -100, 0])
    g, h = rng.normal(size=4), rng.normal(size=4)

    def f(x_):
        lp, ent = sx.token_log_probs(x_, target, return_entropy=True, softcap=2.5, temperature=0.8)
        return float((g * lp).sum() + (h * ent).sum())

    _, _, grad = sx.token_log_probs(x, target, return_entropy=True, softcap=2.5, temperature=0.8, return_grad=True,
                                    grad_log_probs=g, grad_entropy=h)
    step = 1e-5
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = step
        numeric[i] = (f(x + e) - f(x - e)) / (2 * step)
    assert_close(grad, numeric, dtype="finite_difference", what="gradient vs central differences")


def test_properties_log_prob_is_minus_cross_entropy_and_entropy_is_bounded():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 40)) * 4
    target = rng.integers(0, 40, size=64)
    lp, ent = sx.token_log_probs(x, target, return_entropy=True)
    assert_close(lp, -sx.cross_entropy(x, target, reduction="none"), what="log p = -cross-entropy")
    assert (lp <= 0).all() and (ent >= 0).all() and (ent <= np.log(40) + 1e-12).all()
    assert_close(ent, sx.entropy(sx.softmax(x)), what="entropy vs sx.entropy(softmax)")
    # translation invariance of both outputs
    lp2, ent2 = sx.token_log_probs(x + 7.25, target, return_entropy=True)
    assert_close(lp2, lp, what="shifted log-probs", scale=10)
    assert_close(ent2, ent, what="shifted entropy", scale=10)


def test_ignored_and_fully_masked_rows_give_zero_and_zero_gradient():
    x = np.array([[1.0, 2.0, 3.0], [-np.inf, -np.inf, -np.inf], [np.nan, 1.0, 2.0], [0.0, np.inf, 1.0]])
    target = np.array([0, 1, -100, 1])
    lp, ent, grad = sx.token_log_probs(x, target, return_entropy=True, return_grad=True)
    assert lp[1] == 0 and ent[1] == 0 and lp[2] == 0 and ent[2] == 0  # masked row, ignored NaN row
    assert (grad[1:3] == 0).all()
    assert lp[3] == 0 and ent[3] == 0  # the +inf entry holds all the mass: p_t = 1, H = 0
    assert not np.isnan(grad).any()


def test_float16_is_computed_in_float64_and_returned_in_float16():
    x = np.random.default_rng(0).normal(size=(5, 9)).astype(np.float16)
    lp = sx.token_log_probs(x, np.arange(5))
    assert lp.dtype == np.float16
    assert_close(lp, sx.token_log_probs(x.astype(np.float64), np.arange(5)), dtype="float16")


@pytest.mark.parametrize("opts", [{}, {"softcap": 5.0, "temperature": 0.9}])
def test_linear_equals_plain_on_the_logits_and_chunks_do_not_matter(opts):
    rng = np.random.default_rng(1)
    x, w, b = rng.normal(size=(2, 7, 5)), rng.normal(size=(23, 5)), rng.normal(size=23)
    target = rng.integers(0, 23, size=(2, 7))
    target[0, 2] = -100
    g, h = rng.normal(size=(2, 7)), rng.normal(size=(2, 7))
    lp, ent, grad = sx.token_log_probs(x @ w.T + b, target, return_entropy=True, return_grad=True,
                                       grad_log_probs=g, grad_entropy=h, **opts)
    for chunk in (1, 3, None):
        llp, lent, (dx, dw, db) = sx.linear_token_log_probs(x, w, target, bias=b, return_entropy=True, chunk_size=chunk,
                                                            return_grad=True, grad_log_probs=g, grad_entropy=h, **opts)
        assert_close(llp, lp, what="linear log-probs")
        assert_close(lent, ent, what="linear entropy")
        assert_close(dx, np.einsum("...v,vd->...d", grad, w), what="dx")
        assert_close(dw, grad.reshape(-1, 23).T @ x.reshape(-1, 5), what="dw")
        assert_close(db, grad.sum(axis=(0, 1)), what="dbias")


@pytest.mark.parametrize("call,error,words", [
    (lambda: sx.token_log_probs([[1.0, 2.0]], [2]), ValueError, "class index 2"),
    (lambda: sx.token_log_probs([[1.0, 2.0]], [[0.5, 0.5]]), TypeError, "class indices"),
    (lambda: sx.token_log_probs([[1.0, 2.0]], [0.0]), TypeError, "integer"),
    (lambda: sx.token_log_probs([[1.0, 2.0]], [0], temperature=0.0), ValueError, "temperature"),
    (lambda: sx.token_log_probs(1.0, 0), ValueError, "at least one dimension"),
    (lambda: sx.linear_token_log_probs(np.ones((2, 3)), np.ones((4, 2)), [0, 1]), ValueError, "w must have shape"),
])
def test_bad_arguments_raise_naming_them(call, error, words):
    with pytest.raises(error, match=words):
        call()
