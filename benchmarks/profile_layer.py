"""One layer of the benchmark suite, run a few times on the GPU, for a profiler to attach to.

Nsight Compute profiles one launch of a kernel; this script makes the launches to pick from:
a named layer of ``shapes.json`` (the "gpu" set unless told), one dtype, one algorithm, some
warm-up calls (compiling the kernels, cuBLAS's heuristics, CuPy's memory pool), which
``--launch-skip`` skips, then ``--calls`` calls, each timed by CUDA events as the benchmark
times it. It prints the launches of gpuconv's own kernels a call makes (file, kernel, grid;
cuBLAS's products are not among them), which say what to pass as ``--kernel-name``.

    python3 benchmarks/profile_layer.py --layer r50_res4_3x3 --algorithm gemm --dtype float32
    ncu --clock-control none --set full --kernel-name regex:conv_gemm --launch-skip 3 \\
        --launch-count 1 -o $OUT/res4_gemm \\
        python3 benchmarks/profile_layer.py --layer r50_res4_3x3 --algorithm gemm --warmup 3
    ncu --import $OUT/res4_gemm.ncu-rep --page details --csv > $OUT/res4_gemm.csv

Profiling from the working tree: run it with ``PYTHONPATH=$PWD`` on the device machine.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv=None) -> int:
    from gpuconv import bench, cuda
    from gpuconv.dtypes import result_dtype
    from gpuconv.geometry import plan_conv

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", required=True, help="a layer name of shapes.json")
    ap.add_argument("--set", default="gpu", help="the shapes.json set (default: gpu)")
    ap.add_argument("--shapes", default=None, help="shapes.json (default: the shared one)")
    ap.add_argument("--algorithm", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--warmup", type=int, default=3, help="calls before the timed ones")
    ap.add_argument("--calls", type=int, default=3, help="timed calls")
    args = ap.parse_args(argv)

    import cupy
    shapes = json.loads(bench.find_shapes(args.shapes).read_text())
    layers = {layer["name"]: layer for layer in shapes[args.set]}
    if args.layer not in layers:
        ap.error(f"no layer {args.layer!r} in the {args.set!r} set; it has {sorted(layers)}")
    layer = layers[args.layer]
    dtype = result_dtype(args.dtype)
    _, x, w = bench._layer_arrays(layer, args.dtype, np.random.default_rng(0))
    call, _ = bench.gpuconv_contender(layer, x, w, "cuda", args.algorithm)

    geom = plan_conv(x.shape, w.shape, **bench._kw(layer))
    launches = []
    probe_x = cupy.asarray(x.astype(dtype))
    probe_w = cupy.asarray(w.astype(dtype))
    out = cupy.empty(geom.out_shape(), dtype=dtype)
    cuda._forward(cupy, lambda *launch: launches.append(launch[:2] + launch[3:4]),
                  cuda._gpu_sms(), probe_x, probe_w, None, geom, None, out, args.algorithm)
    print(json.dumps({"layer": args.layer, "dtype": args.dtype,
                      "algorithm": bench.concrete_algorithm(layer, args.dtype, "cuda",
                                                            args.algorithm),
                      "launches": [[f, n, repr(work)] for f, n, work in launches]}, indent=1))
    del probe_x, probe_w, out

    for _ in range(args.warmup):
        call()
    cupy.cuda.Device().synchronize()
    for i in range(args.calls):
        print(f"call {i}: {bench._time_call_ms(call, 'cuda'):.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
