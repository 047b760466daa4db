r"""Convention presets: reproduce the paper, pytorch-grad-cam, torchcam and captum on purpose.

The three CAM libraries most people use disagree with each other and with the papers on the
post-processing around the formulas (ReLU placement, min-max eps, when and how the map is
resized, multi-layer fusion) and on a few formula details (Grad-CAM++'s division guard, the
Score-CAM mask pipeline, the Eigen-CAM sign).  This module holds those conventions **as data**:
one frozen :class:`Convention` per (preset, method) in :data:`PRESETS`, and one small pure
function, :func:`compute`, that applies a convention to the arrays a model gives
(activations, gradients, scores) using only :mod:`refcam.math` functions.

Presets (versions read, file:line of every convention: ``docs/peer-conventions.md``):

* ``"paper"`` -- each method's own paper: the map's ReLU as the paper writes it, exact division
  guards (masks, no additive eps), bilinear half-pixel upsampling to the input size, then
  min-max normalisation with the zero-range guard.
* ``"pytorch-grad-cam"`` -- grad-cam 1.5.7: ReLU on every map, min-max with ``+1e-7``, *then*
  ``cv2.resize`` (bilinear, half-pixel) to the input, ReLU, mean over layers, min-max again.
* ``"torchcam"`` -- torchcam 0.5.0: ReLU (not for CAM), min-max with ``+1e-8``, feature
  resolution; several layers are resized (bilinear, half-pixel) to the largest map and fused by
  maximum (LayerCAM: ``tanh(2 cam)`` first).
* ``"captum"`` -- captum 0.9.0 ``LayerGradCam``: no ReLU, no normalisation, feature resolution;
  ``LayerAttribution.interpolate`` resizes with legacy ``nearest``.

Examples
--------
>>> import numpy as np
>>> a = np.array([[[[1., 2.], [3., 4.]]]])          # N=1, K=1, 2x2
>>> g = np.full_like(a, -1.0)                       # Grad-CAM map = -A: all negative
>>> compute("gradcam", "captum", activations=a, gradients=g)        # no ReLU, no scaling
array([[[-1., -2.],
        [-3., -4.]]])
>>> compute("gradcam", "torchcam", activations=a, gradients=g)      # ReLU -> zeros
array([[[0., 0.],
        [0., 0.]]])
>>> dict(get("pytorch-grad-cam", "gradcampp").method_kwargs)
{'eps': 1e-06}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from . import _validate as V
from . import math as M
from .errors import InvalidArgumentError, ShapeError
from .methods import METHODS

__all__ = [
    "Convention",
    "MaskConvention",
    "PRESETS",
    "PRESET_NAMES",
    "get",
    "methods",
    "compute",
    "score_masks",
    "score_weights",
    "postprocess",
    "postprocess_explanation",
    "markdown_table",
    "explain_options",
    "from_explanation",
    "GRADIENT_PRESETS",
]


# --------------------------------------------------------------------------- the data types

@dataclass(frozen=True)
class MaskConvention:
    """How Score-CAM turns activations into input masks ``H^k`` and scores into weights.

    Every field has the name of the :func:`refcam.explain` option (and of the
    :func:`refcam.math.scorecam_masks` / :func:`refcam.math.scorecam_weights` argument) it sets.

    Attributes
    ----------
    upsample_mode : str
        :func:`refcam.math.upsample` mode used to bring ``A^k`` to the input size.
    mask_order : {"upsample-then-normalize", "normalize-then-upsample"}
        Whether the per-channel min-max scaling happens at input or at feature resolution.
    mask_eps : float
        Additive term of the per-channel min-max denominator (0 = zero-range guard).
    softmax : bool
        Softmax over the channels of ``C(A^k)`` (:func:`refcam.math.scorecam_weights`).
    baseline : {None, "input", "zeros"}
        Score subtracted from the masked scores: nothing, the unmasked input's, a black image's.
    score : {"logit", "probability"}
        What the model's score ``f^c`` is: the peers score the raw logits, the paper's Sec. 3.2
        the post-softmax probability.
    """

    upsample_mode: str
    mask_order: str
    mask_eps: float
    softmax: bool
    baseline: str | None
    score: str = "logit"


@dataclass(frozen=True)
class Convention:
    """One row of the preset table: how one library computes one method.

    Attributes
    ----------
    preset, method : str
        Table keys; ``method`` is the :mod:`refcam.math` function computing the raw map.
    relu : bool
        ReLU on the raw map (the method's ``relu=`` keyword).
    method_kwargs : mapping
        Extra keywords of the math function (``eps`` of Grad-CAM++/XGrad-CAM, Eigen-CAM
        ``center``/``sign``) -- or ``{"alpha": "g2"}`` for torchcam's Grad-CAM++ (see notes).
    normalize_eps : float or None
        Per-sample min-max with this additive eps (0 = zero-range guard); ``None``: no scaling.
    upsample : str or None
        :func:`refcam.math.upsample` mode to the input size; ``None``: feature resolution.
    order : {"normalize-then-upsample", "upsample-then-normalize"}
        Order of the two steps above (per layer).
    fuse : str or None
        :func:`refcam.math.fuse` mode for several layers; ``None``: one layer only.
    fuse_to : {"input", "largest"}
        Common size of multi-layer fusion: the input size or the largest layer map.
    fuse_prescale : bool
        torchcam LayerCAM: ``tanh(2 m / max m)`` per layer *before* resampling, then ``max``.
    renormalize_eps : float or None
        Min-max (with this eps) after fusion (pytorch-grad-cam does it even for one layer).
    masks : MaskConvention or None
        Score-CAM only.
    ablation_value : float, str or None
        Ablation-CAM only: ``0.0`` (paper) or ``"pgc"`` (0 if ``min A == 0`` else
        ``min A - 1e7``, compounding inside a forward batch: :func:`refcam.math.ablation_values`,
        ``docs/divergences.md``).
    source : str
        Where the convention was read (file:line of the installed peer).
    """

    preset: str
    method: str
    relu: bool
    method_kwargs: Mapping[str, Any] = field(default_factory=dict)
    normalize_eps: float | None = 0.0
    upsample: str | None = "linear"
    order: str = "upsample-then-normalize"
    fuse: str | None = "mean"
    fuse_to: str = "input"
    fuse_prescale: bool = False
    renormalize_eps: float | None = None
    masks: MaskConvention | None = None
    ablation_value: float | str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "method_kwargs", MappingProxyType(dict(self.method_kwargs)))

    def replace(self, **changes: Any) -> "Convention":
        """A copy with some fields changed (e.g. ``upsample=None`` to stay at feature size)."""
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- the table

_PAPER_MASKS = MaskConvention(upsample_mode="linear", mask_order="upsample-then-normalize",
                              mask_eps=0.0, softmax=False, baseline="zeros", score="probability")
_PGC_MASKS = MaskConvention(upsample_mode="linear-align-corners",
                            mask_order="upsample-then-normalize", mask_eps=1e-8, softmax=True,
                            baseline=None)
_TORCHCAM_MASKS = MaskConvention(upsample_mode="linear", mask_order="normalize-then-upsample",
                                 mask_eps=1e-8, softmax=True, baseline="input")


def _paper(method: str, **kw: Any) -> Convention:
    # the paper's ReLU on the final map: the method's declared default (refcam.methods)
    base = dict(relu=METHODS[method].defaults["relu"], normalize_eps=0.0, upsample="linear",
                order="upsample-then-normalize", fuse="tanh-max" if method == "layercam" else "mean",
                source="the method's paper (see the refcam.math docstring)")
    base.update(kw)
    return Convention("paper", method, **base)


def _pgc(method: str, source: str, **kw: Any) -> Convention:
    # base_cam.py:171 ReLU; utils/image.py:164-171 min-max +1e-7 then cv2 INTER_LINEAR;
    # base_cam.py:177-181 ReLU, mean over layers, min-max +1e-7 again.
    base = dict(relu=True, normalize_eps=1e-7, upsample="linear", order="normalize-then-upsample",
                fuse="mean", fuse_to="input", renormalize_eps=1e-7,
                source="pytorch_grad_cam/base_cam.py:171-181, utils/image.py:161-176; " + source)
    base.update(kw)
    return Convention("pytorch-grad-cam", method, **base)


def _torchcam(method: str, source: str, **kw: Any) -> Convention:
    # core.py:296-303 nansum, ReLU (if _relu), _normalize +1e-8; no upsampling;
    # core.py:316-372 fuse_cams: bilinear align_corners=False to the largest map, max.
    base = dict(relu=True, normalize_eps=1e-8, upsample=None, order="normalize-then-upsample",
                fuse="max", fuse_to="largest",
                source="torchcam/methods/core.py:193-199,287-307,316-372; " + source)
    base.update(kw)
    return Convention("torchcam", method, **base)


def _captum(method: str, source: str, **kw: Any) -> Convention:
    base = dict(relu=False, normalize_eps=None, upsample=None, order="normalize-then-upsample",
                fuse=None, source=source)
    base.update(kw)
    return Convention("captum", method, **base)


_TABLE: tuple[Convention, ...] = (
    # ---- paper -------------------------------------------------------------------------
    *(_paper(m) for m in ("cam", "gradcam", "gradcampp", "xgradcam", "layercam", "hirescam",
                          "gradcam_elementwise")),
    _paper("eigencam", method_kwargs={"center": False, "sign": "sum"}),
    _paper("eigengradcam", method_kwargs={"center": False, "sign": "sum"}),
    _paper("scorecam", masks=_PAPER_MASKS),
    _paper("ablationcam", ablation_value=0.0),
    # ---- pytorch-grad-cam 1.5.7 ---------------------------------------------------------
    _pgc("gradcam", "grad_cam.py:24"),
    _pgc("gradcampp", "grad_cam_plusplus.py:19-34 (a = g^2/(2g^2 + sum(A) g^3 + 1e-6))",
         method_kwargs={"eps": 1e-6}),
    _pgc("xgradcam", "xgrad_cam.py:24-31 (sum(A) + 1e-7)", method_kwargs={"eps": 1e-7}),
    _pgc("layercam", "layer_cam.py:28-33"),
    _pgc("hirescam", "hirescam.py:23-30"),
    _pgc("gradcam_elementwise", "grad_cam_elementwise.py:23-28"),
    _pgc("eigencam", "eigen_cam.py:22, utils/svd_on_activations.py:11-19 (centred, no sign rule)",
         method_kwargs={"center": True, "sign": "none"}),
    _pgc("eigengradcam", "eigen_grad_cam.py:21", method_kwargs={"center": True, "sign": "none"}),
    _pgc("scorecam", "score_cam.py:24-56", masks=_PGC_MASKS),
    _pgc("ablationcam", "ablation_cam.py:145, ablation_layer.py:70-85", ablation_value="pgc"),
    # ---- torchcam 0.5.0 -----------------------------------------------------------------
    _torchcam("cam", "core.py:126 (_relu=False for CAM)", relu=False),
    _torchcam("gradcam", "gradient.py:40,129"),
    _torchcam("gradcampp", "gradient.py:192-206 (div_ on a boolean-indexed copy: alpha = g^2)",
              method_kwargs={"alpha": "g2"}),
    _torchcam("xgradcam", "gradient.py:404-406 (sum(A) + 1e-8)", method_kwargs={"eps": 1e-8}),
    _torchcam("layercam", "gradient.py:447-459 (tanh(2 cam) before fusion)", fuse_prescale=True),
    _torchcam("scorecam", "activation.py:166,196-199,224-263,279", masks=_TORCHCAM_MASKS),
    # ---- captum 0.9.0 -------------------------------------------------------------------
    _captum("gradcam", "captum/attr/_core/layer/grad_cam.py:86,212-238 (relu_attributions=False); "
            "LayerAttribution.interpolate: attr/_utils/attribution.py:439,469 (nearest)"),
)

#: ``PRESETS[preset][method] -> Convention`` (read-only).
PRESETS: Mapping[str, Mapping[str, Convention]] = MappingProxyType({
    p: MappingProxyType({c.method: c for c in _TABLE if c.preset == p})
    for p in dict.fromkeys(c.preset for c in _TABLE)
})
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)

#: captum's ``LayerAttribution.interpolate`` default, for callers who resize captum's map.
CAPTUM_INTERPOLATE = "nearest"

#: Input-gradient methods (no map post-processing): the keywords of :func:`refcam.math.saliency`
#: and of :func:`refcam.math.integrated_gradients` / :func:`refcam.math.integration_points`
#: per preset.  Paper: Simonyan et al. 2014 Sect. 3.1 (max over channels of ``|g|``);
#: Sundararajan et al. 2017 Sect. 5 (right Riemann sum; the step count is the user's).
#: captum 0.9.0: ``Saliency(abs=True)`` (``attr/_core/saliency.py:43,137``, no channel
#: reduction); ``IntegratedGradients`` defaults ``n_steps=50, method="gausslegendre"``, baseline 0.
GRADIENT_PRESETS: Mapping[str, Mapping[str, Mapping[str, Any]]] = MappingProxyType({
    "paper": MappingProxyType({
        "saliency": MappingProxyType({"reduce": "max-abs"}),
        "integrated_gradients": MappingProxyType({"rule": "riemann-right", "n_steps": None, "baseline": 0.0}),
    }),
    "captum": MappingProxyType({
        "saliency": MappingProxyType({"reduce": "abs"}),
        "integrated_gradients": MappingProxyType({"rule": "gauss-legendre", "n_steps": 50, "baseline": 0.0}),
    }),
})


def get(preset: str, method: str) -> Convention:
    """The :class:`Convention` of ``method`` under ``preset``.

    Raises :class:`~refcam.errors.InvalidArgumentError` naming the methods the preset covers.

    Examples
    --------
    >>> get("torchcam", "cam").relu
    False
    >>> get("captum", "scorecam")
    Traceback (most recent call last):
    ...
    refcam.errors.InvalidArgumentError: method: got 'scorecam', expected one of 'gradcam' (methods of preset 'captum')
    """
    preset = V.choice(preset, "preset", PRESET_NAMES)
    table = PRESETS[preset]
    if method not in table:
        raise InvalidArgumentError("method", method, "one of " + ", ".join(repr(m) for m in table)
                                   + f" (methods of preset {preset!r})")
    return table[method]


def methods(preset: str) -> tuple[str, ...]:
    """Names of the methods a preset covers.

    >>> methods("captum")
    ('gradcam',)
    """
    return tuple(PRESETS[V.choice(preset, "preset", PRESET_NAMES)])


# --------------------------------------------------------------------------- helpers

def _size(input_size: Any, n_spatial: int, name: str = "input_size") -> tuple[int, ...]:
    expected = f"a sequence of {n_spatial} positive integers (the input's spatial size)"
    try:
        size = tuple(int(s) for s in input_size)
        ok = len(size) == n_spatial and all(s >= 1 for s in size) and all(
            not isinstance(s, (bool, np.bool_)) and float(s) == int(s) for s in input_size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidArgumentError(name, input_size, expected)
    return size


def _gradcampp_g2(a: np.ndarray, g: np.ndarray, relu: bool) -> np.ndarray:
    # torchcam 0.5.0 GradCAMpp (gradient.py:192-206): ``alpha[mask].div_(...)`` divides a copy
    # made by boolean indexing, so alpha stays g^2 and w_k = sum_ij g^2 relu(g).
    # No math-floor function computes this non-paper weight: it is built here from
    # refcam.math.relu and refcam.math.weighted_sum only.
    axes = tuple(range(2, g.ndim))
    w = np.sum(g * g * M.relu(g), axis=axes)
    m = M.weighted_sum(a, w)
    return M.relu(m) if relu else m


def _raw_map(conv: Convention, a: np.ndarray, g: np.ndarray | None, class_weights: Any,
             scores: Any, baseline_score: Any) -> np.ndarray:
    # what the method consumes, as declared in the registry (refcam.methods)
    name = conv.method
    needs = METHODS[name].needs
    kw = dict(conv.method_kwargs)
    if "gradients" in needs and g is None:
        raise InvalidArgumentError("gradients", None, f"an (N, K, *S) array: {name} needs gradients")
    if "class_weights" in needs:
        if class_weights is None:
            raise InvalidArgumentError("class_weights", None, "an (N, K) array: cam needs class weights")
        return METHODS[name].math(a, class_weights, relu=conv.relu)
    if name == "gradcampp" and kw.pop("alpha", None) == "g2":
        return _gradcampp_g2(a, g, conv.relu)
    if "gradients" in needs:
        return METHODS[name].math(a, g, relu=conv.relu, **kw)
    if needs == ("activations",):
        return METHODS[name].math(a, relu=conv.relu, **kw)
    if "masked_scores" in needs:
        if scores is None:
            raise InvalidArgumentError("scores", None, "an (N, K) array: the target scores of the "
                                       "masked inputs (see score_masks)")
        w = score_weights(conv, scores, baseline_score)
        m = M.weighted_sum(a, w)
        return M.relu(m) if conv.relu else m
    if "ablated_scores" in needs:
        if scores is None or baseline_score is None:
            raise InvalidArgumentError("scores", scores, "(N, K) ablated scores and (N,) baseline_score")
        return METHODS[name].math(a, scores, baseline_score, relu=conv.relu)
    raise InvalidArgumentError("method", name, "a method of the preset table")  # pragma: no cover


# --------------------------------------------------------------------------- public functions

def score_masks(conv: Convention | tuple[str, str], activations: Any, input_size: Sequence[int]) -> np.ndarray:
    r"""Score-CAM masks :math:`H^k` of shape ``(N, K, *S_in)`` under a convention.

    Paper (Wang et al., 2020, Score-CAM, Eq. 4 and Algorithm 1):
    :math:`H^k = s(\mathrm{Up}(A^k))`, :math:`s(M) = (M - \min M)/(\max M - \min M)` -- upsample
    then normalise; pytorch-grad-cam the same with ``align_corners=True`` and ``+1e-8``; torchcam
    normalises at feature resolution (``+1e-8``) *then* upsamples (half-pixel).

    Parameters
    ----------
    conv : Convention or (preset, method)
    activations : array of shape (N, K, *S)
    input_size : sequence of len(S) ints

    Returns
    -------
    ndarray of shape (N, K, *input_size), values in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[0., 2.]]]])                         # N=K=1, 1x2 map
    >>> score_masks(("paper", "scorecam"), a, (1, 4))        # half-pixel, then min-max
    array([[[[0.  , 0.25, 0.75, 1.  ]]]])
    >>> np.round(score_masks(("pytorch-grad-cam", "scorecam"), a, (1, 4)), 4)   # align_corners=True
    array([[[[0.    , 0.3333, 0.6667, 1.    ]]]])
    """
    if isinstance(conv, tuple):
        conv = get(*conv)
    if conv.masks is None:
        raise InvalidArgumentError("conv", conv.method, "a Score-CAM convention (with masks)")
    a = V.feature_maps(activations, "activations")
    size = _size(input_size, a.ndim - 2)
    mc = conv.masks
    return M.scorecam_masks(a, size, upsample_mode=mc.upsample_mode, mask_order=mc.mask_order,
                             mask_eps=mc.mask_eps)


def score_weights(conv: Convention | tuple[str, str], scores: Any, baseline_score: Any = None) -> np.ndarray:
    r"""Score-CAM channel weights ``(N, K)`` under a convention.

    ``scores`` are the target scores of the masked inputs, ``baseline_score`` ``(N,)`` the score
    of the convention's baseline (ignored when ``masks.baseline is None``; irrelevant with the
    channel softmax, which is shift invariant).  Calls :func:`refcam.math.scorecam_weights`.

    Examples
    --------
    >>> import numpy as np
    >>> score_weights(("torchcam", "scorecam"), np.array([[np.log(3.), 0.]]), np.array([5.]))
    array([[0.75, 0.25]])
    """
    if isinstance(conv, tuple):
        conv = get(*conv)
    if conv.masks is None:
        raise InvalidArgumentError("conv", conv.method, "a Score-CAM convention (with masks)")
    base = None if conv.masks.baseline is None else baseline_score
    return M.scorecam_weights(scores, base, softmax=conv.masks.softmax)


def compute(
    method: str,
    preset: str = "paper",
    *,
    activations: Any,
    gradients: Any = None,
    class_weights: Any = None,
    scores: Any = None,
    baseline_score: Any = None,
    input_size: Sequence[int] | None = None,
    convention: Convention | None = None,
) -> np.ndarray:
    r"""Apply a preset's formula and post-processing to the arrays a model gave.

    Pipeline (per layer, then across layers), every step a :mod:`refcam.math` function:

    1. raw map ``(N, *S)`` of ``method`` with the convention's ``relu`` and ``method_kwargs``;
    2. ``normalize(·, "minmax", eps=normalize_eps)`` and ``upsample(·, input_size, upsample)``
       in the convention's ``order`` (skipped when ``None`` / when ``input_size`` is ``None``);
    3. several layers: resample to the common size (``fuse_to``), ``fuse(·, fuse)``; then
       ``normalize(·, eps=renormalize_eps)`` if set (pytorch-grad-cam: ReLU, mean, min-max,
       even for a single layer).

    Parameters
    ----------
    method : str
        A :mod:`refcam.math` method name in the preset table (``methods(preset)``).
    preset : {"paper", "pytorch-grad-cam", "torchcam", "captum"}
    activations : array (N, K, *S), or a list of such arrays (one per layer)
    gradients : like ``activations``
        :math:`\partial y^c / \partial A` (gradient methods).
    class_weights : array (N, K)
        CAM only: the linear layer's row :math:`w^c` per sample.
    scores, baseline_score : arrays (N, K) and (N,)
        Score-CAM: target scores of the masked inputs (masks from :func:`score_masks`) and of the
        baseline; Ablation-CAM: ablated scores and the unablated score.
    input_size : sequence of ints, optional
        Spatial size of the model input; required by conventions that upsample.
    convention : Convention, optional
        Use this row instead of ``PRESETS[preset][method]`` (e.g. a modified copy).

    Returns
    -------
    ndarray (N, *S_out): feature resolution, the input size, or (torchcam, several layers) the
    largest layer's size.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[0., 1.], [2., 3.]]]]); g = np.ones_like(a)
    >>> np.round(compute("gradcam", "torchcam", activations=a, gradients=g), 4)  # x / (3 + 1e-8)
    array([[[0.    , 0.3333],
            [0.6667, 1.    ]]])
    >>> # columns 2 -> 4 half-pixel: [0, 1] -> [0, .25, .75, 1], [2, 3] -> [2, 2.25, 2.75, 3]; / 3
    >>> np.round(compute("gradcam", "paper", activations=a, gradients=g, input_size=(2, 4)), 4)
    array([[[0.    , 0.0833, 0.25  , 0.3333],
            [0.6667, 0.75  , 0.9167, 1.    ]]])
    """
    conv = convention if convention is not None else get(preset, method)
    layers_a = list(activations) if isinstance(activations, (list, tuple)) else [activations]
    if gradients is None:
        layers_g: list[Any] = [None] * len(layers_a)
    else:
        layers_g = list(gradients) if isinstance(gradients, (list, tuple)) else [gradients]
    if len(layers_g) != len(layers_a):
        raise ShapeError("gradients", (len(layers_g),), (len(layers_a),), "one gradient array per layer")
    if not layers_a:
        raise InvalidArgumentError("activations", activations, "an array or a non-empty list of arrays")
    if len(layers_a) > 1 and conv.fuse is None:
        raise InvalidArgumentError("activations", f"{len(layers_a)} layers",
                                   f"one layer ({conv.preset} has no multi-layer fusion for {conv.method})")
    if len(layers_a) > 1 and conv.method in ("scorecam", "ablationcam", "cam"):
        raise InvalidArgumentError("activations", f"{len(layers_a)} layers",
                                   f"one layer ({conv.method} takes per-layer scores)")

    maps = []
    for i, (a_in, g_in) in enumerate(zip(layers_a, layers_g)):
        name = "activations" if len(layers_a) == 1 else f"activations[{i}]"
        a = V.feature_maps(a_in, name)
        g = None if g_in is None else V.feature_maps(g_in, "gradients")
        if g is not None:
            V.check_same_shape(a, name, g, "gradients")
        m = _raw_map(conv, a, g, class_weights, scores, baseline_score)
        maps.append(m)

    return postprocess(conv, maps, input_size)


def postprocess(conv: Convention | tuple[str, str], raw_maps: Any,
                input_size: Sequence[int] | None = None) -> np.ndarray:
    r"""Steps 2-3 of :func:`compute` (scaling, resizing, fusion) on raw maps.

    Use it when the raw map ``(N, *S)`` comes from elsewhere (e.g. a third-party formula or a
    hand-fixed Eigen-CAM sign).

    Parameters
    ----------
    conv : Convention or (preset, method)
    raw_maps : array (N, *S) or a list of them (one per layer)
    input_size : sequence of ints, optional

    Returns
    -------
    ndarray (N, *S_out), see :func:`compute`.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.array([[[0., 1.], [2., 4.]]])
    >>> np.round(postprocess(("pytorch-grad-cam", "gradcam"), m, (2, 2)), 6)  # / (4 + 1e-7), twice
    array([[[0.  , 0.25],
            [0.5 , 1.  ]]])
    """
    if isinstance(conv, tuple):
        conv = get(*conv)
    items = list(raw_maps) if isinstance(raw_maps, (list, tuple)) else [raw_maps]
    if not items:
        raise InvalidArgumentError("raw_maps", raw_maps, "an array or a non-empty list of arrays")
    if len(items) > 1 and conv.fuse is None:
        raise InvalidArgumentError("raw_maps", f"{len(items)} layers",
                                   f"one layer ({conv.preset} has no multi-layer fusion for {conv.method})")
    maps = [V.maps(m, "raw_maps" if len(items) == 1 else f"raw_maps[{i}]") for i, m in enumerate(items)]
    for i, m in enumerate(maps[1:], start=1):
        if m.ndim != maps[0].ndim:
            raise ShapeError(f"raw_maps[{i}]", m.shape, f"{maps[0].ndim} axes like raw_maps[0]")
    n_spatial = maps[0].ndim - 1
    size = None if input_size is None else _size(input_size, n_spatial)
    if conv.upsample is not None and size is None and conv.fuse_to == "input":
        raise InvalidArgumentError("input_size", None, f"the input's spatial size ({conv.preset} "
                                   f"upsamples {conv.method} to it)")

    def _norm(m: np.ndarray) -> np.ndarray:
        return m if conv.normalize_eps is None else M.normalize(m, "minmax", eps=conv.normalize_eps)

    def _up(m: np.ndarray) -> np.ndarray:
        return m if conv.upsample is None or size is None else M.upsample(m, size, conv.upsample)

    out = []
    for m in maps:
        out.append(_up(_norm(m)) if conv.order == "normalize-then-upsample" else _norm(_up(m)))

    if len(out) > 1:
        if conv.fuse_to == "largest":
            common = tuple(max(s) for s in zip(*(m.shape[1:] for m in out)))
        else:
            common = size
        if conv.fuse_prescale:
            # torchcam LayerCAM (gradient.py:457-459): tanh(2 m) of the min-max(+1e-8) map, per
            # layer, *before* resampling; then max.  refcam.math.fuse("tanh-max") divides by
            # max|m| again (exact LayerCAM Eq. 9), which differs from torchcam by up to ~1e-4
            # when a layer's range is small (its +1e-8 keeps the max below 1).
            # (a fuse(..., prescaled=True) keyword would let this use the math floor)
            out = [np.tanh(m.dtype.type(2.0) * m) for m in out]
        out = [m if m.shape[1:] == common else M.upsample(m, common, "linear") for m in out]
        if conv.renormalize_eps is not None:        # pytorch-grad-cam re-applies the ReLU
            out = [M.relu(m) for m in out]
        fused = M.fuse(out, "max" if conv.fuse_prescale else conv.fuse)
    else:
        fused = out[0]
    if conv.renormalize_eps is not None:
        fused = M.normalize(M.relu(fused), "minmax", eps=conv.renormalize_eps)
    return fused


def postprocess_explanation(conv: Convention | tuple[str, str], explanation: Any) -> np.ndarray:
    """:func:`postprocess` of a :func:`refcam.explain` result's maps, one target per sample.

    With the ``aug_smooth`` option the convention's post-processing applies to the map of every
    augmented input before they are flipped back and averaged (pytorch-grad-cam
    ``forward_augmentation_smoothing``, ``base_cam.py:196-218``): :func:`refcam.math.aug_smooth`
    of the post-processed ``arrays["aug_maps"]``.  Flipping commutes with the min-max and the
    half-pixel resampling, so the flip back may happen at either resolution.
    """
    size = explanation.input_size
    arrays = explanation.arrays
    if "aug_maps" not in arrays:
        return postprocess(conv, explanation.maps, size)
    return M.aug_smooth(np.stack([postprocess(conv, m, size) for m in arrays["aug_maps"]]),
                        list(arrays["aug_flips"]))


def explain_options(conv: Convention | tuple[str, str]) -> dict[str, Any]:
    """The :func:`refcam.explain` options that make the model be queried as the convention does.

    The raw map's ReLU and formula keywords (``eps``, ``center``, ``sign``) where the method
    declares them; Score-CAM's masks, score, softmax and baseline (:class:`MaskConvention`: one
    field per option, same names); Ablation-CAM's ``ablation_value``.  Formula variants that are
    not options (torchcam's Grad-CAM++ ``alpha="g2"``) are applied by :func:`from_explanation`.

    Examples
    --------
    >>> explain_options(("pytorch-grad-cam", "scorecam"))      # doctest: +NORMALIZE_WHITESPACE
    {'relu': True, 'upsample_mode': 'linear-align-corners', 'mask_order': 'upsample-then-normalize',
     'mask_eps': 1e-08, 'softmax': True, 'baseline': None, 'score': 'logit'}
    >>> explain_options(("pytorch-grad-cam", "ablationcam"))
    {'relu': True, 'ablation_value': 'pgc'}
    """
    if isinstance(conv, tuple):
        conv = get(*conv)
    declared = METHODS[conv.method].defaults
    opts: dict[str, Any] = {"relu": conv.relu}
    opts.update((k, v) for k, v in conv.method_kwargs.items() if k in declared)
    if conv.masks is not None:
        opts.update(dataclasses.asdict(conv.masks))
    if conv.ablation_value is not None:
        opts["ablation_value"] = conv.ablation_value
    return opts


def from_explanation(conv: Convention | tuple[str, str], explanation: Any) -> np.ndarray:
    """The convention's map (:func:`compute`: formula, scaling, resizing) from the arrays of a
    :func:`refcam.explain` result obtained with :func:`explain_options` ``(conv)``.

    ``(N, *S_out)`` for one target per sample, ``(N, T, *S_out)`` for ``T`` targets.
    """
    if isinstance(conv, tuple):
        conv = get(*conv)
    arr = explanation.arrays
    needs = METHODS[conv.method].needs
    t_count = arr["target_scores"].shape[1] if "target_scores" in arr else 1
    maps = []
    for t in range(t_count):
        kw: dict[str, Any] = {}
        if "gradients" in needs:
            kw["gradients"] = arr["gradients"][:, t]
        if "class_weights" in needs:
            kw["class_weights"] = arr["class_weights"][:, t]
        if "masked_scores" in needs:
            kw["scores"] = arr["masked_scores"][:, t]
            if "baseline_scores" in arr:
                kw["baseline_score"] = arr["baseline_scores"][:, t]
        if "ablated_scores" in needs:
            kw["scores"] = arr["ablated_scores"][:, t]
            kw["baseline_score"] = arr["ablation_base_scores"][:, t]
        maps.append(compute(conv.method, conv.preset, activations=arr["activations"],
                            input_size=explanation.input_size, convention=conv, **kw))
    return maps[0] if t_count == 1 else np.stack(maps, axis=1)


def _ablation_cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return "zero" if value == 0 else f"{value:g}"


def markdown_table() -> str:
    """The preset table as markdown (the table of ``docs/presets.md``; a test keeps them equal).

    Examples
    --------
    >>> print(markdown_table().splitlines()[2])
    | paper | cam | no | — | 0 (guard) | `linear` to input, before min-max | `mean` at input | — | — |
    """
    rows = ["| preset | method | map ReLU | formula keywords | min-max eps | resize (when) | fusion "
            "| Score-CAM masks / weights | ablation |", "|---|---|---|---|---|---|---|---|---|"]
    for preset in PRESET_NAMES:
        for method, c in PRESETS[preset].items():
            kw = ", ".join(f"{k}={v!r}" for k, v in c.method_kwargs.items()) or "—"
            if c.normalize_eps is None:
                eps = "none"
            else:
                eps = "0 (guard)" if c.normalize_eps == 0 else f"+{c.normalize_eps:g}"
            if c.upsample is None:
                up = "feature resolution"
            else:
                when = "after min-max" if c.order == "normalize-then-upsample" else "before min-max"
                up = f"`{c.upsample}` to input, {when}"
            if c.fuse is None:
                fuse = "—"
            else:
                fuse = f"`{c.fuse}` at {c.fuse_to}" + (", tanh(2m) first" if c.fuse_prescale else "")
                fuse += f", then min-max +{c.renormalize_eps:g}" if c.renormalize_eps else ""
            if c.masks is None:
                masks = "—"
            else:
                mk = c.masks
                masks = (f"`{mk.upsample_mode}`, {mk.mask_order}, eps {mk.mask_eps:g}; "
                         + ("channel softmax" if mk.softmax else "no softmax")
                         + f", baseline {mk.baseline or 'none'}")
            rows.append(f"| {preset} | {method} | {'yes' if c.relu else 'no'} | {kw} | {eps} | {up} | "
                        f"{fuse} | {masks} | {_ablation_cell(c.ablation_value)} |")
    return "\n".join(rows)
