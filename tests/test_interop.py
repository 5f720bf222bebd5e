"""Arrays from other libraries: viewed without copies, results handed back as the caller's kind.

CI has neither PyTorch nor a GPU, so the generic DLPack path is exercised there through a small
foreign array type below; the PyTorch and JAX tests run wherever those are installed (CPU), and
the CUDA ones where a GPU is usable too.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv.interop import as_array

from reference import error_bound

RNG = np.random.default_rng(7)
X = RNG.standard_normal((2, 3, 9, 8)).astype(np.float32)
W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
B = RNG.standard_normal(4).astype(np.float32)


class Foreign:
    """A minimal array of some other library: it exposes its memory only through DLPack."""

    def __init__(self, array, device_type=1):
        self._a, self._device_type = array, device_type
        self.shape, self.dtype = array.shape, array.dtype

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return (self._device_type, 0)


def test_numpy_in_numpy_out():
    y = gpuconv.conv2d(X, W, B, device="cpu")
    assert type(y) is np.ndarray


def test_dlpack_producer_is_viewed_without_a_copy():
    x = X.copy()
    view = as_array(Foreign(x), "x")
    assert isinstance(view, np.ndarray) and np.shares_memory(view, x)


def test_dlpack_producer_convolves_like_numpy_and_is_not_modified():
    x, w, b = X.copy(), W.copy(), B.copy()
    y = gpuconv.conv2d(Foreign(x), Foreign(w), Foreign(b), padding=1, device="cpu")
    assert type(y) is np.ndarray  # no way back into an unknown library: NumPy result
    np.testing.assert_array_equal(y, gpuconv.conv2d(X, W, B, padding=1, device="cpu"))
    exact, bound = error_bound(X, W, B, np.float32, None, padding=1)
    assert np.all(np.abs(y - exact) <= bound)
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(w, W)


def test_dlpack_producer_on_another_accelerator_is_refused():
    with pytest.raises(TypeError, match=r"x .*Foreign.* DLPack device type 14"):
        gpuconv.conv2d(Foreign(X, device_type=14), W)


def test_dlpack_producer_of_an_unaccepted_dtype_names_it():
    with pytest.raises(TypeError, match=r"filters has dtype int32"):
        gpuconv.conv2d(X, Foreign(W.astype(np.int32)))


def test_cuda_array_interface_without_cupy_says_what_is_missing():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed: the view is tested with a GPU below")
    except ImportError:
        pass

    class DeviceArray:  # what Numba's device arrays look like from outside
        shape, dtype = X.shape, X.dtype
        __cuda_array_interface__ = {"shape": X.shape, "typestr": "<f4", "data": (0, False),
                                    "version": 3}

    with pytest.raises(TypeError, match=r"x is a GPU array .*DeviceArray.* CuPy"):
        gpuconv.conv2d(DeviceArray(), W)


# ---------------------------------------------------------------------------- PyTorch (CPU)

@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def test_torch_cpu_tensor_is_viewed_without_a_copy(torch):
    t = torch.from_numpy(X.copy())
    view = as_array(t, "x")
    assert isinstance(view, np.ndarray) and view.ctypes.data == t.data_ptr()
    # a permuted (channels-last) view keeps its strides rather than being made contiguous
    tl = t.permute(0, 2, 3, 1)
    vl = as_array(tl, "x")
    assert vl.ctypes.data == t.data_ptr() and vl.shape == tuple(tl.shape)


def test_torch_tensor_in_torch_tensor_out(torch):
    tx, tw, tb = (torch.from_numpy(a.copy()) for a in (X, W, B))
    y = gpuconv.conv2d(tx, tw, tb, padding=1, stride=(1, 2), device="cpu")
    assert isinstance(y, torch.Tensor) and y.device.type == "cpu" and y.dtype == torch.float32
    np.testing.assert_array_equal(y.numpy(), gpuconv.conv2d(X, W, B, padding=1, stride=(1, 2),
                                                            device="cpu"))
    # against PyTorch's own convolution, within the bound for float32 and 27 summed terms
    want = torch.nn.functional.conv2d(tx.double(), tw.double(), tb.double(), padding=1,
                                      stride=(1, 2)).numpy()
    _, bound = error_bound(X, W, B, np.float32, None, padding=1, stride=(1, 2))
    assert np.all(np.abs(y.numpy() - want) <= bound)
    for t, a in ((tx, X), (tw, W), (tb, B)):
        np.testing.assert_array_equal(t.numpy(), a)


def test_torch_channels_last_and_mixed_kinds(torch):
    tl = torch.from_numpy(X.copy()).permute(0, 2, 3, 1)       # (N, H, W, C) view
    y = gpuconv.conv2d(tl, W, layout="channels_last", device="cpu")  # filters stay NumPy
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (2, 7, 6, 4)
    np.testing.assert_array_equal(
        y.numpy(), gpuconv.conv2d(np.ascontiguousarray(X.transpose(0, 2, 3, 1)), W,
                                  layout="channels_last", device="cpu"))


def test_torch_tensors_through_the_adjoints_and_transpose(torch):
    g = RNG.standard_normal((2, 4, 7, 6)).astype(np.float32)
    tx, tw, tg = (torch.from_numpy(a.copy()) for a in (X, W, g))
    gi = gpuconv.conv_input_grad(tg, tw, tx.shape, device="cpu")
    gf = gpuconv.conv_filter_grad(tx, tg, tw.shape, device="cpu")
    tt = gpuconv.conv_transpose(tg, tw, device="cpu")
    for r in (gi, gf, tt):
        assert isinstance(r, torch.Tensor)
    # the same computation as for NumPy inputs (whose accuracy test_adjoint checks)
    np.testing.assert_array_equal(gi.numpy(), gpuconv.conv_input_grad(g, W, X.shape, device="cpu"))
    np.testing.assert_array_equal(gf.numpy(), gpuconv.conv_filter_grad(X, g, W.shape, device="cpu"))
    np.testing.assert_array_equal(tt.numpy(), gi.numpy())  # transpose == input grad here


def test_torch_complex_conjugate_view(torch):
    xc = (RNG.standard_normal((1, 2, 6)) + 1j * RNG.standard_normal((1, 2, 6))).astype(np.complex64)
    wc = (RNG.standard_normal((3, 2, 2)) + 1j * RNG.standard_normal((3, 2, 2))).astype(np.complex64)
    t = torch.from_numpy(xc.copy()).conj()   # lazily conjugated: no DLPack form of its own
    y = gpuconv.conv1d(t, wc, device="cpu")
    np.testing.assert_array_equal(y.numpy(), gpuconv.conv1d(np.conj(xc), wc, device="cpu"))


def test_torch_layers_keep_the_callers_kind(torch):
    layer = gpuconv.Conv2D(2, 3, seed=0)
    y = layer(torch.from_numpy(X.transpose(0, 2, 3, 1).copy()))
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (2, 7, 6, 2)
    assert isinstance(layer.filters, np.ndarray)


def test_torch_bad_tensors_are_refused_by_name(torch):
    t = torch.from_numpy(X.copy())
    with pytest.raises(TypeError, match=r"x is a PyTorch tensor that requires grad.*detach"):
        gpuconv.conv2d(t.requires_grad_(True), W)
    with pytest.raises(TypeError, match=r"filters .*bfloat16.*ml_dtypes\.bfloat16"):
        gpuconv.conv2d(X, torch.from_numpy(W).to(torch.bfloat16))
    with pytest.raises(TypeError, match=r"x has dtype int64"):
        gpuconv.conv2d(torch.zeros((1, 3, 5, 5), dtype=torch.int64), W)


# ---------------------------------------------------------------------------- JAX (CPU)

def test_jax_array_in_jax_array_out():
    jax = pytest.importorskip("jax")
    jx = jax.device_put(X, jax.devices("cpu")[0])  # (where jax has a GPU, its default device)
    view = as_array(jx, "x")
    assert isinstance(view, np.ndarray) and view.ctypes.data == jx.unsafe_buffer_pointer()
    y = gpuconv.conv2d(jx, W, B, padding="same", device="cpu")
    assert isinstance(y, jax.Array) and y.shape == (2, 4, 9, 8)
    np.testing.assert_array_equal(np.asarray(y), gpuconv.conv2d(X, W, B, padding="same",
                                                                device="cpu"))


# ---------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_cupy_in_cupy_out(gpu):
    y = gpuconv.conv2d(gpu.asarray(X), gpu.asarray(W), device="cuda")
    assert isinstance(y, gpu.ndarray)


@pytest.mark.gpu
def test_cuda_array_interface_is_viewed_without_a_copy(gpu):
    a = gpu.asarray(X)

    class DeviceArray:
        def __init__(self, a):
            self.shape, self.dtype = a.shape, a.dtype
            self.__cuda_array_interface__ = a.__cuda_array_interface__

    view = as_array(DeviceArray(a), "x")
    assert isinstance(view, gpu.ndarray) and view.data.ptr == a.data.ptr
    y = gpuconv.conv2d(DeviceArray(a), gpu.asarray(W))
    assert isinstance(y, gpu.ndarray)
    np.testing.assert_array_equal(gpu.asnumpy(y), gpu.asnumpy(gpuconv.conv2d(a, gpu.asarray(W))))


@pytest.mark.gpu
def test_torch_cuda_tensor_in_torch_cuda_tensor_out(gpu, torch):
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    tx = torch.from_numpy(X).cuda()
    tw = torch.from_numpy(W).cuda()
    assert as_array(tx, "x").data.ptr == tx.data_ptr()  # the tensor's own memory
    y = gpuconv.conv2d(tx, tw, padding=1)
    assert isinstance(y, torch.Tensor) and y.is_cuda and y.device == tx.device
    exact, bound = error_bound(X, W, None, np.float32, None, padding=1)
    assert np.all(np.abs(y.cpu().numpy() - exact) <= bound)


@pytest.mark.gpu
def test_jax_gpu_array_in_jax_gpu_array_out(gpu):
    jax = pytest.importorskip("jax")
    try:
        jax_gpu = jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("jax sees no GPU")
    jx = jax.device_put(X, jax_gpu)
    view = as_array(jx, "x")
    assert isinstance(view, gpu.ndarray) and view.data.ptr == jx.unsafe_buffer_pointer()
    y = gpuconv.conv2d(jx, W, padding=1)
    assert isinstance(y, jax.Array) and y.devices() == {jax_gpu}
    exact, bound = error_bound(X, W, None, np.float32, None, padding=1)
    assert np.all(np.abs(np.asarray(y) - exact) <= bound)
