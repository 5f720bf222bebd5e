"""The CPU path keeps its temporary memory under the configured workspace."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gpuconv
import gpuconv.cpu  # noqa: F401  loaded here: importing the backend is not a call's temporary
from reference import reference_conv


@pytest.mark.parametrize("limit_mib,shape,wshape,kw", [
    (1, (4, 8, 40, 40), (16, 8, 3, 3), dict(padding=1)),
    (1, (3, 6, 30, 30), (6, 1, 5, 5), dict(padding="same", groups=6, padding_mode="reflect")),
    (1, (2, 4, 12, 12, 12), (8, 4, 3, 3, 3), dict(padding=1)),
    # depthwise with 64-wide output rows: the einsum over slots, in row chunks
    (1, (4, 16, 64, 64), (32, 1, 3, 3), dict(padding=1, groups=16)),
    # depthwise with short rows: one einsum over a channels-last copy, in chunks
    (1, (2, 96, 40, 20), (96, 1, 3, 3), dict(padding=1, groups=96)),
    # strided depthwise, an image's input alone 3 x the workspace: the slots copy only the
    # input rows of each row chunk, split into stride phases, from the caller's array itself
    (1, (1, 8, 300, 300), (8, 1, 3, 3), dict(stride=2, padding=1, groups=8)),
    # strided: the unrolling reads the input split into stride phases, in row chunks
    (1, (2, 6, 96, 96), (8, 6, 5, 5), dict(stride=2, padding=2)),
    (1, (2, 3, 40, 24, 30), (4, 3, 3, 2, 4), dict(stride=(2, 1, 3), padding=1)),
    # few filters: the shifted GEMM (1-D: chunks of positions, the products K[-1] x filters)
    (1, (4, 8, 6000), (16, 8, 5), dict(padding=6, dilation=3)),
])
def test_peak_temporary_memory_stays_under_the_workspace(limit_mib, shape, wshape, kw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    limit = limit_mib * 2**20
    with gpuconv.cpu_workspace(limit):
        assert gpuconv.get_cpu_workspace() == limit
        gpuconv.release_cpu_scratch()  # measure every temporary, as a first call allocates it
        tracemalloc.start()
        out = gpuconv.conv(x, w, device="cpu", **kw)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # the output is not a temporary; allow 64 KiB for Python objects and small arrays
    assert peak - out.nbytes <= limit + 64 * 2**10, (peak - out.nbytes, limit)
    # without the budget the unrolled buffer alone would have been larger than the limit
    # (N * output positions rows, C_in * taps columns)
    cols = x.itemsize * shape[0] * np.prod(out.shape[2:]) * shape[1] * np.prod(wshape[2:])
    assert cols > limit
    small = np.s_[:1]  # check one batch element against the reference (the reference is slow)
    np.testing.assert_allclose(out[small], reference_conv(x[small], w, **kw), rtol=1e-4,
                               atol=1e-4)
    assert gpuconv.get_cpu_workspace() == 256 * 2**20


def test_workspace_setting_validation(monkeypatch):
    with pytest.raises(ValueError, match="nbytes must be a positive int"):
        gpuconv.set_cpu_workspace(0)
    monkeypatch.setenv("GPUCONV_CPU_WORKSPACE", "lots")
    with pytest.raises(ValueError, match="GPUCONV_CPU_WORKSPACE"):
        gpuconv.get_cpu_workspace()
    monkeypatch.setenv("GPUCONV_CPU_WORKSPACE", "1048576")
    assert gpuconv.get_cpu_workspace() == 2**20


@pytest.mark.parametrize("which", ["input_grad", "filter_grad", "transpose"])
def test_adjoints_stay_under_the_workspace(which):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8, 40, 40)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    g = rng.standard_normal((4, 16, 40, 40)).astype(np.float32)
    limit = 2**20
    calls = {
        "input_grad": lambda: gpuconv.conv_input_grad(g, w, x.shape, padding=1, device="cpu"),
        "filter_grad": lambda: gpuconv.conv_filter_grad(x, g, w.shape, padding=1, device="cpu"),
        "transpose": lambda: gpuconv.conv_transpose(g, w, np.ones(8, np.float32), padding=1,
                                                    device="cpu"),
    }
    with gpuconv.cpu_workspace(limit):
        gpuconv.release_cpu_scratch()  # measure every temporary, as a first call allocates it
        tracemalloc.start()
        out = calls[which]()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    unrolled = x.itemsize * 4 * 40 * 40 * 8 * 9
    assert unrolled > limit
    assert peak - out.nbytes <= limit + 64 * 2**10, (peak - out.nbytes, limit)


def test_strided_filter_grad_in_row_chunks():
    """The filter gradient of a strided layer (the phase-split unrolling) summed over row
    chunks of a small workspace, against the reference."""
    from reference import reference_filter_grad
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 61, 60))
    g = rng.standard_normal((2, 4, 29, 28))
    limit = 2**18
    unrolled = x.itemsize * 2 * 29 * 28 * 3 * 25
    assert unrolled > limit
    with gpuconv.cpu_workspace(limit):
        got = gpuconv.conv_filter_grad(x, g, (4, 3, 5, 5), stride=2, device="cpu")
    want = reference_filter_grad(x, g, (4, 3, 5, 5), stride=2)
    # float64 sums of 2 * 29 * 28 products each: a few thousand units of roundoff at most
    mag = reference_filter_grad(np.abs(x), np.abs(g), (4, 3, 5, 5), stride=2).real
    n = 2 * 29 * 28
    assert np.all(np.abs(got - want) <= n * np.finfo(np.float64).eps * mag)


@pytest.mark.parametrize("shape,wshape,kw,algorithm", [
    ((1, 6, 260, 250), (8, 6, 3, 3), dict(padding=1), "gemm"),
    ((1, 6, 260, 250), (8, 6, 3, 3), dict(padding=(1, 2), stride=(2, 1)), "gemm_shifted"),
    ((1, 6, 260, 250), (8, 6, 5, 5), dict(padding=2, stride=2), "gemm"),   # stride phases
    ((1, 6, 260, 250), (8, 6, 3, 3), dict(padding=2, stride=2, dilation=2), "gemm"),
    ((2, 8, 40000), (16, 8, 5), dict(padding=6, dilation=3), "gemm_shifted"),
    ((1, 4, 40, 50, 60), (8, 4, 3, 3, 3), dict(padding=1, stride=(3, 2, 2)), "gemm"),
])
def test_an_image_larger_than_the_workspace_is_padded_by_row_windows(shape, wshape, kw,
                                                                      algorithm):
    """Where one image's padded input alone is more than the workspace, each chunk pads (and
    splits into stride phases) only the input rows its output rows read, from the caller's
    array: the forward GEMMs and the filter gradient stay under the workspace and give the
    whole-image results (the reference for the forward, one image)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    limit = 2**20
    assert x[:1].nbytes > limit
    whole = gpuconv.conv(x, w, device="cpu", algorithm=algorithm, **kw)
    g = rng.standard_normal(whole.shape).astype(np.float32)
    dw_whole = gpuconv.conv_filter_grad(x, g, wshape, device="cpu", **kw)
    with gpuconv.cpu_workspace(limit):
        out, out_peak = _peak(lambda: gpuconv.conv(x, w, device="cpu", algorithm=algorithm, **kw))
        dw, dw_peak = _peak(lambda: gpuconv.conv_filter_grad(x, g, wshape, device="cpu", **kw))
    assert max(out_peak, dw_peak) <= limit + 64 * 2**10, (out_peak, dw_peak, limit)
    # the same sums as with whole images, but for the order BLAS adds them in: within float32
    # rounding of sums of C_in * taps (forward) or N * output positions (filters) terms
    eps = np.finfo(np.float32).eps
    terms = wshape[1] * np.prod(wshape[2:])
    np.testing.assert_allclose(out, whole, rtol=0, atol=2 * terms * eps * np.abs(whole).max())
    from reference import reference_filter_grad
    mag = reference_filter_grad(np.abs(x).astype(np.float64), np.abs(g).astype(np.float64),
                                wshape, **kw).real
    n = whole.shape[0] * np.prod(whole.shape[2:])
    assert np.all(np.abs(dw - dw_whole) <= 2 * n * eps * mag)
    small = np.s_[:1]
    np.testing.assert_allclose(out[small], reference_conv(x[small], w, **kw), rtol=1e-4,
                               atol=1e-4)



