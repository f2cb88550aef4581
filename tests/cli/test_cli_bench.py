"""`softxent bench` on tiny fake benchmark scripts in a temporary folder (never the real benchmarks)."""

from __future__ import annotations

import csv
import shutil
import textwrap
from pathlib import Path

import pytest

from softxent.cli import bench, main

# A stand-in for a benchmark script: the harness's command line and CSV columns, no measuring.
# It records the options it was given, and adds a bandwidth column as GPU scripts do.
FAKE = textwrap.dedent("""
    import argparse, csv, pathlib, sys
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    import softxent  # the scripts import the package: bench must make it importable
    print("measuring", "[quick]" if args.quick else "[full]", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"OP-{args.device}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["op", "case", "provider", "time_s", "peak_extra_bytes", "time_ratio", "memory_ratio",
                    "repeats", "skipped", "gb_per_s"])
        w.writerow(["OP", "small" if args.quick else "big", "softxent", 0.002, 1048576, 1.0, 1.0, 5, "", 120.5])
        w.writerow(["OP", "small" if args.quick else "big", "peer", 0.004, 3145728, 2.0, 3.0, 5, "", 60.25])
        w.writerow(["OP", "small" if args.quick else "big", "absent", "", "", "", "", "", "peer not installed", ""])
""")


