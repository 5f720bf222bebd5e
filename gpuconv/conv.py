"""The public convolution functions: validate once, then hand the call to one backend."""
from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np

from . import device as _device
from .dtypes import check_dtype, result_dtype
from .geometry import IntOrTuple, PaddingArg, plan_conv
from .kernels import ACTIVATIONS
from .layout import alloc_output, to_channels_first


def _check_array(a, name: str) -> None:
    if isinstance(a, np.ndarray) or _device.is_cupy_array(a):
        check_dtype(a, name)
        return
    raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__module__}."
                    f"{type(a).__qualname__}")


def _to_host(a):
    return a.get() if _device.is_cupy_array(a) else a


def _to_current_gpu(cupy, a):
    """``a`` on CuPy's current device: NumPy arrays are copied there, and so are CuPy arrays that
    live on another GPU (a kernel must not dereference another device's memory)."""
    if _device.is_cupy_array(a) and a.device.id != cupy.cuda.Device().id:
        return cupy.array(a, copy=True)
    return cupy.asarray(a)


def _conv(fname: str, rank: Optional[int], x, filters, bias, stride, padding, dilation, groups,
          padding_mode, layout, flip, activation, device):
    _check_array(x, "x")
    _check_array(filters, "filters")
    if bias is not None:
        _check_array(bias, "bias")
    if not isinstance(flip, (bool, np.bool_)):
        raise TypeError(f"flip must be True or False, got {flip!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    geom = plan_conv(tuple(x.shape), tuple(filters.shape),
                     None if bias is None else tuple(bias.shape), stride=stride, padding=padding,
                     dilation=dilation, groups=groups, padding_mode=padding_mode, layout=layout,
                     rank=rank, fname=fname)
    dtype = result_dtype(x.dtype, filters.dtype, None if bias is None else bias.dtype)
    if activation is not None and dtype.kind == "c":
        raise ValueError(f"activation={activation!r} is not defined for complex values "
                         f"(dtype {dtype.name}); apply it to the real or imaginary part yourself")
    kind, device_id = _device.resolve(device, x, filters, bias)

    w = filters
    if flip:  # true convolution is correlation with every kernel reversed along each axis
        w = filters[(Ellipsis,) + (slice(None, None, -1),) * geom.rank]

    if kind == "cpu":
        from . import cpu as backend
        x, w, bias = _to_host(x), _to_host(w), None if bias is None else _to_host(bias)
        out, out_cf = alloc_output(np, geom, dtype)
        backend.conv_forward(to_channels_first(np, x, geom), w, bias, geom, activation, out_cf)
        return out

    import cupy
    from . import cuda as backend
    x_on_gpu = _device.is_cupy_array(x)
    ctx = cupy.cuda.Device(device_id) if device_id is not None else contextlib.nullcontext()
    with ctx:
        x, w = _to_current_gpu(cupy, x), _to_current_gpu(cupy, w)
        bias = None if bias is None else _to_current_gpu(cupy, bias)
        out, out_cf = alloc_output(cupy, geom, dtype)
        backend.conv_forward(to_channels_first(cupy, x, geom), w, bias, geom, activation,
                             out_cf)
        return out if x_on_gpu else out.get()


_DOC = """{summary}

    Shapes (D = {rank_words}):
      x:       (N, C_in, *spatial) for layout="channels_first", (N, *spatial, C_in) for
               "channels_last"; without the N axis the result has none either (as in PyTorch).
      filters: (C_out, C_in // groups, *kernel_size) -- C_out filters, each a stack of
               C_in // groups kernels; filter o's kernel c is correlated with input channel
               (o // (C_out // groups)) * (C_in // groups) + c and the maps are summed.
      bias:    (C_out,) or None.
      result:  (N, C_out, *out_spatial) or (N, *out_spatial, C_out), in the promoted dtype of
               x, filters and bias, with out_spatial = (in + before + after - dilation*(k-1) - 1)
               // stride + 1 per axis.

    Options:
      stride, dilation: int or one int per spatial dim, >= 1.
      padding: int; one int per dim; one (before, after) pair per dim; "valid" (none); "full"
               (dilation*(k-1) on both sides, as scipy.signal mode='full'); "same" (output
               ceil(in/stride), the extra element of an odd total after, as TensorFlow/Keras).
      padding_mode: "zeros", "reflect", "replicate" or "circular" (PyTorch's meanings).
      groups: divides C_in and C_out; groups == C_in is depthwise convolution.
      flip: False computes cross-correlation (PyTorch, Keras, JAX); True computes true
            convolution (scipy.signal.convolve, sigpy). Neither conjugates complex filters.
      activation: None, "relu", "sigmoid" or "tanh", applied after the bias in the same pass
            (real dtypes only).
      device: "auto" (GPUCONV_DEVICE if set; else CuPy arrays stay on their GPU and NumPy arrays
            use the GPU when one is usable, coming back as NumPy), "cpu", "cuda" or "cuda:N".

    dtypes: float16 (accumulated in float32), float32, float64, complex64, complex128.
    Raises TypeError/ValueError naming the argument for bad input, and
    gpuconv.DeviceUnavailableError when device="cuda" cannot be used. Inputs are never modified.
    """


def conv(x, filters, bias=None, *, stride: IntOrTuple = 1, padding: PaddingArg = 0,
         dilation: IntOrTuple = 1, groups: int = 1, padding_mode: str = "zeros",
         layout: str = "channels_first", flip: bool = False, activation: Optional[str] = None,
         device: str = "auto"):
    return _conv("conv", None, x, filters, bias, stride, padding, dilation, groups,
                 padding_mode, layout, flip, activation, device)


def conv1d(x, filters, bias=None, *, stride: IntOrTuple = 1, padding: PaddingArg = 0,
           dilation: IntOrTuple = 1, groups: int = 1, padding_mode: str = "zeros",
           layout: str = "channels_first", flip: bool = False,
           activation: Optional[str] = None, device: str = "auto"):
    return _conv("conv1d", 1, x, filters, bias, stride, padding, dilation, groups,
                 padding_mode, layout, flip, activation, device)


def conv2d(x, filters, bias=None, *, stride: IntOrTuple = 1, padding: PaddingArg = 0,
           dilation: IntOrTuple = 1, groups: int = 1, padding_mode: str = "zeros",
           layout: str = "channels_first", flip: bool = False,
           activation: Optional[str] = None, device: str = "auto"):
    return _conv("conv2d", 2, x, filters, bias, stride, padding, dilation, groups,
                 padding_mode, layout, flip, activation, device)


def conv3d(x, filters, bias=None, *, stride: IntOrTuple = 1, padding: PaddingArg = 0,
           dilation: IntOrTuple = 1, groups: int = 1, padding_mode: str = "zeros",
           layout: str = "channels_first", flip: bool = False,
           activation: Optional[str] = None, device: str = "auto"):
    return _conv("conv3d", 3, x, filters, bias, stride, padding, dilation, groups,
                 padding_mode, layout, flip, activation, device)


conv.__doc__ = _DOC.format(summary="N-D multi-channel convolution of x with a bank of filters.",
                           rank_words="filters.ndim - 2, that is 1, 2 or 3")
for _f, _d in ((conv1d, 1), (conv2d, 2), (conv3d, 3)):
    _f.__doc__ = _DOC.format(summary=f"{_d}-D multi-channel convolution; like gpuconv.conv but "
                                     f"requires {_d}-D kernels.", rank_words=str(_d))
