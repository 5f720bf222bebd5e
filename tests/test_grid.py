"""Both backends against the float64 reference over the option grid (tests/cases.py)."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from cases import (Case, as_dtype, as_float16, bfloat16_cases, channel_block_cases, fast_path_cases,
                   grid_cases, pointwise_cases, tile_cases)
from gpuconv import kernels
from gpuconv.dtypes import bfloat16
from reference import error_bound, error_bound_tf32, error_bound_winograd

CASES = grid_cases()
FAST_PATH_CASES = fast_path_cases()
POINTWISE_CASES = pointwise_cases()
TILE_CASES = tile_cases()
BFLOAT16_CASES = bfloat16_cases()
CHANNEL_BLOCK_CASES = channel_block_cases()
CHANNEL_BLOCK_CASES += [as_dtype(c, bfloat16()) for c in CHANNEL_BLOCK_CASES[:4]
                        if bfloat16() is not None]
# float32 for gemm_cl (FFMA, 4 channels a chunk): filters of 4 to 36 kernels
FFMA_CL_CASES = channel_block_cases("float32", (4, 12, 20, 36, 16))


def _check(case, got, what):
    out_dtype = np.result_type(case.x, case.filters, *(() if case.bias is None else (case.bias,)))
    exact, bound = error_bound(case.x, case.filters, case.bias, out_dtype, **case.options)
    assert got.dtype == out_dtype, what
    assert got.shape == exact.shape, what
    assert np.all(np.isfinite(got)), f"{what}: non-finite output (unwritten or overflowed)"
    err = np.abs(got.astype(exact.dtype) - exact)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} "
                                  f"at {worst}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cpu_against_reference(case):
    x0, w0 = case.x.copy(), case.filters.copy()
    got = gpuconv.conv(case.x, case.filters, case.bias, device="cpu", **case.options)
    assert isinstance(got, np.ndarray)
    _check(case, got, "cpu")
    np.testing.assert_array_equal(case.x, x0)
    np.testing.assert_array_equal(case.filters, w0)


@pytest.mark.parametrize("case", BFLOAT16_CASES, ids=lambda c: c.name)
def test_cpu_bfloat16_against_reference(case):
    """bfloat16 (ml_dtypes) in and out, float32 sums, every CPU algorithm that applies."""
    x0 = case.x.copy()
    _check(case, gpuconv.conv(case.x, case.filters, case.bias, device="cpu", **case.options),
           "cpu bfloat16")
    np.testing.assert_array_equal(case.x, x0)
    for algorithm in ("gemm", "gemm_shifted", "pointwise", "depthwise"):
        got = _forced(case, "cpu", algorithm)
        if got is not None:
            _check(case, got, f"cpu bfloat16 {algorithm}")


# The grid's strided, undilated layers. The CPU GEMM unrolls such a layer from its input split
# into stride phases from cpu.PHASED_MIN_ITEMS unrolled items, below from one strided copy: the
# grid's layers are small (the strided copy), so here the phases are forced.
PHASED_CASES = [c for c in CASES
                if max(c.options["stride"]) > 1 and max(c.options["dilation"]) == 1]


def spy_phase_splits(monkeypatch):
    """Force the stride phases (cpu.PHASED_MIN_ITEMS 0); the list that counts the splits."""
    from gpuconv import cpu
    monkeypatch.setattr(cpu, "PHASED_MIN_ITEMS", 0)
    calls = []
    split = cpu._phase_split
    monkeypatch.setattr(cpu, "_phase_split", lambda *a, **k: calls.append(1) or split(*a, **k))
    return calls


@pytest.mark.parametrize("case", PHASED_CASES, ids=lambda c: c.name)
def test_cpu_gemm_from_stride_phases(case, monkeypatch):
    splits = spy_phase_splits(monkeypatch)
    _check(case, _forced(case, "cpu", "gemm"), "cpu gemm from stride phases")
    assert splits, "the stride phases were not used"


@pytest.mark.parametrize("case", FAST_PATH_CASES, ids=lambda c: c.name)
def test_cpu_fast_paths_against_reference(case):
    got = gpuconv.conv(case.x, case.filters, case.bias, device="cpu", **case.options)
    _check(case, got, "cpu fast path")


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gpu_against_cpu_and_reference(case, gpu):
    cp = gpu
    xg, wg = cp.asarray(case.x), cp.asarray(case.filters)
    bg = None if case.bias is None else cp.asarray(case.bias)
    x0 = xg.copy()
    got = gpuconv.conv(xg, wg, bg, device="cuda", **case.options)
    assert isinstance(got, cp.ndarray)
    got = cp.asnumpy(got)
    cpu = gpuconv.conv(case.x, case.filters, case.bias, device="cpu", **case.options)
    _check(case, got, "gpu")
    # both within the bound of the exact result, so within twice it of each other
    _, bound = error_bound(case.x, case.filters, case.bias, got.dtype, **case.options)
    assert np.all(np.abs(got.astype(np.complex128) - cpu) <= 2 * bound)
    cp.testing.assert_array_equal(xg, x0)
    # NumPy inputs with device="cuda" run on the GPU and come back as NumPy
    back = gpuconv.conv(case.x, case.filters, case.bias, device="cuda", **case.options)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, got)


def _geometry(case):
    """The ConvGeometry of a grid case's call."""
    from gpuconv.geometry import plan_conv
    o = case.options
    return plan_conv(case.x.shape, case.filters.shape, None, stride=o["stride"],
                     padding=o["padding"], dilation=o["dilation"], groups=o["groups"],
                     padding_mode=o["padding_mode"], layout=o["layout"])


