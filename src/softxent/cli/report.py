"""What `softxent train` shows and saves: the terminal table, report.json and the figures.

report.json holds, for scripts and for reproducing a run:
    accuracy, cross_entropy, ece     each {"softxent": test value, "sklearn": test value}
    train                            the same three on the training rows
    settings                         every option of the run (rerun with them to get the same numbers)
    data, sklearn, history           split sizes and classes; LogisticRegression's C; loss per epoch
    timing_s, versions, figures      not part of the reproducible numbers
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

import softxent as sx

from . import plots
from .metrics import ECE_BINS, confusion_matrix, evaluate

MODEL_NAMES = {"softmax": "softmax regression", "mlp": "MLP"}


def print_header(console, settings: dict, data) -> None:
    model = MODEL_NAMES[settings["model"]] + (f" ({settings['hidden']} ReLU units)" if "hidden" in settings else "")
    console.print(f"[bold]softxent train[/]: {model} on {data.name} "
                  f"({data.x_train.shape[0]} training / {data.x_test.shape[0]} test rows, "
                  f"{data.num_features} features, {data.num_classes} classes), {settings['backend']} backend")
    if data.header_note:
        console.print(f"[dim]{data.header_note}[/]")
    rule = f" ({settings['epochs_rule']})" if "epochs_rule" in settings else ""
    console.print(f"[dim]Adam, lr {settings['lr']:g} cosine to 0, {settings['epochs']} epochs{rule} of batches of "
                  f"{settings['batch_size']}, l2 {settings['l2']:g}, seed {settings['seed']}[/]")


def progress_bar(console):
    """An epoch bar with the latest train and test cross-entropy (on stderr, so stdout stays the report)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    errors = Console(stderr=True)
    return Progress(TextColumn("epoch"), MofNCompleteColumn(), BarColumn(),
                    TextColumn("train CE {task.fields[train]:.4f}  test CE {task.fields[test]:.4f}"),
                    TimeElapsedColumn(), console=errors, disable=not errors.is_terminal)


def build(settings: dict, data, result: dict, baseline, seconds: float) -> dict:
    ours_test, theirs_test = evaluate(result["test_logits"], data.y_test), evaluate(baseline.test_logits, data.y_test)
    ours_train = evaluate(result["train_logits"], data.y_train)
    theirs_train = evaluate(baseline.train_logits, data.y_train)
    versions = {"softxent": sx.__version__, "numpy": np.__version__, "python": platform.python_version()}
    try:
        import sklearn

        versions["scikit-learn"] = sklearn.__version__
    except ImportError:  # pragma: no cover - the baseline needed it
        pass
    if settings["backend"] == "torch":
        import torch

        versions["torch"] = torch.__version__
    report = {
        "accuracy": {"softxent": ours_test.accuracy, "sklearn": theirs_test.accuracy},
        "cross_entropy": {"softxent": ours_test.cross_entropy, "sklearn": theirs_test.cross_entropy},
        "ece": {"softxent": ours_test.ece, "sklearn": theirs_test.ece},
        "train": {"accuracy": {"softxent": ours_train.accuracy, "sklearn": theirs_train.accuracy},
                  "cross_entropy": {"softxent": ours_train.cross_entropy, "sklearn": theirs_train.cross_entropy},
                  "ece": {"softxent": ours_train.ece, "sklearn": theirs_train.ece}},
        "definitions": {
            "split": "test", "cross_entropy": "mean softmax loss in nats, softxent.cross_entropy(logits, y)",
            "ece": f"top-label expected calibration error, {ECE_BINS} equal-width confidence bins (lo, hi], "
                   "weighted by the share of rows in each bin",
            "objective": "mean cross-entropy + (l2/2) * sum of squared weights (biases unpenalised)",
        },
        "settings": settings,
        "data": {"name": data.name, "label_column": data.label_column, "train_rows": int(data.x_train.shape[0]),
                 "test_rows": int(data.x_test.shape[0]), "features": data.num_features, "classes": data.class_names,
                 "standardised": "with the training rows' mean and standard deviation"},
        "sklearn": {"model": "LogisticRegression(C=C, tol=1e-8, max_iter=10000), lbfgs", "C": baseline.C,
                    "C_rule": "1 / (l2 * train_rows), doubled for two classes", "iterations": baseline.iterations,
                    "converged": baseline.converged},
        "history": result["history"],
        "timing_s": {"softxent_train": result["train_seconds"], "sklearn_fit": baseline.fit_seconds, "total": seconds},
        "versions": versions,
    }
    return report


