"""Settings that change how gpuconv computes, never what it computes."""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable, ContextManager, Dict, Iterator, Optional

_DEFAULT_CPU_WORKSPACE = 256 * 2**20


class _ThreadSettings(threading.local):
    """This thread's settings; None: the default (the environment's). Unset attributes are the
    class's Nones: reading an instance attribute that a thread never set would cost a caught
    AttributeError (~0.3 us), on every repeated call for autotune."""
    cpu_workspace: Optional[int] = None
    cpu_threads: Optional[int] = None
    autotune: Optional[bool] = None


_state = _ThreadSettings()

# os.environ's own dictionary and its key and value conversions, where CPython keeps them
# (POSIX: bytes keys; Windows: upper-case str keys)
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = getattr(os.environ, "encodekey", None)
_ENV_VALUE = getattr(os.environ, "decodevalue", None)
_env_keys: dict = {}


def environ(name: str) -> str:
    """``os.environ.get(name, "")``, read from os.environ's own dictionary where it has one (the
    same variables: os.environ's assignments and deletions change that dictionary). Each call
    reads GPUCONV_DEVICE, and GPUCONV_AUTOTUNE or the CPU settings; through the mapping a
    lookup encodes the name every time (0.54 us on the 2-vCPU dev machine against 0.03; the
    GPU machine of session 16 ran this Python about twice as slowly)."""
    if not (isinstance(_ENV_DATA, dict) and _ENV_KEY and _ENV_VALUE):
        return os.environ.get(name, "")
    key = _env_keys.get(name)
    if key is None:
        key = _env_keys[name] = _ENV_KEY(name)
    value = _ENV_DATA.get(key)
    return "" if value is None else _ENV_VALUE(value)


def _positive_int_env(name: str, default: Callable[[], int], unit: str, least: str) -> int:
    """The environment variable ``name`` as an int >= 1 (``default()`` when unset or empty);
    ValueError naming it otherwise (``unit``: what it counts; ``least``: its minimum, in words)."""
    value = environ(name).strip()
    if not value:
        return default()
    try:
        parsed = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of {unit}, got {value!r}") from None
    if parsed < 1:
        raise ValueError(f"{name} must be >= {least}, got {parsed}")
    return parsed


def _env_default() -> int:
    return _positive_int_env("GPUCONV_CPU_WORKSPACE", lambda: _DEFAULT_CPU_WORKSPACE, "bytes",
                             "1 byte")


def get_cpu_workspace() -> int:
    """Bytes of temporary memory one CPU call may use beyond its inputs and output.

    Default 256 MiB, or the environment variable GPUCONV_CPU_WORKSPACE. The CPU path works in
    chunks of the batch and of the first output axis to stay under it; it never goes below one
    output row of one batch element, so a layer whose single row needs more exceeds it.
    """
    value = _state.cpu_workspace
    return _env_default() if value is None else value


def set_cpu_workspace(nbytes: int) -> None:
    """Set the CPU temporary-memory budget in bytes for this thread (None restores the default)."""
    if nbytes is not None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
            raise ValueError(f"nbytes must be a positive int or None, got {nbytes!r}")
    _state.cpu_workspace = nbytes


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _threads_env() -> int:
    return _positive_int_env("GPUCONV_CPU_THREADS", _usable_cpus, "threads", "1")


def get_cpu_threads() -> int:
    """Threads a CPU call may spread its NumPy passes over (the depthwise path: a task per
    block of images or channels, each on a worker of :mod:`gpuconv.workers`); BLAS runs its
    own threads as configured for it. Default: the CPUs this process may run on, or the
    environment variable GPUCONV_CPU_THREADS; 1 runs every pass on the calling thread."""
    value = _state.cpu_threads
    return _threads_env() if value is None else value


def set_cpu_threads(count: Optional[int]) -> None:
    """Set the CPU path's thread count for this thread (None restores the default)."""
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"count must be an int or None, got {count!r}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
    _state.cpu_threads = count


@contextlib.contextmanager
def _scoped(name: str, setter: Callable[[Any], None], value: Any) -> Iterator[None]:
    """Set this thread's setting ``name`` through ``setter`` for a block, then restore it."""
    previous = getattr(_state, name, None)
    setter(value)
    try:
        yield
    finally:
        setattr(_state, name, previous)


def cpu_workspace(nbytes: int) -> ContextManager[None]:
    """``with gpuconv.cpu_workspace(64 * 2**20): ...`` sets the budget for the block."""
    return _scoped("cpu_workspace", set_cpu_workspace, nbytes)


def cpu_threads(count: int) -> ContextManager[None]:
    """``with gpuconv.cpu_threads(1): ...`` sets the CPU path's thread count for the block."""
    return _scoped("cpu_threads", set_cpu_threads, count)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


#: GPUCONV_AUTOTUNE's values read so far, parsed (a repeated call asks on every run)
_AUTOTUNE_VALUES: Dict[str, bool] = {}


def _autotune_env() -> bool:
    raw = environ("GPUCONV_AUTOTUNE")
    known = _AUTOTUNE_VALUES.get(raw)
    if known is not None:
        return known
    value = raw.strip().lower()
    if value in _TRUE:
        parsed = True
    elif value in _FALSE:
        parsed = False
    else:
        raise ValueError(f"GPUCONV_AUTOTUNE must be one of {_TRUE + _FALSE[1:]}, got {value!r}")
    _AUTOTUNE_VALUES[raw] = parsed
    return parsed


def get_autotune() -> bool:
    """Whether ``algorithm="auto"`` is autotuned in this thread (see :mod:`gpuconv.tuning`):
    off by default, or the environment variable GPUCONV_AUTOTUNE=1."""
    value = _state.autotune
    return _autotune_env() if value is None else value


def set_autotune(enabled: Optional[bool]) -> None:
    """Turn autotuning of ``algorithm="auto"`` on or off for this thread (None: the default)."""
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    _state.autotune = enabled


def autotune(enabled: bool = True) -> ContextManager[None]:
    """``with gpuconv.autotune(): ...`` autotunes the "auto" calls of the block: the first call
    of each layer times every algorithm that can run it and keeps the fastest (remembered on
    disk), as ``torch.backends.cudnn.benchmark = True`` does."""
    return _scoped("autotune", set_autotune, enabled)
