"""One rank of a gloo group that runs a list of vocab-parallel cases (spawned through tests/gloo_spawn.py by
tests/distributed/test_distributed.py and tests/token_log_probs/test_token_log_probs_distributed.py).

    python tests/_distributed_worker.py RANK WORLD STORE CASES OUT

Loads the cases (a torch.save'd list of dicts holding the *full*-vocabulary inputs), takes this rank's
slice of each, runs it, and saves per case either the results (loss and this rank's gradients) or the
exception raised, plus every collective it issued (counted at the ProcessGroup boundary), to
OUT/rank{RANK}.pt. The parent process holds the references and does the comparisons.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

import torch
import torch.distributed as dist

import softxent.ops.linear_cross_entropy.distributed as linear_module
from softxent.torch.distributed import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy, \
    vocab_parallel_token_log_probs

LOG: list[tuple[str, int, str, int]] = []  # (op, elements, dtype, bytes) of each collective, in order
LOGITS_ROWS: list[int] = []  # rows of each chunk of logits the linear loss computes


def _record_logits():
    original = linear_module._logits

    def recording(x, *args):
        LOGITS_ROWS.append(x.shape[0])
        return original(x, *args)

    linear_module._logits = recording


def _count(op: str, position: int):
    original = getattr(dist.ProcessGroup, op)

    def counting(self, *args, **kwargs):
        tensor = args[position]
        tensor = tensor[0] if isinstance(tensor, (list, tuple)) else tensor
        LOG.append((op, tensor.numel(), str(tensor.dtype), tensor.numel() * tensor.element_size()))
        return original(self, *args, **kwargs)

    setattr(dist.ProcessGroup, op, counting)


def slice_of(sizes, rank):
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def run_ce(case, rank, world, group=None):
    start, stop = slice_of(case["sizes"], rank)
    if case.get("view"):  # a non-contiguous slice of the full logits, as a view
        full = case["logits"].clone().requires_grad_(True)
        local = full[..., start:stop]
    else:
        full = local = case["logits"][..., start:stop].clone().requires_grad_(True)
    target = case["target"]
    if target.is_floating_point():
        target = target[..., start:stop].clone()
    mark = len(LOG)
    loss = vocab_parallel_cross_entropy(local, target, group=group, **case["options"])
    forward = LOG[mark:]
    mark = len(LOG)
    loss.backward(case["upstream"])
    grad = full.grad[..., start:stop] if case.get("view") else full.grad
    return {"loss": loss.detach(), "grad": grad, "forward": forward, "backward": LOG[mark:]}


def run_linear(case, rank, world, group=None):
    start, stop = slice_of(case["sizes"], rank)
    x = case["x"].clone().requires_grad_(True)
    w = case["w"][start:stop].clone().requires_grad_(True)
    b = None if case["b"] is None else case["b"][start:stop].clone().requires_grad_(True)
    target = case["target"]
    if target.is_floating_point():
        target = target[..., start:stop].clone()
    mark, chunks = len(LOG), len(LOGITS_ROWS)
    loss = vocab_parallel_linear_cross_entropy(x, w, target, local_bias=b, group=group, **case["options"])
    forward = LOG[mark:]
    mark = len(LOG)
    for _ in range(case.get("backward_passes", 1)):  # twice: the gradients accumulate, each pass the same
        loss.backward(case["upstream"], retain_graph=True)
    return {"loss": loss.detach(), "dx": x.grad, "dw": w.grad, "db": None if b is None else b.grad,
            "forward": forward, "backward": LOG[mark:], "logits_rows": LOGITS_ROWS[chunks:]}


GROUPS: dict = {}  # ranks -> process group, made once (every rank makes each, in the same order)


def on_ranks(case, rank, world, run):
    """Run a case on the group of case["ranks"] (all ranks when absent): one spawn of 3 processes serves
    worlds of 1, 2 and 3 ranks. Returns None on ranks outside the group."""
    ranks = case.get("ranks")
    if ranks is None:
        return run(case, rank, world, None)
    key = tuple(ranks)
    if key not in GROUPS:
        GROUPS[key] = dist.new_group(list(ranks))
    if rank not in ranks:
        return {"value": None}
    return run(case, ranks.index(rank), len(ranks), GROUPS[key])


def run_token(case, rank, world, group=None):
    """vocab_parallel_token_log_probs on this rank's slice; both outputs' gradients with random upstreams."""
    from softxent.torch.distributed import vocab_parallel_token_log_probs

    start, stop = slice_of(case["sizes"], rank)
    local = case["logits"][..., start:stop].clone().requires_grad_(True)
    mark = len(LOG)
    lp, h = vocab_parallel_token_log_probs(local, case["target"], return_entropy=True, group=group,
                                           **case["options"])
    forward = LOG[mark:]
    mark = len(LOG)
    (lp * case["upstream"] + h * case["upstream_entropy"]).sum().backward()
    return {"lp": lp.detach(), "h": h.detach(), "grad": local.grad, "forward": forward, "backward": LOG[mark:]}


def run_num_items(case, rank, world, group=None):
    """global_num_items over ranks holding different targets, then the distributed losses with it."""
    from softxent.torch.distributed import global_num_items

    count = global_num_items(case["targets"][rank], ignore_index=case["ignore_index"], group=group)
    ce = run_ce(dict(case["ce"], options=dict(case["ce"]["options"], num_items=count)), rank, world, group=group)
    linear = run_linear(dict(case["linear"], options=dict(case["linear"]["options"], num_items=int(count))), rank,
                        world, group=group)
    return {"count": count, "ce": ce, "linear": linear}


def run_fault(case, rank, world):
    """Every rank calls, the last one with a fault; the result is the exception each rank raised."""
    what, last = case["what"], rank == world - 1
    logits = torch.randn(4, 3 + rank)
    target = torch.tensor([0, 1, 2, 3])
    options = {}
    if what == "shape" and last:
        logits, target = logits[:3], target[:3]
    elif what == "dtype" and last:
        logits = logits.double()
    elif what == "target" and last:
        target = torch.tensor([0, 1, 2, 4])
    elif what == "local" and last:
        logits = torch.ones(4, 3, dtype=torch.int64)
    elif what == "label":
        target = torch.tensor([0, 1, 100, 3])
    elif what == "options" and last:
        options = {"label_smoothing": 0.1}
    elif what == "probs" and last:
        target = torch.full((4, 3 + rank), -1.0)
    if what == "function" and last:  # another loss on the same group: refused by name, not mixed up
        return vocab_parallel_token_log_probs(logits, target, timeout=20)
    if what == "linear":
        x = torch.randn(4, 5)
        if last:
            x = x + 1.0
        return vocab_parallel_linear_cross_entropy(x, torch.randn(3, 5), target, timeout=20)
    return vocab_parallel_cross_entropy(logits, target, timeout=20, **options)


def run_subgroup(case, rank, world):
    """Every rank creates the subgroup (gloo requires it); only its members run the case on it."""
    ranks = case["ranks"]
    group = dist.new_group(ranks)
    if rank not in ranks:
        return {"value": None}
    return run_ce(case, ranks.index(rank), len(ranks), group=group)


def run_absent(case, rank, world, out):
    """Rank 0 calls; the others stay away (alive) until it gave up: its timeout must end the wait."""
    flag = os.path.join(out, "absent_done")
    if rank == 0:
        try:
            return vocab_parallel_cross_entropy(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]),
                                                timeout=case["timeout"])
        finally:
            open(flag, "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    return None


def main() -> None:
    rank, world, store_path, cases_path, out = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6]
    _count("allgather", 1)  # allgather(outputs, input, ...): count what this rank sends
    _count("allreduce", 0)
    _record_logits()
    torch.manual_seed(rank)  # fault cases draw different random logits per rank: only their shapes matter
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    cases = torch.load(cases_path, weights_only=False)
    results = []
    for case in cases:
        began = time.monotonic()
        try:
            kind = case["kind"]
            if kind == "ce":
                result = run_ce(case, rank, world)
            elif kind == "linear":
                result = run_linear(case, rank, world)
            elif kind == "subgroup":
                result = run_subgroup(case, rank, world)
            elif kind == "token":
                result = on_ranks(case, rank, world, run_token)
            elif kind == "num_items":
                result = on_ranks(case, rank, world, run_num_items)
            elif kind == "fault":
                result = {"value": run_fault(case, rank, world)}
            else:
                result = {"value": run_absent(case, rank, world, out)}
        except Exception as err:  # noqa: BLE001 - the parent asserts on the type and message
            result = {"error": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}
        result["seconds"] = time.monotonic() - began
        results.append(result)
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    if any(case["kind"] == "absent" for case in cases):
        # after a gloo timeout, torch 2.13 sometimes aborts the process at exit ("terminate called without
        # an active exception", about 3 runs in 8 with plain ProcessGroup.allgather): skip the teardown
        sys.stdout.flush()
        os._exit(0)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
