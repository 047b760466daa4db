"""Re-running a model with one intermediate tensor replaced: the masked re-run of Ablation-CAM.

Ablation-CAM (Desai & Ramaswamy 2020) needs the class score :math:`y^c_k` of the network with
channel :math:`k` of the layer ablated.  When everything after the layer depends on the input only
through the layer, the graph is cut there and the head is run on the ablated activations
(:meth:`refcam.onnx.Model.head`).  Inside a transformer block the layer (``ln_1``, ``norm1``) feeds
only one branch: the residual stream bypasses it, so no head exists.  pytorch-grad-cam then swaps
the layer module for one returning the ablated tensor and re-runs the whole network on the input
(``ablation_cam.py:104-132``); :func:`override_proto` does the same to the graph: every consumer of
the layer tensor reads a new graph input instead, and the rest is recomputed from the model input.

The layer tensor is still computed (it may be another output), only no longer read; nothing else in
the graph changes, so the re-run equals the original model whenever the fed tensor equals the
layer's own value (checked by :class:`Override` on the unablated activations).
"""

from __future__ import annotations

import weakref

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelError
from .head import subgraph_inputs

__all__ = ["OVERRIDE_SUFFIX", "Override", "override_proto"]

#: suffix of the graph input that replaces the overridden tensor
OVERRIDE_SUFFIX = "__refcam_override"


def override_proto(
    model: onnx.ModelProto,
    tensor: str,
    outputs: list[str],
    *,
    value_info: dict[str, onnx.ValueInfoProto] | None = None,
) -> onnx.ModelProto:
    """A copy of ``model`` whose nodes read ``tensor`` from a new graph input
    ``tensor + OVERRIDE_SUFFIX`` (batch axis symbolic), with ``outputs`` as its graph outputs.

    Raises
    ------
    ModelError
        if ``tensor`` is not produced by a node, no node reads it, or an If/Loop/Scan body reads
        it from the outer scope (not rewritten).
    """
    p = onnx.ModelProto()
    p.CopyFrom(model)
    g = p.graph
    if not any(tensor in n.output for n in g.node):
        raise ModelError(f"override: tensor {tensor!r} is not produced by a node of the graph")
    new = tensor + OVERRIDE_SUFFIX
    readers = 0
    for n in g.node:
        if tensor in subgraph_inputs(n):
            raise ModelError(
                f"override: a subgraph of node {n.name or n.op_type!r} reads {tensor!r}; the masked "
                "re-run rewrites the main graph only"
            )
        for i, name in enumerate(n.input):
            if name == tensor:
                n.input[i] = new
                readers += 1
    if not readers:
        raise ModelError(f"override: no node reads {tensor!r}")
    src = (value_info or {}).get(tensor)
    if src is not None and src.type.HasField("tensor_type") and src.type.tensor_type.elem_type:
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(src)
        vi.name = new
        dims = vi.type.tensor_type.shape.dim if vi.type.tensor_type.HasField("shape") else []
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "N"
    else:
        vi = helper.make_tensor_value_info(new, TensorProto.FLOAT, None)
    g.input.append(vi)
    have = {o.name: o for o in g.output}
    del g.output[:]
    for name in outputs:
        o = have.get(name)
        if o is None:
            v = (value_info or {}).get(name)
            o = v if v is not None else onnx.ValueInfoProto(name=name)
        g.output.append(o)
    return p


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class Override:
    """The model of :class:`refcam.onnx.Model` ``model`` with layer tensor ``layer`` fed from outside.

    :meth:`run` takes the model input and the replacement tensor (native layout, batch on axis 0,
    one row per input row) and returns the output tensor :attr:`Model.output_name`.  Sessions are
    cached per (model, layer).
    """

    def __init__(self, model, layer: str) -> None:
        self.model = model
        self.layer = layer
        vi = model.value_info.get(layer)
        et = vi.type.tensor_type.elem_type if vi is not None and vi.type.HasField("tensor_type") else 0
        self.dtype = np.dtype(helper.tensor_dtype_to_np_dtype(et)) if et else np.dtype(np.float32)
        # the skeleton (weights as stubs) is rewired, and Model.new_session hands the weights to
        # onnxruntime from Model.weights: no full proto with the weights is rebuilt or serialised
        proto = override_proto(model.skeleton, layer, [model.output_name], value_info=model.value_info)
        try:
            self.session = model.new_session(proto)
        except Exception as exc:
            raise ModelError(f"model: onnxruntime could not load the graph with {layer!r} fed from "
                             f"outside: {exc}") from exc

    @classmethod
    def of(cls, model, layer: str) -> "Override":
        per = _CACHE.setdefault(model, {})
        if layer not in per:
            per[layer] = cls(model, layer)
        return per[layer]

    def run(self, x: np.ndarray, replacement: np.ndarray, *, sample: int = 0) -> np.ndarray:
        """Output tensor for the single input row ``x`` (``(1, …)``, native layout; explained
        sample number ``sample``, which selects the other inputs' row) run once per row of
        ``replacement`` (the layer tensor, native layout, batch on axis 0).  A fixed-batch model is
        fed padded chunks."""
        m = self.model
        if len(x) != 1:
            raise ModelError(f"override: one input row expected, got {len(x)}")
        rep = np.ascontiguousarray(replacement, dtype=self.dtype)
        step = m.fixed_batch or len(rep)
        outs = []
        for s in range(0, len(rep), step):
            rb = rep[s:s + step]
            n = len(rb)
            if m.fixed_batch is not None and n < step:
                rb = np.concatenate([rb, np.repeat(rb[-1:], step - n, 0)])
            feed = {m.input_name: np.repeat(np.ascontiguousarray(x, dtype=m.input_dtype), len(rb), 0),
                    self.layer + OVERRIDE_SUFFIX: rb}
            for nm, v in m.other_inputs.items():
                row = v[:1] if v.shape[0] == 1 else v[sample:sample + 1]
                feed[nm] = np.repeat(row, len(rb), 0)
            outs.append(self._run(feed)[:n])
        return np.concatenate(outs)

    def _run(self, feed: dict) -> np.ndarray:
        try:
            return self.session.run([self.model.output_name], feed)[0]
        except Exception as exc:
            raise ModelError(f"model: onnxruntime failed on the re-run with {self.layer!r} fed from "
                             f"outside: {exc}") from exc
