"""The NumPy backend: convolution as a batched matrix product over unrolled windows.

For a chunk of the batch (and, for large layers, of the first output axis) the padded input is
unrolled into ``cols[g, (n, *out), (c, *k)]`` (im2col; the windows come from a strided view, so
the only copy is the unrolling itself) and multiplied by the filters as ``(g, (c, *k), co)``
matrices with one ``numpy.matmul``, which runs on BLAS. No Python loop touches pixels, channels
or single batch elements; the chunk loop only keeps the temporaries under
:func:`gpuconv.config.get_cpu_workspace`.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .config import get_cpu_workspace
from .dtypes import accumulator_dtype
from .geometry import ConvGeometry
from .layout import pad_spatial


def _padded(xs, geom: ConvGeometry, dtype):
    """The batch chunk ``xs`` (channels-first) padded and cast to ``dtype``."""
    if geom.padding_mode == "zeros":
        xpad = np.zeros(xs.shape[:2] + geom.padded_spatial, dtype=dtype)
        interior = tuple(slice(b, b + n) for b, n in zip(geom.pad_before, geom.in_spatial))
        xpad[(slice(None), slice(None)) + interior] = xs
        return xpad
    return pad_spatial(np, xs.astype(dtype, copy=False), geom)


def _activate(res, activation):
    """Apply ``activation`` to ``res`` in place."""
    if activation is None:
        return
    if activation == "relu":
        np.maximum(res, 0, out=res)  # NaN stays NaN
    elif activation == "sigmoid":
        with np.errstate(over="ignore"):  # exp(-v) -> inf gives sigmoid 0, as it should
            np.negative(res, out=res)
            np.exp(res, out=res)
            res += 1
            np.reciprocal(res, out=res)
    elif activation == "tanh":
        np.tanh(res, out=res)
    else:  # conv.py validates; this guards against a new name reaching here unimplemented
        raise ValueError(f"activation {activation!r} is not implemented on the CPU")


def _chunks(geom: ConvGeometry, itemsize: int, padded_copies: int):
    """(batch elements, first-axis output rows) per chunk so temporaries fit the workspace."""
    O = geom.out_spatial
    row = math.prod(O[1:])
    # per output row of one batch element: its unrolled windows, its matmul result, and the
    # result reordered into (C_out, ...) order
    per_row = itemsize * row * (geom.groups * geom.terms_per_output + 2 * geom.C_out)
    per_image = itemsize * padded_copies * geom.C_in * math.prod(geom.padded_spatial)
    per_n = per_image + O[0] * per_row
    budget = get_cpu_workspace()
    if per_n <= budget:
        return max(1, min(geom.N, budget // per_n)), O[0]
    return 1, max(1, min(O[0], (budget - per_image) // per_row))


def conv_forward(x_cf, w, bias, geom: ConvGeometry, activation, out_cf) -> None:
    """Fill ``out_cf`` ``(N, C_out, *out_spatial)`` with the convolution of ``x_cf``.

    ``x_cf``: ``(N, C_in, *spatial)`` NumPy array or view (any strides, any accepted dtype);
    ``w``: ``(C_out, C_in // groups, *kernel_size)`` filters, already flipped for ``flip=True``;
    ``bias``: ``(C_out,)`` or None. Sums are carried in the accumulator dtype of ``out_cf``.
    """
    ct = accumulator_dtype(out_cf.dtype)
    G, Cg, Cog, D = geom.groups, geom.C_in_per_group, geom.C_out_per_group, geom.rank
    K, O, Kp = geom.kernel, geom.out_spatial, math.prod(geom.kernel)
    # filters as G matrices of (C_in/groups * taps) x (filters per group)
    wmat = np.ascontiguousarray(
        np.asarray(w, dtype=ct).reshape(G, Cog, Cg * Kp).transpose(0, 2, 1))
    b = None if bias is None else np.asarray(bias, dtype=ct).reshape(G, 1, Cog)
    copies = 1 if geom.padding_mode == "zeros" else 2
    nb, rb = _chunks(geom, ct.itemsize, copies)

    for n0 in range(0, geom.N, nb):
        xpad = _padded(x_cf[n0:n0 + nb], geom, ct)
        n = xpad.shape[0]
        s = xpad.strides
        for r0 in range(0, O[0], rb):
            rows = (min(O[0], r0 + rb) - r0,) + O[1:]
            # windows[g, n, *out, c, *k] = xpad[n, g*Cg + c, out*stride + k*dilation]
            start = xpad[:, :, r0 * geom.stride[0]:]
            windows = as_strided(
                start,
                shape=(G, n) + rows + (Cg,) + K,
                strides=((Cg * s[1], s[0]) + tuple(s[2 + i] * geom.stride[i] for i in range(D))
                         + (s[1],) + tuple(s[2 + i] * geom.dilation[i] for i in range(D))),
                writeable=False)
            cols = np.empty(windows.shape, dtype=ct)
            np.copyto(cols, windows)
            res = np.matmul(cols.reshape(G, n * math.prod(rows), Cg * Kp), wmat)
            del cols
            if b is not None:
                res += b
            _activate(res, activation)
            # (G, n, *rows, Cog) -> (n, *rows, G*Cog) -> (n, C_out, *rows)
            res = np.moveaxis(res.reshape((G, n) + rows + (Cog,)), 0, -2)
            res = res.reshape((n,) + rows + (geom.C_out,))
            out_cf[n0:n0 + n, :, r0:r0 + rows[0]] = np.moveaxis(res, -1, 1)
