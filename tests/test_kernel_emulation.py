"""The CUDA kernels' real source, compiled as host C++ and run serially, over the option grid.

This checks, without a GPU, what a GPU run would check first: that the arguments gpuconv.cuda
builds fit the kernel's signature (count and byte size of each), and that the kernel's index
arithmetic, padding, strides, layouts, bias and activation give the reference's result. Grid-
stride kernels without shared memory or barriers give the same result run one thread at a time.
It is no substitute for the GPU tests (test_grid.py's gpu cases): NVRTC's code generation, CuPy's
argument passing and real concurrency are only exercised there.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpuconv import cuda, kernels
from gpuconv.dtypes import result_dtype
from gpuconv.geometry import plan_conv
from gpuconv.layout import alloc_output, to_channels_first
from cases import grid_cases
from test_grid import _check

HERE = Path(__file__).resolve().parent / "host_emulation"


class Emulator:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.source = workdir / "conv_direct_expanded.cu"
        self.source.write_text(kernels.kernel_source("conv_direct.cu"))
        self.libs = {}

    def library(self, name_expression: str):
        if name_expression not in self.libs:
            out = self.workdir / f"emu{len(self.libs)}.so"
            build = subprocess.run(
                ["g++", "-O1", "-shared", "-fPIC", "-std=c++17", f"-I{HERE}",
                 f'-DGC_SOURCE="{self.source}"', f"-DGC_KERNEL={name_expression}",
                 str(HERE / "launch.cpp"), "-o", str(out)], capture_output=True, text=True)
            assert build.returncode == 0, build.stderr
            lib = ctypes.CDLL(str(out))
            lib.gc_emulate.restype = ctypes.c_int
            self.libs[name_expression] = lib
        return self.libs[name_expression]

    def conv(self, x, filters, bias, *, activation=None, flip=False, **options):
        """gpuconv.cuda's preparation and arguments, with the launch done by the emulator."""
        geom = plan_conv(x.shape, filters.shape, None if bias is None else bias.shape, **options)
        dtype = result_dtype(x.dtype, filters.dtype, None if bias is None else bias.dtype)
        w = filters[(Ellipsis,) + (slice(None, None, -1),) * geom.rank] if flip else filters
        out, out_cf = alloc_output(np, geom, dtype)
        out_cf.fill(np.nan)  # poison: unwritten elements fail the check
        x_cf, w, b, geom = cuda.prepare(np, to_channels_first(np, x, geom), w, bias, geom, dtype)
        params = cuda.kernel_params(geom, x_cf, out_cf, b is not None)
        arrays = (x_cf, w, w if b is None else b, out_cf)
        pointers = (ctypes.c_void_p * 4)(*[a.ctypes.data for a in arrays])
        values = (ctypes.c_longlong * len(params))(*[int(p) for p in params])
        sizes = (ctypes.c_int * len(params))(*[p.itemsize for p in params])
        # a small grid, so that the grid-stride loop runs several rounds
        blocks = cuda.grid_size(geom, max_blocks=3)
        lib = self.library(kernels.conv_direct_name(dtype, activation))
        status = lib.gc_emulate(pointers, 4, values, sizes, len(params), blocks, 64)
        assert status == 0, f"arguments do not fit the kernel signature (code {status})"
        return out


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    return Emulator(tmp_path_factory.mktemp("emulation"))


@pytest.mark.parametrize("case", grid_cases(), ids=lambda c: c.name)
def test_kernel_source_against_reference(case, emulator):
    x0 = case.x.copy()
    got = emulator.conv(case.x, case.filters, case.bias, **case.options)
    _check(case, got, "emulated kernel")
    np.testing.assert_array_equal(case.x, x0)


def test_argument_size_mismatch_is_detected(emulator):
    """The signature check can fail: hand it an int64 where the kernel declares an int."""
    lib = emulator.library(kernels.conv_direct_name(np.float32, None))
    x, out = np.zeros((1, 1, 4), np.float32), np.zeros((1, 1, 3), np.float32)
    n = len(cuda.kernel_params(plan_conv(x.shape, (1, 1, 2)), x, out, False))
    pointers = (ctypes.c_void_p * 4)(0, 0, 0, 0)
    values = (ctypes.c_longlong * n)(*([0] * n))
    sizes = (ctypes.c_int * n)(*([8] * n))
    assert lib.gc_emulate(pointers, 4, values, sizes, n, 0, 1) == -100
    assert lib.gc_emulate(pointers, 4, values, sizes, n - 1, 0, 1) == -1
