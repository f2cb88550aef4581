"""Vocab-parallel cross-entropy: the vocabulary split across ranks, the loss of the full vocabulary."""

from __future__ import annotations

from typing import Any

import torch

from softxent._torch import distributed_args as _args
from softxent._torch.collectives import Communicator, Field, checked_timeout, dtype_code, show_dtype
from softxent.ops.cross_entropy import spec
from softxent.ops.cross_entropy.distributed_rows import RowProblem

NAME = "vocab_parallel_cross_entropy"
# rows per chunk hold about this many logits (4 MiB in float32): the working set of the row kernel
# stays in cache-sized pieces, and the temporaries never grow with the number of rows
_CHUNK_ELEMENTS = 1 << 20


def vocab_parallel_cross_entropy(local_logits: torch.Tensor, target: torch.Tensor, *, group: Any = None,
                                 weight: torch.Tensor | None = None, ignore_index: int = -100,
                                 reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                                 num_items: Any = None, timeout: Any = None) -> torch.Tensor:
    """Cross-entropy over a vocabulary split across the ranks of `group`, without gathering the logits.

    Rank r of the group holds the logits of classes [start_r, start_r + V_r): a contiguous slice, in rank
    order, of any size (uneven and empty slices allowed; the offsets are learned in the handshake). The
    result equals, on every rank, ``softxent.cross_entropy(full_logits, target, ...)`` on the logits of
    the whole vocabulary V = sum_r V_r, and each rank's gradient is that loss's gradient restricted to
    its slice. With a = the target's coefficients (class index t: ``(1 - e) w_t [j = t] + (e / V) w_j``;
    probabilities p: ``((1 - e) p_j + e / V) w_j``), the loss of a row is
    ``sum_j a_j (lse - z_j) + z_loss * lse**2`` with ``lse = log sum_j exp z_j`` over all V classes:

    - `label_smoothing` e spreads its mass over the *global* vocabulary, e / V on each class (Megatron-LM
      spreads it over the local slice only, which changes the loss with the number of ranks).
    - `weight` w (global, one value per class of the whole vocabulary) and ``"mean"`` follow PyTorch:
      "mean" divides by ``sum w_t`` over the rows not ignored (probability targets: the number of rows).
    - `z_loss` adds ``z_loss * lse**2`` per row not ignored (PaLM), unweighted, normalised as the rest.
    - A row whose target is `ignore_index`, or whose logits are -inf on every rank, contributes 0 and a
      zero gradient (the latter is counted by "mean"); every row ignored with "mean" gives 0 (PyTorch:
      NaN). Labels outside [0, V) other than `ignore_index` raise ValueError on every rank.

    Communication per call, P ranks, n rows (the product of ``local_logits.shape[:-1]``); nothing of
    size n x V is ever sent:

    - forward: 2 all-gathers. (1) the handshake: 32 int64 per rank (256 bytes sent, 256 P received);
      (2) the row statistics (max, sum of exp, target penalty; plus the coefficient total for
      probability targets): k = 3 (class indices) or 4 (probabilities) values per row, in float32
      (float64 for float64 logits), i.e. 12 n bytes sent and 12 n P received per rank for float32
      class-index targets. Megatron-LM's equivalent runs 3 all-reduces of n values and no fault check.
    - backward: no communication.
    - only when some rank's arguments fail its checks: one more all-gather of 1 KiB per rank, to share
      the error message before every rank raises it.

    Faults: every rank raises the same ValueError or TypeError, naming the rank and the argument, when a
    rank's arguments are invalid or ranks disagree on shapes, dtypes, options, targets or class weights
    (compared exactly by fingerprints): the handshake is a fixed-size collective, so no rank waits
    forever for another with other sizes. A rank that does not take part at all is caught by `timeout`:
    CollectiveError (a RuntimeError) on the waiting ranks; the group is then unusable (gloo closes it).

    Args:
        local_logits: this rank's logits, shape (..., V_r): classes last (the LLM layout; for 2-D input the
            same as torch's (N, C)); float16/bfloat16 are accumulated in float32 (result in their dtype).
        target: global class ids with shape ``local_logits.shape[:-1]``, the same tensor on every rank;
            or this rank's slice of probability targets, the shape of `local_logits` (no gradient flows
            into probability targets).
        group: the process group the vocabulary is split over; None for the default (world) group.
        weight: per-class weights of the whole vocabulary, shape (V,), the same on every rank; or None.
        ignore_index, reduction, label_smoothing, z_loss: as ``softxent.cross_entropy``; `reduction` is
            ``"none"`` (per-row losses of shape ``local_logits.shape[:-1]``), ``"mean"`` or ``"sum"``.
        num_items: with ``"mean"``, divide by this (an int or a 0-d tensor, the same on every rank of this
            group) instead: the global count of target tokens over micro-batches and data-parallel ranks
            (`global_num_items`).
        timeout: seconds (or a datetime.timedelta) that each collective of this call may wait for the
            other ranks; None for the group's own timeout. A gloo group that timed out is closed.

    Returns:
        The loss, the same on every rank, in the dtype of `local_logits`; differentiable w.r.t. it.

    Example (one process; with P processes each passes its slice ``full_logits[..., start:stop]``):
        >>> import os, tempfile, torch, torch.distributed as dist
        >>> from softxent.torch.distributed import vocab_parallel_cross_entropy
        >>> store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
        >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        >>> logits = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
        >>> loss = vocab_parallel_cross_entropy(logits, torch.tensor([2]))
        >>> round(loss.item(), 4)                                        # -log 0.665
        0.4076
        >>> loss.backward(); logits.grad                                 # softmax - onehot
        tensor([[ 0.0900,  0.2447, -0.3348]])
        >>> dist.destroy_process_group()

    References:
        Shoeybi et al. 2019, "Megatron-LM", section 3 (the vocab-parallel loss); Blanchard, Higham & Higham
        2021, "Accurately computing the log-sum-exp and softmax functions"; Chowdhery et al. 2022, "PaLM"
        (z-loss).
    """
    comm = Communicator(group, None, NAME)  # a bad group raises here, before any communication
    error, fields, local_classes, device = None, [], 0, comm.device_for(local_logits)
    try:
        options = _args.local_options(comm, timeout, ignore_index=ignore_index, reduction=reduction,
                                      label_smoothing=label_smoothing, z_loss=z_loss)
        num_items = spec.check_num_items(num_items, options.reduction)
        logits = _args.checked_local_logits(local_logits)
        kind = _args.checked_target(target, tuple(logits.shape), logits, "local_logits")
        weight = _args.checked_class_weight(weight, logits, "local_logits")
        batch_shape = tuple(logits.shape[:-1])
        local_classes = logits.shape[-1]
        fields = [Field("the dtype of local_logits", dtype_code(logits.dtype), show_dtype),
                  *_args.common_fields(batch_shape, kind, target, weight, options, num_items)]
    except (ValueError, TypeError) as err:
        error = err
    layout = comm.handshake(local_classes, fields, error, device)

    problem = _args.row_problem(layout, kind, target, weight, options, batch_shape, local_classes, logits.dtype,
                                logits.device, num_items)
    return _VocabParallelCrossEntropy.apply(logits, _Plan(comm, problem, batch_shape))


