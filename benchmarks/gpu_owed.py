"""The GPU checks owed by work done without a GPU, phase by phase, for a session's first calls.

Sessions 20-24 wrote kernels and paths that no GPU has run (depthwise_tile, gemm_cl, the
replays, pointwise by strided batched cuBLAS calls, the GC_CP_ASYNC_CA experiment,
gemm_wgmma); NOTES "Owed on a GPU next" lists what to run. A device call is limited to 10
minutes and a session to 30, so this runs named phases in order, each under its own time limit
(its whole process group stopped at the limit, so no test worker stays on the GPU), logging
each to ``--out``/<phase>.log and printing its last lines; a phase that fails or times out
does not stop the next. Three calls cover the list's first items:

    PYTHONPATH=$PWD python3 benchmarks/gpu_owed.py --out $OUT tests timeline bench_1x1
    PYTHONPATH=$PWD python3 benchmarks/gpu_owed.py --out $OUT bench_new bench_wgmma
    PYTHONPATH=$PWD python3 benchmarks/gpu_owed.py --out $OUT ca_plain ca_defined

(``check_all``, gpuconv check --algorithms all, fits beside any of them: every kernel forced
on random configurations, a row each.)

then the record (benchmarks/gpu_record.py) at the commit that follows from them.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

#: the benchmark, and its arguments for the CUDA device against cuDNN
_BENCH = (PY, "-m", "gpuconv.bench")
_ON_CUDA = ("--device", "cuda", "--peers", "torch")
#: the layers the GC_CP_ASYNC_CA experiment compares (Cg = 64 and Cg = 512, 2-D and 3-D)
_CA_LAYERS = ("r50_res2_3x3", "vgg16_conv1_2_3x3", "vgg16_conv4_2_3x3", "conv3d_3x3x3_c64")


def phases(out: Path) -> Dict[str, Tuple[int, Tuple[str, ...]]]:
    """Phase name -> (time limit in seconds, command), in the order they are meant to run."""
    def bench(name: str, *args: str) -> Tuple[str, ...]:  # the bench's arguments
        return _ON_CUDA + args + ("--json", str(out / f"{name}.json"))

    ca = ("--dtype", "float16", "--algorithms", "auto,gemm_tc_cl", "--only") + _CA_LAYERS
    return {
        # the GPU tests of the paths written without a GPU (sessions 20-25)
        "tests": (270, (PY, "-m", "pytest", "-q", "-m", "gpu", "-n", "8", "-p", "xdist",
                        "-p", "no:cacheprovider", "-rfE", "tests/test_grid.py",
                        "tests/test_repeat.py", "tests/test_tuning.py", "-k",
                        "pointwise or depthwise_tile or gemm_cl or ffma or im2col or repeated "
                        "or replays or wgmma or autotune")),
        # where the slow rows' time goes (kernels, host, gaps)
        "timeline": (150, (PY, "benchmarks/gpu_timeline.py", "--out",
                           str(out / "timeline.json"))),
        # the 1x1 layers: pointwise by cuBLAS against im2col and gemm_tc_cl (auto's rule)
        "bench_1x1": (150, _BENCH + bench("bench_1x1", "--dtype", "float32,float16",
                                          "--algorithms", "auto,pointwise,im2col,gemm_tc_cl",
                                          "--only", "r50_res2_1x1_64to256",
                                          "r50_res4_1x1_1024to256", "r50_down_1x1s2")),
        # the kernels auto does not take yet: gemm_cl, depthwise_tile (all 16 layers)
        "bench_new": (240, _BENCH + bench("bench_new", "--dtype", "float32", "--algorithms",
                                          "auto,im2col,gemm_cl,depthwise,depthwise_tile")),
        # wgmma (session 24) against mma.sync's channels-last kernel and cuDNN, 16-bit layers
        "bench_wgmma": (240, _BENCH + bench("bench_wgmma", "--dtype", "float16,bfloat16",
                                            "--algorithms", "auto,gemm_tc_cl,gemm_wgmma")),
        # every kernel forced on random configurations against float64 (session 25's self-test)
        "check_all": (240, (PY, "-m", "gpuconv", "check", "--algorithms", "all", "--cases",
                            "150")),
        # L1-cached copies in the channels-last GEMMs: the same rows, plain and with the macro
        "ca_plain": (120, _BENCH + bench("ca_plain", *ca)),
        "ca_defined": (120, (PY, "benchmarks/bench_with_defines.py", "GC_CP_ASYNC_CA", "--")
                       + bench("ca_defined", *ca)),
    }


def run_phase(name: str, limit: int, cmd: Sequence[str], out: Path) -> Tuple[int, float]:
    """(exit status, seconds) of one phase; status 124 when stopped at its limit."""
    log = out / f"{name}.log"
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(list(cmd), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            status = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the phase's workers too
            proc.wait()
            status = 124
    return status, time.monotonic() - start


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="phases to run, in order (default: list them)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="logs and JSON here")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    out = Path(args.out)
    table = phases(out)
    unknown = [n for n in args.names if n not in table]
    if unknown or not args.names:
        if unknown:
            print(f"gpu_owed.py: no phase {unknown}", file=sys.stderr)
        for name, (limit, cmd) in table.items():
            print(f"{name} ({limit} s): {' '.join(cmd)}")
        return 2 if unknown else 0
    out.mkdir(parents=True, exist_ok=True)
    results: List[str] = []
    for name in args.names:
        limit, cmd = table[name]
        if args.dry_run:
            print(f"{name} ({limit} s): {' '.join(cmd)}")
            continue
        status, seconds = run_phase(name, limit, cmd, out)
        results.append(f"{name}: exit {status} in {seconds:.0f} s")
        print(f"== {results[-1]}", flush=True)
        lines = (out / f"{name}.log").read_text(errors="replace").splitlines()
        print("\n".join(lines[-12:]), flush=True)
    print("\n".join(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
