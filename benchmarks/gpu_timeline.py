"""Where a layer's time goes on the GPU: every kernel of a call, with the host's share.

The benchmark times a call by CUDA events around it, so a row's time is the host's time to its
first launch, the kernels, and any idle gaps between them (host work between launches). Its
rows say how far each layer is from cuDNN but not why: session 16's record has the cuBLAS-based
paths 1.5-4x slower than their models (pointwise float16 res2_1x1 0.33 ms against a
~0.08-0.1 ms model, im2col float32 res4_3x3 0.65 against 0.26), unexplained without a timeline.

This script calls each chosen (layer, dtype, algorithm) and PyTorch/cuDNN on the same arrays,
times them by events as the benchmark does (median of ``--calls``), then runs ``--profiled``
more calls under torch.profiler, whose CUPTI tracing records every kernel, copy and memset
of the process whoever launched it (gpuconv's RawKernels, CuPy's elementwise kernels,
cuBLAS's products, cuDNN's). Each call runs inside a named range that ends with a device
synchronization, so a kernel belongs to the range it starts in. Per contender it reports
(medians over the profiled calls): the kernels a call runs, their summed time, the time from
the call's start to its first kernel (host time plus launch latency; the profiler adds a few
microseconds a launch), the idle gaps between kernels, and each kernel's own time.

    PYTHONPATH=$PWD python3 benchmarks/gpu_timeline.py --out $OUT/timeline.json
    PYTHONPATH=$PWD python3 benchmarks/gpu_timeline.py --rows r50_res4_3x3:float32:im2col \\
        --out $OUT/res4.json

``--device cpu`` runs the same steps on the CPU (no kernels: the ranges only), which is how the
test suite checks the script without a GPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

#: The rows furthest from their models or from cuDNN in session 16's record (a9964c7), and
#: the kernels written since that no GPU has run (gemm_cl, depthwise_tile).
DEFAULT_ROWS = (
    "r50_res2_1x1_64to256:float32:pointwise", "r50_res4_1x1_1024to256:float32:pointwise",
    "r50_down_1x1s2:float32:pointwise",
    "r50_res3_3x3:float32:auto", "r50_res3_3x3:float32:gemm_cl",
    "r50_res4_3x3:float32:im2col", "r50_res4_3x3:float32:gemm_cl",
    "r50_res5_3x3:float32:im2col", "vgg16_conv4_2_3x3:float32:gemm_cl",
    "mbv2_dw_3x3_c576:float32:depthwise", "mbv2_dw_3x3_c576:float32:depthwise_tile",
    "mbv2_dw_3x3s2_c96:float32:depthwise_tile",
    "r50_res2_1x1_64to256:float16:pointwise", "r50_res4_1x1_1024to256:float16:pointwise",
    "r50_res3_3x3:float16:gemm_tc_cl", "r50_res5_3x3:float16:gemm_tc_cl",
    "mbv2_dw_3x3_c144:float16:depthwise",
)

#: Chrome-trace categories of device work.
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")

#: Names of the ranges around the profiled calls: PREFIX + contender label + "#" + index.
PREFIX = "gpuconv-timeline:"


def parse_rows(spec: Sequence[str]) -> List[Tuple[str, str, str]]:
    """``layer:dtype:algorithm`` items as tuples (the algorithm defaults to auto)."""
    rows = []
    for item in spec:
        parts = item.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"--rows: {item!r} is not layer:dtype[:algorithm]")
        rows.append((parts[0], parts[1], parts[2] if len(parts) == 3 else "auto"))
    return rows


def calls_of_trace(events: Iterable[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """The profiled calls in a chrome trace's events, by contender label: per call (in order)
    its device events that start within its range, as ``(name, start us from the range's
    start, duration us)``, and the range's own duration."""
    events = list(events)
    ranges = sorted((e for e in events if e.get("ph") == "X"
                     and e.get("cat") == "user_annotation"
                     and str(e.get("name", "")).startswith(PREFIX)), key=lambda e: e["ts"])
    device = sorted((e for e in events if e.get("ph") == "X"
                     and e.get("cat") in DEVICE_CATEGORIES), key=lambda e: e["ts"])
    calls: Dict[str, List[Dict[str, Any]]] = {}
    for r in ranges:
        label = r["name"][len(PREFIX):].rsplit("#", 1)[0]
        start, end = float(r["ts"]), float(r["ts"]) + float(r["dur"])
        work = [(str(e["name"]), float(e["ts"]) - start, float(e["dur"]))
                for e in device if start <= float(e["ts"]) <= end]
        calls.setdefault(label, []).append({"range_us": float(r["dur"]), "device": work})
    return calls


