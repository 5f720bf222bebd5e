"""conv_input_grad, conv_filter_grad and conv_transpose against the float64 references, the
adjoint (dot-product) identity, finite differences, and PyTorch's documented examples."""
from __future__ import annotations

import math
import types

import numpy as np
import pytest

import gpuconv
from cases import bfloat16_cases, grid_cases
from reference import (finfo, reference_conv, reference_conv_transpose, reference_filter_grad,
                       reference_input_grad)

CONV_OPTIONS = ("stride", "padding", "dilation", "groups", "padding_mode", "layout", "flip")


def _options(case):
    return {k: case.options[k] for k in CONV_OPTIONS}


def depthwise_layer(rng, batch, channels, spatial, kernel_size, dtype, multiplier=1):
    """x (batch, channels, *spatial) of random values (complex ones for a complex dtype) and
    zero filters (channels * multiplier, 1, *kernel_size) of a depthwise layer: the filter
    gradient tests' inputs."""
    x = rng.standard_normal((batch, channels) + tuple(spatial))
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(x.shape)
    return x.astype(dtype), np.zeros((channels * multiplier, 1) + tuple(kernel_size), dtype)


def _grad_out(case, rng):
    """A random gradient shaped like conv's result for this case, in the case's dtype."""
    shape = reference_conv(case.x, case.filters, **_options(case)).shape
    g = rng.uniform(-1, 1, shape)
    if case.x.dtype.kind == "c":
        g = g + 1j * rng.uniform(-1, 1, shape)
    return g.astype(case.x.dtype)


CASES = grid_cases()


def _bound(dtype, n_terms, magnitude, exact):
    """gamma_n * sum|terms| (+ the output dtype's rounding): the same rule as error_bound."""
    dtype = np.dtype(dtype)
    real = np.dtype(dtype.char.lower()) if dtype.kind == "c" else dtype
    acc = np.dtype(np.float32) if real == np.float16 or real.name == "bfloat16" else real
    u = np.finfo(acc).eps / 2
    n = n_terms + (2 if dtype.kind == "c" else 0)
    gamma = n * u / (1 - n * u) * (np.sqrt(2) if dtype.kind == "c" else 1)
    return (gamma * magnitude + finfo(real).eps / 2 * np.abs(exact)
            + finfo(real).smallest_subnormal)


def _fold_factor(case):
    # a padding mode can land up to two padded copies of a sample on it per axis
    return 1 if case.options["padding_mode"] == "zeros" else 3 ** case.filters.ndim - 2


def check_input_grad(case, g, got):
    opts = _options(case)
    exact = reference_input_grad(g, case.filters, case.x.shape, **opts)
    mag = reference_input_grad(np.abs(g), np.abs(case.filters), case.x.shape, **opts).real
    G = opts["groups"]
    n = case.filters.shape[0] // G * math.prod(case.filters.shape[2:]) * _fold_factor(case)
    assert got.shape == case.x.shape and got.dtype == np.result_type(g, case.filters)
    assert np.all(np.isfinite(got)), "unwritten or non-finite elements"
    err = np.abs(got - exact)
    assert np.all(err <= _bound(got.dtype, n, mag, exact)), err.max()


def check_filter_grad(case, g, got):
    opts = _options(case)
    exact = reference_filter_grad(case.x, g, case.filters.shape, **opts)
    mag = reference_filter_grad(np.abs(case.x), np.abs(g), case.filters.shape, **opts).real
    n = math.prod(g.shape) // case.filters.shape[0]  # batch x output positions
    assert got.shape == case.filters.shape and got.dtype == np.result_type(case.x, g)
    assert np.all(np.isfinite(got)), "unwritten or non-finite elements"
    err = np.abs(got - exact)
    assert np.all(err <= _bound(got.dtype, n, mag, exact)), err.max()


def test_each_backend_says_when_the_data_adjoint_goes_by_phases():
    """The CPU's GEMM wants >= 16 kernels a filter for the phases' forward convs of a strided
    layer; CUDA's kernels for few outputs (few_filters, the 128x8 tile) take them from one;
    layers of stride 1 (one forward conv) and plain depthwise go by phases on both."""
    from gpuconv import cpu, cuda
    from gpuconv.geometry import plan_conv
    stem = plan_conv((2, 3, 32, 32), (64, 3, 7, 7), stride=2, padding=3)
    wide = plan_conv((2, 16, 32, 32), (64, 16, 3, 3), stride=2, padding=1)
    dw = plan_conv((2, 8, 32, 32), (8, 1, 3, 3), groups=8)
    one = plan_conv((1, 1, 64, 64), (1, 1, 5, 5), padding=2)  # one channel, stride 1
    layers = (stem, wide, dw, one)
    assert [gpuconv.adjoint._by_phases(g, cpu) for g in layers] == [False, True, True, True]
    assert [gpuconv.adjoint._by_phases(g, cuda) for g in layers] == [True, True, True, True]


