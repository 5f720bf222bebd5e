"""gpuconv.blas: the kernels NumPy's OpenBLAS runs, and the advice where they leave AVX-512
unused (read from the loaded library itself, in a fresh process with the variable set)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import gpuconv
from gpuconv import blas

AVX512 = ["fpu", "avx2", "avx512f", "avx512bw"]


def _numpy_uses_openblas() -> bool:
    try:
        config = np.show_config(mode="dicts")
    except TypeError:  # NumPy < 1.26 prints only
        return False
    name = config.get("Build Dependencies", {}).get("blas", {}).get("name", "")
    return "openblas" in name.lower()


def test_advice_only_where_avx512_goes_unused():
    unset = blas.coretype_advice("Haswell", AVX512)
    assert unset is not None and "OPENBLAS_CORETYPE=SkylakeX" in unset
    forced = blas.coretype_advice("Haswell", AVX512, env="Haswell")
    assert forced is not None and "OPENBLAS_CORETYPE=Haswell" in forced and "unset" in forced
    assert blas.coretype_advice("SkylakeX", AVX512) is None
    assert blas.coretype_advice("SapphireRapids", AVX512, env="SapphireRapids") is None
    assert blas.coretype_advice("Haswell", ["fpu", "avx2"]) is None  # no AVX-512 to use
    assert blas.coretype_advice(None, AVX512) is None  # not OpenBLAS, or it does not say


def test_flags_and_library_read_from_their_files(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f\n")
    assert blas.cpu_flags(cpuinfo) == frozenset({"fpu", "avx2", "avx512f"})
    assert blas.cpu_flags(tmp_path / "missing") == frozenset()
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/libc.so.6\n"
        "7f02-7f03 r-xp 00000000 08:01 2 /site/numpy.libs/libscipy_openblas64_-abc.so\n"
        "7f04-7f05 rw-p 00000000 00:00 0\n")
    assert blas._loaded_openblas(maps) == "/site/numpy.libs/libscipy_openblas64_-abc.so"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/libc.so.6\n")
    assert blas._loaded_openblas(maps) is None
    assert blas._loaded_openblas(tmp_path / "missing") is None


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64")
                    or not _numpy_uses_openblas(), reason="NumPy's OpenBLAS on x86-64 Linux")
@pytest.mark.parametrize("core", ["Haswell", "Sandybridge"])
def test_the_core_is_read_from_the_loaded_openblas(core):
    """OPENBLAS_CORETYPE names the kernels OpenBLAS loads; gpuconv reads them back from the
    library (its corename symbol under the bundled build's prefix)."""
    env = dict(os.environ, OPENBLAS_CORETYPE=core)
    code = "import json; from gpuconv import blas; print(json.dumps(blas.blas_info()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    got = json.loads(out)
    assert got["core"].lower() == core.lower() and got["coretype_env"] == core
    avx512 = "avx512f" in blas.cpu_flags()
    assert (got["advice"] is not None) == avx512


def test_info_names_the_blas_kernels(monkeypatch):
    module = sys.modules["gpuconv.info"]  # gpuconv.info is the function
    monkeypatch.setattr(module, "blas_info", lambda: {
        "core": "Haswell", "coretype_env": "Haswell", "advice": "unset it"})
    line = gpuconv.info().blas
    assert line == "OpenBLAS, Haswell kernels: unset it"
    monkeypatch.setattr(module, "blas_info",
                        lambda: {"core": "SkylakeX", "coretype_env": None, "advice": None})
    assert gpuconv.info().blas == "OpenBLAS, SkylakeX kernels"
    monkeypatch.setattr(module, "blas_info",
                        lambda: {"core": None, "coretype_env": None, "advice": None})
    assert "unknown" in gpuconv.info().blas
