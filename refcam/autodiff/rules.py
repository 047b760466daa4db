r"""Backward (vector-Jacobian product) rules, one per ONNX op type, in standard ai.onnx ops.

A rule receives a :class:`RuleContext` (the forward node, its attributes, the names of its inputs
and outputs, the names of the incoming output gradients ``ctx.grads`` -- ``None`` where an output
receives no gradient --, which inputs need a gradient ``ctx.needs``, the opset and the rule set) and
returns one gradient tensor name (or ``None``) per input.  Rules emit nodes only through
``ctx.b`` (a :class:`~refcam.autodiff.graph.GraphBuilder`), so every emitted op is a standard
``ai.onnx`` op with fresh unique names and constants stored as initializers.

Register a new rule with the decorator::

    @rule("MyOp")
    def _my_op(ctx):
        return ctx.rest(ctx.op("Mul", [ctx.grads[0], ...]))

and an element-wise one from its derivative alone (:func:`refcam.autodiff.sym.unary`)::

    @unary("Tanh")
    def _tanh(x, y, a):
        return 1 - y * y

What a rule returns for input ``i``: a tensor name (the gradient), :data:`ZERO` (the gradient is
identically zero: the output is piecewise constant in that input, or does not depend on it), or
``None`` (no rule for that input).  ``None`` for an input that needs a gradient raises an
:class:`~refcam.errors.UnsupportedOpError` naming node, op, opset and input -- a missing rule is
never a silent zero.  :meth:`RuleContext.rest` builds the usual ``[dx, None, ...]`` tail.

Some rules measure the runtime: ``AveragePool`` and ``Resize`` probe onnxruntime on an identity
basis for their per-axis matrices (:mod:`refcam.autodiff.probe`, cached).

Rule sets (selected per call with ``rules=``)
---------------------------------------------
``"plain"``
    the exact gradient :math:`\partial y^c / \partial x`.
``"guided"``
    guided backpropagation (Springenberg, Dosovitskiy, Brox, Riedmiller 2015, "Striving for
    simplicity: the all convolutional net", Sec. 3.4, Fig. 1): at every ReLU
    :math:`R^{l} = [f^{l} > 0]\,[R^{l+1} > 0]\,R^{l+1}`, i.e. ``Relu(g) * [X > 0]``.
``"deconvnet"``
    deconvolution network backward pass (Zeiler & Fergus 2014, "Visualizing and understanding
    convolutional networks", Sec. 2.1): at every ReLU :math:`R^{l} = \max(R^{l+1}, 0)`, i.e.
    ``Relu(g)``, ignoring the forward input.

The modified rules apply to every ReLU-like node; documented choices for the relatives:

* ``Relu``: as above.
* ``LeakyRelu`` (slope :math:`a`): guided ``Relu(g) * f'(X)`` with :math:`f'(x)=1` for
  :math:`x>0` and :math:`a` otherwise; deconvnet ``Relu(g)``.
* ``Clip`` whose ``min`` is the constant 0 (ReLU6 and friends): guided
  ``Relu(g) * [0 < X < max]``; deconvnet ``Relu(g)``.  ``Clip`` with any other ``min`` keeps
  its plain rule in every set.
* ``PRelu``, ``HardSwish``, ``Gelu``, ... keep their plain rule (they are not ReLUs).

Conventions at kinks (measure-zero sets, where finite differences are not defined either):
``Relu``: gradient 0 at ``X == 0``; ``Clip``: 0 at ``X == min`` or ``X == max``;
``Max``/``Min``/``MaxPool``-free ties (``Max``, ``Min``, ``GlobalMaxPool``, ``ReduceMax``) split the
gradient equally among the tied entries; ``MaxPool`` gives it to the index onnxruntime returns.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelError, UnsupportedOpError
from .graph import GraphBuilder, TensorInfo
from .probe import axis_matrix

__all__ = ["RULES", "RULE_SETS", "NO_GRADIENT_OPS", "NeedsRuntimeShapes", "ZERO", "RuleContext", "rule",
           "supported_ops"]

RULE_SETS = ("plain", "guided", "deconvnet")

RuleFn = Callable[["RuleContext"], Sequence[Any]]
RULES: dict[str, RuleFn] = {}

#: ops whose outputs carry no gradient (integer/boolean outputs or piecewise-constant functions)
NO_GRADIENT_OPS = frozenset({
    "Shape", "Size", "ConstantOfShape", "ArgMax", "ArgMin", "NonZero", "Equal", "Less",
    "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf",
    "Floor", "Ceil", "Round", "Sign", "RandomNormalLike", "RandomUniformLike", "EyeLike",
    "Constant", "Multinomial", "Bernoulli", "Hardmax",
})


class _Zero:
    """Marker of an identically zero gradient (see the module docstring)."""

    def __repr__(self) -> str:
        return "ZERO"


#: a rule's answer for an input whose gradient is identically zero
ZERO = _Zero()


class NeedsOpset(Exception):
    """Raised by a rule whose backward needs a newer opset than the model's (internal)."""

    def __init__(self, opset: int, reason: str) -> None:
        self.opset = opset
        self.reason = reason
        super().__init__(reason)


class NeedsRuntimeShapes(ModelError):
    """A rule needs a rank that shape inference left unknown and no run of the model is at hand."""


class RuleContext:
    """Everything a backward rule needs about one forward node."""

    def __init__(self, node: onnx.NodeProto, grads: list[str | None], needs: list[bool],
                 b: GraphBuilder, info: TensorInfo, rules: str,
                 runtime_shapes: Callable[[], None] | None = None) -> None:
        self.node = node
        self.op_type = node.op_type
        self.attrs: dict[str, Any] = {}
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            self.attrs[a.name] = v
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self.grads = grads
        self.needs = needs + [False] * (len(self.inputs) - len(needs))
        self.b = b
        self.info = info
        self.opset = b.opset
        self.rules = rules
        #: completes ``info`` with ranks seen in a run (called at most once by the builder), or None
        self.runtime_shapes = runtime_shapes

    # ---- static facts ------------------------------------------------------------------
    def shape(self, name: str) -> tuple | None:
        return self.info.shape.get(name)

    def rank(self, name: str) -> int:
        """Rank of tensor ``name``: from shape inference, else from one run of the model.

        When static inference leaves the rank unknown, the builder's ``runtime_shapes`` source (a
        probe run of the model on the actual input, see :func:`~refcam.autodiff.build_vjp_model`)
        is asked once for the ranks of every such tensor.
        """
        r = self.info.rank(name)
        if r is None and self.runtime_shapes is not None:
            self.runtime_shapes()
            r = self.info.rank(name)
        if r is None:
            raise NeedsRuntimeShapes(
                f"node {self.node.name or '?'} ({self.op_type}): the rank of tensor {name!r} is "
                "unknown after shape inference and the backward rule needs it; pass the shapes "
                "seen in a run (build_vjp_model(..., runtime_shapes=Model(...).runtime_shapes(x)), "
                "which refcam.autodiff.gradients does for you)")
        return r

    def static_dims(self, name: str, axes: Sequence[int]) -> list[int]:
        """Static sizes of ``axes`` of ``name`` (for rules that bake a size into the graph)."""
        s = self.shape(name)
        if s is None:
            dims = None
        else:
            dims = [s[a] for a in axes]
        if dims is None or any(d is None for d in dims):
            raise ModelError(
                f"node {self.node.name or '?'} ({self.op_type}): the backward rule builds a constant "
                f"from the sizes of axes {list(axes)} of tensor {name!r}, but shape inference gave "
                f"{s} (sizes that change with the input are not known when the gradient graph is "
                "built); give the model a static input shape for those axes")
        return [int(d) for d in dims]

    def dim(self, name: str, axis: int) -> str:
        """Run-time size of ``axis`` of ``name`` as a 1-element int64 tensor (``Shape`` + ``Slice``)."""
        b = self.b
        return b.op("Slice", [b.shape(name), b.ints([axis]), b.ints([axis + 1])])

    def elem(self, name: str) -> int:
        e = self.info.elem.get(name)
        if e is None:
            raise ModelError(f"node {self.node.name or '?'} ({self.op_type}): unknown element type "
                             f"of tensor {name!r} after shape inference")
        return e

    def const(self, idx: int) -> np.ndarray | None:
        """Constant value of input ``idx`` (initializer or Constant node), None if absent/dynamic."""
        if idx >= len(self.inputs) or not self.inputs[idx]:
            return None
        return self.info.const.get(self.inputs[idx])

    def has_input(self, idx: int) -> bool:
        return idx < len(self.inputs) and bool(self.inputs[idx])

    def need_const(self, idx: int, what: str) -> np.ndarray:
        v = self.const(idx)
        if v is None:
            raise UnsupportedOpError(
                f"node {self.node.name or '?'} ({self.op_type}, opset {self.opset}): the backward "
                f"rule needs {what} (input {idx}) to be a constant; use finite differences "
                "(refcam.autodiff.fd) for this model")
        return v

    def refuse_input(self, idx: int, why: str = "") -> UnsupportedOpError:
        """The error for input ``idx`` that needs a gradient this rule does not provide."""
        nm = self.inputs[idx] if idx < len(self.inputs) else "?"
        return UnsupportedOpError(
            f"node {self.node.name or '?'} ({self.op_type}, opset {self.opset}): no backward rule for "
            f"the gradient with respect to input {idx} ({nm!r}){': ' + why if why else ''}; use finite "
            "differences (refcam.autodiff.fd) for this model")

    def rest(self, dx: Any, *more: Any) -> list:
        """``[dx, *more]`` padded with ``None`` (no rule) to one entry per input."""
        head = [dx, *more]
        return head + [None] * (len(self.inputs) - len(head))

    def unsupported(self, what: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"node {self.node.name or '?'} ({self.op_type}, opset {self.opset}): {what} has no "
            "backward rule; use finite differences (refcam.autodiff.fd) for this model")

    # ---- small emit helpers ------------------------------------------------------------
    def c(self, value: float, like: str) -> str:
        """Scalar constant with the element type of tensor ``like``."""
        return self.b.scalar(value, self.elem(like))

    def op(self, op_type: str, inputs: Sequence[str], **kw: Any) -> Any:
        return self.b.op(op_type, inputs, **kw)

    def unbroadcast(self, g: str, x: str, out: str | None = None) -> str:
        """Reduce ``g`` (shaped like ``out``) to ``x`` over the broadcast axes; dims unknown in both but
        with the same symbolic name are equal, other unknown dims are resolved at run time (see
        :meth:`GraphBuilder.unbroadcast`)."""
        out = out or self.outputs[0]
        for t in (out, x):
            if self.info.rank(t) is None and (self.runtime_shapes is not None or self.opset < 13):
                self.rank(t)  # read from the run (NeedsRuntimeShapes without one below opset 13,
                # where the rank-free run-time reduction of GraphBuilder.unbroadcast is unavailable)
        return self.b.unbroadcast(g, self.info.symbols.get(out), x, self.info.symbols.get(x))

    def mask(self, cond: str, like: str) -> str:
        """Cast a boolean tensor to the element type of ``like``."""
        return self.op("Cast", [cond], to=self.elem(like))


