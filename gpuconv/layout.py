"""Array views shared by both backends: layouts, the batch axis, padding modes.

Backends compute on a channels-first *view* ``(N, C, *spatial)`` of the caller's array and write
into an output allocated in the caller's layout; these helpers make those views without copying.
``xp`` is the array module (numpy or cupy).
"""
from __future__ import annotations

from .geometry import ConvGeometry
from typing import Any, Optional, Sequence, Tuple
from ._typing import Array, DTypeLike

#: padding_mode -> the mode of ``numpy.pad``/``cupy.pad`` with PyTorch's meaning.
PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def to_channels_first(xp: Any, x: Array, geom: ConvGeometry) -> Array:
    """``x`` as the caller gave it -> a view of shape ``(N, C_in, *spatial)``."""
    if not geom.batched:
        x = x[None]
    if geom.layout == "channels_last":
        x = xp.moveaxis(x, -1, 1)
    return x


def _alloc(xp: Any, geom: ConvGeometry, channels: int, spatial: Sequence[int],
           dtype: DTypeLike) -> Tuple[Array, Array]:
    if geom.layout == "channels_first":
        out = xp.empty((geom.N, channels) + tuple(spatial), dtype=dtype)
        view = out
    else:
        out = xp.empty((geom.N,) + tuple(spatial) + (channels,), dtype=dtype)
        view = xp.moveaxis(out, -1, 1)
    return (out if geom.batched else out[0]), view


def alloc_output(xp: Any, geom: ConvGeometry, dtype: DTypeLike) -> Tuple[Array, Array]:
    """(conv's result in the caller's layout, its channels-first view (N, C_out, *out_spatial))."""
    return _alloc(xp, geom, geom.C_out, geom.out_spatial, dtype)


def alloc_input(xp: Any, geom: ConvGeometry, dtype: DTypeLike) -> Tuple[Array, Array]:
    """(an array shaped like conv's x in the caller's layout, its view (N, C_in, *in_spatial)):
    where the input gradient and the transposed convolution go."""
    return _alloc(xp, geom, geom.C_in, geom.in_spatial, dtype)


def pointwise_view(x_cf: Array, geom: ConvGeometry) -> Array:
    """The input elements a 1x1 convolution without padding reads: every stride-th position of
    ``x_cf`` ``(N, C, *spatial)`` along each axis, a view ``(N, C, *out_spatial)``."""
    return x_cf[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in geom.stride)]


def merged_stride(shape: Sequence[int], strides: Sequence[int]) -> Optional[int]:
    """The one stride (in the units of ``strides``) at which axes ``shape`` of an array step
    through their elements in C order as one flattened axis, or None where they do not: each
    axis's stride is the next one's times the next one's length (axes of length 1 take any
    stride). 1 for no axes, or axes of one element."""
    inner: Optional[int] = None  # the stride of the flattened axes below the current one
    size = 1                     # and how many elements they hold
    for n, st in zip(reversed(tuple(shape)), reversed(tuple(strides))):
        if n == 1:
            continue
        if inner is None:
            inner = st
        elif st != inner * size:
            return None
        size *= n
    return 1 if inner is None else inner


def pad_spatial(xp: Any, x: Array, geom: ConvGeometry, channels_last: bool = False) -> Array:
    """A padded copy of ``x`` -- ``(N, C, *spatial)``, or ``(N, *spatial, C)`` when
    ``channels_last`` -- by ``geom``'s padding and padding_mode (same axis order out)."""
    spatial = list(zip(geom.pad_before, geom.pad_after))
    widths = [(0, 0)] + spatial + [(0, 0)] if channels_last else [(0, 0), (0, 0)] + spatial
    return xp.pad(x, widths, mode=PAD_MODES[geom.padding_mode])


def unpad_adjoint(xp: Any, grad_padded: Array, geom: ConvGeometry, out: Array) -> None:
    """The adjoint of :func:`pad_spatial`: fold a gradient over the padded input back onto x.

    ``grad_padded`` is ``(N, C, *padded_spatial)``; ``out`` (``(N, C, *in_spatial)``) receives
    the interior plus every padded element added onto the sample it was copied from. Within one
    border every source index is distinct (reflect and circular padding never exceed the input,
    replicate copies one edge sample, which is summed first), so plain indexed adds are exact and
    deterministic.
    """
    g = grad_padded
    for ax in range(geom.rank):
        axis = 2 + ax
        n, b, a = geom.in_spatial[ax], geom.pad_before[ax], geom.pad_after[ax]
        take = lambda sl: g[(slice(None),) * axis + (sl,)]  # noqa: E731
        inner = take(slice(b, b + n)).copy()
        if geom.padding_mode == "zeros":
            g = inner
            continue
        at = lambda idx: (slice(None),) * axis + (idx,)  # noqa: E731
        if geom.padding_mode == "replicate":
            if b:
                inner[at(slice(0, 1))] += take(slice(0, b)).sum(axis=axis, keepdims=True)
            if a:
                inner[at(slice(n - 1, n))] += take(slice(b + n, b + n + a)).sum(
                    axis=axis, keepdims=True)
        else:
            # source of padded position p (p < b before, p >= b + n after), as PyTorch pads
            if geom.padding_mode == "reflect":
                src_before = [b - p for p in range(b)]
                src_after = [n - 2 - j for j in range(a)]
            else:  # circular
                src_before = [(p - b) % n for p in range(b)]
                src_after = [j % n for j in range(a)]
            if b:
                inner[at(xp.asarray(src_before))] += take(slice(0, b))
            if a:
                inner[at(xp.asarray(src_after))] += take(slice(b + n, b + n + a))
        g = inner
    out[...] = g
