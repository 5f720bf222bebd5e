"""The option grid that CPU and GPU tests share.

The full product of the options (dtype x stride x padding form x padding mode x dilation x groups
x flip x layout x bias/activation x rank x batch axis) is about 10^6 calls, so the grid is a
covering array: every pair of levels of any two options appears in at least one case (built
greedily from a fixed seed, so it is the same on every run), plus seeded random cases. Shapes are
drawn per case so that each option combination meets varied sizes.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

FACTORS: Dict[str, Tuple[Any, ...]] = {
    "rank": (1, 2, 3),
    "dtype": ("float16", "float32", "float64", "complex64", "complex128"),
    "stride": ("1", "2", "mixed"),
    "padding": ("int0", "int1", "per_dim", "pairs", "valid", "same", "full"),
    "padding_mode": ("zeros", "reflect", "replicate", "circular"),
    "dilation": ("1", "2", "mixed"),
    "groups": ("1", "2", "depthwise"),
    "flip": (False, True),
    "layout": ("channels_first", "channels_last"),
    "epilogue": ("none", "bias", "bias_relu", "relu", "bias_sigmoid", "tanh"),
    "batched": (True, False),
}


def _valid(assign: Dict[str, Any]) -> bool:
    # activations are defined for real dtypes only (complex + activation is an error, tested apart)
    if "dtype" in assign and "epilogue" in assign:
        if assign["dtype"].startswith("complex") and assign["epilogue"] not in ("none", "bias"):
            return False
    return True


def pairwise_cases(seed: int = 20261122) -> List[Dict[str, Any]]:
    rng = random.Random(seed)
    names = list(FACTORS)
    uncovered = set()
    for a, b in itertools.combinations(names, 2):
        for la in FACTORS[a]:
            for lb in FACTORS[b]:
                if _valid({a: la, b: lb}):
                    uncovered.add(((a, la), (b, lb)))
    cases = []
    while uncovered:
        best, best_gain = None, -1
        for _ in range(30):
            (a, la), (b, lb) = rng.choice(sorted(uncovered, key=repr))
            assign = {a: la, b: lb}
            for f in rng.sample(names, len(names)):
                if f in assign:
                    continue
                options = [lv for lv in FACTORS[f] if _valid({**assign, f: lv})]
                rng.shuffle(options)
                assign[f] = max(options, key=lambda lv: sum(
                    ((g, assign[g]), (f, lv)) in uncovered or ((f, lv), (g, assign[g])) in uncovered
                    for g in assign))
            gain = sum(((p, assign[p]), (q, assign[q])) in uncovered
                       for p, q in itertools.combinations(names, 2))
            if gain > best_gain:
                best, best_gain = assign, gain
        cases.append(best)
        for p, q in itertools.combinations(names, 2):
            uncovered.discard(((p, best[p]), (q, best[q])))
    return cases


def random_cases(count: int, seed: int) -> List[Dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        assign = {f: rng.choice(levels) for f, levels in FACTORS.items()}
        if _valid(assign):
            out.append(assign)
    return out


@dataclass
class Case:
    """One concrete conv call: arrays and keyword options."""
    name: str
    x: np.ndarray
    filters: np.ndarray
    bias: Optional[np.ndarray]
    options: Dict[str, Any] = field(default_factory=dict)

    @property
    def activation(self):
        return self.options.get("activation")


def _random_array(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    a = rng.uniform(-1, 1, size=shape)
    if dtype.kind == "c":
        a = a + 1j * rng.uniform(-1, 1, size=shape)
    return a.astype(dtype)


def build_case(assign: Dict[str, Any], seed: int, kernel=None, wide: bool = False,
               channels: Optional[Tuple[int, int]] = None) -> Case:
    """Concrete shapes and arrays for one assignment of the options (``kernel`` forces the
    kernel size; ``wide`` makes the last axis long enough for >= 32 outputs per row;
    ``channels`` = (kernels per filter, filters per group) forces those, groups 1 or 2)."""
    rng = np.random.default_rng(seed)
    D = assign["rank"]
    small = D == 3
    K = tuple(int(k) for k in rng.integers(1, 4, size=D))
    if kernel is not None:
        K = (kernel,) * D
    dil = {"1": (1,) * D, "2": (2,) * D,
           "mixed": tuple(int(v) for v in rng.integers(1, 3, size=D))}[assign["dilation"]]
    stride = {"1": (1,) * D, "2": (2,) * D,
              "mixed": tuple(int(v) for v in rng.integers(1, 4, size=D))}[assign["stride"]]
    span = [d * (k - 1) + 1 for k, d in zip(K, dil)]
    # every axis at least as long as the dilated kernel and >= 3: then every padding below
    # (explicit ones <= 2, "same"/"full" < the span) is legal for reflect and circular too
    S = tuple(int(max(s, 3) + rng.integers(0, 3 if small else 6)) for s in span)
    if wide:
        S = S[:-1] + (32 * stride[-1] + span[-1] + int(rng.integers(0, 5)),)
    padding = {
        "int0": 0, "int1": 1,
        "per_dim": tuple(int(v) for v in rng.integers(0, 3, size=D)),
        "pairs": tuple((int(a), int(b)) for a, b in rng.integers(0, 3, size=(D, 2))),
        "valid": "valid", "same": "same", "full": "full",
    }[assign["padding"]]
    G = {"1": 1, "2": 2, "depthwise": None}[assign["groups"]]
    if G is None:
        C_in = int(rng.integers(2, 5))
        G, Cg, Cog = C_in, 1, int(rng.integers(1, 3))
    else:
        Cg, Cog = int(rng.integers(1, 4 if not small else 3)), int(rng.integers(1, 4))
        if channels is not None:
            Cg, Cog = channels
        C_in = G * Cg
    C_out = G * Cog
    N = int(rng.integers(1, 3))
    layout = assign["layout"]
    x_shape = (N, C_in) + S if layout == "channels_first" else (N,) + S + (C_in,)
    if not assign["batched"]:
        x_shape = x_shape[1:]
    dtype = assign["dtype"]
    x = _random_array(rng, x_shape, dtype)
    w = _random_array(rng, (C_out, Cg) + K, dtype)
    ep = assign["epilogue"]
    bias = _random_array(rng, (C_out,), dtype) if ep.startswith("bias") else None
    activation = {"none": None, "bias": None, "bias_relu": "relu", "relu": "relu",
                  "bias_sigmoid": "sigmoid", "tanh": "tanh"}[ep]
    options = dict(stride=stride, padding=padding, dilation=dil, groups=G,
                   padding_mode=assign["padding_mode"], layout=layout, flip=assign["flip"],
                   activation=activation)
    name = (f"{D}d-{dtype}-x{x_shape}-w{w.shape}-s{stride}-p{assign['padding']}"
            f"-{assign['padding_mode']}-d{dil}-g{G}-{'flip' if assign['flip'] else 'corr'}"
            f"-{layout}-{ep}").replace(" ", "")
    return Case(name, x, w, bias, options)


def grid_cases() -> List[Case]:
    assigns = pairwise_cases() + random_cases(120, seed=7)
    return [build_case(a, seed=1000 + i) for i, a in enumerate(assigns)]


def fast_path_cases() -> List[Case]:
    """Cases aimed at the CPU's special paths: 1x1 kernels without padding (pointwise) and one
    kernel per filter (depthwise, with multipliers, short and long rows), across dtypes,
    strides, layouts, epilogues."""
    out = []
    for i, a in enumerate(random_cases(60, seed=11)):
        a = dict(a, padding=rng_choice(i, ("int0", "valid")), padding_mode="zeros")
        out.append(build_case(a, seed=5000 + i, kernel=1))
    for i, a in enumerate(random_cases(60, seed=12)):
        out.append(build_case(dict(a, groups="depthwise"), seed=6000 + i))
    # depthwise with >= 32 outputs per row: the CPU's channels-first depthwise path
    for i, a in enumerate(random_cases(40, seed=13)):
        out.append(build_case(dict(a, groups="depthwise"), seed=7000 + i, wide=True))
    return out


def tile_cases() -> List[Case]:
    """Cases big enough for a tiled GPU kernel to need several tiles along every axis: 70
    filters a group (2-3 filter tiles), 9-13 kernels a filter (many steps of 8 terms), and
    hundreds of output positions; every dtype, both layouts, groups 1 and 2."""
    out = []
    for i, a in enumerate(random_cases(10, seed=14)):
        a = dict(a, groups=rng_choice(i, ("1", "2")), rank=rng_choice(i, (1, 2, 2, 3)),
                 dtype=FACTORS["dtype"][i % 5],
                 layout=rng_choice(i // 5, ("channels_first", "channels_last")))
        if not _valid(a):
            a["epilogue"] = "bias"
        out.append(build_case(a, seed=8000 + i, channels=(9 + i % 5, 70), wide=True))
    return out


def channel_block_cases(dtype: str = "float16", sizes: Tuple[int, ...] = (8, 16, 40, 24, 72),
                        seed: int = 15) -> List[Case]:
    """Cases whose filters have 8, 16, 24, 40 or 72 kernels (the channels-last tensor-core
    kernel's 16-byte channel blocks; below its 32-term steps, and above them, where a step need
    not pass a tap), several tiles along every axis, every rank, both layouts, groups 1 and 2,
    every padding mode and stride/dilation form of the random assignments; float16, or
    ``dtype`` with filters of ``sizes`` kernels each in turn (``seed``: another draw of
    assignments)."""
    out = []
    for i, a in enumerate(random_cases(12, seed=seed)):
        a = dict(a, groups=rng_choice(i, ("1", "2")), rank=rng_choice(i, (1, 2, 2, 3)),
                 dtype=dtype, layout=rng_choice(i // 4, ("channels_first", "channels_last")))
        if not _valid(a):
            a["epilogue"] = "bias"
        Cg = sizes[i % len(sizes)]
        out.append(build_case(a, seed=9000 + i, channels=(Cg, 70 if i % 2 else 24),
                              wide=a["rank"] != 3))
    return out


def pointwise_cases() -> List[Case]:
    """1x1 layers as networks have them (the benchmark's res2_1x1, res4_1x1 and down_1x1s2,
    small): 12-16 kernels a filter and 20 filters a group, one group or two, stride 1 or 2, no
    padding, every rank, mostly channels-first; float32, float16 and float64 (and bfloat16
    copies of the float16 ones where ml_dtypes is installed), with no epilogue, a bias, or a
    bias and relu. The grid draws few kernels a filter, and no float32 channels-first layer of
    one group among its 1x1 ones."""
    out = []
    for i, a in enumerate(random_cases(18, seed=16)):
        a = dict(a, padding="int0", padding_mode="zeros", dilation="1", flip=False,
                 batched=True, groups=rng_choice(i, ("1", "1", "2")),
                 stride=rng_choice(i // 3, ("1", "2")), rank=rng_choice(i, (2, 1, 2, 3)),
                 dtype=rng_choice(i // 2, ("float32", "float16", "float64")),
                 epilogue=rng_choice(i, ("none", "bias", "bias_relu", "none")),
                 layout=rng_choice(i // 6, ("channels_first", "channels_first",
                                            "channels_last")))
        out.append(build_case(a, seed=9500 + i, kernel=1, channels=(12 + i % 5, 20)))
    try:
        import ml_dtypes
    except ImportError:
        return out
    return out + [as_dtype(c, ml_dtypes.bfloat16) for c in out
                  if np.result_type(c.x, c.filters) == np.float16]


def as_dtype(case: Case, dtype) -> Case:
    """The case with its arrays in ``dtype`` (real parts; activation kept): for kernels and
    dtypes that take one real dtype (the tensor-core kernel's float16, bfloat16)."""
    def cast(a):
        return None if a is None else np.ascontiguousarray(a.real).astype(dtype)
    return Case(f"{case.name}-{np.dtype(dtype).name}", cast(case.x), cast(case.filters),
                cast(case.bias), dict(case.options))


def as_float16(case: Case) -> Case:
    return as_dtype(case, np.float16)


def bfloat16_cases() -> List[Case]:
    """The grid's real cases in bfloat16 (one of each rank, layout and option the float16 and
    float32 cases cover), or none where ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        return []
    return [as_dtype(c, ml_dtypes.bfloat16) for c in grid_cases()
            if np.result_type(c.x, c.filters) in (np.float16, np.float32)]


def rng_choice(i, options):
    return options[i % len(options)]
