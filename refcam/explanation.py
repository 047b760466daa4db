"""The one entry point: ``refcam.explain(model, inputs, method, layer=..., target=...)``.

(The module is ``refcam.explanation``: a module named ``explain`` would shadow the function
``refcam.explain`` once imported.)

It loads the model (path, bytes, ModelProto or :class:`refcam.onnx.Model`), validates the inputs,
runs the model once for the output tensor and the layer's activations, resolves the targets,
obtains every array the method needs through the registry (:mod:`refcam.methods`), and calls the
method's math-floor function.  The returned :class:`Explanation` carries the raw maps at feature
resolution and every array used, so each number can be reproduced with the math floor alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _forward, _gradient  # noqa: F401  (the providers register their needs)
from . import math as M
from .errors import InvalidArgumentError
from .methods import get_method
from .onnx import LayerInfo, Model, load, resolve_targets
from .registry import Context

__all__ = ["Explanation", "explain"]


@dataclass
class Explanation:
    """What :func:`explain` computed.

    Attributes
    ----------
    maps : ``(N, *S)`` raw maps at the layer's resolution (``(N, T, *S)`` when ``T > 1`` targets per
        sample, e.g. ``TopK(T)``), dtype of the activations.  Input-gradient methods give maps at
        the input resolution: ``(N, *S_in)`` (``saliency``) or the channels-first input gradient
        ``(N, C, *S_in)`` (``guided_backprop``, ``deconvnet``, ``guided_gradcam``, ``smoothgrad``,
        ``integrated_gradients``; ``reduce=`` on the first two applies :func:`refcam.math.saliency`).
    method : registry name of the method.
    layer : the :class:`refcam.onnx.LayerInfo` explained (``None`` for input-gradient methods).
    targets : ``(N, T)`` class indices, or ``None`` (callable targets; class-agnostic methods).
    scores : ``(N, T)`` target scores ``y^c`` of the unmodified inputs as the method scores them
        (logits, or probabilities with ``score="probability"``), or ``None``.
    outputs : the model's output tensor on the inputs.
    options : the method options used (defaults merged with the caller's).
    arrays : every array the method consumed (``activations`` channels-first, ``class_weights``,
        ``masked_scores``, ``ablated_scores``, ...), see :mod:`refcam.methods`.
    input_size : spatial size of the inputs, for :meth:`upsampled`.
    """

    maps: np.ndarray
    method: str
    layer: LayerInfo | None
    targets: np.ndarray | None
    scores: np.ndarray | None
    outputs: np.ndarray
    options: dict
    arrays: dict = field(repr=False)
    input_size: tuple

    def upsampled(self, mode: str = "linear") -> np.ndarray:
        """The maps resampled to the input size with :func:`refcam.math.upsample` (``mode`` as there)."""
        return M.upsample(self.maps, self.input_size, mode)


#: input-gradient needs a single VJP run gives (need -> rule set of refcam.autodiff.rules)
_INPUT_GRADIENT_NEEDS = {"input_gradients": "plain", "guided_input_gradients": "guided",
                         "deconvnet_input_gradients": "deconvnet"}


def _input_gradient_need(meth: Any) -> str | None:
    """The one input-gradient need of a method that needs nothing else, else ``None``."""
    needs = [n for n in meth.needs if n != "target_scores"]
    return needs[0] if len(needs) == 1 and needs[0] in _INPUT_GRADIENT_NEEDS else None


def _one_vjp_run(meth: Any, opts: dict, model: Model, layer: Any, target: Any) -> bool:
    """Whether one VJP session run can give the outputs, the layer's activations and its
    gradients: a layer-gradient method with ``gradient_source="vjp"`` (or a method needing only one
    input gradient: saliency, guided backprop, deconvnet), and a target the VJP graph
    seeds (class indices of a classifier output, ``TopK``, or an ``OnnxTarget``).  Otherwise the
    outputs come from a forward run first (callable targets, finite differences, ...)."""
    from .onnx import OnnxTarget, TopK

    if opts.get("gradient_source") != "vjp":
        return False
    if layer is None and _input_gradient_need(meth) is None:
        return False
    if layer is not None and "gradients" not in meth.needs:
        return False
    if isinstance(target, OnnxTarget):
        return True
    if callable(target) or (isinstance(target, (list, tuple)) and any(callable(t) for t in target)):
        return False
    out = model.value_info.get(model.output_name)
    shape = out.type.tensor_type.shape if out is not None and out.type.tensor_type.HasField("shape") else None
    classifier = shape is not None and len(shape.dim) == 2
    return classifier and (target is None or isinstance(target, (int, np.integer, TopK, list, tuple,
                                                                   np.ndarray)))


def explain(
    model: Any,
    inputs: Any,
    method: Any,
    *,
    layer: Any = None,
    target: Any = None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool | None = None,
    layout: str | None = None,
    layer_layout: str | None = None,
    allow_small_map: bool = False,
    **options: Any,
) -> Explanation:
    """Explain ``inputs`` with a CAM ``method`` of an ONNX ``model``.

    Parameters
    ----------
    model : path, bytes, :class:`onnx.ModelProto` or :class:`refcam.onnx.Model`.
    inputs : ``(N, *input_shape[1:])`` in the model's native layout (NHWC for ``layout="NHWC"``).
    method : a name in :data:`refcam.methods.METHODS` (``"cam"``, ``"scorecam"``, ``"sscam"``,
        ``"iscam"``, ``"ablationcam"``, ``"eigencam"``, the gradient methods ``"gradcam"``,
        ``"gradcampp"``, ``"xgradcam"``, ``"layercam"``, ``"hirescam"``, ``"gradcam_elementwise"``,
        ``"eigengradcam"``, ``"saliency"``, ``"guided_backprop"``, ``"deconvnet"``,
        ``"guided_gradcam"``, ``"smoothgrad"``, ``"integrated_gradients"``, and any method
        registered with :func:`refcam.methods.register_method`).
    layer : tensor name, node name or module path; default the last spatial activation before
        global pooling (:meth:`refcam.onnx.Model.default_layer`).
    target : see :mod:`refcam.onnx.targets` (``None`` = top-1 class).  Class-agnostic methods
        (Eigen-CAM) take no target.  Gradient methods also take an :class:`refcam.onnx.OnnxTarget`
        (``softmax_probability``, ``mask_sum``, ``embedding_similarity``...: the gradients are
        those of its score; ``targets`` is then ``None``), not a plain Python callable; the
        ``score`` option of the perturbation methods applies to class-index targets only.
        ``target="all"`` (every class) or one class list per image: ``cam`` and ``gradcam`` on a
        GAP → linear head, all maps from one matrix product (:mod:`refcam.allclass`; shorter
        lists padded with target -1 and NaN maps).
    batch_size, memory_budget : chunking of every model run (see :meth:`refcam.onnx.Model.run`).
    progress : tqdm bar for the perturbation loops (``None``: only on a terminal).
    layout : model layout when ``model`` is not already a :class:`Model`.
    layer_layout : the layer's layout when the graph does not determine it (``"NHWC"``,
        ``"NTC:1+14x14"``, …; :func:`refcam.onnx.layout.parse_layout`); recorded on the model
        (:meth:`refcam.onnx.Model.set_layer_layout`).  By default the layout comes from the graph
        and a layer whose layout it leaves unclear is refused.
    allow_small_map : explain a layer of fewer than 2×2 positions (refused by default: a pooled
        ``(N, K, 1, 1)`` map is a uniform picture).
    **options : the method's options, as declared in :mod:`refcam.methods` (``refcam methods``
        lists them; ``METHODS[name].options``): an unknown name or a value its
        :class:`~refcam.registry.Option` refuses raises
        :class:`~refcam.errors.InvalidArgumentError`.

    Returns
    -------
    Explanation

    Examples
    --------
    >>> import numpy as np
    >>> from refcam.onnx.toy_models import cam_net
    >>> x = np.random.default_rng(0).random((2, 3, 12, 12), dtype=np.float32)
    >>> e = explain(cam_net(), x, "cam", target=1)
    >>> e.maps.shape, e.layer.name, e.targets.ravel().tolist()
    ((2, 12, 12), 'features', [1, 1])
    """
    meth = get_method(method)
    m: Model = load(model) if layout is None else load(model, layout=layout)
    meth.check_needs()
    opts = meth.resolve(options)
    x = m.check_inputs(inputs)
    if meth.layered:
        li = m.spatial_layer(layer, layout=layer_layout, allow_small_map=allow_small_map)
    elif layer is not None:
        raise InvalidArgumentError(
            "layer", layer, f"None: {meth.name!r} explains the input, not a layer"
        )
    else:
        li = None
    if not meth.targeted and target is not None:
        raise InvalidArgumentError("target", target, f"None: {meth.name!r} is class-agnostic")
    from . import allclass

    if meth.targeted and allclass.wants_class_sets(target):
        # target="all" / one class list per image: one product with the head (refcam.allclass)
        return allclass.explain_classes(meth, m, x, li, target, opts, batch_size=batch_size,
                                        memory_budget=memory_budget)
    arrays: dict = {}
    if _one_vjp_run(meth, opts, m, li, target):
        # outputs, activations and gradients from the one VJP session run (forward + backward)
        from .autodiff import gradients

        if li is None:  # input gradients: no separate forward session (its memory and time)
            need = _input_gradient_need(meth)
            r = gradients(m, x, wrt="input", target=target, rules=_INPUT_GRADIENT_NEEDS[need],
                          batch_size=batch_size)
            outputs = r.outputs
            arrays[need] = m.to_channels_first(r.gradients[m.input_name], lead=1).astype(x.dtype, copy=False)
        else:
            r = gradients(m, x, wrt=li.name, target=target, batch_size=batch_size)
            outputs = r.outputs
            arrays["activations"] = r.activations[li.name]
            arrays["gradients"] = r.gradients[li.name].astype(arrays["activations"].dtype, copy=False)
    else:
        layers = [li] if li is not None else []
        fw = m.forward(x, layers, batch_size=batch_size, memory_budget=memory_budget, checked=True)
        outputs = fw.outputs
        if li is not None:
            arrays["activations"] = fw.activations[li.name]
    targets = resolve_targets(target, outputs) if meth.targeted else None
    ctx = Context(
        m, x, li, outputs, targets, opts, batch_size, memory_budget, progress, arrays,
        method=meth.name,
    )
    n_t = targets.n_targets if targets is not None else 1
    maps = [meth.compute(ctx, t) for t in range(n_t)]
    out = maps[0] if n_t == 1 else np.stack(maps, axis=1)
    scores = ctx.need("target_scores") if targets is not None else None
    return Explanation(
        maps=out,
        method=meth.name,
        layer=li,
        targets=None if targets is None else targets.classes,
        scores=scores,
        outputs=outputs,
        options=opts,
        arrays=ctx.arrays,
        input_size=m.input_spatial_shape(x),
    )
