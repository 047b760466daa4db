"""The layout of every tensor of a graph: which axis is the batch, which the channels, which the
spatial or token axes — determined from the graph, never assumed.

Why
---
CAM methods read a layer as ``A`` of shape ``(N, K, *S)``.  Real graphs hold activations in many
layouts: channels-first ``(N, C, H, W)`` after a Conv, channels-last ``(N, H, W, C)`` in Swin and
ConvNeXt blocks, token sequences ``(N, T, C)`` in a ViT with ``p`` prefix tokens (class,
distillation, register) before the ``h·w`` patch tokens, sequence-first ``(T, N, C)`` inside
``nn.MultiheadAttention``, and windows ``(N·n_w, w², C)`` that mix the batch with space.  Reading
any of them as NCHW gives a meaningless map with no error.

How
---
Each axis of each tensor gets a *tag*, propagated forward from the graph input through the ops
whose semantics fix the axes (:func:`infer_layouts`):

``N``  batch — one per tensor, or the tensor is not a per-sample feature map;
``C``  channels (features, embedding);
``S0, S1, …``  spatial axes, in the input's order (height, width, …);
``T``  patch tokens: the row-major flattening of a spatial grid ``(h, w)`` (a Reshape that merges
       the spatial axes of a patch-embedding output), after ``prefix`` extra tokens that a Concat
       put in front (and ``suffix`` after).

Evidence used, op by op: the input layout (``NCHW`` or ``NHWC``, :class:`refcam.onnx.Model`'s
``layout``); Conv / pooling / BatchNorm outputs are ``(N, C, *S)`` by the ONNX spec; Transpose
permutes tags; elementwise ops, LayerNorm, Pad and Resize keep them; a MatMul/Gemm with a constant
weight maps the channel axis to a new channel axis; Reshape/Flatten merge or split axes (merging
spatial axes gives tokens with their grid, splitting the tokens back gives spatial axes, anything
else — heads split from channels, windows split from space, batch merged with windows — gives
*unknown*); Concat along the token axis counts prefix tokens; Gather of one token (the class
token readout) drops the token axis.  Any other op gives unknown tags: a layer whose layout is
unknown is refused, with a message naming the :data:`layer_layout` to pass, never read as NCHW.

An explicit layout (:func:`parse_layout`) overrides inference for one layer: ``"NCHW"``,
``"NHWC"``, ``"NCL"``, ``"NLC"``, ``"NCDHW"``, ``"NDHWC"``, and for tokens ``"NTC:1+14x14"``
(``N`` samples, ``T`` tokens, ``C`` channels; 1 prefix token, then a 14×14 grid) or
``"TNC:1+14x14"`` (sequence-first).

>>> lay = parse_layout("NTC:1+2x3")
>>> lay.describe()
'NTC 1+2x3'
>>> import numpy as np
>>> a = np.arange(2 * 7 * 4).reshape(2, 7, 4)      # (N, T, C): 1 class token + 2x3 patches
>>> m = lay.to_map(a)
>>> m.shape, bool((m[:, :, 0, 1] == a[:, 2, :]).all())
((2, 4, 2, 3), True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, ShapeError
from ._nodes import node_attr

__all__ = ["Layout", "infer_layouts", "parse_layout", "LAYOUT_HELP"]

LAYOUT_HELP = (
    "pass layer_layout= (CLI --layer-layout) as 'NCHW', 'NHWC', 'NCL', 'NLC', 'NCDHW', 'NDHWC', "
    "or for token sequences 'NTC:P+HxW' / 'TNC:P+HxW' (P prefix tokens, then an H×W grid of "
    "patch tokens, e.g. 'NTC:1+14x14' for a ViT-B/16 at 224 px)"
)

_SPATIAL_LETTERS = {1: "L", 2: "HW", 3: "DHW"}


@dataclass(frozen=True)
class Layout:
    """Axis roles of one tensor in its native layout.

    Attributes
    ----------
    axes : one tag per native axis: ``"N"``, ``"C"``, ``"S0"``, ``"S1"``, … or ``"T"``; ``None``
        for an axis of unknown role.
    grid : for a token layout, the spatial grid ``(h, w)`` the patch tokens flatten (row-major);
        ``None`` entries are unknown sizes.
    prefix, suffix : extra tokens before / after the grid tokens (``None``: unknown count, resolved
        from the token count at run time when the other one is known).
    reason : why the layout is unclear (empty when it is clear).
    source : ``"graph"`` (inferred) or ``"given"`` (an explicit ``layer_layout``).
    """

    axes: tuple
    grid: tuple | None = None
    prefix: int | None = 0
    suffix: int | None = 0
    reason: str = ""
    source: str = "graph"

    # ------------------------------------------------------------------ classification
    @property
    def rank(self) -> int:
        return len(self.axes)

    @property
    def batch_axis(self) -> int | None:
        return self.axes.index("N") if self.axes.count("N") == 1 else None

    @property
    def channel_axis(self) -> int | None:
        return self.axes.index("C") if self.axes.count("C") == 1 else None

    @property
    def spatial_axes(self) -> tuple:
        """Native axes of the map's spatial positions, in map order (the token axis for tokens)."""
        if "T" in self.axes:
            return (self.axes.index("T"),)
        s = [(t, i) for i, t in enumerate(self.axes) if isinstance(t, str) and t.startswith("S")]
        return tuple(i for _, i in sorted(s, key=lambda p: int(p[0][1:])))

    @property
    def is_tokens(self) -> bool:
        return self.axes.count("T") == 1

    @property
    def kind(self) -> str:
        """``"spatial"``, ``"tokens"``, ``"vector"`` (``(N, C)``) or ``"unclear"``."""
        if self.reason or None in self.axes or self.batch_axis is None:
            return "unclear"
        n_c = self.axes.count("C")
        n_t = self.axes.count("T")
        n_s = sum(1 for t in self.axes if t.startswith("S"))
        if n_c != 1 or (n_t and n_s) or n_t > 1:
            return "unclear"
        if n_t:
            return "tokens" if self.grid is not None and None not in self.grid else "unclear"
        return "spatial" if n_s else "vector"

    @property
    def is_map(self) -> bool:
        """A clear spatial or token layout: the tensor reads as ``(N, K, *S)``."""
        return self.kind in ("spatial", "tokens")

    def map_shape(self, native_shape: tuple | None) -> tuple | None:
        """``(N, K, *S)`` of a tensor of ``native_shape`` (entries may be ``None``/symbolic)."""
        if not self.is_map or native_shape is None or len(native_shape) != self.rank:
            return None
        n = native_shape[self.batch_axis]
        k = native_shape[self.channel_axis]
        if self.is_tokens:
            return (n, k, *self.grid)
        return (n, k, *(native_shape[i] for i in self.spatial_axes))

    def describe(self) -> str:
        """Short display: ``NCHW``, ``NHWC``, ``NTC 1+14x14``, ``TNC 1+14x14``, ``NC``, ``?``."""
        if self.kind == "unclear":
            return "?"
        n_s = sum(1 for t in self.axes if t.startswith("S"))
        letters = _SPATIAL_LETTERS.get(n_s, "")
        out = []
        for t in self.axes:
            if t.startswith("S"):
                out.append(letters[int(t[1:])] if n_s in _SPATIAL_LETTERS else "S")
            else:
                out.append(t)
        s = "".join(out)
        if self.is_tokens:
            pre = "?" if self.prefix is None else str(self.prefix)
            s += f" {pre}+{'x'.join(str(g) for g in self.grid)}"
            if self.suffix:
                s += f"+{self.suffix}"
        return s

    # ------------------------------------------------------------------ conversion
    def _require_map(self, argument: str) -> None:
        if not self.is_map:
            why = self.reason or f"axis roles {self.axes} are not (batch, channels, space)"
            raise ShapeError(argument, self.axes, "a spatial or token layout", f"{why}; {LAYOUT_HELP}")

    def _tokens(self, t: int, argument: str) -> tuple[int, int]:
        hw = int(np.prod(self.grid))
        pre, suf = self.prefix, self.suffix
        if pre is None and suf is not None:
            pre = t - hw - suf
        if suf is None and pre is not None:
            suf = t - hw - pre
        if pre is None or suf is None or pre < 0 or suf < 0 or pre + hw + suf != t:
            raise ShapeError(
                argument,
                t,
                f"{self.prefix if self.prefix is not None else '?'} + {hw} "
                f"+ {self.suffix if self.suffix is not None else '?'} tokens",
                f"the token count does not fit the grid {'x'.join(map(str, self.grid))}; {LAYOUT_HELP}",
            )
        return pre, hw

    def to_map(self, a: np.ndarray, *, lead: int = 0, argument: str = "layer") -> np.ndarray:
        """Native array → ``(N, *lead, K, *S)``; tokens drop their prefix/suffix and unflatten.

        ``lead`` extra axes (e.g. one per target) sit right after native axis 0, as the gradient
        provider stacks them; they stay right after the batch axis.
        """
        self._require_map(argument)
        a = np.asarray(a)
        if a.ndim != self.rank + lead:
            raise ShapeError(argument, a.shape, f"rank {self.rank + lead}", f"layout {self.describe()}")

        def pos(i: int) -> int:  # native axis i → position in ``a``
            return 0 if i == 0 else i + lead

        perm = [pos(self.batch_axis), *range(1, 1 + lead), pos(self.channel_axis)]
        perm += [pos(i) for i in self.spatial_axes]
        if self.batch_axis != 0 and lead:
            # lead axes were inserted after native axis 0, which is not the batch here
            perm = [pos(self.batch_axis), *range(1, 1 + lead), pos(self.channel_axis)]
            perm += [pos(i) for i in self.spatial_axes]
        out = np.transpose(a, perm)
        if not self.is_tokens:
            return out
        pre, hw = self._tokens(out.shape[-1], argument)
        out = out[..., pre : pre + hw]
        return out.reshape(out.shape[:-1] + tuple(self.grid))

    def from_map(self, maps: np.ndarray, like: np.ndarray | None = None, *,
                 argument: str = "layer") -> np.ndarray:
        """Inverse of :meth:`to_map` (``lead=0``): ``(N, K, *S)`` → native, with the tokens outside
        the grid (prefix/suffix) copied from ``like`` (the native activations being edited; needed
        for token layouts only)."""
        self._require_map(argument)
        perm = [self.batch_axis, self.channel_axis, *self.spatial_axes]
        inv = np.argsort(perm)
        if self.is_tokens:
            base = np.transpose(np.asarray(like), perm).copy()
            pre, hw = self._tokens(base.shape[-1], argument)
            base[..., pre : pre + hw] = np.asarray(maps).reshape(maps.shape[:2] + (hw,))
            return np.transpose(base, inv)
        return np.transpose(np.asarray(maps), inv)


