"""Which dtypes gpuconv accepts, how mixed inputs promote, and what each accumulates in."""
from __future__ import annotations

import functools

import numpy as np
from ._typing import Array, DTypeLike
from typing import Optional, Tuple

#: NumPy's own dtypes accepted for x, filters and bias, on both devices.
ACCEPTED = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64,
                                       np.complex64, np.complex128))
_ACCEPTED_SET = frozenset(ACCEPTED)  # membership by hash: every call checks every array
_ACCEPTED_NAMES = ", ".join(d.name for d in ACCEPTED) + " and bfloat16 (ml_dtypes)"


def is_bfloat16(dtype: DTypeLike) -> bool:
    """Whether ``dtype`` is bfloat16 as the ml_dtypes package defines it for NumPy (and CuPy 14
    uses): NumPy has none of its own, so it is recognised without importing ml_dtypes."""
    dtype = np.dtype(dtype)
    # kind and size first: dtype.name builds a string, too slow for every call's hot path
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16"


def bfloat16() -> Optional[np.dtype]:
    """ml_dtypes' bfloat16, or None where ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def accepted() -> Tuple[np.dtype, ...]:
    """Every accepted dtype this installation can hold (bfloat16 with ml_dtypes)."""
    bf16 = bfloat16()
    return ACCEPTED + (() if bf16 is None else (bf16,))


def check_dtype(array: Array, name: str) -> np.dtype:
    """The dtype of ``array``, or TypeError if gpuconv cannot convolve it."""
    dtype = np.dtype(array.dtype)
    if dtype not in _ACCEPTED_SET and not is_bfloat16(dtype):
        raise TypeError(f"{name} has dtype {dtype.name} (shape {tuple(array.shape)}); gpuconv "
                        f"accepts {_ACCEPTED_NAMES}")
    return dtype


def result_dtype(*dtypes: Optional[DTypeLike]) -> np.dtype:
    """NumPy promotion of the inputs' dtypes (float16 with float32 gives float32, and so on);
    bfloat16 with float16, which NumPy cannot promote, gives float32 (as in PyTorch). Cached
    by the dtypes given (every call asks; dtype objects hash and compare cheaply)."""
    try:
        return _result_dtype(dtypes)
    except TypeError:  # an unhashable dtype-like (a list of fields, say): worked out anew
        return _promote(dtypes)


@functools.lru_cache(maxsize=256)
def _result_dtype(dtypes: Tuple[Optional[DTypeLike], ...]) -> np.dtype:
    return _promote(dtypes)


def _promote(dtypes: Tuple[Optional[DTypeLike], ...]) -> np.dtype:
    given = [np.dtype(d) for d in dtypes if d is not None]
    if all(d == given[0] for d in given) and given[0] in ACCEPTED:  # the usual call: one dtype
        return given[0]
    if any(map(is_bfloat16, given)) and np.dtype(np.float16) in given:
        given = [np.dtype(np.float32) if d == np.float16 or is_bfloat16(d) else d
                 for d in given]
    return np.result_type(*given)


def accumulator_dtype(dtype: DTypeLike) -> np.dtype:
    """The dtype sums are carried in: float16 and bfloat16 accumulate in float32, the others in
    themselves."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 or is_bfloat16(dtype) else dtype
