"""Finding, reading and compiling the CUDA sources in ``kernels_cuda/``.

Sources are ``.cu``/``.cuh`` files, never Python strings. :func:`kernel_source` expands local
``#include "x.cuh"`` lines itself, with ``#line`` directives, so that NVRTC errors name the real
file and line, and so that CuPy's on-disk kernel cache (keyed by the source text) sees a change to
a header. :func:`get_function` compiles a whole file once per (file, dtype, options, device) with
every template instantiation that dtype can need (``name_expressions``) and caches it.

:func:`every_module_request` lists everything the package can ask NVRTC for; the test suite
compiles exactly that list with plain NVRTC for sm_80 and sm_90 on machines without a GPU.
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .activation import commutes_with_rounding
from .dtypes import ACCEPTED, accepted, accumulator_dtype, is_bfloat16
from .geometry import ConvGeometry
from ._typing import DTypeLike

#: C++ type of each accepted dtype in the kernels (see kernels_cuda/gpuconv_types.cuh).
CTYPES: Dict[np.dtype, str] = {
    np.dtype(np.float16): "gc_half",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.complex64): "gc_complex<float>",
    np.dtype(np.complex128): "gc_complex<double>",
}
assert set(CTYPES) == set(ACCEPTED)


def ctype(dtype: DTypeLike) -> str:
    """The kernels' C++ type for ``dtype`` (bfloat16: gc_bfloat16, see gpuconv_types.cuh)."""
    return "gc_bfloat16" if is_bfloat16(dtype) else CTYPES[np.dtype(dtype)]

#: activation argument -> the constant the kernels define for it.
ACTIVATIONS: Dict[Optional[str], str] = {
    None: "GC_ACT_NONE",
    "relu": "GC_ACT_RELU",
    "sigmoid": "GC_ACT_SIGMOID",
    "tanh": "GC_ACT_TANH",
}

#: Options given to NVRTC for every module (CuPy adds the target architecture itself).
COMPILE_OPTIONS: Tuple[str, ...] = ("-std=c++17",)

#: Modules built for one architecture's own instructions: file -> (the compute capability of
#: the only devices it runs on, the option naming that target). conv_gemm_wgmma.cu's wgmma
#: exists only on sm_90a; CuPy appends its own -arch=sm_90 for such a device, and NVRTC then
#: builds for sm_90a (with both options wgmma compiles: NVRTC 12.9 and 13.0-13.5 checked)...
ARCH_SPECIFIC: Dict[str, Tuple[int, str]] = {"conv_gemm_wgmma.cu": (90, "-arch=sm_90a")}

#: ... but only from this NVRTC on: 12.0-12.8 refuse a second -arch ("--gpu-architecture
#: (-arch) defined more than once"), so with them (CuPy 13 or 14 on a CUDA 12 before 12.9)
#: an ARCH_SPECIFIC module cannot be built through CuPy (algorithms.why_not says so).
ARCH_SPECIFIC_MIN_NVRTC: Tuple[int, int] = (12, 9)

#: The oldest NVRTC gpuconv's kernels are written for: CUDA 12.0's, the oldest CuPy 13's
#: cupy-cuda12x runs with (the test suite compiles every kernel template with it too).
OLDEST_NVRTC: Tuple[int, int] = (12, 0)


@functools.lru_cache(maxsize=None)
def cupy_nvrtc_version() -> Optional[Tuple[int, int]]:
    """(major, minor) of the NVRTC CuPy compiles with, or None where CuPy or its NVRTC
    cannot be loaded (then nothing is compiled through CuPy anyway)."""
    try:
        import cupy
        major, minor = cupy.cuda.nvrtc.getVersion()
        return int(major), int(minor)
    except Exception:
        return None


def module_options(filename: str) -> Tuple[str, ...]:
    """NVRTC's options for ``filename``: COMPILE_OPTIONS (read at each call: the benchmarks'
    bench_with_defines adds macros to it), and the target of an ARCH_SPECIFIC file."""
    target = ARCH_SPECIFIC.get(filename)
    return tuple(COMPILE_OPTIONS) + ((target[1],) if target else ())

_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"\s*$')


