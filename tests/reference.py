"""An independent float64/complex128 oracle, written as literally as the definition.

    y[n, o, p] = bias[o] + sum over the kernels c of filter o, sum over taps t:
                 filters[o, c, t] * xpad[n, g(o)*Cg + c, p*stride + t*dilation]

It shares no code with gpuconv: padding amounts, output sizes and padding modes are worked out
here from their definitions (PyTorch's for the modes, TensorFlow's for "same", scipy.signal's for
"full"), and the sum is a Python loop over filters, kernels and taps, vectorised only over the
batch and the output positions.
"""
from __future__ import annotations

import itertools
import math

import numpy as np


def _tuple(v, D):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * D


def reference_pads(padding, S, K, stride, dilation):
    """List of (before, after) per spatial axis."""
    D = len(S)
    if padding == "valid":
        return [(0, 0)] * D
    if padding == "full":
        return [(d * (k - 1), d * (k - 1)) for k, d in zip(K, dilation)]
    if padding == "same":
        pads = []
        for n, k, s, d in zip(S, K, stride, dilation):
            out = math.ceil(n / s)
            total = max(0, (out - 1) * s + d * (k - 1) + 1 - n)
            pads.append((total // 2, total - total // 2))
        return pads
    if isinstance(padding, int):
        return [(padding, padding)] * D
    return [(p, p) if isinstance(p, int) else (p[0], p[1]) for p in padding]


def _source_index(i, n, mode):
    """(index into the unpadded axis, is-it-a-real-sample) for padded-coordinate index i - before."""
    if mode == "zeros":
        return np.clip(i, 0, n - 1), (i >= 0) & (i < n)
    if mode == "reflect":  # mirror about the edge samples, edge not repeated
        j = np.where(i < 0, -i, i)
        j = np.where(j >= n, 2 * (n - 1) - j, j)
        return j, np.ones(i.shape, bool)
    if mode == "replicate":
        return np.clip(i, 0, n - 1), np.ones(i.shape, bool)
    if mode == "circular":
        return np.mod(i, n), np.ones(i.shape, bool)
    raise ValueError(mode)


def _prepare(x, D, layout):
    x = np.asarray(x)
    batched = x.ndim == D + 2
    if not batched:
        x = x[None]
    if layout == "channels_last":
        x = np.moveaxis(x, -1, 1)
    return x, batched


def reference_conv(x, filters, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                   padding_mode="zeros", layout="channels_first", flip=False, activation=None):
    x = np.asarray(x)
    w = np.asarray(filters)
    D = w.ndim - 2
    is_complex = any(np.iscomplexobj(a) for a in (x, w, bias) if a is not None)
    big = np.complex128 if is_complex else np.float64
    w = w.astype(big)
    x, batched = _prepare(x.astype(big), D, layout)
    N, S = x.shape[0], x.shape[2:]
    C_out, Cg, K = w.shape[0], w.shape[1], w.shape[2:]
    stride, dilation = _tuple(stride, D), _tuple(dilation, D)
    pads = reference_pads(padding, S, K, stride, dilation)
    O = [(n + b + a - d * (k - 1) - 1) // s + 1
         for n, (b, a), k, s, d in zip(S, pads, K, stride, dilation)]
    assert min(O) >= 1
    per_group_out = C_out // groups
    y = np.zeros((N, C_out, *O), dtype=big)
    for o in range(C_out):
        g = o // per_group_out
        for c in range(Cg):
            channel = x[:, g * Cg + c]
            for t in itertools.product(*[range(k) for k in K]):
                tap = tuple(k - 1 - ti for k, ti in zip(K, t)) if flip else t
                weight = w[(o, c) + tap]
                idx, ok = [], []
                for ax in range(D):
                    i = np.arange(O[ax]) * stride[ax] + t[ax] * dilation[ax] - pads[ax][0]
                    j, valid = _source_index(i, S[ax], padding_mode)
                    idx.append(j)
                    ok.append(valid)
                grid = np.ix_(*idx)
                mask = np.ones(O, bool)
                for ax in range(D):
                    shape = [1] * D
                    shape[ax] = O[ax]
                    mask = mask & ok[ax].reshape(shape)
                y[:, o] += weight * channel[(slice(None),) + grid] * mask
        if bias is not None:
            y[:, o] += np.asarray(bias).astype(big)[o]
    if activation == "relu":
        y = np.maximum(y, 0)
    elif activation == "sigmoid":
        y = 1 / (1 + np.exp(-y))
    elif activation == "tanh":
        y = np.tanh(y)
    else:
        assert activation is None
    return _finish(y, batched, layout)


def finfo(dtype):
    """np.finfo, or ml_dtypes.finfo for bfloat16 (which NumPy does not know)."""
    if np.dtype(dtype).name == "bfloat16":
        import ml_dtypes
        return ml_dtypes.finfo(dtype)
    return np.finfo(dtype)


def activation_lipschitz(activation):
    return {None: 1.0, "relu": 1.0, "sigmoid": 0.25, "tanh": 1.0}[activation]


def error_bound(x, filters, bias, out_dtype, activation, **options):
    """Per-element bound on |computed - exact| for one conv call, from the dtype and term count.

    A sum of n products carried in a type with unit roundoff u is off by at most
    gamma_n * sum|products| (gamma_n = n u / (1 - n u); Higham, Accuracy and Stability, 3.1),
    sqrt(2) gamma_m for complex ones, m the larger of n + 2 (complex products) and the 2 real
    products per tap that each part sums when computed as real sums; the bias adds one term
    (one per part). The sum |products| is the reference run on |x|, |filters|, |bias|. The
    activation passes that error on scaled by its Lipschitz constant and adds a few units of its
    own rounding; the final store into the output dtype adds u_out |y| (and half the smallest
    subnormal, for underflow).
    """
    out_dtype = np.dtype(out_dtype)
    real = np.dtype(out_dtype.char.lower()) if out_dtype.kind == "c" else out_dtype
    acc = np.dtype(np.float32) if real == np.float16 or real.name == "bfloat16" else real
    u_acc = np.finfo(acc).eps / 2
    u_out = finfo(real).eps / 2
    w = np.asarray(filters)
    taps = int(np.prod(w.shape[1:]))
    n = taps + (0 if bias is None else 1)
    if out_dtype.kind == "c":
        # each part of a complex sum as a sum of real products (ax - by, bx + ay), as complex
        # BLAS kernels and the CPU's depthwise planes compute it: 2 per tap, |ax| + |by| <=
        # |a + ib| |x + iy|; that covers the complex products' own rounding (n + 2 terms) too
        n = max(n + 2, 2 * taps + (0 if bias is None else 1))
    gamma = n * u_acc / (1 - n * u_acc)
    if out_dtype.kind == "c":
        gamma *= np.sqrt(2)
    mag = reference_conv(np.abs(np.asarray(x)), np.abs(w),
                         None if bias is None else np.abs(np.asarray(bias)),
                         activation=None, **options)
    exact = reference_conv(x, filters, bias, activation=activation, **options)
    own = 0.0 if activation in (None, "relu") else 4 * u_acc
    bound = (activation_lipschitz(activation) * gamma * mag
             + (u_out + own) * np.abs(exact) + finfo(real).smallest_subnormal)
    return exact, bound


def error_bound_tf32(x, filters, bias, activation, **options):
    """error_bound for float32 computed with every x and filter value rounded to TF32 first (10
    mantissa bits, to nearest: relative error <= 2^-11 each), as gemm_tf32 does: each product
    x'w' is then off from xw by at most (2^-10 + 2^-22)|xw|, and is exact in float32, so float32
    sums add gamma_n times sum|x'w'| <= (1 + 2^-10 + 2^-22) sum|xw|."""
    exact, bound = error_bound(x, filters, bias, np.float32, activation, **options)
    mag = reference_conv(np.abs(np.asarray(x)), np.abs(np.asarray(filters)), None,
                         activation=None, **options)
    rel = 2.0 ** -10 + 2.0 ** -22
    n = int(np.prod(np.asarray(filters).shape[1:])) + (0 if bias is None else 1)
    u = np.finfo(np.float32).eps / 2
    gamma = n * u / (1 - n * u)
    extra = activation_lipschitz(activation) * (rel + gamma * rel) * mag
    return exact, bound + extra


def winograd_magnitude(x, filters, bias, padding):
    """The sum that bounds Winograd F(2x2, 3x3)'s rounding error: the algorithm run in float64
    on |x| and |filters| with every transform's entries replaced by their absolute values,
    A'^T [sum_c (|G| |g_c| |G|^T) * (|B|^T |d_c| |B|)] A' (channels-first, 2-D, stride 1),
    plus |bias|. Each computed quantity's error is a multiple of its term in this sum."""
    x = np.abs(np.asarray(x, dtype=np.complex128)).real
    w = np.abs(np.asarray(filters, dtype=np.complex128)).real
    BT = np.abs(np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float))
    G = np.abs(np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]))
    AT = np.abs(np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float))
    (pt, pb), (pl, pr) = padding
    N, C, H, W = x.shape
    OH, OW = H + pt + pb - 2, W + pl + pr - 2
    TH, TW = -(-OH // 2), -(-OW // 2)
    xp = np.zeros((N, C, 2 * TH + 2, 2 * TW + 2))
    xp[:, :, pt:pt + H, pl:pl + W] = x[:, :, :2 * TH + 2 - pt, :2 * TW + 2 - pl]
    d = np.stack([np.stack([xp[:, :, 2 * i:2 * i + 4, 2 * j:2 * j + 4] for j in range(TW)], 2)
                  for i in range(TH)], 2)  # (N, C, TH, TW, 4, 4)
    V = np.einsum("ai,nchwij,bj->nchwab", BT, d, BT)
    U = np.einsum("ai,kcij,bj->kcab", G, w, G)
    M = np.einsum("nchwab,kcab->nkhwab", V, U)
    Y = np.einsum("ia,nkhwab,jb->nkhwij", AT, M, AT)
    Y = Y.transpose(0, 1, 2, 4, 3, 5).reshape(N, -1, 2 * TH, 2 * TW)[:, :, :OH, :OW]
    if bias is not None:
        Y = Y + np.abs(np.asarray(bias, dtype=np.complex128)).real.reshape(1, -1, 1, 1)
    return Y


def error_bound_winograd(x, filters, bias, out_dtype, activation, layout="channels_first",
                         padding=((1, 1), (1, 1)), **options):
    """error_bound for Winograd F(2x2, 3x3) (a 2-D 3x3 conv of stride 1, one group, real
    dtypes). Its stages round in the accumulator type, each by at most gamma_k of its own
    absolute-valued sum: the filter transform, two products of 3 terms (gamma_6; the entries
    0, 1 and 1/2 scale exactly), the input transform, two sums of 2 terms (gamma_2), the
    product (gamma_1), the sum over the C_in channels (gamma_{C_in}, in any order, as cuBLAS
    may take), the output transform, two sums of 3 terms (gamma_4), and the bias (gamma_1).
    The stages are linear with exact coefficients, so the errors add: gamma_{C_in + 13} (one
    more with a bias) times winograd_magnitude's sum -- larger than the direct sum |x||w| by
    the transforms' constants -- plus the store's u_out |y|."""
    out_dtype = np.dtype(out_dtype)
    acc = np.dtype(np.float32) if out_dtype == np.float16 or out_dtype.name == "bfloat16" \
        else out_dtype
    u_acc, u_out = np.finfo(acc).eps / 2, finfo(out_dtype).eps / 2
    x_cf = np.moveaxis(np.asarray(x), -1, 1) if layout == "channels_last" else np.asarray(x)
    n = x_cf.shape[1] + 13 + (0 if bias is None else 1)
    gamma = n * u_acc / (1 - n * u_acc)
    exact = reference_conv(x, filters, bias, activation=activation, layout=layout,
                           padding=padding, **options)
    mag = winograd_magnitude(x_cf.astype(np.float64), np.asarray(filters).astype(np.float64),
                             bias, padding)
    if layout == "channels_last":
        mag = np.moveaxis(mag, 1, -1)
    own = 0.0 if activation in (None, "relu") else 4 * u_acc
    bound = (activation_lipschitz(activation) * gamma * mag
             + (u_out + own) * np.abs(exact) + finfo(out_dtype).smallest_subnormal)
    return exact, bound


# ---- adjoints and the transpose, written as literally as the forward reference ----

def _finish(y, batched, layout):
    if layout == "channels_last":
        y = np.moveaxis(y, 1, -1)
    return y if batched else y[0]


def _taps_and_sources(S, K, O, stride, dilation, pads, mode, t):
    """Per axis: the source index into x of output position p at tap t, and whether it is real."""
    idx, ok = [], []
    for ax in range(len(S)):
        i = np.arange(O[ax]) * stride[ax] + t[ax] * dilation[ax] - pads[ax][0]
        j, valid = _source_index(i, S[ax], mode)
        idx.append(j)
        ok.append(valid)
    mask = np.ones(O, bool)
    for ax in range(len(S)):
        shape = [1] * len(S)
        shape[ax] = O[ax]
        mask = mask & ok[ax].reshape(shape)
    return np.ix_(*idx), mask


def _geometry(x_shape_cf, w_shape, stride, padding, dilation):
    D = len(w_shape) - 2
    S, K = x_shape_cf[2:], w_shape[2:]
    stride, dilation = _tuple(stride, D), _tuple(dilation, D)
    pads = reference_pads(padding, S, K, stride, dilation)
    O = [(n + b + a - d * (k - 1) - 1) // s + 1
         for n, (b, a), k, s, d in zip(S, pads, K, stride, dilation)]
    return S, K, stride, dilation, pads, O


def reference_input_grad(g, filters, input_shape, *, stride=1, padding=0, dilation=1, groups=1,
                         padding_mode="zeros", layout="channels_first", flip=False):
    """dx[n, ci, src(p, t)] += conj(w[o, c, t]) * g[n, o, p], for every (o, c, t, p): the
    scatter that defines the Hermitian adjoint; padded samples land on the sample they copy."""
    w = np.asarray(filters).astype(np.complex128)
    D = w.ndim - 2
    g, batched = _prepare(g, D, layout)
    g = g.astype(np.complex128)
    shape = tuple(input_shape) if len(input_shape) == D + 2 else (1,) + tuple(input_shape)
    if layout == "channels_last":
        shape = (shape[0], shape[-1]) + shape[1:-1]
    S, K, stride, dilation, pads, O = _geometry(shape, w.shape, stride, padding, dilation)
    C_out, Cg = w.shape[:2]
    dx = np.zeros(shape, np.complex128)
    for o in range(C_out):
        grp = o // (C_out // groups)
        for c in range(Cg):
            for t in itertools.product(*[range(k) for k in K]):
                tap = tuple(k - 1 - ti for k, ti in zip(K, t)) if flip else t
                grid, mask = _taps_and_sources(S, K, O, stride, dilation, pads, padding_mode, t)
                contrib = np.conj(w[(o, c) + tap]) * g[:, o] * mask
                np.add.at(dx, (slice(None), grp * Cg + c) + grid, contrib)
    return _finish(dx, batched, layout)


def reference_filter_grad(x, g, filter_shape, *, stride=1, padding=0, dilation=1, groups=1,
                          padding_mode="zeros", layout="channels_first", flip=False):
    """dw[o, c, t] = sum over n and output positions p of conj(xpad[n, ci, p*s + t*d]) g[n, o, p]."""
    D = len(filter_shape) - 2
    x, _ = _prepare(x, D, layout)
    g, _ = _prepare(g, D, layout)
    x, g = x.astype(np.complex128), g.astype(np.complex128)
    S, K, stride, dilation, pads, O = _geometry(x.shape, filter_shape, stride, padding, dilation)
    C_out, Cg = filter_shape[:2]
    dw = np.zeros(filter_shape, np.complex128)
    for o in range(C_out):
        grp = o // (C_out // groups)
        for c in range(Cg):
            for t in itertools.product(*[range(k) for k in K]):
                grid, mask = _taps_and_sources(S, K, O, stride, dilation, pads, padding_mode, t)
                vals = x[:, grp * Cg + c][(slice(None),) + grid] * mask
                tap = tuple(k - 1 - ti for k, ti in zip(K, t)) if flip else t
                dw[(o, c) + tap] = np.sum(np.conj(vals) * g[:, o])
    return dw


def reference_conv_transpose(y, filters, bias=None, *, stride=1, padding=0, output_padding=0,
                             dilation=1, groups=1, layout="channels_first", flip=False):
    """out[n, ci, o*s + t*d - before] += y[n, co, o] * w[co, c, t] (no conjugation), on a grid
    of (in-1)*s - before - after + d*(k-1) + output_padding + 1 per axis, plus bias[ci]."""
    w = np.asarray(filters).astype(np.complex128)
    D = w.ndim - 2
    y, batched = _prepare(y, D, layout)
    y = y.astype(np.complex128)
    I = y.shape[2:]
    K = w.shape[2:]
    stride, dilation = _tuple(stride, D), _tuple(dilation, D)
    opad = _tuple(output_padding, D)
    pads = reference_pads(padding, I, K, stride, dilation)
    L = [(n - 1) * s - b - a + d * (k - 1) + op + 1
         for n, s, (b, a), d, k, op in zip(I, stride, pads, dilation, K, opad)]
    C_out, Cg = w.shape[:2]
    out = np.zeros((y.shape[0], Cg * groups) + tuple(L), np.complex128)
    for co in range(C_out):
        grp = co // (C_out // groups)
        for c in range(Cg):
            for t in itertools.product(*[range(k) for k in K]):
                tap = tuple(k - 1 - ti for k, ti in zip(K, t)) if flip else t
                dest, keep = [], []
                for ax in range(D):
                    p = np.arange(I[ax]) * stride[ax] + t[ax] * dilation[ax] - pads[ax][0]
                    keep.append((p >= 0) & (p < L[ax]))
                    dest.append(p)
                sel = np.ix_(*[np.nonzero(k)[0] for k in keep])
                where = np.ix_(*[d[k] for d, k in zip(dest, keep)])
                out[(slice(None), grp * Cg + c) + where] += \
                    w[(co, c) + tap] * y[:, co][(slice(None),) + sel]
    if bias is not None:
        out += np.asarray(bias).reshape((1, -1) + (1,) * D)
    return _finish(out, batched, layout)
