"""Every CUDA kernel the package can request compiles with NVRTC, on any machine.

Uses the NVRTC wheels (cuda-bindings + nvidia-cuda-nvrtc from the test extra), which need no GPU
or driver; every kernel template also compiles with the oldest NVRTC gpuconv supports (CUDA
12.0's, the nvidia-cuda-nvrtc-cu12 wheel the test extra pins, loaded through ctypes). In CI (CI
set) a missing NVRTC is a failure, never a skip.
"""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np
import pytest

from gpuconv import kernels
import nvrtc_library

ARCHS = ("sm_80", "sm_90")  # the oldest architecture the package supports, and Hopper


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
        nvrtc.nvrtcVersion()
        return nvrtc
    except Exception as exc:  # ImportError, or the library not found
        if os.environ.get("CI"):
            pytest.fail(f"NVRTC is required in CI (install gpuconv[test]): {exc}")
        pytest.skip(f"NVRTC wheels not installed (pip install gpuconv[test]): {exc}")


def compile_with_nvrtc(source: str, filename: str, names, options, arch):
    """(success, log, {name expression: lowered name})."""
    nvrtc = _nvrtc()
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), filename.encode(), 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    try:
        for n in names:
            (err,) = nvrtc.nvrtcAddNameExpression(prog, n.encode())
            assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
        opts = [o.encode() for o in options] + [f"--gpu-architecture={arch}".encode()]
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        lowered = {}
        if result == nvrtc.nvrtcResult.NVRTC_SUCCESS:
            for n in names:
                err, low = nvrtc.nvrtcGetLoweredName(prog, n.encode())
                assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, n
                lowered[n] = low.decode()
            _, cubin_size = nvrtc.nvrtcGetCUBINSize(prog)
            assert cubin_size > 0
        return result == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace"), lowered
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


REQUESTS = kernels.every_module_request()


def test_requests_cover_every_dtype_and_activation():
    names = {n for _, ns, _ in REQUESTS for n in ns}
    for ctype in kernels.CTYPES.values():
        assert any(f"<{ctype}," in n for n in names), ctype
    for act in kernels.ACTIVATIONS.values():
        assert any(act in n for n in names), act


def _arch_specific(request_) -> bool:
    """Whether a module's code differs by architecture: inline PTX that needs sm_80 (the
    tensor-core file's mma.sync, ldmatrix and cp.async; the 16-bit conversions every file
    uses for float16 and bfloat16). The others are the same C++ for every target, so they are
    compiled for one (sm_90) and CI spends its minutes elsewhere."""
    filename, names, _ = request_
    return filename == "conv_gemm_tc.cu" or any("gc_half" in n or "gc_bfloat16" in n
                                                for n in names)


#: The newest architecture the installed NVRTC knows (sm_120 and up: Blackwell's GPUs run the
#: tensor-core file's inline PTX, mma.sync, ldmatrix and cp.async, too; only
#: conv_gemm_wgmma.cu is Hopper's alone), resolved when the test runs.
NEWEST = "newest"


def _newest_arch() -> str:
    _, archs = _nvrtc().nvrtcGetSupportedArchs()
    assert max(archs) >= 120, archs  # NVRTC 12.8 and later (what gpuconv[test] installs)
    return f"sm_{max(archs)}"


def _targets(request_):
    """The architectures a module is compiled for here: an ARCH_SPECIFIC one for its own
    devices' (as CuPy would on them: its -arch=sm_XX after the module's own option), the
    others for ARCHS (those of _arch_specific) or sm_90; the tensor-core file for NEWEST
    too."""
    filename = request_[0]
    if filename in kernels.ARCH_SPECIFIC:
        capability = kernels.ARCH_SPECIFIC[filename][0]
        return [f"sm_{capability}"]
    newest = [NEWEST] if filename == "conv_gemm_tc.cu" else []
    return [a for a in ARCHS if a == "sm_90" or _arch_specific(request_)] + newest


@pytest.mark.parametrize("request_, arch",
                         [(r, a) for r in REQUESTS for a in _targets(r)],
                         ids=lambda v: v if isinstance(v, str) else f"{v[0]}-{v[1][0]}")
def test_every_kernel_compiles(request_, arch):
    filename, names, options = request_
    if arch == NEWEST:
        arch = _newest_arch()
    ok, log, lowered = compile_with_nvrtc(kernels.kernel_source(filename), filename, names,
                                          options, arch)
    assert ok, log
    assert set(lowered) == set(names)
    assert "warning" not in log.lower(), log


def test_sources_carry_line_directives_and_inline_headers():
    src = kernels.kernel_source("conv_direct.cu")
    kdir = kernels.kernel_dir()
    assert src.startswith(f'#line 1 "{kdir / "conv_direct.cu"}"')
    assert f'#line 1 "{kdir / "gpuconv_types.cuh"}"' in src
    assert "#include \"gpuconv_types.cuh\"" not in src


def test_compile_errors_name_the_file_and_line(tmp_path: Path):
    (tmp_path / "helper.cuh").write_text("#pragma once\n\n__device__ int f() { return undefined_name; }\n")
    (tmp_path / "broken.cu").write_text('// a kernel\n#include "helper.cuh"\n'
                                        "__global__ void k(int* a) { a[0] = f() + nope; }\n")
    src = "\n".join(kernels._expand(tmp_path / "broken.cu", set())) + "\n"
    ok, log, _ = compile_with_nvrtc(src, "broken.cu", [], kernels.COMPILE_OPTIONS, "sm_80")
    assert not ok
    assert f"{tmp_path / 'helper.cuh'}(3)" in log, log
    assert f"{tmp_path / 'broken.cu'}(3)" in log, log