# ---------------------------------------------------------------------------- parsing overrides
_PARSE = re.compile(r"^\s*([A-Z]+)\s*(?::\s*(\d+)\s*\+\s*(\d+(?:\s*[xX×]\s*\d+)*)\s*(?:\+\s*(\d+))?)?\s*$")
_NAMED = {"channels_first": "NCHW", "channels_last": "NHWC"}


def parse_layout(spec: Any, *, argument: str = "layer_layout") -> Layout:
    """An explicit layout from its name.

    Letters: ``N`` batch, ``C`` channels, ``H``/``W``/``D``/``L`` spatial axes (in the order
    depth, height, width; ``L`` for a 1-D signal), ``T`` tokens.  A token layout needs its
    ``:P+HxW`` part (``P`` prefix tokens, then an ``H×W`` grid; ``+Q`` at the end for ``Q``
    suffix tokens).

    >>> parse_layout("NHWC").axes
    ('N', 'S0', 'S1', 'C')
    >>> parse_layout("TNC:2+4x4").describe()
    'TNC 2+4x4'
    """
    if isinstance(spec, Layout):
        return spec
    if not isinstance(spec, str):
        raise InvalidArgumentError(argument, spec, LAYOUT_HELP)
    spec = _NAMED.get(spec, spec)
    m = _PARSE.match(spec)
    if not m:
        raise InvalidArgumentError(argument, spec, LAYOUT_HELP)
    letters, pre, grid, suf = m.groups()
    ok = set(letters) <= set("NCHWDLT") and len(set(letters)) == len(letters)
    if not ok or letters.count("N") != 1 or letters.count("C") != 1:
        raise InvalidArgumentError(argument, spec, LAYOUT_HELP)
    sp = [ch for ch in letters if ch in "DHWL"]
    if "T" in letters:
        if sp or grid is None:
            raise InvalidArgumentError(argument, spec, LAYOUT_HELP)
        g = tuple(int(v) for v in re.split(r"\s*[xX×]\s*", grid))
        if any(v < 1 for v in g):
            raise InvalidArgumentError(argument, spec, LAYOUT_HELP)
        return Layout(tuple(letters), grid=g, prefix=int(pre), suffix=int(suf or 0), source="given")
    if grid is not None or not sp or ("L" in sp and len(sp) > 1):
        raise InvalidArgumentError(argument, spec, LAYOUT_HELP)
    order = {"D": 0, "H": 1, "W": 2, "L": 0}
    ranked = sorted(sp, key=order.__getitem__)
    tags = tuple(ch if ch in "NC" else f"S{ranked.index(ch)}" for ch in letters)
    return Layout(tags, source="given")


