"""The Python part of a GPU call's host time, measured without a GPU (issue #5's <= 20 us goal).

Runs ``gpuconv.conv2d`` on a small layer (1x8x16x16, 8 3x3 filters, bias) through the CUDA code
path on NumPy arrays with a launcher that does nothing. By default from gpuconv.cuda._forward
on (algorithm choice, argument checks, the kernel's record); with ``--cupy-path`` the whole
call as it runs on CuPy arrays against a stand-in for CuPy (stand_in_cupy.py) whose arrays are
NumPy arrays and whose kernels do nothing: the calls repeat one another, so all but the first
replay the first one's launches (gpuconv.repeat); ``--full-path`` runs every call as one that
is not replayed (its key looked up, then dispatch, device resolution, checks, planning, the
output's allocation, the launcher with its argument packing). What either leaves out is
CuPy's own share: allocating GPU memory, its array methods and the launch itself; ``python -m
gpuconv.bench --device cuda --overhead`` measures the whole call on a GPU, with a profile of
where it goes.

    PYTHONPATH=$PWD python benchmarks/host_overhead.py [--profile] [--dtype float16] \
        [--cupy-path [--full-path]]
"""
from __future__ import annotations

import argparse
import json
import timeit
import types

import numpy as np

import gpuconv
import gpuconv.forward
import gpuconv.repeat
from gpuconv import cuda
from gpuconv.bench import profile_us

import stand_in_cupy  # beside this script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="store_true", help="also say where the time goes")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--dtype", default="float32",
                    help="float32 (auto: a GEMM tile) or float16 (auto: gemm_tc_cl, with the "
                         "channels-last copy of x and the filters' reordering)")
    ap.add_argument("--cupy-path", action="store_true",
                    help="the whole call on stand-in CuPy arrays (dispatch and launcher too)")
    ap.add_argument("--full-path", action="store_true",
                    help="with --cupy-path: every call as one that is not replayed runs")
    args = ap.parse_args()
    if args.full_path:
        gpuconv.repeat.lookup = lambda key: None  # type: ignore[assignment]

    x = np.ones((1, 8, 16, 16), args.dtype)
    w = np.ones((8, 8, 3, 3), args.dtype)
    b = np.ones(8, args.dtype)
    if args.cupy_path:
        x, w, b = (_stand_in_cupy(a) for a in (x, w, b))
    else:
        backend = types.SimpleNamespace(
            conv_forward=lambda *a: cuda._forward(np, lambda *launch: None, 132, *a))  # H100
        gpuconv.forward.run = lambda device, primary, arrays, compute: compute(np, backend,
                                                                               *arrays)

    def call() -> None:
        gpuconv.conv2d(x, w, b, padding=1)

    per_call = min(timeit.repeat(call, number=args.calls, repeat=5)) / args.calls * 1e6
    path = ("cupy, full path" if args.full_path else "cupy") if args.cupy_path else \
        "cuda._forward"
    result = {"dtype": args.dtype, "path": path,
              "python_us_per_call": round(per_call, 2)}
    if args.cupy_path:  # the kernels a call launched: the call took the GPU's route
        _LAUNCHES.clear()
        call()
        result["launches_per_call"] = len(_LAUNCHES)
    if args.profile:
        result["profile_us"] = profile_us(call, calls=2000)
    print(json.dumps(result, indent=1))


#: the stand-in kernels' launches: (grid, block) of each
_LAUNCHES: list = []


def _launch(grid: tuple, block: tuple, args: tuple) -> None:
    _LAUNCHES.append((grid, block))


def _stand_in_cupy(a: np.ndarray) -> np.ndarray:
    """``a`` as a stand-in CuPy array (stand_in_cupy.py), after installing the stand-in for
    this process: every kernel is _launch."""
    import sys
    from gpuconv import kernels
    if not isinstance(sys.modules.get("cupy"), types.ModuleType) or \
            sys.modules["cupy"].ndarray is not stand_in_cupy.StandInArray:
        sys.modules["cupy"] = stand_in_cupy.module()
        kernels.get_function = lambda *a: _launch  # type: ignore[assignment]
    return stand_in_cupy.view(a)


if __name__ == "__main__":
    main()
