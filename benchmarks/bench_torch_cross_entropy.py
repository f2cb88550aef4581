"""Cross-entropy forward + backward in torch: softxent.torch beside torch eager and torch.compile.

Every provider runs `loss = f(logits, target); loss.backward()` on logits that require grad, with the
default options ("mean", class-index targets), each in a fresh process (harness.py), and drops the
gradient before returning. Peak extra memory is over the logits and targets, which exist before the
call, and includes the gradient: one logits-sized buffer is the least a provider can allocate
(softxent-inplace writes it into the logits: zero; its timing includes restoring the logits).

`machine-floor` is what no loss returning a new gradient can beat on this machine, measured in the same
run: allocate a gradient-sized buffer, copy the logits into it and make one exp pass over it (its ratio
column is floor / softxent: softxent's time over the floor is the inverse). The allocation is part of
it: the first touch of a fresh buffer's pages costs about as much as the copy on the CPU.

On the GPU the peers are torch eager, torch.compile, and Liger-Kernel when installed; bytes moved per
call: read the logits once and write the gradient once, 2 * N * C * itemsize.
"""

import torch

from harness import Unavailable, main, smoke_run

CASES = {
    "4096x32000-float32": {"rows": 4096, "classes": 32000, "dtype": "float32"},
    "8192x128256-bfloat16": {"rows": 8192, "classes": 128256, "dtype": "bfloat16"},
}
QUICK = {"256x1000-float32": {"rows": 256, "classes": 1000, "dtype": "float32"}}


def _inputs(case, device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(case["rows"], case["classes"], generator=g).mul_(3).to(getattr(torch, case["dtype"]))
    target = torch.randint(0, case["classes"], (case["rows"],), generator=g)
    return logits.to(device).requires_grad_(), target.to(device)


def _runner(loss_fn, case, device):
    logits, target = _inputs(case, device)

    def run():
        loss = loss_fn(logits, target)
        loss.backward()
        # drop the gradient inside the call: the peak then counts it, and the next call's baseline does not
        logits.grad = None
        return loss

    return run


def make_softxent(case, device):
    import softxent.torch as sxt

    return _runner(sxt.cross_entropy, case, device)


def make_softxent_inplace(case, device):
    import softxent.torch as sxt

    logits, target = _inputs(case, device)
    data = logits.detach().clone()

    def run():
        # each call destroys the logits (they become the gradient): the restoring copy is timed too
        with torch.no_grad():
            logits.copy_(data)
        loss = sxt.cross_entropy(logits, target, inplace_grad=True)
        loss.backward()
        logits.grad = None
        return loss

    return run


def make_torch(case, device):
    return _runner(torch.nn.functional.cross_entropy, case, device)


def make_torch_compile(case, device):
    if device == "cpu" and smoke_run():
        # inductor's C++ build of the graph alone takes longer than the rest of `softxent bench --quick`
        raise Unavailable("not compiled under --quick on the CPU (the compile takes ~15 s); run without --quick")
    compiled = torch.compile(torch.nn.functional.cross_entropy, dynamic=False)
    return _runner(compiled, case, device)


def make_floor(case, device):
    logits, _ = _inputs(case, device)
    logits = logits.detach()

    from softxent._torch.memory import empty_like  # noqa: PLC0415 - only this provider needs it

    def run():
        # a new gradient, as autograd hands one back, allocated as softxent allocates its own (huge pages
        # advised): the floor is then the copy and the exp, not 4 KiB page faults (on this machine's VM
        # the faults of a fresh 500 MB buffer alone cost more than the exp pass)
        grad = empty_like(logits)
        grad.copy_(logits)  # read the logits once, write the gradient once
        return grad.exp_()  # and one exp pass

    return run


def make_liger(case, device):
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except ImportError:
        raise Unavailable("liger-kernel not installed") from None
    if device != "cuda":
        raise Unavailable("Liger-Kernel runs on CUDA only")
    return _runner(liger_cross_entropy, case, device)


def describe(case, row):
    itemsize = torch.empty((), dtype=getattr(torch, case["dtype"])).element_size()
    logits_bytes = case["rows"] * case["classes"] * itemsize
    return {"logits_bytes": logits_bytes, "peak_over_logits": row["peak_extra_bytes"] / logits_bytes,
            "gb_per_s": 2 * logits_bytes / row["time_s"] / 1e9}


if __name__ == "__main__":
    main("torch_cross_entropy", CASES, QUICK,
         {"softxent": make_softxent, "softxent-inplace": make_softxent_inplace, "torch-eager": make_torch,
          "torch-compile": make_torch_compile, "liger": make_liger, "machine-floor": make_floor}, describe=describe)
