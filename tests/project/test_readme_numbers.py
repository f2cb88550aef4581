"""Every figure the README quotes from the benchmarks is the committed result, rounded as printed.

The README's two tables of measurements (exactness in ulp, and speed and memory) are rebuilt here, row
by row, from benchmarks/results/*.csv, and each rebuilt row must appear in the README as it stands. A
rerun of a benchmark that moves a figure fails this test until the README says the new figure; a row
added to either table without a rule here fails too.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def results(stem: str) -> dict[tuple[str, str], dict]:
    """(case, provider) -> row of one committed harness CSV, numbers as floats."""
    with open(RESULTS / f"{stem}.csv", newline="") as f:
        return {(row["case"], row["provider"]): {k: float(v) if v and k not in ("op", "case", "provider", "skipped")
                                                 else v for k, v in row.items()}
                for row in csv.DictReader(f)}


def readme_table(header_start: str) -> list[str]:
    """The lines of the README table whose header row starts with `header_start`."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start + 2:end]  # past the header and its |---| rule


def ulp(value: float) -> str:
    """As the exactness table writes ulp: two decimals below 1, integers up to 1000, else 8.6e6."""
    if value < 1:
        return f"{value:.2f}"
    if value < 1000 and value == round(value):
        return f"{value:.0f}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def exactness_rows() -> list[str]:
    with open(RESULTS / "accuracy.csv", newline="") as f:
        worst = {(r["dtype"], r["function"], r["provider"]): float(r["worst_ulp"]) for r in csv.DictReader(f)}
    rows = []
    for function, name in (("logsumexp", "logsumexp"), ("log_softmax", "log_softmax"),
                           ("cross_entropy", "cross-entropy loss")):
        cells = [f"**{ulp(worst[dtype, function, provider])}**" if provider == "softxent"
                 else ulp(worst[dtype, function, provider])
                 for dtype in ("float32", "float64") for provider in ("softxent", "scipy", "torch")]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def speed_rows() -> list[str]:
    softmax = results("numpy_softmax-cpu")
    numpy_ce = results("numpy_cross_entropy-cpu")
    torch_ce = results("torch_cross_entropy-cpu")
    linear = results("torch_linear_cross_entropy-cpu")
    f32, bf16, lin = "4096x32000-float32", "8192x128256-bfloat16", "4096x1024x32000-float32"

    def sm(provider, key="time_ratio"):
        return softmax[f32, provider][key]

    def ce(case, provider, key="time_ratio"):
        return torch_ce[case, provider][key]

    def ln(provider, key="time_ratio"):
        return linear[lin, provider][key]

    return [
        f"| NumPy `softmax`, 4096 x 32000 float32 | {sm('softxent', 'time_s'):.2f} s | "
        f"SciPy {pace(sm('scipy'))}, torch {pace(sm('torch'))} |",
        f"| NumPy `cross_entropy(..., return_grad=True)`, same shape | {numpy_ce[f32, 'softxent']['time_s']:.2f} s | "
        f"torch eager forward + backward {pace(numpy_ce[f32, 'torch-eager']['time_ratio'])}, "
        f"{numpy_ce[f32, 'torch-eager']['memory_ratio']:.0f}x the memory |",
        f"| `softxent.torch.cross_entropy` forward + backward, 4096 x 32000 float32 | "
        f"{ce(f32, 'softxent', 'time_s'):.2f} s, peak extra {ce(f32, 'softxent', 'peak_over_logits'):.2f}x the logits | "
        f"torch eager {pace(ce(f32, 'torch-eager'))} ({ce(f32, 'torch-eager', 'peak_over_logits'):.1f}x the "
        f"logits), torch.compile {pace(ce(f32, 'torch-compile'))} |",
        f"| same, 8192 x 128256 bfloat16 | {ce(bf16, 'softxent', 'time_s'):.2f} s, "
        f"{ce(bf16, 'softxent', 'peak_over_logits'):.2f}x the logits | torch eager {pace(ce(bf16, 'torch-eager'))}, "
        f"torch.compile {pace(ce(bf16, 'torch-compile'))} |",
        f"| with `inplace_grad=True` | peak extra {ce(f32, 'softxent-inplace', 'peak_over_logits'):.3f}x the logits "
        f"(the kernel's scratch) | |",
        f"| `softxent.torch.linear_cross_entropy`, N=4096, D=1024, V=32000 float32 | {ln('softxent', 'time_s'):.1f} s, "
        f"peak extra {ln('softxent', 'peak_over_grads'):.2f}x the gradients | unfused {pace(ln('unfused'))} with "
        f"{ln('unfused', 'memory_ratio'):.1f}x the memory; Cut Cross-Entropy (torch.compile) "
        f"{pace(ln('cce-torch-compile'))} with {ln('cce-torch-compile', 'memory_ratio'):.1f}x; torch's chunked "
        f"`F.linear_cross_entropy` {pace(ln('torch-chunked'))} |",
    ]


def pace(ratio: float) -> str:
    """A peer's time over softxent's, in words: '1.49x slower', or '1.16x faster' where the peer wins."""
    return f"{ratio:.2f}x slower" if ratio >= 1 else f"{1 / ratio:.2f}x faster"


@pytest.mark.parametrize("header_start, expected", [
    ("| | float32: softxent |", exactness_rows),
    ("| on the CPU |", speed_rows),
], ids=["exactness", "speed"])
def test_readme_tables_quote_the_committed_results(header_start, expected):
    quoted = readme_table(header_start)
    wanted = expected()
    missing = [row for row in wanted if row not in quoted]
    assert not missing, "README rows that disagree with benchmarks/results/ (the committed figures):\n" + \
        "\n".join(missing) + "\nREADME has:\n" + "\n".join(quoted)
    assert len(quoted) == len(wanted), "a README row that no rule here checks: " + \
        "\n".join(row for row in quoted if row not in wanted)


def test_the_rounding_rules():
    assert [ulp(v) for v in (0.498, 0.4047, 1.0, 86.0, 8577800.4, 16469346.6, 8509934829878234.0)] == \
        ["0.50", "0.40", "1", "86", "8.6e6", "1.6e7", "8.5e15"]
    assert re.fullmatch(r"\d\.\de\d+", ulp(1.5e20))
