"""``gpuconv check``: the cross-device self-test a user runs on their own machine.

Random configurations across the option grid (dtype, rank, stride, every padding form and mode,
dilation, groups incl. depthwise, flip, layout, bias and activation), each run on every device
available here and compared with the same call computed in float64/complex128 on the CPU, within
an error bound that follows from the dtype and the number of summed terms; with two devices, each
is also compared with the other. Prints a summary and returns a non-zero exit status on any
mismatch. (The float64 CPU path itself is checked by gpuconv's test suite against an independent
reference; here it is the yardstick for this machine's BLAS and GPU.) With ``--algorithms all``
every concrete algorithm that can run a case (gpuconv.tuning.candidates: those of float32 or
better accuracy, so not TF32 or Winograd) is also forced and checked alike, one row each: a
self-test of every kernel on the user's own GPU.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, TextIO, Tuple

import numpy as np

from .device import cuda_status
from .dtypes import bfloat16, result_dtype
from .forward import conv
from .geometry import plan_conv
from .rounding import rounding
from .tuning import candidates

DTYPES = ("float16", "float32", "float64", "complex64", "complex128")


def _dtypes() -> Tuple[np.dtype, ...]:
    """DTYPES, and bfloat16 where ml_dtypes is installed."""
    bf16 = bfloat16()
    return tuple(np.dtype(d) for d in DTYPES) + (() if bf16 is None else (bf16,))


def random_call(rng: np.random.Generator
                ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Dict[str, Any]]:
    """(x, filters, bias, options) of one random, valid conv call with small shapes."""
    D = int(rng.integers(1, 4))
    dtypes = _dtypes()
    dtype = dtypes[rng.integers(len(dtypes))]
    K = tuple(int(k) for k in rng.integers(1, 4, D))
    dil = tuple(int(d) for d in rng.integers(1, 3, D))
    stride = tuple(int(s) for s in rng.integers(1, 3, D))
    span = [d * (k - 1) + 1 for k, d in zip(K, dil)]
    S = tuple(int(max(s, 3) + rng.integers(0, 5 if D < 3 else 3)) for s in span)
    mode = ("zeros", "reflect", "replicate", "circular")[rng.integers(4)]
    padding = [0, 1, "valid", "same", "full",
               tuple((int(a), int(b)) for a, b in rng.integers(0, 3, (D, 2)))][rng.integers(6)]
    groups = int(rng.integers(1, 3))
    # a few filters of 8 or 16 kernels: the channel-block kernels (gemm_tc_cl, gemm_cl, ...)
    Cg = int(rng.integers(1, 4)) if rng.random() < 0.8 else int(rng.choice([8, 16]))
    if rng.random() < 0.2:  # depthwise
        groups, Cg = int(rng.integers(2, 5)), 1
    C_in, C_out = groups * Cg, groups * int(rng.integers(1, 4))
    layout = ("channels_first", "channels_last")[rng.integers(2)]
    N = int(rng.integers(1, 3))
    shape = (N, C_in) + S if layout == "channels_first" else (N,) + S + (C_in,)

    def arr(shape: Tuple[int, ...]) -> np.ndarray:
        a = rng.uniform(-1, 1, shape)
        if dtype.kind == "c":
            a = a + 1j * rng.uniform(-1, 1, shape)
        return a.astype(dtype)

    activation = (None if dtype.kind == "c" else
                  (None, "relu", "sigmoid", "tanh")[rng.integers(4)])
    options = dict(stride=stride, padding=padding, dilation=dil, groups=groups,
                   padding_mode=mode, layout=layout, flip=bool(rng.integers(2)),
                   activation=activation)
    bias = arr((C_out,)) if rng.random() < 0.5 else None
    return arr(shape), arr((C_out, Cg) + K), bias, options


def error_bound(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray], options: Dict[str, Any],
                exact: np.ndarray) -> np.ndarray:
    """gpuconv.rounding's bound for the call: its magnitude (the same call on |x|, |w|, |b|) and
    the output dtype's rounding of |exact|."""
    dtype = result_dtype(x.dtype, w.dtype, None if b is None else b.dtype)
    big = np.float64
    mag = conv(np.abs(x).astype(big), np.abs(w).astype(big),
               None if b is None else np.abs(b).astype(big), device="cpu",
               **dict(options, activation=None))
    terms = int(np.prod(w.shape[1:]))
    return rounding(dtype, terms, b is not None, options["activation"]).bound(np, mag, exact)


