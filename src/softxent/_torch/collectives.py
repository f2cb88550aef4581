"""Process-group plumbing: collectives with a timeout, and the handshake that makes faults raise, not hang.

Every call of a vocab-parallel loss starts with a *handshake*: one all-gather of a fixed-size vector of
int64 metadata (`META_LENGTH` entries per rank) that every rank then inspects. Because the vector has
the same size on every rank whatever the arguments, this collective cannot itself be confused by
arguments that disagree; what it carries lets every rank reach the same verdict from the same data:

- a rank whose arguments failed its local checks says so (an error code), and every rank raises;
- ranks that disagree on shapes, dtypes, options, or on the targets and class weights (compared by an
  exact integer fingerprint) raise a ValueError naming the field and each rank's value;
- each rank's vocabulary size, from which every rank learns the layout (offsets) of the slices.

Only after a handshake that every rank passed does a loss run its data collective, so a collective is
never entered with mismatched sizes. A rank that never arrives (crashed, or on another code path) is
caught by the timeout: gloo honours a per-operation timeout (ProcessGroup.allgather/allreduce take one
since torch 2.9), after which the operation fails on the waiting ranks; we also bound `Work.wait` by it,
which is what other backends honour. A group whose collective timed out is closed by gloo and cannot be
used again; that is the backend's rule, not ours. (On torch 2.13 such a process may also abort at exit,
"terminate called without an active exception", in about 3 runs of 8 with a bare ProcessGroup.allgather:
after a lost rank, end the process with os._exit or let the job restart it.)
"""

from __future__ import annotations

import datetime
import math
import numbers
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

META_LENGTH = 32  # int64 entries per rank in the handshake: 256 bytes
MESSAGE_BYTES = 1024  # bytes per rank in the error exchange (only after a rank reported an error)
_MAGIC = 0x5358_0000  # "SX" + a function code in the low bits: ranks in different functions disagree
_PRIME = 2**31 - 1  # fingerprints are sums modulo this prime: exact int64 arithmetic, no overflow
_ERROR_TYPES = {1: ValueError, 2: TypeError, 3: RuntimeError}


class CollectiveError(RuntimeError):
    """A collective of a vocab-parallel loss failed or timed out (a rank missing, dead, or stuck)."""


@dataclass(frozen=True)
class Layout:
    """Where this rank's slice of the vocabulary lies: classes [start, stop) of `total`."""

    rank: int
    sizes: tuple[int, ...]

    @property
    def world(self) -> int:
        return len(self.sizes)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def starts(self) -> tuple[int, ...]:
        return tuple(sum(self.sizes[:r]) for r in range(self.world))

    @property
    def start(self) -> int:
        return self.starts[self.rank]

    @property
    def stop(self) -> int:
        return self.start + self.sizes[self.rank]


@dataclass(frozen=True)
class Field:
    """One entry of the handshake that every rank must agree on: a label, its int64 code, a decoder."""

    label: str
    value: int
    show: Callable[[int], str] = str


