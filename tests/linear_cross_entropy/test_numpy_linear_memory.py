"""softxent.linear_cross_entropy never holds more than `chunk_size` rows of logits.

NumPy reports every array buffer to tracemalloc, so the peak of traced memory during the call, less
what was allocated before it, is exactly the call's own footprint: outputs plus temporaries.
"""

import numpy as np
import pytest

import softxent as sx
from memory import peak_bytes


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunk_size", [16, 100])
def test_linear_cross_entropy_holds_at_most_chunk_size_rows_of_logits(dtype, chunk_size):
    rows, features, classes = 1024, 24, 4000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features)).astype(dtype)
    w = rng.standard_normal((classes, features)).astype(dtype)
    bias = rng.standard_normal(classes).astype(dtype)
    target = rng.integers(0, classes, rows)
    itemsize = np.dtype(dtype).itemsize

    peak = peak_bytes(lambda: sx.linear_cross_entropy(x, w, target, bias=bias, chunk_size=chunk_size,
                                                       return_grad=True))

    outputs = (x.size + w.size + bias.size) * itemsize + rows * 8  # dx, dw, dbias, per-row losses
    chunk_logits = chunk_size * classes * itemsize
    scratch = chunk_size * classes * 8  # the kernel's float64 rows: never more rows than the chunk
    dw_slices = max(64, chunk_size * classes // (4 * features)) * features * itemsize
    small = 256 * 1024  # per-row vectors, index arrays, Python objects
    assert peak <= outputs + chunk_logits + scratch + dw_slices + small, peak
    # and well below one (rows, classes) array of logits (chunks here are at most a tenth of the rows)
    assert peak - outputs < rows * classes * itemsize / 2


def test_unfused_reference_would_be_visible_to_this_measurement():
    # the measurement is not blind: materialising the logits shows up in full
    rows, features, classes = 1024, 24, 4000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    w = rng.standard_normal((classes, features)).astype(np.float32)
    target = rng.integers(0, classes, rows)
    peak = peak_bytes(lambda: sx.cross_entropy(x @ w.T, target, return_grad=True))
    assert peak >= 2 * rows * classes * 4  # logits and their gradient
