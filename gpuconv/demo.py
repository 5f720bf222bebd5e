"""``gpuconv demo``: a picture of kernels and filters at work.

A small filter bank is applied to the RGB channels of a picture (a built-in one, drawn here, or
the user's) and one figure shows every step of a convolution layer: the input channels; each
filter as its stack of per-channel kernels; each kernel's single-channel map; and how a filter's
maps sum, plus its bias and a ReLU, into its feature map. Every map in the figure is computed by
gpuconv itself (the per-kernel maps as one grouped convolution, the feature maps as the layer's
convolution), and the demo checks that the two agree before it draws anything.

The computation needs only NumPy (and CuPy for the GPU); the figure needs matplotlib, the
``demo`` extra.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, TextIO, Tuple

import numpy as np

from .describe import describe
from .device import cuda_status, resolve
from .forward import conv2d
from ._typing import Array

CHANNELS = ("R", "G", "B")
MAX_SIDE = 256  # pictures are shrunk to at most this many pixels per side (the figure is small)
INSTALL_HINT = 'pip install "gpuconv[demo]"   (or: pip install matplotlib)'

_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
_DIAGONAL = np.array([[0, 1, 2], [-1, 0, 1], [-2, -1, 0]], np.float32)
_X_KERNEL = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.float32)  # the 5x5 worked example's
_CENTRE = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 weights of R, G, B


def _same_on_every_channel(kernel: np.ndarray, weights: np.ndarray = _LUMA) -> np.ndarray:
    return weights[:, None, None] * kernel


def filter_bank() -> Tuple[List[str], np.ndarray, np.ndarray]:
    """(names, filters (6, 3, 3, 3), bias (6,)): six filters of three 3x3 kernels (R, G, B)."""
    bank = [
        ("vertical edges (Sobel)", _same_on_every_channel(_SOBEL_X), 0.0),
        ("horizontal edges (Sobel)", _same_on_every_channel(_SOBEL_X.T.copy()), 0.0),
        ("diagonal edges", _same_on_every_channel(_DIAGONAL), 0.0),
        ("blur (3x3 mean)", _same_on_every_channel(np.full((3, 3), 1 / 9, np.float32)), -0.3),
        ("the 'X' kernel", _same_on_every_channel(_X_KERNEL), -2.0),
        # a filter whose kernels differ per channel: red minus green, a colour-opponent cell
        ("red minus green", np.stack([_CENTRE, -_CENTRE, 0 * _CENTRE]), 0.1),
    ]
    names = [name for name, _, _ in bank]
    filters = np.stack([k for _, k, _ in bank]).astype(np.float32)
    bias = np.array([b for _, _, b in bank], np.float32)
    return names, filters, bias


def sample_picture(size: int = 128) -> np.ndarray:
    """The built-in picture, drawn here (no file, no download): (3, size, size) RGB in [0, 1].

    A sky-to-ground gradient with a red disc, a green square, a blue ring and a white
    triangle: edges in every direction and colours the colour-opponent filter can tell apart.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    img = np.empty((3, size, size), np.float32)
    img[0] = 0.35 + 0.25 * yy
    img[1] = 0.45 + 0.15 * yy
    img[2] = 0.85 - 0.45 * yy

    def paint(mask: Array, rgb: Tuple[float, float, float]) -> None:
        for c in range(3):
            img[c][mask] = rgb[c]

    paint((xx - 0.3) ** 2 + (yy - 0.3) ** 2 < 0.17 ** 2, (0.9, 0.1, 0.1))         # red disc
    paint((np.abs(xx - 0.72) < 0.15) & (np.abs(yy - 0.3) < 0.15), (0.1, 0.8, 0.2))  # green sq.
    r = np.sqrt((xx - 0.72) ** 2 + (yy - 0.75) ** 2)
    paint((r > 0.09) & (r < 0.17), (0.15, 0.2, 0.95))                               # blue ring
    paint((yy > 0.55) & (yy < 0.92) & (np.abs(xx - 0.28) < (yy - 0.55) * 0.6),
          (1.0, 1.0, 1.0))                                                          # triangle
    return np.clip(img, 0, 1)


