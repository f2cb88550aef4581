"""The cases every layer runs: the exactness set, option combinations, special rows, bad inputs.

Shapes: the exactness rows are single rows (1, C) of the adversarial set (C from 2 to 1000); the
option grid is (5, 7), odd on purpose (no power-of-2 block fits it exactly); the linear head is
(5, 6) activations and (7, 6) weights. The 1e6-class rows of the adversarial set stay in
tests/test_numpy_exactness.py: their per-entry mpmath gradients and five layers would take most of
this suite's budget. Upstream gradients are random numbers in [0.5, 1.5) rounded to the case's dtype, so
every layer and the oracle see the very same values.
"""

from __future__ import annotations

import itertools

import numpy as np

from adversarial import cases as adversarial_cases
from ops_registry import Case

SOFTMAX_OPS = ("logsumexp", "log_softmax", "softmax")
ROWS, CLASSES, FEATURES = 5, 7, 6


def _upstream(rng, shape, dtype) -> np.ndarray:
    return (rng.random(shape) + 0.5).astype(dtype).astype(np.float64)


def _batch_shape(op: str, x: np.ndarray, reduction: str | None) -> tuple:
    if op == "logsumexp":
        return x.shape[:-1]
    if op in ("softmax", "log_softmax"):
        return x.shape
    return x.shape[:-1] if reduction == "none" else ()


def exactness_cases() -> list[Case]:
    """The adversarial rows through logsumexp, log_softmax, softmax and cross_entropy: API rule 11's bounds."""
    out = []
    rng = np.random.default_rng(11)
    for dtype in ("float32", "float64"):
        for c in adversarial_cases(dtype, long_rows=False):
            x = c.logits[None, :]
            for op in SOFTMAX_OPS:
                out.append(Case(op, f"{op}-{dtype}-{c.name}", {"x": x, "upstream": _upstream(rng, _batch_shape(
                    op, x, None), dtype)}, check="ulp"))
            out.append(Case("cross_entropy", f"cross_entropy-{dtype}-{c.name}",
                            {"x": x, "target": np.array([c.target]), "upstream": _upstream(rng, (), dtype)},
                            check="ulp"))
        # the dominant target of the brief: exact gradient entry -3e^-40 / (1 + 3e^-40) = -1.2745e-17
        x = np.array([[40.0, 0.0, 0.0, 0.0]], dtype=dtype)
        out.append(Case("cross_entropy", f"cross_entropy-{dtype}-dominant-40", {
            "x": x, "target": np.array([0]), "upstream": np.array(1.0)}, check="ulp"))
        out.append(Case("log_softmax", f"log_softmax-{dtype}-dominant-40", {
            "x": x, "upstream": _upstream(rng, x.shape, dtype)}, check="ulp"))
    return out


def temperature_cases() -> list[Case]:
    """Temperatures that overflow x / T: the result is that of (x - max x) / T (API.md, issue 10 item 5).

    T is a power of 2, so the division itself is exact and the bounds of rule 11 apply unchanged.
    """
    rng = np.random.default_rng(12)
    rows = {
        "float32": {"overflow": [3e38, 2.9e38, 0.0], "overflow-negative": [-3e38, -2.9e38, 1.0],
                    "textbook": [1.0, 2.0, 3.0], "dominant": [23.0, 0.0, -1.5]},
        "float64": {"overflow": [1.7e308, 1.6e308, 0.0], "textbook": [1.0, 2.0, 3.0], "dominant": [39.0, 0.0, -1.5]},
    }
    out = []
    for dtype, named in rows.items():
        for name, values in named.items():
            x = np.array([values], dtype=dtype)
            for T in (0.5, 0.25, 2.0):
                for op in ("log_softmax", "softmax"):
                    out.append(Case(op, f"{op}-{dtype}-T{T}-{name}", {
                        "x": x, "upstream": _upstream(rng, x.shape, dtype)}, {"temperature": T}, check="ulp"))
                out.append(Case("cross_entropy", f"cross_entropy-{dtype}-T{T}-{name}", {
                    "x": x, "target": np.array([1]), "upstream": _upstream(rng, (), dtype)}, {"temperature": T},
                    check="ulp"))
    return out