def _checked(fn: RuleFn) -> RuleFn:
    """Wrap a rule: ``None`` for an input that needs a gradient raises; :data:`ZERO` becomes ``None``."""

    def run(ctx: "RuleContext") -> list:
        res = list(fn(ctx))
        res += [None] * (len(ctx.inputs) - len(res))
        out = []
        for i, (need, gi) in enumerate(zip(ctx.needs, res)):
            if gi is None and need:
                raise ctx.refuse_input(i)
            out.append(None if gi is ZERO else gi)
        return out

    run.__name__ = getattr(fn, "__name__", "rule")
    run.__doc__ = fn.__doc__
    run.__wrapped__ = fn  # type: ignore[attr-defined]
    return run


def rule(*op_types: str) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as the backward rule of each op type in ``op_types``.

    ``fn(ctx)`` returns one entry per input: a gradient tensor name, :data:`ZERO` or ``None``
    (no rule: an input that needs a gradient then raises an ``UnsupportedOpError`` naming it).
    """

    def deco(fn: RuleFn) -> RuleFn:
        wrapped = _checked(fn)
        for t in op_types:
            RULES[t] = wrapped
        return fn

    return deco


def supported_ops() -> list[str]:
    """Sorted op types that have a backward rule or carry no gradient.

    Examples
    --------
    >>> ops = supported_ops()
    >>> {"Conv", "MaxPool", "Resize", "Shape"} <= set(ops), "Loop" in ops
    (True, False)
    """
    return sorted(set(RULES) | NO_GRADIENT_OPS)


def _nograd(ctx: RuleContext) -> list:
    """Outputs piecewise constant in (or independent of) every input: the gradient is zero."""
    return [ZERO] * len(ctx.inputs)


rule(*NO_GRADIENT_OPS)(_nograd)


# ============================ identity-like and shape ops ====================================
@rule("Identity", "Dropout")
def _identity(ctx):
    """Identity; Dropout in inference mode (ratio and training_mode do not change the output)."""
    if ctx.op_type == "Dropout":
        tm = ctx.const(2)
        if ctx.attrs.get("is_test", 1) == 0 or (ctx.has_input(2) and (tm is None or bool(tm))):
            # training mode: y = x * mask / (1 - ratio) with a random mask; exact when the node also
            # outputs its mask (reused), or when the ratio is the constant 0 (identity)
            ratio = ctx.const(1) if ctx.has_input(1) else np.asarray(ctx.attrs.get("ratio", 0.5))
            if len(ctx.outputs) > 1 and ctx.outputs[1]:
                x0 = ctx.inputs[0]
                m = ctx.mask(ctx.outputs[1], x0)
                if ratio is not None:
                    scale = ctx.c(1.0 / (1.0 - float(ratio)) if float(ratio) < 1 else 0.0, x0)
                else:  # runtime ratio
                    rt = ctx.op("Cast", [ctx.inputs[1]], to=ctx.elem(x0))
                    scale = ctx.op("Div", [ctx.c(1.0, x0), ctx.op("Sub", [ctx.c(1.0, x0), rt])])
                return [ctx.op("Mul", [ctx.grads[0], ctx.op("Mul", [m, scale])])] + [None, ZERO][: len(ctx.inputs) - 1]
            if ratio is not None and float(ratio) == 0.0:
                return [ctx.grads[0]] + [None, ZERO][: len(ctx.inputs) - 1]
            raise ctx.unsupported("Dropout in training mode (random mask not among the node's outputs)")
        return [ctx.grads[0]] + [ZERO] * (len(ctx.inputs) - 1)
    return [ctx.grads[0]]


@rule("Cast")
def _cast(ctx):
    x = ctx.inputs[0]
    if not ctx.info.is_float(x):
        return [None]
    return [ctx.op("Cast", [ctx.grads[0]], to=ctx.elem(x))]


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(ctx):
    return [ctx.b.reshape_like(ctx.grads[0], ctx.inputs[0])] + [None] * (len(ctx.inputs) - 1)


@rule("Transpose")
def _transpose(ctx):
    perm = ctx.attrs.get("perm")
    if perm is None:
        perm = list(range(ctx.rank(ctx.inputs[0])))[::-1]
    r = len(perm)  # the rank (known from perm even when shape inference lost it)
    inv = [0] * r
    for i, p in enumerate(perm):
        inv[p] = i
    return [ctx.op("Transpose", [ctx.grads[0]], perm=inv)]


@rule("Expand")
def _expand(ctx):
    return [ctx.unbroadcast(ctx.grads[0], ctx.inputs[0]), None]


@rule("Concat")
def _concat(ctx):
    b = ctx.b
    g = ctx.grads[0]
    axis = ctx.attrs["axis"]
    if axis < 0 and ctx.info.rank(ctx.outputs[0]) is not None:
        axis %= ctx.info.rank(ctx.outputs[0])
    sizes = []
    for x in ctx.inputs:
        s = ctx.shape(x)
        sizes.append(None if s is None or axis < 0 else s[axis])
    res: list[str | None] = []
    if all(s is not None for s in sizes):
        off = 0
        for x, s, need in zip(ctx.inputs, sizes, ctx.needs):
            if need:
                res.append(b.op("Slice", [g, b.ints([off]), b.ints([off + s]), b.ints([axis])]))
            else:
                res.append(None)
            off += s
        return res
    off = b.ints([0])
    ax = b.ints([axis])
    for x, need in zip(ctx.inputs, ctx.needs):
        d = b.op("Gather", [b.shape(x), ax], axis=0)  # size along a possibly negative axis
        end = b.op("Add", [off, d])
        res.append(b.op("Slice", [g, off, end, ax]) if need else None)
        off = end
    return res


@rule("Split")
def _split(ctx):
    b = ctx.b
    axis = ctx.attrs.get("axis", 0)
    if axis < 0 and ctx.info.rank(ctx.inputs[0]) is not None:
        axis %= ctx.info.rank(ctx.inputs[0])  # a negative axis works without the rank too
    parts = []
    for y, g in zip(ctx.outputs, ctx.grads):
        parts.append(g if g is not None else b.zeros_like(y, ctx.elem(y)))
    return ctx.rest(b.op("Concat", parts, axis=axis))


def _index_map_backward(ctx: RuleContext, g: str, rank: int, maps: dict[int, np.ndarray],
                        in_dims: dict[int, int]) -> str:
    """Backward of a per-axis gather ``y[..., o, ...] = x[..., idx[o], ...]`` (idx = -1: constant).

    Contiguous increasing maps become one Slice + one Pad (zero fill); other maps (steps != 1,
    reflect/edge/wrap padding) become a 0/1 matrix contracted along the axis with MatMul, which
    sums repeated sources exactly.
    """
    b = ctx.b
    elem = ctx.elem(ctx.inputs[0])
    npdt = helper.tensor_dtype_to_np_dtype(elem)
    sl_axes, sl_st, sl_en = [], [], []
    pads_b = [0] * rank
    pads_e = [0] * rank
    mats = {}
    for ax, idx in maps.items():
        n_in = in_dims[ax]
        valid = np.nonzero(idx >= 0)[0]
        src = idx[valid]
        contiguous = valid.size == 0 or (
            np.all(np.diff(valid) == 1) and np.all(np.diff(src) == 1))
        if contiguous and valid.size:
            o0, o1 = int(valid[0]), int(valid[-1]) + 1
            if o0 != 0 or o1 != idx.size:
                sl_axes.append(ax)
                sl_st.append(o0)
                sl_en.append(o1)
            pads_b[ax] = int(src[0])
            pads_e[ax] = n_in - int(src[-1]) - 1
        else:
            m = np.zeros((idx.size, n_in), dtype=npdt)
            m[valid, src] = 1
            mats[ax] = m
    if sl_axes:
        g = b.op("Slice", [g, b.ints(sl_st), b.ints(sl_en), b.ints(sl_axes)])
    if any(pads_b) or any(pads_e):
        g = b.op("Pad", [g, b.ints(pads_b + pads_e)])
    for ax, m in mats.items():
        g = b.move_axis_matmul(g, rank, ax, b.const(m, hint="select"))
    return g


def _iota_backward(ctx: RuleContext, forward: Callable[[str, str], str], *, repeats: bool) -> list:
    r"""Backward of an index op run on the index itself (sizes, starts, pads... read at run time).

    The op :math:`y = f(x)` only moves or copies entries of :math:`x` (Slice, Pad, Gather, ...).
    Running the *same* node with the *same* run-time inputs on the flat positions
    :math:`\iota = 0, 1, \dots, |x| - 1` (int64, shaped like :math:`x`) gives, for each entry of
    :math:`y`, the position of its source (``forward(iota, fill)`` writes ``fill`` = :math:`|x|`
    where the op creates a value, e.g. constant padding).  Then
    :math:`\partial L/\partial x_p = \sum_{o:\, f(\iota)_o = p} g_o`: a ``ScatterElements`` of
    :math:`g` into :math:`|x| + 1` zeros (the extra slot takes the created values' gradient and is
    dropped).  ``repeats``: a source can feed several outputs (Gather, Tile, reflect padding):
    the sum needs ``reduction="add"`` (opset 16; older models are converted).  Exact, any rank,
    sizes never baked into the graph.
    """
    b = ctx.b
    x = ctx.inputs[0]
    if repeats and ctx.opset < 16:
        raise NeedsOpset(16, f"{ctx.op_type} with run-time indices or sizes needs "
                             "ScatterElements(reduction='add')")
    n = b.op("Size", [x])
    iota = b.op("Reshape", [b.op("Range", [b.const(np.int64(0)), n, b.const(np.int64(1))]), b.shape(x)])
    src = b.op("Reshape", [forward(iota, n), b.ints([-1])])
    slots = b.op("Reshape", [b.op("Add", [n, b.const(np.int64(1))]), b.ints([1])])
    zeros = b.op("ConstantOfShape", [slots], value=onnx.numpy_helper.from_array(
        np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(ctx.elem(x)))))
    flat_g = b.op("Reshape", [ctx.grads[0], b.ints([-1])])
    sc = b.op("ScatterElements", [zeros, src, flat_g], axis=0, **({"reduction": "add"} if repeats else {}))
    sc = b.op("Slice", [sc, b.ints([0]), b.op("Reshape", [n, b.ints([1])]), b.ints([0])])
    return [b.reshape_like(sc, x)] + [None] * (len(ctx.inputs) - 1)


def _runtime_input(ctx: RuleContext, idx: int) -> bool:
    """Input ``idx`` is present and not a constant (computed in the graph, e.g. from Shape)."""
    return ctx.has_input(idx) and ctx.const(idx) is None


def _rank_or_none(ctx: RuleContext, name: str) -> int | None:
    """The rank of ``name`` (read from the run when static inference lacks it), or None when no run
    is at hand -- for rules with a rank-free run-time form."""
    try:
        return ctx.rank(name)
    except NeedsRuntimeShapes:
        return None


@rule("Slice")
def _slice(ctx):
    r"""Slice.  Constant starts/ends/axes/steps and static sizes on the sliced axes: per axis the
    index map :math:`y_o = x_{m(o)}` (:func:`_index_map_backward`, Slice + Pad).  Otherwise (run-time
    starts/ends/axes/steps, sizes or rank): the node itself run on the flat positions of :math:`x`
    (:func:`_iota_backward`), rank-free.  Opset < 10 (attributes) needs static sizes."""
    x = ctx.inputs[0]
    runtime = lambda: _iota_backward(ctx, lambda iota, _fill: ctx.op("Slice", [iota] + ctx.inputs[1:]),  # noqa: E731
                                     repeats=False)
    if "starts" in ctx.attrs:  # opset < 10
        r = ctx.rank(x)
        starts, ends = ctx.attrs["starts"], ctx.attrs["ends"]
        axes = ctx.attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        r = _rank_or_none(ctx, x)
        if r is None or any(_runtime_input(ctx, i) for i in range(1, 5)):
            return runtime()     # starts / ends / axes / steps (or the rank) known only at run time
        starts = ctx.need_const(1, "starts").tolist()
        ends = ctx.need_const(2, "ends").tolist()
        axes = ctx.need_const(3, "axes").tolist() if ctx.has_input(3) else list(range(len(starts)))
        steps = ctx.need_const(4, "steps").tolist() if ctx.has_input(4) else [1] * len(starts)
    axes = [a % r for a in axes]
    s = ctx.shape(x)
    if s is None or any(s[a] is None for a in axes):
        if "starts" in ctx.attrs:
            ctx.static_dims(x, axes)  # opset < 10 has no Slice with input tensors: ModelError
        return runtime()
    dims = ctx.static_dims(x, axes)
    maps, in_dims = {}, {}
    for a, st, en, sp, d in zip(axes, starts, ends, steps, dims):
        big = 2 ** 62
        st = max(min(st, big), -big)
        en = max(min(en, big), -big)
        maps[a] = np.arange(d)[slice(st, en, sp)]
        in_dims[a] = d
    return [_index_map_backward(ctx, ctx.grads[0], r, maps, in_dims)] + [None] * (len(ctx.inputs) - 1)


@rule("Pad")
def _pad(ctx):
    r"""Pad (modes constant, reflect, edge, wrap).  Data: constant pads/axes and static sizes on the
    padded axes give per-axis index maps (:func:`_index_map_backward`); otherwise (run-time pads,
    axes, sizes or rank) the node is run on the flat positions of :math:`x` with the fill slot
    :math:`|x|` (:func:`_iota_backward`; reflect/edge/wrap sources repeat and are summed).
    ``constant_value`` :math:`c`: :math:`\bar c = \sum g - \sum \bar x`, the sum of :math:`g` over
    the created border (zero for the other modes, which do not read it)."""
    mode = ctx.attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise ctx.unsupported(f"Pad mode {mode!r}")
    dx = _pad_data_grad(ctx, mode)
    res = ctx.rest(dx, ZERO, None, ZERO)[: len(ctx.inputs)]      # pads and axes are integers
    if ctx.has_input(2) and ctx.needs[2]:
        res[2] = ZERO if mode != "constant" else _pad_value_grad(ctx, dx)
    return res


def _pad_value_grad(ctx: RuleContext, dx: str) -> str:
    r""":math:`\bar c = \sum g - \sum \bar x` in ``constant_value``'s type and shape."""
    b, c = ctx.b, ctx.inputs[2]
    gc = ctx.op("Sub", [b.op("ReduceSum", [ctx.grads[0]], keepdims=0), b.op("ReduceSum", [dx], keepdims=0)])
    if ctx.elem(c) != ctx.elem(ctx.inputs[0]):
        gc = ctx.op("Cast", [gc], to=ctx.elem(c))
    if ctx.info.rank(c) not in (None, 0):
        gc = b.reshape_like(gc, c)
    return gc


