"""`softxent explain 1 2 3`: the textbook example, every quantity computed and shown."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

import softxent as sx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scores", nargs="+", type=float, metavar="SCORE",
                        help="the scores (logits) of each class, e.g. 1 2 3")
    parser.add_argument("--label", type=int, default=None, metavar="K",
                        help="the correct class for the gradient (default: the last class)")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T",
                        help="divide the scores by T > 0 first (default 1)")


@dataclass
class Explanation:
    scores: np.ndarray
    label: int
    temperature: float
    hardmax: np.ndarray
    softmax: np.ndarray
    log_softmax: np.ndarray
    loss_per_label: np.ndarray  # the softmax loss if class j were the correct one: -log softmax_j
    grad: np.ndarray  # d loss / d scores for the chosen label: softmax - onehot, divided by T
    logsumexp: float
    entropy: float


def explain(scores, label: int | None = None, temperature: float = 1.0) -> Explanation:
    """Every quantity of the softmax story for one vector of scores, from softxent's own functions."""
    scores = np.asarray(scores, dtype=np.float64)
    classes = scores.size
    label = classes - 1 if label is None else label
    if not 0 <= label < classes:
        raise ValueError(f"--label must be a class in [0, {classes}); got {label}")
    probs = sx.softmax(scores, temperature=temperature)
    log_probs = sx.log_softmax(scores, temperature=temperature)
    loss_per_label = sx.cross_entropy(np.broadcast_to(scores, (classes, classes)), np.arange(classes),
                                      reduction="none", temperature=temperature)
    _, grad = sx.cross_entropy(scores, np.array(label), temperature=temperature, return_grad=True)
    return Explanation(scores, label, temperature, sx.hardmax(scores), probs, log_probs, loss_per_label,
                       grad, float(sx.logsumexp(scores / temperature)), float(sx.entropy(probs)) + 0.0)


def run(args: argparse.Namespace) -> int:
    result = explain(args.scores, args.label, args.temperature)
    try:
        from rich.console import Console
    except ImportError:  # the core install has NumPy only: plain text then
        print(render_plain(result))
    else:
        render_rich(result, Console())
    return 0


COLUMNS = ("class j", "score s_j", "hardmax", "softmax p_j", "log p_j", "loss_j", "grad_j")
NOTES = (
    "hardmax   one-hot of the largest score: no useful gradient",
    "softmax   p_j = exp(s_j / T) / sum_k exp(s_k / T): every score gets a share",
    "log p_j   log-softmax, s_j / T - logsumexp(s / T)",
    "loss_j    the softmax loss -log p_j, were class j the correct one",
    "grad_j    d loss / d s_j for the correct class K: (p_j - [j = K]) / T",
)


def _rows(result: Explanation) -> list[tuple[str, ...]]:
    return [
        (str(j), f"{result.scores[j]:g}", f"{result.hardmax[j]:.0f}", f"{result.softmax[j]:.3f}",
         f"{result.log_softmax[j]:.4f}", f"{result.loss_per_label[j]:.4f}",
         f"{result.grad[j]:+.4f}" + (" K" if j == result.label else "  "))
        for j in range(result.scores.size)
    ]


def _summary(result: Explanation) -> str:
    return (f"temperature T = {result.temperature:g}   logsumexp(s / T) = {result.logsumexp:.4f}   "
            f"entropy of softmax = {result.entropy:.4f} nats   correct class K = {result.label}")


def render_plain(result: Explanation) -> str:
    rows = [COLUMNS] + _rows(result)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines + ["", _summary(result), ""] + list(NOTES))


def render_rich(result: Explanation, console) -> None:
    from rich.table import Table

    from rich import box
    from rich.markup import escape

    table = Table(title=f"softmax of {' '.join(f'{s:g}' for s in result.scores)}", title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for name in COLUMNS:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("", justify="left", no_wrap=True)
    for row, prob in zip(_rows(result), result.softmax):
        style = "bold" if row[0] == str(result.label) else None
        table.add_row(*row, "[cyan]" + "█" * int(round(prob * 8)) + "[/]", style=style)
    console.print(table)
    console.print(_summary(result))
    for note in NOTES:
        console.print(escape(note), style="dim")
