"""The activations a convolution can apply after its bias, as array passes (NumPy or CuPy):
for the paths that leave the last step to the array library (the CPU backend, CUDA's
``pointwise``). The kernels apply the same functions per element (gc_activate in
kernels_cuda/gpuconv_types.cuh)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ._typing import Array


def commutes_with_rounding(activation: Optional[str]) -> bool:
    """Whether applying ``activation`` before or after rounding to a narrower dtype gives the
    same result (none, relu), so that 16-bit products may be rounded first; sigmoid and tanh
    do not, and the paths that multiply through cuBLAS widen 16-bit data for them."""
    return activation in (None, "relu")


def activate(xp: Any, res: Array, activation: Optional[str]) -> None:
    """Apply ``activation`` to ``res`` in place (``xp``: numpy or cupy)."""
    if activation is None:
        return
    if activation == "relu":
        xp.maximum(res, 0, out=res)  # NaN stays NaN
    elif activation == "sigmoid":
        with np.errstate(over="ignore"):  # exp(-v) -> inf gives sigmoid 0, as it should
            xp.negative(res, out=res)
            xp.exp(res, out=res)
            res += 1
            xp.reciprocal(res, out=res)
    elif activation == "tanh":
        xp.tanh(res, out=res)
    else:  # the public functions validate; this guards a new name reaching here unimplemented
        raise ValueError(f"activation {activation!r} is not implemented here")
