"""The benchmark harness runs and writes its record (timings are never asserted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

LAYERS = {"about": "test", "cpu": [
    {"name": "tiny_3x3", "N": 1, "C_in": 3, "spatial": [12, 12], "C_out": 4, "kernel": [3, 3],
     "stride": 1, "padding": 1, "dilation": 1, "groups": 1, "output_spatial": [12, 12]},
    {"name": "tiny_dw", "N": 2, "C_in": 4, "spatial": [9, 9], "C_out": 4, "kernel": [3, 3],
     "stride": 2, "padding": 1, "dilation": 1, "groups": 4, "output_spatial": [5, 5]},
], "gpu": []}


def test_bench_cpu_writes_a_record(tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps(LAYERS))
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "gpuconv.bench", "--shapes", str(shapes),
                          "--repeat", "2", "--warmup", "1", "--peers", "scipy,torch",
                          "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "tiny_3x3" in run.stdout and "max_peak_temp_mib" in run.stdout
    rec = json.loads(out.read_text())
    assert rec["device"] == "cpu" and rec["cpu_count"] >= 1 and rec["cpu_model"]
    assert [r["layer"] for r in rec["bench"]] == ["tiny_3x3", "tiny_dw"]
    assert rec["bench"][1]["depthwise"] and not rec["bench"][0]["depthwise"]
    for row in rec["bench"]:
        g = row["contenders"]["gpuconv"]
        assert g["min_ms"] <= g["median_ms"] <= g["max_ms"]
        assert row["peak_temp_mib"] is not None
        for name, c in row["contenders"].items():
            if name != "gpuconv":  # every peer computed the same convolution
                assert c["max_rel_diff_vs_gpuconv"] < 1e-4, (name, c)
        # every peer asked for was either run or reported skipped with its reason
        assert set(row["contenders"]) | set(row["skipped"]) == {"gpuconv", "scipy", "torch"}
        assert all(row["skipped"].values())
    assert np.isclose(rec["bench"][0]["gflop"], 2 * 4 * 144 * 27 / 1e9)


def test_bench_rejects_unknown_layer(tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps(LAYERS))
    run = subprocess.run([sys.executable, "-m", "gpuconv.bench", "--shapes", str(shapes),
                          "--only", "nope"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "unknown layer" in run.stderr


def test_bench_several_dtypes_and_algorithms(tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps(LAYERS))
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "gpuconv.bench", "--shapes", str(shapes),
                          "--repeat", "2", "--warmup", "0", "--peers", "",
                          "--dtype", "float32,float64", "--algorithms", "auto,gemm,depthwise",
                          "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rec = json.loads(out.read_text())
    rows = {(r["layer"], r["dtype"]): r for r in rec["bench"]}
    assert set(rows) == {(l, d) for l in ("tiny_3x3", "tiny_dw") for d in ("float32", "float64")}
    # what "auto" ran, and the forced algorithms timed beside it where they apply
    assert rows["tiny_3x3", "float32"]["algorithm"] == "gemm"  # under 0.45 M multiply-adds
    assert rows["tiny_dw", "float64"]["algorithm"] == "depthwise"
    assert set(rows["tiny_dw", "float32"]["contenders"]) == {"gpuconv", "gpuconv:gemm",
                                                             "gpuconv:depthwise"}
    assert "needs one kernel per filter" in rows["tiny_3x3", "float32"]["skipped"][
        "gpuconv:depthwise"]
    # per-dtype summary keys; with no peers they are absent, the memory figure is there
    assert rec["summary"]["max_peak_temp_mib"] is not None
    assert rec["algorithms"] == ["auto", "gemm", "depthwise"]
    # the minimum traffic of tiny_3x3 in float64: x, filters and y once
    assert np.isclose(rows["tiny_3x3", "float64"]["min_mib"] * 2**20,
                      8 * (3 * 144 + 4 * 3 * 9 + 4 * 144))


def test_bench_times_the_adjoints(tmp_path):
    """--op: the two adjoints against PyTorch's backward-data and backward-filter (where
    PyTorch is installed), the SciPy peer skipped with its reason, rows and summary keys
    carrying the op; a bad --op is refused."""
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps(LAYERS))
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "gpuconv.bench", "--shapes", str(shapes),
                          "--repeat", "2", "--warmup", "0", "--peers", "scipy,torch",
                          "--op", "input_grad,filter_grad", "--algorithms", "auto,gemm",
                          "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rec = json.loads(out.read_text())
    assert rec["ops"] == ["input_grad", "filter_grad"]
    assert [(r["op"], r["layer"]) for r in rec["bench"]] == [
        (op, layer) for op in ("input_grad", "filter_grad") for layer in ("tiny_3x3", "tiny_dw")]
    for row in rec["bench"]:
        assert row["algorithm"] == "adjoint"
        assert "forward conv only" in row["skipped"]["scipy"]
        assert "no algorithm choice" in row["skipped"]["gpuconv:gemm"]
        if "torch" in row["contenders"]:  # it computed the same gradient
            assert row["contenders"]["torch"]["max_rel_diff_vs_gpuconv"] < 1e-4
            assert f"{row['op']}_float32_vs_torch" in rec["summary"]
    assert not any(k.endswith("_vs_scipy") for k in rec["summary"])
    bad = subprocess.run([sys.executable, "-m", "gpuconv.bench", "--shapes", str(shapes),
                          "--op", "backward"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--op must name some of" in bad.stderr


def test_bench_gpu_options_need_cuda(tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps(LAYERS))
    run = subprocess.run([sys.executable, "-m", "gpuconv.bench", "--shapes", str(shapes),
                          "--measure-peak"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "need --device cuda" in run.stderr
    run = subprocess.run([sys.executable, "-m", "gpuconv.bench", "--shapes", str(shapes),
                          "--algorithms", "fastest"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "algorithm must be one of" in run.stderr


@pytest.mark.parametrize("path", [[], ["--cupy-path"], ["--cupy-path", "--full-path"]])
def test_host_overhead_script_runs_the_cuda_path_without_a_gpu(path):
    """benchmarks/host_overhead.py, every way: from gpuconv.cuda._forward on, and the whole call
    on stand-in CuPy arrays (dispatch, device resolution, launcher), replayed or not; a run of
    the stand-in path whose call took any other route (the CPU's, say) would not reach the
    launcher it counts."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / "benchmarks" / "host_overhead.py"),
                          "--calls", "50", "--profile"] + path,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert run.returncode == 0, run.stderr
    rec = json.loads(run.stdout)
    assert rec["python_us_per_call"] > 0 and rec["profile_us"]
    assert rec["path"] == {0: "cuda._forward", 1: "cupy", 2: "cupy, full path"}[len(path)]
    if path:  # one kernel (the implicit GEMM's tile), launched through gpuconv's launcher
        assert rec["launches_per_call"] == 1


