"""What every public function does around its arithmetic: check the arrays, pick the device,
move the arrays there, run the backend, and hand the result back in the caller's kind of array."""
from __future__ import annotations

import contextlib

import numpy as np

from . import device as _device
from .dtypes import check_dtype


def check_array(a, name: str) -> None:
    """TypeError unless ``a`` is a NumPy or CuPy array of an accepted dtype."""
    if isinstance(a, np.ndarray) or _device.is_cupy_array(a):
        check_dtype(a, name)
        return
    raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__module__}."
                    f"{type(a).__qualname__}")


def check_flip(flip) -> None:
    if not isinstance(flip, (bool, np.bool_)):
        raise TypeError(f"flip must be True or False, got {flip!r}")


def flipped(w, rank: int):
    """``w`` reversed along its ``rank`` trailing (kernel) axes: a view, no copy."""
    return w[(Ellipsis,) + (slice(None, None, -1),) * rank]


def _to_host(a):
    return a.get() if _device.is_cupy_array(a) else a


def _to_current_gpu(cupy, a):
    """``a`` on CuPy's current device: NumPy arrays are copied there, and so are CuPy arrays that
    live on another GPU (a kernel must not dereference another device's memory)."""
    if _device.is_cupy_array(a) and a.device.id != cupy.cuda.Device().id:
        return cupy.array(a, copy=True)
    return cupy.asarray(a)


def run(device, primary, arrays, compute):
    """``compute(xp, backend, *arrays)`` on the device that ``device`` and the arrays select.

    ``arrays`` may hold None. On the CPU the result is NumPy; on the GPU it is CuPy when
    ``primary`` (the call's main input) is a CuPy array, and is copied back to NumPy otherwise.
    """
    kind, device_id = _device.resolve(device, *[a for a in arrays if a is not None])
    if kind == "cpu":
        from . import cpu
        return compute(np, cpu, *[None if a is None else _to_host(a) for a in arrays])
    import cupy
    from . import cuda
    ctx = cupy.cuda.Device(device_id) if device_id is not None else contextlib.nullcontext()
    with ctx:
        moved = [None if a is None else _to_current_gpu(cupy, a) for a in arrays]
        out = compute(cupy, cuda, *moved)
        return out if _device.is_cupy_array(primary) else out.get()
