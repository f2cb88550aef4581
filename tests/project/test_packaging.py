"""What a user installing softxent gets beside the code: the license, the changelog, the PEP 561 marker.

The wheel is built from a copy of the package source (no network, no build isolation), so the shared
checkout gets no build/ or egg-info folders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_file_is_the_apache_2_text_pyproject_names():
    assert project()["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    for section in ("1. Definitions.", "2. Grant of Copyright License.", "3. Grant of Patent License.",
                    "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"):
        assert section in text, section


def test_changelog_has_an_entry_for_this_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{project()['version']}]" in text


def test_readme_says_how_to_add_the_torch_backend_after_make_demo():
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/pip install -c requirements/constraints.txt -e '.[torch]'" in readme


@pytest.mark.slow  # about 40 s of gcc here (90 s on CI), so it is collected first: see tests/conftest.py
def test_wheel_ships_py_typed_and_the_compiled_kernel(tmp_path):
    pytest.importorskip("setuptools")
    assert (ROOT / "src" / "softxent" / "py.typed").is_file()
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so"))  # built afresh below
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    # the three extensions compile side by side (build_ext --parallel, through distutils' extra config file,
    # which leaves the source tree as shipped): the wheel is the same, built in the time of the longest one
    (tmp_path / "build.cfg").write_text("[build_ext]\nparallel = 3\n")
    done = subprocess.run([sys.executable, "-c", "from setuptools import build_meta; "
                           f"print(build_meta.build_wheel({str(tmp_path / 'dist')!r}))"],
                          cwd=source, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, DIST_EXTRA_CONFIG=str(tmp_path / "build.cfg")))
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = tmp_path / "dist" / done.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    assert "softxent/py.typed" in names
    # setup.py's optional extensions, built here where a C compiler is at hand
    for op in ("cross_entropy", "token_log_probs", "distillation"):
        assert any(name.startswith(f"softxent/ops/{op}/_cpu_rows") and name.endswith(".so") for name in names), op
    assert any(name.endswith(".dist-info/licenses/LICENSE") or name.endswith(".dist-info/LICENSE")
               for name in names), [n for n in names if "dist-info" in n]
