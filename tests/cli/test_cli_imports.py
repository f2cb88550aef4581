"""The command line on a core install (NumPy only): `explain` works, `train` and `bench` say what is missing.

Each case runs in a fresh interpreter whose import system refuses the optional libraries, as if only
`pip install softxent` had been run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
BLOCK = textwrap.dedent("""
    import sys
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"rich", "matplotlib", "sklearn", "scipy", "torch", "threadpoolctl"}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Refuse())
    from softxent.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def core_only(*argv, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, "-c", BLOCK, *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=60)


def test_explain_needs_numpy_only():
    done = core_only("explain", "1", "2", "3")
    assert done.returncode == 0, done.stderr
    assert "0.090" in done.stdout and "0.665" in done.stdout


def test_train_without_the_demo_extra_names_what_to_install():
    done = core_only("train")
    assert done.returncode == 2
    assert done.stderr.strip() == ("softxent train: error: softxent train needs rich, matplotlib, scikit-learn: "
                                   "pip install 'softxent[demo]'")


def test_bench_without_rich_or_matplotlib_still_tabulates(tmp_path):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_x.py").write_text(textwrap.dedent("""
        import argparse, pathlib
        p = argparse.ArgumentParser(); p.add_argument("--quick", action="store_true")
        p.add_argument("--device"); p.add_argument("--out", type=pathlib.Path)
        a = p.parse_args(); a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "x-cpu.csv").write_text("op,case,provider,time_s,peak_extra_bytes,time_ratio,memory_ratio\\n"
                                         "x,c,softxent,0.001,0,1.0,\\nx,c,peer,0.003,0,3.0,\\n")
    """))
    done = core_only("bench", "--benchmarks", str(folder), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "3.00x" in done.stdout and "plot          none" in done.stdout
    assert (tmp_path / "out" / "bench-cpu.csv").exists()
