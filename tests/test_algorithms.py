"""The algorithm= keyword: names, refusals with reasons, and the rule "auto" follows."""
from __future__ import annotations

import functools

import numpy as np
import pytest

import gpuconv
from gpuconv import algorithms, kernels, tuning
from gpuconv.dtypes import bfloat16
from gpuconv.geometry import plan_conv


def _geom(x_shape, w_shape, **options):
    return plan_conv(x_shape, w_shape, None, **options)


def test_names_are_listed_and_checked():
    assert algorithms.NAMES[0] == "auto"
    assert set(algorithms.ALGORITHMS["cpu"]) == {"gemm", "gemm_shifted", "pointwise", "depthwise"}
    assert set(algorithms.ALGORITHMS["cuda"]) == {
        "direct", "few_filters", "gemm", "gemm_64x64", "gemm_128x128", "gemm_128x64",
        "gemm_128x32", "gemm_128x8", "gemm_cl", "gemm_tc", "gemm_tc_cl", "gemm_wgmma",
        "gemm_tf32", "im2col", "winograd", "pointwise", "depthwise", "depthwise_tile"}
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="algorithm must be one of .*'winograd'.*, got 'fft'"):
        gpuconv.conv(x, w, algorithm="fft", device="cpu")
    with pytest.raises(ValueError, match="the cpu device has no 'winograd' algorithm"):
        gpuconv.conv(x, w, algorithm="winograd", device="cpu")
    with pytest.raises(TypeError, match="algorithm must be a string"):
        gpuconv.conv(x, w, algorithm=3, device="cpu")


def test_cpu_refuses_a_cuda_kernel_and_says_what_it_has():
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"the cpu device has no 'direct' algorithm; it has "
                                         r"\('auto', 'gemm', 'gemm_shifted', 'pointwise', "
                                         r"'depthwise'\)"):
        gpuconv.conv(x, w, algorithm="direct", device="cpu")