@pytest.mark.parametrize("shape,wshape,kw,rows_method", [
    ((1, 96, 120, 120), (96, 1, 3, 3), dict(padding=1), False),  # slots of the caller's rows
    ((1, 120, 120, 96), (96, 1, 3, 3), dict(padding=1, layout="channels_last"), True),
    ((1, 120, 120, 48), (96, 1, 3, 3), dict(padding=1, layout="channels_last"), True),
    ((1, 96, 240, 60), (96, 1, 3, 3), dict(padding=1, stride=(1, 2)), False),  # strided slots
    ((1, 96, 480, 40), (96, 1, 3, 3), dict(padding=1, stride=(2, 2)), True),  # phases of rows
    ((1, 64, 30000), (64, 1, 5), dict(padding=2), False),  # 1-D: windows of positions
    ((1, 64, 30000), (64, 1, 5), dict(padding=2, stride=3, dilation=2), False),
    ((1, 64, 400, 12), (64, 1, 3, 3), dict(padding=1), True),  # short rows, channels-first
    ((1, 32, 200, 200), (32, 1, 3, 3), dict(padding=1, activation="relu"), False),
    ((1, 96, 120, 120), (96, 1, 3, 3), dict(padding=1, activation="sigmoid"), False),
    ((1, 120, 120, 96), (96, 1, 3, 3), dict(padding=1, activation="sigmoid",
                                            layout="channels_last"), True),
])
@pytest.mark.parametrize("threads", [None, 16])
def test_a_depthwise_image_larger_than_the_workspace_is_padded_by_row_windows(
        shape, wshape, kw, rows_method, threads, monkeypatch, request):
    """Depthwise layers whose one image's padded input is more than the workspace: each chunk
    copies only the input rows its output rows read (into its slots, or channels-last for the
    einsum over rows), and the tiled weights count against the workspace; before, the whole
    image was padded (1 x 96 x 120^2: 6.5 MB of temporaries against 1 MiB). With 16 workers (the H100
    machine's CPUs; here a pool of 16 threads) each task's share is 64 KiB, less than one
    output row of all its channels: tasks then take their channels a few at a time (before,
    1.3 MB in all there)."""
    if threads is not None:
        _many_workers(monkeypatch, request, threads)
    layout = kw.get("layout", "channels_first")
    C = shape[-1] if layout == "channels_last" else shape[1]
    geom = gpuconv.plan_conv(shape, wshape, groups=C,
                             **{k: v for k, v in kw.items() if k != "activation"})
    assert gpuconv.cpu._depthwise_flat(geom) is not rows_method
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    b = rng.standard_normal(wshape[0]).astype(np.float32)
    limit = 2**20
    assert x.nbytes > limit
    whole = gpuconv.conv(x, w, b, groups=C, device="cpu", **kw)
    threads = threads or gpuconv.get_cpu_threads()
    with gpuconv.cpu_workspace(limit), gpuconv.cpu_threads(threads):
        # a first chunked call grows the interpreter's own free lists (~120 KB for 800
        # chunks), which are not the call's temporaries; _peak then empties the scratch pools
        gpuconv.conv(x, w, b, groups=C, device="cpu", **kw)
        out, peak = _peak(lambda: gpuconv.conv(x, w, b, groups=C, device="cpu", **kw))
    assert peak <= limit + 64 * 2**10 + _numpy_own(geom, limit, threads), (peak, limit)
    np.testing.assert_array_equal(out, whole)  # the same sums, each in the same order
    np.testing.assert_allclose(out, reference_conv(x, w, b, groups=C, **kw), rtol=1e-4,
                               atol=1e-4)

