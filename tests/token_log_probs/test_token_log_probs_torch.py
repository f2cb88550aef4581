"""softxent.torch.token_log_probs / linear_token_log_probs on the CPU: against plain torch (values and
gradients with a random upstream gradient), float64 gradcheck, the NumPy layer, mpmath exactness, masks,
the linear form's chunks, and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softxent as sx
import softxent.ops.token_log_probs.torch as module
import softxent.torch as sxt
from compare import assert_close, ulp_error
from test_token_log_probs_numpy import confident_rows, exact_log_prob_and_entropy


def plain_torch(logits, target, *, temperature=1.0, softcap=None, ignore_index=-100):
    """The unfused computation: log_softmax, gather, -sum p log p, in the logits' precision (float32 for 16-bit)."""
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    log_p = torch.log_softmax(z / temperature, dim=-1)
    kept = target != ignore_index
    lp = log_p.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ent = -(log_p.exp() * log_p).sum(-1)
    return torch.where(kept, lp, 0.0), torch.where(kept, ent, 0.0)


def _grads(fn, leaves, g, h):
    for leaf in leaves:
        leaf.grad = None
    lp, ent = fn()
    (lp * g + ent * h).sum().backward()
    return lp.detach(), ent.detach(), [leaf.grad for leaf in leaves]


# tiny, odd (3 x 423), a 3-D batch, a real vocabulary on enough rows to run on several threads
SHAPES = [(2, 2), (3, 423), (2, 3, 17), (40, 32000)]
OPTIONS = [{}, {"temperature": 0.7}, {"softcap": 3.0, "temperature": 1.6}]


# the large shape once, with the defaults: it is there for the threads
GRID = [(s, o, d) for s in SHAPES for o in OPTIONS for d in (torch.float32, torch.float64)
        if s[-1] != 32000 or (not o and d == torch.float32)]


