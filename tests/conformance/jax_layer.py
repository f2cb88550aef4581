"""The JAX layer in the conformance suite's format (tests/conformance/ops_registry.py).

`run(op_name)` returns the callable the registry's `Op` takes per layer: `Case -> dict` of float64 NumPy
arrays, "value" and the gradients "d_x", "d_w", "d_b" of ``upstream . value`` (the vector-Jacobian
product with the case's upstream gradient, through ``jax.vjp``). float64 cases run under
``jax.enable_x64``; 16-bit cases keep their dtype. Bad inputs raise the layer's own ValueError /
TypeError, which the suite compares with the NumPy layer's.
"""

from __future__ import annotations

import contextlib

import numpy as np


def _f64(a):
    import jax.numpy as jnp

    return np.asarray(jnp.asarray(a).astype(jnp.float32 if a.dtype == jnp.bfloat16 else a.dtype), dtype=np.float64)


def _context(case):
    import jax

    return jax.enable_x64(True) if case.arrays["x"].dtype == np.float64 else contextlib.nullcontext()


def run(name: str):
    def softmax_family(case):
        import jax
        import jax.numpy as jnp
        import softxent.jax as sxj

        with _context(case):
            x = jnp.asarray(case.arrays["x"])
            T = case.options.get("temperature", 1.0)
            f = (lambda a: sxj.logsumexp(a, axis=-1)) if name == "logsumexp" else \
                (lambda a: getattr(sxj, name)(a, axis=-1, temperature=T))
            value, vjp = jax.vjp(f, x)
            (grad,) = vjp(jnp.asarray(case.arrays["upstream"]).astype(value.dtype))
            return {"value": _f64(value), "d_x": _f64(grad)}

    def cross_entropy(case):
        import jax
        import jax.numpy as jnp
        import softxent.jax as sxj

        a = case.arrays
        with _context(case):
            weight = None if a.get("weight") is None else jnp.asarray(a["weight"])
            value, vjp = jax.vjp(lambda x: sxj.cross_entropy(x, jnp.asarray(a["target"]), weight=weight,
                                                              **case.options), jnp.asarray(a["x"]))
            (grad,) = vjp(jnp.asarray(a["upstream"]).astype(value.dtype))
            return {"value": _f64(value), "d_x": _f64(grad)}

    def linear_cross_entropy(case):
        import jax
        import jax.numpy as jnp
        import softxent.jax as sxj

        a = case.arrays
        with _context(case):
            weight = None if a.get("weight") is None else jnp.asarray(a["weight"])
            target = jnp.asarray(a["target"])
            args = [jnp.asarray(a["x"]), jnp.asarray(a["w"])] + ([jnp.asarray(a["b"])] if a.get("b") is not None else [])

            def f(x, w, b=None):
                return sxj.linear_cross_entropy(x, w, target, bias=b, weight=weight, **case.options)

            value, vjp = jax.vjp(f, *args)
            grads = vjp(jnp.asarray(a["upstream"]).astype(value.dtype))
            out = {"value": _f64(value), "d_x": _f64(grads[0]), "d_w": _f64(grads[1])}
            if len(grads) == 3:
                out["d_b"] = _f64(grads[2])
            return out

    def token_log_probs(case):
        import jax
        import jax.numpy as jnp
        import softxent.jax as sxj

        a = case.arrays
        options = dict(case.options)
        entropy = options.pop("return_entropy", True)
        with _context(case):
            target = jnp.asarray(a["target"])
            value, vjp = jax.vjp(lambda x: sxj.token_log_probs(x, target, return_entropy=entropy, **options),
                                 jnp.asarray(a["x"]))
            if entropy:  # both outputs' upstream gradients
                (grad,) = vjp((jnp.asarray(a["upstream"]).astype(value[0].dtype),
                               jnp.asarray(a["upstream_entropy"]).astype(value[1].dtype)))
                return {"value": _f64(value[0]), "entropy": _f64(value[1]), "d_x": _f64(grad)}
            (grad,) = vjp(jnp.asarray(a["upstream"]).astype(value.dtype))
            return {"value": _f64(value), "d_x": _f64(grad)}

    if name in ("softmax", "log_softmax", "logsumexp"):
        return softmax_family
    return {"cross_entropy": cross_entropy, "linear_cross_entropy": linear_cross_entropy,
            "token_log_probs": token_log_probs}[name]