def load_picture(path: str) -> np.ndarray:
    """The user's picture as (3, H, W) float32 RGB in [0, 1], shrunk to at most MAX_SIDE."""
    try:
        from matplotlib import image as mpimg
    except ImportError as exc:
        raise RuntimeError(f"reading --image needs matplotlib: {INSTALL_HINT}") from exc
    try:
        a = np.asarray(mpimg.imread(path))
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"--image {path!r} could not be read as a picture: {exc}") from exc
    if a.dtype.kind in "ui":
        a = a.astype(np.float32) / np.iinfo(a.dtype).max
    a = a.astype(np.float32)
    if a.ndim == 2:                       # grayscale: the one channel serves as R, G and B
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 3:
        raise ValueError(f"--image {path!r} has shape {a.shape}; expected an RGB or RGBA "
                         f"picture of at least 3x3 pixels")
    a = a[:, :, :3]
    step = -(-max(a.shape[:2]) // MAX_SIDE)
    if step > 1:                          # block means: every pixel counts, no aliasing
        H, W = (a.shape[0] // step) * step, (a.shape[1] // step) * step
        a = a[:H, :W].reshape(H // step, step, W // step, step, 3).mean(axis=(1, 3))
    return np.ascontiguousarray(a.transpose(2, 0, 1))


@dataclass
class DemoResult:
    """Everything the figure shows, as NumPy arrays (computed on ``device``)."""
    picture: np.ndarray        # (3, H, W) the input channels
    names: List[str]           # one per filter
    filters: np.ndarray        # (C_out, 3, 3, 3): filter o's kernel for channel c is [o, c]
    bias: np.ndarray           # (C_out,)
    kernel_maps: np.ndarray    # (C_out, 3, H, W): channel c correlated with kernel [o, c]
    summed: np.ndarray         # (C_out, H, W): the kernel maps of each filter, summed
    feature_maps: np.ndarray   # (C_out, H, W): conv(x, filters, bias, activation="relu")
    device: str                # where it ran, in words
    agreement: float           # max |relu(summed + bias) - feature_maps|


def compute(picture: np.ndarray, device: str = "auto") -> DemoResult:
    """Run the filter bank over ``picture`` (3, H, W) with gpuconv on ``device``."""
    names, filters, bias = filter_bank()
    C_out, C_in = filters.shape[:2]
    x = picture[None].astype(np.float32)                          # (1, 3, H, W)
    kind, index = resolve(device, x)
    where = "cpu (NumPy)" if kind == "cpu" else _gpu_words(index)
    # every kernel on its own channel: a grouped convolution with one group per input channel,
    # whose filter c*C_out + o is the single kernel filters[o, c]
    per_kernel = filters.transpose(1, 0, 2, 3).reshape(C_in * C_out, 1, 3, 3)
    maps = conv2d(x, per_kernel, groups=C_in, padding="same", device=device)
    # x is a NumPy array, so the results are NumPy on either device
    maps = maps[0].reshape(C_in, C_out, *x.shape[2:]).transpose(1, 0, 2, 3)
    feature = conv2d(x, filters, bias, padding="same", activation="relu", device=device)[0]
    summed = maps.sum(axis=1)
    agreement = float(np.max(np.abs(np.maximum(summed + bias[:, None, None], 0) - feature)))
    return DemoResult(picture, names, filters, bias, np.ascontiguousarray(maps), summed,
                      feature, where, agreement)


def _gpu_words(index: Optional[int]) -> str:
    status = cuda_status()
    i = 0 if index is None else index
    name = status.device_names[i] if i < len(status.device_names) else f"device {i}"
    return f"cuda:{i} ({name}, CuPy {status.cupy_version})"


def agreement_bound(result: DemoResult) -> float:
    """How far the summed kernel maps may differ from the layer's output in float32: both are
    sums of 27 products (plus the bias) in different orders."""
    n = result.filters[0].size + 1
    u = np.finfo(np.float32).eps / 2
    mag = np.abs(result.kernel_maps).sum(axis=1) + np.abs(result.bias)[:, None, None]
    return float(2 * n * u / (1 - n * u) * mag.max() + u * np.abs(result.feature_maps).max())


def explain(result: DemoResult, source: str) -> str:
    C, H, W = result.picture.shape
    d = describe((1, C, H, W), result.filters.shape, padding="same")
    lines = [f"picture: {source}, {H}x{W} pixels, {C} channels (R, G, B) -> x of shape "
             f"{(1, C, H, W)} (N, C_in, H, W)",
             f"device: {result.device}", "", "the layer:", str(d), "", "the filters:"]
    for o, name in enumerate(result.names):
        lines.append(f"  filter {o}: {name:<26} 3 kernels (one per R, G, B), bias "
                     f"{result.bias[o]:+.2f}")
    lines += ["",
              f"each kernel's map is (H, W) = ({H}, {W}); a filter's 3 maps summed, plus its "
              f"bias, through ReLU, give its feature map: result {d.output_shape}",
              f"summed kernel maps vs the layer's own output: max difference "
              f"{result.agreement:.1e}"]
    return "\n".join(lines)


def _signed(ax: Any, a: Array, title: str, fontsize: float) -> None:
    lim = float(np.max(np.abs(a))) or 1.0
    ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_title(title, fontsize=fontsize)


def draw(result: DemoResult, out: str, source: str) -> None:
    """Write the figure to ``out`` (PNG, or any format matplotlib knows by the extension)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, works headless

    C = result.picture.shape[0]
    C_out = len(result.names)
    cols = 2 * C + 2
    fig = Figure(figsize=(1.9 * cols, 1.95 * (C_out + 1)), layout="constrained")
    axes: Any = fig.subplots(C_out + 1, cols)  # an array (matplotlib 3.8's stubs: a union)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    # row 0: the picture and its channels
    axes[0, 0].imshow(result.picture.transpose(1, 2, 0))
    axes[0, 0].set_title(f"input: {source}", fontsize=9)
    for c, cmap in enumerate(("Reds", "Greens", "Blues")):
        ax = axes[0, 2 * c + 1]
        ax.imshow(result.picture[c], cmap=cmap, vmin=0, vmax=1)
        ax.set_title(f"channel {CHANNELS[c]}", fontsize=9)
    for j in range(cols):
        if j != 0 and (j % 2 == 0 or j > 2 * C):
            axes[0, j].set_axis_off()
    note = axes[0, 2 * C].text(0.0, 0.5, "each row below is one filter:\n"
                              "a kernel per channel (numbers),\n"
                              "that kernel's map of its channel,\n"
                              "the maps summed, then + bias, ReLU",
                    fontsize=9, va="center", transform=axes[0, 2 * C].transAxes)
    note.set_in_layout(False)  # may run into the empty panel beside it
    for o, name in enumerate(result.names):
        row = axes[o + 1]
        for c in range(C):
            k = result.filters[o, c]
            lim = float(np.max(np.abs(result.filters[o]))) or 1.0
            row[2 * c].imshow(k, cmap="RdBu_r", vmin=-lim, vmax=lim)
            for (i, j), v in np.ndenumerate(k):
                row[2 * c].text(j, i, f"{v + 0.0:.2g}", ha="center", va="center", fontsize=7,
                                color="white" if abs(v) > 0.6 * lim else "black")
            row[2 * c].set_title(f"kernel ({o}, {CHANNELS[c]})", fontsize=9)
            _signed(row[2 * c + 1], result.kernel_maps[o, c], f"{CHANNELS[c]} * kernel", 9)
        _signed(row[2 * C], result.summed[o], "sum of the 3 maps", 9)
        row[2 * C + 1].imshow(result.feature_maps[o], cmap="magma", vmin=0,
                              interpolation="nearest")
        row[2 * C + 1].set_title(f"+ bias {result.bias[o]:+.1f}, ReLU", fontsize=9)
        row[0].set_ylabel(f"filter {o}\n{name}", fontsize=9)
    fig.suptitle("gpuconv demo: 6 filters of 3 kernels (3x3) each over an RGB picture "
                 f"on {result.device}", fontsize=11)
    fig.savefig(out, dpi=72)


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    """``gpuconv demo [--out FILE] [--image FILE] [--device D]``; returns the exit status:
    0 when the figure was written, 1 without matplotlib or on a mismatch, 2 for bad input."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    parser = argparse.ArgumentParser(
        prog="gpuconv demo", description="Apply a small filter bank to the RGB channels of a "
        "picture and draw every step of the convolution layer into one figure.")
    parser.add_argument("--out", default="gpuconv-demo.png",
                        help="where to write the figure (default: gpuconv-demo.png)")
    parser.add_argument("--image", default=None,
                        help="your own picture (PNG; JPEG and others through Pillow); default: "
                             "the built-in picture")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    try:
        if args.image is None:
            picture, source = sample_picture(), "built-in picture"
        else:
            picture, source = load_picture(args.image), args.image
        result = compute(picture, args.device)
    except (ValueError, TypeError, RuntimeError) as exc:
        print(f"gpuconv demo: {exc}", file=stderr)
        return 2
    print(explain(result, source), file=stdout)
    if result.agreement > agreement_bound(result):
        print(f"MISMATCH: the summed kernel maps differ from the layer's output by "
              f"{result.agreement:.2e}", file=stderr)
        return 1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"\nthe figure needs matplotlib, which is not installed here: {INSTALL_HINT}",
              file=stderr)
        return 1
    draw(result, args.out, source)
    print(f"\nfigure written to {args.out}", file=stdout)
    return 0
