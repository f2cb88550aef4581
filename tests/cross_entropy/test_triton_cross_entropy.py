"""The Triton cross-entropy kernels, run by the Triton interpreter on CPU tensors, against two oracles.

Oracles: the NumPy layer in float64 (softxent.cross_entropy, reduction="none", return_grad=True: every
option, the semantics of API.md) and torch.nn.functional.cross_entropy in float64 with autograd (for the
options torch has). Gradients are checked with a grad_scale other than 1, as a random upstream gradient
of the summed loss would be. The interpreter runs each program in Python, so the shapes are small and
odd and the block size is cut to 64 columns to exercise the multi-block loops; (2, 4097) with
program_columns=1024 forces the split path (5 chunks combined by log-sum-exp in a second launch).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from triton_env import DEVICE, pytestmark, sxtt, torch  # noqa: F401  (before triton loads: sets TRITON_INTERPRET)

import softxent as sx
from softxent._options import LossOptions
from softxent._triton import labels as _labels
from softxent.torch.triton import configured
from softxent._triton.config import plan_rows

from compare import assert_close


SMALL = dict(block=64)  # 423 columns = 7 blocks, the last one partial
SPLIT = dict(block=512, program_columns=1024)  # 4097 columns = 5 chunks of 2 blocks

# one grid of option sets: each option alone, then everything at once; "weight" means random weights
OPTIONS = [
    {},
    {"weight": True},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.1, "weight": True},
    {"z_loss": 1e-2},
    {"softcap": 4.0},
    {"temperature": 0.7},
    {"ignore_index": 2},
    {"weight": True, "label_smoothing": 0.2, "z_loss": 1e-2, "softcap": 4.0, "temperature": 1.5},
]


def _ids(options):
    return "-".join(f"{k}={v}" for k, v in options.items()) or "plain"


def make_problem(rows, classes, kind, options, dtype=torch.float32, seed=0):
    """Logits, a target of `kind` ("index" or "probs"), weights, LossOptions and the NumPy keywords."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, classes, generator=g) * 3).to(dtype)
    options = dict(options)
    weight = torch.rand(classes, generator=g) + 0.1 if options.pop("weight", False) else None
    ignore_index = options.get("ignore_index", -100)
    if kind == "index":
        target = torch.randint(0, classes, (rows,), generator=g)
        if rows > 1:
            target[1] = ignore_index  # one ignored row in every problem
    else:
        target = torch.softmax(torch.randn(rows, classes, generator=g) * 2, dim=1)
        target[:, ::3] = 0.0  # exact zeros: 0 * log p terms
        target = target / target.sum(dim=1, keepdim=True).clamp_min(1e-30)
    loss_options = LossOptions(**options)
    numpy_kwargs = dict(options, weight=None if weight is None else weight.double().numpy())
    return logits.to(DEVICE), target.to(DEVICE), on_device(weight), loss_options, numpy_kwargs


def on_device(t):
    return None if t is None else t.to(DEVICE)


def numpy_reference(logits, target, numpy_kwargs):
    """Per-row losses and d(sum of losses)/d(logits) from the NumPy layer in float64."""
    x = logits.double().cpu().numpy()
    t = target.cpu().numpy() if not target.is_floating_point() else target.double().cpu().numpy()
    losses, grad = sx.cross_entropy(x, t, reduction="none", return_grad=True, **numpy_kwargs)
    if not target.is_floating_point():
        # an ignored row contributes 0 (API.md); the NumPy layer gives NaN for an ignored row holding +inf
        # when z_loss > 0 (z * lse**2 * kept is inf * 0 there), reported to the lead, not pinned here
        losses = np.where(t == numpy_kwargs.get("ignore_index", -100), 0.0, losses)
    return losses, grad


def transformed(logits, options: LossOptions):
    """The scores whose log-sum-exp is lse: the soft cap keeps -inf logits at -inf (masks, not scores)."""
    z = logits.double()
    if options.softcap is not None:
        z = torch.where(z == float("-inf"), z, options.softcap * torch.tanh(z / options.softcap))
    return z / options.temperature


