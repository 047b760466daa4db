"""Exact gradients of ONNX models in plain onnxruntime: a backward (VJP) graph in standard ONNX ops,
finite differences as the oracle, and gradients a model already exports.

* :func:`build_vjp_model` — the backward graph builder (rule registry in :mod:`.rules`).
* :mod:`.fd` — finite-difference gradients (element-wise and channel-directional).
* :func:`gradients` — activations and gradients through the adapter's :class:`refcam.onnx.Model`,
  forward + backward in one cached onnxruntime session.
* :func:`exported_gradients` — read gradient tensors a model outputs itself.
* The gradient *methods* (Grad-CAM family, saliency, guided backprop, deconvnet, Guided Grad-CAM,
  SmoothGrad, Integrated Gradients) live in the front: :func:`refcam.explain` with the registry
  :mod:`refcam.methods` (providers in ``refcam/_gradient.py``), and
  :func:`refcam.class_model_visualization`.  This floor only computes gradients.
"""

from __future__ import annotations

from .builder import SEED_INPUT, build_vjp_model, grad_name, model_opset
from .api import GradientResult, exported_gradients, gradients
from .rules import NO_GRADIENT_OPS, RULE_SETS, RULES, RuleContext, rule, supported_ops

__all__ = ["gradients", "GradientResult", "exported_gradients", "build_vjp_model", "grad_name", "model_opset", "SEED_INPUT", "RULES", "RULE_SETS",
           "NO_GRADIENT_OPS", "RuleContext", "rule", "supported_ops"]
