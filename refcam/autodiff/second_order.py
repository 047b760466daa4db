r"""Second-order gradients: Hessian-vector products by reverse-over-reverse differentiation.

For a layer tensor :math:`A` and a class score :math:`y^c`, :func:`build_hvp_model` returns an ONNX
model computing, in one onnxruntime run,

.. math:: g = \frac{\partial y^c}{\partial A},\qquad
          H v = \frac{\partial}{\partial A}\big\langle v,\ g(A)\big\rangle
              = \frac{\partial^2 y^c}{\partial A^2}\, v

for a direction :math:`v` fed as a graph input (ShapleyCAM uses :math:`v = A`, the activations
themselves: :func:`hvp`).

Design choice: reverse-over-reverse
-----------------------------------
The first-order backward graph of :func:`refcam.autodiff.build_vjp_model` is itself an ONNX graph
made of standard ops; applying the same builder to it, with :math:`g` as the seeded output and the
direction :math:`v` as its seed, gives :math:`\partial\langle v, g\rangle/\partial A = H^\top v =
H v` (:math:`H` is symmetric).  This reuses the one rule registry instead of writing and
verifying a second, forward-mode (JVP) rule for every op; a forward-over-reverse JVP set would
save one backward sweep (about 1.3x cheaper in theory) at the price of a second rule per op, i.e.
a second place where a derivative can be silently wrong.  The cost here is one forward + two
backward sweeps of the head after :math:`A` in a single session run.

Which rules are differentiable (explicit)
-----------------------------------------
Reverse-over-reverse is exact only if every first-order rule on the path from :math:`A` to the
score expresses its dependence on the forward tensors with differentiable ops (piecewise-constant
masks such as ``Cast(Greater(x, 0))`` are fine: their derivative is 0 almost everywhere, as the
true second derivative of ReLU).  :data:`SECOND_ORDER_OPS` lists the forward op types whose rules
were checked for this (``tests/autodiff/test_hvp.py``: HVP against central differences of the
first-order gradient, op by op).  A forward op on the path that is not in the set raises
:class:`~refcam.errors.UnsupportedOpError` naming it; an op emitted by a first-order rule that
has no rule of its own raises the builder's :class:`~refcam.errors.UnsupportedOpError`.

The backward of ``MaxPool`` scatters the gradient with ``ScatterElements``; this module registers
the ``ScatterElements`` rule needed to differentiate it once more (when no other rule is
registered): ``∂/∂updates = GatherElements(g, indices)``, ``∂/∂data = g`` (``reduction="add"``)
or ``g`` with the scattered positions zeroed (``"none"``).  With ``reduction="none"`` duplicate
indices would make the first formula wrong, so it is accepted only for the scatter the
``MaxPool`` rule emits (non-overlapping windows: unique indices by construction), which this
module marks before the second sweep; any other ``"none"`` scatter raises.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx

from ..errors import InvalidArgumentError, UnsupportedOpError
from .builder import SEED_INPUT, build_vjp_model, grad_name
from .rules import RULES, NO_GRADIENT_OPS, rule

__all__ = ["SECOND_ORDER_OPS", "HVP_DIRECTION_INPUT", "HvpResult", "build_hvp_model", "hvp",
           "hvp_output_names"]

#: Forward op types whose first-order rule is differentiable by the rule registry (checked
#: against finite differences of the gradient); everything else is refused for second order.
#: Covers the ops ShapleyCAM meets on ResNet-50, VGG, MobileNet (v2/v3) and EfficientNet heads.
SECOND_ORDER_OPS: frozenset[str] = frozenset({
    # linear / affine
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Add", "Sub", "Sum", "Mean",
    "Neg", "Mul", "Div",
    # pooling and resampling
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum",
    "Resize",
    # activations
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softmax",
    "LogSoftmax", "Exp", "Softplus",
    # layout
    "Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concat",
    "Split", "Slice", "Pad", "Expand", "Cast",
}) | NO_GRADIENT_OPS

#: graph input of the second sweep holding the direction :math:`v`
HVP_DIRECTION_INPUT = SEED_INPUT
#: graph input holding the first sweep's seed (one-hot rows of the target classes)
CLASS_SEED_INPUT = "refcam_seed_order1"
_GRAD1_PREFIX = "refcam_grad1/"
_MAXPOOL_SCATTER = "refcam_maxpool_scatter"


def hvp_output_names(wrt: str) -> tuple[str, str]:
    """``(gradient output, HVP output)`` names of a model built by :func:`build_hvp_model`.

    >>> hvp_output_names("layer4")
    ('refcam_grad1/layer4', 'refcam_grad/layer4')
    """
    return _GRAD1_PREFIX + wrt, grad_name(wrt)


# ------------------------------------------------------------------------- ScatterElements rule
def _scatter_elements(ctx):
    """Backward of ``ScatterElements(data, indices, updates)`` (see the module docstring)."""
    red = ctx.attrs.get("reduction", "none")
    axis = ctx.attrs.get("axis", 0)
    g = ctx.grads[0]
    if red not in ("none", "add"):
        raise ctx.unsupported(f"ScatterElements reduction={red!r}")
    if red == "none" and not ctx.node.name.startswith(_MAXPOOL_SCATTER):
        raise ctx.unsupported("ScatterElements reduction='none' with possibly repeated indices")
    gd = gu = None
    if ctx.needs[0]:
        gd = g if red == "add" else ctx.op("ScatterElements", [g, ctx.inputs[1],
                                                               ctx.b.zeros_like(ctx.inputs[2], ctx.elem(g))],
                                           axis=axis)
    if ctx.needs[2]:
        gu = ctx.op("GatherElements", [g, ctx.inputs[1]], axis=axis)
    return [gd, None, gu]


if "ScatterElements" not in RULES:
    rule("ScatterElements")(_scatter_elements)


# ------------------------------------------------------------------------------- the builder
def _live_forward_ops(model: onnx.ModelProto, wrt: str, seed: str) -> list[onnx.NodeProto]:
    nodes = list(model.graph.node)
    fwd = {wrt}
    for n in nodes:
        if any(i in fwd for i in n.input if i):
            fwd.update(o for o in n.output if o)
    bwd = {seed}
    for n in reversed(nodes):
        if any(o in bwd for o in n.output):
            bwd.update(i for i in n.input if i)
    return [n for n in nodes if any(i in fwd for i in n.input if i) and any(o in bwd for o in n.output)]


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for n in graph.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
        for i, x in enumerate(n.output):
            if x == old:
                n.output[i] = new
    for coll in (graph.input, graph.output, graph.value_info):
        for vi in coll:
            if vi.name == old:
                vi.name = new


def _mark_maxpool_scatters(graph: onnx.GraphProto) -> None:
    """Name the ScatterElements nodes fed by MaxPool indices (the MaxPool rule's, unique indices)."""
    producer = {o: n for n in graph.node for o in n.output if o}
    for k, n in enumerate(graph.node):
        if n.op_type != "ScatterElements":
            continue
        src = producer.get(n.input[1])
        while src is not None and src.op_type in ("Reshape", "Identity"):
            src = producer.get(src.input[0])
        if src is not None and src.op_type == "MaxPool" and len(src.output) > 1 and \
                src.output[1] in (n.input[1], *(producer[n.input[1]].input if n.input[1] in producer else ())):
            n.name = f"{_MAXPOOL_SCATTER}_{k}"


def build_hvp_model(model: onnx.ModelProto, wrt: str, seed: str | None = None, *,
                    check: bool = True) -> onnx.ModelProto:
    r"""A model computing :math:`g = \partial\langle s, y\rangle/\partial A` and
    :math:`Hv = \partial\langle v, g\rangle/\partial A` in one run (reverse over reverse).

    Inputs: the model's inputs, ``refcam_seed_order1`` (:math:`s`, shape of output ``seed``:
    one-hot rows give :math:`y^c`) and ``refcam_seed`` (:math:`v`, shape of :math:`A`).
    Outputs: the model's outputs, :math:`A` (under its name), :math:`g` and :math:`Hv` under
    :func:`hvp_output_names` ``(wrt)``.

    Raises
    ------
    UnsupportedOpError : a forward op between ``wrt`` and ``seed`` is not in
        :data:`SECOND_ORDER_OPS`, or a first-order rule emitted an op without a rule.

    Examples
    --------
    >>> from onnx import helper, TensorProto
    >>> g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["q"]),
    ...                        helper.make_node("Mul", ["q", "x"], ["y"])], "cube",
    ...     [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 2])])
    >>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    >>> import onnxruntime as ort
    >>> s = ort.InferenceSession(build_hvp_model(m, "x").SerializeToString(), providers=["CPUExecutionProvider"])
    >>> x = np.array([[1., 2.]])                     # y = x^3: g = 3x^2, H v = 6 x v
    >>> s.run(list(hvp_output_names("x")), {"x": x, "refcam_seed_order1": np.ones((1, 2)),
    ...                                      "refcam_seed": np.ones((1, 2))})
    [array([[ 3., 12.]]), array([[ 6., 12.]])]
    """
    if not isinstance(wrt, str):
        raise InvalidArgumentError("wrt", wrt, "one tensor name")
    seed = seed or model.graph.output[0].name
    bad = sorted({n.op_type for n in _live_forward_ops(model, wrt, seed)
                  if n.domain not in ("", "ai.onnx") or n.op_type not in SECOND_ORDER_OPS})
    if bad:
        raise UnsupportedOpError(
            f"second-order gradients (Hessian-vector products) between {wrt!r} and {seed!r}: the "
            f"backward rule of {', '.join(bad)} is not in refcam.autodiff.second_order.SECOND_ORDER_OPS "
            "(not verified differentiable); use finite differences of the gradient")
    first = build_vjp_model(model, wrt, seed=seed, rules="plain", check=check)
    g1, _ = hvp_output_names(wrt)
    _rename(first.graph, SEED_INPUT, CLASS_SEED_INPUT)
    _rename(first.graph, grad_name(wrt), g1)
    _mark_maxpool_scatters(first.graph)
    meta = {p.key: p.value for p in first.metadata_props}
    del first.metadata_props[:]
    second = build_vjp_model(first, wrt, seed=g1, rules="plain", check=check)
    # the second build appends A again as an output when it is not one already: keep one
    seen, outs = set(), []
    for o in second.graph.output:
        if o.name not in seen:
            seen.add(o.name)
            outs.append(o)
    del second.graph.output[:]
    second.graph.output.extend(outs)
    second.metadata_props.append(onnx.StringStringEntryProto(
        key="refcam.hvp", value=json.dumps({"wrt": wrt, "gradient": g1, "hvp": grad_name(wrt),
                                            "class_seed": CLASS_SEED_INPUT, "direction": SEED_INPUT,
                                            "first_order": meta.get("refcam.gradients", "")})))
    return second


# ----------------------------------------------------------------------------------- the API
class HvpResult:
    """``outputs`` (model output), ``classes`` (N,) the seeded class per sample, ``activations``
    :math:`A` ``(N, K, *S)``, ``gradients`` :math:`g` and ``hvp`` :math:`H v` (same shape),
    channels first for channels-last models."""

    def __init__(self, outputs, classes, activations, gradients, hvp):
        self.outputs, self.classes = outputs, classes
        self.activations, self.gradients, self.hvp = activations, gradients, hvp


_SESSIONS: dict = {}


def hvp(model: Any, inputs: Any, wrt: Any = None, target: Any = None, *, direction: Any = None,
        seed_weights: Any = None) -> HvpResult:
    r"""Gradient and Hessian-vector product of :math:`y^c` w.r.t. a layer, from refcam's own engine.

    .. math:: g = \frac{\partial y^c}{\partial A},\qquad
              H v = \frac{\partial^2 y^c}{\partial A^2}\,v \quad (v = A \text{ by default})

    Parameters
    ----------
    model : :class:`refcam.onnx.Model` or anything :func:`refcam.onnx.load` accepts.
    inputs : ``(N, *input_shape[1:])``.
    wrt : a layer (as :meth:`refcam.onnx.Model.layer` resolves it); default the CAM layer.
    target : int, per-sample ints or ``None`` (top-1), one class per sample; or an
        :class:`~refcam.onnx.OnnxTarget` (e.g. ``softmax_probability(c)``: its score nodes are
        appended and differentiated twice).
    direction : ``(N, *A.shape[1:])`` native layout, default the activations :math:`A` (ShapleyCAM).
    seed_weights : ``(N, C)`` seed :math:`s` instead of one-hot class rows (then
        :math:`g = \sum_j s_j \partial y_j/\partial A` and :math:`Hv` likewise; ``target`` ignored).

    Returns
    -------
    HvpResult
    """
    import onnxruntime as ort

    from ..onnx import OnnxTarget, load, resolve_targets
    from ..onnx.onnx_targets import SCORE_OUTPUT, WEIGHT_INPUT

    m = load(model)
    x = m.check_inputs(inputs)
    name = m.layer(wrt, argument="wrt").name if wrt is not None else m.default_layer().name
    onnx_target = target if isinstance(target, OnnxTarget) else None
    key = (id(m), name, None if onnx_target is None else onnx_target.signature)
    if key not in _SESSIONS or _SESSIONS[key][0] is not m:
        proto = m.proto_with_output()
        seed = m.output_name
        if onnx_target is not None:        # score nodes after the output, seeded with ones
            proto = onnx_target.attach(proto, m.output_name)
            seed = SCORE_OUTPUT
        built = build_hvp_model(proto, name, seed=seed)
        sess = ort.InferenceSession(built.SerializeToString(), sess_options=m._options(),
                                    providers=m.providers)
        _SESSIONS[key] = (m, sess)
    sess = _SESSIONS[key][1]
    fw = m.run(x, [m.output_name, name], checked=True)
    out, a_native = fw[m.output_name], fw[name]
    feeds = {m.input_name: x}
    classes = None
    if onnx_target is not None:
        feeds[WEIGHT_INPUT] = onnx_target.weights(out.shape, out.dtype)
        s = np.ones((len(x), 1), dtype=out.dtype)
    elif seed_weights is None:
        classes = resolve_targets(target, out).classes
        if classes.shape[1] != 1:
            raise InvalidArgumentError("target", target, "one class per sample")
        s = np.zeros(out.shape, dtype=out.dtype)
        s.reshape(len(s), -1)[np.arange(len(s)), classes[:, 0]] = 1
        classes = classes[:, 0]
    else:
        s = np.asarray(seed_weights, dtype=out.dtype).reshape(out.shape)
    v = a_native if direction is None else np.asarray(direction, dtype=a_native.dtype)
    if v.shape != a_native.shape:
        raise InvalidArgumentError("direction", v.shape, f"an array of shape {a_native.shape}")
    g1, h = hvp_output_names(name)
    feeds.update({CLASS_SEED_INPUT: s, SEED_INPUT: v})
    gv, hv = sess.run([g1, h], feeds)
    cf = m.to_channels_first
    return HvpResult(out, classes, cf(a_native), cf(gv), cf(hv))