def run(logits, target, weight, options, *, grad_scale=0.75, config=SMALL, grad=True, **kwargs):
    grad_out = torch.full_like(logits, float("nan")) if grad else None  # NaN: every entry must be written
    with configured(**config):
        losses, lse = sxtt.cross_entropy_rows(logits, target, weight, options, grad_scale=grad_scale,
                                              grad_out=grad_out, **kwargs)
    return losses, lse, grad_out


def check_against_numpy(logits, target, weight, options, numpy_kwargs, *, config=SMALL, grad_scale=0.75):
    losses, lse, grad = run(logits, target, weight, options, grad_scale=grad_scale, config=config)
    ref_losses, ref_grad = numpy_reference(logits, target, numpy_kwargs)
    assert losses.dtype == torch.float32 and lse.dtype == torch.float32 and grad.dtype == logits.dtype
    # losses and lse are float32 computed from the exact (possibly 16-bit) inputs: float32 tolerance,
    # with room for float32 sums over a few hundred terms
    assert_close(losses, ref_losses, dtype="float32", scale=4, what="losses")
    assert_close(lse, torch.logsumexp(transformed(logits, options), dim=1), dtype="float32", scale=4, what="lse")
    scale = float(grad_scale) if not isinstance(grad_scale, torch.Tensor) else float(grad_scale.item())
    assert_close(grad, scale * ref_grad, what="gradient", scale=4)


# --- the option grid ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", OPTIONS, ids=_ids)
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("shape", [(3, 423), (5, 1)], ids=["3x423", "5x1"])
def test_matches_numpy_float32(shape, kind, options):
    if kind == "probs" and "ignore_index" in options:
        pytest.skip("ignore_index applies to class-index targets only")
    logits, target, weight, opts, kw = make_problem(*shape, kind, options)
    check_against_numpy(logits, target, weight, opts, kw)


@pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[3], OPTIONS[5], OPTIONS[-1]], ids=_ids)
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_matches_numpy_16bit(dtype, kind, options):
    logits, target, weight, opts, kw = make_problem(3, 423, kind, options, dtype=dtype)
    check_against_numpy(logits, target, weight, opts, kw)


@pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[-1]], ids=_ids)
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_split_rows_match_numpy(kind, options):
    """(2, 4097) over 5 programs per row: chunk states combined by log-sum-exp in a second launch."""
    assert plan_rows(2, 4097, torch.device("cpu"), sxtt.KernelConfig(**SPLIT)).splits == 5
    logits, target, weight, opts, kw = make_problem(2, 4097, kind, options)
    logits[0, 4000] = 40.0  # the max in the last chunk: the combine must move it across chunks
    check_against_numpy(logits, target, weight, opts, kw, config=SPLIT)


def test_split_rows_bfloat16_in_place():
    logits, target, weight, opts, kw = make_problem(2, 4097, "index", OPTIONS[3], dtype=torch.bfloat16)
    ref_losses, ref_grad = numpy_reference(logits, target, kw)
    with configured(**SPLIT):
        losses, _ = sxtt.cross_entropy_rows(logits, target, weight, opts, grad_out=logits)
    assert_close(losses, ref_losses, dtype="float32", scale=4, what="losses")
    assert_close(logits, ref_grad, what="gradient written over the logits")


def test_rows_split_to_fill_the_device():
    """Few long rows: CONFIG.fill_programs splits them even below program_columns."""
    config = dict(block=32, fill_programs=8)  # 423 columns hold 3 chunks of at least 4 blocks
    assert plan_rows(2, 423, torch.device("cpu"), sxtt.KernelConfig(**config)).splits == 3
    logits, target, weight, opts, kw = make_problem(2, 423, "index", OPTIONS[-1])
    check_against_numpy(logits, target, weight, opts, kw, config=config)


