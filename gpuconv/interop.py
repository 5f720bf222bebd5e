"""Arrays from other libraries, in without copies and back out as the caller's kind of object.

gpuconv computes on NumPy arrays (CPU) and CuPy arrays (GPU). Anything else that exposes its
memory through DLPack (``__dlpack__``/``__dlpack_device__``: PyTorch tensors, JAX arrays, ...) or
``__cuda_array_interface__`` (Numba device arrays, ...) is *viewed* as one of those two, never
copied, and the result is handed back as the caller's kind of object where that library can take
a DLPack array back (PyTorch tensors, JAX arrays); other producers get a NumPy/CuPy result.

DLPack carries the stream handshake: CuPy passes its current stream when it imports a GPU tensor
and PyTorch its own when it takes the result back, so neither side reads memory the other is
still writing.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .device import is_cupy_array
from .dtypes import check_dtype
from ._typing import Array

# DLPack device types (dlpack.h: DLDeviceType)
_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 13

_ACCEPTED_KINDS = ("a NumPy or CuPy array, or an array that exposes DLPack or "
                   "__cuda_array_interface__ (a PyTorch tensor, a JAX array, ...)")


def _describe_type(a: Array) -> str:
    return f"{type(a).__module__}.{type(a).__qualname__}"


def _library(a: Array) -> str:
    return type(a).__module__.split(".")[0]


def _is_torch_tensor(a: Array) -> bool:
    return _library(a) == "torch" and hasattr(a, "requires_grad") and hasattr(a, "data_ptr")


def _cupy_for(name: str, a: Array) -> Any:
    try:
        import cupy
    except Exception as exc:
        raise TypeError(f"{name} is a GPU array ({_describe_type(a)}, shape {tuple(a.shape)}) but "
                        f"CuPy, which gpuconv computes on GPU memory with, cannot be imported "
                        f"({exc}); install gpuconv[cuda13] or gpuconv[cuda12]") from exc
    return cupy


def _from_dlpack(a: Array, name: str) -> Array:
    """NumPy or CuPy view of a DLPack producer, chosen by where its memory lives."""
    try:
        dev_type, dev_id = a.__dlpack_device__()
    except Exception as exc:
        raise TypeError(f"{name} ({_describe_type(a)}) has __dlpack__ but its __dlpack_device__ "
                        f"failed: {exc}") from exc
    try:
        if dev_type in (_DL_CPU, _DL_CUDA_HOST):
            return np.from_dlpack(a)
        if dev_type in (_DL_CUDA, _DL_CUDA_MANAGED):
            cupy = _cupy_for(name, a)
            with cupy.cuda.Device(int(dev_id)):
                return cupy.from_dlpack(a)
    except (BufferError, TypeError, ValueError, RuntimeError) as exc:
        hint = ""
        if "bfloat16" in str(getattr(a, "dtype", "")):
            hint = (f"; gpuconv takes bfloat16 as NumPy/CuPy arrays of ml_dtypes.bfloat16, which "
                    f"DLPack cannot carry: pass the bits, e.g. "
                    f"{name}.view(torch.int16).numpy().view(ml_dtypes.bfloat16)")
        raise TypeError(f"{name} ({_describe_type(a)}, dtype {getattr(a, 'dtype', '?')}, shape "
                        f"{tuple(getattr(a, 'shape', ()))}) could not be viewed through DLPack: "
                        f"{exc}{hint}") from exc
    raise TypeError(f"{name} ({_describe_type(a)}) lives on DLPack device type {dev_type}; "
                    f"gpuconv runs on the CPU and on CUDA GPUs only")


def as_array(a: Array, name: str) -> Array:
    """``a`` as a NumPy or CuPy array of an accepted dtype, sharing its memory (no copy).

    TypeError, naming ``name``, for anything gpuconv cannot view or convolve (lists, scalars,
    integer dtypes, PyTorch tensors that require grad, memory on other accelerators).
    """
    if isinstance(a, np.ndarray) or is_cupy_array(a):
        view = a
    elif _is_torch_tensor(a):
        if a.requires_grad:
            raise TypeError(f"{name} is a PyTorch tensor that requires grad (shape "
                            f"{tuple(a.shape)}); gpuconv does not record autograd graphs: pass "
                            f"{name}.detach(), and use gpuconv.conv_input_grad/conv_filter_grad "
                            f"for the backward pass")
        if a.is_conj():  # a lazily conjugated view has no DLPack form; materialise it
            a = a.resolve_conj()
        view = _from_dlpack(a, name)
    elif hasattr(a, "__cuda_array_interface__"):
        view = _cupy_for(name, a).asarray(a)      # zero-copy view of the same device memory
    elif hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__"):
        view = _from_dlpack(a, name)
    else:
        raise TypeError(f"{name} must be {_ACCEPTED_KINDS}, got {_describe_type(a)}")
    check_dtype(view, name)
    return view


def _jax_from_dlpack(result: Array) -> Any:
    import jax.numpy as jnp
    return jnp.from_dlpack(result)


def _torch_from_dlpack(result: Array) -> Any:
    import torch
    return torch.from_dlpack(result)


#: libraries whose arrays come back as their own kind, by the top-level module of the type
_RETURNERS = {"torch": _torch_from_dlpack, "jax": _jax_from_dlpack, "jaxlib": _jax_from_dlpack}


def returner(a: Array) -> Optional[Callable[[Any], Any]]:
    """How to hand a result back as ``a``'s kind of object: None for NumPy/CuPy (and for
    producers whose library cannot import DLPack), else a function of the NumPy/CuPy result."""
    if isinstance(a, np.ndarray) or is_cupy_array(a):
        return None
    return _RETURNERS.get(_library(a))


def like(a: Array, result: Array) -> Any:
    """``result`` (NumPy or CuPy) as ``a``'s kind of object, sharing memory (see module doc)."""
    back = returner(a)
    return result if back is None else back(result)
