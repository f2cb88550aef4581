"""How the memory tests see memory: Python-side peaks (tracemalloc, which NumPy reports its buffers to) and
every tensor torch ops return (a dispatch mode)."""

import tracemalloc


def peak_bytes(fn) -> int:
    """Peak traced memory of fn() beyond what was allocated before it (its result is dropped)."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak - before


def allocations():
    """A context manager whose `.sizes` records the number of elements of every tensor an op returns
    (allocations, on any device). Built on call so that this module imports without torch."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Allocations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.sizes.append(t.numel())
            return out

    return Allocations()