@pytest.mark.skipif(DEVICE == "cpu", reason="real vocabularies take minutes in the interpreter")
@pytest.mark.parametrize("classes", [32000, 50257, 128256, 300000])  # 300000: split with the default config
def test_real_vocabularies_match_torch(classes):
    """bfloat16 logits at LLM vocabulary sizes, default launch configuration, against torch in float32."""
    g = torch.Generator().manual_seed(0)
    logits = on_device((torch.randn(64, classes, generator=g) * 4).bfloat16())
    target = on_device(torch.randint(0, classes, (64,), generator=g))
    target[3] = -100
    weight = on_device(torch.rand(classes, generator=g) + 0.5)
    options = LossOptions(label_smoothing=0.1)
    scale = sxtt.mean_scale(target, weight, -100, classes)
    grad = torch.empty_like(logits)
    losses, lse = sxtt.cross_entropy_rows(logits, target, weight, options, grad_scale=scale, grad_out=grad)
    x = logits.float().requires_grad_()
    ref = torch.nn.functional.cross_entropy(x, target, weight=weight, label_smoothing=0.1)
    ref.backward()
    assert_close(losses.sum() * scale, ref, dtype="float32", scale=50, what="mean loss")
    assert_close(lse, torch.logsumexp(x.detach(), dim=1), dtype="float32", scale=10, what="lse")
    assert_close(grad, x.grad, dtype="bfloat16", what="gradient")


def test_matches_torch_functional():
    """A second oracle: torch's own cross_entropy and autograd in float64 (weights, smoothing, ignore)."""
    logits, target, weight, opts, _ = make_problem(4, 423, "index", {"weight": True, "label_smoothing": 0.15})
    losses, lse, grad = run(logits, target, weight, opts, grad_scale=1.0)
    x = logits.double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(x, target, weight=weight.double(), reduction="none",
                                            label_smoothing=0.15)
    ref.sum().backward()
    assert_close(losses, ref, dtype="float32", scale=4, what="losses")
    assert_close(grad, x.grad, what="gradient", scale=4)

    probs = torch.softmax(torch.randn(4, 423, dtype=torch.float64), dim=1).float().to(DEVICE)
    losses, _, grad = run(logits, probs, None, LossOptions(), grad_scale=1.0)
    x.grad = None
    ref = torch.nn.functional.cross_entropy(x, probs.double(), reduction="none")
    ref.sum().backward()
    assert_close(losses, ref, dtype="float32", scale=4, what="losses (probabilities)")
    assert_close(grad, x.grad, what="gradient (probabilities)", scale=4)


