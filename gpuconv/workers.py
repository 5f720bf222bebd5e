"""Worker threads for the NumPy backend's passes that BLAS does not run.

NumPy's ufuncs, copies and ``einsum`` run on the calling thread only (they release the GIL while
they loop), so a CPU call whose time goes to them (the depthwise path: a padded copy, one
``einsum`` or a multiply-add per tap, a copy back into the output) uses one core of the machine
while PyTorch's uses all of them. :func:`run` hands independent tasks (blocks of images or of
channels, each a whole convolution of its own) to a process-wide pool of worker threads and
waits for them. Each output element is computed by one task, by the same code as without
workers (only an einsum may order a sum differently for a block of fewer channels: NumPy picks
its loop order by shape).

The pool has one worker per CPU of the process's affinity mask (or per CPU, where the OS has no
masks), each pinned to its CPU (Linux). Measured on the 2-vCPU dev machine (KVM; depthwise
``mbv2_dw_3x3_c144``, two images, one a worker, min / median of 20 calls after a pause, each
after a settling call): unpinned, the scheduler woke both workers on the waker's CPU and left
them there for the length of a call whenever the machine had been idle for >= 10 ms (3.9 /
5.4 ms, no faster than one thread's 4.7 / 5.0 ms); pinned, 2.9 / 3.2 ms after the same pauses
(and 2.6 / 2.8 ms back to back either way).
"""
from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, List, Optional, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_local = threading.local()


def _cpus() -> List[int]:
    """The CPUs this process may run on, or [] where the OS does not say."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def _start_worker(cpus: List[int], order: "itertools.count[int]") -> None:
    """Pool initializer: mark the thread as a worker and pin it to the next CPU of ``cpus``."""
    _local.worker = True
    index = next(order)
    if index < len(cpus):
        try:
            os.sched_setaffinity(0, {cpus[index]})  # 0: the calling thread
        except OSError:  # a mask changed since, or a sandbox that forbids it: run unpinned
            pass


def _executor() -> ThreadPoolExecutor:
    """The pool: one worker per CPU this process may run on, each pinned to its CPU."""
    global _pool, _pool_size
    with _lock:
        if _pool is None:
            cpus = _cpus()
            _pool_size = len(cpus) or (os.cpu_count() or 1)
            _pool = ThreadPoolExecutor(_pool_size, thread_name_prefix="gpuconv-cpu",
                                       initializer=_start_worker,
                                       initargs=(cpus, itertools.count()))
        return _pool


def _forget_pool() -> None:
    """In a forked child the parent's workers do not exist: start a new pool when asked."""
    global _pool, _pool_size, _lock
    _pool, _pool_size, _lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def in_worker() -> bool:
    """Whether the calling thread is one of the pool's workers."""
    return getattr(_local, "worker", False)


def pool_size() -> int:
    """Workers the pool has (0 before the first parallel call)."""
    return _pool_size


def run(fn: Callable[[T], R], tasks: Iterable[T]) -> List[R]:
    """``[fn(t) for t in tasks]``, the tasks on the workers when there are two or more (more
    tasks than workers wait for one), else on the calling thread, as they are when it is a
    worker itself (tasks never wait for other tasks) or the process has one CPU. The first
    exception a task raised is raised here, after every task has finished, so no task still
    writes into the caller's arrays."""
    tasks = list(tasks)
    if len(tasks) <= 1 or in_worker():
        return [fn(t) for t in tasks]
    pool = _executor()
    if _pool_size <= 1:
        return [fn(t) for t in tasks]
    futures = [pool.submit(fn, t) for t in tasks]
    errors = [f.exception() for f in futures]  # waits for every task
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]
