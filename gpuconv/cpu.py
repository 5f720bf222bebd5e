"""The NumPy backend: convolution as a batched matrix product over unrolled windows.

For a chunk of the batch (and, for large layers, of the first output axis) the channels-first
padded input is unrolled into ``cols[g, (c, *k), (n, *out)]`` (im2col; the windows come from a
strided view, so the only copy is the unrolling itself, in runs along the input's last axis) and
the filters ``(g, co, (c, *k))`` multiply it with one ``numpy.matmul``, which runs on BLAS and
lands in the output's own channels-first order. No Python loop touches pixels, channels or
single batch elements; the chunk loop only keeps the temporaries under
:func:`gpuconv.config.get_cpu_workspace` (and near the cache's size).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import algorithms, tuning
from .activation import activate
from .config import get_autotune, get_cpu_workspace
from .scratch import Take, scratch
from .device import cpu_model
from .dtypes import accumulator_dtype
from .geometry import ConvGeometry
from .layout import pad_spatial, pointwise_view, unpad_adjoint
from typing import Iterator, Optional, Tuple
from ._typing import Array, DTypeLike


#: Chunks of the columns GEMM keep their unrolled windows near this size (or the workspace, if
#: smaller), so that the unrolling copy and the matmul that reads it stay in cache.
GEMM_CHUNK_BYTES = 16 * 2**20

#: Kernels a filter from which a data adjoint runs as forward convs by stride phase
#: (adjoint._by_phases): fewer make the GEMM a matrix-vector product over unrolled windows.
DATA_ADJOINT_AS_CONV_MIN_CHANNELS = 16


def _padded(xs: Array, geom: ConvGeometry, dtype: DTypeLike, channels_last: bool,
            take: Take) -> Array:
    """The batch chunk ``xs`` (a channels-first view) padded and cast to ``dtype``: an array
    ``(n, C, *padded)``, or ``(n, *padded, C)`` when ``channels_last``, from ``take`` for zero
    padding (the other modes come from ``numpy.pad``)."""
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
        for ax in spatial_axes:  # zero the borders only: the interior is copied next
            for border in (slice(0, interior[ax].start), slice(interior[ax].stop, None)):
                xpad[(slice(None),) * ax + (border,)] = 0
        xpad[tuple(interior)] = xs
        return xpad
    return pad_spatial(np, xs.astype(dtype, copy=False), geom, channels_last)


def _chunks(geom: ConvGeometry, itemsize: int, padded_copies: int,
            cap: Optional[int] = None) -> Tuple[int, int]:
    """(batch elements, first-axis output rows) per chunk so temporaries fit the workspace."""
    O = geom.out_spatial
    row = math.prod(O[1:])
    # per output row of one batch element: its unrolled windows, its matmul result, and the
    # result reordered into (C_out, ...) order
    per_row = itemsize * row * (geom.groups * geom.terms_per_output + 2 * geom.C_out)
    per_image = itemsize * padded_copies * geom.C_in * math.prod(geom.padded_spatial)
    per_n = per_image + O[0] * per_row
    budget = get_cpu_workspace() if cap is None else min(cap, get_cpu_workspace())
    if per_n <= budget:
        return _balanced(geom.N, budget // per_n), O[0]
    return 1, _balanced(O[0], (budget - per_image) // per_row)


def _balanced(total: int, most: int) -> int:
    """Chunk length for ``total`` items, at most ``most`` a chunk, as few chunks as that allows
    and as equal as they can be (8 images in at most 6 a chunk: 4 + 4, not 6 + 2)."""
    if total <= 1:
        return 1
    count = -(-total // max(1, min(total, most)))
    return -(-total // count)


def _weight_matrices(w: Array, geom: ConvGeometry, ct: np.dtype) -> Array:
    """Filters as G matrices ``(filters per group) x (C_in/groups * taps)``, columns ordered
    ``(c, *k)`` to match the rows of the unrolled input (:func:`_unroll_columns`)."""
    G, Cog, Cg, Kp = (geom.groups, geom.C_out_per_group, geom.C_in_per_group,
                      math.prod(geom.kernel))
    return np.ascontiguousarray(np.asarray(w, dtype=ct).reshape(G, Cog, Cg * Kp))


def _chunk_plan(x_cf: Array, geom: ConvGeometry, ct: np.dtype, padded_copies: int,
                channels_last: bool, cap: Optional[int] = None, phases: bool = False
                ) -> Iterator[Tuple[int, int, Array, int, Tuple[int, ...]]]:
    """Yield ``(n0, n, xpad, r0, rows)`` per chunk: batch elements n0:n0+n (padded and cast:
    ``xpad``, channels-last when ``channels_last``, split into its stride phases when
    ``phases`` and :func:`_phased` holds) and first-axis output rows r0:r0+rows[0].
    ``cap`` lowers the workspace budget for this plan. ``xpad`` is scratch memory
    (:mod:`gpuconv.scratch`): a caller must not use it once it asks for the next chunk."""
    O = geom.out_spatial
    split = phases and _phased(geom)
    nb, rb = _chunks(geom, ct.itemsize, padded_copies + split, cap)
    for n0 in range(0, geom.N, nb):
        with scratch() as take:
            xpad = _padded(x_cf[n0:n0 + nb], geom, ct, channels_last, take)
            if split:
                xpad = _phase_split(xpad, geom, take)
            for r0 in range(0, O[0], rb):
                yield n0, xpad.shape[0], xpad, r0, (min(O[0], r0 + rb) - r0,) + O[1:]
            del xpad


def _phased(geom: ConvGeometry) -> bool:
    """Whether the columns unrolling reads a strided layer's input split into its stride
    phases (:func:`_phase_split`): then every copied run is contiguous instead of every
    stride-th element, which halved the unrolling of the stride-2 stem and speech layers
    (0.77 -> 0.42 ms and 1.16 -> 0.53 ms per image). Undilated layers only: a dilated tap's
    phase is not a function of the tap alone."""
    return max(geom.stride) > 1 and max(geom.dilation) == 1


def _phase_split(xpad: Array, geom: ConvGeometry, take: Take) -> Array:
    """``(n, C, *padded)`` as ``ph (n, C, *stride, *ceil(padded / stride))`` with
    ``ph[:, :, *a, *i] = xpad[:, :, *(i * stride + a)]``; phases no tap reads (a >= the
    kernel's length) are left out, and the tail past a phase's length is never read."""
    S, K = geom.stride, geom.kernel
    n, C, P = xpad.shape[0], xpad.shape[1], xpad.shape[2:]
    ph = take((n, C) + S + tuple(-(-p // s) for p, s in zip(P, S)), xpad.dtype)
    for a in itertools.product(*[range(min(s, k)) for s, k in zip(S, K)]):
        src = xpad[(slice(None), slice(None)) + tuple(slice(i, None, s) for i, s in zip(a, S))]
        ph[(slice(None), slice(None)) + a + tuple(slice(0, m) for m in src.shape[2:])] = src
    return ph


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
        algorithm = tuning.pick("cpu", cpu_model(), geom, out_cf.dtype, lambda name: conv_forward(
            x_cf, w, bias, geom, activation, out_cf, name))
    algorithm = algorithms.choose("cpu", algorithm, geom, out_cf.dtype)
    if algorithm == "depthwise":
        return _depthwise_forward(x_cf, w, bias, geom, activation, out_cf, ct)
    if algorithm == "pointwise":
        return _pointwise_forward(x_cf, w, bias, geom, activation, out_cf, ct)
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
    positions = math.prod(block.shape[2:])
    view = block.view()
    try:  # assigning a shape never copies: it raises when no view has that shape
        view.shape = (geom.groups, geom.C_out_per_group, positions)
    except AttributeError:
        return None
    # BLAS writes a matrix whose rows are contiguous and do not overlap; NumPy would run any
    # other output through its own loops, far slower than a copy
    step = view.itemsize
    if view.strides[-1] != step or min(view.strides[:-1]) < positions * step:
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
    for n0, n, xpad, r0, rows in _chunk_plan(x_cf, geom, ct, copies, channels_last=False,
                                             cap=GEMM_CHUNK_BYTES, phases=True):
        with scratch() as take:
            cols = _unroll_columns(xpad, geom, r0, rows, ct, take)
            del xpad
            block = out_cf[n0:n0 + n, :, r0:r0 + rows[0]]
            direct = _as_matrices(block, geom) if n == 1 and block.dtype == ct else None
            res = np.matmul(wmat, cols, out=direct if direct is not None else
                            take((G, Cog, cols.shape[-1]), ct))
            del cols
            if b is not None:
                res += b
            activate(np, res, activation)
            if direct is None:  # (G, Cog, (n, *rows)) -> (n, C_out, *rows)
                block[...] = np.moveaxis(res.reshape((geom.C_out, n) + rows), 1, 0)


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
                direct = _as_rows(out_rows) if G == 1 and block.dtype == ct else None
                res = np.matmul(xs, wm, out=direct if direct is not None else
                                take((G, n * P, Cog), ct))                       # (G, n*P, Cog)
            else:
                xs = np.asarray(x_cf[n0:n0 + nb], dtype=ct).reshape(-1, G, Cg, P)
                res = np.matmul(wm, xs, out=take((n, G, Cog, P), ct))
            if b is not None:
                res += b
            activate(np, res, activation)
            if not rows:
                block[...] = res.reshape(block.shape)
            elif direct is None:
                out_rows[...] = res.transpose(1, 0, 2).reshape(out_rows.shape)


def _as_rows(block: Array) -> Optional[Array]:
    """A channels-last output block ``(n, *out, C_out)`` as a view ``(1, positions, C_out)``
    that BLAS can write (contiguous rows), or None."""
    view = block.view()
    try:
        view.shape = (1, math.prod(block.shape[:-1]), block.shape[-1])
    except AttributeError:
        return None
    step = view.itemsize
    return view if view.strides[-1] == step and view.strides[-2] >= block.shape[-1] * step \
        else None


#: Depthwise chunks stay under this many bytes of temporaries (or the workspace, if smaller):
#: each tap makes two passes over the chunk, which then come from cache rather than memory.
#: 16 MiB against 256 MiB (min of 8 interleaved calls): float64 mbv2_dw_3x3_c144 15.3 -> 9.7 ms,
#: mbv2_dw_3x3s2_c96 23.4 -> 11.1 ms, float32 c96 7.3 -> 5.9 ms, the rest unchanged; 2-4 MiB
#: chunks were slower again (per-chunk overheads).
DEPTHWISE_CHUNK_BYTES = 16 * 2**20


def _depthwise_channels_first(geom: ConvGeometry) -> bool:
    """Depthwise as a multiply-add per tap over channels-first windows when output rows are
    long and channels few; else one einsum over a channels-last copy, whose inner loop runs
    over the channels. Interleaved A/B (min of 12 calls, float32): einsum 2-3x faster than the
    per-tap passes on a channels-last copy everywhere; against channels-first taps it ties at
    96-144 channels and 56-wide rows (mbv2 c144, c96s2) and loses 4-5x at 16-32 channels and
    112-224-wide rows, where its inner loop is short."""
    return geom.out_spatial[-1] >= 32 and geom.C_in < 64


def _depthwise_forward(x_cf: Array, w: Array, bias: Array, geom: ConvGeometry,
                       activation: Optional[str], out_cf: Array, ct: np.dtype) -> None:
    """Filters of one kernel each (depthwise, with any multiplier C_out/C_in): a multiply-add
    per tap over a window view, vectorised over channels and positions; no unrolling, no
    matmul (a matmul with one kernel per filter would have an inner dimension of taps only)."""
    C, Cog, K, D = geom.C_in, geom.C_out_per_group, geom.kernel, geom.rank
    wt: Array = np.asarray(w, dtype=ct).reshape(C, Cog, math.prod(K))  # filter c*Cog+j, tap t
    b: Optional[Array] = None if bias is None else np.asarray(bias, dtype=ct)
    cf = _depthwise_channels_first(geom)
    if cf:  # weights broadcast over (n, C, Cog, *rows), bias over (n, C_out, *rows)
        wt = wt.reshape((C, Cog, -1) + (1,) * D)
        b = None if b is None else b.reshape((-1,) + (1,) * D)
    else:  # einsum operands: weights (*k, C[, Cog]) against windows (n, *rows, *k, C)
        wt = np.ascontiguousarray(np.moveaxis(wt.reshape((C, Cog) + K), (0, 1), (D, D + 1)))
        if Cog == 1:  # a trailing multiplier axis only when there is one: length-1 loops crawl
            wt = wt[..., 0]
    copies = 1 if geom.padding_mode == "zeros" else 2
    for n0, n, xpad, r0, rows in _chunk_plan(x_cf, geom, ct, copies, channels_last=not cf,
                                             cap=DEPTHWISE_CHUNK_BYTES):
        block = out_cf[n0:n0 + n, :, r0:r0 + rows[0]]
        with scratch() as take:
            if cf:  # accumulated straight into the output where it has the dtype and layout
                direct = block.dtype == ct and block.flags.c_contiguous
                shape = (n, C, Cog) + rows
                acc = block.reshape(shape) if direct else take(shape, ct)
                _depthwise_taps(xpad, acc, wt, geom, r0, rows, take)
                acc = acc.reshape(block.shape)
            else:
                acc = _depthwise_einsum(xpad, wt, geom, r0, rows, ct, take)
            del xpad
            if b is not None:
                acc += b
            activate(np, acc, activation)
            if not cf:
                block[...] = np.moveaxis(acc, -1, 1)
            elif not direct:
                block[...] = acc


def _depthwise_einsum(xpad: Array, wt: Array, geom: ConvGeometry, r0: int,
                      rows: Tuple[int, ...], ct: np.dtype, take: Take) -> Array:
    """Output rows r0:r0+rows[0] of the depthwise layer from the channels-last padded chunk
    ``xpad``: one einsum sums every tap of a window per output element, its inner loop over
    the channels. Returns ``(n, *rows, C_out)`` in ``ct`` (scratch memory)."""
    n, C, Cog, K, D = xpad.shape[0], geom.C_in, geom.C_out_per_group, geom.kernel, geom.rank
    S, Dl = geom.stride, geom.dilation
    out_axes, tap_axes, mult = "xyz"[:D], "ijk"[:D], "m" if Cog > 1 else ""
    acc = take((n,) + rows + ((C, Cog) if Cog > 1 else (C,)), ct)
    s_sp = xpad.strides[1:-1]
    windows = as_strided(xpad[:, r0 * S[0]:], shape=(n,) + rows + K + (C,),
                         strides=(xpad.strides[0],) + tuple(st * s for st, s in zip(s_sp, S))
                         + tuple(st * d for st, d in zip(s_sp, Dl)) + (xpad.strides[-1],),
                         writeable=False)
    np.einsum(f"n{out_axes}{tap_axes}c,{tap_axes}c{mult}->n{out_axes}c{mult}", windows, wt,
              out=acc)
    return acc.reshape((n,) + rows + (geom.C_out,))


def _depthwise_taps(xpad: Array, acc: Array, wt: Array, geom: ConvGeometry, r0: int,
                    rows: Tuple[int, ...], take: Take) -> None:
    """Output rows r0:r0+rows[0] of the depthwise layer from the channels-first padded chunk
    ``xpad``: a multiply-add per tap over strided windows into ``acc`` ``(n, C, Cog, *rows)``."""
    K, S, Dl = geom.kernel, geom.stride, geom.dilation
    tmp = take(acc.shape, acc.dtype)
    for t, tap in enumerate(itertools.product(*[range(k) for k in K])):
        first = [k * d for k, d in zip(tap, Dl)]
        first[0] += r0 * S[0]
        spatial = tuple(slice(f, f + (r - 1) * s + 1, s) for f, r, s in zip(first, rows, S))
        window = xpad[(slice(None), slice(None), None) + spatial]
        if t == 0:
            np.multiply(window, wt[:, :, t], out=acc)
        else:
            np.multiply(window, wt[:, :, t], out=tmp)
            acc += tmp


def filter_grad(x_cf: Array, g_cf: Array, geom: ConvGeometry, out: Array) -> None:
    """``out`` ``(C_out, C_in/groups, *kernel_size)`` = the adjoint of ``w -> conv(x, w)``
    applied to ``g_cf`` ``(N, C_out, *out_spatial)``: sum over the batch and output positions
    of g times conj(unrolled x), one matmul ``g (G, C_out/G, positions) @ cols^T`` per chunk."""
    ct = accumulator_dtype(out.dtype)
    G, Cog = geom.groups, geom.C_out_per_group
    dw = np.zeros((G, Cog, geom.C_in_per_group * math.prod(geom.kernel)), dtype=ct)
    copies = 1 if geom.padding_mode == "zeros" else 2
    for n0, n, xpad, r0, rows in _chunk_plan(x_cf, geom, ct, copies, channels_last=False,
                                             cap=GEMM_CHUNK_BYTES, phases=True):
        with scratch() as take:
            cols = _unroll_columns(xpad, geom, r0, rows, ct, take)
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
                    cols = np.matmul(gm, wt, out=take_rows(gm.shape[:2] + wt.shape[2:], ct))
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
