"""The CPU's depthwise path: both of its methods, its blocks of output positions, its row chunks
and its split over worker threads, each forced, against the float64 reference and each other."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from cases import Case, fast_path_cases, grid_cases
from gpuconv import cpu, workers
from test_grid import _check, _geometry

DEPTHWISE = [c for c in grid_cases() + fast_path_cases()
             if c.filters.shape[1] == 1 and c.options["groups"] > 1]


def _conv(case, **extra):
    return gpuconv.conv(case.x, case.filters, case.bias, device="cpu", algorithm="depthwise",
                        **case.options, **extra)


def test_the_cases_reach_every_branch():
    """Strided and unit last axes, dilation with stride, multipliers, every rank and layout."""
    opts = [c.options for c in DEPTHWISE]
    assert len(DEPTHWISE) >= 100
    assert {len(o["stride"]) for o in opts} == {1, 2, 3}
    assert any(o["stride"][-1] > 1 and o["dilation"][-1] > 1 for o in opts)
    assert any(o["stride"][-1] == 1 and o["dilation"][-1] > 1 for o in opts)
    assert any(c.filters.shape[0] > c.options["groups"] for c in DEPTHWISE)  # multiplier 2
    assert {o["layout"] for o in opts} == {"channels_first", "channels_last"}
    assert {o["padding_mode"] for o in opts} == {"zeros", "reflect", "replicate", "circular"}


@pytest.mark.parametrize("method", ["slots", "rows", "rows_by_2"])
@pytest.mark.parametrize("case", DEPTHWISE, ids=lambda c: c.name)
def test_each_method_against_reference(case, method, monkeypatch):
    """The einsum over slots and the tiled einsum over rows, each forced on every depthwise
    case whatever the caller's layout (the rows method also in blocks of 2 output positions,
    so that odd rows end in a shorter block)."""
    monkeypatch.setattr(cpu, "_depthwise_flat", lambda geom: method == "slots")
    if method == "rows_by_2":
        monkeypatch.setattr(cpu, "_tile_positions", lambda geom, nbytes: 2)
    x0 = case.x.copy()
    _check(case, _conv(case), f"cpu depthwise {method}")
    np.testing.assert_array_equal(case.x, x0)


def _spy_tasks(monkeypatch):
    counts = []
    run = workers.run

    def counting(fn, tasks):
        tasks = list(tasks)
        counts.append(len(tasks))
        return run(fn, tasks)
    monkeypatch.setattr(workers, "run", counting)
    return counts


@pytest.mark.parametrize("method", ["slots", "rows"])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", DEPTHWISE[::3], ids=lambda c: c.name)
def test_threads_against_reference_and_one_thread(case, threads, method, monkeypatch):
    """Split over workers by images (when the batch divides) or channels. The slots method
    sums every output in the same order whatever the split (its einsum's loop order follows
    the taps' strides, which a split leaves as they are): bit for bit the one-thread result.
    The rows method's einsum may order a sum differently for a block of fewer channels
    (NumPy picks its loop order by shape): within the bound of the reference."""
    monkeypatch.setattr(cpu, "_depthwise_flat", lambda geom: method == "slots")
    with gpuconv.cpu_threads(1):
        want = _conv(case)
    monkeypatch.setattr(cpu, "DEPTHWISE_PARALLEL_MIN_MACS", 0)
    counts = _spy_tasks(monkeypatch)
    with gpuconv.cpu_threads(threads):
        got = _conv(case)
    assert counts == [len(cpu._depthwise_parts(_geometry(case), threads))]
    _check(case, got, f"cpu depthwise {method}, {threads} threads")
    if method == "slots":
        np.testing.assert_array_equal(got, want)


def test_parts_cover_the_layer_once():
    """Images split when the batch divides by the threads, channels otherwise; every (image,
    channel) in exactly one part; small layers stay on the calling thread, large ones are
    not cut into more tasks than their work is worth."""
    geom = gpuconv.plan_conv((4, 96, 56, 56), (96, 1, 3, 3), padding=1, groups=96)
    assert cpu._depthwise_parts(geom, 2) == [(slice(0, 2), slice(0, 96)),
                                             (slice(2, 4), slice(0, 96))]
    assert cpu._depthwise_parts(geom, 1) == [(slice(0, 4), slice(0, 96))]
    for shape, threads in [((3, 40, 64, 64), 2), ((1, 5, 512, 512), 8), ((6, 64, 40, 40), 4)]:
        geom = gpuconv.plan_conv(shape, (shape[1], 1, 3, 3), padding=1, groups=shape[1])
        parts = cpu._depthwise_parts(geom, threads)
        assert 1 < len(parts) <= threads
        seen = np.zeros(shape[:2], int)
        for ns, cs in parts:
            seen[ns, cs] += 1
        assert np.all(seen == 1)
    tiny = gpuconv.plan_conv((1, 8, 16, 16), (8, 1, 3, 3), padding=1, groups=8)
    assert cpu._depthwise_parts(tiny, 4) == [(slice(0, 1), slice(0, 8))]
    # a many-CPU machine splits a layer into tasks of at least half the threshold's work
    c144 = gpuconv.plan_conv((2, 144, 56, 56), (144, 1, 3, 3), padding=1, groups=144)
    macs = 2 * 144 * 56 * 56 * 9
    assert len(cpu._depthwise_parts(c144, 64)) == 2 * macs // cpu.DEPTHWISE_PARALLEL_MIN_MACS


@pytest.mark.parametrize("method", ["slots", "rows"])
@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding=1),
                                dict(stride=(1, 3), dilation=(2, 2), padding=2,
                                     padding_mode="circular")])
def test_row_chunks_give_the_whole_result(method, kw, monkeypatch):
    """A workspace too small for one image: chunks of output rows, each reading its own input
    rows (and, for the rows method with a strided last axis, splitting only those)."""
    monkeypatch.setattr(cpu, "_depthwise_flat", lambda geom: method == "slots")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, 70, 67))
    w = rng.standard_normal((24, 1, 3, 3))
    b = rng.standard_normal(24)
    whole = gpuconv.conv(x, w, b, groups=12, device="cpu", **kw)
    limit = 2**18
    assert x[:1].nbytes > limit
    with gpuconv.cpu_workspace(limit):
        got = gpuconv.conv(x, w, b, groups=12, device="cpu", **kw)
    np.testing.assert_array_equal(got, whole)


def test_row_chunks_stay_long_when_an_image_fills_the_cache_cap():
    """float64 2 x 96 x 112^2 stride 2: an image's padded phases (20 MiB) exceed the 16 MiB
    cap; chunks of single output rows made it 10x slower than float32. Rows are now sized by
    their own temporaries and input rows, and still within the workspace."""
    geom = gpuconv.plan_conv((2, 96, 112, 112), (96, 1, 3, 3), stride=2, padding=1, groups=96)
    per_position = 3 * geom.C_out
    n, rows = cpu._chunks(geom, 8, 2, cap=cpu.DEPTHWISE_CHUNK_BYTES, per_position=per_position)
    assert n == 1 and rows >= 16
    phases = 8 * 2 * 96 * 114 * 114
    for workspace in (24 * 2**20, phases + 40 * 8 * 56 * per_position):
        with gpuconv.cpu_workspace(workspace):
            n, rows = cpu._chunks(geom, 8, 2, cap=cpu.DEPTHWISE_CHUNK_BYTES,
                                  per_position=per_position)
        assert n == 1 and phases + rows * 8 * 56 * per_position <= workspace
    # not sooner: a GEMM chunk the first rule leaves >= 1/8 of the cap keeps it (vgg16_conv1_2:
    # 5 rows, 3 MiB of columns; 23-row chunks ran ~10% slower)
    vgg = gpuconv.plan_conv((1, 64, 224, 224), (64, 64, 3, 3), padding=1)
    per_row = 4 * 224 * (64 * 9 + 2 * 64)
    n, rows = cpu._chunks(vgg, 4, 1, cap=cpu.GEMM_CHUNK_BYTES)
    assert rows == cpu._balanced(224, (cpu.GEMM_CHUNK_BYTES - 4 * 64 * 226 * 226) // per_row)


@pytest.mark.parametrize("x_shape, stride, layout, slots", [
    ((2, 144, 56, 56), 1, "channels_first", True),   # long rows, any channel count: slots
    ((2, 16, 112, 112), 2, "channels_first", True),  # strided, rows of 56: slots
    ((2, 144, 56, 56), 2, "channels_first", True),   # rows of 28
    ((2, 16, 56, 45), 2, "channels_first", False),   # rows of 23: the einsum over rows
    ((4, 576, 14, 14), 1, "channels_first", False),  # short rows
    ((2, 16, 56, 56), 1, "channels_last", False),    # channels-last data: the einsum over rows
])
def test_method_rule(x_shape, stride, layout, slots):
    """Which depthwise method a layer takes (measurements: cpu._depthwise_flat)."""
    C = x_shape[1]
    if layout == "channels_last":
        x_shape = (x_shape[0],) + x_shape[2:] + (C,)
    geom = gpuconv.plan_conv(x_shape, (C, 1, 3, 3), stride=stride, padding=1, groups=C,
                             layout=layout)
    assert cpu._depthwise_flat(geom) is slots
    assert cpu.DEPTHWISE_SLOTS_MIN_WIDTH == 24


def test_slot_weights_put_every_tap_once_and_zeros_elsewhere():
    """The grid of the slots einsum, by hand: stride 2, dilation 1 along the first axis puts
    taps 0 and 2 in phase 0 (offsets 0 and 1) and tap 1 in phase 1, offset 1 of that grid
    left zero; stride 1, dilation 2 along the middle axis makes the offsets' unit 2 (taps at
    offsets 0, 1, 2 of that unit, none left out); the last axis's taps stay as they are."""
    geom = gpuconv.plan_conv((1, 2, 20, 20, 20), (2, 1, 3, 3, 2), stride=(2, 1, 3),
                             dilation=(1, 2, 1), groups=2)
    assert cpu._slot_axes(geom) == [([0, 1], 1, 2), ([0], 2, 3)]
    wt = np.arange(1, 2 * 18 + 1, dtype=np.float64).reshape(2, 1, 18)
    grid = cpu._slot_weights(wt, geom)
    assert grid.shape == (2, 1, 2, 2, 1, 3, 2)
    taps = wt.reshape(2, 1, 3, 3, 2)
    for k0, (phase, offset) in enumerate([(0, 0), (1, 0), (0, 1)]):
        np.testing.assert_array_equal(grid[:, :, phase, offset, 0], taps[:, :, k0])
    assert np.all(grid[:, :, 1, 1] == 0)
    assert np.count_nonzero(grid) == wt.size


