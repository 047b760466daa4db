"""Attention probabilities of a graph: which tensors are the ``softmax(QKᵀ/√d)`` of each attention
layer, checked to be per-sample ``(N, H, T, T)``, and their values on a batch.

Found by pattern (:func:`refcam.onnx.layers.attention_softmaxes`): a Softmax whose output is
multiplied (MatMul/Einsum) with another activation — the attention-times-values product — possibly
through Dropout/Cast/Identity.  Both torch exporters write torchvision's and timm's attention this
way.  The ONNX ``Attention`` op (opset 23) computes its probabilities internally; its optional
``qk_matmul_output`` output with ``qk_matmul_output_mode=3`` exposes them, which
:func:`expose_attention_probabilities` adds to a copy of the graph.

Windowed attention (Swin: the batch axis merged with the windows, ``(N·n_w, H, w², w²)``) has no
token-to-token matrix over the whole image and is refused, as is any tensor whose batch axis is
not axis 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..errors import ModelError
from .layers import attention_softmaxes
from .model import Model

__all__ = ["AttentionProbe", "attention_probes", "attention_probabilities", "expose_attention_probabilities"]


@dataclass(frozen=True)
class AttentionProbe:
    """One attention layer's probability tensor.

    Attributes
    ----------
    name : tensor name of the probabilities ``(N, H, T, T)``.
    node : name of the producing node (Softmax or Attention).
    module_path : source-framework module (``encoder.layers.encoder_layer_3.self_attention``) or ``None``.
    index : position of the node in graph order.
    shape : ``(N, H, T, T)`` as analysed (``"N"`` for the batch axis).
    single_head : the tensor is ``(N, T, T)`` (one head, no head axis); arrays read through
        :meth:`heads` get ``H = 1``.
    """

    name: str
    node: str
    module_path: str | None
    index: int
    shape: tuple
    single_head: bool = False

    def heads(self, a: np.ndarray, lead: int = 0) -> np.ndarray:
        """``a`` with the head axis (inserted at ``1 + lead`` for a single-head tensor)."""
        return np.expand_dims(a, 1 + lead) if self.single_head else a


def expose_attention_probabilities(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose opset-23 ``Attention`` nodes also output their softmax
    probabilities (``qk_matmul_output_mode=3``, output 4 named ``<node output>/probabilities``).
    Graphs without such nodes are returned unchanged (no copy)."""
    if not any(n.op_type == "Attention" for n in proto.graph.node):
        return proto
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    for n in p.graph.node:
        if n.op_type != "Attention":
            continue
        while len(n.output) < 4:
            n.output.append("")
        if not n.output[3]:
            n.output[3] = n.output[0] + "/probabilities"
        for a in list(n.attribute):
            if a.name == "qk_matmul_output_mode":
                n.attribute.remove(a)
        n.attribute.append(helper.make_attribute("qk_matmul_output_mode", 3))
    return p


def attention_probes(model: Model) -> list[AttentionProbe]:
    """Every attention layer's probability tensor, in graph order (see module docstring).

    Raises :class:`~refcam.errors.ModelError` when the graph has no attention, or when an attention's
    probabilities are not per-sample ``(N, H, T, T)`` (windowed or sequence-first attention).
    """
    graph = model.proto.graph
    idx = attention_softmaxes(graph)
    if not idx:
        raise ModelError(
            "model: no attention found (a Softmax multiplied with the values, or an ONNX Attention "
            "node); attention rollout and the Chefer relevance need a transformer"
        )
    model._graph_layouts()
    shapes = model._layout_shapes
    out = []
    for i in idx:
        node = graph.node[i]
        if node.op_type == "Attention":
            mode = next((a.i for a in node.attribute if a.name == "qk_matmul_output_mode"), 0)
            if len(node.output) < 4 or not node.output[3] or mode != 3:
                raise ModelError(
                    f"model: node {node.name or node.output[0]!r} is an ONNX Attention op whose "
                    "probabilities are internal; load expose_attention_probabilities(proto) instead"
                )
            name = node.output[3]
        else:
            name = node.output[0]
        s = shapes.get(name)
        li = next((x for x in model._layers if x.name == name), None)
        path = li.module_path if li is not None else None
        if s is not None and len(s) == 3:  # one head without a head axis: (N, T, T)
            s = (s[0], 1, s[1], s[2])
            single = True
        else:
            single = False
        if s is None or len(s) != 4 or s[0] != "N" or not isinstance(s[2], int) or s[2] != s[3]:
            raise ModelError(
                f"model: attention probabilities {name!r}"
                + (f" (module {path})" if path else "")
                + f" have shape {s}, expected per-sample (N, H, T, T) or (N, T, T): windowed "
                "attention (batch merged with windows, as in Swin) has no token-to-token matrix "
                "over the image"
            )
        out.append(AttentionProbe(name, node.name, path, i, s, single))
    t = {p.shape[2] for p in out}
    if len(t) != 1:
        raise ModelError(f"model: attention layers see different token counts {sorted(t)}; "
                         "rollout multiplies them and needs one token set")
    return out


def attention_probabilities(model: Model, inputs: np.ndarray, probes=None, **kw) -> list[np.ndarray]:
    """The probabilities of every probe on ``inputs``: ``L`` arrays ``(N, H, T, T)``."""
    probes = attention_probes(model) if probes is None else probes
    names = [p.name for p in probes]
    res = model.run(inputs, names, **kw)
    return [p.heads(np.asarray(res[p.name])) for p in probes]
