"""The row math of vocab-parallel cross-entropy: per-rank statistics, their combination, the gradient.

Rank r holds the logits z_j of its classes j in [start_r, stop_r). Writing the target as coefficients
a_j >= 0 (class index t: a_j = (1 - e) w_t [j = t] + (e / V) w_j; probabilities p: a_j = ((1 - e) p_j +
e / V) w_j; w = 1 without class weights, e the label smoothing) the loss of a row is (cf. the NumPy spec,
softxent/core/cross_entropy.py)

    loss = sum_j a_j (lse - z_j) + zl * lse**2,   lse = log sum_j exp z_j,

and with A = sum_j a_j its gradient is  dloss/dz_j = (A + 2 zl lse) softmax(z)_j - a_j.  Each rank
reduces its slice to four numbers per row (the last one only for probability targets, since for class
indices every rank can compute it from the global weights):

    m_r = max_j z_j                                   (shift c_r = m_r, or 0 when m_r = +-inf)
    t_r = sum_j exp(z_j - c_r) - 1                    (summed without the maximum's own exp(0) = 1)
    P_r = sum_j a_j (c_r - z_j)  >= 0                 (terms with a_j = 0 dropped: 0 * inf = 0)
    A_r = sum_j a_j

One all-gather of these (rows x 3 or 4 per rank) gives every rank the same table, from which, with M
the largest m_r, r* the first rank holding it and delta_r = M - m_r >= 0,

    S    = t_{r*} + sum_{r != r*} (1 + t_r) exp(-delta_r)        lse = M + log1p(S)
    loss = A log1p(S) + sum_r (P_r + delta_r A_r) + zl lse**2

a sum of terms >= 0, so nothing cancels, and log1p(S) stays exact when one class dominates (Blanchard,
Higham & Higham 2021). The backward needs only lse and A per row: softmax(z)_j = exp(z_j - lse) is
local. Limits follow docs/semantics.md: a row whose logits are all -inf on every rank contributes 0 and a zero
gradient (and is counted by "mean"); +inf logits share the mass equally; NaN propagates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

import array_api_compat.torch as xp

from softxent._options import LossOptions
from softxent.ops.cross_entropy import spec
from softxent._torch.collectives import Layout

_INF = float("inf")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are accumulated in float32 (rule 8 of docs/semantics.md); float32 and float64 as they are."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class _Combined:
    """What the backward needs per row, from the gathered statistics (all (n,) tensors)."""

    lse: torch.Tensor  # compute dtype; 0 in rows whose logits are all -inf (their gradient is zeroed)
    log_sum: torch.Tensor  # float64: log1p(S), the lse relative to the global shift
    shift: torch.Tensor  # float64: the global shift M (0 where M is not finite)
    top: torch.Tensor  # float64: the global maximum itself (+-inf and NaN kept)
    rest: torch.Tensor  # float64: S, the sum of exp(z_j - M) without the global maximum's own 1
    coef_total: torch.Tensor  # float64: A + 2 zl lse, the factor of softmax in the gradient
    kept: torch.Tensor  # bool: rows that carry a gradient (not ignored, not fully masked)
    infinite: torch.Tensor  # int64 indices of rows holding +inf somewhere


class RowProblem:
    """Targets, class weights and options laid out as rows, identical on every rank but for `probs`.

    `labels` are the global class ids (n,) or None; `probs` this rank's slice (n, V_local) of probability
    targets or None; `weight` the global class weights (V,) or None, already checked.
    """

    def __init__(self, layout: Layout, labels: torch.Tensor | None, probs: torch.Tensor | None,
                 weight: torch.Tensor | None, options: LossOptions, dtype: torch.dtype, device: torch.device,
                 num_rows: int, num_items: Any = None):
        self.layout = layout
        self.options = options
        self.num_items = num_items  # "mean"'s global denominator (int or 0-d tensor), or None
        self.labels = labels
        self.probs = probs
        self.num_rows = num_rows
        self.dtype = compute_dtype(dtype)
        self.device = device
        self.weight = None if weight is None else weight.to(device=device, dtype=torch.float64)
        self.local_weight = None if weight is None else \
            self.weight[layout.start:layout.stop].to(self.dtype)
        self.width = 3 if labels is not None else 4  # statistics per row per rank
        vocab = layout.total
        _, self.smooth = spec.smoothing_split(options.label_smoothing, vocab)  # e / V: the uniform share
        if labels is not None:
            coefficients = spec.index_coefficients(xp, labels, self.weight, options, vocab, torch.float64)
            self.kept = coefficients.kept
            self.target_coef = coefficients.target  # a_t, the target's own coefficient
            self.smooth_coef = coefficients.uniform  # e / V on kept rows
            self.owned = self.kept & (labels >= layout.start) & (labels < layout.stop)
            self.local_index = torch.where(self.owned, labels - layout.start, torch.zeros_like(labels))
        else:
            self.kept = torch.ones(num_rows, dtype=torch.bool, device=device)

    # --- reduction -----------------------------------------------------------------------------------

    def denominator(self) -> torch.Tensor | None:
        """What "mean" divides by (the spec's rule, or num_items), or None for "sum" and "none"."""
        if self.options.reduction != "mean":
            return None
        kind = spec.INDEX if self.labels is not None else spec.PROBS
        return spec.mean_denominator(xp, kind, self.labels, self.weight, self.options.ignore_index, self.num_rows,
                                     torch.float64, num_classes=self.layout.total, num_items=self.num_items,
                                     device=self.device)

    def grad_scale(self) -> torch.Tensor:
        return spec.gradient_scale(xp, self.denominator(), torch.float64, self.device)

    def reduce(self, losses: torch.Tensor, batch_shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        if self.options.reduction == "none":
            return losses.reshape(batch_shape).to(dtype)
        return spec.reduce(xp, losses, self.options.reduction, self.denominator()).to(dtype)

    def row_scale(self, grad_output: torch.Tensor) -> torch.Tensor:
        """d(reduced loss)/d(row loss) times the incoming gradient, per row, float64 (n,)."""
        grad = grad_output.to(torch.float64)
        grad = grad.reshape(-1) if self.options.reduction == "none" else grad.expand(self.num_rows)
        return grad * self.grad_scale()

    # --- 1. per-rank statistics ----------------------------------------------------------------------

    def local_stats(self, z: torch.Tensor, rows: slice) -> torch.Tensor:
        """(m, t, P[, A]) per row of this rank's logits z (n_c, V_local), in the compute dtype."""
        n = z.shape[0]
        stats = torch.zeros((n, self.width), dtype=self.dtype, device=z.device)
        if z.shape[1] == 0:  # an empty slice: contributes exp(-inf) = 0 everywhere
            stats[:, 0] = -_INF
            return stats
        # NaN-propagating: a NaN row gets m = NaN; amax + argmax, as torch.max(dim) is 10000x slower on
        # small blocks in torch 2.13 on the CPU (26 ms for 4 x 6)
        m, first = z.amax(dim=1), z.argmax(dim=1)
        m = m.to(self.dtype)
        shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        # 1a. d = z - c <= 0, so exp never overflows; rows holding +inf take their limit (0 there, -inf elsewhere)
        d = z.to(self.dtype) - shift[:, None]
        infinite = torch.nonzero(m == _INF).reshape(-1)
        if infinite.numel():
            d[infinite] = torch.where(z[infinite] == _INF, 0.0, -_INF).to(self.dtype)
        # 1b. P = sum_j a_j (-d_j), every term >= 0, before d is overwritten by exp(d)
        if self.labels is not None:
            penalty = self._index_penalty(d, rows)
        else:
            coef = self._prob_coef(rows)
            stats[:, 3] = coef.sum(dim=1)
            penalty = _weighted_neg_sum(d, coef)
        stats[:, 2] = penalty
        # 1c. t = sum_j exp(d_j) without the maximum's own term (exactly 1), so log1p keeps the tail
        d.exp_()
        d.scatter_(1, first[:, None], 0.0)
        stats[:, 0] = m
        stats[:, 1] = d.sum(dim=1)
        return stats

    def _index_penalty(self, d: torch.Tensor, rows: slice) -> torch.Tensor:
        owned, coef = self.owned[rows], self.target_coef[rows].to(self.dtype)
        target_d = d.gather(1, self.local_index[rows][:, None]).reshape(-1)
        penalty = torch.where(owned & (coef > 0), coef * -target_d, torch.zeros_like(target_d))
        if self.options.label_smoothing:
            smooth = self.smooth_coef[rows].to(self.dtype)
            smooth_sum = _weighted_neg_sum(d, self.local_weight)  # sum_j w_j (-d_j) over this slice
            penalty = penalty + torch.where(smooth > 0, smooth * smooth_sum, torch.zeros_like(smooth_sum))
        return penalty

    def _prob_coef(self, rows: slice) -> torch.Tensor:
        """a_j = ((1 - e) p_j + e / V) w_j for this rank's classes, (n_c, V_local) in the compute dtype."""
        coef = self.probs[rows].to(self.dtype) * (1.0 - self.options.label_smoothing)
        if self.smooth:
            coef += self.smooth
        if self.local_weight is not None:
            coef *= self.local_weight
        return coef

    def rank_coef_totals(self) -> torch.Tensor:
        """A_r for class-index targets, (P, n) float64: each rank's share of sum_j a_j, known everywhere."""
        layout = self.layout
        stops = torch.tensor([layout.starts[r] + layout.sizes[r] for r in range(layout.world)],
                             dtype=torch.int64, device=self.device)
        owner = torch.searchsorted(stops, self.labels.clamp(min=0), right=True).clamp(max=layout.world - 1)
        totals = torch.zeros((layout.world, self.num_rows), dtype=torch.float64, device=self.device)
        totals[owner, torch.arange(self.num_rows, device=self.device)] = self.target_coef
        if self.options.label_smoothing:
            if self.weight is None:
                slice_weight = torch.tensor(layout.sizes, dtype=torch.float64, device=self.device)
            else:
                slice_weight = torch.stack([self.weight[a:a + s].sum() for a, s in zip(layout.starts, layout.sizes)])
            totals += slice_weight[:, None] * self.smooth_coef[None, :]
        return totals

    # --- 2. every rank's statistics -> loss per row ----------------------------------------------------

    def combine(self, gathered: torch.Tensor) -> torch.Tensor:
        """Per-row losses (float64, (n,)) from the gathered statistics (P, n, width); keeps what backward needs."""
        g = gathered.to(torch.float64)
        m, t, penalty = g[..., 0], g[..., 1], g[..., 2]
        coef = g[..., 3] if self.labels is None else self.rank_coef_totals()
        rows = torch.arange(self.num_rows, device=g.device)
        top = m.amax(dim=0)  # M (NaN if any rank saw NaN)
        at_top = m == top[None, :]
        delta = torch.where(at_top, torch.zeros_like(m), top[None, :] - m)  # >= 0; inf for slices far below
        # S = t_{r*} + sum_{r != r*} (1 + t_r) exp(-delta_r): the first maximum's exp(0) = 1 left out
        has_max = (m > -_INF).to(torch.float64)  # a slice of -inf only has no exp(0) term
        parts = (has_max + t) * torch.exp(-delta)
        first = at_top.to(torch.int8).argmax(dim=0)
        parts[first, rows] = t[first, rows]
        rest = parts.sum(dim=0)
        log_sum = torch.log1p(rest)
        coef_total = coef.sum(dim=0)
        shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        finite_lse = shift + log_sum  # for rows holding +inf: the log of how many +inf entries there are
        lse = torch.where(top == _INF, top, finite_lse)

        # loss = A log1p(S) + sum_r (P_r + delta_r A_r): each term >= 0; 0 * inf dropped where A_r = 0
        spread = torch.where(coef > 0, delta * coef, torch.zeros_like(delta))
        losses = coef_total * log_sum + (penalty + spread).sum(dim=0)
        masked = top == -_INF  # every logit of the row -inf on every rank: no information (rule 2)
        kept = self.kept & ~masked
        if self.options.z_loss:
            losses = losses + torch.where(kept, self.options.z_loss * lse * lse, torch.zeros_like(lse))
        losses = torch.where(kept, losses, torch.zeros_like(losses))

        self.combined = _Combined(
            lse=torch.where(masked, torch.zeros_like(lse), lse).to(self.dtype),
            log_sum=log_sum,
            shift=shift,
            top=top,
            rest=rest,
            coef_total=coef_total + 2.0 * self.options.z_loss * finite_lse,
            kept=kept,
            infinite=torch.nonzero(top == _INF).reshape(-1))
        return losses

    # --- 3. the gradient of this rank's slice ---------------------------------------------------------

    def gradient(self, z: torch.Tensor, rows: slice, row_scale: torch.Tensor, *, out: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """d(loss)/dz for this rank's logits z (n_c, V_local): s ((A + 2 zl lse) p_j - a_j), compute dtype.

        `row_scale` (n,) float64 holds d(reduced loss)/d(row loss) times the incoming gradient. `out`, a
        (n_c, V_local) tensor of the compute dtype, receives the gradient (it may be z itself).

        Worked in float64 from the global shift M and S (the sum without the maximum's own 1), never from a
        rounded lse: p_j = exp(z_j - M) / (1 + S) keeps every digit (exp(z - lse) with lse = 1e30 + log 2
        rounded to 1e30 would give p = 1 for two tied entries), and where the target holds the maximum its
        entry s ((F - a_t) - a_t S) / (1 + S) is p_t - 1 as -S / (1 + S), never a cancellation (rule 11).
        """
        c = self.combined
        kept = c.kept[rows]
        s = torch.where(kept, row_scale[rows], torch.zeros_like(row_scale[rows]))
        total = 1.0 + c.rest[rows]
        # 1. softmax(z)_j = exp(z_j - M) / (1 + S): local, the global M and S are all it needs
        grad = z.to(torch.float64) - c.shift[rows][:, None]
        grad.exp_().div_(total[:, None])
        self._fix_infinite(grad, z, rows)
        # 2. times s (A + 2 zl lse), minus s a_j
        factor = s * c.coef_total[rows]
        grad *= factor[:, None]
        if self.labels is not None and self.options.label_smoothing:
            smooth = (s * self.smooth_coef[rows])[:, None]
            grad -= smooth if self.local_weight is None else smooth * self.local_weight.to(torch.float64)
        elif self.labels is None:
            grad -= self._prob_coef(rows).to(torch.float64) * s[:, None]
        if self.labels is not None:
            owned = torch.nonzero(self.owned[rows]).reshape(-1)
            index = self.local_index[rows][owned]
            a_t = self.target_coef[rows][owned]
            grad[owned, index] -= s[owned] * a_t
            # the target at the global maximum (z_t = M, so exp(z_t - M) = 1): the exact entry
            top = c.top[rows][owned]
            at_max = (z[owned, index].to(torch.float64) == top) & torch.isfinite(top)
            exact = s[owned] * ((c.coef_total[rows][owned] - a_t) - a_t * c.rest[rows][owned]) / total[owned]
            if self.options.label_smoothing:
                w_t = torch.ones_like(a_t) if self.weight is None else self.weight[self.labels[rows][owned]]
                exact = exact - s[owned] * self.smooth_coef[rows][owned] * w_t
            grad[owned, index] = torch.where(at_max, exact, grad[owned, index])
        # 3. rows not kept (ignored, or all -inf) get exactly 0, also where exp above gave NaN
        dropped = torch.nonzero(~kept).reshape(-1)
        if dropped.numel():
            grad[dropped] = 0.0
        if out is not None:
            return out.copy_(grad)
        return grad.to(self.dtype)

    def _fix_infinite(self, grad: torch.Tensor, z: torch.Tensor, rows: slice) -> None:
        """Rows holding +inf: softmax is 1/k at each of the k +inf entries (the global count: exp(-log k))."""
        infinite = self.combined.infinite
        if not infinite.numel():
            return
        start = rows.start or 0
        local = infinite[(infinite >= start) & (infinite < start + grad.shape[0])] - start
        for row in local.tolist():
            share = torch.exp(-self.combined.log_sum[start + row])
            grad[row] = torch.where(z[row] == _INF, share, torch.zeros_like(grad[row]))


def _weighted_neg_sum(d: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """sum_j weight_j (-d_j) per row (weight a vector, a matrix or None for ones), with 0 * inf = 0."""
    if weight is None:
        return -d.sum(dim=1)
    sums = -(d @ weight) if weight.dim() == 1 else -(d * weight).sum(dim=1)
    broken = torch.nonzero(torch.isnan(sums)).reshape(-1)
    if broken.numel():  # a -inf logit where the weight is 0: that term is 0 (rule 4); NaN logits stay NaN
        part = d[broken]
        w = weight if weight.dim() == 1 else weight[broken]
        terms = torch.where(w > 0, -part * w, torch.where(torch.isnan(part), part, torch.zeros_like(part)))
        sums[broken] = terms.sum(dim=1)
    return sums