@pytest.mark.parametrize("shape,wshape,kw", [
    ((1, 32, 200, 200), (32, 1, 3, 3), dict(padding=1)),  # slots
    ((1, 96, 120, 20), (96, 1, 3, 3), dict(padding=1)),  # the einsum over rows
    ((1, 96, 240, 60), (96, 1, 3, 3), dict(padding=1, stride=(1, 2))),
    ((2, 24, 100, 100), (48, 1, 3, 3), dict(padding=1, stride=2)),  # multiplier 2, strided
])
def test_a_depthwise_row_of_all_channels_over_the_workspace_takes_channels_a_few_at_a_time(
        shape, wshape, kw):
    """Where one output row of an image's channels (with the input rows it reads) is more than
    a task's workspace, the task takes its channels a few at a time: 1 x 32 x 200^2 at 64 KiB
    took 302 KB in one row of all 32 channels, within 64 KiB in rows of a few."""
    C = shape[1]
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    b = rng.standard_normal(wshape[0]).astype(np.float32)
    limit = 64 * 2**10
    whole = gpuconv.conv(x, w, b, groups=C, device="cpu", **kw)
    with gpuconv.cpu_workspace(limit), gpuconv.cpu_threads(1):
        gpuconv.conv(x, w, b, groups=C, device="cpu", **kw)  # the interpreter's free lists
        out, peak = _peak(lambda: gpuconv.conv(x, w, b, groups=C, device="cpu", **kw))
    geom = gpuconv.plan_conv(shape, wshape, groups=C, **kw)
    assert peak <= limit + 64 * 2**10 + _numpy_own(geom, limit, 1), (peak, limit)
    np.testing.assert_array_equal(out, whole)


