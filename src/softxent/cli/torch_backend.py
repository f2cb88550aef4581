"""`softxent train --backend torch`: the same models and optimiser as the NumPy backend, on softxent.torch.

The loss is `softxent.torch.linear_cross_entropy(h, W, y, linear_bias=b)` (autograd does the rest,
hidden layer included); the optimiser is torch.optim.Adam with the L2 penalty as `weight_decay` on the
weights only, which adds ``l2 * w`` to the gradient exactly as models.Adam does. Both backends start
from the same weights (models.init_params), see the same batches and step sizes, and compute in float64,
so each step agrees to rounding (~1e-16).

Over a whole run, softmax regression stays that close (its objective is convex: differences do not
grow). The MLP's do grow: during the large early steps training is sensitive to its starting point, as
any non-convex run is, so a difference in the last bit grows to ~1e-7 in the weights, and a ReLU unit
then sits on either side of 0 for some row in the two runs. On the digits, the defaults end with test
cross-entropies that agree to ~1e-7 relative and the same accuracy; the NumPy backend started one ulp away
from itself ends just as far from its own run.
"""

from __future__ import annotations

import numpy as np

from . import UsageError
from .models import penalised


def load_torch():
    try:
        import torch
    except ImportError:
        raise UsageError("--backend torch needs PyTorch: pip install 'softxent[torch]' "
                         "(or use --backend numpy)") from None
    import softxent.torch as sxt

    return torch, sxt


class TorchBackend:
    name = "torch"

    def __init__(self, model: str, params: dict[str, np.ndarray], l2: float, threads: int | None = None):
        torch, sxt = load_torch()
        self.torch, self.sxt = torch, sxt
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = model
        self.l2 = l2
        self.params = {name: torch.tensor(value, dtype=torch.float64, requires_grad=True)
                       for name, value in params.items()}
        groups = [{"params": [p for n, p in self.params.items() if penalised(n)], "weight_decay": l2},
                  {"params": [p for n, p in self.params.items() if not penalised(n)], "weight_decay": 0.0}]
        self.optimiser = torch.optim.Adam(groups, lr=0.0)

    def _hidden(self, x):
        p = self.params
        return self.torch.relu(self.torch.nn.functional.linear(x, p["w1"], p["b1"]))

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        torch, p = self.torch, self.params
        inputs, target = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)), torch.from_numpy(y)
        if self.model == "softmax":
            loss = self.sxt.linear_cross_entropy(inputs, p["w"], target, linear_bias=p["b"])
        else:
            loss = self.sxt.linear_cross_entropy(self._hidden(inputs), p["w2"], target, linear_bias=p["b2"])
        with torch.no_grad():  # the objective at the weights the gradient is taken at, as models.NumpyModel
            penalty = sum(float((v * v).sum()) for n, v in p.items() if penalised(n))
        for group in self.optimiser.param_groups:
            group["lr"] = lr
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return loss.item() + 0.5 * self.l2 * penalty

    def logits(self, x: np.ndarray) -> np.ndarray:
        torch, p = self.torch, self.params
        with torch.no_grad():
            inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
            if self.model == "softmax":
                out = torch.nn.functional.linear(inputs, p["w"], p["b"])
            else:
                out = torch.nn.functional.linear(self._hidden(inputs), p["w2"], p["b2"])
        return out.numpy()

    def parameters(self) -> dict[str, np.ndarray]:
        return {name: value.detach().numpy().copy() for name, value in self.params.items()}
