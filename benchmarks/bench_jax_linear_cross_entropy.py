"""Linear layer + cross-entropy for JAX, forward + backward under jit on the CPU: softxent.jax's fused,
chunked op beside the unfused jit computation.

Each provider is ``jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))`` of the mean loss of
``x @ w.T`` (N, D) x (V, D) against class indices, compiled before timing, in a fresh process
(harness.py). The unfused peers build the (N, V) logits: optax's
softmax_cross_entropy_with_integer_labels on them, and softxent.jax.cross_entropy on them. Columns:
time, peak extra resident memory (which includes the gradients dx and dw themselves), and the compiled
program's temporary bytes (``compiled.memory_analysis()``), also as a multiple of one (N, V) float32
array (the goal: at most 0.35x). FLOPs: the unfused computation does three products of 2 N D V each;
the fused forward-sweep gradient does the same three.

    python benchmarks/bench_jax_linear_cross_entropy.py   # writes results/jax_linear_cross_entropy-cpu.*
"""

import numpy as np

from harness import main

CASES = {"4096x1024x32000-float32": {"rows": 4096, "features": 1024, "classes": 32000, "dtype": "float32"}}
QUICK = {"256x64x1000-float32": {"rows": 256, "features": 64, "classes": 1000, "dtype": "float32"}}


def _loss(provider):
    import softxent.jax as sxj

    if provider == "softxent":
        return sxj.linear_cross_entropy
    if provider == "unfused_optax":
        import optax

        return lambda x, w, t: optax.softmax_cross_entropy_with_integer_labels(x @ w.T, t).mean()
    return lambda x, w, t: sxj.cross_entropy(x @ w.T, t)


def _compiled(provider, case):
    import jax
    import jax.numpy as jnp

    dtype = jnp.dtype(case["dtype"])
    x = jax.ShapeDtypeStruct((case["rows"], case["features"]), dtype)
    w = jax.ShapeDtypeStruct((case["classes"], case["features"]), dtype)
    t = jax.ShapeDtypeStruct((case["rows"],), jnp.int32)
    return jax.jit(jax.value_and_grad(_loss(provider), argnums=(0, 1))).lower(x, w, t).compile()


def _make(provider):
    def make(case, device):
        import jax
        import jax.numpy as jnp

        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((case["rows"], case["features"])).astype(case["dtype"]))
        w = jnp.asarray((rng.standard_normal((case["classes"], case["features"])) / case["features"] ** 0.5)
                        .astype(case["dtype"]))
        t = jnp.asarray(rng.integers(0, case["classes"], case["rows"]).astype(np.int32))
        step = _compiled(provider, case)

        def run():
            return jax.block_until_ready(step(x, w, t))

        return run

    return make


PROVIDERS = {name: _make(name) for name in ("softxent", "unfused_optax", "unfused_softxent")}


def describe(case, row):
    analysis = _compiled(row["provider"], case).memory_analysis()
    logits_bytes = case["rows"] * case["classes"] * 4
    return {"compiled_temp_bytes": int(analysis.temp_size_in_bytes),
            "temp_over_logits": analysis.temp_size_in_bytes / logits_bytes}


if __name__ == "__main__":
    main("jax_linear_cross_entropy", CASES, QUICK, PROVIDERS, describe=describe)
