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
from ops_registry import LAYERS, Case

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


# --- token_log_probs --------------------------------------------------------------------------------------------

# The JAX layer compiles once per shape and set of options (about half a second each, most of this op's share
# of the budget; float64 recompiles under jax.enable_x64): it runs the float32 cases but the few marked
# jax=False (options and shapes the other float32 cases already compile), and the errors
_NO_JAX = tuple(layer for layer in LAYERS if layer != "jax")


def _token_case(rng, name, x, target, options=None, check="close", error=None, jax=True) -> Case:
    """A token_log_probs case: random upstream gradients for the log-probabilities (in [0.5, 1.5)) and the
    entropy (in [-1.5, -0.5): an entropy bonus, of the other sign, so the two parts of a gradient entry meet)."""
    dtype = x.dtype
    batch = np.shape(target)
    options = dict({"return_entropy": True}, **(options or {}))
    arrays = {"x": x, "target": np.asarray(target), "upstream": _upstream(rng, batch, dtype)}
    if options["return_entropy"]:
        arrays["upstream_entropy"] = -_upstream(rng, batch, dtype)
    return Case("token_log_probs", f"token_log_probs-{name}", arrays, options, check=check, error=error,
                layers=LAYERS if jax and (dtype == np.float32 or error is not None) else _NO_JAX)


def token_cases() -> list[Case]:
    """token_log_probs with its entropy: the exactness rows (API rule 11, "ulp"), the options, special rows,
    bad inputs.

    Exactness: the adversarial rows at T = 1, and confident policies (one class holding almost all the
    mass: log p_t ~ -1e-20 and H ~ 1e-18, which the textbook ``lse - z_t`` and ``lse - sum p z`` cancel)
    at T = 1 and 0.5 (a power of 2: the division is exact). The option grid (softcap's tanh rounds the
    scores, so "close"): temperature, softcap, ignored rows under the default and another ignore_index,
    without the entropy, and a 3-D batch.
    """
    rng = np.random.default_rng(15)
    inf = np.inf
    out = []
    for dtype in ("float32", "float64"):
        for c in adversarial_cases(dtype, long_rows=False):
            out.append(_token_case(rng, f"{dtype}-{c.name}", c.logits[None, :], [c.target], check="ulp"))
        for gap in (10.0, 25.0, 45.0, 80.0):
            x = np.array([[0.0, -gap, -gap - 1.0, -gap - 3.0, -2 * gap]], dtype=dtype)
            for T in (1.0, 0.5):
                out.append(_token_case(rng, f"{dtype}-confident-{gap:g}-T{T}", x, [0], {"temperature": T},
                                       check="ulp"))
        combos = [{}, {"return_entropy": False}, {"temperature": 0.7}, {"softcap": 4.0},
                  {"softcap": 3.0, "temperature": 0.5}, {"ignored": -100},
                  {"ignored": -1, "ignore_index": -1, "return_entropy": False},
                  {"ignored": -100, "softcap": 5.0, "temperature": 1.5}]
        for k, combo in enumerate(combos):
            x = (rng.standard_normal((ROWS, CLASSES)) * 2).astype(dtype)
            target = rng.integers(0, CLASSES, ROWS)
            if "ignored" in combo:
                target[::2] = combo["ignored"]
            options = {key: value for key, value in combo.items() if key != "ignored"}
            name = "-".join(f"{key}{value}" for key, value in combo.items()) or "plain"
            out.append(_token_case(rng, f"{dtype}-{name}", x, target, options, jax=k in (0, 2, 4, 5, 6)))
        x = (rng.standard_normal((2, 3, CLASSES)) * 3).astype(dtype)
        target = rng.integers(0, CLASSES, (2, 3))
        target[0, 1] = -100
        out.append(_token_case(rng, f"{dtype}-batch-3d-T0.5", x, target, {"temperature": 0.5}, jax=False))
        # special rows: partly masked, fully masked (0, gradient 0), two +inf entries (the target one of them:
        # -log 2 and H = log 2; or not: -inf and the limit's gradient), an ignored row
        x = np.array([[0.5, -inf, 1.0, -inf], [-inf, -inf, -inf, -inf], [inf, 0.0, inf, 1.0],
                      [1.0, 2.0, 3.0, 4.0]], dtype=dtype)
        for T in (1.0, 0.5):
            out.append(_token_case(rng, f"{dtype}-special-rows-T{T}", x, [2, 1, 0, -100], {"temperature": T},
                                   check="ulp", jax=T == 1.0))
        out.append(_token_case(rng, f"{dtype}-special-rows-softcap", x, [2, 1, 0, -100], {"softcap": 2.0}))
        out.append(_token_case(rng, f"{dtype}-infinite-target-not-inf", x[2:3], [1], check="ulp"))
        out.append(_token_case(rng, f"{dtype}-all-ignored", x[3:], [-100], check="ulp"))
        out.append(_token_case(rng, f"{dtype}-empty-batch", np.zeros((0, 4), dtype), np.zeros(0, np.int64)))
    x = np.zeros((3, 4), dtype=np.float32)
    bad = [("label-too-large", [0, 7, 2], {}, ("ValueError", "class index 7 at position (1,)")),
           ("label-negative", [0, 1, -2], {}, ("ValueError", "class index -2 at position (2,)")),
           ("probabilities", np.full((3, 4), 0.25, np.float32), {}, ("TypeError", "class indices")),
           ("target-shape", [0, 1], {}, ("ValueError", "target")),
           ("temperature-zero", [0, 1, 2], {"temperature": 0.0}, ("ValueError", "temperature")),
           ("temperature-nan", [0, 1, 2], {"temperature": float("nan")}, ("ValueError", "temperature")),
           ("softcap", [0, 1, 2], {"softcap": 0.0}, ("ValueError", "softcap"))]
    for name, target, options, error in bad:
        case = _token_case(rng, f"error-{name}", x, [0, 1, 2], options, error=error)
        if name in ("target-shape", "probabilities"):  # the distributed form names its own argument,
            # local_logits (and a rank's slice is narrower than a whole-vocabulary probabilities target)
            case.layers = tuple(layer for layer in case.layers if not layer.startswith("dist"))
        case.arrays["target"] = np.asarray(target)
        out.append(case)
    return out


# --- distillation_loss -------------------------------------------------------------------------------------------

def distillation_cases() -> list[Case]:
    """distillation_loss: the three divergences over the reductions and options, special rows, bad inputs.

    The tolerance table ("close", as cross_entropy's grid), measured on the size of the terms an entry
    adds where that is larger (oracle._divergence): where the models nearly agree a divergence and its
    gradient cancel (log p_j - log q_j) in every algorithm. Options: temperature (2.0, 0.5, and 0.7 with jsd), beta (jsd: 0.2,
    and the ends 0 and 1), a target marking ignored rows (the default and another ignore_index),
    num_items. The Triton layer takes "none" and "mean" (the backward sweep and the forward's fused
    gradient; "sum" is "mean"'s path with another scale).
    """
    rng = np.random.default_rng(16)
    inf = np.inf
    combos = [{}, {"temperature": 2.0}, {"target": -100}, {"target": -1, "ignore_index": -1, "temperature": 0.5}]
    extra = {"jsd": [{"beta": 0.2}, {"beta": 0.0}, {"beta": 1.0, "temperature": 0.7}],
             "kl": [{"num_items": 11}], "reverse_kl": [{"target": -100, "num_items": 0}]}
    out = []
    for dtype, divergence in itertools.product(("float32", "float64"), ("kl", "reverse_kl", "jsd")):
        for combo, reduction in itertools.product(combos + extra[divergence], ("none", "mean", "sum")):
            if "num_items" in combo and reduction != "mean":
                continue
            student = (rng.standard_normal((ROWS, CLASSES)) * 2).astype(dtype)
            teacher = (rng.standard_normal((ROWS, CLASSES)) * 2).astype(dtype)
            arrays = {"x": student, "teacher": teacher,
                      "upstream": _upstream(rng, (ROWS,) if reduction == "none" else (), dtype)}
            if "target" in combo:
                target = rng.integers(0, CLASSES, ROWS)
                target[::2] = combo["target"]
                arrays["target"] = target
            options = dict({k: v for k, v in combo.items() if k != "target"}, divergence=divergence,
                           reduction=reduction)
            name = "-".join(f"{key}{value}" for key, value in combo.items()) or "plain"
            out.append(Case("distillation_loss", f"distillation_loss-{dtype}-{divergence}-{reduction}-{name}",
                            arrays, options,
                            layers=LAYERS if reduction != "sum" else tuple(k for k in LAYERS if k != "triton")))
        # special rows: -inf entries where both models have them; where only the teacher has them (kl, jsd:
        # p_j = 0, finite) or only the student (reverse_kl, jsd); a fully masked student row and a fully
        # masked teacher row (0, counted by "mean")
        student = (rng.standard_normal((5, 4)) * 2).astype(dtype)
        teacher = (rng.standard_normal((5, 4)) * 2).astype(dtype)
        student[0, 1] = teacher[0, 1] = -inf
        if divergence != "reverse_kl":
            teacher[1, [0, 3]] = -inf
        if divergence != "kl":
            student[2, 2] = -inf
        student[3] = -inf
        teacher[4] = -inf
        for reduction in ("none", "mean"):
            out.append(Case("distillation_loss", f"distillation_loss-{dtype}-{divergence}-special-rows-{reduction}", {
                "x": student, "teacher": teacher,
                "upstream": _upstream(rng, (5,) if reduction == "none" else (), dtype)},
                {"divergence": divergence, "reduction": reduction, "temperature": 0.5}))
        out.append(Case("distillation_loss", f"distillation_loss-{dtype}-{divergence}-all-ignored", {
            "x": student[:2], "teacher": teacher[:2], "target": np.array([-100, -100]),
            "upstream": _upstream(rng, (), dtype)}, {"divergence": divergence}))
        out.append(Case("distillation_loss", f"distillation_loss-{dtype}-{divergence}-empty-batch", {
            "x": student[:0], "teacher": teacher[:0], "upstream": _upstream(rng, (), dtype)},
            {"divergence": divergence}))
    x = np.zeros((3, 4), dtype=np.float32)
    bad = [("divergence", {}, {"divergence": "kl2"}, ("ValueError", "divergence")),
           ("beta-range", {}, {"divergence": "jsd", "beta": 1.5}, ("ValueError", "beta")),
           ("beta-type", {}, {"divergence": "jsd", "beta": "half"}, ("TypeError", "beta")),
           ("temperature", {}, {"temperature": 0.0}, ("ValueError", "temperature")),
           ("reduction", {}, {"reduction": "avg"}, ("ValueError", "reduction")),
           ("teacher-shape", {"teacher": np.zeros((3, 5), np.float32)}, {}, ("ValueError", "teacher_logits")),
           ("label-too-large", {"target": np.array([0, 7, 2])}, {}, ("ValueError", "class index 7 at position (1,)")),
           ("target-probabilities", {"target": np.full((3, 4), 0.25, np.float32)}, {}, ("TypeError", "class indices")),
           ("num-items-reduction", {}, {"reduction": "sum", "num_items": 3}, ("ValueError", "num_items")),
           ("num-items-negative", {}, {"num_items": -1}, ("ValueError", "num_items"))]
    for name, arrays, options, error in bad:
        out.append(Case("distillation_loss", f"distillation_loss-error-{name}", dict(
            {"x": x, "teacher": x, "upstream": np.array(1.0)}, **arrays), options, error=error))
    return out


def all_cases() -> list[Case]:
    cases = (exactness_cases() + temperature_cases() + option_cases() + special_row_cases() + error_cases()
             + token_cases() + distillation_cases())
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases
