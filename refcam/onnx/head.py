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
from ._nodes import node_attr

__all__ = ["LinearHead", "constant_node_value", "constant_value", "cut_head", "linear_head", "subgraph_inputs"]


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
#: ops that keep each sample's entries in order (flatten patterns); Dropout is the identity at inference
_SHAPE_OPS = {"Flatten", "Reshape", "Squeeze", "Identity", "Dropout"}
#: consumers that read only the shape of a tensor (``x.view(x.size(0), -1)``: Shape → Gather/Slice →
#: Concat → Reshape), not its values
_SHAPE_READERS = {"Shape", "Size"}


class LinearHead:
    """The linear classifier head found after a layer (see :func:`linear_head` for the patterns).

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


def constant_node_value(node: onnx.NodeProto):
    """NumPy value of a ``Constant`` node (the one decoder of the adapter and the gradient builder).

    ``value`` (a tensor), ``value_float`` / ``value_floats`` (float32) and ``value_int`` /
    ``value_ints`` (int64) as the ONNX spec types them; ``None`` for other nodes and for
    string or sparse constants.

    Examples
    --------
    >>> constant_node_value(helper.make_node("Constant", [], ["c"], value_ints=[1, 2]))
    array([1, 2])
    >>> constant_node_value(helper.make_node("Relu", ["x"], ["y"])) is None
    True
    """
    import numpy as np
    from onnx import numpy_helper

    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.asarray(a.f, np.float32)
        if a.name == "value_floats":
            return np.asarray(list(a.floats), np.float32)
        if a.name == "value_int":
            return np.asarray(a.i, np.int64)
        if a.name == "value_ints":
            return np.asarray(list(a.ints), np.int64)
    return None


def constant_value(graph: onnx.GraphProto, name: str):
    """NumPy value of an initializer or Constant-node output, else ``None``."""
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            return constant_node_value(n)
    return None


def linear_head(
    graph: onnx.GraphProto, layer: str, output: str, *, rank: int, channels_last: bool = False,
    channels: int | None = None,
) -> LinearHead:
    r"""Find the CAM head of Zhou et al. (2016, Eq. 1: :math:`y^c = \sum_k w^c_k \frac{1}{Z}
    \sum_{ij} A^k_{ij} + b^c`) after tensor ``layer`` and read :math:`w^c` from the graph.

    Accepted patterns (``shape*`` = any chain of Flatten, Reshape, Squeeze, Identity, Dropout):

    * ``A → GAP → shape* → Gemm | MatMul (+ Add) | 1×1 Conv → shape* → y``; GAP is
      GlobalAveragePool or ReduceMean over every spatial axis.  A Reshape's target shape may be
      computed in the graph (``x.view(x.size(0), -1)``: the pooled tensor also feeds Shape/Size
      nodes, which read only its shape).  A 1×1 Conv classifier (torchcam's ``conv1x1`` test)
      gives :math:`W` = its ``(C, K, 1, …)`` kernel reshaped to ``(C, K)``.
    * ``A → 1×1 Conv → GAP → shape* → y`` (a linear map commutes with the mean:
      :math:`\mathrm{GAP}(W A + b) = W\,\mathrm{GAP}(A) + b`).
    * ``A → GAP → shape* → y``: no linear layer after the pooling (SqueezeNet: the class maps are
      the final 1×1 Conv + ReLU output; CAM at that tensor): :math:`w^c = e_c`, the identity
      (needs ``channels``, the number :math:`K` of channels of ``A``).

    The reshapes are not checked to flatten ``(N, K, 1, …)`` to ``(N, K)`` when their shape is
    computed at run time: a mismatch shows as a weight with the wrong number of columns, and the
    caller (:func:`refcam.explain`'s CAM provider) checks :math:`y = W\,\mathrm{GAP}(A) + b`
    numerically.

    Parameters
    ----------
    graph : the model graph.
    layer : name of the spatial activation ``A``.
    output : the tensor holding the class scores ``y^c``.
    rank : rank of ``layer`` (4 or 5).
    channels_last : the layout of ``layer``.
    channels : :math:`K`, the number of channels of ``layer`` if known (identity heads need it).

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
        """The single consumer of ``name`` that reads its values (Shape/Size readers ignored)."""
        c = [n for n in consumers.get(name, []) if n.op_type not in _SHAPE_READERS]
        return c[0] if len(c) == 1 else None

    def shapes(t: str, nodes: list[str]) -> tuple[str, onnx.NodeProto | None]:
        node = only(t)
        while t != output and node is not None and node.op_type in _SHAPE_OPS and node.input[0] == t:
            nodes.append(node.name or node.output[0])
            t = node.output[0]
            node = only(t)
        return t, node

    def fail(why: str) -> ModelError:
        return ModelError(
            f"CAM needs a global average pooling → linear (Gemm/MatMul/1×1 Conv) head after layer "
            f"{layer!r} producing {output!r}; {why}. Use a method that does not need class weights "
            "(Score-CAM, Grad-CAM, ...)"
        )

    def is_pool(n: onnx.NodeProto) -> bool:
        if n.op_type == "GlobalAveragePool":
            return not channels_last
        if n.op_type == "ReduceMean":
            axes = node_attr(n, "axes", None)
            if axes is None and len(n.input) > 1:
                v = constant_value(graph, n.input[1])
                axes = None if v is None else [int(a) for a in np.ravel(v)]
            return axes is not None and {a % rank for a in axes} == spatial
        return False

    def conv1x1(n: onnx.NodeProto) -> tuple | str:
        """(W (C, K), b or None) of a 1×1, stride-1, unpadded, ungrouped Conv, or why not."""
        if channels_last:
            return "a 1×1 Conv on a channels-last layer"
        w = constant_value(graph, n.input[1])
        if w is None or np.ndim(w) < 3 or any(int(d) != 1 for d in np.shape(w)[2:]):
            return f"Conv {n.name!r} is not a 1×1 convolution with a constant kernel"
        if node_attr(n, "group", 1) != 1 or any(int(p) != 0 for p in node_attr(n, "pads", [])) or \
                any(int(v) != 1 for v in node_attr(n, "strides", [])) or \
                node_attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            return f"Conv {n.name!r} has groups, strides or padding"
        bias = None
        if len(n.input) > 2 and n.input[2]:
            bias = constant_value(graph, n.input[2])
            if bias is None:
                return f"the bias {n.input[2]!r} of Conv {n.name!r} is not a constant"
            bias = np.asarray(bias, np.float64).ravel()
        wm = np.asarray(w, np.float64)
        return wm.reshape(wm.shape[0], wm.shape[1]), bias

    # candidates: (pooling node, 1×1 Conv before it or None)
    cands: list[tuple[onnx.NodeProto, tuple | None, list[str]]] = []
    why_none = ""
    for n in consumers.get(layer, []):
        if is_pool(n):
            cands.append((n, None, []))
        elif n.op_type == "Conv" and n.input[0] == layer:
            conv = conv1x1(n)
            nxt = only(n.output[0])
            if isinstance(conv, str):
                why_none = conv
            elif nxt is not None and is_pool(nxt):
                cands.append((nxt, conv, [n.name or n.output[0]]))
    if not cands:
        ops = sorted({n.op_type for n in consumers.get(layer, [])})
        extra = f" (nor by a 1×1 Conv before pooling: {why_none})" if why_none else ""
        raise fail(f"it is consumed by {ops or 'nothing'}, not by global average pooling{extra}")
    last_err = ""
    for pool, pre, nodes in cands:
        nodes = nodes + [pool.name or pool.output[0]]
        t, node = shapes(pool.output[0], nodes)
        bias = None
        if t == output:  # pooling (after an optional 1×1 Conv) gives the class scores
            if pre is not None:
                w, bias = pre
            elif channels is None:
                last_err = "the pooled tensor is the output (identity weights) but the channel count is unknown"
                continue
            else:
                w = np.eye(int(channels))
            return LinearHead(w, None if bias is None else np.array(bias), nodes)
        if pre is not None:
            last_err = f"the 1×1 Conv before the pooling is not the last linear map ({t!r} is not {output!r})"
            continue
        if node is None:
            n_readers = len([c for c in consumers.get(t, []) if c.op_type not in _SHAPE_READERS])
            last_err = (f"the pooled tensor {t!r} feeds {n_readers} nodes besides Shape/Size readers, "
                        "expected exactly one")
            continue
        if node.op_type == "Gemm":
            if node.input[0] != t or node_attr(node, "transA", 0):
                last_err = f"Gemm {node.name!r} does not take the pooled features as untransposed A"
                continue
            b = constant_value(graph, node.input[1])
            if b is None:
                last_err = f"the weight {node.input[1]!r} of Gemm {node.name!r} is not a constant"
                continue
            w = np.asarray(b, np.float64)
            w = w if node_attr(node, "transB", 0) else w.T  # -> (C, K)
            w = node_attr(node, "alpha", 1.0) * w
            if len(node.input) > 2 and node.input[2]:
                c = constant_value(graph, node.input[2])
                if c is None:
                    last_err = f"the bias {node.input[2]!r} of Gemm {node.name!r} is not a constant"
                    continue
                bias = node_attr(node, "beta", 1.0) * np.broadcast_to(
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
        elif node.op_type == "Conv" and node.input[0] == t:
            conv = conv1x1(node)
            if isinstance(conv, str):
                last_err = conv
                continue
            w, bias = conv
            out = node.output[0]
            nodes.append(node.name or out)
        else:
            last_err = f"the pooled features feed {node.op_type} {node.name!r}, not Gemm/MatMul/1×1 Conv"
            continue
        out, _ = shapes(out, nodes)
        if out != output:
            last_err = f"the linear layer produces {out!r}, not the class scores {output!r}"
            continue
        return LinearHead(w, None if bias is None else np.array(bias), nodes)
    raise fail(last_err)
