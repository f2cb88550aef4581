"""`softxent explain`: the worked example in the terminal and as a figure, for any scores a user types.

Run in-process through softxent.cli.main, as the console script does; the terminal width comes from
COLUMNS (rich reads it, and so does the plain renderer through shutil).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from softxent.cli import main


def run(capsys, *argv, columns=100):
    import os

    os.environ["COLUMNS"] = str(columns)  # restored by the fixture below
    code = main(["explain", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _keep_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")


def test_nan_score_is_named_as_a_score_at_its_position(capsys):
    """Regression: `explain 1 nan 3` blamed "p ... at position (0,)", a probability, not the score."""
    code, out, err = run(capsys, "1", "nan", "3")
    assert code == 2 and out == ""
    assert "SCORE at position 1" in err and "nan" in err and "probabilities" not in err, err
    assert err.count("\n") == 1


@pytest.mark.parametrize("argv, cells", [
    (["-inf", "1", "2"], ["-inf", "0.269", "0.731", "+0.0000"]),   # argparse took -inf for an option
    (["-1", "2"], ["-1", "0.047", "0.953"]),
    (["-1e3", "2", "--label", "0"], ["-1000", "1.000"]),                 # -1e3 does not look like -1 to argparse
    (["1", "-2.5", "--temperature", "2"], ["-2.5", "T = 2"]),
])
def test_negative_scores_work_without_double_dash(capsys, argv, cells):
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    for cell in cells:
        assert cell in out, cell


def test_a_negative_option_value_is_still_checked(capsys):
    code, _, err = run(capsys, "1", "2", "--temperature", "-1")
    assert code == 2 and "temperature must be > 0" in err


def test_target_shows_cross_entropy_entropy_kl_per_class_and_the_identity(capsys):
    """The README's second half: p = [0.1, 0.2, 0.7] against q = softmax([1, 2, 3])."""
    code, out, err = run(capsys, "1", "2", "3", "--target", "0.1", "0.2", "0.7")
    assert code == 0, err
    assert "H(p, q) = H(p) + KL(p||q):" in out and "0.8076 = 0.8018 + 0.0058" in out
    # per-class terms -p_j log q_j, -p_j log p_j, p_j log(p_j / q_j)
    p, q = np.array([0.1, 0.2, 0.7]), np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum()
    for j in range(3):
        terms = [-p[j] * np.log(q[j]), -p[j] * np.log(p[j]), p[j] * np.log(p[j] / q[j])]
        line = next(line for line in out.splitlines() if re.match(rf"\s*{j}\s+{p[j]:.3f}\s", line))
        assert line.split()[-3:] == [f"{t:.4f}" for t in terms], line
    for name in ("H(p, q)", "H(p)", "KL(p||q)", "-p_j log q_j", "-p_j log p_j", "p_j log(p_j/q_j)"):
        assert name in out
    from softxent.cli.explain import explain

    result = explain([1, 2, 3], target=[0.1, 0.2, 0.7])
    assert result.loss == pytest.approx(result.target_entropy + result.kl, rel=1e-14)
    np.testing.assert_allclose(result.grad, q - p, rtol=1e-12)


@pytest.mark.parametrize("argv, message", [
    (["--target", "0.5", "0.5"], "one probability per class: 3 scores but 2"),
    (["--target", "0.5", "0.2", "0.2"], "must sum to 1"),
    (["--target", "1.5", "-0.5", "0"], "in [0, 1]"),
    (["--target", "nan", "0.5", "0.5"], "--target at position 0"),
])
def test_bad_target_is_one_line_and_status_2(capsys, argv, message):
    code, _, err = run(capsys, "1", "2", "3", *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_label_and_target_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["explain", "1", "2", "--label", "0", "--target", "0.5", "0.5"])
    assert exit.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--target", "0.1", "0.2", "0.7"], ["--temperature", "0.5", "--label", "0"]])
def test_plot_writes_a_png(tmp_path, capsys, extra):
    pytest.importorskip("matplotlib")
    path = tmp_path / "example.png"
    code, out, err = run(capsys, "-inf", "1", "2", "3", *(["--target", "0", "0.1", "0.2", "0.7"] if extra[:1] ==
                                                           ["--target"] else extra), "--plot", str(path))
    assert code == 0, err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    assert str(path) in out


def test_plot_refuses_a_missing_folder_before_drawing(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, "1", "2", "--plot", str(tmp_path / "nowhere" / "x.png"))
    assert code == 2 and "no such folder" in err


def _table(out: str) -> list[str]:
    lines = out.splitlines()
    return lines[1:lines.index("")]


@pytest.mark.parametrize("argv, expected", [
    (["1e308", "1e308"], ["1e+308", "1.000e+308", "0.500", "+0.5000", "-0.5000"]),  # lse once printed 309 digits
    (["1", "2", "3", "--temperature", "1e-300"], ["-2.000e+300", "2.000e+300", "3.000e+300"]),  # dropped columns
    (["1e-20", "0"], ["1e-20"]),
])
def test_extreme_values_fit_the_table(capsys, argv, expected):
    code, out, err = run(capsys, *argv, columns=100)
    assert code == 0, err
    table = _table(out)
    header = table[0]
    for name in ("class j", "score s_j", "hardmax", "softmax p_j", "log p_j", "loss_j", "grad_j"):
        assert name in header, name
    assert all(len(line) <= 100 for line in out.splitlines())
    assert "…" not in out
    for cell in expected:
        assert cell in out, cell
    assert not re.search(r"\d{12}", out)  # no number printed digit by digit


@pytest.mark.parametrize("columns", [80, 60, 40, 30])
def test_narrow_terminals_never_cut_a_number(capsys, columns):
    """Regression: at COLUMNS=40 rich squeezed the cells to "2.4…"."""
    code, out, err = run(capsys, "1", "2", "3", columns=columns)
    assert code == 0, err
    assert "…" not in out
    for cell in ("0.090", "0.245", "0.665", "-2.4076", "2.4076", "+0.0900", "+0.2447", "-0.3348", "3.4076"):
        assert cell in out, cell
    table = _table(out)
    assert all(len(line) <= columns for line in table), table


def test_the_bar_column_has_a_header(capsys):
    code, out, _ = run(capsys, "1", "2", "3", columns=100)
    header = _table(out)[0]
    assert header.split()[-3:] == ["bar", "of", "p_j"]
    assert header.index("bar of p_j") == _table(out)[2].index("█")  # the bars sit under their header


@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, -2.4076, 1e-5, 3e-301, 1e308, -1e308, 99999.99, 123456.7, 5e6,
                                   float("inf"), float("-inf"), float("nan")])
def test_number_formatting_is_short_and_exact_enough(value):
    from softxent.cli.explain import number

    for decimals in (0, 3, 4):
        text = number(value, decimals, sign=True)
        assert len(text) <= 11, text
    if np.isfinite(value) and value != 0:  # 4 decimals or a mantissa of 4 digits: within 5e-4 relative
        assert float(number(value)) == pytest.approx(value, rel=5e-4)
    assert number(-0.0) == "0.0000"
