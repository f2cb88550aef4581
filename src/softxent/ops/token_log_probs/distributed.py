"""Vocab-parallel token log-probabilities and entropy: the vocabulary split across ranks, never gathered.

Rank r holds the scores y_j = z_j / T of its classes (z the logits; the temperature divides after the
shift). Each rank reduces its slice to four numbers per row, with m_r = max_j y_j and d_j = y_j - m_r:

    m_r                                   the slice's max (-inf for an empty or fully masked slice)
    t_r = sum_j exp(d_j) - 1              without the slice's first maximum's own exp(0) = 1
    u_r = sum_j exp(d_j) (-d_j) >= 0      the slice's part of the entropy
    c_r = -d_t >= 0                       on the rank that holds the target, else 0

One all-gather of these (n x 4 per rank) gives every rank the same table; with M = max_r m_r, r* the
first rank holding it, delta_r = M - m_r >= 0 and a_r = 1 + t_r (0 + t_r for an empty slice):

    S'   = t_{r*} + sum_{r != r*} a_r exp(-delta_r)          L = log1p(S')
    E    = sum_r exp(-delta_r) (u_r + delta_r a_r) / (1 + S')   >= 0, every term >= 0
    log p_t = -(c_owner + delta_owner + L),   H = L + E

sums of terms >= 0 as in the single-process kernel (`softxent.ops.token_log_probs`), so the results
are as exact as there. The backward is local: p_j = exp(d_j - delta_r - L) and the gradient of the
package docstring with -d_j + delta_r for the global -d_j; nothing is communicated.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from softxent import _validation as v
from softxent._options import LossOptions
from softxent._torch import distributed_args as _args
from softxent._torch.collectives import Communicator, Field, dtype_code, fingerprint, float_bits, \
    shape_code, show_dtype, show_fingerprint, show_float
from softxent.ops.cross_entropy.torch_cpu import accumulation_dtype, work_dtype

NAME = "vocab_parallel_token_log_probs"
_CHUNK_ELEMENTS = 1 << 20  # rows per chunk hold about this many logits: cache-sized temporaries
_INF = float("inf")


def vocab_parallel_token_log_probs(local_logits: torch.Tensor, target: torch.Tensor, *, group: Any = None,
                                   temperature: float = 1.0, return_entropy: bool = False,
                                   ignore_index: int = -100, timeout: Any = None):
    """`softxent.torch.token_log_probs` over a vocabulary split across the ranks of `group`.

    Rank r holds the logits of classes [start_r, start_r + V_r), a contiguous slice in rank order of any
    size (uneven and empty slices allowed). Every rank gets the log-probabilities of the target tokens
    (and the entropy) of the whole vocabulary, equal to the single-process result, and the gradient of
    its slice. ``log p_t = -((-d_t) + L)`` and ``H = L + E`` from nonnegative terms (see the module).

    Communication per call, P ranks, n rows: the 256-byte handshake and one all-gather of 4 values per
    row (float64, float32 for 16-bit logits, the working precision that keeps float32 results exact):
    32 n bytes sent per rank (16 n for 16-bit logits). The backward communicates nothing.
    Faults raise the same error on every rank (see `vocab_parallel_cross_entropy`).

    Args:
        local_logits: this rank's logits (..., V_r), classes last.
        target: global class ids of shape ``local_logits.shape[:-1]``, the same on every rank.
        group: the process group; None for the world.
        temperature: divides the scores after the max shift.
        return_entropy: also return the per-row entropy of the full softmax (differentiable).
        ignore_index: extension: rows with this target give 0 and a zero gradient.
        timeout: extension, as `vocab_parallel_cross_entropy`.

    Returns:
        log_probs (float32 for 16-bit logits), or ``(log_probs, entropy)``; the same on every rank.

    Example (one process; with P processes each passes its slice ``full_logits[..., start:stop]``):
        >>> import os, tempfile, torch, torch.distributed as dist
        >>> from softxent.torch.distributed import vocab_parallel_token_log_probs
        >>> store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
        >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        >>> lp, h = vocab_parallel_token_log_probs(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([2]),
        ...                                        return_entropy=True)
        >>> round(lp.item(), 4), round(h.item(), 4)
        (-0.4076, 0.8324)
        >>> dist.destroy_process_group()

    See also: `softxent.torch.token_log_probs`, `vocab_parallel_cross_entropy`.

    References:
        Shoeybi et al. 2019, "Megatron-LM" (the vocab-parallel loss).
    """
    comm = Communicator(group, None, NAME)
    error, fields, local_classes, device = None, [], 0, comm.device_for(local_logits)
    try:
        options = _args.local_options(comm, timeout, ignore_index=ignore_index, temperature=temperature)
        if not isinstance(return_entropy, bool):
            raise TypeError(f"return_entropy must be a bool; got {type(return_entropy).__name__}")
        logits = _args.checked_local_logits(local_logits)
        kind = _args.checked_target(target, tuple(logits.shape), logits, "local_logits")
        if kind != "index":
            raise v.probabilities_target_error(tuple(target.shape), "local_logits")
        batch_shape = tuple(logits.shape[:-1])
        local_classes = logits.shape[-1]
        rows = math.prod(batch_shape)
        fields = [Field("the dtype of local_logits", dtype_code(logits.dtype), show_dtype),
                  Field("the number of rows", rows),
                  Field("the batch shape", shape_code(batch_shape), lambda c: f"shape code {c:#x}"),
                  Field("target (every rank must pass the same global class ids)", fingerprint(target),
                        show_fingerprint),
                  Field("ignore_index", options.ignore_index),
                  Field("temperature", float_bits(options.temperature), show_float),
                  Field("return_entropy", int(return_entropy))]
    except (ValueError, TypeError) as err:
        error = err
    layout = comm.handshake(local_classes, fields, error, device)
    labels = target.reshape(-1).to(torch.int64)
    _args.check_against_vocabulary(layout, labels, None, options, batch_shape)
    # float32 logits worked in float64, as on one process (token_log_probs/torch_cpu.py says why)
    plan = _Plan(comm, layout, labels, options, work_dtype(logits.dtype), batch_shape)
    lp, h = _VocabParallelTokenLogProbs.apply(logits, plan)
    return (lp, h) if return_entropy else lp


class _Plan:
    def __init__(self, comm, layout, labels, options: LossOptions, dtype, batch_shape):
        self.comm, self.layout, self.labels, self.options = comm, layout, labels, options
        self.dtype, self.batch_shape = dtype, batch_shape
        self.kept = labels != options.ignore_index
        self.owned = self.kept & (labels >= layout.start) & (labels < layout.stop)
        self.local_index = torch.where(self.owned, labels - layout.start, torch.zeros_like(labels)).view(-1, 1)
        self.combined = None


def _chunks(num_rows: int, num_classes: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, num_classes))
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


def _shifted(z: torch.Tensor, temperature: float, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d, m, first): d = (z - max z) / T <= 0 with +inf rows at their limit, m = max z / T, the first max."""
    d = z.to(dtype)
    m, first = d.amax(dim=1, keepdim=True), d.argmax(dim=1, keepdim=True)  # not torch.max(dim): slow on the CPU
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    d = d - shift
    infinite = (m == _INF).view(-1)
    if infinite.any():  # +inf entries share the mass: d = 0 there, -inf elsewhere
        d[infinite] = torch.where(d[infinite] == _INF, 0.0, -_INF).to(dtype)
    if temperature != 1.0:
        d = d / temperature
        m = m / temperature
    return d, m, first


