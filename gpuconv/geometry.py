"""Shape and padding arithmetic for a convolution layer: the one place where it is written.

Both backends (``gpuconv.cpu`` and ``gpuconv.cuda``) and every public function take a
:class:`ConvGeometry` from :func:`plan_conv` and never recompute output sizes or padding themselves.

Vocabulary: a *kernel* is one weight array of ``kernel_size`` slid over one input channel; a
*filter* is the stack of ``C_in // groups`` kernels that makes one output channel; a layer has
``C_out`` filters, so its weights (``filters``) have shape ``(C_out, C_in // groups,
*kernel_size)``.
"""
from __future__ import annotations

import functools
import itertools
import math
import numbers
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union, cast

LAYOUTS = ("channels_first", "channels_last")
PADDING_STRINGS = ("valid", "same", "full")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

IntOrTuple = Union[int, Sequence[int]]
PaddingArg = Union[str, int, Sequence[Union[int, Sequence[int]]]]


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but stride=True is a mistake, not a stride of 1.
    kind = type(value)
    if kind is int:  # the usual case, without the ABC check below (every call asks)
        return True
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f"'{value}'"


def normalize_ints(value: Any, rank: int, name: str, minimum: int) -> Tuple[int, ...]:
    """``value`` (an int or one int per spatial dim) as ``rank`` ints, each >= minimum."""
    if _is_int(value):
        values = (int(value),) * rank
    elif isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(
                f"{name} has {len(value)} entries {tuple(value)} but the convolution has {rank} "
                f"spatial dim(s): give one int or {rank} ints")
        if not all(_is_int(v) for v in value):
            raise TypeError(f"{name} must hold integers, got {tuple(value)}")
        values = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{name} must be an int or a tuple of {rank} ints, got {_fmt(value)}")
    for v in values:
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum} in every spatial dim, got {values}")
    return values


def conv_output_size(size: int, kernel: int, stride: int, dilation: int,
                     pad_before: int, pad_after: int) -> int:
    """Number of output positions along one axis (PyTorch's formula); <= 0 means none fit."""
    span = dilation * (kernel - 1) + 1
    return (size + pad_before + pad_after - span) // stride + 1


