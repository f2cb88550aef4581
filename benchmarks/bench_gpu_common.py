"""What the GPU benchmark scripts share: the copy-bandwidth yardstick, GB/s columns, peer imports.

Each bench_gpu_*.py adds a "device-copy" provider that copies, device to device, a buffer of the size the
op moves (so its row shows the device's measured copy bandwidth in the same run, same process setup),
and a `describe` hook that turns each row's time into GB/s with the op's byte formula. After the run,
`finish` adds each row's fraction of the copy bandwidth (the issue's goal: >= 85%) and its ratio to the
fastest peer, prints them and rewrites the CSV and JSON.

On the CPU the Triton kernels only run under the interpreter: the softxent providers raise Unavailable
unless TRITON_INTERPRET=1 is set, so `--device cpu --quick` is a smoke test of the script, not a timing.

Run directly, it measures the copy bandwidth alone: ``python benchmarks/bench_gpu_common.py``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import harness
from harness import Unavailable

# providers that are softxent itself; the rest are peers (for "ratio to the fastest peer")
OURS_PREFIX = "softxent"
COPY = "device-copy"


def torch_or_skip():
    try:
        import torch
    except ImportError:
        raise Unavailable("torch not installed") from None
    return torch


def check_device(device: str):
    torch = torch_or_skip()
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("no CUDA device")
    return torch


def triton_or_skip(device: str):
    """softxent.torch.triton, refusing CPU runs that would compile for a GPU."""
    check_device(device)
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise Unavailable("the Triton kernels need CUDA; set TRITON_INTERPRET=1 to smoke-test them on the CPU")
    try:
        import softxent.torch.triton as sxtt
    except ImportError as err:
        raise Unavailable(f"softxent.torch.triton unavailable: {err}") from None
    return sxtt


def liger_or_skip(device: str):
    if device != "cuda":
        raise Unavailable("Liger-Kernel runs on CUDA only")
    try:
        import liger_kernel.transformers.functional as liger
    except ImportError:
        raise Unavailable("liger-kernel not installed (carry it as a wheel: docs/gpu-measurements.md)") from None
    return liger


def cce_or_skip(device: str):
    if device != "cuda":
        raise Unavailable("Cut Cross-Entropy runs on CUDA only")
    try:
        import cut_cross_entropy
    except ImportError:
        raise Unavailable("cut-cross-entropy not installed (carry it as a wheel: docs/gpu-measurements.md)") from None
    return cut_cross_entropy


def dtype_of(torch, name: str):
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def make_copy(nbytes_of):
    """A provider copying nbytes_of(case) / 2 bytes device to device: it reads and writes that much."""

    def make(case, device):
        torch = check_device(device)
        half = nbytes_of(case) // 2
        src = torch.empty(half, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)

    return make


def describe_bandwidth(nbytes_of, extra=None):
    """harness `describe` hook: bytes moved by the op (nbytes_of(case, provider)) and GB/s."""

    def describe(case, row):
        moved = nbytes_of(case)
        out = {"bytes_moved": moved, "GB_per_s": moved / row["time_s"] / 1e9}
        if extra is not None:
            out.update(extra(case, row))
        return out

    return describe


def finish(op: str, rows: list[dict], argv=None) -> None:
    """Add pct_of_copy and time over the fastest peer per case; print them; rewrite CSV and JSON."""
    if not rows:  # a child process: nothing to summarise
        return
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=harness.RESULTS)
    args, _ = parser.parse_known_args(argv)
    print()
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case and "time_s" in r]
        copy = next((r for r in mine if r["provider"] == COPY), None)
        peers = [r for r in mine if not r["provider"].startswith(OURS_PREFIX) and r["provider"] != COPY]
        fastest = min(peers, key=lambda r: r["time_s"]) if peers else None
        for r in mine:
            if copy is not None and "GB_per_s" in r:
                r["pct_of_copy"] = 100.0 * r["GB_per_s"] / copy["GB_per_s"]
            if fastest is not None and r["provider"] != COPY:
                r["time_over_fastest_peer"] = r["time_s"] / fastest["time_s"]
                r["fastest_peer"] = fastest["provider"]
        for r in mine:
            line = f"  {case:>24}  {r['provider']:<22} {r['time_s'] * 1e3:9.2f} ms"
            if "GB_per_s" in r:
                line += f"  {r['GB_per_s']:8.4g} GB/s"
            if "pct_of_copy" in r:
                line += f"  {r['pct_of_copy']:5.1f}% of copy"
            if "time_over_fastest_peer" in r:
                line += f"  {r['time_over_fastest_peer']:.2f}x fastest peer ({r['fastest_peer']})"
            if "TFLOP_per_s" in r:
                line += f"  {r['TFLOP_per_s']:6.1f} TFLOP/s"
            if "mem_over_grads" in r:
                line += f"  peak {r['mem_over_grads']:.2f}x gradients"
            print(line)
    path = harness.write_results(op, args.device, rows, args.out, extra=_device_meta(args.device))
    print(f"rewrote {path} and {path.with_suffix('.json')} with the bandwidth columns")


def _device_meta(device: str) -> dict:
    meta = {k: v for k, v in os.environ.items() if k.startswith("SOFTXENT_TRITON_")}
    try:
        import torch

        meta["torch"] = torch.__version__
        if device == "cuda" and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            meta.update(gpu=props.name, sms=props.multi_processor_count, gpu_memory_bytes=props.total_memory)
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    for name in ("liger_kernel", "cut_cross_entropy"):
        try:
            module = __import__(name)
            meta[name] = getattr(module, "__version__", "installed")
        except ImportError:
            pass
    return meta


if __name__ == "__main__":
    # the device's copy bandwidth alone: 4 GiB read + 4 GiB written
    cases = {"copy-4GiB": {"bytes": 8 << 30}}
    quick = {"copy-64MiB": {"bytes": 128 << 20}}
    nbytes = lambda case: case["bytes"]  # noqa: E731
    rows = harness.main("device_copy", cases, quick, {COPY: make_copy(nbytes)},
                        describe=describe_bandwidth(nbytes))
    finish("device_copy", rows)
