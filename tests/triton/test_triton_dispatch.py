"""softxent.torch's public functions on the Triton kernels, against its PyTorch path, under the interpreter.

On CUDA tensors softxent.torch runs the Triton kernels (softxent._torch.backend); here the interpreter
runs them on CPU tensors, forced with `_backend.forced("triton")`, and the same calls on the PyTorch path
are the oracle (they are checked against torch and the NumPy layer elsewhere). SOFTXENT_TEST_DEVICE=cuda
runs the same tests with compiled kernels on a GPU, where the dispatch needs no forcing.
"""

import contextlib
import pytest
from triton_env import DEVICE, pytestmark, sxtt, torch  # noqa: F401  (before triton loads: sets TRITON_INTERPRET)

import softxent.torch as sxt
from softxent._torch import backend as _backend
from softxent._torch.matmul import addmm_float32_, has_float32_addmm
from softxent.torch.triton import configured

from compare import assert_close


SMALL_BLOCKS = dict(block=16)  # 33 classes = 3 blocks, the last one partial


def on(backend: str):
    """The block runs `backend`: forced on CPU tensors; on a GPU, "triton" is what CUDA tensors get."""
    if backend == "triton" and DEVICE != "cpu":
        return contextlib.nullcontext()
    return _backend.forced(backend)


def both(fn):
    """fn() on the Triton kernels and on the PyTorch path (CPU copies of the inputs for the latter)."""
    with on("triton"), configured(**SMALL_BLOCKS):
        triton_result = fn(DEVICE)
    with _backend.forced("torch"):
        torch_result = fn("cpu")
    return triton_result, torch_result


def _leaf(t, device):
    return t.detach().to(device).requires_grad_()


def test_dispatch_picks_triton_for_cuda_16_and_32_bit_only():
    with _backend.forced("triton"):
        assert _backend.uses_triton(torch.zeros(1)) and not _backend.uses_triton(torch.zeros(1, dtype=torch.float64))
    with _backend.forced("torch"):
        assert not _backend.uses_triton(torch.zeros(1))
    assert not _backend.uses_triton(torch.zeros(1))  # CPU tensors, nothing forced: the PyTorch path


@pytest.mark.parametrize("options", [dict(), dict(label_smoothing=0.1, z_loss=1e-3, softcap=6.0),
                                     dict(reduction="none"), dict(reduction="sum", ignore_index=3)],
                         ids=["plain", "all-options", "none", "sum-ignore3"])
@pytest.mark.parametrize("shape", [(7, 33), (3, 33, 2)], ids=["rows", "k-dim"])
def test_cross_entropy_matches_the_pytorch_path(shape, options):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g) * 3
    t = torch.randint(0, 33, (shape[0],) + shape[2:], generator=g)
    t.view(-1)[1] = options.get("ignore_index", -100)
    weight = torch.rand(33, generator=g) + 0.5
    upstream = torch.rand(t.shape, generator=g) if options.get("reduction") == "none" else torch.tensor(0.7)

    def run(device):
        leaf = _leaf(x, device)
        loss = sxt.cross_entropy(leaf, t.to(device), weight.to(device), **options)
        loss.backward(upstream.to(device))
        return loss, leaf.grad

    (loss, grad), (ref_loss, ref_grad) = both(run)
    assert_close(loss, ref_loss, scale=4, what="loss")
    assert_close(grad, ref_grad, scale=4, what="grad")


def test_cross_entropy_in_place_and_probability_targets():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 33, generator=g)
    p = torch.softmax(torch.randn(5, 33, generator=g), dim=1)

    def run(device):
        logits = x.clone().to(device).requires_grad_()
        loss = sxt.cross_entropy(logits, p.to(device), label_smoothing=0.2, inplace_grad=True)
        loss.backward()
        return loss, logits.grad

    (loss, grad), (ref_loss, ref_grad) = both(run)
    assert_close(loss, ref_loss, scale=4, what="loss")
    assert_close(grad, ref_grad, scale=4, what="grad")


def test_bad_label_is_named_by_its_position_in_the_whole_target():
    # the Triton path checks the whole target on the device (no sync), not each chunk or K-dim block
    x = torch.randn(2, 33, 3, device=DEVICE)
    t = torch.zeros(2, 3, dtype=torch.int64, device=DEVICE)
    t[1, 2] = 40
    with on("triton"), pytest.raises(ValueError, match=r"class index 40 at position \(1, 2\)"):
        sxt.cross_entropy(x, t)
        sxtt.check_labels()  # on a GPU the error of the lazy check arrives at its sync point


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("options", [dict(), dict(label_smoothing=0.1, z_loss=1e-2, softcap=5.0),
                                     dict(reduction="none")], ids=["plain", "all-options", "none"])
