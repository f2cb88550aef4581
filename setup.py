"""The one compiled part of softxent: the CPU cross-entropy row kernel (src/softxent/ops/cross_entropy/cpu_rows.c).

Everything else is in pyproject.toml. The extension is optional: where no C compiler is at hand the
build goes on without it and softxent.torch computes the same rows with torch ops (slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "softxent.ops.cross_entropy._cpu_rows",
            sources=["src/softxent/ops/cross_entropy/cpu_rows.c"],
            depends=["src/softxent/ops/cpu_rowmath.h"],
            # -fno-math-errno: fma and the compares vectorize; -fopenmp-simd: the `omp simd` reductions
            # only (no OpenMP runtime); IEEE semantics otherwise (no -ffast-math: inf and NaN must hold)
            extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"],
            optional=True,
        )
    ]
)
