"""The public convolution functions: validate once, then hand the call to one backend."""
from __future__ import annotations

from typing import Any, Optional

from . import repeat
from .algorithms import check_name
from .dispatch import as_array, check_flip, flipped, run
from .dtypes import result_dtype
from .geometry import IntOrTuple, PaddingArg, plan_conv
from .kernels import ACTIVATIONS
from .layout import alloc_output, to_channels_first
from ._typing import Array


def _conv(fname: str, rank: Optional[int], x: Array, filters: Array, bias: Array,
          stride: IntOrTuple, padding: PaddingArg, dilation: IntOrTuple, groups: int,
          padding_mode: str, layout: str, flip: bool, activation: Optional[str],
          device: str, algorithm: str) -> Array:
    options = (rank, stride, padding, dilation, groups, padding_mode, layout, activation, device,
               algorithm)
    key = repeat.key(x, filters, bias, flip, options)
    known: Any = False if key is None else repeat.lookup(key)
    if known:  # a Replay: the call repeats one whose launches it holds
        out = known(x, filters, bias)
        if out is not None:
            return out
    x_in = x
    x, filters = as_array(x, "x"), as_array(filters, "filters")
    if bias is not None:
        bias = as_array(bias, "bias")
    check_flip(flip)
    check_name(algorithm)
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

    def compute(xp: Any, backend: Any, x: Array, w: Array, b: Array) -> Array:
        out, out_cf = alloc_output(xp, geom, dtype)
        # true convolution is correlation with every kernel reversed along each axis
        backend.conv_forward(to_channels_first(xp, x, geom), flipped(w, geom.rank) if flip else w,
                             b, geom, activation, out_cf, algorithm)
        return out

    result = run(device, x_in, (x, filters, bias), compute)
    if key is not None and known is False:  # a call not seen before
        repeat.remember(key, x, filters, bias, flip, geom, dtype, activation, device, algorithm)
    return result


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
      algorithm: "auto" (a rule on the shape), or one of the device's algorithms to force it:
            CPU "gemm", "gemm_shifted", "pointwise", "depthwise"; CUDA "direct",
            "few_filters", "gemm", "gemm_64x64", "gemm_128x128", "gemm_128x64", "gemm_128x32",
            "gemm_128x8", "gemm_cl", "gemm_tc", "gemm_tc_cl", "gemm_wgmma" (H100/H200 only),
            "gemm_tf32", "im2col", "winograd", "pointwise", "depthwise", "depthwise_tile" (see
            gpuconv.algorithms). Same result
            (gemm_tf32: TF32-rounded products; winograd: the rounding of its transforms), other
            speed; ValueError if the device lacks it or it does not apply to the layer.

    dtypes: float16 and bfloat16 (ml_dtypes; both accumulated in float32), float32, float64,
    complex64, complex128.
    Raises TypeError/ValueError naming the argument for bad input, and
    gpuconv.DeviceUnavailableError when device="cuda" cannot be used. Inputs are never modified.
    """


def conv(x: Array, filters: Array, bias: Optional[Array] = None, *, stride: IntOrTuple = 1,
         padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1,
         padding_mode: str = "zeros", layout: str = "channels_first", flip: bool = False,
         activation: Optional[str] = None, device: str = "auto",
         algorithm: str = "auto") -> Array:
    return _conv("conv", None, x, filters, bias, stride, padding, dilation, groups,
                 padding_mode, layout, flip, activation, device, algorithm)


def conv1d(x: Array, filters: Array, bias: Optional[Array] = None, *, stride: IntOrTuple = 1,
           padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1,
           padding_mode: str = "zeros", layout: str = "channels_first", flip: bool = False,
           activation: Optional[str] = None, device: str = "auto",
           algorithm: str = "auto") -> Array:
    return _conv("conv1d", 1, x, filters, bias, stride, padding, dilation, groups,
                 padding_mode, layout, flip, activation, device, algorithm)


def conv2d(x: Array, filters: Array, bias: Optional[Array] = None, *, stride: IntOrTuple = 1,
           padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1,
           padding_mode: str = "zeros", layout: str = "channels_first", flip: bool = False,
           activation: Optional[str] = None, device: str = "auto",
           algorithm: str = "auto") -> Array:
    return _conv("conv2d", 2, x, filters, bias, stride, padding, dilation, groups,
                 padding_mode, layout, flip, activation, device, algorithm)


def conv3d(x: Array, filters: Array, bias: Optional[Array] = None, *, stride: IntOrTuple = 1,
           padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1,
           padding_mode: str = "zeros", layout: str = "channels_first", flip: bool = False,
           activation: Optional[str] = None, device: str = "auto",
           algorithm: str = "auto") -> Array:
    return _conv("conv3d", 3, x, filters, bias, stride, padding, dilation, groups,
                 padding_mode, layout, flip, activation, device, algorithm)


conv.__doc__ = _DOC.format(summary="N-D multi-channel convolution of x with a bank of filters.",
                           rank_words="filters.ndim - 2, that is 1, 2 or 3")
for _f, _d in ((conv1d, 1), (conv2d, 2), (conv3d, 3)):
    _f.__doc__ = _DOC.format(summary=f"{_d}-D multi-channel convolution; like gpuconv.conv but "
                                     f"requires {_d}-D kernels.", rank_words=str(_d))
