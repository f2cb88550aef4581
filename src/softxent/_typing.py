"""Type aliases of the NumPy layer's public signatures (the package ships py.typed).

Inputs are anything NumPy turns into an array (`numpy.typing.ArrayLike`). Elementwise results are float
arrays of the input's shape; reductions are float arrays, or a NumPy float scalar when every axis is
reduced (as NumPy's own reductions and SciPy's logsumexp return).
"""

from __future__ import annotations

from typing import Any, Literal, Tuple, Union

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
DTypeLike = npt.DTypeLike
# one axis, several (flattened in order), or None for every element
Axis = Union[int, Tuple[int, ...], None]
Reduction = Literal["none", "mean", "sum"]
# an array of floats (float16, float32, float64, longdouble)
FloatArray = npt.NDArray[np.floating[Any]]
# a reduction's result: an array, or a NumPy float scalar when nothing is left of the shape
FloatResult = Union[npt.NDArray[np.floating[Any]], np.floating[Any]]