def _pointwise_shaped(case):
    geom = _geometry(case)
    return max(geom.kernel) == 1 and max(geom.pad_before + geom.pad_after) == 0


#: float16 and bfloat16 copies of the grid's real 1x1 cases without padding (CUDA's pointwise
#: multiplies them on tensor cores, the CPU widens them to float32; one rounding either way)
POINTWISE_16BIT_CASES = [
    as_dtype(c, dtype) for c in CASES + FAST_PATH_CASES + TILE_CASES
    if np.result_type(c.x, c.filters).kind == "f" and _pointwise_shaped(c)
    for dtype in (np.dtype(np.float16),) + (() if bfloat16() is None else (bfloat16(),))]


def _forced(case, device, algorithm, xp=np):
    """conv with ``algorithm`` forced, or None after checking the ValueError when it does not
    apply to the case (the error must name the algorithm and say why)."""
    from gpuconv import algorithms
    o = case.options
    geom = _geometry(case)
    dtype = np.result_type(case.x, case.filters)
    kind = "cpu" if device == "cpu" else "cuda"
    concrete = algorithm
    if kind == "cuda" and algorithm == "gemm":
        concrete = "gemm_" + algorithms._gemm_tile(geom, dtype)
    x, w = xp.asarray(case.x), xp.asarray(case.filters)
    b = None if case.bias is None else xp.asarray(case.bias)
    if algorithms.why_not(kind, concrete, geom, dtype):
        with pytest.raises(ValueError, match=f"algorithm={concrete!r} cannot run this call"):
            gpuconv.conv(x, w, b, device=device, algorithm=algorithm, **o)
        return None
    return gpuconv.conv(x, w, b, device=device, algorithm=algorithm, **o)


@pytest.mark.parametrize("algorithm", ["gemm", "gemm_shifted", "pointwise", "depthwise"])
@pytest.mark.parametrize("case", CASES + FAST_PATH_CASES, ids=lambda c: c.name)
def test_cpu_algorithms_against_reference(case, algorithm):
    """Every CPU algorithm forced on every case it applies to (auto picks one per case)."""
    x0 = case.x.copy()
    got = _forced(case, "cpu", algorithm)
    if got is not None:
        _check(case, got, f"cpu {algorithm}")
    np.testing.assert_array_equal(case.x, x0)


@pytest.mark.parametrize("case", POINTWISE_16BIT_CASES, ids=lambda c: c.name)
def test_cpu_pointwise_16bit(case):
    """The CPU's pointwise (auto's choice for these) on float16 and bfloat16 1x1 layers."""
    got = _forced(case, "cpu", "pointwise")
    assert got is not None
    _check(case, got, "cpu pointwise")


GPU_ALGORITHMS = ["direct", "few_filters", "gemm", "gemm_64x64", "gemm_128x128", "gemm_128x64",
                  "gemm_128x32", "gemm_128x8", "gemm_cl", "gemm_tc", "gemm_tc_cl", "gemm_wgmma",
                  "im2col", "pointwise", "depthwise", "depthwise_tile"]


