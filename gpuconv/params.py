"""The one by-value argument every convolution kernel takes: ``struct gc_conv``.

``kernels_cuda/gpuconv_params.cuh`` declares the struct; :data:`FIELDS` are its fields in the same
order, all ``long long``, and :data:`DTYPE` is the NumPy record with that layout. CuPy passes a
NumPy array of one element by value, as the bytes of that element, so a kernel launch carries
its pointers and this one record instead of some thirty scalars, each of which CuPy would
otherwise convert on every call. The record describes the *forward* convolution (x input-shaped,
y output-shaped) for every kernel, the adjoints included; see the header.

Records are cached by (geometry, strides, bias): a layer called again in a loop reuses its bytes.
"""
from __future__ import annotations

import functools
from typing import Tuple

import numpy as np

from .geometry import ConvGeometry
from ._typing import Array

#: The fields of ``struct gc_conv``, in its order (tests/test_kernels.py checks them against the
#: header; the host emulation checks the byte size against the compiled struct).
FIELDS: Tuple[str, ...] = (
    "N", "C_in", "C_out", "groups", "Cg", "Cog",
    "ID", "IH", "IW", "OD", "OH", "OW", "KD", "KH", "KW",
    "SD", "SH", "SW", "PD", "PH", "PW", "DD", "DH", "DW",
    "xs_n", "xs_c", "xs_d", "xs_h", "xs_w",
    "ys_n", "ys_c", "ys_d", "ys_h", "ys_w",
    "has_bias", "channels_last",
)

DTYPE = np.dtype([(name, np.int64) for name in FIELDS])


def _element_strides(strides: Tuple[int, ...], itemsize: int, rank: int) -> Tuple[int, ...]:
    """(n, c, d, h, w) strides in elements of a channels-first view with byte ``strides``, unit
    spatial dims in front."""
    if any(st % itemsize for st in strides):
        raise AssertionError("strides are not whole elements")  # CuPy arrays always are
    s = tuple(st // itemsize for st in strides)
    return s[:2] + (0,) * (3 - rank) + s[2:]


def conv_params(geom: ConvGeometry, x: Array, y: Array, has_bias: bool) -> np.ndarray:
    """The ``gc_conv`` record of a call: ``geom`` with the element strides of its input-shaped
    array ``x`` and output-shaped array ``y`` (channels-first views; either may be the one the
    kernel writes). A read-only 0-d array, shared between calls with the same arguments."""
    # keyed by the byte strides as the arrays hold them: no arithmetic before the cache
    return _record(geom, x.strides, x.itemsize, y.strides, y.itemsize, bool(has_bias))


@functools.lru_cache(maxsize=1024)
def _record(geom: ConvGeometry, x_strides: Tuple[int, ...], x_itemsize: int,
            y_strides: Tuple[int, ...], y_itemsize: int, has_bias: bool) -> np.ndarray:
    xs = _element_strides(x_strides, x_itemsize, geom.rank)
    ys = _element_strides(y_strides, y_itemsize, geom.rank)
    lead = (1,) * (3 - geom.rank)
    values = ((geom.N, geom.C_in, geom.C_out, geom.groups, geom.C_in_per_group,
               geom.C_out_per_group)
              + lead + geom.in_spatial + lead + geom.out_spatial + lead + geom.kernel
              + lead + geom.stride + (0,) * (3 - geom.rank) + geom.pad_before
              + lead + geom.dilation + xs + ys
              + (int(has_bias), int(geom.layout == "channels_last")))
    record = np.array(values, dtype=np.int64).view(DTYPE).reshape(())
    record.flags.writeable = False
    return record
