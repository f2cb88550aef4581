"""The conformance suite's set-up: its helpers and tests/'s on the path, and the Triton interpreter on.

TRITON_INTERPRET=1 must be set before triton decorates softxent's kernels (tests/triton_env.py says why);
a conftest runs before the test module imports anything, so the Triton layer works when this folder runs
alone. When another module imported triton first without it, the Triton layer is skipped, not wrong.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if os.environ.get("SOFTXENT_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
for path in (HERE, HERE.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
