"""The NumPy backend: convolution as a batched matrix product over unrolled windows.

For a chunk of the batch (and, for large layers, of the first output axis) the channels-first
padded input is unrolled into ``cols[g, (c, *k), (n, *out)]`` (im2col; the windows come from a
strided view, so the only copy is the unrolling itself, in runs along the input's last axis) and
the filters ``(g, co, (c, *k))`` multiply it with one ``numpy.matmul``, which runs on BLAS and
lands in the output's own channels-first order. No Python loop touches pixels, channels or
single batch elements; the chunk loop only keeps the temporaries under
:func:`gpuconv.config.get_cpu_workspace` (and near the cache's size; an image too large for
it is padded by windows of rows). For few filters the shifted GEMM (``gemm_shifted``) unrolls
every kernel axis but the last and makes the last axis's taps rows of the filter matrix,
summing each tap's products shifted by its offset. 1x1 layers multiply the input as it lies;
depthwise layers run multiply-adds over views, on worker threads.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import sys

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import algorithms, tuning, workers
from .activation import activate
from .config import cpu_workspace, get_autotune, get_cpu_threads, get_cpu_workspace
from .scratch import Take, einsum_buffer_bytes, scratch, numpy_settings
from .device import cpu_model
from .dtypes import accumulator_dtype
from .geometry import ConvGeometry
from .layout import pad_spatial, pointwise_view, unpad_adjoint
from typing import Iterator, List, Optional, Tuple
from ._typing import Array, DTypeLike


#: Chunks of the columns GEMM keep their unrolled windows near this size (or the workspace, if
#: smaller), so that the unrolling copy and the matmul that reads it stay in cache.
GEMM_CHUNK_BYTES = 16 * 2**20

#: Products of fewer columns run BLAS below its rate: OpenBLAS sgemm 512 x 4608 @ 4608 x N on
#: the 2-vCPU Xeon, 249 / 252 / 272 GFLOP/s for N = 196 / 392 / 784. A GEMM chunk of one
#: image whose rows would make them narrower counts only its windows against the cap (its
#: products go into the output): vgg16_conv4_2 then multiplies whole images, 17.9 -> 16.8 ms
#: (medians of 10). Wider products keep the cap: deepbench_speech's whole-image chunks (10.8
#: MiB of windows, 26939 columns) ran 5.4 -> 6.0 ms against two of 13640 columns. The cap then
#: counts float32 items, so that wider dtypes keep float32's products: vgg16_conv4_2 in float64
#: had three chunks of 280 columns, 35.6 -> 32.5 ms whole (complex128 131 -> 120) on the Zen 5.
GEMM_MIN_COLUMNS = 1024

#: Kernels a filter from which a data adjoint runs as forward convs by stride phase
#: (adjoint._by_phases): fewer make the GEMM a matrix-vector product over unrolled windows.
DATA_ADJOINT_AS_CONV_MIN_CHANNELS = 16


#: A zero-padded copy of at most this many bytes is zeroed whole before its interior is
#: copied in, one pass where zeroing each border is one per side and axis (the 2-vCPU Zen 5
#: dev machine, float32, us: 8 x 18^2 fill 0.37 against four borders 1.58; 16 x 66^2 4.3
#: against 2.7).
PAD_FILL_MAX_BYTES = 64 * 2**10


def _padded(xs: Array, geom: ConvGeometry, dtype: DTypeLike, channels_last: bool,
            take: Take) -> Array:
    """The batch chunk ``xs`` (a channels-first view) padded and cast to ``dtype``: a C-ordered
    array ``(n, C, *padded)``, or ``(n, *padded, C)`` when ``channels_last``, from ``take`` for
    zero padding (the other modes come from ``numpy.pad``)."""
    if channels_last:
        xs = np.moveaxis(xs, 1, -1)
    if geom.padding_mode == "zeros":
        spatial_axes = range(1, 1 + geom.rank) if channels_last else range(2, 2 + geom.rank)
        shape = list(xs.shape)
        interior = [slice(None)] * xs.ndim
        for ax, b, a in zip(spatial_axes, geom.pad_before, geom.pad_after):
            interior[ax] = slice(b, b + shape[ax])
            shape[ax] += b + a
        xpad = take(tuple(shape), dtype)
        if xpad.nbytes <= PAD_FILL_MAX_BYTES:
            xpad.fill(0)
        else:  # zero the borders only: the interior is copied next
            for ax, b, a in zip(spatial_axes, geom.pad_before, geom.pad_after):
                if b:
                    xpad[(slice(None),) * ax + (slice(0, b),)] = 0
                if a:
                    xpad[(slice(None),) * ax + (slice(shape[ax] - a, None),)] = 0
        xpad[tuple(interior)] = xs
        return xpad
    # numpy.pad keeps a Fortran-ordered input's order: the chunk's users want C order
    return np.ascontiguousarray(pad_spatial(np, xs.astype(dtype, copy=False), geom,
                                            channels_last))


def _chunks(geom: ConvGeometry, itemsize: int, padded_copies: int,
            cap: Optional[int] = None, per_position: Optional[int] = None,
            alone: Optional[int] = None) -> Tuple[int, int]:
    """(batch elements, first-axis output rows) per chunk so temporaries fit the workspace:
    ``padded_copies`` of the input, and ``per_position`` items for each output position (by
    default the GEMM's: its unrolled windows, its matmul result, and the result reordered into
    (C_out, ...) order). ``alone``, if given, is what a position of a chunk of one image
    takes instead (the GEMM's products then go straight into the output: its windows only),
    used where row chunks by ``per_position`` would make products narrower than
    :data:`GEMM_MIN_COLUMNS`."""
    O = geom.out_spatial
    per_row = _row_bytes(geom, itemsize, per_position)
    per_image = itemsize * padded_copies * geom.C_in * math.prod(geom.padded_spatial)
    per_n = per_image + O[0] * per_row
    workspace = get_cpu_workspace()
    budget = workspace if cap is None else min(cap, workspace)
    if per_n <= budget:
        return _balanced(geom.N, budget // per_n), O[0]
    rows = _rows_per_chunk(O[0], per_image, per_row, cap)
    if alone is not None and rows * math.prod(O[1:]) < GEMM_MIN_COLUMNS:
        # the cap counts float32 items here: wider dtypes keep float32's columns a product
        wide = None if cap is None else cap * max(1, itemsize // 4)
        rows = _rows_per_chunk(O[0], per_image, _row_bytes(geom, itemsize, alone), wide)
    return 1, rows


def _row_bytes(geom: ConvGeometry, itemsize: int, per_position: Optional[int]) -> int:
    """Bytes of temporaries for one first-axis output row: ``per_position`` items (default:
    the GEMM's, see :func:`_chunks`) for each of its output positions."""
    if per_position is None:
        per_position = geom.groups * geom.terms_per_output + 2 * geom.C_out
    return itemsize * math.prod(geom.out_spatial[1:]) * per_position


def _rows_per_chunk(total: int, fixed: int, per_row: int, cap: Optional[int]) -> int:
    """Rows per chunk of ``total`` where a chunk takes ``fixed`` bytes and ``per_row`` a row,
    within the workspace (and ``cap``, if given: the rule below)."""
    workspace = get_cpu_workspace()
    budget = workspace if cap is None else min(cap, workspace)
    rows = (budget - fixed) // per_row
    if cap is not None and rows * per_row < budget // 8:
        # ``cap`` keeps a chunk near the cache. When an image's input copies alone fill it,
        # what it leaves for rows makes chunks so small that each chunk's Python and call
        # overheads dominate (float64 mbv2_dw_3x3s2_c96, 20 MiB of phases an image: one
        # output row a chunk, 26 ms against float32's 2.7): then the rows' own temporaries
        # and the input rows they read go by the cap, within the workspace always. Not
        # sooner: vgg16_conv1_2's GEMM (5 rows, 3 MiB of columns, by the first rule) took
        # 33.0 / 48.5 ms (min / median of 15) against 35.7 / 53.1 in 23-row chunks.
        rows = max(rows, min(budget // (per_row + fixed // total),
                             (workspace - fixed) // per_row))
    return _balanced(total, rows)


def _balanced(total: int, most: int) -> int:
    """Chunk length for ``total`` items, at most ``most`` a chunk, as few chunks as that allows
    and as equal as they can be (8 images in at most 6 a chunk: 4 + 4, not 6 + 2)."""
    if total <= 1:
        return 1
    count = -(-total // max(1, min(total, most)))
    return -(-total // count)


def _product(a: Array, b: Array, out: Array) -> Array:
    """``np.matmul(a, b, out=out)``, or where the inner dimension is 1 the same products by a
    broadcast multiply: NumPy's matmul runs an inner dimension of 1 ~14x slower than one of 2
    (float32, 31 x k @ k x 65536 on the 2-vCPU Zen 5 dev machine: 1.84 ms for k = 1, 0.13 for
    k = 2; the multiply 0.12), which made a 1-D single-channel layer's shifted GEMM (its
    products m x 1 @ 1 x n) 15x slower than the GEMM."""
    if a.shape[-1] == 1:
        return np.multiply(a, b, out=out)
    return np.matmul(a, b, out=out)


def _weight_matrices(w: Array, geom: ConvGeometry, ct: np.dtype) -> Array:
    """Filters as G matrices ``(filters per group) x (C_in/groups * taps)``, columns ordered
    ``(c, *k)`` to match the rows of the unrolled input (:func:`_unroll_columns`)."""
    G, Cog, Cg, Kp = (geom.groups, geom.C_out_per_group, geom.C_in_per_group,
                      math.prod(geom.kernel))
    return np.ascontiguousarray(np.asarray(w, dtype=ct).reshape(G, Cog, Cg * Kp))


def _chunk_plan(x_cf: Array, geom: ConvGeometry, ct: np.dtype, padded_copies: int,
                channels_last: bool, cap: Optional[int] = None, phases: bool = False,
                per_position: Optional[int] = None, unpadded: bool = False,
                windows: bool = False, alone: Optional[int] = None
                ) -> Iterator[Tuple[int, int, Array, int, Tuple[int, ...], int]]:
    """Yield ``(n0, n, xpad, r0, rows, r_in)`` per chunk: batch elements n0:n0+n (padded and
    cast: ``xpad``, channels-last when ``channels_last``, split into its stride phases
    (:func:`_phase_split`) when ``phases`` and the layer is strided; with ``unpadded`` and
    zero padding, the caller's channels-first view itself, uncopied) and first-axis output
    rows r0:r0+rows[0], which are output rows r_in:r_in+rows[0] of ``xpad``. That is r0 when
    ``xpad`` holds whole images; with ``windows``, where one image's padded input would take
    more than half the workspace (zero padding), ``xpad`` holds only the padded input rows of
    its chunk's output rows (:func:`_window_rows`) and r_in is 0.
    ``cap`` lowers the workspace budget for this plan; ``per_position`` and ``alone``: see
    :func:`_chunks`.
    ``xpad`` is scratch memory (:mod:`gpuconv.scratch`): a caller must not use it once it
    asks for the next chunk."""
    O = geom.out_spatial
    split = phases and max(geom.stride) > 1
    copies = padded_copies + split
    if windows and geom.padding_mode == "zeros" and \
            _image_bytes(geom, ct.itemsize, copies) > get_cpu_workspace() // 2:
        yield from _window_plan(x_cf, geom, ct, copies, split, cap,
                                per_position if alone is None else alone, channels_last,
                                unpadded)
        return
    nb, rb = _chunks(geom, ct.itemsize, copies, cap, per_position, alone)
    for n0 in range(0, geom.N, nb):
        with scratch() as take:
            if unpadded and geom.padding_mode == "zeros":
                xpad = x_cf[n0:n0 + nb]
            elif split and geom.padding_mode == "zeros" and not channels_last:
                xpad = _phase_split(x_cf[n0:n0 + nb], geom, take, ct, geom.pad_before,
                                    geom.padded_spatial)
            else:
                xpad = _padded(x_cf[n0:n0 + nb], geom, ct, channels_last, take)
                if split:
                    xpad = _phase_split(xpad, geom, take)
            for r0 in range(0, O[0], rb):
                yield n0, xpad.shape[0], xpad, r0, (min(O[0], r0 + rb) - r0,) + O[1:], r0
            del xpad


def _image_bytes(geom: ConvGeometry, itemsize: int, copies: int) -> int:
    """Bytes of ``copies`` padded copies of one image (stride phases round each axis up to a
    multiple of the stride)."""
    padded = [-(-p // s) * s for p, s in zip(geom.padded_spatial, geom.stride)]
    return itemsize * copies * geom.C_in * math.prod(padded)


def _window_rows(geom: ConvGeometry, itemsize: int, copies: int, cap: Optional[int],
                 per_position: Optional[int]) -> int:
    """Output rows per chunk of :func:`_window_plan`: the chunk's padded input rows (stride
    rows an output row, plus the kernel's reach), ``copies`` of them, and ``per_position``
    (see :func:`_chunks`) for each of its output positions within the budget."""
    fixed, per_row = _window_costs(geom, itemsize, copies, per_position)
    return _rows_per_chunk(geom.out_spatial[0], fixed, per_row, cap)


def _window_costs(geom: ConvGeometry, itemsize: int, copies: int,
                  per_position: Optional[int]) -> Tuple[int, int]:
    """(bytes a window chunk takes whatever its rows, bytes each of its output rows adds):
    ``copies`` of the padded input rows the chunk reads (stride rows an output row, plus the
    kernel's reach) and ``per_position`` (see :func:`_chunks`) for each output position."""
    S, K, Dl = geom.stride, geom.kernel, geom.dilation
    per_row = _row_bytes(geom, itemsize, per_position)
    in_row = _image_bytes(geom, itemsize, copies) // (-(-geom.padded_spatial[0] // S[0]) * S[0])
    reach = (K[0] - 1) * Dl[0] + 1 + S[0]  # beyond stride rows an output row; phase rounding
    return in_row * reach, in_row * S[0] + per_row


def _window_plan(x_cf: Array, geom: ConvGeometry, ct: np.dtype, copies: int, split: bool,
                 cap: Optional[int], per_position: Optional[int], channels_last: bool = False,
                 unpadded: bool = False
                 ) -> Iterator[Tuple[int, int, Array, int, Tuple[int, ...], int]]:
    """:func:`_chunk_plan` by windows: one image and a few output rows a chunk, each with only
    the padded input rows those rows read, zero-padded (and split into stride phases when
    ``split``; or channels-last, never both) straight from the caller's array; with
    ``unpadded``, that image of the caller's array itself, its chunk's user copying only
    those rows (``copies`` of them)."""
    O, S, K, Dl = geom.out_spatial, geom.stride, geom.kernel, geom.dilation
    rb = _window_rows(geom, ct.itemsize, copies, cap, per_position)
    if unpadded:
        for n0 in range(geom.N):
            for r0 in range(0, O[0], rb):
                yield n0, 1, x_cf[n0:n0 + 1], r0, (min(O[0], r0 + rb) - r0,) + O[1:], r0
        return
    # the window is padded by itself; ``unit`` splits it into one phase when not ``split``
    unit = geom if split else dataclasses.replace(geom, stride=(1,) * geom.rank)
    for n0 in range(geom.N):
        for r0 in range(0, O[0], rb):
            rows = (min(O[0], r0 + rb) - r0,) + O[1:]
            first = r0 * S[0]  # the window's first padded input row
            extent = (rows[0] - 1) * S[0] + (K[0] - 1) * Dl[0] + 1
            with scratch() as take:
                if channels_last:
                    xpad = _window_last(x_cf[n0], geom, first, extent, ct, take)
                else:
                    xpad = _phase_split(x_cf[n0:n0 + 1], unit, take, ct,
                                        (geom.pad_before[0] - first,) + geom.pad_before[1:],
                                        (extent,) + geom.padded_spatial[1:])
                if not (split or channels_last):  # one phase: (1, C, 1, .., 1, *w) -> (1, C, *w)
                    xpad = xpad.reshape(xpad.shape[:2] + xpad.shape[2 + geom.rank:])
                yield n0, 1, xpad, r0, rows, 0
                del xpad


def _window_last(image: Array, geom: ConvGeometry, first: int, extent: int, ct: np.dtype,
                 take: Take) -> Array:
    """Padded input rows first:first+extent of one channels-first ``image`` ``(C, *spatial)``
    (zero padding), as a channels-last window ``(1, extent, *padded[1:], C)`` of dtype
    ``ct``."""
    pb, size = geom.pad_before, geom.in_spatial
    window = take((1, extent) + geom.padded_spatial[1:] + (geom.C_in,), ct)
    window[...] = 0
    lo, hi = max(0, first - pb[0]), min(size[0], first - pb[0] + extent)
    if hi > lo:
        inner = tuple(slice(b, b + m) for b, m in zip(pb[1:], size[1:]))
        rows = slice(lo + pb[0] - first, hi + pb[0] - first)
        window[(0, rows) + inner] = np.moveaxis(image[:, lo:hi], 0, -1)
    return window


#: Unrolled items (windows' terms over every output position of the layer) from which a
#: strided layer's unrolling reads its input split into stride phases. Below, the split's
#: Python (a gather and a border zeroing per phase, a copy per phase) costs more than the
#: strided copies it makes contiguous. The 2-vCPU Zen 5 dev machine, float32, stride 2, 3x3
#: unless said, min of 5, us, phases / one strided copy: 2 x 3 -> 8 on 32^2 (14 K items)
#: 105 / 48, 3 -> 16 on 64^2 109 / 54, 16 -> 32 on 64^2 (147 K) 193 / 134, 128 -> 128 on
#: 28^2 (226 K) 474 / 400, 64 -> 64 on 56^2 (452 K) 505 / 455, 32 -> 64 on 112^2 (903 K)
#: 835 / 822, 3 -> 64 7x7 on 160^2 (941 K) 758 / 824, 16 -> 32 on 224^2 (1.8 M) 1081 / 1229.
PHASED_MIN_ITEMS = 2**19


def _phased(geom: ConvGeometry) -> bool:
    """Whether the columns unrolling reads a strided layer's input split into its stride
    phases (:func:`_phase_split`): then every copied run is contiguous instead of every
    stride-th element, which halved the unrolling of the stride-2 stem and speech layers
    (0.77 -> 0.42 ms and 1.16 -> 0.53 ms per image). Undilated layers only (a dilated tap's
    phase is not a function of the tap alone), of at least :data:`PHASED_MIN_ITEMS`."""
    return (max(geom.stride) > 1 and max(geom.dilation) == 1
            and geom.positions * geom.groups * geom.terms_per_output >= PHASED_MIN_ITEMS)


def _reads_caller(x_cf: Array, geom: ConvGeometry, ct: np.dtype) -> bool:
    """Whether a GEMM's unrolling reads the caller's channels-first array as it lies, with no
    padded copy first: a layer without padding whose input is already in the accumulator
    dtype, with contiguous rows (a channels-last caller's rows are strided: copied, they make
    the unrolling's runs contiguous), not read by stride phases. conv1d_k3_c128to384 (6.6 MB
    of input) and conv3d_3x3x3_c64 (67 MB) are such layers."""
    return (x_cf.dtype == ct and not any(geom.pad_before + geom.pad_after)
            and x_cf.strides[-1] == x_cf.itemsize and not _phased(geom))


def _phase_split(src: Array, geom: ConvGeometry, take: Take, dtype: Optional[DTypeLike] = None,
                 offset: Optional[Tuple[int, ...]] = None,
                 padded: Optional[Tuple[int, ...]] = None) -> Array:
    """A window of the padded input, ``padded`` long per axis (default: ``src``'s size), as
    ``ph (n, C, *stride, *ceil(padded / stride))`` with ``ph[:, :, *a, *i] = window[:, :, *(i
    * stride + a)]``, cast to ``dtype``. ``src`` ``(n, C, ...)`` is the padded input, or the
    unpadded one with zero padding around it: ``offset`` is where ``src``'s first element sits
    in the window, per axis (the padding before it, less the window's start; default 0), so
    an unpadded input is split in one copy instead of two. Phases no tap reads (no tap k with
    k * dilation = a mod stride) are left out; a phase's positions outside ``src`` are zeros
    (the padding, and the positions that round an axis up to a multiple of the stride)."""
    S, K, Dl, D = geom.stride, geom.kernel, geom.dilation, geom.rank
    n, C, size = src.shape[0], src.shape[1], src.shape[2:]
    offset = (0,) * D if offset is None else offset
    padded = size if padded is None else padded
    E = tuple(-(-p // s) for p, s in zip(padded, S))
    ph = take((n, C) + S + E, src.dtype if dtype is None else dtype)
    used = [sorted({j * d % s for j in range(k)}) for k, d, s in zip(K, Dl, S)]
    for a in itertools.product(*used):
        _strided_fill(ph[(slice(None), slice(None)) + a], src,
                      tuple(a_i - o for a_i, o in zip(a, offset)), S)
    return ph


def _strided_fill(dst: Array, src: Array, firsts: Tuple[int, ...], steps: Tuple[int, ...]) -> None:
    """``dst[:, :, *t] = src[:, :, *(firsts + steps * t)]`` for every position ``t`` of
    ``dst`` ``(n, C, ...)``, zero where that falls outside ``src``: one strided copy of the
    positions inside and a fill of the borders around them."""
    inside, taken = [], []  # per axis: dst positions, and src positions, of the input
    for f, s, m, e in zip(firsts, steps, src.shape[2:], dst.shape[2:]):
        i0 = min(e, max(0, -(f // s)))  # the first t with f + s * t >= 0
        first = f + i0 * s
        count = max(0, min(e - i0, -(-(m - first) // s)))
        inside.append(slice(i0, i0 + count))
        taken.append(slice(first, first + (count - 1) * s + 1, s) if count else slice(0, 0))
    lead = (slice(None), slice(None))
    into, values = dst[lead + tuple(inside)], src[lead + tuple(taken)]
    # every other element along the last axis: as pairs (see _gather_pairs), those whose
    # partner lies inside src; a last one without a partner is copied on its own
    count, first = inside[-1].stop - inside[-1].start, taken[-1].start
    paired = min(count, (src.shape[-1] - first) // 2) if steps[-1] == 2 else 0
    if paired and _gather_pairs(into[..., :paired], src[lead + tuple(taken[:-1])][
            ..., first:first + 2 * paired]):
        into[..., paired:] = values[..., paired:]
    else:
        into[...] = values
    for ax, (cut, e) in enumerate(zip(inside, dst.shape[2:])):  # zero the borders around it
        for border in (slice(0, cut.start), slice(cut.stop, e)):
            if border.stop > border.start:
                dst[(slice(None),) * (2 + ax) + (border,)] = 0


#: Unsigned integers twice an element's width and its own, by element size (bytes): see
#: :func:`_gather_pairs`.
_PAIR_INTEGERS = {2: (np.uint32, np.uint16), 4: (np.uint64, np.uint32)}


def _gather_pairs(dst: Array, src: Array) -> bool:
    """``dst[...] = src[..., ::2]`` where ``src``'s last axis is contiguous and twice
    ``dst``'s, as a cast: each pair of elements read as one unsigned integer of twice their
    width, of which the cast keeps the low half, the pair's first element on a little-endian
    machine. NumPy runs a cast with contiguous reads and a strided copy element by element:
    float32, 2 x 96 x 112 rows of 112 to their 56 even elements, 0.26 -> 0.15 ms (1.7x); with
    every other row as well 0.16 -> 0.11. Bits are copied unchanged (no float conversion, NaN
    payloads kept). Returns False, having done nothing, where it does not apply (other
    element sizes, a byte-swapped or cast copy, a NumPy that cannot view such an array)."""
    kinds = _PAIR_INTEGERS.get(src.dtype.itemsize)
    if (kinds is None or sys.byteorder != "little" or dst.dtype != src.dtype
            or not src.dtype.isnative or src.dtype.hasobject or src.dtype.fields is not None
            or src.strides[-1] != src.itemsize or src.shape[-1] != 2 * dst.shape[-1]):
        return False
    wide, narrow = kinds
    try:
        pairs, low = src.view(wide), dst.view(narrow)
    except ValueError:  # NumPy < 1.23 views only C-contiguous arrays as a wider type
        return False
    np.copyto(low, pairs, casting="unsafe")
    return True


def _grouped_rows(y_block: Array, geom: ConvGeometry, ct: np.dtype, take: Take) -> Array:
    """A block ``(n, C_out, *rows)`` of conv's output as ``(G, n * prod(rows), C_out/groups)``
    (a copy from ``take``)."""
    n, rows = y_block.shape[0], y_block.shape[2:]
    y = y_block.reshape((n, geom.groups, geom.C_out_per_group) + rows)
    y = np.moveaxis(np.moveaxis(y, 1, 0), 2, -1)  # (G, n, *rows, Cog)
    rows_copy = take(y.shape, ct)
    np.copyto(rows_copy, y)
    return rows_copy.reshape(geom.groups, n * math.prod(rows), geom.C_out_per_group)


def conv_forward(x_cf: Array, w: Array, bias: Array, geom: ConvGeometry, activation: Optional[str],
                 out_cf: Array, algorithm: str = "auto") -> None:
    """Fill ``out_cf`` ``(N, C_out, *out_spatial)`` with the convolution of ``x_cf``.

    ``x_cf``: ``(N, C_in, *spatial)`` NumPy array or view (any strides, any accepted dtype);
    ``w``: ``(C_out, C_in // groups, *kernel_size)`` filters, already flipped for ``flip=True``;
    ``bias``: ``(C_out,)`` or None. Sums are carried in the accumulator dtype of ``out_cf``.
    ``algorithm``: see :mod:`gpuconv.algorithms`.
    """
    ct = accumulator_dtype(out_cf.dtype)
    if algorithm == "auto" and get_autotune():
        def forward(xs: Array, ws: Array, bs: Array, act: Optional[str], out: Array,
                    name: str) -> None:
            conv_forward(xs, ws, bs, geom, act, out, name)
        algorithm = tuning.pick(
            "cpu", cpu_model(), geom, out_cf.dtype,
            lambda name: forward(x_cf, w, bias, activation, out_cf, name),
            agreement=lambda: tuning.Agreement(np, forward, "cpu", geom, x_cf, w, bias,
                                               activation, out_cf))
    algorithm = algorithms.choose("cpu", algorithm, geom, out_cf.dtype)
    if algorithm == "depthwise":
        return _depthwise_forward(x_cf, w, bias, geom, activation, out_cf, ct)
    if algorithm == "pointwise":
        return _pointwise_forward(x_cf, w, bias, geom, activation, out_cf, ct)
    if algorithm == "gemm_shifted":
        return _gemm_shifted_forward(x_cf, w, bias, geom, activation, out_cf, ct)
    return _gemm_forward(x_cf, w, bias, geom, activation, out_cf, ct)


def _unroll_columns(xpad: Array, geom: ConvGeometry, r0: int, rows: Tuple[int, ...],
                    ct: np.dtype, take: Take) -> Array:
    """``cols[g, (c, *k), (n, *rows)]`` for output rows r0:r0+rows[0] of the channels-first
    padded chunk ``xpad`` ``(n, C, *padded)`` (split into stride phases when :func:`_phased`):
    each row of the matrix is one (channel, tap) seen from every output position, copied from
    runs along the input's last axis."""
    G, Cg, D, K, S = geom.groups, geom.C_in_per_group, geom.rank, geom.kernel, geom.stride
    n = xpad.shape[0]
    cols = take((G, Cg) + K + (n,) + rows, ct)
    s_n, s_c = xpad.strides[0], xpad.strides[1]
    if _phased(geom):
        # tap k = a + q * stride of phase a reads phase position (output + q): one copy per
        # phase, of the taps that phase holds, runs contiguous in source and destination
        s_sp = xpad.strides[2 + D:]
        for a in itertools.product(*[range(min(s, k)) for s, k in zip(S, K)]):
            taps = tuple(-(-(k - i) // s) for k, i, s in zip(K, a, S))
            start = xpad[(slice(None), slice(None)) + a + (slice(r0, None),)]
            src = as_strided(start, shape=(G, Cg) + taps + (n,) + rows,
                             strides=(Cg * s_c, s_c) + s_sp + (s_n,) + s_sp, writeable=False)
            dst = cols[(slice(None), slice(None)) + tuple(slice(i, None, s) for i, s in zip(a, S))]
            np.copyto(dst, src)
    else:
        s_sp = xpad.strides[2:]
        pos = tuple(s_sp[i] * S[i] for i in range(D))
        tap = tuple(s_sp[i] * geom.dilation[i] for i in range(D))
        start = xpad[:, :, r0 * S[0]:]
        np.copyto(cols, as_strided(start, shape=cols.shape, writeable=False,
                                   strides=(Cg * s_c, s_c) + tap + (s_n,) + pos))
    return cols.reshape(G, Cg * math.prod(K), n * math.prod(rows))


def _as_matrices(block: Array, geom: ConvGeometry) -> Optional[Array]:
    """The output block ``(1, C_out, *rows)`` as a view ``(G, C_out/groups, positions)`` that
    matmul can write into, or None when its strides do not allow one (then a temporary is
    written and copied)."""
    return _matrix_view(block, (geom.groups, geom.C_out_per_group, math.prod(block.shape[2:])))


def _view_of_shape(a: Array, shape: Tuple[int, ...]) -> Optional[Array]:
    """``a`` as a view of ``shape``, never a copy: None where no view has that shape."""
    try:
        return a.reshape(shape, copy=False)  # NumPy >= 2.1: raises where it would copy
    except TypeError:  # an older NumPy: assigning a shape (deprecated in 2.5) never copies
        view = a.view()
        try:
            view.shape = shape
        except (AttributeError, ValueError):  # no view of that shape; no shape of that size
            return None
        return view
    except ValueError:
        return None


def _split_view(a: Array, shape: Tuple[int, ...]) -> Array:
    """``a`` with an axis split (a view always has that shape): never a copy."""
    view = _view_of_shape(a, shape)
    assert view is not None, (a.shape, a.strides, shape)
    return view


def _matrix_view(block: Array, shape: Tuple[int, ...]) -> Optional[Array]:
    """``block`` as a view of ``shape`` (a stack of matrices) that BLAS can write into, or
    None."""
    view = _view_of_shape(block, shape)
    if view is None:
        return None
    # BLAS writes a matrix whose rows are contiguous and do not overlap; NumPy would run any
    # other output through its own loops, far slower than a copy
    step = view.itemsize
    if view.strides[-1] != step or min(view.strides[:-1]) < shape[-1] * step:
        return None
    return view


def _gemm_forward(x_cf: Array, w: Array, bias: Array, geom: ConvGeometry,
                  activation: Optional[str], out_cf: Array, ct: np.dtype) -> None:
    """Windows as matrix columns: ``filters (G, C_out/G, C_in/G * taps) @ cols (G, C_in/G *
    taps, positions)``. The product is already in channels-first order, so for one image per
    chunk it is written straight into the output; the unrolled rows are runs of output
    positions (contiguous in the input for stride 1), copied from a channels-first padded
    chunk, which a channels-first caller's data needs no transpose to become."""
    G, Cog = geom.groups, geom.C_out_per_group
    wmat = _weight_matrices(w, geom, ct)
    b = None if bias is None else np.asarray(bias, dtype=ct).reshape(G, Cog, 1)
    copies = 1 if geom.padding_mode == "zeros" else 2
    # a chunk of one image multiplies straight into a channels-first output of dtype ct: its
    # rows then cost only their unrolled windows (see GEMM_MIN_COLUMNS)
    into_output = out_cf.dtype == ct and _as_matrices(out_cf[:1], geom) is not None
    for n0, n, xpad, r0, rows, r_in in _chunk_plan(x_cf, geom, ct, copies, channels_last=False,
                                                   cap=GEMM_CHUNK_BYTES, phases=_phased(geom),
                                                   windows=True,
                                                   unpadded=_reads_caller(x_cf, geom, ct),
                                                   alone=geom.groups * geom.terms_per_output
                                                   if into_output else None):
        with scratch() as take:
            cols = _unroll_columns(xpad, geom, r_in, rows, ct, take)
            del xpad
            block = out_cf[n0:n0 + n, :, r0:r0 + rows[0]]
            direct = _as_matrices(block, geom) if n == 1 and into_output else None
            res = _product(wmat, cols, out=direct if direct is not None else
                           take((G, Cog, cols.shape[-1]), ct))
            del cols
            if b is not None:
                res += b
            activate(np, res, activation)
            if direct is None:  # (G, Cog, (n, *rows)) -> (n, C_out, *rows)
                block[...] = np.moveaxis(res.reshape((geom.C_out, n) + rows), 1, 0)


#: Chunks of :func:`_gemm_shifted_forward` keep their unrolled rows and products near this
#: size (or the workspace, if smaller). Measured on the 2-vCPU Xeon dev machine (float32, min of
#: 20 calls, ms, caps of 1 / 2 / 4 / 8 / 16 / 32 MiB): r50_res2_3x3 6.4 / 3.9 / 3.6 / 3.0 / 3.2 /
#: 3.1, vgg16_conv1_2 31.8 / 29.2 / 24.2 / 22.7 / 24.4 / 21.4; conv3d 266 at 8 and 16.
GEMM_SHIFTED_CHUNK_BYTES = 8 * 2**20


def _unroll_rows(xpad: Array, geom: ConvGeometry, r0: int, rows: Tuple[int, ...],
                 ct: np.dtype, take: Take) -> Array:
    """``cols[g, (c, *k[:-1]), (n, *rows[:-1], p)]`` for output rows r0:r0+rows[0] of the
    channels-first padded chunk ``xpad`` ``(n, C, *padded)`` of a layer of stride 1 along its
    last axis: :func:`_unroll_columns` for every kernel axis but the last, each copied run a
    whole padded input row (p over the padded last axis). A 1-D layer unrolls nothing: its
    rows are the chunk's own positions, one run per (image, channel)."""
    G, Cg, D, K, S, Dl = (geom.groups, geom.C_in_per_group, geom.rank, geom.kernel,
                          geom.stride, geom.dilation)
    n = xpad.shape[0]
    extent = rows[-1] + (K[-1] - 1) * Dl[-1]
    s_n, s_c, s_sp = xpad.strides[0], xpad.strides[1], xpad.strides[2:]
    shape = (G, Cg) + K[:-1] + (n,) + rows[:-1] + (extent,)
    strides = ((Cg * s_c, s_c) + tuple(s_sp[i] * Dl[i] for i in range(D - 1)) + (s_n,)
               + tuple(s_sp[i] * S[i] for i in range(D - 1)) + (s_sp[-1],))
    start = xpad[:, :, r0 * S[0]:] if D > 1 else xpad[:, :, r0:]
    cols = take(shape, ct)
    np.copyto(cols, as_strided(start, shape=shape, strides=strides, writeable=False))
    return cols.reshape(G, Cg * math.prod(K[:-1]), n * math.prod(rows[:-1]) * extent)


def _shifted_filters(w: Array, geom: ConvGeometry, ct: np.dtype) -> Array:
    """Filters for :func:`_gemm_shifted_forward`: ``(G, (j, f), (c, *k[:-1]))``, tap j of the
    kernel's last axis of filter f a row of its own, columns matching :func:`_unroll_rows`."""
    G, Cog, Cg, K = geom.groups, geom.C_out_per_group, geom.C_in_per_group, geom.kernel
    wg = np.asarray(w, dtype=ct).reshape((G, Cog, Cg) + K)
    wg = np.moveaxis(wg, -1, 1)  # (G, K[-1], Cog, Cg, *K[:-1])
    return np.ascontiguousarray(wg).reshape(G, K[-1] * Cog, Cg * math.prod(K[:-1]))


def _gemm_shifted_forward(x_cf: Array, w: Array, bias: Array, geom: ConvGeometry,
                          activation: Optional[str], out_cf: Array, ct: np.dtype) -> None:
    """Layers of stride 1 along the last axis: the windows unrolled along every kernel axis but
    the last (:func:`_unroll_rows`, 1/K[-1] of :func:`_gemm_forward`'s copy), the last axis's
    taps as K[-1] times the filters, ``(G, K[-1] * C_out/G, ...) @ cols`` taken at every padded
    position of the last axis, and output q the sum over taps j of tap j's product at q + j *
    dilation: K[-1] - 1 adds of shifted runs in place of tap 0's products, which are then
    copied into the output."""
    G, Cog, K, D, Dl = geom.groups, geom.C_out_per_group, geom.kernel, geom.rank, geom.dilation
    wmat = _shifted_filters(w, geom, ct)
    b = None if bias is None else np.asarray(bias, dtype=ct).reshape(G, Cog, 1)
    copies = 1 if geom.padding_mode == "zeros" else 2
    # per output position: its unrolled rows and products, taken at padded/out as many places
    # along the last axis
    widen = (geom.out_spatial[-1] + (K[-1] - 1) * Dl[-1]) / geom.out_spatial[-1]
    per_position = math.ceil(widen * G * (geom.C_in_per_group * math.prod(K[:-1])
                                          + K[-1] * Cog))
    for n0, n, xpad, r0, rows, r_in in _chunk_plan(x_cf, geom, ct, copies, channels_last=False,
                                                   cap=GEMM_SHIFTED_CHUNK_BYTES,
                                                   per_position=per_position, windows=True,
                                                   unpadded=_reads_caller(x_cf, geom, ct)):
        with scratch() as take:
            cols = _unroll_rows(xpad, geom, r_in, rows, ct, take)
            del xpad
            extent = rows[-1] + (K[-1] - 1) * Dl[-1]
            prod = _product(wmat, cols, out=take((G, K[-1] * Cog, cols.shape[-1]), ct))
            del cols
            # a group's products of tap j are one contiguous run over (filter, image, *rows,
            # p): output q of a row is the sum over taps j of tap j's product at q + j *
            # dilation, the same row's, so one add of the whole run shifted by j * dilation per
            # tap (1-D and contiguous: NumPy needs no buffers) sums every row; what spills
            # across a row's end lands only at positions past the output's (left out below).
            # The sums are taken in place of tap 0's products
            flat = prod.reshape(G, K[-1], -1)
            size = flat.shape[-1]
            for g in range(G):
                acc = flat[g, 0]
                for j in range(1, K[-1]):
                    acc[:size - j * Dl[-1]] += flat[g, j, j * Dl[-1]:]
                if b is not None:
                    by_filter = acc.reshape(Cog, -1)
                    by_filter += b[g]
                activate(np, acc, activation)
            del prod
            sums = flat[:, 0].reshape((G, Cog, n) + rows[:-1] + (extent,))[..., :rows[-1]]
            block = out_cf[n0:n0 + n, :, r0:r0 + rows[0]]
            target = _split_view(block, (n, G, Cog) + rows)  # (n, C_out, *rows): C_out split
            target[...] = np.moveaxis(sums, 2, 0)


def _pointwise_forward(x_cf: Array, w: Array, bias: Array, geom: ConvGeometry,
                       activation: Optional[str], out_cf: Array, ct: np.dtype) -> None:
    """1x1 kernels, no padding: each output position is a (filters x kernels) matrix times the
    input's channel vector there, so ``(G, Cog, Cg) @ (n, G, Cg, positions)`` per batch chunk
    with no unrolling (the stride is a view; channels-first x needs no copy at stride 1). For
    channels-last callers the same product runs on rows, ``(positions, Cg) @ (Cg, Cog)``, over
    the data as it lies and into the output as it lies (no transposes either way)."""
    G, Cog, Cg = geom.groups, geom.C_out_per_group, geom.C_in_per_group
    P = math.prod(geom.out_spatial)
    wm = np.asarray(w, dtype=ct).reshape(G, Cog, Cg)
    b = None if bias is None else np.asarray(bias, dtype=ct).reshape(G, Cog, 1)
    x_cf = pointwise_view(x_cf, geom)
    rows = geom.layout == "channels_last"
    if rows:
        wm = np.ascontiguousarray(wm.transpose(0, 2, 1))  # (G, Cg, Cog)
        b = None if b is None else b.reshape(G, 1, Cog)
    # per batch element: a copy of its input when it is not contiguous in the product's order,
    # the product, and the product reordered into the output's layout
    per_n = ct.itemsize * P * (geom.C_in + 2 * geom.C_out)
    nb = max(1, min(geom.N, get_cpu_workspace() // per_n))
    for n0 in range(0, geom.N, nb):
        block = out_cf[n0:n0 + nb]
        n = block.shape[0]
        with scratch() as take:
            if rows:
                xs = np.asarray(np.moveaxis(x_cf[n0:n0 + nb], 1, -1), dtype=ct)  # (n, *out, C)
                xs = xs.reshape(-1, G, Cg).transpose(1, 0, 2)                    # (G, n*P, Cg)
                out_rows = np.moveaxis(block, 1, -1)                           # (n, *out, C_out)
                direct = _matrix_view(out_rows, (1, n * P, Cog)) if G == 1 and \
                    block.dtype == ct else None
                res = _product(xs, wm, out=direct if direct is not None else
                               take((G, n * P, Cog), ct))                       # (G, n*P, Cog)
            else:  # straight into the output where its layout allows (a copy less)
                xs = np.asarray(x_cf[n0:n0 + nb], dtype=ct).reshape(-1, G, Cg, P)
                direct = _matrix_view(block, (n, G, Cog, P)) if block.dtype == ct else None
                res = _product(wm, xs, out=direct if direct is not None else
                               take((n, G, Cog, P), ct))
            if b is not None:
                res += b
            activate(np, res, activation)
            if direct is None and not rows:
                block[...] = res.reshape(block.shape)
            elif direct is None:
                out_rows[...] = res.transpose(1, 0, 2).reshape(out_rows.shape)


#: Depthwise chunks stay under this many bytes of temporaries (or the workspace, if smaller),
#: per task: the passes over a chunk then come from cache rather than memory. 16 MiB against
#: 256 MiB (min of 8 interleaved calls, per-tap passes): float64 mbv2_dw_3x3_c144 15.3 -> 9.7 ms,
#: mbv2_dw_3x3s2_c96 23.4 -> 11.1 ms, float32 c96 7.3 -> 5.9 ms; 2-4 MiB chunks were slower
#: again (per-chunk overheads).
DEPTHWISE_CHUNK_BYTES = 16 * 2**20

#: Depthwise layers with fewer multiply-adds than this run on the calling thread alone, and a
#: task of a split has at least half of it: below that, waking a worker (~0.1-0.3 ms on the
#: 2-vCPU dev machines) costs about what it saves. On the EPYC (float32, medians of 40 calls,
#: one thread -> two): 1 x 32 x 112^2 (3.6 M) 1.2 -> 1.3 ms, 4 x 576 x 14^2 (4.1 M) 2.1 ->
#: 2.2, 1 x 64 x 112^2 (7.2 M) 2.9 -> 2.0, 2 x 144 x 56^2 (8.1 M) 3.8 -> 2.3. On the Xeon
#: (min / median of 25, thresholds 2^22 -> 2^21): 4 x 576 x 14^2 2.09/2.33 -> 1.71/1.91,
#: 1 x 32 x 112^2 2.68/3.13 -> 1.64/2.35, 1 x 96 x 56^2 (2.7 M) 1.43/2.05 -> 1.61/1.92;
#: 2^20 gained nothing more (4 x 960 x 7^2, 1.7 M: 1.09/1.58 -> 1.40/1.65).
DEPTHWISE_PARALLEL_MIN_MACS = 2**21

#: Bytes of the weights that :func:`_depthwise_rows` tiles along a block of output positions
#: (at most; a block is one position when a position's weights alone are more): they are read
#: once per output row, so they should stay in the core's cache.
DEPTHWISE_TILE_BYTES = 2**20


#: Output rows from this long on, channels-first depthwise layers take
#: :func:`_depthwise_slots` (see :func:`_depthwise_flat`).
DEPTHWISE_SLOTS_MIN_WIDTH = 24


def _depthwise_flat(geom: ConvGeometry) -> bool:
    """Which of the two depthwise methods runs a layer: :func:`_depthwise_slots` (one einsum
    over slots of the channels-first input, the output's rows as one run) for channels-first
    callers whose output rows are at least :data:`DEPTHWISE_SLOTS_MIN_WIDTH` long; else
    :func:`_depthwise_rows` (one einsum over a channels-last copy, runs of a row's positions
    times channels), whose runs stay long for short rows and which needs no transposes for a
    channels-last caller's data. On the 2-vCPU EPYC, two threads, float32, min / median of
    15 calls in the bench's pattern (ms, slots / rows): 2 x 144 ch 56x56 1.45/1.73 /
    1.64/2.06, 2 x 96 ch 112x112 stride 2 2.27/2.81 / 3.31/3.94, 1 x 16 ch 224x224 stride 2
    0.99/1.27 / 1.99/2.31, 2 x 64 ch 56x56 0.86/0.99 / 1.07/1.16, 4 x 32 ch 40x40 0.68/0.80 /
    0.90/0.99, 4 x 192 ch 28x28 0.92/1.08 / 1.02/1.16, 2 x 144 ch 56x56 stride 2 (rows of 28)
    1.53/1.88 / 1.85/2.20; 4 x 256 ch 24x24 1.29/1.49 / 1.27/1.60; 4 x 576 ch 14x14
    1.14/1.37 / 0.83/0.95, 8 x 384 ch 14x14 1.96/2.12 / 1.45/1.61, 4 x 960 ch 7x7 2.48/2.67 /
    0.72/0.94 (short rows: the slots' runs are one plane of 196 or 49 positions)."""
    return geom.layout == "channels_first" and geom.out_spatial[-1] >= DEPTHWISE_SLOTS_MIN_WIDTH


def _depthwise_parts(geom: ConvGeometry, threads: int) -> List[Tuple[slice, slice]]:
    """How a depthwise layer is shared among ``threads`` tasks: (images, input channels) per
    task, each a depthwise layer of its own, at most one per half of
    :data:`DEPTHWISE_PARALLEL_MIN_MACS`. Blocks of images when the batch divides evenly, else
    blocks of channels as well."""
    everything = [(slice(0, geom.N), slice(0, geom.C_in))]
    macs = geom.positions * geom.C_out * math.prod(geom.kernel)
    threads = min(threads, 2 * macs // max(1, DEPTHWISE_PARALLEL_MIN_MACS))
    if threads <= 1 or macs < DEPTHWISE_PARALLEL_MIN_MACS:
        return everything
    by_n = math.gcd(geom.N, threads)
    return [(ns, cs) for ns in _cuts(slice(0, geom.N), by_n)
            for cs in _cuts(slice(0, geom.C_in), threads // by_n)]


def _depthwise_forward(x_cf: Array, w: Array, bias: Array, geom: ConvGeometry,
                       activation: Optional[str], out_cf: Array, ct: np.dtype) -> None:
    """Filters of one kernel each (depthwise, with any multiplier C_out/C_in): multiply-adds
    over window views, vectorised over channels and positions (:func:`_depthwise_flat` says
    which); no unrolling, no matmul (a matmul with one kernel per filter would have an inner
    dimension of taps only). Blocks of images or channels run on :mod:`gpuconv.workers`
    threads (NumPy's passes use one core each), each within its share of the workspace."""
    flat = _depthwise_flat(geom)
    parts = _depthwise_parts(geom, get_cpu_threads())
    # each task's einsums take NumPy's own buffers too (NumPy < 2.3): its share leaves room
    # for them, unless they fill the whole share (then no chunk could keep within it)
    budget = max(1, get_cpu_workspace() // len(parts))
    numpy_own = einsum_buffer_bytes(ct.itemsize)
    if budget > numpy_own:
        budget -= numpy_own
    Cog = geom.C_out_per_group
    # a chunk is at least one output row of an image's channels: where that is more than a
    # task's budget, the task takes its channels a few at a time (16 threads sharing 1 MiB:
    # 64 KiB each, less than one 200-wide row of 32 channels, so one row took 1.2 MiB in all)
    usable = budget if flat else budget - budget // 8  # the einsum's tiles: an eighth at most
    per_channel = _depthwise_row_bytes(geom, ct, flat)
    tasks = [[(ns, cs) for cs in _cuts(cs, -(-(cs.stop - cs.start) * per_channel // usable))]
             for ns, cs in parts]

    def task(blocks: List[Tuple[slice, slice]]) -> None:
        # a worker thread has its own NumPy settings: the caller's thread set them already
        with numpy_settings(), cpu_workspace(budget):
            for ns, cs in blocks:
                C = cs.stop - cs.start
                fs = slice(cs.start * Cog, cs.stop * Cog)  # the filters of those channels
                whole = ns.stop - ns.start == geom.N and C == geom.C_in
                sub = geom if whole else dataclasses.replace(geom, N=ns.stop - ns.start, C_in=C,
                                                             C_out=C * Cog, groups=C)
                _depthwise_block(x_cf[ns, cs], w[fs], None if bias is None else bias[fs], sub,
                                 activation, out_cf[ns, fs], ct, flat)

    workers.run(task, tasks)


def _cuts(span: slice, count: int) -> List[slice]:
    """``span`` cut into ``count`` (at least one, at most its length) slices as equal as they
    can be."""
    size = span.stop - span.start
    count = max(1, min(size, count))
    cuts = [span.start + size * i // count for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(cuts, cuts[1:])]


def _depthwise_chunk_terms(geom: ConvGeometry, flat: bool,
                           ct: np.dtype) -> Tuple[int, int, bool]:
    """(padded copies of the input, items per output position, whether the chunks read the
    caller's unpadded array) of :func:`_depthwise_block`'s chunks in accumulator dtype
    ``ct``. The slots of :func:`_depthwise_slots` count as copies of the input: along the
    last axis a slot holds an output row's positions, at most the padded row, once per tap (at
    least the taps per stride, for the 1-D chunks of positions); along the others, phases of
    the input's rows. Complex sums of the slots are made as real ones first: twice the
    items."""
    if not flat:
        return (1 if geom.padding_mode == "zeros" else 2) + (geom.stride[-1] > 1), \
            3 * geom.C_out, False
    K, S, Q, P = geom.kernel[-1], geom.stride[-1], geom.out_spatial[-1], geom.padded_spatial[-1]
    zeros = geom.padding_mode == "zeros"
    slots = max(-(-K * Q // P), -(-K // S))
    return slots + (not zeros), geom.C_out * (1 + (ct.kind == "c")), zeros


@functools.lru_cache(maxsize=1024)
def _depthwise_row_bytes(geom: ConvGeometry, ct: np.dtype, flat: bool) -> int:
    """Bytes of :func:`_depthwise_block`'s smallest chunk (one output row of one image, with
    the padded input rows it reads) per input channel (kept by layer: a repeated call would
    build its one-channel geometry again)."""
    one = dataclasses.replace(geom, N=1, C_in=1, C_out=geom.C_out_per_group, groups=1)
    copies, per_position, _ = _depthwise_chunk_terms(one, flat, ct)
    return sum(_window_costs(one, ct.itemsize, copies, per_position))


def _depthwise_block(x_cf: Array, w: Array, bias: Array, geom: ConvGeometry,
                     activation: Optional[str], out_cf: Array, ct: np.dtype, flat: bool) -> None:
    """:func:`_depthwise_forward` on one thread, by chunks of images and output rows."""
    C, Cog, K, D = geom.C_in, geom.C_out_per_group, geom.kernel, geom.rank
    wt: Array = np.asarray(w, dtype=ct).reshape(C, Cog, math.prod(K))  # filter c*Cog+j, tap t
    b: Optional[Array] = None if bias is None else np.asarray(bias, dtype=ct).reshape(C, Cog)
    weights = _slot_weights(wt, geom) if flat else _depthwise_tiles(wt, geom)
    # flat, zero padding: the slots are copied from the caller's array itself, which sits at
    # ``offset`` in the padded input
    copies, per_position, unpadded = _depthwise_chunk_terms(geom, flat, ct)
    if flat and ct.kind == "c":  # real einsums over the parts of the slots' source: the
        # caller's array, or a padded copy in ct (complex)
        complex_source = x_cf.dtype.kind == "c" or not unpadded
        weights = _plane_weights(weights, 1 + complex_source)
    offset = geom.pad_before if unpadded else (0,) * D
    # the weights (the einsum's tiles: at most an eighth) come out of the workspace too
    with cpu_workspace(max(1, get_cpu_workspace() - weights.nbytes)):
        for n0, n, xpad, r0, rows, r_in in _chunk_plan(x_cf, geom, ct, copies,
                                                       channels_last=not flat,
                                                       cap=DEPTHWISE_CHUNK_BYTES,
                                                       per_position=per_position,
                                                       unpadded=unpadded, windows=True):
            block = out_cf[n0:n0 + n, :, r0:r0 + rows[0]]
            into: Optional[Array] = None
            with scratch() as take:
                # bias and activation go over the sums as computed (contiguous): over the
                # strided views below, NumPy's loops would take buffers outside the workspace
                if flat:  # (n, C, Cog, run) and its view (n, C, Cog, *rows)
                    # 1-D and 2-D: the run is the block's own rows, summed into it directly
                    into = _view_of_shape(block, (n, C, Cog, math.prod(rows))) if (
                        D <= 2 and block.dtype == ct) else None
                    sums, acc = _depthwise_slots(xpad, weights, geom, r_in, rows, take, ct,
                                                 offset, into)
                    if b is not None:
                        sums += b[..., None]
                else:  # (n, *rows[:-1], Cog, rows[-1], C)
                    sums = _depthwise_rows(xpad, weights, geom, r_in, rows, ct, take)
                    if b is not None:
                        sums += b.T.reshape((Cog, 1, C))
                    acc = np.moveaxis(sums, (-1, -3), (1, 2))
                del xpad
                activate(np, sums, activation)
                if sums is not into:
                    target = _split_view(block, acc.shape)  # (n, C_out, ...) as (n, C, Cog, ...)
                    target[...] = acc


def _slot_axes(geom: ConvGeometry) -> List[Tuple[List[int], int, int]]:
    """The taps of :func:`_depthwise_slots` along each axis but the last: (the stride phases
    some tap reads, the unit of the taps' offsets within a phase, offsets). Tap k reads
    phase ``(k * d) % s`` at ``(k * d) // s`` rows into it: grid point (that phase's index,
    those rows / unit); points no tap reads get zero weights (none at stride 1)."""
    axes = []
    for k, d, s in zip(geom.kernel[:-1], geom.dilation[:-1], geom.stride[:-1]):
        used = sorted({t * d % s for t in range(k)})
        unit = math.gcd(*[t * d // s for t in range(k)]) or 1
        axes.append((used, unit, (k - 1) * d // s // unit + 1))
    return axes


def _slot_weights(wt: Array, geom: ConvGeometry) -> Array:
    """Weights ``wt`` ``(C, Cog, taps)`` on the grid of :func:`_depthwise_slots`: ``(C, Cog,
    *(phases, offsets) per axis but the last, last-axis taps)``, zero off the taps."""
    C, Cog, K, Dl, S = (geom.C_in, geom.C_out_per_group, geom.kernel, geom.dilation,
                        geom.stride)
    axes = _slot_axes(geom)
    grid = np.zeros((C, Cog) + sum(((len(u), o) for u, _, o in axes), ()) + K[-1:], wt.dtype)
    taps = wt.reshape((C, Cog) + K)
    for tap in itertools.product(*[range(k) for k in K[:-1]]):
        place: Tuple[int, ...] = ()
        for t, d, s, (used, unit, _) in zip(tap, Dl, S, axes):
            place += (used.index(t * d % s), t * d // s // unit)
        grid[(slice(None), slice(None)) + place] = taps[(slice(None), slice(None)) + tap]
    return grid


def _plane_weights(grid: Array, parts: int) -> Array:
    """The complex weights ``grid`` ``(C, Cog, ...)`` of :func:`_slot_weights` as real ones
    ``(C, Cog, 2, parts, ...)`` over the real and imaginary parts of the input (``parts``: 1
    for a real input) to the real and imaginary parts of the sums: (a + ib)(x + iy) = (ax -
    by) + i(bx + ay)."""
    real = np.zeros(grid.shape[:2] + (2, parts) + grid.shape[2:], np.finfo(grid.dtype).dtype)
    real[:, :, 0, 0], real[:, :, 1, 0] = grid.real, grid.imag
    if parts == 2:
        real[:, :, 0, 1], real[:, :, 1, 1] = -grid.imag, grid.real
    return real


def _planes(src: Array) -> List[Tuple[Array, int, int]]:
    """``src``'s real and imaginary parts (its only part, if real) as (array, scale, shift):
    part ``p`` has element ``i`` of the last axis at ``scale * i + shift`` of that array. A
    complex array whose last axis is contiguous is viewed as its real dtype, both parts in one
    array (its even and odd elements), whose gathers read contiguous pairs
    (:func:`_gather_pairs`) where NumPy's ``.real`` and ``.imag`` would be read element by
    element."""
    if src.dtype.kind != "c":
        return [(src, 1, 0)]
    if src.dtype.isnative and src.ndim and src.strides[-1] == src.itemsize:
        try:
            flat = src.view(np.finfo(src.dtype).dtype)
            return [(flat, 2, 0), (flat, 2, 1)]
        except ValueError:  # NumPy < 1.23 views only C-contiguous arrays as a narrower type
            pass
    return [(src.real, 1, 0), (src.imag, 1, 0)]


def _depthwise_slots(src: Array, grid: Array, geom: ConvGeometry, r0: int,
                     rows: Tuple[int, ...], take: Take, ct: np.dtype,
                     offset: Tuple[int, ...], into: Optional[Array]) -> Tuple[Array, Array]:
    """Output rows r0:r0+rows[0] of the depthwise layer from the channels-first ``src``: the
    padded input, or the caller's unpadded one with ``offset`` its place in the padded input
    (zero padding). Returns the sums ``(n, C, Cog, run)`` (``into`` if given, else scratch
    memory) and their view ``(n, C, Cog, *rows)`` at the output's positions.

    The chunk's input is copied once per tap of the last axis into a *slot*: slot j holds,
    along the last axis, the positions tap j reads for the output's (j * dilation + stride *
    q), and along every other axis the input's rows split into their stride phases (none at
    stride 1). Every tap then reads its slot (and phase) at a whole number of rows' offset,
    the output's rows flattened into one run, so one einsum over ``grid``
    (:func:`_slot_weights`) sums all taps with that run as its inner loop: a fused
    multiply-add per tap over contiguous memory. (The taps of the last axis as offsets into
    one copy would have the run's own stride, and NumPy's iterator would then make them the
    inner loop.) At stride 1 along the first axes the run is the output rows themselves;
    along a middle axis of a 3-D layer it also crosses rows past the output's, which are
    computed and left out of the view.

    Complex sums (``grid`` real, from :func:`_plane_weights`) are real einsums over slots of
    the input's real and imaginary parts, into the real and imaginary parts of the sums, then
    interleaved: NumPy's complex einsum runs far below its real one's rate (one thread, 2 x
    144 x 56^2, ms: float32 0.8, complex64 11.5, the same over float32 planes 4.3-5.9). Whole
    calls, two threads, the bench's pattern, min / median of 15, planes / complex einsum:
    complex64 2 x 144 x 56^2 4.33/5.01 / 7.37/7.89, 2 x 96 x 112^2 stride 2 5.84/6.36 /
    8.41/8.89, 1 x 32 x 112^2 1.62/1.88 / 3.37/3.57; complex128 2 x 144 x 56^2 8.17/8.87 /
    9.30/9.85, 2 x 96 x 112^2 stride 2 10.06/10.76 / 10.36/10.72."""
    n, C, Cog, K, S, Dl, D = (src.shape[0], geom.C_in, geom.C_out_per_group, geom.kernel,
                              geom.stride, geom.dilation, geom.rank)
    axes = _slot_axes(geom)
    start = (r0 * S[0],) + (0,) * (D - 1)  # the chunk's first position, padded coordinates
    extents = [(r - 1) * s + (k - 1) * d + 1 for r, s, k, d in zip(rows, S, K, Dl)][:D - 1]
    E = tuple(-(-e // s) for e, s in zip(extents, S))  # rows of a phase, per axis
    Q = rows[-1]
    planes = grid.dtype != ct  # complex sums over real planes: (n, C, part, ...) slots
    parts = _planes(src) if planes else [(src, 1, 0)]
    assert not planes or grid.shape[3] == len(parts), (grid.shape, src.dtype)
    lead = (n, C) + ((len(parts),) if planes else ())
    slots = take(lead + tuple(len(u) for u, _, _ in axes) + (K[-1],) + E + (Q,), grid.dtype)
    for p, (part, scale, shift) in enumerate(parts):
        plane = slots[:, :, p] if planes else slots
        for phase in itertools.product(*[enumerate(u) for u, _, _ in axes]):
            index = tuple(i for i, _ in phase)
            firsts = tuple(b + a - o for b, (_, a), o in zip(start, phase, offset))
            for j in range(K[-1]):
                last = scale * (start[-1] + j * Dl[-1] - offset[-1]) + shift
                _strided_fill(plane[(slice(None), slice(None)) + index + (j,)], part,
                              firsts + (last,), S[:-1] + (scale * S[-1],))
    step = tuple(math.prod(E[a + 1:]) * Q for a in range(D - 1))  # a row's flat stride
    run = sum((r - 1) * st for r, st in zip(rows, step)) + Q
    item = slots.itemsize
    L = len(lead)
    phase_steps = slots.strides[L:L + D - 1]  # then the slot axis, then the rows
    windows = as_strided(slots, writeable=False, shape=lead + grid.shape[2 + 2 * planes:] + (
        run,), strides=slots.strides[:L] + sum(
            ((ps, unit * st * item) for ps, (_, unit, _), st in
             zip(phase_steps, axes, step)), ()) + (slots.strides[L + D - 1], item))
    sums = take((n, C, Cog, run), ct) if into is None else into
    letters = "pqrstu"[:2 * (D - 1)]
    if planes:  # parts of the sums (n, C, Cog, 2, run), then interleaved into the complex sums
        real = take((n, C, Cog, 2, run), grid.dtype)
        np.einsum(f"ncy{letters}jx,cmzy{letters}j->ncmzx", windows, grid, out=real)
        sums.real, sums.imag = real[:, :, :, 0], real[:, :, :, 1]
    else:
        np.einsum(f"nc{letters}jx,cm{letters}j->ncmx", windows, grid, out=sums)
    return sums, as_strided(sums, shape=(n, C, Cog) + rows, writeable=True,
                            strides=sums.strides[:3] + tuple(st * sums.itemsize
                                                             for st in step + (1,)))


def _last_axis_place(geom: ConvGeometry, j: int) -> Tuple[int, int]:
    """Where :func:`_depthwise_rows` reads tap j of the last axis: (phase, offset). Unit
    stride: one phase, the offset counted in taps (its step is the dilation). Stride s: the
    tap reads phase (j*d) % s at position (j*d) // s within it."""
    s, d = geom.stride[-1], geom.dilation[-1]
    return (0, j) if s == 1 else (j * d % s, j * d // s)


@functools.lru_cache(maxsize=1024)
def _last_axis_taps(geom: ConvGeometry) -> Tuple[int, int]:
    """The grid of :func:`_depthwise_rows`'s taps along the last axis: (phases, offsets);
    points of the grid that are no tap get zero weights."""
    places = [_last_axis_place(geom, j) for j in range(geom.kernel[-1])]
    return max(p for p, _ in places) + 1, max(o for _, o in places) + 1


def _tile_positions(geom: ConvGeometry, position_bytes: int) -> int:
    """Output positions per block of :func:`_depthwise_rows` (``position_bytes``: one
    position's weights): their weights at most :data:`DEPTHWISE_TILE_BYTES` and an eighth of
    the workspace."""
    most = min(DEPTHWISE_TILE_BYTES, get_cpu_workspace() // 8)
    return max(1, min(geom.out_spatial[-1], most // max(1, position_bytes)))


def _depthwise_tiles(wt: Array, geom: ConvGeometry) -> Array:
    """Weights ``wt`` ``(C, Cog, taps)`` laid out for :func:`_depthwise_rows`: ``(*k_outer,
    phases, offsets, Cog, block * C)``, each tap's weights repeated along a block of output
    positions (:func:`_tile_positions`; at least one position)."""
    C, Cog, K = geom.C_in, geom.C_out_per_group, geom.kernel
    phases, offsets = _last_axis_taps(geom)
    grid = np.zeros(K[:-1] + (phases, offsets, Cog, C), wt.dtype)
    per_tap = np.moveaxis(wt.reshape((C, Cog) + K), (0, 1), (-1, -2))  # (*k, Cog, C)
    for j in range(K[-1]):
        phase, offset = _last_axis_place(geom, j)
        grid[..., phase, offset, :, :] = per_tap[..., j, :, :]
    block = _tile_positions(geom, grid.nbytes)
    return np.ascontiguousarray(np.broadcast_to(grid[..., None, :], grid.shape[:-1] + (
        block, C))).reshape(grid.shape[:-2] + (Cog, block * C))


def _depthwise_rows(xpad: Array, tiles: Array, geom: ConvGeometry, r0: int,
                    rows: Tuple[int, ...], ct: np.dtype, take: Take) -> Array:
    """Output rows r0:r0+rows[0] of the depthwise layer from the channels-last padded chunk
    ``xpad`` ``(n, *padded, C)``, as ``(n, *rows[:-1], Cog, rows[-1], C)`` (scratch memory).
    One einsum per block of output positions along the last axis sums every tap: a block's
    positions times channels are one contiguous run of the input (of its stride phase, when
    the last axis is strided), multiplied by the tiled weights (:func:`_depthwise_tiles`), so
    its inner loop is that whole run."""
    n, C, Cog, K, S, Dl, D = (xpad.shape[0], geom.C_in, geom.C_out_per_group, geom.kernel,
                              geom.stride, geom.dilation, geom.rank)
    phases, offsets = _last_axis_taps(geom)
    Q = rows[-1]
    q0 = r0 if D == 1 else 0  # a 1-D chunk is a range of positions, else of first-axis rows
    if D > 1:  # the input rows this chunk reads along the first axis
        xpad = xpad[:, r0 * S[0]:(r0 + rows[0] - 1) * S[0] + (K[0] - 1) * Dl[0] + 1]
    if S[-1] > 1:  # the last axis split into its stride phases, the positions past each zeroed
        src = xpad
        length = max(-(-src.shape[-2] // S[-1]), q0 + Q + offsets - 1)
        xpad = take(src.shape[:-2] + (phases, length, C), ct)
        for a in range(phases):
            part = src[..., a::S[-1], :]
            xpad[..., a, :part.shape[-2], :] = part
            xpad[..., a, part.shape[-2]:, :] = 0
        outer, last = xpad.strides[1:D], xpad.strides[-3:-1]  # (phase, offset) steps
    else:
        outer, last = xpad.strides[1:D], (0, xpad.strides[-2] * Dl[-1])
    acc = take((n,) + rows[:-1] + (Cog, Q * C), ct)
    block = tiles.shape[-1] // C
    letters = "abcdefgh"[:2 * (D - 1)]
    out_axes, tap_axes = letters[:D - 1], letters[D - 1:]
    spec = f"n{out_axes}{tap_axes}uvx,{tap_axes}uvmx->n{out_axes}mx"
    strides = ((xpad.strides[0],) + tuple(o * s for o, s in zip(outer, S[:-1]))
               + tuple(o * d for o, d in zip(outer, Dl[:-1])) + last + (xpad.itemsize,))
    for b0 in range(0, Q, block):
        size = min(block, Q - b0)
        start = xpad[(slice(None),) * (xpad.ndim - 2) + (slice(q0 + b0, None),)]
        windows = as_strided(start, strides=strides, writeable=False,
                             shape=(n,) + rows[:-1] + K[:-1] + (phases, offsets, size * C))
        np.einsum(spec, windows, tiles[..., :size * C], out=acc[..., b0 * C:(b0 + size) * C])
    return acc.reshape((n,) + rows[:-1] + (Cog, Q, C))


def filter_grad(x_cf: Array, g_cf: Array, geom: ConvGeometry, out: Array) -> None:
    """``out`` ``(C_out, C_in/groups, *kernel_size)`` = the adjoint of ``w -> conv(x, w)``
    applied to ``g_cf`` ``(N, C_out, *out_spatial)``: sum over the batch and output positions
    of g times conj(unrolled x), one matmul ``g (G, C_out/G, positions) @ cols^T`` per chunk."""
    ct = accumulator_dtype(out.dtype)
    G, Cog = geom.groups, geom.C_out_per_group
    dw = np.zeros((G, Cog, geom.C_in_per_group * math.prod(geom.kernel)), dtype=ct)
    copies = 1 if geom.padding_mode == "zeros" else 2
    for n0, n, xpad, r0, rows, r_in in _chunk_plan(x_cf, geom, ct, copies, channels_last=False,
                                                   cap=GEMM_CHUNK_BYTES, phases=_phased(geom),
                                                   windows=True,
                                                   unpadded=_reads_caller(x_cf, geom, ct)):
        with scratch() as take:
            cols = _unroll_columns(xpad, geom, r_in, rows, ct, take)
            del xpad
            if ct.kind == "c":
                np.conjugate(cols, out=cols)
            g = g_cf[n0:n0 + n, :, r0:r0 + rows[0]]  # (n, C_out, *rows) -> (G, Cog, (n, *rows))
            gm = take((geom.C_out, n) + rows, ct)
            np.copyto(gm, np.moveaxis(g, 0, 1))
            dw += np.matmul(gm.reshape(G, Cog, -1), cols.transpose(0, 2, 1))
    out[...] = dw.reshape(out.shape)


def data_adjoint(g_cf: Array, w: Array, bias: Array, geom: ConvGeometry, conjugate: bool,
                 out_cf: Array) -> None:
    """``out_cf`` ``(N, C_in, *in_spatial)`` = the transpose of ``x -> conv(x, w)`` (with
    conjugated filters when ``conjugate``: the Hermitian adjoint) applied to ``g_cf``
    ``(N, C_out, *out_spatial)``, plus ``bias`` ``(C_in,)`` when given.

    Per chunk, ``cols = g @ w^T`` gives each output position's contribution to each (channel,
    tap) of its window; each tap's contributions are then added onto the padded input grid with
    one strided slice (col2im), and the padding is folded back (zeros: cut off).
    """
    ct = accumulator_dtype(out_cf.dtype)
    G, Cg, D, K = geom.groups, geom.C_in_per_group, geom.rank, geom.kernel
    O, S = geom.out_spatial, geom.stride
    wmat = _weight_matrices(w, geom, ct)  # (G, Cog, Cg*Kp), columns (c, *k)
    wt = np.conjugate(wmat) if conjugate else wmat
    nb, rb = _chunks(geom, ct.itemsize, 2)
    for n0 in range(0, geom.N, nb):
        n = min(nb, geom.N - n0)
        with scratch() as take:
            grad = take((n, geom.C_in) + geom.padded_spatial, ct)
            grad.fill(0)
            for r0 in range(0, O[0], rb):
                rows = (min(O[0], r0 + rb) - r0,) + O[1:]
                with scratch() as take_rows:  # returned before the next rows are taken
                    gm = _grouped_rows(g_cf[n0:n0 + n, :, r0:r0 + rows[0]], geom, ct, take_rows)
                    cols = _product(gm, wt, out=take_rows(gm.shape[:2] + wt.shape[2:], ct))
                    _add_windows(grad, cols.reshape((G, n) + rows + (Cg,) + K), geom, r0)
            if bias is None:
                unpad_adjoint(np, grad, geom, out_cf[n0:n0 + n])
            else:  # add the bias in the accumulator dtype: one rounding into the output dtype
                block = take((n, geom.C_in) + geom.in_spatial, ct)
                unpad_adjoint(np, grad, geom, block)
                block += np.asarray(bias, dtype=ct).reshape((1, -1) + (1,) * D)
                out_cf[n0:n0 + n] = block


def _add_windows(grad: Array, cols: Array, geom: ConvGeometry, r0: int) -> None:
    """col2im: add ``cols`` ``(G, n, *rows, C_in/G, *kernel)``, each output position's
    contribution to every (channel, tap) of its window, onto the padded input grid ``grad``
    ``(n, C_in, *padded)``, one strided slice per tap; the rows start at output row ``r0``."""
    G, n, rows = cols.shape[0], cols.shape[1], cols.shape[2:2 + geom.rank]
    Cg = geom.C_in_per_group
    for tap in itertools.product(*[range(k) for k in geom.kernel]):
        first = [t * d for t, d in zip(tap, geom.dilation)]
        first[0] += r0 * geom.stride[0]
        dst = grad[(slice(None), slice(None)) + tuple(
            slice(f, f + (r - 1) * s + 1, s) for f, r, s in zip(first, rows, geom.stride))]
        src = np.moveaxis(cols[(Ellipsis,) + tap], -1, 1)  # (G, Cg, n, *rows)
        dst += np.moveaxis(src.reshape((G * Cg, n) + rows), 1, 0)
