"""Softmax forward on the GPU: softxent's Triton kernel beside torch eager, torch.compile and Liger-Kernel.

Providers, each in a fresh process (benchmarks/harness.py):
  softxent        softxent.torch.triton.softmax_rows (online max and sum, then one write)
  softxent-torch  softxent.torch.softmax: the public function, which dispatches CUDA tensors to the kernel
  torch-eager     torch.softmax(x, dim=-1)
  torch-compile   the same under torch.compile
  liger           Liger-Kernel's softmax
  device-copy     a device-to-device copy of as many bytes: the device's copy bandwidth, same run

Bytes moved (the GB/s column): x read once and y written once, 2 * N * C * itemsize. Goal (issue 5):
softxent at >= 85% of the copy's GB/s and >= 1.5x faster than torch.compile.
"""

import bench_gpu_common as common
from harness import main

CASES = {
    "16384x131072-bf16": {"rows": 16384, "classes": 131072, "dtype": "bfloat16"},
    "16384x131072-f32": {"rows": 16384, "classes": 131072, "dtype": "float32"},
}
QUICK = {"32x1000-bf16": {"rows": 32, "classes": 1000, "dtype": "bfloat16"}}


def nbytes(case):
    itemsize = 4 if case["dtype"] == "float32" else 2
    return 2 * case["rows"] * case["classes"] * itemsize


def _input(case, device):
    torch = common.check_device(device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(case["rows"], case["classes"], device=device, generator=g,
                    dtype=common.dtype_of(torch, case["dtype"])) * 4
    return torch, x


def make_softxent(case, device):
    sxtt = common.triton_or_skip(device)
    _, x = _input(case, device)
    return lambda: sxtt.softmax_rows(x)


def make_softxent_torch(case, device):
    common.triton_or_skip(device)
    import softxent.torch as sxt

    _, x = _input(case, device)
    return lambda: sxt.softmax(x, dim=-1)


def make_torch(case, device):
    torch, x = _input(case, device)
    return lambda: torch.softmax(x, dim=-1)


def make_torch_compile(case, device):
    torch, x = _input(case, device)
    compiled = torch.compile(lambda t: torch.softmax(t, dim=-1))
    return lambda: compiled(x)


def make_liger(case, device):
    liger = common.liger_or_skip(device)
    _, x = _input(case, device)
    return lambda: liger.liger_softmax(x)


PROVIDERS = {
    "softxent": make_softxent,
    "softxent-torch": make_softxent_torch,
    "torch-eager": make_torch,
    "torch-compile": make_torch_compile,
    "liger": make_liger,
    common.COPY: common.make_copy(nbytes),
}

if __name__ == "__main__":
    rows = main("gpu_softmax", CASES, QUICK, PROVIDERS, describe=common.describe_bandwidth(nbytes))
    common.finish("gpu_softmax", rows)
