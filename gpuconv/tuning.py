"""Opt-in autotuning of ``algorithm="auto"``, as ``torch.backends.cudnn.benchmark`` does.

With autotuning on (:func:`gpuconv.set_autotune`, the :func:`gpuconv.autotune` context, or the
environment variable ``GPUCONV_AUTOTUNE=1``), the first "auto" forward call of a layer times
every algorithm its device has for it on the call's own arrays, keeps the fastest, and
remembers the choice per (gpuconv version, device, layer, dtype): in memory, and on disk in a
JSON file (``GPUCONV_AUTOTUNE_CACHE``, else ``$XDG_CACHE_HOME/gpuconv/autotune.json``, else
``~/.cache/gpuconv/autotune.json``), so that later processes skip the timing. Every algorithm
computes the same convolution, so tuning changes speed, never results beyond rounding; and
before a candidate is timed its result is checked against that of the layer's default algorithm
(the shape rule's choice) within the rounding bound of both (gpuconv.rounding): one that
disagrees is never chosen, and a RuntimeWarning names it (:class:`Agreement`).
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import algorithms
from .dtypes import accumulator_dtype
from .geometry import ConvGeometry
from .rounding import finfo, magnitude_dtype, real_dtype, rounding
from ._typing import Array, DTypeLike

#: timed runs per candidate after one untimed run (which also compiles and caches kernels);
#: the minimum is kept, the figure least disturbed by other work on the machine
REPEATS = 3

_lock = threading.Lock()
_memory: Dict[str, str] = {}
_loaded_from: Optional[Path] = None


def cache_path() -> Path:
    """Where choices are kept across processes."""
    explicit = os.environ.get("GPUCONV_AUTOTUNE_CACHE", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "gpuconv" / "autotune.json"


def layer_key(kind: str, device_name: str, geom: ConvGeometry, dtype: DTypeLike) -> str:
    """One line naming everything a choice depends on: a choice made for one layer, device,
    dtype or gpuconv version is never reused for another."""
    from . import __version__
    g = geom
    return (f"gpuconv {__version__} | {kind}: {device_name} | {np.dtype(dtype).name} | "
            f"N={g.N} C_in={g.C_in} C_out={g.C_out} groups={g.groups} in={g.in_spatial} "
            f"kernel={g.kernel} stride={g.stride} pad={tuple(zip(g.pad_before, g.pad_after))} "
            f"dilation={g.dilation} padding_mode={g.padding_mode} layout={g.layout}")


#: Never tuned to: "gemm" only picks a tile (its tiles are candidates themselves); "gemm_tf32"
#: rounds float32 operands to TF32, and "winograd" rounds through its transforms (a looser
#: bound than a plain sum), which change results, so only a caller asks for them.
_NOT_CANDIDATES = ("gemm", "gemm_tf32", "winograd")


def candidates(kind: str, geom: ConvGeometry, dtype: DTypeLike) -> List[str]:
    """The concrete algorithms that can run this layer on ``kind`` to float32-or-better
    accuracy for its dtype."""
    return [a for a in algorithms.ALGORITHMS[kind]
            if not (kind == "cuda" and a in _NOT_CANDIDATES)
            and not algorithms.why_not(kind, a, geom, dtype)]


def _load(path: Path) -> Dict[str, str]:
    """The choices in ``path``; an unreadable or malformed file counts as empty (it is only a
    cache: the next choice rewrites it)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as e:
        warnings.warn(f"gpuconv: ignoring the autotune cache {path} ({e})", RuntimeWarning,
                      stacklevel=4)
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _store(path: Path, key: str, choice: str) -> None:
    """Add one choice to the file, keeping what other processes wrote meanwhile; written to a
    temporary file and renamed, so a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load(path)
        data[key] = choice
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".autotune-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:  # a read-only home must not break convolutions
        warnings.warn(f"gpuconv: could not write the autotune cache {path} ({e})",
                      RuntimeWarning, stacklevel=4)


def clear_memory() -> None:
    """Forget the choices held in this process (the disk file stays)."""
    global _loaded_from
    with _lock:
        _memory.clear()
        _loaded_from = None


def remembered(kind: str, device_name: str, geom: ConvGeometry, dtype: DTypeLike
               ) -> Optional[str]:
    """The choice this process holds for the layer, if it has tuned or loaded one."""
    with _lock:
        return _memory.get(layer_key(kind, device_name, geom, dtype))


#: A backend's forward call for the autotuner's check: (x_cf, filters, bias, activation, out_cf,
#: algorithm) -> None, filling out_cf as conv_forward does.
Forward = Callable[[Array, Array, Optional[Array], Optional[str], Array, str], None]


class Agreement:
    """The autotuner's check of its candidates on one call's arrays: each candidate's result
    against the result of the layer's default algorithm (``algorithms.choose(kind, "auto")``,
    what every untuned call runs, so trusted as gpuconv's result), so that a kernel that computes
    something else (a fault of a kind no test caught, on a device no test ran on) is never
    chosen for being fast. Two correct results may each be off the exact one by the rounding
    bound of gpuconv.rounding, so they may differ by the sum of both; the magnitude it needs is
    the same layer run on |x|, |filters|, |bias| in the accumulator's real dtype (by that dtype's
    default algorithm). Outputs the bound cannot judge (the reference or the magnitude not
    finite, or the output within the bound of the dtype's largest value) are not compared.
    Costs, once per tuned layer: two runs of the default algorithm; held while the layer is
    tuned: |x|, and three arrays of the output's size (accumulator dtype) plus a few more
    while a candidate is compared. Where that memory is not to be had, the tuner warns and chooses
    by time alone."""

    def __init__(self, xp: Any, forward: Forward, kind: str, geom: ConvGeometry, x_cf: Array,
                 w: Array, bias: Optional[Array], activation: Optional[str], out: Array) -> None:
        self.xp, self.out = xp, out
        dtype = np.dtype(out.dtype)
        self.reference = algorithms.choose(kind, "auto", geom, dtype)
        self.acc = accumulator_dtype(dtype)
        forward(x_cf, w, bias, activation, out, self.reference)
        self.ref = out.astype(self.acc)
        real = magnitude_dtype(dtype)

        def absolute(a: Optional[Array]) -> Optional[Array]:
            return None if a is None else xp.abs(a.astype(accumulator_dtype(a.dtype))).astype(
                real, copy=False)
        magnitude = xp.empty_like(out, dtype=real)
        forward(absolute(x_cf), absolute(w), absolute(bias), None, magnitude,
                algorithms.choose(kind, "auto", geom, real))
        self.rule = rounding(dtype, geom.terms_per_output, bias is not None, activation)
        # twice one result's bound (the magnitude's own rounding, at most its sum coefficient
        # again, and the bound's arithmetic: a relative 1e-3 more); |exact| <= |y| + bound
        # gives the division by 1 - result in __call__
        self.base = magnitude
        self.base *= 2 * self.rule.sum * (1 + 1e-3 + self.rule.sum)
        self.base += 2 * self.rule.floor
        largest = float(finfo(real_dtype(dtype)).max)
        with np.errstate(invalid="ignore", over="ignore"):  # (NaN compares False)
            self.judged = xp.abs(self.ref) + self.base < largest

    def __call__(self, algorithm: str) -> Optional[str]:
        """Why ``algorithm``'s result, now in the output, disagrees with the reference; None
        when it agrees."""
        xp = self.xp
        with np.errstate(invalid="ignore", over="ignore"):
            err = self.out.astype(self.acc)
            bound = xp.abs(err)
            bound += xp.abs(self.ref)
            bound *= self.rule.result / (1 - self.rule.result)
            bound += self.base / (1 - self.rule.result)
            err -= self.ref
            err = xp.abs(err)
            bad = self.judged & ~(err <= bound)  # a NaN where the reference has a number: bad
        count = int(bad.sum())
        if count == 0:
            return None
        worst = int(xp.argmax(xp.where(bad, xp.nan_to_num(err / bound, nan=np.inf), 0)))
        e, b = float(err.ravel()[worst]), float(bound.ravel()[worst])
        return (f"{count} of {bad.size} outputs differ from those of {self.reference!r} by more "
                f"than rounding allows (by {e:.3g} where the bound is {b:.3g})")


def time_candidate(run: Callable[[str], None], algorithm: str, sync: Callable[[], None],
                   accept: Optional[Callable[[str], bool]] = None) -> Optional[float]:
    """Seconds of the fastest of :data:`REPEATS` runs of ``algorithm``, after one untimed run;
    None, untimed, when ``accept`` refuses the untimed run's result."""
    run(algorithm)
    sync()
    if accept is not None and not accept(algorithm):
        return None
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run(algorithm)
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def pick(kind: str, device_name: str, geom: ConvGeometry, dtype: DTypeLike,
         run: Callable[[str], None], sync: Callable[[], None] = lambda: None,
         agreement: Optional[Callable[[], Callable[[str], Optional[str]]]] = None) -> str:
    """The algorithm "auto" runs for this layer under autotuning: remembered, or found by
    timing ``run(name)`` for every candidate (``sync`` waits for the device's queued work).
    ``agreement()``, when given, makes the check of each candidate's result (an
    :class:`Agreement`); a candidate it refuses is left out with a RuntimeWarning."""
    global _loaded_from
    key = layer_key(kind, device_name, geom, dtype)
    path = cache_path()
    with _lock:
        if _loaded_from != path:
            _memory.clear()
            _memory.update(_load(path))
            _loaded_from = path
        known = _memory.get(key)
    names = candidates(kind, geom, dtype)
    if known in names:
        return known
    if len(names) == 1:
        choice = names[0]
    else:
        check = None
        if agreement is not None:
            try:
                check = agreement()
            except MemoryError as e:  # (CuPy's OutOfMemoryError is one)
                warnings.warn(f"gpuconv: autotuning cannot check the candidates' results for "
                              f"[{key}] ({e}); choosing by time alone", RuntimeWarning,
                              stacklevel=4)

        def accept(name: str) -> bool:
            reason = check(name) if check is not None else None
            if reason:
                warnings.warn(f"gpuconv: autotuning leaves algorithm {name!r} out of the "
                              f"choice for [{key}]: {reason}. Please report this (with the "
                              f"output of `gpuconv info`).", RuntimeWarning, stacklevel=5)
            return not reason
        timings: List[Tuple[float, str]] = []
        for a in names:
            seconds = time_candidate(run, a, sync, accept)
            if seconds is not None:
                timings.append((seconds, a))
        # the default agrees with itself; were it refused too, it would still be the choice
        choice = min(timings)[1] if timings else algorithms.choose(kind, "auto", geom, dtype)
    with _lock:
        _memory[key] = choice
        _store(path, key, choice)
    return choice
