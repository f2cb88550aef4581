"""Vocab-parallel linear layer + cross-entropy: the LLM head split across ranks, its logits in chunks."""

from __future__ import annotations

from typing import Any

import torch

from softxent import _validation as v
from softxent._torch import distributed_args as _args
from softxent._torch.collectives import Communicator, Field, dtype_code, fingerprint, show_dtype, \
    show_fingerprint
from softxent.ops.cross_entropy import spec
from softxent.ops.cross_entropy.distributed_rows import RowProblem, compute_dtype

NAME = "vocab_parallel_linear_cross_entropy"
# the default chunk holds about this many logits (32 MiB in float32), as the NumPy layer's
_CHUNK_ELEMENTS = 1 << 23


def vocab_parallel_linear_cross_entropy(input: torch.Tensor, local_weight: torch.Tensor, target: torch.Tensor,
                                        *, local_bias: torch.Tensor | None = None, group: Any = None,
                                        weight: torch.Tensor | None = None, ignore_index: int = -100,
                                        reduction: str = "mean", label_smoothing: float = 0.0,
                                        z_loss: float = 0.0, num_items: Any = None, chunk_size: int | None = None,
                                        reduce_input_grad: bool = True, timeout: Any = None) -> torch.Tensor:
    """Cross-entropy of a vocab-parallel linear layer, ``cross_entropy(input @ W.T + b, target)``, chunked.

    The LLM head split by vocabulary (tensor parallelism): every rank holds the same `input` (n, D) and
    the rows [start_r, start_r + V_r) of the layer's weight W (V, D) and bias. The result equals the
    single-process ``softxent.linear_cross_entropy(input, W, target, bias=b, ...)`` on the whole layer, and
    each rank gets the gradients of its slice of W and b, and (with `reduce_input_grad`) of `input`.
    Semantics of the options: as `vocab_parallel_cross_entropy`, whose statistics and combination this
    shares.

    Memory: this rank's logits (n, V_r) are never held at once. The forward computes them `chunk_size`
    rows at a time, reduces each chunk to its row statistics and drops it; the backward computes each
    chunk again and turns it, in place, into its gradient, which goes into the input's and the weight's
    gradients before the next chunk (Wijmans et al. 2024 make the same trade on one device). When all
    rows fit in one chunk, that chunk is kept from the forward to the backward instead of recomputed.
    Gradients of a 16-bit weight and bias are accumulated in float32.

    Communication per call, P ranks, n rows, D features:

    - forward: the 2 all-gathers of `vocab_parallel_cross_entropy` (256 bytes per rank for the handshake;
      3 or 4 values per row per rank, float32 or float64, for the statistics).
    - backward: 1 all-reduce (sum) of the input gradient, n x D values in the input's dtype, when `input`
      requires grad and `reduce_input_grad` is True: each rank's slice contributes its part of dL/dinput.
      Megatron-LM leaves that sum to the layer before (its "copy to tensor-parallel region"); if yours
      does too, pass ``reduce_input_grad=False`` and each rank gets its own partial input gradient.

    Args:
        input: the layer's input (..., D), the same on every rank (checked by fingerprint).
        local_weight: this rank's rows of the layer's weight, (V_r, D), the dtype of `input`.
        target: global class ids with shape ``input.shape[:-1]``, the same on every rank; or this rank's
            slice of probability targets, shape ``input.shape[:-1] + (V_r,)``.
        local_bias: this rank's entries of the layer's bias, (V_r,), or None.
        group, weight, ignore_index, reduction, label_smoothing, z_loss, num_items, timeout: as
            `vocab_parallel_cross_entropy` (`weight` holds the class weights of the whole vocabulary).
        chunk_size: rows of logits per chunk; None picks about 8M logits per chunk.
        reduce_input_grad: sum the input gradient over the group in the backward (see above).

    Returns:
        The loss, the same on every rank, in the dtype of `input`.

    Example (one process; with P processes each passes its rows ``W[start:stop]``):
        >>> import os, tempfile, torch, torch.distributed as dist
        >>> from softxent.torch.distributed import vocab_parallel_linear_cross_entropy
        >>> store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
        >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> loss = vocab_parallel_linear_cross_entropy(x, w, torch.tensor([0, 2]), chunk_size=1)
        >>> bool(torch.isclose(loss, torch.nn.functional.cross_entropy(x @ w.T, torch.tensor([0, 2]))))
        True
        >>> dist.destroy_process_group()

    References:
        Shoeybi et al. 2019, "Megatron-LM"; Wijmans et al. 2024, "Cut your losses in large-vocabulary
        language models".
    """
    comm = Communicator(group, None, NAME)  # a bad group raises here, before any communication
    error, fields, local_classes, device = None, [], 0, comm.device_for(input)
    try:
        options = _args.local_options(comm, timeout, ignore_index=ignore_index, reduction=reduction,
                                      label_smoothing=label_smoothing, z_loss=z_loss)
        chunk_size = v.check_chunk_size(chunk_size)
        num_items = spec.check_num_items(num_items, options.reduction)
        if not isinstance(reduce_input_grad, bool):
            raise TypeError(f"reduce_input_grad must be a bool; got {type(reduce_input_grad).__name__}")
        x, w, b = _checked_layer(input, local_weight, local_bias)
        batch_shape = tuple(x.shape[:-1])
        local_classes = w.shape[0]
        kind = _args.checked_target(target, batch_shape + (local_classes,), x, "the logits input @ local_weight.T")
        weight = _args.checked_class_weight(weight, x, "input")
        fields = [
            Field("the dtype of input", dtype_code(x.dtype), show_dtype),
            Field("the number of features, input.shape[-1]", x.shape[-1]),
            Field("whether local_bias is given", int(b is not None), lambda c: "yes" if c else "no"),
            Field("input (every rank must hold the same activations)", fingerprint(x), show_fingerprint),
            # the backward all-reduces the input gradient: every rank must take part, or none
            Field("whether the input gradient is summed over the group (input.requires_grad and "
                  "reduce_input_grad)", int(x.requires_grad and reduce_input_grad)),
            *_args.common_fields(batch_shape, kind, target, weight, options, num_items)]
    except (ValueError, TypeError) as err:
        error = err
    layout = comm.handshake(local_classes, fields, error, device)

    problem = _args.row_problem(layout, kind, target, weight, options, batch_shape, local_classes, x.dtype,
                                x.device, num_items)
    rows = problem.num_rows
    chunk = min(chunk_size or max(1, _CHUNK_ELEMENTS // max(1, local_classes)), max(1, rows))
    plan = _Plan(comm, problem, batch_shape, chunk, reduce_input_grad)
    return _VocabParallelLinearCrossEntropy.apply(x, w, b, plan)


class _Plan:
    """The group, the row problem, the chunking, and the logits kept when one chunk holds every row."""

    def __init__(self, comm: Communicator, problem: RowProblem, batch_shape: tuple, chunk: int,
                 reduce_input_grad: bool):
        self.comm, self.problem, self.batch_shape = comm, problem, batch_shape
        self.chunk, self.reduce_input_grad = chunk, reduce_input_grad
        self.kept_logits: torch.Tensor | None = None

    def chunks(self):
        for start in range(0, self.problem.num_rows, self.chunk):
            yield slice(start, min(start + self.chunk, self.problem.num_rows))


def _logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """x @ w.T + b for one chunk of rows, in the compute dtype (16-bit products are widened after)."""
    z = x @ w.t() if b is None else torch.addmm(b, x, w.t())
    return z.to(dtype)


def vocab_parallel_linear_cross_entropy_forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                                                plan: _Plan, keep: bool) -> torch.Tensor:
    """The loss: chunk by chunk logits -> row statistics, one all-gather, the combination."""
    problem = plan.problem
    rows2d = x.reshape(problem.num_rows, x.shape[-1])
    stats = torch.empty((problem.num_rows, problem.width), dtype=problem.dtype, device=x.device)
    single = plan.chunk >= problem.num_rows
    for rows in plan.chunks():
        z = _logits(rows2d[rows], w, b, problem.dtype)
        stats[rows] = problem.local_stats(z, rows)  # works on its own copy: z is left intact
        if keep and single:
            plan.kept_logits = z  # the only chunk: keep it for the backward rather than compute it again
    gathered = plan.comm.all_gather(stats, "statistics all-gather")
    losses = problem.combine(gathered)
    return problem.reduce(losses, plan.batch_shape, x.dtype)


def vocab_parallel_linear_cross_entropy_backward(grad_output: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                                                 b: torch.Tensor | None, plan: _Plan, needs: tuple):
    """(dx, dw, db) chunk by chunk: logits again (or kept), their gradient in place, three products."""
    problem = plan.problem
    rows2d = x.reshape(problem.num_rows, x.shape[-1])
    scale = problem.row_scale(grad_output)
    accumulate = compute_dtype(w.dtype)  # float32 sums for a 16-bit weight
    dx = torch.empty_like(rows2d) if needs[0] else None
    dw = torch.zeros(w.shape, dtype=accumulate, device=w.device) if needs[1] else None
    db = torch.zeros(w.shape[0], dtype=accumulate, device=w.device) if needs[2] and b is not None else None
    for rows in plan.chunks():
        # 1. this chunk's logits, from the forward when it kept them (used once: a second backward recomputes)
        z, plan.kept_logits = plan.kept_logits, None
        if z is None:
            z = _logits(rows2d[rows], w, b, problem.dtype)
        # 2. overwrite them with d(loss)/d(logits)
        grad = problem.gradient(z, rows, scale, out=z)
        # 3. fold the chunk into the layer's gradients
        if dx is not None:
            dx[rows] = grad.to(w.dtype) @ w
        if dw is not None:
            dw.addmm_(grad.t(), rows2d[rows].to(accumulate))
        if db is not None:
            db += grad.sum(dim=0)
    if dx is not None and plan.reduce_input_grad:
        plan.comm.all_reduce_sum(dx, "input-gradient all-reduce")  # dL/dx = sum over slices of grad_r @ W_r
    return (None if dx is None else dx.reshape(x.shape),
            None if dw is None else dw.to(w.dtype),
            None if db is None else db.to(b.dtype))


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, plan: _Plan) -> torch.Tensor:
        ctx.save_for_backward(x, w, b)
        ctx.plan = plan
        keep = x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)
        return vocab_parallel_linear_cross_entropy_forward(x, w, b, plan, keep)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, w, b = ctx.saved_tensors
        grads = vocab_parallel_linear_cross_entropy_backward(grad_output, x, w, b, ctx.plan,
                                                             ctx.needs_input_grad[:3])
        return (*grads, None)


def _checked_layer(input: Any, local_weight: Any, local_bias: Any):
    x = _args.floating(input, "input")
    w = _args.floating(local_weight, "local_weight")
    if x.dim() < 1:
        raise ValueError("input must have at least one dimension (the features); got a scalar")
    if w.dim() != 2 or w.shape[1] != x.shape[-1]:
        raise ValueError(f"local_weight must have shape (V_local, {x.shape[-1]}) to match input's last "
                         f"dimension; got shape {tuple(w.shape)}")
    if w.dtype != x.dtype:
        raise TypeError(f"local_weight must have the dtype of input, {x.dtype}; got {w.dtype}")
    _args.same_device(w, x, "local_weight", "input")
    if local_bias is not None:
        b = _args.floating(local_bias, "local_bias")
        v.check_same_shape((w.shape[0],), tuple(b.shape), "local_weight's first dimension", "local_bias")
        if b.dtype != x.dtype:
            raise TypeError(f"local_bias must have the dtype of input, {x.dtype}; got {b.dtype}")
        _args.same_device(b, x, "local_bias", "input")
        return x, w, b
    return x, w, None
