"""The one entry point: ``refcam.explain(model, inputs, method, layer=..., target=...)``.

(The module is ``refcam.explanation``: a module named ``explain`` would shadow the function
``refcam.explain`` once imported.)

It loads the model (path, bytes, ModelProto or :class:`refcam.onnx.Model`), validates the inputs,
runs the model once for the output tensor and the layer's activations (gradient methods: one
VJP run gives the outputs, the activations and the gradients), resolves the targets,
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


#: input-gradient needs and the rule set of the VJP run that gives each
_INPUT_GRADIENT_RULES = {
    "input_gradients": "plain",
    "guided_input_gradients": "guided",
    "deconvnet_input_gradients": "deconvnet",
}


def _one_vjp_run(meth: Any, opts: dict, model: Model, layer: Any, target: Any) -> tuple | None:
    """What one VJP session run can give together with the outputs, or ``None``.

    ``(wrt, rules, need)``: a layer-gradient method (``wrt`` = the layer, ``need`` =
    ``"gradients"``, plus the activations) or a method needing one input gradient (``wrt`` =
    ``"input"``, ``need`` one of :data:`_INPUT_GRADIENT_RULES` with its rule set), with
    ``gradient_source="vjp"`` and a target the VJP graph seeds (class indices of a classifier
    output, ``TopK``, or an ``OnnxTarget``).  Otherwise (``None``) the outputs come from a forward
    run first (callable targets, finite differences, ...)."""
    from .onnx import OnnxTarget, TopK

    if opts.get("gradient_source") != "vjp":
        return None
    if layer is not None and "gradients" in meth.needs:
        plan = (layer.name, "plain", "gradients")
    elif layer is None:
        inputs = [n for n in meth.needs if n in _INPUT_GRADIENT_RULES]
        if len(inputs) != 1:
            return None
        plan = ("input", _INPUT_GRADIENT_RULES[inputs[0]], inputs[0])
    else:
        return None
    if isinstance(target, OnnxTarget):
        return plan
    if callable(target) or (isinstance(target, (list, tuple)) and any(callable(t) for t in target)):
        return None
    out = model.value_info.get(model.output_name)
    shape = out.type.tensor_type.shape if out is not None and out.type.tensor_type.HasField("shape") else None
    classifier = shape is not None and len(shape.dim) == 2
    ok = classifier and (target is None or isinstance(target, (int, np.integer, TopK, list, tuple, np.ndarray)))
    return plan if ok else None


def _map(meth: Any, ctx: Context, t: int) -> np.ndarray:
    r"""The method's raw map for target column ``t``: ``meth.compute``, or, with the
    ``eigen_smooth`` option, :func:`refcam.math.eigen_smooth` of the method's weights (the
    first principal component of :math:`w^c \odot A` replaces the channel sum
    :math:`\sum_k w^c_k A^k`, then the method's ``relu``), as pytorch-grad-cam 1.5.7
    ``base_cam.py:84-87`` and its subclasses' ``get_cam_image``.  The weights of every target
    column are stored as ``arrays["eigen_smooth_weights"]`` (a list, one entry per column)."""
    if not ctx.options.get("eigen_smooth"):
        return meth.compute(ctx, t)
    w = meth.weights(ctx, t)
    ctx.arrays.setdefault("eigen_smooth_weights", []).append(w)
    return M.eigen_smooth(ctx.need("activations"), w, relu=ctx.options["relu"])


def _aug_smooth(meth: Any, m: Model, x: np.ndarray, li: Any, target: Any, opts: dict,
                run: dict) -> "Explanation":
    r"""The ``aug_smooth`` option: :math:`L = \frac1{|T|}\sum_{t\in T} t^{-1}(L(t(x)))` over
    :data:`refcam.math.AUG_TRANSFORMS` (:func:`refcam.math.aug_smooth`).

    The identity transform runs first and fixes the targets (its resolved classes are the targets
    of the other runs: ``None`` / ``TopK`` explain the top classes of the unmodified input); its
    arrays are the explanation's, plus ``aug_maps`` ``(|T|, N, ...)`` (the raw map of every
    :math:`t(x)`, not flipped back), ``aug_flips`` and ``aug_factors``.  Flips reverse the last
    axis of the channels-first input and of the maps."""
    from . import allclass

    if allclass.wants_class_sets(target):
        raise InvalidArgumentError("aug_smooth", True, "False with target='all' / class lists")
    sub = dict(opts, aug_smooth=False)
    layer = None if li is None else li.name
    xc = m.to_channels_first(x)

    def one(flip: bool, factor: float, tgt: Any) -> Explanation:
        xa = np.flip(xc, axis=-1) if flip else xc
        xa = m.to_native(xa * xa.dtype.type(factor))
        return explain(m, xa, meth, layer=layer, target=tgt, **run, **sub)

    first = one(False, 1.0, target)
    tgt = first.targets if first.targets is not None else target
    runs = [first if (f, s) == (False, 1.0) else one(f, s, tgt) for f, s in M.AUG_TRANSFORMS]
    flips = [f for f, _ in M.AUG_TRANSFORMS]
    arrays = dict(first.arrays, aug_maps=np.stack([r.maps for r in runs]), aug_flips=np.array(flips),
                  aug_factors=np.array([s for _, s in M.AUG_TRANSFORMS]))
    return Explanation(
        maps=M.aug_smooth(arrays["aug_maps"], flips), method=first.method, layer=first.layer,
        targets=first.targets, scores=first.scores, outputs=first.outputs, options=opts,
        arrays=arrays, input_size=first.input_size,
    )


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

    if opts.get("aug_smooth"):
        return _aug_smooth(meth, m, x, li, target, opts, dict(
            batch_size=batch_size, memory_budget=memory_budget, progress=progress,
            layer_layout=layer_layout, allow_small_map=allow_small_map))
    if meth.targeted and allclass.wants_class_sets(target):
        if opts.get("eigen_smooth"):
            raise InvalidArgumentError("eigen_smooth", True, "False with target='all' / class lists "
                                       "(one product with the head sums the channels)")
        # target="all" / one class list per image: one product with the head (refcam.allclass)
        return allclass.explain_classes(meth, m, x, li, target, opts, batch_size=batch_size,
                                        memory_budget=memory_budget)
    arrays: dict = {}
    plan = _one_vjp_run(meth, opts, m, li, target)
    if plan:
        # outputs and the gradients (and a layer's activations) from one VJP session run
        # (forward + backward): no separate forward run of the model
        from .autodiff import gradients

        wrt, rules, need = plan
        r = gradients(m, x, wrt=wrt, target=target, rules=rules, batch_size=batch_size)
        outputs = r.outputs
        if wrt == "input":  # (N, T, C, *S_in) channels first, as the input-gradient providers give
            g = m.to_channels_first(r.gradients[m.input_name], lead=1)
            arrays[need] = g.astype(x.dtype, copy=False)
        else:
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
    maps = [_map(meth, ctx, t) for t in range(n_t)]
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
