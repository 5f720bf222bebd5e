"""Reused temporary buffers for the NumPy backend.

A fresh large NumPy array is fresh memory from the operating system (glibc serves big requests
with ``mmap``), and the first write to each of its pages is a page fault. The CPU path writes
several MiB of temporaries a call (padded input, unrolled windows, products), so a call paid
for its temporaries twice: once to fault them in and once to use them. Measured on the 2-vCPU
dev machine, float32, min of 7 calls, allocator left as it is vs. told to keep freed memory
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` = 1 GiB): r50_conv1_7x7s2 6.9 -> 3.7 ms,
vgg16_conv1_2 38.9 -> 29.4 ms, mbv2_dw_3x3_c144 ~7 -> 3.6 ms.

A library must not change the process's allocator, so the backend keeps its own: each thread
has a pool of byte buffers; :func:`scratch` lends them for a block and takes them back at its
end, and at most :data:`RETAIN_BYTES` (or the CPU workspace budget, if smaller) stay in the pool
between calls (a worker thread of :mod:`gpuconv.workers` keeps its share of that). Arrays handed
to callers never come from the pool. :func:`release` empties this thread's pool and the
workers'; a thread's pool goes with the thread.
"""
from __future__ import annotations

import math
import threading
from typing import Any, Callable, List, Tuple

import numpy as np

from . import workers
from .config import get_cpu_workspace

#: Bytes of idle buffers a thread's pool keeps between calls (at most; the CPU workspace
#: budget, when smaller, is the limit). The chunked CPU path takes 16 MiB chunks of unrolled
#: windows plus their input and product, which this holds for every layer of the benchmark suite.
RETAIN_BYTES = 64 * 2**20

#: A worker thread keeps at least this much (or the workspace, if smaller) however many workers
#: share :data:`RETAIN_BYTES`.
WORKER_RETAIN_MIN_BYTES = 4 * 2**20

_local = threading.local()

Take = Callable[[Tuple[int, ...], Any], np.ndarray]


#: Bumped by :func:`release`: a pool filled before then is dropped at its thread's next use
#: (how the worker threads of :mod:`gpuconv.workers` free theirs).
_generation = [0]


def _idle() -> List[np.ndarray]:
    """This thread's idle buffers, most recently returned last."""
    idle = getattr(_local, "idle", None)
    if idle is None or _local.generation != _generation[0]:
        idle = _local.idle = []
        _local.generation = _generation[0]
    return idle


