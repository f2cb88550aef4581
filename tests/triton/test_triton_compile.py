"""The Triton ops under torch.compile and torch.library's checks, on CPU tensors through the interpreter.

Each op is a torch.library custom op with a fake implementation: `opcheck` verifies its schema
(including which arguments it mutates), its fake tensor implementation and AOT dispatch; then
torch.compile(fullgraph=True) traces the row functions without a graph break and gives the eager results.
Finally every kernel is compiled for sm_90 (PTX and cubin, no GPU needed) by the installed triton, which
is stricter than the interpreter. What a CPU run cannot show, the compiled kernels running on a GPU, is
in docs/gpu-measurements.md.
"""

import contextlib
import os
import shutil
import subprocess
import sys

import pytest
from triton_env import DEVICE, pytestmark, sxtt, torch  # noqa: F401  (before triton loads: sets TRITON_INTERPRET)

from softxent._options import LossOptions
from softxent.torch.triton import configured

ops = torch.ops.softxent_triton


def _problem(rows=3, classes=7):
    g = torch.Generator().manual_seed(0)
    return torch.randn(rows, classes, generator=g).to(DEVICE), torch.tensor([1, -100, 6])[:rows].to(DEVICE)


# --- torch.library.opcheck: schema, fake implementation, AOT dispatch ----------------------------------------

OPCHECK_TESTS = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")


def test_opcheck_cross_entropy_ops():
    logits, target = _problem()
    scale = torch.tensor(0.5, device=DEVICE)
    options = LossOptions(ignore_index=-100, label_smoothing=0.1, z_loss=1e-2, softcap=4.0, temperature=1.5)
    args = (target, torch.rand(7, device=DEVICE) + 0.5, scale, 1.0, options.encode(), True)
    torch.library.opcheck(ops.cross_entropy, (logits, *args, torch.empty_like(logits)), test_utils=OPCHECK_TESTS)
    torch.library.opcheck(ops.cross_entropy, (logits, *args, None), test_utils=OPCHECK_TESTS)
    torch.library.opcheck(ops.cross_entropy_inplace, (logits.clone(), *args), test_utils=OPCHECK_TESTS)
    probs = torch.softmax(logits, dim=1)
    torch.library.opcheck(ops.cross_entropy, (logits, probs, None, None, 1.0, LossOptions().encode(), False,
                                              torch.empty_like(logits)), test_utils=OPCHECK_TESTS)


def test_opcheck_softmax_ops():
    x, _ = _problem()
    where = torch.rand(3, 7, device=DEVICE) > 0.2
    torch.library.opcheck(ops.softmax, (x, 0.8, where, True), test_utils=OPCHECK_TESTS)
    torch.library.opcheck(ops.softmax, (x, 1.0, None, False), test_utils=OPCHECK_TESTS)
    y = torch.softmax(x, dim=1)
    torch.library.opcheck(ops.softmax_backward, (y, torch.randn_like(y), 1.0, None, False), test_utils=OPCHECK_TESTS)


# --- torch.compile -----------------------------------------------------------------------------------------------

# inductor on the CPU needs a C++ compiler for the code around the opaque ops
BACKENDS = ["aot_eager"] + (["inductor"] if DEVICE != "cpu" or shutil.which("cc") or shutil.which("g++") else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_cross_entropy_matches_eager(backend):
    logits, target = _problem()
    options = LossOptions(label_smoothing=0.1, z_loss=1e-2)

    def loss_and_grad(logits, target):
        scale = sxtt.mean_scale(target, None, options.ignore_index, logits.shape[1])
        grad = torch.empty_like(logits)
        losses, lse = sxtt.cross_entropy_rows(logits, target, None, options, grad_scale=scale, grad_out=grad)
        return (losses.sum() * scale, lse, grad)

    def in_place(logits, target):
        buffer = logits.clone()
        losses, _ = sxtt.cross_entropy_rows(buffer, target, None, options, grad_scale=0.5, grad_out=buffer)
        return losses, buffer

    torch._dynamo.reset()
    for fn in (loss_and_grad, in_place):
        compiled = torch.compile(fn, backend=backend, fullgraph=True)  # fullgraph: no graph break allowed
        for got, want in zip(compiled(logits, target), fn(logits, target)):
            torch.testing.assert_close(got, want)


def test_compiled_softmax_and_linear_cross_entropy_match_eager():
    """The Triton row ops traced directly, and softxent.torch's linear cross-entropy feeding its chunks to
    the Triton kernel (forced on CPU tensors), compiled without a graph break."""
    import softxent.torch as sxt
    from softxent._torch import backend as _backend

    x, target = _problem()
    w, b = torch.randn(7, 7, device=DEVICE), torch.randn(7, device=DEVICE)

    def fn(x, target):
        y = sxtt.log_softmax_rows(x, temperature=0.9)
        dx = sxtt.log_softmax_backward_rows(y, torch.ones_like(y), temperature=0.9)
        loss = sxt.linear_cross_entropy(x, w, target, linear_bias=b, chunk_size=2)
        return y, dx, loss

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    forced = _backend.forced("triton") if DEVICE == "cpu" else contextlib.nullcontext()
    with configured(block=16), forced:
        for got, want in zip(compiled(x, target), fn(x, target)):
            torch.testing.assert_close(got, want)


# --- the compiler, not the interpreter ------------------------------------------------------------------------


def test_kernels_compile_for_hopper():
    """One variant per kernel and code path through triton.compile for sm_90, in a process without
    TRITON_INTERPRET (`python -m softxent._triton.aot` builds all 102 variants; it passed with
    triton 3.6.0 and 3.9.0)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when it is unset
    done = subprocess.run([sys.executable, "-m", "softxent._triton.aot", "--quick"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "16 of 16 kernel variants compiled" in done.stdout
