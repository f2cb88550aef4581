"""The figures of `softxent train` (PNG, matplotlib's Agg backend: no display needed).

Each function draws one figure from plain arrays and returns the path it wrote. The softmax story is
drawn with softxent's own functions: sx.hardmax, sx.softmax (with `temperature`), sx.entropy,
sx.cross_entropy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import softxent as sx

from .metrics import ECE_BINS, calibration_bins

TEMPERATURES = (0.25, 0.5, 1.0, 2.0, 4.0)
SOFTXENT, SKLEARN = "tab:blue", "tab:orange"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on a machine without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def loss_curves(path: Path, epochs: np.ndarray, train: np.ndarray, test: np.ndarray, sklearn_train: float,
                sklearn_test: float, title: str) -> Path:
    """Mean cross-entropy on the training and test rows after each epoch, with sklearn's as reference lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    ax.plot(epochs, train, color=SOFTXENT, label=f"softxent train ({train[-1]:.4f})")
    ax.plot(epochs, test, color=SOFTXENT, linestyle="--", label=f"softxent test ({test[-1]:.4f})")
    ax.axhline(sklearn_train, color=SKLEARN, linewidth=1, label=f"sklearn train ({sklearn_train:.4f})")
    ax.axhline(sklearn_test, color=SKLEARN, linewidth=1, linestyle="--", label=f"sklearn test ({sklearn_test:.4f})")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean cross-entropy (nats, log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def confusion(path: Path, counts: np.ndarray, class_names: list[str], title: str) -> Path:
    """Test rows per (true class, predicted class); the diagonal holds the correct ones."""
    plt = _pyplot()
    classes = len(class_names)
    size = min(9.0, 3.0 + 0.45 * classes)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), layout="constrained")
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="test rows")
    if classes <= 30:  # beyond that the numbers would not fit in the cells
        threshold = counts.max() / 2
        for i in range(classes):
            for j in range(classes):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if counts[i, j] > threshold else "black")
    ticks = np.arange(classes)
    ax.set_xticks(ticks, [_short(n) for n in class_names], rotation=90 if classes > 12 else 0)
    ax.set_yticks(ticks, [_short(n) for n in class_names])
    ax.set_xlabel("predicted class (hardmax of the scores)")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def pick_examples(logits: np.ndarray, y: np.ndarray, count: int = 4) -> list[int]:
    """Test rows worth looking at: the most confident, a middling and the least confident correct
    prediction, and the most confident mistake if there is one."""
    probs = sx.softmax(logits)
    confidence = probs.max(axis=1)
    correct = np.flatnonzero(probs.argmax(axis=1) == y)
    wrong = np.flatnonzero(probs.argmax(axis=1) != y)
    picks: list[int] = []
    if correct.size:
        ordered = correct[np.argsort(-confidence[correct], kind="stable")]
        picks += [int(ordered[0]), int(ordered[len(ordered) // 2]), int(ordered[-1])]
    if wrong.size:
        picks.append(int(wrong[np.argmax(confidence[wrong])]))
    unique = list(dict.fromkeys(picks))
    return unique[:count]


def scores_hardmax_softmax(path: Path, logits: np.ndarray, y: np.ndarray, rows: list[int], class_names: list[str],
                           images: np.ndarray | None = None, image_shape: tuple[int, int] | None = None) -> Path:
    """For a few test rows: the scores s (logits), hardmax(s) (one-hot of the largest) and softmax(s)."""
    plt = _pyplot()
    columns = 3 + (images is not None)
    classes = len(class_names)
    fig, axes = plt.subplots(len(rows), columns, figsize=(3.0 * columns, 2.0 * len(rows) + 0.6),
                             layout="constrained", squeeze=False,
                             gridspec_kw={"width_ratios": ([0.55] if images is not None else []) + [1, 1, 1]})
    positions = np.arange(classes)
    labels = [_short(n) for n in class_names]
    for r, row in enumerate(rows):
        scores = logits[row]
        hard, soft = sx.hardmax(scores), sx.softmax(scores)
        truth, guess = int(y[row]), int(np.argmax(scores))
        axs = list(axes[r])
        if images is not None:
            ax = axs.pop(0)
            ax.imshow(images[row].reshape(image_shape), cmap="gray_r")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(f"test row {row}", fontsize=8)
        mark = "" if truth == guess else "  (wrong)"
        colours = ["tab:green" if j == truth else "tab:gray" for j in range(classes)]
        axs[0].bar(positions, scores, color=colours)
        axs[0].axhline(0, color="black", linewidth=0.5)
        axs[0].set_ylabel(f"true {_short(class_names[truth])}\npredicted {_short(class_names[guess])}{mark}",
                          fontsize=8)
        axs[1].bar(positions, hard, color=colours)
        axs[1].set_ylim(0, 1.05)
        axs[2].bar(positions, soft, color=colours)
        axs[2].set_ylim(0, 1.05)
        loss = float(sx.cross_entropy(scores[None, :], [truth]))  # -log p(true), exact even when p is tiny
        axs[2].set_xlabel(f"p(true) = {soft[truth]:.3f}, loss -log p(true) = {loss:.3g}", fontsize=8)
        for ax in axs:
            ax.set_xticks(positions, labels, fontsize=7, rotation=90 if classes > 12 else 0)
            ax.tick_params(axis="y", labelsize=7)
    titles = ["scores s (logits)", "hardmax(s): one-hot of the max", "softmax(s) = exp(s) / sum exp(s)"]
    for ax, title in zip(axes[0][columns - 3:], titles):
        ax.set_title(title, fontsize=9)
    fig.suptitle("green: the true class", fontsize=8)
    return _save(fig, path)


def temperature(path: Path, scores: np.ndarray, truth: int, class_names: list[str], test_logits: np.ndarray,
                y_test: np.ndarray) -> Path:
    """softmax(s / T) of one test row for a few T, and how T moves its entropy and the test loss."""
    plt = _pyplot()
    classes = len(class_names)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained",
                                      gridspec_kw={"width_ratios": [1.4, 1]})
    width = 0.8 / len(TEMPERATURES)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(TEMPERATURES)))
    positions = np.arange(classes)
    for k, (t, colour) in enumerate(zip(TEMPERATURES, colours)):
        probs = sx.softmax(scores, temperature=t)
        left.bar(positions + (k - (len(TEMPERATURES) - 1) / 2) * width, probs, width, color=colour,
                 label=f"T = {t:g}  (H = {float(sx.entropy(probs)):.2f} nats)")
    left.set_xticks(positions, [_short(n) for n in class_names], rotation=90 if classes > 12 else 0)
    left.set_xlabel(f"class (true class: {_short(class_names[truth])})")
    left.set_ylabel("softmax(s / T)")
    left.set_ylim(0, 1.05)
    left.set_title("one test row: small T sharpens towards hardmax, large T flattens towards uniform",
                   fontsize=9)
    left.legend(fontsize=8)

    grid = np.geomspace(0.05, 20, 60)
    row_entropy = [float(sx.entropy(sx.softmax(scores, temperature=t))) for t in grid]
    test_loss = [float(sx.cross_entropy(test_logits, y_test, temperature=t)) for t in grid]
    best = grid[int(np.argmin(test_loss))]
    right.plot(grid, row_entropy, color="tab:purple", label="entropy of this row's softmax(s / T)")
    right.plot(grid, test_loss, color="tab:blue", label="mean test cross-entropy at T")
    right.axhline(np.log(classes), color="gray", linestyle=":", linewidth=1, label=f"log C = {np.log(classes):.2f} (uniform)")
    right.axvline(1.0, color="black", linewidth=0.8, linestyle="--", label="T = 1 (as trained)")
    right.axvline(best, color="tab:blue", linewidth=0.8, linestyle=":", label=f"lowest test loss at T = {best:.2f}")
    right.set_xscale("log")
    right.set_ylim(0, 1.08 * max(np.log(classes), max(test_loss)))
    right.set_xlabel("temperature T (log scale)")
    right.set_ylabel("nats")
    right.set_title("temperature scaling", fontsize=9)
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7)
    return _save(fig, path)


