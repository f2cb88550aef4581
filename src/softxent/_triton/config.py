"""Launch parameters of the Triton kernels: block size, row splitting, warps, and the label check's mode.

One mutable object, CONFIG, read at every launch; `configured(...)` changes it for a `with` block (tests use
it to force the multi-block and split paths on tiny rows). Defaults are first guesses for Hopper-class GPUs,
to be tuned by benchmarks/bench_gpu_*.py (docs/gpu-measurements.md lists the sweep).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch

LABEL_CHECKS = ("lazy", "sync", "off")

# what the kernels take: they accumulate in float32, so float64 belongs to the PyTorch path (gradcheck)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_dtype(tensor, name: str) -> None:
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32 for the Triton kernels (float32 "
                        f"accumulation); got {tensor.dtype}: use the PyTorch path for it")


@dataclass
class KernelConfig:
    """What the launchers read; change it through `configured`.

    block: columns a program handles per step (a power of two >= 16); a row shorter than this is
        handled in one step.
    program_columns: rows longer than this are split across programs that each take a chunk of at most
        this many columns; the chunks' states are combined by log-sum-exp in a second launch.
    fill_programs: on CUDA, when there are fewer rows than this, long rows are also split so that about
        this many programs run (0: never split for occupancy). None: twice the multiprocessor count.
    num_warps: warps per program; None picks from the block size.
    label_check: what cross_entropy_rows does about class indices outside [0, C) by default:
        "lazy" flags them on the device and raises at a later call once the flag has arrived on the host
        (no synchronisation), "sync" raises in the same call (one synchronisation), "off" only makes the
        row's loss and gradient NaN (CUDA graph capture, torch.compile).

    The environment variables SOFTXENT_TRITON_BLOCK, _PROGRAM_COLUMNS, _NUM_WARPS and _LABEL_CHECK
    override the defaults at import (for benchmark sweeps).
    """

    block: int = 4096
    program_columns: int = 262144
    fill_programs: int | None = None
    num_warps: int | None = None
    label_check: str = "lazy"

    def check(self) -> None:
        if self.block < 16 or self.block & (self.block - 1):
            raise ValueError(f"block must be a power of two >= 16; got {self.block}")
        if self.program_columns < 1:
            raise ValueError(f"program_columns must be >= 1; got {self.program_columns}")
        if self.label_check not in LABEL_CHECKS:
            raise ValueError(f"label_check must be one of 'lazy', 'sync' or 'off'; got {self.label_check!r}")


def _from_environment() -> KernelConfig:
    """Defaults, overridden by SOFTXENT_TRITON_BLOCK / _PROGRAM_COLUMNS / _NUM_WARPS / _LABEL_CHECK (for sweeps)."""
    import os

    config = KernelConfig()
    for name, cast in (("block", int), ("program_columns", int), ("num_warps", int), ("label_check", str)):
        value = os.environ.get(f"SOFTXENT_TRITON_{name.upper()}")
        if value:
            setattr(config, name, cast(value))
    config.check()
    return config


CONFIG = _from_environment()


@contextmanager
def configured(**changes):
    """Change CONFIG's fields for the duration of a `with` block."""
    names = {f.name for f in fields(KernelConfig)}
    unknown = set(changes) - names
    if unknown:
        raise TypeError(f"unknown kernel configuration field(s): {sorted(unknown)}")
    saved = {name: getattr(CONFIG, name) for name in changes}
    try:
        for name, value in changes.items():
            setattr(CONFIG, name, value)
        CONFIG.check()
        yield CONFIG
    finally:
        for name, value in saved.items():
            setattr(CONFIG, name, value)


@dataclass(frozen=True)
class RowLaunch:
    """How the columns of every row are divided: `splits` programs per row, each `chunk` columns wide."""

    block: int
    splits: int
    chunk: int
    num_warps: int


def plan_rows(num_rows: int, num_classes: int, device, config: KernelConfig | None = None) -> RowLaunch:
    """Block size, split count, chunk width and warps for rows of `num_classes` columns."""
    config = config or CONFIG
    block = min(config.block, max(16, 1 << max(0, (num_classes - 1).bit_length())))
    splits = max(1, math.ceil(num_classes / config.program_columns))
    target = config.fill_programs
    if target is None and getattr(device, "type", "cpu") == "cuda":
        target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    if target and num_rows and num_rows < target:
        # few long rows: split them so the device fills, each chunk keeping at least 4 blocks of work
        splits = max(splits, min(math.ceil(target / num_rows), num_classes // (4 * block)))
    # each chunk a whole number of blocks, so only the row's last block is ever partial
    chunk = math.ceil(math.ceil(num_classes / splits) / block) * block
    splits = max(1, math.ceil(num_classes / chunk))
    num_warps = config.num_warps or (4 if block <= 1024 else 8 if block <= 4096 else 16)
    return RowLaunch(block, splits, chunk, num_warps)
