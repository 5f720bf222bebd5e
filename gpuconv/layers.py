"""Keras-style convolution layers that hold their filters and call :func:`gpuconv.conv`."""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple, Union

import numpy as np

from .device import is_cupy_array
from .forward import conv
from .interop import as_array
from .geometry import IntOrTuple, PaddingArg, normalize_ints
from ._typing import Array, DTypeLike

INITIALIZERS = ("glorot_uniform", "he_normal", "zeros")


def _initial(name: str, shape: Tuple[int, ...], fan_in: int, fan_out: int,
             rng: np.random.Generator) -> np.ndarray:
    if name == "glorot_uniform":  # Glorot & Bengio 2010: U(-l, l), l = sqrt(6 / (in + out))
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape)
    if name == "he_normal":  # He et al. 2015: std sqrt(2 / fan_in), truncated at 2 std as Keras
        z = rng.standard_normal(shape)
        bad = np.abs(z) > 2
        while bad.any():
            z[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(z) > 2
        return z * math.sqrt(2.0 / fan_in) / 0.87962566103423978  # std of N(0,1) cut at +-2
    if name == "zeros":
        return np.zeros(shape)
    raise ValueError(f"kernel_initializer must be one of {INITIALIZERS}, got {name!r}")


class _ConvND:
    rank = 0

    def __init__(self, filters: int, kernel_size: Union[int, Tuple[int, ...]],
                 strides: IntOrTuple = 1, padding: PaddingArg = "valid",
                 dilation_rate: IntOrTuple = 1, groups: int = 1,
                 activation: Optional[str] = None, use_bias: bool = True,
                 data_format: str = "channels_last", kernel_initializer: str = "glorot_uniform",
                 seed: Optional[int] = None, dtype: DTypeLike = "float32",
                 padding_mode: str = "zeros", device: str = "auto"):
        if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
            raise ValueError(f"filters (the number of filters, C_out) must be an int >= 1, "
                             f"got {filters!r}")
        self.n_filters = filters
        self.kernel_size = normalize_ints(kernel_size, self.rank, "kernel_size", 1)
        self.strides, self.padding, self.dilation_rate = strides, padding, dilation_rate
        self.groups, self.activation, self.use_bias = groups, activation, use_bias
        self.data_format, self.padding_mode, self.device = data_format, padding_mode, device
        if kernel_initializer not in INITIALIZERS:
            raise ValueError(f"kernel_initializer must be one of {INITIALIZERS}, got "
                             f"{kernel_initializer!r}")
        self.kernel_initializer = kernel_initializer
        self.dtype = np.dtype(dtype)
        self.seed = seed
        # NumPy or CuPy arrays, made on the first call on the input's device
        self.filters: Any = None  # (C_out, C_in // groups, *kernel_size)
        self.bias: Any = None     # (C_out,) or None

    @property
    def built(self) -> bool:
        return self.filters is not None

    def build(self, in_channels: int, like: Optional[Array] = None) -> None:
        """Make the filters for ``in_channels`` input channels, on ``like``'s device."""
        if in_channels % self.groups or self.n_filters % self.groups:
            raise ValueError(f"groups={self.groups} must divide the input channels "
                             f"({in_channels}) and the filters ({self.n_filters})")
        Cg = in_channels // self.groups
        shape = (self.n_filters, Cg) + self.kernel_size
        taps = math.prod(self.kernel_size)
        rng = np.random.default_rng(self.seed)
        w = _initial(self.kernel_initializer, shape, fan_in=Cg * taps,
                     fan_out=self.n_filters // self.groups * taps, rng=rng).astype(self.dtype)
        b = np.zeros(self.n_filters, self.dtype) if self.use_bias else None
        if like is not None and is_cupy_array(like):
            import cupy
            with like.device:
                w = cupy.asarray(w)
                b = None if b is None else cupy.asarray(b)
        self.filters, self.bias = w, b

    def kernel(self, o: int, c: int) -> Array:
        """The kernel of filter ``o`` for input channel ``c`` of its group: ``kernel_size``."""
        if not self.built:
            raise ValueError("the layer has no filters yet: call it on an input first")
        return self.filters[o, c]

    def __call__(self, x: Array) -> Array:
        """``conv(x, self.filters, self.bias, ...)``; x is ``(N, *spatial, C_in)`` for
        data_format="channels_last" (the default, as in Keras) or ``(N, C_in, *spatial)``."""
        xa = as_array(x, "x")  # a NumPy/CuPy view of x, to read its shape and device
        if xa.ndim not in (self.rank + 1, self.rank + 2):
            raise ValueError(f"{type(self).__name__} needs x with {self.rank + 2} dims (or "
                             f"{self.rank + 1} without the batch axis), got shape "
                             f"{tuple(xa.shape)}")
        in_channels = xa.shape[-1] if self.data_format == "channels_last" else \
            xa.shape[1 if xa.ndim == self.rank + 2 else 0]
        if not self.built:
            self.build(in_channels, like=xa)
        return conv(x, self.filters, self.bias, stride=self.strides, padding=self.padding,
                    dilation=self.dilation_rate, groups=self.groups,
                    padding_mode=self.padding_mode, layout=self.data_format,
                    activation=self.activation, device=self.device)

    def __repr__(self) -> str:
        shape = None if not self.built else tuple(self.filters.shape)
        return (f"{type(self).__name__}(filters={self.n_filters}, kernel_size="
                f"{self.kernel_size}, strides={self.strides}, padding={self.padding!r}, "
                f"groups={self.groups}, activation={self.activation!r}, "
                f"data_format={self.data_format!r}; filters array {shape})")


class Conv1D(_ConvND):
    """1-D convolution layer (Keras-style constructor); weights ``(C_out, C_in/groups, k)``.

    Input ``(N, L, C_in)`` (data_format="channels_last", the default) or ``(N, C_in, L)``;
    output ``(N, L', C_out)`` or ``(N, C_out, L')``. Arguments as for :class:`Conv2D`.
    """
    rank = 1


class Conv2D(_ConvND):
    """2-D convolution layer (Keras-style constructor); weights ``(C_out, C_in/groups, kh, kw)``.

    ``Conv2D(filters, kernel_size, strides=1, padding="valid", dilation_rate=1, groups=1,
    activation=None, use_bias=True, data_format="channels_last",
    kernel_initializer="glorot_uniform" | "he_normal" | "zeros", seed=None, dtype="float32")``.
    Input ``(N, H, W, C_in)`` (data_format="channels_last", the default) or
    ``(N, C_in, H, W)``; output ``(N, H', W', C_out)`` or ``(N, C_out, H', W')``.
    The filters are made on the first call from the input's channel count, on the input's
    device, and held as ``.filters`` and ``.bias``; ``layer.kernel(o, c)`` is one kernel.
    """
    rank = 2


class Conv3D(_ConvND):
    """3-D convolution layer (Keras-style constructor); weights
    ``(C_out, C_in/groups, kd, kh, kw)``.

    Input ``(N, D, H, W, C_in)`` (data_format="channels_last", the default) or
    ``(N, C_in, D, H, W)``; output likewise with C_out channels. Arguments as for
    :class:`Conv2D`.
    """
    rank = 3
