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

from . import _validate as V
from . import math as M
from .math.gradients import INTEGRATION_RULES, SALIENCY_REDUCTIONS
from .errors import InvalidArgumentError
from .methods import Context, Method, get_method
from .onnx import LayerInfo, Model, load, resolve_targets

__all__ = ["Explanation", "explain"]

_UPSAMPLE_MODES = ("linear", "linear-align-corners", "nearest", "nearest-exact")
_CHOICES = {
    "upsample_mode": _UPSAMPLE_MODES,
    "score": ("logit", "probability"),
    "variant": ("plain", "noise", "integrate"),
    "sign": ("sum", "max-abs", "none"),
    "mask_order": ("upsample-then-normalize", "normalize-then-upsample"),
    "scales": ("accumulated", "linear"),
    "gradient_source": ("vjp", "fd", "exported"),
    "fd_mode": ("auto", "channel", "full"),
    "reduce": SALIENCY_REDUCTIONS,
    "rule": INTEGRATION_RULES,
}


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


def _options(meth: Method, given: dict) -> dict:
    allowed = set(meth.defaults)
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise InvalidArgumentError(
            unknown[0],
            given[unknown[0]],
            f"no such option for {meth.name!r}; options: {', '.join(sorted(allowed)) or 'none'}",
        )
    opts = {**meth.defaults, **given}
    for key, choices in _CHOICES.items():
        if key in opts:
            V.choice(opts[key], key, choices)
    if (
        "masked_scores" in meth.needs
        and "baseline" in opts
        and opts["baseline"] not in (None, "zeros", "input")
    ):
        raise InvalidArgumentError("baseline", opts["baseline"], "None, 'zeros' or 'input'")
    for key in ("relu", "softmax", "center", "square"):
        if key in opts and not isinstance(opts[key], (bool, np.bool_)):
            raise InvalidArgumentError(key, opts[key], "True or False")
    for key in ("n_samples", "n_steps"):
        if key in opts:
            V.positive_int(opts[key], key)
    if opts.get("gradient_source") == "exported" and not isinstance(
        opts.get("gradient_output"), str
    ):
        raise InvalidArgumentError(
            "gradient_output",
            opts.get("gradient_output"),
            "the name of the model output holding ∂y^c/∂A (gradient_source='exported')",
        )
    for key in ("sigma", "mask_eps", "noise_level", "eps"):
        if key in opts:
            V.nonnegative_float(opts[key], key)
    if "ablation_value" in opts:
        v = opts["ablation_value"]
        if (
            isinstance(v, (bool, np.bool_))
            or not isinstance(v, (int, float, np.floating, np.integer))
            or not np.isfinite(v)
        ):
            raise InvalidArgumentError("ablation_value", v, "a finite real number")
    return opts


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
    batch_size, memory_budget : chunking of every model run (see :meth:`refcam.onnx.Model.run`).
    progress : tqdm bar for the perturbation loops (``None``: only on a terminal).
    layout : model layout when ``model`` is not already a :class:`Model`.
    layer_layout : the layer's layout when the graph does not determine it (``"NHWC"``,
        ``"NTC:1+14x14"``, …; :func:`refcam.onnx.layout.parse_layout`); recorded on the model
        (:meth:`refcam.onnx.Model.set_layer_layout`).  By default the layout comes from the graph
        and a layer whose layout it leaves unclear is refused.
    allow_small_map : explain a layer of fewer than 2×2 positions (refused by default: a pooled
        ``(N, K, 1, 1)`` map is a uniform picture).
    **options : the method's options (``relu``, ``upsample_mode``, ``mask_order``, ``mask_eps``
        (see :func:`refcam.math.scorecam_masks`), ``score``, ``softmax``,
        ``baseline``, ``n_samples``, ``sigma``, ``seed``, ``ablation_value``, ``center``, ``sign``;
        gradient methods: ``gradient_source`` (``"vjp"``, ``"fd"``, ``"exported"``, see
        :mod:`refcam._gradient`), ``fd_mode``, ``gradient_output``, ``eps``, ``reduce``,
        ``noise_level``, ``square``, ``n_steps``, ``rule``, ``upsample_mode``);
        see ``METHODS[name].defaults``.

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
    opts = _options(meth, options)
    x = m.check_inputs(inputs)
    if meth.layered:
        li = m.spatial_layer(layer, layout=layer_layout, allow_small_map=allow_small_map)
    elif layer is not None:
        raise InvalidArgumentError(
            "layer", layer, f"None: {meth.name!r} explains the input, not a layer"
        )
    else:
        li = None
    layers = [li] if li is not None else []
    fw = m.forward(x, layers, batch_size=batch_size, memory_budget=memory_budget, checked=True)
    if meth.targeted:
        targets = resolve_targets(target, fw.outputs)
    elif target is not None:
        raise InvalidArgumentError("target", target, f"None: {meth.name!r} is class-agnostic")
    else:
        targets = None
    ctx = Context(
        m, x, li, fw.outputs, targets, opts, batch_size, memory_budget, progress, method=meth.name
    )
    if li is not None:
        ctx.arrays["activations"] = fw.activations[li.name]
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
        outputs=fw.outputs,
        options=opts,
        arrays=ctx.arrays,
        input_size=m.input_spatial_shape(x),
    )
