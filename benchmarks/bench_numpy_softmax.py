"""softmax forward on the CPU: softxent's NumPy layer beside scipy.special.softmax and torch.softmax."""

import numpy as np

from harness import Unavailable, main

# tiny, a classifier, a bigger batch, an LLM-sized vocabulary (the shapes of bench_numpy_cross_entropy.py)
CASES = {f"{rows}x{classes}-float32": {"rows": rows, "classes": classes, "dtype": "float32"}
         for rows, classes in ((32, 10), (256, 1000), (1024, 1000), (2048, 32000), (4096, 32000))}
QUICK = {"256x1000-float32": {"rows": 256, "classes": 1000, "dtype": "float32"}}


def _scores(case):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((case["rows"], case["classes"]), dtype=np.float32) * 3).astype(case["dtype"])


def make_softxent(case, device):
    import softxent as sx

    x = _scores(case)
    return lambda: sx.softmax(x)


def make_scipy(case, device):
    try:
        from scipy.special import softmax
    except ImportError:
        raise Unavailable("scipy not installed") from None
    x = _scores(case)
    return lambda: softmax(x, axis=-1)


def make_torch(case, device):
    try:
        import torch
    except ImportError:
        raise Unavailable("torch not installed") from None
    x = torch.from_numpy(_scores(case))
    return lambda: torch.softmax(x, dim=-1)


if __name__ == "__main__":
    main("numpy_softmax", CASES, QUICK, {"softxent": make_softxent, "scipy": make_scipy, "torch": make_torch})