@pytest.mark.parametrize("shape,opts,dtype", GRID)
def test_matches_plain_torch_values_and_gradients_with_random_upstream(shape, opts, dtype):
    gen = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=gen) * 3).to(dtype).requires_grad_(True)
    target = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    target.view(-1)[::3] = -100
    g, h = torch.randn(shape[:-1], generator=gen).to(dtype), torch.randn(shape[:-1], generator=gen).to(dtype)
    lp, ent, (grad,) = _grads(lambda: sxt.token_log_probs(x, target, return_entropy=True, **opts), [x], g, h)
    x64 = x.detach().double().requires_grad_(True)
    r_lp, r_ent, (r_grad,) = _grads(lambda: plain_torch(x64, target, **opts), [x64], g.double(), h.double())
    name = str(dtype).replace("torch.", "")
    assert lp.dtype == dtype and ent.dtype == dtype and lp.shape == target.shape
    assert_close(lp, r_lp, dtype=name, what="log-probs vs torch", scale=2)
    assert_close(ent, r_ent, dtype=name, what="entropy vs torch", scale=2)
    assert_close(grad, r_grad, dtype=name, what="gradient vs torch", scale=2)
    # and the NumPy layer (float64 inside) on the same inputs
    n_lp, n_ent, n_grad = sx.token_log_probs(x.detach().numpy(), target.numpy(), return_entropy=True,
                                             return_grad=True, grad_log_probs=g.numpy(), grad_entropy=h.numpy(),
                                             **opts)
    assert_close(lp, n_lp, dtype=name, what="log-probs vs NumPy", scale=2)
    assert_close(grad, n_grad, dtype=name, what="gradient vs NumPy", scale=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_logits_give_float32_results(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 50, generator=gen).to(dtype).requires_grad_(True)
    target = torch.randint(0, 50, (6,), generator=gen)
    lp, ent = sxt.token_log_probs(x, target, return_entropy=True)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    r_lp, r_ent = plain_torch(x.detach(), target)
    assert_close(lp, r_lp, what="log-probs")
    assert_close(ent, r_ent, what="entropy")
    (lp.sum() + ent.sum()).backward()
    assert x.grad.dtype == dtype


def test_gradcheck_float64_both_outputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.tensor([0, 6, -100, 3, 3])
    for opts in ({}, {"softcap": 2.0, "temperature": 0.7}):
        assert torch.autograd.gradcheck(lambda x_: sxt.token_log_probs(x_, target, return_entropy=True, **opts), (x,))
        assert torch.autograd.gradcheck(lambda x_: sxt.token_log_probs(x_, target, **opts), (x,))


def test_linear_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(9, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.tensor([0, 8, -100, 3, 3, 1])
    for chunk in (4, None):  # two chunks computed again, and the kept single chunk
        assert torch.autograd.gradcheck(
            lambda *a: sxt.linear_token_log_probs(a[0], a[1], target, linear_bias=a[2], return_entropy=True,
                                                  chunk_size=chunk, softcap=5.0, temperature=0.9), (x, w, b))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_confident_policy_float32_within_2_ulp_of_mpmath(temperature):
    """Worked in float32: an entropy below 2**-100 is made of terms in float32's subnormal range, which
    hold fewer bits (the NumPy layer, in float64, is exact there too)."""
    for row, t in confident_rows(np.float32):
        if float(exact_log_prob_and_entropy(row, t, temperature)[1]) < 2.0 ** -100:
            continue
        lp, h = sxt.token_log_probs(torch.tensor(row[None]), torch.tensor([t]), return_entropy=True,
                                    temperature=temperature)
        exact_lp, exact_h = exact_log_prob_and_entropy(row, t, temperature)
        assert ulp_error(lp.numpy(), [exact_lp]).max() <= 2, (row, lp, exact_lp)
        assert ulp_error(h.numpy(), [exact_h]).max() <= 2, (row, h, exact_h)


def test_target_gradient_near_one_does_not_cancel():
    """The target's entry g (1 - p_t) with p_t = 1 - 1e-11: -g expm1(log p_t), within 4 ulp of the exact."""
    row = torch.tensor([[0.0, -25.0, -30.0]], requires_grad=True)
    sxt.token_log_probs(row, torch.tensor([0])).sum().backward()
    exact = -(np.exp(-25.0) + np.exp(-30.0)) / (1 + np.exp(-25.0) + np.exp(-30.0))
    assert ulp_error(row.grad[0, :1].numpy(), [-exact]).max() <= 4


def test_ignored_masked_and_infinite_rows():
    x = torch.tensor([[1.0, 2.0, 3.0], [-float("inf")] * 3, [float("nan"), 1.0, 2.0], [0.0, float("inf"), 1.0]],
                     requires_grad=True)
    target = torch.tensor([0, 1, -100, 1])
    lp, ent = sxt.token_log_probs(x, target, return_entropy=True)
    n_lp, n_ent = sx.token_log_probs(x.detach().numpy(), target.numpy(), return_entropy=True)
    assert_close(lp, n_lp, what="log-probs vs NumPy")
    assert_close(ent, n_ent, what="entropy vs NumPy")
    (lp.sum() + ent.sum()).backward()
    assert (x.grad[1:3] == 0).all() and not x.grad.isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_matches_unfused_and_never_holds_more_than_a_chunk(dtype, monkeypatch):
    rows_seen = []
    original = module._chunk_logits
    monkeypatch.setattr(module, "_chunk_logits", lambda x, *a: rows_seen.append(x.shape[0]) or original(x, *a))
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 11, 8, generator=gen).to(dtype).requires_grad_(True)
    w = (torch.randn(37, 8, generator=gen) / 2).to(dtype).requires_grad_(True)
    b = torch.randn(37, generator=gen).to(dtype).requires_grad_(True)
    target = torch.randint(0, 37, (2, 11), generator=gen)
    target[1, ::4] = -100
    g, h = torch.randn(2, 11, generator=gen), torch.randn(2, 11, generator=gen)
    lp, ent, grads = _grads(lambda: sxt.linear_token_log_probs(x, w, target, linear_bias=b, return_entropy=True,
                                                               chunk_size=5, softcap=4.0), [x, w, b], g, h)
    assert max(rows_seen) <= 5 and len(rows_seen) == 2 * 5  # 5 chunks in the forward, again in the backward
    leaves = [t.detach().float().requires_grad_(True) for t in (x, w, b)]
    r_lp, r_ent, r_grads = _grads(lambda: plain_torch(leaves[0] @ leaves[1].T + leaves[2], target, softcap=4.0),
                                  leaves, g, h)
    scale = 1 if dtype == torch.float32 else 2
    name = "float32" if dtype == torch.float32 else "bfloat16"
    assert_close(lp, r_lp, dtype=name, what="log-probs")
    assert_close(ent, r_ent, dtype=name, what="entropy")
    for what, grad, ref in zip(("dx", "dw", "db"), grads, r_grads):
        assert grad.dtype == dtype
        assert_close(grad, ref, dtype=name, what=what, scale=4 * scale)


def test_linear_only_the_log_probs_are_used():
    """return_entropy=False, and an entropy output that takes no part in the loss (its gradient is None)."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(9, 5, generator=gen, requires_grad=True)
    w = torch.randn(13, 5, generator=gen, requires_grad=True)
    target = torch.randint(0, 13, (9,), generator=gen)
    sxt.linear_token_log_probs(x, w, target, chunk_size=4).sum().backward()
    lp, _ = sxt.linear_token_log_probs(x.detach(), w.detach(), target, return_entropy=True)
    r_x, r_w = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    r_lp, _ = plain_torch(r_x @ r_w.T, target)
    r_lp.sum().backward()
    assert_close(lp, r_lp.detach(), what="log-probs")
    assert_close(x.grad, r_x.grad, what="dx", scale=4)
    assert_close(w.grad, r_w.grad, what="dw", scale=4)


@pytest.mark.parametrize("call,error,words", [
    (lambda: sxt.token_log_probs(torch.ones(2, 3), torch.tensor([0, 3])), ValueError, "class index 3"),
    (lambda: sxt.token_log_probs(torch.ones(2, 3), torch.ones(2, 3)), TypeError, "class indices"),
    (lambda: sxt.token_log_probs(torch.ones(2, 3), torch.tensor([0.0, 1.0])), TypeError, "integer"),
    (lambda: sxt.token_log_probs(torch.ones(2, 3), torch.tensor([0, 1]), softcap=-1.0), ValueError, "softcap"),
    (lambda: sxt.token_log_probs([[1.0]], torch.tensor([0])), TypeError, "logits must be a torch.Tensor"),
    (lambda: sxt.linear_token_log_probs(torch.ones(2, 3), torch.ones(4, 2), torch.tensor([0, 1])), ValueError,
     "linear_weight must have shape"),
    (lambda: sxt.linear_token_log_probs(torch.ones(2, 3), torch.ones(4, 3), torch.tensor([0, 1]), chunk_size=0),
     ValueError, "chunk_size"),
])
def test_bad_arguments_raise_naming_them(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_compile_dynamic_fullgraph_matches_eager_without_a_recompile_per_batch_size():
    """torch.compile(dynamic=True, fullgraph=True) through the row kernels' custom ops: values and both
    outputs' gradients as eager, one graph for batch sizes 6 to 30, and a bad label still refused."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def step(x, t, up, up_h):
        lp, h = sxt.token_log_probs(x, t, return_entropy=True, temperature=0.7, softcap=20.0)
        return (lp * up + h * up_h).sum()

    compiled = torch.compile(step, backend=counter, dynamic=True, fullgraph=True)
    frames = []
    for rows in (6, 12, 30):
        gen = torch.Generator().manual_seed(rows)
        x = torch.randn(rows, 17, generator=gen) * 4
        t = torch.randint(0, 17, (rows,), generator=gen)
        t[::5] = -100
        up, up_h = torch.randn(rows, generator=gen), torch.randn(rows, generator=gen)
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        compiled(xc, t, up, up_h).backward()
        step(xe, t, up, up_h).backward()
        assert_close(xc.grad, xe.grad, what="compiled gradient vs eager")
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames == frames[:1] * 3  # compiled once, then reused
    with pytest.raises(ValueError, match="class index 17"):
        compiled(torch.zeros(6, 17), torch.tensor([0, 1, 2, 17, 4, 5]), torch.ones(6), torch.ones(6))


def test_linear_compile_dynamic_fullgraph_matches_eager_without_a_recompile_per_batch_size():
    """linear_token_log_probs under torch.compile(dynamic=True, fullgraph=True): its two sweeps run as
    custom ops, the chunk chosen inside them; gradients of input, weight and bias as eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def step(x, w, b, t, up, up_h):
        lp, h = sxt.linear_token_log_probs(x, w, t, linear_bias=b, return_entropy=True, temperature=0.9)
        return (lp * up + h * up_h).sum()

    compiled = torch.compile(step, backend=counter, dynamic=True, fullgraph=True)
    frames = []
    for rows in (6, 12, 30):
        gen = torch.Generator().manual_seed(rows)
        leaves = [torch.randn(rows, 7, generator=gen), torch.randn(19, 7, generator=gen), torch.randn(19, generator=gen)]
        t = torch.randint(0, 19, (rows,), generator=gen)
        t[::5] = -100
        up, up_h = torch.randn(rows, generator=gen), torch.randn(rows, generator=gen)
        ours = [a.clone().requires_grad_() for a in leaves]
        eager = [a.clone().requires_grad_() for a in leaves]
        compiled(*ours, t, up, up_h).backward()
        step(*eager, t, up, up_h).backward()
        for name, a, b in zip(("dx", "dw", "db"), ours, eager):
            assert_close(a.grad, b.grad, what=f"compiled {name} vs eager")
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames == frames[:1] * 3
    with pytest.raises(ValueError, match="class index 19"):
        compiled(torch.zeros(6, 7), torch.zeros(19, 7), torch.zeros(19), torch.tensor([0, 1, 2, 19, 4, 5]),
                 torch.ones(6), torch.ones(6))
