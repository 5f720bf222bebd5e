"""Settings that change how gpuconv computes, never what it computes."""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

_DEFAULT_CPU_WORKSPACE = 256 * 2**20
_state = threading.local()


def _env_default() -> int:
    value = os.environ.get("GPUCONV_CPU_WORKSPACE", "").strip()
    if not value:
        return _DEFAULT_CPU_WORKSPACE
    try:
        parsed = int(value)
    except ValueError:
        raise ValueError(f"GPUCONV_CPU_WORKSPACE must be a number of bytes, "
                         f"got {value!r}") from None
    if parsed < 1:
        raise ValueError(f"GPUCONV_CPU_WORKSPACE must be >= 1 byte, got {parsed}")
    return parsed


def get_cpu_workspace() -> int:
    """Bytes of temporary memory one CPU call may use beyond its inputs and output.

    Default 256 MiB, or the environment variable GPUCONV_CPU_WORKSPACE. The CPU path works in
    chunks of the batch and of the first output axis to stay under it; it never goes below one
    output row of one batch element, so a layer whose single row needs more exceeds it.
    """
    value = getattr(_state, "cpu_workspace", None)
    return _env_default() if value is None else value


def set_cpu_workspace(nbytes: int) -> None:
    """Set the CPU temporary-memory budget in bytes for this thread (None restores the default)."""
    if nbytes is not None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
            raise ValueError(f"nbytes must be a positive int or None, got {nbytes!r}")
    _state.cpu_workspace = nbytes


@contextlib.contextmanager
def cpu_workspace(nbytes: int) -> Iterator[None]:
    """``with gpuconv.cpu_workspace(64 * 2**20): ...`` sets the budget for the block."""
    previous = getattr(_state, "cpu_workspace", None)
    set_cpu_workspace(nbytes)
    try:
        yield
    finally:
        _state.cpu_workspace = previous