def _numpy_own(geom, limit, threads):
    """Bytes of NumPy's own einsum buffers beyond the workspace (scratch.einsum_buffer_bytes:
    NumPy < 2.3 only). gpuconv leaves room for them in each task's share, which cannot be done
    where a share is no larger than they are: then every task takes them on top."""
    tasks = len(gpuconv.cpu._depthwise_parts(geom, threads))
    buffers = gpuconv.scratch.einsum_buffer_bytes(4)
    return tasks * buffers if limit // tasks <= buffers else 0


def test_a_depthwise_task_leaves_room_for_numpys_einsum_buffers(monkeypatch, request):
    """NumPy before 2.3 allocates 3 x 8192 items of buffers for every einsum call, beyond
    anything gpuconv lends (scratch.einsum_buffer_bytes); each depthwise task's share of the
    workspace leaves room for them (unless the share is no larger than they are), so the call
    stays within the workspace there too. Where NumPy does not allocate them, this test's
    einsum does, as such a NumPy would."""
    from gpuconv import cpu, scratch
    if not scratch._EINSUM_ALLOCATES_BUFFERS:
        real = np.einsum

        def einsum_as_numpy_before_2_3(*args, **kwargs):
            buffers = np.empty(scratch.einsum_buffer_bytes(kwargs["out"].itemsize), np.uint8)
            result = real(*args, **kwargs)
            del buffers
            return result
        monkeypatch.setattr(scratch, "_EINSUM_ALLOCATES_BUFFERS", True)
        monkeypatch.setattr(np, "einsum", einsum_as_numpy_before_2_3)
    _many_workers(monkeypatch, request, 2)
    budgets = []
    block = cpu._depthwise_block

    def spy(*args):
        budgets.append(gpuconv.get_cpu_workspace())
        return block(*args)
    monkeypatch.setattr(cpu, "_depthwise_block", spy)
    shape, wshape, kw = (1, 64, 30000), (64, 1, 5), dict(padding=2)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    geom = gpuconv.plan_conv(shape, wshape, groups=64, **kw)
    assert len(cpu._depthwise_parts(geom, 2)) == 2  # two tasks
    whole = gpuconv.conv(x, w, groups=64, device="cpu", **kw)
    buffers = scratch.einsum_buffer_bytes(4)
    for limit, share in ((2**20, 2**19 - buffers), (2**17, 2**16)):  # 64 KiB: no room
        with gpuconv.cpu_workspace(limit), gpuconv.cpu_threads(2):
            gpuconv.conv(x, w, groups=64, device="cpu", **kw)  # the interpreter's free lists
            budgets.clear()
            out, peak = _peak(lambda: gpuconv.conv(x, w, groups=64, device="cpu", **kw))
        assert budgets == [share, share], (budgets, limit)
        np.testing.assert_array_equal(out, whole)
    assert peak <= 2**17 + 64 * 2**10 + 2 * buffers, peak  # each task's buffers on top
    with gpuconv.cpu_workspace(2**20), gpuconv.cpu_threads(2):
        out, peak = _peak(lambda: gpuconv.conv(x, w, groups=64, device="cpu", **kw))
    assert peak <= 2**20 + 64 * 2**10, peak


