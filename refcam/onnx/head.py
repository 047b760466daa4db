"""Cutting a graph at a tensor: the "head" (activation → outputs) as its own runnable model.

:func:`onnx.utils.Extractor` needs shape information for the cut tensors and runs the checker,
which graphs from foreign exporters (no ``value_info``, Constant-node weights) often fail.  This
module walks the graph backwards from the requested outputs itself, stopping at the cut tensors,
and types the new graph inputs from shape inference (unknown shapes are allowed).
"""

from __future__ import annotations

from typing import Sequence

import onnx
from onnx import TensorProto, helper

from ..errors import ModelError

__all__ = ["cut_head", "subgraph_inputs"]


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


def cut_head(model: onnx.ModelProto, at: str | Sequence[str], outputs: Sequence[str], *,
             value_info: dict[str, onnx.ValueInfoProto] | None = None,
             ir_version: int | None = None) -> onnx.ModelProto:
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
            if batch_symbolic and tt.HasField("shape") and len(tt.shape.dim) and not (
                    tt.shape.dim[0].HasField("dim_value") and tt.shape.dim[0].dim_value == 1):
                tt.shape.dim[0].Clear()
                tt.shape.dim[0].dim_param = "N"
            return out
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)

    graph = helper.make_graph(
        nodes, (g.name or "graph") + "_head",
        [vi(n, True) for n in cut], [vi(n, True) for n in outputs],
        initializer=[t for t in g.initializer if t.name in needed_inits],
    )
    head = helper.make_model(graph, opset_imports=list(model.opset_import),
                             ir_version=ir_version or model.ir_version)
    head.functions.extend(model.functions)
    return head
