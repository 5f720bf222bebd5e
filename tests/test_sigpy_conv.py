"""gpuconv.sigpy_conv: sigpy's three convolution functions on gpuconv, against the operation
as sigpy defines it (written out here by summing shifted copies: the full convolution
subsampled from its first element, or its valid part), the adjoint identities, sigpy's own
CPU functions where sigpy is installed, and install()/uninstall() on a stand-in sigpy.conv."""
from __future__ import annotations

import itertools
import sys
import types

import numpy as np
import pytest

import gpuconv
from gpuconv import sigpy_conv
from reference import finfo


def _sigpy_definition(data, filt, mode, strides, multi_channel):
    """The convolution sigpy documents, summed directly: out_full[k] = sum_t x[k - t] w[t]
    over every spatial shift t of the filter, then the valid part (k in [n - 1, m - 1]) for
    "valid", then every s-th element from the first; float64/complex128."""
    D = filt.ndim - (2 if multi_channel else 0)
    big = np.complex128 if np.iscomplexobj(data) or np.iscomplexobj(filt) else np.float64
    x, w = np.asarray(data, big), np.asarray(filt, big)
    lead = x.shape[:x.ndim - D - (1 if multi_channel else 0)]
    m, n = x.shape[-D:], w.shape[-D:]
    x = x.reshape((-1, x.shape[-D - 1] if multi_channel else 1) + m)
    w = w.reshape(w.shape[:2] + n if multi_channel else (1, 1) + n)
    full = np.zeros((x.shape[0], w.shape[0]) + tuple(a + b - 1 for a, b in zip(m, n)), big)
    for t in itertools.product(*[range(k) for k in n]):
        at = (slice(None), slice(None)) + tuple(slice(ti, ti + mi) for ti, mi in zip(t, m))
        full[at] += np.einsum("bi...,oi->bo...", x, w[(slice(None), slice(None)) + t])
    if mode == "valid":
        full = full[(slice(None), slice(None)) + tuple(slice(b - 1, a) for a, b in zip(m, n))]
    s = strides or (1,) * D
    out = full[(slice(None), slice(None)) + tuple(slice(None, None, si) for si in s)]
    return out.reshape(lead + ((w.shape[0],) if multi_channel else ()) + out.shape[2:])


def _cases():
    rng = np.random.default_rng(11)
    out = []
    for multi_channel, mode, D, batch, dtype in itertools.product(
            (False, True), ("full", "valid"), (1, 2, 3), ((), (2, 3)),
            ("float32", "complex128")):
        n = tuple(int(k) for k in rng.integers(1, 4, D))
        m = tuple(k + int(rng.integers(0, 4)) for k in n)
        strides = None if rng.random() < 0.3 else tuple(int(s) for s in rng.integers(1, 3, D))
        out.append((multi_channel, mode, n, m, batch, dtype, strides))
    return out


def _arrays(case, seed=0):
    multi_channel, mode, n, m, batch, dtype, strides = case
    rng = np.random.default_rng(seed)
    c_i, c_o = (3, 2) if multi_channel else (None, None)
    data_shape = batch + ((c_i,) if multi_channel else ()) + m
    filt_shape = ((c_o, c_i) if multi_channel else ()) + n

    def arr(shape):
        a = rng.uniform(-1, 1, shape)
        if dtype.startswith("complex"):
            a = a + 1j * rng.uniform(-1, 1, shape)
        return a.astype(dtype)
    return arr(data_shape), arr(filt_shape), arr


def _bound(dtype, terms, magnitude):
    """gamma_n of the accumulator (float32 sums for float32, float64 for complex128, sqrt(2)
    more and 2 real products a term for complex) on the magnitude, plus the output rounding."""
    u = finfo(np.dtype(dtype).char.lower() if np.dtype(dtype).kind == "c" else dtype).eps / 2
    n = 2 * terms + 2 if np.dtype(dtype).kind == "c" else terms
    gamma = n * u / (1 - n * u) * (np.sqrt(2) if np.dtype(dtype).kind == "c" else 1)
    return gamma * magnitude + u * magnitude


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"mc{int(c[0])}-{c[1]}-{len(c[2])}d-"
                         f"b{len(c[4])}-{c[5]}-s{c[6]}")
