"""The ONNX adapter floor of refcam: models from any framework through onnx + onnxruntime.

It produces arrays (outputs, activations, head models, targets) and does no CAM math itself.

* :class:`Model` — load (path / bytes / ModelProto, external data), :meth:`Model.layers`,
  :meth:`Model.default_layer`, :meth:`Model.run` / :meth:`Model.forward` (any tensors, batched,
  cached sessions), :meth:`Model.head` (graph cut at a tensor).
* :func:`resolve_targets`, :class:`TopK`, :class:`Targets` — what ``y^c`` a map explains;
  :class:`OnnxTarget` scores in ONNX (:func:`softmax_probability`, :func:`log_softmax`,
  :func:`logit`, :func:`mask_sum`, :func:`embedding_similarity`) that gradient methods differentiate.
* :func:`cut_head` — the head cut on a bare ModelProto.
* :mod:`refcam.onnx.toy_models` — the zoo of small test models.
"""

from __future__ import annotations

from .head import LinearHead, cut_head, linear_head
from .layers import LayerInfo
from .model import Forward, Model, load, max_ir_version
from .onnx_targets import (
    OnnxTarget,
    embedding_similarity,
    log_softmax,
    logit,
    mask_sum,
    softmax_probability,
)
from .targets import Targets, TopK, resolve_targets

__all__ = [
    "Forward",
    "LayerInfo",
    "LinearHead",
    "Model",
    "OnnxTarget",
    "Targets",
    "TopK",
    "cut_head",
    "embedding_similarity",
    "linear_head",
    "load",
    "log_softmax",
    "logit",
    "mask_sum",
    "max_ir_version",
    "resolve_targets",
    "softmax_probability",
]
