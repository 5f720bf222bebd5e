"""The CUDA kernels' real source, compiled as host C++ and run serially, over the option grid.

This checks, without a GPU, what a GPU run would check first: that the arguments gpuconv.cuda
builds fit the kernel's signature (count and byte size of each), and that the kernel's index
arithmetic, padding, strides, layouts, bias and activation give the reference's result. Grid-
stride kernels without shared memory or barriers give the same result run one thread at a time.
It is no substitute for the GPU tests (test_grid.py's gpu cases): NVRTC's code generation, CuPy's
argument passing and real concurrency are only exercised there.

GPUCONV_EMULATION_CFLAGS adds compiler flags to the kernels' host builds. With AddressSanitizer,
every kernel's reads and writes of the arrays it is given (global memory) are checked, as
compute-sanitizer's memcheck checks them on a GPU (not shared memory: the shim's __shared__
arrays are template statics, which GCC leaves uninstrumented). A finding stops the test
process; its report goes to the log_path file (pytest's capture hides the process's stderr)::

    ASAN_OPTIONS=detect_leaks=0:log_path=/tmp/asan LD_PRELOAD=$(g++ -print-file-name=libasan.so) \
    GPUCONV_EMULATION_CFLAGS="-fsanitize=address -fno-omit-frame-pointer" \
        python -m pytest -n 2 tests/test_kernel_emulation.py
"""
from __future__ import annotations

import itertools
import math
import os
import types
import zlib

import numpy as np
import pytest

import gpuconv
import gpuconv.adjoint
import gpuconv.forward
import gpuconv.params
from gpuconv import algorithms, cublas, cuda, kernels, selfcheck, tuning
from gpuconv.dtypes import bfloat16
from cases import (Case, as_dtype, as_float16, bfloat16_cases, channel_block_cases,
                   fast_path_cases, grid_cases, pointwise_cases, tile_cases)
from test_adjoint import (TRANSPOSE_CASES, _grad_out, _options, check_filter_grad,
                          check_input_grad, check_transpose, depthwise_layer, transpose_call)
from test_adjoint import route  # noqa: F401 (a fixture: pytest finds it by its name)
from test_grid import POINTWISE_16BIT_CASES, _check, _forced, _geometry
from emulation import Packed
from reference import error_bound_tf32, error_bound_winograd, finfo

@pytest.fixture
def emulated_gpu(emulator, monkeypatch):
    """Every public function runs its GPU code path (gpuconv.cuda) on NumPy arrays, with the
    CUDA kernels run on the host; outputs are poisoned with NaN before each launch."""
    backend = types.SimpleNamespace(
        # 3 "SMs": a layer of one or two 128x128 output tiles splits its terms (split-K)
        conv_forward=lambda *a: cuda._forward(np, emulator.run, 3, *a),
        data_adjoint=lambda *a: cuda._data_adjoint(np, emulator.run, *a),
        # few threads, but enough for the GEMM to split the positions (up to 3 ways) and the
        # partial-sum kernel to chunk them, so both kernels' two-stage sums are exercised
        filter_grad=lambda *a: cuda._filter_grad(np, emulator.run, 3 * 2048, *a),
        DATA_ADJOINT_AS_CONV_MIN_CHANNELS=cuda.DATA_ADJOINT_AS_CONV_MIN_CHANNELS,
    )

    def run(device, primary, arrays, compute):
        return compute(np, backend, *arrays)

    monkeypatch.setattr(gpuconv.forward, "run", run)
    monkeypatch.setattr(gpuconv.adjoint, "run", run)
    monkeypatch.setattr(cuda, "poison_outputs", True)
    monkeypatch.setattr(cuda, "_library_gemm", cublas_gemm)
    return emulator


def cublas_gemm(xp, a, b, c):
    """One cuBLAS strided batched GEMM as gpuconv.cublas.gemm makes it, on host arrays: only on
    views it takes as they lie (the arguments gemm_args makes of them; test_cublas checks those
    against cuBLAS's definition), float16 and bfloat16 summed in float32 and each result
    rounded once."""
    assert cublas.gemm_args(a, b, c) is not None, (a.shape, a.strides, b.strides, c.strides)
    assert cublas.cuda_types(c.dtype) is not None, c.dtype
    if c.dtype.itemsize == 2:
        c[...] = np.matmul(a.astype(np.float32), b.astype(np.float32))
    else:
        np.matmul(a, b, out=c)


CASES = grid_cases()
TILE_CASES = tile_cases()
DEPTHWISE_CASES = [c for c in CASES + fast_path_cases() if c.filters.shape[1] == 1]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_forward_kernel(case, emulated_gpu):
    x0 = case.x.copy()
    got = gpuconv.conv(case.x, case.filters, case.bias, **case.options)
    _check(case, got, "emulated kernel")
    np.testing.assert_array_equal(case.x, x0)


def _misaligned(a):
    """A copy of ``a`` starting one byte into its buffer: misaligned for every load."""
    raw = np.zeros(a.nbytes + 1, np.uint8)
    shifted = raw[1:].view(a.dtype).reshape(a.shape)
    shifted[...] = a
    assert not shifted.flags.aligned
    return shifted


