"""Hypothesis strategies shared by the property tests: logits, masks, labels and probability targets.

Finite logits are bounded (|x| <= 60 by default) so that a float64 reference computed the naive way
stays representable; the edge strategies add what the bounded ones never draw: -inf masks, fully
masked rows, +inf, ties and huge magnitudes.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOAT_DTYPES = (np.float32, np.float64)


def shapes(min_dims: int = 1, max_dims: int = 3, min_side: int = 1, max_side: int = 6):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def finite_arrays(shape, dtype=np.float64, bound: float = 60.0):
    """Arrays of bounded finite values (hypothesis repeats values often, so ties show up)."""
    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False,
                         width=np.dtype(dtype).itemsize * 8)
    return hnp.arrays(dtype, shape, elements=elements)


@st.composite
def logits(draw, min_dims: int = 1, max_dims: int = 3, dtypes=FLOAT_DTYPES, bound: float = 60.0,
           max_side: int = 6):
    """A finite logits array of varied shape and float dtype."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shapes(min_dims, max_dims, max_side=max_side))
    return draw(finite_arrays(shape, dtype, bound))


@st.composite
def axes(draw, ndim: int):
    """An axis argument: an int (negative or not), a tuple of distinct ints, or None."""
    kind = draw(st.sampled_from(["int", "tuple", "none"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    chosen = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return tuple(draw(st.sampled_from([a, a - ndim])) for a in chosen)


@st.composite
def edge_logits(draw, dtypes=FLOAT_DTYPES, max_rows: int = 5, max_classes: int = 6):
    """(rows, classes) logits mixing finite values, -inf masks, fully masked rows, ties and huge values."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    # huge, but with room: a row's sum of (x - max) / T over a few classes must stay inside the float
    # range (within a factor 1e4 of the max, label smoothing's sum of logits overflows: not pinned here)
    big = float(np.finfo(dtype).max) / 1e4
    n = draw(st.integers(1, max_rows))
    c = draw(st.integers(1, max_classes))
    element = st.one_of(
        st.floats(-30, 30, width=dtype.itemsize * 8),
        st.sampled_from([0.0, 1.0, -1.0, 5.0]),  # ties
        st.sampled_from([-np.inf]),  # masks
        st.sampled_from([big, -big]),  # huge magnitudes: shifted by the max, never overflow
    )
    x = draw(hnp.arrays(dtype, (n, c), elements=element))
    masked_rows = draw(st.lists(st.integers(0, n - 1), max_size=n))
    x[masked_rows] = -np.inf
    return x


@st.composite
def labels_for(draw, batch_shape, num_classes: int, ignore_index: int | None = None):
    """Integer class labels of batch_shape in [0, C), some set to ignore_index when given."""
    values = st.integers(0, num_classes - 1)
    if ignore_index is not None:
        values = st.one_of(values, st.just(ignore_index))
    dtype = draw(st.sampled_from([np.int64, np.int32]))
    return draw(hnp.arrays(dtype, batch_shape, elements=values))


@st.composite
def probabilities(draw, shape, axis: int = -1, dtype=np.float64, allow_zeros: bool = True):
    """Nonnegative arrays of `shape` whose entries along `axis` sum to 1 (zeros included if allowed)."""
    low = 0.0 if allow_zeros else 1e-3
    elements = st.one_of(st.floats(low, 1.0), st.just(0.0)) if allow_zeros else st.floats(low, 1.0)
    raw = draw(hnp.arrays(np.float64, shape, elements=elements))
    total = raw.sum(axis=axis, keepdims=True)
    # an all-zero row becomes uniform, so every row is a distribution
    raw = np.where(total > 0, raw, 1.0)
    return (raw / raw.sum(axis=axis, keepdims=True)).astype(dtype)
