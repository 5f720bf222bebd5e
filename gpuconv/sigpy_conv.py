"""sigpy's convolution functions (``sigpy.conv``) computed by gpuconv.

sigpy's ``convolve``, ``convolve_data_adjoint`` and ``convolve_filter_adjoint`` (and the linear
operators built on them: ``sigpy.linop.ConvolveData``, ``ConvolveFilter`` and their adjoints) ran
on CuPy arrays through cuDNN, which CuPy 14 no longer binds: there they raise "cudnn must be
installed to perform convolution on GPU". The same three functions here take the same arguments
and give the same results, on NumPy arrays (BLAS) and CuPy arrays (gpuconv's kernels) alike, and
:func:`install` puts them in ``sigpy.conv``'s place::

    import gpuconv.sigpy_conv
    gpuconv.sigpy_conv.install()   # sigpy.conv and sigpy.linop's convolutions now run here

What sigpy's functions compute (its documentation and CPU code): true convolution (the filter
flipped, as ``scipy.signal.convolve``), ``mode`` "full" or "valid", ``strides`` per spatial axis
(the full or valid result subsampled from its first element); with ``multi_channel=False`` data
``[..., m_1, ..., m_D]`` and a filter ``[n_1, ..., n_D]``, otherwise data ``[..., c_i, m_1, ...,
m_D]`` and filters ``[c_o, c_i, n_1, ..., n_D]``; any leading axes ``...`` are a batch. The
result has the dtype of the first array argument (data for ``convolve``, output for the
adjoints), the other cast to it; the adjoints are Hermitian for complex arrays. gpuconv
convolves D = 1, 2 or 3 spatial axes; :func:`install` leaves other calls to sigpy's own
functions.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .adjoint import conv_filter_grad, conv_input_grad
from .forward import conv
from ._typing import Array

__all__ = ["convolve", "convolve_data_adjoint", "convolve_filter_adjoint", "install",
           "uninstall", "installed", "SpatialRankError"]

_FUNCTIONS = ("convolve", "convolve_data_adjoint", "convolve_filter_adjoint")


class SpatialRankError(ValueError):
    """A call of more than 3 (or no) spatial axes, which gpuconv does not convolve."""


class _Layout:
    """How a sigpy call's arrays map onto gpuconv's (batch, channels, *spatial) ones."""

    def __init__(self, data_shape: Sequence[int], filt_shape: Sequence[int], mode: str,
                 strides: Optional[Sequence[int]], multi_channel: bool) -> None:
        data_shape, filt_shape = tuple(data_shape), tuple(filt_shape)
        channels = 1 if multi_channel else 0
        D = len(filt_shape) - 2 * channels
        if D not in (1, 2, 3):
            raise SpatialRankError(
                f"gpuconv convolves 1, 2 or 3 spatial axes; a filt of shape {filt_shape} with "
                f"multi_channel={multi_channel} has {D}")
        if len(data_shape) < D + channels:
            raise ValueError(f"data of shape {data_shape} has fewer than the {D + channels} "
                             f"axes a filt of shape {filt_shape} with multi_channel="
                             f"{multi_channel} needs")
        if mode not in ("full", "valid"):
            raise ValueError(f"mode must be 'full' or 'valid', got {mode!r}")
        if strides is None:
            strides = (1,) * D
        else:
            strides = tuple(strides)
            if len(strides) != D:
                raise ValueError(f"strides must have length {D} (one per spatial axis), got "
                                 f"{strides}")
        if multi_channel:
            c_o, c_i = filt_shape[0], filt_shape[1]
            if data_shape[-D - 1] != c_i:
                raise ValueError(f"data of shape {data_shape} has {data_shape[-D - 1]} channels "
                                 f"(axis {-D - 1}); filt of shape {filt_shape} expects {c_i}")
        else:
            c_o = c_i = 1
        self.D, self.mode, self.strides, self.multi_channel = D, mode, strides, multi_channel
        self.batch = data_shape[:len(data_shape) - D - channels]
        self.B = math.prod(self.batch)
        self.lead = self.batch + ((c_o,) if multi_channel else ())  # the output's, before p
        self.c_i, self.c_o = c_i, c_o
        self.m, self.n = data_shape[-D:], filt_shape[-D:]

    def options(self) -> Dict[str, Any]:
        return dict(padding=self.mode, stride=self.strides, flip=True)

    def data(self, data: Array) -> Array:
        return data.reshape((self.B, self.c_i) + self.m)

    def filt(self, filt: Array) -> Array:
        return filt.reshape((self.c_o, self.c_i) + self.n)

    def output(self, output: Array) -> Array:
        """sigpy's ``output`` array as gpuconv's (B, c_o, *p), its shape checked."""
        if tuple(output.shape[:-self.D]) != self.lead:
            raise ValueError(f"output of shape {tuple(output.shape)} does not lead with "
                             f"{self.lead} (data's batch axes"
                             + (" and the filters' c_o)" if self.multi_channel else ")"))
        return output.reshape((self.B, self.c_o) + tuple(output.shape[-self.D:]))

    def result(self, y: Array) -> Array:
        """gpuconv's (B, c_o, *p) as sigpy's output array."""
        return y.reshape(self.lead + tuple(y.shape[2:]))


def _as_dtype_of(a: Array, like: Array, name: str, like_name: str) -> Array:
    """``a`` in ``like``'s dtype, as sigpy casts its second array; a TypeError where that
    would drop an imaginary part."""
    if np.dtype(a.dtype).kind == "c" and np.dtype(like.dtype).kind != "c":
        raise TypeError(f"{name} is complex ({a.dtype}) and {like_name} is not "
                        f"({like.dtype}): the result takes {like_name}'s dtype, which would "
                        f"drop {name}'s imaginary part; make {like_name} complex")
    return a.astype(like.dtype, copy=False)


def convolve(data: Array, filt: Array, mode: str = "full",
             strides: Optional[Sequence[int]] = None, multi_channel: bool = False) -> Array:
    """sigpy.conv.convolve: data ``[..., (c_i,) m_1..m_D]`` convolved with ``filt``
    (``[n_1..n_D]``, or ``[c_o, c_i, n_1..n_D]`` with ``multi_channel``) into ``[..., (c_o,)
    p_1..p_D]``, p = ceil((m + n - 1) / s) ("full") or ceil((m - n + 1) / s) ("valid")."""
    layout = _Layout(data.shape, filt.shape, mode, strides, multi_channel)
    w = _as_dtype_of(filt, data, "filt", "data")
    return layout.result(conv(layout.data(data), layout.filt(w), **layout.options()))


def convolve_data_adjoint(output: Array, filt: Array, data_shape: Sequence[int],
                          mode: str = "full", strides: Optional[Sequence[int]] = None,
                          multi_channel: bool = False) -> Array:
    """sigpy.conv.convolve_data_adjoint: the adjoint of ``data -> convolve(data, filt)``
    (Hermitian for complex arrays) applied to ``output``; an array of ``data_shape``."""
    data_shape = tuple(int(d) for d in data_shape)
    layout = _Layout(data_shape, filt.shape, mode, strides, multi_channel)
    w = _as_dtype_of(filt, output, "filt", "output")
    x = conv_input_grad(layout.output(output), layout.filt(w), (layout.B, layout.c_i) + layout.m,
                        **layout.options())
    return x.reshape(data_shape)


def convolve_filter_adjoint(output: Array, data: Array, filt_shape: Sequence[int],
                            mode: str = "full", strides: Optional[Sequence[int]] = None,
                            multi_channel: bool = False) -> Array:
    """sigpy.conv.convolve_filter_adjoint: the adjoint of ``filt -> convolve(data, filt)``
    (Hermitian for complex arrays) applied to ``output``; an array of ``filt_shape``."""
    filt_shape = tuple(int(d) for d in filt_shape)
    layout = _Layout(data.shape, filt_shape, mode, strides, multi_channel)
    x = _as_dtype_of(data, output, "data", "output")
    w = conv_filter_grad(layout.data(x), layout.output(output), (layout.c_o, layout.c_i)
                         + layout.n, **layout.options())
    return w.reshape(filt_shape)


#: sigpy.conv's own functions while :func:`install` has replaced them
_ORIGINALS: Dict[str, Callable[..., Any]] = {}


def _instead_of(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """Our function ``name`` where gpuconv takes the call, sigpy's ``original`` where it has
    more or fewer than 3 spatial axes."""
    ours = globals()[name]

    @functools.wraps(original)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return ours(*args, **kwargs)
        except SpatialRankError:
            return original(*args, **kwargs)
    call.__gpuconv__ = True  # type: ignore[attr-defined]
    return call


def install() -> None:
    """Replace ``sigpy.conv.convolve``, ``convolve_data_adjoint`` and
    ``convolve_filter_adjoint`` by gpuconv's (sigpy.linop's convolution operators call them
    there); calls of other than 1-3 spatial axes still go to sigpy's own. Installing twice
    changes nothing; :func:`uninstall` puts sigpy's back. ImportError without sigpy."""
    import sigpy.conv
    for name in _FUNCTIONS:
        current = getattr(sigpy.conv, name)
        if getattr(current, "__gpuconv__", False):
            continue
        _ORIGINALS[name] = current
        setattr(sigpy.conv, name, _instead_of(name, current))


def uninstall() -> None:
    """Put sigpy's own convolution functions back where :func:`install` replaced them."""
    import sigpy.conv
    for name, original in list(_ORIGINALS.items()):
        setattr(sigpy.conv, name, original)
        del _ORIGINALS[name]


def installed() -> Tuple[str, ...]:
    """The names in sigpy.conv that gpuconv's functions stand in for now."""
    return tuple(_ORIGINALS)
