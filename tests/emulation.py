"""The host emulation of the CUDA kernels: their real source compiled as host C++ (with the
shim of host_emulation/) and launched serially or block by block on host threads (see
test_kernel_emulation.py for what it checks and what it cannot). The ``emulator`` fixture
(conftest.py) holds one Emulator a test process, so each kernel is compiled once."""
from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import numpy as np

from gpuconv import cuda, kernels

HERE = Path(__file__).resolve().parent / "host_emulation"


class Emulator:
    """Compiles one kernel instantiation at a time as host C++ and launches it serially."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.libs = {}

    def library(self, filename: str, name_expression: str):
        key = (filename, name_expression)
        if key not in self.libs:
            source = self.workdir / f"{filename}.expanded"
            if not source.exists():
                source.write_text(kernels.kernel_source(filename))
            out = self.workdir / f"emu{len(self.libs)}.so"
            build = subprocess.run(
                ["g++", "-O1", "-shared", "-fPIC", "-pthread", "-std=c++17", f"-I{HERE}",
                 *os.environ.get("GPUCONV_EMULATION_CFLAGS", "").split(),
                 f'-DGC_SOURCE="{source}"', f"-DGC_KERNEL={name_expression}",
                 str(HERE / "launch.cpp"), "-o", str(out)], capture_output=True, text=True)
            assert build.returncode == 0, build.stderr
            lib = ctypes.CDLL(str(out))
            lib.gc_emulate.restype = ctypes.c_int
            lib.gc_emulate_tiled.restype = ctypes.c_int
            self.libs[key] = lib
        return self.libs[key]

    def run(self, filename, name, dtype, work, args):
        """gpuconv.cuda's launcher interface, on the host. Grid-stride kernels (``work`` an int):
        64 threads a block, at most 3 blocks, so that the loops run several rounds. Tiled
        kernels (a ``cuda.Grid``): the grid as given, each block on its own host threads."""
        packed = Packed(args)
        lib = self.library(filename, name)
        if isinstance(work, cuda.Grid):
            if min(work.blocks) == 0:
                return
            status = lib.gc_emulate_tiled(*packed.arguments, *work.blocks, work.threads)
        else:
            blocks = min(-(-work // 64), 3)
            if blocks == 0:
                return
            status = lib.gc_emulate(*packed.arguments, blocks, 64)
        assert status == 0, (f"{name}: arguments do not fit the kernel signature, or a pointer "
                             f"or copy is misaligned (code {status}: see launch.cpp)")

    def launch(self, filename, name, grid, block, args):
        """A compiled kernel called as CuPy calls it, ``function(grid, block, args)``, on the
        host: a tiled kernel's 3-D grid block by block, each on ``block`` host threads; a
        grid-stride kernel's 1-D grid serially, one thread at a time."""
        packed = Packed(args)
        lib = self.library(filename, name)
        if len(grid) == 3:
            status = lib.gc_emulate_tiled(*packed.arguments, *grid, block[0])
        else:
            status = lib.gc_emulate(*packed.arguments, grid[0], block[0])
        assert status == 0, f"{name}: code {status} (see launch.cpp)"


class Packed:
    """Kernel arguments as CuPy passes them: an array (a device array here: ndim > 0) as its data
    pointer; a NumPy scalar, or a 0-d array (a record such as gpuconv.params'), as the bytes of
    its value. ``arguments`` is (addresses of the bytes, byte sizes, pointer flags, count), the
    first four parameters of launch.cpp's gc_emulate functions."""

    def __init__(self, args):
        self.held = []  # keeps every argument's bytes alive while the kernel runs
        sizes, is_pointer = [], []
        for a in args:
            if isinstance(a, np.ndarray) and a.ndim > 0:
                self.held.append(ctypes.c_void_p(a.ctypes.data))
                sizes.append(ctypes.sizeof(ctypes.c_void_p))
                is_pointer.append(1)
            else:
                assert isinstance(a, (np.generic, np.ndarray)), f"unsupported argument {a!r}"
                value = np.ascontiguousarray(a)
                self.held.append(value)
                sizes.append(value.itemsize)
                is_pointer.append(0)
        n = len(args)
        addresses = [ctypes.addressof(v) if isinstance(v, ctypes.c_void_p) else v.ctypes.data
                     for v in self.held]
        self.arguments = ((ctypes.c_void_p * n)(*addresses), (ctypes.c_int * n)(*sizes),
                          (ctypes.c_int * n)(*is_pointer), n)