def local_stats(z: torch.Tensor, plan: _Plan, rows: slice) -> torch.Tensor:
    """(m, t, u, c) per row of this rank's logits (n_c, V_r), in the compute dtype."""
    n = z.shape[0]
    stats = torch.zeros(n, 4, dtype=plan.dtype, device=z.device)
    if z.shape[1] == 0:
        stats[:, 0] = -_INF
        return stats
    d, m, first = _shifted(z, plan.options.temperature, plan.dtype)
    c = d.gather(1, plan.local_index[rows]).neg()
    stats[:, 3] = torch.where(plan.owned[rows], c.view(-1), 0.0)
    e = torch.exp(d)
    stats[:, 2] = torch.where(e > 0, e * d, 0.0).sum(dim=1).neg()
    e.scatter_(1, first, 0.0)
    stats[:, 0] = m.view(-1)
    stats[:, 1] = e.sum(dim=1)
    return stats


def combine(gathered: torch.Tensor, plan: _Plan):
    """(lp, h) per row (float64) from the gathered (P, n, 4) statistics; keeps what the backward needs."""
    g = gathered.to(torch.float64)
    m, t, u, c = g[..., 0], g[..., 1], g[..., 2], g[..., 3]
    num_rows = m.shape[1]
    rows = torch.arange(num_rows, device=g.device)
    top = m.amax(dim=0)
    at_top = m == top[None, :]
    has = m > -_INF  # a slice holding a finite or +inf max has its own exp(0) = 1
    delta = torch.where(at_top, torch.zeros_like(m), top[None, :] - m)
    weight = torch.where(has, torch.exp(-delta), torch.zeros_like(m))
    a = has.to(torch.float64) + t
    parts = a * weight
    first = at_top.to(torch.int8).argmax(dim=0)
    parts[first, rows] = t[first, rows]
    rest = parts.sum(dim=0)
    log_sum = torch.log1p(rest)
    # a slice far below the max (weight exp(-delta) = 0, delta possibly inf) adds nothing: 0 * inf dropped
    spread = torch.where(weight > 0, weight * (u + delta * a), torch.zeros_like(m)).sum(dim=0) / (1.0 + rest)
    layout = plan.layout
    stops = torch.tensor([layout.starts[r] + layout.sizes[r] for r in range(layout.world)], dtype=torch.int64,
                         device=g.device)
    owner = torch.searchsorted(stops, plan.labels.clamp(min=0), right=True).clamp(max=layout.world - 1)
    lp = -(c.sum(dim=0) + delta[owner, rows] + log_sum)
    live = plan.kept & (top > -_INF)  # a row of -inf logits on every rank carries no information (rule 2)
    lp = torch.where(live, lp, torch.zeros_like(lp))
    h = torch.where(live, log_sum + spread, torch.zeros_like(lp))
    plan.combined = dict(delta=delta[layout.rank], log_sum=log_sum, spread=spread, lp=lp, live=live)
    return lp, h


