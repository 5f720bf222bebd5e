"""benchmarks/cupy_compile.py's verdicts, with a stand-in for CuPy's compiler (the real one needs
CuPy and an NVRTC 12; session 31 ran it with CuPy 13.0.0 and NVRTC 12.0): every module request
goes through compile_using_nvrtc with gpuconv's options and RawModule's -ftz=true, a failure
gpuconv predicts (gemm_wgmma before NVRTC 12.9) is "refused", any other is a FAIL, and so is a
predicted failure that compiled."""
from __future__ import annotations

import sys
import types

import pytest

from conftest import load_script
from gpuconv import kernels


class CompileException(Exception):
    pass


def _fake_cupy(monkeypatch, version, broken=(), refuses=True):
    """A cupy module whose compile_using_nvrtc refuses two -arch options before NVRTC 12.9,
    as NVRTC does (unless not ``refuses``), and fails the files in ``broken``; returns the
    list of its calls."""
    calls = []

    def compile_using_nvrtc(source, options=(), arch=None, filename="kern.cu",
                            name_expressions=None, log_stream=None, cache_in_memory=False,
                            jitify=False):
        assert cache_in_memory and not jitify
        names = name_expressions
        calls.append((filename, options, arch, names))
        cupy_arch = f"-arch=sm_{arch}"
        if refuses and version < (12, 9) and sum(o.startswith("-arch") for o in options + (cupy_arch,)) > 1:
            raise CompileException("nvrtc: error: --gpu-architecture (-arch) defined more than "
                                   "once")
        if filename in broken:
            raise CompileException(f"{filename}(1): error: planted")

    def memoized(arch=None):
        raise AssertionError("the per-device wrapper asks the driver")

    memoized.__wrapped__ = lambda arch=None: (f"-arch=sm_{arch}", "cubin")
    compiler = types.SimpleNamespace(compile_using_nvrtc=compile_using_nvrtc,
                                     _get_arch_for_options_for_nvrtc=memoized)
    cuda = types.SimpleNamespace(compiler=compiler,
                                 nvrtc=types.SimpleNamespace(getVersion=lambda: version))
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "13.0.0"
    cupy.cuda = cuda
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    kernels.cupy_nvrtc_version.cache_clear()
    return calls


@pytest.fixture(autouse=True)
def _fresh_version_cache():
    yield
    kernels.cupy_nvrtc_version.cache_clear()


FILES = "conv_gemm_wgmma.cu,layout.cu"


def _requests(prefix: str):
    """The module requests of FILES whose file starts with ``prefix``."""
    return [r for r in kernels.every_module_request()
            if r[0] in FILES.split(",") and r[0].startswith(prefix)]


@pytest.mark.parametrize("version, wgmma", [((12, 0), "refused"), ((12, 9), "ok")])
def test_predicted_refusals_pass_and_the_rest_compile(version, wgmma, monkeypatch, capsys):
    calls = _fake_cupy(monkeypatch, version)
    assert load_script("cupy_compile").main(["90", "--files", FILES]) == 0
    out = capsys.readouterr().out
    assert f"NVRTC {version}" in out
    rows = [line for line in out.splitlines() if line.startswith(("conv_gemm_wgmma", "layout"))]
    assert len(rows) == len(calls) == len(_requests(""))
    assert all(f": {wgmma}" in r for r in rows if r.startswith("conv_gemm_wgmma"))
    assert all(": ok" in r for r in rows if r.startswith("layout"))
    for filename, options, arch, names in calls:
        assert arch == "90" and options[-1] == "-ftz=true"
        assert options[:-1] == kernels.module_options(filename)
        assert tuple(names) in {kernels.module_names(filename, d) for d in kernels.accepted()}


def test_an_unpredicted_failure_and_a_refusal_that_compiled_count(monkeypatch, capsys):
    _fake_cupy(monkeypatch, (12, 4), broken=("layout.cu",))
    assert load_script("cupy_compile").main(["90", "--files", FILES]) == len(_requests("layout"))
    out = capsys.readouterr().out
    assert out.count("FAIL (layout.cu(1): error: planted)") == len(_requests("layout"))
    assert out.count(": refused (nvrtc: error: --gpu-architecture") == len(_requests("conv_gemm"))

    # gpuconv refuses wgmma before 12.9: a CuPy that built it would show the rule too strict
    _fake_cupy(monkeypatch, (12, 4), refuses=False)
    assert load_script("cupy_compile").main(["90", "--files", FILES]) == \
        len(_requests("conv_gemm"))


def test_arch_specific_modules_are_left_out_for_other_targets(monkeypatch, capsys):
    calls = _fake_cupy(monkeypatch, (13, 5))
    assert load_script("cupy_compile").main(["80", "--files", FILES]) == 0
    assert {c[0] for c in calls} == {"layout.cu"} and all(c[2] == "80" for c in calls)
