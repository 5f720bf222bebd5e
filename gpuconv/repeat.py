"""Repeated calls: a forward call on CuPy arrays that repeats an earlier one launches the
kernels that call planned (a :class:`gpuconv.cuda.Replay`), skipping the checks, the planning
and the lookups, which are most of a small layer's host time (issue #5: <= 20 us a call).

A call repeats another when its *key* is equal: the arrays' type, shapes, byte strides,
dtypes and devices, every option, GPUCONV_DEVICE and the current device. Everything the full
path decides from is in it or fixed for the process (the device's SM count, the compiled
kernels): the data pointers are not, so a Replay still checks their alignment per call. No key
(the full path every time) for NumPy or PyTorch arrays, arrays of mixed kinds, options that
are not plain (True, 1.0 or np.int64(1) compare equal to 1 but are not the same argument: see
geometry._plain), or "auto" under autotuning (the choice is the tuner's, which it may change).
A key whose call cannot be replayed (run on the CPU, on another GPU, or converting its arrays
first) is remembered as such, so the full path does not try again.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from . import dispatch
from .config import environ, get_autotune
from .device import ENV_VAR, array_device_id, cupy_module, is_cupy_array, resolve
from .geometry import ConvGeometry, _plain
from ._typing import Array

__all__ = ["clear", "key", "lookup", "remember"]

#: key -> Replay, or None for a call that is not replayed; cleared when full
_REPLAYS: Dict[Any, Any] = {}
_REPLAYS_MAX = 4096


def clear() -> None:
    """Forget every remembered call (tests that change a planning rule call this)."""
    _REPLAYS.clear()


def key(x: Array, w: Array, b: Optional[Array], flip: Any,
        options: Tuple[Any, ...]) -> Optional[Tuple[Any, ...]]:
    """The key of a forward call with arrays ``x``, ``w``, ``b`` (as the caller passed them)
    and ``options`` (rank, stride, padding, dilation, groups, padding_mode, layout,
    activation, device, algorithm), or None for a call that is never replayed."""
    kind = type(x)
    if (not is_cupy_array(x) or type(w) is not kind or (b is not None and type(b) is not kind)
            or type(flip) is not bool or not _plain(options)
            or (options[-1] == "auto" and get_autotune())):
        return None
    return (options, flip, kind, x.shape, x.strides, x.dtype, x.data.device_id,
            w.shape, w.strides, w.dtype, w.data.device_id,
            None if b is None else (b.shape, b.strides, b.dtype, b.data.device_id),
            environ(ENV_VAR), cupy_module().cuda.runtime.getDevice())


def lookup(key: Tuple[Any, ...]) -> Any:
    """The Replay remembered for ``key``; None for a call remembered as not replayed; False
    for a call not seen before (which :func:`remember` takes after its full path)."""
    return _REPLAYS.get(key, False)


def remember(key: Tuple[Any, ...], x: Array, w: Array, b: Optional[Array], flip: bool,
             geom: ConvGeometry, dtype: Any, activation: Optional[str], device: str,
             algorithm: str) -> None:
    """After the full path has run the call of ``key``: keep its Replay, or None where the
    call does not replay (see the module doc)."""
    replay = None
    arrays = (x, w) if b is None else (x, w, b)
    current = cupy_module().cuda.runtime.getDevice()
    if (not flip and resolve(device, *arrays) == ("cuda", current)
            and all(array_device_id(a) == current for a in arrays)):
        replay = dispatch._backend("cuda").forward_replay(x, w, b, geom, dtype, activation,
                                                          algorithm)
    if len(_REPLAYS) >= _REPLAYS_MAX:
        _REPLAYS.clear()
    _REPLAYS[key] = replay