def _check_gpu_algorithm(case, algorithm, cp):
    got = _forced(case, "cuda", algorithm, cp)
    if got is None:
        return
    got = cp.asnumpy(got)
    _check(case, got, f"gpu {algorithm}")
    cpu = gpuconv.conv(case.x, case.filters, case.bias, device="cpu", **case.options)
    _, bound = error_bound(case.x, case.filters, case.bias, got.dtype, **case.options)
    assert np.all(np.abs(got.astype(np.complex128) - cpu) <= 2 * bound)


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", GPU_ALGORITHMS)
@pytest.mark.parametrize("case", CASES + FAST_PATH_CASES, ids=lambda c: c.name)
def test_gpu_algorithms_against_reference(case, algorithm, gpu):
    """Every CUDA kernel forced on every case, against the reference and the CPU."""
    _check_gpu_algorithm(case, algorithm, gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", GPU_ALGORITHMS)
@pytest.mark.parametrize("case", TILE_CASES + FAST_PATH_CASES[-8:], ids=lambda c: c.name)
def test_gpu_algorithms_tile_cases(case, algorithm, gpu):
    """The same on the cases that need several tiles along every axis (and some wide depthwise
    ones): the set compute-sanitizer runs every kernel over (benchmarks/gpu_record.py)."""
    _check_gpu_algorithm(case, algorithm, gpu)


DEPTHWISE_GRID = [c for c in CASES + FAST_PATH_CASES if c.filters.shape[1] == 1]


@pytest.mark.gpu
@pytest.mark.parametrize("outputs", [4, 1024])
def test_gpu_depthwise_tile(outputs, gpu, monkeypatch):
    """conv_depthwise_tile (its input tile in shared memory) on every depthwise case of the
    grid, with blocks of its own size and of 4 outputs (several tiles a row, halos between
    them): in compute-sanitizer's selection (benchmarks/gpu_record.py), which runs the forced
    algorithms of test_gpu_algorithms_against_reference on no case."""
    from gpuconv import cuda
    monkeypatch.setattr(kernels, "DEPTHWISE_TILE_OUTPUTS", outputs)
    cuda._forward_plan.cache_clear()
    try:
        for case in DEPTHWISE_GRID:
            _check_gpu_algorithm(case, "depthwise_tile", gpu)
    finally:
        cuda._forward_plan.cache_clear()


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["pointwise", "im2col"])
def test_gpu_cublas_products_are_fp32_under_a_tf32_handle(algorithm, gpu, monkeypatch):
    """gpuconv's cuBLAS products (gpuconv.cublas) stay exact FP32 where other code set TF32
    on CuPy's shared cuBLAS handle, or CUPY_TF32 is set, and leave the handle's mode as they
    found it: at 64 and 576 terms a sum, TF32's rounding of the operands (~5e-4) is far
    outside the FP32 bound that _check holds the result to."""
    from cupy.cuda import device as cupy_device
    from cupy_backends.cuda.libs import cublas as cupy_cublas
    rng = np.random.default_rng(41)
    kernel, padding = ((1, 1), 0) if algorithm == "pointwise" else ((3, 3), 1)
    x = rng.uniform(-1, 1, (2, 64, 12, 12)).astype(np.float32)
    w = rng.uniform(-1, 1, (32, 64) + kernel).astype(np.float32)
    case = Case(f"tf32-handle-{algorithm}", x, w, None,
                dict(stride=1, padding=padding, dilation=1, groups=1, padding_mode="zeros",
                     layout="channels_first", flip=False, activation=None))
    monkeypatch.setenv("CUPY_TF32", "1")
    handle = cupy_device.get_cublas_handle()
    before = cupy_cublas.getMathMode(handle)
    tf32 = getattr(cupy_cublas, "CUBLAS_TF32_TENSOR_OP_MATH", 3)
    cupy_cublas.setMathMode(handle, tf32)
    try:
        got = gpuconv.conv2d(gpu.asarray(x), gpu.asarray(w), padding=padding,
                             algorithm=algorithm)
        gpu.cuda.Device().synchronize()
        assert cupy_cublas.getMathMode(handle) == tf32
    finally:
        cupy_cublas.setMathMode(handle, before)
    _check(case, gpu.asnumpy(got), f"gpu {algorithm} under a TF32 handle")


