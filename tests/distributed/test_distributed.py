"""Vocab-parallel cross-entropy on gloo: 1, 2 and 3 processes against the full-vocabulary loss in one process.

Each world size is one spawn (tests/gloo_spawn.py) of WORLD processes (tests/_distributed_worker.py) that
runs every case of that world in the same process group, so the cost of starting processes and gloo is
paid three times, not per case. The cases hold the full-vocabulary inputs; each rank takes its slice; this process holds
the oracles, all on the whole vocabulary: the single-process softxent.torch result (cross_entropy /
linear_cross_entropy, the reference issue 6 names: the same semantics, in the same dtype), the NumPy
layer (softxent.cross_entropy / linear_cross_entropy, float64 inside) and torch's own functional
cross-entropy where its semantics are ours. Slices: 13 classes as [13], [5, 8] and [2, 7, 4] (uneven),
plus [6, 0, 7] (an empty slice) for some cases at 3 ranks.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import softxent as sx
import softxent.torch as sxt
from compare import assert_close, to_numpy
from gloo_spawn import Spawn

# make test runs the suite on xdist workers (--dist loadgroup): this group keeps the module on one worker,
# so its module-scoped spawn of gloo ranks runs once, not once on each worker
pytestmark = pytest.mark.xdist_group("test_distributed")

WORKER = Path(__file__).resolve().parent.parent / "_distributed_worker.py"
HARD_TIMEOUT = 60.0  # seconds for a whole spawn: a hang fails the test instead of blocking the suite
VOCAB = 13
SIZES = {1: [13], 2: [5, 8], 3: [2, 7, 4]}
EMPTY_SLICE = [6, 0, 7]
WORLDS = (1, 2, 3)


# --- the cases --------------------------------------------------------------------------------------------

def _labels(gen, shape, ignored: str, ignore_index: int) -> torch.Tensor:
    labels = torch.randint(0, VOCAB, shape, generator=gen)
    if ignored == "some":
        labels.view(-1)[::3] = ignore_index
    elif ignored == "all":
        labels.fill_(ignore_index)
    return labels


def _upstream(gen, reduction: str, batch_shape: tuple, dtype=torch.float32) -> torch.Tensor:
    """A random incoming gradient, not 1: a wrong scaling of the backward cannot hide behind it."""
    shape = batch_shape if reduction == "none" else ()
    return (torch.rand(shape, generator=gen) + 0.5).to(dtype)


def _ce_case(name, seed, *, batch=(6,), reduction="mean", ignored="none", smoothing=0.0, z=0.0, weighted=False,
             probs=False, dtype=torch.float32, ignore_index=-100, edit=None, sizes=None):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch + (VOCAB,), generator=gen) * 2).to(dtype)
    if probs:
        target = torch.softmax(torch.randn(batch + (VOCAB,), generator=gen), dim=-1).to(dtype)
    else:
        target = _labels(gen, batch, ignored, ignore_index)
    weight = (torch.rand(VOCAB, generator=gen) + 0.25).to(dtype) if weighted else None
    if edit is not None:
        logits, target, weight = edit(logits, target, weight)
    options = dict(reduction=reduction, ignore_index=ignore_index, label_smoothing=smoothing, z_loss=z,
                   weight=weight)
    return dict(kind="ce", id=name, logits=logits, target=target, options=options, sizes=sizes,
                upstream=_upstream(gen, reduction, batch, dtype), view=seed % 2 == 1)


def _linear_case(name, seed, *, rows=7, features=5, reduction="mean", ignored="none", smoothing=0.0, z=0.0,
                 weighted=False, bias=True, probs=False, chunk_size=None, reduce_input_grad=True, backward_passes=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=gen)
    w = torch.randn(VOCAB, features, generator=gen)
    b = torch.randn(VOCAB, generator=gen) if bias else None
    target = torch.softmax(torch.randn(rows, VOCAB, generator=gen), -1) if probs else \
        _labels(gen, (rows,), ignored, -100)
    weight = torch.rand(VOCAB, generator=gen) + 0.25 if weighted else None
    options = dict(reduction=reduction, label_smoothing=smoothing, z_loss=z, weight=weight, chunk_size=chunk_size,
                   reduce_input_grad=reduce_input_grad)
    return dict(kind="linear", id=name, x=x, w=w, b=b, target=target, options=options, sizes=None,
                upstream=_upstream(gen, reduction, (rows,)), backward_passes=backward_passes)


def _masked_rows(logits, target, weight):
    logits[0] = -math.inf  # every class of row 0, on every rank: 0 loss, 0 gradient, counted by "mean"
    logits[1, :6] = -math.inf  # row 1: -inf on the first slices only
    logits[2, 9] = -math.inf  # a single -inf logit, not the target
    target[2] = 0 if target[2] == 9 else target[2]
    return logits, target, weight


def _infinite_rows(logits, target, weight):
    logits[0, [3, 10]] = math.inf  # two +inf entries on different slices: each gets half the mass
    target[0] = 10
    logits[1, 4] = math.inf  # the target is not the +inf entry: infinite loss
    return logits, target, weight


def _zero_weight_at_minus_inf(logits, target, weight):
    logits[:, 11] = -math.inf  # a class of weight 0 whose logit is -inf: 0 * inf counts as 0 (rule 4)
    weight[11] = 0.0
    target[target == 11] = 1
    return logits, target, weight


def ce_grid():
    """reduction x ignored rows x label smoothing x z-loss x class weights, class-index targets."""
    grid = itertools.product(("none", "mean", "sum"), ("none", "some", "all"), (0.0, 0.2), (0.0, 0.05),
                             (False, True))
    return [_ce_case(f"ce-{r}-ignore:{i}-ls{s}-z{z}-w{int(w)}", seed, reduction=r, ignored=i, smoothing=s, z=z,
                     weighted=w) for seed, (r, i, s, z, w) in enumerate(grid)]


def probability_grid():
    grid = itertools.product(("none", "mean", "sum"), (0.0, 0.2), (0.0, 0.05), (False, True))
    return [_ce_case(f"probs-{r}-ls{s}-z{z}-w{int(w)}", 100 + seed, reduction=r, smoothing=s, z=z, weighted=w,
                     probs=True) for seed, (r, s, z, w) in enumerate(grid)]


def special_cases():
    return [
        _ce_case("kdim-batch(2,3)", 200, batch=(2, 3), reduction="none", ignored="some", smoothing=0.1, weighted=True),
        _ce_case("kdim-probs", 201, batch=(2, 3), reduction="mean", probs=True, smoothing=0.1),
        _ce_case("float64", 202, dtype=torch.float64, ignored="some", smoothing=0.1, z=0.01, weighted=True),
        _ce_case("float64-probs", 203, dtype=torch.float64, probs=True, smoothing=0.1, weighted=True),
        _ce_case("bfloat16", 204, dtype=torch.bfloat16, ignored="some", smoothing=0.1),
        _ce_case("ignore_index-is-a-class", 205, ignored="some", ignore_index=4, smoothing=0.1, weighted=True),
        _ce_case("masked-rows", 206, ignored="none", smoothing=0.0, z=0.05, edit=_masked_rows),
        _ce_case("masked-rows-sum", 207, reduction="sum", edit=_masked_rows),
        _ce_case("infinite-logits", 208, reduction="none", edit=_infinite_rows),
        _ce_case("zero-weight-at-minus-inf", 209, smoothing=0.2, weighted=True, edit=_zero_weight_at_minus_inf),
        _ce_case("empty-batch-mean", 210, batch=(0,)),
        _ce_case("empty-batch-none", 211, batch=(0,), reduction="none"),
        _ce_case("one-row-no-batch", 212, batch=(), reduction="mean", smoothing=0.1),
        _ce_case("large-logits", 213, edit=lambda l, t, w: (l * 1000, t, w), smoothing=0.1),
        # 4096 rows: the communication volume of a realistic batch (the docstring's numbers, measured)
        _ce_case("volume-4096-rows", 214, batch=(4096,), reduction="mean"),
    ]


def linear_cases():
    grid = itertools.product(("none", "mean", "sum"), (0.0, 0.2), (False, True), (False, True))
    cases = [_linear_case(f"linear-{r}-ls{s}-w{int(w)}-bias{int(b)}", 300 + seed, reduction=r, smoothing=s,
                          weighted=w, bias=b, ignored="some" if seed % 2 else "none", z=0.05 if seed % 3 else 0.0,
                          chunk_size=2 if seed % 2 else None)
             for seed, (r, s, w, b) in enumerate(grid)]
    cases.append(_linear_case("linear-probs", 330, probs=True, smoothing=0.1, weighted=True, chunk_size=3))
    cases.append(_linear_case("linear-no-input-grad-sum", 331, reduce_input_grad=False, chunk_size=3))
    cases.append(_linear_case("linear-all-ignored", 332, ignored="all"))
    # a second backward through the kept single chunk must recompute, not reuse the overwritten logits
    cases.append(_linear_case("linear-backward-twice", 333, smoothing=0.1, backward_passes=2))
    cases.append(_linear_case("linear-backward-twice-chunked", 334, smoothing=0.1, chunk_size=3, backward_passes=2))
    return cases


def fault_cases(world):
    faults = ["shape", "dtype", "target", "local", "label", "options", "probs", "linear", "function"]
    cases = [dict(kind="fault", id=f"fault-{what}", what=what) for what in faults]
    # the group still works after every rank raised the same error
    after = _ce_case("after-faults", 400, ignored="some", smoothing=0.1, weighted=True)
    cases.append(after)
    if world == 2:  # last: a timed-out gloo group is closed
        cases.append(dict(kind="absent", id="absent-rank", timeout=1.0))
    return cases


def cases_for(world):
    cases = ce_grid() + probability_grid() + special_cases() + linear_cases()
    if world == 3:
        cases += [dict(case, id=case["id"] + "-empty-slice", sizes=EMPTY_SLICE)
                  for case in ce_grid()[::7] + probability_grid()[::5] + linear_cases()[::6]]
        # a subgroup of ranks 0 and 2 (group rank 1 is global rank 2); rank 1 stays out
        cases += [dict(_ce_case("subgroup-of-0-and-2", 500, ignored="some", smoothing=0.1, weighted=True),
                       kind="subgroup", ranks=[0, 2], sizes=SIZES[2])]
    if world > 1:
        cases += fault_cases(world)
    for case in cases:
        case["sizes"] = case.get("sizes") or SIZES[world]
    return cases


CASE_IDS = {world: [case["id"] for case in cases_for(world)] for world in WORLDS}


# --- running the groups -------------------------------------------------------------------------------------

def spawn(world: int, cases: list, workdir: Path) -> list[list[dict]]:
    return Spawn(WORKER, world, cases, workdir, timeout=HARD_TIMEOUT).results()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """world -> (cases, per-rank results). All worlds start together on first use (6 processes: their
    imports overlap on the cores a single world leaves idle); each is waited for when first needed."""
    spawns = {}

    def get(world):
        if not spawns:
            for w in WORLDS:
                spawns[w] = Spawn(WORKER, w, cases_for(w), tmp_path_factory.mktemp(f"world{w}"),
                                  timeout=HARD_TIMEOUT)
        return spawns[world].cases, spawns[world].results()
    yield get
    for spawn_ in spawns.values():  # a failed test must not leave ranks behind
        spawn_.kill()


def result_of(runs, world, case_id):
    cases, results = runs(world)
    index = [case["id"] for case in cases].index(case_id)
    ranks = cases[index].get("ranks", range(world))  # a subgroup's members, in group-rank order
    per_rank = [results[r][index] for r in ranks]
    for r, result in enumerate(per_rank):
        assert "error" not in result, f"rank {r} raised {result['error']}: {result['message']}\n{result['traceback']}"
    return cases[index], per_rank


# --- the oracles --------------------------------------------------------------------------------------------

def _np(t):
    return None if t is None else to_numpy(t)


def numpy_reference(case):
    """Loss and d(loss)/d(logits) times the upstream gradient, from the NumPy layer on the full vocabulary."""
    opts = dict(case["options"])
    weight = opts.pop("weight")
    target = case["target"]
    # errstate: the NumPy layer's weight-0-at-(-inf) fallback multiplies 0 * inf inside np.where (its result
    # is right; the warning is spurious, and the suite turns softxent's RuntimeWarnings into errors)
    with np.errstate(invalid="ignore" if case["id"].startswith("zero-weight") else "warn"):
        loss, grad = sx.cross_entropy(_np(case["logits"]), _np(target) if target.is_floating_point() else
                                      target.numpy(), weight=_np(weight), return_grad=True, **opts)
    upstream = _np(case["upstream"]).astype(np.float64)
    grad = grad * (upstream[..., None] if opts["reduction"] == "none" else upstream)
    return np.asarray(loss), grad


def full_vocabulary_reference(case, cross_entropy, **extra):
    """Loss and upstream-weighted d(loss)/d(logits) of a torch-style `cross_entropy` on the full vocabulary.

    Vocab-parallel takes classes last, (..., V); torch's convention (softxent.torch's too) is (C,), (N, C)
    or (N, C, d1, ...): classes on dim 1 for K-dim inputs, so those are moved there (probability targets
    alike), and the gradient comes back through the move in the (..., V) layout.
    """
    opts = case["options"]
    logits = case["logits"].detach().clone().requires_grad_(True)
    target = case["target"]
    class_first = logits.movedim(-1, 1) if logits.dim() > 2 else logits
    target_ = target.movedim(-1, 1) if target.is_floating_point() and target.dim() > 2 else target
    loss = cross_entropy(class_first, target_, weight=opts["weight"], ignore_index=opts["ignore_index"],
                         reduction=opts["reduction"], label_smoothing=opts["label_smoothing"], **extra)
    loss.backward(case["upstream"])
    return loss.detach(), logits.grad


def softxent_torch_linear_reference(case, opts):
    """softxent.torch.linear_cross_entropy in one process on the whole layer: loss, dx, dW, db.

    The gradients are those the worker accumulates over its backward passes, each adding the same; one
    backward times the passes here (softxent.torch computes its gradients in the forward and refuses a
    second backward through the same graph).
    """
    x, w = case["x"].clone().requires_grad_(True), case["w"].clone().requires_grad_(True)
    b = None if case["b"] is None else case["b"].clone().requires_grad_(True)
    loss = sxt.linear_cross_entropy(x, w, case["target"], linear_bias=b, **opts)
    loss.backward(case["upstream"])
    passes = case["backward_passes"]
    return loss.detach(), *(None if g is None else passes * g.grad for g in (x, w, b))


def softxent_torch_reference(case):
    """softxent.torch.cross_entropy in one process on the full vocabulary: every option, every case."""
    return full_vocabulary_reference(case, sxt.cross_entropy, z_loss=case["options"]["z_loss"])


def torch_reference(case):
    """torch.nn.functional.cross_entropy on the full vocabulary, where its semantics are ours."""
    return full_vocabulary_reference(case, F.cross_entropy)


def torch_applies(case) -> bool:
    """torch differs by design with z-loss, all ignored + "mean" (NaN), -inf rows; keep it to clean inputs."""
    logits, target, opts = case["logits"], case["target"], case["options"]
    all_ignored = not target.is_floating_point() and bool((target == opts["ignore_index"]).all())
    return (opts["z_loss"] == 0 and torch.isfinite(logits).all() and logits.numel() > 0
            and not (all_ignored and opts["reduction"] == "mean"))


def _dtype(case):
    return str(case["logits"].dtype).replace("torch.", "")


def _check_ce(case, per_rank):
    dtype = _dtype(case)
    losses = [r["loss"] for r in per_rank]
    for r, loss in enumerate(losses[1:], 1):  # the same computation on the same gathered data: bit-identical
        assert torch.equal(loss, losses[0]) or (loss.isnan() == losses[0].isnan()).all(), \
            f"rank {r}'s loss {loss} differs from rank 0's {losses[0]}"
    grad = torch.cat([r["grad"] for r in per_rank], dim=-1)
    assert grad.dtype == case["logits"].dtype and losses[0].dtype == case["logits"].dtype
    s_loss, s_grad = softxent_torch_reference(case)
    assert losses[0].dtype == s_loss.dtype and losses[0].shape == s_loss.shape
    assert_close(losses[0], s_loss, dtype=dtype, what="loss vs softxent.torch")
    assert_close(grad, s_grad, dtype=dtype, what="gradient vs softxent.torch")
    ref_loss, ref_grad = numpy_reference(case)
    assert_close(losses[0], ref_loss, dtype=dtype, what="loss vs NumPy")
    assert_close(grad, ref_grad, dtype=dtype, what="gradient vs NumPy")
    if torch_applies(case):
        t_loss, t_grad = torch_reference(case)
        scale = 4.0 if dtype == "float32" else 1.0  # torch computes in float32: a few ulp of its own
        assert_close(losses[0], t_loss, dtype=dtype, what="loss vs torch", scale=scale)
        assert_close(grad, t_grad, dtype=dtype, what="gradient vs torch", scale=scale)


# --- the tests ---------------------------------------------------------------------------------------------

def _ids(world, prefixes):
    return [(world, i) for i in CASE_IDS[world] if i.startswith(prefixes)]


CE_PARAMS = [p for w in WORLDS for p in _ids(w, ("ce-", "probs-", "kdim", "float", "bfloat", "ignore_index", "masked",
                                              "infinite", "zero-weight", "empty", "one-row", "large", "volume",
                                              "after-faults", "subgroup"))]
LINEAR_PARAMS = [p for w in WORLDS for p in _ids(w, ("linear-",))]


@pytest.mark.parametrize("world,case_id", CE_PARAMS, ids=[f"{w}ranks-{i}" for w, i in CE_PARAMS])
def test_loss_and_gradient_match_full_vocabulary(runs, world, case_id):
    case, per_rank = result_of(runs, world, case_id)
    _check_ce(case, per_rank)


@pytest.mark.parametrize("world,case_id", LINEAR_PARAMS, ids=[f"{w}ranks-{i}" for w, i in LINEAR_PARAMS])
def test_linear_loss_and_gradients_match_full_layer(runs, world, case_id):
    case, per_rank = result_of(runs, world, case_id)
    opts = dict(case["options"])
    chunk_size, reduce_input_grad = opts.pop("chunk_size"), opts.pop("reduce_input_grad")
    weight, target = opts.pop("weight"), case["target"]
    probs = target.is_floating_point()
    loss = sx.linear_cross_entropy(case["x"].numpy(), case["w"].numpy(), _np(target) if probs else target.numpy(),
                                   bias=_np(case["b"]), weight=_np(weight), **opts)
    # gradients: the NumPy layer's d(loss)/d(logits) of the float64 logits, times the upstream gradient,
    # taken back through the linear layer by torch in float64
    x, w = case["x"].double().requires_grad_(True), case["w"].double().requires_grad_(True)
    b = None if case["b"] is None else case["b"].double().requires_grad_(True)
    z = x @ w.T + (0 if b is None else b)
    _, dz = sx.cross_entropy(z.detach().numpy(), _np(target).astype(np.float64) if probs else target.numpy(),
                             weight=_np(weight), return_grad=True, **opts)
    upstream = case["upstream"].numpy().astype(np.float64)
    z.backward(torch.from_numpy(dz * (upstream[:, None] if opts["reduction"] == "none" else upstream)))
    passes = case["backward_passes"]
    dx, dw, db = (passes * g.grad.numpy() if g is not None else None for g in (x, w, b))
    for r, result in enumerate(per_rank):
        assert torch.equal(result["loss"], per_rank[0]["loss"]), f"rank {r}'s loss differs from rank 0's"
    # both sides in float32: dx and dW are sums of O(1) terms that cancel, whose rounding (absolute, near
    # atol) each side has on its own (softxent.torch alone is up to 1.9x the float32 row from float64 here)
    s_loss, s_dx, s_dw, s_db = softxent_torch_linear_reference(case, dict(opts, weight=weight))
    assert per_rank[0]["loss"].shape == s_loss.shape
    assert_close(per_rank[0]["loss"], s_loss, what="loss vs softxent.torch", scale=2.0)
    assert_close(torch.cat([r["dw"] for r in per_rank]), s_dw, what="dW vs softxent.torch", scale=4.0)
    if s_db is not None:
        assert_close(torch.cat([r["db"] for r in per_rank]), s_db, what="db vs softxent.torch", scale=4.0)
    if reduce_input_grad:
        for r, result in enumerate(per_rank):
            assert_close(result["dx"], s_dx, what=f"dx on rank {r} vs softxent.torch", scale=4.0)
    else:
        assert_close(sum(result["dx"] for result in per_rank), s_dx, what="sum of partial dx vs softxent.torch",
                     scale=4.0)
    assert_close(per_rank[0]["loss"], loss, what="loss vs NumPy", scale=2.0)
    assert_close(torch.cat([r["dw"] for r in per_rank]), dw, what="dW vs NumPy", scale=4.0)
    if db is not None:
        assert_close(torch.cat([r["db"] for r in per_rank]), db, what="db vs NumPy", scale=4.0)
    rows = case["x"].shape[0]
    for result in per_rank:  # never more than a chunk of logits; one chunk is kept, more are computed again
        chunk = min(chunk_size or rows, rows)
        assert max(result["logits_rows"]) <= chunk, result["logits_rows"]
        chunks = math.ceil(rows / chunk)
        expected = 1 if chunks == 1 and passes == 1 else chunks * (1 + passes)
        if chunks == 1 and passes > 1:
            expected = 1 + (passes - 1)  # the first backward uses the kept chunk, a second recomputes it
        assert len(result["logits_rows"]) == expected, (result["logits_rows"], expected)
    if reduce_input_grad:  # every rank holds the full input gradient
        for r, result in enumerate(per_rank):
            assert_close(result["dx"], dx, what=f"dx on rank {r} vs NumPy", scale=4.0)
    else:  # each rank holds its slice's part; their sum is the input gradient
        assert_close(sum(result["dx"] for result in per_rank), dx, what="sum of partial dx vs NumPy", scale=4.0)


@pytest.mark.parametrize("world", (2, 3))
def test_label_smoothing_uses_global_vocabulary_not_local_shard(runs, world):
    """Regression (Megatron-LM's bug): the uniform part of label smoothing spreads e / V over all V classes.

    Megatron averages log-probabilities over the local slice only; that loss differs from the
    full-vocabulary loss (and from rank to rank). Ours equals the full-vocabulary loss; the test also
    shows that the local-slice version would have failed it, so it can fail.
    """
    case, per_rank = result_of(runs, world, "ce-none-ignore:none-ls0.2-z0.0-w0")
    ref_loss, _ = numpy_reference(case)
    assert_close(per_rank[0]["loss"], ref_loss, what="loss with label smoothing")
    e, sizes = case["options"]["label_smoothing"], case["sizes"]
    log_probs = torch.log_softmax(case["logits"].double(), dim=-1)
    nll = -log_probs.gather(-1, case["target"][:, None])[:, 0]
    start = 0
    for size in sizes:
        shard_uniform = -log_probs[:, start:start + size].mean(dim=-1)  # the local slice's mean only
        shard_loss = (1 - e) * nll + e * shard_uniform
        assert np.abs(shard_loss.numpy() - ref_loss).max() > 1e-3, "the local-slice formula should differ"
        start += size


def test_communication_volume_is_per_row(runs):
    """Forward: a 256-byte handshake and 3 float32 per row per rank; backward: nothing (the docstring's)."""
    for world in WORLDS:
        case, per_rank = result_of(runs, world, "volume-4096-rows")
        for result in per_rank:
            assert result["forward"] == [("allgather", 32, "torch.int64", 256),
                                         ("allgather", 4096 * 3, "torch.float32", 4096 * 3 * 4)]
            assert result["backward"] == []
        case, per_rank = result_of(runs, world, "probs-mean-ls0.0-z0.0-w0")
        assert per_rank[0]["forward"][1] == ("allgather", 6 * 4, "torch.float32", 6 * 4 * 4)
        case, per_rank = result_of(runs, world, "float64")
        assert per_rank[0]["forward"][1] == ("allgather", 6 * 3, "torch.float64", 6 * 3 * 8)
        case, per_rank = result_of(runs, world, "linear-mean-ls0.0-w0-bias1")
        rows, features = case["x"].shape
        assert per_rank[0]["backward"] == [("allreduce", rows * features, "torch.float32", rows * features * 4)]
        case, per_rank = result_of(runs, world, "linear-no-input-grad-sum")
        assert per_rank[0]["backward"] == []


FAULTS = {  # what -> (exception type, words every rank's message contains)
    "shape": ("ValueError", "disagree on the number of rows"),
    "dtype": ("ValueError", "disagree on the dtype of local_logits"),
    "target": ("ValueError", "same global class ids"),
    "local": ("TypeError", "rejected its arguments: local_logits must have a real floating-point dtype"),
    "label": ("ValueError", "holds class index 100 at position (2,), outside [0, "),  # V = 3 + 4 (+ 5)
    "options": ("ValueError", "disagree on label_smoothing"),
    "probs": ("ValueError", "must hold probabilities >= 0"),
    "linear": ("ValueError", "same activations"),
    # the last rank calls vocab_parallel_token_log_probs, named (not "code 0x...") in every rank's message
    "function": ("ValueError", "has vocab_parallel_token_log_probs"),
}


@pytest.mark.parametrize("world", (2, 3))
@pytest.mark.parametrize("what", sorted(FAULTS))
def test_fault_raises_the_same_error_on_every_rank(runs, world, what):
    """One rank's bad argument ends with the same error on every rank within the spawn's hard timeout."""
    cases, results = runs(world)
    index = [case["id"] for case in cases].index(f"fault-{what}")
    kind, words = FAULTS[what]
    messages = set()
    for r in range(world):
        result = results[r][index]
        assert result.get("error") == kind, f"rank {r}: expected {kind}, got {result}"
        assert words in result["message"], f"rank {r}: {result['message']!r} lacks {words!r}"
        assert result["seconds"] < 10, f"rank {r} took {result['seconds']:.1f} s to raise"
        # each rank's message opens with the function it called: for "function" the only difference
        messages.add(result["message"].split(": ", 1)[1] if what == "function" else result["message"])
    assert len(messages) == 1, f"the ranks raised different messages: {messages}"


def test_absent_rank_ends_in_timeout_not_hang(runs):
    """Rank 1 never calls: rank 0's collective gives up after `timeout` (1 s) with a CollectiveError."""
    cases, results = runs(2)
    index = [case["id"] for case in cases].index("absent-rank")
    result = results[0][index]
    assert result.get("error") == "CollectiveError", result
    assert "handshake all-gather failed on rank 0 of 2" in result["message"]
    assert "timeout=1 s" in result["message"]
    assert 0.9 < result["seconds"] < 8.0, result["seconds"]
