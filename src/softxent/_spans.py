"""Contiguous spans of rows on a thread pool: the one parallel loop of the NumPy and torch layers.

NumPy and torch release the GIL inside their loops, so threads overlap. Each span writes only its own
rows, so the result does not depend on the number of threads.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable


def configured_threads(default: int) -> int:
    """SOFTXENT_NUM_THREADS if set, else `default`."""
    configured = os.environ.get("SOFTXENT_NUM_THREADS")
    return max(1, int(configured)) if configured else max(1, default)


class SpanPool:
    """A thread pool made on first use by `make(size)`, grown when more threads are asked for, and made
    anew in a forked child (a DataLoader worker, say), which inherits the pool object but not its threads:
    work queued there would wait forever."""

    def __init__(self, make: Callable[[int], ThreadPoolExecutor]):
        self._make = make
        self._pool: ThreadPoolExecutor | None = None
        self._size = 0
        self._pid = 0
        self._lock = threading.Lock()

    def run(self, num_rows: int, threads: int, work: Callable[[int, int], None], align: int = 1,
            caller_too: bool = False) -> None:
        """work(start, stop) over `threads` contiguous spans covering range(num_rows), then wait.

        Span starts are multiples of `align` (a kernel's chunk of rows): every chunk then holds the same
        rows whatever the number of threads, and so gives the same bits (vector loops and their scalar
        tails round exp differently). With `caller_too` the last span runs on the calling thread (one
        hand-off fewer), for work whose speed does not depend on the thread it runs on.
        """
        bounds = [min(num_rows, (num_rows * i // threads) // align * align) for i in range(threads)] + [num_rows]
        spans = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        own = spans.pop() if caller_too and spans else None
        pool = self._pool_for(max(1, len(spans)))
        futures = [pool.submit(work, lo, hi) for lo, hi in spans]
        if own is not None:
            work(*own)
        for future in futures:
            future.result()  # re-raises a worker's exception here

    def _pool_for(self, threads: int) -> ThreadPoolExecutor:
        with self._lock:
            pid = os.getpid()
            if self._pool is None or self._size < threads or self._pid != pid:
                if self._pool is not None and self._pid == pid:
                    self._pool.shutdown(wait=True)
                self._pool, self._size, self._pid = self._make(threads), threads, pid
            return self._pool
