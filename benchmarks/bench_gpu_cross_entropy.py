"""Cross-entropy forward + backward on the GPU, bfloat16: softxent's Triton kernel beside its peers.

Providers, each in a fresh process (benchmarks/harness.py):
  softxent             the Triton seam, cross_entropy_rows: loss, lse and the gradient in one launch,
                       the gradient in a new buffer ("mean" scale on the device, no sync)
  softxent-inplace     the same, the gradient written over the logits (the opt-in: zero extra memory)
  softxent-torch       softxent.torch.cross_entropy + backward: the public function, which dispatches
                       CUDA tensors to the same kernel (checks, reduction and autograd on top)
  torch-eager          torch.nn.functional.cross_entropy + backward
  torch-compile        the same under torch.compile (compiled during the warm-up runs)
  liger                Liger-Kernel's cross-entropy (writes its gradient over the logits)
  device-copy          a device-to-device copy of as many bytes: the device's copy bandwidth, same run

Bytes moved by the ideal fused op (the GB/s column): the logits read once and the gradient written once,
2 * N * C * itemsize, plus the int64 labels, N * 8 (losses and lse, N * 8 more, are left out: under
0.01%). Goal (issue 5): softxent at >= 85% of the copy's GB/s and >= 1.5x faster than torch.compile.
"""

import bench_gpu_common as common
from harness import main

CASES = {
    "16384x128256-bf16": {"rows": 16384, "classes": 128256, "dtype": "bfloat16"},
    "32768x32000-bf16": {"rows": 32768, "classes": 32000, "dtype": "bfloat16"},
}
QUICK = {"32x1000-bf16": {"rows": 32, "classes": 1000, "dtype": "bfloat16"}}


def nbytes(case):
    itemsize = 4 if case["dtype"] == "float32" else 2
    return 2 * case["rows"] * case["classes"] * itemsize + case["rows"] * 8


def _inputs(case, device, requires_grad=False):
    torch = common.check_device(device)
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(case["rows"], case["classes"], device=device, generator=g,
                         dtype=common.dtype_of(torch, case["dtype"])) * 4
    target = torch.randint(0, case["classes"], (case["rows"],), device=device, generator=g)
    return torch, logits.requires_grad_(requires_grad), target


def _make_softxent(in_place):
    def make(case, device):
        sxtt = common.triton_or_skip(device)
        from softxent._options import LossOptions

        torch, logits, target = _inputs(case, device)
        options = LossOptions()

        def run():
            scale = sxtt.mean_scale(target, None, options.ignore_index, logits.shape[1])
            grad = logits if in_place else torch.empty_like(logits)
            losses, _ = sxtt.cross_entropy_rows(logits, target, None, options, grad_scale=scale, grad_out=grad)
            return losses.sum() * scale, grad

        return run

    return make


def make_softxent_torch(case, device):
    common.triton_or_skip(device)
    import softxent.torch as sxt

    torch, logits, target = _inputs(case, device, requires_grad=True)
    return _autograd_run(lambda: sxt.cross_entropy(logits, target), logits)


def _autograd_run(loss_fn, leaf):
    def run():
        leaf.grad = None
        loss = loss_fn()
        loss.backward()
        grad, leaf.grad = leaf.grad, None  # returned, not kept: the next run's peak starts clean
        return loss, grad

    return run


def make_torch(case, device):
    torch, logits, target = _inputs(case, device, requires_grad=True)
    return _autograd_run(lambda: torch.nn.functional.cross_entropy(logits, target), logits)


def make_torch_compile(case, device):
    torch, logits, target = _inputs(case, device, requires_grad=True)
    compiled = torch.compile(torch.nn.functional.cross_entropy)
    return _autograd_run(lambda: compiled(logits, target), logits)


def make_liger(case, device):
    liger = common.liger_or_skip(device)
    torch, logits, target = _inputs(case, device, requires_grad=True)
    return _autograd_run(lambda: liger.liger_cross_entropy(logits, target), logits)


PROVIDERS = {
    "softxent": _make_softxent(in_place=False),
    "softxent-inplace": _make_softxent(in_place=True),
    "softxent-torch": make_softxent_torch,
    "torch-eager": make_torch,
    "torch-compile": make_torch_compile,
    "liger": make_liger,
    common.COPY: common.make_copy(nbytes),
}

if __name__ == "__main__":
    rows = main("gpu_cross_entropy", CASES, QUICK, PROVIDERS, describe=common.describe_bandwidth(nbytes))
    common.finish("gpu_cross_entropy", rows)
