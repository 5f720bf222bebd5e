"""``gpuconv.describe``: a convolution layer explained in words, from shapes alone."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

from .geometry import IntOrTuple, PaddingArg, plan_conv


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(k) for k in shape)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class Description:
    """What a conv layer is and does, for inputs of ``input_shape``. Fields are plain numbers."""
    input_shape: Tuple[int, ...]
    filter_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]
    layout: str
    filters: int                    # C_out: one per output channel
    kernels_per_filter: int         # C_in // groups: one per input channel of the filter's group
    kernel_size: Tuple[int, ...]
    groups: int
    in_channels: int
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    padding: Tuple[Tuple[int, int], ...]   # (before, after) per spatial dim
    padding_mode: str
    weights: int                    # C_out * C_in/groups * prod(kernel_size)
    parameters: int                 # weights plus one bias per filter
    multiply_adds: int              # for the whole input_shape (all batch elements)
    receptive_field: Tuple[int, ...]   # input positions one output element sees, per dim

    def __str__(self) -> str:
        k = _dims(self.kernel_size)
        if self.kernels_per_filter == 1:
            how = (f"every filter correlates its {k} kernel with one input channel (plus a "
                   f"bias) into one output channel.")
        else:
            how = (f"every filter correlates one {k} kernel with each of its "
                   f"{self.kernels_per_filter} input channels and sums the maps (plus a bias) "
                   f"into one output channel.")
        lines = [
            f"{_plural(self.filters, 'filter')} of {_plural(self.kernels_per_filter, 'kernel')} "
            f"({k}) each: {how}",
            f"input {self.input_shape} ({self.layout}, {self.in_channels} channels) -> output "
            f"{self.output_shape} ({self.filters} channels)",
            f"filters array: {self.filter_shape} = (C_out, C_in/groups, {k})",
        ]
        if self.groups > 1:
            kind = "depthwise: " if self.groups == self.in_channels else ""
            lines.append(f"groups={self.groups} ({kind}each filter sees only the "
                         f"{self.kernels_per_filter} input channel(s) of its group)")
        lines += [
            f"stride {self.stride}, dilation {self.dilation}, padding (before, after) "
            f"{self.padding} ({self.padding_mode})",
            f"parameters: {self.parameters:,} ({self.weights:,} weights + {self.filters} biases)",
            f"multiply-adds: {self.multiply_adds:,}",
            f"receptive field: {_dims(self.receptive_field)} input positions per output element",
        ]
        return "\n".join(lines)


def describe(x_shape: Sequence[int], filter_shape: Sequence[int], *, stride: IntOrTuple = 1,
             padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1,
             padding_mode: str = "zeros", layout: str = "channels_first") -> Description:
    """Explain the layer that ``conv(x, filters, ...)`` computes, from the shapes alone.

    ``x_shape``: ``(N, C_in, *spatial)`` or ``(N, *spatial, C_in)`` for
    ``layout="channels_last"`` (N may be left out); ``filter_shape``:
    ``(C_out, C_in // groups, *kernel_size)``. Returns a :class:`Description` whose ``str()``
    says it in words (filters, kernels per filter and their size, output shape, parameter count,
    multiply-adds, receptive field) and whose fields hold the numbers. Raises the same
    ValueError/TypeError as ``conv`` for shapes that do not fit.
    """
    x_shape, filter_shape = tuple(x_shape), tuple(filter_shape)
    g = plan_conv(x_shape, filter_shape, stride=stride, padding=padding, dilation=dilation,
                  groups=groups, padding_mode=padding_mode, layout=layout, fname="describe")
    weights = g.C_out * g.terms_per_output
    return Description(
        input_shape=x_shape, filter_shape=filter_shape, output_shape=g.out_shape(),
        layout=layout, filters=g.C_out, kernels_per_filter=g.C_in_per_group,
        kernel_size=g.kernel, groups=g.groups, in_channels=g.C_in, stride=g.stride,
        dilation=g.dilation, padding=tuple(zip(g.pad_before, g.pad_after)),
        padding_mode=g.padding_mode, weights=weights, parameters=weights + g.C_out,
        multiply_adds=g.flops // 2,
        receptive_field=tuple(d * (k - 1) + 1 for k, d in zip(g.kernel, g.dilation)))
