"""A stand-in for CuPy on a machine without a GPU, for running gpuconv's GPU code path there.

Its arrays are NumPy arrays that gpuconv takes for ``cupy.ndarray`` on GPU 0 (their type's
module is "cupy"; ``data`` holds the pointer and device); its array functions are NumPy's,
returning such arrays; GPU 0 is current. Kernels are what the caller's ``get_function`` makes
of them: benchmarks/host_overhead.py times gpuconv's Python with kernels that only count their
launches, and tests/test_repeat.py runs whole calls with the kernels emulated on the host.

Installing it is the caller's part (sys.modules["cupy"], gpuconv.kernels.get_function and
gpuconv.cuda._sm_count), so that a test can undo it.
"""
from __future__ import annotations

import types
from typing import Any, Callable

import numpy as np


class Memory:
    """What gpuconv reads of a CuPy array's memory pointer."""
    __slots__ = ("ptr", "device_id")

    def __init__(self, ptr: int) -> None:
        self.ptr, self.device_id = ptr, 0


class StandInArray(np.ndarray):
    """A NumPy array that gpuconv takes for a cupy.ndarray on GPU 0 (``data`` is computed once
    an array)."""
    __module__ = "cupy"

    @property
    def data(self) -> Memory:  # type: ignore[override]
        memory = self.__dict__.get("_memory")
        if memory is None:
            memory = self.__dict__["_memory"] = Memory(self.ctypes.data)
        return memory

    @property
    def device(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(id=0)

    def get(self) -> np.ndarray:
        """The array on the host, as cupy.ndarray.get gives it: a NumPy array."""
        return np.array(self)


def _wrapped(function: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        return result.view(StandInArray) if type(result) is np.ndarray else result
    return call


def _numpy_attributes(fake: types.ModuleType) -> Callable[[str], Any]:
    """The stand-in module's ``__getattr__``: every attribute it lacks is NumPy's, a function
    wrapped to return its arrays as stand-ins (types, such as the dtypes' scalar types, as
    they are), and kept on the module, so that it is looked up once."""
    def attribute(name: str) -> Any:
        value = getattr(np, name)
        if callable(value) and not isinstance(value, type):
            value = _wrapped(value)
        setattr(fake, name, value)
        return value
    return attribute


def module(sms: int = 132) -> types.ModuleType:
    """The stand-in ``cupy`` module, on a GPU of ``sms`` SMs."""
    fake = types.ModuleType("cupy")
    fake.ndarray = StandInArray  # type: ignore[attr-defined]
    fake.__getattr__ = _numpy_attributes(fake)  # type: ignore[attr-defined]
    fake.asnumpy = lambda a: np.array(a)  # type: ignore[attr-defined]
    device = types.SimpleNamespace(attributes={"MultiProcessorCount": sms},
                                   compute_capability="90", id=0)
    stream = types.SimpleNamespace(synchronize=lambda: None)  # every kernel ran in its call
    fake.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        runtime=types.SimpleNamespace(getDevice=lambda: 0,
                                      getDeviceProperties=lambda i: {"name": b"stand-in GPU"}),
        Device=lambda i=0: device, get_current_stream=lambda: stream)
    return fake


def view(a: np.ndarray) -> np.ndarray:
    """``a`` (NumPy) as a stand-in CuPy array: a view of the same memory."""
    return a.view(StandInArray)
