"""The ways each device can compute a forward convolution, and which one a call uses.

Every algorithm computes the same convolution; they differ in speed only, and the test suite
forces each one over the shape grid and checks it against the reference. ``algorithm="auto"``
(the default) picks by a rule on the layer's shape; a name forces that algorithm, or raises a
ValueError when the device does not have it or it does not apply to the layer.

On the CPU:
  ``gemm``       windows unrolled into matrix columns (im2col) from a channels-first padded
                 chunk (strided layers: split into stride phases first), one BLAS matmul
                 ``filters @ cols`` per chunk, landing in channels-first order;
  ``gemm_shifted`` stride 1 and a kernel wider than 1 along the last axis: windows unrolled
                 along every axis but the last, whose taps are rows of the filter matrix
                 instead (K[-1] x the filters); each tap's products are summed shifted by its
                 offset (a K[-1]-th of the copy and a taller matrix product; ``auto`` for few
                 filters a group);
  ``pointwise``  1x1 kernels without padding: one matmul over the input as it lies, no unrolling;
  ``depthwise``  one kernel per filter (C_in/groups == 1): a multiply-add per tap over views.
On CUDA:
  ``direct``     one thread per output element, a loop over the filter's terms;
  ``few_filters`` for groups of <= 8 filters: a thread computes 4 outputs of a row for every
                 filter of its group (each input element loaded once for all of them);
  ``gemm``       implicit GEMM: output positions x filters in shared-memory tiles, the windows
                 gathered on the fly (kernels_cuda/conv_gemm.cu), with a tile chosen by shape;
  ``gemm_64x64``, ``gemm_128x128``, ``gemm_128x64``, ``gemm_128x32``, ``gemm_128x8``: the
                 same with that tile (positions x filters per block);
  ``gemm_tc``    the implicit GEMM on tensor cores (mma.sync; float16 or bfloat16 in, float32
                 sums; compute capability 8.0+), 128 x 64 tiles (kernels_cuda/conv_gemm_tc.cu);
  ``gemm_tc_cl`` the same on channels-last data with C_in/groups a multiple of 8 (16-bit dtypes):
                 terms tap-major, 16-byte copies straight into a 3-stage shared-memory ring
                 (cp.async), fragments by ldmatrix, blocks of 128 positions x 64 or 128 filters
                 (kernels.gemm_tc_cl_filters); a channels-first x is copied channels-last
                 first, and the filters are reordered (a small copy);
  ``gemm_wgmma`` ``gemm_tc_cl``'s copies, ring and blocks (float16, bfloat16; C_in/groups a
                 multiple of 8) multiplied by Hopper's warpgroup instruction wgmma, which reads
                 both tiles from shared memory itself (kernels_cuda/conv_gemm_wgmma.cu, built
                 for sm_90a: compute capability 9.0 only, H100/H200); only when asked for by
                 name or by the autotuner (not yet run on a GPU);
  ``gemm_cl``    ``gemm_tc_cl``'s kernel for float32 with C_in/groups a multiple of 4, the
                 products by FFMA (exact FP32 sums, as ``gemm``): 16-byte copies of 4 channels
                 into the same ring, 16-byte shared loads of a chunk of 4 terms a row; only
                 when asked for by name or by the autotuner (not yet timed on a GPU);
  ``gemm_tf32``  ``gemm_tc`` for float32 with its operands rounded to TF32 (10 mantissa bits),
                 as PyTorch's allow_tf32 does: faster, less exact; only when asked for by name
                 (never chosen by "auto" or the autotuner);
  ``im2col``     explicit GEMM: the windows of a chunk of output positions unrolled into the
                 columns of a matrix in GPU memory (kernels_cuda/im2col.cu; chunks within a
                 256 MiB workspace), their product with the filters by one strided batched
                 cuBLAS call over the groups (gpuconv.cublas: FP32, float64 or complex sums;
                 float16 and bfloat16 on tensor cores with FP32 sums, widened to float32
                 before a sigmoid or tanh), the bias as one more term of the sum (a row of
                 ones), then the product copied into the output through the activation,
                 rounded once; FP32 whatever CUPY_TF32 says; "auto" takes it
                 for float32 layers of many filters and terms (_im2col_auto);
  ``winograd``   F(2x2, 3x3) for 2-D 3x3 kernels of stride 1 in one group (real dtypes): input
                 and output transforms (kernels_cuda/conv_winograd.cu) around 16 batched
                 products done by CuPy's matmul (cuBLAS, FP32 unless CUPY_TF32 is set);
                 2.25x fewer multiplies, a looser rounding bound; only when asked for by name
                 (never chosen by "auto" or the autotuner; not yet timed on a GPU);
  ``pointwise``  1x1 kernels without padding: the product
                 ``(G, Cog, Cg) @ (N, G, Cg, positions)`` (per group one strided batched
                 cuBLAS call over the images on x and the output as they lie, or one call for
                 an output of rows; gpuconv.cublas: FP32 whatever CUPY_TF32 says),
                 written into the output as it lies, then the bias and activation as array
                 passes; float16 and bfloat16 on tensor cores with
                 FP32 sums, the bias as one more term of the sum and one rounding (with
                 sigmoid or tanh: widened to float32 and rounded at the end); the stride is a
                 view;
  ``depthwise``  one kernel per filter: 32-bit indexing, 3x3/5x5/7x7 and 1-D 3/5/7 taps
                 unrolled (kernels_cuda/conv_depthwise.cu); for channels-first outputs of
                 those sizes each thread computes 4 outputs of a row (conv_depthwise_rows);
  ``depthwise_tile`` the same sizes through shared memory: a block copies the input of a
                 tile of outputs (whole rows, or whole planes, several a block, where planes
                 are small) once, coalesced, then sums the taps from it
                 (conv_depthwise_tile); only when asked for by name or by the autotuner
                 (not yet timed on a GPU).
"""
from __future__ import annotations

