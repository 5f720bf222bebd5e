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


def column_major_gemm(args, a_buf, a_off, b_buf, b_off, c_buf, c_off):
    """What cublasGemmStridedBatchedEx does with ``args`` (gpuconv.cublas.GemmArgs, alpha 1,
    beta 0), from its definition, on flat arrays at element offsets: matrices column-major at
    offset + batch * stride, element (r, col) at r + col * ld, op N (as stored) or T; its A is
    gemm_args' b, its B gemm_args' a. float16 and bfloat16 are summed in float32, each result
    rounded once (CUBLAS_COMPUTE_32F). Asserts that no matrix reaches outside its array."""
    def matrix(buf, offset, rows, cols, ld):
        assert offset >= 0 and offset + (rows - 1) + (cols - 1) * ld < buf.size, \
            "cuBLAS would read or write outside the array"
        item = buf.itemsize
        return np.lib.stride_tricks.as_strided(buf[offset:], shape=(rows, cols),
                                               strides=(item, ld * item))

    wide = np.float32 if c_buf.itemsize == 2 else c_buf.dtype
    for i in range(args.batch):
        A = (matrix(b_buf, b_off + i * args.stride_a, args.m, args.k, args.lda)
             if args.transa == 0 else
             matrix(b_buf, b_off + i * args.stride_a, args.k, args.m, args.lda).T)
        B = (matrix(a_buf, a_off + i * args.stride_b, args.k, args.n, args.ldb)
             if args.transb == 0 else
             matrix(a_buf, a_off + i * args.stride_b, args.n, args.k, args.ldb).T)
        C = matrix(c_buf, c_off + i * args.stride_c, args.m, args.n, args.ldc)
        C[...] = A.astype(wide) @ B.astype(wide)


def _host_memory(ptr, count, dtype):
    """``count`` elements of ``dtype`` at host address ``ptr`` as a writable NumPy array."""
    dtype = np.dtype(dtype)
    return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(ptr),
                         dtype=dtype)


def cublas_call(args, a_ptr, b_ptr, c_ptr, dtype):
    """gpuconv.cublas.call on host memory (the stand-in CuPy's arrays): column_major_gemm on
    each operand's memory, from its pointer to the last element its batches reach."""
    def extent(rows, cols, ld, stride):
        return (args.batch - 1) * stride + (cols - 1) * ld + rows

    a_shape = (args.k, args.n) if args.transb == 0 else (args.n, args.k)
    b_shape = (args.m, args.k) if args.transa == 0 else (args.k, args.m)
    a = _host_memory(a_ptr, extent(*a_shape, args.ldb, args.stride_b), dtype)
    b = _host_memory(b_ptr, extent(*b_shape, args.lda, args.stride_a), dtype)
    c = _host_memory(c_ptr, extent(args.m, args.n, args.ldc, args.stride_c), dtype)
    column_major_gemm(args, a, 0, b, 0, c, 0)
