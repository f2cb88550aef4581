"""The thread pool both layers run their spans of rows on (softxent/_spans.py)."""

import multiprocessing

import numpy as np

import softxent as sx
from softxent._spans import SpanPool


def _in_forked_child(fn):
    """fn() in a forked child; its result, or None if the child did not finish within 30 s."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=lambda: queue.put(fn()))
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
        return None
    return queue.get(timeout=5)


# large enough to go through the pool (>= 1M elements), small enough for a second
LOGITS = np.random.default_rng(0).standard_normal((256, 8192))
TARGET = np.zeros(256, dtype=np.int64)


def test_regression_forked_child_waited_forever_on_the_parents_numpy_pool():
    expected = float(sx.cross_entropy(LOGITS, TARGET))  # the parent's pool exists now
    assert _in_forked_child(lambda: float(sx.cross_entropy(LOGITS, TARGET))) == expected


def test_spans_cover_every_row_once_and_the_pool_grows():
    made = []

    def make(size):
        from concurrent.futures import ThreadPoolExecutor

        made.append(size)
        return ThreadPoolExecutor(max_workers=size)

    pool = SpanPool(make)
    for threads in (2, 2, 3):
        seen = np.zeros(10, dtype=int)

        def work(start, stop):
            seen[start:stop] += 1

        pool.run(10, threads, work)
        assert (seen == 1).all()
    assert made == [2, 3]
