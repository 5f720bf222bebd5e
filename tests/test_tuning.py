"""Opt-in autotuning of algorithm="auto" (gpuconv.tuning): what it times, what it keeps, where."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import gpuconv
from gpuconv import tuning
from gpuconv.geometry import plan_conv
from reference import error_bound, finfo


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache file and no choices in memory; autotuning off unless a test turns it on."""
    path = tmp_path / "sub" / "autotune.json"
    monkeypatch.setenv("GPUCONV_AUTOTUNE_CACHE", str(path))
    monkeypatch.delenv("GPUCONV_AUTOTUNE", raising=False)
    tuning.clear_memory()
    yield path
    tuning.clear_memory()


@pytest.fixture
def clock(monkeypatch):
    """Replace the stopwatch: each candidate 'takes' the seconds the test gives it, and every
    timing is recorded. The seconds are for the CPU's candidates: NumPy inputs are kept on the
    CPU (where a GPU is usable, their "auto" device would be the GPU)."""
    monkeypatch.setenv("GPUCONV_DEVICE", "cpu")
    timed = []
    seconds = {}

    def fake(run, algorithm, sync, accept=None):
        run(algorithm)  # still computes: the last candidate's output must not be what is returned
        if accept is not None and not accept(algorithm):
            return None
        timed.append(algorithm)
        return seconds[algorithm]
    monkeypatch.setattr(tuning, "time_candidate", fake)
    return timed, seconds


def _pointwise_layer():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 8, 9, 7)), rng.standard_normal((5, 8, 1, 1))


def _check(x, w, got, **kw):
    exact, bound = error_bound(x, w, None, got.dtype, None, **kw)
    assert np.all(np.abs(got - exact) <= bound)


def test_off_by_default_writes_nothing(cache, clock):
    x, w = _pointwise_layer()
    assert gpuconv.get_autotune() is False
    gpuconv.conv(x, w)
    assert clock[0] == [] and not cache.exists()


@pytest.mark.parametrize("fastest", ["gemm", "pointwise"])
def test_times_every_candidate_once_and_keeps_the_fastest(cache, clock, fastest):
    timed, seconds = clock
    seconds.update({"gemm": 2.0, "pointwise": 1.0})
    seconds[fastest] = 0.5
    x, w = _pointwise_layer()
    with gpuconv.autotune():
        assert gpuconv.get_autotune() is True
        got = gpuconv.conv(x, w)
        again = gpuconv.conv(x, w)
    assert gpuconv.get_autotune() is False
    assert sorted(timed) == ["gemm", "pointwise"]  # both timed, once, on the first call only
    _check(x, w, got)
    np.testing.assert_array_equal(again, got)
    stored = json.loads(cache.read_text())
    assert list(stored.values()) == [fastest]
    (key,) = stored
    assert "cpu:" in key and "float64" in key and "kernel=(1, 1)" in key
    assert gpuconv.__version__ in key


def test_choice_on_disk_is_used_by_a_new_process(cache, clock, monkeypatch):
    timed, seconds = clock
    x, w = _pointwise_layer()
    geom = plan_conv(x.shape, w.shape)
    from gpuconv.device import cpu_model
    key = tuning.layer_key("cpu", cpu_model(), geom, np.float64)
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({key: "gemm"}))
    ran = []
    original = gpuconv.cpu._gemm_forward
    monkeypatch.setattr(gpuconv.cpu, "_gemm_forward", lambda *a: ran.append(1) or original(*a))
    with gpuconv.autotune():
        got = gpuconv.conv(x, w)
    assert timed == [] and ran == [1]
    _check(x, w, got)


def test_one_candidate_is_not_timed(cache, clock):
    # a 3x3 layer of stride 2: only "gemm" applies on the CPU
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((1, 3, 6, 6)), rng.standard_normal((2, 3, 3, 3))
    with gpuconv.autotune():
        got = gpuconv.conv(x, w, padding=1, stride=2)
    assert clock[0] == []
    assert list(json.loads(cache.read_text()).values()) == ["gemm"]
    _check(x, w, got, padding=1, stride=2)


