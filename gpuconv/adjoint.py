"""Transposed convolution and the exact adjoints of ``conv`` (its gradients)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from .dispatch import as_array, check_flip, flipped, run
from .dtypes import result_dtype
from .geometry import (ConvGeometry, IntOrTuple, PaddingArg, data_adjoint_phases,
                       plan_conv_filter_grad, plan_conv_input_grad, plan_conv_transpose)
from .layout import alloc_input, to_channels_first
from ._typing import Array


def _by_phases(geom: ConvGeometry, backend: Any) -> bool:
    """Whether the data adjoint of ``geom``'s conv runs as forward convolutions, one per stride
    phase (geometry.data_adjoint_phases; zero padding only, other modes fold their borders).
    Those convs have C_in/groups outputs a filter, and each backend says from how many its
    forward algorithms beat its own data adjoint (``DATA_ADJOINT_AS_CONV_MIN_CHANNELS``): the
    CPU's GEMM wants >= 16 for strided layers (fewer make a matrix-vector product over unrolled
    windows, and the phases' Python adds up: CPU 2 x 3 x 64^2 by 16 3x3 filters, stride 2,
    0.22 ms by its adjoint against 0.29 by phases, stride 3 0.16 / 0.30, r50_conv1_7x7s2 in
    float64 22.8 / 27.9); CUDA takes them from 1, as its adjoint kernel, a thread per input
    element, ran that layer at 0.2 TFLOP/s (H100). Layers of stride 1 (one phase: a single
    forward conv) and plain depthwise layers always go by phases: the forward paths do less
    index arithmetic per term and have the fast kernels (CPU mbv2_dw_3x3_c576 29 -> 1.8 ms;
    session 26, float32, ms, adjoint / phases: one 5x5 kernel on 512^2 14.3 / 0.45, one
    31-tap kernel on 10^5 samples 4.0 / 0.30, 8 x 16 x 32^2 by 16 3x3 filters 1.46 / 0.35,
    3-D 2 x 8 x 16^3 by 8 2.5 / 0.36, complex64 4 x 2 x 128^2 by 8 5x5 7.9 / 2.4)."""
    depthwise = geom.C_in_per_group == geom.C_out_per_group == 1 and geom.groups > 1
    return (depthwise or max(geom.stride) == 1
            or geom.C_in_per_group >= backend.DATA_ADJOINT_AS_CONV_MIN_CHANNELS)


def _data_adjoint(xp: Any, backend: Any, g_cf: Array, w: Array, bias: Array,
                  geom: ConvGeometry, conjugate: bool, out_cf: Array) -> None:
    """``out_cf`` = the data adjoint of ``geom``'s conv applied to ``g_cf`` (conjugated filters
    when ``conjugate``), plus ``bias``: by stride phases where _by_phases says so, else by the
    backend's data adjoint."""
    phases = data_adjoint_phases(geom) if _by_phases(geom, backend) else None
    if phases is None:
        backend.data_adjoint(g_cf, w, bias, geom, conjugate, out_cf)
        return
    # each group's filters transposed, (groups, C_in/groups, C_out/groups, *kernel): a view
    wt = xp.swapaxes(w.reshape((geom.groups, geom.C_out_per_group, geom.C_in_per_group)
                               + geom.kernel), 1, 2)
    if conjugate and wt.dtype.kind == "c":
        wt = xp.conj(wt)
    lead = (slice(None), slice(None))
    for phase in phases:
        dst = out_cf[lead + phase.out]
        if phase.conv is None:  # no tap reaches these elements
            dst[...] = 0 if bias is None else bias.reshape((1, -1) + (1,) * geom.rank)
            continue
        # the phase's taps reversed, as filters (C_in, C_out/groups, *taps): one copy (on a
        # GPU, one launch) that the forward path then takes as it is
        taps = xp.ascontiguousarray(flipped(wt[(slice(None),) + lead + phase.taps], geom.rank))
        taps = taps.reshape((geom.C_in, geom.C_out_per_group) + taps.shape[3:])
        backend.conv_forward(g_cf[lead + phase.grad], taps, bias, phase.conv, None, dst, "auto")


