"""gpuconv.cublas's arithmetic: the arguments of one cublasGemmStridedBatchedEx call for
``c[i] = a[i] @ b[i]`` on views as they lie. Checked without a GPU by doing what cuBLAS does
with those arguments, from its definition (tests/emulation.py's column_major_gemm: column-major
matrices at pointer + batch * stride, element (r, col) at r + col * ld, op N or T), on the
views' own memory, and comparing with NumPy's matmul of the views. The call itself runs in the
GPU tests (test_gpu_pointwise, test_gpu_repeated_calls_replay_with_the_full_paths_results)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from emulation import column_major_gemm
from gpuconv import cublas

RNG = np.random.default_rng(11)


def _view(buf, offset, shape, steps):
    """A view of the flat buffer at ``offset`` elements with strides ``steps`` in elements."""
    item = buf.itemsize
    return as_strided(buf[offset:], shape=shape, strides=tuple(s * item for s in steps))


def _matrices(kind, batch, rows, cols, buf_size=4000):
    """(buffer, offset, view) of a (batch, rows, cols) stack laid out as ``kind`` says."""
    buf = RNG.standard_normal(buf_size)
    offset = 7
    if kind == "row":
        steps = (rows * cols, cols, 1)
    elif kind == "row_padded":  # rows 3 elements longer than the matrix, batches 5 apart more
        steps = (rows * (cols + 3) + 5, cols + 3, 1)
    elif kind == "col":  # each matrix column-major
        steps = (rows * cols, 1, rows)
    elif kind == "col_padded":
        steps = (rows * (cols + 2) + 2, 1, rows + 2)
    elif kind == "repeated":  # one matrix for every batch (batch stride 0)
        steps = (0, cols, 1)
    elif kind == "interleaved":  # batches as channel groups of an image: every other block
        steps = (2 * rows * cols, cols, 1)
    else:
        raise ValueError(kind)
    return buf, offset, _view(buf, offset, (batch, rows, cols), steps)


LAYOUTS = ("row", "row_padded", "col", "col_padded", "repeated")
SIZES = [(3, 4, 5, 6), (1, 4, 5, 6), (2, 1, 5, 6), (2, 4, 1, 6), (2, 4, 5, 1), (2, 1, 1, 1)]


@pytest.mark.parametrize("a_kind, b_kind", list(itertools.product(LAYOUTS, LAYOUTS)))
@pytest.mark.parametrize("c_kind", ("row", "row_padded", "interleaved"))
@pytest.mark.parametrize("size", SIZES, ids=str)
def test_cublas_computes_the_batched_product_in_the_output_view(a_kind, b_kind, c_kind, size):
    batch, M, K, N = size
    a_buf, a_off, a = _matrices(a_kind, batch, M, K)
    b_buf, b_off, b = _matrices(b_kind, batch, K, N)
    c_buf, c_off, c = _matrices(c_kind, batch, M, N)
    expected = np.matmul(a, b)
    before = c_buf.copy()
    args = cublas.gemm_args(a, b, c)
    assert args is not None
    column_major_gemm(args, a_buf, a_off, b_buf, b_off, c_buf, c_off)
    np.testing.assert_allclose(c, expected, rtol=1e-12, atol=1e-12)
    written = np.zeros(c_buf.size, bool)
    written[c_off + sum(i * s // c.itemsize for i, s in zip(np.indices(c.shape), c.strides))] = 1
    np.testing.assert_array_equal(c_buf[~written], before[~written])  # nothing else written


def test_what_cublas_cannot_read_as_it_lies_is_refused():
    a = RNG.standard_normal((2, 4, 6))
    b = RNG.standard_normal((2, 6, 5))
    c = np.empty((2, 4, 5))
    assert cublas.gemm_args(a, b, c) is not None
    assert cublas.gemm_args(a[:, :, ::-1], b, c) is None  # negative steps
    assert cublas.gemm_args(a[:, ::2, ::2], RNG.standard_normal((2, 3, 5)), c[:, :2]) is None
    assert cublas.gemm_args(a, b, np.empty((2, 5, 4)).transpose(0, 2, 1)) is None  # col-major c
    overlapping = as_strided(np.empty(40), shape=(2, 4, 5), strides=(8 * 5, 8 * 5, 8))
    assert cublas.gemm_args(a, b, overlapping) is None
    assert cublas.gemm_args(a.astype(np.float32), b, c) is None  # one dtype
    assert cublas.gemm_args(a, b[:, :5], c) is None  # shapes that do not chain
    assert cublas.gemm_args(a[0], b[0], c[0]) is None  # 3-D views only
    odd = np.empty(2 * 4 * 6 * 8 + 1, np.uint8)[1:].view(np.float64).reshape(2, 4, 6)
    assert cublas.gemm_args(odd, b, c) is not None  # byte alignment is cuBLAS's own concern
    # an axis of one element never steps: a reversed one (a flipped 1x1 filter) is taken
    one = RNG.standard_normal((2, 4, 1))[:, :, ::-1]
    assert one.strides[2] < 0 and cublas.gemm_args(one, b[:, :1], c) is not None


def test_cuda_types_name_the_accepted_dtypes_and_their_sums():
    assert cublas.cuda_types(np.float16) == (2, 68)  # CUDA_R_16F, CUBLAS_COMPUTE_32F
    assert cublas.cuda_types(np.float32) == (0, 68)
    assert cublas.cuda_types(np.float64) == (1, 70)  # CUBLAS_COMPUTE_64F
    assert cublas.cuda_types(np.complex64) == (4, 68)
    assert cublas.cuda_types(np.complex128) == (5, 70)
    assert cublas.cuda_types(np.int32) is None
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert cublas.cuda_types(ml_dtypes.bfloat16) == (14, 68)


def test_alpha_and_beta_are_one_and_zero_in_the_compute_precision():
    """cuBLAS reads alpha and beta from these host addresses, as the compute type: float32 for
    16-bit and float32 data, float64, complex64 and complex128 for the others."""
    import ctypes
    for dtype, compute in ((np.float16, np.float32), (np.float32, np.float32),
                           (np.float64, np.float64), (np.complex64, np.complex64),
                           (np.complex128, np.complex128)):
        one, zero, _ = cublas._scalars(np.dtype(dtype))
        size = np.dtype(compute).itemsize
        for address, value in ((one, 1), (zero, 0)):
            raw = ctypes.string_at(address, size)
            assert np.frombuffer(raw, dtype=compute)[0] == value, (dtype, value)


def test_products_run_in_their_own_precision_whatever_mode_the_handle_has():
    """CuPy's cuBLAS handle is shared: a mode that lets cuBLAS round float32 to TF32 or
    emulate the product (TF32 3, emulated FP32 4 and FP64 8, the old tensor-op 1) is swapped
    for the default (keeping the disallow-reduced-precision flag 16) during gpuconv's call;
    the default and pedantic modes, and any mode for 16-bit operands, are kept."""
    f32, f64, f16 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)
    for mode in (0, 2, 16, 18):
        assert cublas.exact_mode(mode, f32) is None and cublas.exact_mode(mode, f64) is None
    for mode in (1, 3, 4, 8):
        assert cublas.exact_mode(mode, f32) == 0 and cublas.exact_mode(mode, f64) == 0
        assert cublas.exact_mode(mode | 16, np.dtype(np.complex64)) == 16
        assert cublas.exact_mode(mode, f16) is None