@pytest.fixture(params=["phases", "adjoint"])
def route(request, monkeypatch):
    """Both ways a data adjoint runs, each forced on every case whatever its channels: forward
    convs by stride phase (zero padding; other modes always fold through the backend's own),
    and the backend's own data adjoint."""
    monkeypatch.setattr(gpuconv.adjoint, "_by_phases",
                        lambda geom, backend: request.param == "phases")
    return request.param


@pytest.mark.parametrize("case", CASES + bfloat16_cases(), ids=lambda c: c.name)
def test_cpu_adjoints_against_reference(case, route):
    rng = np.random.default_rng(abs(hash(case.name)) % 2**32)
    g = _grad_out(case, rng)
    before = (case.x.copy(), case.filters.copy(), g.copy())
    dx = gpuconv.conv_input_grad(g, case.filters, case.x.shape, device="cpu", **_options(case))
    check_input_grad(case, g, dx)
    dw = gpuconv.conv_filter_grad(case.x, g, case.filters.shape, device="cpu", **_options(case))
    check_filter_grad(case, g, dw)
    for a, b in zip((case.x, case.filters, g), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", [c for c in CASES if max(c.options["stride"]) > 1
                                  and max(c.options["dilation"]) == 1], ids=lambda c: c.name)
def test_cpu_filter_grad_from_stride_phases(case, monkeypatch):
    """The filter gradient's unrolling from the input's stride phases (test_grid.py's
    PHASED_CASES: forced, the grid's layers being small)."""
    from test_grid import spy_phase_splits
    splits = spy_phase_splits(monkeypatch)
    g = _grad_out(case, np.random.default_rng(abs(hash(case.name)) % 2**32))
    dw = gpuconv.conv_filter_grad(case.x, g, case.filters.shape, device="cpu", **_options(case))
    check_filter_grad(case, g, dw)
    assert splits, "the stride phases were not used"


@pytest.mark.parametrize("case", [c for c in CASES if c.x.dtype in (np.float64, np.complex128)],
                         ids=lambda c: c.name)
def test_dot_product_identity(case):
    """vdot(conv(x, w), g) == vdot(x, conv_input_grad(g)) == vdot(w, conv_filter_grad(x, g)),
    for the reference (checking the oracle) and for the CPU backend."""
    rng = np.random.default_rng(abs(hash(case.name)) % 2**32)
    g = _grad_out(case, rng)
    opts = _options(case)
    x, w = case.x, case.filters
    y = gpuconv.conv(x, w, device="cpu", **opts)
    lhs = np.vdot(y, g)
    # magnitude of the triple sum behind each side, for a rounding bound
    scale = np.vdot(reference_conv(np.abs(x), np.abs(w), **opts), np.abs(g)).real
    n = math.prod(w.shape[1:]) * _fold_factor(case) + g.size
    tol = 4 * n * np.finfo(np.float64).eps * scale
    for label, dx, dw in [
        ("reference", reference_input_grad(g, w, x.shape, **opts),
         reference_filter_grad(x, g, w.shape, **opts)),
        ("cpu", gpuconv.conv_input_grad(g, w, x.shape, device="cpu", **opts),
         gpuconv.conv_filter_grad(x, g, w.shape, device="cpu", **opts)),
    ]:
        assert abs(lhs - np.vdot(x, dx)) <= tol, label
        assert abs(lhs - np.vdot(w, dw)) <= tol, label


