"""Spans of rows on worker threads that each run torch single-threaded.

torch's intra-op pool (OpenMP) forks and joins every op; over a cache-sized chunk of rows that costs
more than the op, and when the machine is shared a late thread stalls every barrier. So a large problem
is cut into one contiguous span of rows per core and each span runs on its own worker thread, whose ops
are single-threaded: no barrier until the end. torch releases the GIL inside its ops, so the threads
overlap.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable

import torch

from softxent._spans import SpanPool, configured_threads

# Below this many elements torch's ops run on the calling thread anyway (its intra-op grain size), so the
# work stays there; above it, it goes to the workers, one span per PARALLEL_MIN_ELEMENTS at most. A
# second span pays from about a million logits: at 1024 x 1000 float32 one span ran cross-entropy's
# forward + backward in 8.2 ms against 9.2 ms for two, at 4096 x 1000 two won (22.5 ms against 29.6)
# on this project's 2-core machine (the NumPy layer's threshold is the same, _arrays.py).
INLINE_MAX_ELEMENTS = 1 << 15
PARALLEL_MIN_ELEMENTS = 1 << 20


def num_threads() -> int:
    """SOFTXENT_NUM_THREADS, else torch's intra-op thread count (what the user asked torch to use)."""
    return configured_threads(torch.get_num_threads())


def _make_pool(size: int) -> ThreadPoolExecutor:
    """A pool whose workers run torch ops on one thread each.

    torch.set_num_threads(1) in a worker pins that worker's OpenMP team to one thread, but it also sets
    the process default that threads started later inherit; so every worker is started (held at a
    barrier) before the caller's own setting is put back.
    """
    caller = torch.get_num_threads()
    started = threading.Barrier(size + 1)

    def single_threaded() -> None:
        torch.set_num_threads(1)

    pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="softxent-torch", initializer=single_threaded)
    waits = [pool.submit(started.wait) for _ in range(size)]
    started.wait()
    for wait in waits:
        wait.result()
    torch.set_num_threads(caller)
    return pool


_SPANS = SpanPool(_make_pool)


def _without_grad(work: Callable[[int, int], None], start: int, stop: int) -> None:
    # grad mode is per thread: a worker would otherwise record autograd history of the kernel's ops
    with torch.no_grad():
        work(start, stop)


def for_row_spans(num_rows: int, num_classes: int, work: Callable[[int, int], None], *,
                  device: torch.device | None = None, align: int = 1,
                  span_elements: int = PARALLEL_MIN_ELEMENTS, torch_ops: bool = True) -> None:
    """Run work(start, stop) over contiguous spans covering range(num_rows), one per thread if large
    (a span of at least `span_elements` logits each: a compiled kernel, faster than torch ops, pays
    sooner). Work that runs no torch ops (`torch_ops=False`) runs inline when it is one span.

    Each span writes only its own rows, so the result does not depend on the number of threads. Off the
    CPU (the generic path on another device) the spans would only queue kernels: one span, one thread.
    """
    elements = num_rows * num_classes
    threads = min(num_threads(), num_rows, max(1, elements // span_elements))
    on_cpu = device is None or device.type == "cpu"
    if not on_cpu or elements <= INLINE_MAX_ELEMENTS or (threads == 1 and not torch_ops):
        work(0, num_rows)
        return
    # torch ops: even one span runs on a worker, its ops then single-threaded, with no OpenMP barrier to
    # stall; other work keeps one span on the calling thread
    _SPANS.run(num_rows, threads, partial(_without_grad, work), align, caller_too=not torch_ops)
