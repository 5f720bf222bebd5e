"""NVRTC's C API from a shared library loaded by ctypes, in a process of its own.

tests/test_kernels.py compiles with the newest NVRTC through cuda-bindings, and with the oldest
gpuconv supports (an older libnvrtc) through this. The older one runs in a child process because
cuda-bindings (cuda.pathfinder) takes whichever libnvrtc its process has already loaded: loaded
beside it, the old library would become cuda-bindings' too.

Run as ``python nvrtc_library.py`` with a JSON request on stdin ({"library": path, and for a
compile "source", "filename", "names", "options"}); prints a JSON answer ({"version": [major,
minor]} and for a compile "ok", "log", "lowered").
"""
from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple


def _check(result: int) -> None:
    if result != 0:
        raise RuntimeError(f"NVRTC error {result}")


def _version(lib) -> Tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)))
    return major.value, minor.value


def _compile(lib, source: str, filename: str, names: Sequence[str], options: Sequence[str]):
    prog = ctypes.c_void_p()
    _check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), filename.encode(), 0,
                                  None, None))
    try:
        for n in names:
            _check(lib.nvrtcAddNameExpression(prog, n.encode()))
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        result = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        _check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)))
        log = ctypes.create_string_buffer(size.value + 1)
        _check(lib.nvrtcGetProgramLog(prog, log))
        lowered: Dict[str, str] = {}
        if result == 0:
            for n in names:
                low = ctypes.c_char_p()
                _check(lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(low)))
                lowered[n] = (low.value or b"").decode()
        return result == 0, log.value.decode(errors="replace"), lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _serve(request: dict) -> dict:
    lib = ctypes.CDLL(request["library"])
    answer: dict = {"version": list(_version(lib))}
    if "source" in request:
        ok, log, lowered = _compile(lib, request["source"], request["filename"],
                                    request["names"], request["options"])
        answer.update(ok=ok, log=log, lowered=lowered)
    return answer


def _ask(request: dict) -> dict:
    done = subprocess.run([sys.executable, __file__], input=json.dumps(request), text=True,
                          capture_output=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"{__file__} failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout)


def version(library: Path) -> Tuple[int, int]:
    """(major, minor) of the NVRTC in ``library``."""
    major, minor = _ask({"library": str(library)})["version"]
    return major, minor


def compile_with_library(library: Path, source: str, filename: str, names: List[str],
                         options: List[str]) -> Tuple[bool, str, Dict[str, str]]:
    """(success, log, {name expression: lowered name}) of compiling ``source`` with the NVRTC in
    ``library`` (options as given: the target included)."""
    answer = _ask({"library": str(library), "source": source, "filename": filename,
                   "names": list(names), "options": list(options)})
    return answer["ok"], answer["log"], answer["lowered"]


if __name__ == "__main__":
    json.dump(_serve(json.load(sys.stdin)), sys.stdout)