def _retain_limit() -> int:
    """Bytes this thread's pool keeps between blocks: :data:`RETAIN_BYTES` (or the workspace,
    if smaller), shared out among the worker threads when this is one of them."""
    limit = min(RETAIN_BYTES, get_cpu_workspace())
    if workers.in_worker():  # a share, but enough for a task of a many-CPU machine's split
        return min(limit, max(limit // max(1, workers.pool_size()), WORKER_RETAIN_MIN_BYTES))
    return limit


class _Lending:
    """One ``with scratch() as take:`` block (a class rather than a generator context manager:
    a small call enters two or three such blocks, and the generator's machinery cost ~2 us
    each on the 2-vCPU dev machine)."""
    __slots__ = ("idle", "lent")

    def __init__(self) -> None:
        self.idle = _idle()
        self.lent: List[np.ndarray] = []

    def take(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        buf = None
        for i, b in enumerate(self.idle):  # the smallest idle buffer that holds it
            if b.nbytes >= nbytes and (buf is None or b.nbytes < buf.nbytes):
                buf, at = b, i
        if buf is None:
            buf = np.empty(max(nbytes, 1), dtype=np.uint8)
        else:
            del self.idle[at]
        self.lent.append(buf)
        return np.ndarray(shape, dtype, buf)  # C order, over the buffer's first bytes

    def __enter__(self) -> Take:
        return self.take

    def __exit__(self, *exc: Any) -> None:
        self.idle.extend(self.lent)
        self.lent.clear()
        _trim(self.idle, _retain_limit())


def scratch() -> _Lending:
    """``with scratch() as take: a = take(shape, dtype)`` lends uninitialised arrays for the
    block. Nothing taken may be used after the block: its memory goes back to the pool. Blocks
    nest (an inner block never gets what an outer one holds)."""
    return _Lending()


def _trim(idle: List[np.ndarray], limit: int) -> None:
    """Drop the least recently returned buffers until the pool holds at most ``limit`` bytes."""
    total = sum(b.nbytes for b in idle)
    while idle and total > limit:
        total -= idle.pop(0).nbytes


#: NumPy's ufunc buffer size (elements) during a CPU call (NumPy's default: 8192). NumPy's
#: iterator buffers a pass over operands it cannot walk as one flat run (a strided window, a
#: broadcast column) whose inner dimension is shorter than its buffer size, copying through
#: buffers of that many elements per operand: float32 (144, 3136) * (144, 1) into a
#: contiguous output took 242 us and 45 KB of buffers at 8192, 122 us and none at 2048 (the
#: Xeon dev machine, NumPy 2.4). Those buffers are outside the workspace: 16 worker tasks on a
#: 1 MiB workspace took 1.2 MB (the H100 machine's 16 CPUs, session 16). The CPU bench
#: suite's times did not move either way (A/B, ten of its layers, within their noise).
UFUNC_BUFFER_ELEMENTS = 2048


#: NumPy before 2.3 gives every einsum call its iterator's buffers: 8192 elements (its default,
#: whatever ``setbufsize`` says) for each operand and the output, needed or not; 2.3's iterator
#: allocates buffers only for the operands it has to buffer. Measured, one of the depthwise
#: einsums (two operands and the output): 3 x 8192 x itemsize bytes (and ~1.5 KB) a call on
#: NumPy 1.23, 1.26, 2.0 and 2.2; ~1.5 KB on 2.3. They are NumPy's, outside any pool.
_EINSUM_ALLOCATES_BUFFERS = np.lib.NumpyVersion(np.__version__) < "2.3.0"


def einsum_buffer_bytes(itemsize: int) -> int:
    """Bytes NumPy allocates itself for one einsum of two operands into an output, all of
    ``itemsize``-byte items, while it runs: a task's workspace has to leave room for them."""
    return 3 * 8192 * itemsize if _EINSUM_ALLOCATES_BUFFERS else 0


#: NumPy 2 keeps the buffer size with the error settings, so leaving an ``errstate`` block
#: restores it too (NumPy 1 keeps it apart)
_ERRSTATE_HOLDS_BUFSIZE = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


class _Settings:
    """One :func:`numpy_settings` block (a class: see :class:`_Lending`)."""
    __slots__ = ("errstate", "previous")
    errstate: Any  # np.errstate, generic in NumPy 1's stubs
    previous: int

    def __enter__(self) -> None:
        self.errstate = np.errstate(over="ignore", invalid="ignore")
        self.errstate.__enter__()
        self.previous = np.setbufsize(UFUNC_BUFFER_ELEMENTS)

    def __exit__(self, *exc: Any) -> None:
        if not _ERRSTATE_HOLDS_BUFSIZE:
            np.setbufsize(self.previous)
        self.errstate.__exit__(*exc)


def numpy_settings() -> _Settings:
    """NumPy's settings for a CPU call's passes, then the caller's own again (they are the
    calling thread's: each worker task sets its own): the ufunc buffer size at
    :data:`UFUNC_BUFFER_ELEMENTS`, and overflow and invalid operations quiet. A sum past its
    dtype's range is inf and inf - inf is NaN, as IEEE arithmetic and the GPU kernels give them
    (and PyTorch, silently); NumPy would warn where a float16 result overflows in its cast."""
    return _Settings()


def retained_bytes() -> int:
    """Bytes of idle buffers this thread's pool holds now."""
    return sum(b.nbytes for b in _idle())


def release() -> None:
    """Free this thread's idle buffers, and those of gpuconv's worker threads at their next
    task (the next CPU call allocates afresh)."""
    _generation[0] += 1
    _idle().clear()
