"""The NumPy backend's pool of reused temporaries (gpuconv/scratch.py)."""
from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

import gpuconv
from gpuconv import scratch
from reference import reference_conv


def test_blocks_lend_disjoint_memory_and_reuse_it():
    scratch.release()
    with scratch.scratch() as take:  # fill the pool, so the blocks below are served from it
        take((100, 3), np.float64)
        take((50,), np.complex128)
        take((7, 7), np.float32)
    allocated = scratch.retained_bytes()
    with scratch.scratch() as take:
        a = take((100, 3), np.float64)
        with scratch.scratch() as take_inner:
            b = take_inner((50,), np.complex128)
            c = take_inner((7, 7), np.float32)
            assert not np.shares_memory(a, b) and not np.shares_memory(b, c)
            assert not np.shares_memory(a, c)
            assert a.shape == (100, 3) and a.dtype == np.float64 and a.flags.c_contiguous
            b_base = b.base
        with scratch.scratch() as take_inner:  # the inner block's buffers came back
            d = take_inner((40,), np.float64)
            assert np.shares_memory(d, b_base) or np.shares_memory(d, c)
            assert not np.shares_memory(a, d)
        a2 = take((100, 3), np.float64)  # the same size again: another buffer
        assert not np.shares_memory(a, a2)
        e = take((0, 5), np.float32)  # empty arrays work too
        assert e.shape == (0, 5)
    assert scratch.retained_bytes() >= allocated
    scratch.release()
    assert scratch.retained_bytes() == 0


def test_pool_keeps_at_most_its_limit(monkeypatch):
    scratch.release()
    monkeypatch.setattr(scratch, "RETAIN_BYTES", 1000)
    with scratch.scratch() as take:
        take((100,), np.float64)  # 800 bytes
        take((50,), np.float64)   # 400 bytes: together over the limit
    assert scratch.retained_bytes() <= 1000
    with gpuconv.cpu_workspace(300):  # a smaller workspace limits the pool too
        with scratch.scratch() as take:
            take((10,), np.float64)
        assert scratch.retained_bytes() <= 300
    scratch.release()


@pytest.mark.parametrize("kw", [
    dict(padding=1),                                 # columns GEMM
    dict(padding=1, stride=2),                       # stride phases
    dict(padding=1, groups=8),                       # depthwise
    dict(padding=0, kernel=1),                       # pointwise
])
def test_second_call_allocates_only_its_output_and_results_stay_intact(kw):
    kw = dict(kw)
    k = kw.pop("kernel", 3)
    groups = kw.get("groups", 1)
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
    x2 = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
    w = rng.standard_normal((8, 8 // groups, k, k)).astype(np.float32)
    scratch.release()
    y1 = gpuconv.conv2d(x1, w, **kw)
    y1_copy = y1.copy()
    tracemalloc.start()
    y2 = gpuconv.conv2d(x2, w, **kw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the pool serves every temporary of the second call: beyond its output, only Python
    # objects and the small weight copies (a few KiB) are new, and where NumPy < 2.3 runs a
    # depthwise call's einsum, the buffers it allocates itself (one task: a small layer)
    numpy_own = scratch.einsum_buffer_bytes(4) if groups > 1 else 0
    assert peak - y2.nbytes < 32 * 2**10 + numpy_own, peak - y2.nbytes
    np.testing.assert_array_equal(y1, y1_copy)  # not overwritten by the second call
    for x, y in ((x1, y1), (x2, y2)):
        np.testing.assert_allclose(y, reference_conv(x, w, **kw), rtol=1e-4, atol=1e-4)
    gpuconv.release_cpu_scratch()
    assert scratch.retained_bytes() == 0


def test_threads_have_their_own_pools():
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 6, 30 + i, 30)).astype(np.float32) for i in range(4)]
    w = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    expected = [gpuconv.conv2d(x, w, padding=1) for x in xs]
    got: dict = {}
    wrong = []

    def work(i: int) -> None:
        for _ in range(5):
            got[i] = gpuconv.conv2d(xs[i], w, padding=1)
            if not np.array_equal(got[i], expected[i]):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    for i in range(4):
        np.testing.assert_array_equal(got[i], expected[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_einsum_buffer_bytes_is_what_numpys_einsum_allocates(dtype):
    """scratch.einsum_buffer_bytes names what this NumPy's einsum allocates itself for one of
    the depthwise einsums (two operands into an output): the workspace leaves room for it."""
    a = np.ones((2, 8, 3, 500), dtype)
    g = np.ones((8, 4, 3), dtype)
    out = np.empty((2, 8, 4, 500), dtype)
    np.einsum("ncjx,cmj->ncmx", a, g, out=out)
    with scratch.numpy_settings():  # as in a CPU call (its buffer size does not matter)
        tracemalloc.start()
        np.einsum("ncjx,cmj->ncmx", a, g, out=out)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    expect = scratch.einsum_buffer_bytes(np.dtype(dtype).itemsize)
    assert expect <= peak <= expect + 4 * 2**10, (peak, expect, np.__version__)