def test_refusals_name_the_filters():
    x, w = np.ones((1, 4, 5, 5), np.float32), np.ones((6, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"'depthwise' needs one kernel per filter .* filters "
                                         r"\(6, 2, 3, 3\), groups=2"):
        gpuconv.conv(x, w, groups=2, algorithm="depthwise", device="cpu")
    with pytest.raises(ValueError, match=r"'pointwise' needs 1x1 kernels and no padding"):
        gpuconv.conv(x, w[:, :, :1, :1], groups=2, padding=1, algorithm="pointwise",
                     device="cpu")
    for stride, kernel in (((1, 2), 3), ((1, 1), 1)):
        with pytest.raises(ValueError, match=rf"'gemm_shifted' .* needs stride 1 and a kernel "
                                             rf"wider than 1 there; this call has stride "
                                             rf"\(1, {stride[1]}\) and filters "
                                             rf"\(6, 2, 3, {kernel}\), groups=2"):
            gpuconv.conv(x, w[..., :kernel], groups=2, stride=stride, algorithm="gemm_shifted",
                         device="cpu")
    assert gpuconv.conv(x, w, groups=2, stride=(2, 1), algorithm="gemm_shifted",
                        device="cpu").shape == (1, 6, 2, 3)


def test_auto_takes_the_gemm_for_few_kernels_a_filter_or_small_layers():
    """One-group layers whose kernels a filter times the kernel's size along every axis but
    the last are at most GEMM_SHIFTED_MIN_RATIO of the filters (first layers: RGB in, many
    filters out; 1-D layers: GEMM_SHIFTED_MIN_RATIO_1D), or of fewer than
    GEMM_SHIFTED_MIN_MULTIPLY_ADDS: the GEMM, not the shifted GEMM; grouped layers keep the
    shifted GEMM."""
    ratio = algorithms.GEMM_SHIFTED_MIN_RATIO
    assert ratio == 0.4 and algorithms.GEMM_SHIFTED_MIN_MULTIPLY_ADDS == 450_000
    assert algorithms.GEMM_SHIFTED_MIN_RATIO_1D == 1.0
    for x_shape, w_shape, options, expected in [
            ((1, 3, 224, 224), (64, 3, 3, 3), {"padding": 1}, "gemm"),  # VGG's first layer
            ((2, 8, 32, 32), (60, 8, 3, 3), {}, "gemm"),           # 24 rows <= 0.4 x 60
            ((2, 8, 32, 32), (59, 8, 3, 3), {}, "gemm_shifted"),   # 24 > 0.4 x 59
            ((2, 8, 32, 32), (64, 4, 3, 3), {"groups": 2}, "gemm_shifted"),
            ((4, 1, 4096), (16, 1, 5), {}, "gemm"),                # 1-D: C_in rows
            ((1, 1, 10**6), (1, 1, 31), {}, "gemm"),               # 1-D: 1 <= 1.0 x 1
            ((1, 16, 10**5), (16, 16, 5), {}, "gemm"),             # 16 <= 1.0 x 16
            ((1, 17, 10**5), (16, 17, 5), {}, "gemm_shifted"),     # 17 > 1.0 x 16
            ((1, 2, 32, 10**4), (2, 2, 1, 9), {}, "gemm_shifted"),  # 2-D: 2 > 0.4 x 2
            ((1, 1, 32, 32, 32), (16, 1, 3, 3, 3), {}, "gemm_shifted"),  # 9 rows > 6.4
            ((1, 16, 12, 12), (16, 16, 3, 3), {"padding": 1}, "gemm"),  # 331,776 mult.-adds
            ((1, 16, 16, 16), (16, 16, 3, 3), {"padding": 1}, "gemm_shifted")]:  # 589,824
        geom = _geom(x_shape, w_shape, **options)
        assert algorithms.choose("cpu", "auto", geom, np.float32) == expected, (x_shape, w_shape)


def test_auto_rule():
    g = _geom((2, 8, 9, 9), (8, 1, 3, 3), groups=8)
    assert algorithms.choose("cpu", "auto", g, np.float32) == "depthwise"
    g = _geom((2, 8, 9, 9), (4, 8, 1, 1))
    assert algorithms.choose("cpu", "auto", g, np.float32) == "pointwise"
    g = _geom((2, 8, 9, 9), (4, 8, 1, 1), padding=1)
    assert algorithms.choose("cpu", "auto", g, np.float32) == "gemm"
    # few filters a group (<= GEMM_SHIFTED_MAX_FILTERS), stride 1 along the last axis and a
    # kernel wider than 1 there: the shifted GEMM; else the columns GEMM
    few = algorithms.GEMM_SHIFTED_MAX_FILTERS
    for w_shape, options, expected in [
            ((few, 64, 3, 3), {}, "gemm_shifted"),
            ((few + 1, 64, 3, 3), {}, "gemm"),
            ((2 * few, 32, 3, 3), {"groups": 2}, "gemm_shifted"),
            ((few, 64, 3, 3), {"stride": (2, 1)}, "gemm_shifted"),
            ((few, 64, 3, 3), {"stride": (1, 2)}, "gemm"),
            ((few, 64, 3, 1), {}, "gemm"),
            ((few, 64, 1, 3), {}, "gemm_shifted")]:
        geom = _geom((2, 64, 9, 9), w_shape, **options)
        assert algorithms.choose("cpu", "auto", geom, np.float32) == expected, (w_shape, options)
    g = _geom((2, 8, 9, 9), (4, 8, 3, 3))
    assert algorithms.choose("cpu", "auto", g, np.float32) == "gemm"  # 46,656 multiply-adds
    # CUDA: the implicit GEMM for dense layers (its tile by shape), the tensor cores for 16-bit
    # dtypes (channels-last when C_in/groups is a multiple of 8), the depthwise kernel for one
    # kernel per filter, the few-filter kernel for <= 4 filters a group in any dtype; the
    # direct kernel only where the others refuse the layer
    assert algorithms.choose("cuda", "auto", g, np.float32) == "few_filters"  # 4 filters
    assert algorithms.choose("cuda", "auto", g, np.float16) == "few_filters"
    assert algorithms.choose("cuda", "auto", _geom((2, 8, 9, 9), (8, 8, 3, 3)),
                             np.float32) == "gemm_128x8"
    assert algorithms.choose("cuda", "auto", _geom((2, 8, 9, 9), (16, 8, 3, 3)),
                             np.float16) == "gemm_tc_cl"
    assert algorithms.choose("cuda", "auto", _geom((2, 6, 9, 9), (16, 6, 3, 3)),
                             np.float16) == "gemm_tc"
    assert algorithms.choose("cuda", "auto", _geom((2, 8, 9, 9), (8, 1, 3, 3), groups=8),
                             np.float32) == "depthwise"
    huge = _geom((1, 1, 9, 2**30 + 8), (4, 1, 1, 1))  # spatial sizes past the GEMM's 32-bit ints
    assert algorithms.choose("cuda", "auto", huge, np.float32) == "direct"


def test_cuda_auto_takes_im2col_for_many_filters_and_terms_and_tensor_cores_for_1x1():
    """The rule measured on the H100 (algorithms.IM2COL_AUTO_MIN_FILTERS): float32 layers of
    >= 128 filters a group and >= 256 terms a filter, and 1x1 layers of >= 128 filters with
    fewer than 1024 positions an image, by im2col; other float32 1x1 layers by pointwise;
    float16 and bfloat16 1x1 layers by gemm_tc_cl where it takes them (C_in/groups a multiple
    of 8), else pointwise."""
    f32 = np.float32
    auto = functools.partial(algorithms.choose, "cuda", "auto")
    assert auto(_geom((2, 128, 28, 28), (128, 128, 3, 3), padding=1), f32) == "im2col"
    assert auto(_geom((2, 128, 28, 28), (127, 128, 3, 3), padding=1), f32) != "im2col"
    assert auto(_geom((2, 28, 28, 28), (128, 28, 3, 3), padding=1), f32) != "im2col"  # 252
    assert auto(_geom((2, 29, 28, 28), (128, 29, 3, 3), padding=1), f32) == "im2col"  # 261
    assert auto(_geom((2, 128, 28, 28), (256, 128, 3, 3), padding=1), np.float64) != "im2col"
    assert auto(_geom((2, 1024, 14, 14), (256, 1024, 1, 1)), f32) == "im2col"  # 196 positions
    assert auto(_geom((2, 64, 56, 56), (256, 64, 1, 1)), f32) == "pointwise"  # 3136
    assert auto(_geom((2, 64, 31, 33), (256, 64, 1, 1)), f32) == "im2col"  # 1023
    assert auto(_geom((2, 1024, 14, 14), (64, 1024, 1, 1)), f32) == "pointwise"  # 64 filters
    for dtype in (np.float16,) + ((bfloat16(),) if bfloat16() is not None else ()):
        assert auto(_geom((2, 64, 56, 56), (256, 64, 1, 1)), dtype) == "gemm_tc_cl"
        assert auto(_geom((2, 12, 56, 56), (256, 12, 1, 1)), dtype) == "pointwise"


@pytest.mark.parametrize("c_out, n, dtype, tile, c_in", [
    (32, 4, np.float32, "128x32", 16),        # few filters: the narrow tile
    (9, 4, np.float32, "128x32", 16),
    (8, 4, np.float32, "128x8", 16),          # at most 8: the narrowest
    (3, 4, np.complex64, "128x8", 3),         # ... built for 8-byte sums
    (3, 4, np.complex128, "128x32", 3),       # ... not 16-byte ones (shared memory)
    (256, 8, np.float32, "128x128", 16),      # many filters and positions: the big tile
    (256, 8, np.float64, "64x64", 16),        # ... which float64 does not build
    (256, 1, np.float32, "128x64", 16),       # too few positions (and 144 terms: no split-K)
    (64, 8, np.float16, "128x64", 16),        # 64 filters: 8 x 8 sums a thread, 64 wide
    (64, 8, np.complex64, "64x64", 16),       # ... which 8-byte sums do not build
    (256, 1, np.float32, "128x128", 64),      # few positions, 576 terms: the big tile, split-K
    (256, 1, np.float64, "64x64", 64),
])
def test_gemm_tile_rule(c_out, n, dtype, tile, c_in):
    g = _geom((n, c_in, 40, 40), (c_out, c_in, 3, 3), padding=1)
    assert algorithms.choose("cuda", "gemm", g, dtype) == f"gemm_{tile}"


def test_tiles_a_dtype_does_not_build_are_refused():
    g = _geom((2, 16, 40, 40), (256, 16, 3, 3), padding=1)
    for dtype in (np.float64, np.complex64, np.complex128):
        for tile in ("128x128", "128x64"):
            with pytest.raises(ValueError, match=rf"'gemm_{tile}' is not built for"):
                algorithms.choose("cuda", f"gemm_{tile}", g, dtype)
    assert algorithms.choose("cuda", "gemm_128x128", g, np.float16) == "gemm_128x128"


def test_every_algorithm_gives_the_same_result_on_the_cpu():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 7, 7))
    w = rng.standard_normal((6, 1, 1, 1))
    results = [gpuconv.conv(x, w, groups=6, algorithm=a, device="cpu")
               for a in ("auto", "gemm", "pointwise", "depthwise")]
    exact = x * w[:, 0, 0, 0][None, :, None, None]  # a 1x1 depthwise conv scales each channel
    for r in results:
        np.testing.assert_allclose(r, exact, rtol=1e-14, atol=0)