def test_choices_are_per_layer_and_dtype(cache, clock):
    timed, seconds = clock
    seconds.update({"gemm": 1.0, "pointwise": 2.0, "depthwise": 0.5})
    x, w = _pointwise_layer()
    w2 = np.ones((6, 4, 1, 1))
    with gpuconv.autotune():
        gpuconv.conv(x, w)
        gpuconv.conv(x.astype(np.float32), w.astype(np.float32))
        gpuconv.conv(x[:1], w)
        gpuconv.conv(x, w2, groups=2)
        gpuconv.conv(x, w)
    assert len(json.loads(cache.read_text())) == 4
    assert len(timed) == 8


def test_a_malformed_cache_is_replaced(cache, clock):
    timed, seconds = clock
    seconds.update({"gemm": 1.0, "pointwise": 2.0})
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    x, w = _pointwise_layer()
    with gpuconv.autotune(), pytest.warns(RuntimeWarning, match="ignoring the autotune cache"):
        gpuconv.conv(x, w)
    assert list(json.loads(cache.read_text()).values()) == ["gemm"]


def test_a_stale_choice_that_cannot_run_is_retimed(cache, clock):
    timed, seconds = clock
    seconds.update({"gemm": 1.0, "pointwise": 2.0})
    x, w = _pointwise_layer()
    key = tuning.layer_key("cpu", gpuconv.device.cpu_model(), plan_conv(x.shape, w.shape),
                           np.float64)
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({key: "depthwise"}))  # does not apply to 8 kernels a filter
    with gpuconv.autotune():
        gpuconv.conv(x, w)
    assert sorted(timed) == ["gemm", "pointwise"]
    assert json.loads(cache.read_text())[key] == "gemm"


def test_unwritable_cache_warns_and_still_computes(tmp_path, monkeypatch, clock):
    timed, seconds = clock
    seconds.update({"gemm": 1.0, "pointwise": 2.0})
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GPUCONV_AUTOTUNE_CACHE", str(blocker / "autotune.json"))
    tuning.clear_memory()
    x, w = _pointwise_layer()
    with gpuconv.autotune(), pytest.warns(RuntimeWarning, match="could not write"):
        got = gpuconv.conv(x, w)
    _check(x, w, got)
    tuning.clear_memory()


def test_real_timing_runs_each_candidate(cache, monkeypatch):
    """Without the fake clock: one untimed and REPEATS timed runs of each candidate."""
    monkeypatch.setenv("GPUCONV_DEVICE", "cpu")
    x, w = _pointwise_layer()
    calls = []
    original = tuning.time_candidate

    def counting(run, algorithm, sync, accept=None):
        def counted(name):
            calls.append(name)
            run(name)
        return original(counted, algorithm, sync, accept)
    tuning.time_candidate = counting
    try:
        with gpuconv.autotune():
            got = gpuconv.conv(x, w)
    finally:
        tuning.time_candidate = original
    assert sorted(calls) == sorted(["gemm", "pointwise"] * (1 + tuning.REPEATS))
    assert json.loads(cache.read_text())  # something was chosen
    _check(x, w, got)


