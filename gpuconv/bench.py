"""Benchmark harness: ``python -m gpuconv.bench`` (later ``gpuconv bench``).

Runs a named set ("cpu" or "gpu") of the layer suite ``shapes.json`` on one device, against the
peers that are installed -- PyTorch (``torch.nn.functional.conv{1,2,3}d``; on the GPU with cuDNN,
TF32 off and ``cudnn.benchmark``) and, on the CPU, SciPy's ``scipy.signal.correlate`` over every
(filter, channel) pair, which is what a user without this package writes. Contenders are
interleaved call by call after a warm-up (each timed call preceded by a short pause and one
untimed call of the same contender, so that no contender pays for the one before it); each
gets the median of several runs (with min/max), GFLOP/s, and each peer's ratio (peer time /
gpuconv time: above 1 means gpuconv is faster). Every peer's output is compared with
gpuconv's, so a row only counts if both computed the same thing. ``--op`` times the adjoints
instead of (or beside) the forward conv: ``input_grad`` (gpuconv.conv_input_grad against
PyTorch's backward-data, ``torch.nn.grad.conv{D}d_input``) and ``filter_grad``
(gpuconv.conv_filter_grad against backward-filter, ``torch.nn.grad.conv{D}d_weight``), each on
the layer's shapes with a random output gradient; their rows and summary keys carry the op.
Peak temporary memory of a gpuconv call is measured too (tracemalloc on the CPU, the CuPy pool's
high-water mark on the GPU). Peers are optional (``pip install gpuconv[bench]``), never needed by
the package. Tests never read the timings.
"""
from __future__ import annotations

import argparse
import datetime
import functools
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

from . import algorithms, conv, conv_filter_grad, conv_input_grad, kernels, tuning, __version__
from .config import get_autotune, get_cpu_threads, set_autotune, set_cpu_threads
from .blas import blas_info, cpu_flags
from .device import cpu_model, cuda_device_name, cuda_status
from .dtypes import bfloat16, is_bfloat16, result_dtype
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


def _progress(done: int, total: int, label: str, stream: Optional[TextIO] = None) -> None:
    stream = sys.stderr if stream is None else stream
    if not stream.isatty() and not (done == 0 and label == "starting") and done != total:
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


#: What --op times: the forward conv, or one of its two adjoints (the backward pass).
OPS = ("forward", "input_grad", "filter_grad")


