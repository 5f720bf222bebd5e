"""Run gpuconv's test suite (GPU tests included) and compute-sanitizer on a CUDA machine, and
write the JSON record that benchmarks/results/ keeps as evidence.

    python benchmarks/gpu_record.py --commit <sha> [--sanitizer] [--bench] [--out DIR]

The record names the commit tested (pass it: the device machine gets a copy of the working tree
without .git), the device, the date, CuPy/CUDA versions, the passed/failed/skipped counts of the
whole suite and, with --sanitizer, the error count of each compute-sanitizer tool run over the
GPU tests (every kernel on the multi-tile cases, the direct kernel on the whole grid, the
examples; not the full algorithm x grid product, which the plain run covers). With --bench it
also runs the benchmark on the "gpu" set (float32 and float16, every CUDA algorithm beside
auto, PyTorch/cuDNN as the peer, measured peaks, host overhead) and keeps its peaks, rows and
summary. It refuses to write a record when no GPU was used, so a record always means a GPU run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
SANITIZER_TESTS = ("-m", "gpu", "tests/test_grid.py", "tests/test_examples.py",
                   "-k", "not test_gpu_algorithms_against_reference")
BENCH_ARGS = ("--device", "cuda", "--peers", "torch", "--algorithms",
              "auto,gemm,gemm_tc,gemm_tc_cl,depthwise,direct", "--measure-peak", "--overhead")


def bench_dtypes() -> str:
    """float32 and float16, and bfloat16 where ml_dtypes is installed (NumPy needs it to hold
    bfloat16; CuPy 14 uses the same)."""
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        return "float32,float16"
    return "float32,float16,bfloat16"


def run_pytest(junit: Path, args, prefix=()):
    cmd = list(prefix) + [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"--junitxml={junit}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if junit.exists():
        for suite in ET.parse(junit).getroot().iter("testsuite"):
            total = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            counts["failed"] += failed
            counts["skipped"] += skipped
            counts["passed"] += total - failed - skipped
    return proc, counts


def gpu_facts():
    import cupy
    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    v = lambda x: f"{x // 1000}.{(x % 1000) // 10}"  # noqa: E731
    return {"device": name, "cupy": cupy.__version__, "cuda_runtime": v(rt.runtimeGetVersion()),
            "cuda_driver": v(rt.driverGetVersion()),
            "compute_capability": f"{props['major']}.{props['minor']}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commit", required=True, help="the commit whose tree is being tested")
    ap.add_argument("--sanitizer", action="store_true", help="also run compute-sanitizer")
    ap.add_argument("--bench", action="store_true", help="also run the benchmark")
    ap.add_argument("--bench-args", default="",
                    help="extra arguments for python -m gpuconv.bench (e.g. '--only a b')")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--work", default="/tmp/gpuconv-record")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    sys.path.insert(0, str(ROOT))
    from gpuconv.device import cuda_status
    status = cuda_status()
    if not status.available:
        print(f"no GPU usable ({status.reason}); no record written", file=sys.stderr)
        return 2
    facts = gpu_facts()
    record = {"commit": args.commit, **facts,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    proc, counts = run_pytest(work / "all.xml", ["-rs"])
    (work / "pytest.log").write_text(proc.stdout + proc.stderr)
    record["tests"] = counts
    record["tests_command"] = "python -m pytest -q"
    print(proc.stdout[-3000:])

    if args.sanitizer:
        record["sanitizer"] = {}
        for tool in SANITIZER_TOOLS:
            proc, counts = run_pytest(
                work / f"{tool}.xml", list(SANITIZER_TESTS),
                prefix=("compute-sanitizer", f"--tool={tool}", "--target-processes=all"))
            (work / f"{tool}.log").write_text(proc.stdout + proc.stderr)
            found = re.findall(r"ERROR SUMMARY: (\d+) error", proc.stdout + proc.stderr)
            record["sanitizer"][tool] = {
                "errors": int(found[-1]) if found else None,  # None: no summary was printed
                "tests": counts}
            print(tool, record["sanitizer"][tool])

    if args.bench:
        bench_json = work / "bench.json"
        bench_args = [*BENCH_ARGS, "--dtype", bench_dtypes(), *args.bench_args.split()]
        cmd = [sys.executable, "-m", "gpuconv.bench", *bench_args, "--json", str(bench_json)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        (work / "bench.log").write_text(proc.stdout + proc.stderr)
        print(proc.stdout[-6000:], proc.stderr[-2000:])
        record["bench_command"] = " ".join(["python -m gpuconv.bench", *bench_args])
        if proc.returncode == 0:
            bench = json.loads(bench_json.read_text())
            for key in ("peak", "bench", "summary", "versions", "repeat", "timing"):
                record[key] = bench.get(key)
        else:
            record["bench_error"] = (proc.stderr or proc.stdout)[-2000:]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", facts["device"]).strip("-").lower()
    path = out / f"gpu-{slug}-{record['date'][:10]}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return 0 if record["tests"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
