"""Random CPU calls of gpuconv against PyTorch in float64, for as long as asked.

The test suite checks fixed grids and Hypothesis draws against ``tests/reference.py``; this
script throws far more random calls at the CPU path than CI can afford, against an independent
implementation (PyTorch's CPU convolutions and their autograd, in float64/complex128), with
what CI leaves out: every CPU algorithm forced where it applies, tiny and large workspaces
(chunking down to one output row), 1-3 threads, channels-last and strided inputs, padding
modes in the adjoints, and ``conv_transpose`` with ``output_padding``. Each case is checked
elementwise against a bound from the dtype and the number of summed terms (4 n eps |terms|,
8 for complex), and the caller's arrays must come back unmodified.

    python benchmarks/fuzz_vs_torch.py --seconds 300 --seed 1

Prints every failure (call, options, worst error against its bound) and a count; exits 1 if
any case failed. Needs PyTorch (the ``bench`` extra); runs from a checkout with
``PYTHONPATH=$PWD`` or an installed gpuconv.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np


def _pad_pairs(pad: List[Tuple[int, int]]) -> List[int]:
    """(before, after) per spatial axis as torch.nn.functional.pad's flat list (last axis
    first)."""
    flat: List[int] = []
    for before, after in reversed(pad):
        flat += [before, after]
    return flat


def torch_conv(torch: Any, x: Any, w: Any, b: Any, call: Dict[str, Any]) -> Any:
    """PyTorch's convolution of the call: padding done by ``F.pad`` (any mode, uneven)."""
    F = torch.nn.functional
    conv = (F.conv1d, F.conv2d, F.conv3d)[call["D"] - 1]
    mode = call["padding_mode"]
    x = F.pad(x, _pad_pairs(call["padding"]), mode="constant" if mode == "zeros" else mode)
    return conv(x, w, b, stride=call["stride"], dilation=call["dilation"],
                groups=call["groups"])