def draw(out: Path, data, result: dict, baseline, report: dict) -> list[Path]:
    history = result["history"]
    settings = report["settings"]
    logits, y = result["test_logits"], data.y_test
    predicted = logits.argmax(axis=1)
    model = MODEL_NAMES[settings["model"]]
    figures = [
        plots.loss_curves(out / "loss_curves.png", np.array(history["epoch"]),
                          np.array(history["train_cross_entropy"]), np.array(history["test_cross_entropy"]),
                          report["train"]["cross_entropy"]["sklearn"], report["cross_entropy"]["sklearn"],
                          f"{model} on {data.name}: cross-entropy per epoch ({settings['backend']} backend)"),
        plots.confusion(out / "confusion_matrix.png", confusion_matrix(y, predicted, data.num_classes),
                        data.class_names, f"{model}, test rows: accuracy {report['accuracy']['softxent']:.2%}"),
    ]
    picks = plots.pick_examples(logits, y)
    images = data.raw_test if data.image_shape is not None else None
    figures.append(plots.scores_hardmax_softmax(out / "scores_hardmax_softmax.png", logits, y, picks,
                                                data.class_names, images, data.image_shape))
    # the temperature figure uses the least confident correct row: its distribution has room to move
    row = picks[2] if len(picks) > 2 else picks[0]
    figures.append(plots.temperature(out / "temperature.png", logits[row], int(y[row]), data.class_names,
                                     logits, y))
    figures.append(plots.calibration(out / "calibration.png",
                                     {"softxent": sx.softmax(logits), "sklearn": sx.softmax(baseline.test_logits)},
                                     y, report["ece"]))
    return figures


def print_report(console, report: dict, json_path: Path, figures: list[Path]) -> None:
    from rich import box
    from rich.table import Table

    C = report["sklearn"]["C"]
    table = Table(title="test rows", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("")
    table.add_column("softxent", justify="right")
    table.add_column(f"sklearn (C={C:.4g})", justify="right")
    table.add_column("softxent vs sklearn", justify="right")
    ours, theirs = report["accuracy"]["softxent"], report["accuracy"]["sklearn"]
    table.add_row("accuracy", f"{ours:.2%}", f"{theirs:.2%}", f"{(ours - theirs) * 100:+.2f} points")
    ours, theirs = report["cross_entropy"]["softxent"], report["cross_entropy"]["sklearn"]
    table.add_row("mean cross-entropy (nats)", f"{ours:.4f}", f"{theirs:.4f}", f"{(ours / theirs - 1):+.1%}")
    ours, theirs = report["ece"]["softxent"], report["ece"]["sklearn"]
    table.add_row(f"ECE ({ECE_BINS} bins)", f"{ours:.4f}", f"{theirs:.4f}", f"{ours - theirs:+.4f}")
    console.print(table)
    timing = report["timing_s"]
    console.print(f"trained in {timing['softxent_train']:.2f} s; LogisticRegression fit in "
                  f"{timing['sklearn_fit']:.2f} s ({report['sklearn']['iterations']} lbfgs iterations"
                  f"{'' if report['sklearn']['converged'] else ', NOT converged'}); {timing['total']:.1f} s in all")
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"report   {json_path}")
    if figures:
        console.print("figures  " + "\n         ".join(str(path) for path in figures))
