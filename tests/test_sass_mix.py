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
