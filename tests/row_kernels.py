"""The compiled CPU row kernels on or off, for the tests that hold them against the torch-op path."""

from contextlib import contextmanager


@contextmanager
def row_kernel(torch_cpu, compiled: bool):
    """Run the body with `torch_cpu`'s compiled kernel (`_cpu_rows`) or, compiled=False, its torch-op path."""
    saved = torch_cpu._cpu_rows
    if not compiled:
        torch_cpu._cpu_rows = None
    try:
        yield
    finally:
        torch_cpu._cpu_rows = saved
