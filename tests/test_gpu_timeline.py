"""benchmarks/gpu_timeline.py without a GPU: the reading of a profiler trace (which device work
belongs to which call, and the figures of a call) on a trace written here in the format
torch.profiler exports, and the whole script on the CPU (ranges, no kernels) where PyTorch is
installed."""
from __future__ import annotations

import json

import pytest

from conftest import load_script


def _module():
    return load_script("gpu_timeline")


def _range(label, i, ts, dur):
    return {"ph": "X", "cat": "user_annotation", "name": f"gpuconv-timeline:{label}#{i}",
            "ts": ts, "dur": dur}


def _work(name, ts, dur, cat="kernel"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


TRACE = [
    {"ph": "M", "name": "process_name", "ts": 0},
    _range("a:float32:auto", 0, 1000.0, 100.0),
    _range("a:float32:auto", 1, 2000.0, 100.0),
    _range("a:float32:torch", 0, 3000.0, 50.0),
    # call 0 of auto: a memset, then two kernels with 5 us idle between them
    _work("memset", 1010.0, 2.0, "gpu_memset"),
    _work("gemm", 1012.0, 40.0), _work("epilogue", 1057.0, 10.0),
    # call 1 of auto: the same kernels, the first later, no idle time
    _work("memset", 1030.0 + 1000.0, 2.0, "gpu_memset"),
    _work("gemm", 1032.0 + 1000.0, 50.0), _work("epilogue", 1082.0 + 1000.0, 10.0),
    # the peer's call: one kernel; and host events and device work outside every range
    _work("cudnn", 3004.0, 30.0),
    {"ph": "X", "cat": "cpu_op", "name": "aten::conv2d", "ts": 3001.0, "dur": 40.0},
    _work("stray", 2500.0, 3.0),
    {"ph": "X", "cat": "gpu_user_annotation", "name": "gpuconv-timeline:a:float32:auto#0",
     "ts": 1010.0, "dur": 57.0},
]


def test_device_work_belongs_to_the_range_it_starts_in():
    calls = _module().calls_of_trace(TRACE)
    assert set(calls) == {"a:float32:auto", "a:float32:torch"}
    first, second = calls["a:float32:auto"]
    assert [w[0] for w in first["device"]] == ["memset", "gemm", "epilogue"]
    assert first["device"][0][1:] == (10.0, 2.0)  # start from the range's start, duration
    assert [w[0] for w in second["device"]] == ["memset", "gemm", "epilogue"]
    assert [w[0] for w in calls["a:float32:torch"][0]["device"]] == ["cudnn"]


def test_a_call_is_summed_by_the_union_of_its_work():
    m = _module()
    s = m.call_summary(m.calls_of_trace(TRACE)["a:float32:auto"][0])
    assert s["count"] == 3 and s["first_us"] == 10.0
    assert s["span_us"] == pytest.approx(57.0)  # 1010 .. 1067
    assert s["busy_us"] == pytest.approx(52.0) and s["idle_us"] == pytest.approx(5.0)
    overlapping = {"device": [("k", 0.0, 10.0), ("k", 5.0, 10.0), ("j", 20.0, 5.0)]}
    s = m.call_summary(overlapping)
    assert s["busy_us"] == pytest.approx(20.0) and s["idle_us"] == pytest.approx(5.0)
    assert m.call_summary({"device": []})["first_us"] is None


def test_contenders_report_medians_and_their_work_by_name():
    m = _module()
    summary = m.contender_summary(m.calls_of_trace(TRACE)["a:float32:auto"])
    assert summary["calls"] == 2 and summary["count"] == 3
    assert summary["first_us"] == pytest.approx(20.0)  # median of 10 and 30
    assert list(summary["by_name_us"]) == ["gemm", "epilogue", "memset"]
    assert summary["by_name_us"]["gemm"] == pytest.approx(45.0)


def test_row_specs_name_a_layer_and_dtype_with_an_optional_algorithm():
    m = _module()
    assert m.parse_rows(["l:float16:pointwise", "l:float32"]) == [
        ("l", "float16", "pointwise"), ("l", "float32", "auto")]
    for bad in ("l", "l::auto", "l:float32:auto:x"):
        with pytest.raises(ValueError, match="--rows"):
            m.parse_rows([bad])


def test_the_script_runs_on_the_cpu_with_ranges_and_no_kernels(tmp_path, capsys):
    pytest.importorskip("torch")
    shapes = tmp_path / "shapes.json"
    layer = {"name": "tiny", "N": 2, "C_in": 3, "spatial": [12, 12], "C_out": 4,
             "kernel": [3, 3], "stride": 1, "padding": 1, "dilation": 1, "groups": 1}
    shapes.write_text(json.dumps({"cpu": [layer]}))
    out = tmp_path / "t.json"
    assert _module().main(["--device", "cpu", "--shapes", str(shapes), "--rows",
                           "tiny:float32:gemm,tiny:float32", "--calls", "2", "--profiled", "3",
                           "--warmup", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["contender"]) for r in rows] == ["gemm", "torch", "auto"]  # one peer a layer
    for r in rows:
        assert r["calls"] == 3 and r["count"] == 0 and r["event_ms"] > 0
    assert "tiny" in capsys.readouterr().out
