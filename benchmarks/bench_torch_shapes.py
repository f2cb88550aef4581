"""softxent.torch.cross_entropy against torch's F.cross_entropy over the shapes people train with.

    python benchmarks/bench_torch_shapes.py            # the default grid, about 5 minutes on 2 cores
    python benchmarks/bench_torch_shapes.py --full     # up to 4096 x 128256 and 8 x 21 x 512 x 512, with
                                                       # torch.compile (inductor) beside eager torch

Cases run from a 32 x 10 classifier to a 128256-token vocabulary, plus K-dimensional (N, C, H, W)
segmentation inputs, each in float32 and bfloat16, forward alone and forward + backward (the gradient of
the mean loss into the logits). Every case runs in a fresh process, in which each provider gets two
warm-up calls and the peak extra resident memory of one call is taken; then the providers are timed
interleaved (A B A B ..., `_measure`), so that the load of the machine's other tenants falls on all of
them alike. Ratios are torch's best time over softxent's (> 1: softxent is faster; the medians are in the
CSV too) and softxent's peak extra memory over the logits' own bytes.

Writes benchmarks/results/torch_shapes-cpu.csv and .json, and a plot (.png, git-ignored) of the ratios
against the number of logits. Issue 11's goals: forward + backward >= 1.0x torch at every shape (none below
0.9), >= 2x from 1e7 logits up; forward >= 1.0x from 1e5 logits up and >= 0.5x below; peak memory <= 1.0x
the logits. The summary printed at the end gives the worst ratios and where.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

QUICK_SHAPES = [("32x10", (32, 10)), ("256x1000", (256, 1000))]  # softxent bench --quick's smoke run
# (name, input shape): classifiers (10 to 1000 classes), LLM vocabularies (32000, 128256), segmentation
DEFAULT_SHAPES = [
    ("32x10", (32, 10)), ("128x100", (128, 100)), ("256x1000", (256, 1000)), ("1024x1000", (1024, 1000)),
    ("4096x1000", (4096, 1000)), ("512x32000", (512, 32000)), ("2048x32000", (2048, 32000)),
    ("8x21x128x128", (8, 21, 128, 128)), ("8x21x512x512", (8, 21, 512, 512)),
]
FULL_SHAPES = DEFAULT_SHAPES + [
    ("4096x32000", (4096, 32000)), ("1024x128256", (1024, 128256)), ("4096x128256", (4096, 128256)),
]
# the two largest take minutes per dtype for torch alone: float32 only in the default grid
FLOAT32_ONLY = {"8x21x512x512", "4096x128256"}
DTYPES = ("float32", "bfloat16")
MODES = ("forward", "forward+backward")


# --- the child: one shape and dtype, every provider and mode ------------------------------------------------


def _child(shape: tuple[int, ...], dtype_name: str, compile_too: bool, min_time: float) -> None:
    import torch
    import torch.nn.functional as F

    import softxent.torch as sxt

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(shape, generator=g) * 2).to(dtype)
    classes = shape[1]
    target = torch.randint(0, classes, shape[:1] + shape[2:], generator=g)
    providers = {"softxent": sxt.cross_entropy, "torch": F.cross_entropy}
    if compile_too:
        providers["torch.compile"] = torch.compile(F.cross_entropy, dynamic=False)
    x = logits.clone().requires_grad_()
    for mode in MODES:
        runs = {}
        for name, fn in providers.items():
            if mode == "forward":
                def run(fn=fn):
                    with torch.no_grad():
                        return fn(logits, target)
            else:
                def run(fn=fn):
                    fn(x, target).backward()
                    grad, x.grad = x.grad, None  # held until measured, then freed: the next call starts clean
                    return grad
            runs[name] = run
        for row in _measure(runs, min_time):
            print("RESULT " + json.dumps(dict(row, mode=mode)), flush=True)


def _measure(runs: dict, min_time: float) -> list[dict]:
    """Per provider: two warm-up calls and the peak extra resident memory of one call (as
    benchmarks/harness.py); then the providers timed interleaved, A B C A B C ..., so that a burst of load
    from the machine's other tenants falls on all of them alike: the best and the median of each. Ratios
    use the best: on a shared machine a call's time is its work plus whatever the other tenants cost it,
    and the best is closest to the work."""
    sys.path.insert(0, str(HERE))
    from harness import peak_rss_growth

    rows, alive = {}, {}
    for name, run in runs.items():
        try:
            for _ in range(2):
                run()
            gc.collect()
            rows[name] = {"peak_extra_bytes": max(0, int(peak_rss_growth(run)))}
            alive[name] = run
        except Exception as error:  # noqa: BLE001 - report and go on with the other providers
            rows[name] = {"skipped": f"{type(error).__name__}: {str(error)[:200]}"}
    times = {name: [] for name in alive}
    deadline = time.perf_counter() + min_time * max(1, len(alive))
    rounds = 0
    while rounds < 5 or (time.perf_counter() < deadline and rounds < 200):
        for name, run in alive.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
        rounds += 1
    for name, ts in times.items():
        rows[name].update(time_s=min(ts), median_s=statistics.median(ts), repeats=len(ts))
    return [dict(row, provider=name) for name, row in rows.items()]


# --- the parent ----------------------------------------------------------------------------------------


def _run_case(shape, dtype_name, compile_too, min_time, timeout) -> list[dict]:
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_torch_shapes as b; "
            f"b._child({tuple(shape)!r}, {dtype_name!r}, {compile_too!r}, {min_time!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, MALLOC_TRIM_THRESHOLD_="0", MALLOC_MMAP_THRESHOLD_="65536"))
    if out.returncode:
        raise RuntimeError(f"{shape} {dtype_name}: child failed\n{out.stderr[-2000:]}")
    return [json.loads(line[len("RESULT "):]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]


def _summarise(rows: list[dict]) -> list[str]:
    """The worst ratios per goal, and where."""
    lines = []
    ours = [r for r in rows if r["provider"] == "softxent" and "ratio" in r]

    def worst(selected, key, what):
        if selected:
            r = min(selected, key=lambda r: r[key])
            lines.append(f"{what}: worst {r[key]:.2f}x at {r['case']} {r['dtype']}")

    worst([r for r in ours if r["mode"] == "forward+backward"], "ratio", "forward+backward vs torch (goal >= 1.0)")
    worst([r for r in ours if r["mode"] == "forward+backward" and r["elements"] >= 1e7], "ratio",
          "forward+backward vs torch from 1e7 logits (goal >= 2)")
    worst([r for r in ours if r["mode"] == "forward" and r["elements"] >= 1e5], "ratio",
          "forward vs torch from 1e5 logits (goal >= 1.0)")
    worst([r for r in ours if r["mode"] == "forward" and r["elements"] < 1e5], "ratio",
          "forward vs torch below 1e5 logits (goal >= 0.5)")
    peaks = [r for r in ours if r["mode"] == "forward+backward" and r["elements"] >= 1e6]
    if peaks:
        r = max(peaks, key=lambda r: r["peak_over_logits"])
        lines.append(f"peak extra memory (fwd+bwd, from 1e6 logits) over the logits: worst {r['peak_over_logits']:.2f}x "
                     f"at {r['case']} {r['dtype']} (goal <= 1.0; the gradient itself is 1.0x)")
    return lines


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, mode in zip(axes, MODES):
        for dtype, marker in zip(DTYPES, "os"):
            sel = sorted((r for r in rows if r["provider"] == "softxent" and r["mode"] == mode
                          and r["dtype"] == dtype and "ratio" in r), key=lambda r: r["elements"])
            ax.plot([r["elements"] for r in sel], [r["ratio"] for r in sel], marker=marker, label=dtype)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{mode}: torch time / softxent time")
        ax.set_xlabel("logits (elements)")
        ax.legend()
    fig.suptitle("softxent.torch.cross_entropy vs F.cross_entropy, CPU (above 1: softxent faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the whole grid, up to 4096 x 128256, with torch.compile")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (inductor) in the default grid")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per provider and mode")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out (even with --full)")
    parser.add_argument("--only", default="", help="comma-separated case names, e.g. 4096x128256,1024x128256")
    parser.add_argument("--tag", default="", help="suffix of the result files: torch_shapes-cpu<tag>.csv")
    parser.add_argument("--out", type=Path, default=None, help="folder for the CSV (default results/, or "
                        "results/quick/ with --quick)")
    parser.add_argument("--quick", action="store_true", help="two small float32 shapes: softxent bench's smoke run")
    parser.add_argument("--device", default="cpu", choices=("cpu",), help="the CPU (the GPU grid is bench_gpu_*.py)")
    args = parser.parse_args()
    if args.out is None:
        args.out = RESULTS / "quick" if args.quick else RESULTS
    shapes = FULL_SHAPES if args.full else DEFAULT_SHAPES
    if args.quick:
        shapes, args.min_time = QUICK_SHAPES, min(args.min_time, 0.05)
    if args.only:
        wanted = set(args.only.split(","))
        shapes = [(name, shape) for name, shape in FULL_SHAPES if name in wanted]
    compile_too = (args.full or args.compile) and not args.no_compile
    load_start = os.getloadavg()  # the other tenants' load: a shared machine's ratios are only as good as it
    rows = []
    for name, shape in shapes:
        elements = 1
        for size in shape:
            elements *= size
        for dtype_name in DTYPES:
            if dtype_name != "float32" and (args.quick or (name in FLOAT32_ONLY and not args.full)):
                continue
            itemsize = 2 if dtype_name == "bfloat16" else 4
            case_rows = _run_case(shape, dtype_name, compile_too, args.min_time, timeout=1800)
            by = {(r["provider"], r["mode"]): r for r in case_rows}
            for r in case_rows:
                r.update(case=name, dtype=dtype_name, elements=elements, logits_bytes=elements * itemsize)
                ref = by.get(("softxent", r["mode"]))
                if r["provider"] == "softxent" and "time_s" in r:
                    peer = by.get(("torch", r["mode"]), {})
                    if "time_s" in peer:
                        r["ratio"] = peer["time_s"] / r["time_s"]
                    comp = by.get(("torch.compile", r["mode"]), {})
                    if "time_s" in comp:
                        r["ratio_compile"] = comp["time_s"] / r["time_s"]
                    r["peak_over_logits"] = r["peak_extra_bytes"] / r["logits_bytes"]
                elif ref and "time_s" in r and "time_s" in ref:
                    r["ratio"] = r["time_s"] / ref["time_s"]
                rows.append(r)
            for r in case_rows:
                if r["provider"] == "softxent":
                    print(f"{name:>14s} {dtype_name:8s} {r['mode']:17s} time {r.get('time_s', float('nan')) * 1e3:9.3f} ms"
                          f"  vs torch {r.get('ratio', float('nan')):6.2f}x"
                          + (f"  vs compile {r['ratio_compile']:6.2f}x" if "ratio_compile" in r else "")
                          + f"  peak {r.get('peak_over_logits', float('nan')):5.2f}x logits", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    fields = ["case", "dtype", "mode", "provider", "elements", "time_s", "median_s", "ratio", "ratio_compile", "peak_extra_bytes",
              "peak_over_logits", "logits_bytes", "repeats", "skipped"]
    csv_path = args.out / f"torch_shapes-cpu{args.tag}.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = _summarise(rows)
    import torch

    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "grid": "full" if args.full else "default",
            "note": "ratios of best times from one run, providers interleaved in one fresh process per case",
            "load_average_start_end": [load_start, os.getloadavg()], "summary": summary}
    (args.out / f"torch_shapes-cpu{args.tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    _plot(rows, args.out / f"torch_shapes-cpu{args.tag}.png")
    print("\n".join(summary))
    print(f"wrote {csv_path} and .json, .png")


if __name__ == "__main__":
    main()
