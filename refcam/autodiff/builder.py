r"""Build a backward (vector-Jacobian product) graph for an ONNX model, in standard ONNX ops.

:func:`build_vjp_model` returns a new ``onnx.ModelProto`` that plain onnxruntime runs: it computes
the forward outputs, the requested activations :math:`A` and the gradients
:math:`\partial (\sum s \odot y) / \partial A` for a seed :math:`s` fed as an extra graph input
(one row per sample; a one-hot row of class :math:`c` gives :math:`\partial y^c/\partial A`).  One
built model serves every target.
"""

from __future__ import annotations

import json
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, shape_inference

from .._validate import choice
from ..errors import InvalidArgumentError, LayerNotFoundError, ModelError, UnsupportedOpError
from ..onnx._weights import as_inputs
from .expand import expand_functions
from .graph import GraphBuilder, TensorInfo, node_inputs
from .rules import NO_GRADIENT_OPS, RULE_SETS, RULES, NeedsOpset, NeedsRuntimeShapes, RuleContext

__all__ = ["build_vjp_model", "grad_name", "SEED_INPUT", "model_opset"]

#: name of the seed input of a built gradient model
SEED_INPUT = "refcam_seed"
_GRAD_PREFIX = "refcam_grad/"
_CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}


def grad_name(wrt: str) -> str:
    """Name of the gradient output for tensor ``wrt`` in a model built by :func:`build_vjp_model`.

    Examples
    --------
    >>> grad_name("layer4/relu")
    'refcam_grad/layer4/relu'
    """
    return _GRAD_PREFIX + wrt


def model_opset(model: onnx.ModelProto) -> int:
    """The ai.onnx opset version a model imports.

    Examples
    --------
    >>> from onnx import helper, TensorProto
    >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    >>> model_opset(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    13
    """
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise ModelError("the model imports no ai.onnx opset")


def ir_for(opset: int, current: int) -> int:
    """IR version for a model rewritten at ``opset``: ``max(IR that onnx requires for opset,
    min(current, 10))``."""
    need = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    return max(need, min(current, 10))