# 15 examples on the CI profile (a quarter of its budget: each costs a few interpreted launches)
@settings(max_examples=max(15, settings.default.max_examples // 4), deadline=None)
@given(rows=st.integers(1, 4), classes=st.integers(1, 150), kind=st.sampled_from(["index", "probs"]),
       weighted=st.booleans(), label_smoothing=st.sampled_from([0.0, 0.05, 1.0]), z_loss=st.sampled_from([0.0, 1e-3]),
       softcap=st.sampled_from([None, 2.0]), temperature=st.sampled_from([1.0, 0.5]),
       block=st.sampled_from([16, 64]), special=st.sampled_from([None, "masked-row", "+inf", "-inf"]),
       seed=st.integers(0, 2**16))
def test_random_problems_match_numpy(rows, classes, kind, weighted, label_smoothing, z_loss, softcap, temperature,
                                     block, special, seed):
    options = dict(label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, temperature=temperature,
                   weight=weighted)
    logits, target, weight, opts, kw = make_problem(rows, classes, kind, options, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    if special == "masked-row":
        logits[0] = float("-inf")
    elif special is not None:
        picked = torch.rand(rows, classes, generator=g) < 0.2
        logits[picked.to(DEVICE)] = float(special)
    check_against_numpy(logits, target, weight, opts, kw, config=dict(block=block))


# --- limits of API.md rules 2-4 --------------------------------------------------------------------------------


def test_fully_masked_row_gives_zero_loss_and_gradient():
    logits, target, weight, opts, kw = make_problem(3, 423, "index", {"z_loss": 1e-2, "label_smoothing": 0.1})
    logits[0] = float("-inf")
    losses, lse, grad = run(logits, target, weight, opts)
    assert losses[0] == 0 and lse[0] == float("-inf") and torch.all(grad[0] == 0)
    ref_losses, ref_grad = numpy_reference(logits, target, kw)
    assert_close(losses, ref_losses, dtype="float32", scale=4)
    assert_close(grad, 0.75 * ref_grad, scale=4)


def test_infinite_logits_take_the_limit():
    """+inf entries share the mass (rule 3); a -inf logit with target probability 0 is finite (rule 4)."""
    logits, target, weight, opts, kw = make_problem(3, 423, "probs", {})
    logits[0, 5] = logits[0, 300] = float("inf")
    logits[1, target[1] == 0] = float("-inf")
    losses, lse, grad = run(logits, target, weight, opts)
    ref_losses, ref_grad = numpy_reference(logits, target, kw)
    assert lse[0] == float("inf") and torch.isfinite(losses[1])
    assert_close(losses, ref_losses, dtype="float32", scale=4)
    assert_close(grad, 0.75 * ref_grad, scale=4)


@pytest.mark.parametrize("kind", ["index", "probs"])
def test_soft_cap_keeps_masked_logits_masked(kind):
    """A -inf logit is a mask: the cap must not lift it to -softcap and give it mass (main's NumPy rule)."""
    logits, target, weight, opts, kw = make_problem(3, 423, kind, {"softcap": 3.0, "label_smoothing": 0.1})
    masked = torch.zeros(3, 423, dtype=torch.bool, device=DEVICE)
    masked[:, 200:300] = True
    masked[2] = True  # a fully masked row under the cap
    logits[masked] = float("-inf")
    if kind == "probs":
        target[masked] = 0.0
    losses, lse, grad = run(logits, target, weight, opts)
    assert torch.all(grad[masked] == 0) and losses[2] == 0 and lse[2] == float("-inf")
    ref_losses, ref_grad = numpy_reference(logits, target, kw)
    assert_close(losses, ref_losses, dtype="float32", scale=4)
    assert_close(grad, 0.75 * ref_grad, scale=4)


def test_regression_temperature_overflowed_before_the_shift():
    """x / T formed before subtracting the max overflows float32 (3e38 / 0.5); after the shift it cannot."""
    logits = on_device(torch.tensor([[3e38, 2.9e38, 0.0], [1.0, 2.0, 3.0]]))
    losses, lse, grad = run(logits, on_device(torch.tensor([1, 0])), None, LossOptions(temperature=0.5), grad_scale=1.0)
    assert_close(losses[0], torch.tensor(0.1e38 / 0.5), dtype="float32", what="loss of the huge row")
    assert lse[0] == float("inf")  # the true log-sum-exp, 6e38, is beyond float32
    assert_close(grad[0], torch.tensor([1.0, -1.0, 0.0]) / 0.5, what="gradient of the huge row")
    ref_losses, ref_grad = numpy_reference(logits[1:], on_device(torch.tensor([0])), {"temperature": 0.5})
    assert_close(losses[1:], ref_losses, dtype="float32", scale=4)


def test_nan_logit_poisons_only_its_row():
    logits, target, weight, opts, _ = make_problem(3, 423, "index", {})
    logits[2, 100] = float("nan")
    losses, lse, grad = run(logits, target, weight, opts)
    assert torch.isnan(losses[2]) and torch.isnan(lse[2]) and torch.isnan(grad[2]).all()
    assert torch.isfinite(losses[:2]).all() and torch.isfinite(grad[:2]).all()


def test_dominant_target_loss_is_exact():
    """loss = (m - z_t) + log1p(rest): 1e-10 is not lost to 1 + tiny rounding to 1 in float32."""
    logits = on_device(torch.tensor([[30.0, 7.0, 5.0], [0.0, 0.0, 0.0]]))
    losses, _, _ = run(logits, on_device(torch.tensor([0, 1])), None, LossOptions(), grad=False)
    exact = np.log1p(np.exp(-23.0) + np.exp(-25.0))  # about 1.1e-10
    assert abs(losses[0].item() - exact) <= 2e-7 * exact
    assert abs(losses[1].item() - np.log(3.0)) <= 2e-7


# --- memory and layout -------------------------------------------------------------------------------------------


def test_in_place_gradient_equals_separate_buffer():
    logits, target, weight, opts, _ = make_problem(3, 423, "probs", OPTIONS[-1])
    _, _, grad = run(logits, target, weight, opts)
    in_place = logits.clone()
    losses, _ = run(in_place, target, weight, opts, grad=False)[:2]
    with configured(**SMALL):
        losses2, _ = sxtt.cross_entropy_rows(in_place, target, weight, opts, grad_scale=0.75, grad_out=in_place)
    assert torch.equal(losses, losses2)
    assert torch.equal(in_place, grad)


def test_strided_inputs_and_outputs():
    """Row-strided logits and targets (slices of wider tensors) and a transposed gradient buffer."""
    wide = on_device(torch.randn(3, 500) * 3)
    logits = wide[:, 10:433]  # row stride 500, unit column stride: read in place
    target = on_device(torch.tensor([[4], [-100], [400]]))[:, 0]  # stride 1 view of a column
    grad_out = on_device(torch.empty(423, 3)).T  # column stride 3: written through a copy
    with configured(**SMALL):
        losses, _ = sxtt.cross_entropy_rows(logits, target, None, LossOptions(), grad_scale=0.75, grad_out=grad_out)
    ref_losses, ref_grad = numpy_reference(logits, target, {})
    assert_close(losses, ref_losses, dtype="float32", scale=4)
    assert_close(grad_out, 0.75 * ref_grad, scale=4)
    transposed = logits.contiguous().T.contiguous().T  # column stride 3 logits
    losses_t, _, grad_t = run(transposed, target, None, LossOptions())
    assert_close(losses_t, ref_losses, dtype="float32", scale=4)
    assert_close(grad_t, 0.75 * ref_grad, scale=4)


def test_tensor_grad_scale_and_no_gradient():
    logits, target, weight, opts, kw = make_problem(3, 423, "index", {"weight": True})
    scale = sxtt.mean_scale(target, weight, opts.ignore_index, 423)
    ref_losses, ref_grad = numpy_reference(logits, target, kw)
    check_against_numpy(logits, target, weight, opts, kw, grad_scale=scale)
    losses, lse, grad = run(logits, target.to(torch.int32), weight, opts, grad=False)
    assert grad is None
    assert_close(losses, ref_losses, dtype="float32", scale=4)
    mean, mean_grad = sx.cross_entropy(logits.double().cpu().numpy(), target.cpu().numpy(), weight=kw["weight"],
                                       return_grad=True)
    assert abs(float(losses.double().sum() * scale) - mean) <= 1e-6 * abs(mean)


def test_mean_scale_when_everything_is_ignored():
    target = on_device(torch.full((4,), -100))
    assert float(sxtt.mean_scale(target, None, -100, 5)) == 0.0
    assert float(sxtt.mean_scale(target, on_device(torch.ones(5)), -100, 5)) == 0.0
    assert float(sxtt.mean_scale(on_device(torch.zeros(4, 5)), None, -100, 5)) == 0.25


def test_empty_batch_and_no_classes():
    losses, lse, grad = run(on_device(torch.empty(0, 7)), on_device(torch.empty(0, dtype=torch.int64)), None,
                            LossOptions())
    assert losses.shape == (0,) and lse.shape == (0,) and grad.shape == (0, 7)
    losses, lse, _ = run(on_device(torch.empty(2, 0)), on_device(torch.full((2,), -100)), None, LossOptions())
    assert torch.equal(losses.cpu(), torch.zeros(2)) and torch.all(lse == float("-inf"))


# --- bad labels (rule 7) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [SMALL, SPLIT], ids=["fused", "split"])
def test_bad_label_raises_naming_it(config):
    logits = on_device(torch.randn(3, 423 if config is SMALL else 4097))
    target = on_device(torch.tensor([1, 423 if config is SMALL else -5, -7]))
    bad = int(target[1])
    for mode in ("sync", "lazy") if DEVICE == "cpu" else ("sync",):  # lazy is free on CPU: raises at once
        with pytest.raises(ValueError, match=rf"target holds class index {bad} at position \(1,\)"):
            with configured(**config):
                sxtt.cross_entropy_rows(logits, target, None, LossOptions(), label_check=mode)
    with pytest.raises(ValueError, match=r"position \(0, 1\)"):
        with configured(**config):
            sxtt.cross_entropy_rows(logits, target, None, LossOptions(), label_check="sync", label_shape=(1, 3))


def test_bad_label_unchecked_gives_nan_row_never_a_wrap():
    logits = on_device(torch.randn(3, 423))
    losses, lse, grad = run(logits, on_device(torch.tensor([1, 500, -100])), None, LossOptions(), label_check="off")
    assert torch.isnan(losses[1]) and torch.isnan(grad[1]).all() and torch.isfinite(lse).all()
    assert torch.isfinite(losses[[0, 2]]).all() and torch.isfinite(grad[[0, 2]]).all()


@pytest.mark.skipif(DEVICE == "cpu", reason="on CPU tensors the lazy check costs nothing and raises at once")
def test_lazy_label_check_on_the_gpu_raises_later_without_a_sync():
    logits = on_device(torch.randn(3, 423))
    target = on_device(torch.tensor([1, 423, -100]))
    _labels._pending.clear()
    losses, _ = sxtt.cross_entropy_rows(logits, target, None, LossOptions(), label_check="lazy")
    assert torch.isnan(losses[1])  # poisoned at once; the error follows
    with pytest.raises(ValueError, match=r"earlier.*class index 423 at position \(1,\)"):
        sxtt.check_labels()
    sxtt.cross_entropy_rows(logits, target, None, LossOptions(), label_check="lazy")
    torch.cuda.synchronize()
    with pytest.raises(ValueError, match="class index 423"):  # the next call finds the arrived flag
        sxtt.cross_entropy_rows(logits, on_device(torch.tensor([1, 2, 3])), None, LossOptions(), label_check="lazy")


def test_lazy_label_check_raises_at_a_later_call():
    """The CUDA path: the flag's host copy is read once its event has completed, never waited for."""

    class Event:
        def __init__(self, done):
            self.done = done

        def query(self):
            return self.done

        def synchronize(self):
            self.done = True

    key = 7 * 2**32 + (-3) % 2**32  # row 7, label -3
    pending = _labels._Pending(torch.tensor([key]), Event(False), 10, -100, None)
    _labels._pending.append(pending)
    try:
        _labels.raise_arrived()  # not arrived yet: nothing happens
        pending.event.done = True
        with pytest.raises(ValueError, match=r"earlier.*class index -3 at position \(7,\)"):
            run(on_device(torch.randn(1, 4)), on_device(torch.tensor([0])), None, LossOptions())  # the next call
        assert not _labels._pending
        _labels._pending.append(_labels._Pending(torch.tensor([_labels.NO_BAD]), Event(False), 10, -100, None))
        sxtt.check_labels()  # waits, finds every label fine
        assert not _labels._pending
    finally:
        _labels._pending.clear()


def test_seam_rejects_wiring_mistakes():
    logits = on_device(torch.randn(2, 5))
    with pytest.raises(ValueError, match="class-index target"):
        sxtt.cross_entropy_rows(logits, torch.zeros(3, dtype=torch.int64), None, LossOptions())
    with pytest.raises(ValueError, match="weight"):
        sxtt.cross_entropy_rows(logits, on_device(torch.zeros(2, dtype=torch.int64)), on_device(torch.ones(4)),
                                LossOptions())
    with pytest.raises(ValueError, match="grad_out"):
        sxtt.cross_entropy_rows(logits, on_device(torch.zeros(2, dtype=torch.int64)), None, LossOptions(),
                                grad_out=on_device(torch.empty(5, 2)))
    with pytest.raises(ValueError, match="label_check"):
        sxtt.cross_entropy_rows(logits, on_device(torch.zeros(2, dtype=torch.int64)), None, LossOptions(),
                                label_check="maybe")
    with pytest.raises(TypeError, match="float64"):
        sxtt.cross_entropy_rows(logits.double(), on_device(torch.zeros(2, dtype=torch.int64)), None, LossOptions())
    with pytest.raises(ValueError, match="block"):
        with configured(block=100):
            pass
