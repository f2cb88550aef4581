"""The conformance registry: layers, and for each op the callables that run a case in each layer.

A case (`Case`) holds NumPy inputs with the classes on the last axis (every layer's layout for 2-D
inputs), the options, and the upstream gradient. Each op registers (`register`) one callable per layer
kind, each returning a dict of float64 NumPy arrays: "value" and the gradients "d_x", "d_w", "d_b"
(those of upstream . value). The torch callable serves two layers: torch on the CPU, and the Triton
kernels under TRITON_INTERPRET=1 (run inside ``softxent._torch.backend.forced("triton")``). The
distributed callable runs on one rank of a gloo group (in tests/conformance/_conformance_worker.py) on
that rank's slice of the vocabulary and returns that rank's pieces; `merge` says how the ranks' pieces
make the full result ("concat" along the class axis of that array, or "same" on every rank).

Ops with more than one output name them in `values` ("value" first): those are held to the values'
bounds, every other name is a gradient. `distributed_options` are the options an op's distributed form
takes; a case with any other option does not run on the distributed layers.

A new op joins by adding its cases to conformance_cases.py and one `register(Op(...))` here, with its
oracle (tests/conformance/oracle.py).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable

import jax_layer
import numpy as np

# torch-fused: softxent.torch's cross_entropy with its small-problem paths off, so that the fused CPU
# kernel (which large problems run) takes the same small cases (token_log_probs and distillation_loss have
# no small-problem path: their torch layer is the fused CPU kernel at every size)
# jax: softxent.jax (jax_layer.py), when jax is installed
LAYERS = ("numpy", "torch", "torch-fused", "triton", "jax", "dist1", "dist2")
FUSED_OPS = ("cross_entropy",)
WORLD = {"dist1": 1, "dist2": 2}
# options the vocab-parallel losses take (no softcap, temperature: see their signatures)
LOSS_DISTRIBUTED_OPTIONS = frozenset({"weight", "ignore_index", "reduction", "label_smoothing", "z_loss",
                                      "chunk_size"})


@dataclass
class Case:
    op: str
    id: str
    arrays: dict  # NumPy inputs by name ("x", "target", "weight", "w", "b", "teacher") and the upstream
    # gradients ("upstream"; "upstream_entropy" for token_log_probs' entropy)
    options: dict = field(default_factory=dict)
    check: str = "close"  # "ulp": API rule 11's bounds against the exact answer; "close": the tolerance table
    error: tuple | None = None  # (exception type name, words the message must hold): a bad-input case
    layers: tuple = LAYERS  # the layers this case is meant for (an op's `supports` narrows it further)

    @property
    def dtype(self) -> str:
        return str(self.arrays["x"].dtype)

    def sizes(self, world: int, axis_length: int) -> list[int]:
        """The vocabulary split over `world` ranks: as even as can be, the larger part last."""
        base = axis_length // world
        return [base] * (world - 1) + [axis_length - base * (world - 1)]


@dataclass
class Op:
    name: str
    numpy: Callable[[Case], dict]
    torch: Callable[[Case], dict]
    exact: Callable[[Case], dict]  # name -> oracle.Exact
    distributed: Callable[[Case, int, int], dict] | None = None
    jax: Callable[[Case], dict] | None = None
    merge: dict = field(default_factory=lambda: {"value": "same", "d_x": "concat"})
    vocab_axis: dict = field(default_factory=lambda: {"d_x": -1})  # the class axis of each "concat" array
    values: tuple = ("value",)  # the outputs (held to the values' bounds); every other name is a gradient
    distributed_options: frozenset = LOSS_DISTRIBUTED_OPTIONS


OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    OPS[op.name] = op
    return op


def supports(case: Case, layer: str) -> bool:
    """Whether `layer` runs this case: the case's own list, the op's distributed form and its options,
    and Triton's dtypes (float64 stays on the PyTorch path there, which the torch layer already runs)."""
    if layer not in case.layers:
        return False
    op = OPS[case.op]
    if layer == "triton":
        return case.dtype in ("float32", "float16", "bfloat16")
    if layer == "torch-fused":
        return case.op in FUSED_OPS and "torch" in case.layers
    if layer == "jax":
        # float64 runs under jax.enable_x64, a recompile per case: there only the exactness and error cases
        # (the option grid runs in float32), to keep the suite within CI's budget
        light = case.dtype != "float64" or case.check == "ulp" or case.error is not None
        return op.jax is not None and "torch" in case.layers and light and importlib.util.find_spec("jax") is not None
    if layer in WORLD:
        return op.distributed is not None and set(case.options) <= op.distributed_options
    return True