def build_vjp_model(model: onnx.ModelProto, wrt: Sequence[str] | str, seed: str | None = None,
                    rules: str = "plain", *, seed_mode: str = "input", check: bool = True,
                    runtime_shapes: Mapping[str, tuple] | Callable[[], Mapping[str, tuple]] | None = None,
                    weights: Mapping[str, np.ndarray] | None = None,
                    ) -> onnx.ModelProto:
    r"""Append the reverse-mode sweep of ``model`` to its forward graph.

    The returned model has one extra input ``SEED_INPUT`` (``"refcam_seed"``) of the shape and
    dtype of output ``seed`` holding :math:`s`, and outputs

    * every forward output of ``model``;
    * every ``wrt`` tensor that is not a graph input, under its own name;
    * for each ``wrt`` tensor :math:`A`, the gradient
      :math:`\nabla_A \langle s, y\rangle = \sum_{o} s_o\,\partial y_o/\partial A` under
      ``grad_name(A)`` (same shape and dtype as :math:`A`).  With :math:`s` the one-hot row of class
      :math:`c` per sample this is :math:`\partial y^c/\partial A^k_{ij}` of Grad-CAM (Selvaraju et
      al. 2017, Eq. 1).

    Parameters
    ----------
    model : onnx.ModelProto with ai.onnx opset 7 up to the newest the installed onnx defines
        (``onnx.defs.onnx_opset_version()``), and no control flow on the differentiated path.
    wrt : tensor name(s) to differentiate with respect to (graph inputs or intermediates).
    seed : name of the output that receives the seed (default: the first graph output).
    rules : ``"plain"`` | ``"guided"`` | ``"deconvnet"`` (see :mod:`refcam.autodiff.rules`).
    seed_mode : ``"input"`` (default): :math:`s` is the graph input ``refcam_seed``; ``"top1"``:
        :math:`s` is computed in the graph as the one-hot row of ``ArgMax(y, axis=1)`` (first maximum,
        as ``numpy.argmax``), so the top-1 class gradient needs a single run and no extra input.
    check : run ``onnx.checker`` on the result.
    runtime_shapes : tensor name → ``(shape, onnx element type)`` seen in a run of the model (see
        :meth:`refcam.onnx.Model.runtime_shapes`), or a function returning that mapping, called
        only if a rule needs a rank that static shape inference left unknown (so the probe run
        is paid only by graphs that need it).  Only ranks and element types are taken from it:
        sizes are read in the gradient graph at run time (``Shape``), so the built model serves
        every input, whatever the batch size.
    weights : values of the initializers ``model`` keeps outside itself (a skeleton of
        :mod:`refcam.onnx._weights`: ``data_location`` EXTERNAL, the arrays given here).  The
        returned model is then a skeleton too (its session takes the same weights); rules see the
        arrays as constants, without a copy.  Names of the weights whose *values* a rule read are
        recorded in ``metadata_props`` ``refcam.weights_read`` (JSON list; usually empty: the graph
        depends on the weights' shapes only).

    Returns
    -------
    onnx.ModelProto — IR version at most 10 so onnxruntime ≥ 1.17 loads it.  Its
    ``metadata_props`` record ``refcam.seed_input``, ``refcam.gradients`` (JSON map wrt → output)
    and, if the opset had to be raised, ``refcam.opset_raised``.

    Notes
    -----
    Only float tensors that lie on a path from a ``wrt`` tensor to ``seed`` are swept; contributions
    of a tensor used by several nodes are summed; broadcast operands get their gradient reduced over
    the broadcast axes.  A MaxPool with overlapping windows needs ``ScatterElements`` with
    ``reduction="add"`` (opset 16): an older model is converted to opset 16 with
    ``onnx.version_converter`` first, with a ``UserWarning``.

    Raises
    ------
    LayerNotFoundError if a ``wrt`` or ``seed`` name is not in the model; UnsupportedOpError naming
    the op, the node and the opset when an op on the path has no rule; ModelError when a rule
    needs a fact neither shape inference nor ``runtime_shapes`` gives (``NeedsRuntimeShapes``, a
    ModelError, when a rank is unknown and no ``runtime_shapes`` was passed).

    Examples
    --------
    >>> import numpy as np, onnx
    >>> from onnx import helper, TensorProto
    >>> g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"])], "sq",
    ...     [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 3])],
    ...     [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 3])])
    >>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    >>> vjp = build_vjp_model(m, wrt="x")
    >>> [o.name for o in vjp.graph.output]
    ['y', 'refcam_grad/x']
    >>> import onnxruntime as ort
    >>> sess = ort.InferenceSession(vjp.SerializeToString(), providers=["CPUExecutionProvider"])
    >>> sess.run(["refcam_grad/x"], {"x": np.array([[1., 2., 3.]]), "refcam_seed": np.ones((1, 3))})[0]
    array([[2., 4., 6.]])
    """
    rules = choice(rules, "rules", RULE_SETS)
    seed_mode = choice(seed_mode, "seed_mode", ("input", "top1"))
    wrt_list = [wrt] if isinstance(wrt, str) else list(wrt)
    if not wrt_list:
        raise InvalidArgumentError("wrt", wrt, "at least one tensor name")
    try:
        return _build(model, wrt_list, seed, rules, check, seed_mode, runtime_shapes, weights)
    except NeedsOpset as need:
        from onnx import version_converter

        old = model_opset(model)
        warnings.warn(f"refcam.autodiff: {need.reason}; the gradient model is converted from opset "
                      f"{old} to opset {need.opset}", UserWarning, stacklevel=2)
        try:
            conv = version_converter.convert_version(model, need.opset)
        except Exception as exc:  # pragma: no cover - converter failures are model specific
            raise UnsupportedOpError(
                f"{need.reason} (model opset {old}) and onnx.version_converter could not convert "
                f"the model: {exc}; use finite differences (refcam.autodiff.fd)") from exc
        out = _build(conv, wrt_list, seed, rules, check, seed_mode, runtime_shapes, weights)
        out.metadata_props.append(onnx.StringStringEntryProto(
            key="refcam.opset_raised", value=f"{old}->{need.opset}: {need.reason}"))
        return out


def _build(model: onnx.ModelProto, wrt: list[str], seed: str | None, rules: str,
           check: bool, seed_mode: str = "input", runtime_shapes=None,
           weights: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        foreign = next((n for n in model.graph.node if n.domain not in ("", "ai.onnx")), None)
        if foreign is not None:
            ver = next((o.version for o in model.opset_import if o.domain == foreign.domain), "?")
            raise UnsupportedOpError(
                f"op {foreign.domain}.{foreign.op_type} (node {foreign.name or '?'!r}, opset "
                f"{foreign.domain} {ver}) has no backward rule; use finite differences (refcam.autodiff.fd)")
    opset = model_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if not 7 <= opset <= newest:
        raise ModelError(f"model opset {opset} is outside the supported range 7–{newest}")
    model = expand_functions(model, RULES, wrt)  # function ops without a rule: differentiate their body
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # pragma: no cover - fall back to the model's own value_info
        inferred = model
    g = inferred.graph
    info = TensorInfo(inferred, weights)
    if weights:  # which weights' values the rules read (a cached graph depends on those values)
        info.const = _ReadLog(info.const, {t.name for t in g.initializer
                                           if t.data_location == onnx.TensorProto.EXTERNAL})
    complete = _runtime_completer(info, runtime_shapes)
    produced = {o for n in g.node for o in n.output if o}
    known = produced | {i.name for i in g.input} | {i.name for i in g.initializer}
    for w in wrt:
        if w not in known:
            raise LayerNotFoundError(f"wrt: tensor {w!r} is not in the model")
        if not info.is_float(w):
            raise InvalidArgumentError("wrt", w, "the name of a floating-point tensor")
    out_names = [o.name for o in g.output]
    if seed is None:
        seed = out_names[0]
    if seed not in known:
        raise LayerNotFoundError(f"seed: tensor {seed!r} is not in the model")
    if not info.is_float(seed):
        raise InvalidArgumentError("seed", seed, "the name of a floating-point output")

    nodes = list(g.node)
    # forward reach from wrt (float tensors only; an element type shape inference missed is read
    # from a run, never guessed: a float tensor dropped here would get a silent zero gradient)
    fwd = set(wrt)
    for n in nodes:
        if any(i in fwd for i in node_inputs(n)):
            for o in n.output:
                if o and not info.elem.get(o) and complete is not None:
                    complete()
                if o and not info.elem.get(o) and n.op_type not in NO_GRADIENT_OPS:
                    raise NeedsRuntimeShapes(
                        f"node {n.name or '?'} ({n.op_type}): the element type of tensor {o!r} is "
                        "unknown after shape inference; pass runtime_shapes (refcam.autodiff."
                        "gradients does) so it is read from a run of the model")
                if o and info.is_float(o):
                    fwd.add(o)
    # backward reach from the seed
    bwd = {seed}
    for n in reversed(nodes):
        if any(o in bwd for o in n.output):
            bwd.update(node_inputs(n))
    live = fwd & bwd

    b = GraphBuilder(opset, taken=known | {SEED_INPUT} | {grad_name(w) for w in wrt})
    grads: dict[str, list[str]] = {seed: [SEED_INPUT]}

    def total(name: str) -> str | None:
        parts = grads.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            grads[name] = [b.add_all(parts)]
        return grads[name][0]

    for node in reversed(nodes):
        if not any(o in live for o in node.output):
            continue
        needs = [bool(i) and i in live for i in node.input]
        if not any(needs) and not any(i in live for i in node_inputs(node)):  # subgraph captures count
            continue
        out_grads = [total(o) if o in live else None for o in node.output]
        if all(x is None for x in out_grads):
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type in _CONTROL_FLOW or node.op_type not in RULES:
            raise UnsupportedOpError(
                f"op {node.domain + '.' if node.domain else ''}{node.op_type} (node "
                f"{node.name or '?'!r}, opset {opset}) has no backward rule; use finite differences "
                "(refcam.autodiff.fd) or register a rule with refcam.autodiff.rules.rule")
        ctx = RuleContext(node, out_grads, needs, b, info, rules, complete)
        res = list(RULES[node.op_type](ctx))
        for inp, need, gi in zip(node.input, needs, res):
            if need and gi is not None:
                grads.setdefault(inp, []).append(gi)

    new = onnx.ModelProto()
    new.CopyFrom(model)
    ng = new.graph
    seed_vi = None
    for vi in list(g.output) + list(g.value_info):
        if vi.name == seed:
            seed_vi = vi
            break
    seed_in = onnx.ValueInfoProto()
    if seed_vi is not None and seed_vi.type.tensor_type.HasField("shape"):
        # rank and dtype of the seeded tensor; every axis symbolic (shape inference and
        # onnxruntime can disagree on sizes, e.g. MaxPool ceil_mode windows starting in the padding)
        rank = len(seed_vi.type.tensor_type.shape.dim)
        seed_in = helper.make_tensor_value_info(SEED_INPUT, seed_vi.type.tensor_type.elem_type,
                                                [f"refcam_seed_d{i}" for i in range(rank)])
    else:
        seed_in = helper.make_tensor_value_info(SEED_INPUT, info.elem[seed], None)
    if seed_mode == "input":
        ng.input.append(seed_in)
    else:  # one-hot of the first arg-max along axis 1, computed in the graph
        r = info.rank(seed)
        if r is None or r < 2:
            raise ModelError(f"seed_mode='top1' needs the seeded tensor {seed!r} to have a class axis 1 "
                             f"(shape (N, C, ...)), shape inference gave {info.shape.get(seed)}")
        am = b.op("ArgMax", [seed], axis=1, keepdims=1)
        n_cls = b.squeeze(b.op("Slice", [b.shape(seed), b.ints([1]), b.ints([2])]), [0])
        cls = b.op("Range", [b.const(np.int64(0)), n_cls, b.const(np.int64(1))])
        cls = b.op("Reshape", [cls, b.ints([1, -1] + [1] * (r - 2))])
        b.nodes.append(helper.make_node("Cast", [b.op("Equal", [am, cls])], [SEED_INPUT], to=info.elem[seed]))
    graph_inputs = {i.name for i in ng.input}
    mapping = {}
    tail = []
    for w in wrt:
        gname = grad_name(w)
        gt = total(w)
        if gt is None:  # not on a path to the seed: the gradient is exactly zero
            gt = b.zeros_like(w, info.elem[w])
        tail.append(helper.make_node("Identity", [gt], [gname]))
        ng.output.append(_value_info(gname, w, info))
        if w not in graph_inputs and w not in out_names:
            ng.output.append(_value_info(w, w, info))
        mapping[w] = gname
    ng.node.extend(b.nodes)
    ng.node.extend(tail)
    ng.initializer.extend(b.initializers)
    new.ir_version = ir_for(opset, model.ir_version)
    new.metadata_props.append(onnx.StringStringEntryProto(key="refcam.seed_input", value=SEED_INPUT))
    new.metadata_props.append(onnx.StringStringEntryProto(key="refcam.seed_output", value=seed))
    new.metadata_props.append(onnx.StringStringEntryProto(key="refcam.gradients", value=json.dumps(mapping)))
    new.metadata_props.append(onnx.StringStringEntryProto(key="refcam.rules", value=rules))
    if weights:
        new.metadata_props.append(onnx.StringStringEntryProto(
            key="refcam.weights_read", value=json.dumps(sorted(info.const.read))))
    _toposort(ng)
    if check:
        try:
            # in-memory weights as typed inputs: the checker would look for a file of that location
            onnx.checker.check_model(as_inputs(new) if weights else new)
        except onnx.checker.ValidationError as exc:
            untyped = any(not o.type.tensor_type.HasField("shape") for o in ng.output)
            if untyped and ("Field 'shape'" in str(exc) or "Field 'type'" in str(exc)):
                return new  # outputs of unknown rank (foreign graphs): the checker wants a shape
            raise ModelError(f"the gradient model failed onnx.checker: {exc}") from exc
    return new


class _ReadLog(dict):
    """The constants of :class:`TensorInfo`, noting which of ``watched`` had their value read."""

    def __init__(self, data: dict, watched: set) -> None:
        super().__init__(data)
        self.watched = watched
        self.read: set = set()

    def __getitem__(self, key):
        if key in self.watched:
            self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self.watched and key in self:
            self.read.add(key)
        return super().get(key, default)


def _runtime_completer(info: TensorInfo, source) -> Callable[[], None] | None:
    """A function completing ``info`` from ``source`` (mapping or lazy probe) at most once, or None."""
    if source is None:
        return None
    done: list[bool] = []

    def complete() -> None:
        if not done:
            done.append(True)
            info.add_runtime(dict(source() if callable(source) else source))

    return complete


def _value_info(name: str, like: str, info: TensorInfo) -> onnx.ValueInfoProto:
    shp = info.shape.get(like)
    if shp is None:  # unknown rank: a name-only value info (onnxruntime infers the rest)
        return onnx.ValueInfoProto(name=name)
    return helper.make_tensor_value_info(name, info.elem[like], [None] * len(shp))


def _toposort(g: onnx.GraphProto) -> None:
    """Order nodes topologically (rules may emit nodes whose outputs later nodes consume)."""
    avail = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending = list(g.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        progressed = False
        for n in pending:
            if all(i in avail for i in n.input):
                ordered.append(n)
                avail.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            missing = {i for n in rest for i in n.input if i not in avail}
            raise ModelError(f"internal: gradient graph has unresolved tensors {sorted(missing)[:5]}")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