def _pad_data_grad(ctx: RuleContext, mode: str) -> str:
    x = ctx.inputs[0]
    r = ctx.rank(x) if "pads" in ctx.attrs else _rank_or_none(ctx, x)
    runtime = "pads" not in ctx.attrs and (r is None or _runtime_input(ctx, 1) or _runtime_input(ctx, 3))
    if not runtime:
        pads = list(ctx.attrs["pads"]) if "pads" in ctx.attrs else ctx.need_const(1, "pads").tolist()
        axes = list(range(r))
        if ctx.has_input(3):
            axes = [a % r for a in ctx.need_const(3, "axes").tolist()]
        s = ctx.shape(x)
        runtime = "pads" not in ctx.attrs and (s is None or any(s[a] is None for a in axes))
    if runtime:
        # pads (or sizes) known only at run time: Pad the index with the fill slot |x|
        def fwd(iota: str, fill: str) -> str:
            ins = [iota, ctx.inputs[1], fill if mode == "constant" else ""]
            if ctx.has_input(3):
                ins.append(ctx.inputs[3])
            while ins and not ins[-1]:
                ins.pop()
            return ctx.op("Pad", ins, mode=mode)

        return _iota_backward(ctx, fwd, repeats=mode != "constant")[0]
    n = len(axes)
    dims = ctx.static_dims(x, axes)
    maps, in_dims = {}, {}
    for i, (a, d) in enumerate(zip(axes, dims)):
        pb, pe = int(pads[i]), int(pads[i + n])
        src = np.arange(d)[max(-pb, 0): d - max(-pe, 0)]
        wb, we = max(pb, 0), max(pe, 0)
        if mode == "constant":
            idx = np.pad(src, (wb, we), mode="constant", constant_values=-1)
        else:
            idx = np.pad(src, (wb, we), mode=mode)
        if pb or pe:
            maps[a] = idx
            in_dims[a] = d
    return _index_map_backward(ctx, ctx.grads[0], r, maps, in_dims) if maps else ctx.grads[0]


