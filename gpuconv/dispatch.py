"""What every public function does around its arithmetic: check the arrays, pick the device,
move the arrays there, run the backend, and hand the result back in the caller's kind of array."""
from __future__ import annotations

import importlib

import numpy as np

from . import device as _device
from .interop import as_array, like
from typing import Any, Callable, Dict, Sequence
from ._typing import Array

__all__ = ["as_array", "check_flip", "flipped", "run"]


def check_flip(flip: bool) -> None:
    if not isinstance(flip, (bool, np.bool_)):
        raise TypeError(f"flip must be True or False, got {flip!r}")


def flipped(w: Array, rank: int) -> Array:
    """``w`` reversed along its ``rank`` trailing (kernel) axes: a view, no copy."""
    return w[(Ellipsis,) + (slice(None, None, -1),) * rank]


def _to_host(a: Array) -> Array:
    return a.get() if _device.is_cupy_array(a) else a


def _to_gpu(cupy: Any, a: Array, device_id: int) -> Array:
    """``a`` on GPU ``device_id``, the current one: NumPy arrays are copied there, and so are
    CuPy arrays that live on another GPU (a kernel must not dereference another device's
    memory); a CuPy array already there is ``a`` itself."""
    if _device.is_cupy_array(a):
        return a if _device.array_device_id(a) == device_id else cupy.array(a, copy=True)
    return cupy.asarray(a)


_BACKENDS: Dict[str, Any] = {}


def _backend(name: str) -> Any:
    """gpuconv's module ``name`` (cpu, cuda, scratch), imported on first use and kept: an
    import statement inside a call costs ~0.3-0.5 us each time (about twice that on the GPU
    machine of session 16), and cuda imports CuPy, which a CPU-only process need not have."""
    module = _BACKENDS.get(name)
    if module is None:
        module = _BACKENDS[name] = importlib.import_module(f"{__package__}.{name}")
    return module


def run(device: str, caller_primary: Array, arrays: Sequence[Any],
        compute: Callable[..., Any]) -> Any:
    """``compute(xp, backend, *arrays)`` on the device that ``device`` and the arrays select.

    ``arrays`` are NumPy/CuPy arrays (from :func:`as_array`) or None; ``arrays[0]`` is the
    call's main input, and ``caller_primary`` is that input as the caller passed it. On the CPU
    the result is NumPy; on the GPU it is CuPy when the main input lives on a GPU and is copied
    back to NumPy otherwise. It is then handed back as ``caller_primary``'s kind of object (a
    PyTorch tensor for a PyTorch tensor, see :mod:`gpuconv.interop`).
    """
    primary = arrays[0]
    kind, device_id = _device.resolve(device, *[a for a in arrays if a is not None])
    if kind == "cpu":
        cpu, scratch = _backend("cpu"), _backend("scratch")
        with scratch.numpy_settings():
            out = compute(np, cpu, *[None if a is None else _to_host(a) for a in arrays])
        return like(caller_primary, out)
    cupy = _device.cupy_module()
    cuda = _backend("cuda")
    current = cupy.cuda.runtime.getDevice()

    def on_gpu(device_id: int) -> Any:
        moved = [None if a is None else _to_gpu(cupy, a, device_id) for a in arrays]
        out = compute(cupy, cuda, *moved)
        return like(caller_primary, out if _device.is_cupy_array(primary) else out.get())

    if device_id is None or device_id == current:
        return on_gpu(current)
    with cupy.cuda.Device(device_id):
        return on_gpu(device_id)
