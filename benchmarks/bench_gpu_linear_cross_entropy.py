"""Linear cross-entropy forward + backward on the GPU, bfloat16, the LLM head: softxent beside its peers.

Providers, each in a fresh process (benchmarks/harness.py):
  softxent          softxent.torch.linear_cross_entropy + backward: cuBLAS chunks + the Triton kernel,
                    gradients in the forward, dW accumulated in float32 (the default)
  softxent-wdtype   the same with dW accumulated in the weight's dtype (float32_weight_grad=False: no
                    (V, D) float32 accumulator)
  torch-unfused     x @ W.T, then torch.nn.functional.cross_entropy, then backward (eager)
  torch-compile     the same under torch.compile
  torch-chunked     torch.nn.functional.linear_cross_entropy (torch's own chunked path), where it exists
  liger             Liger-Kernel's fused linear cross-entropy
  cce               Cut Cross-Entropy (Wijmans et al. 2024)

Columns added: grad_bytes, the gradients' own size (dx + dW in bfloat16: (N + V) * D * 2), and
mem_over_grads, the peak extra memory over it. Goal (issue 5): time at most 1.0x the fastest peer and
peak extra memory at most 1.1x the gradients' own size. The op is matmul-bound (3 GEMMs of 2 * N * D * V
flops each), so the GB/s columns are absent here; TFLOP/s (6 * N * D * V / time) is given instead.
"""

import bench_gpu_common as common
from harness import Unavailable, main

CASES = {"8192x4096x128256-bf16": {"rows": 8192, "features": 4096, "classes": 128256, "dtype": "bfloat16"}}
QUICK = {"64x32x1000-bf16": {"rows": 64, "features": 32, "classes": 1000, "dtype": "bfloat16"}}


def grad_bytes(case):
    return (case["rows"] + case["classes"]) * case["features"] * 2


def extra(case, row):
    flops = 6 * case["rows"] * case["features"] * case["classes"]
    return {"grad_bytes": grad_bytes(case), "mem_over_grads": row["peak_extra_bytes"] / grad_bytes(case),
            "TFLOP_per_s": flops / row["time_s"] / 1e12}


def describe(case, row):
    return extra(case, row)


def _inputs(case, device, requires_grad=False):
    torch = common.check_device(device)
    g = torch.Generator(device=device).manual_seed(0)
    dtype = common.dtype_of(torch, case["dtype"])
    x = torch.randn(case["rows"], case["features"], device=device, generator=g, dtype=dtype)
    w = torch.randn(case["classes"], case["features"], device=device, generator=g, dtype=dtype)
    w = w / case["features"] ** 0.5  # logits of order 1, as in a trained head
    target = torch.randint(0, case["classes"], (case["rows"],), device=device, generator=g)
    return torch, x.requires_grad_(requires_grad), w.requires_grad_(requires_grad), target


def _autograd_run(loss_fn, leaves):
    def run():
        for leaf in leaves:
            leaf.grad = None
        loss = loss_fn()
        loss.backward()
        grads = [leaf.grad for leaf in leaves]
        for leaf in leaves:
            leaf.grad = None  # returned, not kept: the next run's peak starts clean
        return loss, grads

    return run


def _make_softxent(float32_weight_grad):
    def make(case, device):
        common.triton_or_skip(device)
        import softxent.torch as sxt

        torch, x, w, target = _inputs(case, device, requires_grad=True)
        return _autograd_run(lambda: sxt.linear_cross_entropy(x, w, target,
                                                               float32_weight_grad=float32_weight_grad), (x, w))

    return make


def make_torch_unfused(case, device):
    torch, x, w, target = _inputs(case, device, requires_grad=True)
    return _autograd_run(lambda: torch.nn.functional.cross_entropy(x @ w.T, target), (x, w))


def make_torch_compile(case, device):
    torch, x, w, target = _inputs(case, device, requires_grad=True)
    compiled = torch.compile(lambda x, w, t: torch.nn.functional.cross_entropy(x @ w.T, t))
    return _autograd_run(lambda: compiled(x, w, target), (x, w))


def make_torch_chunked(case, device):
    torch, x, w, target = _inputs(case, device, requires_grad=True)
    function = getattr(torch.nn.functional, "linear_cross_entropy", None)
    options = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if function is None or options is None:
        raise Unavailable(f"torch {torch.__version__} has no torch.nn.functional.linear_cross_entropy")
    return _autograd_run(lambda: function(x, w, target, options=options()), (x, w))


def make_liger(case, device):
    liger = common.liger_or_skip(device)
    torch, x, w, target = _inputs(case, device, requires_grad=True)
    return _autograd_run(lambda: liger.liger_fused_linear_cross_entropy(x, w, target), (x, w))


def make_cce(case, device):
    cce = common.cce_or_skip(device)
    torch, x, w, target = _inputs(case, device, requires_grad=True)
    return _autograd_run(lambda: cce.linear_cross_entropy(x, w, target), (x, w))


PROVIDERS = {
    "softxent": _make_softxent(float32_weight_grad=True),
    "softxent-wdtype": _make_softxent(float32_weight_grad=False),
    "torch-unfused": make_torch_unfused,
    "torch-compile": make_torch_compile,
    "torch-chunked": make_torch_chunked,
    "liger": make_liger,
    "cce": make_cce,
}

if __name__ == "__main__":
    rows = main("gpu_linear_cross_entropy", CASES, QUICK, PROVIDERS, describe=describe)
    common.finish("gpu_linear_cross_entropy", rows)
