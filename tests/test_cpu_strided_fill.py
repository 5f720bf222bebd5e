"""cpu._strided_fill, the gather behind the stride-phase splits and the depthwise slots, against
an index-by-index reference; and its pairs-as-wide-integers path (cpu._gather_pairs)."""
import itertools

import numpy as np
import pytest

from gpuconv import cpu


def _reference(dst_shape, src, firsts, steps):
    """dst[:, :, *t] = src[:, :, *(firsts + steps * t)], zero outside src: one position at a
    time."""
    out = np.zeros(dst_shape, src.dtype)
    for t in itertools.product(*[range(e) for e in dst_shape[2:]]):
        s = tuple(f + st * i for f, st, i in zip(firsts, steps, t))
        if all(0 <= i < m for i, m in zip(s, src.shape[2:])):
            out[(slice(None), slice(None)) + t] = src[(slice(None), slice(None)) + s]
    return out


def _bits(a):
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.itemsize in (1, 2, 4, 8) else a


def _random(shape, dtype, rng):
    raw = rng.integers(0, 256, size=(int(np.prod(shape)) * np.dtype(dtype).itemsize,),
                       dtype=np.uint8)
    return raw.view(dtype).reshape(shape)  # every bit pattern, NaNs and infinities included


# (src spatial, dst spatial, firsts, steps): a last axis of even and odd length, first reads
# before the input (padding), a last element whose partner is past the input's end or inside
# it, other axes strided too, and steps of 1 and 3 that never pair
GEOMETRIES = [
    ((7, 12), (4, 6), (0, 0), (2, 2)),
    ((7, 13), (4, 7), (-1, -1), (2, 2)),
    ((7, 13), (4, 7), (1, 1), (2, 2)),
    ((6, 14), (3, 8), (0, 1), (2, 2)),  # last element's partner past the end
    ((5, 11), (5, 5), (0, 2), (1, 2)),
    ((5, 11), (5, 9), (0, -3), (1, 2)),  # mostly padding before and after
    ((9,), (6,), (-1,), (2,)),
    ((4, 5, 10), (2, 3, 4), (0, -1, 1), (2, 2, 2)),
    ((5, 11), (5, 4), (0, 1), (1, 3)),
    ((5, 11), (5, 9), (0, -1), (1, 1)),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "int16", "float64", "complex64",
                                   "uint8", ">f4"])
@pytest.mark.parametrize("src_sp, dst_sp, firsts, steps", GEOMETRIES)
def test_against_reference_bit_for_bit(dtype, src_sp, dst_sp, firsts, steps):
    rng = np.random.default_rng(len(src_sp) * 100 + sum(firsts) + 7 * sum(steps))
    src = _random((2, 3) + src_sp, dtype, rng)
    before = src.copy()
    dst = np.full((2, 3) + dst_sp, 7, src.dtype)
    cpu._strided_fill(dst, src, firsts, steps)
    np.testing.assert_array_equal(_bits(dst), _bits(_reference(dst.shape, src, firsts, steps)))
    np.testing.assert_array_equal(_bits(src), _bits(before))


@pytest.mark.parametrize("src_sp, dst_sp, firsts, steps", GEOMETRIES[:4])
def test_views_and_casts(src_sp, dst_sp, firsts, steps):
    """Sources with a strided last axis or of another dtype than the destination, and
    destinations that are views into a larger array: the same values."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((2, 3) + src_sp[:-1] + (2 * src_sp[-1],)).astype(np.float32)
    strided = base[..., ::2]  # last axis not contiguous: never read as pairs
    ref = _reference((2, 3) + dst_sp, strided, firsts, steps)
    for src, dtype in ((strided, np.float32), (np.ascontiguousarray(strided), np.float64)):
        big = np.full((3, 4) + tuple(e + 2 for e in dst_sp), 5, dtype)
        dst = big[1:3, 1:4][(slice(None), slice(None)) + tuple(slice(1, 1 + e) for e in dst_sp)]
        cpu._strided_fill(dst, src, firsts, steps)
        np.testing.assert_array_equal(dst, ref.astype(dtype))
        assert (big[0] == 5).all()  # nothing written outside the destination view


def test_stride_two_float32_takes_the_pairs_path(monkeypatch):
    """The reference test above covers the pairs only if they run: a float32 stride-2 fill
    takes them (and a float64 one, which has no integer twice its width, does not)."""
    results = []
    real = cpu._gather_pairs
    monkeypatch.setattr(cpu, "_gather_pairs", lambda d, s: results.append(real(d, s))
                        or results[-1])
    for dtype, expect in ((np.float32, True), (np.float64, False)):
        results.clear()
        src = np.arange(2 * 3 * 7 * 13, dtype=dtype).reshape(2, 3, 7, 13)
        dst = np.empty((2, 3, 4, 7), dtype)
        cpu._strided_fill(dst, src, (-1, -1), (2, 2))
        assert results == [expect]
        np.testing.assert_array_equal(dst, _reference(dst.shape, src, (-1, -1), (2, 2)))


def test_gather_pairs_refuses_what_it_cannot_do():
    src = np.arange(24, dtype=np.float32).reshape(2, 12)
    dst = np.zeros((2, 6), np.float32)
    assert not cpu._gather_pairs(dst[:, :5], src)  # lengths do not pair up
    assert not cpu._gather_pairs(dst.astype(np.float64), src)  # a cast
    assert not cpu._gather_pairs(dst, src.astype(">f4"))  # byte-swapped
    assert not cpu._gather_pairs(dst[:, :3], src[:, ::2])  # last axis strided
    assert (dst == 0).all()
    assert cpu._gather_pairs(dst, src)
    np.testing.assert_array_equal(dst, src[:, ::2])