def test_depthwise_kernel_sizes():
    from gpuconv import kernels
    assert kernels.depthwise_size((1, 3, 3)) == (3, 3)
    assert kernels.depthwise_size((1, 1, 5)) == (1, 5)
    assert kernels.depthwise_size((1, 3, 5)) == (0, 0)   # not compiled: runtime sizes
    assert kernels.depthwise_size((3, 3, 3)) == (0, 0)   # depth > 1: runtime sizes
    g = _geom((2, 8, 9, 9), (8, 1, 3, 3), groups=8)
    assert algorithms.choose("cuda", "depthwise", g, np.float32) == "depthwise"
    g = _geom((1, 2**15, 2**8, 2**7), (2**15, 1, 1, 1), groups=2**15)
    with pytest.raises(ValueError, match="fewer than 2\\^30 elements; this call has 1073741824"):
        algorithms.choose("cuda", "depthwise", g, np.float32)


def test_tensor_core_kernel_needs_compute_capability_8(monkeypatch):
    """gemm_tc is refused, with the device's capability named, on a GPU older than sm_80 (a
    stand-in CuPy reports one), and allowed on sm_90."""
    import sys
    import types
    g = plan_conv((1, 8, 9, 9), (8, 8, 3, 3))
    algorithms._capability.cache_clear()  # capabilities are cached by device id
    for device_id, (capability, allowed) in enumerate((("75", False), ("90", True))):
        device = types.SimpleNamespace(compute_capability=capability)
        fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
            Device=lambda i, d=device: d,
            runtime=types.SimpleNamespace(getDevice=lambda i=device_id: i)))
        monkeypatch.setitem(sys.modules, "cupy", fake)
        for name in ("gemm_tc", "gemm_tc_cl"):
            reason = algorithms.why_not("cuda", name, g, np.float16)
            assert (reason == "") == allowed
            if not allowed:
                assert "compute capability 8.0" in reason and "has 7.5" in reason
    algorithms._capability.cache_clear()


