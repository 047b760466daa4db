"""Cutting a graph at a tensor: the "head" (activation → outputs) as its own runnable model.

:func:`onnx.utils.Extractor` needs shape information for the cut tensors and runs the checker,
which graphs from foreign exporters (no ``value_info``, Constant-node weights) often fail.  This
module walks the graph backwards from the requested outputs itself, stopping at the cut tensors,
and types the new graph inputs from shape inference (unknown shapes are allowed).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

from ..errors import ModelError

__all__ = ["LinearHead", "constant_value", "cut_head", "linear_head", "subgraph_inputs"]


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names read by the subgraphs (If/Loop/Scan bodies) of ``node``."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                for name in list(n.input) + sorted(subgraph_inputs(n)):
                    if name and name not in local:
                        names.add(name)
    return names


def cut_head(
    model: onnx.ModelProto,
    at: str | Sequence[str],
    outputs: Sequence[str],
    *,
    value_info: dict[str, onnx.ValueInfoProto] | None = None,
    ir_version: int | None = None,
) -> onnx.ModelProto:
    """Return the sub-model computing ``outputs`` from the tensor(s) ``at``.

    Parameters
    ----------
    model : the full model (weights loaded).
    at : name(s) of the cut tensor(s); they become the head's graph inputs.
    outputs : names of the head's outputs (typically the logits tensor).
    value_info : inferred ``ValueInfoProto`` per tensor name (from shape inference) used to type
        the head's inputs and outputs; missing entries get float tensors of unknown shape.
    ir_version : IR version of the returned model (default: the model's).

    Raises
    ------
    ModelError
        if an output depends on a graph input through a path that bypasses every cut tensor (for
        example a skip connection around the cut), or a name is not produced by the graph.
    """
    cut = [at] if isinstance(at, str) else list(at)
    g = model.graph
    value_info = value_info or {}
    producer = {o: n for n in g.node for o in n.output if o}
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input} - set(inits)
    for name in cut + list(outputs):
        if name not in producer and name not in graph_inputs:
            raise ModelError(f"cut_head: tensor {name!r} is not produced by the graph")
    needed_nodes: set[int] = set()
    needed_inits: set[str] = set()
    index = {id(n): i for i, n in enumerate(g.node)}
    stack = list(outputs)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in cut:
            continue
        if name in inits:
            needed_inits.add(name)
            continue
        if name in graph_inputs:
            raise ModelError(
                f"cannot cut the graph at {cut}: output(s) {list(outputs)} depend on graph input "
                f"{name!r} through a path that bypasses the cut (a skip connection around it?)"
            )
        node = producer[name]
        i = index[id(node)]
        if i in needed_nodes:
            continue
        needed_nodes.add(i)
        stack.extend(node.input)
        stack.extend(subgraph_inputs(node))
    nodes = [g.node[i] for i in sorted(needed_nodes)]

    def vi(name: str, batch_symbolic: bool) -> onnx.ValueInfoProto:
        src = value_info.get(name)
        if src is not None and src.type.HasField("tensor_type"):
            out = onnx.ValueInfoProto()
            out.CopyFrom(src)
            out.name = name
            tt = out.type.tensor_type
            if not tt.elem_type:
                tt.elem_type = TensorProto.FLOAT
            if (
                batch_symbolic
                and tt.HasField("shape")
                and len(tt.shape.dim)
                and not (tt.shape.dim[0].HasField("dim_value") and tt.shape.dim[0].dim_value == 1)
            ):
                tt.shape.dim[0].Clear()
                tt.shape.dim[0].dim_param = "N"
            return out
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)

    graph = helper.make_graph(
        nodes,
        (g.name or "graph") + "_head",
        [vi(n, True) for n in cut],
        [vi(n, True) for n in outputs],
        initializer=[t for t in g.initializer if t.name in needed_inits],
    )
    head = helper.make_model(
        graph, opset_imports=list(model.opset_import), ir_version=ir_version or model.ir_version
    )
    head.functions.extend(model.functions)
    return head


# ---------------------------------------------------------------------- GAP -> linear classifier
_SHAPE_OPS = {"Flatten", "Reshape", "Squeeze", "Identity"}


class LinearHead:
    """The ``GAP → (Flatten|Reshape|Squeeze)* → Gemm | MatMul(+Add)`` head found after a layer.

    Attributes
    ----------
    weight : ``(C, K)`` float64, row ``w^c`` per class (``alpha`` of Gemm folded in, ``transB``
        resolved), read from the graph's initializers or Constant nodes.
    bias : ``(C,)`` float64 or ``None`` (``beta`` folded in).
    nodes : names (or first outputs) of the nodes of the head, in order.
    """

    def __init__(self, weight, bias, nodes: list[str]) -> None:
        self.weight = weight
        self.bias = bias
        self.nodes = nodes

    def __repr__(self) -> str:
        return f"LinearHead(weight {self.weight.shape}, bias {'None' if self.bias is None else self.bias.shape}, nodes={self.nodes})"


def constant_value(graph: onnx.GraphProto, name: str):
    """NumPy value of an initializer or Constant-node output, else ``None``."""
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    import numpy as np

                    return np.array(a.f if a.name == "value_float" else a.i)
                if a.name in ("value_floats", "value_ints"):
                    import numpy as np

                    return np.array(list(a.floats) if a.name == "value_floats" else list(a.ints))
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def linear_head(
    graph: onnx.GraphProto, layer: str, output: str, *, rank: int, channels_last: bool = False
) -> LinearHead:
    """Find the CAM head of Zhou et al. (2016) after tensor ``layer``: global average pooling
    (GlobalAveragePool, or ReduceMean over every spatial axis), shape-only ops, then a linear layer
    (Gemm, or MatMul with an optional Add) producing ``output``.

    Parameters
    ----------
    graph : the model graph.
    layer : name of the spatial activation ``A``.
    output : the tensor holding the class scores ``y^c``.
    rank : rank of ``layer`` (4 or 5).
    channels_last : the layout of ``layer``.

    Raises
    ------
    ModelError
        naming the first node that does not fit, when no such head connects ``layer`` to ``output``.
    """
    import numpy as np

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    spatial = set(range(1, rank - 1)) if channels_last else set(range(2, rank))

    def only(name: str) -> onnx.NodeProto | None:
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 else None

    def fail(why: str) -> ModelError:
        return ModelError(
            f"CAM needs a GlobalAveragePool → linear (Gemm/MatMul) head after layer {layer!r} producing "
            f"{output!r}; {why}. Use a method that does not need class weights (Score-CAM, Grad-CAM, ...)"
        )

    pools = []
    for n in consumers.get(layer, []):
        if n.op_type == "GlobalAveragePool":
            pools.append(n)
        elif n.op_type == "ReduceMean":
            axes = _attr(n, "axes", None)
            if axes is None and len(n.input) > 1:
                v = constant_value(graph, n.input[1])
                axes = None if v is None else [int(a) for a in np.ravel(v)]
            if axes is not None and {a % rank for a in axes} == spatial:
                pools.append(n)
    if not pools:
        ops = sorted({n.op_type for n in consumers.get(layer, [])})
        raise fail(f"it is consumed by {ops or 'nothing'}, not by global average pooling")
    last_err = ""
    for pool in pools:
        nodes = [pool.name or pool.output[0]]
        t = pool.output[0]
        node = only(t)
        while node is not None and node.op_type in _SHAPE_OPS and node.input[0] == t:
            nodes.append(node.name or node.output[0])
            t = node.output[0]
            node = only(t)
        if node is None:
            last_err = f"the pooled tensor {t!r} does not feed exactly one node"
            continue
        bias = None
        if node.op_type == "Gemm":
            if node.input[0] != t or _attr(node, "transA", 0):
                last_err = f"Gemm {node.name!r} does not take the pooled features as untransposed A"
                continue
            b = constant_value(graph, node.input[1])
            if b is None:
                last_err = f"the weight {node.input[1]!r} of Gemm {node.name!r} is not a constant"
                continue
            w = np.asarray(b, np.float64)
            w = w if _attr(node, "transB", 0) else w.T  # -> (C, K)
            w = _attr(node, "alpha", 1.0) * w
            if len(node.input) > 2 and node.input[2]:
                c = constant_value(graph, node.input[2])
                if c is None:
                    last_err = f"the bias {node.input[2]!r} of Gemm {node.name!r} is not a constant"
                    continue
                bias = _attr(node, "beta", 1.0) * np.broadcast_to(
                    np.asarray(c, np.float64).ravel(), (w.shape[0],)
                )
            out = node.output[0]
            nodes.append(node.name or out)
        elif node.op_type == "MatMul":
            if node.input[0] != t:
                last_err = (
                    f"MatMul {node.name!r} does not take the pooled features as its left operand"
                )
                continue
            b = constant_value(graph, node.input[1])
            if b is None or np.ndim(b) != 2:
                last_err = (
                    f"the weight {node.input[1]!r} of MatMul {node.name!r} is not a constant matrix"
                )
                continue
            w = np.asarray(b, np.float64).T
            out = node.output[0]
            nodes.append(node.name or out)
            add = only(out)
            if add is not None and add.op_type == "Add" and out != output:
                other = add.input[1] if add.input[0] == out else add.input[0]
                c = constant_value(graph, other)
                if c is not None:
                    bias = np.broadcast_to(np.asarray(c, np.float64).ravel(), (w.shape[0],))
                    out = add.output[0]
                    nodes.append(add.name or out)
        else:
            last_err = f"the pooled features feed {node.op_type} {node.name!r}, not Gemm/MatMul"
            continue
        if out != output:
            last_err = f"the linear layer produces {out!r}, not the class scores {output!r}"
            continue
        return LinearHead(w, None if bias is None else np.array(bias), nodes)
    raise fail(last_err)
