"""The Python part of a GPU call's host time, measured without a GPU (issue #5's <= 20 us goal).

Runs ``gpuconv.conv2d`` on a small layer (1x8x16x16, 8 3x3 filters, bias) through the CUDA code
path (gpuconv.cuda._forward: algorithm choice, argument checks, the kernel's record) on NumPy
arrays, with a launcher that does nothing. What this leaves out is CuPy's share: allocating the
output, its array methods and the launch itself; ``python -m gpuconv.bench --device cuda
--overhead`` measures the whole call on a GPU, with a profile of where it goes.

    PYTHONPATH=$PWD python benchmarks/host_overhead.py [--profile] [--dtype float16]
"""
from __future__ import annotations

import argparse
import json
import timeit
import types

import numpy as np

import gpuconv
import gpuconv.forward
from gpuconv import cuda
from gpuconv.bench import profile_us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="store_true", help="also say where the time goes")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--dtype", default="float32",
                    help="float32 (auto: a GEMM tile) or float16 (auto: gemm_tc_cl, with the "
                         "channels-last copy of x and the filters' reordering)")
    args = ap.parse_args()

    backend = types.SimpleNamespace(
        conv_forward=lambda *a: cuda._forward(np, lambda *launch: None, 132, *a))  # H100 SMs
    gpuconv.forward.run = lambda device, primary, arrays, compute: compute(np, backend, *arrays)
    x = np.ones((1, 8, 16, 16), args.dtype)
    w = np.ones((8, 8, 3, 3), args.dtype)
    b = np.ones(8, args.dtype)

    def call() -> None:
        gpuconv.conv2d(x, w, b, padding=1)

    per_call = min(timeit.repeat(call, number=args.calls, repeat=5)) / args.calls * 1e6
    result = {"dtype": args.dtype, "python_us_per_call": round(per_call, 2)}
    if args.profile:
        result["profile_us"] = profile_us(call, calls=2000)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