def _forced(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray], options: Dict[str, Any],
            device: str) -> List[str]:
    """The concrete algorithms of ``device`` that can run this call to float32-or-better
    accuracy (what the autotuner would time)."""
    plan_options = {k: v for k, v in options.items() if k not in ("flip", "activation")}
    geom = plan_conv(x.shape, w.shape, None if b is None else b.shape, **plan_options)
    dtype = result_dtype(x.dtype, w.dtype, None if b is None else b.dtype)
    return candidates("cpu" if device == "cpu" else "cuda", geom, dtype)


@dataclass
class DeviceResult:
    cases: int = 0
    failures: List[str] = field(default_factory=list)
    worst: float = 0.0   # largest error / bound seen


def _measure(r: DeviceResult, i: int, call: Any, exact: np.ndarray, bound: np.ndarray,
             wide: Any, what: str) -> Optional[np.ndarray]:
    """Run ``call`` (one case on one device, maybe one algorithm), record it in ``r``, and
    return its result on the host (None when it raised)."""
    r.cases += 1
    try:
        y = call()
        y = y.get() if hasattr(y, "get") else y
        err = np.abs(y.astype(wide) - exact)
        ratio = float(np.max(err / bound)) if err.size else 0.0
        r.worst = max(r.worst, ratio)
        if not np.all(np.isfinite(y)) or ratio > 1:
            r.failures.append(f"case {i}: error {ratio:.2f}x the bound; {what}")
        return y
    except Exception as exc:  # a crash is a failure to report, not to hide
        r.failures.append(f"case {i}: {type(exc).__name__}: {exc}")
        return None


def run_check(cases: int = 200, seed: int = 0, out: Optional[TextIO] = None,
              progress: bool = True, algorithms: str = "auto") -> int:
    """The self-test; ``algorithms``: "auto" (each device's own choice) or "all" (also every
    concrete algorithm that can run each case, forced). 0 when every check passed."""
    if algorithms not in ("auto", "all"):
        raise ValueError(f"algorithms must be 'auto' or 'all', not {algorithms!r}")
    out = sys.stdout if out is None else out
    devices = ["cpu"] + (["cuda"] if cuda_status().available else [])
    rng = np.random.default_rng(seed)
    results: Dict[str, DeviceResult] = {d: DeviceResult() for d in devices}
    cross = DeviceResult()
    print(f"gpuconv check: {cases} random configurations on {', '.join(devices)}"
          + (", every algorithm forced too" if algorithms == "all" else "")
          + ("" if "cuda" in devices else f" (no GPU: {cuda_status().reason})"), file=out)
    for i in range(cases):
        x, w, b, options = random_call(rng)
        wide = np.complex128 if np.dtype(x.dtype).kind == "c" else np.float64
        exact = conv(x.astype(wide), w.astype(wide), None if b is None else b.astype(wide),
                     device="cpu", **options)
        bound = error_bound(x, w, b, options, exact)
        what = f"x {x.shape} {x.dtype}, filters {w.shape}, {options}"
        got = {}
        for d in devices:
            y = _measure(results[d], i, lambda: conv(x, w, b, device=d, **options), exact,
                         bound, wide, what)
            if y is not None:
                got[d] = y
            if algorithms == "all":
                for a in _forced(x, w, b, options, d):
                    r = results.setdefault(f"{d} {a}", DeviceResult())
                    _measure(r, i, lambda: conv(x, w, b, device=d, algorithm=a, **options),
                             exact, bound, wide, what)
        if len(got) == 2:
            cross.cases += 1
            ratio = float(np.max(np.abs(got["cpu"].astype(wide) - got["cuda"]) / (2 * bound)))
            cross.worst = max(cross.worst, ratio)
            if ratio > 1:
                cross.failures.append(f"case {i}: cpu and cuda differ by {ratio:.2f}x twice "
                                      f"the bound")
        if progress:
            done = int(30 * (i + 1) / cases)
            sys.stderr.write(f"\r[{'#' * done}{' ' * (30 - done)}] {i + 1}/{cases}")
            if i + 1 == cases:
                sys.stderr.write("\n")
    rows = [(d, r) for d, r in results.items()] + ([("cuda vs cpu", cross)] if cross.cases else [])
    width = max(12, max(len(name) for name, _ in rows))
    print(f"{'check':<{width}} {'cases':>6} {'failed':>7} {'worst error/bound':>18}", file=out)
    for name, r in rows:
        print(f"{name:<{width}} {r.cases:>6} {len(r.failures):>7} {r.worst:>18.3f}", file=out)
    failures = [f"{name}: {f}" for name, r in rows for f in r.failures]
    for f in failures[:20]:
        print("  " + f, file=out)
    print("all checks passed" if not failures else f"{len(failures)} check(s) FAILED", file=out)
    return 1 if failures else 0
