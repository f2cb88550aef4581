"""Large CPU buffers backed by transparent huge pages where Linux allows it.

A logits-sized gradient (hundreds of MB) is fresh memory on every step: torch's CPU allocator hands it
back to the system when freed, so the next step touches new pages. With 4 KiB pages that is one page
fault per 4 KiB, and on a virtual machine the faults can cost more than the arithmetic; advising
MADV_HUGEPAGE before the first touch makes them one per 2 MiB. Nothing changes where the advice is not
available (other systems, THP disabled): it is a hint.
"""

from __future__ import annotations

import ctypes
import sys

import torch

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_MIN_BYTES = 16 << 20  # below this, faults are cheap next to the work
_madvise = None


def _libc_madvise():
    global _madvise
    if _madvise is None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            libc.madvise.restype = ctypes.c_int
            _madvise = libc.madvise
        except (OSError, AttributeError):
            _madvise = False
    return _madvise


def advise_huge_pages(tensor: torch.Tensor) -> None:
    """Hint that a fresh, untouched CPU tensor's memory be backed by huge pages (Linux only)."""
    if torch.compiler.is_compiling():  # traced: the graph allocates its own buffers
        return
    # the size first: the cheapest test (0.1 us), and the one that ends every small call's visit here
    if tensor.nbytes < _MIN_BYTES or tensor.device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    nbytes = tensor.untyped_storage().nbytes()
    madvise = _libc_madvise()
    if not madvise:
        return
    start = tensor.untyped_storage().data_ptr()
    lo = (start + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)  # whole huge pages inside the buffer only
    hi = (start + nbytes) & ~(_HUGE_PAGE - 1)
    if hi > lo:
        madvise(lo, hi - lo, _MADV_HUGEPAGE)


def empty_like(tensor: torch.Tensor, **kwargs) -> torch.Tensor:
    """torch.empty_like(tensor, **kwargs), advised for huge pages when large and on the CPU."""
    out = torch.empty_like(tensor, **kwargs)
    advise_huge_pages(out)
    return out


def empty(*shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty(shape), advised for huge pages when large and on the CPU."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    advise_huge_pages(out)
    return out


def zeros(*shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.zeros(shape), advised before the zeros first touch its pages."""
    return empty(*shape, dtype=dtype, device=device).zero_()
