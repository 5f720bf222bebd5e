"""Compile every module gpuconv can request through the installed CuPy's own NVRTC pipeline.

``cupy.cuda.compiler.compile_using_nvrtc`` is what ``cupy.RawModule`` reaches when it builds a
module: it appends CuPy's ``-arch`` for the device after gpuconv's options, with the ``-ftz=true``
RawModule adds. This script calls it for a chosen architecture, so a CuPy and NVRTC pair
(CuPy 13 with CUDA 12.0's NVRTC, say) can be checked on a machine without a GPU or driver: only
the memoised per-device wrapper around CuPy's choice of ``-arch`` asks the driver, and its body,
given the architecture, does not. Each request is reported as ``ok``, ``refused`` (a module
gpuconv's ``algorithms.why_not`` would refuse here, e.g. gemm_wgmma with an NVRTC before 12.9,
that failed as predicted) or ``FAIL``; the exit status is the number of FAILs and of refusals
that compiled after all.

    LD_LIBRARY_PATH=<site-packages>/nvidia/cuda_nvrtc/lib python benchmarks/cupy_compile.py 90

(session 31: CuPy 13.0.0 with NVRTC 12.0, sm_90: every module compiled but conv_gemm_wgmma.cu,
refused as predicted.)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuconv import kernels  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", help="compute capability as CuPy writes it, e.g. 90 or 80")
    parser.add_argument("--files", default="", help="comma-separated kernel files (all)")
    args = parser.parse_args(argv)

    import cupy
    from cupy.cuda import compiler
    compiler._get_arch_for_options_for_nvrtc = compiler._get_arch_for_options_for_nvrtc.__wrapped__
    version = kernels.cupy_nvrtc_version()
    print(f"CuPy {cupy.__version__}, NVRTC {version}, sm_{args.arch}")
    files = set(args.files.split(",")) if args.files else set(kernels.KERNEL_FILES)
    problems = 0
    for filename, names, options in kernels.every_module_request():
        if filename not in files:
            continue
        target = kernels.ARCH_SPECIFIC.get(filename)
        if target and str(target[0]) != args.arch:
            continue
        refused = bool(target) and version is not None and \
            version < kernels.ARCH_SPECIFIC_MIN_NVRTC
        start = time.perf_counter()
        try:
            # jitify left at its default (False; CuPy 14 deprecates passing it)
            compiler.compile_using_nvrtc(kernels.kernel_source(filename),
                                         tuple(options) + ("-ftz=true",), args.arch, filename,
                                         name_expressions=list(names), cache_in_memory=True)
            result = "ok"
            problems += refused  # gpuconv refuses what would have compiled
        except Exception as exc:
            last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            result = ("refused" if refused else "FAIL") + f" ({last[:100]})"
            problems += not refused
        print(f"{filename} {names[0]} (+{len(names) - 1}): {result} "
              f"[{time.perf_counter() - start:.1f} s]", flush=True)
    return problems


if __name__ == "__main__":
    sys.exit(main())
