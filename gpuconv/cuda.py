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


def conv_forward(x_cf, w, bias, geom: ConvGeometry, activation, out_cf) -> None:
    """Fill the CuPy array view ``out_cf`` ``(N, C_out, *out_spatial)``; see cpu.conv_forward."""
    import cupy

    dtype = np.dtype(out_cf.dtype)
    x_cf = _aligned(x_cf.astype(dtype, copy=False))
    if geom.padding_mode != "zeros" and max(geom.pad_before + geom.pad_after) > 0:
        x_cf = pad_spatial(cupy, x_cf, geom)
        geom = geom.with_zero_padding()
    # Filters are small: one contiguous copy in the output dtype (this also makes flip's reversed
    # view contiguous, so one kernel serves correlation and convolution).
    w = cupy.ascontiguousarray(w, dtype=dtype)
    has_bias = bias is not None
    b = cupy.ascontiguousarray(bias, dtype=dtype) if has_bias else w  # w: any valid pointer

    if poison_outputs:
        out_cf.fill(np.nan)
    total = geom.N * geom.C_out * math.prod(geom.out_spatial)
    if total == 0:
        return

    lead = (1,) * (3 - geom.rank)
    i64 = np.int64
    args = (x_cf, w, b, out_cf, np.int32(has_bias), np.int32(geom.layout == "channels_last"),
            i64(geom.N), i64(geom.C_out), i64(geom.groups), i64(geom.C_in_per_group))
    args += tuple(i64(v) for v in lead + geom.in_spatial)
    args += tuple(i64(v) for v in lead + geom.out_spatial)
    args += tuple(i64(v) for v in lead + geom.kernel)
    args += tuple(i64(v) for v in lead + geom.stride)
    args += tuple(i64(v) for v in (0,) * (3 - geom.rank) + geom.pad_before)
    args += tuple(i64(v) for v in lead + geom.dilation)
    args += tuple(i64(v) for v in _element_strides(x_cf, geom.rank))
    args += tuple(i64(v) for v in _element_strides(out_cf, geom.rank))

    device_id = cupy.cuda.Device().id
    kernel = kernels.get_function("conv_direct.cu", kernels.conv_direct_name(dtype, activation),
                                  dtype, device_id)
    blocks = min(-(-total // _THREADS), _max_blocks(device_id))
    kernel((blocks,), (_THREADS,), args)