def resolve_padding(padding: PaddingArg, in_spatial: Tuple[int, ...], kernel: Tuple[int, ...],
                    stride: Tuple[int, ...], dilation: Tuple[int, ...]
                    ) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Per-dim ``(pad_before, pad_after)`` for any accepted ``padding`` form.

    - int: the same amount on both sides of every spatial dim;
    - one int per dim, or one ``(before, after)`` pair per dim (the two forms may be mixed);
    - ``"valid"``: none; ``"full"``: ``dilation*(k-1)`` on both sides (every overlap, as
      ``scipy.signal`` mode='full'); ``"same"``: output size ``ceil(in/stride)``, the total padding
      split with the extra element after (TensorFlow/Keras).
    """
    rank = len(in_spatial)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * rank, (0,) * rank
        if padding == "full":
            full = tuple(d * (k - 1) for k, d in zip(kernel, dilation))
            return full, full
        if padding == "same":
            lo: List[int] = []
            hi: List[int] = []
            for n, k, s, d in zip(in_spatial, kernel, stride, dilation):
                out = -(-n // s)  # ceil(n / s)
                total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
                lo.append(total // 2)
                hi.append(total - total // 2)
            return tuple(lo), tuple(hi)
        raise ValueError(f"padding must be an int, a tuple, or one of {PADDING_STRINGS}, "
                         f"got {_fmt(padding)}")
    if _is_int(padding):
        p0 = int(cast(int, padding))
        pairs = [(p0, p0)] * rank
    elif isinstance(padding, (tuple, list)):
        if len(padding) != rank:
            raise ValueError(
                f"padding has {len(padding)} entries {tuple(padding)} but the convolution has "
                f"{rank} spatial dim(s): give one int, {rank} ints or {rank} (before, after) pairs")
        pairs = []
        for p in padding:
            if _is_int(p):
                pairs.append((int(p), int(p)))
            elif isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) for v in p):
                pairs.append((int(p[0]), int(p[1])))
            else:
                raise TypeError(f"padding entries must be ints or (before, after) pairs of ints, "
                                f"got {p!r} in {tuple(padding)}")
    else:
        raise TypeError(f"padding must be an int, a tuple, or one of {PADDING_STRINGS}, "
                        f"got {_fmt(padding)}")
    before = tuple(p[0] for p in pairs)
    after = tuple(p[1] for p in pairs)
    if min(before + after) < 0:
        raise ValueError(f"padding must be >= 0, got (before, after) = {tuple(pairs)}")
    return before, after


@dataclass(frozen=True)
class ConvGeometry:
    """Every size of one convolution call, validated. Spatial tuples have ``rank`` entries.
    The derived sizes below are worked out once a geometry: plans are kept (:func:`plan_conv`),
    so a repeated call reads them."""
    rank: int                       # D, the number of spatial dims (1, 2 or 3)
    layout: str                     # "channels_first" or "channels_last"
    batched: bool                   # False when x had no batch axis
    N: int
    C_in: int
    C_out: int
    groups: int
    in_spatial: Tuple[int, ...]
    kernel: Tuple[int, ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    pad_before: Tuple[int, ...]
    pad_after: Tuple[int, ...]
    padding_mode: str
    out_spatial: Tuple[int, ...]

    @functools.cached_property
    def C_in_per_group(self) -> int:
        """Kernels per filter."""
        return self.C_in // self.groups

    @functools.cached_property
    def C_out_per_group(self) -> int:
        return self.C_out // self.groups

    @functools.cached_property
    def padded_spatial(self) -> Tuple[int, ...]:
        return tuple(n + b + a for n, b, a in zip(self.in_spatial, self.pad_before, self.pad_after))

    @functools.cached_property
    def terms_per_output(self) -> int:
        """Products summed into one output element: kernels per filter times taps per kernel."""
        return self.C_in_per_group * math.prod(self.kernel)

    @functools.cached_property
    def positions(self) -> int:
        """Output positions: images times output pixels (the implicit GEMM's M)."""
        return self.N * math.prod(self.out_spatial)

    @functools.cached_property
    def flops(self) -> int:
        """2 * multiply-adds (the convention of shapes.json)."""
        return 2 * self.positions * self.C_out * self.terms_per_output

    def out_shape(self) -> Tuple[int, ...]:
        """Shape of the result as the caller sees it (layout and batch axis as given)."""
        if self.layout == "channels_first":
            shape = (self.N, self.C_out) + self.out_spatial
        else:
            shape = (self.N,) + self.out_spatial + (self.C_out,)
        return shape if self.batched else shape[1:]

    def __hash__(self) -> int:
        """The fields' hash, worked out once: geometries key the plan and record caches, which
        every call looks up (the generated hash rebuilt and hashed a tuple of all fields each
        time). Not carried across pickling (string hashes differ between processes)."""
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> Dict[str, Any]:
        """The fields alone: the hash and the derived sizes are worked out again on use."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def with_zero_padding(self) -> "ConvGeometry":
        """The geometry of the same call on an input already padded by its padding_mode."""
        zero = (0,) * self.rank
        return ConvGeometry(self.rank, self.layout, self.batched, self.N, self.C_in, self.C_out,
                            self.groups, self.padded_spatial, self.kernel, self.stride,
                            self.dilation, zero, zero, "zeros", self.out_spatial)


def _check_layout(layout: str) -> None:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {_fmt(layout)}")


def _kernel_rank(filter_shape: Sequence[int], rank: Optional[int], fname: str) -> int:
    """D, the kernels' rank, checked against the rank that ``fname`` requires."""
    D = len(filter_shape) - 2
    if rank is not None and D != rank:
        raise ValueError(
            f"{fname} needs filters of shape (C_out, C_in/groups, {', '.join('k' * rank)}) "
            f"({rank + 2} dims), got filters of shape {tuple(filter_shape)}")
    if D not in (1, 2, 3):
        raise ValueError(
            f"filters must have shape (C_out, C_in/groups, *kernel_size) with 1, 2 or 3 kernel "
            f"dims (3 to 5 dims in all), got filters of shape {tuple(filter_shape)}")
    return D


def _split_channels(shape: Sequence[int], D: int, layout: str, name: str, channels: str,
                    filter_shape: Sequence[int]) -> Tuple[bool, int, int, Tuple[int, ...]]:
    """(batched, N, C, spatial) of an x-like array ``name`` with ``channels`` channels."""
    if len(shape) not in (D + 1, D + 2):
        where = (f"(N, {channels}, *spatial)" if layout == "channels_first"
                 else f"(N, *spatial, {channels})")
        raise ValueError(
            f"{name} must have {D + 2} dims {where} or {D + 1} without the batch axis to match "
            f"filters of shape {tuple(filter_shape)} ({D}-D kernels), got {name} of shape "
            f"{tuple(shape)}")
    batched = len(shape) == D + 2
    full = tuple(shape) if batched else (1,) + tuple(shape)
    if layout == "channels_first":
        return batched, full[0], full[1], full[2:]
    return batched, full[0], full[-1], full[1:-1]


def _check_filters(filter_shape: Sequence[int], groups: int) -> Tuple[int, int, int,
                   Tuple[int, ...]]:
    """(groups, C_out, C_in/groups, kernel_size) of a filter bank, checked."""
    if not _is_int(groups):
        raise TypeError(f"groups must be an int, got {_fmt(groups)}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    C_out, Cg, kernel = filter_shape[0], filter_shape[1], tuple(filter_shape[2:])
    if min(kernel) < 1:
        raise ValueError(f"filters hold empty kernels: kernel_size {kernel} from filters of shape "
                         f"{tuple(filter_shape)}")
    if C_out < 1 or Cg < 1:
        raise ValueError(f"filters of shape {tuple(filter_shape)} hold no kernels: C_out and "
                         f"C_in/groups must be >= 1")
    if C_out % groups:
        raise ValueError(f"groups={groups} must divide the number of filters C_out={C_out} "
                         f"(filters of shape {tuple(filter_shape)})")
    return groups, C_out, Cg, kernel


def _typed_key(value: Any) -> Any:
    """``value`` with the type of every part beside it: 1, 1.0, True and np.int64(1) compare
    equal in Python but are not the same argument (True is refused where 1 is accepted)."""
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_typed_key(v) for v in value))
    return (type(value), value)