# ---------------------------------------------------------------------------- inference
_KEEP = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Erf", "Sigmoid", "HardSigmoid",
    "HardSwish", "Mish", "Softplus", "Softsign", "Tanh", "Clip", "Dropout", "Identity", "Cast",
    "CastLike", "Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Round", "Sin",
    "Cos", "LayerNormalization", "Pad", "Resize", "Upsample", "Sign", "Not", "IsNaN", "Swish",
}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal",
           "Greater", "Less", "And", "Or", "BitShift", "Mod"}
_NCHW_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "BatchNormalization",
             "InstanceNormalization", "LRN", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
             "DepthToSpace", "SpaceToDepth", "GroupNormalization", "MaxRoiPool", "QLinearConv"}
_VIEW_OPS = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


@dataclass
class _State:
    axes: tuple
    grid: tuple | None = None
    prefix: int | None = 0
    suffix: int | None = 0
    reason: str = ""

    def layout(self) -> Layout:
        return Layout(tuple(self.axes), self.grid, self.prefix, self.suffix, self.reason)


@dataclass
class LayoutInference:
    """Result of :func:`infer_layouts`: a :class:`Layout` for every tensor with a known rank."""

    layouts: dict = field(default_factory=dict)

    def get(self, name: str) -> Layout | None:
        return self.layouts.get(name)


