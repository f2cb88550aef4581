"""Compile every kernel for a GPU target without a GPU: is this valid Triton for the installed release?

The interpreter runs the kernels as Python and forgives what the compiler does not (types that change
across loop iterations, scalar/block mismatches, int64 pointer arithmetic), so this builds each kernel
down to PTX and a cubin for the target (default sm_90, the H100/H200) with `triton.compile`, which
needs ptxas from the triton wheel and no driver. Run it with TRITON_INTERPRET unset:

    python -m softxent._triton.aot            # every kernel, flags all on and all off, 3 dtypes
    python -m softxent._triton.aot --quick    # one variant per kernel and code path (CI)

Exit status 1 names the variants that failed.
"""

from __future__ import annotations

import argparse
import sys
import time

_POINTER_INT = {"target_ptr": "*i64", "flag_ptr": "*i64"}
_FP32_POINTERS = {"loss_ptr", "lse_ptr", "scale_ptr", "state_ptr", "z_t_ptr", "weight_ptr"}


def _signature(kernel, dtype: str, constants: dict, probs: bool = False) -> dict:
    """Argument types as triton.compile wants them: '*bf16' for a pointer, 'i32', 'fp32', 'constexpr'."""
    sig = {}
    for name in kernel.arg_names:
        if name in constants:
            sig[name] = "constexpr"
        elif name == "target_ptr":
            sig[name] = f"*{dtype}" if probs else "*i64"
        elif name in _POINTER_INT:
            sig[name] = _POINTER_INT[name]
        elif name in _FP32_POINTERS:
            sig[name] = "*fp32"
        elif name == "where_ptr":
            sig[name] = "*u8"
        elif name.endswith("_ptr"):
            sig[name] = f"*{dtype}"
        elif name.endswith("stride") or name in ("num_classes", "chunk", "splits", "ignore_index"):
            sig[name] = "i64" if name in ("x_stride", "grad_stride", "y_stride", "g_stride", "dx_stride") else "i32"
        else:
            sig[name] = "fp32"
    return sig


def variants(quick: bool):
    """(label, kernel, dtype, constants, probs) for every variant to build."""
    from softxent.ops.cross_entropy import triton as ce
    from softxent.ops.softmax import triton as sm

    ce_flags = ["PROBS", "HAS_WEIGHT", "SMOOTH", "HAS_SOFTCAP", "HAS_TEMPERATURE"]
    grad_flags = ["HAS_Z", "HAS_GRAD", "HAS_SCALE_PTR"]
    out = []
    dtypes = ["bf16"] if quick else ["bf16", "fp16", "fp32"]
    for dtype in dtypes:
        for on in (True, False):
            for probs in ((False, True) if (on or not quick) else ()):
                flags = {f: on for f in ce_flags} | {"PROBS": probs}
                if probs:
                    flags["SMOOTH"] = False  # smoothing of probabilities is folded into their coefficients
                check = on and not probs
                out.append((f"ce_fused {dtype} on={on} probs={probs}", ce._ce_fused_kernel, dtype,
                            dict(BLOCK=4096, CHECK=check, **flags, **{f: on for f in grad_flags}), probs))
                if quick and probs:
                    continue
                out.append((f"ce_partial {dtype} on={on} probs={probs}", ce._ce_partial_kernel, dtype,
                            dict(BLOCK=4096, CHECK=check, **flags), probs))
                out.append((f"ce_finish {dtype} on={on} probs={probs}", ce._ce_finish_kernel, dtype,
                            dict(BLOCK=4096, **flags, **{f: on for f in grad_flags}), probs))
            for log in (True, False):
                if quick and log != on:
                    continue
                sm_flags = dict(BLOCK=4096, HAS_WHERE=on)
                out.append((f"softmax_fused {dtype} on={on} log={log}", sm._softmax_fused_kernel, dtype,
                            dict(LOG=log, **sm_flags), False))
                out.append((f"softmax_finish {dtype} on={on} log={log}", sm._softmax_finish_kernel, dtype,
                            dict(LOG=log, **sm_flags), False))
                bw_flags = dict(BLOCK=4096, LOG=log, HAS_WHERE=on)
                out.append((f"backward_fused {dtype} on={on} log={log}", sm._backward_fused_kernel, dtype, bw_flags,
                            False))
                out.append((f"backward_partial {dtype} on={on} log={log}", sm._backward_partial_kernel, dtype,
                            bw_flags, False))
                out.append((f"backward_finish {dtype} on={on} log={log}", sm._backward_finish_kernel, dtype,
                            bw_flags, False))
            out.append((f"softmax_partial {dtype} on={on}", sm._softmax_partial_kernel, dtype,
                        dict(BLOCK=4096, HAS_WHERE=on), False))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one variant per kernel and code path")
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for sm_90")
    parser.add_argument("--num-warps", type=int, default=8)
    args = parser.parse_args(argv)

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from softxent.torch.triton import interpreted

    if interpreted():
        print("TRITON_INTERPRET is set: the kernels are interpreted, there is nothing to compile", file=sys.stderr)
        return 2
    target = GPUTarget("cuda", args.arch, 32)
    failed = []
    start = time.perf_counter()
    todo = variants(args.quick)
    for label, kernel, dtype, constants, probs in todo:
        try:
            source = ASTSource(kernel, _signature(kernel, dtype, constants, probs), constants)
            triton.compile(source, target=target, options={"num_warps": args.num_warps})
        except Exception as err:  # noqa: BLE001 - report every failure, then fail
            failed.append(label)
            print(f"FAILED {label}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    took = time.perf_counter() - start
    print(f"triton {triton.__version__}, sm_{args.arch}: {len(todo) - len(failed)} of {len(todo)} kernel variants "
          f"compiled in {took:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
