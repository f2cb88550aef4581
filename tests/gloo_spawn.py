"""A gloo group of worker processes for the distributed tests: started once per module, waited for once.

A worker script runs as ``python WORKER RANK WORLD STORE CASES OUT``: it joins the group through the
FileStore STORE, loads the cases (torch.save'd) from CASES and saves its results to OUT/rank{RANK}.pt
(tests/_distributed_worker.py, tests/conformance/_conformance_worker.py). Starting processes and gloo is
most of a distributed test's time on a small machine, so each module spawns its group once for all its
cases; `results()` waits with a deadline, so a hang fails the tests instead of blocking the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


class Spawn:
    """`world` processes of `worker` running `cases` in `workdir`; `results()` is each rank's saved results.

    paths: more folders for the workers' PYTHONPATH (src/ and tests/ are always there); unset: environment
    variables the workers must not see.
    """

    def __init__(self, worker: Path, world: int, cases: list, workdir: Path, *, timeout: float, paths=(),
                 unset=()):
        self.world, self.cases, self.workdir, self.timeout = world, cases, workdir, timeout
        workdir.mkdir(parents=True, exist_ok=True)
        torch.save(cases, workdir / "cases.pt")
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
            [str(SRC), str(TESTS), *map(str, paths), os.environ.get("PYTHONPATH", "")]))
        for name in unset:
            env.pop(name, None)
        self.logs = [open(workdir / f"rank{r}.log", "w") for r in range(world)]
        self.procs = [subprocess.Popen([sys.executable, str(worker), str(r), str(world), str(workdir / "store"),
                                        str(workdir / "cases.pt"), str(workdir)], env=env, stdout=self.logs[r],
                                       stderr=subprocess.STDOUT) for r in range(world)]
        self.deadline = time.monotonic() + timeout
        self._results = None

    def results(self) -> list:
        if self._results is None:
            try:
                for proc in self.procs:
                    proc.wait(timeout=max(0.1, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"{self.world} ranks did not finish within {self.timeout} s (a hang): {self._tails()}")
            finally:
                for log in self.logs:
                    log.close()
            if any(proc.returncode for proc in self.procs):
                pytest.fail(f"a rank of {self.world} exited with {[p.returncode for p in self.procs]}: "
                            f"{self._tails()}")
            self._results = [torch.load(self.workdir / f"rank{r}.pt", weights_only=False) for r in range(self.world)]
        return self._results

    def kill(self) -> None:
        """Ends the ranks still running (a failed test must not leave them behind)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()

    def _tails(self) -> str:
        return "\n".join(f"--- rank {r}:\n" + (self.workdir / f"rank{r}.log").read_text()[-2000:]
                         for r in range(self.world))