def fake_benchmarks(folder: Path, names=("bench_alpha.py", "bench_beta.py")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(FAKE.replace("OP", name[len("bench_"):-len(".py")]))
    (folder / "harness.py").write_text("# not a benchmark: never run\nraise SystemExit(3)\n")
    return folder


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bench_runs_every_script_and_combines_their_results(tmp_path, capsys):
    folder = fake_benchmarks(tmp_path / "benchmarks")
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--benchmarks", str(folder), "--out", str(out)]) == 0
    rows = read(out / "bench-cpu.csv")
    assert [(r["script"], r["provider"]) for r in rows] == [
        ("bench_alpha", "softxent"), ("bench_alpha", "peer"), ("bench_alpha", "absent"),
        ("bench_beta", "softxent"), ("bench_beta", "peer"), ("bench_beta", "absent")]
    assert {r["case"] for r in rows} == {"small"}  # --quick reached the scripts
    assert rows[1]["gb_per_s"] == "60.25" and rows[2]["skipped"] == "peer not installed"
    assert (out / "bench-cpu.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "measuring [quick]" in printed  # the scripts' own progress is streamed
    for text in ("time ratio", "2.00x", "3.00x", "gb_per_s", "60.2", "skipped: peer not installed",
                 str(out / "bench-cpu.csv")):
        assert text in printed, text


def test_bench_finds_benchmarks_in_the_current_folder_and_filters_with_only(tmp_path, monkeypatch, capsys):
    fake_benchmarks(tmp_path / "benchmarks")
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--only", "beta", "--out", "out"]) == 0
    rows = read(tmp_path / "out" / "bench-cpu.csv")
    assert {r["script"] for r in rows} == {"bench_beta"} and {r["case"] for r in rows} == {"big"}


def test_bench_without_a_benchmarks_folder_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "_package_checkout", lambda: tmp_path / "site-packages")
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "found no benchmarks folder" in err and str(tmp_path / "benchmarks") in err and err.count("\n") == 1
    assert main(["bench", "--benchmarks", str(tmp_path / "nowhere")]) == 2
    assert "--benchmarks" in capsys.readouterr().err
    fake_benchmarks(tmp_path / "benchmarks")
    assert main(["bench", "--only", "gamma"]) == 2
    assert "matches none" in capsys.readouterr().err


def test_a_failing_script_is_reported_and_the_others_still_run(tmp_path, capsys):
    folder = fake_benchmarks(tmp_path / "benchmarks")
    (folder / "bench_broken.py").write_text("raise RuntimeError('kernel exploded')\n")
    assert main(["bench", "--benchmarks", str(folder), "--out", str(tmp_path / "out")]) == 1
    printed = capsys.readouterr().out
    assert "bench_broken.py failed with exit status 1" in printed and "kernel exploded" in printed
    assert "1 of 3 scripts failed" in printed
    assert {r["script"] for r in read(tmp_path / "out" / "bench-cpu.csv")} == {"bench_alpha", "bench_beta"}


def test_cuda_without_a_gpu_is_an_error_with_status_2(tmp_path, monkeypatch, capsys):
    """Regression: `--device cuda` without a GPU printed a message and exited 0, as if it had run."""
    folder = fake_benchmarks(tmp_path / "benchmarks")
    monkeypatch.setattr(bench, "cuda_available", lambda: (False, "torch.cuda.is_available() is False"))
    assert main(["bench", "--device", "cuda", "--benchmarks", str(folder), "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("softxent bench: error: --device cuda: no CUDA device here "
                            "(torch.cuda.is_available() is False); nothing was run\n")
    assert captured.out == "" and not (tmp_path / "out").exists()


def test_gpu_scripts_are_skipped_on_the_cpu_with_one_line(tmp_path, capsys):
    """Regression: on a machine without CUDA, the bench_gpu_*.py scripts ran (slowly) on the CPU."""
    folder = fake_benchmarks(tmp_path / "benchmarks", names=("bench_alpha.py", "bench_gpu_beta.py", "bench_gpu_gamma.py"))
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--benchmarks", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipping 2 GPU scripts on --device cpu (bench_gpu_beta.py, bench_gpu_gamma.py)") == 1
    assert printed.count("GPU script") == 1 and "[1/1] bench_alpha.py" in printed
    assert {r["script"] for r in read(out / "bench-cpu.csv")} == {"bench_alpha"}
    assert main(["bench", "--only", "gpu", "--benchmarks", str(folder), "--out", str(out)]) == 2
    assert "every script chosen is a GPU script" in capsys.readouterr().err


def test_quick_is_a_short_smoke_run(tmp_path, capsys):
    """`--quick` must finish within a minute on a 2-core machine: each provider is timed for 0.1 s (not
    1 s), and torch.compile, whose CPU build alone takes ~15 s, is skipped with a reason."""
    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    if not (benchmarks / "harness.py").exists():
        pytest.skip("no benchmarks/ in this checkout")
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    shutil.copy(benchmarks / "harness.py", folder / "harness.py")
    (folder / "bench_sleep.py").write_text(textwrap.dedent("""
        import os, pathlib, time
        import harness
        CASES = QUICK = {"nap": {}}
        def make_nap(case, device):
            with open(pathlib.Path(__file__).with_name("pids.txt"), "a") as f:
                f.write(f"{os.getpid()}\\n")
            return lambda: time.sleep(0.005)
        def make_broken(case, device):
            raise RuntimeError("no such kernel")
        if __name__ == "__main__":
            harness.main("nap", CASES, QUICK, {"softxent": make_nap, "again": make_nap, "broken": make_broken})
    """))
    assert main(["bench", "--quick", "--benchmarks", str(folder), "--out", str(tmp_path / "out")]) == 0
    rows = read(tmp_path / "out" / "bench-cpu.csv")
    assert 3 <= int(rows[0]["repeats"]) <= 25, rows[0]  # 0.1 s of 5 ms naps; a full run's 1 s would give 50
    assert rows[2]["skipped"] == "failed: RuntimeError: no such kernel"  # the others still measured
    # one process for the case's providers under --quick (imports paid once), one each in a full run
    assert len(set((folder / "pids.txt").read_text().split())) == 1
    (folder / "pids.txt").unlink()
    assert main(["bench", "--benchmarks", str(folder), "--out", str(tmp_path / "full")]) == 0
    assert len(set((folder / "pids.txt").read_text().split())) == 2
    pytest.importorskip("torch")
    import importlib.util
    import sys

    sys.path.insert(0, str(benchmarks))
    try:
        spec = importlib.util.spec_from_file_location("bench_torch_ce", benchmarks / "bench_torch_cross_entropy.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        import harness

        harness._smoke_run = True
        with pytest.raises(harness.Unavailable, match="--quick"):
            script.make_torch_compile(script.QUICK["256x1000-float32"], "cpu")
    finally:
        sys.path.remove(str(benchmarks))
        sys.modules.pop("harness", None)


def test_bench_reads_what_the_real_harness_writes(tmp_path, capsys):
    """One tiny script on the repository's own harness: its CSV columns are what bench expects."""
    harness = Path(__file__).resolve().parents[2] / "benchmarks" / "harness.py"
    if not harness.exists():
        pytest.skip("no benchmarks/harness.py in this checkout")
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    shutil.copy(harness, folder / "harness.py")
    (folder / "bench_tiny.py").write_text(textwrap.dedent("""
        import harness
        harness.measure.__defaults__ = (0.01, 3)  # min_time, max_repeats: a smoke run, not a measurement
        CASES = QUICK = {"n=8": {"n": 8}}
        def make_sum(case, device):
            data = list(range(case["n"]))
            return lambda: sum(data)
        def make_absent(case, device):
            raise harness.Unavailable("not here")
        if __name__ == "__main__":
            harness.main("tiny_sum", CASES, QUICK, {"softxent": make_sum, "builtin": make_sum, "absent": make_absent})
    """))
    assert main(["bench", "--quick", "--benchmarks", str(folder), "--out", str(tmp_path / "out")]) == 0
    rows = read(tmp_path / "out" / "bench-cpu.csv")
    assert [r["provider"] for r in rows] == ["softxent", "builtin", "absent"]
    assert float(rows[1]["time_ratio"]) > 0 and rows[2]["skipped"] == "not here"
