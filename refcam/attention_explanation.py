r"""Transformer attribution end to end: attention rollout and the Chefer relevance from the graph's
own attention probabilities.

:func:`explain_attention` finds the attention layers (:mod:`refcam.onnx.attention_probe`), reads
their probabilities :math:`A^{(l)}` ``(N, H, T, T)`` with onnxruntime, for ``"chefer"`` also
:math:`\partial y^c/\partial A^{(l)}` (:func:`refcam.autodiff.gradients` w.r.t. the probability
tensors), and hands them to the math floor (:func:`refcam.math.attention_rollout`,
:func:`refcam.math.gradient_weighted_relevance`).  The map is the readout token's row over the
patch tokens (:func:`refcam.math.token_relevance_map`), on the grid the graph's token layout gives
(:mod:`refcam.onnx.layout`: prefix tokens and patch grid).

(Module ``refcam.attention_explanation``: no function is named so.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import math as M
from .errors import InvalidArgumentError, ModelError, TargetError

__all__ = ["ATTENTION_METHODS", "AttentionExplanation", "explain_attention"]

ATTENTION_METHODS = ("rollout", "chefer")


@dataclass
class AttentionExplanation:
    """What :func:`explain_attention` computed.

    Attributes
    ----------
    maps : ``(N, h, w)`` relevance of each patch for the readout token.
    relevance : ``(N, T, T)`` the full token-to-token matrix (rollout :math:`\\tilde A` or Chefer's
        :math:`R`).
    method : ``"rollout"`` or ``"chefer"``.
    grid, prefix, token : the patch grid, the number of prefix tokens, the readout token.
    targets : ``(N, 1)`` class indices (``"chefer"``) or ``None``.
    probes : the :class:`refcam.onnx.attention_probe.AttentionProbe` of each layer.
    arrays : ``attentions`` (list of ``(N, H, T, T)``) and, for ``"chefer"``, ``gradients``.
    """

    maps: np.ndarray
    relevance: np.ndarray
    method: str
    grid: tuple
    prefix: int
    token: int
    targets: np.ndarray | None
    probes: list
    arrays: dict = field(repr=False)


def _token_layout(model, t: int, first: int, layer_layout: Any):
    from .onnx.layout import parse_layout

    if layer_layout is not None:
        lay = parse_layout(layer_layout)
        if not lay.is_tokens:
            raise InvalidArgumentError("layer_layout", layer_layout, "a token layout 'NTC:P+HxW'")
        return lay
    for li in reversed(model.layers()):
        lay = li.layout
        if li.index >= first or lay is None or not lay.is_tokens or lay.kind != "tokens":
            continue
        hw = int(np.prod(lay.grid))
        pre = lay.prefix if lay.prefix is not None else (t - hw - (lay.suffix or 0))
        if pre >= 0 and pre + hw + (lay.suffix or 0) == t:
            from dataclasses import replace

            return replace(lay, prefix=pre, suffix=t - hw - pre)
    raise ModelError(
        f"model: no token layout with {t} tokens before the first attention; pass "
        "layer_layout='NTC:P+HxW' (P prefix tokens, HxW patch grid)"
    )


def explain_attention(
    model: Any,
    inputs: Any,
    method: str = "rollout",
    *,
    target: Any = None,
    head_fusion: str = "mean",
    residual: bool = True,
    token: int = 0,
    layer_layout: Any = None,
    batch_size: int | None = None,
) -> AttentionExplanation:
    r"""Attention rollout (Abnar & Zuidema 2020) or the gradient-weighted relevance of Chefer et
    al. 2021 for ``inputs`` of an ONNX transformer.

    Parameters
    ----------
    model : anything :func:`refcam.onnx.load` accepts.
    inputs : the model's input batch.
    method : ``"rollout"`` (class-agnostic) or ``"chefer"`` (class-specific: ``target``).
    target : ``"chefer"`` only: class index / per-sample list / ``None`` (top-1); one per sample.
    head_fusion, residual : ``"rollout"`` only (:func:`refcam.math.attention_rollout`).
    token : the readout token whose row is the map (0: the class token).
    layer_layout : the token layout ``"NTC:P+HxW"`` when the graph does not determine it.
    batch_size : chunking of the runs.

    Returns
    -------
    AttentionExplanation
    """
    from .onnx import load
    from .onnx.attention_probe import attention_probabilities, attention_probes

    if method not in ATTENTION_METHODS:
        raise InvalidArgumentError("method", method, " or ".join(map(repr, ATTENTION_METHODS)))
    m = load(model)
    x = m.check_inputs(inputs)
    probes = attention_probes(m)
    t = probes[0].shape[2]
    lay = _token_layout(m, t, probes[0].index, layer_layout)
    arrays: dict = {}
    targets = None
    if method == "rollout":
        if target is not None:
            raise InvalidArgumentError("target", target, "None: attention rollout is class-agnostic")
        atts = attention_probabilities(m, x, probes, batch_size=batch_size)
        rel = M.attention_rollout(atts, head_fusion=head_fusion, residual=residual)
    else:
        from .autodiff import gradients

        r = gradients(m, x, wrt=[p.name for p in probes], target=target, batch_size=batch_size)
        if r.classes is not None and r.classes.shape[1] != 1:
            raise TargetError("target: one target per sample for the Chefer relevance")
        atts = [p.heads(np.asarray(r.activations[p.name])) for p in probes]
        grads = [p.heads(np.asarray(r.gradients[p.name])[:, 0]) for p in probes]
        arrays["gradients"] = grads
        targets = r.classes
        rel = M.gradient_weighted_relevance(atts, grads)
    arrays["attentions"] = atts
    maps = M.token_relevance_map(rel, lay.grid, prefix=lay.prefix, token=token)
    return AttentionExplanation(maps, rel, method, tuple(lay.grid), int(lay.prefix), token, targets,
                                probes, arrays)