def kernel_dir() -> Path:
    """The folder holding the CUDA sources: inside the installed package, or the repository's."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels_cuda", here.parent / "kernels_cuda"):
        if (candidate / "conv_direct.cu").is_file():
            return candidate
    raise FileNotFoundError(f"gpuconv's CUDA sources (kernels_cuda/) were not found next to "
                            f"{here}; the installation is incomplete")


def _expand(path: Path, seen: set) -> List[str]:
    lines = [f'#line 1 "{path}"']
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _INCLUDE.match(line)
        if match:
            header = (path.parent / match.group(1)).resolve()
            if not header.is_file():
                raise FileNotFoundError(f"{path}:{number}: included file {header} not found")
            if header not in seen:
                seen.add(header)
                lines.extend(_expand(header, seen))
            lines.append(f'#line {number + 1} "{path}"')
        elif line.strip() == "#pragma once":
            lines.append("")
        else:
            lines.append(line)
    return lines


@functools.lru_cache(maxsize=None)
def kernel_source(filename: str) -> str:
    """Full source of ``kernels_cuda/<filename>`` with its local includes expanded."""
    path = kernel_dir() / filename
    return "\n".join(_expand(path, {path.resolve()})) + "\n"


def activation_names(dtype: DTypeLike) -> Tuple[Optional[str], ...]:
    """Activations the kernels support for ``dtype``: none for complex (there is no ordering)."""
    if np.dtype(dtype).kind == "c":
        return (None,)
    return tuple(ACTIVATIONS)


def conv_direct_name(dtype: DTypeLike, activation: Optional[str]) -> str:
    return f"conv_direct<{ctype(dtype)}, {ACTIVATIONS[activation]}>"


#: conv_few_filters (conv_direct.cu): the group widths it is built for (a thread computes
#: every filter of its group, up to the width), and the outputs of a row a thread computes.
FEW_FILTERS_WIDTHS: Tuple[int, ...] = (1, 2, 4, 8)
FEW_FILTERS_RUN = 4


def few_filters_width(filters: int) -> int:
    """The narrowest conv_few_filters width that holds ``filters`` filters a group (<= 8)."""
    return next(wd for wd in FEW_FILTERS_WIDTHS if wd >= filters)


def conv_few_filters_name(dtype: DTypeLike, activation: Optional[str], width: int) -> str:
    return f"conv_few_filters<{ctype(dtype)}, {ACTIVATIONS[activation]}, {width}>"


def winograd_names(dtype: DTypeLike, activation: Optional[str]) -> Tuple[str, str]:
    """conv_winograd.cu's input transform and output transform (with the activation)."""
    return (f"winograd_input<{ctype(dtype)}>",
            f"winograd_output<{ctype(dtype)}, {ACTIVATIONS[activation]}>")


#: Tiles of the implicit-GEMM kernel (conv_gemm.cu): name -> (BM, BN, BK, TM, TN). A block
#: computes BM output positions x BN filters in steps of BK terms; each thread TM x TN of them.
#: 128x128 takes 16 terms a step: its main loop (sm_90 SASS, float32) is 1429 instructions for
#: 1024 FFMA (72%; 77% without the ~100 that only warp 0 runs to find the terms) against 787 for
#: 512 (65%) at 8 a step, for 213 registers instead of 181 (one 256-thread block an SM either
#: way) and 32 KiB of shared tiles. 128x64 (8 x 8 sums a thread too, 128 threads) is 1556 for
#: 1024 (66%), 221 registers (two blocks an SM), for 64 filters a group, where 64x64 (4 x 4 a
#: thread) is 335 for 128 (38%). 128x8 (4 x 2 sums a thread, 128 threads) is for groups of
#: at most 8 filters: a 3-channel output (the data gradient of an RGB stem, by stride phases)
#: fills 3/8 of it against 3/32 of 128x32.
GEMM_TILES: Dict[str, Tuple[int, int, int, int, int]] = {
    "64x64": (64, 64, 8, 4, 4),
    "128x128": (128, 128, 16, 8, 8),
    "128x64": (128, 64, 16, 8, 8),
    "128x32": (128, 32, 8, 4, 4),
    "128x8": (128, 8, 16, 4, 2),
}

#: The tiles of 8 x 8 sums a thread: built only for 4-byte accumulators (gemm_tiles).
_WIDE_TILES = ("128x128", "128x64")


#: Static shared memory a block may hold (what conv_gemm's tiles are declared in).
SHARED_BYTES = 48 * 2**10