def global_num_items(target: torch.Tensor, *, ignore_index: int = -100, group: Any = None,
                     timeout: Any = None) -> torch.Tensor:
    """The number of target tokens (entries of `target` other than `ignore_index`) summed over `group`.

    Pass it as `num_items` to every micro-batch's loss on every data-parallel rank: the losses then sum
    to the mean over the global batch (Hugging Face's `num_items_in_batch`), and a micro-batch whose
    tokens are all ignored contributes 0, never NaN. Call it on the data-parallel group (not the
    tensor-parallel one, whose ranks hold the same targets). With gradient accumulation, pass the
    concatenation (or the sum of counts) of the step's micro-batches.

    Communication: one all-reduce of one int64.

    Args:
        target: class indices (any integer dtype and shape) on this rank.
        ignore_index: the label that does not count.
        group: the process group to sum over; None for the world.
        timeout: seconds (or a timedelta) the all-reduce may wait; None for the group's own.

    Returns:
        A 0-d int64 tensor on target's device, the same on every rank.

    Example:
        >>> import os, tempfile, torch, torch.distributed as dist
        >>> from softxent.torch.distributed import global_num_items
        >>> store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
        >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        >>> global_num_items(torch.tensor([[3, -100, 7], [1, 2, -100]]))
        tensor(4)
        >>> dist.destroy_process_group()

    See also: `softxent.torch.cross_entropy` (num_items), `vocab_parallel_cross_entropy`.
    """
    comm = Communicator(group, None, "global_num_items")
    comm.timeout = checked_timeout(timeout)
    from softxent._torch.checks import tensor as _tensor
    from softxent import _validation as v

    target = _tensor(target, "target")
    v.check_integer_labels(target, "target")
    ignore_index = v.check_ignore_index(ignore_index)
    count = (target != ignore_index).sum().to(torch.int64).reshape(())
    comm.all_reduce_sum(count, "num_items all-reduce")
    return count


class _Plan:
    """Everything but the logits that the autograd function needs: the group and the row problem."""

    def __init__(self, comm: Communicator, problem: RowProblem, batch_shape: tuple):
        self.comm, self.problem, self.batch_shape = comm, problem, batch_shape


def _chunks(num_rows: int, num_classes: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, num_classes))
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


def vocab_parallel_cross_entropy_forward(local_logits: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """The loss: per-rank row statistics, one all-gather, the same combination on every rank."""
    problem = plan.problem
    z = local_logits.reshape(problem.num_rows, local_logits.shape[-1])
    stats = torch.empty((problem.num_rows, problem.width), dtype=problem.dtype, device=z.device)
    for rows in _chunks(*z.shape):
        stats[rows] = problem.local_stats(z[rows], rows)
    gathered = plan.comm.all_gather(stats, "statistics all-gather")
    losses = problem.combine(gathered)
    return problem.reduce(losses, plan.batch_shape, local_logits.dtype)


def vocab_parallel_cross_entropy_backward(grad_output: torch.Tensor, local_logits: torch.Tensor,
                                          plan: _Plan) -> torch.Tensor:
    """d(loss)/d(local_logits), chunk by chunk, without communication."""
    problem = plan.problem
    z = local_logits.reshape(problem.num_rows, local_logits.shape[-1])
    scale = problem.row_scale(grad_output)
    grad = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    direct = z.dtype == problem.dtype  # write straight into the result, else through a compute-dtype chunk
    for rows in _chunks(*z.shape):
        if direct:
            problem.gradient(z[rows], rows, scale, out=grad[rows])
        else:
            grad[rows] = problem.gradient(z[rows], rows, scale)
    return grad.reshape(local_logits.shape)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local_logits: torch.Tensor, plan: _Plan) -> torch.Tensor:
        ctx.save_for_backward(local_logits)  # the logits themselves: nothing of their size is allocated
        ctx.plan = plan
        return vocab_parallel_cross_entropy_forward(local_logits, plan)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (local_logits,) = ctx.saved_tensors
        return vocab_parallel_cross_entropy_backward(grad_output, local_logits, ctx.plan), None