def test_misaligned_arrays_are_copied_before_a_kernel_reads_them(emulated_gpu):
    """Misaligned input, filters, bias and gradients (a GPU would fault on them) are copied
    first, and the results are the aligned arrays' ones."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 3, 6, 7)).astype(np.float32)
    copy = cuda._aligned(np, _misaligned(x))
    assert copy.flags.aligned and copy.ctypes.data % 4 == 0
    np.testing.assert_array_equal(copy, x)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    expected = gpuconv.conv2d(x, w, b, padding=1)
    np.testing.assert_array_equal(
        gpuconv.conv2d(_misaligned(x), _misaligned(w), _misaligned(b), padding=1), expected)
    np.testing.assert_array_equal(
        gpuconv.conv_input_grad(_misaligned(expected), _misaligned(w), x.shape, padding=1),
        gpuconv.conv_input_grad(expected, w, x.shape, padding=1))


# every tile on the whole grid, but 128x64 (the same code as 128x128 at another width) on half
# of it, to keep CI's emulation time in bounds
GEMM_CASES = [(c, t) for t in kernels.GEMM_TILES if t != "128x64" for c in CASES + TILE_CASES]
GEMM_CASES += [(c, "128x64") for c in CASES[::2] + TILE_CASES]


@pytest.mark.parametrize("case, tile", GEMM_CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_gemm_kernel(case, tile, emulated_gpu):
    """The implicit-GEMM kernel, each tile, over the whole grid (tiles a dtype does not build
    are refused with a ValueError instead)."""
    x0, w0 = case.x.copy(), case.filters.copy()
    algorithm = f"gemm_{tile}"
    if tile not in kernels.gemm_tiles(np.result_type(case.x, case.filters)):
        with pytest.raises(ValueError, match="not built for"):
            gpuconv.conv(case.x, case.filters, case.bias, algorithm=algorithm, **case.options)
        return
    got = gpuconv.conv(case.x, case.filters, case.bias, algorithm=algorithm, **case.options)
    _check(case, got, f"emulated {algorithm}")
    np.testing.assert_array_equal(case.x, x0)
    np.testing.assert_array_equal(case.filters, w0)


@pytest.mark.parametrize("case", CASES + TILE_CASES, ids=lambda c: c.name)
def test_few_filters_kernel(case, emulated_gpu):
    """conv_few_filters forced on the whole grid: where a group has <= 8 filters (widths 1, 2,
    4 and 8, partly filled), else refused with a ValueError."""
    x0, w0 = case.x.copy(), case.filters.copy()
    per_group = case.filters.shape[0] // case.options["groups"]
    if per_group > kernels.FEW_FILTERS_WIDTHS[-1]:
        with pytest.raises(ValueError, match="at most 8 filters a group"):
            gpuconv.conv(case.x, case.filters, case.bias, algorithm="few_filters",
                         **case.options)
        return
    got = gpuconv.conv(case.x, case.filters, case.bias, algorithm="few_filters", **case.options)
    _check(case, got, "emulated few_filters")
    np.testing.assert_array_equal(case.x, x0)
    np.testing.assert_array_equal(case.filters, w0)


@pytest.mark.parametrize("filters,groups,options", [
    (6, 1, dict(stride=2, padding=1, dilation=1, layout="channels_first")),
    (8, 1, dict(stride=(1, 3), padding=(2, 1), dilation=(1, 2), layout="channels_last")),
    (16, 2, dict(stride=1, padding=0, dilation=1, layout="channels_first")),   # 8 a group
    (5, 1, dict(stride=1, padding="same", dilation=1, layout="channels_first")),
])
def test_few_filters_kernel_widest(filters, groups, options, emulated_gpu):
    """conv_few_filters at its widest build (5-8 filters a group, which the grid lacks): rows of
    13 outputs (three runs of 4 and a tail of 1), strides and dilations along the row, a bias
    and an activation, against the reference."""
    rng = np.random.default_rng(50)
    x = rng.standard_normal((2, 4 * groups, 9, 26)).astype(np.float32)
    w = rng.standard_normal((filters, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(filters).astype(np.float32)
    opts = dict(options, groups=groups, padding_mode="zeros", flip=False)
    if opts["layout"] == "channels_last":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    case = types.SimpleNamespace(x=x, filters=w, bias=b, options=dict(opts, activation="relu"))
    got = gpuconv.conv(x, w, b, algorithm="few_filters", activation="relu", **opts)
    _check(case, got, f"emulated few_filters, {filters} filters, {options}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, "bfloat16"])
@pytest.mark.parametrize("shape,padding,layout,activation,bias", [
    ((2, 5, 9, 11), 1, "channels_first", None, True),          # odd outputs: partial tiles
    ((1, 3, 8, 8), ((0, 2), (2, 1)), "channels_last", "relu", False),
    ((3, 7, 6, 13), "same", "channels_first", "sigmoid", True),
    ((2, 4, 5, 5), 0, "channels_first", "tanh", False),        # 3x3 outputs
])
def test_winograd_kernels(shape, padding, layout, activation, bias, dtype, emulated_gpu,
                          monkeypatch):
    """Winograd F(2x2, 3x3): the input and output transforms (and CuPy's matmul, here
    NumPy's) against the reference within error_bound_winograd, with the tiles cut into chunks
    of 5 (the last one partial) by a small workspace."""
    if dtype == "bfloat16":
        if bfloat16() is None:
            pytest.skip("ml_dtypes is not installed")
        dtype = bfloat16()
    dtype = np.dtype(dtype)
    C, K = shape[1], 6
    monkeypatch.setattr(cuda, "WINOGRAD_WORKSPACE_BYTES", 5 * 16 * (C + K) * 8)
    rng = np.random.default_rng(60)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((K, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if bias else None
    if layout == "channels_last":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    got = gpuconv.conv2d(x, w, b, padding=padding, layout=layout, activation=activation,
                         algorithm="winograd")
    pads = gpuconv.geometry.plan_conv(x.shape, w.shape, padding=padding, layout=layout)
    exact, bound = error_bound_winograd(x, w, b, got.dtype, activation, layout=layout,
                                        padding=tuple(zip(pads.pad_before, pads.pad_after)))
    assert got.dtype == dtype and got.shape == exact.shape
    assert np.all(np.isfinite(got.astype(np.float64)))
    err = np.abs(got.astype(np.float64) - exact)
    assert np.all(err <= bound), err.max()


def test_winograd_refuses_what_it_cannot_compute(emulated_gpu, monkeypatch):
    x = np.ones((1, 4, 8, 8), np.float32)
    for w, options, why in [
        (np.ones((4, 4, 5, 5), np.float32), {}, "3x3 kernels of stride 1"),
        (np.ones((4, 4, 3, 3), np.float32), dict(stride=2), "3x3 kernels of stride 1"),
        (np.ones((4, 4, 3, 3), np.float32), dict(dilation=2), "dilation 1"),
        (np.ones((4, 2, 3, 3), np.float32), dict(groups=2), "in one group"),
        (np.ones((4, 4, 3, 3), np.complex64), {}, "real dtypes"),
    ]:
        with pytest.raises(ValueError, match=why):
            gpuconv.conv(x, w, algorithm="winograd", **options)
    with pytest.raises(ValueError, match="'winograd' .* 3x3 kernels"):
        gpuconv.conv(np.ones((1, 4, 8), np.float32), np.ones((4, 4, 3), np.float32),
                     algorithm="winograd")
    monkeypatch.setenv("CUPY_TF32", "1")
    with pytest.raises(ValueError, match="CUPY_TF32"):
        gpuconv.conv(x, np.ones((4, 4, 3, 3), np.float32), algorithm="winograd")
    assert gpuconv.conv(x.astype(np.float64), np.ones((4, 4, 3, 3)),
                        algorithm="winograd").dtype == np.float64


# two tiles a tile case and one a case of a quarter of the grid, in turn: each tile ~20 times
_TILE_NAMES = list(kernels.GEMM_TILES)
SPLIT_CASES = [(c, _TILE_NAMES[(2 * i + j) % len(_TILE_NAMES)])
               for i, c in enumerate(TILE_CASES) for j in range(2)]
SPLIT_CASES += [(c, _TILE_NAMES[i % len(_TILE_NAMES)]) for i, c in enumerate(CASES[::4])]


def _force_splits(monkeypatch):
    """Make every split GEMM launch split a filter's term steps three ways plus one empty
    split; returns the list of split counts launched."""
    forced = []

    def splits(geom, tile, sms, per_sm, itemsize):
        steps = max(1, -(-geom.terms_per_output // tile[2]))
        per_split = -(-steps // 3)
        forced.append(-(-steps // per_split) + 1)
        return forced[-1], per_split
    monkeypatch.setattr(cuda, "gemm_splits", splits)
    return forced


@pytest.mark.parametrize("case, tile", SPLIT_CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_gemm_split_k(case, tile, emulated_gpu, monkeypatch):
    """Split-K forced on each tile: a filter's term steps in three splits plus an empty one
    (the kernel's partial sums, then conv_gemm_sum_splits' ordered sum, bias and activation)."""
    if tile not in kernels.gemm_tiles(np.result_type(case.x, case.filters)):
        return  # refused: test_gemm_kernel checks the refusal
    forced = _force_splits(monkeypatch)
    got = gpuconv.conv(case.x, case.filters, case.bias, algorithm=f"gemm_{tile}", **case.options)
    assert forced and min(forced) >= 2
    _check(case, got, f"emulated gemm_{tile} split-K")


TC_CASES = [c for c in CASES if np.result_type(c.x, c.filters) == np.float16] + [
    as_float16(c) for c in TILE_CASES]


@pytest.mark.parametrize("case", TC_CASES, ids=lambda c: c.name)
def test_gemm_tc_kernel(case, emulated_gpu):
    """The tensor-core GEMM kernel (its warp product emulated from PTX's fragment layouts) on
    every float16 case of the grid and every multi-tile case in float16."""
    x0 = case.x.copy()
    got = gpuconv.conv(case.x, case.filters, case.bias, algorithm="gemm_tc", **case.options)
    _check(case, got, "emulated gemm_tc")
    np.testing.assert_array_equal(case.x, x0)


# gemm_tc_cl: float16 cases with blocks of each width; bfloat16 (another mma, the same copies)
# with one, on the first cases of ranks 1 and 2 (the 3-D one, case 3, is the slowest to
# emulate). gemm_cl (FFMA): float32, filters of 4 to 36 kernels (its 16-term steps are 4 chunks
# of 4: below a step, not a multiple of 8, across taps, many steps), each width in turn, on two
# draws of the options (the grid's own cases seldom have a multiple of 4 kernels a filter).
FFMA_CL_SIZES = (4, 12, 20, 36, 16)
CL_CASES = [(c, f, "gemm_tc_cl") for c in channel_block_cases()
            for f in kernels.GEMM_TC_CL_FILTERS]
CL_CASES += [(as_dtype(c, bfloat16()), kernels.GEMM_TC_CL_FILTERS[i % 2], "gemm_tc_cl")
             for i, c in enumerate(channel_block_cases()[:3]) if bfloat16() is not None]
CL_CASES += [(c, kernels.GEMM_TC_CL_FILTERS[i % 2], "gemm_cl")
             for i, c in enumerate(channel_block_cases("float32", FFMA_CL_SIZES)
                                   + channel_block_cases("float32", FFMA_CL_SIZES, seed=16))]
# gemm_wgmma (gemm_tc_cl's copies and ring, the products by wgmma read through its descriptors
# and emulated from PTX's description of them): the float16 cases with blocks of each width,
# bfloat16 on the first three.
CL_CASES += [(c, f, "gemm_wgmma") for c in channel_block_cases()
             for f in kernels.GEMM_TC_CL_FILTERS]
CL_CASES += [(as_dtype(c, bfloat16()), kernels.GEMM_TC_CL_FILTERS[i % 2], "gemm_wgmma")
             for i, c in enumerate(channel_block_cases()[:3]) if bfloat16() is not None]


@pytest.mark.parametrize("case, filters, algorithm", CL_CASES,
                         ids=lambda v: getattr(v, "name", str(v)))
def test_channels_last_kernels(case, filters, algorithm, emulated_gpu, monkeypatch):
    """The channels-last kernels (cp.async ring; ldmatrix and mma emulated from PTX's
    descriptions for gemm_tc_cl, 16-byte shared loads and FFMA for gemm_cl) with blocks of 64
    or 128 filters: every rank, layout, padding mode, stride and dilation form, several tiles
    along every axis; float16 and bfloat16 (gemm_tc_cl), float32 (gemm_cl, exact FP32 sums)."""
    monkeypatch.setattr(kernels, "gemm_tc_cl_filters", lambda geom: filters)
    x0, w0 = case.x.copy(), case.filters.copy()
    got = gpuconv.conv(case.x, case.filters, case.bias, algorithm=algorithm, **case.options)
    _check(case, got, f"emulated {algorithm}")
    np.testing.assert_array_equal(case.x, x0)
    np.testing.assert_array_equal(case.filters, w0)


CL_SPLIT_CASES = [(i, c, "gemm_tc_cl") for i, c in enumerate(channel_block_cases()[::2])]
CL_SPLIT_CASES += [(i, c, "gemm_wgmma") for i, c in enumerate(channel_block_cases()[1::2])]
CL_SPLIT_CASES += [(i, c, "gemm_cl") for i, c in
                   enumerate(channel_block_cases("float32", FFMA_CL_SIZES)[1::3])]


@pytest.mark.parametrize("i, case, algorithm", CL_SPLIT_CASES,
                         ids=lambda v: getattr(v, "name", str(v)))
def test_channels_last_split_k(i, case, algorithm, emulated_gpu, monkeypatch):
    """Split-K forced on the channels-last kernels: their steps (32 halves, 16 floats) in three
    splits plus an empty one (each split's terms counted from its first, filter reads offset
    by it), then conv_gemm_sum_splits; both block widths in turn."""
    monkeypatch.setattr(kernels, "gemm_tc_cl_filters",
                        lambda geom: kernels.GEMM_TC_CL_FILTERS[i % 2])
    forced = _force_splits(monkeypatch)
    got = gpuconv.conv(case.x, case.filters, case.bias, algorithm=algorithm, **case.options)
    assert forced and min(forced) >= 2
    _check(case, got, f"emulated {algorithm} split-K")


def test_gemm_tc_cl_reads_a_channels_last_caller_in_place_only_when_aligned(emulated_gpu,
                                                                           monkeypatch):
    """A contiguous channels-last x on 16 bytes is read as it lies; one starting 8 bytes in (each
    element still aligned) is copied first (the kernel's 16-byte copies need it; the emulated
    cp.async reports a misaligned one): same result either way."""
    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, (2, 6, 7, 16)).astype(np.float16)
    w = rng.uniform(-1, 1, (24, 16, 3, 3)).astype(np.float16)
    raw = np.zeros(x.nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 16
    on16 = raw[start:start + x.nbytes].view(np.float16).reshape(x.shape)
    off8 = raw[start + 8:start + 8 + x.nbytes].view(np.float16).reshape(x.shape)
    on16[...] = x
    off8_copy = x.copy()
    copies = []
    real = cuda._channels_last

    def spy(xp, run, x_cf):
        out = real(xp, run, x_cf)
        copies.append(out is not x_cf)
        return out

    monkeypatch.setattr(cuda, "_channels_last", spy)
    case = Case("cl16", x, w, None, dict(padding=1, layout="channels_last", activation=None))
    got = gpuconv.conv2d(on16, w, padding=1, layout="channels_last", algorithm="gemm_tc_cl")
    assert copies == [False, True]  # x read in place; the 3x3 filters reordered (copied)
    _check(case, got, "gemm_tc_cl on a channels-last caller's array")
    off8[...] = off8_copy
    copies.clear()
    got8 = gpuconv.conv2d(off8, w, padding=1, layout="channels_last", algorithm="gemm_tc_cl")
    assert copies == [True, True]  # x copied by layout.cu (strided: channels 1, positions 16)
    np.testing.assert_array_equal(got8, got)


@pytest.mark.parametrize("view", ["contiguous", "strided", "reversed", "channels_last_view",
                                  "unmergeable", "many_images", "empty"])
def test_channels_last_copy(view, emulator, monkeypatch):
    """layout.cu's to_channels_last (conv_gemm_tc_cl's input copy), against NumPy's own
    transposition: partial tiles along channels and positions, inputs viewed at other strides
    (every second position, every axis but the images reversed, a channels-last array's
    channels-first view), images taken in turns by a grid of one image (LAYOUT_MAX_GRID_Z 1);
    spatial axes that do not merge into one stride, and empty inputs, are copied by the array
    library instead."""
    rng = np.random.default_rng(5)
    base = rng.uniform(-1, 1, (3, 40, 9, 38)).astype(np.float16)
    x = {"contiguous": base, "strided": base[:, :, :, ::2], "reversed": base[:, ::-1, ::-1, ::-1],
         "channels_last_view": np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(
             0, 3, 1, 2)[:, :, 1:],
         "unmergeable": base[:, :, 1:, 1:], "many_images": base, "empty": base[:0]}[view]
    if view == "many_images":
        monkeypatch.setattr(kernels, "LAYOUT_MAX_GRID_Z", 1)
    launches = []

    def run(*args):
        launches.append(args[1])
        emulator.run(*args)

    x0 = x.copy()
    got = cuda._channels_last(np, run, x)
    assert launches == ([] if view in ("unmergeable", "empty")
                        else [kernels.to_channels_last_name(np.float16)])
    cl = np.moveaxis(got, 1, -1)
    assert cl.flags.c_contiguous and got.shape == x.shape
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("algorithm, dtype, block, others, says", [
    ("gemm_tc_cl", np.float16, 8, (np.float32,), "multiplies float16 or bfloat16"),
    ("gemm_wgmma", np.float16, 8, (np.float32, np.float64), "multiplies float16 or bfloat16"),
    ("gemm_cl", np.float32, 4, (np.float16, np.float64, np.complex64),
     "multiplies float32 by FFMA")])
def test_channels_last_kernels_refuse_other_channel_counts_and_dtypes(algorithm, dtype, block,
                                                                      others, says,
                                                                      emulated_gpu):
    x = np.ones((1, 12, 5, 5), dtype)
    with pytest.raises(ValueError, match=rf"'{algorithm}' reads {block} channels at a time: it "
                                         rf"needs C_in/groups to be a multiple of {block}; these "
                                         r"are filters \(4, 6, 3, 3\), groups=2"):
        gpuconv.conv2d(x, np.ones((4, 6, 3, 3), dtype), groups=2, algorithm=algorithm)
    for other in others:
        with pytest.raises(ValueError, match=f"'{algorithm}' {says}"):
            gpuconv.conv2d(x.astype(other), np.ones((4, 12, 3, 3), other), algorithm=algorithm)


TF32_CASES = [c for c in CASES + TILE_CASES if np.result_type(c.x, c.filters) == np.float32]


@pytest.mark.parametrize("case", TF32_CASES, ids=lambda c: c.name)
def test_gemm_tf32_kernel(case, emulated_gpu):
    """The tensor-core kernel on float32 rounded to TF32 (m16n8k8 emulated from PTX's tables),
    within the bound that rounding allows (reference.error_bound_tf32); that it rounds at all
    is the next test's."""
    got = gpuconv.conv(case.x, case.filters, case.bias, algorithm="gemm_tf32", **case.options)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    exact, bound = error_bound_tf32(case.x, case.filters, case.bias, **case.options)
    err = np.abs(got - exact)
    assert np.all(err <= bound), float(np.max(err - bound))


def test_gemm_tf32_rounds_its_operands(emulated_gpu):
    """1 + 2^-12 is not a TF32 value: it rounds to 1, so a 1x1 conv of it by 1 gives exactly 1
    (float32 would give 1 + 2^-12), and 1 + 2^-11 (a tie) rounds away from zero to 1 + 2^-10."""
    x = np.array([1 + 2.0 ** -12, 1 + 2.0 ** -11, -(1 + 2.0 ** -11)], np.float32).reshape(1, 1, 3)
    got = gpuconv.conv1d(x, np.ones((1, 1, 1), np.float32), algorithm="gemm_tf32")
    np.testing.assert_array_equal(got.ravel(), [1.0, 1 + 2.0 ** -10, -(1 + 2.0 ** -10)])
    with pytest.raises(ValueError, match="'gemm_tf32' rounds float32 to TF32 for the tensor "
                                         "cores; this call is float64"):
        gpuconv.conv1d(x.astype(np.float64), np.ones((1, 1, 1)), algorithm="gemm_tf32")


def test_gemm_tc_refuses_other_dtypes(emulated_gpu):
    x = np.ones((1, 2, 5, 5), np.float32)
    with pytest.raises(ValueError, match="'gemm_tc' multiplies float16 or bfloat16 on tensor "
                                         "cores; this call is float32"):
        gpuconv.conv(x, np.ones((3, 2, 3, 3), np.float32), algorithm="gemm_tc")


POINTWISE_CASES = CASES + TILE_CASES + fast_path_cases() + POINTWISE_16BIT_CASES + \
    pointwise_cases()


def _pointwise_applies(case):
    return not algorithms.why_not("cuda", "pointwise", _geometry(case),
                                  np.result_type(case.x, case.filters))


def test_pointwise(emulated_gpu):
    """CUDA's pointwise (1x1 kernels without padding: xp.matmul, here NumPy's, and for 16-bit
    products cuBLAS's arithmetic) on every case of the grids: the product into channels-first
    and channels-last outputs, groups, strides, bias and activation, float16 and bfloat16 (the
    bias as a term of the sum; widened for sigmoid and tanh), against the reference; refused
    with a reason elsewhere (other kernel sizes, padding)."""
    ran = 0
    for case in POINTWISE_CASES:
        x0 = case.x.copy()
        got = _forced(case, "cuda", "pointwise")
        np.testing.assert_array_equal(case.x, x0)
        if got is not None:
            _check(case, got, "emulated pointwise")
            ran += 1
    assert ran >= 40 + len(POINTWISE_16BIT_CASES) and len(POINTWISE_16BIT_CASES) >= 40


def test_pointwise_channels_first_is_one_cublas_call_a_group(emulated_gpu, monkeypatch):
    """Pointwise products are cuBLAS calls (gpuconv.cublas; the emulation takes only views that
    cuBLAS can): one strided batched call a group over the images
    (into a channels-first output as it lies, else into a temporary: channels-last outputs
    of groups, 16-bit layers with sigmoid or tanh, widened to float32), or one call for all
    the rows of an output of rows (one group: channels-last, or one position or filter)."""
    calls = []
    real = cuda._library_gemm
    monkeypatch.setattr(cuda, "_library_gemm", lambda *a: calls.append(a[3].shape) or real(*a))
    ran = set()
    for case in POINTWISE_CASES:
        geom = _geometry(case)
        dtype = np.result_type(case.x, case.filters)
        widened = dtype.itemsize == 2 and case.activation in ("sigmoid", "tanh")
        last = case.options["layout"] == "channels_last"
        rows = geom.groups == 1 and (last or 1 in (math.prod(geom.out_spatial), geom.C_out))
        if not _pointwise_applies(case):
            continue
        calls.clear()
        got = _forced(case, "cuda", "pointwise")
        _check(case, got, "emulated pointwise by cuBLAS")
        assert len(calls) == (1 if rows else geom.groups), case.name
        ran.add((dtype.name, geom.groups > 1, rows, max(geom.stride) > 1,
                 case.bias is not None, widened))
    assert {("float32", True), ("float16", True), ("float32", False), ("float16", False)} <= {
        (d, g) for d, g, *_ in ran}
    for i in (2, 3, 4, 5):  # rows and groups, strided and not, bias and not, widened
        assert {r[i] for r in ran} == {True, False}


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_pointwise_16bit_product_of_one_element_sums_in_float32(dtype, emulated_gpu):
    """A 16-bit pointwise layer with one filter a group and one output position makes each
    group's product 1 x K times K x 1, which CuPy's matmul summed in the 16-bit type itself
    (session 16's H100 run: a bfloat16 data adjoint whose phase was such a layer erred past
    its bound); gpuconv's own cuBLAS call sums it in float32, rounded once."""
    if dtype == "bfloat16":
        if bfloat16() is None:
            pytest.skip("ml_dtypes is not installed")
        dtype = bfloat16()
    rng = np.random.default_rng(16)
    G, K = 4, 96
    x = rng.uniform(-1, 1, (1, G * K, 1, 1)).astype(dtype)
    w = rng.uniform(-1, 1, (G, K, 1, 1)).astype(dtype)
    got = gpuconv.conv(x, w, groups=G, algorithm="pointwise")
    x64, w64 = x.astype(np.float64).reshape(G, K), w.astype(np.float64).reshape(G, K)
    exact = (x64 * w64).sum(axis=1)
    mag = np.abs(x64 * w64).sum(axis=1)
    u32, u16 = np.finfo(np.float32).eps / 2, float(finfo(dtype).eps) / 2
    bound = K * u32 / (1 - K * u32) * mag + u16 * np.abs(exact)
    assert np.all(np.abs(got.astype(np.float64).ravel() - exact) <= bound)


def test_pointwise_refusals_and_auto(emulated_gpu, monkeypatch):
    from gpuconv.geometry import plan_conv
    geom = plan_conv((2, 8, 5, 5), (16, 8, 1, 1), stride=2)
    assert algorithms.choose("cuda", "auto", geom, np.float32) == "pointwise"
    # 16-bit 1x1 layers: gemm_tc_cl where it takes them (C_in/groups a multiple of 8)
    assert algorithms.choose("cuda", "auto", geom, np.float16) == "gemm_tc_cl"
    assert algorithms.choose("cuda", "auto", geom, bfloat16() or np.float16) == "gemm_tc_cl"
    odd = plan_conv((2, 6, 5, 5), (16, 6, 1, 1), stride=2)
    assert algorithms.choose("cuda", "auto", odd, np.float16) == "pointwise"
    assert algorithms.choose("cuda", "auto", odd, bfloat16() or np.float16) == "pointwise"
    huge = plan_conv((1, 1, 9, 2**30 + 8), (4, 1, 1, 1))
    assert "32-bit ints; this call has 9663676488 output positions" in algorithms.why_not(
        "cuda", "pointwise", huge, np.float32)
    assert algorithms.choose("cuda", "auto", plan_conv((2, 8, 5, 5), (16, 8, 1, 1), padding=1),
                             np.float32) != "pointwise"
    assert algorithms.choose("cuda", "auto", plan_conv((2, 8, 5, 5), (8, 1, 1, 1), groups=8),
                             np.float32) == "depthwise"
    # CUPY_TF32 sets the compute type of CuPy's own matmul; pointwise's products are
    # gpuconv's cuBLAS calls (exact FP32 whatever it says: test_gpu_cublas_products_are_fp32_
    # under_a_tf32_handle), so it takes such calls; the pointwise filter gradient, a CuPy
    # matmul, does not
    monkeypatch.setenv("CUPY_TF32", "1")
    assert not algorithms.why_not("cuda", "pointwise", geom, np.float32)
    assert algorithms.choose("cuda", "auto", geom, np.float32) == "pointwise"
    assert algorithms.choose("cuda", "auto", geom, np.float16) == "gemm_tc_cl"
    from gpuconv import cuda
    assert cuda.filter_grad_kernel(geom, np.float32) != "pointwise"
    assert cuda.filter_grad_kernel(geom, np.float64) == "pointwise"
    rng = np.random.default_rng(31)
    for dtype in (np.float32, np.float16):
        case = Case(f"pointwise-cupy-tf32-{np.dtype(dtype).name}",
                    rng.uniform(-1, 1, (2, 8, 5, 5)).astype(dtype),
                    rng.uniform(-1, 1, (4, 8, 1, 1)).astype(dtype), None,
                    dict(stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                         layout="channels_first", flip=False, activation=None))
        _check(case, gpuconv.conv2d(case.x, case.filters, algorithm="pointwise"),
               "emulated pointwise under CUPY_TF32")
    monkeypatch.delenv("CUPY_TF32")
    assert cuda.filter_grad_kernel(geom, np.float32) == "pointwise"


IM2COL_CASES = CASES + TILE_CASES + fast_path_cases() + bfloat16_cases() + \
    channel_block_cases()


def test_im2col(emulated_gpu):
    """CUDA's explicit GEMM (im2col.cu's unroll and store around xp.matmul; cuBLAS's arithmetic
    for 16-bit products) on every case of the grids: every rank, layout, stride, dilation,
    padding and padding mode, groups, flip, bias (a row of ones), activation, every dtype
    (float16 and bfloat16 widened to float32 for sigmoid and tanh), against the reference;
    the caller's x is left as it was."""
    ran = 0
    for case in IM2COL_CASES:
        x0 = case.x.copy()
        got = _forced(case, "cuda", "im2col")
        np.testing.assert_array_equal(case.x, x0)
        assert got is not None, case.name
        _check(case, got, "emulated im2col")
        ran += 1
    assert ran == len(IM2COL_CASES) > 300


@pytest.mark.parametrize("chunk, rows", [(1, 1), (5, 2), (8, 3), (None, 3), (None, 1000)])
def test_im2col_chunks_and_runs(chunk, rows, emulated_gpu, monkeypatch):
    """The explicit GEMM in chunks of output positions that start and end inside images and
    rows (a last partial chunk; one position a chunk), its threads doing runs of 2, 3 or every
    (group, channel) row and output channel (runs that cross groups, a group's bias and zero
    rows in the middle of a run), against the reference."""
    if chunk is not None:
        monkeypatch.setattr(kernels, "im2col_chunk", lambda geom, K, itemsize: chunk)
    monkeypatch.setattr(kernels, "im2col_rows_a_thread", lambda n, columns: rows)
    cases = [c for c in IM2COL_CASES[::7] if np.prod(c.x.shape) < 4000]
    assert len(cases) >= 30 and sum(c.options["groups"] > 1 for c in cases) >= 10
    for case in cases:
        _check(case, _forced(case, "cuda", "im2col"), f"emulated im2col, {chunk}, {rows}")


def test_im2col_workspace_and_refusals(emulated_gpu, monkeypatch):
    from gpuconv.geometry import plan_conv
    geom = plan_conv((3, 16, 40, 40), (24, 16, 3, 3), padding=1)
    assert kernels.im2col_rows(geom, np.float32, False) == 144
    assert kernels.im2col_rows(geom, np.float32, True) == 145
    assert kernels.im2col_rows(geom, np.float16, True) == 152
    assert kernels.im2col_chunk(geom, 145, 4) == 4800  # every position fits
    monkeypatch.setattr(kernels, "IM2COL_WORKSPACE_BYTES", 1000 * (145 + 24) * 4 + 5)
    assert kernels.im2col_chunk(geom, 145, 4) == 1000
    monkeypatch.setattr(kernels, "IM2COL_WORKSPACE_BYTES", 1003 * (145 + 24) * 4)
    assert kernels.im2col_chunk(geom, 145, 4) == 1000  # a multiple of 8 below the whole
    monkeypatch.setattr(kernels, "IM2COL_WORKSPACE_BYTES", 5 * (145 + 24) * 4 + 600)
    assert kernels.im2col_chunk(geom, 145, 4) == 5  # under 8: not rounded
    monkeypatch.setattr(kernels, "IM2COL_WORKSPACE_BYTES", 256 * 2**20)
    huge = plan_conv((1, 2**24, 3, 3), (8, 2**24, 3, 3))
    assert "columns 603979812 bytes, more than its workspace of 268435456" in \
        algorithms.why_not("cuda", "im2col", huge, np.float32)
    assert algorithms.choose("cuda", "auto", geom, np.float32) != "im2col"  # not yet timed
    x, w = np.ones((2, 8, 5, 5), np.float32), np.ones((4, 8, 3, 3), np.float32)
    # im2col's products are gpuconv's cuBLAS calls: CUPY_TF32 (CuPy's matmul) does not
    # refuse it
    monkeypatch.setenv("CUPY_TF32", "1")
    assert not algorithms.why_not("cuda", "im2col", geom, np.float32)
    assert gpuconv.conv2d(x.astype(np.float64), w.astype(np.float64),
                          algorithm="im2col").dtype == np.float64


@pytest.mark.parametrize("case", bfloat16_cases(), ids=lambda c: c.name)
def test_bfloat16_kernels(case, emulated_gpu):
    """bfloat16 through the direct, each GEMM tile's and (one kernel a filter) the depthwise
    kernel: loads widen exactly, stores round to nearest even."""
    for algorithm in ["direct", "depthwise", "gemm_tc"] + [f"gemm_{t}" for t in kernels.gemm_tiles(
            case.x.dtype)]:
        if algorithm == "depthwise" and case.filters.shape[1] != 1:
            continue
        got = gpuconv.conv(case.x, case.filters, case.bias, algorithm=algorithm, **case.options)
        _check(case, got, f"emulated {algorithm} bfloat16")


@pytest.mark.parametrize("algorithm", ["depthwise", "depthwise_tile"])
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=lambda c: c.name)
def test_depthwise_kernel(case, algorithm, emulated_gpu):
    """The depthwise kernels (unrolled and runtime-size instantiations; the shared-memory tile
    where its sizes apply) on every case with one kernel per filter."""
    got = _forced(case, "cuda", algorithm)
    if got is not None:
        _check(case, got, f"emulated {algorithm}")


ROW_CASES = [  # (kernel size, stride, dilation, padding, input width, layout)
    (k, s, d, p, width, layout)
    for i, (k, s, d, p) in enumerate(itertools.product(
        ((3, 3), (5, 5), (7, 7), (1, 3), (1, 5), (1, 7), (3,), (5,), (7,)),
        (1, 2), (1, 2), (0, "same")))
    for width, layout in (((9 + i % 7, "channels_first"),) if i % 5 else
                          ((9 + i % 7, "channels_first"), (10, "channels_last")))]


@pytest.mark.parametrize("algorithm", ["depthwise", "depthwise_tile"])
@pytest.mark.parametrize("k, stride, dilation, padding, width, layout", ROW_CASES)
def test_depthwise_kernel_unrolled_sizes(k, stride, dilation, padding, width, layout, algorithm,
                                         emulated_gpu):
    """The unrolled depthwise kernels (conv_depthwise_rows for channels-first outputs, 4 of a
    row a thread; conv_depthwise for channels-last): every unrolled size, stride and dilation
    1 and 2, row widths that leave 1-3 outputs in a last run, channel multipliers, a bias and
    an activation; also a 3-D input with a depth-1 kernel."""
    rng = np.random.default_rng(abs(hash((k, stride, dilation, padding, width))) % 2**32)
    spatial = tuple((kk - 1) * dilation + 3 for kk in k[:-1]) + (width + 6 * dilation,)
    options = dict(groups=3, padding=padding, stride=stride, dilation=dilation,
                   padding_mode="zeros", layout=layout, flip=False, activation="relu")
    for shape, kernel in (((2, 3) + spatial, k), ((1, 3, 2) + spatial, (1,) + k)):
        if len(kernel) > 3:
            continue
        x = rng.standard_normal(shape).astype(np.float32)
        if layout == "channels_last":
            x = np.moveaxis(x, 1, -1).copy()
        w = rng.standard_normal((6, 1) + kernel).astype(np.float32)
        b = rng.standard_normal(6).astype(np.float32)
        case = types.SimpleNamespace(x=x, filters=w, bias=b, options=options)
        got = gpuconv.conv(x, w, b, algorithm=algorithm, **options)
        _check(case, got, f"emulated {algorithm} {kernel} {options}")


@pytest.mark.parametrize("case", CASES + bfloat16_cases(), ids=lambda c: c.name)
def test_adjoint_kernels(case, emulated_gpu, route):
    rng = np.random.default_rng(abs(hash(case.name)) % 2**32)
    g = _grad_out(case, rng)
    opts = _options(case)
    check_input_grad(case, g, gpuconv.conv_input_grad(g, case.filters, case.x.shape, **opts))
    check_filter_grad(case, g, gpuconv.conv_filter_grad(case.x, g, case.filters.shape, **opts))


@pytest.mark.parametrize("kernel", ["gemm", "depthwise", "chunks", "pointwise"])
@pytest.mark.parametrize("case", CASES + TILE_CASES, ids=lambda c: c.name)
def test_filter_grad_kernels(case, kernel, emulated_gpu, monkeypatch):
    """Each filter-gradient kernel forced on every case it can take (the GEMM's tiles, splits
    of the positions and conjugation; the depthwise kernel's chunks and tree sums on one
    kernel a filter of the sizes it is built for; the partial-sum kernel's chunks; the
    batched product of 1x1 layers without padding, one image a batch), then the
    ordered sum."""
    if kernel == "depthwise" and (case.filters.shape[1] != 1 or kernels.depthwise_size(
            case.filters.shape[2:]) == (0, 0)):
        return
    if kernel == "pointwise":
        if not _pointwise_applies(case):
            return
        itemsize = np.result_type(case.x, case.filters).itemsize  # one image a batch
        monkeypatch.setattr(cuda, "POINTWISE_FILTER_GRAD_BYTES",
                            case.filters.shape[0] * case.filters.shape[1] * itemsize)
    monkeypatch.setattr(cuda, "filter_grad_kernel", lambda geom, dtype: kernel)
    tiles = kernels.filter_grad_tiles(case.x.dtype)  # each case one of its dtype's tiles
    tile = tiles[zlib.crc32(case.name.encode()) % len(tiles)]
    monkeypatch.setattr(cuda, "filter_grad_tile", lambda geom, dtype: tile)
    rng = np.random.default_rng(abs(hash(case.name)) % 2**32)
    g = _grad_out(case, rng)
    check_filter_grad(case, g, gpuconv.conv_filter_grad(case.x, g, case.filters.shape,
                                                        **_options(case)))


def test_pointwise_filter_grad_16bit(emulated_gpu, monkeypatch):
    """The pointwise filter gradient of float16 and bfloat16 1x1 layers: x and g widened to
    float32, the images' products summed in float32 batch after batch (two images a batch
    here), one rounding into the result."""
    monkeypatch.setattr(cuda, "filter_grad_kernel", lambda geom, dtype: "pointwise")
    ran = 0
    for case in POINTWISE_16BIT_CASES:
        if not _pointwise_applies(case) or case.filters.shape[1] == 1:
            continue
        geom = _geometry(case)  # an image's float32 products and widened x and g, twice
        per_image = 4 * (geom.C_out * geom.C_in_per_group +
                         (geom.C_in + geom.C_out) * geom.positions // geom.N)
        monkeypatch.setattr(cuda, "POINTWISE_FILTER_GRAD_BYTES", 2 * per_image)
        rng = np.random.default_rng(zlib.crc32(case.name.encode()))
        g = _grad_out(case, rng)
        check_filter_grad(case, g, gpuconv.conv_filter_grad(case.x, g, case.filters.shape,
                                                            **_options(case)))
        ran += 1
    assert ran >= 20


@pytest.mark.parametrize("dtype", [np.float32, np.complex128, np.float16])
@pytest.mark.parametrize("kernel_size,stride,dilation,layout,multiplier", [
    ((3, 3), 1, 1, "channels_first", 1),
    ((5, 5), 2, 1, "channels_last", 1),
    ((3, 3), 1, 2, "channels_first", 2),   # dilated; two filters a channel
    ((7,), 2, 1, "channels_first", 1),
])
def test_depthwise_filter_grad_chunks(kernel_size, stride, dilation, layout, multiplier, dtype,
                                      emulated_gpu, monkeypatch):
    """conv_depthwise_filter_grad with its blocks' chunks cut fine: 2-4 chunks a filter, of
    positions that span rows unevenly (each thread steps 256 positions, carrying across the
    output's rows and images), and every tap reduced by the block's tree (complex128 in
    three passes of 4 taps, 16 KiB of shared rows)."""
    monkeypatch.setattr(cuda, "filter_grad_kernel", lambda geom, dt: "depthwise")
    monkeypatch.setattr(cuda, "DEPTHWISE_FILTER_GRAD_MIN_PER_THREAD", 1)
    rng = np.random.default_rng(40)
    spatial = (45, 37) if len(kernel_size) == 2 else (1200,)
    x, w = depthwise_layer(rng, 3, 6, spatial, kernel_size, dtype, multiplier)
    options = dict(stride=stride, padding=2, dilation=dilation, groups=6, padding_mode="zeros",
                   layout="channels_first", flip=False)
    case = types.SimpleNamespace(x=x, filters=w, bias=None, options=options)
    g = _grad_out(case, rng)
    geom = gpuconv.geometry.plan_conv(x.shape, w.shape, stride=stride, padding=2,
                                      dilation=dilation, groups=6)
    R, chunk = cuda.depthwise_filter_grad_chunks(geom, 3 * 2048)  # the emulated device's
    assert R == 4 // multiplier and 256 < chunk < geom.positions
    if layout == "channels_last":  # the same numbers, handed over channels-last
        got = gpuconv.conv_filter_grad(np.moveaxis(x, 1, -1), np.moveaxis(g, 1, -1), w.shape,
                                       **dict(_options(case), layout=layout))
    else:
        got = gpuconv.conv_filter_grad(x, g, w.shape, **_options(case))
    check_filter_grad(case, g, got)


@pytest.mark.parametrize("tile", list(kernels.FILTER_GRAD_TILES))
@pytest.mark.parametrize("layout,groups,stride", [("channels_first", 1, 2),
                                                  ("channels_last", 2, 1)])
def test_filter_grad_gemm_tiles(tile, layout, groups, stride, emulated_gpu, monkeypatch):
    """Each filter-gradient tile forced on float32 layers with 180 terms a filter and 140
    filters a group (two term tiles of 128, three filter tiles of 64 or two of 128, partly
    filled) and several steps of positions (40 or 144 of them)."""
    monkeypatch.setattr(cuda, "filter_grad_by_gemm", lambda geom: True)
    monkeypatch.setattr(cuda, "filter_grad_tile", lambda geom, dtype: tile)
    rng = np.random.default_rng(30)
    x = rng.standard_normal((2, 20 * groups, 9, 8)).astype(np.float32)
    w = np.zeros((140 * groups, 20, 3, 3), np.float32)
    options = dict(stride=stride, padding=1, dilation=1, groups=groups, padding_mode="zeros",
                   layout="channels_first", flip=False)
    case = types.SimpleNamespace(x=x, filters=w, bias=None, options=options)
    g = _grad_out(case, rng)
    if layout == "channels_last":  # the same numbers, handed over channels-last
        options = dict(options, layout=layout)
        got = gpuconv.conv_filter_grad(np.moveaxis(x, 1, -1), np.moveaxis(g, 1, -1), w.shape,
                                       **_options(types.SimpleNamespace(options=options)))
    else:
        got = gpuconv.conv_filter_grad(x, g, w.shape, **_options(case))
    check_filter_grad(case, g, got)


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: c.name)
def test_transpose_kernel(case, emulated_gpu, route):
    y, b, opts = transpose_call(case)
    check_transpose(case, y, b, opts, gpuconv.conv_transpose(y, case.filters, b, **opts))


def _launch_status(lib, args):
    return lib.gc_emulate(*Packed(args).arguments, 0, 1)


def test_argument_mismatch_is_detected(emulator):
    """The signature check can fail: a wrong count, a scalar where the kernel takes the record,
    a record of the wrong size, a value where it takes a pointer, a misaligned pointer."""
    lib = emulator.library("conv_direct.cu", kernels.conv_direct_name(np.float32, None))
    a = np.zeros(4, np.float32)
    record = np.zeros((), gpuconv.params.DTYPE)
    assert _launch_status(lib, (a, a, a, a, record)) == 0
    assert _launch_status(lib, (a, a, a, a)) == -1
    assert _launch_status(lib, (a, a, a, a, np.int64(0))) == -104
    short = np.zeros((), np.dtype([(f, np.int64) for f in gpuconv.params.FIELDS[:-1]]))
    assert _launch_status(lib, (a, a, a, a, short)) == -104
    assert _launch_status(lib, (a, np.int64(0), a, a, record)) == -201
    assert _launch_status(lib, (a, a, np.zeros(9, np.uint8)[1:], a, record)) == -302


TILE_LAYERS = [  # (x shape, kernel, stride, dilation, padding): 1-D, 2-D, 3-D depth-1 kernels
    ((2, 3, 7, 9), (3, 3), 1, 1, 1), ((1, 2, 8, 11), (3, 3), 2, 1, "same"),
    ((1, 2, 9, 10), (5, 5), 1, 2, 2), ((1, 1, 9, 13), (7, 7), 2, 1, 3),
    ((2, 3, 23), (5,), 1, 1, 2), ((1, 2, 30), (7,), 3, 2, 0), ((1, 2, 3, 7, 8), (1, 3, 3), 2, 1, 1),
    ((1, 2, 5, 13), (1, 5), 1, 1, (0, 2))]
# planes of more outputs than a block has threads: one plane a block, each thread several
# outputs, stepping its place by 256 with carries into the next row (at blocks of 400 and
# 1024 outputs; of 4 or 24, the host emulation's thread per CUDA thread takes too long)
TILE_LAYERS_LARGE = [
    ((1, 2, 20, 30), (3, 3), 1, 1, 1), ((1, 1, 41, 61), (3, 3), 2, 1, 1),
    ((1, 1, 17, 45), (5, 5), 1, 2, 4), ((1, 2, 700), (5,), 1, 1, 2)]


@pytest.mark.parametrize("outputs", [4, 24, 400, 1024])
def test_depthwise_tile_blocks(outputs, emulated_gpu, monkeypatch):
    """conv_depthwise_tile with blocks aimed at few outputs, so that the layers above split
    into several tiles a row, several rows a plane, or several planes a block with a last
    block of fewer: every block's tile copied with its halo and zero padding, and every output
    of it written once (the output is poisoned with NaN before the launch); at the default
    size, whole planes of more outputs than threads."""
    monkeypatch.setattr(kernels, "DEPTHWISE_TILE_OUTPUTS", outputs)
    cuda._forward_plan.cache_clear()
    seen = set()
    try:
        layers = TILE_LAYERS + (TILE_LAYERS_LARGE if outputs >= 400 else [])
        for i, (shape, kernel, stride, dilation, padding) in enumerate(layers):
            rng = np.random.default_rng(100 + i)
            C = shape[1]
            x = rng.standard_normal(shape).astype(np.float32)
            w = rng.standard_normal((2 * C, 1) + kernel).astype(np.float32)
            b = rng.standard_normal(2 * C).astype(np.float32)
            options = dict(groups=C, padding=padding, stride=stride, dilation=dilation,
                           padding_mode="zeros", layout="channels_first", flip=False,
                           activation=None)
            case = types.SimpleNamespace(x=x, filters=w, bias=b, options=options)
            planes, rows, columns = kernels.depthwise_tile(_geometry(case), np.float32)
            out = _geometry(case).out_spatial
            seen.add((planes > 1, rows < ((1,) + out)[-2], columns < out[-1]))
            got = gpuconv.conv(x, w, b, algorithm="depthwise_tile", **options)
            _check(case, got, f"emulated depthwise_tile {kernel} {options} tile "
                              f"{(planes, rows, columns)}")
    finally:
        cuda._forward_plan.cache_clear()
    if outputs == 4:  # several tiles a row, one row a tile
        assert any(s[2] for s in seen)
    if outputs == 24:  # whole rows, several tiles a plane
        assert any(s[1] and not s[2] for s in seen)
    if outputs == 400:
        assert any(s[0] for s in seen)
    if outputs == 1024:  # one plane a block: the last four layers
        assert (False, False, False) in seen


#: Random calls drawn as ``gpuconv check`` draws them (selfcheck.random_call: every rank,
#: dtype, padding form and mode, stride, dilation, groups and depthwise, layout, flip, bias
#: and activation; some filters of 8 or 16 kernels for the channel-block kernels) through
#: every CUDA algorithm the autotuner would time for them (tuning.candidates) and auto, all
#: emulated: what ``gpuconv check --algorithms all`` runs on a GPU, against the reference
#: here. GPUCONV_EMULATION_RANDOM_CALLS sets how many (a longer local campaign).
#: The first seeds are joined by the first seed (of the next 2000) that each other CUDA
#: candidate runs, so that every kernel gets at least one random call.
RANDOM_CALLS = int(os.environ.get("GPUCONV_EMULATION_RANDOM_CALLS", "12"))


def _random_case(seed):
    """(the call's Case, the CUDA algorithms the autotuner would time for it)."""
    x, w, b, options = selfcheck.random_call(np.random.default_rng([2028, seed]))
    case = Case(f"random{seed}", x, w, b, options)
    dtype = np.result_type(x, w, *(() if b is None else (b,)))
    return case, tuning.candidates("cuda", _geometry(case), dtype)


#: Every CUDA algorithm the autotuner times (not TF32 or Winograd, of lower accuracy, nor
#: "gemm", which names one of the gemm_<tile> kernels)
CUDA_CANDIDATES = {a for a in algorithms.ALGORITHMS["cuda"]
                   if a not in tuning._NOT_CANDIDATES}


def _random_seeds():
    seeds = list(range(RANDOM_CALLS))
    covered = {a for s in seeds for a in _random_case(s)[1]}
    for seed in range(RANDOM_CALLS, RANDOM_CALLS + 2000):
        if covered >= CUDA_CANDIDATES:
            break
        new = set(_random_case(seed)[1]) - covered
        if new:
            seeds.append(seed)
            covered |= new
    return seeds


RANDOM_SEEDS = _random_seeds()


def test_the_random_calls_reach_every_cuda_candidate():
    assert {a for s in RANDOM_SEEDS for a in _random_case(s)[1]} == CUDA_CANDIDATES


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_random_calls_on_every_cuda_kernel(seed, emulated_gpu):
    """Each CUDA candidate forced, then auto, on one random call, against the reference; the
    caller's arrays unchanged."""
    case, candidates = _random_case(seed)
    x, w, b, options = case.x, case.filters, case.bias, case.options
    x0, w0 = x.copy(), w.copy()
    for algorithm in candidates + ["auto"]:
        got = gpuconv.conv(x, w, b, algorithm=algorithm, **options)
        _check(case, got, f"emulated {algorithm}: x {x.shape} {x.dtype}, "
                          f"filters {w.shape}, {options}")
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)