def test_settings(monkeypatch, cache):
    monkeypatch.setenv("GPUCONV_AUTOTUNE", "1")
    assert gpuconv.get_autotune() is True
    with gpuconv.autotune(False):
        assert gpuconv.get_autotune() is False
    monkeypatch.setenv("GPUCONV_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="GPUCONV_AUTOTUNE"):
        gpuconv.get_autotune()
    with pytest.raises(TypeError, match="enabled must be True, False or None"):
        gpuconv.set_autotune(1)
    gpuconv.set_autotune(None)
    monkeypatch.delenv("GPUCONV_AUTOTUNE")
    assert gpuconv.get_autotune() is False
    monkeypatch.delenv("GPUCONV_AUTOTUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert str(tuning.cache_path()) == "/somewhere/gpuconv/autotune.json"


def test_cuda_candidates_are_concrete_kernels():
    geom = plan_conv((2, 16, 9, 9), (32, 16, 3, 3))
    names = tuning.candidates("cuda", geom, np.float32)
    assert "gemm" not in names and "direct" in names and "gemm_64x64" in names
    # TF32 changes results: never chosen for the caller, though it could run this layer
    assert "gemm_tf32" not in names
    assert not gpuconv.algorithms.why_not("cuda", "gemm_tf32", geom, np.float32)
    assert {"gemm_tc", "gemm_tc_cl"} <= set(tuning.candidates("cuda", geom, np.float16))
    odd = plan_conv((2, 12, 9, 9), (32, 12, 3, 3))  # 12 kernels a filter: not 8-channel blocks
    assert "gemm_tc_cl" not in tuning.candidates("cuda", odd, np.float16)
    # gemm_cl (float32 FFMA, 4-channel blocks) for float32 only
    assert "gemm_cl" in names and "gemm_cl" in tuning.candidates("cuda", odd, np.float32)
    assert "gemm_cl" not in tuning.candidates("cuda", geom, np.float16)
    assert "gemm_cl" not in tuning.candidates("cuda", plan_conv((2, 6, 9, 9), (8, 6, 3, 3)),
                                              np.float32)
    assert "depthwise" not in names and "depthwise_tile" not in names
    dw = plan_conv((2, 16, 9, 9), (16, 1, 3, 3), groups=16)
    assert {"depthwise", "depthwise_tile"} <= set(tuning.candidates("cuda", dw, np.float32))
    dw4 = plan_conv((2, 16, 9, 9), (16, 1, 4, 4), groups=16)  # no unrolled instantiation
    assert "depthwise_tile" not in tuning.candidates("cuda", dw4, np.float32)
    assert tuning.candidates("cpu", dw, np.float32) == ["gemm", "gemm_shifted", "depthwise"]


@pytest.mark.gpu
def test_cuda_autotune_times_the_kernels_and_matches_the_cpu(cache, gpu):
    """Every CUDA candidate of the layer (the GEMM tiles among them) is timed once, one of them
    is kept under the GPU's key, and the result is right."""
    cp = gpu
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 16, 12, 12)), rng.standard_normal((24, 16, 3, 3))
    geom = plan_conv(x.shape, w.shape, padding=1)
    expected = tuning.candidates("cuda", geom, np.float64)
    assert "direct" in expected and "gemm_64x64" in expected
    timed = []
    original = tuning.time_candidate

    def counting(run, algorithm, sync, accept=None):
        timed.append(algorithm)
        return original(run, algorithm, sync, accept)
    tuning.time_candidate = counting
    try:
        with gpuconv.autotune(), warnings.catch_warnings():
            warnings.filterwarnings("error", "gpuconv: autotuning")  # every candidate agrees
            got = cp.asnumpy(gpuconv.conv(cp.asarray(x), cp.asarray(w), padding=1))
    finally:
        tuning.time_candidate = original
    assert sorted(timed) == sorted(expected)
    (key, choice), = json.loads(cache.read_text()).items()
    assert key.split("|")[1].strip().startswith("cuda:")
    assert choice in expected
    _check(x, w, got, padding=1)



@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_autotune_16bit_candidates_all_agree(cache, gpu, dtype):
    """A 16-bit layer with bias and sigmoid: every CUDA candidate (the tensor-core kernels
    among them, gemm_wgmma on compute capability 9.0) passes the autotuner's check against the
    default, and the result is right: the tuner never refuses a correct kernel here, and a
    kernel no forced-algorithm test caught would show here too."""
    cp = gpu
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, (2, 32, 12, 12)).astype(dtype)
    w = rng.uniform(-1, 1, (64, 32, 3, 3)).astype(dtype)
    b = rng.uniform(-1, 1, 64).astype(dtype)
    geom = plan_conv(x.shape, w.shape, padding=1)
    expected = tuning.candidates("cuda", geom, np.dtype(dtype))
    assert {"gemm_tc", "gemm_tc_cl"} <= set(expected)
    with gpuconv.autotune(), warnings.catch_warnings():
        warnings.filterwarnings("error", "gpuconv: autotuning")
        got = cp.asnumpy(gpuconv.conv(*[cp.asarray(a) for a in (x, w, b)], padding=1,
                                      activation="sigmoid"))
    (choice,) = json.loads(cache.read_text()).values()
    assert choice in expected
    exact, bound = error_bound(x, w, b, np.dtype(dtype), "sigmoid", padding=1)
    assert np.all(np.abs(got.astype(np.float64) - exact) <= bound)


