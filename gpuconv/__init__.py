"""gpuconv: N-D multi-channel convolution on NVIDIA GPUs (CuPy raw CUDA kernels, no cuDNN) with a
NumPy fallback that gives the same results on machines without a GPU.

A *kernel* is one small weight array slid over one input channel; a *filter* is the stack of
``C_in // groups`` kernels whose maps are summed (plus a bias) into one output channel; a layer
has ``C_out`` filters, so its weights have shape ``(C_out, C_in // groups, *kernel_size)``.
"""
from importlib.metadata import PackageNotFoundError, version as _version

from . import algorithms
from .adjoint import (conv_filter_grad, conv_input_grad, conv_transpose, conv_transpose1d,
                      conv_transpose2d, conv_transpose3d)
from .config import (autotune, cpu_threads, cpu_workspace, get_autotune, get_cpu_threads,
                     get_cpu_workspace, set_autotune, set_cpu_threads, set_cpu_workspace)
from .forward import conv, conv1d, conv2d, conv3d
from .describe import Description, describe
from .device import DeviceUnavailableError
from .geometry import ConvGeometry, plan_conv
from .info import Info, info
from .layers import Conv1D, Conv2D, Conv3D
from .scratch import release as release_cpu_scratch

try:
    __version__ = _version("gpuconv")
except PackageNotFoundError:  # running from a source checkout without installing
    __version__ = "0.1.0+source"

__all__ = [
    "conv", "conv1d", "conv2d", "conv3d", "algorithms",
    "conv_transpose", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "conv_input_grad", "conv_filter_grad",
    "describe", "Description", "Conv1D", "Conv2D", "Conv3D",
    "info", "Info", "DeviceUnavailableError", "ConvGeometry", "plan_conv",
    "cpu_workspace", "get_cpu_workspace", "set_cpu_workspace", "release_cpu_scratch",
    "cpu_threads", "get_cpu_threads", "set_cpu_threads",
    "autotune", "get_autotune", "set_autotune", "__version__",
]
