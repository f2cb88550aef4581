"""Cross-entropy loss and its gradient on the CPU: softxent's NumPy layer beside torch eager.

softxent computes both in one call (`return_grad=True`); torch runs forward then backward.
"""

import numpy as np

from harness import Unavailable, main

CASES = {"4096x32000-float32": {"rows": 4096, "classes": 32000, "dtype": "float32"}}
QUICK = {"256x1000-float32": {"rows": 256, "classes": 1000, "dtype": "float32"}}


def _inputs(case):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((case["rows"], case["classes"]), dtype=np.float32) * 3).astype(case["dtype"])
    return logits, rng.integers(0, case["classes"], case["rows"])


def make_softxent(case, device):
    import softxent as sx

    logits, target = _inputs(case)
    return lambda: sx.cross_entropy(logits, target, return_grad=True)


def make_torch(case, device):
    try:
        import torch
    except ImportError:
        raise Unavailable("torch not installed") from None
    logits, target = _inputs(case)
    logits = torch.from_numpy(logits).requires_grad_()
    target = torch.from_numpy(target)

    def run():
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        grad, logits.grad = logits.grad, None  # returned, not kept: the next run's baseline starts clean
        return loss, grad

    return run


if __name__ == "__main__":
    main("numpy_cross_entropy", CASES, QUICK, {"softxent": make_softxent, "torch-eager": make_torch})
