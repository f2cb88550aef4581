"""`softxent explain 1 2 3`: the textbook example, every quantity computed and shown.

    softxent explain 1 2 3                          # softmax, its loss and gradient for each class
    softxent explain -inf 1 2 --label 1             # negative scores need no `--`
    softxent explain 1 2 3 --target 0.1 0.2 0.7     # cross-entropy of two distributions: H(p, q) = H(p) + KL(p||q)
    softxent explain 1 2 3 --plot example.png       # the same as a figure (needs matplotlib)

Only NumPy is needed (rich colours the table when it is installed); every number comes from softxent's
public functions.
"""

from __future__ import annotations

import argparse
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import softxent as sx

from . import UsageError, parses_as


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Negative scores work as they are: softxent explain -inf -1 2.5"
    parser.add_argument("scores", nargs="+", type=float, metavar="SCORE",
                        help="the scores (logits) of each class, e.g. 1 2 3; inf and -inf are allowed")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--label", type=int, default=None, metavar="K",
                       help="the correct class for the gradient (default: the last class)")
    which.add_argument("--target", type=float, nargs="+", default=None, metavar="P",
                       help="a target distribution p, one probability per class (summing to 1): shows the "
                            "cross-entropy H(p, q) of p and q = softmax, H(p) and KL(p||q)")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T",
                        help="divide the scores by T > 0 first (default 1)")
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                        help="also draw the example to this PNG file (needs matplotlib)")


def negative_numbers_as_values(argv: list[str]) -> list[str]:
    """Let `explain -inf 1 2` and `explain -1e3 2` through argparse, which reads them as options.

    argparse takes a word that starts with "-" for an option unless it looks like `-1` or `-.5`;
    `-inf`, `-1e3` and `-nan` do not. A leading space keeps the word a value (argparse only looks at
    the first character) and float() ignores it.
    """
    return [f" {word}" if word.startswith("-") and parses_as(float, word) else word for word in argv]


@dataclass
class Explanation:
    scores: np.ndarray
    label: int | None  # the correct class; None with a target distribution
    temperature: float
    hardmax: np.ndarray
    softmax: np.ndarray
    log_softmax: np.ndarray
    loss_per_label: np.ndarray  # the softmax loss if class j were the correct one: -log softmax_j
    grad: np.ndarray  # d loss / d scores: (softmax - onehot(K)) / T, or (softmax - p) / T with a target
    logsumexp: float
    entropy: float
    target: np.ndarray | None = None  # p
    loss: float = math.nan  # -log q_K, or H(p, q) with a target
    target_entropy: float = math.nan  # H(p)
    kl: float = math.nan  # KL(p || q)


def explain(scores, label: int | None = None, temperature: float = 1.0, target=None) -> Explanation:
    """Every quantity of the softmax story for one vector of scores, from softxent's own functions."""
    scores = np.asarray(scores, dtype=np.float64)
    classes = scores.size
    _refuse_nan(scores, "SCORE", "a NaN score makes every probability NaN; give numbers (inf and -inf are allowed)")
    if target is None:
        label = classes - 1 if label is None else label
        if not 0 <= label < classes:
            raise UsageError(f"--label must be a class in [0, {classes}); got {label}")
    else:
        target = _check_target(target, classes)
    probs = sx.softmax(scores, temperature=temperature)
    log_probs = sx.log_softmax(scores, temperature=temperature)
    loss_per_label = sx.cross_entropy(np.broadcast_to(scores, (classes, classes)), np.arange(classes),
                                      reduction="none", temperature=temperature)
    with np.errstate(over="ignore"):  # s / T may overflow to inf (1e10 / 1e-300): the true lse is then inf too
        lse = float(sx.logsumexp(scores / temperature))
    explanation = Explanation(scores, label, temperature, sx.hardmax(scores), probs, log_probs, loss_per_label,
                              np.zeros(classes), lse, float(sx.entropy(probs)) + 0.0, target)
    if target is None:
        loss, grad = sx.cross_entropy(scores, np.array(label), temperature=temperature, return_grad=True)
    else:
        # a probability target: H(p, q) = -sum_j p_j log q_j, and H(p, q) = H(p) + KL(p || q)
        loss, grad = sx.cross_entropy(scores, target, temperature=temperature, return_grad=True)
        explanation.target_entropy = float(sx.entropy(target)) + 0.0
        explanation.kl = float(sx.kl_divergence(target, probs)) + 0.0
    explanation.loss, explanation.grad = float(loss), grad
    return explanation


def _refuse_nan(values: np.ndarray, name: str, why: str) -> None:
    bad = np.flatnonzero(np.isnan(values))
    if bad.size:
        raise UsageError(f"{name} at position {bad[0]} (counting from 0) is nan: {why}")


