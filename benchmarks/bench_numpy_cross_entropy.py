"""Cross-entropy loss and its gradient on the CPU: softxent's NumPy layer beside a naive NumPy loss,
torch eager, and the machine's floor.

softxent computes both in one call (`return_grad=True`); torch runs forward then backward. The naive
NumPy loss is the textbook float32 one (max shift, exp, sum, log, gather; gradient softmax - onehot): the
speed a NumPy user gets by hand, without softxent's exactness (its loss cancels when the target
dominates). `machine-floor` is what no loss can beat on this machine: one copy of the logits into a
gradient-sized buffer and one exp pass over them, measured in the same run (its ratio column is floor /
softxent: softxent's time over the floor is the inverse).
"""

import numpy as np

from harness import Unavailable, main

# tiny, a classifier, a bigger batch, an LLM-sized vocabulary
CASES = {f"{rows}x{classes}-float32": {"rows": rows, "classes": classes, "dtype": "float32"}
         for rows, classes in ((32, 10), (256, 1000), (1024, 1000), (2048, 32000), (4096, 32000))}
QUICK = {"256x1000-float32": {"rows": 256, "classes": 1000, "dtype": "float32"}}


def _inputs(case):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((case["rows"], case["classes"]), dtype=np.float32) * 3).astype(case["dtype"])
    return logits, rng.integers(0, case["classes"], case["rows"])


def make_softxent(case, device):
    import softxent as sx

    logits, target = _inputs(case)
    return lambda: sx.cross_entropy(logits, target, return_grad=True)


def make_naive(case, device):
    logits, target = _inputs(case)
    rows = np.arange(len(target))

    def run():
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(total[:, 0]) - shifted[rows, target])
        grad = e / total
        grad[rows, target] -= 1.0
        grad /= len(target)
        return loss, grad

    return run


def make_floor(case, device):
    logits, _ = _inputs(case)
    out = np.empty_like(logits)

    def run():
        np.copyto(out, logits)  # read the logits once, write a gradient-sized buffer once
        np.exp(out, out=out)  # and one exp pass
        return out

    return run


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
    main("numpy_cross_entropy", CASES, QUICK, {"softxent": make_softxent, "naive-numpy": make_naive,
                                               "torch-eager": make_torch, "machine-floor": make_floor})
