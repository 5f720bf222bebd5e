"""Array views shared by both backends: layouts, the batch axis, padding modes.

Backends compute on a channels-first *view* ``(N, C, *spatial)`` of the caller's array and write
into an output allocated in the caller's layout; these helpers make those views without copying.
``xp`` is the array module (numpy or cupy).
"""
from __future__ import annotations

from .geometry import ConvGeometry

#: padding_mode -> the mode of ``numpy.pad``/``cupy.pad`` with PyTorch's meaning.
PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def to_channels_first(xp, x, geom: ConvGeometry):
    """``x`` as the caller gave it -> a view of shape ``(N, C_in, *spatial)``."""
    if not geom.batched:
        x = x[None]
    if geom.layout == "channels_last":
        x = xp.moveaxis(x, -1, 1)
    return x


def alloc_output(xp, geom: ConvGeometry, dtype):
    """(result in the caller's layout, its channels-first view ``(N, C_out, *out_spatial)``)."""
    if geom.layout == "channels_first":
        out = xp.empty((geom.N, geom.C_out) + geom.out_spatial, dtype=dtype)
        view = out
    else:
        out = xp.empty((geom.N,) + geom.out_spatial + (geom.C_out,), dtype=dtype)
        view = xp.moveaxis(out, -1, 1)
    return (out if geom.batched else out[0]), view


def pad_spatial(xp, x_cf, geom: ConvGeometry):
    """A padded copy of the channels-first ``x_cf`` by ``geom``'s padding and padding_mode."""
    widths = [(0, 0), (0, 0)] + list(zip(geom.pad_before, geom.pad_after))
    return xp.pad(x_cf, widths, mode=PAD_MODES[geom.padding_mode])
