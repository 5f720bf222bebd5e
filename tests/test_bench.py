"""The benchmark harness runs and writes its record (timings are never asserted)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

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
