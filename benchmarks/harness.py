"""Shared machinery of the benchmark scripts: every provider measured in a fresh process, side by side.

A script in this folder names its cases and providers and calls `main`:

    CASES = {"4096x32000-f32": {"rows": 4096, "classes": 32000, "dtype": "float32"}, ...}
    QUICK = {"64x1000-f32": {...}}                  # small shapes for --quick and CI smoke runs
    PROVIDERS = {"softxent": make_softxent, "torch": make_torch, ...}
    main("cross_entropy", CASES, QUICK, PROVIDERS)

A provider is `make(case: dict, device: str) -> run`, where `run()` does the measured work once; it
builds its inputs before returning `run`, so they are not counted. It raises `Unavailable("why")` when
its library or device is missing; the row then says so.

Each (case, provider) runs in its own child process, so one provider's caches, allocator pools or
compiled graphs never colour another's numbers. (Under --quick, a smoke run whose numbers are never
quoted, one child per case runs the providers one after the other, so that torch is imported once per
case rather than once per provider.) The child:
1. builds the inputs and warms up (compiles, autotunes) with `run()` called twice;
2. measures peak extra memory of one more `run()`: on the CPU the growth of the peak resident set over
   the resident set just before (Linux `VmHWM`, reset through /proc/self/clear_refs, with glibc told to
   give freed blocks straight back so the resident set follows live memory); on CUDA the allocator's
   peak over what was allocated just before;
3. times `run()` repeatedly, reporting the median.
The parent prints one table with the ratio of each peer to softxent (> 1: softxent is faster / leaner)
and writes `<out>/<op>-<device>.csv` and `.json`.
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
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = "softxent"  # ratios are taken against this provider


class Unavailable(Exception):
    """A provider that cannot run here (library not installed, no GPU)."""


Provider = Callable[[dict, str], Callable[[], Any]]


# --- the child: one provider, one case ----------------------------------------------------------------


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def peak_rss_growth(run: Callable[[], Any]) -> int:
    """How far one run() lifts the peak resident set above the resident set just before it (the CPU's
    peak extra memory; its result is dropped afterwards)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM, the peak resident set, to the current one
    before = _rss_bytes("VmRSS")
    result = run()
    peak = _rss_bytes("VmHWM") - before
    del result
    return peak


def measure(run: Callable[[], Any], device: str, min_time: float = 1.0, max_repeats: int = 50) -> dict:
    """Warm up, then peak extra memory of one call, then the median time of several."""
    for _ in range(2):
        run()
    _sync(device)
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = run()
        _sync(device)
        peak = torch.cuda.max_memory_allocated() - before
        del result
    else:
        peak = peak_rss_growth(run)

    times = []
    deadline = time.perf_counter() + min_time
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < max_repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"time_s": statistics.median(times), "peak_extra_bytes": max(0, int(peak)), "repeats": len(times)}


QUICK_MIN_TIME = 0.1  # seconds of timing per provider under --quick: a smoke run, not a measurement
_smoke_run = False  # set by main() from --quick, for providers to read through smoke_run()


def smoke_run() -> bool:
    """True under --quick: a provider may skip what costs more than the smoke run is worth (say why)."""
    return _smoke_run


def _child(providers: dict[str, Provider], cases: dict[str, dict], provider: str, case: str,
           device: str, quick: bool = False) -> None:
    """Measure `provider` (under --quick, a comma-separated list of them) on one case: a RESULT line each."""
    for name in provider.split(","):
        try:
            run = providers[name](cases[case], device)
            # --quick: time for a tenth of a second (still at least 3 calls), so the whole
            # `softxent bench --quick` stays within a minute on a 2-core machine
            row = measure(run, device, min_time=min(QUICK_MIN_TIME, measure.__defaults__[0])) if quick else \
                measure(run, device)
            del run  # the next provider's peak is measured from a clean baseline
        except Unavailable as why:
            row = {"skipped": str(why)}
        except Exception as error:  # noqa: BLE001 - several providers share this process: say, go on
            if not quick:
                raise
            row = {"skipped": f"failed: {type(error).__name__}: {str(error)[:200]}"}
        gc.collect()
        print("RESULT " + json.dumps(row), flush=True)


# --- the parent: every provider, every case ---------------------------------------------------------