# --- the check of each candidate's result (tuning.Agreement) ---------------------------------

def _agreeing_layers():
    """(x, w, b, options) of layers with several CPU candidates, across dtypes and options:
    every candidate there is correct, so none may be refused."""
    rng = np.random.default_rng(5)
    out = []
    for dtype in ("float16", "float32", "float64", "complex64", "complex128"):
        def arr(shape):
            a = rng.uniform(-1, 1, shape)
            if np.dtype(dtype).kind == "c":
                a = a + 1j * rng.uniform(-1, 1, shape)
            return a.astype(dtype)
        act = None if dtype.startswith("complex") else "sigmoid"
        out += [(arr((2, 8, 9, 7)), arr((5, 8, 1, 1)), arr(5), dict(activation=act)),
                (arr((2, 6, 9, 8)), arr((6, 1, 3, 3)), None, dict(groups=6, padding=1)),
                (arr((2, 4, 7, 9)), arr((3, 4, 3, 3)), arr(3),
                 dict(padding=1, activation="relu" if act else None))]
    # sums that cancel: a large offset in x, filters of zero sum
    x = rng.uniform(-1, 1, (2, 8, 9, 7)) + 1e4
    w = rng.uniform(-1, 1, (5, 8, 1, 1))
    out.append((x.astype(np.float32), (w - w.mean(axis=1, keepdims=True)).astype(np.float32),
                None, {}))
    # float16 sums past its largest value (65504): inf in some outputs, maybe not in all
    # candidates' (rounding decides near the edge); those are not judged, the others are
    x = rng.uniform(-1, 1, (2, 8, 9, 7)) * 300
    out.append((x.astype(np.float16), (rng.uniform(-1, 1, (5, 8, 1, 1)) * 200).astype(
        np.float16), None, {}))
    # an input of inf and NaN: the outputs they reach are not judged, the others are
    x = rng.uniform(-1, 1, (2, 8, 9, 7))
    x[0, 3, 4, 4], x[1, 0, 0, 0] = np.inf, np.nan
    out.append((x, rng.uniform(-1, 1, (5, 8, 1, 1)), None, {}))
    return out


@pytest.mark.parametrize("index", range(len(_agreeing_layers())))
def test_correct_candidates_all_agree(cache, monkeypatch, index):
    """Real runs of every CPU candidate (float16 to complex128, activations, bias, depthwise,
    cancelling sums, inf and NaN inputs): no candidate is refused, no warning."""
    x, w, b, options = _agreeing_layers()[index]
    monkeypatch.setenv("GPUCONV_DEVICE", "cpu")
    rest = {k: v for k, v in options.items() if k != "activation"}
    geom = plan_conv(x.shape, w.shape, **rest)
    names = tuning.candidates("cpu", geom, np.result_type(x, w))
    assert len(names) > 1
    timed = []
    original = tuning.time_candidate

    def counting(run, algorithm, sync, accept=None):
        seconds = original(run, algorithm, sync, accept)
        if seconds is not None:
            timed.append(algorithm)
        return seconds
    monkeypatch.setattr(tuning, "time_candidate", counting)
    with gpuconv.autotune(), warnings.catch_warnings():
        warnings.filterwarnings("error", "gpuconv: autotuning")
        got = gpuconv.conv(x, w, b, **options)
    assert sorted(timed) == sorted(names)
    rest = {k: v for k, v in options.items() if k != "activation"}
    exact, bound = error_bound(x, w, b, got.dtype, options.get("activation"), **rest)
    inside = np.abs(exact) + bound < finfo(got.dtype).max  # NaN, inf, overflow: not judged
    assert np.all(np.abs(got[inside] - exact[inside]) <= bound[inside])


def _perturbed_gemm(monkeypatch, change):
    """The CPU's gemm algorithm with ``change(out)`` applied to its result (for a 1x1 layer,
    whose default and so the check's reference is pointwise)."""
    real = gpuconv.cpu._gemm_forward

    def wrong(x_cf, w, bias, geom, activation, out_cf, ct):
        real(x_cf, w, bias, geom, activation, out_cf, ct)
        change(out_cf)
    monkeypatch.setattr(gpuconv.cpu, "_gemm_forward", wrong)


