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

# CI runs the "ci" profile: enough examples to find edge cases, bounded so the suite stays within budget
settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
