"""Run vocab_parallel_cross_entropy on 4 CPU host devices and compare with the single-device loss.

Run as a script (tests/jax/test_jax_vocab_parallel.py does): XLA_FLAGS must hold the device count
before jax creates its CPU backend, which a test process that already used jax cannot change. Prints
one JSON object: per case, the largest differences of the loss and the gradient.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

from functools import partial  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, PartitionSpec as P  # noqa: E402

import softxent.jax as sxj  # noqa: E402

CASES = {
    "plain": {},
    "smoothing-zloss": {"label_smoothing": 0.1, "z_loss": 1e-2},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none"},
    "num-items": {"num_items": 9},
}


def main() -> None:
    assert len(jax.devices()) == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("vocab",))
    rng = np.random.default_rng(7)
    n, v = 6, 12  # 3 classes per device
    x = rng.standard_normal((n, v)).astype(np.float32) * 3
    x[2, 5] = 30.0  # a dominant target on device 1: the exact gradient needs the global first max
    x[4] = -np.inf  # a fully masked row
    t = rng.integers(0, v, n)
    t[2], t[3] = 5, -100
    upstream = rng.standard_normal(n).astype(np.float32)
    out = {}
    for name, options in CASES.items():
        cot = upstream if options.get("reduction") == "none" else np.float32(1.7)

        def single(a):
            return jnp.sum(sxj.cross_entropy(a, jnp.asarray(t), **options) * cot)

        sharded = jax.shard_map(partial(sxj.vocab_parallel_cross_entropy, axis_name="vocab", **options), mesh=mesh,
                                in_specs=(P(None, "vocab"), P()), out_specs=P())

        def parallel(a):
            return jnp.sum(sharded(a, jnp.asarray(t)) * cot)

        ref, ref_grad = jax.jit(jax.value_and_grad(single))(jnp.asarray(x))
        got, got_grad = jax.jit(jax.value_and_grad(parallel))(jnp.asarray(x))
        finite = bool(np.isfinite(np.asarray(got)).all() and np.isfinite(np.asarray(got_grad)).all())
        out[name] = {"loss": float(abs(got - ref)), "grad": float(jnp.max(jnp.abs(got_grad - ref_grad))),
                     "scale": float(abs(ref)), "finite": finite,
                     "target_grad": [float(got_grad[2, 5]), float(ref_grad[2, 5])]}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
