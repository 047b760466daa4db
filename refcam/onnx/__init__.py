"""The ONNX adapter floor of refcam: models from any framework through onnx + onnxruntime.

It produces arrays (outputs, activations, head models, targets) and does no CAM math itself.

* :class:`Model` — load (path / bytes / ModelProto, external data), :meth:`Model.layers`,
  :meth:`Model.default_layer`, :meth:`Model.run` / :meth:`Model.forward` (any tensors, batched,
  cached sessions), :meth:`Model.head` (graph cut at a tensor).
* :func:`resolve_targets`, :class:`TopK`, :class:`Targets` — what ``y^c`` a map explains.
* :func:`cut_head` — the head cut on a bare ModelProto.
* :mod:`refcam.onnx.toy_models` — the zoo of small test models.
"""

from __future__ import annotations

from .head import LinearHead, cut_head, linear_head
from .layers import LayerInfo
from .model import Forward, Model, load, max_ir_version
from .targets import Targets, TopK, resolve_targets

__all__ = [
    "Forward",
    "LayerInfo",
    "LinearHead",
    "Model",
    "Targets",
    "TopK",
    "cut_head",
    "linear_head",
    "load",
    "max_ir_version",
    "resolve_targets",
]