@pytest.mark.parametrize("kw", [
    dict(),
    dict(stride=2, padding="same", padding_mode="reflect"),
    dict(stride=(1, 2), dilation=(2, 1), padding=((1, 0), (2, 1)), padding_mode="circular",
         groups=2, layout="channels_last", flip=True),
])
def test_finite_differences(kw):
    """Central differences of L = <conv(x, w), g> along random directions match both gradients."""
    rng = np.random.default_rng(3)
    cl = kw.get("layout") == "channels_last"
    x = rng.standard_normal((2, 7, 8, 4) if cl else (2, 4, 7, 8))
    w = rng.standard_normal((6, 4 // kw.get("groups", 1), 3, 2))
    g = rng.standard_normal(gpuconv.conv(x, w, device="cpu", **kw).shape)
    loss = lambda x, w: float(np.sum(gpuconv.conv(x, w, device="cpu", **kw) * g))  # noqa: E731
    dx = gpuconv.conv_input_grad(g, w, x.shape, device="cpu", **kw)
    dw = gpuconv.conv_filter_grad(x, g, w.shape, device="cpu", **kw)
    h = 1e-3
    for _ in range(3):
        vx, vw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
        fd_x = (loss(x + h * vx, w) - loss(x - h * vx, w)) / (2 * h)
        fd_w = (loss(x, w + h * vw) - loss(x, w - h * vw)) / (2 * h)
        # L is linear in each argument: the difference quotient is exact up to rounding
        assert fd_x == pytest.approx(np.sum(vx * dx), rel=1e-8, abs=1e-8)
        assert fd_w == pytest.approx(np.sum(vw * dw), rel=1e-8, abs=1e-8)


# PyTorch's documented ConvTranspose2d examples (shapes from the docs; values from the reference)
@pytest.mark.parametrize("y_shape,w_shape,kw,out_shape", [
    ((20, 16, 50, 100), (16, 33, 3, 3), dict(stride=2), (20, 33, 101, 201)),
    ((20, 16, 50, 100), (16, 33, 3, 5), dict(stride=(2, 1), padding=(4, 2)), (20, 33, 93, 100)),
    ((1, 16, 6, 6), (16, 16, 3, 3), dict(stride=2, padding=1, output_padding=1),
     (1, 16, 12, 12)),
])
def test_conv_transpose_pytorch_examples(y_shape, w_shape, kw, out_shape):
    rng = np.random.default_rng(0)
    y = rng.standard_normal(y_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[1]).astype(np.float32)
    out = gpuconv.conv_transpose2d(y, w, b, device="cpu", **kw)
    assert out.shape == out_shape
    # values for one batch element and 4 result channels (result channel ci uses only w[:, ci];
    # the reference is slow)
    want = reference_conv_transpose(y[:1], w[:, :4], b[:4], **kw).real
    n = w_shape[0] * math.prod(w_shape[2:]) + 1
    mag = reference_conv_transpose(np.abs(y[:1]), np.abs(w[:, :4]), np.abs(b[:4]), **kw).real
    assert np.all(np.abs(out[:1, :4] - want) <= _bound(np.float32, n, mag, want))


TRANSPOSE_CASES = [c for c in CASES if c.options["padding_mode"] == "zeros"
                   and not isinstance(c.options["padding"], str)]


def transpose_call(case):
    """The grid's case read backwards: conv's result shape in, conv's input shape out."""
    opts = {k: case.options[k] for k in ("stride", "padding", "dilation", "groups", "layout",
                                         "flip")}
    rng = np.random.default_rng(1)
    y = _grad_out(case, rng)
    b = rng.uniform(-1, 1, case.filters.shape[1] * opts["groups"]).astype(case.x.dtype)
    return y, b, opts


def check_transpose(case, y, b, opts, got):
    exact = reference_conv_transpose(y, case.filters, b, **opts)
    mag = reference_conv_transpose(np.abs(y), np.abs(case.filters), np.abs(b), **opts).real
    n = case.filters.shape[0] // opts["groups"] * math.prod(case.filters.shape[2:]) + 1
    assert got.shape == exact.shape and got.dtype == np.result_type(y, case.filters, b)
    assert np.all(np.isfinite(got)), "unwritten or non-finite elements"
    assert np.all(np.abs(got - exact) <= _bound(got.dtype, n, mag, exact))


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: c.name)
def test_conv_transpose_against_reference(case, route):
    y, b, opts = transpose_call(case)
    check_transpose(case, y, b, opts, gpuconv.conv_transpose(y, case.filters, b, device="cpu",
                                                             **opts))


def test_conv_transpose_is_the_input_grad_for_real_filters():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 11, 10))
    w = rng.standard_normal((6, 2, 3, 3))
    kw = dict(stride=2, padding=1, groups=2)
    g = rng.standard_normal(gpuconv.conv(x, w, device="cpu", **kw).shape)
    t = gpuconv.conv_transpose(g, w, device="cpu", output_padding=(0, 1), **kw)
    assert t.shape == x.shape
    np.testing.assert_allclose(t, gpuconv.conv_input_grad(g, w, x.shape, device="cpu", **kw),
                               rtol=1e-13, atol=1e-13)