def _many_workers(monkeypatch, request, count):
    """gpuconv's worker pool as on a machine of ``count`` CPUs, for one test: a pool of that
    many threads (workers past this machine's CPUs run unpinned), shut down after the test,
    and the old pool back."""
    from gpuconv import workers
    monkeypatch.setattr(workers, "_cpus", lambda: list(range(count)))
    monkeypatch.setattr(workers, "_pool", None)
    monkeypatch.setattr(workers, "_pool_size", 0)
    pool = workers._executor()
    request.addfinalizer(pool.shutdown)
    assert workers.pool_size() == count


def _peak(call):
    """``call()``'s result and the peak of the memory it allocated beyond that result, with
    the scratch pools emptied first (a first call allocates every temporary)."""
    gpuconv.release_cpu_scratch()
    tracemalloc.start()
    result = call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, peak - result.nbytes


def test_a_cpu_call_leaves_the_callers_numpy_settings_as_they_were():
    """A CPU call runs NumPy's passes with scratch.UFUNC_BUFFER_ELEMENTS-element buffers and
    overflow quiet (its own threads too) and gives the caller's settings back, also after an
    error."""
    from gpuconv import scratch
    seen = []
    original = gpuconv.cpu._depthwise_block

    def spy(*a):
        seen.append((np.getbufsize(), np.geterr()["over"], np.geterr()["invalid"]))
        return original(*a)
    x = np.random.default_rng(0).standard_normal((2, 8, 40, 40)).astype(np.float32)
    w = np.ones((8, 1, 3, 3), np.float32)
    previous = np.setbufsize(4096)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(gpuconv.cpu, "_depthwise_block", spy)
            gpuconv.conv(x, w, groups=8, device="cpu")
        assert seen and set(seen) == {(scratch.UFUNC_BUFFER_ELEMENTS, "ignore", "ignore")}
        assert np.getbufsize() == 4096 and np.geterr()["over"] == "warn"
        with pytest.MonkeyPatch.context() as mp, pytest.raises(RuntimeError, match="inside"):
            mp.setattr(gpuconv.cpu, "_depthwise_block",
                       lambda *a: (_ for _ in ()).throw(RuntimeError("inside the call")))
            gpuconv.conv(x, w, groups=8, device="cpu")
        assert np.getbufsize() == 4096
    finally:
        np.setbufsize(previous)


