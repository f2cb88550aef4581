"""Data for `softxent train`: scikit-learn's digits or a user's CSV, split and standardised.

Everything here raises ValueError / FileNotFoundError with one clear line (the CLI prints it and exits
with status 2), never a traceback from deep inside a parser.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import parses_as


@dataclass
class Dataset:
    """A held-out split, features standardised with the training rows' mean and deviation."""

    name: str
    x_train: np.ndarray  # (n_train, D) float64
    y_train: np.ndarray  # (n_train,) int64 class indices
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    feature_names: list[str]
    label_column: str
    image_shape: tuple[int, int] | None = None  # digits: each row is an 8 x 8 picture
    raw_test: np.ndarray | None = field(default=None, repr=False)  # unstandardised test rows, for pictures
    header_note: str = ""  # a CSV: whether its first row was read as a header, and why

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]


def load(data: str, label_column: str | None, test_fraction: float, seed: int) -> Dataset:
    """`data` is "digits" or the path of a CSV file; split off `test_fraction` of each class for testing."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be in (0, 1); got {test_fraction}")
    if data == "digits":
        if label_column is not None:
            raise ValueError("--label-column applies to a CSV file given with --data PATH.csv, not to digits")
        features, labels, class_names, feature_names, label_name, image_shape = _digits()
    else:
        features, labels, class_names, feature_names, label_name, header_note = read_csv(
            Path(data), label_column, explain_header=True)
        image_shape = None
    train, test = stratified_split(labels, test_fraction, seed)
    x_train, x_test = standardise(features[train], features[test])
    name = data if data == "digits" else Path(data).name  # titles and the terminal; settings keep the path
    return Dataset(name=name, x_train=x_train, y_train=labels[train], x_test=x_test, y_test=labels[test],
                   class_names=class_names, feature_names=feature_names, label_column=label_name,
                   image_shape=image_shape, raw_test=features[test],
                   header_note=header_note if data != "digits" else "")


def _digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("--data digits needs scikit-learn: pip install 'softxent[demo]'") from None
    # 1797 pictures of 8 x 8 pixels (grey levels 0..16) that ship inside scikit-learn: no download
    digits = load_digits()
    names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    return (digits.data.astype(np.float64), digits.target.astype(np.int64), [str(k) for k in range(10)], names,
            "digit", (8, 8))


# --- CSV ----------------------------------------------------------------------------------------------


def read_csv(path: Path, label_column: str | None, explain_header: bool = False):
    """Numeric feature columns and one label column (any text; default the last column).

    Whether the first row is a header is decided by `first_row_is_header`. Labels become class indices
    in sorted order (numerically when every label is a number). Returns (features, labels, class names,
    feature names, label name), and the sentence saying how the first row was read when `explain_header`.
    """
    if not path.exists():
        raise FileNotFoundError(f"--data: no such file: {path}")
    if not path.is_file():
        raise ValueError(f"--data: {path} is not a file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(number, row) for number, row in enumerate(csv.reader(f), start=1)
                    if any(cell.strip() for cell in row)]  # blank lines are not rows
    except UnicodeDecodeError:
        raise ValueError(f"--data: {path} is not a text (UTF-8) CSV file") from None
    except csv.Error as err:
        raise ValueError(f"--data: {path} is not a readable CSV file: {err}") from None
    if not rows:
        raise ValueError(f"--data: {path} is empty")

    header = None
    is_header, why = first_row_is_header([row for _, row in rows], label_column)
    if is_header:
        header = [cell.strip() for cell in rows[0][1]]
        rows = rows[1:]
    note = f"{path.name}: the first row is {'a header' if is_header else 'data, not a header'} ({why})"
    width = len(header) if header is not None else len(rows[0][1]) if rows else 0
    if not rows:
        raise ValueError(f"--data: {path} has a header but no data rows")
    if width < 2:
        raise ValueError(f"--data: {path} needs at least two columns (features and a label); it has {width}")
    for number, row in rows:
        if len(row) != width:
            raise ValueError(f"--data: {path} line {number} has {len(row)} fields; expected {width} "
                             f"(like the {'header' if header is not None else 'first row'})")

    names = header if header is not None else [f"column_{j}" for j in range(width)]
    label_index = _label_index(label_column, names, header is not None, path)
    feature_indices = [j for j in range(width) if j != label_index]

    try:  # NumPy parses the whole table at once; only a bad table is walked cell by cell to say where
        features = np.array([[row[j] for j in feature_indices] for _, row in rows], dtype=np.float64)
        clean = bool(np.isfinite(features).all())
    except ValueError:
        clean = False
    if not clean:
        _first_bad_cell(path, rows, feature_indices, names)

    labels_text = [row[label_index].strip() for _, row in rows]
    for (number, _), text in zip(rows, labels_text):
        if not text:
            raise ValueError(f"--data: {path} line {number}: the label column {names[label_index]!r} is empty")
    class_names, labels = _classes(labels_text)
    if len(class_names) < 2:
        raise ValueError(f"--data: {path}: the label column {names[label_index]!r} holds a single class "
                         f"({class_names[0]!r}); a classifier needs at least two")
    found = features, labels, class_names, [names[j] for j in feature_indices], names[label_index]
    return (*found, note) if explain_header else found


def first_row_is_header(rows: list[list[str]], label_column: str | None) -> tuple[bool, str]:
    """Whether the first of the CSV's rows names the columns, and why, in a few words.

    - a cell of --label-column's name: a header;
    - a feature cell that is not a number: a header (features are numbers);
    - all numbers: data;
    - numeric features and a text label: data if that label is a class that appears again lower down
      (iris without a header starts "5.1,3.5,1.4,0.2,setosa"), else a header ("x,y,species" style
      names over numeric columns, a header of numbers with one text name for the label).
    """
    first = [cell.strip() for cell in rows[0]]
    if label_column is not None and label_column in first and not parses_as(int, label_column):
        return True, f"it holds the --label-column name {label_column!r}"
    label = len(first) - 1
    if label_column is not None and parses_as(int, label_column) and -len(first) <= int(label_column) < len(first):
        label = int(label_column) % len(first)
    text = [j for j, cell in enumerate(first) if j != label and not parses_as(float, cell)]
    if text:
        return True, f"{first[text[0]]!r} in a feature column is not a number"
    if parses_as(float, first[label]):
        return False, "every cell is a number"
    later = {row[label].strip() for row in rows[1:] if len(row) > label}
    if first[label] in later:
        return False, f"its label {first[label]!r} is a class of later rows"
    return True, f"its label-column cell {first[label]!r} is no class of later rows"


def _first_bad_cell(path: Path, rows, feature_indices: list[int], names: list[str]) -> None:
    for number, row in rows:
        for j in feature_indices:
            cell = row[j].strip()
            try:
                value = float(cell)
            except ValueError:
                what = "an empty cell (missing values are not supported)" if not cell else f"{cell!r}, not a number"
                raise ValueError(f"--data: {path} line {number}, feature column {names[j]!r}: {what}") from None
            if not math.isfinite(value):
                raise ValueError(f"--data: {path} line {number}, feature column {names[j]!r}: {cell!r} is not finite")
    raise ValueError(f"--data: {path} holds a feature that is not a finite number")  # pragma: no cover


def _label_index(label_column: str | None, names: list[str], has_header: bool, path: Path) -> int:
    if label_column is None:
        return len(names) - 1
    if has_header and label_column in names:
        return names.index(label_column)
    try:
        index = int(label_column)
    except ValueError:
        where = f"the header of {path}: {', '.join(map(repr, names))}" if has_header else \
            f"{path}, which has no header (give a column number, 0 to {len(names) - 1} or negative)"
        raise ValueError(f"--label-column {label_column!r} is not a column of {where}") from None
    if not -len(names) <= index < len(names):
        raise ValueError(f"--label-column {index} is out of range: {path} has {len(names)} columns")
    return index % len(names)


def _classes(labels: list[str]) -> tuple[list[str], np.ndarray]:
    """Sorted distinct labels (as numbers when all are numbers) and each row's class index."""
    distinct = set(labels)
    if all(parses_as(float, label) for label in distinct):
        # numbers are classes by value: "1" and "1.0" are one class, and "10" comes after "2"
        key = {label: float(label) for label in distinct}
        values = sorted(set(key.values()))
        names = {value: min(label for label in distinct if key[label] == value) for value in values}
        ordered = [names[value] for value in values]
        index = {label: values.index(key[label]) for label in distinct}
    else:
        ordered = sorted(distinct)
        index = {label: k for k, label in enumerate(ordered)}
    return ordered, np.array([index[label] for label in labels], dtype=np.int64)


# --- split and scale -----------------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of a train / test split holding `test_fraction` of every class out (seeded).

    Each class with at least two rows puts round(fraction * count) of them, and at least one, in the
    test set and keeps at least one for training; a class seen once stays in training.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        held = 0 if members.size < 2 else min(members.size - 1, max(1, round(test_fraction * members.size)))
        test.append(members[:held])
        train.append(members[held:])
    train_rows, test_rows = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    if test_rows.size == 0:
        raise ValueError(f"--data has too few rows ({labels.size}) to hold any out for testing: "
                         "a class needs at least two rows")
    return train_rows, test_rows


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero mean, unit deviation per feature, from the training rows only (the test set stays unseen)."""
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    scale[scale == 0] = 1.0  # a constant feature (digits' corner pixels) stays 0 rather than 0/0
    return (train - mean) / scale, (test - mean) / scale
