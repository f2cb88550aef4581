"""vocab_parallel_cross_entropy inside shard_map on 4 CPU host devices equals the single-device loss.

The devices exist only when XLA_FLAGS says so before jax starts its CPU backend, so the comparison runs
in a fresh interpreter (tests/jax/_jax_shard_worker.py) and reports its differences as JSON.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

# make test runs the suite on xdist workers (--dist loadgroup): this group keeps the module on one worker,
# so its module-scoped shard_map subprocess runs once, not once on each worker
pytestmark = pytest.mark.xdist_group("test_jax_vocab_parallel")

WORKER = Path(__file__).with_name("_jax_shard_worker.py")


@pytest.fixture(scope="module")
def results():
    done = subprocess.run([sys.executable, str(WORKER)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("case", ["plain", "smoothing-zloss", "sum", "none", "num-items"])
def test_equals_single_device_loss_and_gradient(results, case):
    r = results[case]
    assert r["finite"]
    # float32: the psum over 4 devices adds one rounding per partial sum
    assert r["loss"] <= 2e-6 * max(1.0, r["scale"]), r
    assert r["grad"] <= 1e-6, r


def test_dominant_target_gradient_on_another_device_is_exact(results):
    # p_t - 1 at a target holding the global max, computed as -sum_{j != t} p_j across devices
    got, expected = results["plain"]["target_grad"]
    assert got == pytest.approx(expected, rel=1e-6) and got < 0