class Communicator:
    """A process group, this rank's place in it, and a timeout applied to every collective."""

    def __init__(self, group: Any, timeout: datetime.timedelta | None, caller: str):
        self.caller = caller
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"{caller}: torch.distributed is not initialized; call "
                               f"torch.distributed.init_process_group first (or pass a group)")
        self.group = dist.group.WORLD if group is None else group
        if not isinstance(self.group, dist.ProcessGroup):
            raise TypeError(f"group must be a torch.distributed.ProcessGroup or None; got {type(group).__name__}")
        if dist.get_rank(self.group) < 0:
            raise ValueError(f"{caller}: this process (global rank {dist.get_rank()}) is not a member of group")
        self.rank = self.group.rank()
        self.size = self.group.size()
        self.timeout = timeout

    # --- collectives ---------------------------------------------------------------------------------

    def all_gather(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """Every rank's `tensor` stacked: shape (size, *tensor.shape). Same shape on every rank required."""
        tensor = tensor.contiguous()
        out = torch.empty((self.size,) + tuple(tensor.shape), dtype=tensor.dtype, device=tensor.device)
        self._run(lambda: self.group.allgather(list(out.unbind(0)), tensor, timeout=self.timeout), what)
        return out

    def all_reduce_sum(self, tensor: torch.Tensor, what: str) -> None:
        """tensor = the sum of every rank's tensor, in place."""
        self._run(lambda: self.group.allreduce(tensor, op=dist.ReduceOp.SUM, timeout=self.timeout), what)

    def _run(self, issue: Callable[[], Any], what: str) -> None:
        began = time.monotonic()
        try:
            work = issue()
            if self.timeout is None:
                work.wait()
            # a backstop for backends that ignore the per-operation timeout, a little later than it: a wait
            # that gives up first would leave gloo's operation pending, and the process aborts at exit
            elif not work.wait(timeout=self.timeout * 1.25 + datetime.timedelta(seconds=0.5)):
                raise RuntimeError("the wait timed out")  # backends that report a timeout by returning False
        except (RuntimeError, dist.DistBackendError) as err:
            limit = "the group's default timeout" if self.timeout is None else \
                f"timeout={self.timeout.total_seconds():g} s"
            raise CollectiveError(
                f"{self.caller}: the {what} failed on rank {self.rank} of {self.size} after "
                f"{time.monotonic() - began:.2f} s ({limit}): {err}. Another rank did not join it in time: it "
                f"may not have called {self.caller} with this group, or it failed or died. A gloo group "
                f"whose collective timed out is closed and cannot be used again.") from err

    def device_for(self, tensor: Any) -> torch.device:
        """Where this rank's collectives run: the tensor's device, or (when the argument is no tensor and
        this rank is about to report that) the device the backend needs."""
        if isinstance(tensor, torch.Tensor):
            return tensor.device
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # --- the handshake ---------------------------------------------------------------------------------

    def handshake(self, local_classes: int, fields: Sequence[Field], error: Exception | None,
                  device: torch.device) -> Layout:
        """Exchange metadata; raise the same error on every rank if any rank failed or ranks disagree.

        Returns the vocabulary layout. `fields` are the values every rank must agree on; `error` is this
        rank's local argument error, if any (then `local_classes` and `fields` are ignored).
        """
        if len(fields) + 3 > META_LENGTH:
            raise RuntimeError("internal: too many handshake fields")  # a programming error, not input
        meta = [0] * META_LENGTH
        meta[0] = _MAGIC + _FUNCTION_CODES[self.caller]  # the loss each rank calls
        if error is not None:
            meta[1] = next((code for code, kind in _ERROR_TYPES.items() if isinstance(error, kind)), 3)
        else:
            meta[2] = local_classes
            for i, field in enumerate(fields):
                meta[3 + i] = field.value
        table = self.all_gather(torch.tensor(meta, dtype=torch.int64, device=device), "handshake all-gather")
        table = table.cpu().tolist()  # (size, META_LENGTH) Python ints, identical on every rank

        functions = [row[0] for row in table]
        if len(set(functions)) > 1:
            raise ValueError(self._disagree("which loss function they call", functions,
                                            lambda c: _FUNCTION_NAMES.get(c - _MAGIC, f"code {c:#x}")))
        failed = [r for r, row in enumerate(table) if row[1]]
        if failed:
            self._raise_reported(failed, table, error, device)
        for i, field in enumerate(fields):
            values = [row[3 + i] for row in table]
            if len(set(values)) > 1:
                raise ValueError(self._disagree(field.label, values, field.show))
        return Layout(self.rank, tuple(int(row[2]) for row in table))

    def _disagree(self, label: str, values: list[int], show: Callable[[int], str]) -> str:
        seen = ", ".join(f"rank {r} has {show(v)}" for r, v in enumerate(values))
        return f"{self.caller}: the ranks of the group disagree on {label}: {seen}"

    def _raise_reported(self, failed: list[int], table: list[list[int]], error: Exception | None,
                        device: torch.device) -> None:
        """Some rank rejected its arguments: share the messages (one more all-gather) and raise everywhere."""
        text = b"" if error is None else str(error).encode("utf-8", "replace")[:MESSAGE_BYTES]
        buffer = torch.zeros(MESSAGE_BYTES, dtype=torch.uint8)
        buffer[: len(text)] = torch.tensor(list(text), dtype=torch.uint8)
        messages = self.all_gather(buffer.to(device), "error-message all-gather").cpu()
        first = failed[0]
        message = bytes(messages[first].tolist()).rstrip(b"\0").decode("utf-8", "replace")
        others = "" if len(failed) == 1 else f" (ranks {', '.join(map(str, failed[1:]))} also rejected theirs)"
        kind = _ERROR_TYPES[table[first][1]]
        raise kind(f"{self.caller}: rank {first} of {self.size} rejected its arguments{others}: {message}") \
            from error


# every function that handshakes, by the code its ranks compare (a rank calling another loss is refused by name)
_FUNCTION_CODES = {"vocab_parallel_cross_entropy": 1, "vocab_parallel_linear_cross_entropy": 2,
                   "vocab_parallel_token_log_probs": 3}
_FUNCTION_NAMES = {code: name for name, code in _FUNCTION_CODES.items()}


# --- values for the handshake ------------------------------------------------------------------------------

_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8, torch.int16,
           torch.int32, torch.int64, torch.bool]


