"""Batched matrix products by one cuBLAS call, on operands as they lie (CuPy arrays).

``cupy.matmul`` of a stack of matrices by one matrix (the filters of a 1x1 layer times each
image's channels) broadcasts the one matrix; CuPy then builds arrays of pointers with three
elementwise-kernel launches and calls cuBLAS's pointer-array batched GEMM, and for float16 and
bfloat16 it refuses batches or widens them (cupy/cupy#10317), which made ``pointwise`` copy
x and the output around 2-D products. cuBLAS's strided batched GEMM
(``cublasGemmStridedBatchedEx``) takes each operand as a pointer, a leading dimension and a
batch stride, and a batch stride of 0 repeats one matrix, so ``c[i] = a[i] @ b[i]`` is one
call on views of the caller's arrays: no copies, no pointer arrays, one launch.

cuBLAS is column-major. A row-major ``c`` (M x N, rows ``ldc`` apart) is, read column-major,
``c^T`` (N x M); so cuBLAS computes ``c^T = b^T a^T`` with ``b`` as its first operand and
``a`` as its second, each either as it lies (a row-major matrix read column-major is its
transpose) or transposed (a column-major one). :func:`gemm_args` does that arithmetic, and
:func:`gemm` makes the call. Sums: FP32 for float16, bfloat16 and float32 (CUBLAS_COMPUTE_32F,
tensor cores for the 16-bit types, each result rounded once), FP64 for float64; complex the
same per part. Neither CUPY_TF32 (which sets the compute type of CuPy's own matmul) nor a TF32
or emulated math mode set on CuPy's shared cuBLAS handle changes them (:func:`exact_mode`).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from ._typing import Array
from .dtypes import is_bfloat16

#: cudaDataType and cublasComputeType_t values (library_types.h, cublas_api.h): (data type,
#: compute type) by NumPy dtype name.
_CUDA_TYPES = {"float16": (2, 68), "bfloat16": (14, 68), "float32": (0, 68),
               "float64": (1, 70), "complex64": (4, 68), "complex128": (5, 70)}

#: cublasOperation_t: as it lies, transposed.
_OP_N, _OP_T = 0, 1

#: Sizes and leading dimensions cuBLAS takes as int.
_INT_LIMIT = 2**31

#: cublasGemmAlgo_t CUBLAS_GEMM_DEFAULT (cuBLAS picks; tensor cores where the types allow).
_ALGO_DEFAULT = -1

#: cublasMath_t: the modes under which a 32- or 64-bit product is computed in its own
#: precision (CUBLAS_DEFAULT_MATH, CUBLAS_PEDANTIC_MATH), and the flag that may ride on any
#: mode (CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION). Others (CUBLAS_TF32_TENSOR_OP_MATH,
#: the emulated FP32/FP64 modes, the deprecated CUBLAS_TENSOR_OP_MATH) would let cuBLAS round
#: float32 operands to TF32 or emulate the product.
_EXACT_MODES, _MODE_FLAG = (0, 2), 16


class GemmArgs(NamedTuple):
    """The arguments of one cublasGemmStridedBatchedEx call for ``c[i] = a[i] @ b[i]`` (in
    elements; the pointers are the views' own): cuBLAS's first operand is ``b``, its second
    ``a``."""
    transa: int
    transb: int
    m: int
    n: int
    k: int
    lda: int
    stride_a: int
    ldb: int
    stride_b: int
    ldc: int
    stride_c: int
    batch: int


def _elements(shape: Tuple[int, ...], strides: Tuple[int, ...], itemsize: int
              ) -> Optional[Tuple[int, ...]]:
    """Byte strides in elements (0 for an axis of one element, which never steps: a reversed
    view's may be negative), or None where one is negative or not a whole element."""
    steps = tuple(0 if n == 1 else s for n, s in zip(shape, strides))
    if any(s < 0 or s % itemsize for s in steps):
        return None
    return tuple(s // itemsize for s in steps)


def _operand(row_step: int, col_step: int, rows: int, cols: int) -> Optional[Tuple[int, int]]:
    """(operation, leading dimension) for cuBLAS to read a ``rows x cols`` matrix whose
    elements lie ``row_step`` and ``col_step`` apart as the column-major ``cols x rows``
    matrix its memory is (row-major: as it lies) or as the transpose of the column-major
    ``rows x cols`` one; None where neither step is 1 (cuBLAS cannot read it)."""
    if cols == 1 or col_step == 1:  # row-major: read as (cols x rows), columns row_step apart
        ld = row_step if rows > 1 else cols
        if ld >= cols:
            return _OP_N, ld
    if rows == 1 or row_step == 1:  # column-major (rows x cols), columns col_step apart
        ld = col_step if cols > 1 else rows
        if ld >= rows:
            return _OP_T, ld
    return None


def _matrices(v: Array) -> Optional[Tuple[int, int, int]]:
    """(operation, leading dimension, batch stride) in elements of a 3-D view's matrices as
    cuBLAS reads them (:func:`_operand`), or None where it cannot."""
    steps = _elements(v.shape, v.strides, v.dtype.itemsize)
    if steps is None:
        return None
    operand = _operand(steps[1], steps[2], v.shape[1], v.shape[2])
    return None if operand is None else operand + (steps[0],)


def readable(v: Array) -> bool:
    """Whether cuBLAS reads the matrices of the 3-D view ``v`` as they lie."""
    return _matrices(v) is not None


def writable(v: Array) -> bool:
    """Whether cuBLAS writes the matrices of the 3-D view ``v`` as they lie: row-major (read
    column-major, their transposes) and no two batches overlapping."""
    return _writes(_matrices(v), v.shape)


def _writes(m: Optional[Tuple[int, int, int]], shape: Tuple[int, ...]) -> bool:
    """:func:`writable` for a view of ``shape`` whose matrices cuBLAS reads as ``m``."""
    batch, M, N = shape
    return m is not None and m[0] == _OP_N and (batch == 1 or m[2] >= (M - 1) * m[1] + N)


def gemm_args(a: Array, b: Array, c: Array) -> Optional[GemmArgs]:
    """cuBLAS's arguments for ``c[i] = a[i] @ b[i]`` over 3-D views ``a`` (batch, M, K), ``b``
    (batch, K, N) and ``c`` (batch, M, N) of one dtype, any batch strides (0 repeats a matrix),
    or None where cuBLAS cannot take them as they lie: a matrix with no unit step, a negative
    or partial-element stride, an output that is not row-major (or whose batches overlap)."""
    if not (a.ndim == b.ndim == c.ndim == 3) or not (a.dtype == b.dtype == c.dtype):
        return None
    batch, M, K = a.shape
    N = b.shape[2]
    if b.shape[:2] != (batch, K) or c.shape != (batch, M, N) or min(batch, M, N, K) < 1:
        return None
    first = _matrices(b)  # cuBLAS's A: b, read as b^T (N x K) or transposed
    second = _matrices(a)  # cuBLAS's B: a, as a^T (K x M) or transposed
    out = _matrices(c)
    if first is None or second is None or out is None or not _writes(out, c.shape):
        return None
    args = GemmArgs(transa=first[0], transb=second[0], m=N, n=M, k=K, lda=first[1],
                    stride_a=first[2] if batch > 1 else 0, ldb=second[1],
                    stride_b=second[2] if batch > 1 else 0, ldc=out[1],
                    stride_c=out[2] if batch > 1 else 0, batch=batch)
    if max(args.m, args.n, args.k, args.lda, args.ldb, args.ldc, args.batch) >= _INT_LIMIT:
        return None  # cuBLAS's 32-bit sizes
    return args


def cuda_types(dtype: Any) -> Optional[Tuple[int, int]]:
    """(cudaDataType, cublasComputeType_t) of a dtype, or None where cuBLAS has none here."""
    dtype = np.dtype(dtype)
    return _CUDA_TYPES.get("bfloat16" if is_bfloat16(dtype) else dtype.name)


@functools.lru_cache(maxsize=None)
def _scalars(dtype: np.dtype) -> Tuple[int, int, np.ndarray]:
    """(address of alpha = 1, address of beta = 0, the array holding both) as cuBLAS reads
    them from the host (pointer mode host: read during the call), in the compute type's
    precision (FP32 sums take float32 scalars, complex ones complex); made once a dtype (the
    cache keeps the array alive), only ever read."""
    compute = np.dtype(np.float64 if dtype.itemsize == 8 and dtype.kind == "f" else (
        np.complex128 if dtype == np.complex128 else
        np.complex64 if dtype.kind == "c" else np.float32))
    both = np.array([1, 0], dtype=compute)
    return both.ctypes.data, both.ctypes.data + compute.itemsize, both


@functools.lru_cache(maxsize=None)
def _library() -> Tuple[Any, Any, Any, Any]:
    """CuPy's (get_cublas_handle, cublas.gemmStridedBatchedEx, getMathMode, setMathMode),
    imported once."""
    from cupy.cuda import device
    from cupy_backends.cuda.libs import cublas
    return (device.get_cublas_handle, cublas.gemmStridedBatchedEx, cublas.getMathMode,
            cublas.setMathMode)


def exact_mode(mode: int, dtype: np.dtype) -> Optional[int]:
    """The math mode a product of ``dtype`` must run under for its own precision, where the
    handle's ``mode`` is not one (CuPy's cuBLAS handle is shared: code that set TF32 or an
    emulated mode on it for its own products must not change gpuconv's), or None to keep
    ``mode``. 16-bit operands are exact products summed in FP32 under every mode."""
    if dtype.itemsize == 2 or (mode & ~_MODE_FLAG) in _EXACT_MODES:
        return None
    return mode & _MODE_FLAG  # the default mode, keeping the flag


def gemm(a: Array, b: Array, c: Array) -> bool:
    """``c[i] = a[i] @ b[i]`` on the current stream by one cublasGemmStridedBatchedEx (CuPy
    arrays on the current device); False, with nothing done, where cuBLAS cannot take the
    operands as they lie (:func:`gemm_args`) or the dtype (:func:`cuda_types`)."""
    args = gemm_args(a, b, c)
    if args is None or cuda_types(c.dtype) is None:
        return False
    call(args, a.data.ptr, b.data.ptr, c.data.ptr, c.dtype)
    return True


def call(args: GemmArgs, a_ptr: int, b_ptr: int, c_ptr: int, dtype: Any) -> None:
    """One cublasGemmStridedBatchedEx on the current device and stream with ``args`` (from
    :func:`gemm_args`) and the device pointers of views laid out as the ones it was made from
    (:class:`gpuconv.cuda.PointwiseReplay` keeps the arguments and passes new pointers)."""
    get_handle, gemm_strided_batched, get_mode, set_mode = _library()
    dtype = np.dtype(dtype)
    types = cuda_types(dtype)
    assert types is not None, dtype
    data, compute = types
    one, zero, _ = _scalars(dtype)
    handle = get_handle()
    mode = get_mode(handle) if dtype.itemsize > 2 else 0
    exact = exact_mode(mode, dtype)
    if exact is not None:
        set_mode(handle, exact)
    try:
        gemm_strided_batched(
            handle, args.transa, args.transb, args.m, args.n, args.k,
            one, b_ptr, data, args.lda, args.stride_a,
            a_ptr, data, args.ldb, args.stride_b,
            zero, c_ptr, data, args.ldc, args.stride_c,
            args.batch, compute, _ALGO_DEFAULT)
    finally:
        if exact is not None:
            set_mode(handle, mode)  # the handle as the caller left it
