"""The JAX tests' set-up: tests/ on the path (compare.py, adversarial.py); skipped without jax."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# `softxent[jax]` is part of `.[dev]`; a checkout without it skips this folder rather than failing
pytest.importorskip("jax")