@rule("Gather")
def _gather(ctx):
    b = ctx.b
    x, ind = ctx.inputs[0], ctx.inputs[1]
    r = ctx.rank(x)
    axis = ctx.attrs.get("axis", 0) % r
    s = ctx.shape(x)
    if s is None or s[axis] is None:
        # the gathered axis has a run-time size (e.g. a batch-dependent flattened tensor):
        # scatter-add the gradient back through the node run on the index
        return _iota_backward(ctx, lambda iota, _fill: ctx.op("Gather", [iota, ind], axis=axis),
                              repeats=True)
    d = s[axis]
    shp = b.shape(x)
    parts = []
    if axis > 0:
        parts.append(b.op("Slice", [shp, b.ints([0]), b.ints([axis])]))
    parts.append(b.ints([-1]))
    if axis < r - 1:
        parts.append(b.op("Slice", [shp, b.ints([axis + 1]), b.ints([r])]))
    g2 = b.op("Reshape", [ctx.grads[0], b.op("Concat", parts, axis=0) if len(parts) > 1 else parts[0]])
    flat = b.op("Reshape", [b.op("Cast", [ind], to=TensorProto.INT64), b.ints([-1, 1])])
    dd = b.const(np.int64(d))
    flat = b.op("Where", [b.op("Less", [flat, b.const(np.int64(0))]), b.op("Add", [flat, dd]), flat])
    onehot = b.op("Equal", [flat, b.ints(list(range(d)))])
    m = ctx.mask(onehot, x)  # (n_indices, d)
    return [b.move_axis_matmul(g2, r, axis, m), None]


# ============================ elementwise arithmetic =========================================
@rule("Add", "Sum")
def _add(ctx):
    return [ctx.unbroadcast(ctx.grads[0], x) if need else None
            for x, need in zip(ctx.inputs, ctx.needs)]


@rule("Mean")
def _mean(ctx):
    g = ctx.op("Mul", [ctx.grads[0], ctx.c(1.0 / len(ctx.inputs), ctx.outputs[0])])
    return [ctx.unbroadcast(g, x) if need else None for x, need in zip(ctx.inputs, ctx.needs)]


def _binary(ctx: RuleContext, adj_a: Callable[[str, str, str], str],
            adj_b: Callable[[str, str, str], str]) -> list:
    r"""Adjoint of a broadcasting binary op :math:`y = f(a, b)`: :math:`\bar a = \Sigma_{bc}\,
    \mathrm{adj\_a}(g, a, b)` and likewise :math:`\bar b`, each built only when needed and summed
    over the broadcast axes (``ctx.unbroadcast``)."""
    a, bb = ctx.inputs
    g = ctx.grads[0]
    ga = ctx.unbroadcast(adj_a(g, a, bb), a) if ctx.needs[0] else None
    gb = ctx.unbroadcast(adj_b(g, a, bb), bb) if ctx.needs[1] else None
    return [ga, gb]


@rule("Sub")
def _sub(ctx):
    r""":math:`y = a - b`: :math:`\bar a = g`, :math:`\bar b = -g`."""
    return _binary(ctx, lambda g, a, b: g, lambda g, a, b: ctx.op("Neg", [g]))


@rule("Mul")
def _mul(ctx):
    r""":math:`y = a b`: :math:`\bar a = g b`, :math:`\bar b = g a`."""
    return _binary(ctx, lambda g, a, b: ctx.op("Mul", [g, b]), lambda g, a, b: ctx.op("Mul", [g, a]))


@rule("Div")
def _div(ctx):
    r""":math:`y = a / b`: :math:`\bar a = g / b`, :math:`\bar b = -g y / b`."""
    return _binary(ctx, lambda g, a, b: ctx.op("Div", [g, b]),
                   lambda g, a, b: ctx.op("Neg", [ctx.op("Div", [ctx.op("Mul", [g, ctx.outputs[0]]), b])]))


@rule("Pow")
def _pow(ctx):
    x, p = ctx.inputs
    y = ctx.outputs[0]
    g = ctx.grads[0]
    gx = gp = None
    if ctx.needs[0]:
        pc = p if ctx.elem(p) == ctx.elem(x) else ctx.op("Cast", [p], to=ctx.elem(x))
        t = ctx.op("Pow", [x, ctx.op("Sub", [pc, ctx.c(1.0, x)])])
        gx = ctx.unbroadcast(ctx.op("Mul", [g, ctx.op("Mul", [pc, t])]), x)
    if ctx.needs[1]:
        # d(x^p)/dp = x^p log x; at x = 0 (p > 0) the limit is 0, not 0 * (-inf) = NaN
        t = ctx.op("Mul", [y, ctx.op("Log", [x])])
        t = ctx.op("Where", [ctx.op("Equal", [x, ctx.c(0.0, x)]), ctx.c(0.0, y), t])
        if ctx.elem(p) != ctx.elem(y):
            t = ctx.op("Cast", [t], to=ctx.elem(p))
        gp = ctx.unbroadcast(ctx.op("Mul", [ctx.op("Cast", [g], to=ctx.elem(p)) if ctx.elem(p) != ctx.elem(y) else g, t]), p)
    return [gx, gp]


def _tie_split(ctx: RuleContext, xs: Sequence[str], needs: Sequence[bool]) -> list[str | None]:
    """Max/Min: the gradient goes to the inputs equal to the output, split equally among ties."""
    y = ctx.outputs[0]
    if len(xs) == 1:
        return [ctx.grads[0]]
    masks = [ctx.mask(ctx.op("Equal", [x, y]), y) for x in xs]
    cnt = ctx.op("Sum", masks)
    gs = ctx.op("Div", [ctx.grads[0], cnt])
    return [ctx.unbroadcast(ctx.op("Mul", [gs, m]), x) if need else None
            for x, m, need in zip(xs, masks, needs)]


@rule("Max", "Min")
def _maxmin(ctx):
    return _tie_split(ctx, ctx.inputs, ctx.needs)


@rule("Where")
def _where(ctx):
    c, x, y = ctx.inputs
    g = ctx.grads[0]
    z = ctx.c(0.0, ctx.outputs[0])
    gx = ctx.unbroadcast(ctx.op("Where", [c, g, z]), x) if ctx.needs[1] else None
    gy = ctx.unbroadcast(ctx.op("Where", [c, z, g]), y) if ctx.needs[2] else None
    return [None, gx, gy]


# ============================ activations ====================================================
@rule("Relu")
def _relu(ctx):
    r""":math:`\bar x = g\,[x > 0]`, the mask read from the output: :math:`[y > 0] = [x > 0]` for
    :math:`y = \max(x, 0)` (also at ``-0.0`` and NaN, where both are false).  Reading :math:`y`
    leaves :math:`x` with the ReLU as its only consumer, so onnxruntime keeps its Conv+ReLU fusion
    and need not keep :math:`x` for the backward sweep."""
    y = ctx.outputs[0]
    g = ctx.grads[0]
    if ctx.rules == "deconvnet":
        return [ctx.op("Relu", [g])]
    pos = ctx.mask(ctx.op("Greater", [y, ctx.c(0.0, y)]), y)
    if ctx.rules == "guided":
        g = ctx.op("Relu", [g])
    return [ctx.op("Mul", [g, pos])]


@rule("LeakyRelu")
def _leaky(ctx):
    x = ctx.inputs[0]
    g = ctx.grads[0]
    if ctx.rules == "deconvnet":
        return [ctx.op("Relu", [g])]
    if ctx.rules == "guided":
        g = ctx.op("Relu", [g])
    alpha = ctx.attrs.get("alpha", 0.01)
    slope = ctx.op("Where", [ctx.op("Greater", [x, ctx.c(0.0, x)]), ctx.c(1.0, x), ctx.c(alpha, x)])
    return [ctx.op("Mul", [g, slope])]


@rule("PRelu")
def _prelu(ctx):
    x, s = ctx.inputs
    g = ctx.grads[0]
    neg = ctx.op("Less", [x, ctx.c(0.0, x)])
    gx = gs = None
    if ctx.needs[0]:
        gx = ctx.op("Where", [neg, ctx.op("Mul", [g, s]), g])
    if ctx.needs[1]:
        t = ctx.op("Where", [neg, ctx.op("Mul", [g, x]), ctx.c(0.0, x)])
        gs = ctx.unbroadcast(t, s)
    return [gx, gs]


@rule("Tile")
def _tile(ctx):
    r"""Tile: :math:`y` viewed as :math:`(\rho_0, d_0, \rho_1, d_1, \dots)` (repeats, sizes)
    interleaved) holds :math:`\rho_0\rho_1\cdots` copies of :math:`x`; the gradient sums them over the
    repeat axes.  The interleaved shape is built at run time from ``repeats`` and ``Shape(x)``."""
    b = ctx.b
    x = ctx.inputs[0]
    r = ctx.rank(x)
    reps = ctx.const(1)
    s = ctx.shape(x)
    if reps is not None and s is not None and all(d is not None for d in s):
        inter = b.ints([v for i in range(r) for v in (int(reps[i]), s[i])])
    else:
        rep = b.op("Cast", [ctx.inputs[1]], to=TensorProto.INT64)
        pairs = b.op("Concat", [b.unsqueeze(rep, [1]), b.unsqueeze(b.shape(x), [1])], axis=1)  # (r, 2)
        inter = b.op("Reshape", [pairs, b.ints([-1])])
    g = ctx.op("Reshape", [ctx.grads[0], inter])
    g = ctx.b.reduce("ReduceSum", g, [2 * i for i in range(r)], keepdims=False)
    return [g, None]


