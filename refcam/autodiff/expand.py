r"""Inline ONNX *function ops* into their defining bodies, so their gradient comes from the body.

Many recent ai.onnx ops (Attention, RMSNormalization, RotaryEmbedding, GroupNormalization,
SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss, MeanVarianceNormalization, Swish, ...) are
defined in the ONNX standard by a *function body* of simpler ops (``OpSchema.function_body`` or a
context-dependent function built from the node's attributes and input types).  The body computes
the op by definition, so the chain rule through its nodes is the op's exact vector-Jacobian
product; the forward values are those of the body too (the spec's own definition, equal to the
runtime's kernel up to rounding).

:func:`expand_functions` replaces every node of such an op that has no backward rule by its body
(tensors renamed ``<op>_<n>/<name>``), repeatedly for nested function ops.  Bodies holding
subgraphs (If/Loop) are not inlined: the builder then refuses the op by name.
"""

from __future__ import annotations

from typing import Container

import onnx
from onnx import AttributeProto, FunctionProto, NodeProto, shape_inference

__all__ = ["expand_functions", "function_body"]


def _types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    try:
        inf = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # pragma: no cover - fall back to declared types
        inf = model
    g = inf.graph
    out = {vi.name: vi.type for vi in list(g.input) + list(g.value_info) + list(g.output)}
    for t in g.initializer:
        out[t.name] = onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims))
    return out


def function_body(node: NodeProto, opset: int, types: dict[str, onnx.TypeProto]) -> FunctionProto | None:
    """The function defining ``node`` at ``opset`` (None if the op has none or input types are unknown)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except Exception:
        return None
    fp = FunctionProto()
    plain = [v for v in schema.function_opset_versions if v <= opset]
    ctx_dep = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if plain and (not ctx_dep or max(plain) >= max(ctx_dep)):
        fp.ParseFromString(schema.get_function_with_opset_version(max(plain)))
        return fp
    if ctx_dep:
        full = NodeProto()
        full.CopyFrom(node)
        have = {a.name for a in node.attribute}
        for name, attr in schema.attributes.items():
            if name not in have and attr.default_value and attr.default_value.name:
                full.attribute.append(attr.default_value)
        in_types = []
        for i in node.input:
            if not i:
                in_types.append(onnx.TypeProto().SerializeToString())
            elif i in types:
                in_types.append(types[i].SerializeToString())
            else:
                return None
        try:
            fp.ParseFromString(schema.get_context_dependent_function_with_opset_version(
                max(ctx_dep), full.SerializeToString(), in_types))
        except Exception:
            return None
        return fp if len(fp.node) else None
    return None


def _inline(node: NodeProto, fp: FunctionProto, prefix: str, defaults: dict) -> list[NodeProto] | None:
    names = {}
    for k, formal in enumerate(fp.input):
        names[formal] = node.input[k] if k < len(node.input) else ""
    for k, formal in enumerate(fp.output):
        if k < len(node.output) and node.output[k]:
            names[formal] = node.output[k]
    attrs = dict(defaults)
    attrs.update({a.name: a for a in node.attribute})

    def rn(n: str) -> str:
        if n == "":
            return ""
        return names.get(n, prefix + n)

    out = []
    for inner in fp.node:
        new = NodeProto()
        new.CopyFrom(inner)
        del new.input[:]
        del new.output[:]
        del new.attribute[:]
        new.input.extend(rn(i) for i in inner.input)
        new.output.extend(rn(o) for o in inner.output)
        if new.name:
            new.name = prefix + new.name
        for a in inner.attribute:
            if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
                return None
            if a.HasField("ref_attr_name"):
                if a.ref_attr_name in attrs:
                    na = AttributeProto()
                    na.CopyFrom(attrs[a.ref_attr_name])
                    na.name = a.name
                    new.attribute.append(na)
            else:
                new.attribute.append(a)
        out.append(new)
    return out


def _reach(model: onnx.ModelProto, sources) -> set:
    """Tensor names reachable from ``sources`` (node inputs and subgraph captures)."""
    from .graph import node_inputs

    live = set(sources)
    for n in model.graph.node:
        if any(i in live for i in node_inputs(n)):
            live.update(o for o in n.output if o)
    return live


def expand_functions(model: onnx.ModelProto, keep: Container[str], wrt=None, max_rounds: int = 4) -> onnx.ModelProto:
    """A copy of ``model`` with every ai.onnx function op whose type is not in ``keep`` inlined.

    Parameters
    ----------
    model : the model (ai.onnx opset read from its imports).
    keep : op types left as they are (those with a backward rule).
    wrt : if given, only nodes downstream of these tensors are inlined (the rest of the forward
        graph is left to the runtime's kernels).
    max_rounds : nested expansion depth.

    Returns
    -------
    The model itself when nothing was inlined, otherwise an expanded copy.  A body that needs a
    newer ai.onnx opset than the model's is not inlined.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return model
    cur = model
    for rnd in range(max_rounds):
        live = _reach(cur, wrt) if wrt is not None else None

        def wanted(n: NodeProto) -> bool:
            return (n.domain in ("", "ai.onnx") and n.op_type not in keep
                    and (live is None or any(i in live for i in n.input if i)))

        cand = [n for n in cur.graph.node if wanted(n)]
        if not cand:
            break
        types = _types(cur)
        new_nodes: list[NodeProto] = []
        changed = False
        for k, n in enumerate(cur.graph.node):
            fp = None
            if wanted(n):
                fp = function_body(n, opset, types)
            body = None
            if fp is not None and any(o.domain in ("", "ai.onnx") and o.version > opset for o in fp.opset_import):
                fp = None  # the body needs a newer opset than the model's: keep the node (refused by name)
            if fp is not None:
                schema = onnx.defs.get_schema(n.op_type, opset, "")
                defaults = {name: a.default_value for name, a in schema.attributes.items()
                            if a.default_value and a.default_value.name}
                body = _inline(n, fp, f"{n.op_type}_{rnd}_{k}/", defaults)
            if body is None:
                new_nodes.append(n)
            else:
                new_nodes.extend(body)
                changed = True
        if not changed:
            break
        m = onnx.ModelProto()
        m.CopyFrom(cur)
        del m.graph.node[:]
        m.graph.node.extend(new_nodes)
        cur = m
    return cur