def test_wgmma_module_needs_its_own_target():
    """conv_gemm_wgmma.cu's wgmma exists only on sm_90a: for sm_90 alone (what CuPy asks for on
    an H100) NVRTC refuses it, so the module's own -arch=sm_90a (kernels.ARCH_SPECIFIC) is what
    builds it, as test_every_kernel_compiles does with CuPy's option after it."""
    filename = "conv_gemm_wgmma.cu"
    names = kernels.module_names(filename, np.float16)
    assert names and kernels.module_options(filename)[-1] == "-arch=sm_90a"
    ok, log, _ = compile_with_nvrtc(kernels.kernel_source(filename), filename, names,
                                    kernels.COMPILE_OPTIONS, "sm_90")
    assert not ok and "wgmma" in log and "sm_90" in log
    assert kernels.module_names(filename, np.float32) == ()


#: The wheel holding the oldest NVRTC gpuconv supports (kernels.OLDEST_NVRTC; the test extra
#: pins its version).
OLDEST_NVRTC_WHEEL = "nvidia-cuda-nvrtc-cu12"


def _oldest_nvrtc() -> Path:
    """The library of the oldest supported NVRTC, from its wheel; a failure in CI where it is
    missing or of another version, else a skip."""
    def unavailable(why: str):
        if os.environ.get("CI"):
            pytest.fail(f"the oldest NVRTC is required in CI (install gpuconv[test]): {why}")
        pytest.skip(f"the oldest NVRTC is not installed (pip install gpuconv[test]): {why}")

    try:
        files = importlib.metadata.files(OLDEST_NVRTC_WHEEL) or []
    except importlib.metadata.PackageNotFoundError as exc:
        unavailable(f"no {exc}")
    found = [f for f in files if f.name.startswith(("libnvrtc.so", "nvrtc64_"))]
    if not found:
        unavailable(f"{OLDEST_NVRTC_WHEEL} holds no NVRTC library")
    library = Path(str(found[0].locate()))
    version = nvrtc_library.version(library)
    if version != kernels.OLDEST_NVRTC:
        unavailable(f"{library} is NVRTC {version}, not {kernels.OLDEST_NVRTC}")
    return library


def _templates(names):
    """One name expression of each kernel template among ``names`` (their other names differ
    only in template arguments such as the activation or the kernel size)."""
    return list({n.split("<")[0]: n for n in reversed(names)}.values())


@pytest.mark.parametrize("request_", [r for r in REQUESTS if r[0] not in kernels.ARCH_SPECIFIC],
                         ids=lambda r: f"{r[0]}-{r[1][0]}")
def test_every_kernel_template_compiles_with_the_oldest_nvrtc(request_):
    """What gpuconv compiles through CuPy 13 on CUDA 12.0 (and later): each kernel template of
    each dtype, for sm_80 (the oldest target; the tensor-core PTX and 16-bit conversions need
    it). test_every_kernel_compiles compiles every instantiation with the newest NVRTC; front
    ends differ (NVRTC 12.0-13.1 took a generic lambda in device code for a host function).
    Plain CUDA, as there: without the --device-as-default-execution-space CuPy adds."""
    filename, names, options = request_
    chosen = _templates(names)
    ok, log, lowered = nvrtc_library.compile_with_library(
        _oldest_nvrtc(), kernels.kernel_source(filename), filename, chosen,
        list(options) + ["--gpu-architecture=sm_80"])
    assert ok, log
    assert set(lowered) == set(chosen)
    assert "warning" not in log.lower(), log


def test_arch_specific_modules_build_through_cupy_from_the_nvrtc_gpuconv_names():
    """CuPy appends its own -arch=sm_90 to an ARCH_SPECIFIC module's -arch=sm_90a: the newest
    NVRTC builds that, the oldest refuses it, as kernels.ARCH_SPECIFIC_MIN_NVRTC (with which
    algorithms.why_not refuses gemm_wgmma) says; the module's code itself compiles with the
    oldest too when its target is the only one."""
    filename = "conv_gemm_wgmma.cu"
    names = kernels.module_names(filename, np.float16)
    source = kernels.kernel_source(filename)
    cupy_options = list(kernels.module_options(filename)) + ["-arch=sm_90"]
    oldest = _oldest_nvrtc()
    newest = tuple(_nvrtc().nvrtcVersion()[1:])
    compilers = [
        (kernels.OLDEST_NVRTC, lambda opts: nvrtc_library.compile_with_library(
            oldest, source, filename, names, opts)),
        (newest, lambda opts: compile_with_nvrtc(source, filename, names, opts[:-1],
                                                 opts[-1].split("=")[1]))]
    for version, compile_ in compilers:
        ok, log, _ = compile_(cupy_options)
        assert ok == (version >= kernels.ARCH_SPECIFIC_MIN_NVRTC), (version, log)
        if not ok:
            assert "defined more than once" in log, log
    assert kernels.OLDEST_NVRTC < kernels.ARCH_SPECIFIC_MIN_NVRTC <= newest
    ok, log, lowered = nvrtc_library.compile_with_library(
        oldest, source, filename, _templates(names),
        list(kernels.COMPILE_OPTIONS) + ["-arch=sm_90a"])
    assert ok and len(lowered) == 1, log