def test_linear_cross_entropy_matches_the_pytorch_path(dtype, options):
    g = torch.Generator().manual_seed(2)
    x, w, b = (torch.randn(13, 5, generator=g).to(dtype), torch.randn(33, 5, generator=g).to(dtype),
               torch.randn(33, generator=g).to(dtype))
    t = torch.randint(0, 33, (13,), generator=g)
    t[4] = -100
    upstream = torch.rand(13, generator=g) if options.get("reduction") == "none" else torch.tensor(0.5)

    def run(device):
        leaves = [_leaf(a, device) for a in (x, w, b)]
        loss = sxt.linear_cross_entropy(leaves[0], leaves[1], t.to(device), linear_bias=leaves[2], chunk_size=3,
                                        **options)
        loss.backward(upstream.to(device, torch.float32 if loss.dim() == 0 else dtype))
        return (loss, *(leaf.grad for leaf in leaves))

    ours, ref = both(run)
    for name, got, want in zip(("loss", "dx", "dw", "dbias"), ours, ref):
        assert got.dtype == want.dtype, name
        assert_close(got, want, scale=4, what=name)


def test_linear_cross_entropy_never_allocates_rows_by_classes():
    """Every tensor the call allocates (aten outputs, seen by a dispatch mode) is smaller than N x V."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        nbytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.nbytes = max(Largest.nbytes, t.numel() * t.element_size())
            return out

    rows, classes, features = 40, 33, 5  # N x V = 1320 > chunk x V = 264 > V x D = 165
    x = torch.randn(rows, features, device=DEVICE, requires_grad=True)
    w = torch.randn(classes, features, device=DEVICE, requires_grad=True)
    t = torch.randint(0, classes, (rows,), device=DEVICE)
    with on("triton"), configured(**SMALL_BLOCKS), Largest():
        sxt.linear_cross_entropy(x, w, t, chunk_size=8).backward()
    assert 0 < Largest.nbytes <= 8 * classes * 4 < rows * classes * 4


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_forward_and_backward_match_the_pytorch_path(log):
    x = torch.randn(4, 33, 3, generator=torch.Generator().manual_seed(3))
    x[0, :, 1] = float("-inf")  # a fully masked row
    x[2, [4, 9], 0] = float("inf")  # a row holding +inf: its mass shared, its gradient zero
    upstream = torch.randn(4, 33, 3, generator=torch.Generator().manual_seed(4))
    fn = sxt.log_softmax if log else sxt.softmax

    def run(device):
        leaf = _leaf(x, device)
        y = fn(leaf, dim=1, temperature=0.8)
        y.backward(upstream.to(device))
        return y, leaf.grad

    (y, grad), (ref_y, ref_grad) = both(run)
    assert_close(y, ref_y, scale=4, what="output")
    assert_close(grad, ref_grad, scale=4, what="grad")


def test_float32_accumulation_of_16_bit_products():
    """64 products added into a float32 accumulator stay float32-accurate; into bfloat16 they do not.

    On the CPU this takes the fallback through slices of rows; on a GPU one GEMM with a float32 output.
    """
    g = torch.Generator().manual_seed(0)
    parts = [(torch.randn(33, 3, generator=g).bfloat16().to(DEVICE),
              torch.randn(3, 5, generator=g).bfloat16().to(DEVICE)) for _ in range(64)]
    exact = sum(a.double() @ b.double() for a, b in parts)
    fp32 = torch.zeros(33, 5, device=DEVICE)
    bf16 = torch.zeros(33, 5, dtype=torch.bfloat16, device=DEVICE)
    for a, b in parts:
        addmm_float32_(fp32, a, b, slice_rows=4)
        bf16.addmm_(a, b)
    assert_close(fp32, exact, scale=4, what="float32 accumulation")
    assert (fp32.double() - exact).abs().max() * 100 < (bf16.double() - exact).abs().max()
    if DEVICE == "cuda":
        assert has_float32_addmm("cuda"), "torch lacks addmm(out_dtype=float32) on CUDA: the slow fallback runs"
