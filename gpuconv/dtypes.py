"""Which dtypes gpuconv accepts, how mixed inputs promote, and what each accumulates in."""
from __future__ import annotations

import numpy as np
from ._typing import Array, DTypeLike
from typing import Optional

#: dtypes accepted for x, filters and bias, on both devices.
ACCEPTED = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64,
                                       np.complex64, np.complex128))
_ACCEPTED_NAMES = ", ".join(d.name for d in ACCEPTED)


def check_dtype(array: Array, name: str) -> np.dtype:
    """The dtype of ``array``, or TypeError if gpuconv cannot convolve it."""
    dtype = np.dtype(array.dtype)
    if dtype not in ACCEPTED:
        raise TypeError(f"{name} has dtype {dtype.name} (shape {tuple(array.shape)}); gpuconv "
                        f"accepts {_ACCEPTED_NAMES}")
    return dtype


def result_dtype(*dtypes: Optional[DTypeLike]) -> np.dtype:
    """NumPy promotion of the inputs' dtypes (float16 with float32 gives float32, and so on)."""
    return np.result_type(*[np.dtype(d) for d in dtypes if d is not None])


def accumulator_dtype(dtype: DTypeLike) -> np.dtype:
    """The dtype sums are carried in: float16 accumulates in float32, the others in themselves."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype
