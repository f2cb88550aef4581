"""vocab_parallel_token_log_probs, global_num_items and num_items on the vocab-parallel losses, on gloo:
1, 2 and 3 processes (uneven slices, and an empty one) against the single-process results on the full
vocabulary (softxent.torch and the NumPy layer).

One spawn of 3 processes (tests/_distributed_worker.py) runs every case of this module: the worlds of
1 and 2 ranks are the subgroups [0] and [0, 1] of the 3-process group, so processes start once, not per
world or per case (on this shared 2-core machine, starting them is most of the module's time).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import softxent as sx
import softxent.torch as sxt
from compare import assert_close, ulp_error
from gloo_spawn import Spawn
from test_token_log_probs_numpy import exact_log_prob_and_entropy

# make test runs the suite on xdist workers (--dist loadgroup): this group keeps the module on one worker,
# so its module-scoped spawn of gloo ranks runs once, not once on each worker
pytestmark = pytest.mark.xdist_group("test_token_log_probs_distributed")

WORKER = Path(__file__).resolve().parent.parent / "_distributed_worker.py"
HARD_TIMEOUT = 90.0
VOCAB = 13
SIZES = {1: [13], 2: [5, 8], 3: [2, 7, 4]}
WORLDS = (1, 2, 3)


def _token_case(name, seed, *, batch=(6,), dtype=torch.float32, temperature=1.0, edit=None, sizes=None,
                ignore_index=-100):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch + (VOCAB,), generator=gen) * 3).to(dtype)
    target = torch.randint(0, VOCAB, batch, generator=gen)
    if target.numel():
        target.view(-1)[::4] = ignore_index
    if edit is not None:
        logits, target = edit(logits, target)
    return dict(kind="token", id=name, logits=logits, target=target, sizes=sizes,
                options=dict(temperature=temperature, ignore_index=ignore_index),
                upstream=torch.randn(batch, generator=gen).to(torch.float64 if dtype == torch.float64 else
                                                               torch.float32),
                upstream_entropy=torch.randn(batch, generator=gen).to(torch.float64 if dtype == torch.float64
                                                                       else torch.float32))


def _masked(logits, target):
    logits[0] = -math.inf  # every class of row 0 on every rank: 0 and a zero gradient
    logits[1, :6] = -math.inf  # -inf on the first slices only
    target[1] = 8
    logits[2, [3, 10]] = math.inf  # two +inf entries on different slices share the mass
    target[2] = 10
    return logits, target


def _confident(logits, target):
    logits[:] = -60.0
    logits[torch.arange(len(target)), 9] = 0.0  # class 9 (on the last slice) holds almost all the mass
    logits[:, 1] = -30.0
    target[:] = 9
    return logits, target


def token_cases():
    return [
        _token_case("token-float32", 1),
        _token_case("token-temperature", 2, temperature=0.6),
        _token_case("token-float64", 3, dtype=torch.float64, temperature=1.3),
        _token_case("token-bfloat16", 4, dtype=torch.bfloat16),
        _token_case("token-batch(2,3)", 5, batch=(2, 3)),
        _token_case("token-masked-and-infinite", 6, edit=_masked),
        _token_case("token-confident", 7, dtype=torch.float32, edit=_confident),
        _token_case("token-empty-batch", 8, batch=(0,)),
        _token_case("token-ignore-index-is-a-class", 9, ignore_index=4),
        _token_case("token-volume-1024-rows", 10, batch=(1024,)),
    ]


def num_items_case(world):
    gen = torch.Generator().manual_seed(20)
    targets = [torch.randint(0, VOCAB, (5,), generator=gen) for _ in range(world)]
    for r, t in enumerate(targets):
        t[: r + 1] = -100  # each rank ignores a different number of rows
    x, w, b = torch.randn(7, 5, generator=gen), torch.randn(VOCAB, 5, generator=gen), torch.randn(VOCAB, generator=gen)
    ce_target = torch.randint(0, VOCAB, (6,), generator=gen)
    ce_target[::3] = -100
    ce = dict(kind="ce", logits=torch.randn(6, VOCAB, generator=gen), target=ce_target,
              options=dict(label_smoothing=0.1), upstream=torch.tensor(0.75), view=False)
    lin_target = torch.randint(0, VOCAB, (7,), generator=gen)
    lin_target[1] = -100
    linear = dict(kind="linear", x=x, w=w, b=b, target=lin_target, options=dict(z_loss=0.01, chunk_size=3),
                  upstream=torch.tensor(1.25))
    return dict(kind="num_items", id="num-items", targets=targets, ignore_index=-100, ce=ce, linear=linear)


def cases_for(world):
    cases = token_cases()
    if world == 3:
        cases += [dict(case, id=case["id"] + "-empty-slice", sizes=[6, 0, 7]) for case in token_cases()[:3]]
    cases.append(num_items_case(world))
    for case in cases:
        case["sizes"] = case.get("sizes") or SIZES[world]
        case["id"] = f"{world}ranks-{case['id']}"
        case["ranks"] = list(range(world))
        for inner in ("ce", "linear"):
            if inner in case:
                case[inner]["sizes"] = case["sizes"]
    return cases


ALL_CASES = [case for world in WORLDS for case in cases_for(world)]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """The one spawn of 3 processes; waited for when a test first needs it."""
    spawn = Spawn(WORKER, 3, ALL_CASES, tmp_path_factory.mktemp("token-ranks"), timeout=HARD_TIMEOUT)
    yield spawn
    spawn.kill()


def result_of(spawned, world, case_id):
    results = spawned.results()
    index = [case["id"] for case in ALL_CASES].index(f"{world}ranks-{case_id}")
    per_rank = [results[r][index] for r in range(world)]
    for r, result in enumerate(per_rank):
        assert "error" not in result, f"rank {r}: {result['error']}: {result['message']}\n{result['traceback']}"
    return ALL_CASES[index], per_rank


TOKEN_PARAMS = [(w, c["id"].split("-", 1)[1]) for w in WORLDS for c in cases_for(w) if c["kind"] == "token"]


@pytest.mark.parametrize("world,case_id", TOKEN_PARAMS, ids=[f"{w}ranks-{i}" for w, i in TOKEN_PARAMS])
def test_token_log_probs_match_single_process(spawned, world, case_id):
    case, per_rank = result_of(spawned, world, case_id)
    for r, result in enumerate(per_rank[1:], 1):  # the same combination of the same gathered table
        assert torch.equal(result["lp"], per_rank[0]["lp"]) and torch.equal(result["h"], per_rank[0]["h"]), r
    lp, h = per_rank[0]["lp"], per_rank[0]["h"]
    grad = torch.cat([r["grad"] for r in per_rank], dim=-1)
    logits = case["logits"].clone().requires_grad_(True)
    opts = case["options"]
    r_lp, r_h = sxt.token_log_probs(logits, case["target"], return_entropy=True, **opts)
    (r_lp * case["upstream"] + r_h * case["upstream_entropy"]).sum().backward()
    out = "float64" if case["logits"].dtype == torch.float64 else "float32"
    assert lp.dtype == r_lp.dtype and grad.dtype == logits.dtype and lp.shape == case["target"].shape
    scale = 1.0 if case["logits"].dtype != torch.bfloat16 else 1.0
    assert_close(lp, r_lp.detach(), dtype=out, what="log-probs vs softxent.torch", scale=2 * scale)
    assert_close(h, r_h.detach(), dtype=out, what="entropy vs softxent.torch", scale=2 * scale)
    g_dtype = "bfloat16" if logits.dtype == torch.bfloat16 else out
    assert_close(grad, logits.grad, dtype=g_dtype, what="gradient vs softxent.torch", scale=4)
    n_lp, n_h = sx.token_log_probs(case["logits"].float().numpy() if logits.dtype == torch.bfloat16
                                   else case["logits"].numpy(), case["target"].numpy(), return_entropy=True, **opts)
    assert_close(lp, n_lp, dtype=out, what="log-probs vs NumPy", scale=2)
    assert_close(h, n_h, dtype=out, what="entropy vs NumPy", scale=2)


@pytest.mark.parametrize("world", WORLDS)
def test_confident_policy_exact_across_ranks(spawned, world):
    """log p_t ~ -1e-13 and H ~ 1e-11, from statistics of three slices, within 2 ulp of mpmath."""
    case, per_rank = result_of(spawned, world, "token-confident")
    row = case["logits"][0].numpy()
    exact_lp, exact_h = exact_log_prob_and_entropy(row, int(case["target"][0]))
    assert ulp_error(per_rank[0]["lp"][:1].numpy(), [exact_lp]).max() <= 2
    assert ulp_error(per_rank[0]["h"][:1].numpy(), [exact_h]).max() <= 2


def test_token_communication_is_four_values_per_row(spawned):
    for world in WORLDS:
        _, per_rank = result_of(spawned, world, "token-volume-1024-rows")
        for result in per_rank:
            # four statistics per row, in float64 for float32 logits (the working precision, as on one
            # process: exact p = exp(d - L)), 32 bytes a row
            assert result["forward"] == [("allgather", 32, "torch.int64", 256),
                                         ("allgather", 1024 * 4, "torch.float64", 1024 * 4 * 8)]
            assert result["backward"] == []


@pytest.mark.parametrize("world", WORLDS)
def test_global_num_items_and_the_losses_that_divide_by_it(spawned, world):
    case, per_rank = result_of(spawned, world, "num-items")
    total = sum(int((t != -100).sum()) for t in case["targets"])
    for result in per_rank:
        assert result["count"].dtype == torch.int64 and int(result["count"]) == total
    ce = case["ce"]
    loss, grad = sx.cross_entropy(ce["logits"].numpy(), ce["target"].numpy(), num_items=total, return_grad=True,
                                  **ce["options"])
    assert_close(per_rank[0]["ce"]["loss"], loss, what="vocab-parallel CE with num_items vs NumPy")
    assert_close(torch.cat([r["ce"]["grad"] for r in per_rank], -1), grad * 0.75, what="its gradient")
    lin = case["linear"]
    opts = {k: v for k, v in lin["options"].items() if k != "chunk_size"}
    loss = sx.linear_cross_entropy(lin["x"].numpy(), lin["w"].numpy(), lin["target"].numpy(), bias=lin["b"].numpy(),
                                   num_items=total, **opts)
    assert_close(per_rank[0]["linear"]["loss"], loss, what="vocab-parallel linear CE with num_items", scale=2)
    x, w, b = (t.clone().requires_grad_(True) for t in (lin["x"], lin["w"], lin["b"]))
    (sxt.linear_cross_entropy(x, w, lin["target"], linear_bias=b, num_items=total, **opts) * 1.25).backward()
    assert_close(per_rank[0]["linear"]["dx"], x.grad, what="dx", scale=4)
    assert_close(torch.cat([r["linear"]["dw"] for r in per_rank]), w.grad, what="dw", scale=4)