def call_summary(call: Dict[str, Any]) -> Dict[str, Any]:
    """One call's figures (us): device events, their summed time, the time to the first one,
    the span from the first's start to the last's end, and the idle time within that span."""
    work = sorted(call["device"], key=lambda w: w[1])
    if not work:
        return {"count": 0, "busy_us": 0.0, "first_us": None, "span_us": 0.0, "idle_us": 0.0}
    busy, covered_to = 0.0, work[0][1]
    for _, start, dur in work:  # the union of the intervals (on one stream they do not overlap)
        end = start + dur
        if end > covered_to:
            busy += end - max(start, covered_to)
            covered_to = end
    first = work[0][1]
    span = max(s + d for _, s, d in work) - first
    return {"count": len(work), "busy_us": busy, "first_us": first, "span_us": span,
            "idle_us": span - busy}


def contender_summary(calls: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians over a contender's profiled calls, and each device event name's median time a
    call (summed over a call's events of that name), largest first."""
    per_call = [call_summary(c) for c in calls]
    out: Dict[str, Any] = {"calls": len(calls)}
    for key in ("count", "busy_us", "first_us", "span_us", "idle_us"):
        values = [p[key] for p in per_call if p[key] is not None]
        out[key] = statistics.median(values) if values else None
    by_name: Dict[str, List[float]] = {}
    for i, c in enumerate(calls):
        totals: Dict[str, float] = {}
        for name, _, dur in c["device"]:
            totals[name] = totals.get(name, 0.0) + dur
        for name, total in totals.items():
            by_name.setdefault(name, []).append(total)
    out["by_name_us"] = dict(sorted(
        ((name, statistics.median(ts + [0.0] * (len(calls) - len(ts))))
         for name, ts in by_name.items()), key=lambda kv: -kv[1]))
    return out


def _contenders(layer: Dict[str, Any], dtype: str, algorithm: str, device: str,
                with_torch: bool, rng: np.random.Generator) -> Dict[str, Any]:
    from gpuconv import bench
    _, x, w = bench._layer_arrays(layer, dtype, rng)
    label = f"{layer['name']}:{dtype}:{algorithm}"
    out = {label: bench.gpuconv_contender(layer, x, w, device, algorithm)[0]}
    if with_torch:
        try:
            out[f"{layer['name']}:{dtype}:torch"] = bench.torch_contender(layer, x, w, device)[0]
        except ImportError as exc:
            print(f"{layer['name']} {dtype}: no PyTorch peer ({exc})", file=sys.stderr)
    return out


def _synchronize(device: str) -> None:
    if device != "cpu":
        import cupy
        cupy.cuda.Device().synchronize()
        import torch
        torch.cuda.synchronize()


def run(rows: Sequence[Tuple[str, str, str]], device: str, shapes: Optional[str], set_name: str,
        calls: int, profiled: int, warmup: int, seed: int = 0) -> Dict[str, Any]:
    """Time and profile ``rows``; the result as the JSON this script writes."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    from gpuconv import bench
    from gpuconv.dtypes import bfloat16

    if any(dtype == "bfloat16" for _, dtype, _ in rows) and bfloat16() is None:
        raise ValueError("--rows: bfloat16 needs the ml_dtypes package")  # it names the dtype
    layers = {l["name"]: l for l in json.loads(bench.find_shapes(shapes).read_text())[set_name]}
    unknown = sorted({r[0] for r in rows} - set(layers))
    if unknown:
        raise ValueError(f"--rows: no layer {unknown} in the {set_name!r} set")
    rng = np.random.default_rng(seed)
    contenders: Dict[str, Any] = {}
    peers_done = set()
    for name, dtype, algorithm in rows:
        with_torch = (name, dtype) not in peers_done
        peers_done.add((name, dtype))
        contenders.update(_contenders(layers[name], dtype, algorithm, device, with_torch, rng))
    timed: Dict[str, float] = {}
    for label, call in contenders.items():
        for _ in range(warmup):
            call()
        _synchronize(device)
        timed[label] = statistics.median(
            bench._time_call_ms(call, device) for _ in range(calls))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    with profile(activities=activities) as prof:
        for label, call in contenders.items():
            for i in range(profiled):
                with record_function(f"{PREFIX}{label}#{i}"):
                    call()
                    _synchronize(device)
                time.sleep(0.002)  # an idle gap between calls on the timeline
    with tempfile.TemporaryDirectory() as tmp:
        trace_path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace_path))
        events = json.loads(trace_path.read_text())["traceEvents"]
    found = calls_of_trace(events)
    result: Dict[str, Any] = {"device": device, "torch": torch.__version__, "rows": []}
    if device != "cpu":
        result["device"] = bench._cuda_name()
    for label in contenders:
        layer, dtype, who = label.split(":")
        row = {"layer": layer, "dtype": dtype, "contender": who, "event_ms": timed[label]}
        row.update(contender_summary(found.get(label, [])))
        result["rows"].append(row)
    return result


def table(result: Dict[str, Any], top: int = 3) -> str:
    """The rows as text: event-timed ms, then the profiled medians (us) and the top kernels."""
    lines = [f"{'layer':24s} {'dtype':8s} {'contender':14s} {'event ms':>8s} {'n':>3s} "
             f"{'kernels us':>10s} {'to first':>8s} {'idle':>7s}  top device work (us a call)"]
    for r in result["rows"]:
        def us(v: Optional[float]) -> str:
            return "-" if v is None else f"{v:.1f}"
        tops = "; ".join(f"{name[:48]} {t:.1f}" for name, t in
                         list(r["by_name_us"].items())[:top])
        count = "-" if r["count"] is None else f"{r['count']:.0f}"
        lines.append(f"{r['layer'][:24]:24s} {r['dtype']:8s} {r['contender'][:14]:14s} "
                     f"{r['event_ms']:8.3f} {count:>3s} {us(r['busy_us']):>10s} "
                     f"{us(r['first_us']):>8s} {us(r['idle_us']):>7s}  {tops}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                    help="comma-separated layer:dtype[:algorithm] (default: see DEFAULT_ROWS)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--shapes", default=None, help="shapes.json (default: the shared one)")
    ap.add_argument("--set", default=None, help="the shapes.json set (default: the device's)")
    ap.add_argument("--calls", type=int, default=10, help="event-timed calls a contender")
    ap.add_argument("--profiled", type=int, default=5, help="profiled calls a contender")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the JSON here")
    args = ap.parse_args(argv)
    rows = parse_rows([r for r in args.rows.split(",") if r])
    set_name = args.set or ("gpu" if args.device == "cuda" else "cpu")
    result = run(rows, args.device, args.shapes, set_name, args.calls, args.profiled,
                 args.warmup)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(table(result))
    unseen = [f"{r['layer']}:{r['dtype']}:{r['contender']}" for r in result["rows"]
              if args.device == "cuda" and not r["count"]]
    if unseen:  # CUPTI saw no kernel of theirs: the timeline cannot say where their time goes
        print(f"gpu_timeline: no device work recorded for {unseen}; time their kernels with "
              "ncu instead (benchmarks/profile_layer.py's docstring has the command, with "
              "--metrics gpu__time_duration.sum)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