def infer_layouts(
    graph,
    input_layouts: dict,
    shapes: dict,
    constants: dict,
    const_names: set,
) -> dict:
    """Propagate axis tags from the graph inputs to every tensor (see the module docstring).

    Parameters
    ----------
    graph : :class:`onnx.GraphProto` (topologically sorted).
    input_layouts : graph input name → its :class:`Layout` (from the model's ``layout``).
    shapes : tensor name → static shape tuple (ints, strings for symbolic axes, ``None`` unknown),
        or ``None`` when even the rank is unknown.
    constants : tensor name → small constant int arrays (Reshape shapes, axes, Slice bounds,
        Gather indices) when known.
    const_names : tensors that do not depend on any graph input.

    Returns
    -------
    dict tensor name → :class:`Layout` (unclear layouts carry their ``reason``).
    """
    st: dict[str, _State] = {}
    for name, lay in input_layouts.items():
        st[name] = _State(lay.axes, lay.grid, lay.prefix, lay.suffix, lay.reason)

    def shape(n):
        return shapes.get(n)

    def rank(n):
        s = shapes.get(n)
        if s is not None:
            return len(s)
        if n in st:
            return len(st[n].axes)
        return None

    def unknown(node, r, why):
        for o in node.output:
            rr = rank(o) if o != node.output[0] else r
            if rr is not None:
                st[o] = _State((None,) * rr, reason=why)

    for node in graph.node:
        op = node.op_type
        if not node.output or all(o in const_names for o in node.output):
            continue
        ins = [st.get(i) for i in node.input]
        out = node.output[0]
        r_out = rank(out)
        a = ins[0] if ins else None
        try:
            res = _propagate(node, op, ins, a, r_out, shape, rank, constants, const_names)
        except Exception:  # noqa: BLE001 - malformed/unusual attributes: unknown, never a guess
            res = None
        if res is None:
            r = r_out
            if r is None and a is not None and op in _KEEP | _BINARY:
                r = len(a.axes)
            unknown(node, r, f"the layout does not survive {op} node {node.name or out!r}")
        elif isinstance(res, list):
            for o, s in zip(node.output, res):
                if s is not None:
                    st[o] = s
        else:
            st[out] = res
    return {k: v.layout() for k, v in st.items()}


