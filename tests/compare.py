"""One tolerance table per dtype and one verbose comparison helper, shared by every test file."""

from __future__ import annotations

import numpy as np

# (rtol, atol) for results compared with a reference computed in higher precision or another library.
# float32/float64: a few ulp of the largest value plus summation slack; 16-bit: the storage rounding.
TOLERANCE = {
    "float64": (1e-12, 1e-14),
    "float32": (2e-6, 1e-7),
    "float16": (2e-3, 1e-4),
    "bfloat16": (1.6e-2, 1e-3),
    # analytic gradients against central differences in float64 with step h = 1e-5 on O(1) inputs:
    # truncation error O(h^2 f''') ~ 1e-10 plus rounding O(eps |f| / h) ~ 1e-11, with slack for
    # curvature (softcap, temperature < 1, z_loss) that grows the third derivative
    "finite_difference": (1e-6, 1e-8),
}


def dtype_name(array) -> str:
    return str(array.dtype).replace("torch.", "")


def to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor; bfloat16 has no NumPy dtype
        array = array.detach().cpu()
        if str(array.dtype) == "torch.bfloat16":
            array = array.float()
        return array.numpy()
    return np.asarray(array)


def assert_close(actual, expected, *, dtype: str | None = None, what: str = "value", scale: float = 1.0):
    """Compare with the dtype's tolerance (times `scale`); on failure name the worst entry and its values."""
    dtype = dtype or dtype_name(actual)
    rtol, atol = TOLERANCE[dtype]
    rtol, atol = rtol * scale, atol * scale
    a = to_numpy(actual).astype(np.float64)
    e = to_numpy(expected).astype(np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    same_nonfinite = (a == e) | (np.isnan(a) & np.isnan(e))
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity: masked out here
        error = np.where(same_nonfinite, 0.0, np.abs(a - e))
    allowed = atol + rtol * np.abs(e)
    bad = ~(error <= allowed)
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, error - allowed, -np.inf)), a.shape) if a.ndim else ()
        raise AssertionError(
            f"{what} ({dtype}, rtol={rtol:g}, atol={atol:g}): {int(bad.sum())} of {a.size} entries off; "
            f"worst at {tuple(int(i) for i in worst)}: got {a[worst]!r}, expected {e[worst]!r}, "
            f"error {error[worst]:.3g} > allowed {allowed[worst]:.3g}")


def ulp_error(actual, exact) -> np.ndarray:
    """|actual - exact| in units of the last place of `actual`'s dtype at the exact value.

    `exact` is a float64 array or a sequence of mpmath numbers; infinities must match exactly.
    """
    actual = np.asarray(actual)
    dtype = actual.dtype
    exact_f = np.array([float(e) for e in np.ravel(exact)], dtype=np.float64).reshape(actual.shape)
    exact_hp = np.ravel(exact)
    out = np.zeros(actual.shape, dtype=np.float64)
    for i, (a, e, ef) in enumerate(zip(np.ravel(actual), exact_hp, np.ravel(exact_f))):
        if np.isnan(a) or np.isnan(ef):
            out.flat[i] = 0.0 if np.isnan(a) and np.isnan(ef) else np.inf
            continue
        if np.isinf(ef) or np.isinf(a):
            out.flat[i] = 0.0 if a == ef else np.inf
            continue
        rounded = dtype.type(ef)
        spacing = float(np.spacing(np.abs(rounded))) if rounded != 0 else float(np.finfo(dtype).smallest_subnormal)
        out.flat[i] = abs(_exact_difference(a, e)) / spacing
    return out


def _exact_difference(a, e) -> float:
    try:
        import mpmath

        return float(mpmath.mpf(float(a)) - mpmath.mpf(e))
    except ImportError:
        return float(a) - float(e)
