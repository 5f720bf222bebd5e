"""``gpuconv.info()``: what this machine offers gpuconv and which path ``device="auto"`` takes."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from . import device as _device
from .blas import blas_info
from .config import get_autotune, get_cpu_threads
from .dtypes import accepted
from . import kernels
from .kernels import kernel_dir


@dataclass(frozen=True)
class Info:
    version: str
    python_version: str
    numpy_version: str
    cupy_version: Optional[str]
    cuda_runtime_version: Optional[str]
    cuda_driver_version: Optional[str]
    nvrtc: str                  # the NVRTC CuPy compiles the kernels with, and what it limits
    gpus: Tuple[str, ...]
    auto_device: str           # "cuda" or "cpu": where device="auto" runs NumPy inputs
    auto_reason: str
    kernel_dir: str
    dtypes: Tuple[str, ...]     # what arrays this installation can convolve
    autotune: str               # "off", or "on" and where its choices are kept
    cpu_threads: str            # how many tasks a CPU call may split into (gpuconv.workers)
    blas: str                   # the kernels NumPy's OpenBLAS runs, and advice where they
                                # leave the CPU's AVX-512 unused (gpuconv.blas)
    sigpy: str                  # whether sigpy is installed and whose convolutions it runs

    def __str__(self) -> str:
        rows = [
            ("gpuconv", self.version),
            ("python", self.python_version),
            ("numpy", self.numpy_version),
            ("cupy", self.cupy_version or "not available"),
            ("CUDA runtime", self.cuda_runtime_version or "-"),
            ("CUDA driver", self.cuda_driver_version or "-"),
            ("NVRTC", self.nvrtc),
            ("GPUs", ", ".join(f"{i}: {n}" for i, n in enumerate(self.gpus)) or "none"),
            ("device='auto'", f"{self.auto_device} ({self.auto_reason})"),
            ("CUDA sources", self.kernel_dir),
            ("dtypes", ", ".join(self.dtypes) + ("" if "bfloat16" in self.dtypes else
                                                  " (bfloat16: pip install gpuconv[bfloat16])")),
            ("autotune", self.autotune),
            ("CPU threads", self.cpu_threads),
            ("BLAS", self.blas),
            ("sigpy", self.sigpy),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _version_str(v: Optional[int]) -> Optional[str]:
    return None if not v else f"{v // 1000}.{(v % 1000) // 10}"


def info() -> Info:
    """Package version, NumPy/CuPy/CUDA versions, GPU names, and where ``device="auto"`` runs."""
    from . import __version__
    status = _device.cuda_status()
    env = os.environ.get(_device.ENV_VAR, "").strip()
    if env:
        try:
            kind, _ = _device.resolve("auto")
            reason = f"{_device.ENV_VAR}={env}"
        except (ValueError, _device.DeviceUnavailableError) as exc:
            kind, reason = "error", str(exc)
    else:
        kind = "cuda" if status.available else "cpu"
        reason = status.reason
    try:
        kdir = str(kernel_dir())
    except FileNotFoundError as exc:
        kdir = f"missing ({exc})"
    from .tuning import cache_path
    try:
        autotune = f"on, choices kept in {cache_path()}" if get_autotune() else "off"
    except ValueError as exc:  # a malformed GPUCONV_AUTOTUNE: say so rather than fail
        autotune = f"error ({exc})"
    try:
        threads = str(get_cpu_threads())
    except ValueError as exc:  # a malformed GPUCONV_CPU_THREADS
        threads = f"error ({exc})"
    return Info(version=__version__, python_version=platform.python_version(),
                numpy_version=np.__version__, cupy_version=status.cupy_version,
                cuda_runtime_version=_version_str(status.runtime_version),
                cuda_driver_version=_version_str(status.driver_version),
                nvrtc=_nvrtc_line(status.cupy_version is not None), gpus=status.device_names,
                auto_device=kind, auto_reason=reason,
                kernel_dir=kdir, dtypes=tuple(d.name for d in accepted()), autotune=autotune,
                cpu_threads=threads, blas=_blas_line(), sigpy=_sigpy_line())


def _nvrtc_line(cupy_loaded: bool) -> str:
    """The version of CuPy's NVRTC, and what an old one leaves out (gemm_wgmma before 12.9);
    "-" without CuPy."""
    if not cupy_loaded:
        return "-"
    version = kernels.cupy_nvrtc_version()
    if version is None:
        return "not loadable (CuPy cannot compile the kernels)"
    line = f"{version[0]}.{version[1]}"
    oldest = kernels.ARCH_SPECIFIC_MIN_NVRTC
    if version < oldest:
        line += (f" ('gemm_wgmma' needs {oldest[0]}.{oldest[1]} or later; every other kernel "
                 f"builds)")
    return line


def _sigpy_line() -> str:
    """Whether sigpy is installed (read from its metadata: importing it would import numba)
    and whether its convolutions run on gpuconv (gpuconv.sigpy_conv.install())."""
    from importlib import metadata
    try:
        version = metadata.version("sigpy")
    except metadata.PackageNotFoundError:
        return "not installed"
    from .sigpy_conv import installed
    if installed():
        return f"{version}; its convolutions run on gpuconv (gpuconv.sigpy_conv.install())"
    return (f"{version}; its convolutions are its own (on CuPy arrays they need cuDNN): "
            f"gpuconv.sigpy_conv.install() puts gpuconv's in")


def _blas_line() -> str:
    """NumPy's BLAS kernels in words, with :func:`gpuconv.blas.blas_info`'s advice if any."""
    got = blas_info()
    if got["core"] is None:
        return "not a loaded OpenBLAS (its kernels unknown)"
    line = f"OpenBLAS, {got['core']} kernels"
    if got["advice"]:
        return f"{line}: {got['advice']}"
    return line + (f" (OPENBLAS_CORETYPE={got['coretype_env']})" if got["coretype_env"] else "")