import functools
import math
import os
from typing import Dict, Optional, Tuple

import numpy as np

from . import kernels
from .dtypes import accumulator_dtype
from .geometry import ConvGeometry
from ._typing import DTypeLike

_GEMM = tuple(f"gemm_{t}" for t in kernels.GEMM_TILES)

#: device kind -> the algorithms it has, in the order they are listed to users.
ALGORITHMS: Dict[str, Tuple[str, ...]] = {
    "cpu": ("gemm", "gemm_shifted", "pointwise", "depthwise"),
    "cuda": ("direct", "few_filters", "gemm") + _GEMM + ("gemm_cl", "gemm_tc", "gemm_tc_cl",
                                                         "gemm_wgmma", "gemm_tf32", "im2col",
                                                         "winograd", "pointwise", "depthwise",
                                                         "depthwise_tile"),
}
NAMES = ("auto",) + tuple(dict.fromkeys(n for names in ALGORITHMS.values() for n in names))

_CUDA_GRID_LIMIT = 65535  # blocks along a grid's y and z axes


def check_name(algorithm: str) -> None:
    """TypeError/ValueError unless ``algorithm`` is "auto" or some device's algorithm."""
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a string, one of {NAMES}; got {algorithm!r}")
    if algorithm not in NAMES:
        raise ValueError(f"algorithm must be one of {NAMES}, got {algorithm!r}")


def _filters(geom: ConvGeometry) -> str:
    """The layer's filters, as :func:`why_not`'s reasons name them."""
    return f"filters {(geom.C_out, geom.C_in_per_group) + geom.kernel}, groups={geom.groups}"


