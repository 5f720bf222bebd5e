"""The main job and `info` from the command line, as a new user runs them."""
from __future__ import annotations

import subprocess
import sys


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


def test_info_names_the_cpu_threads(monkeypatch):
    import gpuconv
    monkeypatch.delenv("GPUCONV_CPU_THREADS", raising=False)
    got = gpuconv.info()
    assert got.cpu_threads == str(gpuconv.get_cpu_threads()) and "CPU threads" in str(got)
    with gpuconv.cpu_threads(3):
        assert gpuconv.info().cpu_threads == "3"
    monkeypatch.setenv("GPUCONV_CPU_THREADS", "lots")
    assert gpuconv.info().cpu_threads.startswith("error (GPUCONV_CPU_THREADS must be")
