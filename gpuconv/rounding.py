"""How far a correctly computed convolution may be from the exact one: the bound that follows
from the dtype and the number of summed terms, for the checks gpuconv makes of its own results
(``gpuconv check`` and the autotuner's comparison of its candidates, gpuconv.tuning).

A sum of n products carried in a type of unit roundoff u is off by at most gamma_n * sum|products|
(gamma_n = n u / (1 - n u); Higham, Accuracy and Stability of Numerical Algorithms, 3.1), in any
order: so every algorithm, tile or split of the terms stays within it. For complex data each part
of a sum is a sum of real products (ax - by, bx + ay: 2 per kernel tap, |ax| + |by| <= |a + ib|
|x + iy|), and complex products round a little more themselves: n becomes the larger of taps + 2
and 2 taps (each plus the bias), and gamma gains a factor sqrt(2). sum|products| is the same
convolution of |x|, |filters| and |bias| (its *magnitude*). The activation passes the error on
scaled by its Lipschitz constant and adds a few units of its own rounding; the final rounding to
the output dtype adds u_out |y|, half its smallest subnormal (underflow), and GPU kernels flush
subnormal products and partial sums to zero (NVRTC's -ftz), at most the smallest normal number
of the accumulator a term.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .dtypes import accumulator_dtype, is_bfloat16
from ._typing import Array, DTypeLike

#: Lipschitz constant of each activation: how much it can stretch an error in its argument.
LIPSCHITZ = {None: 1.0, "relu": 1.0, "sigmoid": 0.25, "tanh": 1.0}


def finfo(dtype: DTypeLike) -> Any:
    """np.finfo, or ml_dtypes.finfo for bfloat16 (which NumPy's finfo does not know)."""
    if is_bfloat16(dtype):
        import ml_dtypes
        return ml_dtypes.finfo(dtype)
    numpy_finfo: Any = np.finfo  # NumPy 1's stubs accept only inexact dtypes, not DTypeLike
    return numpy_finfo(dtype)


def real_dtype(dtype: DTypeLike) -> np.dtype:
    """The dtype of each part of ``dtype`` (itself when real)."""
    dtype = np.dtype(dtype)
    return np.dtype(dtype.char.lower()) if dtype.kind == "c" else dtype


def magnitude_dtype(dtype: DTypeLike) -> np.dtype:
    """The real dtype a layer of output dtype ``dtype`` sums in: where its magnitude is
    computed (float32 for 16-bit data)."""
    return real_dtype(accumulator_dtype(real_dtype(dtype)))


@dataclass(frozen=True)
class Rounding:
    """The bound ``sum * magnitude + result * |y| + floor`` on |computed - exact| per output
    element: ``magnitude`` the convolution of |x|, |filters|, |bias|, ``y`` the result."""
    sum: float     # the sum's rounding, the activation's stretch included
    result: float  # u_out, plus the activation's own rounding
    floor: float   # absolute: underflow in the output, flushed subnormals in the sum

    def bound(self, xp: Any, magnitude: Array, y: Array) -> Array:
        """The per-element bound (``xp``: numpy or cupy)."""
        return self.sum * magnitude + self.result * xp.abs(y) + self.floor


def rounding(dtype: DTypeLike, terms: int, bias: bool, activation: Optional[str]) -> Rounding:
    """The bound for a layer of output dtype ``dtype`` whose outputs each sum ``terms``
    products (C_in/groups x kernel taps), plus the bias when ``bias``, then ``activation``."""
    dtype = np.dtype(dtype)
    real = real_dtype(dtype)
    acc = magnitude_dtype(dtype)
    u_acc = float(np.finfo(acc).eps) / 2
    n = terms + int(bias)
    if dtype.kind == "c":
        n = max(n + 2, 2 * terms + int(bias))
    gamma = n * u_acc / (1 - n * u_acc)
    if dtype.kind == "c":
        gamma *= math.sqrt(2)
    stretch = LIPSCHITZ[activation]
    own = 0.0 if activation in (None, "relu") else 4 * u_acc
    out = finfo(real)
    return Rounding(stretch * gamma, float(out.eps) / 2 + own,
                    float(out.smallest_subnormal) + stretch * n * float(np.finfo(acc).tiny))
