"""The suite's set-up: tests/ on the path (its helpers: compare, adversarial, strategies, triton_env), the
Triton interpreter on before anything imports triton (tests/triton_env.py says why), hypothesis profiles.

Tests live in one folder per op (tests/cross_entropy/, tests/softmax/, ...), with the cross-layer
conformance suite in tests/conformance/ and the command line in tests/cli/.
"""

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
if os.environ.get("SOFTXENT_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
# torch's OpenMP threads sleep when idle instead of spinning (set before anything imports torch). The thread
# count, and so every result, stays as it was; but make test runs two xdist workers on two cores, and each
# one's spinning threads took the core from the other: 54 s -> 40 s for the torch tests on two workers, no
# slower in one process
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# CI runs the "ci" profile: enough examples to find edge cases, bounded so the suite stays within budget
settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(items):
    """Tests marked `slow` (minutes of one core: the wheel build) are collected first, the rest keep their
    order. make test runs the suite on two xdist workers, which take tests in collection order: a long test
    taken last would run alone while the other worker sits idle; taken first, it overlaps the other's tests."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
