"""Keras-style layers: built on first call, hold (C_out, C_in/groups, *k) filters, call conv."""
from __future__ import annotations

import math

import numpy as np
import pytest

import gpuconv


def test_keras_example_layer():
    layer = gpuconv.Conv2D(2, 3, activation="relu", seed=0)
    assert not layer.built
    x = np.random.default_rng(0).standard_normal((4, 28, 28, 3)).astype(np.float32)
    y = layer(x)
    assert layer.built and layer.filters.shape == (2, 3, 3, 3) and layer.bias.shape == (2,)
    assert y.shape == (4, 26, 26, 2) and (y >= 0).all()
    np.testing.assert_array_equal(layer.kernel(1, 2), layer.filters[1, 2])
    # on the layer's device ("auto": the GPU where there is one): the same kernels, bit-equal
    want = gpuconv.conv(x, layer.filters, layer.bias, layout="channels_last",
                        activation="relu", device=layer.device)
    np.testing.assert_array_equal(y, want)
    assert "filters array (2, 3, 3, 3)" in repr(layer)


def test_options_pass_through_and_rank_is_checked():
    layer = gpuconv.Conv1D(6, 5, strides=2, padding="same", dilation_rate=2, groups=3,
                           data_format="channels_first", use_bias=False, seed=1)
    y = layer(np.ones((2, 9, 40), np.float32))
    assert layer.filters.shape == (6, 3, 5) and layer.bias is None and y.shape == (2, 6, 20)
    with pytest.raises(ValueError, match="Conv1D needs x with 3 dims"):
        layer(np.ones((2, 9, 40, 4), np.float32))
    with pytest.raises(ValueError, match="channel mismatch"):  # built for 9 channels
        layer(np.ones((2, 6, 40), np.float32))
    assert gpuconv.Conv3D(2, (1, 2, 3))(np.ones((1, 4, 4, 4, 5))).shape == (1, 4, 3, 2, 2)


def test_initializers_and_seed():
    x = np.ones((1, 8, 8, 16), np.float32)
    a, b = gpuconv.Conv2D(32, 3, seed=7), gpuconv.Conv2D(32, 3, seed=7)
    a(x), b(x)
    np.testing.assert_array_equal(a.filters, b.filters)  # same seed, same weights
    limit = math.sqrt(6 / (16 * 9 + 32 * 9))
    assert np.abs(a.filters).max() <= limit and np.abs(a.filters).max() > 0.9 * limit
    he = gpuconv.Conv2D(32, 3, kernel_initializer="he_normal", seed=3)
    he(x)
    std = math.sqrt(2 / (16 * 9))
    # 4608 draws: the sample std is within 5% of the target with overwhelming probability
    assert abs(he.filters.std() / std - 1) < 0.05
    assert np.abs(he.filters).max() <= 2 * std / 0.87962566103423978 + 1e-6
    with pytest.raises(ValueError, match="kernel_initializer must be one of"):
        gpuconv.Conv2D(2, 3, kernel_initializer="lecun")
    with pytest.raises(ValueError, match="filters .* must be an int >= 1"):
        gpuconv.Conv2D(0, 3)
    with pytest.raises(ValueError, match="kernel_size has 3 entries"):
        gpuconv.Conv2D(2, (3, 3, 3))


def test_kernel_before_build():
    with pytest.raises(ValueError, match="no filters yet"):
        gpuconv.Conv2D(2, 3).kernel(0, 0)


@pytest.mark.gpu
def test_layer_places_weights_on_the_input_device(gpu):
    cp = gpu
    layer = gpuconv.Conv2D(4, 3, seed=0)
    y = layer(cp.ones((2, 10, 10, 3), dtype=cp.float32))
    assert isinstance(layer.filters, cp.ndarray) and isinstance(y, cp.ndarray)