def gemm_shared_bytes(tile: str, acc_itemsize: int) -> int:
    """Shared memory of a conv_gemm block (conv_gemm.cu): two buffers of its A (BK x BM) and B
    (BK x BN) tiles in the accumulator type, two tables of a step's term offsets (8 bytes) and
    taps (16), and the BK term counters (40 bytes each)."""
    BM, BN, BK = GEMM_TILES[tile][:3]
    return 2 * BK * (BM + BN) * acc_itemsize + 2 * BK * (8 + 16) + BK * 40


def gemm_tiles(dtype: DTypeLike) -> Tuple[str, ...]:
    """The tiles compiled for ``dtype``: 128x128 and 128x64 hold 64 accumulators a thread, which
    fit the registers (and their two shared buffers the 48 KiB) only for 4-byte accumulators;
    128x8's 16-term steps of 128 positions fit the shared memory up to 8-byte ones."""
    acc = accumulator_dtype(dtype).itemsize
    return tuple(t for t in GEMM_TILES if (acc <= 4 or t not in _WIDE_TILES)
                 and gemm_shared_bytes(t, acc) <= SHARED_BYTES)


#: The implicit-GEMM kernels (conv_gemm.cu, conv_gemm_tc.cu) count terms (k < C_in/groups x
#: kernel volume) and spatial coordinates in 32-bit ints: both stay below this
#: (algorithms.gemm_index_problem; GC_FAR in gpuconv_gemm.cuh relies on it).
GEMM_MAX_INDEX = 2**30


