"""The CPU path's worker threads (gpuconv.workers) and the setting of how many a call uses."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import gpuconv
from gpuconv import cpu, scratch, workers
from reference import error_bound


def test_run_returns_results_in_task_order():
    assert workers.run(lambda t: t * t, range(7)) == [t * t for t in range(7)]
    assert workers.run(lambda t: t + 1, [41]) == [42]
    assert workers.run(lambda t: t, []) == []


def test_tasks_run_on_workers_and_one_task_on_the_caller():
    me = threading.get_ident()
    assert workers.run(lambda t: threading.get_ident(), [0]) == [me]
    idents = workers.run(lambda t: (threading.get_ident(), workers.in_worker()), [0, 1, 2])
    assert all(ident != me and inside for ident, inside in idents)
    assert not workers.in_worker()


def test_a_task_that_asks_for_workers_runs_its_tasks_inline():
    """Tasks never wait for other tasks (a pool of busy workers would deadlock)."""
    def outer(t):
        here = threading.get_ident()
        return workers.run(lambda u: threading.get_ident() == here, [0, 1, 2])
    assert workers.run(outer, [0, 1]) == [[True] * 3] * 2


def test_the_first_error_is_raised_after_every_task_finished():
    finished = []

    def task(t):
        if t == 0:
            raise ValueError("task 0 failed")
        time.sleep(0.05)
        finished.append(t)
    with pytest.raises(ValueError, match="task 0 failed"):
        workers.run(task, [0, 1, 2, 3])
    assert sorted(finished) == [1, 2, 3]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_one_worker_per_cpu_each_pinned_to_its_own():
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("one CPU: tasks run on the calling thread")
    workers.run(lambda t: None, [0, 1])
    assert workers.pool_size() == len(cpus)
    # as many tasks as workers, each holding its worker until all have started
    barrier = threading.Barrier(len(cpus), timeout=10)

    def where(t):
        barrier.wait()
        return tuple(sorted(os.sched_getaffinity(0)))
    masks = workers.run(where, range(len(cpus)))
    assert sorted(m[0] for m in masks) == cpus and all(len(m) == 1 for m in masks)
    assert tuple(sorted(os.sched_getaffinity(0))) == tuple(cpus)  # the caller's: untouched


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
# forking a process with threads (the pool's) is this test's point; Python 3.12 warns of it
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_workers_of_its_own():
    workers.run(lambda t: None, [0, 1])  # the parent has a pool
    pid = os.fork()
    if pid == 0:  # the child: the parent's workers do not exist here
        try:
            ok = workers.run(lambda t: t * 2, [1, 2, 3]) == [2, 4, 6]
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_cpu_threads_setting(monkeypatch):
    monkeypatch.delenv("GPUCONV_CPU_THREADS", raising=False)
    default = gpuconv.get_cpu_threads()
    assert default >= 1
    if hasattr(os, "sched_getaffinity"):
        assert default == len(os.sched_getaffinity(0))
    with gpuconv.cpu_threads(3):
        assert gpuconv.get_cpu_threads() == 3
        with gpuconv.cpu_threads(1):
            assert gpuconv.get_cpu_threads() == 1
        assert gpuconv.get_cpu_threads() == 3
    assert gpuconv.get_cpu_threads() == default
    gpuconv.set_cpu_threads(2)
    try:
        assert gpuconv.get_cpu_threads() == 2
        seen = []
        thread = threading.Thread(target=lambda: seen.append(gpuconv.get_cpu_threads()))
        thread.start()
        thread.join()
        assert seen == [default]  # a setting of this thread only
    finally:
        gpuconv.set_cpu_threads(None)
    assert gpuconv.get_cpu_threads() == default
    monkeypatch.setenv("GPUCONV_CPU_THREADS", "5")
    assert gpuconv.get_cpu_threads() == 5
    for bad in ("many", "0", "-2"):
        monkeypatch.setenv("GPUCONV_CPU_THREADS", bad)
        with pytest.raises(ValueError, match="GPUCONV_CPU_THREADS"):
            gpuconv.get_cpu_threads()
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        gpuconv.set_cpu_threads(0)
    for bad in (2.0, True, "2"):
        with pytest.raises(TypeError, match="count must be an int or None"):
            gpuconv.set_cpu_threads(bad)


def test_release_frees_the_workers_pools_at_their_next_task():
    """A thread's pool filled before release() is dropped at that thread's next scratch use."""
    go, filled, used = threading.Event(), threading.Event(), []

    def other():
        with scratch.scratch() as take:
            take((1000,), np.float64)
        used.append(scratch.retained_bytes())
        filled.set()
        go.wait(10)
        with scratch.scratch() as take:  # the next use finds the pool empty
            used.append(scratch.retained_bytes())
            take((10,), np.float64)
        used.append(scratch.retained_bytes())
    thread = threading.Thread(target=other)
    thread.start()
    filled.wait(10)
    scratch.release()
    go.set()
    thread.join()
    assert used[0] >= 8000 and used[1] == 0 and 80 <= used[2] < 8000


def test_callers_threads_share_the_workers():
    """Several of the caller's threads convolving the same layers at once, each with a
    workspace and thread count of its own, the depthwise layers' blocks queued on the one pool
    of workers (the dense layer's BLAS product beside them): each result bit for bit what the
    same call gives alone with the same settings, and within the reference's bound."""
    rng = np.random.default_rng(7)
    layers = [  # (x, filters, options)
        (rng.standard_normal((2, 64, 48, 48)).astype(np.float32),  # slots
         rng.standard_normal((64, 1, 3, 3)).astype(np.float32), dict(groups=64, padding=1)),
        (rng.standard_normal((4, 24, 24, 128)),  # channels-last: the rows method
         rng.standard_normal((128, 1, 3, 3)), dict(groups=128, padding=1,
                                                    layout="channels_last")),
        (rng.standard_normal((2, 16, 30, 30)).astype(np.float32),
         rng.standard_normal((24, 16, 3, 3)).astype(np.float32), dict(padding=1)),
    ]
    for x, w, options in layers[:2]:  # the depthwise layers are split over the workers
        macs = x.size * 9
        assert macs >= cpu.DEPTHWISE_PARALLEL_MIN_MACS
    # (workspace, threads) per thread: two threads share each of the first two settings
    settings = [(2**20, 2), (2**20, 2), (4 * 2**20, 3), (4 * 2**20, 3), (2**22, 1)]
    alone = {}
    for space, threads in set(settings):
        with gpuconv.cpu_workspace(space), gpuconv.cpu_threads(threads):
            for i, (x, w, options) in enumerate(layers):
                alone[space, threads, i] = gpuconv.conv(x, w, **options)
    inputs = [(x.copy(), w.copy()) for x, w, _ in layers]
    wrong = []
    start = threading.Barrier(len(settings), timeout=30)

    def work(space: int, threads: int) -> None:
        with gpuconv.cpu_workspace(space), gpuconv.cpu_threads(threads):
            for r in range(4):
                for i, (x, w, options) in enumerate(layers):
                    start.wait()  # every thread on the same layer at once
                    if not np.array_equal(gpuconv.conv(x, w, **options),
                                          alone[space, threads, i]):
                        wrong.append((space, threads, i, r))

    threads = [threading.Thread(target=work, args=s) for s in settings]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    for (x, w, options), (x0, w0) in zip(layers, inputs):
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(w, w0)
    for (space, threads, i), got in alone.items():
        x, w, options = layers[i]
        exact, bound = error_bound(x, w, None, got.dtype, None, **options)
        assert np.all(np.abs(got - exact) <= bound), (space, threads, i)
