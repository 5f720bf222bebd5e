"""The CPU's shifted GEMM (``algorithm="gemm_shifted"``): its chunks of images and of output
rows, 1-D chunks of positions, groups, dilation along the shifted axis, dtypes whose sums are
wider than their output, each against the float64 reference and against the columns GEMM.
(The shape grid forces it on every case it applies to: tests/test_grid.py.)"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import cpu
from reference import error_bound, reference_conv

CASES = [
    # (x shape, filters shape, options)
    ((3, 6, 21, 19), (8, 3, 3, 4), dict(groups=2, padding=(1, 2), dilation=(1, 2))),
    ((2, 4, 17, 23), (5, 4, 2, 5), dict(stride=(3, 1), padding=2, padding_mode="reflect")),
    ((2, 4, 9, 8, 11), (6, 4, 2, 3, 3), dict(stride=(2, 1, 1), padding=1, dilation=(1, 2, 2))),
    ((3, 5, 301), (7, 5, 4), dict(padding=3, dilation=3, padding_mode="circular")),
    ((2, 4, 13, 14), (6, 4, 3, 3), dict(padding=1, layout="channels_last")),
]


def _chunk_spy(monkeypatch):
    """Record (images, output rows) of every chunk the shifted GEMM computes."""
    seen = []
    plan = cpu._chunk_plan

    def spy(*args, **kwargs):
        for item in plan(*args, **kwargs):
            seen.append((item[1], item[4][0]))
            yield item

    monkeypatch.setattr(cpu, "_chunk_plan", spy)
    return seen


def _data(x_shape, w_shape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
@pytest.mark.parametrize("chunks", ["whole", "images", "rows"])
def test_chunks_against_reference_and_columns_gemm(x_shape, w_shape, kw, chunks, monkeypatch):
    """Every chunking (all images at once, several images a chunk, a few output rows or 1-D
    positions a chunk) gives the reference's result and the columns GEMM's, to float64
    rounding of sums of C_in/groups * taps terms."""
    x, w, b = _data(x_shape, w_shape)
    if kw.get("layout") == "channels_last":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    x0 = x.copy()
    seen = _chunk_spy(monkeypatch)
    out_rows = None
    if chunks == "images":  # two images a chunk, each whole
        monkeypatch.setattr(cpu, "_chunks", lambda *a, **k: (2, out_rows))
    elif chunks == "rows":  # 1-D: a few positions; else a few rows of one image
        monkeypatch.setattr(cpu, "_chunks", lambda *a, **k: (1, 3 if len(x_shape) > 3 else 37))
    geom = gpuconv.plan_conv(x.shape, w.shape, b.shape, **kw)
    out_rows = geom.out_spatial[0]
    got = gpuconv.conv(x, w, b, device="cpu", algorithm="gemm_shifted", activation="relu", **kw)
    first = list(seen)  # the shifted GEMM's chunks (the columns GEMM below has its own)
    expect = np.maximum(reference_conv(x, w, b, **kw), 0)
    terms = w.shape[1] * np.prod(w.shape[2:])
    np.testing.assert_allclose(got, expect, rtol=0, atol=terms * 4 * np.finfo(float).eps
                               * np.abs(expect).max())
    columns = gpuconv.conv(x, w, b, device="cpu", algorithm="gemm", activation="relu", **kw)
    np.testing.assert_allclose(got, columns, rtol=0, atol=terms * 4 * np.finfo(float).eps
                               * np.abs(expect).max())
    np.testing.assert_array_equal(x, x0)
    if chunks == "images":
        assert first[0] == (2, out_rows) and len(first) == -(-x_shape[0] // 2)
    elif chunks == "rows":
        assert all(rows < out_rows for _, rows in first[:-1]) and len(first) > x_shape[0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.complex64])
def test_narrow_and_complex_dtypes(dtype):
    """float16 sums in float32 and is rounded once into its output; complex64 multiplies
    complex filters with no conjugation; both as the columns GEMM."""
    x, w, b = _data((2, 6, 11, 12), (4, 6, 3, 3), np.float64, seed=1)
    if np.dtype(dtype).kind == "c":
        x, w, b = x + 0.5j * x[::-1], w - 0.25j * w, b + 1j
    x, w, b = x.astype(dtype), w.astype(dtype), b.astype(dtype)
    got = gpuconv.conv(x, w, b, device="cpu", algorithm="gemm_shifted", padding=1)
    assert got.dtype == dtype
    columns = gpuconv.conv(x, w, b, device="cpu", algorithm="gemm", padding=1)
    expect = reference_conv(x, w, b, padding=1)
    sums = np.float32 if dtype == np.float16 else dtype
    tol = 54 * 4 * np.finfo(sums).eps * np.abs(expect).max()
    if dtype == np.float16:  # plus one rounding to float16 of the result
        tol += np.finfo(np.float16).eps * np.abs(expect).max()
    np.testing.assert_allclose(got, expect, rtol=0, atol=tol)
    np.testing.assert_allclose(got, columns, rtol=0, atol=tol)


def test_auto_takes_it_for_few_filters(monkeypatch):
    """``auto`` runs the shifted GEMM on a 3x3 layer of 64 filters of 32 kernels, the columns
    GEMM on 256 (:data:`gpuconv.algorithms.GEMM_SHIFTED_MAX_FILTERS`)."""
    ran = []
    for name in ("_gemm_shifted_forward", "_gemm_forward"):
        original = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, _o=original, _n=name: ran.append(_n) or _o(*a))
    for filters, method in ((64, "_gemm_shifted_forward"), (256, "_gemm_forward")):
        x, w, b = _data((1, 32, 10, 10), (filters, 32, 3, 3), np.float32)
        ran.clear()
        got = gpuconv.conv(x, w, b, padding=1, device="cpu")  # "auto": a GPU where there is one
        assert ran == [method]
        exact, bound = error_bound(x, w, b, np.float32, None, padding=1)
        assert np.all(np.abs(got - exact) <= bound)


# products whose inner dimension is one term (cpu._product: a broadcast multiply, not matmul):
# (x shape, filters shape, options, algorithm)
ONE_TERM = [
    ((2, 1, 300), (3, 1, 7), dict(padding=2), "gemm_shifted"),        # 1 kernel a filter, 1-D
    ((1, 1, 40, 9), (2, 1, 1, 5), {}, "gemm_shifted"),               # 1 x 5 kernels, 1 channel
    ((2, 1, 6, 7), (5, 1, 1, 1), {}, "pointwise"),                   # 1 -> 5 channels
    ((2, 6, 7, 1), (5, 1, 1, 1), dict(layout="channels_last"), "pointwise"),
    ((2, 1, 6, 7), (5, 1, 1, 1), dict(padding=1), "gemm"),          # 1x1, padded
]


def _spy_products(monkeypatch):
    """The inner dimension of every cpu._product call."""
    calls = []
    product = cpu._product
    monkeypatch.setattr(cpu, "_product", lambda a, b, out: calls.append(a.shape[-1])
                        or product(a, b, out))
    return calls


@pytest.mark.parametrize("x_shape, w_shape, kw, algorithm", ONE_TERM)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
def test_products_of_one_term(x_shape, w_shape, kw, algorithm, dtype, monkeypatch):
    """Products of one term go through cpu._product's multiply: against the float64
    reference."""
    calls = _spy_products(monkeypatch)
    x, w, b = _data(x_shape, w_shape, dtype)
    got = gpuconv.conv(x, w, b, algorithm=algorithm, device="cpu", **kw)
    exact, bound = error_bound(x, w, b, np.dtype(dtype), None, **kw)
    assert got.dtype == dtype and np.all(np.abs(got - exact) <= bound)
    assert 1 in calls


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((2, 3, 11, 12), (1, 3, 3, 3), dict(padding=1, stride=2)),
    ((2, 4, 30), (2, 2, 5), dict(groups=2, dilation=2)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_data_adjoint_of_one_filter_a_group(x_shape, w_shape, kw, dtype, monkeypatch):
    """The CPU data adjoint's products g @ w^T have one term for one filter a group (its own
    data adjoint forced: layers of stride 1 would run as a forward conv)."""
    from cases import Case
    from test_adjoint import check_input_grad
    monkeypatch.setattr(gpuconv.adjoint, "_by_phases", lambda geom, backend: False)
    calls = _spy_products(monkeypatch)
    x, w, _ = _data(x_shape, w_shape, dtype)
    g = gpuconv.conv(x, w, **kw)
    dx = gpuconv.conv_input_grad(g, w, x.shape, device="cpu", **kw)
    options = {**dict(stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                      layout="channels_first", flip=False), **kw}
    check_input_grad(Case("one filter a group", x, w, None, options), g, dx)
    assert 1 in calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_product_of_one_term_is_matmuls(dtype):
    """cpu._product with an inner dimension of 1 gives matmul's own values (one product a
    value, no sum), batch axes broadcast as matmul broadcasts them."""
    rng = np.random.default_rng(1)
    for a_shape, b_shape in [((4, 1), (1, 9)), ((2, 3, 1), (5, 2, 1, 6)), ((3, 4, 2), (2, 5))]:
        a, b = rng.standard_normal(a_shape).astype(dtype), rng.standard_normal(b_shape)
        b = b.astype(dtype)
        want = np.matmul(a, b)
        out = np.empty_like(want)
        assert cpu._product(a, b, out) is out
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("algorithm", ["gemm", "gemm_shifted"])
@pytest.mark.parametrize("view", ["reversed batch", "every other channel", "broadcast",
                                  "read-only"])
def test_unpadded_layers_read_the_callers_array(algorithm, view, monkeypatch):
    """Without padding (and in the accumulator dtype, rows contiguous) the GEMMs unroll from
    the caller's array as it lies (cpu._reads_caller): no padded copy, any batch and channel
    strides, the array never written, the same values as from a contiguous copy."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((3, 8, 9, 10)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    x = {"reversed batch": base[::-1, :4], "every other channel": base[:, ::2],
         "broadcast": np.broadcast_to(base[:1, :4], (3, 4, 9, 10)),
         "read-only": base[:, 4:].copy()}[view]
    x.flags.writeable = False if view == "read-only" else x.flags.writeable
    padded = []
    pad = cpu._padded
    monkeypatch.setattr(cpu, "_padded", lambda *a: padded.append(1) or pad(*a))
    got = gpuconv.conv2d(x, w, algorithm=algorithm, device="cpu")
    assert not padded
    want = gpuconv.conv2d(np.ascontiguousarray(x), w, algorithm=algorithm, device="cpu")
    np.testing.assert_array_equal(got, want)
    exact, bound = error_bound(x, w, None, np.dtype(np.float32), None)
    assert np.all(np.abs(got - exact) <= bound)
    padded.clear()
    gpuconv.conv2d(x, w, padding=1, algorithm=algorithm, device="cpu")
    assert padded  # a padded layer copies its input first
