"""`softxent bench`: run every benchmarks/bench_*.py for one device and tabulate softxent against its peers.

    softxent bench --quick                 # small shapes, seconds per script
    softxent bench --device cuda --out runs/gpu
    softxent bench --only cross_entropy    # the scripts whose name contains this

Each script is a standalone program (see benchmarks/harness.py) accepting --quick, --device and --out
and writing one CSV per op (`<op>-<device>.csv`, one row per case and provider, ratios peer/softxent).
This command runs the scripts one after the other in subprocesses, streams their progress, then
gathers their CSVs into one table, one combined CSV and one plot. New scripts are picked up by their
name, with no change here; columns a script adds (bytes moved, GB/s) are carried along.

The benchmarks live in the repository, not in the installed package: they are looked for in
./benchmarks, then beside the package source (an editable install's checkout), or where --benchmarks
points. Scripts named bench_gpu_*.py measure CUDA kernels: on --device cpu they are skipped, with one
line saying so; --device cuda where there is no CUDA device is an error (exit status 2).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import UsageError

# columns of the harness's CSV that the table shows; a script's extra columns that look like a
# bandwidth (GB/s) get a column of their own
KNOWN = ("op", "case", "provider", "time_s", "peak_extra_bytes", "time_ratio", "memory_ratio", "repeats", "skipped")
TEXT = ("op", "case", "provider", "skipped")
BANDWIDTH = re.compile(r"gb.*s|bandwidth", re.IGNORECASE)  # gb_per_s, GB/s, gbps, copy_bandwidth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run in seconds per script")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to run (default cpu; the bench_gpu_*.py scripts run only on cuda, which is "
                             "an error where there is no CUDA device)")
    parser.add_argument("--out", type=Path, default=Path("softxent-out/bench"), metavar="DIR",
                        help="folder for each script's results, the combined CSV and the plot "
                             "(default softxent-out/bench)")
    parser.add_argument("--benchmarks", type=Path, default=None, metavar="DIR",
                        help="the folder of bench_*.py scripts (default: ./benchmarks, else the checkout "
                             "the package was installed from)")
    parser.add_argument("--only", default=None, metavar="TEXT",
                        help="run only the scripts whose file name contains TEXT")


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    folder = find_benchmarks(args.benchmarks)
    scripts = sorted(folder.glob("bench_*.py"))
    if args.only is not None:
        scripts = [s for s in scripts if args.only in s.name]
        if not scripts:
            raise UsageError(f"--only {args.only!r} matches none of the bench_*.py scripts in {folder}")
    if args.device == "cuda":
        available, why = cuda_available()
        if not available:
            raise UsageError(f"--device cuda: no CUDA device here ({why}); nothing was run")
    console = _console()
    if args.device == "cpu":
        gpu_only = [s for s in scripts if is_gpu_script(s)]
        scripts = [s for s in scripts if not is_gpu_script(s)]
        if gpu_only:
            console.print(f"skipping {len(gpu_only)} GPU script{'s' if len(gpu_only) > 1 else ''} on --device cpu "
                          f"({', '.join(s.name for s in gpu_only)}): they measure CUDA kernels; run them with "
                          "--device cuda on a machine with a GPU")
        if not scripts:
            raise UsageError("nothing to run on --device cpu: every script chosen is a GPU script (bench_gpu_*.py)")

    raw = args.out / f"raw-{args.device}"
    failures = []
    rows = []
    # a smoke run's numbers are never quoted: its scripts run two at a time (one per core), their output
    # shown as each finishes; a real run keeps the machine to one script, echoed as it goes
    pool = ThreadPoolExecutor(max_workers=2) if args.quick else None
    runs = {script: pool.submit(run_script, script, args.device, True, _fresh(raw / script.stem), None)
            for script in scripts} if pool else {}
    for number, script in enumerate(scripts, start=1):
        console.print(f"[bold]\\[{number}/{len(scripts)}] {script.name}[/] --device {args.device}"
                      + (" --quick" if args.quick else ""))
        folder_out = raw / script.stem
        if pool:
            code, seconds, tail = runs[script].result()
            for line in tail:
                console.print(f"  [dim]{_escape(line)}[/]", highlight=False, soft_wrap=True)
        else:
            _clear_results(folder_out)
            code, seconds, tail = run_script(script, args.device, args.quick, folder_out, console)
        if code != 0:
            failures.append(script.name)
            console.print(f"[red]{script.name} failed with exit status {code} after {seconds:.1f} s:[/]")
            for line in tail:
                console.print(f"    {line}", markup=False, highlight=False)
            continue
        found = read_results(folder_out, script.stem, args.device)
        if not found:
            failures.append(script.name)
            console.print(f"[red]{script.name} wrote no CSV to {folder_out}[/]")
        rows += found

    if pool:
        pool.shutdown()
    if rows:
        console.print()
        print_table(console, rows)
        combined = write_combined(args.out / f"bench-{args.device}.csv", rows)
        console.print(f"\ncombined CSV  {combined}")
        figure = plot(args.out / f"bench-{args.device}.png", rows, args.device)
        console.print(f"plot          {figure}" if figure else "plot          none (no peer ratios to draw, "
                                                                  "or matplotlib is not installed)")
        console.print(f"per script    {raw}/")
    if failures:
        console.print(f"[red]{len(failures)} of {len(scripts)} scripts failed: {', '.join(failures)}[/]")
        return 1
    return 0


# --- finding and running the scripts ------------------------------------------------------------------


def _package_checkout() -> Path:
    """The folder above src/ when softxent is imported from a checkout (editable install or PYTHONPATH=src)."""
    import softxent

    return Path(softxent.__file__).resolve().parents[2]


def find_benchmarks(explicit: Path | None) -> Path:
    if explicit is not None:
        if not explicit.is_dir():
            raise UsageError(f"--benchmarks {explicit}: no such folder")
        if not any(explicit.glob("bench_*.py")):
            raise UsageError(f"--benchmarks {explicit}: holds no bench_*.py scripts")
        return explicit
    candidates = [Path.cwd() / "benchmarks", _package_checkout() / "benchmarks"]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("bench_*.py")):
            return folder
    raise UsageError("found no benchmarks folder (looked for bench_*.py in "
                     + " and ".join(str(c) for c in dict.fromkeys(candidates))
                     + "); the benchmark scripts live in the softxent repository, not in the installed package: "
                       "run from a clone of it, or pass --benchmarks DIR")


def is_gpu_script(script: Path) -> bool:
    """bench_gpu_*.py: CUDA kernels against CUDA peers; on a CPU they would only time the fallbacks."""
    return script.name.startswith("bench_gpu_")


def cuda_available() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "PyTorch is not installed"
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False"
    return True, torch.cuda.get_device_name()


def _clear_results(folder: Path) -> None:
    """Remove a previous run's CSVs of this script, so that a table never mixes two runs."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in list(folder.glob("*.csv")) + list(folder.glob("*.json")):
        old.unlink()