def _plain(value: Any) -> bool:
    """Whether ``value`` is None, a str, an int (exactly: not a bool) or a tuple of these, nested:
    arguments that are their own key, since no two of them compare equal across types."""
    kind = type(value)
    if kind is int or kind is str or value is None:
        return True
    if kind is not tuple:
        return False
    for v in value:  # a loop, not all() over a generator: this runs on every call
        kind = type(v)
        if not (kind is int or kind is str or v is None or (kind is tuple and _plain(v))):
            return False
    return True


_PLANS: Dict[Any, "ConvGeometry"] = {}
_PLANS_MAX = 4096


def plan_conv(x_shape: Tuple[int, ...], filter_shape: Tuple[int, ...],
              bias_shape: Optional[Tuple[int, ...]] = None, *, stride: IntOrTuple = 1,
              padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1,
              padding_mode: str = "zeros", layout: str = "channels_first",
              rank: Optional[int] = None, fname: str = "conv") -> ConvGeometry:
    """Validate the shapes and options of one ``conv`` call and work out every size.

    ``x_shape`` is ``(N, C_in, *spatial)`` (channels_first) or ``(N, *spatial, C_in)``
    (channels_last), with or without the N axis; ``filter_shape`` is
    ``(C_out, C_in // groups, *kernel_size)``. ``rank`` (1, 2 or 3), when given, is the spatial rank
    that ``fname`` (conv1d/conv2d/conv3d) requires. Raises ValueError/TypeError naming the argument.

    Plans of valid calls are kept (by the arguments and their types; at most 4096): a layer
    called again in a loop skips the checks, which are most of a small call's host time.
    """
    args = (x_shape, filter_shape, bias_shape, stride, padding, dilation, groups, padding_mode,
            layout, rank, fname)
    try:
        # shapes are tuples of ints; options usually ints and strings: then the arguments are
        # the key as they are, and only other arguments pay for typing every part
        key = args if _plain(args[3:]) else _typed_key(args)
        plan = _PLANS.get(key)
    except TypeError:  # an unhashable argument: it gets the checks and their error
        key, plan = None, None
    if plan is None:
        plan = _plan_conv(*args)
        if key is not None:
            if len(_PLANS) >= _PLANS_MAX:
                _PLANS.clear()
            _PLANS[key] = plan
    return plan