def _conv_transpose(fname: str, rank: Optional[int], y: Array, filters: Array, bias: Array,
                    stride: IntOrTuple, padding: PaddingArg, output_padding: IntOrTuple,
                    dilation: IntOrTuple, groups: int, layout: str, flip: bool,
                    device: str) -> Array:
    y_in = y
    y, filters = as_array(y, "y"), as_array(filters, "filters")
    if bias is not None:
        bias = as_array(bias, "bias")
    check_flip(flip)
    geom = plan_conv_transpose(tuple(y.shape), tuple(filters.shape),
                               None if bias is None else tuple(bias.shape), stride=stride,
                               padding=padding, output_padding=output_padding, dilation=dilation,
                               groups=groups, layout=layout, rank=rank, fname=fname)
    dtype = result_dtype(y.dtype, filters.dtype, None if bias is None else bias.dtype)

    def compute(xp: Any, backend: Any, y: Array, w: Array, b: Array) -> Array:
        out, out_cf = alloc_input(xp, geom, dtype)
        _data_adjoint(xp, backend, to_channels_first(xp, y, geom),
                      flipped(w, geom.rank) if flip else w, b, geom, False, out_cf)
        return out

    return run(device, y_in, (y, filters, bias), compute)


def conv_transpose(y: Array, filters: Array, bias: Optional[Array] = None, *,
                   stride: IntOrTuple = 1, padding: PaddingArg = 0,
                   output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1,
                   layout: str = "channels_first", flip: bool = False,
                   device: str = "auto") -> Array:
    """Transposed convolution (PyTorch's ``conv_transpose{1,2,3}d``, same weight layout).

    Shapes (D = filters.ndim - 2):
      y:       (N, C_out, *spatial) or (N, *spatial, C_out) for layout="channels_last";
               without N the result has none either.
      filters: (C_out, C_in // groups, *kernel_size) -- the same array ``conv`` takes for the
               convolution this transposes: each of y's C_out channels is spread back through
               its filter's C_in // groups kernels onto the C_in result channels.
      bias:    (C_in,) or None.
      result:  (N, C_in, *out) with out = (in - 1)*stride - before - after
               + dilation*(k - 1) + output_padding + 1 per axis.

    ``padding``: int, one int per dim, or one (before, after) pair per dim (the padding of the
    forward conv). ``output_padding`` (< max(stride, dilation)) adds rows at the end, resolving
    which input size a strided conv came from. ``flip=True`` transposes true convolution.
    Complex filters are not conjugated (a transpose, as in PyTorch); for the Hermitian adjoint
    use :func:`conv_input_grad`. Other options and devices are as for :func:`gpuconv.conv`.
    """
    return _conv_transpose("conv_transpose", None, y, filters, bias, stride, padding,
                           output_padding, dilation, groups, layout, flip, device)


def conv_transpose1d(y: Array, filters: Array, bias: Optional[Array] = None, *,
                     stride: IntOrTuple = 1, padding: PaddingArg = 0,
                     output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, layout: str = "channels_first", flip: bool = False,
                     device: str = "auto") -> Array:
    """1-D :func:`conv_transpose` (filters must have 1-D kernels).

    ``y``: ``(N, C_out, L)`` (or ``(N, L, C_out)`` for ``layout="channels_last"``);
    ``filters``: ``(C_out, C_in // groups, k)``; ``bias``: ``(C_in,)`` or None; the result:
    ``(N, C_in, *out)`` with out = (in - 1)*stride - before - after + dilation*(k - 1) +
    output_padding + 1 per axis. See :func:`conv_transpose` for the options.
    """
    return _conv_transpose("conv_transpose1d", 1, y, filters, bias, stride, padding,
                           output_padding, dilation, groups, layout, flip, device)


def conv_transpose2d(y: Array, filters: Array, bias: Optional[Array] = None, *,
                     stride: IntOrTuple = 1, padding: PaddingArg = 0,
                     output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, layout: str = "channels_first", flip: bool = False,
                     device: str = "auto") -> Array:
    """2-D :func:`conv_transpose` (filters must have 2-D kernels).

    ``y``: ``(N, C_out, H, W)`` (or ``(N, H, W, C_out)`` for ``layout="channels_last"``);
    ``filters``: ``(C_out, C_in // groups, kh, kw)``; ``bias``: ``(C_in,)`` or None; the result:
    ``(N, C_in, *out)`` with out = (in - 1)*stride - before - after + dilation*(k - 1) +
    output_padding + 1 per axis. See :func:`conv_transpose` for the options.
    """
    return _conv_transpose("conv_transpose2d", 2, y, filters, bias, stride, padding,
                           output_padding, dilation, groups, layout, flip, device)


