"""SOFTXENT_BACKEND=triton|torch forces the backend of every tensor, for a whole process.

Run in fresh processes: the switch is read when softxent.torch is imported, and forcing Triton on a
machine without CUDA turns the interpreter on before triton is first imported.
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed")
torch = pytest.importorskip("torch", reason="torch is not installed")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the switch compiles the kernels "
                                "(CPU tensors need the interpreter, which it turns on only without CUDA)")

SCRIPT = """
import torch, softxent.torch as sxt
from softxent._torch import backend
x = torch.randn(4, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
t = torch.tensor([0, 3, 6, 2])
print(backend.uses_triton(x), round(sxt.cross_entropy(x, t).item(), 5),
      round(torch.nn.functional.cross_entropy(x, t).item(), 5))
"""


def _run(value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SOFTXENT_BACKEND=value)
    env.pop("TRITON_INTERPRET", None)  # the switch itself must turn the interpreter on
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("value,triton", [("triton", "True"), ("torch", "False")])
def test_the_switch_picks_the_backend_and_the_results_agree(value, triton):
    done = _run(value)
    assert done.returncode == 0, done.stderr
    uses, ours, torchs = done.stdout.split()
    assert uses == triton and ours == torchs


def test_an_unknown_backend_is_refused_by_name():
    done = _run("cuda")
    assert done.returncode != 0 and "SOFTXENT_BACKEND must be 'triton' or 'torch'; got 'cuda'" in done.stderr
