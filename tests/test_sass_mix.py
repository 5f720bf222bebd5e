"""benchmarks/sass_mix.py's parsing of nvdisasm output (the disassembler itself is a wheel the
test suite does not install): loops are found from backward branches and counted by opcode."""
from __future__ import annotations

from conftest import load_script

# the shape of nvdisasm's output for one function: a loop of 5 instructions (0x20-0x60) whose
# backward branch is predicated, and a forward branch that is no loop
SASS = """\
        .text._Z1kv:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/              @P0 BRA `(.L_x_1) ;
.L_x_0:
        /*0020*/                   FFMA R2, R3, R4, R2 ;
        /*0030*/                   FFMA R5, R3, R4, R5 ;
        /*0040*/                   LDS.128 R8, [R9] ;
        /*0050*/                   ISETP.NE.AND P1, PT, R6, RZ, PT ;
        /*0060*/              @P1 BRA `(.L_x_0) ;
.L_x_1:
        /*0070*/                   EXIT ;
        .text._Z1jv:
        /*0000*/                   EXIT ;
"""


def test_loops_are_found_per_function_and_counted_by_opcode():
    mix = load_script("sass_mix")
    per_function = mix.functions(SASS)
    assert set(per_function) == {"_Z1kv", "_Z1jv"}
    (first, last, body), = mix.loops(per_function["_Z1kv"])
    assert (first, last) == (0x20, 0x60)
    assert body == {"FFMA": 2, "LDS.128": 1, "ISETP.NE.AND": 1, "BRA": 1}
    assert mix.loops(per_function["_Z1jv"]) == []


# ptxas -v as NVRTC's program log gives it: properties, then resources, per function
PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'
ptxas info    : Function properties for _Z1kv
    0 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 181 registers, used 1 barriers, 33024 bytes smem, 496 bytes cmem[0]
ptxas info    : Compiling entry function '_Z1jv' for 'sm_90'
ptxas info    : Function properties for _Z1jv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 16 registers, used 0 barriers, 352 bytes cmem[0]
"""


def test_registers_and_spills_are_read_per_function():
    mix = load_script("sass_mix")
    assert mix.resources(PTXAS_LOG) == {
        "_Z1kv": {"registers": 181, "spill_stores": 8, "spill_loads": 12},
        "_Z1jv": {"registers": 16, "spill_stores": 0, "spill_loads": 0},
    }
