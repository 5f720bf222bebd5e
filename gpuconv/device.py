"""Where a call runs: is a CUDA device usable through CuPy here, and which device a call asks for.

CuPy is imported lazily and never at package import, so gpuconv works with only NumPy installed;
when the GPU cannot be used the reason is recorded and given in the error of ``device="cuda"``.
"""
from __future__ import annotations

import functools
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple
from ._typing import Array
from .config import environ

ENV_VAR = "GPUCONV_DEVICE"
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


class DeviceUnavailableError(RuntimeError):
    """``device="cuda"`` was asked for but no CUDA device can be used; the message says why."""


@dataclass(frozen=True)
class CudaStatus:
    available: bool
    reason: str                      # why it is (or is not) usable, in words
    cupy_version: Optional[str] = None
    runtime_version: Optional[int] = None   # CUDA runtime CuPy was built for, e.g. 13000
    driver_version: Optional[int] = None    # highest CUDA version the driver supports
    device_count: int = 0
    device_names: Tuple[str, ...] = ()


def _cuda_version_str(v: Optional[int]) -> str:
    return "unknown" if v is None else f"{v // 1000}.{(v % 1000) // 10}"


@functools.lru_cache(maxsize=None)
def cuda_status() -> CudaStatus:
    """Probe CuPy and the CUDA driver once per process."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CuPy install failing at import
        return CudaStatus(False, f"CuPy is not installed or failed to import ({exc}); install "
                                 f"gpuconv[cuda13] or gpuconv[cuda12] to use a GPU")
    version = cupy.__version__
    runtime = cupy.cuda.runtime
    try:
        rt_version = runtime.runtimeGetVersion()
    except Exception:
        rt_version = None
    try:
        drv_version = runtime.driverGetVersion()
    except Exception as exc:
        return CudaStatus(False, f"CuPy {version} is installed but no CUDA driver was found "
                                 f"({exc})", version, rt_version)
    if drv_version == 0:
        return CudaStatus(False, f"CuPy {version} is installed but no CUDA driver is loaded",
                          version, rt_version, drv_version)
    try:
        count = runtime.getDeviceCount()
    except Exception as exc:
        msg = str(exc)
        if "InsufficientDriver" in msg or (rt_version and drv_version < rt_version):
            return CudaStatus(False, f"the CUDA driver is too old: it supports CUDA "
                                     f"{_cuda_version_str(drv_version)} but CuPy {version} needs "
                                     f"CUDA {_cuda_version_str(rt_version)} ({msg})",
                              version, rt_version, drv_version)
        return CudaStatus(False, f"CuPy {version} cannot list CUDA devices ({msg})",
                          version, rt_version, drv_version)
    if count == 0:
        return CudaStatus(False, f"CuPy {version} is installed but no CUDA device is visible",
                          version, rt_version, drv_version)
    names = []
    for i in range(count):
        try:
            name = runtime.getDeviceProperties(i)["name"]
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        except Exception:
            names.append(f"device {i}")
    return CudaStatus(True, f"CuPy {version} sees {count} CUDA device(s)", version, rt_version,
                      drv_version, count, tuple(names))


#: The CuPy array types seen so far: every call asks about each of its arrays several times,
#: and ``hasattr(a, "device")`` builds a cupy.cuda.Device object each time.
_CUPY_TYPES: set = set()


def is_cupy_array(a: Array) -> bool:
    """True for a ``cupy.ndarray`` (checked without importing CuPy)."""
    kind = type(a)
    if kind in _CUPY_TYPES:
        return True
    if kind.__module__.split(".")[0] == "cupy" and hasattr(a, "device"):
        _CUPY_TYPES.add(kind)
        return True
    return False


def cupy_module() -> Any:
    """The cupy module, imported on first use: a call's hot paths take it from sys.modules (an
    import statement for a module already imported costs ~0.3 us a call on the dev machine,
    about twice that on the GPU machine of session 16; a stand-in put into sys.modules is
    honoured the same way)."""
    module = sys.modules.get("cupy")
    if module is None:
        import cupy
        module = cupy
    return module


def array_device_id(a: Array) -> int:
    """The GPU a CuPy array lives on (its memory pointer's device: ``a.device.id`` without
    building a Device object)."""
    return int(a.data.device_id)


def _parse(device: str, source: str) -> Tuple[str, Optional[int]]:
    if not isinstance(device, str):
        raise TypeError(f"{source} must be a string, one of {DEVICE_CHOICES}, got {device!r}")
    if device in ("auto", "cpu", "cuda"):
        return device, None
    if device.startswith("cuda:") and device[5:].isdigit():
        return "cuda", int(device[5:])
    raise ValueError(f"{source} must be one of {DEVICE_CHOICES}, got {device!r}")


def default_device() -> str:
    """What ``device="auto"`` means here: the value of GPUCONV_DEVICE when set, else ``"auto"``."""
    env = environ(ENV_VAR).strip()
    if env:
        _parse(env, f"the environment variable {ENV_VAR}")
        return env
    return "auto"


def resolve(device: str, *arrays: Any) -> Tuple[str, Optional[int]]:
    """``("cpu", None)`` or ``("cuda", device_id)`` for a call given ``device`` and its arrays.

    ``"auto"`` (after GPUCONV_DEVICE) runs CuPy arrays on the GPU they are on, and NumPy arrays on
    the current CuPy device when one is usable, otherwise on the CPU. ``"cuda"``/``"cuda:N"`` raise
    :class:`DeviceUnavailableError` with the reason when no GPU can be used.
    """
    kind, index = _parse(device, "device")
    if kind == "auto":
        kind, index = _parse(default_device(), f"the environment variable {ENV_VAR}")
    on_gpu = [a for a in arrays if is_cupy_array(a)]
    if kind == "cpu":
        return "cpu", None
    if kind == "auto":
        if on_gpu:
            return "cuda", array_device_id(on_gpu[0])
        return ("cuda", None) if cuda_status().available else ("cpu", None)
    status = cuda_status()
    if not status.available:
        raise DeviceUnavailableError(f"device='cuda' was requested but the GPU cannot be used: "
                                     f"{status.reason}")
    if index is not None and index >= status.device_count:
        raise ValueError(f"device='cuda:{index}' but only {status.device_count} CUDA device(s) "
                         f"are visible")
    if index is None and on_gpu:
        index = array_device_id(on_gpu[0])
    return "cuda", index


@functools.lru_cache(maxsize=None)
def cpuinfo_field(key: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[str]:
    """The value of the first ``key`` line of Linux's /proc/cpuinfo, or None (no such line,
    or no such file)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else what the platform module knows)."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def cuda_device_name(device_id: int) -> str:
    """CUDA device ``device_id``'s name, e.g. "NVIDIA H100 80GB HBM3" (CuPy must be present)."""
    import cupy
    name = cupy.cuda.runtime.getDeviceProperties(device_id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)