def _plan_conv(x_shape: Tuple[int, ...], filter_shape: Tuple[int, ...],
               bias_shape: Optional[Tuple[int, ...]], stride: IntOrTuple, padding: PaddingArg,
               dilation: IntOrTuple, groups: int, padding_mode: str, layout: str,
               rank: Optional[int], fname: str) -> ConvGeometry:
    _check_layout(layout)
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {_fmt(padding_mode)}")
    D = _kernel_rank(filter_shape, rank, fname)
    batched, N, C_in, in_spatial = _split_channels(x_shape, D, layout, "x", "C_in", filter_shape)
    groups, C_out, Cg, kernel = _check_filters(filter_shape, groups)
    if C_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels C_in={C_in} "
                         f"(x of shape {tuple(x_shape)}, layout='{layout}')")
    if C_in // groups != Cg:
        raise ValueError(
            f"channel mismatch: x of shape {tuple(x_shape)} (layout='{layout}') has C_in={C_in} "
            f"channels, so with groups={groups} each filter needs {C_in // groups} kernels, but "
            f"filters of shape {tuple(filter_shape)} have {Cg} kernels per filter")
    if bias_shape is not None and tuple(bias_shape) != (C_out,):
        raise ValueError(f"bias must have shape (C_out,) = ({C_out},) for filters of shape "
                         f"{tuple(filter_shape)}, got bias of shape {tuple(bias_shape)}")

    stride = normalize_ints(stride, D, "stride", 1)
    dilation = normalize_ints(dilation, D, "dilation", 1)
    before, after = resolve_padding(padding, in_spatial, kernel, stride, dilation)

    if padding_mode == "reflect":
        for ax, (n, b, a) in enumerate(zip(in_spatial, before, after)):
            if max(b, a) >= n:
                raise ValueError(
                    f"reflect padding must be smaller than the input along each spatial dim: "
                    f"padding (before, after) = ({b}, {a}) on spatial dim {ax} of size {n} "
                    f"(x of shape {tuple(x_shape)})")
    elif padding_mode == "circular":
        for ax, (n, b, a) in enumerate(zip(in_spatial, before, after)):
            if max(b, a) > n:
                raise ValueError(
                    f"circular padding may wrap around at most once: padding (before, after) = "
                    f"({b}, {a}) on spatial dim {ax} of size {n} (x of shape {tuple(x_shape)})")
    elif padding_mode == "replicate":
        if min(in_spatial) < 1 and max(before + after) > 0:
            raise ValueError(f"replicate padding needs a non-empty input, got x of shape "
                             f"{tuple(x_shape)}")

    out_spatial = tuple(conv_output_size(n, k, s, d, b, a) for n, k, s, d, b, a
                        in zip(in_spatial, kernel, stride, dilation, before, after))
    if min(out_spatial) < 1:
        padded = tuple(n + b + a for n, b, a in zip(in_spatial, before, after))
        span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        raise ValueError(
            f"kernel larger than the padded input: kernel_size {kernel} with dilation {dilation} "
            f"spans {span}, but x of shape {tuple(x_shape)} padded by (before, after) = "
            f"{tuple(zip(before, after))} has spatial size {padded}")
    return ConvGeometry(D, layout, batched, N, C_in, C_out, groups, tuple(in_spatial), kernel,
                        stride, dilation, before, after, padding_mode, out_spatial)


class AdjointPhase(NamedTuple):
    """One stride phase of a data adjoint as a convolution (see data_adjoint_phases): the
    elements ``out`` of the input-shaped result (one slice per spatial axis, step = stride) are
    ``conv`` (a stride-1 convolution, or None where no tap reaches them: zero) of the gradient's
    elements ``grad`` (one slice per axis) with the taps ``taps`` of each group's transposed
    filters (one slice per axis), reversed."""
    out: Tuple[slice, ...]
    grad: Tuple[slice, ...]
    taps: Tuple[slice, ...]
    conv: Optional["ConvGeometry"]


