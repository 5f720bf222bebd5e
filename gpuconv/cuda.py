"""The CuPy backend: launches the raw CUDA kernels of ``kernels_cuda/``.

Only imported when a call runs on the GPU. Launches go to CuPy's current stream on the current
device (the caller's ``with cupy.cuda.Device(i)`` / ``with stream:`` are respected).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from . import kernels
from .geometry import ConvGeometry
from .layout import pad_spatial

#: When True, outputs are filled with NaN before each launch so that elements a kernel fails to
#: write show up in tests (costs one extra pass over the output; for testing only).
poison_outputs = False

_THREADS = 256


@functools.lru_cache(maxsize=None)
def _max_blocks(device_id: int) -> int:
    import cupy
    sms = cupy.cuda.Device(device_id).attributes["MultiProcessorCount"]
    return sms * 32  # the kernels grid-stride; more blocks than this only adds scheduling


def _element_strides(a, rank: int):
    """(n, c, d, h, w) strides of a channels-first view in elements, unit spatial dims in front."""
    item = a.itemsize
    if any(s % item for s in a.strides):
        raise AssertionError("strides are not whole elements")  # CuPy arrays always are
    s = [st // item for st in a.strides]
    return s[:2] + [0] * (3 - rank) + s[2:]


def _aligned(a):
    """``a`` itself, or a copy when its data pointer is not aligned to a whole element."""
    import cupy
    return a if a.data.ptr % a.itemsize == 0 else cupy.ascontiguousarray(a)


def prepare(xp, x_cf, w, bias, geom: ConvGeometry, dtype):
    """Inputs as the kernels take them: (x_cf, filters, bias or None, geometry).

    x is cast to ``dtype`` (no copy when it already is) and, for a padding_mode other than zeros,
    pre-padded (the geometry then has zero padding); zero padding stays in the kernel. Filters
    are small: one contiguous copy in ``dtype`` (this also makes flip's reversed view contiguous,
    so one kernel serves correlation and convolution).
    """
    x_cf = x_cf.astype(dtype, copy=False)
    if geom.padding_mode != "zeros" and max(geom.pad_before + geom.pad_after) > 0:
        x_cf = pad_spatial(xp, x_cf, geom)
        geom = geom.with_zero_padding()
    w = xp.ascontiguousarray(w, dtype=dtype)
    b = None if bias is None else xp.ascontiguousarray(bias, dtype=dtype)
    return x_cf, w, b, geom


def kernel_params(geom: ConvGeometry, x_cf, out_cf, has_bias: bool):
    """The scalar arguments of ``conv_direct`` after its four pointers, typed as it declares them
    (``int`` -> int32, ``long long`` -> int64; CuPy passes NumPy scalars by their type)."""
    lead = (1,) * (3 - geom.rank)
    i64 = np.int64
    params = (np.int32(has_bias), np.int32(geom.layout == "channels_last"),
              i64(geom.N), i64(geom.C_out), i64(geom.groups), i64(geom.C_in_per_group))
    for values in (lead + geom.in_spatial, lead + geom.out_spatial, lead + geom.kernel,
                   lead + geom.stride, (0,) * (3 - geom.rank) + geom.pad_before,
                   lead + geom.dilation, _element_strides(x_cf, geom.rank),
                   _element_strides(out_cf, geom.rank)):
        params += tuple(i64(v) for v in values)
    return params


def grid_size(geom: ConvGeometry, max_blocks: int) -> int:
    """Blocks of _THREADS for one thread per output element, capped (the kernel grid-strides)."""
    total = geom.N * geom.C_out * math.prod(geom.out_spatial)
    return min(-(-total // _THREADS), max_blocks)


def conv_forward(x_cf, w, bias, geom: ConvGeometry, activation, out_cf) -> None:
    """Fill the CuPy array view ``out_cf`` ``(N, C_out, *out_spatial)``; see cpu.conv_forward."""
    import cupy

    dtype = np.dtype(out_cf.dtype)
    x_cf, w, b, geom = prepare(cupy, x_cf, w, bias, geom, dtype)
    x_cf = _aligned(x_cf)
    if poison_outputs:
        out_cf.fill(np.nan)
    device_id = cupy.cuda.Device().id
    blocks = grid_size(geom, _max_blocks(device_id))
    if blocks == 0:
        return
    kernel = kernels.get_function("conv_direct.cu", kernels.conv_direct_name(dtype, activation),
                                  dtype, device_id)
    # without a bias the kernel never reads its pointer; pass the filters as a valid one
    args = (x_cf, w, w if b is None else b, out_cf) + kernel_params(geom, x_cf, out_cf,
                                                                   b is not None)
    kernel((blocks,), (_THREADS,), args)
