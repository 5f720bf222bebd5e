"""Device selection, GPUCONV_DEVICE, the reasons given when the GPU cannot be used, and info()."""
from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest

import gpuconv
from gpuconv import device as dev
from conftest import gpu_skip_reason

X = np.ones((1, 1, 4, 4), np.float32)
W = np.ones((1, 1, 2, 2), np.float32)


def test_cpu_device_gives_numpy():
    out = gpuconv.conv(X, W, device="cpu")
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, np.full((1, 1, 3, 3), 4.0, np.float32))


def test_env_var_sets_the_default(monkeypatch):
    monkeypatch.setenv("GPUCONV_DEVICE", "cpu")
    assert dev.resolve("auto", X) == ("cpu", None)
    assert dev.default_device() == "cpu"
    monkeypatch.setenv("GPUCONV_DEVICE", "tpu")
    with pytest.raises(ValueError, match="GPUCONV_DEVICE.*'tpu'"):
        gpuconv.conv(X, W)
    # an explicit device other than "auto" wins over the environment
    assert dev.resolve("cpu", X) == ("cpu", None)


@pytest.mark.parametrize("value", ["cpu", " cuda:1 ", "", "caf\u00e9"])
def test_environ_reads_what_os_environ_holds(monkeypatch, value):
    """config.environ (the settings' fast read of os.environ's own dictionary) gives what
    os.environ.get gives, as variables are set, changed and removed at run time."""
    from gpuconv.config import environ
    name = "GPUCONV_TEST_ENVIRON"
    monkeypatch.delenv(name, raising=False)
    assert environ(name) == "" == os.environ.get(name, "")
    monkeypatch.setenv(name, value)
    assert environ(name) == value == os.environ[name]
    monkeypatch.setenv(name, value + "x")
    assert environ(name) == value + "x"
    monkeypatch.delenv(name)
    assert environ(name) == ""


def test_device_strings():
    assert dev._parse("cuda:3", "device") == ("cuda", 3)
    for bad in ("cuda:", "cuda:x", "CPU", "gpu", ""):
        with pytest.raises(ValueError, match="device must be one of"):
            dev._parse(bad, "device")


@pytest.mark.skipif(gpu_skip_reason() is None, reason="a GPU is usable here")
def test_cuda_without_gpu_says_why():
    with pytest.raises(gpuconv.DeviceUnavailableError, match="GPU cannot be used: .+"):
        gpuconv.conv(X, W, device="cuda")
    assert dev.resolve("auto", X) == ("cpu", None)  # auto falls back quietly


def _fake_cupy(monkeypatch, *, count=1, count_error=None, driver=13000, runtime=13000):
    class CUDARuntimeError(RuntimeError):
        pass

    def get_count():
        if count_error:
            raise CUDARuntimeError(count_error)
        return count

    rt = types.SimpleNamespace(
        runtimeGetVersion=lambda: runtime, driverGetVersion=lambda: driver,
        getDeviceCount=get_count, getDeviceProperties=lambda i: {"name": b"Fake GPU"})
    fake = types.ModuleType("cupy")
    fake.__version__ = "99.0"
    fake.cuda = types.SimpleNamespace(runtime=rt)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return dev.cuda_status.__wrapped__()


def test_status_reasons_with_a_fake_cupy(monkeypatch):
    s = _fake_cupy(monkeypatch, count=0)
    assert not s.available and "no CUDA device is visible" in s.reason
    s = _fake_cupy(monkeypatch, driver=12020, runtime=13000,
                   count_error="cudaErrorInsufficientDriver: driver too old")
    assert not s.available and "driver is too old" in s.reason and "12.2" in s.reason
    s = _fake_cupy(monkeypatch, driver=0)
    assert not s.available and "no CUDA driver" in s.reason
    s = _fake_cupy(monkeypatch, count=2)
    assert s.available and s.device_names == ("Fake GPU", "Fake GPU")


def test_missing_cupy_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    s = dev.cuda_status.__wrapped__()
    assert not s.available and "CuPy is not installed" in s.reason