def _copy(s: _State, axes=None) -> _State:
    return _State(tuple(s.axes if axes is None else axes), s.grid, s.prefix, s.suffix, s.reason)


def _clear(s: _State | None) -> bool:
    return s is not None and not s.reason and None not in s.axes


def _propagate(node, op, ins, a, r_out, shape, rank, constants, const_names):
    if op in _KEEP:
        if op == "Softmax" or a is None:
            return None
        return _copy(a)
    if op in _BINARY:
        data = ins[1:] if op == "Where" else ins
        names = node.input[1:] if op == "Where" else node.input
        r = r_out if r_out is not None else max((rank(n) or 0) for n in names)
        full = [s for s, n in zip(data, names) if s is not None and len(s.axes) == r]
        clear = [s for s in full if _clear(s)]
        if not clear:
            if not full:
                return None
            return _State((None,) * r, reason=full[0].reason or "unclear operand")
        first = clear[0]
        for s in clear[1:]:
            if s.axes != first.axes or (first.grid is not None and s.grid not in (None, first.grid)):
                return _State((None,) * r, reason=f"{op} of tensors with different layouts")
        return _copy(first)
    if op in _NCHW_OPS:
        if a is None or not a.axes or a.axes[0] != "N" or a.reason:
            return None
        r = r_out or len(a.axes)
        st = _State(("N", "C", *(f"S{i}" for i in range(r - 2))))
        return [st] + [None] * (len(node.output) - 1)
    if op == "Transpose":
        if a is None:
            return None
        perm = node_attr(node, "perm")
        perm = list(perm) if perm is not None else list(range(len(a.axes)))[::-1]
        return _copy(a, [a.axes[p] for p in perm])
    if op in ("MatMul", "Gemm", "MatMulInteger", "FusedMatMul"):
        if a is None or len(node.input) < 2 or node.input[1] not in const_names:
            return None  # two activations (attention scores, attention · V): tokens are mixed
        if op == "Gemm" and node_attr(node, "transA", 0):
            return None
        if a.axes[-1] != "C":
            return None
        return _copy(a)
    if op in ("Reshape", "Flatten"):
        return _reshape(node, a, shape)
    if op in ("Squeeze", "Unsqueeze"):
        if a is None:
            return None
        axes = node_attr(node, "axes")
        if axes is None and len(node.input) > 1:
            axes = constants.get(node.input[1])
        r_in = len(a.axes)
        if axes is None:
            if op == "Unsqueeze":
                return None
            s = shape(node.input[0])
            if s is None:
                return None
            axes = [i for i, d in enumerate(s) if d == 1]
        axes = [int(x) for x in np.ravel(axes)]
        if op == "Squeeze":
            axes = {x % r_in for x in axes}
            dropped = [a.axes[i] for i in axes]
            if any(t == "N" or t == "C" or t == "T" for t in dropped):
                return None
            kept = [t for i, t in enumerate(a.axes) if i not in axes]
            return _renumber(_copy(a, kept))
        r_new = r_in + len(axes)
        axes = sorted(x % r_new for x in axes)
        tags = list(a.axes)
        for x in axes:
            tags.insert(x, "1")
        return _copy(a, tags)
    if op == "Concat":
        return _concat(node, ins, shape, rank)
    if op == "Slice":
        return _slice(node, a, constants, shape)
    if op == "Gather":
        if a is None or len(node.input) < 2:
            return None
        axis = int(node_attr(node, "axis", 0)) % len(a.axes)
        idx = constants.get(node.input[1])
        if idx is None:
            return None
        idx = np.asarray(idx)
        tag = a.axes[axis]
        if idx.ndim == 0:
            if tag in ("N", "C") or (isinstance(tag, str) and tag.startswith("S")):
                return None
            if tag == "T":  # one token read out (the class token): no token axis any more
                return _renumber(_copy(a, [t for i, t in enumerate(a.axes) if i != axis]))
            return None
        if idx.ndim == 1 and tag == "C":
            return _copy(a)
        return None
    if op in ("ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceL2", "ReduceL1"):
        if a is None:
            return None
        axes = node_attr(node, "axes")
        if axes is None and len(node.input) > 1:
            axes = constants.get(node.input[1])
        if axes is None:
            return None
        axes = {int(x) % len(a.axes) for x in np.ravel(axes)}
        keep = int(node_attr(node, "keepdims", 1))
        if any(a.axes[i] in ("N", "C") for i in axes):
            return None
        if keep:
            tags = ["1" if i in axes and a.axes[i] == "T" else t for i, t in enumerate(a.axes)]
            return _copy(a, tags)
        return _renumber(_copy(a, [t for i, t in enumerate(a.axes) if i not in axes]))
    if op == "Expand":
        if a is None or r_out is None or r_out != len(a.axes):
            return None
        return _copy(a)
    if op == "Split":
        if a is None:
            return None
        axis = int(node_attr(node, "axis", 0)) % len(a.axes)
        if a.axes[axis] != "C":
            return None
        return [_copy(a) for _ in node.output]
    return None


