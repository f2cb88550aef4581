"""One rank of a gloo group running every distributed conformance case (spawned by test_conformance.py).

    python tests/conformance/_conformance_worker.py RANK WORLD STORE CASES OUT

CASES is a torch.save'd list of `ops_registry.Case` (tests/gloo_spawn.py); each runs through its op's
distributed callable on this rank's slice of the vocabulary. OUT/rank{RANK}.pt gets, per case, the
result dict (float64 arrays) or the exception's type name and message. The parent merges the ranks'
pieces and compares.
"""

from __future__ import annotations

import os
import sys
import traceback

import torch
import torch.distributed as dist

from ops_registry import OPS


def main() -> None:
    rank, world, store_path, cases_path, out = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6]
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    cases = torch.load(cases_path, weights_only=False)
    results = {}
    for case in cases:
        try:
            results[case.id] = OPS[case.op].distributed(case, rank, world)
        except Exception as err:  # noqa: BLE001 - the parent compares type and message with the other layers
            results[case.id] = {"error": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
