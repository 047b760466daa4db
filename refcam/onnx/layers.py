"""Layer discovery: every candidate tensor of a graph, its shape and its source-framework module path.

Module paths come from two places:

* torch's dynamo exporter stores ``pkg.torch.onnx.name_scopes`` in each node's ``metadata_props``:
  the ``repr`` of a list of cumulative module paths, first entry ``''`` (root), last entry the
  node's own FX name, e.g. ``['', 'layer4', 'layer4.1', 'layer4.1.relu', 'relu_16']``: the module
  path is the last cumulative path, ``layer4.1.relu``;
* torch's legacy exporter names tensors ``/layer4/layer4.1/relu_1/Relu_output_0``: the scope
  components are joined into ``layer4.1.relu_1`` (a component that already starts with the path
  so far, like ``layer4.1`` after ``layer4``, replaces it).

>>> legacy_module_path("/layer4/layer4.1/relu_1/Relu_output_0")
'layer4.1.relu_1'
>>> legacy_module_path("/Flatten_output_0") is None
True
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import AmbiguousLayerError, LayerNotFoundError
from .layout import Layout

__all__ = [
    "FLOAT_TYPES",
    "LayerInfo",
    "attention_softmaxes",
    "default_layer",
    "graph_layouts",
    "input_layout",
    "map_positions",
    "discover_layers",
    "dynamo_module_path",
    "legacy_module_path",
    "resolve_layer",
]

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
_GLOBAL_POOL_OPS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}


@dataclass(frozen=True)
class LayerInfo:
    """One candidate tensor of the graph.

    Attributes
    ----------
    name : tensor name (what onnxruntime returns).
    op_type : op of the producing node.
    node_name : name of the producing node ('' if unnamed).
    shape : inferred shape in the model's native layout; ints for fixed axes, strings for symbolic
        axes, ``None`` for unknown ones; ``None`` when even the rank is unknown.
    elem_type : ONNX element type (``onnx.TensorProto.FLOAT`` ...), 0 if unknown.
    module_path : source-framework module path (``layer4.1.relu``) or ``None``.
    index : position of the producing node in the (topologically sorted) graph (``-1`` for a
        graph input).
    layout : the :class:`~refcam.onnx.layout.Layout` of the tensor (batch, channel and spatial or
        token axes), from the graph (:meth:`refcam.onnx.Model.layers` fills it in) or given;
        ``None`` when not determined.
    """

    name: str
    op_type: str
    node_name: str
    shape: tuple | None
    elem_type: int
    module_path: str | None
    index: int
    layout: Layout | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_spatial(self) -> bool:
        """A map ``(N, K, *S)`` once read through its layout (spatial or token axes).

        Without a determined layout: rank 4 or 5 (the pre-layout rule, for bare
        :func:`discover_layers` results)."""
        if self.layout is not None:
            return self.layout.is_map
        return self.rank in (4, 5)

    @property
    def map_shape(self) -> tuple | None:
        """``(N, K, *S)`` of the tensor read through its layout (``None`` if not a map)."""
        return None if self.layout is None else self.layout.map_shape(self.shape)


def legacy_module_path(tensor_name: str) -> str | None:
    """Module path encoded in a torch legacy-exporter tensor or node name, or ``None``."""
    if not tensor_name.startswith("/"):
        return None
    parts = [p for p in tensor_name.split("/") if p]
    scopes = parts[:-1]  # the last component is 'Op_output_0' or the node's op name
    if not scopes:
        return None
    path = scopes[0]
    for comp in scopes[1:]:
        path = comp if comp.startswith(path + ".") else path + "." + comp
    return path


def dynamo_module_path(node: onnx.NodeProto) -> str | None:
    """Module path from ``pkg.torch.onnx.name_scopes`` node metadata, or ``None``."""
    for entry in node.metadata_props:
        if entry.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(entry.value)
            except (SyntaxError, ValueError):
                return None
            if isinstance(scopes, (list, tuple)):
                mods = [s for s in scopes[:-1] if isinstance(s, str) and s]
                return mods[-1] if mods else None
    return None


def _shape_of(vi: onnx.ValueInfoProto | None) -> tuple[tuple | None, int]:
    if vi is None or not vi.type.HasField("tensor_type"):
        return None, 0
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None, tt.elem_type
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims), tt.elem_type


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Names that do not depend on any graph input: initializers, Constant outputs, and outputs of
    nodes whose inputs are all constant (e.g. a Reshape of a weight)."""
    const = {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        if node.op_type == "Constant" or (node.input and all(i in const for i in node.input)):
            const.update(node.output)
    const.discard("")
    return const


def discover_layers(model: onnx.ModelProto, inferred: onnx.ModelProto) -> list[LayerInfo]:
    """Every non-constant floating (or untyped) node output, in graph order.

    ``inferred`` is ``model`` after ``onnx.shape_inference.infer_shapes``.
    """
    g = inferred.graph
    infos = {vi.name: vi for vi in list(g.value_info) + list(g.output) + list(g.input)}
    const = constant_tensors(model.graph)
    out: list[LayerInfo] = []
    for idx, node in enumerate(model.graph.node):
        dyn = dynamo_module_path(node)
        for name in node.output:
            if not name or name in const:
                continue
            shape, et = _shape_of(infos.get(name))
            if et and et not in FLOAT_TYPES:
                continue
            path = dyn or legacy_module_path(name) or legacy_module_path(node.name)
            out.append(LayerInfo(name, node.op_type, node.name, shape, et, path, idx))
    return out


def map_positions(info: LayerInfo) -> int | None:
    """Number of spatial positions of the layer's map (``None`` if unknown or not a map)."""
    ms = info.map_shape
    if ms is None:
        return None
    p = 1
    for s in ms[2:]:
        if not isinstance(s, int):
            return None
        p *= s
    return p


_VIEW = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast"}
_LINEAR = {"MatMul", "Gemm", "FusedMatMul", "MatMulInteger"}


def _is_global_pool(node: onnx.NodeProto, src: LayerInfo, graph: onnx.GraphProto) -> bool:
    if node.op_type in _GLOBAL_POOL_OPS:
        return True
    if node.op_type not in ("ReduceMean", "ReduceMax"):
        return False
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1:
        axes = _const_ints(graph, node.input[1])
    if axes is None or src.layout is None:
        return False
    r = src.layout.rank
    return set(src.layout.spatial_axes) <= {a % r for a in axes}


def _is_token_readout(node: onnx.NodeProto, src: LayerInfo, graph: onnx.GraphProto) -> bool:
    """A Gather of single tokens (the class token) from a token map."""
    if node.op_type != "Gather" or src.layout is None or not src.layout.is_tokens:
        return False
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % src.layout.rank
    return axis == src.layout.spatial_axes[0]


def attention_softmaxes(graph: onnx.GraphProto) -> list[int]:
    """Indices of the nodes that compute attention probabilities: ONNX ``Attention`` (opset 23),
    and Softmax nodes whose output is multiplied (MatMul/Einsum, possibly through Dropout/Cast/
    Identity) with another activation — the ``softmax(QKᵀ/√d) V`` pattern."""
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    const = constant_tensors(graph)
    out = []
    for i, n in enumerate(graph.node):
        if n.op_type == "Attention":
            out.append(i)
            continue
        if n.op_type != "Softmax":
            continue
        frontier, seen = [n.output[0]], set()
        hit = False
        while frontier and not hit:
            t = frontier.pop()
            for j in consumers.get(t, []):
                c = graph.node[j]
                if c.op_type in ("MatMul", "Einsum") and all(x not in const for x in c.input):
                    hit = True
                    break
                if c.op_type in ("Dropout", "Cast", "Identity") and c.output[0] not in seen:
                    seen.add(c.output[0])
                    frontier.append(c.output[0])
        if hit:
            out.append(i)
    return out


def default_layer(
    layers: Sequence[LayerInfo],
    graph: onnx.GraphProto,
    *,
    exclude: Iterable[str] = (),
    min_positions: int = 4,
) -> LayerInfo | None:
    """The default layer to explain: the last spatial or token map that all of the class score
    still flows through position by position.

    Rule (every candidate has a clear map layout — :mod:`refcam.onnx.layout` — and at least
    ``min_positions`` positions, so pooled ``(N, K, 1, 1)`` tensors and squeeze-excite gates are
    never chosen):

    1. the *readout* is the last node that removes the spatial or token axes of a map: a global
       pooling (GlobalAveragePool/GlobalMaxPool, ReduceMean/ReduceMax over every spatial or token
       axis) or a Gather of single tokens (class-token readout);
    2. global pooling: its input, seen through view-only ops (Transpose, Reshape, …: the tensor
       they view is the layer);
    3. class-token readout: after the last attention only the read-out token reaches the head, so
       every patch token of the final block's output has a zero gradient (an all-zero Grad-CAM).
       The layer is the input of the last attention before the readout: the last token map that
       is an ancestor of that attention's probabilities, is not a view, not a projection (MatMul/
       Gemm or its bias Add) and has the width of the token stream (pytorch-grad-cam's documented
       ``blocks[-1].norm1``);
    4. no readout: the last map in graph order.

    Tensors in ``exclude`` (graph outputs, the class-score tensor) are skipped.  ``None`` if the
    graph has no such map.
    """
    skip = set(exclude)
    by_name = {li.name: li for li in layers}
    producer = {}
    for i, n in enumerate(graph.node):
        for o in n.output:
            producer[o] = i

    def ok(li: LayerInfo | None) -> bool:
        if li is None or li.name in skip or li.index < 0 or not li.is_spatial:
            return False
        p = map_positions(li) if li.layout is not None else _rank_positions(li)
        return p is None or p >= min_positions

    cands = [li for li in layers if ok(li)]
    if not cands:
        return None
    readout = None
    for i, node in enumerate(graph.node):
        if not node.input:
            continue
        src = by_name.get(node.input[0])
        if not ok(src):
            continue
        if _is_global_pool(node, src, graph) if src.layout is not None else \
                node.op_type in _GLOBAL_POOL_OPS:
            readout = ("pool", i, src)
        elif _is_token_readout(node, src, graph):
            readout = ("token", i, src)
    if readout is None or readout[2].index < cands[-1].index:
        # no readout, or only inner (squeeze-excite) pooling followed by more maps
        return _through_views(cands[-1], by_name, graph, producer, ok)
    kind, at, src = readout
    if kind == "pool":
        return _through_views(src, by_name, graph, producer, ok)
    att = [i for i in attention_softmaxes(graph) if i < at]
    if not att:
        return _through_views(src, by_name, graph, producer, ok)
    anc = _ancestors(graph, graph.node[att[-1]].input, producer)
    width = src.map_shape[1] if src.map_shape is not None else None
    best = None
    for li in cands:
        if li.name not in anc or not li.layout.is_tokens:
            continue
        if li.op_type in _VIEW or li.op_type in _LINEAR:
            continue
        if li.op_type == "Add" and any(
            producer.get(x) is not None and graph.node[producer[x]].op_type in _LINEAR
            for x in graph.node[producer[li.name]].input
        ):
            continue
        if isinstance(width, int) and li.map_shape is not None and li.map_shape[1] != width:
            continue
        if best is None or li.index > best.index:
            best = li
    return best if best is not None else _through_views(src, by_name, graph, producer, ok)


def _rank_positions(li: LayerInfo) -> int | None:
    if li.shape is None or li.rank not in (4, 5):
        return None
    p = 1
    for s in li.shape[2:]:
        if not isinstance(s, int):
            return None
        p *= s
    return p


def _ancestors(graph: onnx.GraphProto, names: Iterable[str], producer: dict) -> set:
    seen: set = set()
    stack = [n for n in names if n]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        i = producer.get(t)
        if i is not None:
            stack.extend(x for x in graph.node[i].input if x and x not in seen)
    return seen


def _through_views(li: LayerInfo, by_name: dict, graph: onnx.GraphProto, producer: dict, ok) -> LayerInfo:
    """Step back through view-only producers (Transpose, Reshape, …) to the tensor they view."""
    while li.op_type in _VIEW:
        i = producer.get(li.name)
        if i is None:
            break
        prev = by_name.get(graph.node[i].input[0]) if graph.node[i].input else None
        if not ok(prev):
            break
        li = prev
    return li


def _const_ints(graph: onnx.GraphProto, name: str) -> list[int] | None:
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return [int(v) for v in numpy_helper.to_array(t).ravel()]
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return [int(v) for v in numpy_helper.to_array(a.t).ravel()]
    return None


_PREFIXES = ("tensor:", "node:", "module:")


def resolve_layer(name: str, layers: Sequence[LayerInfo], *, argument: str = "layer") -> LayerInfo:
    """Find a layer by tensor name, producing-node name or module path.

    A module path that covers several tensors (``layer4`` covers every node of the block) resolves
    to the last of them in graph order, i.e. the module's output.  When the name means different
    tensors as a tensor name, a node name and a module path (swin_t's dynamo export has a tensor
    named ``permute`` inside module ``features.0.1``, and a module ``permute``), the name is
    refused with :class:`~refcam.errors.AmbiguousLayerError` listing each candidate; the prefixes
    ``tensor:``, ``node:`` and ``module:`` select one kind.  Unknown names raise
    :class:`~refcam.errors.LayerNotFoundError` listing the closest names.
    """
    if not isinstance(name, str):
        raise LayerNotFoundError(
            f"{argument}: got {name!r}, expected a tensor name or module path (str)"
        )
    kinds = ("tensor", "node", "module")
    want = kinds
    key = name
    for pre in _PREFIXES:
        if name.startswith(pre) and not any(li.name == name for li in layers):
            want = (pre[:-1],)
            key = name[len(pre):]
    found: dict[str, LayerInfo] = {}
    if "tensor" in want:
        li = next((li for li in layers if li.name == key), None)
        if li is not None:
            found["tensor"] = li
    if "node" in want:
        li = next((li for li in layers if li.node_name and li.node_name == key), None)
        if li is not None:
            found["node"] = li
    if "module" in want:
        matches = [
            li
            for li in layers
            if li.module_path is not None
            and (li.module_path == key or li.module_path.startswith(key + "."))
        ]
        if matches:
            found["module"] = max(matches, key=lambda li: li.index)
    distinct = {li.name for li in found.values()}
    if len(distinct) == 1:
        return next(iter(found.values()))
    if len(distinct) > 1:
        lines = "; ".join(
            f"{kind}:{key} → tensor {li.name!r} ({li.op_type}"
            + (f", shape {li.shape}" if li.shape is not None else "")
            + (f", module {li.module_path}" if li.module_path else "")
            + ")"
            for kind, li in found.items()
        )
        raise AmbiguousLayerError(
            f"{argument}: {name!r} names {len(distinct)} different tensors: {lines}. "
            f"Pass one of {', '.join(repr(f'{k}:{key}') for k in found)}"
        )
    candidates = _names(layers)
    close = difflib.get_close_matches(key, candidates, n=5, cutoff=0.4)
    hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else ""
    raise LayerNotFoundError(
        f"{argument}: got {name!r}, expected one of the model's tensor names or module paths "
        f"(see Model.layers()){hint}"
    )


def _names(layers: Iterable[LayerInfo]) -> list[str]:
    seen: dict[str, None] = {}
    for li in layers:
        seen.setdefault(li.name)
        if li.module_path:
            parts = li.module_path.split(".")
            for i in range(1, len(parts) + 1):
                seen.setdefault(".".join(parts[:i]))
    return list(seen)


# ---------------------------------------------------------------------------- shapes and layouts
def _fixed_batch_shapes(model: onnx.ModelProto, inputs: Sequence[str], batch: int) -> dict:
    p = onnx.ModelProto()
    p.CopyFrom(model)
    for vi in p.graph.input:
        if vi.name in inputs and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            if dims:
                dims[0].Clear()
                dims[0].dim_value = batch
    try:
        inf = onnx.shape_inference.infer_shapes(p, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - foreign graphs: no static shapes
        return {}
    out = {}
    for vi in list(inf.graph.value_info) + list(inf.graph.output) + list(inf.graph.input):
        shape, _ = _shape_of(vi)
        if shape is not None:
            out[vi.name] = tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
    return out


def merge_batch_shapes(a: dict, b: dict, batches: tuple[int, int]) -> dict:
    """Shapes at two batch sizes → one shape per tensor: an axis equal in both is that int, an axis
    equal to ``k·batch`` in both is ``"N"`` (``k = 1``) or ``"k*N"`` (batch merged with ``k``
    windows or heads), anything else ``None``.

    >>> merge_batch_shapes({"t": (2, 17, 6, 4)}, {"t": (3, 17, 9, 4)}, (2, 3))
    {'t': ('N', 17, '3*N', 4)}
    """
    b0, b1 = batches
    out = {}
    for name, s0 in a.items():
        s1 = b.get(name)
        if s1 is None or len(s1) != len(s0):
            out[name] = tuple(None for _ in s0) if s1 is not None else s0
            if s1 is None:
                out[name] = tuple(None for _ in s0)
            continue
        dims = []
        for d0, d1 in zip(s0, s1):
            if d0 is None or d1 is None:
                dims.append(None)
            elif d0 == d1:
                dims.append(d0)
            elif d0 % b0 == 0 and d1 % b1 == 0 and d0 // b0 == d1 // b1:
                k = d0 // b0
                dims.append("N" if k == 1 else f"{k}*N")
            else:
                dims.append(None)
        out[name] = tuple(dims)
    return out


def constant_ints(graph: onnx.GraphProto, limit: int = 64) -> dict:
    """Small integer constants (initializers and Constant nodes of at most ``limit`` entries):
    Reshape shapes, axes, Slice bounds, Gather indices."""
    from onnx import numpy_helper

    out = {}
    for t in graph.initializer:
        if t.data_type in (TensorProto.INT64, TensorProto.INT32) and _numel(t.dims) <= limit:
            out[t.name] = numpy_helper.to_array(t)
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type in (TensorProto.INT64, TensorProto.INT32) \
                        and _numel(a.t.dims) <= limit:
                    out[n.output[0]] = numpy_helper.to_array(a.t)
                elif a.name in ("value_int", "value_ints"):
                    out[n.output[0]] = np.asarray(onnx.helper.get_attribute_value(a))
    return out


def _numel(dims) -> int:
    p = 1
    for d in dims:
        p *= int(d)
    return p


def input_layout(rank: int, channels_last: bool) -> Layout:
    """The layout of a graph input of ``rank`` in the model's input layout: ``(N, F)``,
    ``(N, C, *S)`` or ``(N, *S, C)``."""
    if rank < 2:
        return Layout(("N",) * rank, reason="an input of rank < 2 has no channel axis")
    sp = tuple(f"S{i}" for i in range(rank - 2))
    return Layout(("N", *sp, "C") if channels_last else ("N", "C", *sp))


def graph_layouts(
    model: onnx.ModelProto,
    inputs: dict,
    *,
    probe=None,
    batches: tuple[int, int] = (2, 3),
) -> tuple[dict, dict]:
    """The :class:`Layout` of every tensor of ``model`` (see :mod:`refcam.onnx.layout`).

    Parameters
    ----------
    model : the ModelProto.
    inputs : graph input name → its :class:`Layout`.
    probe : optional ``probe(names, batch) -> {name: shape}`` running the model on a dummy batch
        for tensors whose static shape is incomplete (Reshapes with computed shapes in legacy
        exports); called only for tensors whose layout hinges on their shape.
    batches : the two batch sizes of the shape analysis (axes scaling with them are batch axes).

    Returns
    -------
    (layouts, shapes) : tensor name → :class:`Layout`, tensor name → shape (ints, ``"N"``,
    ``"k*N"``, ``None``).
    """
    from .layout import infer_layouts

    names = list(inputs)
    shapes = merge_batch_shapes(
        _fixed_batch_shapes(model, names, batches[0]),
        _fixed_batch_shapes(model, names, batches[1]),
        batches,
    )
    consts = constant_ints(model.graph)
    const = constant_tensors(model.graph)
    layouts = infer_layouts(model.graph, inputs, shapes, consts, const)
    if probe is None:
        return _from_consumers(model.graph, layouts, shapes, consts), shapes
    for _ in range(4):  # each probe can clear later Reshapes; a few rounds suffice
        want = set()
        for node in model.graph.node:
            if node.op_type not in ("Reshape", "Flatten", "Concat", "Expand", "Squeeze", "Unsqueeze"):
                continue
            out = node.output[0]
            lay = layouts.get(out)
            if lay is not None and lay.kind != "unclear" and "T" not in lay.axes:
                continue
            if lay is not None and lay.is_tokens and lay.prefix is not None and lay.suffix is not None:
                continue
            srcs = [i for i in node.input if i and layouts.get(i) is not None
                    and layouts[i].kind != "unclear"]
            if not srcs:
                continue
            for t in [*node.input[:1], out] if node.op_type != "Concat" else [*node.input, out]:
                s = shapes.get(t)
                if t and t not in const and (s is None or None in s):
                    want.add(t)
        if not want:
            break
        try:
            got = [probe(sorted(want), b) for b in batches]
        except Exception:  # noqa: BLE001 - a probe failure leaves the layouts as inferred
            break
        new = merge_batch_shapes(got[0], got[1], batches)
        if all(shapes.get(k) == v for k, v in new.items()):
            break
        shapes.update(new)
        layouts = infer_layouts(model.graph, inputs, shapes, consts, const)
    return _from_consumers(model.graph, layouts, shapes, consts), shapes


_NCHW_CONSUMERS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "BatchNormalization",
                   "InstanceNormalization", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}


def _from_consumers(graph: onnx.GraphProto, layouts: dict, shapes: dict, consts: dict) -> dict:
    """Layouts the forward pass left unclear, read from how the tensor is consumed.

    A tensor whose axis 0 is exactly the batch (it scales with the batch size, see
    :func:`merge_batch_shapes`) and that feeds an op whose spec fixes ``(N, C, *S)`` (Conv,
    pooling, BatchNorm, global pooling), or a ReduceMean/ReduceMax over every axis but the batch
    and one other (a global pooling: the other axis holds the channels), has that layout.  This
    recovers the output of blocks that mix space in windows and put it back (MaxViT's partition
    attention) before a global pooling.
    """
    out = dict(layouts)
    for node in graph.node:
        if not node.input:
            continue
        t = node.input[0]
        lay = out.get(t)
        shp = shapes.get(t)
        if lay is None or lay.kind != "unclear" or shp is None or len(shp) < 3 or shp[0] != "N":
            continue
        if any(d == "N" or (isinstance(d, str) and d.endswith("*N")) for d in shp[1:]):
            continue
        r = len(shp)
        if node.op_type in _NCHW_CONSUMERS:
            out[t] = Layout(("N", "C", *(f"S{i}" for i in range(r - 2))))
        elif node.op_type in ("ReduceMean", "ReduceMax") and r >= 4:
            axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
            if axes is None and len(node.input) > 1:
                axes = consts.get(node.input[1])
            if axes is None:
                continue
            red = sorted({int(a) % r for a in np.ravel(axes)})
            rest = [i for i in range(1, r) if i not in red]
            if 0 in red or len(rest) != 1 or len(red) < 2:
                continue
            tags = ["N"] + [None] * (r - 1)
            tags[rest[0]] = "C"
            for k, i in enumerate(red):
                tags[i] = f"S{k}"
            out[t] = Layout(tuple(tags))
    return out
