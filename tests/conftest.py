"""Shared fixtures: the GPU gate and output poisoning; loading a benchmarks/ script."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

import gpuconv
from gpuconv.device import cuda_status

# JAX takes 75% of the GPU's memory when it first uses it; the suite runs in several processes
# (pytest-xdist) on one GPU, so it takes only what it needs.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def gpu_skip_reason():
    status = cuda_status()
    return None if status.available else f"no usable CUDA device: {status.reason}"


@pytest.fixture
def gpu(monkeypatch):
    """Skip unless CuPy can use a CUDA device; poison GPU outputs with NaN before each launch."""
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    import gpuconv.cuda
    monkeypatch.setattr(gpuconv.cuda, "poison_outputs", True)
    import cupy
    return cupy


@pytest.fixture(autouse=True)
def _no_device_env(monkeypatch):
    # a GPUCONV_DEVICE in the caller's environment must not change what the tests exercise
    monkeypatch.delenv("GPUCONV_DEVICE", raising=False)


@pytest.fixture(autouse=True)
def _fresh_launch_plans():
    # CUDA launch plans are cached by their arguments; tests that monkeypatch a rule
    # (gemm_splits, gemm_tc_cl_filters, LAYOUT_MAX_GRID_Z, ...) must not find another test's plan
    # (and so are the repeated calls' replays of them)
    import gpuconv.cuda
    import gpuconv.repeat
    caches = (gpuconv.cuda._forward_plan, gpuconv.cuda._filter_grad_plan,
              gpuconv.cuda._channels_last_copy)
    for cache in caches:
        cache.cache_clear()
    gpuconv.repeat.clear()
    yield
    for cache in caches:
        cache.cache_clear()
    gpuconv.repeat.clear()


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """The host emulation of the CUDA kernels (tests/emulation.py), one a test process."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    from emulation import Emulator
    return Emulator(tmp_path_factory.mktemp("emulation"))


def pytest_report_header(config):
    return f"gpuconv {gpuconv.__version__}; GPU: {gpu_skip_reason() or 'available'}"


def load_script(name: str):
    """benchmarks/<name>.py as a module (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
