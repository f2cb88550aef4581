"""Argument checks of the vocab-parallel losses, split into what a rank checks alone and what needs the group.

Local checks run before the handshake and never raise there: their error travels in the handshake so
that every rank raises it (a rank raising alone would leave the others waiting in a collective).
Checks that need the global vocabulary (label range, the class weights' length) run after it on data
that the handshake proved identical on every rank, so every rank reaches the same verdict.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from softxent import _validation as v
from softxent._options import LossOptions
import array_api_compat.torch as xp

from softxent._torch.checks import floating, same_device, tensor
from softxent.ops.cross_entropy import spec
from softxent.ops.cross_entropy.distributed_rows import RowProblem
from softxent._torch.collectives import Communicator, Field, Layout, checked_timeout, dtype_code, fingerprint, float_bits, shape_code, show_dtype, show_float, \
    show_fingerprint

_REDUCTION_CODES = {name: i for i, name in enumerate(v.REDUCTIONS)}


def local_options(comm: Communicator, timeout: Any, **options: Any) -> LossOptions:
    """The collectives' timeout, set on comm, and the loss's options: both checked on this rank alone."""
    comm.timeout = checked_timeout(timeout)
    return LossOptions(**options)


def checked_local_logits(local_logits: Any) -> torch.Tensor:
    """This rank's slice of the logits: a floating tensor with a class dimension (the last)."""
    logits = floating(local_logits, "local_logits")
    if logits.dim() == 0:
        raise ValueError("local_logits must have at least one dimension (the classes); got a scalar")
    return logits


def checked_target(target: Any, logits_shape: tuple, logits: torch.Tensor, logits_name: str) -> str:
    """'index' or 'probs', after the checks one rank can make alone (probabilities >= 0, no NaN)."""
    target = tensor(target, "target")
    kind = spec.check_target(logits_shape, target, len(logits_shape) - 1, logits_name=logits_name)
    same_device(target, logits, "target", logits_name)
    if kind == spec.PROBS:
        spec.check_probabilities(xp, target)  # as every layer: finite and >= 0
    return kind


def checked_class_weight(weight: Any, reference: torch.Tensor, reference_name: str) -> torch.Tensor | None:
    if weight is None:
        return None
    weight = floating(weight, "weight")
    same_device(weight, reference, "weight", reference_name)
    if weight.dim() != 1:
        raise ValueError(f"weight must hold one value per class of the whole vocabulary, a 1-D tensor; "
                         f"got shape {tuple(weight.shape)}")
    return weight


def common_fields(batch_shape: tuple, kind: str, target: torch.Tensor, weight: torch.Tensor | None,
                  options: LossOptions, num_items: Any) -> list[Field]:
    """What every rank must agree on, whichever loss: rows, targets, class weights, options, num_items."""
    rows = 1
    for size in batch_shape:
        rows *= int(size)
    reductions = {code: repr(name) for name, code in _REDUCTION_CODES.items()}
    return [
        Field("the number of rows", rows),
        Field("the batch shape (the dimensions before the classes or features)", shape_code(batch_shape),
              lambda c: f"shape code {c:#x}"),
        Field("the kind of target", int(kind == "probs"),
              lambda c: "probabilities" if c else "class indices"),
        Field("the dtype of target", dtype_code(target.dtype), show_dtype),
        # class-index targets are global ids: the same tensor on every rank; probabilities are per slice
        Field("target (every rank must pass the same global class ids)",
              fingerprint(target) if kind == "index" else 0, show_fingerprint),
        Field("whether weight is given, and its dtype", dtype_code(None if weight is None else weight.dtype),
              show_dtype),
        Field("weight (every rank must pass the same global class weights)",
              0 if weight is None else fingerprint(weight), show_fingerprint),
        Field("ignore_index", options.ignore_index),
        Field("reduction", _REDUCTION_CODES[options.reduction], lambda c: reductions.get(c, str(c))),
        Field("label_smoothing", float_bits(options.label_smoothing), show_float),
        Field("z_loss", float_bits(options.z_loss), show_float),
        num_items_field(num_items),
    ]


def num_items_field(num_items: Any) -> Field:
    """num_items as a handshake field: every rank of the group must divide by the same number (read once:
    a host sync for a device tensor, as the handshake's other fingerprints)."""
    if num_items is None:
        return Field("num_items", -1, lambda c: "None" if c == -1 else str(c))
    value = num_items if isinstance(num_items, int) else float(num_items)
    return Field("num_items", float_bits(value), show_float)


def row_problem(layout: Layout, kind: str, target: torch.Tensor, weight: torch.Tensor | None,
                options: LossOptions, batch_shape: tuple, local_classes: int, dtype: torch.dtype,
                device: torch.device, num_items: Any) -> RowProblem:
    """After the handshake: the targets as rows, checked against the global vocabulary."""
    labels = target.reshape(-1).to(torch.int64) if kind == "index" else None
    check_against_vocabulary(layout, labels, weight, options, batch_shape)
    rows = math.prod(batch_shape)
    probs = None if kind == "index" else target.reshape(rows, local_classes)
    return RowProblem(layout, labels, probs, weight, options, dtype, device, rows, num_items)


def check_against_vocabulary(layout: Layout, labels: torch.Tensor | None, weight: torch.Tensor | None,
                             options: LossOptions, batch_shape: tuple) -> None:
    """The checks that need the global vocabulary size; the handshake made their inputs equal everywhere."""
    vocab = layout.total
    if vocab == 0:
        raise ValueError(f"the vocabulary is empty: every rank's slice has 0 classes (sizes {list(layout.sizes)})")
    if labels is not None and labels.numel():
        spec.check_labels(xp, labels.reshape(batch_shape), vocab, options.ignore_index)
    if weight is not None:
        spec.check_weight(xp, weight, vocab)
