"""The GPU checks owed by work done without a GPU, phase by phase, for a session's first calls.

Sessions 20-27 wrote kernels and paths that no GPU has run (depthwise_tile, gemm_cl, the
replays, pointwise by strided batched cuBLAS calls, the GC_CP_ASYNC_CA experiment,
gemm_wgmma); NOTES "Owed on a GPU next" lists what to run. A device call is limited to 10
minutes and a session to 30 (its machine's start and idle time included), so this runs named
phases in order, each under its own time limit (its whole process group stopped at the limit,
so no test worker stays on the GPU), logging each to ``--out``/<phase>.log and printing its
last lines; a phase that fails or times out does not stop the next. ``a+b`` runs phases a and
b side by side (correctness phases only: a bench wants the GPU to itself). ``--deadline S``
caps the whole run: each phase gets at most what is left of S (a phase with under 30 s left is
skipped), so a call's last phases are cut rather than the call. After a bench phase the
table of benchmarks/auto_gaps.py (auto against the fastest forced algorithm of each row) is
printed, since a call returns only its output's last 12,000 characters. The first call:

    PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python3 benchmarks/gpu_owed.py --out $OUT \
        --deadline 560 bench_new bench_wgmma tests+check_all

(the kernels auto does not take yet, forced beside auto and cuDNN, then the GPU tests of the
paths written without a GPU beside every kernel forced on random configurations), then the
rules auto's rows call for, committed, and the record (benchmarks/gpu_record.py) at that
commit: the whole suite, then the bench and the sanitizer. Other phases: ``timeline`` (where
the slow rows' time goes), ``bench_1x1``, ``ca_plain`` / ``ca_defined``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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


#: A phase that would get less than this under ``--deadline`` is skipped.
MIN_PHASE_SECONDS = 30


def _bench_json(cmd: Sequence[str]) -> Optional[Path]:
    """The JSON file a bench phase writes, or None for other phases."""
    if "gpuconv.bench" not in cmd or "--json" not in cmd:
        return None
    return Path(cmd[list(cmd).index("--json") + 1])


def gaps_report(path: Path) -> str:
    """benchmarks/auto_gaps.py's table of one bench JSON file."""
    spec = importlib.util.spec_from_file_location("auto_gaps", Path(__file__).with_name(
        "auto_gaps.py"))
    assert spec is not None and spec.loader is not None
    gaps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gaps)
    return str(gaps.report(gaps.gaps(gaps.load_rows(path))))


def run_group(names: Sequence[str], table: Dict[str, Tuple[int, Tuple[str, ...]]], out: Path,
              left: Optional[float]) -> List[str]:
    """Run phases side by side, each under its limit (or ``left`` seconds, if fewer); print
    each one's outcome and last log lines (a bench's: the auto gaps table); return the
    outcome lines."""
    jobs = [(n, table[n][0] if left is None else min(table[n][0], int(left)), table[n][1])
            for n in names]
    with ThreadPoolExecutor(len(jobs)) as pool:
        done = list(pool.map(lambda j: run_phase(j[0], j[1], j[2], out), jobs))
    results = []
    for (name, limit, cmd), (status, seconds) in zip(jobs, done):
        stopped = f" (stopped at {limit} s)" if status == 124 else ""
        results.append(f"{name}: exit {status} in {seconds:.0f} s{stopped}")
        print(f"== {results[-1]}", flush=True)
        lines = (out / f"{name}.log").read_text(errors="replace").splitlines()
        bench = _bench_json(cmd)
        print("\n".join(lines[-(4 if bench else 12):]), flush=True)
        if bench is not None and bench.exists():
            try:
                print(gaps_report(bench), flush=True)
            except (OSError, ValueError) as e:  # a JSON cut short
                print(f"auto_gaps: {bench}: {e}", flush=True)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="phases to run, in order; a+b: side by side "
                    "(default: list them)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="logs and JSON here")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds for the whole run: later phases get what is left")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    out = Path(args.out)
    table = phases(out)
    groups = [item.split("+") for item in args.names]
    unknown = [n for group in groups for n in group if n not in table]
    if unknown or not args.names:
        if unknown:
            print(f"gpu_owed.py: no phase {unknown}", file=sys.stderr)
        for name, (limit, cmd) in table.items():
            print(f"{name} ({limit} s): {' '.join(cmd)}")
        return 2 if unknown else 0
    out.mkdir(parents=True, exist_ok=True)
    end = None if args.deadline is None else time.monotonic() + args.deadline
    results: List[str] = []
    for group in groups:
        if args.dry_run:
            for name in group:
                print(f"{name} ({table[name][0]} s): {' '.join(table[name][1])}")
            continue
        left = None if end is None else end - time.monotonic()
        if left is not None and left < MIN_PHASE_SECONDS:
            for name in group:
                results.append(f"{name}: skipped ({left:.0f} s left of the deadline)")
                print(f"== {results[-1]}", flush=True)
            continue
        results += run_group(group, table, out, left)
    print("\n".join(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