@pytest.mark.gpu
@pytest.mark.parametrize("case", POINTWISE_16BIT_CASES + POINTWISE_CASES,
                         ids=lambda c: c.name)
def test_gpu_pointwise(case, gpu):
    """CUDA's pointwise on float16 and bfloat16 1x1 layers (cuBLAS products on tensor cores
    with FP32 sums, the bias as one more term; widened to float32 for sigmoid and tanh) and on
    1x1 layers as networks have them (every dtype; channels-first ones by one strided batched
    cuBLAS call a group, gpuconv.cublas), against the reference and the CPU."""
    _check_gpu_algorithm(case, "pointwise", gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in CASES + TILE_CASES
                                  if np.result_type(c.x, c.filters) == np.float32],
                         ids=lambda c: c.name)
def test_gpu_tf32(case, gpu):
    """float32 rounded to TF32 on tensor cores (opt-in gemm_tf32), within the bound that the
    rounding allows; the multi-tile cases run under compute-sanitizer too."""
    cp = gpu
    b = None if case.bias is None else cp.asarray(case.bias)
    got = cp.asnumpy(gpuconv.conv(cp.asarray(case.x), cp.asarray(case.filters), b,
                                  algorithm="gemm_tf32", **case.options))
    exact, bound = error_bound_tf32(case.x, case.filters, case.bias, **case.options)
    assert got.dtype == np.float32 and np.all(np.abs(got - exact) <= bound)


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["direct", "gemm", "gemm_tc", "gemm_tc_cl", "gemm_wgmma",
                                       "im2col", "depthwise"])
@pytest.mark.parametrize("case", BFLOAT16_CASES, ids=lambda c: c.name)
def test_gpu_bfloat16(case, algorithm, gpu):
    """bfloat16 CuPy arrays (CuPy 14 with ml_dtypes) through each CUDA kernel that takes them."""
    _check_gpu_algorithm(case, algorithm, gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [as_float16(c) for c in TILE_CASES], ids=lambda c: c.name)