def _one_element(scale, x, w, b=None, dtype=np.float64):
    """A change of one output element by ``scale`` times its rounding bound, as the test
    suite's independent reference works it out."""
    _, bound = error_bound(x, w, b, dtype, None)

    def change(out):
        out[1, 2, 3, 4] += scale * bound[1, 2, 3, 4]
    return change


@pytest.mark.parametrize("change", ["3 bounds", "nan", "all wrong"])
def test_a_candidate_that_disagrees_is_refused_and_named(cache, clock, monkeypatch, change):
    """gemm, the fastest by the clock, made wrong: by three times one element's rounding bound
    (two correct results may differ by two), by a NaN, or everywhere: it is never chosen, and
    a RuntimeWarning names it, the reference (pointwise) and the count."""
    timed, seconds = clock
    seconds.update({"gemm": 1.0, "pointwise": 2.0})
    x, w = _pointwise_layer()
    changes = {"3 bounds": _one_element(3.0, x, w),
               "nan": lambda out: out.__setitem__((0, 1, 2, 3), np.nan),
               "all wrong": lambda out: out.__imul__(1 + 1e-6)}
    _perturbed_gemm(monkeypatch, changes[change])
    with gpuconv.autotune(), pytest.warns(RuntimeWarning) as caught:
        got = gpuconv.conv(x, w)
    (message,) = [str(c.message) for c in caught]
    count = 2 * 5 * 9 * 7 if change == "all wrong" else 1
    assert "leaves algorithm 'gemm' out" in message and "those of 'pointwise'" in message
    assert f"{count} of {2 * 5 * 9 * 7} outputs differ" in message
    assert timed == ["pointwise"]
    assert list(json.loads(cache.read_text()).values()) == ["pointwise"]
    _check(x, w, got)


def test_rounding_sized_differences_are_accepted(cache, clock, monkeypatch):
    """A result off by one and a half rounding bounds is accepted: two correct results may
    differ by two (each up to one from the exact sums)."""
    timed, seconds = clock
    seconds.update({"gemm": 1.0, "pointwise": 2.0})
    x, w = _pointwise_layer()
    _perturbed_gemm(monkeypatch, _one_element(1.5, x, w))
    with gpuconv.autotune(), warnings.catch_warnings():
        warnings.simplefilter("error")
        gpuconv.conv(x, w)
    assert sorted(timed) == ["gemm", "pointwise"]
    assert list(json.loads(cache.read_text()).values()) == ["gemm"]


def test_the_reference_is_the_default_algorithm(cache, clock, monkeypatch):
    """The reference is what "auto" runs without tuning, trusted as the results every untuned
    call gets: were pointwise (the 1x1 layer's default) wrong, gemm would be refused against
    it, and the choice stays the default."""
    timed, seconds = clock
    seconds.update({"gemm": 1.0, "pointwise": 2.0})
    x, w = _pointwise_layer()
    real = gpuconv.cpu._pointwise_forward

    def wrong(x_cf, w, bias, geom, activation, out_cf, ct):
        real(x_cf, w, bias, geom, activation, out_cf, ct)
        out_cf[0, 0, 0, 0] += 1.0
    monkeypatch.setattr(gpuconv.cpu, "_pointwise_forward", wrong)
    with gpuconv.autotune(), pytest.warns(RuntimeWarning, match="'gemm'.*'pointwise'"):
        gpuconv.conv(x, w)
    assert timed == ["pointwise"]


def test_no_memory_for_the_check_warns_and_tunes_by_time(cache, clock, monkeypatch):
    timed, seconds = clock
    seconds.update({"gemm": 1.0, "pointwise": 2.0})

    def no_memory(*args):
        raise MemoryError("out of memory allocating 1 GiB")
    monkeypatch.setattr(tuning, "Agreement", no_memory)
    x, w = _pointwise_layer()
    with gpuconv.autotune(), pytest.warns(RuntimeWarning, match="cannot check .* 1 GiB"):
        got = gpuconv.conv(x, w)
    assert sorted(timed) == ["gemm", "pointwise"]
    assert list(json.loads(cache.read_text()).values()) == ["gemm"]
    _check(x, w, got)
