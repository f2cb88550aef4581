"""Class indices outside [0, C): flagged on the device by the kernel, raised on the host without a sync.

The cross-entropy kernel gives a row whose label is outside [0, C) (and not ignore_index) a NaN loss and a
NaN gradient, so a bad label is never silent and never read out of bounds, whatever the mode. With the
label check on, it also records the first such row in a one-element int64 flag, packed as
``row * 2**32 + (label mod 2**32)`` so that one atomic_min keeps the first row and its label together.

How the flag reaches the user (CONFIG.label_check, or cross_entropy_rows' `label_check`):

- "lazy" (default): the flag is copied to pinned host memory behind the kernel (non_blocking) with a
  CUDA event. Every later call first asks the events that have completed, without waiting, and raises
  the ValueError of rule 7 of docs/semantics.md for the earliest bad call; `check_labels()` waits for all of them. The
  hot path never synchronises: the step with the bad label reports NaN, the next call raises. This is
  the GPU analogue of PyTorch's device-side assert without killing the CUDA context.
- "sync": `flag.item()` right after the launch, raising in the same call (one host synchronisation).
- "off": no flag at all (CUDA graph capture and torch.compile switch to it by themselves).

On CPU tensors (the interpreter) a check costs no synchronisation, so "lazy" raises in the same call too.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from softxent import _validation as v
from softxent.ops.cross_entropy import spec

NO_BAD = torch.iinfo(torch.int64).max  # the flag's value when every label was in range
_LOW = 1 << 32


@dataclass
class _Pending:
    flag: torch.Tensor  # host copy of the flag (pinned), filled once `event` completes
    event: Any  # torch.cuda.Event recorded after the copy
    num_classes: int
    ignore_index: int
    label_shape: tuple | None


_pending: deque[_Pending] = deque()


def new_flag(device) -> torch.Tensor:
    return torch.full((1,), NO_BAD, dtype=torch.int64, device=device)


def decode(key: int) -> tuple[int, int]:
    """(row, label) from the packed flag; labels outside int32 come back modulo 2**32."""
    row, low = divmod(int(key), _LOW)
    return row, low - _LOW if low >= _LOW // 2 else low


def error_for(key: int, num_classes: int, ignore_index: int, label_shape: tuple | None,
              name: str = "target") -> ValueError | None:
    if int(key) == NO_BAD:
        return None
    row, label = decode(key)
    position = (row,) if not label_shape else tuple(int(i) for i in np.unravel_index(row, label_shape))
    return v.bad_label_error(label, position, num_classes, ignore_index, name=name)


def watch(flag: torch.Tensor, num_classes: int, ignore_index: int, label_shape: tuple | None, mode: str) -> None:
    """After a launch: raise now ("sync", or any CPU tensor) or queue the flag for a later check ("lazy")."""
    if mode == "sync" or flag.device.type != "cuda":
        error = error_for(int(flag.item()), num_classes, ignore_index, label_shape)
        if error is not None:
            raise error
        return
    host = torch.empty(1, dtype=torch.int64, pin_memory=True)
    host.copy_(flag, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    _pending.append(_Pending(host, event, num_classes, ignore_index, label_shape))


def watch_target(target: torch.Tensor, num_classes: int, ignore_index: int, mode: str = "lazy") -> None:
    """Check a whole class-index target on its device and `watch` the result: no host sync on CUDA.

    The flag is the kernels' (first bad row and its label, packed), built here with torch ops over the
    caller's whole target, so the error names the position in that target however the rows are later
    split into chunks. Off under CUDA graph capture and torch.compile tracing, where no host work can run.
    """
    if torch.compiler.is_compiling() or (target.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    if mode == "lazy":
        raise_arrived()
    labels = target.reshape(-1).to(torch.int64)
    if labels.numel() == 0:
        return
    bad = spec.bad_labels(labels, num_classes, ignore_index)  # on the device, no sync
    rows = torch.arange(labels.numel(), device=labels.device, dtype=torch.int64)
    keys = torch.where(bad, rows * _LOW + (labels & (_LOW - 1)), NO_BAD)
    watch(keys.amin().reshape(1), num_classes, ignore_index, tuple(target.shape), mode)


def raise_arrived() -> None:
    """Raise for the earliest queued flag that has reached the host and holds a bad label; never waits."""
    while _pending and _pending[0].event.query():
        _raise_pending(_pending.popleft())


def check_labels() -> None:
    """Wait for every queued label check and raise ValueError for the earliest bad label (a sync point).

    Call it where a synchronisation happens anyway (logging the loss, the end of an epoch) to get the
    error of a lazily checked call without waiting for the next cross-entropy call.
    """
    while _pending:
        pending = _pending.popleft()
        pending.event.synchronize()
        _raise_pending(pending)


def _raise_pending(pending: _Pending) -> None:
    error = error_for(int(pending.flag[0]), pending.num_classes, pending.ignore_index, pending.label_shape,
                      name="target (of an earlier, lazily checked cross-entropy call)")
    if error is not None:
        _pending.clear()  # one error per bad batch; the later flags are of steps already poisoned by NaN
        raise error
