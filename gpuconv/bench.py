"""Benchmark harness: ``python -m gpuconv.bench`` (later ``gpuconv bench``).

Runs a named set ("cpu" or "gpu") of the layer suite ``shapes.json`` on one device, against the
peers that are installed -- PyTorch (``torch.nn.functional.conv{1,2,3}d``; on the GPU with cuDNN,
TF32 off and ``cudnn.benchmark``) and, on the CPU, SciPy's ``scipy.signal.correlate`` over every
(filter, channel) pair, which is what a user without this package writes. Contenders are
interleaved call by call after a warm-up (each timed call preceded by a short pause and one
untimed call of the same contender, so that no contender pays for the one before it); each
gets the median of several runs (with min/max), GFLOP/s, and each peer's ratio (peer time /
gpuconv time: above 1 means gpuconv is faster). Every peer's output is compared with
gpuconv's, so a row only counts if both computed the same thing.
Peak temporary memory of a gpuconv call is measured too (tracemalloc on the CPU, the CuPy pool's
high-water mark on the GPU). Peers are optional (``pip install gpuconv[bench]``), never needed by
the package. Tests never read the timings.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

import numpy as np

from . import conv, __version__
from .device import cuda_status
from .geometry import plan_conv

Layer = Dict[str, Any]  # one entry of shapes.json
# a contender: (the call to time, how to bring its result to the host as NumPy)
Contender = Tuple[Callable[[], Any], Callable[[Any], np.ndarray]]

SHAPES_ENV = "GPUCONV_SHAPES"


def find_shapes(path: Optional[str]) -> Path:
    """``--shapes``, else $GPUCONV_SHAPES, else shared/bench/shapes.json beside the checkout."""
    candidates = [path, os.environ.get(SHAPES_ENV)]
    root = Path(__file__).resolve().parents[1]
    candidates += [str(root.parent / "shared" / "bench" / "shapes.json"),
                   str(root / "shared" / "bench" / "shapes.json"),
                   "shared/bench/shapes.json", "../shared/bench/shapes.json"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise FileNotFoundError(f"no shapes.json found: pass --shapes PATH or set {SHAPES_ENV}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _progress(done: int, total: int, label: str, stream: Optional[TextIO] = None) -> None:
    stream = sys.stderr if stream is None else stream
    if not stream.isatty() and done not in (0, total):
        return  # in logs, only the first and last line
    width = 30
    filled = int(width * done / max(total, 1))
    stream.write(f"\r[{'#' * filled}{' ' * (width - filled)}] {done}/{total} {label[:40]:<40}")
    if done == total:
        stream.write("\n")
    stream.flush()


# ---- contenders: each returns (call, result-to-host) for one layer, or raises ImportError ----

def _layer_arrays(layer: Layer, dtype: str,
                  rng: np.random.Generator) -> Tuple[int, np.ndarray, np.ndarray]:
    D = len(layer["kernel"])
    x = rng.standard_normal((layer["N"], layer["C_in"], *layer["spatial"])).astype(dtype)
    w = rng.standard_normal((layer["C_out"], layer["C_in"] // layer["groups"],
                             *layer["kernel"])).astype(dtype)
    w /= np.sqrt(w[0].size)
    return D, x, w


def _kw(layer: dict) -> dict:
    return dict(stride=layer["stride"], padding=layer["padding"], dilation=layer["dilation"],
                groups=layer["groups"])


def gpuconv_contender(layer: Layer, x: np.ndarray, w: np.ndarray, device: str) -> Contender:
    kw = _kw(layer)
    if device == "cpu":
        return (lambda: conv(x, w, device="cpu", **kw)), (lambda r: r)
    import cupy
    xg, wg = cupy.asarray(x), cupy.asarray(w)
    return (lambda: conv(xg, wg, device="cuda", **kw)), cupy.asnumpy


def torch_contender(layer: Layer, x: np.ndarray, w: np.ndarray, device: str) -> Contender:
    import torch
    import torch.nn.functional as F
    f = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(layer["kernel"])]
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    xt = torch.from_numpy(x).to(device)
    wt = torch.from_numpy(w).to(device)
    kw = _kw(layer)

    def call() -> Any:
        with torch.no_grad():
            return f(xt, wt, **kw)
    return call, (lambda r: r.cpu().numpy())


def scipy_contender(layer: Layer, x: np.ndarray, w: np.ndarray, device: str) -> Contender:
    """What a user writes with SciPy: one correlate per (image, filter, channel), summed."""
    if device != "cpu":
        raise ImportError("SciPy runs on the CPU only")
    from scipy.signal import correlate
    geom = plan_conv(x.shape, w.shape, stride=layer["stride"], padding=layer["padding"],
                     dilation=layer["dilation"], groups=layer["groups"])
    if max(geom.dilation) > 1:
        raise ImportError("scipy.signal.correlate has no dilation")
    pads = [(0, 0), (0, 0)] + list(zip(geom.pad_before, geom.pad_after))
    Cg, Cog = geom.C_in_per_group, geom.C_out_per_group
    take = tuple(slice(None, o * s, s) for o, s in zip(geom.out_spatial, geom.stride))

    def call() -> Any:
        xp = np.pad(x, pads)
        out = np.zeros((geom.N, geom.C_out) + geom.out_spatial, x.dtype)
        for n in range(geom.N):
            for co in range(geom.C_out):
                g = co // Cog
                for c in range(Cg):
                    full = correlate(xp[n, g * Cg + c], w[co, c], mode="valid")
                    out[n, co] += full[take]
        return out
    return call, (lambda r: r)


PEERS: Dict[str, Callable] = {"torch": torch_contender, "scipy": scipy_contender}


def _timer(device: str) -> Tuple[Callable[[], float], Callable[[], None]]:
    if device == "cpu":
        return time.perf_counter, (lambda: None)
    import cupy
    sync = cupy.cuda.Device().synchronize
    return time.perf_counter, sync


def _peak_temp_bytes(call: Callable[[], Any], device: str) -> Optional[int]:
    if device == "cpu":
        tracemalloc.start()
        try:
            out = call()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return int(peak - out.nbytes)
    import cupy
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    before = pool.used_bytes()
    out = call()
    cupy.cuda.Device().synchronize()
    return int(pool.total_bytes() - before - out.nbytes)  # total: the pool's high-water mark


def run_layer(layer: Layer, dtype: str, device: str, peers: Sequence[str], repeat: int,
              warmup: int, scipy_max_calls: int, rng: np.random.Generator,
              progress: Callable[[str], None],
              warmup_seconds: float = 0.3, pause: float = 0.0) -> Dict[str, Any]:
    D, x, w = _layer_arrays(layer, dtype, rng)
    flops = plan_conv(x.shape, w.shape, **_kw(layer)).flops
    contenders = {"gpuconv": gpuconv_contender(layer, x, w, device)}
    skipped = {}
    for name in peers:
        pairs = layer["N"] * layer["C_out"] * layer["C_in"] // layer["groups"]
        if name == "scipy" and pairs > scipy_max_calls:
            skipped[name] = (f"{pairs} correlate calls per run, above --scipy-max-calls "
                             f"{scipy_max_calls}")
            continue
        try:
            contenders[name] = PEERS[name](layer, x, w, device)
        except ImportError as exc:
            skipped[name] = f"not available: {exc}"
    clock, sync = _timer(device)
    reference = contenders["gpuconv"][1](contenders["gpuconv"][0]())
    agreement = {}
    for name, (call, host) in contenders.items():
        # warm up by count and by time: oneDNN and BLAS thread pools take a while to settle
        t0 = clock()
        done = 0
        # ... but one call of a slow contender (>= 1 s so far) is warm-up enough
        while warmup and (done < 1 or ((done < warmup or clock() - t0 < warmup_seconds)
                                       and clock() - t0 < 1.0)):
            call()
            sync()
            done += 1
        if name != "gpuconv":
            got = host(call())
            agreement[name] = float(np.max(np.abs(got - reference)) /
                                    max(float(np.max(np.abs(reference))), 1e-30))
    times: Dict[str, List[float]] = {name: [] for name in contenders}
    for r in range(repeat):  # interleaved: each repetition calls every contender once
        for name, (call, _) in contenders.items():
            progress(f"{layer['name']} {name} {r + 1}/{repeat}")
            # One untimed call first: the call after another library's runs slow here for
            # reasons that are not the contender's (OpenBLAS threads still spinning, vCPUs
            # idle after SciPy's single-threaded loop; seen 1.5-4x). Skipped for contenders
            # slower than a second, where it would be noise.
            # And a pause before it: OpenBLAS's threads spin for up to ~0.1 s after a call,
            # which took a PyTorch 3x3 layer here from 2.7 ms to 6.7-22 ms.
            if pause:
                time.sleep(pause)
            if not times[name] or min(times[name]) < 1000:
                call()
            sync()
            t0 = clock()
            call()
            sync()
            times[name].append((clock() - t0) * 1e3)
    row = {"layer": layer["name"], "dtype": np.dtype(dtype).name, "device": device,
           "depthwise": layer["groups"] > 1 and layer["groups"] == layer["C_in"],
           "gflop": flops / 1e9, "peak_temp_mib": None, "contenders": {}, "skipped": skipped}
    for name, ts in times.items():
        med = float(np.median(ts))
        row["contenders"][name] = {"median_ms": med, "min_ms": float(min(ts)),
                                   "max_ms": float(max(ts)), "gflops": flops / 1e6 / med,
                                   "max_rel_diff_vs_gpuconv": agreement.get(name)}
    mine = row["contenders"]["gpuconv"]["median_ms"]
    row["ratio"] = {name: row["contenders"][name]["median_ms"] / mine
                    for name in row["contenders"] if name != "gpuconv"}
    peak = _peak_temp_bytes(contenders["gpuconv"][0], device)
    row["peak_temp_mib"] = None if peak is None else peak / 2**20
    return row


def geomean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [float(v) for v in values if v]
    return float(math.exp(sum(map(math.log, present)) / len(present))) if present else None


def summarize(rows: Sequence[Dict[str, Any]], peers: Sequence[str]) -> Dict[str, Any]:
    out = {}
    for peer in peers:
        dense = [r["ratio"].get(peer) for r in rows if not r["depthwise"]]
        dw = [r["ratio"].get(peer) for r in rows if r["depthwise"]]
        out[f"dense_vs_{peer}"] = geomean(dense)
        out[f"depthwise_vs_{peer}"] = geomean(dw)
    out["max_peak_temp_mib"] = max((r["peak_temp_mib"] or 0) for r in rows) if rows else None
    return out


def table(rows: Sequence[Dict[str, Any]], peers: Sequence[str]) -> str:
    head = f"{'layer':<26} {'GFLOP':>6} {'gpuconv ms':>11} {'GFLOP/s':>8}"
    for p in peers:
        head += f" {p + ' ms':>10} {'x' + p:>7}"
    head += f" {'temp MiB':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        g = r["contenders"]["gpuconv"]
        line = f"{r['layer']:<26} {r['gflop']:>6.2f} {g['median_ms']:>11.2f} {g['gflops']:>8.1f}"
        for p in peers:
            c = r["contenders"].get(p)
            line += (f" {c['median_ms']:>10.2f} {r['ratio'][p]:>7.2f}" if c else
                     f" {'-':>10} {'-':>7}")
        line += f" {r['peak_temp_mib']:>9.1f}"
        lines.append(line)
    return "\n".join(lines)


def _git_commit() -> Optional[str]:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpuconv.bench",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--set", default=None, choices=("cpu", "gpu"),
                    help="layer set of shapes.json (default: the device's)")
    ap.add_argument("--shapes", help=f"path to shapes.json (default: ${SHAPES_ENV} or "
                                     f"shared/bench/shapes.json beside the checkout)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--peers", default="torch,scipy", help="comma-separated: torch, scipy")
    ap.add_argument("--only", nargs="*", help="layer names to run (default: all of the set)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3,
                    help="warm-up calls per contender (at least 0.3 s of them when > 0)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for PyTorch (NumPy's BLAS: set OPENBLAS_NUM_THREADS / "
                         "OMP_NUM_THREADS before starting)")
    ap.add_argument("--scipy-max-calls", type=int, default=10000,
                    help="skip the SciPy peer where it needs more correlate calls per run "
                         "(one per image, filter and channel: a Python loop)")
    ap.add_argument("--pause", type=float, default=None,
                    help="seconds to pause before each timed contender (default 0.15 on the "
                         "CPU, where other libraries' spinning threads linger, 0 on the GPU)")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not cuda_status().available:
        print(f"--device cuda: {cuda_status().reason}", file=sys.stderr)
        return 2
    shapes_path = find_shapes(args.shapes)
    suite = json.loads(shapes_path.read_text())
    layers = suite[args.set or ("gpu" if args.device == "cuda" else "cpu")]
    if args.only:
        unknown = set(args.only) - {l["name"] for l in layers}
        if unknown:
            print(f"unknown layer(s) {sorted(unknown)}", file=sys.stderr)
            return 2
        layers = [l for l in layers if l["name"] in args.only]
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in PEERS:
            print(f"unknown peer {p!r}; known: {sorted(PEERS)}", file=sys.stderr)
            return 2
    threads = args.threads or os.cpu_count()
    if "torch" in peers:
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            pass

    pause = args.pause if args.pause is not None else (0.15 if args.device == "cpu" else 0.0)
    rng = np.random.default_rng(0)
    rows = []
    total = len(layers)
    _progress(0, total, "starting")
    for i, layer in enumerate(layers):
        def progress(label: str, i: int = i) -> None:
            _progress(i, total, label)
        rows.append(run_layer(layer, args.dtype, args.device, peers, args.repeat, args.warmup,
                              args.scipy_max_calls, rng, progress, pause=pause))
        _progress(i + 1, total, layer["name"])
    present = [p for p in peers if any(p in r["contenders"] for r in rows)]
    print(table(rows, present))
    summary = summarize(rows, present)
    for k, v in summary.items():
        print(f"{k}: {v if v is None else round(v, 3)}")

    if args.json:
        versions = {"numpy": np.__version__, "python": platform.python_version()}
        for mod in ("torch", "scipy", "cupy"):
            if mod in sys.modules:
                versions[mod] = sys.modules[mod].__version__
        record = {
            "kind": "benchmark", "gpuconv": __version__, "commit": _git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": args.device, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": threads,
            "blas_threads_env": {k: os.environ.get(k) for k in
                                 ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
            "versions": versions, "shapes": str(shapes_path), "set": args.set or args.device,
            "dtype": args.dtype, "repeat": args.repeat, "warmup": args.warmup,
            "pause_s": pause,
            "bench": rows, "summary": summary,
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