def test_info_reports_versions_and_the_auto_path(monkeypatch):
    i = gpuconv.info()
    assert i.version == gpuconv.__version__
    assert i.numpy_version == np.__version__
    assert i.auto_device in ("cpu", "cuda") and i.auto_reason
    text = str(i)
    for needle in ("gpuconv", "numpy", "cupy", "device='auto'", i.auto_device):
        assert needle in text
    monkeypatch.setenv("GPUCONV_DEVICE", "cpu")
    i = gpuconv.info()
    assert i.auto_device == "cpu" and "GPUCONV_DEVICE=cpu" in i.auto_reason


class _FakeGpuArray:
    """Stands in for a cupy.ndarray on GPU ``device_id`` (dispatch asks only these)."""
    __module__ = "cupy"

    def __init__(self, device_id, tag):
        self.data = types.SimpleNamespace(device_id=device_id)
        self.tag = tag

    @property
    def device(self):
        return types.SimpleNamespace(id=self.data.device_id)

    def get(self):
        return np.array([self.tag])


def test_gpu_dispatch_runs_on_the_arrays_gpu_and_copies_only_foreign_arrays(monkeypatch):
    """dispatch.run with a fake CuPy of two GPUs: a call on GPU 1's arrays runs inside that
    device's context; an array on another GPU than the call's is copied, one already there is
    passed as it is, a NumPy array is moved; the current device is read, never a Device built
    where no switch is needed."""
    from gpuconv import dispatch
    current, events = [0], []

    class Device:
        def __init__(self, i):
            self.i = i

        def __enter__(self):
            events.append(("enter", self.i))
            self.before, current[0] = current[0], self.i

        def __exit__(self, *exc):
            current[0] = self.before
            events.append(("exit", self.i))

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: current[0]),
                                      Device=Device)
    fake.asarray = lambda a: _FakeGpuArray(current[0], "moved from the host")
    fake.array = lambda a, copy: _FakeGpuArray(current[0], f"copy of {a.tag}")
    monkeypatch.setitem(sys.modules, "cupy", fake)
    seen = []

    def compute(xp, backend, *arrays):
        seen.append((current[0], [None if a is None else (a.data.device_id, a.tag)
                                  for a in arrays]))
        return arrays[0]

    x1, w1 = _FakeGpuArray(1, "x"), _FakeGpuArray(1, "w")
    assert dispatch.run("auto", x1, (x1, w1, None), compute) is x1
    assert events == [("enter", 1), ("exit", 1)] and current[0] == 0
    assert seen.pop() == (1, [(1, "x"), (1, "w"), None])

    events.clear()
    x0 = _FakeGpuArray(0, "x")
    dispatch.run("auto", x0, (x0, w1, None), compute)
    assert events == []  # already on the call's device
    assert seen.pop() == (0, [(0, "x"), (0, "copy of w"), None])

    out = dispatch.run("auto", X, (X, w1, None), compute)  # NumPy x: on w's GPU, back as NumPy
    assert seen.pop() == (1, [(1, "moved from the host"), (1, "w"), None])
    assert isinstance(out, np.ndarray) and out.tolist() == ["moved from the host"]


@pytest.mark.gpu
def test_cupy_arrays_stay_on_gpu_and_respect_the_stream(gpu):
    cp = gpu
    x = cp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32))
    w = cp.asarray(np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32))
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        out = gpuconv.conv(x, w, padding=1)
    stream.synchronize()
    assert isinstance(out, cp.ndarray) and out.device.id == x.device.id
    want = gpuconv.conv(cp.asnumpy(x), cp.asnumpy(w), padding=1, device="cpu")
    np.testing.assert_allclose(cp.asnumpy(out), want, rtol=1e-5, atol=1e-5)
    # device="cpu" brings CuPy inputs to the host
    assert isinstance(gpuconv.conv(x, w, device="cpu"), np.ndarray)


def test_package_needs_only_numpy():
    """Importing gpuconv and convolving on the CPU loads neither CuPy, SciPy nor PyTorch."""
    import subprocess
    import sys
    code = ("import sys, numpy as np, gpuconv; "
            "gpuconv.conv(np.ones((1, 1, 4)), np.ones((1, 1, 2)), device='cpu'); "
            "print(sorted(m for m in ('cupy', 'scipy', 'torch') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
