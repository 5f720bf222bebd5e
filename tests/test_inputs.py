"""Bad input gets a clear ValueError/TypeError naming the argument and shapes, and the caller's
arrays are never modified; unusual but valid inputs (views, read-only, mixed dtypes) work."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import gpuconv
from reference import error_bound, reference_conv

RNG = np.random.default_rng(5)
X = RNG.standard_normal((2, 4, 6, 7)).astype(np.float32)
W = RNG.standard_normal((6, 2, 3, 3)).astype(np.float32)   # groups=2 fits X
B = RNG.standard_normal(6).astype(np.float32)

# (call kwargs, exception type, regex the message must match)
BAD = [
    (dict(filters=W[:, :1]), ValueError, r"channel mismatch.*C_in=4.*\(6, 1, 3, 3\)"),
    (dict(groups=3), ValueError, r"groups=3 must divide the input channels C_in=4"),
    (dict(filters=RNG.standard_normal((5, 2, 3, 3)).astype(np.float32)), ValueError,
     r"groups=2 must divide the number of filters C_out=5"),
    (dict(groups=0), ValueError, r"groups must be >= 1"),
    (dict(groups=-2), ValueError, r"groups must be >= 1"),
    (dict(groups=2.0), TypeError, r"groups must be an int"),
    (dict(padding=-1), ValueError, r"padding must be >= 0"),
    (dict(padding=((0, -1), (1, 1))), ValueError, r"padding must be >= 0"),
    (dict(stride=0), ValueError, r"stride must be >= 1"),
    (dict(stride=(1, 0)), ValueError, r"stride must be >= 1.*\(1, 0\)"),
    (dict(stride=1.5), TypeError, r"stride must be an int"),
    (dict(stride=True), TypeError, r"stride must be an int"),
    (dict(dilation=0), ValueError, r"dilation must be >= 1"),
    (dict(dilation=(2.0, 1)), TypeError, r"dilation must hold integers"),
    (dict(dilation=4), ValueError, r"kernel larger than the padded input.*spans \(9, 9\)"),
    (dict(filters=RNG.standard_normal((6, 2, 8, 3)).astype(np.float32)), ValueError,
     r"kernel larger than the padded input.*\(8, 3\)"),
    (dict(stride=(1, 1, 1)), ValueError, r"stride has 3 entries .* 2 spatial dim"),
    (dict(dilation=(1,)), ValueError, r"dilation has 1 entries .* 2 spatial dim"),
    (dict(padding=(1, 1, 1)), ValueError, r"padding has 3 entries .* 2 spatial dim"),
    (dict(padding=((1, 2, 3), 1)), TypeError, r"padding entries must be ints or"),
    (dict(padding="sam"), ValueError, r"padding must be .*'same'.*got 'sam'"),
    (dict(padding=1.0), TypeError, r"padding must be an int"),
    (dict(padding_mode="mirror"), ValueError, r"padding_mode must be one of .*got 'mirror'"),
    (dict(layout="NHWC"), ValueError, r"layout must be one of .*got 'NHWC'"),
    (dict(activation="softmax"), ValueError, r"activation must be one of"),
    (dict(device="gpu"), ValueError, r"device must be one of .*'gpu'"),
    (dict(device=0), TypeError, r"device must be a string"),
    (dict(flip=1), TypeError, r"flip must be True or False"),
    (dict(bias=B[:5]), ValueError, r"bias must have shape \(C_out,\) = \(6,\).*\(5,\)"),
    (dict(bias=B[None]), ValueError, r"bias must have shape .*\(1, 6\)"),
    (dict(x=X.astype(np.int32)), TypeError, r"x has dtype int32.*accepts float16"),
    (dict(filters=W.astype(bool)), TypeError, r"filters has dtype bool"),
    (dict(x=X.astype(object)), TypeError, r"x has dtype object"),
    (dict(bias=B.astype(np.int64)), TypeError, r"bias has dtype int64"),
    (dict(x=X.tolist()), TypeError, r"x must be a NumPy or CuPy array.*DLPack.*got builtins.list"),
    (dict(filters=3.0), TypeError, r"filters must be a NumPy or CuPy array"),
    (dict(padding=6, padding_mode="reflect"), ValueError,
     r"reflect padding must be smaller than the input.*\(6, 6\).*size 6"),
    (dict(padding=((0, 0), (7, 0)), padding_mode="reflect"), ValueError,
     r"reflect padding .*size 7"),
    (dict(padding=8, padding_mode="circular"), ValueError, r"circular padding may wrap"),
    (dict(filters=W[:, :, :0]), ValueError, r"empty kernels.*\(6, 2, 0, 3\)"),
    (dict(x=X[0, 0]), ValueError, r"x must have 4 dims .* or 3 .*\(6, 7\)"),
    (dict(filters=W[0, 0]), ValueError, r"filters must have shape .*got filters of shape \(3, 3\)"),
    (dict(filters=np.ones((1, 1, 1, 1, 1, 1), np.float32)), ValueError,
     r"filters must have shape .*\(1, 1, 1, 1, 1, 1\)"),
    (dict(filters=W[0]), ValueError, r"x must have 3 dims .*filters of shape \(2, 3, 3\)"),
    (dict(x=X.astype(np.complex64), activation="relu"), ValueError,
     r"activation='relu' is not defined for complex"),
]


@pytest.mark.parametrize("kwargs,exc,pattern", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_raises_and_leaves_inputs_alone(kwargs, exc, pattern):
    call = dict(x=X, filters=W, bias=None, groups=2, device="cpu")
    call.update(kwargs)
    arrays = {k: v for k, v in call.items() if isinstance(v, np.ndarray)}
    before = {k: v.copy() for k, v in arrays.items()}
    with pytest.raises(exc, match=pattern):
        gpuconv.conv(call.pop("x"), call.pop("filters"), call.pop("bias"), **call)
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{k} was modified")


@pytest.mark.parametrize("fname,rank", [("conv1d", 1), ("conv2d", 2), ("conv3d", 3)])
def test_rank_specific_functions_check_rank(fname, rank):
    f = getattr(gpuconv, fname)
    other = 2 if rank != 2 else 3
    w = np.ones((1, 1) + (2,) * other, np.float32)
    x = np.ones((1, 1) + (4,) * other, np.float32)
    with pytest.raises(ValueError, match=rf"{fname} needs filters of shape .*{rank + 2} dims"):
        f(x, w, device="cpu")
    w = np.ones((1, 1) + (2,) * rank, np.float32)
    x = np.ones((1, 1) + (4,) * rank, np.float32)
    assert f(x, w, device="cpu").shape == (1, 1) + (3,) * rank
    with pytest.raises(ValueError, match=r"x must have"):
        f(x[0, 0], w, device="cpu")


def _views():
    base = RNG.standard_normal((3, 9, 8, 4))
    return {
        "non-contiguous": base[::2, :, ::2, :],                     # (2, 9, 4, 4)
        "negative strides": base[:2, ::-1, :, ::-1][:, :, :4],       # (2, 9, 4, 4)
        "fortran order": np.asfortranarray(base[:2, :, :4]),
        "transposed": base[:2, :, :4].transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2),
    }


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("kind", list(_views()))
def test_strided_and_readonly_inputs(kind, layout):
    x = _views()[kind]
    x.flags.writeable = False
    C = x.shape[1] if layout == "channels_first" else x.shape[-1]
    w = RNG.standard_normal((3, C, 2, 3))[:, :, ::-1]  # a negatively strided filter bank too
    w.flags.writeable = False
    got = gpuconv.conv2d(x, w, padding=1, layout=layout, device="cpu")
    want = reference_conv(x, w, padding=1, layout=layout)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("xd,wd,bd,want", [
    (np.float16, np.float32, None, np.float32),
    (np.float32, np.float16, None, np.float32),
    (np.float16, np.float16, np.float32, np.float32),
    (np.float32, np.float64, None, np.float64),
    (np.float32, np.complex64, None, np.complex64),
    (np.float64, np.complex64, None, np.complex128),
    (np.complex64, np.float16, None, np.complex64),
])
def test_dtype_promotion(xd, wd, bd, want):
    x = RNG.standard_normal((1, 2, 5)).astype(xd)
    w = RNG.standard_normal((3, 2, 2)).astype(wd)
    b = None if bd is None else RNG.standard_normal(3).astype(bd)
    out = gpuconv.conv1d(x, w, b, device="cpu")
    assert out.dtype == np.dtype(want)
    ref = reference_conv(x, w, b)
    np.testing.assert_allclose(out, ref, rtol=1e-3 if want in (np.float32, np.complex64)
                               else 1e-12, atol=1e-6)


def test_empty_batch_and_unbatched():
    w = RNG.standard_normal((3, 2, 2, 2))
    assert gpuconv.conv2d(np.zeros((0, 2, 5, 5)), w, device="cpu").shape == (0, 3, 4, 4)
    x = RNG.standard_normal((2, 5, 5))
    out = gpuconv.conv2d(x, w, device="cpu")
    assert out.shape == (3, 4, 4)
    np.testing.assert_allclose(out, gpuconv.conv2d(x[None], w, device="cpu")[0])
    assert gpuconv.conv2d(np.moveaxis(x, 0, -1), w, layout="channels_last",
                          device="cpu").shape == (4, 4, 3)


def test_same_padding_output_sizes():
    for n in range(1, 12):
        for s in (1, 2, 3):
            for k in (1, 2, 3, 4):
                x = np.ones((1, 1, n))
                out = gpuconv.conv1d(x, np.ones((1, 1, k)), stride=s, padding="same",
                                     device="cpu")
                assert out.shape[-1] == -(-n // s), (n, s, k)


def test_same_padding_puts_the_extra_element_after():
    # kernel 2, stride 1: total padding 1, which TensorFlow puts after: y[i] = x[i] + x[i+1]
    x = np.array([[[1.0, 2.0, 4.0]]])
    out = gpuconv.conv1d(x, np.ones((1, 1, 2)), padding="same", device="cpu")
    np.testing.assert_array_equal(out[0, 0], [3.0, 6.0, 4.0])


@pytest.mark.parametrize("mode,want", [
    # x = [1, 2, 3], padding 2 each side, kernel [1] picks out the padded signal
    ("zeros", [0, 0, 1, 2, 3, 0, 0]),
    ("reflect", [3, 2, 1, 2, 3, 2, 1]),
    ("replicate", [1, 1, 1, 2, 3, 3, 3]),
    ("circular", [2, 3, 1, 2, 3, 1, 2]),
])
def test_padding_modes_by_hand(mode, want):
    x = np.array([[[1.0, 2.0, 3.0]]])
    out = gpuconv.conv1d(x, np.ones((1, 1, 1)), padding=2, padding_mode=mode, device="cpu")
    np.testing.assert_array_equal(out[0, 0], want)


def test_plans_are_reused_but_checks_still_see_types():
    """plan_conv keeps plans of valid calls; an argument equal in value but of another type
    (True for 1, 1.0 for 1) must still be refused after the valid one was kept."""
    from gpuconv import geometry
    x, w = np.ones((1, 2, 6, 6)), np.ones((3, 2, 3, 3))
    first = geometry.plan_conv(x.shape, w.shape, stride=1, padding=1)
    assert geometry.plan_conv(x.shape, w.shape, stride=1, padding=1) is first
    with pytest.raises((TypeError, ValueError), match="stride"):
        gpuconv.conv(x, w, stride=True, padding=1, device="cpu")
    with pytest.raises((TypeError, ValueError), match="padding"):
        gpuconv.conv(x, w, stride=1, padding=1.0, device="cpu")
    # unhashable arguments skip the cache and get the checks
    with pytest.raises((TypeError, ValueError), match="stride"):
        gpuconv.conv(x, w, stride=[1, {}], device="cpu")
    got = gpuconv.conv(x, w, stride=[1, 1], padding=[1, 1], device="cpu")
    np.testing.assert_array_equal(got, gpuconv.conv(x, w, stride=1, padding=1, device="cpu"))


def test_bfloat16_promotion_and_result():
    """bfloat16 (ml_dtypes) keeps its dtype alone, promotes with float16 to float32 (NumPy has
    no rule for that pair; PyTorch's), and with float32/float64/complex as NumPy does."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    x = RNG.standard_normal((1, 2, 9))
    w = RNG.standard_normal((3, 2, 3))
    for xd, wd, want in [(bf16, bf16, bf16), (bf16, np.float16, np.float32),
                         (np.float16, bf16, np.float32), (bf16, np.float32, np.float32),
                         (np.float64, bf16, np.float64), (bf16, np.complex64, np.complex64)]:
        xs, ws = x.astype(xd), w.astype(wd)
        out = gpuconv.conv1d(xs, ws, device="cpu")
        assert out.dtype == np.dtype(want), (xd, wd)
        exact, bound = error_bound(xs, ws, None, out.dtype, None)
        assert np.all(np.abs(out.astype(np.complex128) - exact) <= bound), (xd, wd)
    with pytest.raises(TypeError, match=r"accepts float16, .*bfloat16 \(ml_dtypes\)"):
        gpuconv.conv1d(x.astype(np.int8), w, device="cpu")


@pytest.mark.parametrize("algorithm,groups,kernel", [
    ("pointwise", 1, (1, 1)), ("gemm", 1, (3, 3)), ("gemm_shifted", 1, (3, 3)),
    ("depthwise", 8, (3, 3))])
@pytest.mark.parametrize("size", [9, 120])  # 120: a depthwise layer on worker threads
def test_float16_overflow_is_inf_without_warnings(algorithm, groups, kernel, size):
    """Sums past float16's 65504 are inf on the CPU as on the GPU (IEEE, as PyTorch gives
    them), with no NumPy overflow warning; the others are right."""
    rng = np.random.default_rng(2)
    x = (rng.uniform(-1, 1, (2, 8, size, size)) * 250).astype(np.float16)
    w = (rng.uniform(-1, 1, (8, 8 // groups) + kernel) * 250).astype(np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = gpuconv.conv(x, w, groups=groups, padding=kernel[0] // 2, device="cpu",
                           algorithm=algorithm)
    exact, bound = error_bound(x, w, None, np.float16, None, groups=groups,
                               padding=kernel[0] // 2)
    over = np.abs(exact) - bound > 65520  # rounds to inf (65504 is float16's largest)
    inside = np.abs(exact) + bound < 65504
    assert over.any() and inside.any()
    assert np.all(np.isinf(got[over])) and np.all(np.sign(got[over]) == np.sign(exact[over]))
    assert np.all(np.abs(got[inside] - exact[inside]) <= bound[inside])