@pytest.mark.parametrize("capability, mma_sync, wgmma", [(75, False, False), (80, True, False),
                                                         (90, True, True), (100, True, False)])
def test_wgmma_kernel_runs_on_compute_capability_9_0_only(capability, mma_sync, wgmma,
                                                          monkeypatch):
    """gemm_wgmma's module is built for sm_90a, whose code runs on 9.0 alone: refused, naming
    the device's capability and the alternative, on 7.5, 8.0 and 10.0, where gemm_tc_cl runs
    from 8.0 on; with no device to ask (the host emulation) neither is refused."""
    g = plan_conv((1, 8, 9, 9), (8, 8, 3, 3))
    monkeypatch.setattr(algorithms, "_current_capability", lambda: capability)
    assert (algorithms.why_not("cuda", "gemm_tc_cl", g, np.float16) == "") == mma_sync
    reason = algorithms.why_not("cuda", "gemm_wgmma", g, np.float16)
    assert (reason == "") == wgmma
    if not wgmma:
        assert f"this device has {capability // 10}.{capability % 10}" in reason
        assert "compute capability 9.0" in reason and "'gemm_tc_cl'" in reason
        with pytest.raises(ValueError, match="algorithm='gemm_wgmma' cannot run this call"):
            algorithms.choose("cuda", "gemm_wgmma", g, np.float16)
    assert ("gemm_wgmma" in tuning.candidates("cuda", g, np.float16)) == wgmma
    monkeypatch.setattr(algorithms, "_current_capability", lambda: None)
    assert algorithms.why_not("cuda", "gemm_wgmma", g, np.float16) == ""


@pytest.mark.parametrize("nvrtc, wgmma", [((12, 0), False), ((12, 8), False), ((12, 9), True),
                                          ((13, 0), True), (None, True)])
def test_wgmma_kernel_needs_an_nvrtc_that_builds_sm_90a_through_cupy(nvrtc, wgmma,
                                                                     monkeypatch):
    """On an H100, gemm_wgmma is refused where CuPy's NVRTC is older than 12.9 (those refuse
    the module's -arch=sm_90a beside CuPy's own -arch: tests/test_kernels.py checks that with
    the oldest NVRTC), naming both versions and the alternative; where the version cannot be
    read, CuPy's compile error is left to speak."""
    g = plan_conv((1, 8, 9, 9), (8, 8, 3, 3))
    monkeypatch.setattr(algorithms, "_current_capability", lambda: 90)
    monkeypatch.setattr(kernels, "cupy_nvrtc_version", lambda: nvrtc)
    reason = algorithms.why_not("cuda", "gemm_wgmma", g, np.float16)
    assert (reason == "") == wgmma
    assert algorithms.why_not("cuda", "gemm_tc_cl", g, np.float16) == ""
    if not wgmma:
        assert "NVRTC 12.9 or later" in reason and f"is {nvrtc[0]}.{nvrtc[1]}" in reason
        assert "'gemm_tc_cl'" in reason
        with pytest.raises(ValueError, match="algorithm='gemm_wgmma' cannot run this call"):
            algorithms.choose("cuda", "gemm_wgmma", g, np.float16)
    assert ("gemm_wgmma" in tuning.candidates("cuda", g, np.float16)) == wgmma


