"""Which kernels NumPy's BLAS multiplies with here, and whether they use the CPU's widest vectors.

The CPU path's dense layers are BLAS products (``numpy.matmul``), so their speed is the BLAS's.
OpenBLAS, which NumPy's wheels bundle, picks its kernels by CPU model when it loads, unless the
environment variable ``OPENBLAS_CORETYPE`` names them. The 2-vCPU development machines of this
project set ``OPENBLAS_CORETYPE=Haswell`` (AVX2) although their CPUs have AVX-512 (session 17,
an AMD EPYC of family 26, Zen 5): sgemm 512 x 4608 @ 4608 x 784 on two threads took 14.9 ms
(248 GFLOP/s) so, 8.4 ms (442 GFLOP/s) with the variable unset (OpenBLAS then chose its
SkylakeX kernels itself) or set to SkylakeX. The variable is read when OpenBLAS loads (at
``import numpy``), so a library cannot change it for its caller; :func:`blas_info` says when
it holds the products back, and ``gpuconv info`` prints that.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Dict, Iterable, Optional

from .device import cpuinfo_field

#: OpenBLAS core names (``openblas_get_corename``) whose kernels use AVX-512.
AVX512_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})

#: What to set where the CPU has AVX-512 but OpenBLAS chose other kernels.
AVX512_CORETYPE = "SkylakeX"

#: The name of OpenBLAS's ``openblas_get_corename`` in the builds NumPy and SciPy bundle
#: (scipy-openblas prefixes its symbols and, for 64-bit integers, suffixes them).
_CORENAME_SYMBOLS = ("openblas_get_corename", "scipy_openblas_get_corename64_",
                     "scipy_openblas_get_corename", "openblas_get_corename64_")


def _loaded_openblas(maps: Path = Path("/proc/self/maps")) -> Optional[str]:
    """Path of the OpenBLAS library this process has loaded (Linux), else None."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        path = fields[-1] if fields else ""
        if "openblas" in os.path.basename(path).lower() and ".so" in path:
            return path
    return None


def openblas_core(path: Optional[str] = None) -> Optional[str]:
    """The kernels OpenBLAS chose at load, e.g. ``"Haswell"`` (None where NumPy's BLAS is not a
    loaded OpenBLAS, or it does not say)."""
    path = path or _loaded_openblas()  # NumPy, imported with gpuconv, has loaded its BLAS
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    for name in _CORENAME_SYMBOLS:
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            core = fn()
            return core.decode(errors="replace").strip() if core else None
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset:
    """The CPU's feature flags (Linux's /proc/cpuinfo; empty elsewhere)."""
    return frozenset((cpuinfo_field("flags", cpuinfo) or "").split())


def coretype_advice(core: Optional[str], flags: Iterable[str],
                    env: Optional[str] = None) -> Optional[str]:
    """Advice where OpenBLAS runs ``core``'s kernels, without AVX-512, on a CPU whose ``flags``
    have it: ``env`` (``OPENBLAS_CORETYPE``, if set) chose them, or OpenBLAS did not know the
    CPU. Else None."""
    if core is None or "avx512f" not in set(flags) or core.lower() in AVX512_CORES:
        return None
    if env:
        return (f"OPENBLAS_CORETYPE={env} keeps OpenBLAS on its {core} kernels on this AVX-512 "
                f"CPU: unset it (or set {AVX512_CORETYPE}) before starting Python for faster "
                f"products (dense CPU layers)")
    return (f"OpenBLAS uses its {core} kernels on this AVX-512 CPU: start Python with "
            f"OPENBLAS_CORETYPE={AVX512_CORETYPE} for faster products (dense CPU layers)")


def blas_info() -> Dict[str, Optional[str]]:
    """``{"core": ..., "coretype_env": ..., "advice": ...}`` for NumPy's BLAS here."""
    core = openblas_core()
    env = os.environ.get("OPENBLAS_CORETYPE") or None
    return {"core": core, "coretype_env": env,
            "advice": coretype_advice(core, cpu_flags(), env)}