def calibration(path: Path, probs: dict[str, np.ndarray], y: np.ndarray, eces: dict[str, float]) -> Path:
    """Reliability diagram: accuracy against confidence per bin; a calibrated model follows the diagonal."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(probs), figsize=(4.6 * len(probs), 4.6), layout="constrained", squeeze=False)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for ax, (name, p), colour in zip(axes[0], probs.items(), (SOFTXENT, SKLEARN)):
        count, confidence, accuracy = calibration_bins(p, y)
        used = count > 0
        ax.bar(edges[:-1][used], accuracy[used], width=1 / ECE_BINS, align="edge", color=colour, alpha=0.75,
               edgecolor="white", label="accuracy in bin")
        ax.plot(confidence[used], accuracy[used], "k.", markersize=4, label="(mean confidence, accuracy)")
        for lo, n in zip(edges[:-1][used], count[used]):  # most rows sit in the top bin: say how many
            ax.text(lo + 0.5 / ECE_BINS, 0.01, str(n), ha="center", va="bottom", fontsize=6, rotation=90)
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"top-label confidence max_j p_j\n({ECE_BINS} equal bins; test rows per bin at the foot)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}: ECE = {eces[name]:.4f}", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    return _save(fig, path)


def _short(name: str, limit: int = 10) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def explain_figure(path: Path, result) -> Path:
    """`softxent explain --plot`: the scores, hardmax, softmax, loss and gradient of each class, one panel
    each; with a target distribution, p beside q = softmax with H(p, q) = H(p) + KL(p||q).

    `result` is an explain.Explanation. Infinite values (a -inf score, its infinite loss) get no bar,
    only their label.
    """
    from .explain import number, score

    plt = _pyplot()
    classes = result.scores.size
    positions = np.arange(classes)
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.4), layout="constrained")
    axes = axes.ravel()
    marked = [j == result.label for j in range(classes)]
    colours = ["tab:green" if mark else "tab:gray" for mark in marked]
    T = f" / {score(result.temperature)}" if result.temperature != 1 else ""
    panels = [
        (result.scores, f"scores s_j{' (T = ' + score(result.temperature) + ')' if T else ''}", score, None),
        (result.hardmax, "hardmax(s): one-hot of the largest", lambda v: number(v, 0), (0, 1.12)),
        (result.softmax, f"softmax(s{T})_j", lambda v: number(v, 3), (0, 1.12)),
        (result.loss_per_label, "loss_j = -log softmax_j (were j correct)", number, None),
        (result.grad, "gradient d loss / d s_j (K = correct class)" if result.label is not None else
         "gradient d H(p, q) / d s_j = (q_j - p_j) / T", lambda v: number(v, sign=True), None),
    ]
    for ax, (values, heading, label, limits) in zip(axes, panels):
        finite = np.where(np.isfinite(values), values, 0.0)
        bars = ax.bar(positions, finite, color=colours)
        ax.bar_label(bars, [label(v) for v in values], fontsize=8, padding=2)
        ax.axhline(0, color="black", linewidth=0.5)
        if limits is not None:
            ax.set_ylim(*limits)
        else:
            ax.margins(y=0.2)
        ax.set_title(heading, fontsize=9)
        ax.set_xticks(positions, [f"{j}" + (" (K)" if marked[j] else "") for j in positions], fontsize=8)
        ax.set_xlabel("class j", fontsize=8)
    last = axes[5]
    if result.target is None:
        last.axis("off")
        lines = [f"logsumexp(s{T}) = {number(result.logsumexp)}", f"entropy of softmax = {number(result.entropy)}",
                 f"correct class K = {result.label}", f"loss -log p_K = {number(result.loss)} nats",
                 "gradient = (softmax - onehot(K))" + (" / T" if T else "")]
        last.text(0.0, 0.9, "\n".join(lines), va="top", fontsize=10, family="monospace", transform=last.transAxes)
    else:
        width = 0.4
        p_bars = last.bar(positions - width / 2, result.target, width, color="tab:orange", label="target p")
        q_bars = last.bar(positions + width / 2, result.softmax, width, color="tab:blue", label=f"q = softmax(s{T})")
        last.bar_label(p_bars, [number(v, 3) for v in result.target], fontsize=7, padding=2)
        last.bar_label(q_bars, [number(v, 3) for v in result.softmax], fontsize=7, padding=2)
        last.set_ylim(0, 1.12)
        last.set_xticks(positions, [str(j) for j in positions], fontsize=8)
        last.set_xlabel("class j", fontsize=8)
        last.legend(fontsize=8, loc="upper left")
        last.set_title(f"H(p, q) = H(p) + KL(p||q): {number(result.loss)} = {number(result.target_entropy)} + "
                       f"{number(result.kl)}", fontsize=9)
    what = "a target distribution p" if result.target is not None else f"correct class K = {result.label}"
    fig.suptitle(f"softxent explain {' '.join(score(s) for s in result.scores)}: {what}", fontsize=11)
    return _save(fig, path)