def _renumber(s: _State) -> _State:
    """Renumber spatial tags S0.. in order after axes were dropped; drop grid info if no T left."""
    sp = sorted((t for t in s.axes if isinstance(t, str) and t.startswith("S")), key=lambda t: int(t[1:]))
    ren = {t: f"S{i}" for i, t in enumerate(sp)}
    s.axes = tuple(ren.get(t, t) for t in s.axes)
    if "T" not in s.axes:
        s.grid, s.prefix, s.suffix = None, 0, 0
    return s


def _concat(node, ins, shape, rank):
    clear = [(i, s) for i, s in enumerate(ins) if _clear(s)]
    if not clear:
        return None
    r = len(clear[0][1].axes)
    axis = int(node_attr(node, "axis", 0)) % r
    main_i, main = clear[0]
    if main.axes[axis] == "C":
        for _, s in clear[1:]:
            if s.axes != main.axes:
                return None
        return _copy(main)
    if main.axes[axis] != "T":
        return None
    grids = [(i, s) for i, s in clear if s.grid is not None and "T" in s.axes]
    if len(grids) != 1:
        return None
    main_i, main = grids[0]

    def count(j: int) -> int | None:
        s = shape(node.input[j])
        if s is None or len(s) != r or not isinstance(s[axis], int):
            return None
        return int(s[axis])

    pre = [count(j) for j in range(main_i)]
    suf = [count(j) for j in range(main_i + 1, len(node.input))]
    out = _copy(main)
    out.prefix = None if (main.prefix is None or None in pre) else main.prefix + sum(pre)
    out.suffix = None if (main.suffix is None or None in suf) else main.suffix + sum(suf)
    if out.prefix is None and out.suffix is None:
        return None  # neither count is known: the token split cannot be resolved at run time
    return out


