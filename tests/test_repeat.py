"""Repeated forward calls on CuPy arrays launch what their first call planned (gpuconv.repeat,
gpuconv.cuda.Replay, PointwiseReplay), and give the full path's results.

Without a GPU, the whole GPU code path (dispatch, device resolution, allocation, launcher) runs
on the stand-in CuPy of benchmarks/stand_in_cupy.py, each kernel emulated on the host as CuPy
would call it and cuBLAS's strided batched products done on host memory from their definition
(tests/emulation.py); the gpu test makes the same checks with CuPy on a GPU.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
import warnings

import numpy as np
import pytest

import gpuconv
from cases import channel_block_cases, grid_cases, pointwise_cases, tile_cases
from conftest import load_script
from emulation import cublas_call
from gpuconv import algorithms, cublas, cuda, device, kernels, repeat
from reference import error_bound
from test_grid import _check, _geometry
from test_kernel_emulation import _force_splits

stand_in = load_script("stand_in_cupy")

#: the algorithms a Replay launches (with the channels-last GEMMs, CHANNEL_BLOCK_CASES below;
#: besides auto's choices among them), and those it does not
REPLAYED = ("direct", "few_filters", "gemm", "depthwise", "depthwise_tile")
NOT_REPLAYED = {"pointwise", "winograd", "im2col"}  # but see _replayable


def _bare(case):
    """The case without bias and activation."""
    return dataclasses.replace(case, name=f"{case.name}-bare", bias=None,
                               options=dict(case.options, activation=None))


def _plain_case(case):
    """The case without flip and with zero padding: a call whose arrays reach the kernels as
    the caller gave them (where its dtypes agree), which a Replay can repeat."""
    return dataclasses.replace(case, name=f"{case.name}-plain",
                               options=dict(case.options, flip=False, padding_mode="zeros"))


CASES = grid_cases()
DEPTHWISE_CASES = [c for c in CASES if c.filters.shape[1] == 1 and c.options["groups"] > 1]
#: every fourth grid case under auto, as drawn (most of them not replayed: flip, padding
#: modes, mixed dtypes); each forced algorithm on a spread of plain cases; split-K (forced, as
#: test_kernel_emulation does) on plain grid and tile cases
REPEAT_CASES = ([(c, "auto") for c in CASES[::4]]
                + [(_plain_case(c), a) for a in REPLAYED[:3] for c in CASES[1::9]]
                + [(_plain_case(c), "gemm split-K") for c in CASES[2::9] + tile_cases()]
                + [(_plain_case(c), a) for a in REPLAYED[3:] for c in DEPTHWISE_CASES[::2]])


def _small(cases, most=130_000):
    """The cases of fewer than ``most`` input elements times filters (the larger channel-block
    cases take 40 s and more to emulate three times)."""
    return [c for c in cases if c.x.size * c.filters.shape[0] < most]


#: the channels-last GEMMs (x read in place or copied, the filters reordered), as drawn and
#: plain, with and without split-K; auto's float16 choice
CHANNEL_BLOCK_CASES = {"gemm_tc_cl": _small(channel_block_cases()),
                       "gemm_cl": _small(channel_block_cases("float32", (4, 12, 20, 36, 16), 16))}
REPEAT_CASES += [(case, f"{a}{split}") for a, cases in CHANNEL_BLOCK_CASES.items()
                 for i, c in enumerate(cases)
                 for case, split in ((c, ""), (_plain_case(c), " split-K" if i % 2 else ""))]
REPEAT_CASES += [(_plain_case(c), "auto") for c in CHANNEL_BLOCK_CASES["gemm_tc_cl"][::2]]
#: 1x1 layers: a PointwiseReplay for those without bias or activation, channels-first, of
#: stride 1; the others are remembered as not replayed
REPEAT_CASES += [(_plain_case(c), "pointwise") for c in pointwise_cases()]
REPEAT_CASES += [(_plain_case(_bare(c)), "pointwise") for c in pointwise_cases()]
#: the explicit GEMM: an Im2colReplay for calls whose products read the filters as they lie
#: (no bias; 16-bit: terms a multiple of 8, no sigmoid or tanh); with and without a bias
REPEAT_CASES += [(_plain_case(c), "im2col") for c in CASES[3::9]]
REPEAT_CASES += [(_plain_case(_bare(c)), "im2col") for c in CASES[4::9] + tile_cases()[::2]]
REPEAT_CASES += [(_plain_case(_bare(c)), "im2col") for c in _small(channel_block_cases())]


@pytest.fixture
def stand_in_gpu(emulator, monkeypatch):
    """CuPy is the stand-in (one GPU of 3 SMs, so split-K happens), its kernels emulated;
    outputs poisoned with NaN before each launch. Returns the stand-in module."""
    fake = stand_in.module(sms=3)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cuda, "_sm_count", lambda device_id: 3)
    monkeypatch.setattr(kernels, "get_function", lambda file, name, dtype, device_id:
                        functools.partial(emulator.launch, file, name))
    monkeypatch.setattr(cuda, "poison_outputs", True)
    # cuBLAS's products on the stand-in's (host) memory, by the call gpuconv.cublas makes, in
    # the full path as in the replays
    monkeypatch.setattr(cublas, "call", cublas_call)
    monkeypatch.setattr(cuda, "_library_gemm", lambda xp, a, b, c: cublas.gemm(a, b, c) or
                        pytest.fail(f"cuBLAS took no {a.shape} @ {b.shape} of {c.dtype}"))
    yield fake
    device.cuda_status.cache_clear()  # a probe made while the stand-in was CuPy is no real one
    device.cuda_device_name.cache_clear()  # nor is the name the autotuner's keys read


@pytest.fixture
def replays(monkeypatch):
    """Each Replay call's outcome: True where it launched, False where it handed the call back
    to the full path."""
    taken = []
    for kind in (cuda.Replay, cuda.PointwiseReplay, cuda.Im2colReplay):
        def counted(self, x, w, b, replay=kind.__call__):
            out = replay(self, x, w, b)
            taken.append(out is not None)
            return out

        monkeypatch.setattr(kind, "__call__", counted)
    return taken


def _replayable(case, algorithm, sms):
    """Whether the case's calls replay, by the rule gpuconv.repeat states: a plan of one of our
    kernels (split-K's sum aside) that takes the caller's arrays as they are, a pointwise
    call that is cuBLAS's products alone (gpuconv.cuda.PointwiseReplay: x of stride 1 read as
    it lies, no bias or activation), or an im2col call whose products read the filters as they
    lie (Im2colReplay)."""
    dtype = np.result_type(*[a for a in (case.x, case.filters, case.bias) if a is not None])
    geom = _geometry(case)
    plan = cuda.forward_plan(geom, dtype, case.activation, algorithm, sms)
    o = case.options
    padded = o["padding_mode"] != "zeros" and max(geom.pad_before + geom.pad_after) > 0
    same_dtype = all(a.dtype == dtype for a in (case.x, case.filters, case.bias)
                     if a is not None)
    if plan.algorithm == "im2col":
        widened = dtype.itemsize == 2 and case.activation in ("sigmoid", "tanh")
        padded_terms = dtype.itemsize == 2 and geom.terms_per_output % 8
        return (same_dtype and not padded and not o["flip"] and case.bias is None
                and not widened and not padded_terms and math.prod(geom.out_shape()) > 0)
    if plan.algorithm == "pointwise":
        last, P = o["layout"] == "channels_last", math.prod(geom.out_spatial)
        rows = geom.groups == 1 and (last or 1 in (P, geom.C_out))
        # x as the products read it: channels-last rows (a channels-first x's are only where
        # it has one position or channel), or channels-first images
        x_as_read = (last or P == 1 or geom.C_in == 1) if rows else not last
        return (same_dtype and not o["flip"] and case.bias is None and case.activation is None
                and max(geom.stride) == 1 and x_as_read and math.prod(geom.out_shape()) > 0)
    return (plan.algorithm not in NOT_REPLAYED and same_dtype and not padded and not o["flip"]
            and math.prod(geom.out_shape()) > 0)


def _changed(case):
    """The case with other values in arrays of the same shapes and dtypes (x negated, the
    filters halved, the bias negated: exact in every dtype)."""
    return dataclasses.replace(case, x=-case.x, filters=case.filters / 2,
                               bias=None if case.bias is None else -case.bias)


def _check_repeats(case, algorithm, xp, to_host, sms, taken, monkeypatch):
    forced = _force_splits(monkeypatch) if algorithm.endswith(" split-K") else None
    algorithm = algorithm.split()[0]
    geom = _geometry(case)
    dtype = np.result_type(case.x, case.filters)
    concrete = "gemm_" + algorithms._gemm_tile(geom, dtype) if algorithm == "gemm" else algorithm
    if algorithm != "auto" and algorithms.why_not("cuda", concrete, geom, dtype):
        pytest.skip(f"{concrete} does not apply (test_grid checks its refusal)")
    x, w, b = (None if a is None else xp.array(a) for a in (case.x, case.filters, case.bias))

    def call(x, w, b):
        return gpuconv.conv(x, w, b, algorithm=algorithm, **case.options)

    first = call(x, w, b)
    _check(case, to_host(first), f"{algorithm}: first call")
    # the same arrays holding other values: launched again, they are read anew
    changed = _changed(case)
    for a, new in ((x, changed.x), (w, changed.filters), (b, changed.bias)):
        if a is not None:
            a[...] = xp.asarray(new)
    second = call(x, w, b)
    _check(changed, to_host(second), f"{algorithm}: second call, other values")
    _check(case, to_host(first), f"{algorithm}: the first result after the second call")
    # other arrays of the same shapes, strides and dtypes (other memory)
    third = call(*(None if a is None else xp.array(a)
                   for a in (case.x, case.filters, case.bias)))
    _check(case, to_host(third), f"{algorithm}: third call, other arrays")
    expected = [True, True] if _replayable(case, algorithm, sms) else []
    if forced is not None:  # the plan split its terms
        assert forced and min(forced) >= 2
    assert taken == expected, f"{algorithm}: replays {taken}, expected {expected}"


@pytest.mark.parametrize("case, algorithm", REPEAT_CASES,
                         ids=lambda v: getattr(v, "name", str(v)))
def test_repeated_calls_replay_with_the_full_paths_results(case, algorithm, stand_in_gpu,
                                                           replays, monkeypatch):
    """A call's second and third runs (the same arrays with other values; other arrays of the
    same kind) replay where the rule says so, and every result is the reference's."""
    _check_repeats(case, algorithm, stand_in_gpu, np.asarray, 3, replays, monkeypatch)