@rule("Clip")
def _clip(ctx):
    x = ctx.inputs[0]
    g = ctx.grads[0]
    if ctx.opset < 11 or "min" in ctx.attrs or "max" in ctx.attrs:
        lo = ctx.attrs.get("min")
        hi = ctx.attrs.get("max")
        lo_t = None if lo is None else ctx.c(lo, x)
        hi_t = None if hi is None else ctx.c(hi, x)
        lo_val = lo
    else:
        lo_t = ctx.inputs[1] if ctx.has_input(1) else None
        hi_t = ctx.inputs[2] if ctx.has_input(2) else None
        v = ctx.const(1)
        lo_val = None if v is None else float(v)
    relu_like = lo_t is not None and lo_val == 0.0
    if relu_like and ctx.rules == "deconvnet":
        return ctx.rest(ctx.op("Relu", [g]))
    conds = []
    if lo_t is not None:
        conds.append(ctx.op("Greater", [x, lo_t]))
    if hi_t is not None:
        conds.append(ctx.op("Less", [x, hi_t]))
    if relu_like and ctx.rules == "guided":
        g = ctx.op("Relu", [g])
    g0 = ctx.grads[0]
    gx = g
    if conds:
        cond = conds[0] if len(conds) == 1 else ctx.op("And", conds)
        gx = ctx.op("Mul", [g, ctx.mask(cond, x)])
    # min/max inputs (opset >= 11): y = min(max(x, lo), hi), so dy/dlo = [x < lo][lo < hi] and
    # dy/dhi = [max(x, lo) > hi] (0 at the ties, like the x gradient)
    glo = ghi = None
    if len(ctx.needs) > 1 and ctx.needs[1]:
        m = ctx.op("Less", [x, lo_t])
        if hi_t is not None:
            m = ctx.op("And", [m, ctx.op("Less", [lo_t, hi_t])])
        glo = ctx.unbroadcast(ctx.op("Mul", [g0, ctx.mask(m, x)]), lo_t)
    if len(ctx.needs) > 2 and ctx.needs[2]:
        t = x if lo_t is None else ctx.op("Max", [x, lo_t])
        ghi = ctx.unbroadcast(ctx.op("Mul", [g0, ctx.mask(ctx.op("Greater", [t, hi_t]), x)]), hi_t)
    return ctx.rest(gx, glo, ghi)


def _softmax_axes(ctx: RuleContext) -> list[int]:
    r = ctx.rank(ctx.inputs[0])
    if ctx.opset >= 13:
        return [ctx.attrs.get("axis", -1) % r]
    return list(range(ctx.attrs.get("axis", 1) % r, r))  # < 13: coerced to 2-D at `axis`


@rule("Softmax")
def _softmax(ctx):
    y = ctx.outputs[0]
    g = ctx.grads[0]
    # a fully masked row (all inputs -inf) has y = NaN; its inputs are constant, so its gradient
    # is 0 (a later Where discards the row): use y = 0 there instead of propagating 0 * NaN
    y = ctx.op("Where", [ctx.op("IsNaN", [y]), ctx.c(0.0, y), y])
    s = ctx.b.reduce("ReduceSum", ctx.op("Mul", [g, y]), _softmax_axes(ctx), keepdims=True)
    return [ctx.op("Mul", [y, ctx.op("Sub", [g, s])])]


@rule("LogSoftmax")
def _logsoftmax(ctx):
    y = ctx.outputs[0]
    g = ctx.grads[0]
    s = ctx.b.reduce("ReduceSum", g, _softmax_axes(ctx), keepdims=True)
    return [ctx.op("Sub", [g, ctx.op("Mul", [ctx.op("Exp", [y]), s])])]


# ============================ reductions =====================================================
def _reduce_axes(ctx: RuleContext, op: str) -> list[int] | None:
    """Normalised reduced axes, or None for 'identity' (noop_with_empty_axes and no axes)."""
    r = ctx.rank(ctx.inputs[0])
    from .graph import AXES_AS_INPUT

    if ctx.opset >= AXES_AS_INPUT.get(op, 13) and "axes" not in ctx.attrs:
        axes = ctx.need_const(1, "axes").tolist() if ctx.has_input(1) else []
    else:
        axes = list(ctx.attrs.get("axes", []))
    if not axes:
        if ctx.attrs.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(r))
    return sorted(a % r for a in axes)


def _expand_back(ctx: RuleContext, g: str, axes: list[int]) -> str:
    if not ctx.attrs.get("keepdims", 1):
        g = ctx.b.unsqueeze(g, axes)
    return ctx.op("Expand", [g, ctx.b.shape(ctx.inputs[0])])


def _count(ctx: RuleContext, x: str, axes: list[int], like: str) -> str:
    s = ctx.shape(x)
    if s is not None and all(s[a] is not None for a in axes):
        return ctx.c(float(np.prod([s[a] for a in axes])), like)
    b = ctx.b
    sizes = [b.op("Slice", [b.shape(x), b.ints([a]), b.ints([a + 1])]) for a in axes]
    n = b.op("ReduceProd", [b.op("Concat", sizes, axis=0)], keepdims=0)  # no axes: all (any opset)
    return b.op("Cast", [n], to=ctx.elem(like))


@rule("GlobalAveragePool")
def _gap(ctx):
    x = ctx.inputs[0]
    r = ctx.rank(x)
    axes = list(range(2, r))
    g = ctx.op("Div", [ctx.grads[0], _count(ctx, x, axes, x)])
    return [ctx.op("Expand", [g, ctx.b.shape(x)])]


@rule("GlobalMaxPool")
def _gmp(ctx):
    x = ctx.inputs[0]
    axes = list(range(2, ctx.rank(x)))
    m = ctx.mask(ctx.op("Equal", [x, ctx.outputs[0]]), x)
    cnt = ctx.b.reduce("ReduceSum", m, axes, keepdims=True)
    return [ctx.op("Mul", [m, ctx.op("Div", [ctx.grads[0], cnt])])]


# ============================ linear algebra =================================================
@rule("Gemm")
def _gemm(ctx):
    a, bm = ctx.inputs[0], ctx.inputs[1]
    g = ctx.grads[0]
    alpha = ctx.attrs.get("alpha", 1.0)
    beta = ctx.attrs.get("beta", 1.0)
    ta, tb = ctx.attrs.get("transA", 0), ctx.attrs.get("transB", 0)
    ga = gb = gc = None
    if ctx.needs[0]:
        if not ta:  # dA = alpha g B'^T
            ga = ctx.op("Gemm", [g, bm], alpha=alpha, transB=1 - tb)
        else:  # dA = alpha B' g^T
            ga = ctx.op("Gemm", [bm, g], alpha=alpha, transA=tb, transB=1)
    if ctx.needs[1]:
        if not tb:  # dB = alpha A'^T g
            gb = ctx.op("Gemm", [a, g], alpha=alpha, transA=1 - ta)
        else:  # dB = alpha g^T A'
            gb = ctx.op("Gemm", [g, a], alpha=alpha, transA=1, transB=ta)
    if len(ctx.needs) > 2 and ctx.needs[2]:
        gc = ctx.unbroadcast(ctx.op("Mul", [g, ctx.c(beta, ctx.outputs[0])]), ctx.inputs[2])
    return [ga, gb, gc][: len(ctx.inputs)]


@rule("MatMul")
def _matmul(ctx):
    a, bm = ctx.inputs
    b = ctx.b
    ra, rb = ctx.rank(a), ctx.rank(bm)
    g = ctx.grads[0]
    a2 = a if ra >= 2 else b.unsqueeze(a, [0])
    b2 = bm if rb >= 2 else b.unsqueeze(bm, [1])
    if rb == 1:
        g = b.unsqueeze(g, [-1])
    if ra == 1:
        g = b.unsqueeze(g, [-2]) if ctx.opset >= 11 else g
    sa = ctx.shape(a)
    sb = ctx.shape(bm)
    sa2 = sa if ra >= 2 else (1,) + tuple(sa)
    sb2 = sb if rb >= 2 else tuple(sb) + (1,)
    so = ctx.shape(ctx.outputs[0])
    rg = max(len(sa2), len(sb2))
    # broadcast batch shape of the (unsqueezed) output gradient
    so2 = None
    if so is not None:
        batch = tuple(so[: rg - 2]) if rg > 2 else ()
        so2 = batch + (sa2[-2], sb2[-1])

    def tr(t, r):
        p = list(range(r))
        p[-1], p[-2] = p[-2], p[-1]
        return b.op("Transpose", [t], perm=p)

    ga = gb = None
    if ctx.needs[0]:
        t = b.op("MatMul", [g, tr(b2, len(sb2))])
        t = b.unbroadcast(t, so2, a2 if ra >= 2 else a, sa2) if so2 is not None else t
        ga = b.reshape_like(t, a)
    if ctx.needs[1]:
        t = b.op("MatMul", [tr(a2, len(sa2)), g])
        t = b.unbroadcast(t, so2, b2 if rb >= 2 else bm, sb2) if so2 is not None else t
        gb = b.reshape_like(t, bm)
    return [ga, gb]