def test_cupy_nvrtc_version_asks_cupys_nvrtc(monkeypatch):
    """The version is CuPy's NVRTC's (cupy.cuda.nvrtc.getVersion), and None where that cannot
    be loaded."""
    import sys
    import types

    def fake_cupy(get_version):
        return types.SimpleNamespace(cuda=types.SimpleNamespace(
            nvrtc=types.SimpleNamespace(getVersion=get_version)))

    def missing():
        raise OSError("libnvrtc.so.12: cannot open shared object file")

    try:
        for get_version, expected in [(lambda: (12, 4), (12, 4)), (missing, None)]:
            kernels.cupy_nvrtc_version.cache_clear()
            monkeypatch.setitem(sys.modules, "cupy", fake_cupy(get_version))
            assert kernels.cupy_nvrtc_version() == expected
    finally:
        kernels.cupy_nvrtc_version.cache_clear()


@pytest.mark.parametrize("algorithm", ["gemm", "gemm_64x64", "gemm_128x128", "gemm_128x64",
                                       "gemm_128x32", "gemm_128x8", "gemm_cl", "gemm_tc",
                                       "gemm_tc_cl", "gemm_wgmma", "gemm_tf32"])
def test_gemm_kernels_count_in_32_bit_ints_and_say_where_that_ends(algorithm):
    dtype = np.float16 if algorithm in ("gemm_tc", "gemm_tc_cl", "gemm_wgmma") else np.float32
    ok = _geom((1, 8, 2**20), (8, 8, 3))
    assert algorithms.why_not("cuda", algorithm, ok, dtype) == ""
    long_signal = _geom((1, 8, 2**30), (8, 8, 3))
    reason = algorithms.why_not("cuda", algorithm, long_signal, dtype)
    assert "32-bit ints" in reason and f"({2**30 + 2})" in reason
    many_terms = _geom((1, 2**27, 4, 4), (8, 2**27, 3, 3))  # 9 * 2^27 terms a filter
    assert f"({9 * 2**27})" in algorithms.why_not("cuda", algorithm, many_terms, dtype)
    with pytest.raises(ValueError, match="32-bit ints"):
        algorithms.choose("cuda", algorithm, long_signal, dtype)


def test_filter_gradient_leaves_the_gemm_where_counts_would_overflow():
    from gpuconv import cuda
    assert cuda.filter_grad_by_gemm(_geom((1, 64, 2**10), (64, 64, 3)))
    assert not cuda.filter_grad_by_gemm(_geom((1, 64, 2**30), (64, 64, 3)))


@pytest.mark.parametrize("x_shape,w_shape,groups,dtype,tile", [
    ((2, 64, 56, 56), (64, 64, 3, 3), 1, np.float32, "128x64"),      # 576 terms, 64 filters
    ((2, 128, 28, 28), (128, 128, 3, 3), 1, np.float32, "128x128"),  # 1152 terms, 128 filters
    ((2, 128, 28, 28), (128, 128, 3, 3), 1, np.float16, "128x128"),  # sums in float32
    ((2, 128, 28, 28), (128, 128, 3, 3), 1, np.float64, "64x64"),    # 8-byte sums: small tile
    ((2, 128, 28, 28), (128, 128, 3, 3), 1, np.complex64, "64x64"),
    ((2, 256, 28, 28), (128, 128, 3, 3), 2, np.float32, "128x64"),   # 64 filters a group
    ((2, 1, 161, 700), (32, 1, 5, 20), 1, np.float32, "64x64"),      # 100 terms
])
def test_filter_gradient_tile_rule(x_shape, w_shape, groups, dtype, tile):
    from gpuconv import cuda, kernels
    geom = _geom(x_shape, w_shape, groups=groups)
    assert cuda.filter_grad_tile(geom, dtype) == tile
    assert tile in kernels.filter_grad_tiles(dtype)


@pytest.mark.parametrize("x_shape,w_shape,tile,per_sm,expected", [
    # 128x128, one block an SM: splits that leave the fewest idle SMs in the last wave
    ((32, 512, 7, 7), (512, 512, 3, 3), "128x128", 1, (5, 58)),   # r50_res5: 52 blocks -> 260
    ((32, 256, 14, 14), (256, 256, 3, 3), "128x128", 1, (4, 36)),  # r50_res4: 98 -> 392
    ((32, 128, 28, 28), (128, 128, 3, 3), "128x128", 1, (2, 36)),  # r50_res3: 196 -> 392
    ((16, 512, 28, 28), (512, 512, 3, 3), "128x128", 1, (1, 288)),  # 392 blocks: 2.97 waves
    # several blocks an SM: split only to fill the device
    ((32, 256, 14, 14), (256, 256, 3, 3), "128x128", 4, (5, 29)),  # 98 blocks, 528 slots
    ((32, 128, 28, 28), (128, 128, 3, 3), "128x128", 4, (2, 36)),  # 196 blocks
    ((32, 64, 56, 56), (64, 64, 3, 3), "128x128", 4, (1, 36)),     # 784 blocks: not split
    ((1, 8, 8, 8), (8, 8, 3, 3), "64x64", 3, (1, 9)),               # 9 steps: too few to split
    ((1, 16, 8, 8), (16, 16, 3, 3), "64x64", 3, (2, 9)),            # one tile, 18 steps
    ((1, 64, 8, 8), (64, 64, 3, 3), "64x64", 3, (9, 8)),            # one tile, 72 steps
    ((1, 64, 8, 8), (64, 64, 3, 3), "64x64", 1, (9, 8)),
])
def test_gemm_split_k_rule(x_shape, w_shape, tile, per_sm, expected):
    from gpuconv import cuda
    geom = _geom(x_shape, w_shape, padding=1)
    BK = cuda.kernels.GEMM_TILES[tile][2]
    splits, per_split = cuda.gemm_splits(geom, cuda.kernels.GEMM_TILES[tile][:3], 132, per_sm,
                                         4)
    steps = -(-geom.terms_per_output // BK)
    assert splits * per_split >= steps > (splits - 1) * per_split  # no empty split
    assert splits == 1 or per_split >= cuda.GEMM_SPLIT_MIN_STEPS
    assert (splits, per_split) == expected


def test_gemm_split_k_keeps_partial_sums_bounded(monkeypatch):
    from gpuconv import cuda
    geom = _geom((32, 256, 14, 14), (256, 256, 3, 3), padding=1)  # r50_res4: 4 splits ...
    E = geom.C_out * geom.positions * 4
    monkeypatch.setattr(cuda, "GEMM_PARTIAL_BYTES", 3 * E)  # ... unless only 3 fit
    assert cuda.gemm_splits(geom, cuda.kernels.GEMM_TILES["128x128"][:3], 132, 1, 4)[0] <= 3


def test_gemm_tc_cl_block_width_rule():
    from gpuconv import kernels

    def width(positions, filters):  # 1-D layers of 1x1 kernels: positions = output length
        return kernels.gemm_tc_cl_filters(_geom((1, 8, positions), (filters, 8, 1)))
    assert width(10**6, 64) == 64          # one 64-wide block row
    assert width(10**6, 256) == 128        # wide blocks, still many
    assert width(6272, 256) == 64          # 98 wide blocks: too few
    assert width(128 * 132, 256) == 128    # 264: two an H100 SM
    assert width(128 * 131, 256) == 64
    assert [kernels.gemm_tc_cl_threads(f) for f in kernels.GEMM_TC_CL_FILTERS] == [128, 256]


def test_forward_plans_are_decided_once_and_say_what_launches():
    """cuda.forward_plan: the rules run once per (geometry, dtype, activation, algorithm, SMs);
    a later call gets the same plan. Its launches follow the rules: split-K where a layer has
    few output tiles (then a second, summing launch), none for the depthwise kernel."""
    from gpuconv import cuda, kernels
    res5 = _geom((32, 512, 7, 7), (512, 512, 3, 3), padding=1)
    plan = cuda.forward_plan(res5, np.float32, None, "gemm", 132)  # auto: im2col
    assert cuda.forward_plan(res5, np.dtype(np.float32), None, "gemm", 132) is plan
    assert plan.algorithm == "gemm_128x128" and plan.splits == 5 and plan.per_split == 58
    assert plan.main.work.blocks == (13, 4, 5) and plan.main.work.threads == 256
    assert plan.finish.name == kernels.conv_gemm_sum_splits_name(np.float32, None)
    assert plan.partial_dtype == np.float32
    relu = cuda.forward_plan(res5, np.float16, "relu", "gemm_128x128", 132)
    assert relu.main.name == kernels.conv_gemm_name(np.float16, "relu", "128x128")
    assert relu.partial_dtype == np.float32  # float16 sums in float32
    dw = cuda.forward_plan(_geom((2, 8, 9, 9), (8, 1, 3, 3), groups=8), np.float32, None,
                           "auto", 132)
    assert dw.algorithm == "depthwise" and dw.splits == 0 and dw.finish is None
    with pytest.raises(ValueError, match="'depthwise' needs one kernel per filter"):
        cuda.forward_plan(res5, np.float32, None, "depthwise", 132)


def test_every_algorithm_is_named_in_the_docstrings():
    """conv's docstring (and conv1d/2d/3d's) and the algorithms module's list every algorithm
    a device has: a user reading help(gpuconv.conv) sees them all."""
    import re
    for f in (gpuconv.conv, gpuconv.conv1d, gpuconv.conv2d, gpuconv.conv3d):
        quoted = set(re.findall(r'"(\w+)"', f.__doc__))
        missing = [n for n in algorithms.NAMES if n not in quoted]
        assert not missing, (f.__name__, missing)
    listed = set(re.findall(r"``(\w+)``", algorithms.__doc__))
    assert [n for n in algorithms.NAMES[1:] if n not in listed] == []


def test_depthwise_tile_fits_its_shared_memory():
    """kernels.depthwise_tile: the host's constants are conv_depthwise_tile's; every tile it
    picks reads at most DEPTHWISE_TILE_BYTES of input in the accumulator dtype, takes several
    planes only as whole planes, and aims at DEPTHWISE_TILE_OUTPUTS outputs; a window too
    wide for the tile, or a kernel size without an unrolled instantiation, is refused by
    name. The plan launches one block a tile."""
    import re
    from gpuconv import cuda, kernels
    source = kernels.kernel_source("conv_depthwise.cu")
    for macro, value in (("GC_DW_TILE_THREADS", kernels.DEPTHWISE_TILE_THREADS),
                         ("GC_DW_TILE_BYTES", kernels.DEPTHWISE_TILE_BYTES),
                         ("GC_DW_TILE_PLANES", kernels.DEPTHWISE_TILE_PLANES)):
        assert re.search(rf"#define {macro} {value}\b", source), macro
    checked = 0
    for size in [k for k in kernels.DEPTHWISE_SIZES if k != (0, 0)]:
        for stride, dilation, out in ((1, 1, 56), (2, 1, 7), (3, 2, 300), (1, 3, 2000)):
            kernel = size if size[0] > 1 else size[1:]
            reach = [(k - 1) * dilation + 1 for k in kernel]
            spatial = tuple((out - 1) * stride + r for r in reach)
            geom = _geom((3, 4) + spatial, (8, 1) + kernel, groups=4, stride=stride,
                         dilation=dilation)
            for dtype in (np.float16, np.float32, np.float64, np.complex128):
                tile = kernels.depthwise_tile(geom, dtype)
                acc = np.dtype(np.float32 if dtype == np.float16 else dtype).itemsize
                if tile is None:
                    assert reach[-1] * (reach[0] if len(kernel) == 2 else 1) * acc > \
                        kernels.DEPTHWISE_TILE_BYTES
                    assert "'depthwise_tile' is built for kernels" in algorithms.why_not(
                        "cuda", "depthwise_tile", geom, dtype)
                    continue
                planes, rows, columns = tile
                OH, OW = ((1,) + geom.out_spatial)[-2:]
                S = ((1,) + geom.stride)[-2:]
                D = ((1,) + geom.dilation)[-2:]
                K = ((1,) + kernel)[-2:]
                tile_in = planes * ((rows - 1) * S[0] + (K[0] - 1) * D[0] + 1) * \
                    ((columns - 1) * S[1] + (K[1] - 1) * D[1] + 1)
                assert tile_in * acc <= kernels.DEPTHWISE_TILE_BYTES
                assert 1 <= rows <= OH and 1 <= columns <= OW
                assert 1 <= planes <= kernels.DEPTHWISE_TILE_PLANES
                assert planes == 1 or (rows, columns) == (OH, OW)
                assert planes * rows * columns <= max(kernels.DEPTHWISE_TILE_OUTPUTS, OW)
                plan = cuda.forward_plan(geom, dtype, None, "depthwise_tile", 132)
                assert plan.main.work.blocks == (
                    -(-3 * 8 // planes) * -(-OH // rows) * -(-OW // columns), 1, 1)
                assert plan.main.extra == tile
                checked += 1
    assert checked == 96  # every layer above fits, in every dtype
    # the suite's layers: whole rows, 14 of 56 a block; whole 14 x 14 planes, 5 a block
    c144 = _geom((32, 144, 56, 56), (144, 1, 3, 3), groups=144, padding=1)
    assert kernels.depthwise_tile(c144, np.float32) == (1, 14, 56)
    c576 = _geom((32, 576, 14, 14), (576, 1, 3, 3), groups=576, padding=1)
    assert kernels.depthwise_tile(c576, np.float32) == (5, 14, 14)
    wide = _geom((1, 2, 400, 400), (2, 1, 7, 7), groups=2, dilation=60)
    assert kernels.depthwise_tile(wide, np.float32) is None
    assert "dilation (60, 60)" in algorithms.why_not("cuda", "depthwise_tile", wide, np.float32)
    runtime = _geom((1, 2, 9, 9), (2, 1, 4, 4), groups=2)
    assert "'depthwise_tile' is built for kernels of (height, width) ((3, 3)" in \
        algorithms.why_not("cuda", "depthwise_tile", runtime, np.float32)
    assert algorithms.choose("cuda", "auto", c144, np.float32) == "depthwise"  # not yet timed


def test_depthwise_filter_grad_offsets_must_fit_32_bits():
    """conv_depthwise_filter_grad counts element offsets within a channel in 32 bits: arrays
    as they usually come pass; a view whose strides reach past 2^31 elements does not (the
    partial-sum kernel, with 64-bit offsets, takes it)."""
    from types import SimpleNamespace
    from gpuconv import cuda
    geom = _geom((4, 8, 56, 56), (8, 1, 3, 3), padding=1, groups=8)
    x = np.empty((4, 8, 56, 56), np.float32)
    g = np.empty((4, 8, 56, 56), np.float32)
    assert cuda.depthwise_filter_grad_offsets_fit(x, g, geom)

    def view(shape, element_strides):
        return SimpleNamespace(shape=shape, itemsize=4,
                               strides=tuple(4 * s for s in element_strides))
    far = view((4, 8, 56, 56), (2**30, 56 * 56, 56, 1))  # images 2^30 elements apart
    assert not cuda.depthwise_filter_grad_offsets_fit(far, g, geom)
    assert not cuda.depthwise_filter_grad_offsets_fit(x, far, geom)
    # the last window's bottom tap is row 56 (55 + 2 taps - 1 of padding): 56 rows of 2^26
    # elements pass 2^31, of 2^25 they do not
    tall = view((4, 8, 56, 56), (8 * 56 * 56, 56 * 56, 2**26, 1))
    assert not cuda.depthwise_filter_grad_offsets_fit(tall, g, geom)
    assert cuda.depthwise_filter_grad_offsets_fit(view((4, 8, 56, 56), (8 * 56 * 56, 56 * 56,
                                                                        2**25, 1)), g, geom)


def test_filter_grad_plans_follow_the_kernel_rule_and_are_cached():
    """The filter gradient's launches: the GEMM for many terms and filters, the depthwise
    kernel for one kernel a filter of a built size, the partial-sum kernel otherwise; each
    plan decided once, its partial sums finished by sum_partials."""
    from gpuconv import cuda, kernels
    threads = 132 * 32 * 256
    dense = _geom((32, 256, 14, 14), (256, 256, 3, 3), padding=1)
    dw = _geom((32, 144, 56, 56), (144, 1, 3, 3), padding=1, groups=144)
    dw3d = _geom((2, 8, 5, 9, 9), (8, 1, 3, 3, 3), padding=1, groups=8)
    f32 = np.dtype(np.float32)
    assert [cuda.filter_grad_kernel(g, f32) for g in (dense, dw, dw3d)] == \
        ["gemm", "depthwise", "chunks"]
    plan = cuda._filter_grad_plan(dw, f32, threads, "depthwise")
    assert cuda._filter_grad_plan(dw, f32, threads, "depthwise") is plan
    assert plan.main.name == kernels.conv_depthwise_filter_grad_name(f32, (3, 3))
    assert plan.main.work.blocks == (144, plan.R, 1) and plan.R * plan.chunk >= dw.positions
    assert plan.chunk >= 256 * cuda.DEPTHWISE_FILTER_GRAD_MIN_PER_THREAD
    assert plan.finish.name == kernels.filter_grad_names(f32)[1]
    assert cuda._filter_grad_plan(dense, f32, threads, "gemm").main.file == "conv_gemm.cu"
    assert cuda._filter_grad_plan(dw3d, f32, threads, "chunks").main.file == "conv_adjoint.cu"