def _grad_out(layer: Layer, x: np.ndarray, w: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """A random gradient of the layer's output (what the adjoints take)."""
    geom = plan_conv(x.shape, w.shape, **_kw(layer))
    return rng.standard_normal(geom.out_shape()).astype(x.dtype)


def gpuconv_contender(layer: Layer, x: np.ndarray, w: np.ndarray, device: str,
                      algorithm: str = "auto", op: str = "forward",
                      g: Optional[np.ndarray] = None) -> Contender:
    kw: Dict[str, Any] = dict(_kw(layer), device="cpu" if device == "cpu" else "cuda")
    host: Callable[[Any], np.ndarray] = lambda r: r  # noqa: E731
    if device != "cpu":
        import cupy
        x, w, g = cupy.asarray(x), cupy.asarray(w), None if g is None else cupy.asarray(g)
        host = cupy.asnumpy
    if op == "input_grad":
        return (lambda: conv_input_grad(g, w, x.shape, **kw)), host
    if op == "filter_grad":
        return (lambda: conv_filter_grad(x, g, w.shape, **kw)), host
    return (lambda: conv(x, w, algorithm=algorithm, **kw)), host


def concrete_algorithm(layer: Layer, dtype: str, device: str, algorithm: str) -> str:
    """The algorithm gpuconv runs for ``layer`` (what "auto" resolves to), or why none can."""
    geom = plan_conv((layer["N"], layer["C_in"], *layer["spatial"]),
                     (layer["C_out"], layer["C_in"] // layer["groups"], *layer["kernel"]),
                     **_kw(layer))
    try:
        return algorithms.choose("cpu" if device == "cpu" else "cuda", algorithm, geom,
                                 result_dtype(dtype))
    except ValueError as exc:
        return f"n/a: {exc}"


def min_bytes(layer: Layer, dtype: str) -> int:
    """Bytes a conv must move at least: read x and the filters once, write y once."""
    x = layer["N"] * layer["C_in"] * math.prod(layer["spatial"])
    w = layer["C_out"] * layer["C_in"] // layer["groups"] * math.prod(layer["kernel"])
    geom = plan_conv((layer["N"], layer["C_in"], *layer["spatial"]),
                     (layer["C_out"], layer["C_in"] // layer["groups"], *layer["kernel"]),
                     **_kw(layer))
    y = layer["N"] * layer["C_out"] * math.prod(geom.out_spatial)
    return (x + w + y) * np.dtype(dtype).itemsize


def torch_contender(layer: Layer, x: np.ndarray, w: np.ndarray, device: str,
                    op: str = "forward", g: Optional[np.ndarray] = None) -> Contender:
    import torch
    import torch.nn.functional as F
    import torch.nn.grad as G
    D = len(layer["kernel"])
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    xt = _to_torch(torch, x).to(device)
    wt = _to_torch(torch, w).to(device)
    gt = None if g is None else _to_torch(torch, g).to(device)
    kw = _kw(layer)
    if op == "input_grad":  # backward-data (cuDNN's on the GPU)
        f_in = getattr(G, f"conv{D}d_input")
        return (lambda: f_in(x.shape, wt, gt, **kw)), _from_torch
    if op == "filter_grad":  # backward-filter
        f_w = getattr(G, f"conv{D}d_weight")
        return (lambda: f_w(xt, w.shape, gt, **kw)), _from_torch
    f = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[D]

    def call() -> Any:
        with torch.no_grad():
            return f(xt, wt, **kw)
    return call, _from_torch


def _to_torch(torch: Any, a: np.ndarray) -> Any:
    """A NumPy array as a CPU tensor sharing it; bfloat16 (which torch.from_numpy does not
    take) by its bits."""
    if is_bfloat16(a.dtype):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _from_torch(r: Any) -> np.ndarray:
    import torch
    if r.dtype == torch.bfloat16:
        return r.cpu().view(torch.int16).numpy().view(bfloat16())
    return r.cpu().numpy()


def scipy_contender(layer: Layer, x: np.ndarray, w: np.ndarray, device: str,
                    op: str = "forward", g: Optional[np.ndarray] = None) -> Contender:
    """What a user writes with SciPy: one correlate per (image, filter, channel), summed."""
    if device != "cpu":
        raise ImportError("SciPy runs on the CPU only")
    if op != "forward":
        raise ImportError("the SciPy peer times the forward conv only")
    from scipy.signal import correlate
    geom = plan_conv(x.shape, w.shape, stride=layer["stride"], padding=layer["padding"],
                     dilation=layer["dilation"], groups=layer["groups"])
    if max(geom.dilation) > 1:
        raise ImportError("scipy.signal.correlate has no dilation")
    pads = [(0, 0), (0, 0)] + list(zip(geom.pad_before, geom.pad_after))
    Cg, Cog = geom.C_in_per_group, geom.C_out_per_group
    take = tuple(slice(None, o * s, s) for o, s in zip(geom.out_spatial, geom.stride))
    if is_bfloat16(x.dtype):  # SciPy does not take bfloat16: its user would widen to float32
        x, w = x.astype(np.float32), w.astype(np.float32)

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


def _time_call_ms(call: Callable[[], Any], device: str) -> float:
    """One call's time in ms: wall clock on the CPU; on the GPU, CUDA events recorded on the
    current stream around the call (the GPU's time from the first launch to the last kernel's
    end, host gaps between launches included), the device synchronized before and after."""
    if device == "cpu":
        t0 = time.perf_counter()
        call()
        return (time.perf_counter() - t0) * 1e3
    import cupy
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    cupy.cuda.Device().synchronize()
    start.record()
    call()
    end.record()
    end.synchronize()
    return float(cupy.cuda.get_elapsed_time(start, end))


def _peak_temp_bytes(call: Callable[[], Any], device: str) -> Optional[int]:
    if device == "cpu":
        from . import scratch
        scratch.release()  # the reused buffers count: measured as a first call allocates them
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


def _cuda_name() -> str:
    import cupy
    return cuda_device_name(cupy.cuda.Device().id)


def run_layer(layer: Layer, dtype: str, device: str, peers: Sequence[str], repeat: int,
              warmup: int, scipy_max_calls: int, rng: np.random.Generator,
              progress: Callable[[str], None],
              warmup_seconds: float = 0.3, pause: float = 0.0,
              algorithm_names: Sequence[str] = ("auto",),
              peak: Optional[Dict[str, Any]] = None, op: str = "forward") -> Dict[str, Any]:
    """One layer's row. ``algorithm_names``: the first is timed as "gpuconv" (the ratios are
    against it), the others as "gpuconv:<name>" where they apply to the layer (the forward
    conv only: the adjoints have no choice). ``op``: one of OPS (the same multiply-adds and
    the same arrays in each, so GFLOP/s and the floors are the forward conv's)."""
    D, x, w = _layer_arrays(layer, dtype, rng)
    flops = plan_conv(x.shape, w.shape, **_kw(layer)).flops
    g = None if op == "forward" else _grad_out(layer, x, w, rng)
    chosen = (concrete_algorithm(layer, dtype, device, algorithm_names[0]) if op == "forward"
              else "adjoint")
    contenders = {"gpuconv": gpuconv_contender(layer, x, w, device, algorithm_names[0], op, g)}
    skipped = {}
    for extra in algorithm_names[1:]:
        resolved = (concrete_algorithm(layer, dtype, device, extra) if op == "forward"
                    else "n/a: the adjoints have no algorithm choice")
        if resolved.startswith("n/a"):
            skipped[f"gpuconv:{extra}"] = resolved
        else:
            contenders[f"gpuconv:{extra}"] = gpuconv_contender(layer, x, w, device, extra)
    for name in peers:
        pairs = layer["N"] * layer["C_out"] * layer["C_in"] // layer["groups"]
        if name == "scipy" and pairs > scipy_max_calls:
            skipped[name] = (f"{pairs} correlate calls per run, above --scipy-max-calls "
                             f"{scipy_max_calls}")
            continue
        try:
            contenders[name] = PEERS[name](layer, x, w, device, op, g)
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
            times[name].append(_time_call_ms(call, device))
    if op == "forward" and algorithm_names[0] == "auto" and get_autotune():  # what the tuner chose, now known
        chosen = tuning.remembered(
            "cpu" if device == "cpu" else "cuda",
            cpu_model() if device == "cpu" else _cuda_name(), plan_conv(x.shape, w.shape,
                                                                        **_kw(layer)),
            result_dtype(dtype)) or chosen
    depthwise = layer["groups"] > 1 and layer["groups"] == layer["C_in"]
    row = {"layer": layer["name"], "op": op, "dtype": np.dtype(dtype).name, "device": device,
           "algorithm": chosen, "depthwise": depthwise,
           "gflop": flops / 1e9, "min_mib": min_bytes(layer, dtype) / 2**20,
           "peak_temp_mib": None, "contenders": {}, "skipped": skipped}
    for name, ts in times.items():
        med = float(np.median(ts))
        row["contenders"][name] = {"median_ms": med, "min_ms": float(min(ts)),
                                   "max_ms": float(max(ts)), "gflops": flops / 1e6 / med,
                                   "max_rel_diff_vs_gpuconv": agreement.get(name)}
    mine = row["contenders"]["gpuconv"]["median_ms"]
    row["ratio"] = {name: row["contenders"][name]["median_ms"] / mine
                    for name in row["contenders"] if name != "gpuconv"}
    if peak:
        row.update(of_peak(flops, min_bytes(layer, dtype), mine, np.dtype(dtype).name, peak))
    temp = _peak_temp_bytes(contenders["gpuconv"][0], device)
    row["peak_temp_mib"] = None if temp is None else temp / 2**20
    return row


def measure_peak(seconds: float = 0.2) -> Dict[str, Any]:
    """The current GPU's measured ceilings: FP32 and FP64 FMA throughput (kernels_cuda/peak.cu
    on every SM), float16 matmul throughput through cuBLAS (tensor cores), and device-memory
    bandwidth (a 1 GiB device-to-device copy: bytes read + written). Each the best of a few
    timed runs, after a warm-up."""
    import cupy
    dev = cupy.cuda.Device()
    sms = dev.attributes["MultiProcessorCount"]
    out: Dict[str, Any] = {"sms": sms}

    def best_ms(call: Callable[[], Any], runs: int = 5) -> float:
        call()
        return min(_time_call_ms(call, "cuda") for _ in range(runs))

    for dtype, key in ((np.float32, "float32_tflops"), (np.float64, "float64_tflops")):
        f = kernels.get_function("peak.cu", f"gc_fma_peak<{kernels.CTYPES[np.dtype(dtype)]}>",
                                 dtype, dev.id)
        blocks, threads, iters = sms * 16, 256, 1 << 11
        sink = cupy.empty(blocks * threads, dtype=dtype)
        one, tiny = dtype(1.0), dtype(1e-7)
        ms = best_ms(lambda: f((blocks,), (threads,), (sink, np.int32(iters), one, tiny)))
        out[key] = 2 * 8 * iters * blocks * threads / ms / 1e9
    n = 8192
    a = cupy.ones((n, n), dtype=cupy.float16)
    ms = best_ms(lambda: cupy.matmul(a, a))
    out["float16_tflops"] = 2 * n**3 / ms / 1e9
    src = cupy.empty(2**30 // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    ms = best_ms(lambda: cupy.copyto(dst, src))
    out["bandwidth_gbs"] = 2 * src.nbytes / ms / 1e6
    del a, src, dst
    return out


def profile_us(call: Callable[[], Any], calls: int = 500, top: int = 15) -> Dict[str, float]:
    """Where the host time of ``call`` goes: the ``top`` functions by their own time under
    cProfile, in microseconds per call (cProfile inflates every figure; use them as shares)."""
    import cProfile
    import pstats
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        call()
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = sorted(((tottime, f"{Path(file).name}:{line}({name})")
                   for (file, line, name), (_, _, tottime, _, _) in stats.items()),
                  reverse=True)[:top]
    return {where: round(t / calls * 1e6, 3) for t, where in rows}


def host_overhead_us(device: str, calls: int = 2000) -> Dict[str, Any]:
    """Host time of one gpuconv call with compiled kernels, on a layer too small for the GPU to
    be the limit (1x8x16x16 input, 8 3x3 filters): the wall time of many back-to-back calls
    divided by their count, before one synchronization, and the same for PyTorch where
    installed. These calls repeat one another, so all but the first are replayed
    (gpuconv.repeat); ``gpuconv_full_path`` is the call as one that is not replayed runs;
    ``gpuconv_pointwise`` and ``gpuconv_im2col`` the replayed calls of those paths (1x1
    filters; the 3x3 layer by algorithm="im2col").
    ``gpuconv_profile`` says where gpuconv's time goes (see profile_us), and
    ``gpuconv_without_launch`` is the call's time with its kernel launch skipped."""
    import cupy
    x = cupy.ones((1, 8, 16, 16), dtype=cupy.float32)
    w = cupy.ones((8, 8, 3, 3), dtype=cupy.float32)
    out: Dict[str, Any] = {}

    def per_call(call: Callable[[], Any]) -> float:
        for _ in range(50):
            call()
        cupy.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        elapsed = time.perf_counter() - t0
        cupy.cuda.Device().synchronize()
        return elapsed / calls * 1e6

    out["gpuconv"] = per_call(lambda: conv(x, w, padding=1, device="cuda"))
    out["gpuconv_profile"] = profile_us(lambda: conv(x, w, padding=1, device="cuda"))
    # the same call with the kernel launch left out: gpuconv's Python on CuPy arrays plus
    # CuPy's allocation and array queries, the share a faster launch path would not touch
    from . import cuda, repeat
    launch = cuda._launch
    cuda._launch = lambda *args: None
    try:
        out["gpuconv_without_launch"] = per_call(lambda: conv(x, w, padding=1, device="cuda"))
    finally:
        cuda._launch = launch
    # the call as one that is not replayed runs (its key looked up, then the checks, the
    # planning and the lookups of the full path), every time (gpuconv.repeat)
    lookup = repeat.lookup
    repeat.lookup = lambda key: None
    try:
        out["gpuconv_full_path"] = per_call(lambda: conv(x, w, padding=1, device="cuda"))
    finally:
        repeat.lookup = lookup
    # the replays of the paths around cuBLAS: the layer with 1x1 filters (pointwise: one
    # strided batched call), and the 3x3 one by the explicit GEMM (unroll, call, store)
    w1 = cupy.ones((8, 8, 1, 1), dtype=cupy.float32)
    for name, path in (("gpuconv_pointwise", lambda: conv(x, w1, device="cuda",
                                                          algorithm="pointwise")),
                       ("gpuconv_im2col", lambda: conv(x, w, padding=1, device="cuda",
                                                       algorithm="im2col"))):
        try:  # figures of their own: the ones above stand without them
            out[name] = per_call(path)
        except Exception as exc:
            out[f"{name}_error"] = repr(exc)
    try:  # a breakdown only: the figures above stand without it
        out["cupy_steps"] = _cupy_steps_us(cupy, x, w, per_call)
    except Exception as exc:
        out["cupy_steps_error"] = repr(exc)
    cupy.cuda.Device().synchronize()
    try:
        import torch
        import torch.nn.functional as F
        xt, wt = torch.ones(1, 8, 16, 16, device="cuda"), torch.ones(8, 8, 3, 3, device="cuda")
        with torch.no_grad():
            out["torch"] = per_call(lambda: F.conv2d(xt, wt, padding=1))
    except ImportError:
        pass
    return out


def _cupy_steps_us(cupy: Any, x: Any, w: Any,
                   per_call: Callable[[Callable[[], Any]], float]) -> Dict[str, float]:
    """What each CuPy step of host_overhead_us's call costs alone, in us (untraced, unlike the
    profile): the launches the call makes, through gpuconv's launcher and as the bare kernel
    call, the output's allocation, and the array and device queries dispatch makes. The rest of
    the call's time is gpuconv's own Python (benchmarks/host_overhead.py measures that part
    without a GPU)."""
    from . import cuda, kernels
    launches: List[Tuple[Any, ...]] = []
    geom = plan_conv(tuple(x.shape), tuple(w.shape), padding=1)
    out = cupy.empty(geom.out_shape(), dtype=x.dtype)
    cuda._forward(cupy, lambda *launch: launches.append(launch), cuda._gpu_sms(), x, w, None,
                  geom, None, out)
    device_id = cupy.cuda.runtime.getDevice()

    def enter_current() -> None:
        with cupy.cuda.Device(device_id):
            pass

    steps: Dict[str, Callable[[], Any]] = {}
    for i, launch in enumerate(launches):
        file, name, dtype, work, args = launch
        steps[f"launch_{i}_gpuconv"] = functools.partial(cuda._gpu_run, *launch)
        if isinstance(work, cuda.Grid):
            steps[f"launch_{i}_bare"] = functools.partial(
                kernels.get_function(file, name, dtype, device_id), work.blocks,
                (work.threads,), cuda._launch_args(args))
    steps.update({
        "cupy_empty": lambda: cupy.empty(geom.out_shape(), dtype=x.dtype),
        "runtime_getDevice": cupy.cuda.runtime.getDevice,
        "Device().id": lambda: cupy.cuda.Device().id,
        "array.device.id": lambda: x.device.id,
        "array.data.device_id": lambda: x.data.device_id,
        "array.flags.c_contiguous": lambda: x.flags.c_contiguous,
        "cupy.asarray(cupy array)": lambda: cupy.asarray(x),
        "with Device(current)": enter_current,
    })
    return {name: round(per_call(step), 3) for name, step in steps.items()}


def geomean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [float(v) for v in values if v]
    return float(math.exp(sum(map(math.log, present)) / len(present))) if present else None


def of_peak(flops: int, nbytes: int, ms: float, dtype: str,
            peak: Dict[str, Any]) -> Dict[str, Any]:
    """A GPU row's TFLOP/s and how close it runs to the floor the measured peaks set: the larger
    of flops / compute peak and bytes / bandwidth."""
    compute = peak.get(f"{dtype}_tflops")
    bw = peak.get("bandwidth_gbs")
    t_compute = flops / (compute * 1e12) if compute else 0.0
    t_memory = nbytes / (bw * 1e9) if bw else 0.0
    floor_ms = max(t_compute, t_memory) * 1e3
    return {"tflops": flops / ms / 1e9,
            "pct_of_compute_peak": 100 * t_compute * 1e3 / ms if compute else None,
            "pct_of_bandwidth": 100 * t_memory * 1e3 / ms if bw else None,
            "floor_ms": floor_ms or None,
            "bound": None if not floor_ms else ("compute" if t_compute >= t_memory
                                                else "memory")}


def peer_label(peer: str, device: str) -> str:
    """How the summary names a peer: PyTorch on a GPU is cuDNN."""
    return "cudnn" if peer == "torch" and device == "cuda" else peer


def summarize(rows: Sequence[Dict[str, Any]], peers: Sequence[str],
              device: str = "cpu") -> Dict[str, Any]:
    """Geometric means of the peers' time over gpuconv's (above 1: gpuconv is faster): dense
    layers per dtype (``<dtype>_vs_<peer>``; with one dtype also ``dense_vs_<peer>``), and
    depthwise layers (``depthwise_vs_<peer>``, float32 when it ran, else the first dtype).
    Rows of an adjoint (``op`` input_grad or filter_grad) get the same keys prefixed with it."""
    out: Dict[str, Any] = {}
    for op in OPS:
        of_op = [r for r in rows if r.get("op", "forward") == op]
        if of_op:
            prefix = "" if op == "forward" else f"{op}_"
            out.update({prefix + k: v for k, v in _ratios(of_op, peers, device).items()})
    out["max_peak_temp_mib"] = max((r["peak_temp_mib"] or 0) for r in rows) if rows else None
    return out


def _ratios(rows: Sequence[Dict[str, Any]], peers: Sequence[str],
            device: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    dw_dtype = "float32" if "float32" in dtypes else (dtypes[0] if dtypes else None)
    for peer in [p for p in peers if any(p in r["ratio"] for r in rows)]:
        label = peer_label(peer, device)
        for dt in dtypes:
            out[f"{dt}_vs_{label}"] = geomean([r["ratio"].get(peer) for r in rows
                                               if not r["depthwise"] and r["dtype"] == dt])
        if len(dtypes) == 1:
            out[f"dense_vs_{label}"] = out[f"{dtypes[0]}_vs_{label}"]
        out[f"depthwise_vs_{label}"] = geomean([r["ratio"].get(peer) for r in rows
                                                if r["depthwise"] and r["dtype"] == dw_dtype])
    return out


def table(rows: Sequence[Dict[str, Any]], peers: Sequence[str]) -> str:
    head = (f"{'layer':<26} {'dtype':<10} {'algorithm':<13} {'GFLOP':>6} {'gpuconv ms':>11} "
            f"{'GFLOP/s':>8}")
    for p in peers:
        head += f" {p + ' ms':>10} {'x' + p:>7}"
    head += f" {'temp MiB':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        g = r["contenders"]["gpuconv"]
        name = r["layer"] if r.get("op", "forward") == "forward" else f"{r['layer']} {r['op']}"
        line = (f"{name:<26} {r['dtype']:<10} {r['algorithm'][:13]:<13} {r['gflop']:>6.2f} "
                f"{g['median_ms']:>11.2f} {g['gflops']:>8.1f}")
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
    ap.add_argument("--dtype", default="float32",
                    help="dtype, or several comma-separated (float32,float16): one row per "
                         "layer and dtype, and a summary per dtype")
    ap.add_argument("--algorithms", default="auto",
                    help="gpuconv algorithms to time, comma-separated (see gpuconv.algorithms); "
                         "the first is 'gpuconv', the ratios are against it")
    ap.add_argument("--op", default="forward",
                    help=f"what to time, comma-separated: {', '.join(OPS)} (the adjoints "
                         f"against PyTorch's backward-data / backward-filter)")
    ap.add_argument("--measure-peak", action="store_true",
                    help="(cuda) measure FMA, tensor-core and memory peaks first and give each "
                         "row its TFLOP/s and %% of the peak / bandwidth that bounds it")
    ap.add_argument("--overhead", action="store_true",
                    help="(cuda) measure the host time of one small call")
    ap.add_argument("--peers", default="torch,scipy", help="comma-separated: torch, scipy")
    ap.add_argument("--only", nargs="*", help="layer names to run (default: all of the set)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3,
                    help="warm-up calls per contender (at least 0.3 s of them when > 0)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for PyTorch and for gpuconv's CPU passes (default: the "
                         "CPUs this process may use; NumPy's BLAS: set OPENBLAS_NUM_THREADS / "
                         "OMP_NUM_THREADS before starting)")
    ap.add_argument("--scipy-max-calls", type=int, default=10000,
                    help="skip the SciPy peer where it needs more correlate calls per run "
                         "(one per image, filter and channel: a Python loop)")
    ap.add_argument("--pause", type=float, default=None,
                    help="seconds to pause before each timed contender (default 0.15 on the "
                         "CPU, where other libraries' spinning threads linger, 0 on the GPU)")
    ap.add_argument("--autotune", action="store_true",
                    help="autotune gpuconv's 'auto' (gpuconv.autotune): its warm-up calls time "
                         "every algorithm that applies and keep the fastest; rows name it")
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
    if args.threads is not None and args.threads < 1:
        print(f"--threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    threads = args.threads or get_cpu_threads()
    set_cpu_threads(threads)
    if "torch" in peers:
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            pass

    dtypes = [d for d in args.dtype.split(",") if d]
    ops = [o for o in args.op.split(",") if o]
    if not ops or set(ops) - set(OPS):
        print(f"--op must name some of {OPS}, got {args.op!r}", file=sys.stderr)
        return 2
    algorithm_names = [a for a in args.algorithms.split(",") if a]
    if "bfloat16" in dtypes and bfloat16() is None:  # importing ml_dtypes names it for NumPy
        print("--dtype bfloat16 needs the ml_dtypes package", file=sys.stderr)
        return 2
    try:
        for d in dtypes:
            np.dtype(d)
        for a in algorithm_names:
            algorithms.check_name(a)
    except (TypeError, ValueError) as exc:
        print(f"bad --dtype or --algorithms: {exc}", file=sys.stderr)
        return 2
    if (args.measure_peak or args.overhead) and args.device != "cuda":
        print("--measure-peak and --overhead need --device cuda", file=sys.stderr)
        return 2
    peak = measure_peak() if args.measure_peak else None
    if peak:
        print("measured peaks: " + ", ".join(f"{k} {v:.1f}" for k, v in peak.items()))
    pause = args.pause if args.pause is not None else (0.15 if args.device == "cpu" else 0.0)
    if args.autotune:
        set_autotune(True)
    rng = np.random.default_rng(0)
    rows = []
    jobs = [(op, layer, dt) for op in ops for dt in dtypes for layer in layers]
    total = len(jobs)
    _progress(0, total, "starting")
    started = time.perf_counter()
    for i, (op, layer, dt) in enumerate(jobs):
        def progress(label: str, i: int = i) -> None:
            _progress(i, total, label)
        rows.append(run_layer(layer, dt, args.device, peers, args.repeat, args.warmup,
                              args.scipy_max_calls, rng, progress, pause=pause,
                              algorithm_names=algorithm_names, peak=peak, op=op))
        _progress(i + 1, total, layer["name"])
        if not sys.stderr.isatty():  # a log: one line a finished row, and the time so far
            print(f"  {i + 1}/{total} {layer['name']} {np.dtype(dt).name} {op}: "
                  f"{rows[-1]['contenders']['gpuconv']['median_ms']:.3f} ms "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    present = [p for p in peers if any(p in r["contenders"] for r in rows)]
    extras = [f"gpuconv:{a}" for a in algorithm_names[1:]]
    print(table(rows, present + [e for e in extras if any(e in r["contenders"] for r in rows)]))
    summary = summarize(rows, present, args.device)
    if args.overhead:
        summary["host_overhead_us"] = host_overhead_us(args.device)
    for k, v in summary.items():
        print(f"{k}: {v if v is None or isinstance(v, dict) else round(v, 3)}")

    if args.json:
        versions = {"numpy": np.__version__, "python": platform.python_version()}
        for mod in ("torch", "scipy", "cupy"):
            if mod in sys.modules:
                versions[mod] = sys.modules[mod].__version__
        record = {
            "kind": "benchmark", "gpuconv": __version__, "commit": _git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": args.device, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": threads, "gpuconv_cpu_threads": get_cpu_threads(),
            "blas_threads_env": {k: os.environ.get(k) for k in
                                 ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
            # the kernels NumPy's OpenBLAS runs (OPENBLAS_CORETYPE, if set, chose them)
            "blas": blas_info(), "cpu_avx512": "avx512f" in cpu_flags(),
            "versions": versions, "shapes": str(shapes_path), "set": args.set or args.device,
            # NVRTC's options for the kernels (benchmarks/bench_with_defines.py adds macros)
            "compile_options": list(kernels.COMPILE_OPTIONS),
            "dtype": args.dtype, "ops": ops, "algorithms": algorithm_names,
            "autotune": args.autotune,
            "repeat": args.repeat,
            "warmup": args.warmup, "pause_s": pause, "timing": (
                "CUDA events around each call" if args.device == "cuda" else "perf_counter"),
            "peak": peak, "bench": rows, "summary": summary,
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
