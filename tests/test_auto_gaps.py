"""benchmarks/auto_gaps.py on hand-made bench rows: the fastest forced algorithm of each row,
the gaps it marks, and the geomeans it reports."""
from __future__ import annotations

import json

import pytest

from conftest import load_script


def _row(layer, dtype, auto, auto_ms, forced, torch_ms, depthwise=False):
    contenders = {"gpuconv": {"median_ms": auto_ms}, "torch": {"median_ms": torch_ms}}
    contenders.update({f"gpuconv:{a}": {"median_ms": ms} for a, ms in forced.items()})
    return {"layer": layer, "op": "forward", "dtype": dtype, "algorithm": auto,
            "depthwise": depthwise, "contenders": contenders}


ROWS = [
    # auto took gemm (its 128x64 tiles), im2col was twice as fast: a gap
    _row("a", "float32", "gemm_128x64", 1.0, {"gemm": 0.98, "im2col": 0.5}, 0.4),
    # auto took the fastest algorithm, but its own call was slower: not a rule's gap
    _row("dw", "float32", "depthwise", 0.2, {"depthwise": 0.1}, 0.3, depthwise=True),
    # no forced algorithm ran
    _row("c", "float16", "gemm_tc_cl", 0.3, {}, 0.1),
    # auto at the fastest's time
    _row("b", "float32", "im2col", 1.0, {"gemm": 2.0, "im2col": 1.0}, 0.5),
]


def test_the_fastest_forced_algorithm_of_each_row():
    m = load_script("auto_gaps")
    found = m.gaps(ROWS)
    assert [(g["best"], g["best_ms"]) for g in found] == \
        [("im2col", 0.5), ("depthwise", 0.1), (None, None), ("im2col", 1.0)]
    assert [g["peer_ms"] for g in found] == [0.4, 0.3, 0.1, 0.5]


def test_the_summary_geomeans_by_dtype_and_kind():
    m = load_script("auto_gaps")
    s = m.summary(m.gaps(ROWS))
    dense = s["float32 dense"]
    # torch / auto: 0.4 and 0.5; torch / fastest: 0.8 and 0.5
    assert dense["vs_peer_auto"] == pytest.approx(0.2 ** 0.5, rel=1e-12)
    assert dense["vs_peer_best"] == pytest.approx(0.4 ** 0.5, rel=1e-12)
    assert dense["rows"] == 2 and dense["fastest"] == {"im2col": 2}
    dw = s["float32 depthwise"]
    assert dw["vs_peer_auto"] == pytest.approx(1.5) and dw["vs_peer_best"] == pytest.approx(3.0)
    # a row without forced algorithms: auto is its fastest
    assert s["float16 dense"]["vs_peer_best"] == pytest.approx(1 / 3)
    assert s["float16 dense"]["fastest"] == {}


def test_the_report_marks_rule_gaps_apart_from_auto_s_own_cost():
    m = load_script("auto_gaps")
    lines = m.report(m.gaps(ROWS), margin=0.05).splitlines()
    by_layer = {line.split()[0]: line for line in lines[2:6]}
    assert by_layer["a"].endswith("<<") and " 2.00 " in by_layer["a"]
    assert by_layer["dw"].endswith(" ~")
    assert not by_layer["c"].endswith(("<<", "~")) and not by_layer["b"].endswith(("<<", "~"))
    assert any(line.startswith("float32 dense: torch/auto geomean 0.447") for line in lines)


@pytest.mark.parametrize("wrap", [lambda r: r, lambda r: {"rows": r}, lambda r: {"bench": r}])
def test_bench_files_and_records_are_read(tmp_path, capsys, wrap):
    m = load_script("auto_gaps")
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(wrap(ROWS)))
    assert len(m.load_rows(path)) == 4
    assert m.main([str(path)]) == 0
    assert "im2col" in capsys.readouterr().out


def test_a_file_without_rows_is_an_error(tmp_path, capsys):
    m = load_script("auto_gaps")
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"summary": {}}))
    assert m.main([str(path), str(tmp_path / "missing.json")]) == 1
    assert "no rows" in capsys.readouterr().err
    path.write_text("3")
    with pytest.raises(ValueError, match="no bench rows"):
        m.load_rows(path)