# --- helpers ------------------------------------------------------------------------------------------------

def _f64(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu()
        if str(array.dtype) in ("torch.bfloat16", "torch.float16"):
            array = array.float()
        array = array.numpy()
    return np.asarray(array, dtype=np.float64)


def _tensor(array, requires_grad=False):
    import torch

    if array is None:
        return None
    t = torch.from_numpy(np.array(array))  # a copy; 0-d stays 0-d (ascontiguousarray makes it 1-d)
    return t.requires_grad_(True) if requires_grad else t


def _grad_or_zeros(t):
    import torch

    return _f64(t.grad if t.grad is not None else torch.zeros_like(t))


def _times_upstream(grad: np.ndarray, upstream: np.ndarray, batch_ndim: int) -> np.ndarray:
    """A NumPy layer's gradient of the sum times the upstream gradient, rounded once to its dtype."""
    up = upstream.astype(grad.dtype)
    if up.ndim:
        up = up.reshape(up.shape + (1,) * (grad.ndim - batch_ndim))
    return grad * up


# --- softmax, log_softmax, logsumexp --------------------------------------------------------------------------

def _softmax_numpy(name):
    def run(case: Case) -> dict:
        import softxent as sx

        x, up, T = case.arrays["x"], case.arrays["upstream"], case.options.get("temperature", 1.0)
        if name == "logsumexp":
            value = sx.logsumexp(x, axis=-1)
            grad = _times_upstream(sx.softmax(x, axis=-1), up, 1)  # softmax is the gradient of logsumexp
            return {"value": _f64(value), "d_x": _f64(grad)}
        fn = getattr(sx, name)
        value = fn(x, axis=-1, temperature=T)
        vjp = sx.softmax_grad if name == "softmax" else sx.log_softmax_grad
        grad = vjp(value, up.astype(x.dtype), axis=-1) / x.dtype.type(T)
        if x.size:  # the vjp helpers see probabilities only: masked and +inf rows are constant in x (rule 2)
            grad = np.where(np.isinf(np.max(x, axis=-1, keepdims=True)), 0.0, grad)
        return {"value": _f64(value), "d_x": _f64(grad)}
    return run


def _softmax_torch(name):
    def run(case: Case) -> dict:
        import softxent.torch as sxt

        x = _tensor(case.arrays["x"], requires_grad=True)
        up = _tensor(case.arrays["upstream"].astype(case.arrays["x"].dtype))
        if name == "logsumexp":
            value = sxt.logsumexp(x, dim=-1)
        else:
            value = getattr(sxt, name)(x, dim=-1, temperature=case.options.get("temperature", 1.0))
        value.backward(up)
        return {"value": _f64(value), "d_x": _grad_or_zeros(x)}
    return run


def _softmax_exact(name):
    def exact(case: Case) -> dict:
        from oracle import softmax_family

        x, up = case.arrays["x"], case.arrays["upstream"]
        return softmax_family(x, name, up, case.options.get("temperature", 1.0))
    return exact


for _name in ("softmax", "log_softmax", "logsumexp"):
    register(Op(_name, numpy=_softmax_numpy(_name), torch=_softmax_torch(_name), exact=_softmax_exact(_name),
                jax=jax_layer.run(_name)))


# --- cross_entropy ----------------------------------------------------------------------------------------------

def _ce_numpy(case: Case) -> dict:
    import softxent as sx

    a, opts = case.arrays, case.options
    loss, grad = sx.cross_entropy(a["x"], a["target"], weight=a.get("weight"), return_grad=True, **opts)
    batch = a["x"].ndim - 1 if opts.get("reduction", "mean") == "none" else 0
    return {"value": _f64(loss), "d_x": _f64(_times_upstream(grad, a["upstream"], batch))}


def _ce_torch(case: Case) -> dict:
    import softxent.torch as sxt

    a = case.arrays
    x = _tensor(a["x"], requires_grad=True)
    loss = sxt.cross_entropy(x, _tensor(a["target"]), weight=_tensor(a.get("weight")), **case.options)
    loss.backward(_tensor(a["upstream"].astype(a["x"].dtype)))
    return {"value": _f64(loss), "d_x": _grad_or_zeros(x)}


def _ce_distributed(case: Case, rank: int, world: int) -> dict:
    from softxent.torch.distributed import vocab_parallel_cross_entropy

    a = case.arrays
    sizes = case.sizes(world, a["x"].shape[-1])
    start = sum(sizes[:rank])
    stop = start + sizes[rank]
    local = _tensor(a["x"][..., start:stop], requires_grad=True)
    target = a["target"]
    if np.issubdtype(target.dtype, np.floating):
        target = target[..., start:stop]
    loss = vocab_parallel_cross_entropy(local, _tensor(target), weight=_tensor(a.get("weight")), **case.options)
    loss.backward(_tensor(a["upstream"].astype(a["x"].dtype)))
    return {"value": _f64(loss), "d_x": _grad_or_zeros(local)}


def _ce_exact(case: Case) -> dict:
    from oracle import cross_entropy_family

    a = case.arrays
    return cross_entropy_family(a["x"], a["target"], a["upstream"], weight=a.get("weight"), **case.options)


register(Op("cross_entropy", numpy=_ce_numpy, torch=_ce_torch, exact=_ce_exact, distributed=_ce_distributed,
            jax=jax_layer.run("cross_entropy")))


# --- linear_cross_entropy ----------------------------------------------------------------------------------------

def _linear_numpy(case: Case) -> dict:
    import softxent as sx

    a, opts = case.arrays, case.options
    loss, (dx, dw, db) = sx.linear_cross_entropy(a["x"], a["w"], a["target"], bias=a.get("b"),
                                                 weight=a.get("weight"), return_grad=True, **opts)
    # the upstream factor goes on d(loss)/d(logits) in exact arithmetic; here on each gradient, rounded once
    batch = 1 if opts.get("reduction", "mean") == "none" else 0
    up = a["upstream"]
    out = {"value": _f64(loss)}
    if batch:  # per-row upstream: dx scales by row; dw and db need the per-row logits gradient: not given
        out["d_x"] = _f64(_times_upstream(dx, up, 1))
    else:
        out["d_x"] = _f64(dx * up.astype(dx.dtype))
        out["d_w"] = _f64(dw * up.astype(dw.dtype))
        if db is not None:
            out["d_b"] = _f64(db * up.astype(db.dtype))
    return out


def _linear_torch(case: Case) -> dict:
    import softxent.torch as sxt

    a = case.arrays
    x, w = _tensor(a["x"], requires_grad=True), _tensor(a["w"], requires_grad=True)
    b = _tensor(a.get("b"), requires_grad=True) if a.get("b") is not None else None
    loss = sxt.linear_cross_entropy(x, w, _tensor(a["target"]), linear_bias=b, weight=_tensor(a.get("weight")),
                                    **case.options)
    loss.backward(_tensor(a["upstream"].astype(a["x"].dtype)))
    out = {"value": _f64(loss), "d_x": _grad_or_zeros(x), "d_w": _grad_or_zeros(w)}
    if b is not None:
        out["d_b"] = _grad_or_zeros(b)
    return out


def _linear_distributed(case: Case, rank: int, world: int) -> dict:
    from softxent.torch.distributed import vocab_parallel_linear_cross_entropy

    a = case.arrays
    sizes = case.sizes(world, a["w"].shape[0])
    start = sum(sizes[:rank])
    stop = start + sizes[rank]
    x = _tensor(a["x"], requires_grad=True)
    w = _tensor(a["w"][start:stop], requires_grad=True)
    b = _tensor(a["b"][start:stop], requires_grad=True) if a.get("b") is not None else None
    target = a["target"]
    if np.issubdtype(target.dtype, np.floating):
        target = target[..., start:stop]
    loss = vocab_parallel_linear_cross_entropy(x, w, _tensor(target), local_bias=b, weight=_tensor(a.get("weight")),
                                               **case.options)
    loss.backward(_tensor(a["upstream"].astype(a["x"].dtype)))
    out = {"value": _f64(loss), "d_x": _grad_or_zeros(x), "d_w": _grad_or_zeros(w)}
    if b is not None:
        out["d_b"] = _grad_or_zeros(b)
    return out


def _linear_exact(case: Case) -> dict:
    from oracle import linear_cross_entropy_family

    a = case.arrays
    opts = {k: v for k, v in case.options.items() if k != "chunk_size"}
    return linear_cross_entropy_family(a["x"], a["w"], a.get("b"), a["target"], a["upstream"],
                                       weight=a.get("weight"), **opts)


register(Op("linear_cross_entropy", numpy=_linear_numpy, torch=_linear_torch, exact=_linear_exact,
            jax=jax_layer.run("linear_cross_entropy"),
            distributed=_linear_distributed,
            merge={"value": "same", "d_x": "same", "d_w": "concat", "d_b": "concat"},
            vocab_axis={"d_w": 0, "d_b": 0}))


# --- token_log_probs --------------------------------------------------------------------------------------------
# options: temperature, softcap, ignore_index and return_entropy (True: "entropy" is an output, with the
# upstream gradient "upstream_entropy"); "upstream" is the log-probabilities' upstream gradient

def _token_options(case: Case) -> tuple[dict, bool]:
    options = dict(case.options)
    return options, options.pop("return_entropy", True)


def _token_result(lp, h, grad) -> dict:
    out = {"value": _f64(lp), "d_x": _f64(grad)}
    if h is not None:
        out["entropy"] = _f64(h)
    return out


def _token_numpy(case: Case) -> dict:
    import softxent as sx

    a = case.arrays
    options, entropy = _token_options(case)
    out = sx.token_log_probs(a["x"], a["target"], return_entropy=entropy, return_grad=True,
                             grad_log_probs=a["upstream"], grad_entropy=a["upstream_entropy"] if entropy else None,
                             **options)
    return _token_result(out[0], out[1] if entropy else None, out[-1])


def _token_backward(case: Case, x, outputs, entropy: bool) -> dict:
    """Backward of (lp . upstream + H . upstream_entropy): both outputs' random upstream gradients."""
    import torch

    a = case.arrays
    lp, h = outputs if entropy else (outputs, None)
    ups = [_tensor(a["upstream"]).to(lp.dtype)] + ([_tensor(a["upstream_entropy"]).to(h.dtype)] if entropy else [])
    torch.autograd.backward([lp, h] if entropy else [lp], ups)
    return _token_result(lp, h, _grad_or_zeros(x))


def _token_torch(case: Case) -> dict:
    import softxent.torch as sxt

    options, entropy = _token_options(case)
    x = _tensor(case.arrays["x"], requires_grad=True)
    outputs = sxt.token_log_probs(x, _tensor(case.arrays["target"]), return_entropy=entropy, **options)
    return _token_backward(case, x, outputs, entropy)


def _token_distributed(case: Case, rank: int, world: int) -> dict:
    from softxent.torch.distributed import vocab_parallel_token_log_probs

    options, entropy = _token_options(case)
    sizes = case.sizes(world, case.arrays["x"].shape[-1])
    start = sum(sizes[:rank])
    local = _tensor(case.arrays["x"][..., start:start + sizes[rank]], requires_grad=True)
    outputs = vocab_parallel_token_log_probs(local, _tensor(case.arrays["target"]), return_entropy=entropy,
                                             **options)
    return _token_backward(case, local, outputs, entropy)


def _token_exact(case: Case) -> dict:
    from oracle import token_log_probs_family

    a = case.arrays
    options, entropy = _token_options(case)
    return token_log_probs_family(a["x"], a["target"], a["upstream"], a.get("upstream_entropy"),
                                  return_entropy=entropy, **options)


register(Op("token_log_probs", numpy=_token_numpy, torch=_token_torch, exact=_token_exact,
            distributed=_token_distributed, jax=jax_layer.run("token_log_probs"),
            merge={"value": "same", "entropy": "same", "d_x": "concat"}, values=("value", "entropy"),
            distributed_options=frozenset({"temperature", "ignore_index", "return_entropy"})))


# --- distillation_loss -------------------------------------------------------------------------------------------
# "x" the student's logits, "teacher" the teacher's, "target" (optional) the rows' class indices; options:
# divergence, beta, temperature, ignore_index, reduction, num_items. No distributed or JAX form yet.

def _distill_numpy(case: Case) -> dict:
    import softxent as sx

    a, opts = case.arrays, case.options
    loss, grad = sx.distillation_loss(a["x"], a["teacher"], target=a.get("target"), return_grad=True, **opts)
    batch = a["x"].ndim - 1 if opts.get("reduction", "mean") == "none" else 0
    return {"value": _f64(loss), "d_x": _f64(_times_upstream(grad, a["upstream"], batch))}


def _distill_torch(case: Case) -> dict:
    import softxent.torch as sxt

    a = case.arrays
    x = _tensor(a["x"], requires_grad=True)
    loss = sxt.distillation_loss(x, _tensor(a["teacher"]), target=_tensor(a.get("target")), **case.options)
    loss.backward(_tensor(a["upstream"].astype(a["x"].dtype)))
    return {"value": _f64(loss), "d_x": _grad_or_zeros(x)}


def _distill_exact(case: Case) -> dict:
    from oracle import distillation_family

    a = case.arrays
    return distillation_family(a["x"], a["teacher"], a["upstream"], target=a.get("target"), **case.options)


register(Op("distillation_loss", numpy=_distill_numpy, torch=_distill_torch, exact=_distill_exact))
