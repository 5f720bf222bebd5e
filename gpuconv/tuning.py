"""Opt-in autotuning of ``algorithm="auto"``, as ``torch.backends.cudnn.benchmark`` does.

With autotuning on (:func:`gpuconv.set_autotune`, the :func:`gpuconv.autotune` context, or the
environment variable ``GPUCONV_AUTOTUNE=1``), the first "auto" forward call of a layer times
every algorithm its device has for it on the call's own arrays, keeps the fastest, and
remembers the choice per (gpuconv version, device, layer, dtype): in memory, and on disk in a
JSON file (``GPUCONV_AUTOTUNE_CACHE``, else ``$XDG_CACHE_HOME/gpuconv/autotune.json``, else
``~/.cache/gpuconv/autotune.json``), so that later processes skip the timing. Every algorithm
computes the same convolution, so tuning changes speed, never results beyond rounding.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from . import algorithms
from .geometry import ConvGeometry
from ._typing import DTypeLike

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


def time_candidate(run: Callable[[str], None], algorithm: str,
                   sync: Callable[[], None]) -> float:
    """Seconds of the fastest of :data:`REPEATS` runs of ``algorithm``, after one untimed run."""
    run(algorithm)
    sync()
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run(algorithm)
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def pick(kind: str, device_name: str, geom: ConvGeometry, dtype: DTypeLike,
         run: Callable[[str], None], sync: Callable[[], None] = lambda: None) -> str:
    """The algorithm "auto" runs for this layer under autotuning: remembered, or found by
    timing ``run(name)`` for every candidate (``sync`` waits for the device's queued work)."""
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
        timings: List[Tuple[float, str]] = [(time_candidate(run, a, sync), a) for a in names]
        choice = min(timings)[1]
    with _lock:
        _memory[key] = choice
        _store(path, key, choice)
    return choice
