"""The main job and `info` from the command line, as a new user runs them."""
from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*args):
    return subprocess.run([sys.executable, "-m", "gpuconv", *args], capture_output=True,
                          text=True, timeout=300)


def test_main_job_runs_and_shows_the_worked_example():
    run = _run()
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "devices available here: cpu" in out
    assert "[[4 3 4]\n [2 4 3]\n [2 3 4]]" in out
    assert "(8, 16, 128, 128)" in out and "median ms" in out
    assert "all devices agree" in out


def test_info_command():
    run = _run("info")
    assert run.returncode == 0, run.stderr
    assert "gpuconv" in run.stdout and "device='auto'" in run.stdout


def test_bench_subcommand_hands_over_its_arguments():
    run = _run("bench", "--help")
    assert run.returncode == 0, run.stderr
    assert "--shapes" in run.stdout and "--peers" in run.stdout


def test_check_passes_here():
    run = _run("check", "--cases", "60", "--seed", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all checks passed" in run.stdout and "cpu" in run.stdout


def test_check_fails_on_wrong_results(monkeypatch, capsys):
    """The self-test can fail: corrupt every non-float64 result slightly."""
    import numpy as np
    import gpuconv.selfcheck as sc
    real_conv = sc.conv

    def wrong(x, *a, **kw):
        y = real_conv(x, *a, **kw)
        return y if y.dtype in (np.float64, np.complex128) else y * (1 + 1e-2)

    monkeypatch.setattr(sc, "conv", wrong)
    assert sc.run_check(20, seed=1, progress=False) == 1
    assert "FAILED" in capsys.readouterr().out


def test_demo_subcommand(tmp_path):
    import pytest
    pytest.importorskip("matplotlib")
    run = _run("demo", "--out", str(tmp_path / "demo.png"), "--device", "cpu")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 filters of 3 kernels (3x3) each" in run.stdout
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_info_names_dtypes_and_autotune(monkeypatch, tmp_path):
    import gpuconv
    monkeypatch.delenv("GPUCONV_AUTOTUNE", raising=False)
    got = gpuconv.info()
    assert got.dtypes[:5] == ("float16", "float32", "float64", "complex64", "complex128")
    assert got.autotune == "off" and "autotune" in str(got) and "dtypes" in str(got)
    monkeypatch.setenv("GPUCONV_AUTOTUNE", "1")
    monkeypatch.setenv("GPUCONV_AUTOTUNE_CACHE", str(tmp_path / "a.json"))
    assert gpuconv.info().autotune == f"on, choices kept in {tmp_path / 'a.json'}"
    monkeypatch.setenv("GPUCONV_AUTOTUNE", "perhaps")
    assert gpuconv.info().autotune.startswith("error (GPUCONV_AUTOTUNE must be")


def test_info_says_whose_convolutions_sigpy_runs(monkeypatch):
    """sigpy's version from its metadata (not imported), and whether gpuconv.sigpy_conv is
    installed into it."""
    from importlib import metadata
    import gpuconv
    import gpuconv.sigpy_conv

    def version(name, real=metadata.version):
        if name != "sigpy":
            return real(name)
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", version)
    assert gpuconv.info().sigpy == "not installed" and "sigpy" in str(gpuconv.info())
    monkeypatch.setattr(metadata, "version", lambda name: "0.1.27")
    assert gpuconv.info().sigpy.startswith("0.1.27; its convolutions are its own")
    assert "gpuconv.sigpy_conv.install()" in gpuconv.info().sigpy
    monkeypatch.setattr(gpuconv.sigpy_conv, "installed", lambda: ("convolve",))
    assert gpuconv.info().sigpy.startswith("0.1.27; its convolutions run on gpuconv")


@pytest.mark.parametrize("version, expected", [
    (None, "not loadable (CuPy cannot compile the kernels)"),
    ((12, 0), "12.0 ('gemm_wgmma' needs 12.9 or later; every other kernel builds)"),
    ((12, 9), "12.9"), ((13, 2), "13.2")])
def test_info_names_cupys_nvrtc_and_what_an_old_one_leaves_out(version, expected, monkeypatch):
    from gpuconv import kernels
    from gpuconv.info import _nvrtc_line
    monkeypatch.setattr(kernels, "cupy_nvrtc_version", lambda: version)
    assert _nvrtc_line(True) == expected
    assert _nvrtc_line(False) == "-"


def test_info_names_the_cpu_threads(monkeypatch):
    import gpuconv
    monkeypatch.delenv("GPUCONV_CPU_THREADS", raising=False)
    got = gpuconv.info()
    assert got.cpu_threads == str(gpuconv.get_cpu_threads()) and "CPU threads" in str(got)
    with gpuconv.cpu_threads(3):
        assert gpuconv.info().cpu_threads == "3"
    monkeypatch.setenv("GPUCONV_CPU_THREADS", "lots")
    assert gpuconv.info().cpu_threads.startswith("error (GPUCONV_CPU_THREADS must be")


def test_check_of_every_algorithm(capsys):
    """--algorithms all: a row per concrete CPU algorithm, every one run on the cases it can
    take (filters of 8 or 16 kernels among them), all within the bound."""
    import gpuconv.selfcheck as sc
    assert sc.run_check(60, seed=3, progress=False, algorithms="all") == 0
    text = capsys.readouterr().out
    rows = {line.split()[1]: int(line.split()[2]) for line in text.splitlines()
            if line.startswith("cpu ") and not line.split()[1].isdigit()}
    assert set(rows) == {"gemm", "gemm_shifted", "pointwise", "depthwise"}
    assert rows["gemm"] == 60 and min(rows.values()) > 0


def test_check_of_every_algorithm_names_the_wrong_one(monkeypatch, capsys):
    """One algorithm made slightly wrong (gemm_shifted, by 1e-2 relative, below float64: the
    float64 runs are the check's yardstick): its forced row fails and names it; the other
    forced rows pass."""
    import numpy as np
    import gpuconv.cpu
    import gpuconv.selfcheck as sc
    real = gpuconv.cpu._gemm_shifted_forward

    def wrong(x_cf, w, bias, geom, activation, out_cf, ct):
        real(x_cf, w, bias, geom, activation, out_cf, ct)
        if out_cf.dtype not in (np.float64, np.complex128):
            out_cf *= np.asarray(1 + 1e-2, dtype=out_cf.dtype)
    monkeypatch.setattr(gpuconv.cpu, "_gemm_shifted_forward", wrong)
    assert sc.run_check(40, seed=3, progress=False, algorithms="all") == 1
    failures = [line.strip() for line in capsys.readouterr().out.splitlines()
                if line.startswith("  ")]
    assert failures and any(f.startswith("cpu gemm_shifted: case") for f in failures)
    assert not any(f.split(":")[0] in ("cpu gemm", "cpu pointwise", "cpu depthwise")
                   for f in failures)
