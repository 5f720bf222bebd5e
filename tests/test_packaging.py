"""A wheel built from the repository carries kernels_cuda/, and the installed package finds its
kernels outside the source tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _missing_build_tools():
    """What the build backend needs (pyproject's build-system) and this Python lacks."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        if int(version("setuptools").split(".")[0]) < 77:  # pyproject's build-system
            return f"setuptools>=77 (have {version('setuptools')})"
        version("wheel")
    except PackageNotFoundError as exc:
        return f"{exc.name} is not installed"
    return None


@pytest.mark.slow
def test_wheel_contains_kernels_and_installed_package_finds_them(tmp_path):
    missing = _missing_build_tools()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to build the wheel: {missing} (install gpuconv[test])")
        pytest.skip(f"cannot build a wheel offline here: {missing} (pip install gpuconv[test])")
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", ".whl"))
    wheel_dir = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheel_dir), str(src)], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stdout + build.stderr
    # setuptools warns of what it will stop building (the license as a TOML table: not
    # after 2027-02-18)
    assert "deprecated" not in (build.stdout + build.stderr).lower(), build.stdout + build.stderr
    (wheel,) = wheel_dir.glob("gpuconv-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    metadata = zipfile.ZipFile(wheel).read("gpuconv-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata.splitlines(), metadata
    assert "Requires-Dist: numpy>=1.23" in metadata.splitlines(), metadata
    sources = sorted(p.name for p in (ROOT / "kernels_cuda").iterdir() if p.suffix in (".cu", ".cuh"))
    for name in sources:
        assert f"gpuconv/kernels_cuda/{name}" in names, names
    assert "gpuconv/py.typed" in names  # type hints are part of the API

    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
         str(site), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr
    probe = ("import gpuconv, gpuconv.kernels as k, numpy as np; "
             "print(gpuconv.__file__); print(k.kernel_dir()); "
             "print(len(k.kernel_source('conv_direct.cu'))); print(gpuconv.__version__); "
             "print(gpuconv.conv(np.ones((1, 1, 3)), np.ones((1, 1, 2)), device='cpu').tolist())")
    env = dict(os.environ, PYTHONPATH=str(site))
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    module_file, kdir, length, version, result = run.stdout.split("\n")[:5]
    assert Path(module_file).is_relative_to(site)
    assert Path(kdir) == site / "gpuconv" / "kernels_cuda"
    assert int(length) > 1000
    assert version == "0.1.0"
    assert result == "[[[2.0, 2.0]]]"