def test_summary_and_peak_arithmetic():
    from gpuconv.bench import of_peak, summarize
    rows = [{"dtype": "float32", "depthwise": False, "ratio": {"torch": 2.0}, "peak_temp_mib": 1},
            {"dtype": "float32", "depthwise": False, "ratio": {"torch": 0.5}, "peak_temp_mib": 3},
            {"dtype": "float16", "depthwise": False, "ratio": {"torch": 4.0}, "peak_temp_mib": 1},
            {"dtype": "float32", "depthwise": True, "ratio": {"torch": 1.5}, "peak_temp_mib": 2},
            {"dtype": "float16", "depthwise": True, "ratio": {"torch": 9.0}, "peak_temp_mib": 2}]
    s = summarize(rows, ["torch"], "cuda")
    assert np.isclose(s["float32_vs_cudnn"], 1.0) and np.isclose(s["float16_vs_cudnn"], 4.0)
    assert np.isclose(s["depthwise_vs_cudnn"], 1.5) and s["max_peak_temp_mib"] == 3
    assert "dense_vs_cudnn" not in s  # two dtypes: no single dense figure
    adjoint = [dict(r, op="input_grad", ratio={"torch": 0.5}) for r in rows[:2]]
    s = summarize(rows + adjoint, ["torch"], "cuda")
    assert np.isclose(s["float32_vs_cudnn"], 1.0)  # the forward rows alone
    assert np.isclose(s["input_grad_float32_vs_cudnn"], 0.5)
    assert np.isclose(s["input_grad_dense_vs_cudnn"], 0.5)
    # 1 TFLOP in 100 ms against a 20 TFLOP/s peak: 50 ms floor, 50 % of it; 1 GB at 1000 GB/s
    r = of_peak(10**12, 10**9, 100.0, "float32", {"float32_tflops": 20.0, "bandwidth_gbs": 1000})
    assert np.isclose(r["tflops"], 10.0) and np.isclose(r["pct_of_compute_peak"], 50.0)
    assert np.isclose(r["pct_of_bandwidth"], 1.0) and r["bound"] == "compute"
    assert np.isclose(r["floor_ms"], 50.0)


def test_profile_names_where_host_time_goes():
    from gpuconv.bench import profile_us

    def inner():
        return sorted(range(2000), key=lambda v: -v)

    shares = profile_us(lambda: inner(), calls=20, top=5)
    assert len(shares) == 5 and all(v >= 0 for v in shares.values())
    assert any("inner" in where for where in shares), shares
    assert list(shares.values()) == sorted(shares.values(), reverse=True)