BAD = [
    (lambda y, w: gpuconv.conv_transpose(y, w, stride=2, output_padding=2), ValueError,
     r"output_padding must be smaller than max\(stride, dilation\)"),
    (lambda y, w: gpuconv.conv_transpose(y, w, padding="same"), ValueError,
     r"conv_transpose takes an int"),
    (lambda y, w: gpuconv.conv_transpose(y, w, np.ones(4)), ValueError,
     r"bias must have shape \(C_in,\) = \(3,\)"),
    (lambda y, w: gpuconv.conv_transpose(y[:, :2], w), ValueError, r"channel mismatch"),
    (lambda y, w: gpuconv.conv_transpose(y, w, padding=5), ValueError, r"empty result"),
    (lambda y, w: gpuconv.conv_transpose1d(y, w), ValueError, r"conv_transpose1d needs filters"),
    (lambda y, w: gpuconv.conv_input_grad(y, w, (2, 3, 9, 9)), ValueError,
     r"input_shape \(2, 3, 9, 9\) cannot produce grad_out of shape \(2, 4, 6, 6\)"),
    (lambda y, w: gpuconv.conv_input_grad(y, w, (2, 5, 8, 8)), ValueError, r"channel mismatch"),
    (lambda y, w: gpuconv.conv_input_grad(y, w, "big"), TypeError, r"input_shape must be a tuple"),
    (lambda y, w: gpuconv.conv_filter_grad(np.ones((2, 3, 8, 8)), y, (4, 3, 2, 2)), ValueError,
     r"cannot produce grad_out of shape \(2, 4, 6, 6\)"),
    (lambda y, w: gpuconv.conv_filter_grad(np.ones((2, 3, 8, 8)), y, (4, 3, -1, 3)),
     ValueError, r"filter_shape must not hold negative"),
    (lambda y, w: gpuconv.conv_filter_grad(np.ones((2, 3, 8, 8), int), y, w.shape), TypeError,
     r"x has dtype int64"),
    (lambda y, w: gpuconv.conv_input_grad(y.tolist(), w, (2, 3, 8, 8)), TypeError,
     r"grad_out must be a NumPy or CuPy array"),
]


@pytest.mark.parametrize("call,exc,pattern", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_adjoint_input(call, exc, pattern):
    y = np.ones((2, 4, 6, 6))   # conv of (2, 3, 8, 8) by 3x3 filters
    w = np.ones((4, 3, 3, 3))
    y0, w0 = y.copy(), w.copy()
    with pytest.raises(exc, match=pattern):
        call(y, w)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(w, w0)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES + bfloat16_cases(), ids=lambda c: c.name)
def test_gpu_adjoints_against_cpu_and_reference(case, gpu, route):
    cp = gpu
    rng = np.random.default_rng(abs(hash(case.name)) % 2**32)
    g = _grad_out(case, rng)
    opts = _options(case)
    xg, wg, gg = cp.asarray(case.x), cp.asarray(case.filters), cp.asarray(g)
    dx = gpuconv.conv_input_grad(gg, wg, case.x.shape, device="cuda", **opts)
    dw = gpuconv.conv_filter_grad(xg, gg, case.filters.shape, device="cuda", **opts)
    assert isinstance(dx, cp.ndarray) and isinstance(dw, cp.ndarray)
    check_input_grad(case, g, cp.asnumpy(dx))
    check_filter_grad(case, g, cp.asnumpy(dw))
    # bit-for-bit repeatable
    again = gpuconv.conv_filter_grad(xg, gg, case.filters.shape, device="cuda", **opts)
    assert cp.asnumpy(again).tobytes() == cp.asnumpy(dw).tobytes()
    again = gpuconv.conv_input_grad(gg, wg, case.x.shape, device="cuda", **opts)
    assert cp.asnumpy(again).tobytes() == cp.asnumpy(dx).tobytes()


@pytest.mark.gpu
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: c.name)
def test_gpu_conv_transpose(case, gpu, route):
    cp = gpu
    y, b, opts = transpose_call(case)
    got = gpuconv.conv_transpose(cp.asarray(y), cp.asarray(case.filters), cp.asarray(b),
                                 device="cuda", **opts)
    assert isinstance(got, cp.ndarray)
    check_transpose(case, y, b, opts, cp.asnumpy(got))