def why_not(kind: str, algorithm: str, geom: ConvGeometry, dtype: DTypeLike) -> str:
    """Why ``algorithm`` cannot compute this layer on ``kind``, or "" when it can."""
    if algorithm not in ALGORITHMS[kind]:
        return (f"the {kind} device has no {algorithm!r} algorithm; it has "
                f"{('auto',) + ALGORITHMS[kind]}")
    if algorithm in ("depthwise", "depthwise_tile") and geom.C_in_per_group != 1:
        return (f"{algorithm!r} needs one kernel per filter (C_in/groups == 1); these are "
                f"{_filters(geom)}")
    if algorithm == "depthwise_tile" and kernels.depthwise_tile(geom, dtype) is None:
        sizes = tuple(k for k in kernels.DEPTHWISE_SIZES if k != (0, 0))
        return (f"'depthwise_tile' is built for kernels of (height, width) {sizes} (depth 1) "
                f"whose window of one output row fits its {kernels.DEPTHWISE_TILE_BYTES}-byte "
                f"tile; these are {_filters(geom)}, dilation {geom.dilation}")
    if algorithm == "gemm_shifted" and (geom.stride[-1] != 1 or geom.kernel[-1] == 1):
        return (f"'gemm_shifted' sums each tap's products shifted along the last axis, which "
                f"needs stride 1 and a kernel wider than 1 there; this call has stride "
                f"{geom.stride} and {_filters(geom)}")
    if algorithm == "pointwise" and (max(geom.kernel) != 1 or
                                     max(geom.pad_before + geom.pad_after) != 0):
        return (f"'pointwise' needs 1x1 kernels and no padding; these are {_filters(geom)}, "
                f"padding {tuple(zip(geom.pad_before, geom.pad_after))}")
    if kind == "cuda" and algorithm == "pointwise" and \
            max(geom.positions, geom.C_in, geom.C_out) >= 2**31:
        return (f"the CUDA 'pointwise' hands cuBLAS its matrix sizes as 32-bit ints; this call "
                f"has {geom.positions} output positions, {geom.C_in} channels in and "
                f"{geom.C_out} out")
    if kind == "cuda" and algorithm == "winograd":  # its products are CuPy's matmul
        reason = cupy_tf32_problem(repr(algorithm), dtype)
        if reason:
            return reason
    if kind == "cuda" and algorithm == "im2col":
        rows = kernels.im2col_rows(geom, dtype, True)
        column = kernels.im2col_column_bytes(geom, rows, accumulator_dtype(dtype).itemsize)
        if column > kernels.IM2COL_WORKSPACE_BYTES:
            return (f"'im2col' unrolls each window into a column of every group's matrix: "
                    f"{_filters(geom)} make one output position's columns {column} bytes, more "
                    f"than its workspace of {kernels.IM2COL_WORKSPACE_BYTES} bytes")
    if kind == "cuda" and algorithm == "winograd":
        square = geom.rank == 2 and geom.kernel == (3, 3) and geom.stride == (1, 1) and \
            geom.dilation == (1, 1)
        if not square or geom.groups != 1:
            return (f"'winograd' (F(2x2, 3x3)) takes 2-D 3x3 kernels of stride 1 and dilation 1 "
                    f"in one group; these are {_filters(geom)}, stride {geom.stride}, dilation "
                    f"{geom.dilation}")
        if np.dtype(dtype).kind == "c":
            return f"'winograd' takes real dtypes; this call is {np.dtype(dtype).name}"
    if kind == "cuda" and algorithm == "few_filters" and \
            geom.C_out_per_group > kernels.FEW_FILTERS_WIDTHS[-1]:
        return (f"'few_filters' computes every filter of a group in one thread: it takes at "
                f"most {kernels.FEW_FILTERS_WIDTHS[-1]} filters a group; these are "
                f"{_filters(geom)}")
    if kind == "cuda" and algorithm in ("depthwise", "depthwise_tile", "few_filters"):
        x_elems = geom.N * geom.C_in * math.prod(geom.padded_spatial)
        y_elems = geom.positions * geom.C_out
        if max(x_elems, y_elems) >= kernels.DEPTHWISE_MAX_ELEMENTS:
            return (f"the CUDA {algorithm!r} kernel takes inputs and outputs of fewer than 2^30 "
                    f"elements; this call has {x_elems} in and {y_elems} out")
    if kind == "cuda" and algorithm.startswith("gemm"):
        reason = gemm_index_problem(geom)
        if reason:
            return f"{algorithm!r}: {reason}"
    if kind == "cuda" and algorithm == "gemm_cl":
        if np.dtype(dtype) != np.float32:
            return (f"'gemm_cl' multiplies float32 by FFMA; this call is "
                    f"{np.dtype(dtype).name} (16-bit dtypes: 'gemm_tc_cl')")
        block = kernels.GEMM_CL_CHANNELS
        if geom.C_in_per_group % block:
            return (f"'gemm_cl' reads {block} channels at a time: it needs C_in/groups to be a "
                    f"multiple of {block}; these are {_filters(geom)}")
        narrow = kernels.GEMM_TC_CL_FILTERS[0]
        if geom.groups > _CUDA_GRID_LIMIT or -(-geom.C_out_per_group // narrow) > \
                _CUDA_GRID_LIMIT:
            return (f"'gemm_cl' launches one block row per group and {narrow} filters: "
                    f"{_filters(geom)} exceeds CUDA's {_CUDA_GRID_LIMIT} blocks per grid axis")
        return ""
    if kind == "cuda" and algorithm in ("gemm_tc", "gemm_tc_cl", "gemm_wgmma", "gemm_tf32"):
        if algorithm != "gemm_tf32" and not kernels.tensor_core_dtype(dtype):
            return (f"{algorithm!r} multiplies float16 or bfloat16 on tensor cores; this call is "
                    f"{np.dtype(dtype).name}")
        block = kernels.GEMM_TC_CL_CHANNELS
        if algorithm in ("gemm_tc_cl", "gemm_wgmma") and geom.C_in_per_group % block:
            return (f"{algorithm!r} reads {block} channels at a time: it needs C_in/groups to be "
                    f"a multiple of {block}; these are {_filters(geom)}")
        if algorithm == "gemm_tf32" and np.dtype(dtype) != np.float32:
            return (f"'gemm_tf32' rounds float32 to TF32 for the tensor cores; this call is "
                    f"{np.dtype(dtype).name}")
        if geom.groups > _CUDA_GRID_LIMIT or \
                -(-geom.C_out_per_group // kernels.GEMM_TC_TILE[1]) > _CUDA_GRID_LIMIT:
            return (f"{algorithm!r} launches one block row per group and "
                    f"{kernels.GEMM_TC_TILE[1]} filters: {_filters(geom)} exceeds CUDA's "
                    f"{_CUDA_GRID_LIMIT} blocks per grid axis")
        return _tensor_core_problem(algorithm)
    if kind == "cuda" and algorithm.startswith("gemm_"):
        tile = algorithm[len("gemm_"):]
        if tile not in kernels.gemm_tiles(dtype):
            return (f"{algorithm!r} is not built for {np.dtype(dtype).name} (its accumulators "
                    f"do not fit the registers or its tiles the shared memory); use one of "
                    f"{tuple('gemm_' + t for t in kernels.gemm_tiles(dtype))}")
        BN = kernels.GEMM_TILES[tile][1]
        if geom.groups > _CUDA_GRID_LIMIT or -(-geom.C_out_per_group // BN) > _CUDA_GRID_LIMIT:
            return (f"{algorithm!r} launches one block row per group and {BN} filters: "
                    f"{_filters(geom)} exceeds CUDA's {_CUDA_GRID_LIMIT} blocks per grid axis")
    return ""


def cupy_tf32_problem(what: str, dtype: DTypeLike) -> str:
    """Why ``what`` (winograd's products, the pointwise filter gradient: CuPy's matmul) cannot
    take a call it may multiply in float32 or complex64 (16-bit calls too, widened): CUPY_TF32
    set to a positive value makes CuPy's matmul round float32 operands to TF32; or "". The
    other cuBLAS products (pointwise, im2col) are gpuconv's own calls (gpuconv.cublas), in
    FP32 whatever CUPY_TF32 says."""
    if int(os.environ.get("CUPY_TF32", "0") or 0) > 0 and \
            accumulator_dtype(dtype) in (np.float32, np.complex64):
        return (f"{what} multiplies through CuPy's matmul, which CUPY_TF32 set to a "
                f"positive value makes round float32 to TF32 ({np.dtype(dtype).name} calls may "
                f"multiply in {accumulator_dtype(dtype).name}): unset it to use {what}")
    return ""


def gemm_index_problem(geom: ConvGeometry) -> str:
    """Why the CUDA implicit-GEMM kernels (forward and filter gradient) cannot take this layer,
    or "": they count a filter's terms and the input's spatial coordinates in 32-bit ints."""
    terms = geom.terms_per_output
    reach = max(p + (k - 1) * d for p, k, d in
                zip(geom.padded_spatial, geom.kernel, geom.dilation))
    if max(terms, reach) < kernels.GEMM_MAX_INDEX:
        return ""
    return (f"the implicit-GEMM kernels count terms and spatial coordinates in 32-bit ints: "
            f"they need C_in/groups times the kernel volume ({terms}) and every padded spatial "
            f"size plus the dilated kernel ({reach}) below 2^30")


def _tensor_core_problem(algorithm: str) -> str:
    """Why the current CUDA device cannot run mma.sync.m16n8k16 (compute capability below 8.0)
    or, for gemm_wgmma, code built for sm_90a (compute capability other than 9.0, or CuPy's
    NVRTC too old to build it), or "" (also when there is no CuPy device to ask: the host
    emulation of the tests)."""
    capability = _current_capability()
    if capability is None:
        return ""
    if algorithm == "gemm_wgmma":
        required = kernels.ARCH_SPECIFIC["conv_gemm_wgmma.cu"][0]
        if capability != required:
            return (f"'gemm_wgmma' is built for sm_90a (wgmma: H100, H200), which runs only on "
                    f"compute capability {required // 10}.{required % 10}; this device has "
                    f"{capability // 10}.{capability % 10} (use 'gemm_tc_cl')")
        nvrtc = kernels.cupy_nvrtc_version()
        oldest = kernels.ARCH_SPECIFIC_MIN_NVRTC
        if nvrtc is not None and nvrtc < oldest:
            return (f"'gemm_wgmma' needs NVRTC {oldest[0]}.{oldest[1]} or later to be built "
                    f"for sm_90a through CuPy (older ones refuse a second -arch beside the one "
                    f"CuPy adds); CuPy's NVRTC is {nvrtc[0]}.{nvrtc[1]} (use 'gemm_tc_cl')")
        return ""
    if capability < 80:
        return (f"{algorithm!r} needs compute capability 8.0 or later (mma.sync); this device "
                f"has {capability // 10}.{capability % 10}")
    return ""


def _current_capability() -> Optional[int]:
    """The current CUDA device's compute capability (90 for 9.0), or None without one."""
    try:
        import cupy
        return _capability(cupy.cuda.runtime.getDevice())
    except Exception:
        return None


@functools.lru_cache(maxsize=None)
def _capability(device_id: int) -> int:
    import cupy
    return int(cupy.cuda.Device(device_id).compute_capability)


#: Terms a filter from which the 128x128 tile is taken even for few output tiles: it then
#: splits its terms across the SMs (split-K, cuda.gemm_splits) into at least two splits of
#: 256 terms.
GEMM_SPLIT_K_TERMS = 512


def _gemm_tile(geom: ConvGeometry, dtype: DTypeLike) -> str:
    """The tile for ``algorithm="gemm"``: narrow for few filters a group; the big 128x128 tile
    when there are enough filters to fill it and either enough output tiles for one such block
    per SM of an H100 (132) or enough terms a filter to split them (r50_res5: 52 tiles of 4608
    terms); 128x64 for fewer filters (64 a group: r50_res2, vgg16_conv1_2); else 64x64 (the
    only one besides 128x32 and 128x8 for 8-byte sums, and 128x32 for 16-byte ones); 128x8 for
    at most 8 filters a group, which a 32-wide tile would leave three quarters empty. (H100,
    float32: the tile taken was the fastest, or within 5% of it, on 14 of the 16 layers of the
    suite; 128x8 is not measured yet.)"""
    Cog, M = geom.C_out_per_group, geom.positions
    tiles = kernels.gemm_tiles(dtype)
    if Cog <= 8 and "128x8" in tiles:
        return "128x8"
    if Cog <= 32:
        return "128x32"
    if ("128x128" in tiles and Cog >= 128
            and (M * geom.C_out >= 132 * 128 * 128
                 or geom.terms_per_output >= GEMM_SPLIT_K_TERMS)):
        return "128x128"
    return "128x64" if "128x64" in tiles else "64x64"


#: Filters a group up to which CUDA's "auto" takes the few-filter kernel (conv_few_filters):
#: counted from SASS-level estimates, not yet timed on a GPU (benchmarks/NOTES.md, session 9);
#: from 5 to 8 filters the GEMM's 128x8 tile.
FEW_FILTERS_AUTO = 4


#: float32 on CUDA: ``auto`` takes ``im2col`` (cuBLAS's SGEMM over unrolled columns) for layers
#: of at least this many filters a group and :data:`IM2COL_AUTO_MIN_TERMS` terms a filter, and
#: 1x1 layers of at least this many filters with fewer than
#: :data:`POINTWISE_AUTO_MIN_POSITIONS` output positions an image. H100, session 16 (record
#: gpu-nvidia-h100-80gb-hbm3-2026-11-23-a9964c7), one run, medians, ms, implicit GEMM /
#: im2col: r50_res3_3x3 (128 filters, 1152 terms) 0.431 / 0.387, r50_res5_3x3 0.385 / 0.295,
#: vgg16_conv4_2 2.397 / 1.491, conv1d_k3_c128to384 8.297 / 5.628, r50_res4_1x1 (196 positions
#: an image) 0.240 / 0.216 (pointwise 0.262), r50_down_1x1s2 0.367 / 0.316 (pointwise 0.396);
#: but r50_res4_3x3 0.491 / 0.651, not understood yet. Fewer filters or terms: the implicit
#: GEMM or pointwise won (r50_conv1 0.480 / 0.519, r50_res2_3x3 0.451 / 0.476, vgg16_conv1_2
#: 2.648 / 2.894, conv3d 16.7 / 18.9, speech 0.276 / 0.441, r50_res2_1x1 (3136 positions)
#: pointwise 0.284 / 0.322). Predicted from those rows: float32 geomean 0.58 -> 0.66x cuDNN.
IM2COL_AUTO_MIN_FILTERS = 128
IM2COL_AUTO_MIN_TERMS = 256
POINTWISE_AUTO_MIN_POSITIONS = 1024


def _im2col_auto(geom: ConvGeometry, dtype: DTypeLike) -> bool:
    """Whether ``auto`` on CUDA runs ``geom`` by ``im2col`` (see IM2COL_AUTO_MIN_FILTERS)."""
    if np.dtype(dtype) != np.float32 or geom.C_out_per_group < IM2COL_AUTO_MIN_FILTERS:
        return False
    if not why_not("cuda", "pointwise", geom, dtype):
        wanted = math.prod(geom.out_spatial) < POINTWISE_AUTO_MIN_POSITIONS
    else:
        wanted = geom.terms_per_output >= IM2COL_AUTO_MIN_TERMS
    return wanted and not why_not("cuda", "im2col", geom, dtype)


def _cuda_auto(geom: ConvGeometry, dtype: DTypeLike) -> str:
    """``algorithm="auto"`` on CUDA. Measured on an H100 (benchmarks/results/gpu-nvidia-h100-*):
    the implicit GEMM ran every dense layer of the suite 5-89x faster than the direct kernel
    (float32, session 8), and the depthwise kernel the depthwise layers 2.4-3.6x faster.
    float32 layers of many filters and terms go to ``im2col`` (:func:`_im2col_auto`), 1x1
    layers to ``pointwise`` (cuBLAS) otherwise. float16 and bfloat16 go to the tensor cores,
    1x1 layers too where gemm_tc_cl takes them (session 16, ms, pointwise / gemm_tc_cl: float16
    r50_res2_1x1 0.332 / 0.198, r50_res4_1x1 0.205 / 0.158, r50_down_1x1s2 0.160 / 0.127;
    bfloat16 auto (pointwise) 0.313 / 0.199, 0.213 / 0.142, 0.201 / 0.137). The direct kernel is
    left for what the others refuse."""
    if geom.C_in_per_group == 1 and geom.groups > 1 and not why_not("cuda", "depthwise", geom,
                                                                    dtype):
        return "depthwise"
    tensor_cores = kernels.tensor_core_dtype(dtype)
    pointwise = not why_not("cuda", "pointwise", geom, dtype)
    if pointwise and tensor_cores and not why_not("cuda", "gemm_tc_cl", geom, dtype):
        return "gemm_tc_cl"
    if _im2col_auto(geom, dtype):
        return "im2col"
    if pointwise:
        return "pointwise"
    if geom.C_out_per_group <= FEW_FILTERS_AUTO and not why_not("cuda", "few_filters", geom,
                                                                 dtype):
        return "few_filters"
    names = ["gemm_tc_cl", "gemm_tc"] if tensor_cores else []
    for name in names + ["gemm_" + _gemm_tile(geom, dtype)]:
        if not why_not("cuda", name, geom, dtype):
            return name
    return "direct"


#: ``auto`` on the CPU takes ``gemm_shifted`` for layers of at most this many filters a group
#: (where it applies: a kernel wider than 1 along the last axis, stride 1): there a product
#: of C_out/groups rows is BLAS's slow shape (OpenBLAS sgemm on the 2-vCPU Xeon dev machine:
#: 64 x 576 @ 576 x 6272 230 GFLOP/s, 192 x 192 @ 192 x 6272 300), and the copy it saves is
#: large against the product. Float32, min of 10 calls, ms, gemm / gemm_shifted: r50_res2_3x3
#: (64 filters) 3.5 / 3.2, r50_res3_3x3 (128) 3.0 / 2.8, vgg16_conv1_2 (64) 29 / 23, conv3d
#: 3x3x3 c64 308 / 259; r50_res4_3x3 (256) 4.7 / 5.2, r50_res5_3x3 (512) 8.7 / 11.4,
#: vgg16_conv4_2 (512) 15.6 / 20.3, conv1d_k3_c128to384 (384) 17.5 / 26.3.
GEMM_SHIFTED_MAX_FILTERS = 128

#: ... but not where a layer of one group has few kernels a filter against its filters:
#: the shifted GEMM saves unrolling the last axis's taps of each input channel (a copy of
#: ~(kw - 1) x kh x C_in values a position) and pays summing kw partial products of every
#: filter (~(kw - 1) x C_out), and its product's inner dimension (C_in x kh) is BLAS's slow
#: shape when small; so the GEMM where C_in/groups x the kernel's size along every axis but
#: the last is at most GEMM_SHIFTED_MIN_RATIO of the filters. Measured (session 25, the 2-vCPU
#: Zen 5 EPYC as set up, OPENBLAS_CORETYPE=Haswell, float32, min of 7, us, gemm / shifted):
#: 3 -> 64 filters 3x3 on 224^2 (VGG's first layer) 1429 / 2830, on 64^2 183 / 306; 3 -> 32
#: (ratio 0.28) 151 / 178; 3 -> 24 (0.38) 349 / 373; 8 -> 64 (0.38) 377 / 404; 16 -> 128
#: (0.38) 994 / 1054; 3 -> 16 (0.56) 317 / 267; 16 -> 64 (0.75) 682 / 573; 1-D 1 -> 16 taps 5
#: 113 / 1368; 3-D 1 -> 16 (0.56) 720 / 583; float64 and complex64 alike or more so. Grouped
#: layers were not better by it (2 groups of 4 -> 32, ratio 0.38: 487 / 437): left as they are.
GEMM_SHIFTED_MIN_RATIO = 0.4

#: ... and for 1-D layers at most this: there the GEMM's unrolled rows are long contiguous
#: runs (no rows of a kernel to copy around), so it wins up to as many kernels a filter as
#: filters (session 26, the same machine, float32, min of 7, ms, gemm / shifted: 1 -> 1, 10^6
#: positions, 31 taps 2.29 / 5.58; 1 -> 1, 10^5, 5 taps 0.090 / 0.131; 4 -> 4 9 taps 0.56 /
#: 0.68; 16 -> 16 5 taps 0.24 / 0.28; 1 -> 4, 4 images 0.76 / 2.18; but 2 -> 1 9 taps 0.27 /
#: 0.22, 3 -> 1 3 taps 0.16 / 0.14, 8 -> 2 1.16 / 0.55, 32 -> 8 7 taps 0.70 / 0.49).
GEMM_SHIFTED_MIN_RATIO_1D = 1.0

#: ... nor for layers of fewer multiply-adds than this, where the shifted GEMM's extra passes
#: cost more than they save (same machine, us, gemm / shifted: 8 -> 8 3x3 on 16^2, 0.15 M:
#: 34 / 44; 16 -> 16 on 12^2, 0.33 M: 42 / 49; 16 -> 16 on 16^2, 0.59 M: 80 / 70).
GEMM_SHIFTED_MIN_MULTIPLY_ADDS = 450_000


def _gemm_rather_than_shifted(geom: ConvGeometry) -> bool:
    """Whether auto takes the GEMM for a one-group layer the shifted GEMM could run (see
    GEMM_SHIFTED_MIN_RATIO, GEMM_SHIFTED_MIN_RATIO_1D and GEMM_SHIFTED_MIN_MULTIPLY_ADDS)."""
    if geom.groups != 1:
        return False
    rows = geom.C_in_per_group * math.prod(geom.kernel[:-1])  # the shifted GEMM's terms
    ratio = GEMM_SHIFTED_MIN_RATIO if geom.rank > 1 else GEMM_SHIFTED_MIN_RATIO_1D
    return (rows <= ratio * geom.C_out_per_group
            or geom.flops < 2 * GEMM_SHIFTED_MIN_MULTIPLY_ADDS)


def choose(kind: str, algorithm: str, geom: ConvGeometry, dtype: DTypeLike) -> str:
    """The concrete algorithm a forward call on ``kind`` ("cpu" or "cuda") runs."""
    if algorithm == "auto":
        if kind == "cpu":
            if geom.C_in_per_group == 1 and geom.groups > 1:
                return "depthwise"
            if not why_not(kind, "pointwise", geom, dtype):
                return "pointwise"
            if (geom.C_out_per_group <= GEMM_SHIFTED_MAX_FILTERS
                    and not why_not(kind, "gemm_shifted", geom, dtype)
                    and not _gemm_rather_than_shifted(geom)):
                return "gemm_shifted"
            return "gemm"
        return _cuda_auto(geom, dtype)
    if kind == "cuda" and algorithm == "gemm":
        algorithm = "gemm_" + _gemm_tile(geom, dtype)
    reason = why_not(kind, algorithm, geom, dtype)
    if reason:
        raise ValueError(f"algorithm={algorithm!r} cannot run this call: {reason}")
    return algorithm
