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

``--bench-adjoints`` times conv_input_grad and conv_filter_grad against cuDNN's backward-data
and backward-filter (float32) and keeps them as ``bench_adjoints`` / ``summary_adjoints``.

A device call is limited (10 minutes here), so the work can be split over calls: the record is
rewritten after every phase (a call cut off keeps what finished), ``--record FILE`` adds this
call's phases to an earlier record of the same commit, ``--no-tests`` skips the plain suite,
``--tools memcheck,racecheck`` runs some sanitizer tools only, and ``--time-limit S`` stops any
one phase after S seconds and records it as timed out instead of losing the call. ``--logs
$OUT`` puts the logs where they come back from the device machine too. Calls, in order, with
what they took on an H100 (sessions 8 and 16; a fresh machine compiles every kernel again):

    # the whole suite (13077 tests in session 16) alone on 13 processes: 333 s; beside
    # sanitized processes it did not finish in 480 s
    python benchmarks/gpu_record.py --commit <sha> --out $OUT --logs $OUT --time-limit 500 \
        --pytest-args "-n 13 -p xdist"
    # copy the returned record into benchmarks/results/ (it travels with the working tree)
    # compute-sanitizer, one tool a process (sanitized xdist workers printed nothing in 90 s);
    # separate gpu_record processes with their own --out/--work may run side by side and their
    # records merge later (merge()): session 16 ran the 274 tests of this selection under
    # racecheck in 453 s and initcheck in 370 s side by side, memcheck beside the suite:
    python benchmarks/gpu_record.py --commit <sha> --record benchmarks/results/R.json \
        --no-tests --sanitizer --tools memcheck --time-limit 300 --out $OUT --logs $OUT \
        --sanitizer-k "test_gpu_against_cpu_and_reference or test_gpu_channels_last_tensor_cores \
                       or test_gpu_tensor_core_tile_cases or test_gpu_channels_last_copy \
                       or test_gpu_im2col_chunks or test_gpu_depthwise_tile \
                       or test_gpu_channels_last_ffma or test_gpu_channels_last_wgmma \
                       or test_gpu_repeated_calls \
                       or test_gpu_pointwise or test_examples"
    # forward benchmark, one dtype a phase (all three with every algorithm did not finish in
    # 200 s): float32 ~100 s; float16 with auto,gemm_tc,gemm_tc_cl ~75 s
    python benchmarks/gpu_record.py --commit <sha> --record benchmarks/results/R.json \
        --no-tests --bench --time-limit 200 --out $OUT --logs $OUT --bench-args "--dtype float32"
    python benchmarks/gpu_record.py --commit <sha> --record benchmarks/results/R.json \
        --no-tests --bench-adjoints --time-limit 540 --out $OUT --logs $OUT
    # Nsight Compute on one kernel of one layer (benchmarks/profile_layer.py prints the
    # kernels a call launches; its docstring has the ncu command)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
SANITIZER_TESTS = ("-m", "gpu", "tests/test_grid.py", "tests/test_examples.py",
                   "tests/test_repeat.py", "-k", "not test_gpu_algorithms_against_reference")
#: the direct kernel is left out: measured in session 8 (0.017x cuDNN), never auto's choice
#: for these layers, and its rows took minutes of the bench's time (conv3d: 0.74 s a call)
BENCH_ARGS = ("--device", "cuda", "--peers", "torch", "--algorithms",
              "auto,gemm,gemm_cl,gemm_tc,gemm_tc_cl,im2col,pointwise,winograd,depthwise,"
              "depthwise_tile",
              "--measure-peak",
              "--overhead")
#: the adjoints (issue #5: >= 0.8x cuDNN's backward-data and backward-filter), float32
ADJOINT_BENCH_ARGS = ("--device", "cuda", "--peers", "torch", "--op", "input_grad,filter_grad",
                      "--dtype", "float32")


def bench_dtypes() -> str:
    """float32 and float16, and bfloat16 where ml_dtypes is installed (NumPy needs it to hold
    bfloat16; CuPy 14 uses the same)."""
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        return "float32,float16"
    return "float32,float16,bfloat16"


def run_pytest(junit: Path, args, prefix=(), time_limit=None):
    """(log text, counts, timed_out) of one pytest run, counted from its JUnit file."""
    cmd = list(prefix) + [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"--junitxml={junit}", *args]
    junit.unlink(missing_ok=True)  # counts from this run only
    log, timed_out, _ = _run(cmd, time_limit)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if junit.exists():
        for suite in ET.parse(junit).getroot().iter("testsuite"):
            total = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            counts["failed"] += failed
            counts["skipped"] += skipped
            counts["passed"] += total - failed - skipped
    return log, counts, timed_out