def _grid_inputs(rng, dtype, probs, weighted, ignored, ignore_index=-100):
    x = (rng.standard_normal((ROWS, CLASSES)) * 2).astype(dtype)
    if probs:
        p = rng.random((ROWS, CLASSES))
        target = (p / p.sum(-1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, CLASSES, ROWS)
        if ignored:
            target[::2] = ignore_index
    weight = (rng.random(CLASSES) + 0.25).astype(dtype) if weighted else None
    return x, target, weight


def option_cases() -> list[Case]:
    """cross_entropy and linear_cross_entropy over the options, class indices and probabilities.

    Not the full product (3 x 2^6 x 2 kinds x 2 dtypes): every option alone and in pairs with the
    reductions, plus everything at once, in both dtypes.
    """
    rng = np.random.default_rng(13)
    combos = [{}, {"label_smoothing": 0.1}, {"z_loss": 1e-2}, {"softcap": 4.0}, {"temperature": 0.7},
              {"weight": True}, {"ignored": True}, {"weight": True, "ignored": True, "label_smoothing": 0.2},
              {"softcap": 3.0, "temperature": 0.5, "z_loss": 1e-3},
              {"weight": True, "ignored": True, "label_smoothing": 0.1, "z_loss": 1e-2, "softcap": 5.0,
               "temperature": 1.5}]
    out = []
    for dtype, kind, reduction, (k, combo) in itertools.product(("float32", "float64"), ("index", "probs"),
                                                                ("none", "mean", "sum"), enumerate(combo for combo in combos)):
        probs = kind == "probs"
        if probs and combo.get("ignored"):
            continue  # probabilities have no ignore_index
        x, target, weight = _grid_inputs(rng, dtype, probs, combo.get("weight", False), combo.get("ignored", False))
        options = {key: value for key, value in combo.items() if key not in ("weight", "ignored")}
        options["reduction"] = reduction
        arrays = {"x": x, "target": target, "upstream": _upstream(rng, (ROWS,) if reduction == "none" else (), dtype)}
        if weight is not None:
            arrays["weight"] = weight
        name = "-".join(f"{key}{'' if value is True else value}" for key, value in combo.items()) or "plain"
        out.append(Case("cross_entropy", f"cross_entropy-{dtype}-{kind}-{reduction}-{name}", arrays, options))
        if k % 2 == 0 or reduction == "mean":  # the linear head on half the grid: it shares the row code
            w = (rng.standard_normal((CLASSES, FEATURES)) * 0.7).astype(dtype)
            b = rng.standard_normal(CLASSES).astype(dtype) if k % 4 == 0 else None
            xa = rng.standard_normal((ROWS, FEATURES)).astype(dtype)
            arrays = dict(arrays, x=xa, w=w)
            if b is not None:
                arrays["b"] = b
            lin_options = dict(options, chunk_size=2) if k % 3 == 0 else options
            out.append(Case("linear_cross_entropy", f"linear_cross_entropy-{dtype}-{kind}-{reduction}-{name}"
                            f"{'-bias' if b is not None else ''}{'-chunk2' if k % 3 == 0 else ''}", arrays,
                            lin_options))
    return out


def special_row_cases() -> list[Case]:
    """Masked (-inf) rows and entries, +inf rows, ignored rows, empty batches, all rows ignored."""
    rng = np.random.default_rng(14)
    inf = np.inf
    out = []
    for dtype in ("float32", "float64"):
        x = np.array([[0.5, -inf, 1.0, -inf],      # partly masked
                      [-inf, -inf, -inf, -inf],    # fully masked: zeros / -inf, gradient 0 (rule 2)
                      [inf, 0.0, inf, 1.0],        # two +inf: each gets half the mass (rule 3)
                      [1.0, 2.0, 3.0, 4.0]], dtype=dtype)
        for op in SOFTMAX_OPS:
            for T in ((1.0,) if op == "logsumexp" else (1.0, 0.5)):
                out.append(Case(op, f"{op}-{dtype}-special-rows-T{T}", {
                    "x": x, "upstream": _upstream(rng, _batch_shape(op, x, None), dtype)},
                    {} if op == "logsumexp" else {"temperature": T}, check="ulp"))
            out.append(Case(op, f"{op}-{dtype}-empty-batch", {"x": np.zeros((0, 4), dtype),
                                                               "upstream": np.zeros(_batch_shape(op, np.zeros((0, 4)), None))}))
        labels = np.array([2, 0, 0, -100])  # +inf row: the target is a +inf entry (loss log 2)
        for reduction in ("none", "mean", "sum"):
            up = _upstream(rng, (4,) if reduction == "none" else (), dtype)
            out.append(Case("cross_entropy", f"cross_entropy-{dtype}-special-rows-{reduction}",
                            {"x": x, "target": labels, "upstream": up}, {"reduction": reduction}))
            out.append(Case("cross_entropy", f"cross_entropy-{dtype}-masked-rows-z-loss-{reduction}",
                            {"x": x[:2], "target": np.array([2, 1]), "upstream": up[:2] if up.ndim else up},
                            {"reduction": reduction, "z_loss": 1e-2}))
            out.append(Case("cross_entropy", f"cross_entropy-{dtype}-masked-entry-softcap-{reduction}",
                            {"x": x[:1], "target": np.array([2]), "upstream": up[:1] if up.ndim else up},
                            {"reduction": reduction, "softcap": 2.0}))
            out.append(Case("cross_entropy", f"cross_entropy-{dtype}-infinite-target-not-inf-{reduction}",
                            {"x": x[2:3], "target": np.array([1]), "upstream": up[:1] if up.ndim else up},
                            {"reduction": reduction}))
            out.append(Case("cross_entropy", f"cross_entropy-{dtype}-all-ignored-{reduction}", {
                "x": x[3:], "target": np.array([-100]), "upstream": up[:1] if up.ndim else up},
                {"reduction": reduction}))
            out.append(Case("cross_entropy", f"cross_entropy-{dtype}-empty-batch-{reduction}", {
                "x": np.zeros((0, 4), dtype), "target": np.zeros(0, dtype=np.int64),
                "upstream": np.zeros(0) if reduction == "none" else up}, {"reduction": reduction}))
            xa = rng.standard_normal((3, FEATURES)).astype(dtype)
            w = rng.standard_normal((4, FEATURES)).astype(dtype)
            out.append(Case("linear_cross_entropy", f"linear_cross_entropy-{dtype}-all-ignored-{reduction}", {
                "x": xa, "w": w, "target": np.array([-100, -100, -100]),
                "upstream": _upstream(rng, (3,) if reduction == "none" else (), dtype)}, {"reduction": reduction}))
            out.append(Case("linear_cross_entropy", f"linear_cross_entropy-{dtype}-empty-batch-{reduction}", {
                "x": xa[:0], "w": w, "target": np.zeros(0, dtype=np.int64),
                "upstream": np.zeros(0) if reduction == "none" else up}, {"reduction": reduction}))
    return out


def error_cases() -> list[Case]:
    """Bad inputs: every layer raises the same exception type with the same message."""
    x = np.zeros((3, 4), dtype=np.float32)
    labels = np.array([0, 1, 2])
    probs = np.full((3, 4), 0.25, dtype=np.float32)
    bad = [
        ("label-too-large", {"target": np.array([0, 7, 2])}, {}, ("ValueError", "class index 7 at position (1,)")),
        ("label-negative", {"target": np.array([0, 1, -1])}, {}, ("ValueError", "class index -1 at position (2,)")),
        ("probability-negative", {"target": np.where(np.arange(12).reshape(3, 4) == 5, -0.25, probs)
                                  .astype(np.float32)}, {}, ("ValueError", "probabilities >= 0")),
        ("probability-nan", {"target": np.where(np.arange(12).reshape(3, 4) == 5, np.nan, probs)
                             .astype(np.float32)}, {}, ("ValueError", "probabilities >= 0")),
        ("weight-negative", {"target": labels, "weight": np.array([1, -1, 1, 1], np.float32)}, {},
         ("ValueError", "weight")),
        ("weight-nan", {"target": labels, "weight": np.array([1, 1, np.nan, 1], np.float32)}, {},
         ("ValueError", "weight")),
        ("weight-shape", {"target": labels, "weight": np.ones(5, np.float32)}, {}, ("ValueError", "weight")),
        ("reduction", {"target": labels}, {"reduction": "avg"}, ("ValueError", "reduction")),
        ("label_smoothing", {"target": labels}, {"label_smoothing": 1.5}, ("ValueError", "label_smoothing")),
        ("z_loss", {"target": labels}, {"z_loss": -1.0}, ("ValueError", "z_loss")),
        ("softcap", {"target": labels}, {"softcap": 0.0}, ("ValueError", "softcap")),
        ("temperature-zero", {"target": labels}, {"temperature": 0.0}, ("ValueError", "temperature")),
        ("temperature-nan", {"target": labels}, {"temperature": float("nan")}, ("ValueError", "temperature")),
    ]
    out = []
    for name, arrays, options, error in bad:
        out.append(Case("cross_entropy", f"cross_entropy-error-{name}", dict({"x": x, "upstream": np.array(1.0)},
                                                                            **arrays), options, error=error))
        if not name.startswith("probability"):
            out.append(Case("linear_cross_entropy", f"linear_cross_entropy-error-{name}", dict(
                {"x": np.zeros((3, 2), np.float32), "w": np.zeros((4, 2), np.float32), "upstream": np.array(1.0)},
                **arrays), options, error=error))
    for op in ("softmax", "log_softmax"):
        for name, T in (("temperature-zero", 0.0), ("temperature-negative", -1.0), ("temperature-inf", np.inf)):
            out.append(Case(op, f"{op}-error-{name}", {"x": x, "upstream": np.zeros(x.shape)}, {"temperature": T},
                            error=("ValueError", "temperature")))
    return out


def all_cases() -> list[Case]:
    cases = exactness_cases() + temperature_cases() + option_cases() + special_row_cases() + error_cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases
