"""Worst ulp error of log-sum-exp, log-softmax and the cross-entropy loss: softxent beside SciPy and torch.

Runs the adversarial set of tests/adversarial.py (exact values from mpmath at 50 digits) through each
library in the input's own dtype and writes benchmarks/results/accuracy.csv and .json.

    python benchmarks/accuracy_peers.py
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))

from adversarial import cases  # noqa: E402
from compare import ulp_error  # noqa: E402


def _providers():
    import softxent as sx

    def sx_loss(row, target):
        return sx.cross_entropy(row[None, :], np.array([target]), reduction="none")[0]

    providers = {"softxent": (sx.logsumexp, sx.log_softmax, sx_loss)}
    try:
        from scipy import special

        def scipy_loss(row, target):
            return -special.log_softmax(row)[target]

        providers["scipy"] = (special.logsumexp, special.log_softmax, scipy_loss)
    except ImportError:
        pass
    try:
        import torch

        def torch_call(fn):
            return lambda row, *args: fn(torch.from_numpy(row), *args).numpy()

        def torch_loss(row, target):
            return torch.nn.functional.cross_entropy(torch.from_numpy(row)[None], torch.tensor([target]),
                                                     reduction="none").numpy()[0]

        providers["torch"] = (torch_call(lambda r: torch.logsumexp(r, -1)),
                              torch_call(lambda r: torch.log_softmax(r, -1)), torch_loss)
    except ImportError:
        pass
    return providers


def worst_errors(dtype: str) -> list[dict]:
    rows = []
    case_list = cases(dtype)
    for name, (lse_fn, log_softmax_fn, loss_fn) in _providers().items():
        worst = {}  # function -> (worst ulp, case name)
        for case in case_list:
            with np.errstate(all="ignore"):
                lse = np.asarray(lse_fn(case.logits), dtype=dtype).reshape(1)
                log_probs = np.asarray(log_softmax_fn(case.logits), dtype=dtype)
                loss = np.asarray(loss_fn(case.logits, case.target), dtype=dtype).reshape(1)
            values, first = np.unique(case.logits, return_index=True)
            errors = {
                "logsumexp": ulp_error(lse, [case.exact_lse()]).max(),
                "log_softmax": ulp_error(log_probs[first], [case.exact_log_softmax_of(float(v)) for v in values]).max(),
                "cross_entropy": ulp_error(loss, [case.exact_loss()]).max(),
            }
            for fn, error in errors.items():
                worst[fn] = max(worst.get(fn, (-1.0, "")), (float(error), case.name))
        for fn, (error, case_name) in worst.items():
            rows.append({"dtype": dtype, "function": fn, "provider": name, "worst_ulp": float(error),
                         "worst_case": case_name})
    return rows


def main() -> None:
    rows = worst_errors("float32") + worst_errors("float64")
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    with open(out / "accuracy.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "accuracy.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{'dtype':8} {'function':14} {'provider':9} {'worst ulp':>12}  worst case")
    for r in rows:
        print(f"{r['dtype']:8} {r['function']:14} {r['provider']:9} {r['worst_ulp']:12.3g}  {r['worst_case']}")


if __name__ == "__main__":
    main()