def gradient(z: torch.Tensor, plan: _Plan, rows: slice, g: torch.Tensor, hg: torch.Tensor | None) -> torch.Tensor:
    """d(sum g lp + sum hg h)/dz for this rank's logits z (n_c, V_r), in z's dtype; no communication."""
    c = plan.combined
    if z.shape[1] == 0:
        return torch.zeros_like(z)
    d, _, _ = _shifted(z, plan.options.temperature, plan.dtype)
    live = c["live"][rows]
    gr = torch.where(live, g[rows], torch.zeros_like(g[rows])).to(plan.dtype).view(-1, 1)
    shift = (c["delta"][rows] + c["log_sum"][rows]).to(plan.dtype).view(-1, 1)
    # -d_j against the global max: -d_j + delta_r >= 0 (clamped where d_j = -inf: p_j = 0 there)
    neg_d = d.clamp(min=torch.finfo(plan.dtype).min).neg() + c["delta"][rows].to(plan.dtype).view(-1, 1)
    p = torch.exp(d - shift)
    grad = -gr * p
    if hg is not None:
        hr = torch.where(live, hg[rows], torch.zeros_like(hg[rows])).to(plan.dtype).view(-1, 1)
        # 0 where p_j = 0: a slice far below the max has delta = inf there, and 0 * inf is dropped
        centred = torch.where(p > 0, p * (neg_d - c["spread"][rows].to(plan.dtype).view(-1, 1)), 0.0)
        grad = grad + hr * centred
    owned = torch.nonzero(plan.owned[rows] & live).view(-1)
    if owned.numel():
        index = plan.local_index[rows][owned]
        # the target's g (1 - p_t) as -g expm1(log p_t): never 1 - p_t by cancellation (rule 11)
        value = -gr[owned] * torch.expm1(c["lp"][rows][owned].to(plan.dtype)).view(-1, 1)
        if hg is not None:
            value = value + hr[owned] * centred[owned].gather(1, index)
        grad[owned] = grad[owned].scatter(1, index, value)
    grad = torch.where(live.view(-1, 1), grad, torch.zeros_like(grad))
    if plan.options.temperature != 1.0:
        grad = grad / plan.options.temperature
    return grad.to(z.dtype)


class _VocabParallelTokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local_logits, plan: _Plan):
        num_rows = plan.labels.numel()
        z = local_logits.reshape(num_rows, local_logits.shape[-1])
        stats = torch.empty(num_rows, 4, dtype=plan.dtype, device=z.device)
        for rows in _chunks(*z.shape):
            stats[rows] = local_stats(z[rows], plan, rows)
        lp, h = combine(plan.comm.all_gather(stats, "statistics all-gather"), plan)
        ctx.save_for_backward(local_logits)
        ctx.plan = plan
        ctx.set_materialize_grads(False)
        out = accumulation_dtype(local_logits.dtype)  # the outputs' dtype, as on one process
        return lp.view(plan.batch_shape).to(out), h.view(plan.batch_shape).to(out)

    @staticmethod
    def backward(ctx, grad_lp, grad_h):
        (local_logits,) = ctx.saved_tensors
        plan = ctx.plan
        if grad_lp is None and grad_h is None:
            return None, None
        num_rows = plan.labels.numel()
        g = torch.zeros(num_rows, dtype=torch.float64, device=local_logits.device) if grad_lp is None \
            else grad_lp.reshape(-1).to(torch.float64)
        hg = None if grad_h is None else grad_h.reshape(-1).to(torch.float64)
        z = local_logits.reshape(num_rows, local_logits.shape[-1])
        grad = torch.empty_like(z)
        for rows in _chunks(*z.shape):
            grad[rows] = gradient(z[rows], plan, rows, g, hg)
        return grad.view(local_logits.shape), None
