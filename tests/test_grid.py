"""Both backends against the float64 reference over the option grid (tests/cases.py)."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from cases import fast_path_cases, grid_cases
from reference import error_bound

CASES = grid_cases()
FAST_PATH_CASES = fast_path_cases()


def _check(case, got, what):
    out_dtype = np.result_type(case.x, case.filters, *(() if case.bias is None else (case.bias,)))
    exact, bound = error_bound(case.x, case.filters, case.bias, out_dtype, **case.options)
    assert got.dtype == out_dtype, what
    assert got.shape == exact.shape, what
    assert np.all(np.isfinite(got)), f"{what}: non-finite output (unwritten or overflowed)"
    err = np.abs(got.astype(exact.dtype) - exact)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} "
                                  f"at {worst}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cpu_against_reference(case):
    x0, w0 = case.x.copy(), case.filters.copy()
    got = gpuconv.conv(case.x, case.filters, case.bias, device="cpu", **case.options)
    assert isinstance(got, np.ndarray)
    _check(case, got, "cpu")
    np.testing.assert_array_equal(case.x, x0)
    np.testing.assert_array_equal(case.filters, w0)


@pytest.mark.parametrize("case", FAST_PATH_CASES, ids=lambda c: c.name)
def test_cpu_fast_paths_against_reference(case):
    got = gpuconv.conv(case.x, case.filters, case.bias, device="cpu", **case.options)
    _check(case, got, "cpu fast path")


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gpu_against_cpu_and_reference(case, gpu):
    cp = gpu
    xg, wg = cp.asarray(case.x), cp.asarray(case.filters)
    bg = None if case.bias is None else cp.asarray(case.bias)
    x0 = xg.copy()
    got = gpuconv.conv(xg, wg, bg, device="cuda", **case.options)
    assert isinstance(got, cp.ndarray)
    got = cp.asnumpy(got)
    cpu = gpuconv.conv(case.x, case.filters, case.bias, device="cpu", **case.options)
    _check(case, got, "gpu")
    # both within the bound of the exact result, so within twice it of each other
    _, bound = error_bound(case.x, case.filters, case.bias, got.dtype, **case.options)
    assert np.all(np.abs(got.astype(np.complex128) - cpu) <= 2 * bound)
    cp.testing.assert_array_equal(xg, x0)
    # NumPy inputs with device="cuda" run on the GPU and come back as NumPy
    back = gpuconv.conv(case.x, case.filters, case.bias, device="cuda", **case.options)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, got)
