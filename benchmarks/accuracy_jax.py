"""softxent.jax's ulp errors on tests/adversarial.py's set: float32 without x64, float64 with x64.

The same measurement as tests/jax/test_jax_exactness.py (mpmath at 50 digits; lse, every log-softmax
entry, the loss, the token log-prob, and the gradient entries), written to results/jax_accuracy.json
with the largest error per quantity and per case.

    python benchmarks/accuracy_jax.py
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "jax")]

import jax  # noqa: E402

from test_jax_exactness import BOUNDS, FTZ, _measure  # noqa: E402


def main() -> None:
    report = {"float32": {**_measure("float32", False), **_measure("float32", True)}}
    with jax.enable_x64(True):
        report["float64"] = _measure("float64", False)
    summary = {}
    for dtype, rows in report.items():
        summary[dtype] = {q: max(r[q] for n, r in rows.items() if n not in FTZ and not (n == "lse-near-zero"
                                                                                  and q == "lse"))
                          for q in BOUNDS}
    out = {"jax": jax.__version__, "bounds": BOUNDS, "worst_ulp_outside_documented_limits": summary,
           "documented_limits": {"ftz": list(FTZ), "float32 lse cancellation": "lse-near-zero"}, "cases": report}
    path = HERE / "results" / "jax_accuracy.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