def draw_call(rng: np.random.Generator) -> Optional[Dict[str, Any]]:
    """A random layer, or None when the draw has no output."""
    D = int(rng.integers(1, 4))
    big = rng.random() < 0.05  # a few layers large enough for chunks and worker threads
    if rng.random() < 0.25:  # depthwise
        G = C_in = int(rng.integers(1, 9))
    else:
        G = int(rng.choice([1, 1, 2, 3]))
        C_in = G * int(rng.integers(1, 5))
    C_out = G * int(rng.integers(1, 5))
    N = int(rng.integers(1, 3 if big else 4))
    most = ({1: 3000, 2: 90, 3: 24} if big else {1: 40, 2: 14, 3: 7})[D]
    spatial = tuple(int(rng.integers(1, most)) for _ in range(D))
    K = tuple(int(rng.integers(1, 5)) for _ in range(D))
    stride = tuple(int(rng.integers(1, 4)) for _ in range(D))
    dilation = tuple(int(rng.choice([1, 1, 2])) for _ in range(D))
    mode = str(rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"]))
    pad = []
    for n in spatial:
        before, after = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        if rng.random() < 0.5:
            after = before
        limit = {"reflect": n - 1, "circular": n}.get(mode, 3)
        pad.append((min(before, limit), min(after, limit)))
    if any(n + b + a - d * (k - 1) < 1
           for n, (b, a), d, k in zip(spatial, pad, dilation, K)):
        return None
    dtype = np.dtype(rng.choice(["float32", "float64", "float32", "complex64"]))
    return dict(D=D, N=N, C_in=C_in, C_out=C_out, spatial=spatial, K=K, stride=stride,
                dilation=dilation, padding=pad, padding_mode=mode, groups=G, dtype=dtype,
                layout="channels_last" if rng.random() < 0.3 else "channels_first",
                strided=rng.random() < 0.3, bias=rng.random() < 0.5)


def _random(rng: np.random.Generator, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    a = rng.standard_normal(shape)
    if dtype.kind == "c":
        a = a + 1j * rng.standard_normal(shape)
    return a.astype(dtype)


class Fuzz:
    def __init__(self, seed: int) -> None:
        import torch
        import gpuconv
        torch.set_num_threads(1)
        self.torch, self.gc = torch, gpuconv
        self.rng = np.random.default_rng(seed)
        self.cases = self.failures = 0

    def check(self, what: str, call: Dict[str, Any], compute: Callable[[], np.ndarray],
              exact: np.ndarray, magnitude: np.ndarray, terms: int) -> None:
        """One case: ``compute()`` against ``exact`` within the bound of ``terms`` products
        whose absolute sum is ``magnitude``."""
        self.cases += 1
        eps = np.finfo(call["dtype"]).eps
        bound = ((8 if call["dtype"].kind == "c" else 4) * terms * eps * magnitude
                 + 2 * eps * np.abs(exact) + 1e-30)
        try:
            got = compute()
        except Exception as e:  # noqa: BLE001 -- every failure is reported, none stops the run
            self.fail(what, call, repr(e))
            return
        if got.shape != exact.shape:
            self.fail(what, call, f"shape {got.shape}, PyTorch {exact.shape}")
        elif not (np.abs(got - exact) <= bound).all():
            self.fail(what, call, f"error {float(np.max(np.abs(got - exact) / bound)):.3g} "
                                  "x its bound")

    def fail(self, what: str, call: Dict[str, Any], why: str) -> None:
        self.failures += 1
        shown = {k: (v.name if isinstance(v, np.dtype) else v) for k, v in call.items()}
        print(f"FAIL {what}: {why}; {shown}", flush=True)

    def settings(self) -> contextlib.ExitStack:
        """A random workspace (1 byte: one output row a chunk) and thread count."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.gc.cpu_workspace(int(self.rng.choice(
            [1, 4096, 65536, 2**20, 2**28]))))
        stack.enter_context(self.gc.cpu_threads(int(self.rng.integers(1, 4))))
        return stack

    def one(self, call: Dict[str, Any]) -> None:
        torch, gc, rng, dt = self.torch, self.gc, self.rng, call["dtype"]
        wide = np.complex128 if dt.kind == "c" else np.float64
        x = _random(rng, (call["N"], call["C_in"]) + call["spatial"], dt)
        w = _random(rng, (call["C_out"], call["C_in"] // call["groups"]) + call["K"], dt)
        b = _random(rng, (call["C_out"],), dt) if call["bias"] else None
        t: Dict[str, Any] = {k: None if v is None else torch.from_numpy(v.astype(wide))
                             for k, v in (("x", x), ("w", w), ("b", b))}
        try:
            exact = torch_conv(torch, t["x"], t["w"], t["b"], call).numpy()
        except RuntimeError:  # a layer PyTorch refuses (e.g. circular padding past the size)
            return
        magnitude = torch_conv(torch, t["x"].abs(), t["w"].abs(),
                               None if b is None else t["b"].abs(), call).numpy()
        last = call["layout"] == "channels_last"
        to_layout = (lambda a: np.moveaxis(a, 1, -1).copy()) if last else (lambda a: a)
        from_layout = (lambda a: np.moveaxis(a, -1, 1)) if last else (lambda a: a)
        xin = to_layout(x)
        if call["strided"]:  # every other element of a wider array
            wider = np.zeros(xin.shape[:-1] + (2 * xin.shape[-1],), xin.dtype)
            wider[..., ::2] = xin
            xin = wider[..., ::2]
        opts = {k: call[k] for k in ("stride", "padding", "dilation", "groups",
                                     "padding_mode")}
        opts["padding"] = tuple(opts["padding"])
        geom = gc.plan_conv(x.shape, w.shape, None if b is None else b.shape, **opts)
        kept = (xin.copy(), w.copy())
        terms = int(np.prod(w.shape[1:])) + 1
        for name in ("auto",) + gc.algorithms.ALGORITHMS["cpu"]:
            if name != "auto" and gc.algorithms.why_not("cpu", name, geom, dt):
                continue

            def forward() -> np.ndarray:
                with self.settings():
                    return from_layout(gc.conv(xin, w, b, layout=call["layout"],
                                               device="cpu", algorithm=name, **opts))
            self.check(f"conv {name}", call, forward, exact, magnitude, terms)
            if not (np.array_equal(xin, kept[0]) and np.array_equal(w, kept[1])):
                self.fail(f"conv {name}", call, "the caller's arrays were modified")
        self.adjoints(call, x, w, t, exact.shape, opts, to_layout, from_layout)
        self.transpose(call, w, t, exact.shape)

    def adjoints(self, call: Dict[str, Any], x: np.ndarray, w: np.ndarray, t: Dict[str, Any],
                 out_shape: Tuple[int, ...], opts: Dict[str, Any], to_layout: Callable,
                 from_layout: Callable) -> None:
        """conv_input_grad and conv_filter_grad against PyTorch's autograd (Hermitian for
        complex), in the call's layout and padding mode."""
        torch, gc, dt = self.torch, self.gc, call["dtype"]
        g = _random(self.rng, out_shape, dt)
        grads = []
        for xv, wv, gv in ((t["x"], t["w"], g), (t["x"].abs(), t["w"].abs(), np.abs(g))):
            xr, wr = xv.clone().requires_grad_(True), wv.clone().requires_grad_(True)
            torch_conv(torch, xr, wr, None, call).backward(torch.from_numpy(
                gv.astype(xv.numpy().dtype)))
            grads.append((xr.grad.numpy(), wr.grad.numpy()))
        (dx, dw), (dx_mag, dw_mag) = grads
        layout = call["layout"]

        def input_grad() -> np.ndarray:
            with self.settings():
                return from_layout(gc.conv_input_grad(to_layout(g), w, to_layout(x).shape,
                                                      layout=layout, device="cpu", **opts))

        def filter_grad() -> np.ndarray:
            with self.settings():
                return gc.conv_filter_grad(to_layout(x), to_layout(g), w.shape, layout=layout,
                                           device="cpu", **opts)
        self.check("conv_input_grad", call, input_grad, dx, dx_mag,
                   int(np.prod(w.shape[2:])) * call["C_out"])
        self.check("conv_filter_grad", call, filter_grad, dw, dw_mag,
                   int(np.prod(out_shape[2:])) * call["N"])

    def transpose(self, call: Dict[str, Any], w: np.ndarray, t: Dict[str, Any],
                  y_shape: Tuple[int, ...]) -> None:
        """conv_transpose (zero, even padding) against PyTorch's, with an output_padding."""
        if call["padding_mode"] != "zeros" or any(b != a for b, a in call["padding"]):
            return
        torch, gc, rng, dt = self.torch, self.gc, self.rng, call["dtype"]
        F = torch.nn.functional
        conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[call["D"] - 1]
        padding = tuple(b for b, _ in call["padding"])
        out_pad = tuple(int(rng.integers(0, max(s, d)))
                        for s, d in zip(call["stride"], call["dilation"]))
        y = _random(rng, y_shape, dt)
        bias = _random(rng, (call["C_in"],), dt) if rng.random() < 0.5 else None
        opts = dict(stride=call["stride"], padding=padding, output_padding=out_pad,
                    groups=call["groups"], dilation=call["dilation"])
        wide = t["w"].numpy().dtype
        try:
            exact = conv_t(torch.from_numpy(y.astype(wide)), t["w"],
                           None if bias is None else torch.from_numpy(bias.astype(wide)),
                           **opts).numpy()
        except RuntimeError:
            return
        magnitude = conv_t(torch.from_numpy(np.abs(y).astype(np.float64)), t["w"].abs(),
                           None if bias is None else
                           torch.from_numpy(np.abs(bias).astype(np.float64)), **opts).numpy()
        self.check(f"conv_transpose output_padding={out_pad}", call,
                   lambda: gc.conv_transpose(y, w, bias, device="cpu", **opts), exact,
                   magnitude, int(np.prod(w.shape[2:])) * call["C_out"] + 1)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to draw calls")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    fuzz = Fuzz(args.seed)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        call = draw_call(fuzz.rng)
        if call is not None:
            fuzz.one(call)
    print(f"seed {args.seed}: {fuzz.cases} cases, {fuzz.failures} failed")
    return 1 if fuzz.failures else 0


if __name__ == "__main__":
    sys.exit(main())