#: grid cases without bias for im2col in several chunks (the suite's fit one)
IM2COL_CHUNK_CASES = [_plain_case(_bare(c)) for c in CASES[5::12]
                      if math.prod(_geometry(c).out_shape()) >= 24]


def _im2col_in_chunks(case, monkeypatch):
    """A workspace that holds about a third of the case's output positions."""
    geom = _geometry(case)
    dtype = np.result_type(case.x, case.filters)
    K = kernels.im2col_rows(geom, dtype, False)
    monkeypatch.setattr(kernels, "IM2COL_WORKSPACE_BYTES", kernels.im2col_column_bytes(
        geom, K, dtype.itemsize) * max(1, geom.positions // 3))
    assert kernels.im2col_chunk(geom, K, dtype.itemsize) < geom.positions


@pytest.mark.parametrize("case", IM2COL_CHUNK_CASES, ids=lambda c: c.name)
def test_im2col_replays_chunk_by_chunk(case, stand_in_gpu, replays, monkeypatch):
    """An Im2colReplay of a call in several chunks makes each chunk's unroll, product and
    store at that chunk's positions."""
    _im2col_in_chunks(case, monkeypatch)
    _check_repeats(case, "im2col", stand_in_gpu, np.asarray, 3, replays, monkeypatch)


@pytest.mark.gpu
@pytest.mark.parametrize("case", IM2COL_CHUNK_CASES, ids=lambda c: c.name)
def test_gpu_im2col_replays_chunk_by_chunk(case, gpu, replays, monkeypatch):
    _im2col_in_chunks(case, monkeypatch)
    _check_repeats(case, "im2col", gpu, gpu.asnumpy, cuda._gpu_sms(), replays, monkeypatch)


@pytest.mark.gpu
@pytest.mark.parametrize("case, algorithm", REPEAT_CASES,
                         ids=lambda v: getattr(v, "name", str(v)))
def test_gpu_repeated_calls_replay_with_the_full_paths_results(case, algorithm, gpu,
                                                               replays, monkeypatch):
    _check_repeats(case, algorithm, gpu, gpu.asnumpy, cuda._gpu_sms(), replays, monkeypatch)


def _layer(xp, seed=0, shape=(2, 3, 9, 8)):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    w = rng.uniform(-1, 1, (4, shape[1], 3, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, 4).astype(np.float32)
    return x, w, b, [xp.array(a) for a in (x, w, b)]


def _close(got, x, w, b, **options):
    """``got`` within the float32 error bound of the reference conv2d of x, w, b."""
    exact, bound = error_bound(x, w, b, np.float32, None, **options)
    err = np.abs(np.asarray(got).astype(np.float64) - exact)
    assert got.shape == exact.shape and np.all(err <= bound), float(np.max(err - bound))


def test_options_equal_to_a_remembered_calls_are_checked_as_given(stand_in_gpu, replays):
    """True, 1.0 and np.int64(1) compare equal to 1: a call with one of them is not the call
    with 1 that ran before (True and 1.0 are refused; np.int64(1) runs the full path)."""
    x, w, b, (gx, gw, gb) = _layer(stand_in_gpu)
    for _ in range(2):
        _close(gpuconv.conv2d(gx, gw, gb, stride=1, padding=1), x, w, b, padding=1)
    assert replays == [True]
    with pytest.raises(TypeError, match="stride"):
        gpuconv.conv2d(gx, gw, gb, stride=True, padding=1)
    with pytest.raises(TypeError, match="stride"):
        gpuconv.conv2d(gx, gw, gb, stride=1.0, padding=1)
    with pytest.raises(TypeError, match="padding"):
        gpuconv.conv2d(gx, gw, gb, stride=1, padding=1.0)
    with pytest.raises(TypeError, match="flip"):
        gpuconv.conv2d(gx, gw, gb, stride=1, padding=1, flip=0)
    _close(gpuconv.conv2d(gx, gw, gb, stride=np.int64(1), padding=1), x, w, b, padding=1)
    assert replays == [True]


def test_arrays_of_other_strides_or_layouts_are_other_calls(stand_in_gpu, replays):
    """The key holds the arrays' byte strides: a strided view of the same shape, or the same
    memory read as channels-last, is planned anew (its record differs)."""
    x, w, b, (gx, gw, gb) = _layer(stand_in_gpu)
    _close(gpuconv.conv2d(gx, gw, gb, padding=1), x, w, b, padding=1)
    wide = np.zeros((2, 3, 9, 16), np.float32)
    wide[..., ::2] = x
    view = stand_in_gpu.array(wide)[..., ::2]
    assert view.shape == gx.shape and view.strides != gx.strides
    for _ in range(2):
        _close(gpuconv.conv2d(view, gw, gb, padding=1), x, w, b, padding=1)
    # x's memory read as (N, H, W, C): another layout, another call
    last = stand_in.view(x.reshape(2, 9, 8, 3))
    _close(gpuconv.conv2d(last, gw, gb, padding=1, layout="channels_last"),
           x.reshape(2, 9, 8, 3), w, b, padding=1, layout="channels_last")
    assert replays == [True]  # the strided view's second call only


def test_misaligned_arrays_go_the_full_way(stand_in_gpu, replays):
    """A Replay checks the pointers per call: arrays that start inside an element (a GPU would
    fault) are handed to the full path, which copies them."""
    x, w, b, (gx, gw, gb) = _layer(stand_in_gpu)
    _close(gpuconv.conv2d(gx, gw, gb, padding=1), x, w, b, padding=1)
    raw = np.zeros(x.nbytes + 2, np.uint8)
    shifted = stand_in.view(raw[2:].view(np.float32).reshape(x.shape))
    shifted[...] = x
    assert shifted.data.ptr % 4 and shifted.strides == gx.strides
    _close(gpuconv.conv2d(shifted, gw, gb, padding=1), x, w, b, padding=1)
    assert replays == [False]


def test_device_environment_and_autotuning_are_part_of_a_call(stand_in_gpu, replays,
                                                               monkeypatch):
    """GPUCONV_DEVICE=cpu set after a call was remembered sends the next one to the CPU; under
    autotuning, "auto" calls have no key (the tuner chooses), forced algorithms keep theirs."""
    x, w, b, (gx, gw, gb) = _layer(stand_in_gpu)
    for _ in range(2):
        _close(gpuconv.conv2d(gx, gw, gb, padding=1), x, w, b, padding=1)
    assert replays == [True]
    monkeypatch.setenv("GPUCONV_DEVICE", "cpu")
    got = gpuconv.conv2d(gx, gw, gb, padding=1)
    assert type(got) is np.ndarray  # the CPU's result, not a stand-in GPU array
    _close(got, x, w, b, padding=1)
    assert replays == [True]
    monkeypatch.delenv("GPUCONV_DEVICE")
    options = (2, 1, 1, 1, 1, "zeros", "channels_first", None, "auto", "auto")
    assert repeat.key(gx, gw, gb, False, options) is not None
    with gpuconv.autotune():
        assert repeat.key(gx, gw, gb, False, options) is None
        assert repeat.key(gx, gw, gb, False, options[:-1] + ("gemm",)) is not None


def test_calls_that_convert_their_arrays_are_remembered_as_not_replayed(stand_in_gpu,
                                                                        replays, monkeypatch):
    """x of another dtype than the result (cast first), reflect padding (padded first) and
    flipped filters (copied first) run the full path every time, found not replayable once."""
    x, w, b, (gx, gw, gb) = _layer(stand_in_gpu)
    asked = []
    build = cuda.forward_replay
    monkeypatch.setattr(cuda, "forward_replay", lambda *a: asked.append(a) or build(*a))
    x16 = x.astype(np.float16)
    calls = [
        (lambda: gpuconv.conv2d(stand_in_gpu.array(x16), gw, gb, padding=1),
         (x16, w, b), dict(padding=1)),
        (lambda: gpuconv.conv2d(gx, gw, gb, padding=1, padding_mode="reflect"),
         (x, w, b), dict(padding=1, padding_mode="reflect")),
        (lambda: gpuconv.conv2d(gx, gw, gb, padding=1, flip=True),
         (x, w, b), dict(padding=1, flip=True)),
    ]
    for call, arrays, options in calls:
        for _ in range(2):
            _close(call(), *arrays, **options)
    assert replays == []
    assert sum(v is None for v in repeat._REPLAYS.values()) == len(calls)
    assert len(asked) == 2  # flip is refused before a Replay is asked for


def test_a_channels_last_x_read_in_place_must_start_on_16_bytes(stand_in_gpu, replays):
    """gemm_tc_cl reads a contiguous channels-last x as it lies, with 16-byte copies: a
    repeated call whose x starts 8 bytes off (each element still aligned) is handed to the
    full path, which copies x (the emulated cp.async reports a misaligned copy)."""
    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, (2, 6, 7, 16)).astype(np.float16)
    w = stand_in_gpu.array(rng.uniform(-1, 1, (24, 16, 3, 3)).astype(np.float16))
    raw = np.zeros(x.nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 16
    on16, off8 = (stand_in.view(raw[s:s + x.nbytes].view(np.float16).reshape(x.shape))
                  for s in (start, start + 8))
    case = dataclasses.replace(CASES[0], name="cl16", x=x, filters=np.asarray(w), bias=None,
                               options=dict(padding=1, layout="channels_last", activation=None))
    for _ in range(2):
        on16[...] = x
        got = gpuconv.conv2d(on16, w, padding=1, layout="channels_last",
                             algorithm="gemm_tc_cl")
        _check(case, np.asarray(got), "gemm_tc_cl on an x on 16 bytes")
    off8[...] = x
    got = gpuconv.conv2d(off8, w, padding=1, layout="channels_last", algorithm="gemm_tc_cl")
    _check(case, np.asarray(got), "gemm_tc_cl on an x 8 bytes off")
    assert replays == [True, False]


def test_autotuning_checks_each_candidate_on_the_gpu_path(stand_in_gpu, monkeypatch, tmp_path):
    """The autotuner's check of its candidates (tuning.Agreement) on the GPU path's arrays
    (stand-in CuPy, kernels emulated), float16 with bias and sigmoid: the default, gemm_tc,
    gemm_wgmma (the stand-in is compute capability 9.0) and direct all agree with the default;
    direct made wrong in one output is refused, named, and not chosen though the fastest."""
    from gpuconv import tuning
    from gpuconv.geometry import plan_conv
    monkeypatch.setenv("GPUCONV_AUTOTUNE_CACHE", str(tmp_path / "autotune.json"))
    tuning.clear_memory()
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (2, 16, 9, 8)).astype(np.float16)
    w = rng.uniform(-1, 1, (8, 16, 3, 3)).astype(np.float16)
    b = rng.uniform(-1, 1, 8).astype(np.float16)
    geom = plan_conv(x.shape, w.shape, padding=1)
    default = algorithms.choose("cuda", "auto", geom, np.float16)
    names = list(dict.fromkeys([default, "gemm_tc", "gemm_wgmma", "direct"]))
    assert all(n in tuning.candidates("cuda", geom, np.float16) for n in names)
    monkeypatch.setattr(tuning, "candidates", lambda kind, g, dtype: names)
    seconds = {n: 2.0 for n in names}
    seconds["direct"] = 1.0
    timed = []

    def clock(run, algorithm, sync, accept=None):
        run(algorithm)
        sync()
        if accept is not None and not accept(algorithm):
            return None
        timed.append(algorithm)
        return seconds[algorithm]
    monkeypatch.setattr(tuning, "time_candidate", clock)
    arrays = [stand_in_gpu.array(a) for a in (x, w, b)]
    with gpuconv.autotune(), warnings.catch_warnings():
        warnings.filterwarnings("error", "gpuconv: autotuning")
        got = gpuconv.conv2d(*arrays, padding=1, activation="sigmoid")
    assert sorted(timed) == sorted(names)
    exact, bound = error_bound(x, w, b, np.float16, "sigmoid", padding=1)
    assert np.all(np.abs(np.asarray(got).astype(np.float64) - exact) <= bound)

    full = cuda._forward

    def wrong(xp, run, sms, x_cf, w, bias, geom, activation, out_cf, algorithm="auto"):
        full(xp, run, sms, x_cf, w, bias, geom, activation, out_cf, algorithm)
        if algorithm == "direct":
            out_cf[1, 2, 3, 4] += 0.25
    monkeypatch.setattr(cuda, "_forward", wrong)
    tuning.clear_memory()
    (tmp_path / "autotune.json").unlink()
    timed.clear()
    with gpuconv.autotune(), pytest.warns(RuntimeWarning, match="'direct' out .* 1 of 1152"):
        got = gpuconv.conv2d(*arrays, padding=1, activation="sigmoid")
    assert sorted(timed) == sorted(n for n in names if n != "direct")
    assert np.all(np.abs(np.asarray(got).astype(np.float64) - exact) <= bound)