def test_convolve_is_sigpys_operation(case):
    multi_channel, mode, n, m, batch, dtype, strides = case
    data, filt, _ = _arrays(case)
    got = sigpy_conv.convolve(data, filt, mode=mode, strides=strides,
                              multi_channel=multi_channel)
    exact = _sigpy_definition(data, filt, mode, strides, multi_channel)
    assert got.shape == exact.shape and got.dtype == data.dtype
    magnitude = _sigpy_definition(np.abs(data), np.abs(filt), mode, strides, multi_channel)
    terms = int(np.prod(filt.shape)) // (filt.shape[0] if multi_channel else 1)
    assert np.all(np.abs(got - exact) <= _bound(dtype, terms, magnitude))


@pytest.mark.parametrize("case", _cases()[::3], ids=lambda c: f"mc{int(c[0])}-{c[1]}-"
                         f"{len(c[2])}d-b{len(c[4])}-{c[5]}-s{c[6]}")
def test_adjoints_are_the_adjoints(case):
    """<A x, g> = <x, A^H g> and <B w, g> = <w, B^H g> (Hermitian for complex)."""
    multi_channel, mode, n, m, batch, dtype, strides = case
    data, filt, arr = _arrays(case, seed=1)
    y = sigpy_conv.convolve(data, filt, mode=mode, strides=strides, multi_channel=multi_channel)
    g = arr(y.shape)
    opts = dict(mode=mode, strides=strides, multi_channel=multi_channel)
    ax = sigpy_conv.convolve_data_adjoint(g, filt, data.shape, **opts)
    aw = sigpy_conv.convolve_filter_adjoint(g, data, filt.shape, **opts)
    assert ax.shape == data.shape and aw.shape == filt.shape
    assert ax.dtype == aw.dtype == g.dtype
    wide = np.complex128
    lhs = np.vdot(y.astype(wide), g.astype(wide))
    scale = np.sum(np.abs(y)) * np.max(np.abs(g)) + 1
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert abs(lhs - np.vdot(data.astype(wide), ax.astype(wide))) <= tol * scale
    assert abs(lhs - np.vdot(filt.astype(wide), aw.astype(wide))) <= tol * scale


def test_dtypes_follow_sigpy():
    """The result takes the first array's dtype, the other cast to it (sigpy's rule); a
    complex filter on real data would lose its imaginary part: a TypeError naming both."""
    rng = np.random.default_rng(2)
    data = rng.standard_normal((4, 9)).astype(np.float32)
    filt = rng.standard_normal(3)
    assert sigpy_conv.convolve(data, filt).dtype == np.float32
    with pytest.raises(TypeError, match="filt is complex .* data is not"):
        sigpy_conv.convolve(data, filt + 1j)
    g = rng.standard_normal((4, 11)).astype(np.float32)
    with pytest.raises(TypeError, match="data is complex .* output is not"):
        sigpy_conv.convolve_filter_adjoint(g, data + 1j, (3,))


