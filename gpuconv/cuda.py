"""The CuPy backend: launches the raw CUDA kernels of ``kernels_cuda/``.

Only imported when a call runs on the GPU. Launches go to CuPy's current stream on the current
device (the caller's ``with cupy.cuda.Device(i)`` / ``with stream:`` are respected).

Each operation is written once as ``_op(xp, run, ...)``: ``xp`` is the array module and
``run(file, kernel, dtype, work, args)`` launches one kernel: a grid-stride kernel over ``work``
threads' worth of work (an int), or a tiled kernel on the blocks a :class:`Grid` names. The
public functions pass CuPy and a CuPy launcher; the test suite passes NumPy and a launcher that
runs the same kernel source on the host (tests/test_kernel_emulation.py).
Kernel arguments are the arrays, then the convolution's sizes and strides as one record
(:mod:`gpuconv.params`, ``struct gc_conv``), which CuPy passes by value. Other scalars are NumPy
scalars typed as the kernels declare them (``long long`` -> int64): CuPy passes a NumPy scalar
by its type, so a mismatch would shift every later argument.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from . import algorithms, cublas, kernels, params, tuning
from .activation import activate, commutes_with_rounding
from .config import get_autotune
from .device import cuda_device_name, cupy_module
from .dtypes import accumulator_dtype
from .geometry import ConvGeometry
from .layout import (alloc_output, merged_stride, pad_spatial, pointwise_view,
                     to_channels_first, unpad_adjoint)
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union
from ._typing import Array, DTypeLike

#: When True, outputs are filled with NaN before each launch so that elements a kernel fails to
#: write show up in tests (costs one extra pass over the output; for testing only).
poison_outputs = False

_THREADS = 256

#: Kernels a filter from which a data adjoint runs as forward convs by stride phase
#: (adjoint._by_phases): from one, since the forward kernels for few filters (few_filters,
#: gemm_128x8) do far less per term than conv_adjoint.cu's thread per input element
#: (r50_conv1_7x7s2's input gradient: 35.8 ms on an H100 there, cuDNN 0.59).
DATA_ADJOINT_AS_CONV_MIN_CHANNELS = 1


@functools.lru_cache(maxsize=None)
def _sm_count(device_id: int) -> int:
    import cupy
    return int(cupy.cuda.Device(device_id).attributes["MultiProcessorCount"])


def _max_blocks(device_id: int) -> int:
    return _sm_count(device_id) * 32  # the kernels grid-stride; more only adds scheduling


class Grid(NamedTuple):
    """A tiled kernel's launch: ``blocks`` (x, y, z) of ``threads`` threads each."""
    blocks: Tuple[int, int, int]
    threads: int


def _launch_args(args: Sequence[Any]) -> Tuple[Any, ...]:
    """``args`` with each NumPy array (exactly ``numpy.ndarray``: the ``gc_conv`` record, passed
    by value) viewed as plain bytes. CuPy takes such an argument's address from its
    ``__array_interface__``, which for the record's 36 named fields spells out its dtype anew on
    every call (78 us a call under the profiler of bench --overhead on the H100 machine;
    untraced, the whole call went from 113 to 104 us); for a bytes view it is about 1 us."""
    return tuple([a.view(_bytes_dtype(a.itemsize)) if type(a) is np.ndarray else a
                  for a in args])


@functools.lru_cache(maxsize=None)
def _bytes_dtype(itemsize: int) -> np.dtype:
    return np.dtype(("V", itemsize))


