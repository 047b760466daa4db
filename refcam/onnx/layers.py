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

import onnx
from onnx import TensorProto

from ..errors import LayerNotFoundError

__all__ = [
    "FLOAT_TYPES",
    "LayerInfo",
    "default_layer",
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
    index : position of the producing node in the (topologically sorted) graph.
    """

    name: str
    op_type: str
    node_name: str
    shape: tuple | None
    elem_type: int
    module_path: str | None
    index: int

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_spatial(self) -> bool:
        """Rank 4 or 5: batch, channels and 2 or 3 spatial axes (in either layout)."""
        return self.rank in (4, 5)


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


def _spatial_size(info: LayerInfo, channels_last: bool) -> int | None:
    """Product of the known spatial axes (None if any is unknown/symbolic)."""
    assert info.shape is not None
    sp = info.shape[1:-1] if channels_last else info.shape[2:]
    if all(isinstance(s, int) for s in sp):
        p = 1
        for s in sp:
            p *= s
        return p
    return None


def default_layer(
    layers: Sequence[LayerInfo],
    graph: onnx.GraphProto,
    *,
    channels_last: bool = False,
    exclude: Iterable[str] = (),
) -> LayerInfo | None:
    """The last spatial activation before global pooling.

    Rule: among rank-4/5 tensors whose spatial extent is not 1 (so squeeze-excite gates and pooled
    ``(N, K, 1, 1)`` tensors are skipped), take the input of the last global-pooling node
    (GlobalAveragePool/GlobalMaxPool, or ReduceMean/ReduceMax over all spatial axes); without
    one, the last such tensor in graph order.  Tensors in ``exclude`` (the graph outputs and the
    class-score tensor: a segmenter's per-pixel logits are not a layer to explain) are skipped.
    ``None`` if the graph has no spatial tensor.
    """
    skip = set(exclude)
    layers = [li for li in layers if li.name not in skip]
    by_name = {li.name: li for li in layers}

    def ok(li: LayerInfo | None) -> bool:
        if li is None or not li.is_spatial:
            return False
        size = _spatial_size(li, channels_last)
        return size is None or size > 1

    pooled: LayerInfo | None = None
    for node in graph.node:
        if not node.input:
            continue
        src = by_name.get(node.input[0])
        if not ok(src):
            continue
        is_pool = node.op_type in _GLOBAL_POOL_OPS
        if node.op_type in ("ReduceMean", "ReduceMax"):
            axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
            if axes is None and len(node.input) > 1:
                axes = _const_ints(graph, node.input[1])
            if axes is not None:
                r = src.rank or 4
                axs = {a % r for a in axes}
                want = set(range(1, r - 1)) if channels_last else set(range(2, r))
                is_pool = want <= axs and 0 not in axs
        if is_pool:
            pooled = src
    # the pooling of the *last* spatial activation matters: squeeze-excite pools inside the net
    # too, so prefer the last pooled input, then check nothing spatial follows it
    spatial = [li for li in layers if ok(li)]
    if not spatial:
        return None
    if pooled is not None and pooled.index >= spatial[-1].index:
        return pooled
    return spatial[-1]  # no global pooling, or only inner (squeeze-excite) pooling


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


def resolve_layer(name: str, layers: Sequence[LayerInfo], *, argument: str = "layer") -> LayerInfo:
    """Find a layer by tensor name, producing-node name or module path.

    A module path that covers several tensors (``layer4`` covers every node of the block) resolves
    to the last of them in graph order, i.e. the module's output.  Unknown names raise
    :class:`~refcam.errors.LayerNotFoundError` listing the closest names.
    """
    if not isinstance(name, str):
        raise LayerNotFoundError(
            f"{argument}: got {name!r}, expected a tensor name or module path (str)"
        )
    for li in layers:
        if li.name == name:
            return li
    for li in layers:
        if li.node_name and li.node_name == name:
            return li
    matches = [
        li
        for li in layers
        if li.module_path is not None
        and (li.module_path == name or li.module_path.startswith(name + "."))
    ]
    if matches:
        return max(matches, key=lambda li: li.index)
    candidates = _names(layers)
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.4)
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
