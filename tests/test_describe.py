"""gpuconv.describe: the layer in words and numbers (expected values worked out by hand)."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv


def test_keras_example_in_words():
    d = gpuconv.describe((4, 28, 28, 3), (2, 3, 3, 3), layout="channels_last")
    text = str(d)
    assert "2 filters of 3 kernels (3x3) each" in text
    assert "(4, 26, 26, 2)" in text
    assert d.output_shape == (4, 26, 26, 2)
    assert (d.filters, d.kernels_per_filter, d.kernel_size) == (2, 3, (3, 3))
    assert d.weights == 2 * 3 * 3 * 3 and d.parameters == 54 + 2
    assert d.multiply_adds == 4 * 26 * 26 * 2 * (3 * 3 * 3)
    assert d.receptive_field == (3, 3)


def test_depthwise_strided_dilated():
    d = gpuconv.describe((8, 32, 56, 56), (64, 1, 3, 3), groups=32, stride=2, dilation=(2, 1),
                         padding="same")
    assert d.output_shape == (8, 64, 28, 28)
    assert d.receptive_field == (5, 3)
    # "same" with stride 2: total padding (28-1)*2 + span - 56 = 3 for span 5, 1 for span 3
    assert d.padding == ((1, 2), (0, 1))
    assert "depthwise" in str(d) and "64 filters of 1 kernel (3x3)" in str(d)
    assert d.multiply_adds == 8 * 64 * 28 * 28 * 9


def test_shape_agrees_with_conv():
    x = np.zeros((2, 6, 11, 9), np.float32)
    w = np.zeros((4, 3, 2, 3), np.float32)
    kw = dict(stride=(2, 1), padding=((1, 0), 2), groups=2, padding_mode="reflect")
    assert gpuconv.describe(x.shape, w.shape, **kw).output_shape == \
        gpuconv.conv(x, w, device="cpu", **kw).shape


def test_bad_shapes_raise_like_conv():
    with pytest.raises(ValueError, match="channel mismatch"):
        gpuconv.describe((1, 3, 8, 8), (2, 4, 3, 3))
    with pytest.raises(ValueError, match="kernel larger than the padded input"):
        gpuconv.describe((1, 3, 2, 2), (2, 3, 3, 3))
