"""The GPU path of linear cross-entropy (matmuls in row chunks + the Triton kernel), under the interpreter.

Oracle: the NumPy layer's linear_cross_entropy in float64 (reduction="none", return_grad=True), whose
gradients are those of the summed losses; ours are those of grad_scale * sum, with grad_scale = 0.5.
Shapes are odd (N = 7 or 13 rows, D = 5, V = 33 classes) and chunks small so the last chunk is partial.
On the CPU the float32 weight-gradient accumulation takes its fallback (slices of V); the
addmm(out_dtype=float32) path is exercised on the GPU (docs/gpu-measurements.md).
"""

import os

DEVICE = os.environ.get("SOFTXENT_TEST_DEVICE", "cpu")  # "cuda": compiled kernels on a GPU
if DEVICE == "cpu":
    # Before triton decorates the kernels, so they run on CPU tensors; it stays set (see test_triton_cross_entropy)
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")
torch = pytest.importorskip("torch", reason="torch is not installed")

import softxent as sx  # noqa: E402
import softxent.torch.triton as sxtt  # noqa: E402
from softxent._options import LossOptions  # noqa: E402
from softxent.torch.triton import configured  # noqa: E402

from compare import assert_close  # noqa: E402

pytestmark = [
    pytest.mark.skipif(DEVICE == "cpu" and not sxtt.interpreted(), reason="softxent.torch.triton was imported "
                       "before TRITON_INTERPRET=1 was set, so its kernels were compiled for a GPU"),
    pytest.mark.skipif(DEVICE != "cpu" and (sxtt.interpreted() or not torch.cuda.is_available()),
                       reason=f"SOFTXENT_TEST_DEVICE={DEVICE} needs a CUDA device and TRITON_INTERPRET unset"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

CONFIG = dict(block=16)  # 33 classes = 3 blocks, the last one partial


def layer(rows=7, features=5, classes=33, dtype=torch.float32, bias=True, kind="index", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=g).to(dtype)
    w = torch.randn(classes, features, generator=g).to(dtype)
    b = torch.randn(classes, generator=g).to(dtype) if bias else None
    if kind == "index":
        target = torch.randint(0, classes, (rows,), generator=g)
        target[2] = -100
    else:
        target = torch.softmax(torch.randn(rows, classes, generator=g), dim=1)
    return x.to(DEVICE), w.to(DEVICE), None if b is None else b.to(DEVICE), target.to(DEVICE)


def numpy_reference(x, w, b, target, options, weight=None):
    t = target.cpu().numpy() if not target.is_floating_point() else target.double().cpu().numpy()
    losses, (dx, dw, db) = sx.linear_cross_entropy(
        x.double().cpu().numpy(), w.double().cpu().numpy(), t, bias=None if b is None else b.double().cpu().numpy(),
        weight=None if weight is None else weight.double().cpu().numpy(), reduction="none", return_grad=True,
        ignore_index=options.ignore_index, label_smoothing=options.label_smoothing, z_loss=options.z_loss,
        softcap=options.softcap)
    return losses, dx, dw, db


CASES = [
    dict(),
    dict(kind="probs"),
    dict(options=dict(label_smoothing=0.1, z_loss=1e-2, softcap=5.0), weight=True),
    dict(bias=False, chunk_size=7),
    dict(weight_grad_fp32=False),
]


@pytest.mark.parametrize("case", CASES, ids=["plain", "probs", "all-options", "no-bias-one-chunk",
                                                           "weight-dtype-accumulation"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_matches_numpy(dtype, case):
    x, w, b, target = layer(dtype=dtype, bias=case.get("bias", True), kind=case.get("kind", "index"))
    options = LossOptions(**case.get("options", {}))
    weight = None
    if case.get("weight"):
        weight = (torch.rand(33, generator=torch.Generator().manual_seed(3)) + 0.5).to(DEVICE)
    with configured(**CONFIG):
        losses, lse, dx, dw, db = sxtt.linear_cross_entropy_rows(
            x, w, target, b, weight, options, grad_scale=0.5, chunk_size=case.get("chunk_size", 3),
            weight_grad_fp32=case.get("weight_grad_fp32", True))
    ref_losses, ref_dx, ref_dw, ref_db = numpy_reference(x, w, b, target, options, weight)
    assert dx.dtype == dw.dtype == dtype and (db is None) == (b is None)
    # 16-bit: the logits are rounded to bfloat16 by the matmul before the loss, as in every fused peer
    scale = 1 if dtype == torch.float32 else 2
    loss_dtype = "float32" if dtype == torch.float32 else "bfloat16"
    assert_close(losses, ref_losses, dtype=loss_dtype, scale=4 * scale, what="losses")
    logits = x.double() @ w.double().T + (0 if b is None else b.double())
    if options.softcap:
        logits = options.softcap * torch.tanh(logits / options.softcap)
    assert_close(lse, torch.logsumexp(logits, dim=1), dtype=loss_dtype, scale=4 * scale, what="lse")
    assert_close(dx, 0.5 * ref_dx, scale=4 * scale, what="dx")
    assert_close(dw, 0.5 * ref_dw, scale=4 * scale, what="dw")
    if b is not None:
        assert_close(db, 0.5 * ref_db, scale=4 * scale, what="dbias")


def test_without_gradients():
    x, w, b, target = layer()
    with configured(**CONFIG):
        losses, lse, dx, dw, db = sxtt.linear_cross_entropy_rows(x, w, target, b, None, LossOptions(),
                                                                 need_grad=False, chunk_size=4)
    assert dx is None and dw is None and db is None
    assert_close(losses, numpy_reference(x, w, b, target, LossOptions())[0], scale=4)


def test_float32_accumulation_of_the_weight_gradient():
    """64 chunk products added into a float32 accumulator stay float32-accurate; into bfloat16 they do not.

    On the CPU this is the fallback through slices of V (4 rows here); the addmm(out_dtype=float32) path
    runs on the GPU.
    """
    from softxent.torch.triton.linear_cross_entropy import _accumulate_fp32

    g = torch.Generator().manual_seed(0)
    parts = [(torch.randn(33, 3, generator=g).bfloat16().to(DEVICE),
              torch.randn(3, 5, generator=g).bfloat16().to(DEVICE)) for _ in range(64)]
    exact = sum(a.double() @ b.double() for a, b in parts)
    fp32 = torch.zeros(33, 5, device=DEVICE)
    bf16 = torch.zeros(33, 5, dtype=torch.bfloat16, device=DEVICE)
    for a, b in parts:
        _accumulate_fp32(fp32, a, b, slice_rows=4)
        bf16.addmm_(a, b)
    assert_close(fp32, exact, scale=4, what="float32 accumulation")
    assert (fp32.double() - exact).abs().max() * 100 < (bf16.double() - exact).abs().max()
    if DEVICE == "cuda":  # the fast path: one cuBLAS GEMM with a float32 output per chunk
        from softxent.torch.triton.linear_cross_entropy import _FP32_ADDMM

        assert _FP32_ADDMM.get("cuda"), "torch lacks addmm(out_dtype=float32) on CUDA: the slow fallback runs"


def test_never_allocates_a_rows_by_classes_tensor():
    """Every tensor the path allocates (aten outputs, seen by a dispatch mode) is smaller than N x V.

    Counted in bytes: the interpreter views the kernels' arguments as bytes when it launches them.
    """
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
    x, w, b, target = layer(rows=rows, classes=classes, features=features)
    with configured(**CONFIG), Largest():
        sxtt.linear_cross_entropy_forward(x, w, target, b, None, None, 1.0, -100, 0.0, 0.0, None, 1.0, True, True,
                                          8, True)
    assert 0 < Largest.nbytes <= 8 * classes * 4 < rows * classes * 4


def test_bad_label_in_a_later_chunk_is_named_by_its_global_row():
    x, w, b, target = layer(rows=7)
    target[5] = 40
    with pytest.raises(ValueError, match=r"class index 40 at position \(5,\)"):
        with configured(**CONFIG):
            sxtt.linear_cross_entropy_rows(x, w, target, b, None, LossOptions(), chunk_size=2, label_check="sync")


def test_layer_shapes_are_checked():
    x, w, b, target = layer()
    with pytest.raises(ValueError, match="linear_weight"):
        sxtt.linear_cross_entropy_rows(x, w[:, :4], target, b, None, LossOptions())
    with pytest.raises(ValueError, match="linear_bias"):
        sxtt.linear_cross_entropy_rows(x, w, target, b[:5], None, LossOptions())
    with pytest.raises(ValueError, match="class-index target"):
        sxtt.linear_cross_entropy_rows(x, w, target[:3], b, None, LossOptions())