def tile_threads(tile: Tuple[int, int, int, int, int]) -> int:
    """Threads a block of an FFMA GEMM tile (BM, BN, BK, TM, TN) runs: one per TM x TN sums."""
    BM, BN, _, TM, TN = tile
    return (BM // TM) * (BN // TN)


def gemm_blocks_per_sm(tile: str, acc_itemsize: int) -> int:
    """conv_gemm blocks of ``tile`` an SM holds at once, by their registers (sm_90 ptxas, each
    warp's registers allocated in units of 256 from 64 K a SM): 128x128 (8 warps, 221-237 a
    thread) 1; 128x64 (4 warps, 221-229) 2; the 8-warp tiles of 4 x 4 sums (64x64, 128x32,
    128x8) 3 at 80 registers (4-byte sums), 2 at 126-128 (8-byte), 1 at 180-184 (16-byte).
    Split-K counts on it (cuda.gemm_splits); a wrong count costs speed, never correctness."""
    if tile == "128x128":
        return 1
    if tile == "128x64":
        return 2
    return {4: 3, 8: 2}.get(acc_itemsize, 1)


def gemm_threads(tile: str) -> int:
    return tile_threads(GEMM_TILES[tile])


def conv_gemm_name(dtype: DTypeLike, activation: Optional[str], tile: str) -> str:
    params = ", ".join(str(v) for v in GEMM_TILES[tile])
    return f"conv_gemm<{ctype(dtype)}, {ACTIVATIONS[activation]}, {params}>"


def conv_gemm_sum_splits_name(dtype: DTypeLike, activation: Optional[str]) -> str:
    """Split-K's second stage (conv_gemm.cu): the splits' sums added in order, then the bias
    and the activation."""
    return f"conv_gemm_sum_splits<{ctype(dtype)}, {ACTIVATIONS[activation]}>"


#: The tensor-core GEMM kernel (conv_gemm_tc.cu: float16, bfloat16, float32 as TF32; sm_80+):
#: its tile (output positions x filters per block) and threads a block.
GEMM_TC_TILE: Tuple[int, int] = (128, 64)
GEMM_TC_THREADS = 256


def tensor_core_dtype(dtype: DTypeLike) -> bool:
    """Whether conv_gemm_tc.cu multiplies ``dtype`` as it is (16-bit floats: float16, bfloat16;
    float32 it multiplies only rounded to TF32, as algorithm "gemm_tf32")."""
    return np.dtype(dtype) == np.float16 or is_bfloat16(dtype)


def conv_gemm_tc_name(dtype: DTypeLike, activation: Optional[str]) -> str:
    return f"conv_gemm_tc<{ctype(dtype)}, {ACTIVATIONS[activation]}>"


def conv_gemm_tc_cl_name(dtype: DTypeLike, activation: Optional[str], filters: int) -> str:
    """The channels-last tensor-core kernel (16-bit dtypes; filters of a multiple of
    GEMM_TC_CL_CHANNELS kernels) with blocks of GEMM_TC_CL_POSITIONS positions x ``filters``
    (one of GEMM_TC_CL_FILTERS)."""
    return f"conv_gemm_tc_cl<{ctype(dtype)}, {ACTIVATIONS[activation]}, {filters}>"


def conv_gemm_wgmma_name(dtype: DTypeLike, activation: Optional[str], filters: int) -> str:
    """conv_gemm_tc_cl's blocks and ring multiplied by wgmma (conv_gemm_wgmma.cu, 16-bit dtypes,
    sm_90a), blocks of GEMM_WGMMA_THREADS threads whatever their width (one of
    GEMM_TC_CL_FILTERS)."""
    return f"conv_gemm_wgmma<{ctype(dtype)}, {ACTIVATIONS[activation]}, {filters}>"


#: Threads a conv_gemm_wgmma block runs: two warpgroups of 64 positions each.
GEMM_WGMMA_THREADS = 256


#: conv_gemm_wgmma blocks an SM holds at once, either width: its __launch_bounds__(256, 2)
#: (the 64-filter kernel takes 112-114 registers a thread, sm_90a: 2 blocks; 3 would need <= 85).
GEMM_WGMMA_BLOCKS_PER_SM = 2


def conv_gemm_cl_name(dtype: DTypeLike, activation: Optional[str], filters: int) -> str:
    """conv_gemm_tc_cl's FFMA variant for float32 (conv_gemm_tc.cu's conv_gemm_cl; filters of a
    multiple of GEMM_CL_CHANNELS kernels), blocks as conv_gemm_tc_cl's."""
    return f"conv_gemm_cl<{ctype(dtype)}, {ACTIVATIONS[activation]}, {filters}>"


#: conv_gemm_cl reads 16 bytes (4 channels of a float32 input element) at a time.
GEMM_CL_CHANNELS = 4

#: Terms a step of conv_gemm_cl (four 16-byte chunks of floats).
GEMM_CL_TERMS = 16


def gemm_cl_blocks_per_sm(filters: int) -> int:
    """conv_gemm_cl blocks an SM holds at once, by registers (its __launch_bounds__: 2 of 128
    threads, 1 of 256; the shared stages, 24 or 48 KiB, allow as many)."""
    return 2 if filters == 64 else 1


def gemm_tc_cl_threads(filters: int) -> int:
    """Threads a conv_gemm_tc_cl block of ``filters`` runs: warps of 64 positions x 32 filters."""
    return (GEMM_TC_CL_POSITIONS // 64) * (filters // 32) * 32


#: conv_gemm_tc_cl reads 16 bytes (8 channels of a 16-bit input element) at a time: it needs
#: C_in / groups to be a multiple of this, and its x 16-byte aligned.
GEMM_TC_CL_CHANNELS = 8

#: conv_gemm_tc_cl's blocks: output positions a block, and its widths (filters a block).
GEMM_TC_CL_POSITIONS = 128
GEMM_TC_CL_FILTERS: Tuple[int, ...] = (64, 128)

#: Terms a step of conv_gemm_tc_cl (two mma.m16n8k16 deep).
GEMM_TC_CL_TERMS = 32


def gemm_tc_cl_blocks_per_sm(filters: int) -> int:
    """conv_gemm_tc_cl blocks an SM holds at once, by registers (126-128 a thread, sm_90 SASS):
    4 of 128 threads (64 filters), 2 of 256 (128 filters); their 36 or 48 KiB of shared stages
    allow as many."""
    return 4 if filters == 64 else 2


#: The fewest blocks a grid of 128-filter blocks must have for conv_gemm_tc_cl to use them: two
#: per SM of an H100 (132 SMs). Fewer, wider blocks would leave SMs idle where 64-filter blocks
#: (twice as many) keep them busy.
GEMM_TC_CL_WIDE_MIN_BLOCKS = 264


def gemm_tc_cl_filters(geom: ConvGeometry) -> int:
    """The block width conv_gemm_tc_cl runs with: 128 filters where a group has more than 64 and
    the grid of such blocks still fills the GPU (each block then does twice the multiplies per
    copy of an input tile), else 64."""
    narrow, wide = GEMM_TC_CL_FILTERS
    if geom.C_out_per_group <= narrow:
        return narrow
    blocks = (-(-geom.positions // GEMM_TC_CL_POSITIONS) * -(-geom.C_out_per_group // wide)
              * geom.groups)
    return wide if blocks >= GEMM_TC_CL_WIDE_MIN_BLOCKS else narrow


#: Kernel sizes (height, width; depth 1) the depthwise kernel (conv_depthwise.cu) is compiled
#: for with the taps unrolled; (0, 0) is its runtime-size instantiation for every other size.
DEPTHWISE_SIZES: Tuple[Tuple[int, int], ...] = ((3, 3), (5, 5), (7, 7), (1, 3), (1, 5), (1, 7),
                                                (0, 0))

#: The depthwise and few-filter kernels index their loops with 32-bit ints: inputs and outputs
#: stay below this.
DEPTHWISE_MAX_ELEMENTS = 2**30


def depthwise_size(kernel: Tuple[int, ...]) -> Tuple[int, int]:
    """The instantiation of conv_depthwise for a 1-, 2- or 3-D kernel size."""
    kd, kh, kw = (1,) * (3 - len(kernel)) + tuple(kernel)
    return (kh, kw) if kd == 1 and (kh, kw) in DEPTHWISE_SIZES else (0, 0)


def conv_depthwise_name(dtype: DTypeLike, activation: Optional[str],
                        size: Tuple[int, int]) -> str:
    return (f"conv_depthwise<{ctype(dtype)}, {ACTIVATIONS[activation]}, "
            f"{size[0]}, {size[1]}>")


def conv_depthwise_rows_name(dtype: DTypeLike, activation: Optional[str],
                             size: Tuple[int, int]) -> str:
    """conv_depthwise.cu's kernel for channels-first outputs of a fixed kernel size (4 outputs
    of a row a thread); ``size`` one of DEPTHWISE_SIZES other than (0, 0)."""
    return (f"conv_depthwise_rows<{ctype(dtype)}, {ACTIVATIONS[activation]}, "
            f"{size[0]}, {size[1]}>")


#: Outputs of a row each thread of conv_depthwise_rows computes.
DEPTHWISE_ROW_RUN = 4


def conv_depthwise_tile_name(dtype: DTypeLike, activation: Optional[str],
                             size: Tuple[int, int]) -> str:
    """conv_depthwise.cu's kernel through a shared-memory tile of the input (algorithm
    "depthwise_tile"); ``size`` one of DEPTHWISE_SIZES other than (0, 0)."""
    return (f"conv_depthwise_tile<{ctype(dtype)}, {ACTIVATIONS[activation]}, "
            f"{size[0]}, {size[1]}>")


#: conv_depthwise_tile's threads a block, the bytes of its input tile (accumulator values in
#: shared memory) and the most planes a block takes: GC_DW_TILE_THREADS, GC_DW_TILE_BYTES and
#: GC_DW_TILE_PLANES in conv_depthwise.cu. A block aims at DEPTHWISE_TILE_OUTPUTS outputs
#: (4 a thread): whole output rows where the tile's input fits, and whole planes, several a
#: block, where a plane has fewer outputs; a plane's tiles are of equal size (c144: 4 tiles of
#: 14 rows, where 18 rows would leave a last tile of 2).
DEPTHWISE_TILE_THREADS = 256
DEPTHWISE_TILE_BYTES = 16384
DEPTHWISE_TILE_PLANES = 32
DEPTHWISE_TILE_OUTPUTS = 1024


def depthwise_tile(geom: ConvGeometry, dtype: DTypeLike) -> Optional[Tuple[int, int, int]]:
    """(planes, rows, columns) of the outputs each conv_depthwise_tile block computes for this
    depthwise layer, or None where no tile fits: a kernel size without an unrolled
    instantiation, or one row of windows of the kernel's reach (dilation included) that is
    more than DEPTHWISE_TILE_BYTES of input. A plane is an (image, filter, output depth)."""
    size = depthwise_size(geom.kernel)
    if size == (0, 0):
        return None
    KH, KW = size
    cap = DEPTHWISE_TILE_BYTES // accumulator_dtype(dtype).itemsize
    OH, OW = ((1,) + geom.out_spatial)[-2:]  # 1-D: one row
    SH, SW = ((1,) + geom.stride)[-2:]
    DH, DW = ((1,) + geom.dilation)[-2:]
    reach_h, reach_w = (KH - 1) * DH + 1, (KW - 1) * DW + 1  # input rows and columns of a window

    def most(room: int, reach: int, step: int) -> int:  # outputs whose windows span <= room
        return (room - reach) // step + 1 if room >= reach else 0

    widest = most(cap // reach_h, reach_w, SW)
    if widest < 1:
        return None
    bw = min(OW, widest, DEPTHWISE_TILE_OUTPUTS)
    bw = -(-OW // -(-OW // bw))  # as many tiles a row, of equal widths
    bh = min(OH, max(1, DEPTHWISE_TILE_OUTPUTS // bw),
             most(cap // ((bw - 1) * SW + reach_w), reach_h, SH))
    bh = -(-OH // -(-OH // bh))
    planes = 1
    if bh == OH and bw == OW:
        tile_in = ((bh - 1) * SH + reach_h) * ((bw - 1) * SW + reach_w)
        planes = max(1, min(DEPTHWISE_TILE_PLANES, DEPTHWISE_TILE_OUTPUTS // (bh * bw),
                            cap // tile_in, _depthwise_planes(geom)))
    return planes, bh, bw


def _depthwise_planes(geom: ConvGeometry) -> int:
    """The planes (image, filter, output depth) of a depthwise layer's output."""
    return geom.N * geom.C_out * math.prod(geom.out_spatial[:-2])


def depthwise_tile_blocks(geom: ConvGeometry, tile: Tuple[int, int, int]) -> int:
    """conv_depthwise_tile's blocks for ``tile`` (from :func:`depthwise_tile`): one a tile."""
    planes, rows, columns = tile
    OH, OW = ((1,) + geom.out_spatial)[-2:]
    return -(-_depthwise_planes(geom) // planes) * -(-OH // rows) * -(-OW // columns)


#: Threads of a conv_depthwise_filter_grad block (GC_DW_FG_THREADS in conv_depthwise.cu).
DEPTHWISE_FILTER_GRAD_THREADS = 256


def conv_depthwise_filter_grad_name(dtype: DTypeLike, size: Tuple[int, int]) -> str:
    """conv_depthwise.cu's filter gradient of a depthwise layer of a fixed kernel size (one of
    DEPTHWISE_SIZES other than (0, 0)): a block per filter and chunk of positions."""
    return f"conv_depthwise_filter_grad<{ctype(dtype)}, {size[0]}, {size[1]}>"


def data_adjoint_name(dtype: DTypeLike, conjugate: bool) -> str:
    return f"conv_data_adjoint<{ctype(dtype)}, {'true' if conjugate else 'false'}>"


#: Tiles of the filter-gradient GEMM (conv_gemm.cu: conv_filter_grad_gemm): name -> (BM terms,
#: BN filters, BK positions a step, TM, TN), 256 threads each holding TM x TN sums. Main loops
#: (sm_90 SASS, float32): 64x64 406 instructions for 128 FFMA (32%), 128x64 596 for 256 (43%),
#: 128x128 891 for 512 (57%; 167 registers, no spills).
FILTER_GRAD_TILES: Dict[str, Tuple[int, int, int, int, int]] = {
    "64x64": (64, 64, 8, 4, 4),
    "128x64": (128, 64, 8, 8, 4),
    "128x128": (128, 128, 8, 8, 8),
}


def filter_grad_tiles(dtype: DTypeLike) -> Tuple[str, ...]:
    """The filter-gradient tiles compiled for ``dtype``: those of 8 x 4 or 8 x 8 sums a thread
    only for 4-byte accumulators (float32; float16 and bfloat16 sum in float32), as for the
    forward GEMM's 128x128 (:func:`gemm_tiles`)."""
    return tuple(FILTER_GRAD_TILES) if accumulator_dtype(dtype).itemsize <= 4 else ("64x64",)


def conv_filter_grad_gemm_name(dtype: DTypeLike, tile: str) -> str:
    params = ", ".join(str(v) for v in FILTER_GRAD_TILES[tile])
    return f"conv_filter_grad_gemm<{ctype(dtype)}, {params}>"


def filter_grad_names(dtype: DTypeLike) -> Tuple[str, str]:
    """(first stage: partial sums, second stage: their ordered sum) for ``dtype``."""
    name = ctype(dtype)
    return f"conv_filter_grad_partial<{name}>", f"sum_partials<{name}>"


#: layout.cu's to_channels_last: tiles of LAYOUT_TILE channels x LAYOUT_TILE positions, one a
#: block of LAYOUT_THREADS threads; the grid's z axis (images) at most LAYOUT_MAX_GRID_Z blocks,
#: each then taking every LAYOUT_MAX_GRID_Z-th image.
LAYOUT_TILE = 32
LAYOUT_THREADS = 256
LAYOUT_MAX_GRID_Z = 65535


def to_channels_last_name(dtype: DTypeLike) -> str:
    """layout.cu's copy of (N, C, S) into a contiguous (N, S, C), for conv_gemm_tc_cl's and
    conv_gemm_cl's input."""
    return f"to_channels_last<{ctype(dtype)}>"


def im2col_widened(dtype: DTypeLike, activation: Optional[str]) -> bool:
    """Whether the explicit GEMM (im2col.cu) multiplies ``dtype`` widened to its accumulator
    type: float16 and bfloat16 calls with sigmoid or tanh, which do not commute with the
    rounding (the others multiply as they are: cuBLAS sums 16-bit products in FP32)."""
    return tensor_core_dtype(dtype) and not commutes_with_rounding(activation)


def im2col_names(dtype: DTypeLike, activation: Optional[str]) -> Tuple[str, str]:
    """im2col.cu's (unroll, store) kernels for a call in ``dtype``: columns in ``dtype``, or in
    its accumulator type where :func:`im2col_widened`."""
    t = ctype(dtype)
    c = "float" if im2col_widened(dtype, activation) else t
    return f"im2col<{t}, {c}>", f"im2col_store<{c}, {t}, {ACTIVATIONS[activation]}>"


#: The explicit GEMM's columns and product (im2col.cu) of one chunk of output positions stay
#: under this many bytes.
IM2COL_WORKSPACE_BYTES = 256 * 2**20


def im2col_rows(geom: ConvGeometry, dtype: DTypeLike, bias: bool) -> int:
    """Rows K of a group's column matrix (im2col.cu): the filter's terms, one more for a bias
    (a row of ones), and for float16 and bfloat16 zero rows up to a multiple of 8 (16-byte rows
    of the filters' matrix for the tensor cores)."""
    K = geom.terms_per_output + int(bias)
    return -(-K // 8) * 8 if tensor_core_dtype(dtype) else K


def im2col_column_bytes(geom: ConvGeometry, rows: int, itemsize: int) -> int:
    """Workspace bytes of one output position: its column in every group's matrix and its
    entries of the product."""
    return geom.groups * (rows + geom.C_out_per_group) * itemsize


def im2col_chunk(geom: ConvGeometry, rows: int, itemsize: int) -> int:
    """Output positions a chunk of the explicit GEMM: as many as keep its columns and product
    within IM2COL_WORKSPACE_BYTES (all of them when they fit; else a multiple of 8, which keeps
    the rows of 16-bit matrices on 16 bytes), below 2^31 (cuBLAS takes 32-bit sizes)."""
    total = geom.positions
    chunk = min(total, IM2COL_WORKSPACE_BYTES // im2col_column_bytes(geom, rows, itemsize),
                2**31 - 8)
    if chunk < total and chunk >= 8:
        chunk -= chunk % 8
    return max(1, chunk)


#: Threads an im2col.cu launch aims for: an H100's 132 SMs hold 2048 each, twice over.
IM2COL_THREADS = 2**19


def im2col_rows_a_thread(rows: int, columns: int) -> int:
    """Rows R an im2col.cu thread does for one column (``rows``: the (group, channel) pairs for
    the unroll, the output channels for the store): the most that still leave IM2COL_THREADS
    threads, at least 1."""
    return max(1, rows * columns // IM2COL_THREADS)


def module_names(filename: str, dtype: DTypeLike) -> Tuple[str, ...]:
    """Every template instantiation of ``filename`` that a call in ``dtype`` may need."""
    if filename == "conv_direct.cu":
        return tuple(conv_direct_name(dtype, a) for a in activation_names(dtype)) + \
            tuple(conv_few_filters_name(dtype, a, wd) for a in activation_names(dtype)
                  for wd in FEW_FILTERS_WIDTHS)
    if filename == "conv_gemm.cu":
        return tuple(conv_gemm_name(dtype, a, t) for a in activation_names(dtype)
                     for t in gemm_tiles(dtype)) + \
            tuple(conv_gemm_sum_splits_name(dtype, a) for a in activation_names(dtype)) + \
            tuple(conv_filter_grad_gemm_name(dtype, t) for t in filter_grad_tiles(dtype))
    if filename == "conv_gemm_tc.cu":
        if tensor_core_dtype(dtype):
            return tuple(conv_gemm_tc_name(dtype, a) for a in activation_names(dtype)) + \
                tuple(conv_gemm_tc_cl_name(dtype, a, f) for a in activation_names(dtype)
                      for f in GEMM_TC_CL_FILTERS)
        if np.dtype(dtype) == np.float32:  # as TF32 by the general kernel; FFMA channels-last
            return tuple(conv_gemm_tc_name(dtype, a) for a in activation_names(dtype)) + \
                tuple(conv_gemm_cl_name(dtype, a, f) for a in activation_names(dtype)
                      for f in GEMM_TC_CL_FILTERS)
        return ()
    if filename == "conv_gemm_wgmma.cu":
        return tuple(conv_gemm_wgmma_name(dtype, a, f) for a in activation_names(dtype)
                     for f in GEMM_TC_CL_FILTERS) if tensor_core_dtype(dtype) else ()
    if filename == "conv_depthwise.cu":
        return tuple(conv_depthwise_name(dtype, a, k) for a in activation_names(dtype)
                     for k in DEPTHWISE_SIZES) + \
            tuple(conv_depthwise_rows_name(dtype, a, k) for a in activation_names(dtype)
                  for k in DEPTHWISE_SIZES if k != (0, 0)) + \
            tuple(conv_depthwise_tile_name(dtype, a, k) for a in activation_names(dtype)
                  for k in DEPTHWISE_SIZES if k != (0, 0)) + \
            tuple(conv_depthwise_filter_grad_name(dtype, k) for k in DEPTHWISE_SIZES
                  if k != (0, 0))
    if filename == "conv_winograd.cu":  # real dtypes only (the host refuses complex ones)
        if np.dtype(dtype).kind == "c":
            return ()
        return (winograd_names(dtype, None)[0],) + tuple(
            winograd_names(dtype, a)[1] for a in activation_names(dtype))
    if filename == "layout.cu":  # feeds conv_gemm_tc_cl (16-bit dtypes) and conv_gemm_cl
        return (to_channels_last_name(dtype),) if (
            tensor_core_dtype(dtype) or np.dtype(dtype) == np.float32) else ()
    if filename == "im2col.cu":
        pairs = [im2col_names(dtype, a) for a in activation_names(dtype)]
        return tuple(dict.fromkeys([u for u, _ in pairs] + [s for _, s in pairs]))
    if filename == "peak.cu":  # the benchmark's FMA throughput probe
        return (f"gc_fma_peak<{ctype(dtype)}>",) if np.dtype(dtype) in (
            np.float32, np.float64) else ()
    if filename == "conv_adjoint.cu":
        return (data_adjoint_name(dtype, True), data_adjoint_name(dtype, False)) \
            + filter_grad_names(dtype)
    raise KeyError(f"unknown kernel file {filename!r}")


KERNEL_FILES: Tuple[str, ...] = ("conv_direct.cu", "conv_gemm.cu", "conv_gemm_tc.cu",
                                  "conv_gemm_wgmma.cu", "conv_depthwise.cu", "conv_adjoint.cu",
                                  "conv_winograd.cu", "im2col.cu", "layout.cu", "peak.cu")


def every_module_request() -> List[Tuple[str, Tuple[str, ...], Tuple[str, ...]]]:
    """(filename, name_expressions, options) of every module the package can compile."""
    return [(f, module_names(f, dt), module_options(f)) for f in KERNEL_FILES for dt in accepted()
            if module_names(f, dt)]


@functools.lru_cache(maxsize=None)
def _module(filename: str, names: Tuple[str, ...], options: Tuple[str, ...], device_id: int) -> Any:
    import cupy
    # device_id is part of the key: a module is loaded into one device's context.
    return cupy.RawModule(code=kernel_source(filename), options=options, name_expressions=names)


@functools.lru_cache(maxsize=None)
def _function(filename: str, name: str, dtype: np.dtype, device_id: int) -> Any:
    names = module_names(filename, dtype)
    return _module(filename, names, module_options(filename), device_id).get_function(name)


def get_function(filename: str, name: str, dtype: DTypeLike, device_id: int) -> Any:
    """The compiled kernel ``name`` from ``filename`` for the current device (cached: a call
    with compiled kernels does no lookups beyond one dictionary hit)."""
    return _function(filename, name, np.dtype(dtype), device_id)