def _slice(node, a, constants, shape):
    if a is None:
        return None
    if len(node.input) < 3:  # opset < 10: attributes
        starts, ends, axes = node_attr(node, "starts"), node_attr(node, "ends"), node_attr(node, "axes")
        steps = None
    else:
        starts = constants.get(node.input[1])
        ends = constants.get(node.input[2])
        axes = constants.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        steps = constants.get(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    r = len(a.axes)
    if axes is None:
        if starts is None:
            return None
        axes = list(range(len(np.ravel(starts))))
    axes = [int(x) % r for x in np.ravel(axes)]
    out = _copy(a)
    for j, ax in enumerate(axes):
        tag = a.axes[ax]
        if tag == "T":
            if starts is None or ends is None:
                return None
            s0 = int(np.ravel(starts)[j])
            e0 = int(np.ravel(ends)[j])
            st = 1 if steps is None else int(np.ravel(steps)[j])
            if st != 1 or a.prefix is None or s0 != a.prefix or s0 < 0:
                return None
            hw = int(np.prod(a.grid)) if a.grid and None not in a.grid else None
            if hw is None or (e0 >= 0 and e0 < s0 + hw) or (e0 < 0 and a.suffix is not None and -e0 != a.suffix):
                return None
            out.prefix = 0
            out.suffix = 0
        elif tag == "N":
            return None
        elif tag is None:
            return None
        # C / S / singleton: cropping or striding keeps the role of the axis
    return out


def _reshape(node, a, shape):
    if a is None:
        return None
    s_in = shape(node.input[0])
    s_out = shape(node.output[0])
    if node.op_type == "Flatten" and s_in is not None:
        ax = int(node_attr(node, "axis", 1)) % max(1, len(s_in))
        if s_out is None:
            s_out = (_prod(s_in[:ax]), _prod(s_in[ax:]))
    if s_in is None or s_out is None or len(s_in) != len(a.axes):
        return None
    groups = _group(list(s_in), list(s_out))
    if groups is None:
        return None
    tags: list = []
    out = _copy(a)
    for gi, go in groups:
        in_tags = [a.axes[i] for i in gi]
        real = [(i, t) for i, t in zip(gi, in_tags) if s_in[i] != 1 or t in ("N", "C", "T")]
        if len(gi) == 1 and len(go) == 1:
            tags.append(in_tags[0])
            continue
        if len(go) == 1:  # merge
            if len(real) == 1 and all(s_in[i] == 1 for i in gi if i != real[0][0]):
                tags.append(real[0][1])
                continue
            if len(real) == 0:
                tags.append("1")
                continue
            sp = [t for _, t in real]
            if all(isinstance(t, str) and t.startswith("S") for t in sp) and "T" not in a.axes and \
                    [int(t[1:]) for t in sp] == sorted(int(t[1:]) for t in sp):
                grid = tuple(s_in[i] if isinstance(s_in[i], int) else None for i, _ in real)
                tags.append("T")
                out.grid, out.prefix, out.suffix = grid, 0, 0
                continue
            return None
        # split (or a many-to-many regrouping)
        if len(gi) == 1:
            t = in_tags[0]
            big = [j for j in go if s_out[j] != 1]
            if len(big) <= 1:
                for j in go:
                    tags.append(t if (j in big or (not big and j == go[0])) else "1")
                continue
            if t == "T" and a.prefix == 0 and a.suffix == 0 and a.grid is not None and \
                    tuple(s_out[j] for j in big) == tuple(a.grid) and len(big) == len(go):
                n_s = len(a.grid)
                tags.extend(f"S{k}" for k in range(n_s))
                out.grid, out.prefix, out.suffix = None, 0, 0
                continue
            return None
        return None
    out.axes = tuple(tags)
    if "T" not in out.axes:
        out.grid, out.prefix, out.suffix = None, 0, 0
    if out.axes.count("T") == 1 and "T" not in a.axes:
        # spatial axes merged into tokens: no spatial tags may remain
        if any(isinstance(t, str) and t.startswith("S") for t in out.axes):
            return None
    return _renumber(out)


def _prod(dims):
    p = 1
    for d in dims:
        if not isinstance(d, int):
            return None
        p *= d
    return p


def _group(s_in: list, s_out: list):
    """Pair consecutive axis groups of equal size: ``[(in_axes, out_axes), …]`` or ``None``.

    Sizes are ints or symbols (a symbol matches only the same symbol, alone)."""
    groups = []
    i = j = 0
    while i < len(s_in) or j < len(s_out):
        if i < len(s_in) and j < len(s_out) and not isinstance(s_in[i], int):
            if s_in[i] is None or s_in[i] != s_out[j]:
                return None
            groups.append(([i], [j]))
            i += 1
            j += 1
            continue
        gi, go = [], []
        pi = po = 1
        if i < len(s_in):
            gi.append(i)
            pi = s_in[i]
            i += 1
        if j < len(s_out):
            if not isinstance(s_out[j], int):
                return None
            go.append(j)
            po = s_out[j]
            j += 1
        while pi != po:
            if pi < po:
                if i >= len(s_in) or not isinstance(s_in[i], int):
                    return None
                gi.append(i)
                pi *= s_in[i]
                i += 1
            else:
                if j >= len(s_out) or not isinstance(s_out[j], int):
                    return None
                go.append(j)
                po *= s_out[j]
                j += 1
        if not gi or not go:
            # trailing size-1 axes
            if gi and all(s_in[k] == 1 for k in gi) and groups:
                groups[-1][0].extend(gi)
                continue
            if go and all(s_out[k] == 1 for k in go) and groups:
                groups[-1][1].extend(go)
                continue
            return None
        groups.append((gi, go))
    return groups
