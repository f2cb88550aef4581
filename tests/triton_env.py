"""The set-up every Triton test module shares: the interpreter on the CPU, or compiled kernels on a GPU.

Import it first, before anything imports triton: TRITON_INTERPRET=1 must be set when triton decorates
the kernels, so that they run on CPU tensors, and it stays set for the whole process because triton
reads it again at launch (nothing else in the suite runs Triton on the CPU). SOFTXENT_TEST_DEVICE=cuda
runs the same tests with compiled kernels on a GPU (docs/gpu-measurements.md).

    from triton_env import DEVICE, pytestmark, sxtt, torch
"""

import os

import pytest

DEVICE = os.environ.get("SOFTXENT_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton", reason="triton is not installed")
torch = pytest.importorskip("torch", reason="torch is not installed")

import softxent.torch.triton as sxtt  # noqa: E402

pytestmark = [
    pytest.mark.skipif(DEVICE == "cpu" and not sxtt.interpreted(), reason="softxent.torch.triton was imported "
                       "before TRITON_INTERPRET=1 was set, so its kernels were compiled for a GPU"),
    pytest.mark.skipif(DEVICE != "cpu" and (sxtt.interpreted() or not torch.cuda.is_available()),
                       reason=f"SOFTXENT_TEST_DEVICE={DEVICE} needs a CUDA device and TRITON_INTERPRET unset"),
    # inf - inf and 0 * inf in branches a tl.where then discards: harmless, but NumPy warns in the interpreter
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]
