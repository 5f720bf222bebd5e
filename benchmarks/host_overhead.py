"""The Python part of a GPU call's host time, measured without a GPU (issue #5's <= 20 us goal).

Runs ``gpuconv.conv2d`` on a small layer (1x8x16x16, 8 3x3 filters, bias) through the CUDA code
path on NumPy arrays with a launcher that does nothing. By default from gpuconv.cuda._forward
on (algorithm choice, argument checks, the kernel's record); with ``--cupy-path`` the whole
call as it runs on CuPy arrays (dispatch, device resolution, the output's allocation, the
launcher with its argument packing) against a stand-in for CuPy whose arrays are NumPy arrays
and whose kernels do nothing. What either leaves out is CuPy's own share: allocating GPU memory,
its array methods and the launch itself; ``python -m gpuconv.bench --device cuda --overhead``
measures the whole call on a GPU, with a profile of where it goes.

    PYTHONPATH=$PWD python benchmarks/host_overhead.py [--profile] [--dtype float16] [--cupy-path]
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
    ap.add_argument("--cupy-path", action="store_true",
                    help="the whole call on stand-in CuPy arrays (dispatch and launcher too)")
    args = ap.parse_args()

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
    result = {"dtype": args.dtype, "path": "cupy" if args.cupy_path else "cuda._forward",
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


class _Memory:
    """What gpuconv reads of a CuPy array's memory pointer."""
    __slots__ = ("ptr", "device_id")

    def __init__(self, ptr: int) -> None:
        self.ptr, self.device_id = ptr, 0


class _StandInArray(np.ndarray):
    """A NumPy array that gpuconv takes for a cupy.ndarray on GPU 0 (its type's module is
    "cupy"; ``data`` holds the pointer and device, computed once an array)."""
    __module__ = "cupy"

    @property
    def data(self) -> _Memory:  # type: ignore[override]
        memory = self.__dict__.get("_memory")
        if memory is None:
            memory = self.__dict__["_memory"] = _Memory(self.ctypes.data)
        return memory

    @property
    def device(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(id=0)


def _stand_in_cupy(a: np.ndarray) -> np.ndarray:
    """``a`` as a stand-in CuPy array, after installing the stand-in CuPy module: NumPy's array
    functions returning stand-in arrays, device 0 current, every kernel a no-op."""
    import sys
    from gpuconv import kernels
    if "cupy" not in sys.modules or not hasattr(sys.modules["cupy"], "_stand_in"):
        fake = types.ModuleType("cupy")
        fake._stand_in = True  # type: ignore[attr-defined]
        fake.ndarray = _StandInArray  # type: ignore[attr-defined]
        for name in ("empty", "zeros", "array", "asarray", "ascontiguousarray"):
            setattr(fake, name, lambda *a, _f=getattr(np, name), **k: _f(*a, **k).view(
                _StandInArray))
        fake.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
            runtime=types.SimpleNamespace(getDevice=lambda: 0),
            Device=lambda i=0: types.SimpleNamespace(
                attributes={"MultiProcessorCount": 132}, compute_capability="90"))
        sys.modules["cupy"] = fake
        kernels.get_function = lambda *a: _launch  # type: ignore[assignment]
    return a.view(_StandInArray)


if __name__ == "__main__":
    main()
