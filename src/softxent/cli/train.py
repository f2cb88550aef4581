"""`softxent train`: fit a classifier on softxent's own loss and gradient, then compare and draw it.

    softxent train                                # softmax regression on scikit-learn's digits
    softxent train --model mlp --epochs 60
    softxent train --data flowers.csv --label-column species --out runs/flowers

Trains softmax regression (or a one-hidden-layer MLP) with mini-batch Adam on
``mean CE + (l2 / 2) ||W||^2``, fits scikit-learn's LogisticRegression to the same objective on the
same split (C = 1 / (l2 * n_train), see baseline.py), and reports test accuracy, mean cross-entropy and
expected calibration error for both; writes report.json and the figures to --out.

Only NumPy is imported at module level: `softxent explain` builds this parser and must run on a core
(NumPy-only) install. matplotlib, scikit-learn and rich come with the `demo` extra.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import UsageError
from .models import MODELS, NumpyBackend, cosine_lr, init_params

# --epochs by default: at least MIN_EPOCHS passes and at least MIN_STEPS Adam steps. On the digits (11
# batches an epoch) that is 100 epochs; on a small CSV whose rows fit in one batch, 100 epochs would be
# only 100 steps, far from the optimum (iris: 114 rows, test loss twice scikit-learn's), so it is 1000.
MIN_EPOCHS, MIN_STEPS = 100, 1000
CLOSE = 0.05  # warn when the test cross-entropy is further than this from scikit-learn's (relative)
DEFAULTS = {"epochs": None, "batch_size": 128, "lr": 0.05, "l2": 1e-3, "hidden": 64, "test_fraction": 0.25,
            "seed": 0, "threads": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("The objective is mean cross-entropy + (l2/2)*||W||^2; scikit-learn's LogisticRegression "
                     "is fitted to the same one with C = 1/(l2 * training rows).")
    parser.add_argument("--data", default="digits", metavar="digits|PATH.csv",
                        help="scikit-learn's handwritten digits (default; no download) or a CSV file with numeric "
                             "feature columns and a label column")
    parser.add_argument("--label-column", default=None, metavar="NAME",
                        help="the CSV's label column: a header name or a column number (default: the last column)")
    parser.add_argument("--model", choices=MODELS, default="softmax",
                        help="softmax regression (default) or an MLP with one ReLU hidden layer")
    parser.add_argument("--backend", choices=("numpy", "torch"), default="numpy",
                        help="train with softxent's NumPy layer (default) or softxent.torch")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], metavar="N",
                        help=f"passes over the training rows (default: {MIN_EPOCHS}, or more if that is fewer "
                             f"than {MIN_STEPS} Adam steps)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], metavar="B",
                        help=f"rows per Adam step (default {DEFAULTS['batch_size']})")
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"],
                        help=f"Adam's initial step size, decayed to 0 along a half cosine (default {DEFAULTS['lr']})")
    parser.add_argument("--l2", type=float, default=DEFAULTS["l2"],
                        help=f"L2 penalty on the weights, not the biases (default {DEFAULTS['l2']:g})")
    parser.add_argument("--hidden", type=int, default=None, metavar="H",
                        help=f"hidden units of --model mlp (default {DEFAULTS['hidden']})")
    parser.add_argument("--test-fraction", type=float, default=DEFAULTS["test_fraction"], metavar="F",
                        help=f"share of each class held out for testing (default {DEFAULTS['test_fraction']})")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], metavar="S",
                        help="seeds the split, the initial weights and the batch order (default 0)")
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"], metavar="N",
                        help="BLAS / torch threads (default 1: this problem's matrices are small, and more "
                             "threads only wait for each other)")
    parser.add_argument("--no-figures", action="store_true",
                        help="write report.json only (quicker, for sweeps over settings)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="folder for report.json and the figures (default softxent-out/train, "
                             "softxent-out/train-mlp for --model mlp, with -torch added for --backend torch: "
                             "one run never overwrites another's)")


def default_out(model: str, backend: str) -> Path:
    """softxent-out/train, train-mlp, train-torch, train-mlp-torch: each kind of run its own folder."""
    return Path("softxent-out/" + "-".join(["train"] + (["mlp"] if model == "mlp" else [])
                                             + (["torch"] if backend == "torch" else [])))


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.out is None:
        args.out = default_out(args.model, args.backend)
    check_out(args.out)
    rich = _demo_dependencies()
    if args.backend == "torch":
        from .torch_backend import load_torch

        load_torch()  # say now, not after loading the data, when softxent.torch cannot train here
    from . import report

    console = rich.console.Console()
    if not console.is_terminal:  # a log file or a pipe: do not squeeze the table into 80 columns
        console = rich.console.Console(width=120)
    started = time.perf_counter()
    from .data import load

    data = load(args.data, args.label_column, args.test_fraction, args.seed)
    settings["epochs"] = args.epochs if args.epochs is not None else default_epochs(data.x_train.shape[0],
                                                                                    settings["batch_size"])
    report.print_header(console, settings, data)
    with _threads(args.threads):
        backend = _backend(settings, data)
        result = fit(backend, data, settings, progress=report.progress_bar(console))
        from .baseline import logistic_regression

        baseline = logistic_regression(data.x_train, data.y_train, data.x_test, data.num_classes, args.l2)
    outcome = report.build(settings, data, result, baseline, time.perf_counter() - started)
    outcome["warnings"] = convergence_warnings(outcome)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = [] if args.no_figures else report.draw(args.out, data, result, baseline, outcome)
    outcome["figures"] = [path.name for path in figures]
    outcome["timing_s"]["total"] = time.perf_counter() - started
    (args.out / "report.json").write_text(json.dumps(outcome, indent=1) + "\n")
    report.print_report(console, outcome, args.out / "report.json", figures)
    return 0


def _settings(args: argparse.Namespace) -> dict:
    for name in ("epochs", "batch_size", "hidden", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(args, name)}")
    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer; got {args.seed}")
    if args.hidden is not None and args.model != "mlp":
        raise UsageError(f"--hidden sets the hidden layer of --model mlp; --model {args.model} has none")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive number; got {args.lr}")
    if not (math.isfinite(args.l2) and args.l2 >= 0):
        raise UsageError(f"--l2 must be a number >= 0; got {args.l2}")
    settings = {"data": args.data, "label_column": args.label_column, "model": args.model, "backend": args.backend,
                "epochs": args.epochs, "batch_size": args.batch_size, "optimiser": "adam", "lr": args.lr,
                "lr_schedule": "cosine to 0", "l2": args.l2, "test_fraction": args.test_fraction,
                "seed": args.seed, "threads": args.threads, "dtype": "float64"}
    if args.epochs is None:
        settings["epochs_rule"] = f"at least {MIN_EPOCHS} epochs and at least {MIN_STEPS} Adam steps"
    if args.model == "mlp":
        settings["hidden"] = DEFAULTS["hidden"] if args.hidden is None else args.hidden
    return settings


def default_epochs(rows: int, batch_size: int) -> int:
    """MIN_EPOCHS, or as many epochs as make MIN_STEPS Adam steps when that is more."""
    steps_per_epoch = math.ceil(rows / min(batch_size, rows))
    return max(MIN_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))


def convergence_warnings(outcome: dict) -> list[str]:
    """A run whose test loss is not within CLOSE of LogisticRegression's on the same objective stopped short."""
    ours, theirs = outcome["cross_entropy"]["softxent"], outcome["cross_entropy"]["sklearn"]
    if not outcome["sklearn"]["converged"] or outcome["settings"]["model"] != "softmax" or theirs <= 0:
        return []  # the MLP is another model: its loss may rightly differ from a linear one's
    gap = ours / theirs - 1
    if abs(gap) <= CLOSE:
        return []
    return [f"softxent's test cross-entropy is {gap:+.1%} from scikit-learn's (more than {CLOSE:.0%}): "
            f"the training stopped short of the shared objective's optimum; try more --epochs "
            f"(this run: {outcome['settings']['epochs']}) or another --lr"]