def test_gpu_tensor_core_tile_cases(case, gpu):
    """The tensor-core kernel (float16 only) on the multi-tile cases in float16, against the
    reference and the CPU; compute-sanitizer runs it here too."""
    _check_gpu_algorithm(case, "gemm_tc", gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("filters", kernels.GEMM_TC_CL_FILTERS)
@pytest.mark.parametrize("case", CHANNEL_BLOCK_CASES, ids=lambda c: c.name)
def test_gpu_channels_last_tensor_cores(case, filters, gpu, monkeypatch):
    """The channels-last tensor-core kernel with blocks of each width on filters of 8 to 72
    kernels (steps that pass several taps, and steps within one), float16 and bfloat16, against
    the reference and the CPU; compute-sanitizer runs these too."""
    monkeypatch.setattr(kernels, "gemm_tc_cl_filters", lambda geom: filters)
    _check_gpu_algorithm(case, "gemm_tc_cl", gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("filters", kernels.GEMM_TC_CL_FILTERS)
@pytest.mark.parametrize("case", CHANNEL_BLOCK_CASES, ids=lambda c: c.name)
def test_gpu_channels_last_wgmma(case, filters, gpu, monkeypatch):
    """conv_gemm_wgmma (the channels-last ring multiplied by wgmma through shared-memory
    descriptors, sm_90a) on the same cases with blocks of each width; on a device other than
    compute capability 9.0 the refusal is checked instead. compute-sanitizer runs these too."""
    monkeypatch.setattr(kernels, "gemm_tc_cl_filters", lambda geom: filters)
    _check_gpu_algorithm(case, "gemm_wgmma", gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("filters", kernels.GEMM_TC_CL_FILTERS)
@pytest.mark.parametrize("case", FFMA_CL_CASES, ids=lambda c: c.name)
def test_gpu_channels_last_ffma(case, filters, gpu, monkeypatch):
    """conv_gemm_cl (the channels-last kernel's FFMA variant, float32) with blocks of each
    width on filters of 4 to 36 kernels, against the reference and the CPU; compute-sanitizer
    runs these too."""
    monkeypatch.setattr(kernels, "gemm_tc_cl_filters", lambda geom: filters)
    _check_gpu_algorithm(case, "gemm_cl", gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("chunk", [5, 64])
@pytest.mark.parametrize("case", [as_float16(c) for c in TILE_CASES] + CHANNEL_BLOCK_CASES,
                         ids=lambda c: c.name)
def test_gpu_im2col_chunks(case, chunk, gpu, monkeypatch):
    """The explicit GEMM (im2col) in chunks of output positions that start and end inside
    images and rows, on the multi-tile cases in float16 and the 16-bit channel-block cases
    (cuBLAS's 2-D 16-bit products on tensor cores, rows of 8 or 64 terms a chunk), against the
    reference and the CPU; compute-sanitizer runs these too."""
    monkeypatch.setattr(kernels, "im2col_chunk", lambda geom, rows, itemsize: chunk)
    _check_gpu_algorithm(case, "im2col", gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape,filters,padding,layout", [
    ((4, 64, 29, 31), 48, 1, "channels_first"),        # odd outputs: partial tiles
    ((2, 16, 20, 20), 16, ((0, 2), (1, 1)), "channels_last"),
])
def test_gpu_winograd(shape, filters, padding, layout, dtype, gpu, monkeypatch):
    """algorithm="winograd" on a GPU (its transforms, cuBLAS's batched products), the tiles
    in several chunks, against the reference within error_bound_winograd; repeatable."""
    from gpuconv import cuda
    from gpuconv.geometry import plan_conv
    cp = gpu
    monkeypatch.setattr(cuda, "WINOGRAD_WORKSPACE_BYTES", 2**16)
    rng = np.random.default_rng(61)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((filters, shape[1], 3, 3)).astype(dtype)
    b = rng.standard_normal(filters).astype(dtype)
    if layout == "channels_last":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    geom = plan_conv(x.shape, w.shape, padding=padding, layout=layout)
    assert cuda.winograd_chunk(geom, 4) < cuda.winograd_tiles(geom)
    got = gpuconv.conv2d(cp.asarray(x), cp.asarray(w), cp.asarray(b), padding=padding,
                         layout=layout, algorithm="winograd")
    exact, bound = error_bound_winograd(x, w, b, dtype, None, layout=layout,
                                        padding=tuple(zip(geom.pad_before, geom.pad_after)))
    err = np.abs(cp.asnumpy(got).astype(np.float64) - exact)
    assert np.all(err <= bound), err.max()
    again = gpuconv.conv2d(cp.asarray(x), cp.asarray(w), cp.asarray(b), padding=padding,
                           layout=layout, algorithm="winograd")
    assert cp.asnumpy(again).tobytes() == cp.asnumpy(got).tobytes()


@pytest.mark.gpu
@pytest.mark.parametrize("view", ["contiguous", "strided", "reversed", "large"])
def test_gpu_channels_last_copy(view, gpu, monkeypatch):
    """layout.cu's to_channels_last on a GPU (gemm_tc_cl's input copy, real shared memory and
    barriers): the values of CuPy's own transposition, on partial tiles, strided and reversed
    views, and images taken in turns by a grid of two (LAYOUT_MAX_GRID_Z 2, three images)."""
    from gpuconv import cuda, kernels
    cp = gpu
    rng = np.random.default_rng(17)
    if view == "large":  # 3 images on a grid of 2: the image loop on the device
        monkeypatch.setattr(kernels, "LAYOUT_MAX_GRID_Z", 2)
        base = cp.asarray(rng.uniform(-1, 1, (3, 136, 61, 67)).astype(np.float16))
    else:
        base = cp.asarray(rng.uniform(-1, 1, (2, 40, 9, 38)).astype(np.float16))
    x = {"contiguous": base, "strided": base[:, :, :, ::2],
         "reversed": base[:, ::-1, ::-1, ::-1], "large": base}[view]
    x0 = x.copy()
    got = cuda._channels_last(cp, cuda._gpu_run, x)
    assert cp.moveaxis(got, 1, -1).flags.c_contiguous
    assert cp.asnumpy(got).tobytes() == cp.asnumpy(x).tobytes()
    assert cp.asnumpy(x).tobytes() == cp.asnumpy(x0).tobytes()