def _check_target(target, classes: int) -> np.ndarray:
    p = np.asarray(target, dtype=np.float64)
    if p.size != classes:
        raise UsageError(f"--target needs one probability per class: {classes} scores but {p.size} probabilities")
    _refuse_nan(p, "--target", "probabilities are numbers in [0, 1]")
    outside = np.flatnonzero((p < 0) | (p > 1))
    if outside.size:
        raise UsageError(f"--target holds probabilities in [0, 1]; got {p[outside[0]]:g} at position {outside[0]}")
    if abs(p.sum() - 1.0) > 1e-6:
        raise UsageError(f"--target must sum to 1 (it is a distribution over the classes); it sums to {p.sum():.6g}")
    return p


def run(args: argparse.Namespace) -> int:
    result = explain(args.scores, args.label, args.temperature, args.target)
    if args.plot is not None:
        _check_plot_path(args.plot)
    try:
        from rich.console import Console
    except ImportError:  # the core install has NumPy only: plain text then
        print(render_plain(result, shutil.get_terminal_size().columns))
    else:
        render_rich(result, Console())
    if args.plot is not None:
        from .plots import explain_figure

        print(f"figure  {explain_figure(args.plot, result)}")
    return 0


def _check_plot_path(path: Path) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'softxent[demo]'") from None
    if path.suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG file: give a name ending in .png; got {path}")
    if not path.parent.is_dir():
        raise UsageError(f"--plot {path}: no such folder: {path.parent}")


# --- numbers that always fit ------------------------------------------------------------------------


def number(value: float, decimals: int = 4, sign: bool = False) -> str:
    """`decimals` places where that shows the value, scientific notation where it would not.

    Fixed notation for 10**-decimals <= |x| < 10**5 and 0; otherwise `decimals - 1` digits after the
    point of a mantissa (1.000e+308, 2.500e-301), so a cell is never wider than 11 characters.
    """
    value = float(value) + 0.0  # -0.0 prints as 0
    plus = "+" if sign else ""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return ("+inf" if sign else "inf") if value > 0 else "-inf"
    if value == 0 or 10.0 ** -decimals <= abs(value) < 1e5:
        return f"{value:{plus}.{decimals}f}"
    return f"{value:{plus}.{max(decimals - 1, 1)}e}"


def score(value: float) -> str:
    return f"{value:g}"  # as the user typed it, at most 6 significant digits (1e+308, -inf)


# --- the table --------------------------------------------------------------------------------------

BAR_WIDTH = 8


def _columns(result: Explanation) -> list[tuple[str, list[str]]]:
    classes = range(result.scores.size)
    mark = ["" if result.label is None else " K" if j == result.label else "  " for j in classes]
    columns = [
        ("class j", [str(j) for j in classes]),
        ("score s_j", [score(s) for s in result.scores]),
        ("hardmax", [number(h, 0) if not math.isnan(h) else "nan" for h in result.hardmax]),
        ("softmax p_j" if result.target is None else "softmax q_j", [number(p, 3) for p in result.softmax]),
        ("log p_j" if result.target is None else "log q_j", [number(v) for v in result.log_softmax]),
        ("loss_j", [number(v) for v in result.loss_per_label]),
        ("grad_j", [number(g, sign=True) + m for g, m in zip(result.grad, mark)]),
    ]
    if result.target is not None:
        columns.insert(4, ("target p_j", [number(p, 3) for p in result.target]))
    return columns


def _bar(p: float, char: str) -> str:
    return char * int(round(p * BAR_WIDTH)) if math.isfinite(p) else ""


def _grid(header: list[str], rows: list[list[str]], left: int = 0) -> tuple[list[int], list[str]]:
    """Columns two spaces apart, right-aligned but for the last `left` ones; (widths, lines: the header,
    a rule, then the rows)."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    first_left = len(widths) - left

    def line(cells):
        return "  ".join(cell.ljust(w) if i >= first_left else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()

    return widths, [line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in rows]


def table_lines(result: Explanation, width: int, bar_char: str = "#") -> tuple[list[str], int | None]:
    """The table laid out for a terminal `width` characters wide, never cutting a number.

    The whole table with a bar of each p_j where it fits; without the bars where only that fits; and
    where even that is too wide, one block per class, a quantity per line. Returns the lines and the
    column where the bars start (None without bars).
    """
    columns = _columns(result)
    header = [name for name, _ in columns]
    rows = [list(cells) for cells in zip(*(cells for _, cells in columns))]
    with_bars = [row + [_bar(p, bar_char)] for row, p in zip(rows, result.softmax)]
    bar_header = "bar of p_j" if result.target is None else "bar of q_j"
    widths, lines = _grid(header + [bar_header], with_bars, left=1)
    if max(map(len, lines)) <= width:
        return lines, sum(widths[:-1]) + 2 * (len(widths) - 1)
    _, lines = _grid(header, rows)
    if max(map(len, lines)) <= width:
        return lines, None
    name_width = max(map(len, header[1:]))
    blocks = []
    for row in rows:
        blocks.append(f"class {row[0]}")
        blocks += [f"  {name.ljust(name_width)}  {cell.strip()}" for name, cell in zip(header[1:], row[1:])]
    return blocks, None


def _wrap(items: list[str], width: int) -> list[str]:
    """Items three spaces apart, as many to a line as fit in `width`."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 3 + len(item) <= width:
            lines[-1] += "   " + item
        else:
            lines.append(item)
    return lines


