"""The method registry: every CAM method described once, as data.

A :class:`Method` names what it *needs* (arrays such as ``"activations"``, ``"class_weights"``,
``"masked_scores"``), the math-floor function that turns those arrays into a map, the paper and
the equation, and its default options.  A :class:`Need` names how to obtain one array from a
:class:`Context` (model + inputs + layer + targets).  :func:`refcam.explain` resolves the needs of
a method through :data:`NEEDS` and calls ``Method.compute``.

Both registries are open (:func:`register_need`, :func:`register_method`).  Array conventions of the needs (``T`` = targets per sample):

=========================  ==================  ==========================================
need                       shape               meaning
=========================  ==================  ==========================================
``activations``            ``(N, K, *S)``      layer activations ``A^k`` (channels first)
``target_scores``          ``(N, T)``          ``y^c`` of the unmodified inputs
``class_weights``          ``(N, T, K)``       row ``w^c`` of the GAP → linear head
``masked_scores``          ``(N, T, K)``       ``f^c(X ∘ H^k)`` (Score-CAM family)
``baseline_scores``        ``(N, T)``          ``f^c(X_b)`` of the Score-CAM baseline input
``ablated_scores``         ``(N, T, K)``       ``y^c_k``, channel ``k`` ablated (head model)
``ablation_base_scores``   ``(N, T)``          ``y^c`` from the head on unablated activations
``gradients``              ``(N, T, K, *S)``   ``∂y^c/∂A^k`` (``gradient_source``: vjp/fd/exported)
``gradient_weights``       ``(N, T, K)``       Grad-CAM ``α_k^c = (1/Z) Σ_ij ∂y^c/∂A^k_ij``
``input_gradients``        ``(N, T, C, *S_in)``  ``∂y^c/∂X`` (plain rules)
``guided_input_gradients`` ``(N, T, C, *S_in)``  guided-backprop ``∂y^c/∂X``
``deconvnet_input_gradients`` ``(N, T, C, *S_in)``  deconvnet reconstruction
``smoothgrad_gradients``   ``(N, n, T, C, *S_in)``  ``∂y^c/∂X`` at the SmoothGrad noisy copies
``path_gradients``         ``(N, m, T, C, *S_in)``  ``∂y^c/∂X`` at the Integrated-Gradients path points
``bias_gradients``         dict name → ``(N, T, K, *S)``  FullGrad ``∂y^c/∂z ⊙ b`` per Conv/BatchNorm
=========================  ==================  ==========================================

Gradient needs are provided by :mod:`refcam._gradient` (the gradient floor
:mod:`refcam.autodiff` computes the numbers), the others by :mod:`refcam._forward`.

>>> sorted(METHODS)  # doctest: +NORMALIZE_WHITESPACE
['ablationcam', 'cam', 'deconvnet', 'dff', 'eigencam', 'eigengradcam', 'fem', 'fullgrad', 'gradcam',
 'gradcam_elementwise', 'gradcampp', 'guided_backprop', 'guided_gradcam', 'hirescam', 'integrated_gradients', 'iscam',
 'kpcacam', 'layercam', 'randomcam', 'saliency', 'scorecam', 'segeigencam', 'shapleycam', 'smoothgrad', 'sscam',
 'xgradcam']
>>> METHODS["cam"].needs
('activations', 'class_weights')
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _forward as F
from . import _gradient as G
from . import math as M
from .errors import InvalidArgumentError

__all__ = [
    "METHODS",
    "NEEDS",
    "Context",
    "Method",
    "Need",
    "get_method",
    "register_method",
    "register_need",
]


@dataclass
class Context:
    """Everything a need provider may use.  Providers cache their results in ``arrays``.

    Attributes
    ----------
    model : :class:`refcam.onnx.Model`.
    inputs : validated inputs in the model's native layout ``(N, *input_shape[1:])``.
    layer : the :class:`refcam.onnx.LayerInfo` explained.
    outputs : the model's output tensor (``model.output_name``) on ``inputs``.
    targets : resolved :class:`refcam.onnx.Targets`, or ``None`` for class-agnostic methods.
    options : the method's options (defaults merged with the caller's).
    batch_size, memory_budget, progress : forwarded to every model run.
    arrays : computed needs and intermediate arrays (returned in ``Explanation.arrays``).
    """

    model: Any
    inputs: np.ndarray
    layer: Any
    outputs: np.ndarray
    targets: Any
    options: dict
    batch_size: int | None = None
    memory_budget: int | None = None
    progress: bool | None = None
    arrays: dict = field(default_factory=dict)
    method: str = ""

    def need(self, name: str) -> np.ndarray:
        """The array ``name``, computed once by its registered provider."""
        if name not in self.arrays:
            if name not in NEEDS:
                raise InvalidArgumentError(
                    "need", name, f"a registered need ({', '.join(sorted(NEEDS))})"
                )
            self.arrays[name] = NEEDS[name].provider(self)
        return self.arrays[name]


@dataclass(frozen=True)
class Need:
    """How to obtain one array: ``provider(context) -> ndarray`` (shape convention in the table)."""

    name: str
    provider: Callable[[Context], np.ndarray]
    description: str


@dataclass(frozen=True)
class Method:
    """One CAM method, described as data.

    Attributes
    ----------
    name : registry key (lower case).
    needs : names of the arrays the method consumes (see :data:`NEEDS`).
    math : the math-floor function of the method (documentation and provenance).
    compute : ``compute(context, t) -> (N, *S)`` map for target column ``t``, calling ``math``.
    paper : authors, year, title.
    equation : the equation (number) in the paper the map implements.
    defaults : default options (``relu`` is the paper's final-map ReLU).
    targeted : ``False`` for class-agnostic methods (Eigen-CAM): no targets are resolved.
    layered : ``False`` for methods that explain the input only (saliency, SmoothGrad, ...): no
        layer is resolved (``layer`` must be ``None``).
    """

    name: str
    needs: tuple[str, ...]
    math: Callable
    compute: Callable[[Context, int], np.ndarray]
    paper: str
    equation: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    targeted: bool = True
    layered: bool = True


NEEDS: dict[str, Need] = {}
METHODS: dict[str, Method] = {}


def register_need(need: Need, *, replace: bool = False) -> Need:
    """Add a need provider (``replace=True`` to override an existing one)."""
    if need.name in NEEDS and not replace:
        raise InvalidArgumentError(
            "need", need.name, "a name not registered yet (pass replace=True)"
        )
    NEEDS[need.name] = need
    return need


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add a method (``replace=True`` to override an existing one)."""
    key = method.name.lower()
    if key in METHODS and not replace:
        raise InvalidArgumentError(
            "method", method.name, "a name not registered yet (pass replace=True)"
        )
    METHODS[key] = method
    return method


def get_method(name: Any) -> Method:
    """Look a method up by name (case-insensitive, ``-``/``_`` ignored); suggests close names."""
    if isinstance(name, Method):
        return name
    key = name.lower().replace("-", "").replace("_", "") if isinstance(name, str) else None
    for k, m in METHODS.items():
        if k.replace("_", "") == key:
            return m
    close = difflib.get_close_matches(str(name).lower(), list(METHODS), n=3, cutoff=0.5)
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise InvalidArgumentError("method", name, f"one of {', '.join(sorted(METHODS))}{hint}")


# ---------------------------------------------------------------------------- built-in needs
register_need(
    Need("activations", F.provide_activations, "layer activations (N, K, *S), channels first")
)
register_need(Need("target_scores", F.provide_target_scores, "y^c of the unmodified inputs (N, T)"))
register_need(
    Need("class_weights", F.provide_class_weights, "GAP→linear class weights w^c (N, T, K)")
)
register_need(
    Need("masked_scores", F.provide_masked_scores, "f^c(X ∘ H^k) of the masked inputs (N, T, K)")
)
register_need(
    Need("baseline_scores", F.provide_baseline_scores, "f^c(X_b) of the Score-CAM baseline (N, T)")
)
register_need(
    Need("ablated_scores", F.provide_ablated_scores, "y^c_k with channel k ablated (N, T, K)")
)
register_need(
    Need(
        "ablation_base_scores",
        F.provide_ablation_base_scores,
        "y^c from the head model on the unablated activations (N, T)",
    )
)


# ---------------------------------------------------------------------------- built-in methods
def _cam(ctx: Context, t: int) -> np.ndarray:
    return M.cam(ctx.need("activations"), ctx.need("class_weights")[:, t], relu=ctx.options["relu"])


def _score_family(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    base = ctx.need("baseline_scores")[:, t] if o["baseline"] is not None else None
    return M.scorecam(
        ctx.need("activations"),
        ctx.need("masked_scores")[:, t],
        baseline_score=base,
        softmax=o["softmax"],
        relu=o["relu"],
    )


def _ablationcam(ctx: Context, t: int) -> np.ndarray:
    return M.ablationcam(
        ctx.need("activations"),
        ctx.need("ablated_scores")[:, t],
        ctx.need("ablation_base_scores")[:, t],
        relu=ctx.options["relu"],
    )


def _eigencam(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    return M.eigencam(ctx.need("activations"), center=o["center"], sign=o["sign"], relu=o["relu"])


_MASKS = dict(
    upsample_mode="linear",
    mask_order="upsample-then-normalize",
    mask_eps=0.0,
    baseline=None,
    score="probability",
    softmax=False,
    relu=True,
    variant="plain",
)

register_method(
    Method(
        "cam",
        ("activations", "class_weights"),
        M.cam,
        _cam,
        "Zhou, Khosla, Lapedriza, Oliva & Torralba, 2016, Learning Deep Features for Discriminative Localization",
        "Sec. 2, M_c(x, y) = Σ_k w^c_k f_k(x, y)",
        dict(relu=False),
    )
)
register_method(
    Method(
        "scorecam",
        ("activations", "masked_scores"),
        M.scorecam,
        _score_family,
        "Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu, 2020, Score-CAM: Score-Weighted Visual "
        "Explanations for Convolutional Neural Networks",
        "Definitions 1-2: α^c_k = f^c(X ∘ H^k) − f^c(X_b), L = ReLU(Σ_k α^c_k A^k)",
        dict(_MASKS),
    )
)
register_method(
    Method(
        "sscam",
        ("activations", "masked_scores"),
        M.scorecam,
        _score_family,
        "Wang, Naidu, Michael & Kundu, 2020, SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization",
        "α^c_k = softmax_k((1/n) Σ_i f^c(X ∘ (H^k + δ_i))), δ_i ~ N(0, σ²)",
        dict(_MASKS, score="logit", softmax=True, n_samples=10, sigma=2.0, seed=0, variant="noise"),
    )
)
register_method(
    Method(
        "iscam",
        ("activations", "masked_scores"),
        M.scorecam,
        _score_family,
        "Naidu, Ghosh, Maurya, Nayak K & Kundu, 2020, IS-CAM: Integrated Score-CAM for axiomatic-based explanations",
        "α^c_k = softmax_k((1/n) Σ_i f^c(X ∘ γ_i H^k)), γ_i = Σ_{j=1}^{i} j/n (Algorithm 1, "
        "accumulated mask, as torchcam's code; refcam.math.iscam_scales)",
        dict(
            _MASKS,
            score="logit",
            softmax=True,
            n_samples=10,
            variant="integrate",
            scales="accumulated",
        ),
    )
)
register_method(
    Method(
        "ablationcam",
        ("activations", "ablated_scores", "ablation_base_scores"),
        M.ablationcam,
        _ablationcam,
        "Ramaswamy & Desai, 2020, Ablation-CAM: Visual Explanations for Deep Convolutional Network via "
        "Gradient-free Localization",
        "w^c_k = (y^c − y^c_k) / y^c, L = ReLU(Σ_k w^c_k A^k)",
        dict(relu=True, ablation_value=0.0),
    )
)
register_method(
    Method(
        "eigencam",
        ("activations",),
        M.eigencam,
        _eigencam,
        "Muhammad & Yeasin, 2020, Eigen-CAM: Class Activation Map using Principal Components",
        "L = O v_1 (projection on the first right singular vector)",
        dict(relu=False, center=False, sign="sum"),
        targeted=False,
    )
)


# ---------------------------------------------------------------------------- gradient needs
register_need(Need("gradients", G.provide_gradients, "∂y^c/∂A^k at the layer (N, T, K, *S)"))
register_need(
    Need("gradient_weights", G.provide_gradient_weights, "Grad-CAM weights α_k^c (N, T, K)")
)
register_need(Need("input_gradients", G.provide_input_gradients, "∂y^c/∂X (N, T, C, *S_in)"))
register_need(
    Need(
        "guided_input_gradients",
        G.provide_guided_input_gradients,
        "guided-backpropagation ∂y^c/∂X (N, T, C, *S_in)",
    )
)
register_need(
    Need(
        "deconvnet_input_gradients",
        G.provide_deconvnet_input_gradients,
        "deconvnet reconstruction (N, T, C, *S_in)",
    )
)
register_need(
    Need(
        "smoothgrad_gradients",
        G.provide_smoothgrad_gradients,
        "∂y^c/∂X at the SmoothGrad noisy copies (N, n, T, C, *S_in)",
    )
)
register_need(
    Need(
        "path_gradients",
        G.provide_path_gradients,
        "∂y^c/∂X at the Integrated-Gradients path points (N, n_steps, T, C, *S_in)",
    )
)


# ---------------------------------------------------------------------------- gradient methods
def _gradcam(ctx: Context, t: int) -> np.ndarray:
    """Grad-CAM; with FD channel weights it is ``cam(A, α)`` with the ReLU (Grad-CAM generalises
    CAM: Eq. 2 is CAM's weighted sum with weights α), identical to ``gradcam(A, G)`` for any G
    whose spatial mean is α."""
    o = ctx.options
    if o["gradient_source"] == "fd" and o["fd_mode"] in ("auto", "channel"):
        return M.cam(ctx.need("activations"), ctx.need("gradient_weights")[:, t], relu=o["relu"])
    return M.gradcam(ctx.need("activations"), ctx.need("gradients")[:, t], relu=o["relu"])


def _layer_gradient(fn: Callable, *keys: str) -> Callable[[Context, int], np.ndarray]:
    def compute(ctx: Context, t: int) -> np.ndarray:
        kw = {k: ctx.options[k] for k in keys}
        return fn(ctx.need("activations"), ctx.need("gradients")[:, t], **kw)

    return compute


def _saliency(ctx: Context, t: int) -> np.ndarray:
    return M.saliency(ctx.need("input_gradients")[:, t], reduce=ctx.options["reduce"])


def _raw(need: str) -> Callable[[Context, int], np.ndarray]:
    def compute(ctx: Context, t: int) -> np.ndarray:
        g = ctx.need(need)[:, t]
        r = ctx.options["reduce"]
        return g if r == "none" else M.saliency(g, reduce=r)

    return compute


def _guided_gradcam(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    guided = ctx.need("guided_input_gradients")[:, t]  # first: fails fast for a non-VJP source
    cam = M.gradcam(ctx.need("activations"), ctx.need("gradients")[:, t], relu=True)
    size = ctx.model.input_spatial_shape(ctx.inputs)
    return M.guided_gradcam(guided, M.upsample(cam, size, mode=o["upsample_mode"]))


def _smoothgrad(ctx: Context, t: int) -> np.ndarray:
    return M.smoothgrad(ctx.need("smoothgrad_gradients")[:, :, t], square=ctx.options["square"])


def _integrated_gradients(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    x = ctx.model.to_channels_first(ctx.inputs)
    return M.integrated_gradients(ctx.need("path_gradients")[:, :, t], x, o["baseline"], o["rule"])


#: options of every method computed from layer gradients
_GRAD = dict(gradient_source="vjp", fd_mode="auto", gradient_output=None)
#: options of the input-gradient methods (``reduce="none"`` keeps the (N, C, *S_in) gradient)
_INPUT = dict(gradient_source="vjp")
_SELVARAJU = (
    "Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, 2017, Grad-CAM: Visual Explanations from "
    "Deep Networks via Gradient-based Localization"
)

for _name, _fn, _paper, _eq, _defaults in [
    (
        "gradcampp",
        M.gradcampp,
        "Chattopadhay, Sarkar, Howlader & Balasubramanian, 2018, Grad-CAM++: Improved Visual "
        "Explanations for Deep Convolutional Networks (arXiv:1710.11063)",
        "Eqs. 5 and 19 (weights), Eq. 20: L = ReLU(Σ_k w^c_k A^k)",
        dict(relu=True, eps=0.0),
    ),
    (
        "xgradcam",
        M.xgradcam,
        "Fu, Hu, Dong, Guo, Gao & Li, 2020, Axiom-based Grad-CAM: Towards Accurate Visualization "
        "and Explanation of CNNs (arXiv:2008.02312)",
        "α^c_k = Σ_xy (A^k(x,y) / Σ_xy A^k(x,y)) ∂S_c/∂A^k(x,y), L = Σ_k α^c_k A^k "
        "(equation number not verified)",
        dict(relu=True, eps=0.0),
    ),
    (
        "layercam",
        M.layercam,
        "Jiang, Zhang, Hou, Cheng & Wei, 2021, LayerCAM: Exploring Hierarchical Class Activation "
        "Maps for Localization",
        "M^c = ReLU(Σ_k ReLU(∂y^c/∂A^k) ⊙ A^k) (equation number not verified)",
        dict(relu=True),
    ),
    (
        "hirescam",
        M.hirescam,
        "Draelos & Carin, 2020, Use HiResCAM instead of Grad-CAM for faithful explanations of "
        "convolutional neural networks (arXiv:2011.08891)",
        "Ã^c = Σ_k ∂y^c/∂A^k ⊙ A^k (equation number not verified)",
        dict(relu=False),
    ),
    (
        "gradcam_elementwise",
        M.gradcam_elementwise,
        "pytorch-grad-cam GradCAMElementWise (no paper of its own); Grad-CAM: " + _SELVARAJU,
        "L = Σ_k ReLU(∂y^c/∂A^k ⊙ A^k), then ReLU",
        dict(relu=True),
    ),
    (
        "eigengradcam",
        M.eigengradcam,
        "pytorch-grad-cam EigenGradCAM (no paper of its own); Eigen-CAM: Muhammad & Yeasin, 2020, "
        "Eigen-CAM: Class Activation Map using Principal Components",
        "L = O' v'_1 with O'_(ij),k = A^k_ij ∂y^c/∂A^k_ij",
        dict(relu=False, center=False, sign="sum"),
    ),
]:
    register_method(
        Method(
            _name,
            ("activations", "gradients"),
            _fn,
            _layer_gradient(_fn, *_defaults),
            _paper,
            _eq,
            dict(_GRAD, **_defaults),
        )
    )

register_method(
    Method(
        "gradcam",
        ("activations", "gradients"),
        M.gradcam,
        _gradcam,
        _SELVARAJU,
        "Eq. 1: α_k^c = (1/Z) Σ_ij ∂y^c/∂A^k_ij; Eq. 2: L = ReLU(Σ_k α_k^c A^k)",
        dict(_GRAD, relu=True),
    )
)
register_method(
    Method(
        "saliency",
        ("input_gradients",),
        M.saliency,
        _saliency,
        "Simonyan, Vedaldi & Zisserman, 2014, Deep Inside Convolutional Networks: Visualising Image "
        "Classification Models and Saliency Maps",
        "Eq. 4: w = ∂S_c/∂I; Sect. 3.1: M_ij = max_c |w_h(i,j,c)|",
        dict(_INPUT, reduce="max-abs"),
        layered=False,
    )
)
register_method(
    Method(
        "guided_backprop",
        ("guided_input_gradients",),
        M.saliency,
        _raw("guided_input_gradients"),
        "Springenberg, Dosovitskiy, Brox & Riedmiller, 2015, Striving for Simplicity: The All "
        "Convolutional Net",
        "Fig. 1 rule at every ReLU: R^l = [f^l > 0] · [R^{l+1} > 0] · R^{l+1} (no equation number)",
        dict(_INPUT, reduce="none"),
        layered=False,
    )
)
register_method(
    Method(
        "deconvnet",
        ("deconvnet_input_gradients",),
        M.saliency,
        _raw("deconvnet_input_gradients"),
        "Zeiler & Fergus, 2014, Visualizing and Understanding Convolutional Networks",
        "Sect. 2.1 'Rectification': R^l = ReLU(R^{l+1}) at every ReLU (no equation number)",
        dict(_INPUT, reduce="none"),
        layered=False,
    )
)
register_method(
    Method(
        "guided_gradcam",
        ("activations", "gradients", "guided_input_gradients"),
        M.guided_gradcam,
        _guided_gradcam,
        _SELVARAJU,
        "Sect. 3 'Guided Grad-CAM': guided backprop ⊙ Up(L^c_Grad-CAM) (bilinear upsampling)",
        dict(gradient_source="vjp", upsample_mode="linear"),
    )
)
register_method(
    Method(
        "smoothgrad",
        ("smoothgrad_gradients",),
        M.smoothgrad,
        _smoothgrad,
        "Smilkov, Thorat, Kim, Viégas & Wattenberg, 2017, SmoothGrad: removing noise by adding noise",
        "M̂_c(x) = (1/n) Σ_i M_c(x + N(0, σ²)), σ = noise_level·(max x − min x) "
        "(Eq. 3 by recollection, not verified)",
        dict(gradient_source="vjp", n_samples=50, noise_level=0.15, seed=0, square=False),
        layered=False,
    )
)
register_method(
    Method(
        "integrated_gradients",
        ("path_gradients",),
        M.integrated_gradients,
        _integrated_gradients,
        "Sundararajan, Taly & Yan, 2017, Axiomatic Attribution for Deep Networks",
        "Eq. 1: IG_i(x) = (x_i − x'_i) ∫_0^1 ∂F(x' + α(x − x'))/∂x_i dα; Eq. 3 (right Riemann sum) "
        "is rule='riemann-right'",
        dict(gradient_source="vjp", baseline=0.0, n_steps=50, rule="gauss-legendre"),
        layered=False,
    )
)


# ---------------------------------------------------------------------------- FullGrad
register_need(
    Need(
        "bias_gradients",
        G.provide_bias_gradients,
        "FullGrad bias-gradients ∂y^c/∂z ⊙ b per Conv/BatchNorm output z: {name: (N, T, K, *S)}; "
        "also fills input_gradients (same VJP run)",
    )
)


def _fullgrad(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    fb = ctx.need("bias_gradients")  # first: the same VJP run also gives the input gradients
    return M.fullgrad(
        ctx.need("input_gradients")[:, t],
        ctx.model.to_channels_first(ctx.inputs),
        [v[:, t] for v in fb.values()],
        upsample_mode=o["upsample_mode"],
        normalize_over=o["normalize_over"],
        eps=o["eps"],
    )


register_method(
    Method(
        "fullgrad",
        ("bias_gradients", "input_gradients"),
        M.fullgrad,
        _fullgrad,
        "Srinivas & Fleuret, 2019, Full-Gradient Representation for Neural Network Visualization "
        "(NeurIPS 2019, arXiv:1905.00780)",
        "Sect. 4: S_f(x) = ψ(∇_x f(x) ⊙ x) + Σ_{l∈L} Σ_{c∈c_l} ψ(f^b(x)_c), f^b = ∇_z f ⊙ b, "
        "ψ = abs, min-max, upsampling (equation number not verified)",
        dict(gradient_source="vjp", upsample_mode="linear-align-corners", normalize_over="layer",
             eps=0.0),
        layered=False,
    )
)

from . import _methods14  # noqa: E402,F401  (issue 14 methods: FEM, RandomCAM, KPCA-CAM, Seg-Eigen-CAM, DFF)