def _complex(rng, shape, dtype):
    dtype = np.dtype(dtype)
    a = rng.standard_normal(shape)
    return (a + 1j * rng.standard_normal(shape) if dtype.kind == "c" else a).astype(dtype)


@pytest.mark.parametrize("xd, wd", [("complex64", "complex64"), ("float32", "complex64"),
                                    ("complex64", "float32"), ("complex128", "complex128"),
                                    ("complex64", "complex128"), ("float16", "complex64")])
@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding=1, bias=True),
                                dict(stride=(2, 3), dilation=(1, 2), padding=2,
                                     padding_mode="reflect"),
                                dict(padding=1, view=True)])
def test_complex_slots_as_real_planes(xd, wd, kw, monkeypatch):
    """Complex depthwise sums over slots are real einsums over the real and imaginary parts'
    planes (one plane for a real input): every mix of real and complex inputs, strides, a
    padded copy (reflect), and an input whose last axis is strided (its parts read as .real
    and .imag, not as one real view), against the reference; the real einsum is what ran."""
    monkeypatch.setattr(cpu, "_depthwise_flat", lambda geom: True)
    kw = dict(kw)
    rng = np.random.default_rng(11)
    x = _complex(rng, (2, 6, 30, 61 if kw.pop("view", False) else 31), xd)
    if x.shape[-1] == 61:
        x = x[..., ::2]  # (2, 6, 30, 31), last axis strided
    w = _complex(rng, (12, 1, 3, 3), wd)
    b = _complex(rng, (12,), wd) if kw.pop("bias", False) else None
    views = []
    planes = cpu._planes
    monkeypatch.setattr(cpu, "_planes", lambda src: views.append(planes(src)) or views[-1])
    einsums = []
    einsum = np.einsum
    monkeypatch.setattr(np, "einsum", lambda *a, **k: einsums.append(a[1].dtype) or einsum(
        *a, **k))
    case = Case("planes", x, w, b, dict(groups=6, activation=None, **kw))
    x0 = x.copy()
    _check(case, _conv(case), f"cpu depthwise planes {xd} {wd} {kw}")
    np.testing.assert_array_equal(x, x0)
    assert einsums and all(d.kind == "f" for d in einsums)
    zeros = kw.get("padding_mode", "zeros") == "zeros"  # else a padded copy, complex
    parts = 2 if np.dtype(xd).kind == "c" or not zeros else 1
    assert views and all(len(v) == parts for v in views)
    if np.dtype(xd).kind == "c" and zeros:  # the slots are filled from the caller's array
        as_one = x.strides[-1] == x.itemsize
        assert all((v[0][0] is v[1][0]) == as_one and v[0][1] == 1 + as_one for v in views)


def test_planes_of_a_complex_array():
    """cpu._planes: element i of part p at scale * i + shift of the part's array; one real
    view of both parts where the last axis is contiguous, .real and .imag where not."""
    rng = np.random.default_rng(5)
    x = _complex(rng, (2, 3, 4, 10), np.complex64)
    for src in (x, x[..., ::2], x[:, ::2, 1:]):
        parts = cpu._planes(src)
        assert len(parts) == 2
        for (a, scale, shift), want in zip(parts, (src.real, src.imag)):
            np.testing.assert_array_equal(a[..., shift::scale], want)
            assert np.shares_memory(a, src)
        assert (scale == 2) == (src.strides[-1] == src.itemsize)
    real = x.real.copy()
    assert cpu._planes(real) == [(real, 1, 0)]
