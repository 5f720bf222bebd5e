"""Do float64 and complex dtypes cost no more than their share of the float32 work? (issue #4)

For every layer of a shapes.json set, times gpuconv's CPU call in float32, float64, complex64 and
complex128, interleaved call by call (a short pause and one untimed call before each timed one,
as the benchmark harness does), and compares each dtype's median time with float32's.

The share each dtype should cost, relative to float32, from the work it does:
- float64: the same multiply-adds at half the SIMD width, twice the bytes: 2x;
- complex64: four real multiply-adds per complex one, twice the bytes: 4x;
- complex128: both: 8x.
A ratio at or under its share meets the goal. Writes a JSON record with --json.

    PYTHONPATH=$PWD python benchmarks/dtype_scaling.py --json benchmarks/results/FILE.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from gpuconv import __version__
from gpuconv.bench import _git_commit, _kw, _layer_arrays, cpu_model, find_shapes, geomean
from gpuconv.blas import blas_info, cpu_flags
from gpuconv.forward import conv

SHARES = {"float32": 1.0, "float64": 2.0, "complex64": 4.0, "complex128": 8.0}


def _arrays(layer: Dict[str, Any], dtype: str, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    real = "float64" if dtype in ("float64", "complex128") else "float32"
    _, x, w = _layer_arrays(layer, real, rng)
    if dtype.startswith("complex"):  # genuinely complex data, not a zero imaginary part
        _, xi, wi = _layer_arrays(layer, real, rng)
        x, w = x + 1j * xi, w + 1j * wi
    return x.astype(dtype), w.astype(dtype)


def run(layers: Sequence[Dict[str, Any]], dtypes: Sequence[str], repeat: int,
        pause: float) -> List[Dict[str, Any]]:
    rows = []
    for i, layer in enumerate(layers):
        calls = {}
        for dt in dtypes:
            x, w = _arrays(layer, dt, seed=i)
            calls[dt] = (lambda x=x, w=w: conv(x, w, device="cpu", **_kw(layer)))
            calls[dt]()  # warm-up
        times: Dict[str, List[float]] = {dt: [] for dt in dtypes}
        for _ in range(repeat):
            for dt, call in calls.items():
                time.sleep(pause)
                call()                       # settle: the call after another runs slow here
                t0 = time.perf_counter()
                call()
                times[dt].append(time.perf_counter() - t0)
        med = {dt: float(np.median(v)) * 1e3 for dt, v in times.items()}
        row = {"layer": layer["name"], "depthwise": layer["groups"] > 1 and
               layer["groups"] == layer["C_in"], "gflop_real": layer["flops"] / 1e9,
               "ms": med, "min_ms": {dt: min(v) * 1e3 for dt, v in times.items()},
               "ratio_to_float32": {dt: med[dt] / med["float32"] for dt in dtypes},
               "share": {dt: SHARES[dt] for dt in dtypes}}
        row["within_share"] = {dt: row["ratio_to_float32"][dt] <= SHARES[dt] for dt in dtypes}
        rows.append(row)
        print(f"{layer['name']:<26} " + " ".join(
            f"{dt} {med[dt]:8.2f} ms ({row['ratio_to_float32'][dt]:4.2f}x/{SHARES[dt]:.0f})"
            for dt in dtypes), flush=True)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--shapes", default=None)
    ap.add_argument("--set", default="cpu")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pause", type=float, default=0.15)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    layers = json.loads(find_shapes(args.shapes).read_text())[args.set]
    if args.only:
        layers = [layer for layer in layers if layer["name"] in args.only]
    dtypes = list(SHARES)
    rows = run(layers, dtypes, args.repeat, args.pause)
    summary: Dict[str, Any] = {}
    for dt in dtypes[1:]:
        # geomean of (ratio / share): at or under 1 means no slower than the share suggests
        summary[f"{dt}_ratio_over_share_geomean"] = geomean(
            [r["ratio_to_float32"][dt] / SHARES[dt] for r in rows])
        summary[f"{dt}_layers_over_share"] = [r["layer"] for r in rows
                                              if not r["within_share"][dt]]
    print(json.dumps(summary, indent=1))
    if args.json:
        record = {"kind": "cpu-dtype-scaling", "commit": _git_commit(),
                  "date": datetime.date.today().isoformat(), "gpuconv": __version__,
                  "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                  "threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
                  # the BLAS kernels in use (OPENBLAS_CORETYPE) set float64's and complex's
                  # products as much as float32's: see gpuconv.blas
                  "blas": blas_info(), "cpu_avx512": "avx512f" in cpu_flags(),
                  "versions": {"numpy": np.__version__, "python": platform.python_version()},
                  "repeat": args.repeat, "shares": SHARES, "rows": rows, "summary": summary}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return 0 if all(not summary[k] for k in summary if k.endswith("_over_share")) else 1


if __name__ == "__main__":
    sys.exit(main())
