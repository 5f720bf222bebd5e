"""benchmarks/gpu_record.py's parts that run without a GPU: merging the records of several
device calls, and refusing to write a record when no GPU is usable."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_record.py"


def _module():
    return load_script("gpu_record")


def test_records_of_one_commit_merge_phase_by_phase():
    merge = _module().merge
    first = {"commit": "abc", "device": "H100", "date": "d1",
             "tests": {"passed": 5, "failed": 0, "skipped": 1},
             "sanitizer": {"memcheck": {"errors": 0}}}
    second = {"commit": "abc", "device": "H100", "date": "d2",
              "sanitizer": {"racecheck": {"errors": 2}, "memcheck": {"errors": 1}}}
    merged = merge(first, second)
    assert merged["tests"] == first["tests"] and merged["date"] == "d2"
    assert merged["sanitizer"] == {"memcheck": {"errors": 1}, "racecheck": {"errors": 2}}
    assert first["sanitizer"] == {"memcheck": {"errors": 0}}  # the earlier record is kept as is
    with pytest.raises(ValueError, match="records of different runs do not merge"):
        merge(first, dict(second, commit="def"))


def test_bench_rows_split_over_calls_add_up():
    """A bench split over calls (--bench-args "--dtype float16" after a float32 one) keeps the
    rows of both, a row run again replaces the old one, and the summary is computed from all."""
    merge = _module().merge

    def row(layer, dtype, ratio):
        return {"layer": layer, "dtype": dtype, "depthwise": False, "ratio": {"torch": ratio},
                "peak_temp_mib": 1.0}
    first = {"commit": "abc", "device": "H100", "bench": [row("a", "float32", 2.0)],
             "summary": {"float32_vs_cudnn": 2.0, "host_overhead_us": {"gpuconv": 30.0}}}
    second = {"commit": "abc", "device": "H100",
              "bench": [row("a", "float16", 0.5), row("b", "float32", 8.0)],
              "summary": {"float16_vs_cudnn": 0.5}}
    merged = merge(first, second)
    assert [(r["layer"], r["dtype"]) for r in merged["bench"]] == [
        ("a", "float32"), ("a", "float16"), ("b", "float32")]
    assert merged["summary"]["float32_vs_cudnn"] == pytest.approx(4.0)  # geomean of 2 and 8
    assert merged["summary"]["float16_vs_cudnn"] == pytest.approx(0.5)
    assert merged["summary"]["host_overhead_us"] == {"gpuconv": 30.0}
    again = merge(merged, {"commit": "abc", "device": "H100", "bench": [row("b", "float32", 2.0)],
                           "summary": {}})
    assert len(again["bench"]) == 3
    assert again["summary"]["float32_vs_cudnn"] == pytest.approx(2.0)


def test_a_merge_of_two_dtypes_keeps_no_single_dtype_dense_key_and_every_overhead():
    """dense_vs_<peer> is one dtype's key (a bench of one dtype): once rows of two dtypes merge
    it is dropped, not left holding the last phase's dtype; each phase's host overhead is
    kept in host_overhead_runs_us."""
    merge = _module().merge

    def row(layer, dtype, ratio):
        return {"layer": layer, "dtype": dtype, "depthwise": False, "ratio": {"torch": ratio},
                "peak_temp_mib": 1.0}
    first = {"commit": "abc", "device": "H100", "bench": [row("a", "float32", 2.0)],
             "summary": {"float32_vs_cudnn": 2.0, "dense_vs_cudnn": 2.0,
                         "host_overhead_us": {"gpuconv": 30.0}}}
    second = {"commit": "abc", "device": "H100", "bench": [row("a", "float16", 0.5)],
              "summary": {"float16_vs_cudnn": 0.5, "dense_vs_cudnn": 0.5,
                          "host_overhead_us": {"gpuconv": 50.0}}}
    merged = merge(first, second)
    assert "dense_vs_cudnn" not in merged["summary"]
    assert merged["summary"]["float16_vs_cudnn"] == pytest.approx(0.5)
    assert merged["summary"]["host_overhead_runs_us"] == [30.0, 50.0]
    third = dict(second, bench=[row("a", "bfloat16", 0.25)],
                 summary={"host_overhead_us": {"gpuconv": 40.0}})
    assert merge(merged, third)["summary"]["host_overhead_runs_us"] == [30.0, 50.0, 40.0]


def test_each_sanitizer_tool_summary_is_counted():
    """memcheck/initcheck/synccheck print ERROR SUMMARY lines, racecheck a RACECHECK SUMMARY
    of hazards (its errors counted): the form a clean H100 run printed in session 16."""
    errors = _module().sanitizer_errors
    assert errors("========= ERROR SUMMARY: 0 errors\n") == ["0"]
    assert errors("========= ERROR SUMMARY: 3 errors\nx\n========= ERROR SUMMARY: 1 error") == [
        "3", "1"]
    assert errors("========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
                  ) == ["0"]
    assert errors("========= RACECHECK SUMMARY: 5 hazards displayed (2 errors, 3 warnings)"
                  ) == ["2"]
    assert errors("274 passed in 452.70s") == []


def test_without_a_gpu_no_record_is_written(tmp_path):
    env_code = ("import sys, runpy; sys.modules['cupy'] = None; "
                f"sys.argv = ['gpu_record.py', '--commit', 'abc', '--out', {str(tmp_path)!r}]; "
                f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", env_code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2, run.stderr
    assert "no GPU usable" in run.stderr and not list(tmp_path.glob("*.json"))
    bad = subprocess.run([sys.executable, str(SCRIPT), "--commit", "abc", "--tools", "memchek"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown ['memchek']" in bad.stderr


def _alive(pid):
    """Whether process ``pid`` still runs (a zombie waiting for its reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_stopped_phase_takes_its_child_processes_with_it(tmp_path):
    # as pytest-xdist's workers: the command starts a child that outlives a kill of the command
    # alone (session 8's stopped suites left theirs running on the GPU into the next phases)
    pid_file = tmp_path / "child.pid"
    child = "import time; time.sleep(60)"
    parent = (f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', "
              f"{child!r}], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
              f"open({str(pid_file)!r}, 'w').write(str(c.pid)); print('started', flush=True); "
              f"time.sleep(60)")
    started = time.monotonic()
    log, timed_out, status = _module()._run([sys.executable, "-c", parent], time_limit=3)
    assert time.monotonic() - started < 30
    assert timed_out and status is None
    assert "started" in log and "[stopped after 3 s]" in log
    assert not _alive(int(pid_file.read_text()))


def test_a_phase_within_its_time_limit_keeps_its_output_and_status():
    log, timed_out, status = _module()._run(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); "
                               "sys.exit(3)"], time_limit=60)
    assert (timed_out, status) == (False, 3)
    assert "out" in log and "err" in log


def test_the_processes_on_the_gpu_are_listed_or_none():
    module = _module()
    listing = [sys.executable, "-c", "print('123, python'); print(''); print(' 456, pytest ')"]
    assert module.gpu_processes(listing) == ["123, python", "456, pytest"]
    assert module.gpu_processes([sys.executable, "-c", "import sys; sys.exit(9)"]) is None
    assert module.gpu_processes(["/nonexistent/nvidia-smi"]) is None
