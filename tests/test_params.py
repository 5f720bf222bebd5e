"""The kernels' by-value record (gpuconv.params, struct gc_conv in gpuconv_params.cuh)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from gpuconv import kernels, params
from gpuconv.geometry import plan_conv


def _header_fields():
    text = (kernels.kernel_dir() / "gpuconv_params.cuh").read_text()
    text = re.sub(r"//[^\n]*", "", text)
    body = re.search(r"struct\s+gc_conv\s*\{(.*?)\};", text, re.S).group(1)
    fields = []
    for declaration in body.split(";"):
        declaration = declaration.strip()
        if not declaration:
            continue
        assert declaration.startswith("long long "), declaration  # every field 8 bytes
        fields += [name.strip() for name in declaration[len("long long "):].split(",")]
    return tuple(fields)


def test_fields_are_the_headers_in_its_order():
    assert _header_fields() == params.FIELDS
    assert params.DTYPE.itemsize == 8 * len(params.FIELDS)
    assert [params.DTYPE.fields[f][1] for f in params.FIELDS] == \
        [8 * i for i in range(len(params.FIELDS))]


def test_record_of_a_2d_channels_last_call():
    geom = plan_conv((2, 9, 11, 6), (8, 3, 3, 5), None, stride=(2, 1), padding=((1, 0), (2, 2)),
                     dilation=(1, 2), groups=2, layout="channels_last", rank=2, fname="conv2d")
    x = np.zeros((2, 9, 11, 6), np.float32).transpose(0, 3, 1, 2)  # channels-first view
    y = np.zeros((2,) + geom.out_spatial + (8,), np.float32).transpose(0, 3, 1, 2)
    r = params.conv_params(geom, x, y, has_bias=True)
    got = {f: int(r[f]) for f in params.FIELDS}
    assert got == dict(
        N=2, C_in=6, C_out=8, groups=2, Cg=3, Cog=4,
        ID=1, IH=9, IW=11, OD=1, OH=geom.out_spatial[0], OW=geom.out_spatial[1],
        KD=1, KH=3, KW=5, SD=1, SH=2, SW=1, PD=0, PH=1, PW=2, DD=1, DH=1, DW=2,
        xs_n=9 * 11 * 6, xs_c=1, xs_d=0, xs_h=11 * 6, xs_w=6,
        ys_n=geom.out_spatial[0] * geom.out_spatial[1] * 8, ys_c=1, ys_d=0,
        ys_h=geom.out_spatial[1] * 8, ys_w=8,
        has_bias=1, channels_last=1)


def test_records_are_shared_and_read_only():
    geom = plan_conv((1, 4, 5, 5, 5), (2, 4, 3, 3, 3), None, rank=3, fname="conv3d")
    x = np.zeros((1, 4, 5, 5, 5))
    y = np.zeros((1, 2, 3, 3, 3))[:, ::-1]  # a negative stride is passed as it is
    a = params.conv_params(geom, x, y, False)
    assert a is params.conv_params(geom, x, y, False)
    assert a.shape == () and a.dtype == params.DTYPE
    assert int(a["ys_c"]) == -27 and int(a["has_bias"]) == 0 and int(a["ID"]) == 5
    with pytest.raises(ValueError):
        a["N"] = 7


def test_launch_args_pass_the_record_as_its_own_bytes():
    """The record goes to CuPy as a plain-bytes view of the same memory (no copy, same bytes);
    scalars and other arguments are passed as they are."""
    from gpuconv import cuda
    geom = plan_conv((1, 8, 16, 16), (8, 8, 3, 3), padding=1)
    x = np.zeros((1, 8, 16, 16), np.float32)
    record = params.conv_params(geom, x, x, True)
    marker = object()
    got = cuda._launch_args((marker, np.int64(3), record))
    assert got[0] is marker and got[1] == 3 and got[1].dtype == np.int64
    view = got[2]
    assert view.dtype.names is None and view.dtype.itemsize == record.dtype.itemsize
    assert view.ctypes.data == record.ctypes.data and view.tobytes() == record.tobytes()
    # only NumPy arrays themselves are records: an array of a subclass (as a CuPy stand-in
    # would be) passes as it is
    sub = x.view(type("Sub", (np.ndarray,), {}))
    assert cuda._launch_args((sub, record))[0] is sub


def test_geometry_hash_is_kept_but_not_pickled():
    """A geometry's hash (the key of the plan and record caches) is worked out once and kept;
    equal geometries hash alike, a changed one is a new key, and a pickled copy works its
    hash out anew (string hashes differ between processes)."""
    import dataclasses
    import pickle
    g = plan_conv((1, 8, 16, 16), (8, 8, 3, 3), padding=1)
    same = plan_conv((1, 8, 16, 16), (8, 8, 3, 3), padding=1)
    assert g == same and hash(g) == hash(same) and g.__dict__["_hash"] == hash(g)
    other = dataclasses.replace(g, N=2)
    assert other != g and "_hash" not in other.__dict__ and {g: 1}.get(other) is None
    state = pickle.dumps(g)
    assert b"_hash" not in state
    back = pickle.loads(state)
    assert back == g and hash(back) == hash(g) and {g: 1}[back] == 1
