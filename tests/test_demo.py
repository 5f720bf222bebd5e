"""``gpuconv demo``: the filter bank, the maps it draws (against the independent reference), the
figure, the user's own picture, and what happens without matplotlib."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from gpuconv import demo
from reference import error_bound


def test_filter_bank_has_the_x_kernel_and_a_filter_with_different_kernels():
    names, filters, bias = demo.filter_bank()
    assert filters.shape == (6, 3, 3, 3) and bias.shape == (6,) and len(names) == 6
    x = [o for o, n in enumerate(names) if "'X'" in n]
    assert len(x) == 1
    for c in range(3):   # each kernel of the X filter is the worked example's X, scaled
        k = filters[x[0], c]
        np.testing.assert_array_equal(k / k.max(), [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    assert any(not np.allclose(f[0], f[1]) for f in filters)  # kernels can differ per channel


def test_sample_picture_is_an_rgb_picture_with_distinct_colours():
    p = demo.sample_picture(64)
    assert p.shape == (3, 64, 64) and p.dtype == np.float32
    assert p.min() >= 0 and p.max() <= 1
    np.testing.assert_array_equal(p, demo.sample_picture(64))  # drawn, not random
    pixels = {tuple(round(float(v), 2) for v in p[:, i, j])
              for i in range(0, 64, 2) for j in range(0, 64, 2)}
    assert {(0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (1.0, 1.0, 1.0)} <= pixels


def test_every_map_in_the_figure_matches_the_reference():
    r = demo.compute(demo.sample_picture(24), device="cpu")
    x = r.picture[None]
    for o in range(r.filters.shape[0]):
        exact, bound = error_bound(x, r.filters[o:o + 1], r.bias[o:o + 1], np.float32, "relu",
                                   padding="same")
        assert np.all(np.abs(r.feature_maps[o] - exact[0, 0]) <= bound[0, 0])
        for c in range(3):
            exact, bound = error_bound(x[:, c:c + 1], r.filters[o:o + 1, c:c + 1], None,
                                       np.float32, None, padding="same")
            assert np.all(np.abs(r.kernel_maps[o, c] - exact[0, 0]) <= bound[0, 0])
    assert r.agreement <= demo.agreement_bound(r)


def _run(*args):
    out, err = io.StringIO(), io.StringIO()
    rc = demo.main(list(args), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_demo_writes_the_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image as mpimg
    path = tmp_path / "demo.png"
    rc, out, err = _run("--out", str(path), "--device", "cpu")
    assert rc == 0, err
    assert "6 filters of 3 kernels (3x3) each" in out and "device: cpu" in out
    assert "(1, 3, 128, 128)" in out and "(1, 6, 128, 128)" in out
    assert f"figure written to {path}" in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.shape[0] > 400 and img.shape[1] > 600
    assert img[..., :3].std() > 0.1  # not a blank canvas


def test_demo_on_the_users_pictures(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image as mpimg
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (600, 390, 3), dtype=np.uint8)  # 8-bit pixels, stored as is
    mpimg.imsave(tmp_path / "big.png", rgb)
    loaded = demo.load_picture(str(tmp_path / "big.png"))
    assert loaded.shape == (3, 200, 130)  # block means of 3x3 pixels
    want = (rgb / 255).reshape(200, 3, 130, 3, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
    assert np.abs(loaded - want).max() <= 1e-6
    mpimg.imsave(tmp_path / "gray.png", rng.random((20, 30)), cmap="gray")
    assert demo.load_picture(str(tmp_path / "gray.png")).shape == (3, 20, 30)
    rc, out, err = _run("--image", str(tmp_path / "big.png"), "--out",
                        str(tmp_path / "fig.png"), "--device", "cpu")
    assert rc == 0, err
    assert "200x130 pixels" in out and (tmp_path / "fig.png").exists()


def test_bad_pictures_and_devices_are_reported(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "bad.png").write_text("not a picture")
    rc, out, err = _run("--image", str(tmp_path / "bad.png"), "--out", str(tmp_path / "f.png"))
    assert rc == 2 and "--image" in err and "bad.png" in err
    rc, out, err = _run("--image", str(tmp_path / "missing.png"))
    assert rc == 2 and "missing.png" in err
    rc, out, err = _run("--device", "tpu")
    assert rc == 2 and "device must be one of" in err


def test_without_matplotlib_it_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc, out, err = _run("--out", str(tmp_path / "f.png"), "--device", "cpu")
    assert rc == 1
    assert "6 filters of 3 kernels" in out          # the computation still ran and was shown
    assert 'pip install "gpuconv[demo]"' in err and not (tmp_path / "f.png").exists()
    rc, out, err = _run("--image", str(tmp_path / "x.png"))
    assert rc == 2 and "needs matplotlib" in err


@pytest.mark.gpu
def test_demo_on_the_gpu_matches_the_cpu(gpu):
    picture = demo.sample_picture(40)
    on_cpu, on_gpu = demo.compute(picture, "cpu"), demo.compute(picture, "cuda")
    assert on_gpu.device.startswith("cuda:")
    assert on_gpu.agreement <= demo.agreement_bound(on_gpu)
    # both are float32 sums of 27 products (and a bias) in different orders
    for a, b in ((on_cpu.kernel_maps, on_gpu.kernel_maps),
                 (on_cpu.feature_maps, on_gpu.feature_maps)):
        assert np.abs(a - b).max() <= 2 * demo.agreement_bound(on_cpu)
