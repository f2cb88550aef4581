"""The compiled parts of softxent: the CPU row kernels, src/softxent/ops/<op>/cpu_rows.c -> softxent.ops.<op>._cpu_rows.

Everything else is in pyproject.toml. The extensions are optional: where no C compiler is at hand the
build goes on without them and softxent.torch computes the same rows with torch ops (slower).
"""

from setuptools import Extension, setup


def _row_kernel(op: str) -> Extension:
    return Extension(
        f"softxent.ops.{op}._cpu_rows",
        sources=[f"src/softxent/ops/{op}/cpu_rows.c"],
        depends=["src/softxent/ops/cpu_rowmath.h"],
        # -fno-math-errno: fma and the compares vectorize; -fopenmp-simd: the `omp simd` reductions
        # only (no OpenMP runtime); IEEE semantics otherwise (no -ffast-math: inf and NaN must hold)
        extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"],
        optional=True,
    )


setup(ext_modules=[_row_kernel(op) for op in ("cross_entropy", "token_log_probs", "distillation")])
