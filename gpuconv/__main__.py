"""``python -m gpuconv`` (or ``gpuconv``): the cross-device example, and the subcommands
``info``, ``check``, ``demo`` and ``bench``.

The main job convolves built-in examples on every device available here and compares them: the
classic 5x5 image with the 3x3 'X' kernel, then a random batch through a small filter bank.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, List, Optional, Sequence, TextIO

import numpy as np

from . import conv2d, info
from .device import cuda_status

IMAGE = np.array([[1, 1, 1, 0, 0],
                  [0, 1, 1, 1, 0],
                  [0, 0, 1, 1, 1],
                  [0, 0, 1, 1, 0],
                  [0, 1, 1, 0, 0]], dtype=np.float32)
X_KERNEL = np.array([[1, 0, 1],
                     [0, 1, 0],
                     [1, 0, 1]], dtype=np.float32)


def _devices() -> List[str]:
    return ["cpu"] + (["cuda"] if cuda_status().available else [])


def _median_ms(fn: Callable[[], Any], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def _gpu_call(x: Any, w: Any, b: Any, **kw: Any) -> Any:
    """Run on CuPy arrays already on the GPU and wait for the result, for honest timing."""
    import cupy
    out = conv2d(x, w, b, device="cuda", **kw)
    cupy.cuda.get_current_stream().synchronize()
    return out


def main_job(out: Optional[TextIO] = None) -> int:
    out = sys.stdout if out is None else out
    p = lambda *a: print(*a, file=out)  # noqa: E731
    devices = _devices()
    p("gpuconv main job: devices available here:", ", ".join(devices))
    if "cuda" not in devices:
        p(f"  (no GPU: {cuda_status().reason})")

    p("\n1) One 5x5 image (1 channel) correlated with one 3x3 kernel (1 filter of 1 kernel):")
    p(IMAGE.astype(int))
    p("kernel:")
    p(X_KERNEL.astype(int))
    results = {d: conv2d(IMAGE[None, None], X_KERNEL[None, None], device=d)[0, 0]
               for d in devices}
    for d, r in results.items():
        p(f"result on {d}: shape {r.shape}")
        p(r.astype(int) if np.all(r == np.round(r)) else r)

    rng = np.random.default_rng(0)
    N, C_in, H, W, C_out = 8, 3, 128, 128, 16
    x = rng.standard_normal((N, C_in, H, W)).astype(np.float32)
    filters = (rng.standard_normal((C_out, C_in, 3, 3)) / np.sqrt(C_in * 9)).astype(np.float32)
    bias = rng.standard_normal(C_out).astype(np.float32) * 0.1
    kw: dict = dict(padding="same", activation="relu")
    p(f"\n2) A batch of {N} images with {C_in} channels of {H}x{W}, through {C_out} filters of "
      f"{C_in} kernels (3x3) each, bias, relu, padding='same':")
    p(f"   x {x.shape} * filters {filters.shape} -> ({N}, {C_out}, {H}, {W})")
    exact = conv2d(x.astype(np.float64), filters.astype(np.float64), bias.astype(np.float64),
                   device="cpu", **kw)
    rows = []
    outs = {}
    for d in devices:
        if d == "cuda":
            import cupy
            xg, wg, bg = cupy.asarray(x), cupy.asarray(filters), cupy.asarray(bias)
            outs[d] = cupy.asnumpy(_gpu_call(xg, wg, bg, **kw))  # also compiles the kernel
            ms = _median_ms(lambda: _gpu_call(xg, wg, bg, **kw))
        else:
            outs[d] = conv2d(x, filters, bias, device=d, **kw)
            ms = _median_ms(lambda: conv2d(x, filters, bias, device=d, **kw))
        gflops = 2 * N * C_out * H * W * C_in * 9 / (ms * 1e-3) / 1e9
        rows.append((d, outs[d].shape, ms, gflops, float(np.max(np.abs(outs[d] - exact)))))
    p(f"   {'device':<6} {'result shape':<18} {'median ms':>10} {'GFLOP/s':>9} "
      f"{'max |diff| vs float64':>22}")
    for d, shape, ms, gf, err in rows:
        p(f"   {d:<6} {str(shape):<18} {ms:>10.2f} {gf:>9.1f} {err:>22.2e}")
    ok = all(np.array_equal(r, np.array([[4, 3, 4], [2, 4, 3], [2, 3, 4]])) for r in
             results.values())
    if len(devices) > 1:
        diff = float(np.max(np.abs(outs["cuda"] - outs["cpu"])))
        p(f"   max |cuda - cpu| = {diff:.2e}")
    worst = max(r[-1] for r in rows)
    ok = ok and worst < 1e-4
    p("\nall devices agree" if ok else "\nMISMATCH between devices or against float64")
    return 0 if ok else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gpuconv", description="N-D multi-channel convolution on NVIDIA GPUs (CuPy, no "
                                    "cuDNN) with a NumPy fallback. With no command: run the "
                                    "built-in example on every available device.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="versions, GPUs, and where device='auto' runs")
    check = sub.add_parser("check", help="self-test: every device here against float64 and "
                                         "each other, on random configurations")
    check.add_argument("--cases", type=int, default=200)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--algorithms", choices=("auto", "all"), default="auto",
                       help="auto: each device's own choice; all: also force every algorithm "
                            "that can run a case (every kernel of this GPU), one row each")
    sub.add_parser("demo", help="a figure of kernels and filters at work on a picture "
                                "(gpuconv demo --help)", add_help=False)
    sub.add_parser("bench", help="the benchmark harness (gpuconv bench --help)", add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after it belongs to the harness
        from .bench import main as bench_main
        return bench_main(argv[1:])
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main
        return demo_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info())
        return 0
    if args.command == "check":
        from .selfcheck import run_check
        return run_check(args.cases, args.seed, algorithms=args.algorithms)
    return main_job()


if __name__ == "__main__":
    sys.exit(main())