def dtype_code(dtype: torch.dtype | None) -> int:
    """A small int per dtype (0 for None), the same in every process."""
    if dtype is None:
        return 0
    return _DTYPES.index(dtype) + 1 if dtype in _DTYPES else 100 + sum(str(dtype).encode())


def show_dtype(code: int) -> str:
    if code == 0:
        return "None"
    return str(_DTYPES[code - 1]) if code <= len(_DTYPES) else f"dtype code {code}"


def float_bits(value: float) -> int:
    """The float64 bit pattern of `value` as an int64, so floats compare exactly in the handshake."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def show_float(bits: int) -> str:
    return repr(struct.unpack("<d", struct.pack("<q", bits))[0])


def shape_code(shape: Sequence[int]) -> int:
    """An exact int64 fingerprint of a shape (its dimensions in order)."""
    code = len(shape)
    for size in shape:
        code = (code * 1_000_003 + int(size) + 1) % _PRIME
    return code


def fingerprint(tensor: torch.Tensor) -> int:
    """An exact fingerprint of a tensor's values (bit patterns for floats), identical across processes.

    sum_i (x_i mod p) * k_i mod p with distinct per-position multipliers k_i: int64 throughout with no
    overflow (each product < 2**62, the sum of fewer than 2**32 of them < 2**63), so two ranks holding the
    same tensor get the same number and tensors that differ collide with probability about 1/p.
    """
    flat = tensor.detach().reshape(-1)
    if flat.is_floating_point():
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
        flat = flat.contiguous().view(bits)
    values = flat.to(torch.int64).remainder(_PRIME)
    position = torch.arange(values.numel(), dtype=torch.int64, device=values.device)
    multiplier = (position * 40_503 + 12_345).remainder(_PRIME) + 1
    total = int((values * multiplier).remainder(_PRIME).sum().remainder(_PRIME))
    return total * 4_096 + values.numel() % 4_096  # the length's low bits too: a cheap second check


def show_fingerprint(code: int) -> str:
    return f"fingerprint {code:#x}"


def checked_timeout(timeout: Any) -> datetime.timedelta | None:
    """None (the group's own timeout), seconds as a positive real, or a positive timedelta."""
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, numbers.Real) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(f"timeout must be None, seconds (a real number) or a datetime.timedelta; "
                        f"got {type(timeout).__name__} {timeout!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"timeout must be a positive, finite number of seconds; got {timeout!r}")
    return datetime.timedelta(seconds=seconds)