def summary_lines(result: Explanation, width: int) -> list[str]:
    items = [f"temperature T = {score(result.temperature)}", f"logsumexp(s / T) = {number(result.logsumexp)}",
             f"entropy of softmax = {number(result.entropy)} nats"]
    if result.target is None:
        items += [f"correct class K = {result.label}", f"loss -log p_K = {number(result.loss)} nats"]
    return _wrap(items, width)


def target_lines(result: Explanation, width: int) -> list[str]:
    """With --target: the three sums of per-class terms, and the identity that ties them."""
    p, q, log_q = result.target, result.softmax, result.log_softmax
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 log 0 is taken as 0 below, as sx.entropy does
        cross = np.where(p > 0, -p * log_q, 0.0)
        own = np.where(p > 0, -p * np.log(p), 0.0)
    kl = cross - own  # p_j log(p_j / q_j), term by term
    header = ["class j", "p_j", "q_j", "-p_j log q_j", "-p_j log p_j", "p_j log(p_j/q_j)"]
    rows = [[str(j), number(p[j], 3), number(q[j], 3), number(cross[j]), number(own[j]), number(kl[j])]
            for j in range(p.size)]
    rows.append(["sum", "", "", number(result.loss), number(result.target_entropy), number(result.kl)])
    rows.append(["", "", "", "H(p, q)", "H(p)", "KL(p||q)"])
    lines = ["cross-entropy of the target p and q = softmax(s / T), in nats:"]
    _, grid = _grid(header, rows)
    if max(map(len, grid)) <= width:
        lines += grid
    else:  # narrow terminal: the sums only
        lines += _wrap([f"H(p, q) = {number(result.loss)}", f"H(p) = {number(result.target_entropy)}",
                        f"KL(p||q) = {number(result.kl)}"], width)
    lines += _wrap(["H(p, q) = H(p) + KL(p||q):",
                    f"{number(result.loss)} = {number(result.target_entropy)} + {number(result.kl)}"], width)
    return lines


def notes(result: Explanation) -> list[str]:
    lines = [
        "hardmax   one-hot of the largest score: no useful gradient",
        "softmax   p_j = exp(s_j / T) / sum_k exp(s_k / T): every score gets a share",
        "log p_j   log-softmax, s_j / T - logsumexp(s / T)",
        "loss_j    the softmax loss -log p_j, were class j the correct one",
        "grad_j    d loss / d s_j for the correct class K: (p_j - [j = K]) / T",
    ]
    if result.target is not None:
        lines[1:3] = ["softmax   q_j = exp(s_j / T) / sum_k exp(s_k / T), the model's distribution",
                      "log q_j   log-softmax, s_j / T - logsumexp(s / T)"]
        lines[3:] = ["loss_j    -log q_j, the softmax loss were class j the correct one",
                     "grad_j    d H(p, q) / d s_j: (q_j - p_j) / T"]
    return lines


def title(result: Explanation) -> str:
    return f"softmax of {' '.join(score(s) for s in result.scores)}"


def render_plain(result: Explanation, width: int = 80) -> str:
    lines = [title(result)] + table_lines(result, width)[0] + [""] + summary_lines(result, width)
    if result.target is not None:
        lines += [""] + target_lines(result, width)
    return "\n".join(lines + [""] + notes(result))


def render_rich(result: Explanation, console) -> None:
    from rich.markup import escape

    width = console.width
    console.print(escape(title(result)), style="bold", highlight=False)
    lines, bars = table_lines(result, width, bar_char="█")
    is_table = len(lines) == result.scores.size + 2  # not the narrow layout of one block per class
    for i, line in enumerate(lines):
        text = escape(line) if bars is None or i < 2 else f"{escape(line[:bars])}[cyan]{line[bars:]}[/]"
        bold = is_table and result.label is not None and i == 2 + result.label
        console.print(text, style="bold" if bold else None, highlight=False, soft_wrap=True)
    console.print(highlight=False)
    for line in summary_lines(result, width):
        console.print(escape(line), highlight=False, soft_wrap=True)
    if result.target is not None:
        console.print()
        for line in target_lines(result, width):
            console.print(escape(line), highlight=False, soft_wrap=True)
    console.print()
    for note in notes(result):
        console.print(escape(note), style="dim", highlight=False)