GPU_LAYERS = {"cpu": [], "gpu": [
    {"name": "tiny_3x3", "N": 2, "C_in": 16, "spatial": [20, 20], "C_out": 32, "kernel": [3, 3],
     "stride": 1, "padding": 1, "dilation": 1, "groups": 1},
    {"name": "tiny_dw", "N": 2, "C_in": 8, "spatial": [20, 20], "C_out": 8, "kernel": [3, 3],
     "stride": 1, "padding": 1, "dilation": 1, "groups": 8},
]}


@pytest.mark.gpu
def test_bench_cuda_record(tmp_path, gpu):
    """On a GPU: CUDA-event timings, the measured peaks, each row's share of its floor, the
    host overhead, and every algorithm beside auto."""
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps(GPU_LAYERS))
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "gpuconv.bench", "--shapes", str(shapes),
                          "--device", "cuda", "--repeat", "3", "--warmup", "1",
                          "--peers", "torch", "--dtype", "float32,float16",
                          "--algorithms", "auto,gemm,depthwise", "--measure-peak",
                          "--overhead", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rec = json.loads(out.read_text())
    peak = rec["peak"]
    assert 1 < peak["float32_tflops"] < 500 and 10 < peak["bandwidth_gbs"] < 20000
    assert peak["float16_tflops"] > peak["float32_tflops"]
    for row in rec["bench"]:
        assert row["tflops"] > 0 and row["floor_ms"] > 0
        assert row["bound"] in ("compute", "memory")
        for name, c in row["contenders"].items():
            if name != "gpuconv" and c["max_rel_diff_vs_gpuconv"] is not None:
                assert c["max_rel_diff_vs_gpuconv"] < 1e-2, (row["layer"], name, c)
    assert rec["summary"]["host_overhead_us"]["gpuconv"] > 0
    steps = rec["summary"]["host_overhead_us"]["cupy_steps"]
    assert steps["launch_0_gpuconv"] > 0 and steps["cupy_empty"] > 0
    assert rec["timing"] == "CUDA events around each call"


def test_bench_autotune_names_the_tuned_choice(tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps(LAYERS))
    out, cache = tmp_path / "bench.json", tmp_path / "autotune.json"
    env = dict(__import__("os").environ, GPUCONV_AUTOTUNE_CACHE=str(cache))
    run = subprocess.run([sys.executable, "-m", "gpuconv.bench", "--shapes", str(shapes),
                          "--repeat", "1", "--warmup", "1", "--peers", "", "--autotune",
                          "--only", "tiny_dw", "--json", str(out)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    rec = json.loads(out.read_text())
    assert rec["autotune"] is True
    (choice,) = json.loads(cache.read_text()).values()
    assert choice in ("gemm", "depthwise")  # the two CPU algorithms for a depthwise layer
    assert rec["bench"][0]["algorithm"] == choice


def test_bench_bfloat16_rows(tmp_path):
    pytest.importorskip("ml_dtypes")
    try:
        import scipy  # noqa: F401  (a peer of the bench extra, not of the tests)
        peers = "scipy"
    except ImportError:
        peers = ""
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps(LAYERS))
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "gpuconv.bench", "--shapes", str(shapes),
                          "--repeat", "1", "--warmup", "0", "--peers", peers,
                          "--dtype", "bfloat16", "--json", str(out)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rec = json.loads(out.read_text())
    assert [r["dtype"] for r in rec["bench"]] == ["bfloat16", "bfloat16"]
    for row in rec["bench"]:  # SciPy (on float32 copies) agrees to bfloat16's digits
        assert row["contenders"]["gpuconv"]["median_ms"] > 0
        if peers:
            assert row["contenders"]["scipy"]["max_rel_diff_vs_gpuconv"] < 2 ** -6


def test_bench_with_defines_adds_macros_to_the_kernels_options(tmp_path):
    """benchmarks/bench_with_defines.py: the macros before '--' join NVRTC's options before
    any kernel is compiled, the rest is the bench's command line, and the record says which
    options its kernels were compiled with."""
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps(LAYERS))
    out = tmp_path / "bench.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_with_defines.py"
    run = subprocess.run([sys.executable, str(script), "GC_CP_ASYNC_CA", "GC_X=2", "--",
                          "--shapes", str(shapes), "--only", "tiny_3x3", "--repeat", "1",
                          "--warmup", "0", "--peers", "", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    options = json.loads(out.read_text())["compile_options"]
    assert options[-2:] == ["-DGC_CP_ASYNC_CA", "-DGC_X=2"] and "-std=c++17" in options
    for bad in (["GC_A"], ["--", "--device", "cpu"], ["-DGC_A", "--"]):
        run = subprocess.run([sys.executable, str(script), *bad], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode != 0 and "bench_with_defines.py" in run.stderr