def _spawn(script: str, providers: list[str], case: str, device: str, quick: bool, timeout: float) -> list[dict]:
    """One child measuring `providers` on `case` in turn; a row for each, in order."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    command = [sys.executable, script, "--child", ",".join(providers), "--case", case, "--device", device]
    if quick:
        command.append("--quick")
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
        found = [json.loads(line[len("RESULT "):]) for line in stdout.splitlines() if line.startswith("RESULT ")]
        return found + [{"skipped": f"timed out after {timeout:.0f} s"}] * (len(providers) - len(found))
    found = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return found + [{"skipped": f"failed: {tail[0][:200]}"}] * (len(providers) - len(found))


def add_ratios(rows: list[dict]) -> None:
    """ratio = peer / softxent for time and memory, per case: > 1 means softxent is faster or leaner."""
    reference = {r["case"]: r for r in rows if r["provider"] == REFERENCE and "time_s" in r}
    for row in rows:
        ref = reference.get(row["case"])
        if ref is None or "time_s" not in row:
            continue
        row["time_ratio"] = row["time_s"] / ref["time_s"]
        if ref["peak_extra_bytes"]:
            row["memory_ratio"] = row["peak_extra_bytes"] / ref["peak_extra_bytes"]


def format_table(rows: list[dict]) -> str:
    header = ("case", "provider", "time ms", "peak extra MiB", "peer/softxent time", "peer/softxent mem")
    lines = [header]
    for r in rows:
        if "time_s" not in r:
            lines.append((r["case"], r["provider"], "-", "-", r.get("skipped", ""), ""))
            continue
        lines.append((r["case"], r["provider"], f"{r['time_s'] * 1e3:.2f}", f"{r['peak_extra_bytes'] / 2**20:.1f}",
                      f"{r['time_ratio']:.2f}x" if "time_ratio" in r else "",
                      f"{r['memory_ratio']:.2f}x" if "memory_ratio" in r else ""))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _cpu() -> dict:
    """The CPU's model and widest vector unit (Linux), so that figures from two machines are not compared as
    one: ratios moved 1.7x between an AVX-512 and an AVX2 machine of the same 2-core kind."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    vector = next((name for name in ("avx512f", "avx2", "avx", "sse2") if name in flags), "")
    return {"cpu_model": model, "cpu_vector": vector}


def write_results(op: str, device: str, rows: list[dict], out: Path, extra: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{op}-{device}"
    fields = ["op", "case", "provider", "time_s", "peak_extra_bytes", "time_ratio", "memory_ratio", "repeats",
              "skipped"] + sorted({k for r in rows for k in r} - {"op", "case", "provider", "time_s",
                                                                "peak_extra_bytes", "time_ratio", "memory_ratio",
                                                                "repeats", "skipped"})
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    meta = {"op": op, "device": device, "machine": platform.machine(), "processor": platform.processor(),
            **_cpu(),
            "python": platform.python_version(), "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M"),
            **(extra or {})}
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return stem.with_suffix(".csv")


def main(op: str, cases: dict[str, dict], quick_cases: dict[str, dict], providers: dict[str, Provider],
         argv: list[str] | None = None, describe: Callable[[dict, dict], dict] | None = None) -> list[dict]:
    """Run every provider on every case, each in a fresh process; print, save and return the rows.

    `describe(case, row)` may add derived columns to a measured row (bytes moved, GB/s).
    """
    parser = argparse.ArgumentParser(description=f"benchmark {op}: softxent beside its peers")
    parser.add_argument("--quick", action="store_true", help="small shapes (seconds, for smoke tests)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the CSV and JSON (default results/, or results/quick/ with --quick: a "
                             "smoke run never overwrites the figures we quote)")
    parser.add_argument("--providers", default=None, help="comma-separated subset of providers")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per provider and case")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chosen_cases = quick_cases if args.quick else cases
    global _smoke_run
    _smoke_run = args.quick
    if args.child:
        _child(providers, chosen_cases, args.child, args.case, args.device, args.quick)
        return []

    names = list(providers) if args.providers is None else args.providers.split(",")
    script = sys.modules["__main__"].__file__
    rows = []
    for case_name, case in chosen_cases.items():
        # a fresh process per provider; under --quick one per case (see the module's docstring)
        groups = [names] if args.quick else [[name] for name in names]
        measured = [row for group in groups
                    for row in _spawn(script, group, case_name, args.device, args.quick, args.timeout * len(group))]
        for provider, found in zip(names, measured):
            row = {"op": op, "case": case_name, "provider": provider, **found}
            if describe is not None and "time_s" in row:
                row.update(describe(case, row))
            rows.append(row)
            print(f"  {case_name:>24}  {provider:<16} "
                  + (f"{row['time_s'] * 1e3:9.2f} ms  {row['peak_extra_bytes'] / 2**20:9.1f} MiB"
                     if "time_s" in row else row["skipped"]), flush=True)
    add_ratios(rows)
    print(format_table(rows))
    out = args.out if args.out is not None else (RESULTS / "quick" if args.quick else RESULTS)
    path = write_results(op, args.device, rows, out)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return rows
