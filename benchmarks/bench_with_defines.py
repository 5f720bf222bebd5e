"""``python -m gpuconv.bench`` with preprocessor macros added to every kernel's compilation.

For kernel experiments that a macro switches on without changing the default build (such as
GC_CP_ASYNC_CA in kernels_cuda/conv_gemm_tc.cu: the channels-last GEMMs' copies cached in L1;
benchmarks/NOTES.md, session 23). The macros join gpuconv.kernels.COMPILE_OPTIONS before any
kernel is compiled, so they are part of every compiled module's options (and of CuPy's cache
key for it); run the same bench without them, in another process, for the comparison.

    PYTHONPATH=$PWD python3 benchmarks/bench_with_defines.py GC_CP_ASYNC_CA -- \\
        --device cuda --peers torch --algorithms auto,gemm_tc_cl --dtype float16
"""
from __future__ import annotations

import sys
from typing import List, Optional, Sequence


def split(argv: Sequence[str]) -> tuple:
    """(macros, the bench's arguments) of ``MACRO[=VALUE] ... -- BENCH ARGS``."""
    argv = list(argv)
    if "--" not in argv:
        raise SystemExit("usage: bench_with_defines.py MACRO[=VALUE] ... -- BENCH ARGUMENTS")
    at = argv.index("--")
    macros, rest = argv[:at], argv[at + 1:]
    if not macros or any(not m or m.startswith("-") for m in macros):
        raise SystemExit(f"bench_with_defines.py: macro names before '--', got {macros}")
    return macros, rest


def main(argv: Optional[Sequence[str]] = None) -> int:
    macros, rest = split(sys.argv[1:] if argv is None else argv)
    from gpuconv import bench, kernels
    defines: List[str] = [f"-D{m}" for m in macros]
    kernels.COMPILE_OPTIONS = tuple(kernels.COMPILE_OPTIONS) + tuple(defines)
    print(f"bench_with_defines: NVRTC options {kernels.COMPILE_OPTIONS}", flush=True)
    return bench.main(rest)


if __name__ == "__main__":
    sys.exit(main())
