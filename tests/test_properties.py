"""Random configurations (Hypothesis) against the reference, beyond the fixed grid."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import gpuconv
from reference import error_bound

DTYPES = ["float16", "float32", "float64", "complex64", "complex128"]


@st.composite
def conv_calls(draw):
    D = draw(st.integers(1, 3))
    K = tuple(draw(st.lists(st.integers(1, 4), min_size=D, max_size=D)))
    dil = tuple(draw(st.lists(st.integers(1, 3), min_size=D, max_size=D)))
    stride = tuple(draw(st.lists(st.integers(1, 3), min_size=D, max_size=D)))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    span = [d * (k - 1) + 1 for k, d in zip(K, dil)]
    limit = 9 if D < 3 else 6
    S = tuple(draw(st.integers(max(1, s - 2), max(s, 1) + limit - 3)) for s in span)
    pad_max = [n - 1 if mode == "reflect" else (n if mode == "circular" else 3) for n in S]
    pads = tuple((draw(st.integers(0, min(3, m))), draw(st.integers(0, min(3, m))))
                 for m in pad_max)
    # make sure the dilated kernel fits the padded input
    pads = tuple((b, a + max(0, s - (n + b + a))) for (b, a), s, n in zip(pads, span, S))
    if mode == "reflect" and any(max(p) >= n for p, n in zip(pads, S)):
        mode = "zeros"
    if mode == "circular" and any(max(p) > n for p, n in zip(pads, S)):
        mode = "zeros"
    groups = draw(st.integers(1, 3))
    Cg, Cog = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    N = draw(st.integers(1, 2))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(["channels_first", "channels_last"]))
    flip = draw(st.booleans())
    use_bias = draw(st.booleans())
    activation = None if dtype.startswith("complex") else draw(
        st.sampled_from([None, "relu", "sigmoid", "tanh"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    C_in, C_out = groups * Cg, groups * Cog
    shape = (N, C_in) + S if layout == "channels_first" else (N,) + S + (C_in,)

    def arr(shape):
        a = rng.uniform(-1, 1, shape)
        if dtype.startswith("complex"):
            a = a + 1j * rng.uniform(-1, 1, shape)
        return a.astype(dtype)

    options = dict(stride=stride, padding=pads, dilation=dil, groups=groups, padding_mode=mode,
                   layout=layout, flip=flip, activation=activation)
    return arr(shape), arr((C_out, Cg) + K), arr((C_out,)) if use_bias else None, options


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_calls())
def test_cpu_matches_reference_on_random_calls(call):
    x, w, b, options = call
    got = gpuconv.conv(x, w, b, device="cpu", **options)
    exact, bound = error_bound(x, w, b, got.dtype, **options)
    assert got.shape == exact.shape
    assert np.all(np.abs(got - exact) <= bound)