def _fresh(folder: Path) -> Path:
    _clear_results(folder)
    return folder


def run_script(script: Path, device: str, quick: bool, out: Path, console) -> tuple[int, float, list[str]]:
    """Run one script in a subprocess, echoing its output dimmed (console None: silently); (exit status,
    seconds, last lines)."""
    import softxent

    command = [sys.executable, "-u", str(script), "--device", device, "--out", str(out.resolve())]
    if quick:
        command.append("--quick")
    # the scripts import softxent: make this very package importable whatever their working folder
    source = str(Path(softxent.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([source] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    tail: deque[str] = deque(maxlen=15)
    start = time.perf_counter()
    with subprocess.Popen(command, cwd=script.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as child:
        for line in child.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if console is not None:
                console.print(f"  [dim]{_escape(line)}[/]", highlight=False, soft_wrap=True)
        code = child.wait()
    return code, time.perf_counter() - start, list(tail)


# --- gathering the results ---------------------------------------------------------------------------


def read_results(folder: Path, script: str, device: str) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if "provider" not in row or "case" not in row:
                    continue  # not a harness table
                rows.append({"script": script, "device": device,
                             **{key: value if key in TEXT else _number(value)
                                for key, value in row.items() if key is not None}})
    return rows


def _number(text):
    if text is None or text == "":
        return None
    try:
        return float(text) if any(c in text for c in ".eEn") else int(text)
    except ValueError:
        return text


def bandwidth_columns(rows: list[dict]) -> list[str]:
    return sorted({key for row in rows for key in row if key not in KNOWN and BANDWIDTH.search(key)})


def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The printed table: one line per op, case and provider; ratios are peer / softxent."""
    extra = bandwidth_columns(rows)
    header = ["op", "case", "provider", "time ms", "peak MiB", "time ratio", "memory ratio", *extra]
    lines = []
    for r in rows:
        if not isinstance(r.get("time_s"), (int, float)):
            lines.append([str(r.get("op", r["script"])), str(r["case"]), str(r["provider"]), "-", "-",
                          f"skipped: {r.get('skipped') or 'no time'}", ""] + [""] * len(extra))
            continue
        lines.append([str(r.get("op", r["script"])), str(r["case"]), str(r["provider"]), f"{r['time_s'] * 1e3:.3f}",
                      _mib(r.get("peak_extra_bytes")), _ratio(r.get("time_ratio")), _ratio(r.get("memory_ratio")),
                      *[_plain(r.get(key)) for key in extra]])
    return header, lines


def _mib(value) -> str:
    return f"{value / 2**20:.1f}" if isinstance(value, (int, float)) else "-"


def _ratio(value) -> str:
    return f"{value:.2f}x" if isinstance(value, (int, float)) else ""


def _plain(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) else "" if value is None else str(value)


def print_table(console, rows: list[dict]) -> None:
    header, lines = table_rows(rows)
    note = ("peak MiB: peak memory beyond the inputs; ratios are peer / softxent, > 1 means softxent is faster "
            "or needs less memory")
    if hasattr(console, "is_rich"):
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, show_edge=False, caption=note, caption_justify="left")
        for name in header:
            table.add_column(name, justify="left" if name in ("op", "case", "provider") else "right")
        for line in lines:
            table.add_row(*line)
        console.print(table)
        return
    widths = [max(len(x) for x in column) for column in zip(header, *lines)]
    for line in [header] + lines:
        console.print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    console.print(note)


def write_combined(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    first = ["script", "device", *KNOWN]
    fields = first + sorted({key for row in rows for key in row} - set(first))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot(path: Path, rows: list[dict], device: str) -> Path | None:
    """Bars of peer / softxent for time and peak memory, one per (op, case, peer), on a log scale."""
    peers = [r for r in rows if isinstance(r.get("time_ratio"), (int, float)) and r["provider"] != "softxent"]
    if not peers:
        return None
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    labels = [f"{r.get('op', r['script'])}  {r['case']}  {r['provider']}" for r in peers]
    positions = range(len(peers))
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.32 * len(peers)), sharey=True, layout="constrained")
    for ax, key, what in zip(axes, ("time_ratio", "memory_ratio"), ("time", "peak extra memory")):
        values = [r.get(key) if isinstance(r.get(key), (int, float)) and r.get(key) > 0 else float("nan")
                  for r in peers]
        colours = ["tab:green" if v >= 1 else "tab:red" for v in values]
        # bars grow from 1 (a tie): right when softxent is better, left when the peer is
        ax.barh(list(positions), [v - 1 if v == v else 0 for v in values], left=1.0, color=colours)
        for y, v in zip(positions, values):
            if v == v:
                ax.text(v, y, f" {v:.2f}x " if v >= 1 else f" {v:.2f}x ", va="center",
                        ha="left" if v >= 1 else "right", fontsize=7)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        finite = [v for v in values if v == v]
        reach = max([2.0] + [max(v, 1 / v) for v in finite]) ** 1.25  # room for the labels
        ax.set_xlim(1 / reach, reach)
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=2))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"peer {what} / softxent {what}", fontsize=10)
        ax.set_xlabel("> 1: softxent is better (log scale)")
        ax.grid(True, axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(list(positions), labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"softxent bench, {device}", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- terminal ----------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


class _PlainConsole:
    """print() with rich's markup stripped, for installs without rich."""

    _markup = re.compile(r"\[/?[a-z ]*\]")

    def print(self, text: str = "", **_) -> None:
        print(self._markup.sub("", text).replace("\\[", "["), flush=True)


def _console():
    try:
        from rich.console import Console
    except ImportError:
        return _PlainConsole()
    console = Console(highlight=False)
    if not console.is_terminal:  # a log file or a pipe: do not squeeze the table into 80 columns
        console = Console(highlight=False, width=160)
    console.is_rich = True
    return console