def _run(cmd, time_limit):
    """(stdout + stderr, whether it was stopped at ``time_limit`` seconds, exit status).

    The command runs in a session of its own, and a stop kills that whole process group: a
    pytest-xdist run's workers (or compute-sanitizer's target) are the command's children, and
    killing the command alone left them running on the GPU. In session 8 they did, through the
    next phases of the same call (its float16 bench and sanitizer runs)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=time_limit)
        return out + err, False, proc.returncode
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()  # reaps the command itself
        _wait_group_gone(proc.pid)
        return (out or "") + (err or "") + f"\n[stopped after {time_limit} s]\n", True, None


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_group_gone(pgid):
    """Wait (up to 10 s) until no process of group ``pgid`` is left, so that the next phase
    starts on an idle GPU. (Orphans go to init, which reaps them.)"""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def gpu_processes(query=("nvidia-smi", "--query-compute-apps=pid,process_name",
                         "--format=csv,noheader")):
    """The processes using a GPU now, one "pid, name" line each, as nvidia-smi lists them (None
    where it cannot be asked). Checked before each bench phase and kept in the record: a
    timing taken beside another process on the GPU is no measurement of gpuconv."""
    try:
        listed = subprocess.run(list(query), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


#: benchmark rows (a list) and the summary computed from them, per kind of bench phase
_BENCH_KEYS = {"bench": "summary", "bench_adjoints": "summary_adjoints"}


def sanitizer_errors(log: str) -> list:
    """The error count of each sanitized process's summary in ``log``: memcheck, initcheck and
    synccheck end with "ERROR SUMMARY: N errors", racecheck with "RACECHECK SUMMARY: H hazards
    displayed (E errors, W warnings)" (its E counted; until session 16 it was missed, and a
    clean racecheck run was recorded as printing no summary)."""
    found = re.findall(r"ERROR SUMMARY: (\d+) error", log)
    found += re.findall(r"RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?", log)
    return found


def merge(earlier: dict, record: dict) -> dict:
    """``record`` (this call's phases) added to ``earlier``, a record of the same commit and
    device; this call's phases replace earlier ones of the same name (sanitizer: per tool;
    benchmark rows: per op, layer and dtype, so a bench split over calls by --dtype or --only
    adds up, and its summary is computed again from all the rows)."""
    for key in ("commit", "device"):
        if earlier.get(key) != record.get(key):
            raise ValueError(f"--record is of {key} {earlier.get(key)!r}, this run of "
                             f"{record.get(key)!r}: records of different runs do not merge")
    merged = dict(earlier)
    for key, value in record.items():
        if key == "sanitizer" and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        elif key not in _BENCH_KEYS or not isinstance(merged.get(key), list) or not value:
            merged[key] = value  # (a summary too, unless its rows merge below)
    for key, summary in _BENCH_KEYS.items():
        if isinstance(earlier.get(key), list) and record.get(key):
            def which(row):
                return row.get("op", "forward"), row["layer"], row["dtype"]
            new = {which(r) for r in record[key]}
            rows = [r for r in earlier[key] if which(r) not in new] + list(record[key])
            merged[key] = rows
            from gpuconv.bench import summarize
            fresh = summarize(rows, ["torch"], "cuda")
            merged[summary] = {k: v for k, v in {**earlier.get(summary, {}),
                                                 **record.get(summary, {}), **fresh}.items()
                               # one dtype's "dense" key means nothing once rows of two merge
                               if not k.startswith("dense_vs_") or k in fresh}
            # each bench phase measures the host overhead anew: keep every measurement
            before, now = earlier.get(summary, {}), record.get(summary, {})
            runs = list(before.get("host_overhead_runs_us") or (
                [before["host_overhead_us"]["gpuconv"]] if before.get("host_overhead_us") else []))
            if now.get("host_overhead_us"):
                runs.append(now["host_overhead_us"]["gpuconv"])
            if runs:
                merged[summary]["host_overhead_runs_us"] = runs
    return merged


def gpu_facts():
    import cupy
    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    v = lambda x: f"{x // 1000}.{(x % 1000) // 10}"  # noqa: E731
    return {"device": name, "cupy": cupy.__version__, "cuda_runtime": v(rt.runtimeGetVersion()),
            "cuda_driver": v(rt.driverGetVersion()),
            # what compiles the kernels (gemm_wgmma needs 12.9+; tests/test_kernels.py: 12.0+)
            "nvrtc": ".".join(str(n) for n in cupy.cuda.nvrtc.getVersion()),
            "compute_capability": f"{props['major']}.{props['minor']}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commit", required=True, help="the commit whose tree is being tested")
    ap.add_argument("--no-tests", action="store_true", help="skip the plain test suite")
    ap.add_argument("--sanitizer", action="store_true", help="also run compute-sanitizer")
    ap.add_argument("--tools", default=",".join(SANITIZER_TOOLS),
                    help="the compute-sanitizer tools to run (comma-separated)")
    ap.add_argument("--sanitizer-k", default=None,
                    help="a pytest -k expression choosing fewer of the sanitized GPU tests "
                         "(kept in the record as sanitizer_selection)")
    ap.add_argument("--sanitizer-workers", type=int, default=0,
                    help="run the sanitized tests in this many pytest-xdist processes (every "
                         "process is sanitized: --target-processes=all; their error summaries "
                         "are added up)")
    ap.add_argument("--bench", action="store_true",
                    help="also run the benchmark (forward conv: every dtype and algorithm)")
    ap.add_argument("--bench-adjoints", action="store_true",
                    help="also time the two adjoints against cuDNN's backward passes")
    ap.add_argument("--bench-args", default="",
                    help="extra arguments for python -m gpuconv.bench (e.g. '--only a b')")
    ap.add_argument("--pytest-args", default="",
                    help="extra arguments for the plain test suite (e.g. '-n 12' with "
                         "pytest-xdist, which the device machine has)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds any one phase may run before it is stopped and recorded as "
                         "timed out")
    ap.add_argument("--record", default=None, help="an earlier record of this commit to add to")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--logs", default=None,
                    help="where the logs go (default: --work; on the device machine $OUT)")
    ap.add_argument("--work", default="/tmp/gpuconv-record")
    args = ap.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - set(SANITIZER_TOOLS)
    if unknown:
        ap.error(f"--tools: unknown {sorted(unknown)}; the tools are {SANITIZER_TOOLS}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(args.logs) if args.logs else work
    logs.mkdir(parents=True, exist_ok=True)

    sys.path.insert(0, str(ROOT))
    from gpuconv.device import cuda_status
    status = cuda_status()
    if not status.available:
        print(f"no GPU usable ({status.reason}); no record written", file=sys.stderr)
        return 2
    facts = gpu_facts()
    record = {"commit": args.commit, **facts,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    earlier = json.loads(Path(args.record).read_text()) if args.record else {}
    slug = re.sub(r"[^A-Za-z0-9]+", "-", facts["device"]).strip("-").lower()
    path = out / f"gpu-{slug}-{record['date'][:10]}.json"

    def save() -> None:  # after every phase: a call cut off keeps what finished
        path.write_text(json.dumps(merge(earlier, record) if earlier else record, indent=1)
                        + "\n")

    if not args.no_tests:
        log, counts, timed_out = run_pytest(work / "all.xml", ["-rs", *args.pytest_args.split()],
                                            time_limit=args.time_limit)
        (logs / "pytest.log").write_text(log)
        record["tests"] = dict(counts, **({"timed_out": True} if timed_out else {}))
        record["tests_command"] = " ".join(["python -m pytest -q", *args.pytest_args.split()])
        print(log[-3000:])
        save()

    if args.sanitizer:
        record["sanitizer"] = {}
        for tool in tools:
            workers = (["-n", str(args.sanitizer_workers), "-p", "xdist"]
                       if args.sanitizer_workers else [])
            selected = list(SANITIZER_TESTS)
            if args.sanitizer_k:
                selected[selected.index("-k") + 1] = args.sanitizer_k
                record["sanitizer_selection"] = args.sanitizer_k
            log, counts, timed_out = run_pytest(
                work / f"{tool}.xml", selected + workers,
                prefix=("compute-sanitizer", f"--tool={tool}", "--target-processes=all"),
                time_limit=args.time_limit)
            (logs / f"sanitizer-{tool}.log").write_text(log[-4_000_000:])
            found = sanitizer_errors(log)
            record["sanitizer"][tool] = {  # one summary a sanitized process
                "errors": sum(map(int, found)) if found else None,  # None: none was printed
                "processes": len(found), "tests": counts}
            if timed_out:
                record["sanitizer"][tool]["timed_out"] = True
            print(tool, record["sanitizer"][tool])
            save()

    benches = ([("bench", [*BENCH_ARGS, "--dtype", bench_dtypes()])] if args.bench else []) + \
        ([("bench_adjoints", list(ADJOINT_BENCH_ARGS))] if args.bench_adjoints else [])
    for key, bench_args in benches:
        bench_args += args.bench_args.split()
        bench_json = work / f"{key}.json"
        cmd = [sys.executable, "-m", "gpuconv.bench", *bench_args, "--json", str(bench_json)]
        bench_json.unlink(missing_ok=True)
        record[f"{key}_gpu_processes_before"] = busy = gpu_processes()
        if busy:
            print(f"warning: other processes use the GPU before {key}: {busy}")
        log, timed_out, status = _run(cmd, args.time_limit)
        (logs / f"{key}.log").write_text(log)
        print(log[-8000:])
        record[f"{key}_command"] = " ".join(["python -m gpuconv.bench", *bench_args])
        if status == 0 and bench_json.exists():
            bench = json.loads(bench_json.read_text())
            if key == "bench":
                for k in ("peak", "bench", "summary", "versions", "repeat", "timing"):
                    record[k] = bench.get(k)
            else:  # rows and summary keys carry their op (input_grad_..., filter_grad_...)
                record["bench_adjoints"] = bench.get("bench")
                record["summary_adjoints"] = bench.get("summary")
        else:
            record[f"{key}_error"] = ("timed out: " if timed_out else "") + log[-2000:]
        save()

    save()
    print(f"wrote {path}")
    final = merge(earlier, record) if earlier else record
    return 0 if final.get("tests", {}).get("failed", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