def check_out(out: Path) -> None:
    """Fail before the work, not after it, when --out cannot be a folder we can write in.

    Creates the missing folders to try a file in them, then removes what it created: a run that
    stops on bad data leaves nothing behind.
    """
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == out else f"is inside {existing}, a file"
        raise UsageError(f"--out {out} {where}, not a folder")
    created = [p for p in [out, *out.parents] if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".softxent-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"--out {out} is not writable: {err.strerror or err}") from None
    finally:
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                pass


def _demo_dependencies():
    missing = []
    for name in ("rich", "matplotlib", "sklearn"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        names = ", ".join("scikit-learn" if m == "sklearn" else m for m in missing)
        raise UsageError(f"softxent train needs {names}: pip install 'softxent[demo]'")
    import rich.console

    return rich


@contextmanager
def _threads(count: int):
    """Limit BLAS threads: on matrices this small, OpenBLAS threads spin waiting for each other."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        yield
        return
    with threadpool_limits(limits=count):
        yield


def _backend(settings: dict, data):
    params = init_params(settings["model"], data.num_features, data.num_classes, settings.get("hidden", 0),
                         settings["seed"])
    if settings["backend"] == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(settings["model"], params, settings["l2"], threads=settings["threads"])
    return NumpyBackend(settings["model"], params, settings["l2"])


def fit(backend, data, settings: dict, progress=None) -> dict:
    """Mini-batch training; the mean cross-entropy of the train and test rows after every epoch.

    Returns {"history": {...}, "train_seconds": s, "test_logits": ..., "train_logits": ...}.
    """
    import softxent as sx

    rows = data.x_train.shape[0]
    batch = min(settings["batch_size"], rows)
    steps_per_epoch = math.ceil(rows / batch)
    total = settings["epochs"] * steps_per_epoch
    order_rng = np.random.default_rng([settings["seed"], 2])  # the batch order's own stream
    history = {"epoch": [0], "train_cross_entropy": [float(sx.cross_entropy(backend.logits(data.x_train), data.y_train))],
               "test_cross_entropy": [float(sx.cross_entropy(backend.logits(data.x_test), data.y_test))]}
    step = 0
    start = time.perf_counter()
    with progress if progress is not None else _nothing() as bar:
        task = None if bar is None else bar.add_task("training", total=settings["epochs"],
                                                     train=history["train_cross_entropy"][0],
                                                     test=history["test_cross_entropy"][0])
        for epoch in range(1, settings["epochs"] + 1):
            order = order_rng.permutation(rows)
            for first in range(0, rows, batch):
                picked = order[first:first + batch]
                loss = backend.train_step(data.x_train[picked], data.y_train[picked],
                                          cosine_lr(settings["lr"], step, total))
                step += 1
                if not math.isfinite(loss):
                    raise ValueError(f"training diverged at epoch {epoch} (the loss is {loss}); "
                                     f"try a smaller --lr than {settings['lr']:g}")
            train_ce = float(sx.cross_entropy(backend.logits(data.x_train), data.y_train))
            test_ce = float(sx.cross_entropy(backend.logits(data.x_test), data.y_test))
            history["epoch"].append(epoch)
            history["train_cross_entropy"].append(train_ce)
            history["test_cross_entropy"].append(test_ce)
            if bar is not None:
                bar.update(task, advance=1, train=train_ce, test=test_ce)
    seconds = time.perf_counter() - start
    return {"history": history, "train_seconds": seconds, "test_logits": backend.logits(data.x_test),
            "train_logits": backend.logits(data.x_train), "backend": backend}


@contextmanager
def _nothing():
    yield None