@pytest.mark.gpu
def test_gpu_filter_grad_repeatable_on_a_large_reduction(gpu):
    """Many chunks per filter element: still bit-identical run after run."""
    cp = gpu
    rng = np.random.default_rng(4)
    x = cp.asarray(rng.standard_normal((16, 32, 64, 64)).astype(np.float32))
    g = cp.asarray(rng.standard_normal((16, 64, 64, 64)).astype(np.float32))
    first = gpuconv.conv_filter_grad(x, g, (64, 32, 3, 3), padding=1)
    for _ in range(3):
        again = gpuconv.conv_filter_grad(x, g, (64, 32, 3, 3), padding=1)
        assert cp.asnumpy(again).tobytes() == cp.asnumpy(first).tobytes()
    cpu = gpuconv.conv_filter_grad(cp.asnumpy(x), cp.asnumpy(g), (64, 32, 3, 3), padding=1,
                                   device="cpu")
    n = 16 * 64 * 64
    mag = gpuconv.conv_filter_grad(np.abs(cp.asnumpy(x)).astype(np.float64),
                                   np.abs(cp.asnumpy(g)).astype(np.float64), (64, 32, 3, 3),
                                   padding=1, device="cpu")
    assert np.all(np.abs(cp.asnumpy(first) - cpu) <= 2 * _bound(np.float32, n, mag, cpu))


@pytest.mark.gpu
@pytest.mark.parametrize("tile", ["64x64", "128x64", "128x128"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gpu_filter_grad_gemm_tiles(tile, dtype, gpu, monkeypatch):
    """Each filter-gradient GEMM tile forced on a layer with 180 terms a filter and 140
    filters (several partly filled tiles both ways), against the reference; repeatable."""
    from gpuconv import cuda
    cp = gpu
    monkeypatch.setattr(cuda, "filter_grad_by_gemm", lambda geom: True)
    monkeypatch.setattr(cuda, "filter_grad_tile", lambda geom, dt: tile)
    rng = np.random.default_rng(31)
    x = rng.standard_normal((3, 20, 13, 11)).astype(dtype)
    w = np.zeros((140, 20, 3, 3), dtype)
    opts = dict(stride=2, padding=1, dilation=1, groups=1, padding_mode="zeros",
                layout="channels_first", flip=False)
    case = types.SimpleNamespace(x=x, filters=w, bias=None, options=opts)
    g = _grad_out(case, rng)
    dw = gpuconv.conv_filter_grad(cp.asarray(x), cp.asarray(g), w.shape, device="cuda", **opts)
    check_filter_grad(case, g, cp.asnumpy(dw))
    again = gpuconv.conv_filter_grad(cp.asarray(x), cp.asarray(g), w.shape, device="cuda",
                                     **opts)
    assert cp.asnumpy(again).tobytes() == cp.asnumpy(dw).tobytes()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.complex64])
@pytest.mark.parametrize("kernel_size,stride", [((3, 3), 1), ((5, 5), 2), ((7,), 1)])
def test_gpu_depthwise_filter_grad(kernel_size, stride, dtype, gpu):
    """conv_depthwise_filter_grad on a depthwise layer with many chunks a filter, against the
    reference; the same bits on every run (fixed chunks, fixed tree sums)."""
    from gpuconv import cuda
    cp = gpu
    spatial = (61, 47) if len(kernel_size) == 2 else (3001,)
    rng = np.random.default_rng(32)
    x, w = depthwise_layer(rng, 5, 24, spatial, kernel_size, dtype)
    opts = dict(stride=stride, padding=2, dilation=1, groups=24, padding_mode="zeros",
                layout="channels_first", flip=False)
    case = types.SimpleNamespace(x=x, filters=w, bias=None, options=opts)
    g = _grad_out(case, rng)
    from gpuconv.geometry import plan_conv
    geom = plan_conv(x.shape, w.shape, stride=stride, padding=2, groups=24)
    assert cuda.filter_grad_kernel(geom, np.dtype(dtype)) == "depthwise"
    first = gpuconv.conv_filter_grad(cp.asarray(x), cp.asarray(g), w.shape, device="cuda", **opts)
    check_filter_grad(case, g, cp.asnumpy(first))
    again = gpuconv.conv_filter_grad(cp.asarray(x), cp.asarray(g), w.shape, device="cuda", **opts)
    assert cp.asnumpy(again).tobytes() == cp.asnumpy(first).tobytes()
