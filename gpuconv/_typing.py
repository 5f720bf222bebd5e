"""Type aliases for signatures.

``Array`` is a NumPy or CuPy ndarray inside the package, and in the public functions anything
:func:`gpuconv.interop.as_array` accepts (PyTorch tensors, JAX arrays, ...). CuPy and PyTorch
ship no type information that covers both, so it is ``Any`` to a type checker; the name says
what is meant.
"""
from __future__ import annotations

from typing import Any

from numpy.typing import DTypeLike

Array = Any

__all__ = ["Array", "DTypeLike"]