@pytest.mark.parametrize("call,pattern", [
    (lambda: sigpy_conv.convolve(np.ones((2, 5, 5, 5, 5)), np.ones((2, 2, 2, 2))),
     "1, 2 or 3 spatial axes; a filt of shape \\(2, 2, 2, 2\\) .* has 4"),
    (lambda: sigpy_conv.convolve(np.ones((5, 5)), np.ones((2, 2)), strides=(1,)),
     "strides must have length 2"),
    (lambda: sigpy_conv.convolve(np.ones((2, 3, 5)), np.ones((4, 2, 2)), multi_channel=True),
     "has 3 channels .* expects 2"),
    (lambda: sigpy_conv.convolve(np.ones(5), np.ones(2), mode="same"), "'full' or 'valid'"),
    (lambda: sigpy_conv.convolve(np.ones(2), np.ones((2, 2))), "fewer than the 2 axes"),
    (lambda: sigpy_conv.convolve_data_adjoint(np.ones((3, 6)), np.ones(2), (2, 5)),
     "output of shape \\(3, 6\\) does not lead with \\(2,\\)"),
])
def test_bad_calls_say_what_is_wrong(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.fixture
def fake_sigpy(monkeypatch):
    """A stand-in sigpy.conv whose functions record their calls (sigpy itself may be absent)."""
    calls = []

    def recorder(name):
        def original(*args, **kwargs):
            calls.append(name)
            return name
        return original
    conv = types.ModuleType("sigpy.conv")
    for name in ("convolve", "convolve_data_adjoint", "convolve_filter_adjoint"):
        setattr(conv, name, recorder(name))
    package = types.ModuleType("sigpy")
    package.conv = conv
    monkeypatch.setitem(sys.modules, "sigpy", package)
    monkeypatch.setitem(sys.modules, "sigpy.conv", conv)
    yield conv, calls
    sigpy_conv.uninstall()


def test_install_replaces_and_uninstall_restores(fake_sigpy):
    conv, calls = fake_sigpy
    originals = {n: getattr(conv, n) for n in sigpy_conv.installed() or
                 ("convolve", "convolve_data_adjoint", "convolve_filter_adjoint")}
    sigpy_conv.install()
    sigpy_conv.install()  # twice: still one layer over sigpy's own
    assert set(sigpy_conv.installed()) == set(originals)
    x, w = np.arange(10.0).reshape(2, 5), np.array([1.0, -1.0])
    np.testing.assert_array_equal(conv.convolve(x, w), _sigpy_definition(x, w, "full", None,
                                                                         False))
    assert calls == []
    # 4 spatial axes: gpuconv does not take them, sigpy's own function does
    assert conv.convolve(np.ones((3, 3, 3, 3)), np.ones((2, 2, 2, 2))) == "convolve"
    assert conv.convolve_filter_adjoint(np.ones((2,) * 4), np.ones((3,) * 4),
                                        (2,) * 4) == "convolve_filter_adjoint"
    assert calls == ["convolve", "convolve_filter_adjoint"]
    with pytest.raises(ValueError, match="strides"):  # other errors are not handed over
        conv.convolve(x, w, strides=(1, 1))
    sigpy_conv.uninstall()
    assert {n: getattr(conv, n) for n in originals} == originals and not sigpy_conv.installed()


def test_against_sigpy_and_its_linops():
    """Where sigpy is installed: the three functions equal sigpy's own CPU functions, and
    once installed, sigpy.linop.ConvolveData and ConvolveFilter (forward and adjoint) run on
    gpuconv and give sigpy's results."""
    sigpy = pytest.importorskip("sigpy")
    import sigpy.conv
    import sigpy.linop
    own = {n: getattr(sigpy.conv, n) for n in ("convolve", "convolve_data_adjoint",
                                               "convolve_filter_adjoint")}
    assert not any(getattr(f, "__gpuconv__", False) for f in own.values())
    for case in _cases()[::4]:
        multi_channel, mode, n, m, batch, dtype, strides = case
        data, filt, arr = _arrays(case, seed=3)
        opts = dict(mode=mode, strides=strides, multi_channel=multi_channel)
        y = own["convolve"](data, filt, **opts)
        g = arr(y.shape)
        tol = 1e-4 if dtype == "float32" else 1e-11
        for name, args in (("convolve", (data, filt)),
                           ("convolve_data_adjoint", (g, filt, data.shape)),
                           ("convolve_filter_adjoint", (g, data, filt.shape))):
            want, got = own[name](*args, **opts), getattr(sigpy_conv, name)(*args, **opts)
            assert got.shape == want.shape and got.dtype == want.dtype, name
            assert np.max(np.abs(got - want)) <= tol * (np.max(np.abs(want)) + 1), name
    data, filt, arr = _arrays((True, "full", (3, 3), (8, 7), (2,), "complex128", (1, 2)))
    ran = []
    original = gpuconv.sigpy_conv.conv
    try:
        sigpy_conv.install()
        gpuconv.sigpy_conv.conv = lambda *a, **k: ran.append(1) or original(*a, **k)
        A = sigpy.linop.ConvolveData(data.shape, filt, strides=(1, 2), multi_channel=True)
        Bw = sigpy.linop.ConvolveFilter(filt.shape, data, strides=(1, 2), multi_channel=True)
        g = arr(A.oshape)
        got = (A(data), A.H(g), Bw(filt), Bw.H(g))
    finally:
        gpuconv.sigpy_conv.conv = original
        sigpy_conv.uninstall()
    opts = dict(strides=(1, 2), multi_channel=True)
    want = (own["convolve"](data, filt, **opts),
            own["convolve_data_adjoint"](g, filt, data.shape, **opts),
            own["convolve"](data, filt, **opts),
            own["convolve_filter_adjoint"](g, data, filt.shape, **opts))
    assert ran == [1, 1]  # both forward operators went through gpuconv.conv
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    assert all(sigpy.conv.__dict__[n] is f for n, f in own.items())
