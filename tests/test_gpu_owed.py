"""benchmarks/gpu_owed.py without a GPU: its phases name layers, tests, scripts and algorithms
that exist, a phase's process group is stopped at its limit, and a run goes on past a phase
that failed."""
from __future__ import annotations

import json
import os
import sys
import time

from conftest import load_script
from gpuconv import algorithms
from gpuconv.bench import find_shapes


def _module():
    return load_script("gpu_owed")


def _after(cmd, flag):
    """The values after ``flag`` in a command, up to the next flag."""
    i = cmd.index(flag) + 1
    values = []
    while i < len(cmd) and not cmd[i].startswith("--"):
        values.append(cmd[i])
        i += 1
    return values


def test_phases_name_what_exists(tmp_path):
    m = _module()
    table = m.phases(tmp_path)
    assert list(table)[:3] == ["tests", "timeline", "bench_1x1"]
    layers = {layer["name"] for layer in json.loads(find_shapes(None).read_text())["gpu"]}
    names = set(algorithms.ALGORITHMS["cuda"]) | {"auto"}
    for name, (limit, cmd) in table.items():
        assert 0 < limit <= 300, name  # two or three phases fit a 10-minute device call
        for arg in cmd:
            if arg.startswith(("tests/", "benchmarks/")):
                assert (m.ROOT / arg).exists(), arg
        if "--only" in cmd:
            assert set(_after(cmd, "--only")) <= layers, name
        if "--algorithms" in cmd and "check" in cmd:  # gpuconv check: auto or all
            assert _after(cmd, "--algorithms") == ["all"], name
        elif "--algorithms" in cmd:
            assert set(_after(cmd, "--algorithms")[0].split(",")) <= names, name
        if "--json" in cmd:
            assert _after(cmd, "--json") == [str(tmp_path / f"{name}.json")]


def test_a_phase_is_stopped_at_its_limit_with_its_children(tmp_path):
    m = _module()
    child = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    status, seconds = m.run_phase("slow", 2, (sys.executable, "-c", script), tmp_path)
    assert status == 124 and seconds < 30
    pid = int(child.read_text())
    for _ in range(50):  # killed with its group: gone, or a zombie until something reaps it
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid)


def _alive(pid):
    """Whether process ``pid`` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def test_a_run_goes_on_past_a_failed_phase(tmp_path, monkeypatch, capsys):
    m = _module()
    monkeypatch.setattr(m, "phases", lambda out: {
        "bad": (30, (sys.executable, "-c", "raise SystemExit(3)")),
        "good": (30, (sys.executable, "-c", "print('done here')"))})
    assert m.main(["--out", str(tmp_path), "bad", "good"]) == 0
    text = capsys.readouterr().out
    assert "bad: exit 3" in text and "good: exit 0" in text and "done here" in text
    assert m.main(["--out", str(tmp_path), "nope"]) == 2


def test_the_deadline_cuts_a_phase_short_and_skips_the_rest(tmp_path, monkeypatch, capsys):
    m = _module()
    monkeypatch.setattr(m, "MIN_PHASE_SECONDS", 1)
    monkeypatch.setattr(m, "phases", lambda out: {
        "long": (60, (sys.executable, "-c", "import time; time.sleep(60)")),
        "next": (60, (sys.executable, "-c", "print('ran')"))})
    assert m.main(["--out", str(tmp_path), "--deadline", "2", "long", "next"]) == 0
    text = capsys.readouterr().out
    assert "long: exit 124" in text and "(stopped at 1 s)" in text  # 2 s less the start
    assert "next: skipped" in text and "ran" not in text


def test_phases_joined_by_plus_run_side_by_side(tmp_path, monkeypatch, capsys):
    m = _module()

    def waits_for(mine, other):  # writes its file, then waits for the other's: only side by
        # side do both finish before their limit
        return (sys.executable, "-c",
                f"import os, time; open({str(tmp_path / mine)!r}, 'w').close(); "
                f"t = time.time()\n"
                f"while not os.path.exists({str(tmp_path / other)!r}):\n"
                f"    time.sleep(0.05)\n"
                f"    assert time.time() - t < 20\n")
    monkeypatch.setattr(m, "phases", lambda out: {"x": (30, waits_for("x", "y")),
                                                  "y": (30, waits_for("y", "x"))})
    assert m.main(["--out", str(tmp_path), "x+y"]) == 0
    text = capsys.readouterr().out
    assert "x: exit 0" in text and "y: exit 0" in text
    assert m.main(["--out", str(tmp_path), "x+nope"]) == 2


def test_a_bench_phase_prints_auto_s_gaps(tmp_path, monkeypatch, capsys):
    m = _module()
    rows = [{"layer": "l1", "op": "forward", "dtype": "float32", "algorithm": "gemm_128x64",
             "depthwise": False, "contenders": {"gpuconv": {"median_ms": 2.0},
                                                "gpuconv:im2col": {"median_ms": 1.0},
                                                "torch": {"median_ms": 1.5}}}]
    path = tmp_path / "b.json"
    write = f"import json; open({str(path)!r}, 'w').write(json.dumps({rows!r}))"
    monkeypatch.setattr(m, "phases", lambda out: {
        "b": (30, (sys.executable, "-c", write, "-m", "gpuconv.bench", "--json", str(path)))})
    assert m.main(["--out", str(tmp_path), "b"]) == 0
    text = capsys.readouterr().out
    assert "fastest forced" in text and "<<" in text