def conv_transpose3d(y: Array, filters: Array, bias: Optional[Array] = None, *,
                     stride: IntOrTuple = 1, padding: PaddingArg = 0,
                     output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, layout: str = "channels_first", flip: bool = False,
                     device: str = "auto") -> Array:
    """3-D :func:`conv_transpose` (filters must have 3-D kernels).

    ``y``: ``(N, C_out, D, H, W)`` (or ``(N, D, H, W, C_out)`` for ``layout="channels_last"``);
    ``filters``: ``(C_out, C_in // groups, kd, kh, kw)``; ``bias``: ``(C_in,)`` or None; the result:
    ``(N, C_in, *out)`` with out = (in - 1)*stride - before - after + dilation*(k - 1) +
    output_padding + 1 per axis. See :func:`conv_transpose` for the options.
    """
    return _conv_transpose("conv_transpose3d", 3, y, filters, bias, stride, padding,
                           output_padding, dilation, groups, layout, flip, device)


def conv_input_grad(grad_out: Array, filters: Array, input_shape: Sequence[int], *,
                    stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                    groups: int = 1, padding_mode: str = "zeros",
                    layout: str = "channels_first", flip: bool = False,
                    device: str = "auto") -> Array:
    """The exact adjoint of ``x -> conv(x, filters, ...)``: the gradient with respect to x.

    ``grad_out`` has the shape of ``conv``'s result, ``filters`` is
    ``(C_out, C_in // groups, *kernel_size)``, and ``input_shape`` is the shape of x (it fixes
    sizes that strides leave ambiguous). The result has ``input_shape``. For complex dtypes it
    is the Hermitian adjoint: ``vdot(conv(x, w), g) == vdot(x, conv_input_grad(g, w, x.shape))``.
    Every option of ``conv`` is accepted (padding strings, padding modes -- whose padded borders
    are folded back onto the samples they copy --, stride, dilation, groups, flip, layout); no
    bias or activation (differentiate those separately). Deterministic on both devices.
    """
    g_in = grad_out
    grad_out, filters = as_array(grad_out, "grad_out"), as_array(filters, "filters")
    check_flip(flip)
    geom = plan_conv_input_grad(tuple(grad_out.shape), tuple(filters.shape), input_shape,
                                stride=stride, padding=padding, dilation=dilation, groups=groups,
                                padding_mode=padding_mode, layout=layout,
                                fname="conv_input_grad")
    dtype = result_dtype(grad_out.dtype, filters.dtype)

    def compute(xp: Any, backend: Any, g: Array, w: Array) -> Array:
        out, out_cf = alloc_input(xp, geom, dtype)
        _data_adjoint(xp, backend, to_channels_first(xp, g, geom),
                      flipped(w, geom.rank) if flip else w, None, geom, True, out_cf)
        return out

    return run(device, g_in, (grad_out, filters), compute)


def conv_filter_grad(x: Array, grad_out: Array, filter_shape: Sequence[int], *,
                     stride: IntOrTuple = 1, padding: PaddingArg = 0,
                     dilation: IntOrTuple = 1, groups: int = 1, padding_mode: str = "zeros",
                     layout: str = "channels_first", flip: bool = False,
                     device: str = "auto") -> Array:
    """The exact adjoint of ``filters -> conv(x, filters, ...)``: the gradient w.r.t. filters.

    ``x`` is conv's input, ``grad_out`` has the shape of conv's result, and the result has
    ``filter_shape`` = ``(C_out, C_in // groups, *kernel_size)``: for each filter, one gradient
    kernel per input channel of its group, summed over the batch and every output position. For
    complex dtypes it is the Hermitian adjoint:
    ``vdot(conv(x, w), g) == vdot(w, conv_filter_grad(x, g, w.shape))``. Every option of
    ``conv`` is accepted. Deterministic on both devices: on the GPU a two-stage reduction in a
    fixed order (no atomics), so repeated calls give bit-identical results.
    """
    x_in = x
    x, grad_out = as_array(x, "x"), as_array(grad_out, "grad_out")
    check_flip(flip)
    geom = plan_conv_filter_grad(tuple(x.shape), tuple(grad_out.shape), filter_shape,
                                 stride=stride, padding=padding, dilation=dilation,
                                 groups=groups, padding_mode=padding_mode, layout=layout,
                                 fname="conv_filter_grad")
    dtype = result_dtype(x.dtype, grad_out.dtype)

    def compute(xp: Any, backend: Any, x: Array, g: Array) -> Array:
        out = xp.empty(tuple(filter_shape), dtype=dtype)
        backend.filter_grad(to_channels_first(xp, x, geom), to_channels_first(xp, g, geom),
                            geom, out)
        # the gradient for flipped filters, flipped back
        return xp.ascontiguousarray(flipped(out, geom.rank)) if flip else out

    return run(device, x_in, (x, grad_out), compute)
