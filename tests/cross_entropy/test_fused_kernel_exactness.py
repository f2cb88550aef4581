"""Regression: the fused CPU kernel was 112 ulp off on float32 gradients with widely spread logits.

It worked float32 logits in float32: d = x - max x rounds there, and exp turns an absolute error of
|d| 2^-24 into that relative error of e^d (40 ulp at d = -40). It now works them in float64 (see
`work_dtype`). The fused kernel is what large problems run; small public calls take other paths, so this
calls the kernel itself. Exact values from mpmath at 40 digits, from the float32 inputs as given; the
target's entry -sum_{j != t} p_j, as rule 11 says it is computed.
"""

import mpmath
import numpy as np
import torch

from softxent._options import LossOptions
from softxent.ops.cross_entropy.torch_cpu import cross_entropy_rows


def _exact(row: list, target: int) -> tuple:
    with mpmath.workdps(40):
        x = [mpmath.mpf(float(v)) for v in row]
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in x))
        p = [mpmath.exp(v - lse) for v in x]
        grad = [p[j] if j != target else -mpmath.fsum(p[k] for k in range(len(p)) if k != j) for j in range(len(p))]
        return float(lse - x[target]), [float(g) for g in grad]


def _ulp(got: float, exact: float) -> float:
    return abs(got - exact) / float(np.spacing(np.float32(abs(exact)))) if exact else abs(got) / 1.4e-45


def test_fused_kernel_is_exact_on_widely_spread_float32_logits():
    g = torch.Generator().manual_seed(0)
    rows, classes = 12, 50
    sign = torch.where(torch.rand(rows, classes, generator=g) > 0.5, 1.0, -1.0)
    logits = ((torch.rand(rows, classes, generator=g) * 40 + 20) * sign).float()
    target = torch.randint(0, classes, (rows,), generator=g)
    grad = torch.empty_like(logits)
    losses, _ = cross_entropy_rows(logits, target, None, LossOptions(), grad_scale=1.0, grad_out=grad)
    worst_loss = worst_grad = 0.0
    for i in range(rows):
        loss, row_grad = _exact(logits[i].tolist(), int(target[i]))
        worst_loss = max(worst_loss, _ulp(float(losses[i]), loss))
        worst_grad = max(worst_grad, max(_ulp(float(a), b) for a, b in zip(grad[i].tolist(), row_grad)))
    assert worst_loss <= 2 and worst_grad <= 4, (worst_loss, worst_grad)