def _axis_phases(I: int, O: int, K: int, s: int, d: int, pb: int) -> List[Tuple[Any, ...]]:
    """One axis of data_adjoint_phases: (out slice, grad slice, tap slice, J, dilation, before,
    after) per residue of i + before modulo the stride, J = 0 where no tap reaches it."""
    g = math.gcd(s, d)
    kstep, dil = s // g, d // g
    phases = []
    for rho in range(s):
        q_min, q_max = -((rho - pb) // s), (I - 1 + pb - rho) // s  # dx[q*s + rho - pb]
        U = q_max - q_min + 1
        if U < 1:
            continue
        i0 = q_min * s + rho - pb
        out = slice(i0, i0 + (U - 1) * s + 1, s)
        k0 = next((k for k in range(min(K, kstep)) if (k * d - rho) % s == 0), None)
        if k0 is None:
            phases.append((out, slice(0, 0), slice(0, 0), 0, 1, 0, 0))
            continue
        J = len(range(k0, K, kstep))
        e0 = (k0 * d - rho) // s  # dx[q*s + rho - pb] = sum_j g[q - e0 - dil*j] w[k0 + kstep*j]
        before = e0 + dil * (J - 1) - q_min
        start = max(0, -before)  # negative padding: drop gradient elements instead
        before += start
        after = U - (O - start) - before + dil * (J - 1)
        stop = O + min(0, after)
        after = max(0, after)
        if stop <= start:
            phases.append((out, slice(0, 0), slice(0, 0), 0, 1, 0, 0))
            continue
        phases.append((out, slice(start, stop), slice(k0, K, kstep), J, dil, before, after))
    return phases


@functools.lru_cache(maxsize=1024)
def data_adjoint_phases(geom: ConvGeometry) -> Optional[Tuple[AdjointPhase, ...]]:
    """The data adjoint of ``geom``'s conv (and the transposed convolution) as stride-1
    convolutions, for zero padding (None for other padding modes, whose borders fold).

    dx[i] = sum over o, k with o*stride + k*dilation - before = i of g[o] w[k]: the elements i
    with one residue of i + before modulo the stride (a stride phase, one per residue and axis)
    are reached by the taps k with k*dilation of that residue only, and over them the sum is a
    stride-1 conv of g with those taps reversed (dilation/gcd(stride, dilation) apart), each
    group's filters transposed, padded so that it lands on the phase's elements (negative
    padding drops gradient elements instead). At stride 1 that is one conv with all taps:
    padding dilation*(k-1) - before before and in - out + before after. Every (o, k) pair is in
    exactly one phase, so the phases do the adjoint's multiply-adds and no more."""
    if geom.padding_mode != "zeros":
        return None
    axes = [_axis_phases(*a) for a in zip(geom.in_spatial, geom.out_spatial, geom.kernel,
                                          geom.stride, geom.dilation, geom.pad_before)]
    phases = []
    for combo in itertools.product(*axes):
        out, grad, taps, J, dil, before, after = (tuple(v) for v in zip(*combo))
        conv = None
        if min(J) > 0:
            in_spatial = tuple(sl.stop - sl.start for sl in grad)
            conv = ConvGeometry(geom.rank, geom.layout, geom.batched, geom.N, geom.C_out,
                                geom.C_in, geom.groups, in_spatial, J, (1,) * geom.rank, dil,
                                before, after, "zeros",
                                tuple(len(range(n)[sl]) for sl, n in zip(out, geom.in_spatial)))
        phases.append(AdjointPhase(out, grad, taps, conv))
    return tuple(phases)  # cached: a layer's calls share it


def _check_result_shape(geom: ConvGeometry, got_shape: Sequence[int], got_name: str,
                        given_name: str, given_shape: Sequence[int]) -> None:
    if tuple(got_shape) != geom.out_shape():
        raise ValueError(
            f"{given_name} {tuple(given_shape)} cannot produce {got_name} of shape "
            f"{tuple(got_shape)}: with these options conv gives {geom.out_shape()}")


def plan_conv_input_grad(grad_out_shape: Sequence[int], filter_shape: Sequence[int],
                         input_shape: Sequence[int], **options: Any) -> ConvGeometry:
    """Geometry of the conv whose input gradient is asked for: ``input_shape`` is its x.

    ``options`` are plan_conv's keywords; ValueError when conv of ``input_shape`` does not give
    ``grad_out_shape``.
    """
    input_shape = _shape_arg(input_shape, "input_shape")
    geom = plan_conv(input_shape, tuple(filter_shape), **options)
    _check_result_shape(geom, grad_out_shape, "grad_out", "input_shape", input_shape)
    return geom


def plan_conv_filter_grad(x_shape: Sequence[int], grad_out_shape: Sequence[int],
                          filter_shape: Sequence[int], **options: Any) -> ConvGeometry:
    """Geometry of the conv whose filter gradient is asked for (``filter_shape`` its filters)."""
    filter_shape = _shape_arg(filter_shape, "filter_shape")
    geom = plan_conv(tuple(x_shape), filter_shape, **options)
    if tuple(grad_out_shape) != geom.out_shape():  # (the message is built only then)
        _check_result_shape(geom, grad_out_shape, "grad_out",
                            f"x of shape {tuple(x_shape)} with filter_shape", filter_shape)
    return geom


def _shape_arg(shape: Sequence[int], name: str) -> Tuple[int, ...]:
    if not isinstance(shape, (tuple, list)) or not all(_is_int(v) for v in shape):
        raise TypeError(f"{name} must be a tuple of ints, got {shape!r}")
    if min(shape, default=0) < 0:
        raise ValueError(f"{name} must not hold negative sizes, got {tuple(shape)}")
    return tuple(int(v) for v in shape)


def plan_conv_transpose(y_shape: Sequence[int], filter_shape: Sequence[int],
                        bias_shape: Optional[Sequence[int]] = None, *, stride: IntOrTuple = 1,
                        padding: PaddingArg = 0, output_padding: IntOrTuple = 0,
                        dilation: IntOrTuple = 1, groups: int = 1,
                        layout: str = "channels_first", rank: Optional[int] = None,
                        fname: str = "conv_transpose") -> ConvGeometry:
    """Geometry of a transposed convolution, described as the conv it transposes.

    ``y`` (C_out channels, ``out_spatial``) maps back to C_in channels of size
    ``(in - 1)*stride - before - after + dilation*(k - 1) + output_padding + 1`` per axis
    (PyTorch's ConvTranspose). The returned geometry is that of the forward conv from the
    transposed result (``in_spatial``) to ``y`` (``out_spatial``); ``bias_shape`` is ``(C_in,)``.
    Padding is an int, one int per dim or one (before, after) pair per dim.
    """
    _check_layout(layout)
    D = _kernel_rank(filter_shape, rank, fname)
    if isinstance(padding, str):
        raise ValueError(f"{fname} takes an int, one int per dim or (before, after) pairs as "
                         f"padding, got {_fmt(padding)}")
    batched, N, C_y, y_spatial = _split_channels(y_shape, D, layout, "y", "C_out", filter_shape)
    groups, C_out, Cg, kernel = _check_filters(filter_shape, groups)
    if C_y != C_out:
        raise ValueError(f"channel mismatch: y of shape {tuple(y_shape)} (layout='{layout}') "
                         f"has {C_y} channels but filters of shape {tuple(filter_shape)} map "
                         f"C_out={C_out} channels back to C_in={Cg * groups}")
    C_in = Cg * groups
    if bias_shape is not None and tuple(bias_shape) != (C_in,):
        raise ValueError(f"bias must have shape (C_in,) = ({C_in},) for {fname} with filters of "
                         f"shape {tuple(filter_shape)}, got bias of shape {tuple(bias_shape)}")
    stride = normalize_ints(stride, D, "stride", 1)
    dilation = normalize_ints(dilation, D, "dilation", 1)
    output_padding = normalize_ints(output_padding, D, "output_padding", 0)
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= max(s, d):
            raise ValueError(f"output_padding must be smaller than max(stride, dilation) in "
                             f"every dim, got output_padding {output_padding} with stride "
                             f"{stride} and dilation {dilation}")
    before, after = resolve_padding(padding, y_spatial, kernel, stride, dilation)
    in_spatial = tuple((n - 1) * s - b - a + d * (k - 1) + op + 1 for n, s, b, a, d, k, op
                       in zip(y_spatial, stride, before, after, dilation, kernel,
                              output_padding))
    if min(y_spatial) < 1 or min(in_spatial) < 1:
        raise ValueError(f"{fname} of y of shape {tuple(y_shape)} with padding "
                         f"{tuple(zip(before, after))} gives an empty result (spatial size "
                         f"{in_spatial})")
    return ConvGeometry(D, layout, batched, N, C_in, C_out, groups, in_spatial, kernel, stride,
                        dilation, before, after, "zeros", tuple(y_spatial))