def _launch_shape(work: Union[int, Grid], device_id: int
                  ) -> Optional[Tuple[Tuple[int, ...], Tuple[int]]]:
    """(grid, block) of a launch of ``work`` on GPU ``device_id``, or None when it has no
    blocks: a tiled kernel's Grid as it is; a grid-stride kernel's threads in blocks of
    _THREADS, at most _max_blocks of them."""
    if isinstance(work, Grid):
        return (work.blocks, (work.threads,)) if min(work.blocks) > 0 else None
    blocks = min(-(-work // _THREADS), _max_blocks(device_id))
    return ((blocks,), (_THREADS,)) if blocks > 0 else None


def _launch(function: Any, grid: Tuple[int, ...], block: Tuple[int], args: Tuple[Any, ...]
            ) -> None:
    """The one place a compiled kernel is called (CuPy's RawKernel call: the current stream);
    ``args`` as _launch_args gives them. bench --overhead replaces it to time a call without
    its launches."""
    function(grid, block, args)


def _gpu_run(file: str, name: str, dtype: DTypeLike, work: Union[int, Grid],
             args: Sequence[Any]) -> None:
    device_id = cupy_module().cuda.runtime.getDevice()
    shape = _launch_shape(work, device_id)
    if shape is not None:
        _launch(kernels.get_function(file, name, dtype, device_id), *shape, _launch_args(args))


def _gpu_threads() -> int:
    return _max_blocks(cupy_module().cuda.runtime.getDevice()) * _THREADS


def _gpu_sms() -> int:
    return _sm_count(cupy_module().cuda.runtime.getDevice())


def _pointer(a: Array) -> int:
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def _aligned(xp: Any, a: Array) -> Array:
    """``a``, or a fresh (aligned) copy when its data pointer is not aligned to a whole element.
    (``ascontiguousarray`` would not do: it hands a contiguous array back as it is.)"""
    if isinstance(a, np.ndarray):  # the host emulation's arrays: NumPy keeps the flag
        return a if a.flags.aligned else np.array(a, copy=True)
    return a if a.data.ptr % a.itemsize == 0 else xp.array(a, copy=True)


@functools.lru_cache(maxsize=None)
def _axes_to_last(ndim: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(axis 1 moved last, the last axis moved to 1) as transpose orders for ``ndim`` axes: what
    moveaxis computes anew on every call (its axis normalisation was most of a float16 call's
    Python time)."""
    return (0,) + tuple(range(2, ndim)) + (1,), (0, ndim - 1) + tuple(range(1, ndim - 1))


def _channels_last(xp: Any, run: Callable[..., None], x_cf: Array) -> Array:
    """``x_cf`` (N, C, *spatial) as a channels-first view of a C-contiguous channels-last array
    starting on 16 bytes (conv_gemm_tc_cl's and conv_gemm_cl's x, and their filters: (C_out,
    C_in/groups, *kernel) read as (C_out, *kernel, C_in/groups)): ``x_cf`` itself where it
    already is one (a channels-last caller's x, 1x1 filters), else a copy made by layout.cu's
    to_channels_last, whose tiles read and write whole sectors where an elementwise copy of the
    transposed view reads one element a sector (or by the array library where the spatial axes
    do not merge into one stride, which views of views can do)."""
    to_last, to_first = _axes_to_last(x_cf.ndim)
    cl = x_cf.transpose(to_last)
    if cl.flags.c_contiguous and _pointer(cl) % 16 == 0:
        return x_cf
    copy = _channels_last_copy(x_cf.shape, x_cf.strides, x_cf.itemsize)
    if copy is None:
        return xp.array(cl, order="C", copy=True).transpose(to_first)
    grid, sizes = copy
    out = xp.empty(cl.shape, dtype=x_cf.dtype)
    _poison(out)
    run("layout.cu", kernels.to_channels_last_name(x_cf.dtype), x_cf.dtype, grid,
        (x_cf, out) + sizes)
    return out.transpose(to_first)


@functools.lru_cache(maxsize=1024)
def _channels_last_copy(shape: Tuple[int, ...], strides: Tuple[int, ...], itemsize: int
                        ) -> Optional[Tuple[Grid, Tuple[np.int64, ...]]]:
    """to_channels_last's grid and size arguments (N, C, S, xs_n, xs_c, xs_s) for an x of this
    shape and byte strides, or None where it does not apply: spatial axes that do not merge into
    one stride (layout.merged_stride), or no elements. Cached: per call, only a lookup."""
    N, C, spatial = shape[0], shape[1], shape[2:]
    S = math.prod(spatial)
    steps = [st // itemsize for st in strides]
    s_stride = merged_stride(spatial, steps[2:])
    if s_stride is None or N * C * S == 0:
        return None
    tile = kernels.LAYOUT_TILE
    grid = Grid((-(-S // tile), -(-C // tile), min(N, kernels.LAYOUT_MAX_GRID_Z)),
                kernels.LAYOUT_THREADS)
    return grid, tuple(np.int64(v) for v in (N, C, S, steps[0], steps[1], s_stride))


def _is_contiguous(a: Array, dtype: DTypeLike) -> bool:
    return a.dtype == dtype and a.flags.c_contiguous


def _contiguous(xp: Any, a: Array, dtype: DTypeLike) -> Array:
    """``a`` as a contiguous, aligned array of ``dtype`` (filters and bias; small): ``a``
    itself where it already is one (the usual call, checked without an array function)."""
    if not _is_contiguous(a, dtype):
        a = xp.ascontiguousarray(a, dtype=dtype)
    return _aligned(xp, a)


def _pads_first(geom: ConvGeometry) -> bool:
    """Whether x is padded by an array pass before the kernels (a padding_mode other than
    zeros, with padding); zero padding stays in the kernels."""
    return geom.padding_mode != "zeros" and max(geom.pad_before + geom.pad_after) > 0


def _prepare_x(xp: Any, x_cf: Array, geom: ConvGeometry, dtype: DTypeLike) -> Tuple[Array,
               ConvGeometry]:
    """x cast to ``dtype`` and, where _pads_first, pre-padded (the returned geometry then has
    zero padding)."""
    if x_cf.dtype != dtype:
        x_cf = x_cf.astype(dtype)
    if _pads_first(geom):
        x_cf = pad_spatial(xp, x_cf, geom)
        geom = geom.with_zero_padding()
    return _aligned(xp, x_cf), geom


def _poison(a: Array) -> None:
    if poison_outputs:
        a.fill(np.nan)


#: Split-K (conv_gemm): each split sums at least this many steps of a tile's terms, and the
#: splits' partial sums stay under GEMM_PARTIAL_BYTES.
GEMM_SPLIT_MIN_STEPS = 8
GEMM_PARTIAL_BYTES = 64 * 2**20


#: Split-K takes the fewest splits whose time (below) is within this fraction of the least:
#: each split costs its partial sums' traffic and an ordered sum, which the wave count ignores.
GEMM_SPLIT_SLACK = 0.05


def gemm_splits(geom: ConvGeometry, tile: Tuple[int, int, int], sms: int, per_sm: int,
                itemsize: int) -> Tuple[int, int]:
    """(splits, steps a split) of an implicit GEMM's terms, for its ``tile`` (BM positions, BN
    filters, BK terms a step) on ``sms`` SMs holding ``per_sm`` of its blocks each. Each split
    has at least GEMM_SPLIT_MIN_STEPS steps, and their partial sums stay within
    GEMM_PARTIAL_BYTES.

    Where one block fills an SM (per_sm 1: 128x128), the last wave's idle SMs are the loss:
    B blocks take ceil(B / sms) waves, and s splits make B * s blocks of 1/s the work,
    ceil(B * s / sms) / s of the unsplit time; the fewest splits (up to sms) within
    GEMM_SPLIT_SLACK of the least such time are taken (r50_res4 at N = 32: 98 blocks,
    26% of 132 SMs idle throughout; 4 splits, 392 blocks in 2.97 waves, 0.75 of the time; a
    grid of many waves stays unsplit; one of fewer blocks than SMs is split until they are
    filled). With several blocks an SM, the blocks of a part-filled wave share their SMs with
    fewer others and run faster, which the wave count does not capture: such grids are split
    only while their blocks are fewer than sms x per_sm, as many times as fill those. Fixed for
    a shape and device, which keeps the result bit-identical run after run."""
    BM, BN, BK = tile
    blocks = -(-geom.positions // BM) * -(-geom.C_out_per_group // BN) * geom.groups
    steps = max(1, -(-geom.terms_per_output // BK))
    E = geom.C_out * geom.positions
    most = max(1, min(steps // GEMM_SPLIT_MIN_STEPS, 65535 // geom.groups,
                      GEMM_PARTIAL_BYTES // max(1, E * itemsize)))
    slots = max(1, sms * per_sm)
    if per_sm > 1:
        splits = max(1, min(slots // max(1, blocks), most))
    else:
        times = [-(-blocks * s // slots) / s for s in range(1, min(most, slots) + 1)]
        least = min(times)
        splits = next(s for s, t in enumerate(times, start=1)
                      if t <= least * (1 + GEMM_SPLIT_SLACK))
    per_split = -(-steps // splits)
    return -(-steps // per_split), per_split


class _Launch(NamedTuple):
    """One kernel launch of a call: ``run(file, name, dtype, work, args)``; ``extra``: the
    kernel's arguments after the call's own (conv_depthwise_tile's tile)."""
    file: str
    name: str
    work: Union[int, Grid]
    extra: Tuple[Any, ...] = ()


class ForwardPlan(NamedTuple):
    """What a forward call launches, decided once per (geometry, dtype, activation, algorithm,
    SM count) and cached (_forward_plan): the rules, kernel names and grids are most of a
    small call's host time. ``splits`` is 0 for kernels without split-K (direct, depthwise,
    gemm_tc); for the split GEMMs, 1 (none) or the number of partial sums that ``finish``
    (conv_gemm_sum_splits) adds, each of ``per_split`` steps."""
    algorithm: str
    main: _Launch
    splits: int = 0
    per_split: int = 0
    finish: Optional[_Launch] = None
    partial_dtype: Optional[np.dtype] = None


@functools.lru_cache(maxsize=4096)
def _forward_plan(geom: ConvGeometry, dtype: np.dtype, activation: Optional[str], algorithm: str,
                  sms: int) -> ForwardPlan:
    algorithm = algorithms.choose("cuda", algorithm, geom, dtype)
    if algorithm == "direct":
        return ForwardPlan(algorithm, _Launch("conv_direct.cu",
                                              kernels.conv_direct_name(dtype, activation),
                                              geom.positions * geom.C_out))
    if algorithm == "winograd":  # launched by _winograd, chunk by chunk
        transform_in, transform_out = kernels.winograd_names(dtype, activation)
        return ForwardPlan(algorithm, _Launch("conv_winograd.cu", transform_in, 0),
                           finish=_Launch("conv_winograd.cu", transform_out, 0),
                           partial_dtype=accumulator_dtype(dtype))
    if algorithm == "im2col":  # launched by _im2col, chunk by chunk, around cuBLAS's products
        unroll, store = kernels.im2col_names(dtype, activation)
        return ForwardPlan(algorithm, _Launch("im2col.cu", unroll, 0),
                           finish=_Launch("im2col.cu", store, 0),
                           partial_dtype=accumulator_dtype(dtype)
                           if kernels.im2col_widened(dtype, activation) else dtype)
    if algorithm == "pointwise":  # no kernel of ours: cuBLAS makes the products (_pointwise)
        return ForwardPlan(algorithm, _Launch("", "", 0))
    if algorithm == "few_filters":
        runs = -(-geom.out_spatial[-1] // kernels.FEW_FILTERS_RUN)
        return ForwardPlan(algorithm, _Launch(
            "conv_direct.cu", kernels.conv_few_filters_name(
                dtype, activation, kernels.few_filters_width(geom.C_out_per_group)),
            geom.N * geom.groups * math.prod(geom.out_spatial[:-1]) * runs))
    if algorithm == "depthwise_tile":
        size = kernels.depthwise_size(geom.kernel)
        tile = kernels.depthwise_tile(geom, dtype)
        assert tile is not None  # algorithms.why_not refuses the layer otherwise
        return ForwardPlan(algorithm, _Launch(
            "conv_depthwise.cu", kernels.conv_depthwise_tile_name(dtype, activation, size),
            Grid((kernels.depthwise_tile_blocks(geom, tile), 1, 1),
                 kernels.DEPTHWISE_TILE_THREADS), tuple(map(_int64, tile))))
    if algorithm == "depthwise":
        size = kernels.depthwise_size(geom.kernel)
        if size != (0, 0) and geom.layout == "channels_first":  # runs of a row a thread
            runs = -(-geom.out_spatial[-1] // kernels.DEPTHWISE_ROW_RUN)
            return ForwardPlan(algorithm, _Launch(
                "conv_depthwise.cu", kernels.conv_depthwise_rows_name(dtype, activation, size),
                geom.N * geom.C_out * math.prod(geom.out_spatial[:-1]) * runs))
        # channels-last (neighbouring threads take neighbouring channels), any size
        return ForwardPlan(algorithm, _Launch(
            "conv_depthwise.cu", kernels.conv_depthwise_name(dtype, activation, size),
            geom.positions * geom.C_out))
    positions = geom.positions
    if algorithm in ("gemm_tc", "gemm_tf32"):  # gemm_tf32: by the dtype
        BM, BN = kernels.GEMM_TC_TILE
        blocks = (-(-positions // BM), -(-geom.C_out_per_group // BN), geom.groups)
        return ForwardPlan(algorithm, _Launch("conv_gemm_tc.cu",
                                              kernels.conv_gemm_tc_name(dtype, activation),
                                              Grid(blocks, kernels.GEMM_TC_THREADS)))
    if algorithm == "gemm_tc_cl":
        BN = kernels.gemm_tc_cl_filters(geom)
        file, name = "conv_gemm_tc.cu", kernels.conv_gemm_tc_cl_name(dtype, activation, BN)
        tile = (kernels.GEMM_TC_CL_POSITIONS, BN, kernels.GEMM_TC_CL_TERMS)
        per_sm = kernels.gemm_tc_cl_blocks_per_sm(BN)
        threads = kernels.gemm_tc_cl_threads(BN)
    elif algorithm == "gemm_wgmma":  # gemm_tc_cl's blocks and ring, wgmma products (sm_90a)
        BN = kernels.gemm_tc_cl_filters(geom)
        file, name = "conv_gemm_wgmma.cu", kernels.conv_gemm_wgmma_name(dtype, activation, BN)
        tile = (kernels.GEMM_TC_CL_POSITIONS, BN, kernels.GEMM_TC_CL_TERMS)
        per_sm = kernels.GEMM_WGMMA_BLOCKS_PER_SM
        threads = kernels.GEMM_WGMMA_THREADS
    elif algorithm == "gemm_cl":  # gemm_tc_cl's blocks and ring, FFMA products (float32)
        BN = kernels.gemm_tc_cl_filters(geom)
        file, name = "conv_gemm_tc.cu", kernels.conv_gemm_cl_name(dtype, activation, BN)
        tile = (kernels.GEMM_TC_CL_POSITIONS, BN, kernels.GEMM_CL_TERMS)
        per_sm = kernels.gemm_cl_blocks_per_sm(BN)
        threads = kernels.gemm_tc_cl_threads(BN)
    else:
        ffma = algorithm[len("gemm_"):]
        file, name = "conv_gemm.cu", kernels.conv_gemm_name(dtype, activation, ffma)
        tile = kernels.GEMM_TILES[ffma][:3]
        per_sm = kernels.gemm_blocks_per_sm(ffma, accumulator_dtype(dtype).itemsize)
        threads = kernels.gemm_threads(ffma)
    acc = accumulator_dtype(dtype)
    splits, per_split = gemm_splits(geom, tile, sms, per_sm, acc.itemsize)
    BM, BN = tile[:2]
    blocks = (-(-positions // BM), -(-geom.C_out_per_group // BN), geom.groups * splits)
    finish = None
    if splits > 1:
        finish = _Launch("conv_gemm.cu", kernels.conv_gemm_sum_splits_name(dtype, activation),
                         geom.C_out * positions)
    return ForwardPlan(algorithm, _Launch(file, name, Grid(blocks, threads)), splits,
                       per_split, finish, acc)


def forward_plan(geom: ConvGeometry, dtype: DTypeLike, activation: Optional[str],
                 algorithm: str, sms: int) -> ForwardPlan:
    """The launches of a forward call on a GPU of ``sms`` SMs (cached; ValueError as
    algorithms.choose for an algorithm that cannot run the call)."""
    return _forward_plan(geom, np.dtype(dtype), activation, algorithm, sms)


def _forward(xp: Any, run: Callable[..., None], sms: int, x_cf: Array, w: Array,
             bias: Array, geom: ConvGeometry, activation: Optional[str], out_cf: Array,
             algorithm: str = "auto") -> None:
    dtype = out_cf.dtype
    plan = forward_plan(geom, dtype, activation, algorithm, sms)
    if plan.algorithm == "pointwise":
        _pointwise(xp, x_cf, w, bias, geom, activation, out_cf)
        return
    x_cf, geom = _prepare_x(xp, x_cf, geom, dtype)
    # Filters are small: one contiguous copy in the output dtype (this also makes flip's
    # reversed view contiguous, so one kernel serves correlation and convolution).
    w, b = _contiguous(xp, w, dtype), None if bias is None else _contiguous(xp, bias, dtype)
    _poison(out_cf)
    if plan.algorithm in _CHANNELS_LAST:  # terms tap-major: x as a channels-first view of a
        # channels-last array (a channels-last caller's own), and the filters (C_out,
        # C_in/groups, *kernel) as such an x, laid out (C_out, *kernel, C_in/groups)
        x_cf, w = _channels_last(xp, run, x_cf), _channels_last(xp, run, w)
    record = params.conv_params(geom, x_cf, out_cf, b is not None)
    # without a bias the kernel never reads its pointer; pass the filters as a valid one
    bias_arg = w if b is None else b
    if plan.algorithm == "winograd":
        _winograd(xp, run, plan, x_cf, w, bias_arg, out_cf, record, geom)
        return
    if plan.algorithm == "im2col":
        _im2col(xp, run, plan, x_cf, w, b, out_cf, record, geom)
        return
    partial = _partial_sums(xp, plan, geom, out_cf)
    for launch, args in _kernel_args(plan, x_cf, w, bias_arg, out_cf, partial, record):
        run(launch.file, launch.name, dtype, launch.work, args)


def _partial_sums(xp: Any, plan: ForwardPlan, geom: ConvGeometry, out: Array) -> Array:
    """Split-K's buffer of partial sums, (splits, C_out * positions) in plan.partial_dtype,
    which conv_gemm_sum_splits adds in order, adding the bias, applying the activation and
    writing y; ``out`` itself for a plan of one split or none (its kernel never reads the
    partial sums' pointer)."""
    if plan.splits <= 1:
        return out
    partial = xp.empty((plan.splits, geom.C_out * geom.positions), dtype=plan.partial_dtype)
    _poison(partial)
    return partial


def _kernel_args(plan: ForwardPlan, x: Array, w: Array, bias_arg: Array, out: Array,
                 partial: Array, record: np.ndarray
                 ) -> Tuple[Tuple[_Launch, Tuple[Any, ...]], ...]:
    """(launch, its arguments) for each kernel, in order, of a plan that launches one kernel
    of ours and perhaps split-K's sum: _forward's launches and a Replay's. Arrays pass as
    their data pointers, so views of the same memory serve."""
    main = plan.main
    if not plan.splits:
        return ((main, (x, w, bias_arg, out, record) + main.extra),)
    splits = _int64(plan.splits)
    launches = ((main, (x, w, bias_arg, out, partial, splits, _int64(plan.per_split), record)),)
    if plan.finish is None:
        return launches
    return launches + ((plan.finish, (partial, bias_arg, out, splits, record)),)


#: Algorithms whose calls a Replay does not make: their launches go around array passes and
#: cuBLAS's products (_pointwise, _winograd, _im2col). A PointwiseReplay makes pointwise
#: calls that are cuBLAS's products alone, an Im2colReplay im2col calls whose products read
#: the filters as they lie.
_NOT_REPLAYED = ("pointwise", "winograd", "im2col")
#: Algorithms that read x and the filters channels-last (_channels_last)
_CHANNELS_LAST = ("gemm_tc_cl", "gemm_wgmma", "gemm_cl")


#: a compiled kernel and its launch shape: (function, grid, block)
_Kernel = Tuple[Any, Tuple[int, ...], Tuple[int]]
#: a Replay's to_channels_last copy: (the kernel, its size arguments, the copy's shape)
_Copy = Tuple[_Kernel, Tuple[np.int64, ...], Tuple[int, ...]]


class Replay:
    """A forward call's kernels, launched again for a call that repeats it (gpuconv.repeat:
    same array types, shapes, strides, dtypes, devices and options): the output's
    allocation, split-K's buffer and the launches of a plan that takes the caller's arrays
    as they are (no cast or pre-padding; for the channels-last GEMMs, x and the filters read
    in place or copied by to_channels_last as the first call did), with the kernel
    functions, grids and the gc_conv record as the first call worked them out. Returns None
    for arrays whose data pointers lack the alignment the first call's kernels read them with
    (a whole element; 16 bytes for an array a channels-last GEMM reads in place): the full
    path copies those."""

    __slots__ = ("cupy", "shape", "dtype", "geom", "plan", "record", "kernels", "copies",
                 "align")

    def __init__(self, cupy: Any, shape: Tuple[int, ...], dtype: np.dtype, geom: ConvGeometry,
                 plan: ForwardPlan, record: np.ndarray, kernels: Tuple[_Kernel, ...],
                 copies: Tuple[Optional[_Copy], Optional[_Copy]], align: Tuple[int, int]):
        self.cupy, self.shape, self.dtype, self.geom = cupy, shape, dtype, geom
        self.plan, self.record, self.kernels = plan, record, kernels
        self.copies, self.align = copies, align

    def __call__(self, x: Array, w: Array, b: Optional[Array]) -> Optional[Array]:
        size = self.dtype.itemsize
        x_align, w_align = self.align
        if x.data.ptr % x_align or w.data.ptr % w_align or (b is not None and
                                                             b.data.ptr % size):
            return None
        cupy = self.cupy
        copy_x, copy_w = self.copies
        if copy_x is not None:
            x = _copy_channels_last(cupy, copy_x, x, self.dtype)
        if copy_w is not None:
            w = _copy_channels_last(cupy, copy_w, w, self.dtype)
        out = cupy.empty(self.shape, dtype=self.dtype)
        _poison(out)
        partial = _partial_sums(cupy, self.plan, self.geom, out)
        launches = _kernel_args(self.plan, x, w, w if b is None else b, out, partial,
                                self.record)
        for (function, grid, block), (_, args) in zip(self.kernels, launches):
            _launch(function, grid, block, args)
        return out


class PointwiseReplay:
    """A pointwise call's products, made again for a call that repeats it (gpuconv.repeat):
    the output's allocation and the cuBLAS calls the first call made (per group one strided
    batched call over the images, _group_products; or the output's rows, _rows_product),
    with their arguments (gpuconv.cublas.GemmArgs) and each operand as (x or the filters,
    byte offset from its start), on the new arrays' pointers. Made only for calls whose full
    path is those calls alone: x of stride 1 whose channels-first (or, for an output of
    rows, channels-last) view is contiguous, filters in the result's dtype, no bias and no
    activation. Returns None for pointers that are not a whole element's multiple (the full
    path copies those)."""

    __slots__ = ("cupy", "shape", "dtype", "calls")

    def __init__(self, cupy: Any, shape: Tuple[int, ...], dtype: np.dtype,
                 calls: Tuple[Tuple[cublas.GemmArgs, Tuple[bool, int], Tuple[bool, int], int],
                              ...]):
        self.cupy, self.shape, self.dtype, self.calls = cupy, shape, dtype, calls

    def __call__(self, x: Array, w: Array, b: Optional[Array]) -> Optional[Array]:
        size = self.dtype.itemsize
        if x.data.ptr % size or w.data.ptr % size:
            return None
        out = self.cupy.empty(self.shape, dtype=self.dtype)
        _poison(out)
        x_ptr, w_ptr, out_ptr = x.data.ptr, w.data.ptr, out.data.ptr
        for args, (a_is_x, a_offset), (b_is_x, b_offset), out_offset in self.calls:
            cublas.call(args, (x_ptr if a_is_x else w_ptr) + a_offset,
                        (x_ptr if b_is_x else w_ptr) + b_offset, out_ptr + out_offset,
                        self.dtype)
        return out


def _pointwise_replay(cupy: Any, x: Array, w: Array, bias: Optional[Array],
                      geom: ConvGeometry, dtype: np.dtype, activation: Optional[str]
                      ) -> Optional[PointwiseReplay]:
    """forward_replay for pointwise: the PointwiseReplay of a call whose full path was only
    _group_products or _rows_product on x and the output as they lie, or None."""
    out, out_cf = alloc_output(cupy, geom, dtype)
    x_cf = to_channels_first(cupy, x, geom)
    G, Cog, Cg = geom.groups, geom.C_out_per_group, geom.C_in_per_group
    N, P = geom.N, math.prod(geom.out_spatial)
    to_last = _axes_to_last(out_cf.ndim)[0]
    out_rows, x_rows = out_cf.transpose(to_last), x_cf.transpose(to_last)
    if (bias is not None or activation is not None or max(geom.stride) > 1
            or cublas.cuda_types(dtype) is None):
        return None
    w3 = w.reshape(G, Cog, Cg)
    calls = []
    if G == 1 and out_rows.flags.c_contiguous:  # the output's rows: _rows_product
        if not x_rows.flags.c_contiguous:
            return None
        xa, w2, rows = x_rows.reshape(N * P, Cg), w3[0], out_rows.reshape(N * P, Cog)
        args = cublas.gemm_args(xa[None], w2.T[None], rows[None])
        if args is None:
            return None
        calls.append((args, (True, xa.data.ptr - x.data.ptr), (False, 0),
                      rows.data.ptr - out.data.ptr))
    else:  # per group over the images: _group_products
        if not x_cf.flags.c_contiguous or not out_cf.flags.c_contiguous:
            return None
        xs, ys = x_cf.reshape(N, G, Cg, P), out_cf.reshape(N, G, Cog, P)
        for g in range(G):
            args = cublas.gemm_args(cupy.broadcast_to(w3[g], (N, Cog, Cg)), xs[:, g],
                                    ys[:, g])
            if args is None:
                return None
            calls.append((args, (False, w3[g].data.ptr - w.data.ptr),
                          (True, xs[:, g].data.ptr - x.data.ptr),
                          ys[:, g].data.ptr - out.data.ptr))
    return PointwiseReplay(cupy, tuple(out.shape), dtype, tuple(calls))


#: an Im2colReplay's chunk: the unroll (kernel, its size arguments), the product's cuBLAS
#: arguments, the store (kernel, its size arguments)
_Im2colStep = Tuple[_Kernel, Tuple[np.int64, ...], cublas.GemmArgs, _Kernel,
                    Tuple[np.int64, ...]]


class Im2colReplay:
    """An im2col call's chunks, made again for a call that repeats it (gpuconv.repeat): the
    output's, columns' and product's allocations, then per chunk the unroll, the product (the
    strided batched cuBLAS call the first call made, on the new buffers' pointers) and the
    store, with the kernels, grids and gc_conv record the first call worked out. Made only for
    calls whose filters the products read as they lie (no bias, no zero terms for 16-bit
    rows, products not widened) and x as it is (its dtype, not pre-padded). Returns None for
    pointers that are not a whole element's multiple (the full path copies those)."""

    __slots__ = ("cupy", "shape", "dtype", "record", "sizes", "steps")

    def __init__(self, cupy: Any, shape: Tuple[int, ...], dtype: np.dtype, record: np.ndarray,
                 sizes: Tuple[int, int], steps: Tuple[_Im2colStep, ...]):
        self.cupy, self.shape, self.dtype, self.record = cupy, shape, dtype, record
        self.sizes, self.steps = sizes, steps

    def __call__(self, x: Array, w: Array, b: Optional[Array]) -> Optional[Array]:
        size = self.dtype.itemsize
        if x.data.ptr % size or w.data.ptr % size:
            return None
        cupy, dtype, record = self.cupy, self.dtype, self.record
        out = cupy.empty(self.shape, dtype=dtype)
        _poison(out)
        cols, prod = (cupy.empty(n, dtype=dtype) for n in self.sizes)
        for (unroll, grid, block), sizes, args, (store, s_grid, s_block), s_sizes in self.steps:
            _poison(cols)
            _launch(unroll, grid, block, (x, cols) + sizes + (record,))
            _poison(prod)
            cublas.call(args, w.data.ptr, cols.data.ptr, prod.data.ptr, dtype)
            _launch(store, s_grid, s_block, (prod, out) + s_sizes + (record,))
        return out


def _im2col_replay(cupy: Any, x: Array, w: Array, bias: Optional[Array], geom: ConvGeometry,
                   dtype: np.dtype, plan: ForwardPlan, device_id: int
                   ) -> Optional[Im2colReplay]:
    """forward_replay for im2col (x in ``dtype``, not pre-padded; the filters contiguous in
    it): the Im2colReplay of a call whose products read the filters as they lie, or None."""
    G, Cog, terms = geom.groups, geom.C_out_per_group, geom.terms_per_output
    K = kernels.im2col_rows(geom, dtype, False)
    finish = plan.finish
    if bias is not None or plan.partial_dtype != dtype or K != terms or finish is None:
        return None
    out, out_cf = alloc_output(cupy, geom, dtype)
    x_cf = to_channels_first(cupy, x, geom)
    record = _launch_args((params.conv_params(geom, x_cf, out_cf, False),))[0]
    total, chunk = geom.positions, kernels.im2col_chunk(geom, K, dtype.itemsize)
    filters = w.reshape(G, Cog, K)
    cols, prod = cupy.empty(G * K * chunk, dtype=dtype), cupy.empty(G * Cog * chunk, dtype=dtype)
    unroll = kernels.get_function(plan.main.file, plan.main.name, dtype, device_id)
    store = kernels.get_function(finish.file, finish.name, dtype, device_id)
    steps = []
    for j0 in range(0, total, chunk):
        J = min(chunk, total - j0)
        args = cublas.gemm_args(filters, cols[:G * K * J].reshape(G, K, J),
                                prod[:G * Cog * J].reshape(G, Cog, J))
        R, R_out = (kernels.im2col_rows_a_thread(rows, J) for rows in (geom.C_in, geom.C_out))
        u_shape = _launch_shape(-(-geom.C_in // R) * J, device_id)
        s_shape = _launch_shape(-(-geom.C_out // R_out) * J, device_id)
        if args is None or cublas.cuda_types(dtype) is None or u_shape is None or \
                s_shape is None:
            return None
        steps.append(((unroll,) + u_shape, (_int64(j0), _int64(J), _int64(K), _int64(R)),
                      args, (store,) + s_shape, (_int64(j0), _int64(J), _int64(R_out))))
    if not steps:
        return None
    return Im2colReplay(cupy, tuple(out.shape), dtype, record, (cols.size, prod.size),
                        tuple(steps))


def _copy_channels_last(cupy: Any, copy: _Copy, a: Array, dtype: np.dtype) -> Array:
    """``a`` (the caller's x or filters, read through the strides in the copy's size
    arguments) copied channels-last by to_channels_last, as _channels_last copies it."""
    (function, grid, block), sizes, shape = copy
    out = cupy.empty(shape, dtype=dtype)
    _poison(out)
    _launch(function, grid, block, (a, out) + sizes)
    return out


def forward_replay(x: Array, w: Array, bias: Optional[Array], geom: ConvGeometry,
                   dtype: DTypeLike, activation: Optional[str], algorithm: str
                   ) -> Optional[Union[Replay, PointwiseReplay, Im2colReplay]]:
    """The Replay of a forward call that has just run on the current GPU with these CuPy
    arrays (as the caller gave them: x in its layout, the filters unflipped) and no
    autotuning, or None where _forward does what a Replay does not: an algorithm of
    _NOT_REPLAYED (but pointwise calls that are cuBLAS's products alone, and im2col calls whose
    products read the filters as they lie: _pointwise_replay, _im2col_replay),
    arrays converted first (x of another dtype or pre-padded, filters or bias not contiguous
    in the result's dtype, as flip's reversed view is not), or a channels-last copy made by
    the array library (views whose spatial axes do not merge)."""
    cupy = cupy_module()
    device_id = cupy.cuda.runtime.getDevice()
    dtype = np.dtype(dtype)
    plan = forward_plan(geom, dtype, activation, algorithm, _sm_count(device_id))
    if plan.algorithm == "pointwise" and x.dtype == dtype and _is_contiguous(w, dtype):
        return _pointwise_replay(cupy, x, w, bias, geom, dtype, activation)
    if (plan.algorithm == "im2col" and x.dtype == dtype and not _pads_first(geom)
            and _is_contiguous(w, dtype)):
        return _im2col_replay(cupy, x, w, bias, geom, dtype, plan, device_id)
    if (plan.algorithm in _NOT_REPLAYED or x.dtype != dtype or _pads_first(geom)
            or not _is_contiguous(w, dtype)
            or (bias is not None and not _is_contiguous(bias, dtype))):
        return None
    out, out_cf = alloc_output(cupy, geom, dtype)
    x_cf = to_channels_first(cupy, x, geom)
    copies: Tuple[Optional[_Copy], Optional[_Copy]] = (None, None)
    align = (dtype.itemsize, dtype.itemsize)
    if plan.algorithm in _CHANNELS_LAST:
        operands = []
        for a in (x_cf, w):
            copy = _channels_last_replay(cupy, a, device_id)
            if copy is False:
                return None
            operands.append(copy)
        copies = (operands[0], operands[1])
        align = (dtype.itemsize if copies[0] else 16, dtype.itemsize if copies[1] else 16)
        if copies[0] is not None:  # the record describes the copy the kernel reads
            x_cf = cupy.empty(copies[0][2], dtype=dtype).transpose(_axes_to_last(x_cf.ndim)[1])
    record = _launch_args((params.conv_params(geom, x_cf, out_cf, bias is not None),))[0]
    functions = []
    for launch, _ in _kernel_args(plan, x_cf, w, w, out_cf, out_cf, record):
        shape = _launch_shape(launch.work, device_id)
        if shape is None:  # nothing to launch (an empty output): nothing to gain either
            return None
        functions.append((kernels.get_function(launch.file, launch.name, dtype, device_id),)
                         + shape)
    return Replay(cupy, tuple(out.shape), dtype, geom, plan, record, tuple(functions), copies,
                  align)


def _channels_last_replay(cupy: Any, a_cf: Array, device_id: int) -> Any:
    """How a Replay gets ``a_cf`` (N, C, *spatial) channels-last, as _channels_last does: None
    to read it in place (its channels-last transpose is C-contiguous; the Replay checks the
    16-byte start per call), a _Copy by to_channels_last, or False where the full path's
    copy is the array library's."""
    to_last, _ = _axes_to_last(a_cf.ndim)
    cl = a_cf.transpose(to_last)
    if cl.flags.c_contiguous:
        return None
    copy = _channels_last_copy(a_cf.shape, a_cf.strides, a_cf.itemsize)
    if copy is None:
        return False
    grid, sizes = copy
    shape = _launch_shape(grid, device_id)
    assert shape is not None  # _channels_last_copy has no grid without elements
    function = kernels.get_function("layout.cu", kernels.to_channels_last_name(a_cf.dtype),
                                    a_cf.dtype, device_id)
    return (function,) + shape, sizes, tuple(cl.shape)


def _gemm_batched(xp: Any, a: Array, b: Array, c: Array) -> None:
    """``c[i] = a[i] @ b[i]`` for 3-D views (any batch strides) by one cuBLAS call
    (_library_gemm) on the views as they lie, but for contiguous copies of the operands that
    cuBLAS cannot read so (a strided layer's positions, a transposed x's channels) and a
    temporary for an output it cannot write so, copied into ``c``. CuPy's matmul is never used
    (CUPY_TF32 would make its float32 products TF32; its 16-bit batches are widened or
    refused, cupy/cupy#10317)."""
    a, b = (v if cublas.readable(v) else xp.ascontiguousarray(v) for v in (a, b))
    target = c if cublas.writable(c) else xp.empty(c.shape, dtype=c.dtype)
    _library_gemm(xp, a, b, target)
    if target is not c:
        c[...] = target


def _library_gemm(xp: Any, a: Array, b: Array, c: Array) -> None:
    """One cuBLAS call (gpuconv.cublas.gemm) on views it takes as they lie. Host arrays (the
    emulation's, the stand-in CuPy's of the tests) are multiplied by NumPy as cuBLAS
    multiplies: float16 and bfloat16 summed in float32 and each result rounded once. A seam:
    tests count the calls."""
    if isinstance(c, np.ndarray):
        if c.dtype.itemsize == 2:
            c[...] = np.matmul(np.asarray(a, np.float32), np.asarray(b, np.float32))
        else:
            np.matmul(a, b, out=c)
    elif not cublas.gemm(a, b, c):
        raise RuntimeError(f"cuBLAS takes no {a.shape} @ {b.shape} product of {c.dtype}")


def _group_products(xp: Any, w: Array, xs: Array, ys: Array) -> None:
    """``ys[n, g] = w[g] @ xs[n, g]`` for the images n and groups g of ``xs`` (N, G, K, P) and
    ``ys`` (N, G, Cog, P), ``w`` (G, Cog, K): a group's products in one cuBLAS call over the
    images, its filters repeated (batch stride 0) and x and the output read and written as
    they lie."""
    N = xs.shape[0]
    for g in range(w.shape[0]):
        _gemm_batched(xp, xp.broadcast_to(w[g], (N,) + w.shape[1:]), xs[:, g], ys[:, g])


def _rows_product(xp: Any, x_rows: Array, w: Array, rows: Array) -> None:
    """``rows = x_rows @ w.T``: positions' terms (positions, K) by the filters (Cog, K), read
    transposed, into the output's rows (positions, Cog), by one cuBLAS call."""
    _gemm_batched(xp, x_rows[None], w.T[None], rows[None])


def _pointwise(xp: Any, x_cf: Array, w: Array, bias: Array, geom: ConvGeometry,
               activation: Optional[str], out_cf: Array) -> None:
    """algorithm="pointwise": 1x1 kernels without padding, so each output position is a
    (filters x kernels) matrix times the input's channel vector there: ``(G, Cog, Cg) @ (N, G,
    Cg, positions)`` by one strided batched cuBLAS call a group over the images
    (_group_products), straight into a contiguous channels-first output (else into a
    temporary, copied), or ``(N * positions, C_in) @ (C_in, C_out)`` by one cuBLAS call into
    an output of rows (one group: channels-last; _rows_product); the stride is a view of x
    (copied where its positions do not step by one element), then the bias and the
    activation as array passes.
    float16 and bfloat16 with no activation or relu (which commutes with rounding): as they
    are, on tensor cores (_pointwise_16bit); with sigmoid or tanh, x and the filters widened
    to float32 (exactly), the product, bias and activation in float32, one rounding at the
    end."""
    dtype = out_cf.dtype
    if accumulator_dtype(dtype) != dtype and commutes_with_rounding(activation):
        _pointwise_16bit(xp, x_cf, w, bias, geom, out_cf)
        activate(xp, out_cf, activation)
        return
    ct = accumulator_dtype(dtype)
    G, Cog, Cg = geom.groups, geom.C_out_per_group, geom.C_in_per_group
    N, P = geom.N, math.prod(geom.out_spatial)
    x_cf = pointwise_view(x_cf, geom)
    if x_cf.dtype != ct:  # after the stride's view: only the elements read are cast
        x_cf = x_cf.astype(ct)
    w = _contiguous(xp, w, ct).reshape(G, Cog, Cg)
    _poison(out_cf)
    to_last, to_first = _axes_to_last(x_cf.ndim)
    out_rows = out_cf.transpose(to_last)
    direct = ct == dtype  # the product lands in out_cf itself
    if G == 1 and out_rows.flags.c_contiguous:  # a channels-last output: rows of C_out
        rows = out_rows if direct else xp.empty(out_rows.shape, dtype=ct)
        _rows_product(xp, x_cf.transpose(to_last).reshape(N * P, Cg),
                      w.reshape(Cog, Cg), rows.reshape(N * P, Cog))
        res = rows.transpose(to_first)
    elif out_cf.flags.c_contiguous and direct:
        _group_products(xp, w, x_cf.reshape(N, G, Cg, P),
                        out_cf.reshape(N, G, Cog, P))
        res = out_cf
    else:  # into a temporary in ct (widened, or an output of other strides), copied below
        direct = False
        ys = xp.empty((N, G, Cog, P), dtype=ct)
        _group_products(xp, w, x_cf.reshape(N, G, Cg, P), ys)
        res = ys.reshape(out_cf.shape)
    if bias is not None:
        res += _contiguous(xp, bias, ct).reshape((1, geom.C_out) + (1,) * geom.rank)
    activate(xp, res, activation)
    if not direct:
        out_cf[...] = res  # rounded to nearest even, once


def _filter_matrix(xp: Any, w: Array, b: Optional[Array], K: int, ct: np.dtype) -> Array:
    """The filters ``w`` (G, Cog, terms) as the (G, Cog, K) matrix the cuBLAS paths multiply,
    in ``ct``: a bias ``b`` (C_out) as the column after the terms (the other operand's row
    of ones: the bias is one more term of every sum), zero columns up to K. ``w`` itself when
    it already is that matrix."""
    G, Cog, terms = w.shape
    if K == terms and b is None and w.dtype == ct:
        return w
    m = xp.zeros((G, Cog, K), dtype=ct)
    m[..., :terms] = w
    if b is not None:
        m[..., terms] = b.reshape(G, Cog)
    return m


def _pointwise_16bit(xp: Any, x_cf: Array, w: Array, bias: Array, geom: ConvGeometry,
                     out_cf: Array) -> None:
    """_pointwise for float16 and bfloat16 as they are: cuBLAS sums their products in FP32 on
    tensor cores and rounds once (called directly, gpuconv.cublas: CuPy 14.2's batched matmul
    computes float16 on FP32 cores and fails on bfloat16, cupy/cupy#10317). A bias is one
    more term of every sum, so that it is added before the rounding (as the kernels add it):
    a channel of ones in x and the bias as its weight, both zero-padded to a multiple of 8
    terms (16-byte rows for the tensor cores). An output of rows, one group: ``(N *
    positions, K) @ (K, Cog)`` into it as it lies (_rows_product). Else per group one cuBLAS
    strided batched call over the images (_group_products), x as it lies (with a bias, its
    terms and the ones copied into ``(N, G, K, positions)``), into a contiguous
    channels-first output as it lies (else into a temporary, copied)."""
    dtype = out_cf.dtype
    G, Cog, Cg = geom.groups, geom.C_out_per_group, geom.C_in_per_group
    N, P, out = geom.N, math.prod(geom.out_spatial), geom.out_spatial
    K = Cg if bias is None else -(-(Cg + 1) // 8) * 8
    x_cf = pointwise_view(x_cf, geom)
    if x_cf.dtype != dtype:
        x_cf = x_cf.astype(dtype)
    b = None if bias is None else _contiguous(xp, bias, dtype)
    w = _filter_matrix(xp, _contiguous(xp, w, dtype).reshape(G, Cog, Cg), b, K, dtype)
    _poison(out_cf)
    to_last, _ = _axes_to_last(x_cf.ndim)
    out_rows = out_cf.transpose(to_last)
    if G == 1 and out_rows.flags.c_contiguous:  # rows of C_out
        xr = x_cf.transpose(to_last)  # (N, *out, Cg)
        if bias is None:
            xa = xr.reshape(N * P, Cg)
        else:
            xa = xp.empty((N * P, K), dtype=dtype)
            terms = xa.reshape(xr.shape[:-1] + (K,))
            terms[..., :Cg] = xr
            terms[..., Cg] = 1
            terms[..., Cg + 1:] = 0
        _rows_product(xp, xa, w.reshape(Cog, K), out_rows.reshape(N * P, Cog))
        return
    # per group one cuBLAS call over the images, into the output as it lies where it is
    # contiguous (else into a temporary, copied)
    if bias is None:
        xs = x_cf.reshape(N, G, Cg, P)
    else:
        xs = xp.empty((N, G, K, P), dtype=dtype)
        xs.reshape((N, G, K) + out)[:, :, :Cg] = x_cf.reshape((N, G, Cg) + out)
        xs[:, :, Cg] = 1
        xs[:, :, Cg + 1:] = 0
    contiguous = out_cf.flags.c_contiguous
    ys = out_cf.reshape(N, G, Cog, P) if contiguous else xp.empty((N, G, Cog, P), dtype=dtype)
    _group_products(xp, w, xs, ys)
    if not contiguous:
        out_cf[...] = ys.reshape(out_cf.shape)


#: Winograd's transformed inputs and products (V and M, accumulator type) of one chunk of tiles
#: stay under this many bytes.
WINOGRAD_WORKSPACE_BYTES = 256 * 2**20

#: F(2x2, 3x3)'s filter transform G (conv_winograd.cu has B^T and A^T in its arithmetic).
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_tiles(geom: ConvGeometry) -> int:
    """The 2x2 output tiles of a Winograd F(2x2, 3x3) call (odd sizes: a partial last tile)."""
    return geom.N * -(-geom.out_spatial[0] // 2) * -(-geom.out_spatial[1] // 2)


def winograd_chunk(geom: ConvGeometry, itemsize: int) -> int:
    """Tiles a chunk: as many as keep its V (16 x C_in x tiles) and M (16 x C_out x tiles)
    within WINOGRAD_WORKSPACE_BYTES, all of them when they fit."""
    per_tile = 16 * (geom.C_in + geom.C_out) * itemsize
    return max(1, min(winograd_tiles(geom), WINOGRAD_WORKSPACE_BYTES // per_tile))


def _winograd(xp: Any, run: Callable[..., None], plan: ForwardPlan, x_cf: Array, w: Array,
              bias_arg: Array, out_cf: Array, record: np.ndarray, geom: ConvGeometry) -> None:
    """algorithm="winograd": conv_winograd.cu's input transform, the 16 products
    M[k] = U[k] @ V[k] by xp.matmul (CuPy: cuBLAS, batched), its output transform; chunk by
    chunk of tiles. U = G g G^T for every filter and channel, in the accumulator type."""
    acc, finish = plan.partial_dtype, plan.finish
    if acc is None or finish is None:
        raise AssertionError("a Winograd plan names its accumulator and output transform")
    K, C = geom.C_out, geom.C_in
    G = xp.asarray(np.array(_WINOGRAD_G, dtype=acc))
    U = xp.matmul(xp.matmul(G, w.astype(acc, copy=False)), G.T)  # (K, C, 4, 4)
    U = xp.ascontiguousarray(U.reshape(K, C, 16).transpose(2, 0, 1))  # (16, K, C)
    tiles, chunk = winograd_tiles(geom), winograd_chunk(geom, acc.itemsize)
    V_all = xp.empty(16 * C * chunk, dtype=acc)
    M_all = xp.empty(16 * K * chunk, dtype=acc)
    for p0 in range(0, tiles, chunk):
        P = min(chunk, tiles - p0)
        V = V_all[:16 * C * P].reshape(16, C, P)
        M = M_all[:16 * K * P].reshape(16, K, P)
        _poison(V)
        run(plan.main.file, plan.main.name, out_cf.dtype, C * P,
            (x_cf, V, _int64(p0), _int64(P), record))
        _poison(M)
        xp.matmul(U, V, out=M)
        run(finish.file, finish.name, out_cf.dtype, K * P,
            (M, bias_arg, out_cf, _int64(p0), _int64(P), record))


def _im2col(xp: Any, run: Callable[..., None], plan: ForwardPlan, x_cf: Array, w: Array,
            b: Optional[Array], out_cf: Array, record: np.ndarray, geom: ConvGeometry) -> None:
    """algorithm="im2col" (explicit GEMM), chunk by chunk of output positions: im2col.cu's
    unroll writes each group's (K, chunk) matrix of windows, ``(Cog, K) @ (K, chunk)`` by one
    strided batched cuBLAS call over the groups (_gemm_batched) into the product, and
    im2col_store copies that into y through the activation. The filters are each group's
    (Cog, terms) matrix as they lie (_filter_matrix: with the bias as one more column, the
    columns' row of ones, and zero columns up to K)."""
    ct, finish = plan.partial_dtype, plan.finish
    if ct is None or finish is None:
        raise AssertionError("an im2col plan names its columns' type and its store kernel")
    dtype = out_cf.dtype
    G, Cog, terms = geom.groups, geom.C_out_per_group, geom.terms_per_output
    K = kernels.im2col_rows(geom, dtype, b is not None)
    filters = _filter_matrix(xp, w.reshape(G, Cog, terms), b, K, ct)
    total, chunk = geom.positions, kernels.im2col_chunk(geom, K, ct.itemsize)
    cols_all = xp.empty(G * K * chunk, dtype=ct)
    prod_all = xp.empty(G * Cog * chunk, dtype=ct)
    for j0 in range(0, total, chunk):
        J = min(chunk, total - j0)
        cols = cols_all[:G * K * J].reshape(G, K, J)
        prod = prod_all[:G * Cog * J].reshape(G, Cog, J)
        _poison(cols)
        R = kernels.im2col_rows_a_thread(geom.C_in, J)
        run(plan.main.file, plan.main.name, dtype, -(-geom.C_in // R) * J,
            (x_cf, cols, _int64(j0), _int64(J), _int64(K), _int64(R), record))
        _poison(prod)
        _gemm_batched(xp, filters, cols, prod)  # one cuBLAS call, every group
        R = kernels.im2col_rows_a_thread(geom.C_out, J)
        run(finish.file, finish.name, dtype, -(-geom.C_out // R) * J,
            (prod, out_cf, _int64(j0), _int64(J), _int64(R), record))


@functools.lru_cache(maxsize=256)
def _int64(value: int) -> np.int64:
    """``value`` as the kernels' ``long long`` (CuPy passes a NumPy scalar by its type)."""
    return np.int64(value)


def _data_adjoint(xp: Any, run: Callable[..., None], g_cf: Array, w: Array, bias: Array,
                  geom: ConvGeometry, conjugate: bool, out_cf: Array) -> None:
    fold = geom.padding_mode != "zeros" and max(geom.pad_before + geom.pad_after) > 0
    # With a fold the kernel fills the gradient of the padded input and the padding is folded
    # back after it: both in the accumulator dtype, so float16 is rounded once, at the end.
    dtype = accumulator_dtype(out_cf.dtype) if fold else np.dtype(out_cf.dtype)
    g_cf = _aligned(xp, g_cf.astype(dtype, copy=False))
    w, b = _contiguous(xp, w, dtype), None if bias is None else _contiguous(xp, bias, dtype)
    if fold:
        if b is not None:
            raise AssertionError("a bias with a padding mode: no public function asks for it")
        target = xp.empty((geom.N, geom.C_in) + geom.padded_spatial, dtype=dtype)
        kgeom = geom.with_zero_padding()
    else:
        target, kgeom = out_cf, geom
    _poison(target)
    # the record describes the forward conv: its x is the gradient written, its y the one read
    args = (g_cf, w, w if b is None else b, target,
            params.conv_params(kgeom, target, g_cf, b is not None))
    run("conv_adjoint.cu", kernels.data_adjoint_name(dtype, conjugate), dtype,
        kgeom.N * kgeom.C_in * math.prod(kgeom.in_spatial), args)
    if fold:
        _poison(out_cf)
        unpad_adjoint(xp, target, geom, out_cf)


def filter_grad_chunks(geom: ConvGeometry, threads: int) -> Tuple[int, int]:
    """(R, chunk): the M = N * prod(out_spatial) terms of each filter element in R chunks of
    ``chunk``, so that about ``threads`` threads have work. Fixed for a given shape and device,
    which keeps the result bit-identical run after run."""
    E = geom.C_out * geom.terms_per_output
    M = geom.positions
    if M == 0:
        return 1, 0
    R = max(1, min(M, threads // E))
    chunk = -(-M // R)
    return -(-M // chunk), chunk


#: Partial sums of the filter-gradient GEMM's splits stay under this many bytes.
FILTER_GRAD_PARTIAL_BYTES = 64 * 2**20


def filter_grad_by_gemm(geom: ConvGeometry) -> bool:
    """Whether the filter gradient runs as the tiled GEMM (conv_filter_grad_gemm), whose
    tiles (64 or 128 terms x 64 or 128 filters) want filters of >= 32 terms (C_in/groups x
    taps) and >= 16 filters a group; others (depthwise: 9 terms, 1 filter) take the depthwise
    or the partial-sum kernel (filter_grad_kernel); so do layers too large for the GEMM's
    32-bit term and coordinate counts (algorithms.gemm_index_problem)."""
    return (geom.terms_per_output >= 32 and geom.C_out_per_group >= 16
            and not algorithms.gemm_index_problem(geom))


def depthwise_filter_grad_size(geom: ConvGeometry, dtype: DTypeLike) -> Optional[Tuple[int, int]]:
    """The kernel size conv_depthwise_filter_grad is built for that takes this layer's filter
    gradient, or None: one kernel a filter (C_in/groups == 1) of a size in
    kernels.DEPTHWISE_SIZES, x and g within the 32-bit indexing of the depthwise kernels."""
    if geom.C_in_per_group != 1 or algorithms.why_not("cuda", "depthwise", geom, dtype):
        return None
    size = kernels.depthwise_size(geom.kernel)
    return None if size == (0, 0) else size


def filter_grad_kernel(geom: ConvGeometry, dtype: DTypeLike) -> str:
    """Which kernel takes a layer's filter gradient: "pointwise" (1x1 kernels without padding
    where the forward pointwise applies: a batched product by xp.matmul, _pointwise_filter_grad;
    not where CUPY_TF32 would make that matmul TF32),
    "gemm" (conv_filter_grad_gemm, where filter_grad_by_gemm says), "depthwise"
    (conv_depthwise_filter_grad, where depthwise_filter_grad_size names a size), else "chunks"
    (conv_filter_grad_partial, one thread per filter element and chunk of positions, any
    layer)."""
    if (geom.C_in_per_group > 1 and not algorithms.why_not("cuda", "pointwise", geom, dtype)
            and not algorithms.cupy_tf32_problem("the pointwise filter gradient", dtype)):
        return "pointwise"
    if filter_grad_by_gemm(geom):
        return "gemm"
    return "depthwise" if depthwise_filter_grad_size(geom, dtype) else "chunks"


def depthwise_filter_grad_offsets_fit(x_cf: Array, g_cf: Array, geom: ConvGeometry) -> bool:
    """Whether conv_depthwise_filter_grad's 32-bit element offsets hold for these arrays:
    within a channel of x, every window corner and tap its positions reach (padding
    included), and within a filter of g every position, lie within 2^31 elements of the
    channel's start (the channel and filter offsets themselves are 64-bit). Any array of
    fewer than 2^30 elements passes unless it is a view with very large strides."""
    xs = [st // x_cf.itemsize for st in x_cf.strides]
    gs = [st // g_cf.itemsize for st in g_cf.strides]
    x_reach = (geom.N - 1) * abs(xs[0]) + sum(
        max(p, abs((o - 1) * s - p + (k - 1) * d)) * abs(st) for o, s, p, k, d, st in
        zip(geom.out_spatial, geom.stride, geom.pad_before, geom.kernel, geom.dilation, xs[2:]))
    g_reach = sum((n - 1) * abs(st) for i, (n, st) in enumerate(zip(g_cf.shape, gs)) if i != 1)
    return max(x_reach, g_reach) < 2**31


#: Positions each thread of conv_depthwise_filter_grad sums at least: its block's chunk of a
#: filter's positions is never cut finer, so the tree sum at a block's end stays a small part.
DEPTHWISE_FILTER_GRAD_MIN_PER_THREAD = 16


def depthwise_filter_grad_chunks(geom: ConvGeometry, threads: int) -> Tuple[int, int]:
    """(R, chunk) for conv_depthwise_filter_grad: each filter's M positions in R chunks of
    ``chunk``, one block of kernels.DEPTHWISE_FILTER_GRAD_THREADS each, so that the C_out x R
    blocks hold about ``threads`` threads, no chunk under DEPTHWISE_FILTER_GRAD_MIN_PER_THREAD
    positions a thread and R within CUDA's 65535 blocks a grid axis. Fixed for a shape and
    device, which keeps the result bit-identical run after run."""
    M, T = geom.positions, kernels.DEPTHWISE_FILTER_GRAD_THREADS
    if M == 0:
        return 1, 0
    R = max(1, min(-(-(threads // T) // geom.C_out),
                   M // (T * DEPTHWISE_FILTER_GRAD_MIN_PER_THREAD), 65535))
    chunk = -(-M // R)
    return -(-M // chunk), chunk


def filter_grad_tile(geom: ConvGeometry, dtype: DTypeLike) -> str:
    """The filter-gradient GEMM's tile (kernels.FILTER_GRAD_TILES) for a layer: the largest
    compiled for ``dtype`` that the filters fill, 128 terms where they have >= 128 and 128
    filters where a group has >= 128 (a half-empty tile wastes the sums a larger one saves)."""
    tiles = kernels.filter_grad_tiles(dtype)
    many_terms, many_filters = geom.terms_per_output >= 128, geom.C_out_per_group >= 128
    for tile, fits in (("128x128", many_terms and many_filters), ("128x64", many_terms)):
        if fits and tile in tiles:
            return tile
    return "64x64"


def filter_grad_splits(geom: ConvGeometry, threads: int, itemsize: int,
                       tile: str) -> Tuple[int, int]:
    """(splits, steps a split) of the filter-gradient GEMM: its tiles of (terms, filters) per
    group, times enough splits of the M positions (BK a step) that about threads / 2048 blocks
    have work, within FILTER_GRAD_PARTIAL_BYTES of partial sums and CUDA's grid limit. Fixed
    for a shape and device, which keeps the result bit-identical run after run."""
    BM, BN, BK = kernels.FILTER_GRAD_TILES[tile][:3]
    tiles = -(-geom.terms_per_output // BM) * -(-geom.C_out_per_group // BN) * geom.groups
    steps = max(1, -(-geom.positions // BK))
    E = geom.C_out * geom.terms_per_output
    splits = max(1, min(steps, threads // 2048 // tiles, 65535 // geom.groups,
                        FILTER_GRAD_PARTIAL_BYTES // (E * itemsize)))
    per_split = -(-steps // splits)
    return -(-steps // per_split), per_split


class FilterGradPlan(NamedTuple):
    """What a filter-gradient call launches, decided once per (geometry, dtype, threads) and
    cached (_filter_grad_plan): ``kernel`` ("gemm", "depthwise" or "chunks", as
    filter_grad_kernel), its launch, and the rows ``R`` of partial sums that sum_partials adds
    in order (``finish``), each over ``chunk`` positions (for the GEMM: steps of positions)."""
    kernel: str
    main: _Launch
    R: int
    chunk: int
    finish: _Launch


@functools.lru_cache(maxsize=1024)
def _filter_grad_plan(geom: ConvGeometry, dtype: np.dtype, threads: int,
                      kernel: str) -> FilterGradPlan:
    finish = _Launch("conv_adjoint.cu", kernels.filter_grad_names(dtype)[1],
                     geom.C_out * geom.terms_per_output)
    if kernel == "gemm":
        tile = filter_grad_tile(geom, dtype)
        acc = accumulator_dtype(dtype)
        splits, per_split = filter_grad_splits(geom, threads, acc.itemsize, tile)
        BM, BN = kernels.FILTER_GRAD_TILES[tile][:2]
        blocks = (-(-geom.terms_per_output // BM), -(-geom.C_out_per_group // BN),
                  geom.groups * splits)
        return FilterGradPlan(kernel, _Launch(
            "conv_gemm.cu", kernels.conv_filter_grad_gemm_name(dtype, tile),
            Grid(blocks, kernels.tile_threads(kernels.FILTER_GRAD_TILES[tile]))),
            splits, per_split, finish)
    if kernel == "depthwise":
        size = depthwise_filter_grad_size(geom, dtype)
        if size is None:
            raise AssertionError("conv_depthwise_filter_grad does not take this layer")
        R, chunk = depthwise_filter_grad_chunks(geom, threads)
        return FilterGradPlan(kernel, _Launch(
            "conv_depthwise.cu", kernels.conv_depthwise_filter_grad_name(dtype, size),
            Grid((geom.C_out, R, 1), kernels.DEPTHWISE_FILTER_GRAD_THREADS)), R, chunk, finish)
    R, chunk = filter_grad_chunks(geom, threads)
    return FilterGradPlan(kernel, _Launch("conv_adjoint.cu", kernels.filter_grad_names(dtype)[0],
                                          R * geom.C_out * geom.terms_per_output), R, chunk,
                          finish)


def _filter_grad(xp: Any, run: Callable[..., None], threads: int, x_cf: Array, g_cf: Array,
                 geom: ConvGeometry, out: Array) -> None:
    dtype = out.dtype
    x_cf, geom = _prepare_x(xp, x_cf, geom, dtype)
    if g_cf.dtype != dtype:
        g_cf = g_cf.astype(dtype)
    g_cf = _aligned(xp, g_cf)
    kernel = filter_grad_kernel(geom, dtype)
    if kernel == "pointwise":
        _pointwise_filter_grad(xp, x_cf, g_cf, geom, out)
        return
    if kernel == "depthwise" and not depthwise_filter_grad_offsets_fit(x_cf, g_cf, geom):
        kernel = "chunks"
    plan = _filter_grad_plan(geom, dtype, threads, kernel)
    E = geom.C_out * geom.terms_per_output
    partial = xp.empty((plan.R, E), dtype=accumulator_dtype(dtype))
    _poison(partial)
    R = _int64(plan.R)
    run(plan.main.file, plan.main.name, dtype, plan.main.work,
        (x_cf, g_cf, partial, R, _int64(plan.chunk), params.conv_params(geom, x_cf, g_cf, False)))
    _poison(out)
    run(plan.finish.file, plan.finish.name, dtype, plan.finish.work, (partial, out, R, _int64(E)))


#: _pointwise_filter_grad's per-image products stay under this many bytes a batch of images.
POINTWISE_FILTER_GRAD_BYTES = 64 * 2**20


def _pointwise_filter_grad(xp: Any, x_cf: Array, g_cf: Array, geom: ConvGeometry,
                           out: Array) -> None:
    """The filter gradient of a 1x1 layer without padding: per image n and group,
    ``g[n] (Cog x P) @ conj(x[n])^T (P x Cg)`` by one batched xp.matmul (CuPy: cuBLAS) over
    the images of a batch, then their sum over the images, batch after batch in order (the
    same result run after run); in the accumulator dtype (16-bit x and g widened to float32,
    the sum rounded once into ``out``). x's stride is a view, copied by the reshape."""
    dtype, ct = out.dtype, accumulator_dtype(out.dtype)
    G, Cog, Cg = geom.groups, geom.C_out_per_group, geom.C_in_per_group
    N, P = geom.N, math.prod(geom.out_spatial)
    x_cf = pointwise_view(x_cf, geom)
    per_image = geom.C_out * Cg * ct.itemsize
    if ct != dtype:  # and the widened copies of the batch's x and g
        per_image += (geom.C_in + geom.C_out) * P * ct.itemsize
    nb = max(1, min(N, POINTWISE_FILTER_GRAD_BYTES // max(1, per_image)))
    dw = xp.zeros((G, Cog, Cg), dtype=ct)
    for n0 in range(0, N, nb):
        x = x_cf[n0:n0 + nb].astype(ct, copy=False).reshape(-1, G, Cg, P)
        if dtype.kind == "c":
            x = xp.conj(x)
        g = g_cf[n0:n0 + nb].astype(ct, copy=False).reshape(-1, G, Cog, P)
        dw += xp.matmul(g, x.swapaxes(-1, -2)).sum(axis=0)
    out[...] = dw.reshape(out.shape)


def conv_forward(x_cf: Array, w: Array, bias: Array, geom: ConvGeometry, activation: Optional[str],
                 out_cf: Array, algorithm: str = "auto") -> None:
    """Fill the CuPy view ``out_cf`` ``(N, C_out, *out_spatial)``; see cpu.conv_forward."""
    cupy = cupy_module()
    if algorithm == "auto" and get_autotune():
        def forward(xs: Array, ws: Array, bs: Array, act: Optional[str], out: Array,
                    name: str) -> None:
            _forward(cupy, _gpu_run, _gpu_sms(), xs, ws, bs, geom, act, out, name)
        algorithm = tuning.pick(
            "cuda", cuda_device_name(cupy.cuda.runtime.getDevice()), geom, out_cf.dtype,
            lambda name: forward(x_cf, w, bias, activation, out_cf, name),
            sync=cupy.cuda.get_current_stream().synchronize,
            agreement=lambda: tuning.Agreement(cupy, forward, "cuda", geom, x_cf, w, bias,
                                               activation, out_cf))
    _forward(cupy, _gpu_run, _gpu_sms(), x_cf, w, bias, geom, activation, out_cf, algorithm)


def data_adjoint(g_cf: Array, w: Array, bias: Array, geom: ConvGeometry, conjugate: bool,
                 out_cf: Array) -> None:
    """Fill the CuPy view ``out_cf`` ``(N, C_in, *in_spatial)``; see cpu.data_adjoint."""
    import cupy
    _data_adjoint(cupy, _gpu_run, g_cf, w, bias, geom, conjugate, out_cf)


def filter_grad(x_cf: Array, g_cf: Array, geom: ConvGeometry, out: Array) -> None:
    """Fill the contiguous CuPy array ``out`` ``(C_out, C_in/groups, *k)``; see cpu.filter_grad.
    Deterministic: two kernels, partial sums over fixed splits of the positions (a tiled GEMM,
    or one thread per filter element and chunk) and then their ordered sum."""
    import cupy
    _filter_grad(cupy, _gpu_run, _gpu_threads(), x_cf, g_cf, geom, out)
