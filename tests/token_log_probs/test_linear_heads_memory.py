"""The linear token log-prob and distillation heads never hold (rows, V) logits, in either layer.

torch: a dispatch mode records the size of every tensor an op returns, forward and backward; no op may
return half of rows x V elements (the chunk of logits is the largest), while the unfused computation,
seen by the same mode, does. NumPy: tracemalloc sees every array buffer, so the peak during the call,
less what was allocated before it, is the call's own footprint: outputs plus at most a few chunks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softxent as sx
import softxent._torch.threads as threads
import softxent.torch as sxt
from memory import allocations, peak_bytes

ROWS, FEATURES, CLASSES, CHUNK = 256, 8, 600, 16



def _torch_inputs():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=gen, requires_grad=True)
    w = torch.randn(CLASSES, FEATURES, generator=gen, requires_grad=True)
    return x, w, torch.randint(0, CLASSES, (ROWS,), generator=gen), torch.randn(ROWS, FEATURES, generator=gen)


def test_torch_linear_heads_allocate_no_rows_by_vocabulary_tensor(monkeypatch):
    monkeypatch.setattr(threads, "INLINE_MAX_ELEMENTS", 1 << 40)  # the row kernels on this thread, seen
    x, w, t, tx = _torch_inputs()
    with allocations() as seen:
        lp, h = sxt.linear_token_log_probs(x, w, t, return_entropy=True, chunk_size=CHUNK)
        (lp.sum() + h.sum()).backward()
        sxt.linear_distillation_loss(x, w, tx, w.detach() * 0.5, chunk_size=CHUNK, divergence="jsd").backward()
        sxt.linear_distillation_loss(x, w, tx, w.detach() * 0.5, chunk_size=CHUNK, reduction="none").sum().backward()
    assert max(seen.sizes) < ROWS * CLASSES // 2
    assert CHUNK * CLASSES in seen.sizes  # the chunk buffer itself
    with allocations() as unfused:
        log_p = torch.log_softmax(x @ w.T, -1)
        (log_p.gather(1, t[:, None]).sum() - (log_p.exp() * log_p).sum()).backward()
    assert max(unfused.sizes) >= ROWS * CLASSES  # the control: the mode sees the logits


@pytest.mark.parametrize("head", ["token_log_probs", "distillation"])
def test_numpy_linear_heads_hold_a_few_chunks_at_most(head):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4 * ROWS, 24)).astype(np.float32)
    w = rng.standard_normal((2 * CLASSES, 24)).astype(np.float32)
    t = rng.integers(0, 2 * CLASSES, 4 * ROWS)
    if head == "token_log_probs":
        call = lambda: sx.linear_token_log_probs(x, w, t, return_entropy=True, chunk_size=16,  # noqa: E731
                                                 return_grad=True)
        chunks = 1
    else:
        call = lambda: sx.linear_distillation_loss(x, w, x, w * 0.5, chunk_size=16, return_grad=True)  # noqa: E731
        chunks = 2  # the student's and the teacher's
    rows, classes = x.shape[0], w.shape[0]
    outputs = (x.size + w.size) * 4 + rows * 8 * 4
    chunk_logits = chunks * 16 * classes * 4
    scratch = 10 * 16 * classes * 8  # the row kernels' float64 temporaries: a chunk's rows, a few times
    dw_slices = max(64, 16 * classes // (4 * 24)) * 24 * 4
    peak = peak_bytes(call)
    assert peak <= outputs + chunk_logits + scratch + dw_slices + (256 << 10), peak
    assert peak - outputs < rows * classes * 4 / 2  # well below one (rows, V) array of logits