def test_a_view_of_another_shape_is_never_a_copy():
    """cpu._view_of_shape: a view where the strides allow one (it writes into the caller's
    output), None where only a copy could have that shape; never the deprecated shape
    assignment on NumPy >= 2.1 (NumPy 2.5 warns; the H100 machine's run printed it)."""
    import warnings
    from gpuconv.cpu import _view_of_shape
    a = np.arange(24.0).reshape(4, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = _view_of_shape(a, (2, 2, 6))
        assert v is not None and np.shares_memory(v, a) and v.shape == (2, 2, 6)
        v[1, 0, 0] = -1
        assert a[2, 0] == -1
        assert _view_of_shape(a[:, :3], (12,)) is None  # only a copy is flat
        assert _view_of_shape(a, (5, 5)) is None  # no shape of that size
        split = _view_of_shape(a[:, 1:5], (4, 2, 2))  # a strided block's axis split
        assert split is not None and np.shares_memory(split, a)


def test_pointwise_multiplies_straight_into_a_channels_first_output():
    """A 1x1 layer on channels-first float32 data needs no temporary of the product's size: it
    goes straight into the output (a temporary the output's size, copied over, cost 1.7 -> 1.1
    ms on r50_res2_1x1_64to256); float16 sums in float32, so there it goes through one."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 16, 30, 30)).astype(np.float32)
    w = rng.standard_normal((64, 16, 1, 1)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    out, temp = _peak(lambda: gpuconv.conv(x, w, b, device="cpu", activation="relu"))
    assert temp < out.nbytes // 4, (temp, out.nbytes)  # NumPy's loop buffers, Python objects
    want = np.maximum(reference_conv(x, w, b), 0)
    np.testing.assert_allclose(out, want, rtol=0, atol=16 * 2 * np.finfo(np.float32).eps
                               * np.abs(want).max())
    half, temp = _peak(lambda: gpuconv.conv(x.astype(np.float16), w.astype(np.float16),
                                            b.astype(np.float16), device="cpu"))
    assert temp >= 4 * half.size  # the float32 product


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_gemm_chunk_of_one_image_counts_its_product_only_when_it_takes_one(layout):
    """The columns GEMM multiplies a chunk of one image straight into a channels-first output,
    so where row chunks would make narrow products (< GEMM_MIN_COLUMNS) its rows count only
    their unrolled windows: here a whole image's windows fit the workspace, its product (and
    the reordered copy a batch chunk takes) would not. A channels-last output takes a
    temporary product, and its chunks must count it. Wide products keep the cap (speech)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 32, 48, 16)).astype(np.float32)
    w = rng.standard_normal((64, 32, 3, 3)).astype(np.float32)
    limit = 2**20
    geom = gpuconv.plan_conv(x.shape, w.shape, padding=1)
    windows, padded = 4 * 288 * 48 * 16, 4 * 32 * 50 * 18
    assert windows + padded <= limit < windows + padded + 4 * 2 * 64 * 48 * 16
    assert 48 * 16 < gpuconv.cpu.GEMM_MIN_COLUMNS
    with gpuconv.cpu_workspace(limit):
        assert gpuconv.cpu._chunks(geom, 4, 1, alone=288) == (1, 48)
        assert gpuconv.cpu._chunks(geom, 4, 1)[1] < 48
    speech = gpuconv.plan_conv((2, 1, 161, 700), (32, 1, 5, 20), stride=2)
    cap = gpuconv.cpu.GEMM_CHUNK_BYTES
    assert gpuconv.cpu._chunks(speech, 4, 1, cap, alone=100) == gpuconv.cpu._chunks(speech, 4,
                                                                                   1, cap)
    # vgg16_conv4_2 (one image, 28 x 28 outputs): float32's windows fit the cap whole; wider
    # dtypes keep float32's columns (the cap counts float32 items: float64 in three chunks of
    # 280 columns ran 9% slower), within the workspace always
    vgg = gpuconv.plan_conv((1, 512, 28, 28), (512, 512, 3, 3), padding=1)
    for itemsize in (4, 8, 16):
        assert gpuconv.cpu._chunks(vgg, itemsize, 1, cap, alone=4608) == (1, 28)
    with gpuconv.cpu_workspace(20 * 2**20):
        n, rows = gpuconv.cpu._chunks(vgg, 8, 1, cap, alone=4608)
        assert 8 * (512 * 30 * 30 + rows * 28 * 4608) <= 20 * 2**20 and rows < 28
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if layout == "channels_last" else x
    with gpuconv.cpu_workspace(limit):
        out, peak = _peak(lambda: gpuconv.conv(xl, w, padding=1, layout=layout,
                                               algorithm="gemm", device="cpu"))
    assert peak <= limit + 64 * 2**10, (peak, limit)
    got = np.moveaxis(out, -1, 1) if layout == "channels_last" else out
    np.testing.assert_allclose(got[:1], reference_conv(x[:1], w, padding=1), rtol=1e-4,
                               atol=1e-4)
