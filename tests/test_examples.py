"""The seed documents' worked examples, with values given by the documents (not by gpuconv)."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv

IMAGE = np.array([[1, 1, 1, 0, 0],
                  [0, 1, 1, 1, 0],
                  [0, 0, 1, 1, 1],
                  [0, 0, 1, 1, 0],
                  [0, 1, 1, 0, 0]], dtype=np.float32)
KERNEL = np.array([[1, 0, 1],
                   [0, 1, 0],
                   [1, 0, 1]], dtype=np.float32)
EXPECTED = np.array([[4, 3, 4],
                     [2, 4, 3],
                     [2, 3, 4]], dtype=np.float32)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _device(request, device):
    if device == "cuda":
        request.getfixturevalue("gpu")
    return device


@pytest.mark.parametrize("device", DEVICES)
def test_5x5_image_3x3_kernel(request, device):
    device = _device(request, device)
    out = gpuconv.conv2d(IMAGE[None, None], KERNEL[None, None], device=device)
    assert out.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(out[0, 0], EXPECTED)
    # the same image unbatched, and with a channels-last layout
    np.testing.assert_array_equal(gpuconv.conv2d(IMAGE[None], KERNEL[None, None],
                                                 device=device)[0], EXPECTED)
    np.testing.assert_array_equal(
        gpuconv.conv2d(IMAGE[None, :, :, None], KERNEL[None, None], layout="channels_last",
                       device=device)[0, :, :, 0], EXPECTED)


@pytest.mark.parametrize("device", DEVICES)
def test_keras_example(request, device):
    """Keras docs: input (4, 28, 28, 3) channels-last, 2 filters of 3x3, relu -> (4, 26, 26, 2)."""
    device = _device(request, device)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 28, 28, 3)).astype(np.float32)
    filters = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)  # 2 filters of 3 kernels
    y = gpuconv.conv2d(x, filters, layout="channels_last", activation="relu", device=device)
    assert y.shape == (4, 26, 26, 2)
    assert (y >= 0).all()
    assert (y > 0).any()  # relu left the positive part alone


@pytest.mark.parametrize("device", DEVICES)
def test_filter_output_is_sum_of_kernel_outputs(request, device):
    device = _device(request, device)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 8))
    filters = rng.standard_normal((4, 3, 3, 2))
    bias = rng.standard_normal(4)
    y = gpuconv.conv2d(x, filters, bias, padding=1, device=device)
    for o in range(4):
        parts = [gpuconv.conv2d(x[:, c:c + 1], filters[o:o + 1, c:c + 1], padding=1,
                                device=device)[:, 0] for c in range(3)]
        np.testing.assert_allclose(y[:, o], sum(parts) + bias[o], rtol=1e-12, atol=1e-12)


def test_flip_is_true_convolution():
    """flip=True against a convolution written out for a 1-D example by hand."""
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    k = np.array([[[1.0, 10.0, 100.0]]])
    # true convolution, 'valid': y[i] = sum_j x[i + j] * k[2 - j]
    np.testing.assert_array_equal(gpuconv.conv1d(x, k, flip=True, device="cpu")[0, 0],
                                  [100 + 20 + 3, 200 + 30 + 4])
    np.testing.assert_array_equal(gpuconv.conv1d(x, k, device="cpu")[0, 0],
                                  [1 + 20 + 300, 2 + 30 + 400])
    # 'full' true convolution is numpy.convolve
    np.testing.assert_array_equal(
        gpuconv.conv1d(x, k, flip=True, padding="full", device="cpu")[0, 0],
        np.convolve(x[0, 0], k[0, 0]))
