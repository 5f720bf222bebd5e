"""The instruction mix of each kernel's main loop, from its SASS, without a GPU.

Compiles kernels with NVRTC to a CUBIN for one architecture (sm_90 by default), disassembles it
with nvdisasm, finds the loops (backward branches) and counts their instructions by opcode.
The ratio of the useful instruction (FFMA for the FP32 GEMM, HMMA for the tensor-core ones) to
everything else in the main loop bounds what a kernel can reach: an SM sub-partition issues one
instruction a cycle, so a loop that is half FFMA cannot pass half of the FP32 peak, and an
mma.m16n8k16 leaves room for about 3 other instructions beside it at the tensor cores' rate.

Needs the ``cuda-bindings``, ``nvidia-cuda-nvrtc`` and ``nvidia-cuda-nvdisasm`` wheels (no GPU,
no driver)::

    python benchmarks/sass_mix.py 'conv_gemm<float, GC_ACT_NONE, 128, 128'
    python benchmarks/sass_mix.py 'conv_gemm_tc_cl<gc_half' --arch sm_80 --sass out.sass

The pattern is a regular expression over the kernels' name expressions
(``gpuconv.kernels.every_module_request``); every match is reported.
"""
from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuconv import kernels  # noqa: E402

_INSTRUCTION = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*);")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")


def nvdisasm() -> str:
    """The nvdisasm binary of the nvidia-cuda-nvdisasm wheel."""
    import nvidia
    for root in nvidia.__path__:
        for found in Path(root).glob("**/bin/nvdisasm"):
            return str(found)
    raise SystemExit("nvdisasm not found: pip install nvidia-cuda-nvdisasm")


def cubin(filename: str, names: List[str], options: Tuple[str, ...], arch: str
          ) -> Tuple[bytes, Dict[str, str], str]:
    """The CUBIN of ``names`` from ``filename``, each name's mangled (lowered) name, and
    ptxas's verbose log (registers, spills: :func:`resources`)."""
    from cuda.bindings import nvrtc
    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    err, prog = nvrtc.nvrtcCreateProgram(kernels.kernel_source(filename).encode(),
                                         filename.encode(), 0, [], [])
    assert err == ok
    try:
        for n in names:
            assert nvrtc.nvrtcAddNameExpression(prog, n.encode())[0] == ok
        opts = [o.encode() for o in options] + [f"--gpu-architecture={arch}".encode(),
                                                b"--ptxas-options=-v"]
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        if result != ok:
            raise SystemExit(log.decode(errors="replace"))
        lowered = {n: nvrtc.nvrtcGetLoweredName(prog, n.encode())[1].decode() for n in names}
        _, size = nvrtc.nvrtcGetCUBINSize(prog)
        data = b" " * size
        nvrtc.nvrtcGetCUBIN(prog, data)
        return data, lowered, log.decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def resources(log: str) -> Dict[str, Dict[str, int]]:
    """Per function (mangled name), from ptxas's verbose log: registers a thread, and bytes
    of spill stores and loads."""
    out: Dict[str, Dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["spill_stores"], current["spill_loads"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
    return out


def functions(sass: str) -> Dict[str, List[str]]:
    """The disassembly's lines, per function (mangled name)."""
    out: Dict[str, List[str]] = {}
    current = None
    for line in sass.splitlines():
        m = re.match(r"\s*\.text\.(\S+):", line)
        if m:
            current = m.group(1)
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def loops(lines: List[str]) -> List[Tuple[int, int, collections.Counter]]:
    """(first address, last address, opcode counts) of each loop: the instructions from a
    backward branch's target to the branch."""
    program, labels, pending = [], {}, []
    for line in lines:
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTRUCTION.match(line)
        if m:
            address = int(m.group(1), 16)
            labels.update((p, address) for p in pending)
            pending = []
            program.append((address, m.group(2), m.group(3)))
    found = []
    for address, op, rest in program:
        target = re.search(r"(\.L_x_\d+)", rest) if op.startswith("BRA") else None
        if target and labels.get(target.group(1), address + 1) < address:
            first = labels[target.group(1)]
            body = collections.Counter(o for a, o, _ in program if first <= a <= address)
            found.append((first, address, body))
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pattern", help="regular expression over kernel name expressions")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--sass", help="also write the whole disassembly here")
    ap.add_argument("--min", type=int, default=40, help="report loops of at least this many "
                    "instructions (default 40: skips the small carry loops)")
    args = ap.parse_args(argv)
    tool = nvdisasm()
    matched = False
    for filename, names, options in kernels.every_module_request():
        chosen = [n for n in names if re.search(args.pattern, n)]
        if not chosen:
            continue
        matched = True
        data, lowered, log = cubin(filename, chosen, options, args.arch)
        used = resources(log)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "k.cubin"
            path.write_bytes(data)
            sass = subprocess.run([tool, str(path)], capture_output=True, text=True,
                                  check=True).stdout
        if args.sass:
            Path(args.sass).write_text(sass)
        per_function = functions(sass)
        for name in chosen:
            r = used.get(lowered[name], {})
            print(f"{name}  [{args.arch}]  {r.get('registers', '?')} registers, spills "
                  f"{r.get('spill_stores', '?')}/{r.get('spill_loads', '?')} bytes stored/loaded")
            for first, last, body in loops(per_function.get(lowered[name], [])):
                total = sum(body.values())
                if total < args.min:
                    continue
                grouped = collections.Counter()
                for op, n in body.items():
                    grouped[op.split(".")[0]] += n
                useful = grouped["FFMA"] + grouped["DFMA"] + grouped["HMMA"] + grouped["HGMMA"]
                mix = ", ".join(f"{op} {n}" for op, n in grouped.most_common(12))
                print(f"  loop {first:#x}-{last:#x}: {total} instructions, "
                      f"{useful / total:.0%} FFMA/DFMA/HMMA/HGMMA: {mix}")
        # a name pattern can match in several modules (one per dtype): report them all
    if not matched:
        print(f"no kernel name matches {args.pattern!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
