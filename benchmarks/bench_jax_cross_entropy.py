"""Cross-entropy for JAX, forward + backward under jit on the CPU: softxent.jax beside optax.

Each provider is ``jax.jit(jax.value_and_grad(loss))`` of the mean loss of (rows, classes) float32
logits against class indices, compiled before timing, in a fresh process (harness.py). Columns: the
time and peak extra resident memory of one call, and from the compiled program
(``compiled.memory_analysis()``) its temporary bytes, also as a multiple of one (rows, classes)
float32 array. Peers: optax's softmax_cross_entropy_with_integer_labels, and the textbook
``-take(log_softmax(x), t)`` with jax.nn (both differentiated by JAX's autodiff).

    python benchmarks/bench_jax_cross_entropy.py          # writes results/jax_cross_entropy-cpu.{csv,json}
"""

import numpy as np

from harness import main

CASES = {"4096x32000-float32": {"rows": 4096, "classes": 32000, "dtype": "float32"}}
QUICK = {"64x1000-float32": {"rows": 64, "classes": 1000, "dtype": "float32"}}


def _loss(provider):
    import jax
    import jax.numpy as jnp

    if provider == "softxent":
        import softxent.jax as sxj

        return sxj.cross_entropy
    if provider == "optax":
        import optax

        return lambda x, t: optax.softmax_cross_entropy_with_integer_labels(x, t).mean()
    return lambda x, t: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(x), t[:, None], axis=1))


def _compiled(provider, case):
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((case["rows"], case["classes"]), jnp.dtype(case["dtype"]))
    t = jax.ShapeDtypeStruct((case["rows"],), jnp.int32)
    return jax.jit(jax.value_and_grad(_loss(provider))).lower(x, t).compile()


def _make(provider):
    def make(case, device):
        import jax
        import jax.numpy as jnp

        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((case["rows"], case["classes"])).astype(case["dtype"]))
        t = jnp.asarray(rng.integers(0, case["classes"], case["rows"]).astype(np.int32))
        step = _compiled(provider, case)

        def run():
            return jax.block_until_ready(step(x, t))

        return run

    return make


PROVIDERS = {name: _make(name) for name in ("softxent", "optax", "jax_nn")}


def describe(case, row):
    analysis = _compiled(row["provider"], case).memory_analysis()
    logits_bytes = case["rows"] * case["classes"] * np.dtype(case["dtype"]).itemsize
    return {"compiled_temp_bytes": int(analysis.temp_size_in_bytes),
            "temp_over_logits": analysis.temp_size_in_bytes / logits_bytes}


if __name__ == "__main__":
    main("jax_cross_entropy", CASES, QUICK, PROVIDERS, describe=describe)