# ============================ convolution ====================================================
def _conv_geometry(ctx: RuleContext, in_sp: list[int], k: list[int]):
    n = len(in_sp)
    s = list(ctx.attrs.get("strides", [1] * n))
    d = list(ctx.attrs.get("dilations", [1] * n))
    auto = ctx.attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(ctx.attrs.get("pads", [0] * 2 * n))
    elif auto == "VALID":
        pads = [0] * 2 * n
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        pb, pe = [], []
        for i in range(n):
            out = -(-in_sp[i] // s[i])
            total = max((out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - in_sp[i], 0)
            small, big = total // 2, total - total // 2
            pb.append(small if auto == "SAME_UPPER" else big)
            pe.append(big if auto == "SAME_UPPER" else small)
        pads = pb + pe
    else:
        raise ctx.unsupported(f"auto_pad={auto!r}")
    return s, d, pads


def _bias_grad(ctx: RuleContext) -> str | None:
    r"""Conv/ConvTranspose bias :math:`B_c`: :math:`\bar B_c = \sum_{n, \mathbf{o}} g_{n c \mathbf{o}}`."""
    if len(ctx.needs) < 3 or not ctx.needs[2]:
        return None
    r = ctx.rank(ctx.outputs[0])
    return ctx.b.reduce("ReduceSum", ctx.grads[0], [0] + list(range(2, r)), keepdims=False)


def _grouped_correlation(ctx: RuleContext, inp: str, ker: str, n_inp: int, n_ker: int, group: int,
                         k: list[int], strides: list[int], dilations: list[int], pads: list[int]) -> str:
    r"""Per group :math:`j`: ``Conv(inp_j, ker_j)`` (batch = channels of ``inp_j``, channels = the
    original batch), cropped to the kernel size ``k`` and transposed to ``(ker_j, inp_j, *k)``;
    the groups are concatenated along axis 0.  ``inp``/``ker`` are ``(n_inp, N, ...)``/``(n_ker, N, ...)``."""
    b = ctx.b
    n = len(k)
    parts = []
    ci, co = n_inp // group, n_ker // group
    for j in range(group):
        xi = inp if group == 1 else b.op("Slice", [inp, b.ints([j * ci]), b.ints([(j + 1) * ci]), b.ints([0])])
        gi = ker if group == 1 else b.op("Slice", [ker, b.ints([j * co]), b.ints([(j + 1) * co]), b.ints([0])])
        c = b.op("Conv", [xi, gi], strides=strides, dilations=dilations, pads=pads)
        c = b.op("Slice", [c, b.ints([0] * n), b.ints(k), b.ints(list(range(2, 2 + n)))])
        parts.append(b.op("Transpose", [c], perm=[1, 0] + list(range(2, 2 + n))))
    return parts[0] if group == 1 else b.op("Concat", parts, axis=0)


def _conv_weight_grad(ctx: RuleContext) -> str:
    r"""Conv weight: :math:`\bar W_{m c \mathbf{k}} = \sum_{n,\mathbf{o}} g_{n m \mathbf{o}}\,
    x^{\mathrm{pad}}_{n c,\ \mathbf{o} s + \mathbf{k} d}` per group -- a correlation of
    :math:`x^{\mathsf T}` (channels as batch) with :math:`g^{\mathsf T}` as kernel, stride :math:`d`,
    dilation :math:`s`, the forward pads, cropped to the kernel size."""
    x, w = ctx.inputs[0], ctx.inputs[1]
    r = ctx.rank(x)
    n = r - 2
    k = list(ctx.attrs.get("kernel_shape") or ctx.static_dims(w, list(range(2, r))))
    if ctx.attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        in_sp = ctx.static_dims(x, list(range(2, r)))
    else:
        in_sp = [0] * n
    s, d, pads = _conv_geometry(ctx, in_sp, k)
    group = ctx.attrs.get("group", 1)
    (c_in,) = ctx.static_dims(x, [1])
    (m_out,) = ctx.static_dims(w, [0])
    perm = [1, 0] + list(range(2, r))
    xt = ctx.op("Transpose", [x], perm=perm)
    gt = ctx.op("Transpose", [ctx.grads[0]], perm=perm)
    return _grouped_correlation(ctx, xt, gt, c_in, m_out, group, k, d, s, pads)


def _convtranspose_pads(ctx: RuleContext, k, s, d, in_sp, out_sp) -> list[int]:
    r"""Explicit ConvTranspose pads.  With ``output_shape`` or ``auto_pad`` SAME_* (ONNX spec,
    ConvTranspose): :math:`T = s(i-1) + o_p + (k-1)d + 1 - o`; SAME_UPPER: begin :math:`\lfloor T/2\rfloor`,
    otherwise (SAME_LOWER, or output_shape without auto_pad) begin :math:`T - \lfloor T/2\rfloor`;
    :math:`o` is the actual (static) output size; :math:`T < 0` (a larger output_shape) counts as 0.  Only the begin pads matter for the adjoint."""
    n = len(k)
    auto = ctx.attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET" and "output_shape" not in ctx.attrs:
        return list(ctx.attrs.get("pads", [0] * 2 * n))
    if auto == "VALID":
        return [0] * 2 * n
    opad = list(ctx.attrs.get("output_padding", [0] * n))
    pb, pe = [], []
    for i in range(n):
        # an output_shape beyond the full extent pads the tail (T clamped at 0, as onnxruntime does)
        tot = max(0, s[i] * (in_sp[i] - 1) + opad[i] + (k[i] - 1) * d[i] + 1 - out_sp[i])
        small = tot // 2
        b0 = small if auto == "SAME_UPPER" else tot - small
        pb.append(b0)
        pe.append(tot - b0)
    return pb + pe


def _convtranspose_weight_grad(ctx: RuleContext) -> str:
    r"""ConvTranspose weight (shape ``(C, M/G, *k)``): :math:`\bar W_{c m \mathbf{k}} = \sum_{n,\mathbf{i}}
    x_{n c \mathbf{i}}\, g_{n m,\ \mathbf{i} s + \mathbf{k} d - p}` -- a correlation of :math:`g^{\mathsf T}`
    (padded by the forward begin pads) with :math:`x^{\mathsf T}` as kernel, stride :math:`d`,
    dilation :math:`s`, cropped to the kernel size."""
    x, w = ctx.inputs[0], ctx.inputs[1]
    r = ctx.rank(x)
    n = r - 2
    k = list(ctx.attrs.get("kernel_shape") or ctx.static_dims(w, list(range(2, r))))
    s = list(ctx.attrs.get("strides", [1] * n))
    d = list(ctx.attrs.get("dilations", [1] * n))
    group = ctx.attrs.get("group", 1)
    in_sp = ctx.static_dims(x, list(range(2, r)))
    out_sp = ctx.static_dims(ctx.outputs[0], list(range(2, r)))
    pads = _convtranspose_pads(ctx, k, s, d, in_sp, out_sp)
    (c_in,) = ctx.static_dims(x, [1])
    (m_out,) = ctx.static_dims(ctx.outputs[0], [1])
    pe = [max(0, (k[i] - 1) * d[i] + s[i] * (in_sp[i] - 1) + 1 - out_sp[i] - pads[i]) for i in range(n)]
    perm = [1, 0] + list(range(2, r))
    xt = ctx.op("Transpose", [x], perm=perm)
    gt = ctx.op("Transpose", [ctx.grads[0]], perm=perm)
    res = _grouped_correlation(ctx, gt, xt, m_out, c_in, group, k, d, s, pads[:n] + pe)
    return res


def _conv_adjoint(ctx: RuleContext, weight_grad: Callable[[RuleContext], str],
                  input_grad: Callable[..., list]) -> list:
    """The shared frame of the Conv / ConvTranspose adjoints: the bias gradient, the weight
    gradient (when needed) and, when the input's gradient is needed, ``input_grad(ctx, gw, gb, r,
    n, k)`` with the input rank ``r``, its spatial rank ``n = r - 2`` and the kernel sizes ``k``
    (attribute ``kernel_shape``, else W's spatial dims)."""
    gb = _bias_grad(ctx)
    gw = weight_grad(ctx) if ctx.needs[1] else None
    if not ctx.needs[0]:
        return [None, gw, gb]
    r = ctx.rank(ctx.inputs[0])
    k = list(ctx.attrs.get("kernel_shape") or ctx.static_dims(ctx.inputs[1], list(range(2, r))))
    return input_grad(ctx, gw, gb, r, r - 2, k)


@rule("Conv")
def _conv(ctx):
    return _conv_adjoint(ctx, _conv_weight_grad, _conv_input_grad)


def _conv_input_grad(ctx: RuleContext, gw, gb, r: int, n: int, k: list[int]) -> list:
    x, w = ctx.inputs[0], ctx.inputs[1]
    xs = ctx.shape(x)
    if all(si == 1 for si in ctx.attrs.get("strides", [1] * n)):
        # stride 1: the geometry does not depend on the input size (dynamic spatial axes are fine)
        in_sp = [k[i] * ctx.attrs.get("dilations", [1] * n)[i] for i in range(n)]
    elif (xs is None or any(v is None for v in xs[2:])) and ctx.attrs.get("auto_pad", "NOTSET") in ("NOTSET", ""):
        return _conv_runtime_sizes(ctx, gw, gb, k, n)
    else:
        in_sp = ctx.static_dims(x, list(range(2, r)))
    s, d, pads = _conv_geometry(ctx, in_sp, k)
    pe_new, opad = [], []
    for i in range(n):
        out = (in_sp[i] + pads[i] + pads[i + n] - ((k[i] - 1) * d[i] + 1)) // s[i] + 1
        full = s[i] * (out - 1) + d[i] * (k[i] - 1) + 1
        need = full - pads[i] - in_sp[i]
        pe_new.append(max(need, 0))
        opad.append(max(-need, 0))
    group = ctx.attrs.get("group", 1)
    ext = [d[i] * (k[i] - 1) for i in range(n)]
    if (all(si == 1 for si in s) and w in ctx.info.const and ctx.shape(w) is not None
            and all(pads[i] <= ext[i] and pads[i + n] <= ext[i] for i in range(n))):
        # stride 1: the adjoint is a correlation with the flipped, in/out-swapped kernel and pads
        # d(k-1) - pad; onnxruntime's Conv is faster than its ConvTranspose.  The kernel transform
        # reads only an initializer, so onnxruntime constant-folds it at session creation.
        b = ctx.b
        co, ci_g = ctx.shape(w)[:2]
        co_g = co // group
        wt = b.op("Reshape", [w, b.ints([group, co_g, ci_g] + k)])
        wt = b.op("Transpose", [wt], perm=[0, 2, 1] + list(range(3, 3 + n)))
        wt = b.op("Reshape", [wt, b.ints([group * ci_g, co_g] + k)])
        wt = b.op("Slice", [wt, b.ints([-1] * n), b.ints([-(2 ** 62)] * n), b.ints(list(range(2, 2 + n))),
                            b.ints([-1] * n)])
        dx = ctx.op("Conv", [ctx.grads[0], wt], group=group, strides=s, dilations=d, kernel_shape=k,
                    pads=[ext[i] - pads[i] for i in range(n)] + [ext[i] - pads[i + n] for i in range(n)])
        return ctx.rest(dx, gw, gb)
    dx = ctx.op("ConvTranspose", [ctx.grads[0], w], group=group, strides=s,
                dilations=d, kernel_shape=k, pads=list(pads[:n]) + pe_new, output_padding=opad)
    return ctx.rest(dx, gw, gb)


def _conv_runtime_sizes(ctx: RuleContext, gw, gb, k: list[int], n: int) -> list:
    r"""Conv adjoint when the input's spatial sizes are known only at run time (explicit pads).

    ``ConvTranspose(g, W)`` with the begin pads and no end pad has spatial size
    :math:`F - p_b` (:math:`F = s(o-1) + d(k-1) + 1`); the adjoint is that result cropped to, or
    zero-padded at the end up to, the input size :math:`n` read with ``Shape`` -- the same numbers
    as the static ``pads``/``output_padding`` form (facts: need = F - p_b - n).  ``gw``/``gb``, the
    weight and bias adjoints of :func:`_conv_adjoint` (which do not depend on these sizes), are
    returned beside it.
    """
    b = ctx.b
    x, w = ctx.inputs[0], ctx.inputs[1]
    s = list(ctx.attrs.get("strides", [1] * n))
    d = list(ctx.attrs.get("dilations", [1] * n))
    pads = list(ctx.attrs.get("pads", [0] * 2 * n))
    dx = ctx.op("ConvTranspose", [ctx.grads[0], w], group=ctx.attrs.get("group", 1), strides=s,
                dilations=d, kernel_shape=k, pads=list(pads[:n]) + [0] * n)
    sp = list(range(2, 2 + n))
    in_sp = b.op("Slice", [b.shape(x), b.ints([2]), b.ints([2 + n])])
    dx = b.op("Slice", [dx, b.ints([0] * n), in_sp, b.ints(sp)])
    short = b.op("Sub", [in_sp, b.op("Slice", [b.shape(dx), b.ints([2]), b.ints([2 + n])])])
    dx = b.op("Pad", [dx, b.op("Concat", [b.ints([0] * (2 + n + 2)), short], axis=0)])
    return ctx.rest(dx, gw, gb)


@rule("ConvTranspose")
def _convtranspose(ctx):
    return _conv_adjoint(ctx, _convtranspose_weight_grad, _convtranspose_input_grad)


def _convtranspose_input_grad(ctx: RuleContext, gw, gb, r: int, n: int, k: list[int]) -> list:
    x, w = ctx.inputs[0], ctx.inputs[1]
    s = list(ctx.attrs.get("strides", [1] * n))
    d = list(ctx.attrs.get("dilations", [1] * n))
    # adjoint: y[o] += x[i] w[k] at o = i*s + k*d - pad_begin  =>  dx = Conv(g, W) (correlation)
    in_sp = ctx.static_dims(x, list(range(2, r)))
    out_sp = ctx.static_dims(ctx.outputs[0], list(range(2, r)))
    pads = _convtranspose_pads(ctx, k, s, d, in_sp, out_sp)
    pe = []
    for i in range(n):
        # Conv output = floor((out + pb + pe - eff)/s) + 1 must equal in
        eff = (k[i] - 1) * d[i] + 1
        pe.append((in_sp[i] - 1) * s[i] + eff - out_sp[i] - pads[i])
    if any(p < 0 for p in pe):
        pe_pos = [max(p, 0) for p in pe]
    else:
        pe_pos = pe
    dx = ctx.op("Conv", [ctx.grads[0], w], group=ctx.attrs.get("group", 1), strides=s,
                dilations=d, kernel_shape=k, pads=pads[:n] + pe_pos)
    if pe_pos != pe:  # negative end pad = crop
        dx = ctx.op("Slice", [dx, ctx.b.ints([0] * n), ctx.b.ints(in_sp), ctx.b.ints(list(range(2, r)))])
    return ctx.rest(dx, gw, gb)


# ============================ pooling and resizing ===========================================
@rule("MaxPool")
def _maxpool(ctx):
    x = ctx.inputs[0]
    b = ctx.b
    n = ctx.rank(x) - 2
    k = ctx.attrs["kernel_shape"]
    s = ctx.attrs.get("strides", [1] * n)
    d = ctx.attrs.get("dilations", [1] * n)
    overlapping = any(si < (ki - 1) * di + 1 for si, ki, di in zip(s, k, d))
    if overlapping and ctx.opset < 16:
        raise NeedsOpset(16, "MaxPool with overlapping windows needs ScatterElements(reduction='add')")
    attrs = {a: v for a, v in ctx.attrs.items() if a != "storage_order"}
    _, idx = b.op("MaxPool", [x], n_out=2, **attrs)
    zeros = b.op("Reshape", [b.zeros_like(x, ctx.elem(x)), b.ints([-1])])
    flat_i = b.op("Reshape", [idx, b.ints([-1])])
    flat_g = b.op("Reshape", [ctx.grads[0], b.ints([-1])])
    red = {"reduction": "add"} if ctx.opset >= 16 else {}
    sc = b.op("ScatterElements", [zeros, flat_i, flat_g], axis=0, **red)
    return [b.reshape_like(sc, x)]


def pool_axis_matrix(ctx: RuleContext, i: int, size: int, count_include_pad: int,
                     min_opset: int) -> np.ndarray:
    """The 1-D ``AveragePool`` matrix of spatial axis ``i`` (input length ``size``) with the
    node's kernel / stride / pads (or auto_pad) / dilation / ceil_mode on that axis, probed from
    onnxruntime (:func:`.probe.axis_matrix`) at opset ``max(ctx.opset, min_opset)``.  Shared by
    the separable AveragePool and LpPool adjoints."""
    n = ctx.rank(ctx.inputs[0]) - 2
    d = ctx.attrs.get("dilations")
    pads = ctx.attrs.get("pads", [0] * 2 * n)
    a = {"kernel_shape": [ctx.attrs["kernel_shape"][i]],
         "strides": [ctx.attrs.get("strides", [1] * n)[i]],
         "ceil_mode": ctx.attrs.get("ceil_mode", 0), "count_include_pad": count_include_pad}
    auto = ctx.attrs.get("auto_pad", "NOTSET")
    if auto not in ("NOTSET", ""):
        a["auto_pad"] = auto
    else:
        a["pads"] = [pads[i], pads[i + n]]
    if d is not None:
        a["dilations"] = [d[i]]
    return axis_matrix("AveragePool", a, size, max(ctx.opset, min_opset))


@rule("AveragePool")
def _avgpool(ctx):
    """Separable: per spatial axis the matrix is probed from onnxruntime (:mod:`.probe`), entries
    snapped to exact reciprocals of the integer window counts."""
    x = ctx.inputs[0]
    r = ctx.rank(x)
    n = r - 2
    in_sp = ctx.static_dims(x, list(range(2, r)))
    g = ctx.grads[0]
    npdt = helper.tensor_dtype_to_np_dtype(ctx.elem(x))
    for i in range(n):
        m = pool_axis_matrix(ctx, i, in_sp[i], ctx.attrs.get("count_include_pad", 0), 11)
        # entries are 1/count: recover the exact reciprocal of the integer count
        nz = m != 0
        m[nz] = 1.0 / np.round(1.0 / m[nz])
        g = ctx.b.move_axis_matmul(g, r, 2 + i, ctx.b.const(m.astype(npdt), hint="avgpool_T"))
    return [g]


def _resize(ctx):
    """Resize with constant scales/sizes/roi and static shapes, the first half of the Resize rule
    (:func:`.rules_extra._resize_any` registers it, with the in-graph probe for everything else):
    a separable linear map, per resized axis the matrix probed from onnxruntime (:mod:`.probe`)."""
    x = ctx.inputs[0]
    r = ctx.rank(x)
    in_dims = ctx.static_dims(x, list(range(r)))
    out_dims = ctx.static_dims(ctx.outputs[0], list(range(r)))
    if ctx.attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise ctx.unsupported("Resize keep_aspect_ratio_policy other than 'stretch'")
    axes = ctx.attrs.get("axes")
    axes = list(range(r)) if axes is None else [a % r for a in axes]
    scales = ctx.const(2)
    if scales is None and ctx.has_input(2) and not ctx.has_input(3):
        # a runtime scales tensor: the coordinate transform uses the scale itself, not out/in
        ctx.need_const(2, "scales")
    if scales is not None and scales.size == 0:
        scales = None
    roi = ctx.const(1)
    if roi is not None and roi.size == 0:
        roi = None
    if ctx.has_input(1) and roi is None and ctx.attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        ctx.need_const(1, "roi")
    attrs = {a: v for a, v in ctx.attrs.items() if a in (
        "mode", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside",
        "nearest_mode", "antialias")}  # extrapolation_value is the affine part (no gradient): probe with 0
    g = ctx.grads[0]
    npdt = helper.tensor_dtype_to_np_dtype(ctx.elem(x))
    for j, ax in enumerate(axes):
        if scales is not None:
            extra = [np.array([1, 1, 1, float(scales[j])], np.float32), None]
        else:
            extra = [None, np.array([in_dims[ax], 1, 1, out_dims[ax]], np.int64)]
        rr = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32)
        if roi is not None:
            rr[3], rr[7] = roi[j], roi[j + len(axes)]
        opset = max(ctx.opset, 11)
        inputs = [rr] + extra if opset < 13 or roi is not None else [None] + extra
        if opset < 13 and extra[0] is None:
            inputs = [rr, np.zeros(0, np.float32), extra[1]]
        m = axis_matrix("Resize", attrs, in_dims[ax], opset, inputs, rank=4)
        if m.shape[0] == m.shape[1] and np.array_equal(m, np.eye(m.shape[0])):
            continue
        g = ctx.b.move_axis_matmul(g, r, ax, ctx.b.const(m.astype(npdt), hint="resize_T"))
    return [g] + [None] * (len(ctx.inputs) - 1)


# ============================ normalisation ==================================================
@rule("BatchNormalization")
def _batchnorm(ctx):
    r"""Inference mode, :math:`y = \gamma (x - m)/\sigma + \beta`, :math:`\sigma = \sqrt{v + \epsilon}`:
    :math:`\bar x = g\gamma/\sigma`, :math:`\bar\gamma = \sum g (x-m)/\sigma`, :math:`\bar\beta = \sum g`,
    :math:`\bar m = -\sum g\gamma/\sigma`, :math:`\bar v = -\tfrac12\sum g\gamma(x-m)/\sigma^3` (sums over
    every axis but the channel axis 1)."""
    x, scale, _bias, mean, var = ctx.inputs[:5]
    if ctx.attrs.get("training_mode", 0) or len([o for o in ctx.outputs if o]) > 1:
        raise ctx.unsupported("BatchNormalization in training mode")
    r = ctx.rank(x)
    eps = ctx.attrs.get("epsilon", 1e-5)
    g = ctx.grads[0]
    ex = ctx.elem(x)
    cast = (lambda t: ctx.op("Cast", [t], to=ex)) if ctx.elem(var) != ex else (lambda t: t)  # noqa: E731
    back = (lambda t: ctx.op("Cast", [t], to=ctx.elem(var))) if ctx.elem(var) != ex else (lambda t: t)  # noqa: E731
    sd = ctx.op("Sqrt", [ctx.op("Add", [var, ctx.c(eps, var)])])
    un = lambda t: ctx.b.unsqueeze(cast(t), list(range(1, r - 1)))  # noqa: E731  (C,) -> (C, 1, ...)
    red = [0] + list(range(2, r))
    rs = lambda t: back(ctx.b.reduce("ReduceSum", t, red, keepdims=False))  # noqa: E731
    f = ctx.op("Div", [scale, sd])
    res = [None] * 5
    if ctx.needs[0]:
        res[0] = ctx.op("Mul", [g, un(f)])
    if any(ctx.needs[1:5]):
        xc_sd = ctx.op("Div", [ctx.op("Sub", [x, un(mean)]), un(sd)])
        if ctx.needs[1]:
            res[1] = rs(ctx.op("Mul", [g, xc_sd]))
        if ctx.needs[2]:
            res[2] = rs(g)
        if ctx.needs[3]:
            res[3] = ctx.op("Neg", [ctx.op("Mul", [rs(g), f])])
        if ctx.needs[4]:
            t = rs(ctx.op("Mul", [g, xc_sd]))                      # sum g (x-m)/sd
            res[4] = ctx.op("Mul", [ctx.op("Mul", [t, ctx.op("Div", [f, sd])]), ctx.c(-0.5, var)])
    return res + [None] * (len(ctx.inputs) - 5)


def _norm_hat(ctx: RuleContext, x: str, axes: list[int], eps: float) -> tuple[str, str]:
    r""":math:`(\hat x, \sigma)` with :math:`\hat x = (x - \mu)/\sigma`, :math:`\sigma = \sqrt{\mathrm{var} + \epsilon}` over ``axes``."""
    b = ctx.b
    mu = b.reduce("ReduceMean", x, axes, keepdims=True)
    xc = ctx.op("Sub", [x, mu])
    var = b.reduce("ReduceMean", ctx.op("Mul", [xc, xc]), axes, keepdims=True)
    sd = ctx.op("Sqrt", [ctx.op("Add", [var, ctx.c(eps, x)])])
    return ctx.op("Div", [xc, sd]), sd


def _norm_backward(ctx: RuleContext, x: str, axes: list[int], eps: float, gh: str) -> str:
    r"""dX of x̂ = (x - μ)/σ over ``axes`` given ĝ = g·scale:  (ĝ - mean ĝ - x̂ mean(ĝ x̂)) / σ."""
    b = ctx.b
    xh, sd = _norm_hat(ctx, x, axes, eps)
    m1 = b.reduce("ReduceMean", gh, axes, keepdims=True)
    m2 = b.reduce("ReduceMean", ctx.op("Mul", [gh, xh]), axes, keepdims=True)
    t = ctx.op("Sub", [ctx.op("Sub", [gh, m1]), ctx.op("Mul", [xh, m2])])
    return ctx.op("Div", [t, sd])


@rule("LayerNormalization")
def _layernorm(ctx):
    r"""y = x̂ γ + β over axes [axis, r): dx as :func:`_norm_backward`; :math:`\bar\gamma = \sum g\hat x`,
    :math:`\bar\beta = \sum g` over the leading axes (reduced to the parameters' broadcast shape)."""
    x, scale = ctx.inputs[0], ctx.inputs[1]
    r = ctx.rank(x)
    axis = ctx.attrs.get("axis", -1) % r
    eps = ctx.attrs.get("epsilon", 1e-5)
    g = ctx.grads[0]
    axes = list(range(axis, r))
    dx = None
    if ctx.needs[0]:
        parts = []
        if g is not None:
            parts.append(_norm_backward(ctx, x, axes, eps, ctx.op("Mul", [g, scale])))
        gm = ctx.grads[1] if len(ctx.grads) > 1 else None
        gr = ctx.grads[2] if len(ctx.grads) > 2 else None
        if gm is not None or gr is not None:
            # Mean = μ: dμ/dx_i = 1/n;  InvStdDev = ρ = (var + ε)^(-1/2): dρ/dx_i = -ρ^3 (x_i - μ)/n
            n = ctx.op("Cast", [ctx.op("Div", [ctx.b.op("Size", [x]), ctx.b.op("Size", [ctx.outputs[1] or ctx.outputs[2]])])],
                       to=ctx.elem(x))
            if gm is not None:
                parts.append(ctx.op("Expand", [ctx.op("Div", [gm, n]), ctx.b.shape(x)]))
            if gr is not None:
                mu = ctx.b.reduce("ReduceMean", x, axes, keepdims=True)
                rho = ctx.outputs[2]
                t = ctx.op("Mul", [gr, ctx.op("Mul", [rho, ctx.op("Mul", [rho, rho])])])
                parts.append(ctx.op("Neg", [ctx.op("Div", [ctx.op("Mul", [t, ctx.op("Sub", [x, mu])]), n])]))
        dx = ctx.b.add_all(parts) if parts else None
    if g is None:   # only Mean / InvStdDev reach the seed: they do not depend on the scale or bias
        return [dx, ZERO, ZERO][: len(ctx.inputs)]
    ds = db = None
    if ctx.needs[1]:
        xh, _ = _norm_hat(ctx, x, list(range(axis, r)), eps)
        ds = ctx.unbroadcast(ctx.op("Mul", [g, xh]), scale)
    if len(ctx.needs) > 2 and ctx.needs[2]:
        db = ctx.unbroadcast(g, ctx.inputs[2])
    return ctx.rest(dx, ds, db)


@rule("InstanceNormalization")
def _instnorm(ctx):
    r"""y = x̂ γ_c + β_c, x̂ over the spatial axes: :math:`\bar\gamma_c = \sum_{n,s} g\hat x`,
    :math:`\bar\beta_c = \sum_{n,s} g`."""
    x, scale = ctx.inputs[0], ctx.inputs[1]
    r = ctx.rank(x)
    eps = ctx.attrs.get("epsilon", 1e-5)
    g = ctx.grads[0]
    red = [0] + list(range(2, r))
    dx = ds = db = None
    if ctx.needs[0]:
        sc = ctx.b.unsqueeze(scale, list(range(1, r - 1)))
        dx = _norm_backward(ctx, x, list(range(2, r)), eps, ctx.op("Mul", [g, sc]))
    if ctx.needs[1]:
        xh, _ = _norm_hat(ctx, x, list(range(2, r)), eps)
        ds = ctx.b.reduce("ReduceSum", ctx.op("Mul", [g, xh]), red, keepdims=False)
    if ctx.needs[2]:
        db = ctx.b.reduce("ReduceSum", g, red, keepdims=False)
    return [dx, ds, db]


from . import rules_elementwise, rules_extra, rules_reduce  # noqa: E402,F401  (register their rules)
