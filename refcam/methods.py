"""The built-in methods, each declared once (:func:`refcam.registry.method`).

A declaration holds the method's needs (arrays such as ``"activations"``, ``"class_weights"``,
``"masked_scores"``), its math-floor function, paper and equation, and its typed options
(:class:`~refcam.registry.Option`, choices taken from the math floor's constants).  The needs'
providers register themselves in :mod:`refcam._forward` and :mod:`refcam._gradient` (imported
by :mod:`refcam.explanation`; this module imports the math floor only, so :mod:`refcam.presets`
and :mod:`refcam.conformance` read the declarations without loading onnx).
:func:`refcam.explain` validates the options with the declaration, resolves the needs and calls
``compute``.  Array conventions of the needs (``T`` = targets per sample):

=============================  ========================  ==========================================
need                           shape                     meaning
=============================  ========================  ==========================================
``activations``                ``(N, K, *S)``            layer activations ``A^k`` (channels first)
``target_scores``              ``(N, T)``                ``y^c`` of the unmodified inputs
``class_weights``              ``(N, T, K)``             row ``w^c`` of the GAP → linear head
``masked_scores``              ``(N, T, K)``             ``f^c(X ∘ H^k)`` (Score-CAM)
``noisy_masked_scores``        ``(N, T, n, K)``          ``f^c(X ∘ (H^k + δ^k_m))`` (SS-CAM)
``scaled_masked_scores``       ``(N, T, n, K)``          ``f^c(X ∘ γ_i H^k)`` (IS-CAM)
``baseline_scores``            ``(N, T)``                ``f^c(X_b)`` of the Score-CAM baseline input
``ablated_scores``             ``(N, T, K)``             ``y^c_k``, channel ``k`` ablated (head model)
``ablation_base_scores``       ``(N, T)``                ``y^c`` from the head on unablated activations
``gradients``                  ``(N, T, K, *S)``         ``∂y^c/∂A^k`` (``gradient_source``: vjp/fd/exported)
``gradient_weights``           ``(N, T, K)``             Grad-CAM ``α_k^c = (1/Z) Σ_ij ∂y^c/∂A^k_ij``
``input_gradients``            ``(N, T, C, *S_in)``      ``∂y^c/∂X`` (plain rules)
``guided_input_gradients``     ``(N, T, C, *S_in)``      guided-backprop ``∂y^c/∂X``
``deconvnet_input_gradients``  ``(N, T, C, *S_in)``      deconvnet reconstruction
``smoothgrad_gradients``       ``(N, n, T, C, *S_in)``   ``∂y^c/∂X`` at the SmoothGrad noisy copies
``path_gradients``             ``(N, m, T, C, *S_in)``   ``∂y^c/∂X`` at the Integrated-Gradients points
``bias_gradients``             dict → ``(N, T, K, *S)``  FullGrad ``∂y^c/∂z ⊙ b`` per Conv/BatchNorm
=============================  ========================  ==========================================

>>> sorted(METHODS)  # doctest: +NORMALIZE_WHITESPACE
['ablationcam', 'cam', 'deconvnet', 'dff', 'eigencam', 'eigengradcam', 'fem', 'finercam', 'fullgrad',
 'gradcam', 'gradcam_elementwise', 'gradcampp', 'guided_backprop', 'guided_gradcam', 'hirescam',
 'integrated_gradients', 'iscam', 'kpcacam', 'layercam', 'randomcam', 'refinecam', 'saliency', 'scorecam',
 'segeigencam', 'sess',
 'shapleycam', 'smoothgrad', 'smoothgradcampp', 'sscam', 'xgradcam']
>>> METHODS["cam"].needs
('activations', 'class_weights')
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import math as M
from .registry import (  # noqa: F401  (Need: re-exported for `from refcam.methods import ...`)
    METHODS,
    NEEDS,
    Context,
    Method,
    Need,
    Option,
    boolean,
    either,
    finite_real,
    get_method,
    method,
    nonnegative,
    nonnegative_int,
    one_of,
    positive_int,
    register_method,
    register_need,
    text,
    unchecked,
)

__all__ = ["METHODS", "NEEDS", "get_method", "register_method", "register_need"]


# ---------------------------------------------------------------------------- the options
#: ``score``: what ``f^c`` is, the logit or the softmax probability of the class.
SCORE_KINDS = ("logit", "probability")
#: Score-CAM ``baseline``: no baseline, an all-zero input, the unmasked input.
SCORECAM_BASELINES = (None, "zeros", "input")
#: ``gradient_source`` (see :mod:`refcam._gradient`).
GRADIENT_SOURCES = ("vjp", "fd", "exported")
#: ``fd_mode`` of ``gradient_source="fd"``: channel sums (Grad-CAM only) or every element.
FD_MODES = ("auto", "channel", "full")

def relu(default: bool) -> Option:
    """``relu``: the ReLU on the final map; the default is what the method's paper writes."""
    return Option("relu", default, boolean, "ReLU on the final map")


UPSAMPLE_MODE = Option("upsample_mode", "linear", one_of(*M.UPSAMPLE_MODES),
                       "refcam.math.upsample mode")
MASK_ORDER = Option("mask_order", "upsample-then-normalize", one_of(*M.MASK_ORDERS),
                    "where the per-channel min-max of the Score-CAM masks happens")
MASK_EPS = Option("mask_eps", 0.0, nonnegative, "additive eps of the masks' min-max (0: guard)")
SCORE = Option("score", "probability", one_of(*SCORE_KINDS),
               "f^c: the logit or the softmax probability of the class")
SOFTMAX = Option("softmax", False, boolean, "channel softmax of the Score-CAM weights")
SCORECAM_BASELINE = Option("baseline", None, one_of(*SCORECAM_BASELINES),
                           "f^c(X_b) subtracted: none, an all-zero input, the unmasked input")
N_SAMPLES = Option("n_samples", 10, positive_int, "noise samples")
STD = Option("std", 2.0, nonnegative, "σ of the SS-CAM mask noise")
N_STEPS = Option("n_steps", 10, positive_int, "steps of the path")
ISCAM_SCHEDULE = Option("schedule", "accumulated", one_of(*M.ISCAM_SCHEDULES),
                        "IS-CAM mask scales γ_i (refcam.math.iscam_scales)")
ABLATION_VALUE = Option(
    "ablation_value", 0.0,
    either(finite_real, one_of(*M.ABLATION_VALUES),
           expected="a finite real number or one of " + ", ".join(map(repr, M.ABLATION_VALUES))),
    "value an ablated channel is set to (refcam.math.ablation_values)",
)
CENTER = Option("center", False, boolean, "centre the activations before the SVD")
SIGN = Option("sign", "sum", one_of(*M.SIGN_RULES), "sign rule of the first singular vector")
EPS = Option("eps", 0.0, nonnegative, "additive eps of a library's division (0: exact guard)")
GRADIENT_SOURCE = Option("gradient_source", "vjp", one_of(*GRADIENT_SOURCES),
                         "where the gradients come from (refcam._gradient)")
FD_MODE = Option("fd_mode", "auto", one_of(*FD_MODES),
                 "finite differences: channel sums or every element")
GRADIENT_OUTPUT = Option("gradient_output", None, text,
                         "model output holding ∂y^c/∂A (gradient_source='exported')")
REDUCE = Option("reduce", "max-abs", one_of(*M.SALIENCY_REDUCTIONS),
                "channel reduction of the input gradient (refcam.math.saliency)")
NOISE_LEVEL = Option("noise_level", 0.15, nonnegative, "SmoothGrad σ / (max x − min x)")
SQUARE = Option("square", False, boolean, "SmoothGrad-Squared")
IG_BASELINE = Option("baseline", 0.0, unchecked, "Integrated-Gradients baseline x' (checked by the math)")
RULE = Option("rule", "gauss-legendre", one_of(*M.INTEGRATION_RULES),
              "quadrature of the path integral")
NORMALIZE_OVER = Option("normalize_over", "layer", one_of(*M.FULLGRAD_NORMALIZE_OVER),
                        "FullGrad ψ min-max over a layer or per channel")
SEED = Option("seed", 0, nonnegative_int, "random seed")
EIGEN_SMOOTH = Option("eigen_smooth", False, boolean,
                      "map = first principal component of w ⊙ A, not Σ_k w_k A^k (refcam.math.eigen_smooth)")
AUG_SMOOTH = Option("aug_smooth", False, boolean,
                    "mean of the maps of the inputs flipped × scaled by 0.9, 1, 1.1, each flipped back "
                    "(refcam.math.AUG_TRANSFORMS, aug_smooth)")

#: options of every method computed from the layer gradients
LAYER_GRADIENT_OPTIONS = (GRADIENT_SOURCE, FD_MODE, GRADIENT_OUTPUT)
#: the peers' smoothing options (pytorch-grad-cam ``BaseCAM.__call__``), applied by
#: :func:`refcam.explain` to any method declaring them; ``eigen_smooth`` needs ``weights=``
SMOOTHING = (EIGEN_SMOOTH, AUG_SMOOTH)
#: options of the Score-CAM family
MASK_OPTIONS = (UPSAMPLE_MODE, MASK_ORDER, MASK_EPS, SCORE, SOFTMAX, SCORECAM_BASELINE, relu(True))


# ---------------------------------------------------------------------------- forward-only methods
@method(
    "cam",
    needs=("activations", "class_weights"),
    math=M.cam,
    paper="Zhou, Khosla, Lapedriza, Oliva & Torralba, 2016, Learning Deep Features for "
    "Discriminative Localization",
    equation="Sec. 2, M_c(x, y) = Σ_k w^c_k f_k(x, y)",
    options=(relu(False),),
)
def _cam(ctx: Context, t: int) -> np.ndarray:
    return M.cam(ctx.need("activations"), ctx.need("class_weights")[:, t], relu=ctx.options["relu"])


def _baseline_score(ctx: Context, t: int) -> np.ndarray | None:
    return ctx.need("baseline_scores")[:, t] if ctx.options["baseline"] is not None else None


def _score_weights(fn: Callable, scores: str, ctx: Context, t: int) -> np.ndarray:
    """``fn(scores, baseline, softmax=...)``: the channel weights of the Score-CAM family."""
    return fn(ctx.need(scores)[:, t], _baseline_score(ctx, t), softmax=ctx.options["softmax"])


@method(
    "scorecam",
    needs=("activations", "masked_scores"),
    math=M.scorecam,
    paper="Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu, 2020, Score-CAM: Score-Weighted "
    "Visual Explanations for Convolutional Neural Networks",
    equation="Definitions 4-5, eqs. 6, 9-10: α^c_k = f^c(X ∘ H^k) − f^c(X_b), "
    "L = ReLU(Σ_k α^c_k A^k)",
    options=(*MASK_OPTIONS, *SMOOTHING),
    weights=lambda ctx, t: _score_weights(M.scorecam_weights, "masked_scores", ctx, t),
)
def _scorecam(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    return M.scorecam(ctx.need("activations"), ctx.need("masked_scores")[:, t],
                      baseline_score=_baseline_score(ctx, t), softmax=o["softmax"], relu=o["relu"])


def _sampled(fn: Callable, scores: str) -> Callable[[Context, int], np.ndarray]:
    """SS-CAM / IS-CAM: ``fn(A, scores (N, n, K), ...)`` on the per-draw scores of target ``t``."""

    def compute(ctx: Context, t: int) -> np.ndarray:
        o = ctx.options
        return fn(ctx.need("activations"), ctx.need(scores)[:, t],
                  baseline_score=_baseline_score(ctx, t), softmax=o["softmax"], relu=o["relu"])

    return compute


# SS-CAM and IS-CAM: the Score-CAM options with logit scores and the channel softmax (torchcam)
_SAMPLED_MASK_OPTIONS = (*MASK_OPTIONS[:3], SCORE.but("logit"), SOFTMAX.but(True), *MASK_OPTIONS[5:])
for _fn, _weights, _need, _paper, _eq, _options in [
    (
        M.sscam,
        M.sscam_weights,
        "noisy_masked_scores",
        "Wang, Naidu, Michael & Kundu, 2020, SS-CAM: Smoothed Score-CAM for Sharper Visual "
        "Feature Localization",
        "α^c_k = softmax_k((1/n) Σ_m f^c(X ∘ (H^k + δ_m))), δ_m ~ N(0, σ²) "
        "(refcam.math.sscam_masks, sscam_weights)",
        (N_SAMPLES, STD, SEED),
    ),
    (
        M.iscam,
        M.iscam_weights,
        "scaled_masked_scores",
        "Naidu, Ghosh, Maurya, Nayak K & Kundu, 2020, IS-CAM: Integrated Score-CAM for "
        "axiomatic-based explanations",
        "α^c_k = softmax_k((1/n) Σ_i f^c(X ∘ γ_i H^k)), γ_i = Σ_{j=1}^{i} j/n (Algorithm 1, "
        "accumulated mask, as torchcam's code; refcam.math.iscam_scales)",
        (N_STEPS, ISCAM_SCHEDULE),
    ),
]:
    register_method(Method(
        name=_fn.__name__, needs=("activations", _need), math=_fn, compute=_sampled(_fn, _need),
        paper=_paper, equation=_eq, options=(*_SAMPLED_MASK_OPTIONS, *_options, *SMOOTHING),
        weights=lambda ctx, t, fn=_weights, need=_need: _score_weights(fn, need, ctx, t),
    ))


@method(
    "ablationcam",
    needs=("activations", "ablated_scores", "ablation_base_scores"),
    math=M.ablationcam,
    paper="Desai & Ramaswamy, 2020, Ablation-CAM: Visual Explanations for Deep Convolutional "
    "Network via Gradient-free Localization",
    equation="w^c_k = (y^c − y^c_k) / y^c, L = ReLU(Σ_k w^c_k A^k)",
    options=(relu(True), ABLATION_VALUE, *SMOOTHING),
    weights=lambda ctx, t: M.ablationcam_weights(ctx.need("ablated_scores")[:, t],
                                                 ctx.need("ablation_base_scores")[:, t]),
)
def _ablationcam(ctx: Context, t: int) -> np.ndarray:
    return M.ablationcam(ctx.need("activations"), ctx.need("ablated_scores")[:, t],
                         ctx.need("ablation_base_scores")[:, t], relu=ctx.options["relu"])


@method(
    "eigencam",
    needs=("activations",),
    math=M.eigencam,
    paper="Muhammad & Yeasin, 2020, Eigen-CAM: Class Activation Map using Principal Components",
    equation="L = O v_1 (projection on the first right singular vector)",
    options=(
        relu(False), CENTER, SIGN,
        Option("component", 1, positive_int, "v_c projected on: 1 = the paper's first direction"),
        AUG_SMOOTH,
    ),
    targeted=False,
)
def _eigencam(ctx: Context, t: int) -> np.ndarray:
    return M.eigencam(ctx.need("activations"), **own_options(ctx))


# ---------------------------------------------------------------------------- gradient methods
_SELVARAJU = (
    "Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, 2017, Grad-CAM: Visual Explanations from "
    "Deep Networks via Gradient-based Localization"
)


@method(
    "gradcam",
    needs=("activations", "gradients"),
    math=M.gradcam,
    paper=_SELVARAJU,
    equation="Eq. 1: α_k^c = (1/Z) Σ_ij ∂y^c/∂A^k_ij; Eq. 2: L = ReLU(Σ_k α_k^c A^k)",
    options=(*LAYER_GRADIENT_OPTIONS, relu(True), *SMOOTHING),
    weights=lambda ctx, t: (ctx.need("gradient_weights")[:, t] if _fd_channels(ctx)
                            else M.gradient_weights(ctx.need("gradients")[:, t])),
)
def _gradcam(ctx: Context, t: int) -> np.ndarray:
    """Grad-CAM; with FD channel weights it is ``cam(A, α)`` with the ReLU (Grad-CAM generalises
    CAM: Eq. 2 is CAM's weighted sum with weights α), identical to ``gradcam(A, G)`` for any G
    whose spatial mean is α."""
    o = ctx.options
    if _fd_channels(ctx):
        return M.cam(ctx.need("activations"), ctx.need("gradient_weights")[:, t], relu=o["relu"])
    return M.gradcam(ctx.need("activations"), ctx.need("gradients")[:, t], relu=o["relu"])


def _fd_channels(ctx: Context) -> bool:
    """Finite differences of the channel sums give Grad-CAM's α directly (``gradient_weights``)."""
    return ctx.options["gradient_source"] == "fd" and ctx.options["fd_mode"] in ("auto", "channel")


#: options read by the providers or by :func:`refcam.explain`, not by a method's math function
_NOT_MATH = {o.name for o in (*LAYER_GRADIENT_OPTIONS, *SMOOTHING)}


def own_options(ctx: Context) -> dict:
    """The options of the call that are keywords of the method's math function."""
    return {k: v for k, v in ctx.options.items() if k not in _NOT_MATH}


def _layer_gradient(fn: Callable) -> Callable[[Context, int], np.ndarray]:
    """``fn(A, ∂y^c/∂A, **the method's own options)`` (every option but the gradient source's)."""

    def compute(ctx: Context, t: int) -> np.ndarray:
        return fn(ctx.need("activations"), ctx.need("gradients")[:, t], **own_options(ctx))

    return compute


def _gradient_weights(fn: Callable) -> Callable[[Context, int], np.ndarray]:
    """``fn(A, ∂y^c/∂A, options)``: the weights ``w`` with ``w ⊙ A`` summed by the method's map."""
    return lambda ctx, t: fn(ctx.need("activations"), ctx.need("gradients")[:, t], ctx.options)


# weights: the factor w of w ⊙ A that the method's map sums over k (its math docstring), or None
# (Eigen-Grad-CAM projects already: pytorch-grad-cam ignores eigen_smooth there, refcam refuses it)
for _fn, _weights, _paper, _eq, _options in [
    (
        M.gradcampp,
        lambda a, g, o: M.gradcampp_weights(a, g, eps=o["eps"]),
        "Chattopadhay, Sarkar, Howlader & Balasubramanian, 2018, Grad-CAM++: Improved Visual "
        "Explanations for Deep Convolutional Networks (arXiv:1710.11063)",
        "Eqs. 5 and 19 (weights), Eq. 20: L = ReLU(Σ_k w^c_k A^k)",
        (relu(True), EPS),
    ),
    (
        M.xgradcam,
        lambda a, g, o: M.xgradcam_weights(a, g, eps=o["eps"]),
        "Fu, Hu, Dong, Guo, Gao & Li, 2020, Axiom-based Grad-CAM: Towards Accurate Visualization "
        "and Explanation of CNNs (arXiv:2008.02312)",
        "α^c_k = Σ_xy (A^k(x,y) / Σ_xy A^k(x,y)) ∂S_c/∂A^k(x,y), L = Σ_k α^c_k A^k "
        "(equation number not verified)",
        (relu(True), EPS),
    ),
    (
        M.layercam,
        lambda a, g, o: M.relu(g),                                  # ReLU(∂y^c/∂A^k)
        "Jiang, Zhang, Hou, Cheng & Wei, 2021, LayerCAM: Exploring Hierarchical Class Activation "
        "Maps for Localization",
        "M^c = ReLU(Σ_k ReLU(∂y^c/∂A^k) ⊙ A^k) (equation number not verified)",
        (relu(True),),
    ),
    (
        M.hirescam,
        lambda a, g, o: g,                                          # ∂y^c/∂A^k
        "Draelos & Carin, 2020, Use HiResCAM instead of Grad-CAM for faithful explanations of "
        "convolutional neural networks (arXiv:2011.08891)",
        "Ã^c = Σ_k ∂y^c/∂A^k ⊙ A^k (equation number not verified)",
        (relu(False),),
    ),
    (
        M.gradcam_elementwise,
        lambda a, g, o: np.where(a * g > 0, g, 0).astype(g.dtype),  # w ⊙ A = ReLU(g ⊙ A)
        "pytorch-grad-cam GradCAMElementWise (no paper of its own); Grad-CAM: " + _SELVARAJU,
        "L = Σ_k ReLU(∂y^c/∂A^k ⊙ A^k), then ReLU",
        (relu(True),),
    ),
    (
        M.eigengradcam,
        None,
        "pytorch-grad-cam EigenGradCAM (no paper of its own); Eigen-CAM: Muhammad & Yeasin, 2020, "
        "Eigen-CAM: Class Activation Map using Principal Components",
        "L = O' v'_1 with O'_(ij),k = A^k_ij ∂y^c/∂A^k_ij",
        (relu(False), CENTER, SIGN),
    ),
]:
    register_method(Method(
        name=_fn.__name__, needs=("activations", "gradients"), math=_fn,
        compute=_layer_gradient(_fn), paper=_paper, equation=_eq,
        options=(*LAYER_GRADIENT_OPTIONS, *_options, *(SMOOTHING if _weights else (AUG_SMOOTH,))),
        weights=_weights and _gradient_weights(_weights),
    ))


@method(
    "saliency",
    needs=("input_gradients",),
    math=M.saliency,
    paper="Simonyan, Vedaldi & Zisserman, 2014, Deep Inside Convolutional Networks: Visualising "
    "Image Classification Models and Saliency Maps",
    equation="Eq. 4: w = ∂S_c/∂I; Sect. 3.1: M_ij = max_c |w_h(i,j,c)|",
    options=(GRADIENT_SOURCE, REDUCE),
    layered=False,
)
def _saliency(ctx: Context, t: int) -> np.ndarray:
    return M.saliency(ctx.need("input_gradients")[:, t], reduce=ctx.options["reduce"])


def _raw(name: str) -> Callable[[Context, int], np.ndarray]:
    def compute(ctx: Context, t: int) -> np.ndarray:
        g = ctx.need(name)[:, t]
        r = ctx.options["reduce"]
        return g if r == "none" else M.saliency(g, reduce=r)

    return compute


register_method(Method(
    name="guided_backprop",
    needs=("guided_input_gradients",),
    math=M.saliency,
    compute=_raw("guided_input_gradients"),
    paper="Springenberg, Dosovitskiy, Brox & Riedmiller, 2015, Striving for Simplicity: The All "
    "Convolutional Net",
    equation="Fig. 1 rule at every ReLU: R^l = [f^l > 0] · [R^{l+1} > 0] · R^{l+1} "
    "(no equation number)",
    options=(GRADIENT_SOURCE, REDUCE.but("none")),
    layered=False,
))
register_method(Method(
    name="deconvnet",
    needs=("deconvnet_input_gradients",),
    math=M.saliency,
    compute=_raw("deconvnet_input_gradients"),
    paper="Zeiler & Fergus, 2014, Visualizing and Understanding Convolutional Networks",
    equation="Sect. 2.1 'Rectification': R^l = ReLU(R^{l+1}) at every ReLU (no equation number)",
    options=(GRADIENT_SOURCE, REDUCE.but("none")),
    layered=False,
))


@method(
    "guided_gradcam",
    needs=("activations", "gradients", "guided_input_gradients"),
    math=M.guided_gradcam,
    paper=_SELVARAJU,
    equation="Sect. 3 'Guided Grad-CAM': guided backprop ⊙ Up(L^c_Grad-CAM) (bilinear upsampling)",
    options=(*LAYER_GRADIENT_OPTIONS, UPSAMPLE_MODE),
)
def _guided_gradcam(ctx: Context, t: int) -> np.ndarray:
    guided = ctx.need("guided_input_gradients")[:, t]  # first: fails fast for a non-VJP source
    cam = M.gradcam(ctx.need("activations"), ctx.need("gradients")[:, t], relu=True)
    size = ctx.model.input_spatial_shape(ctx.inputs)
    return M.guided_gradcam(guided, M.upsample(cam, size, mode=ctx.options["upsample_mode"]))


@method(
    "smoothgrad",
    needs=("smoothgrad_gradients",),
    math=M.smoothgrad,
    paper="Smilkov, Thorat, Kim, Viégas & Wattenberg, 2017, SmoothGrad: removing noise by adding "
    "noise",
    equation="M̂_c(x) = (1/n) Σ_i M_c(x + N(0, σ²)), σ = noise_level·(max x − min x) "
    "(Eq. 3 by recollection, not verified)",
    options=(GRADIENT_SOURCE, N_SAMPLES.but(50), NOISE_LEVEL, SEED, SQUARE),
    layered=False,
)
def _smoothgrad(ctx: Context, t: int) -> np.ndarray:
    return M.smoothgrad(ctx.need("smoothgrad_gradients")[:, :, t], square=ctx.options["square"])


@method(
    "integrated_gradients",
    needs=("path_gradients",),
    math=M.integrated_gradients,
    paper="Sundararajan, Taly & Yan, 2017, Axiomatic Attribution for Deep Networks",
    equation="Eq. 1: IG_i(x) = (x_i − x'_i) ∫_0^1 ∂F(x' + α(x − x'))/∂x_i dα; Eq. 3 (right Riemann "
    "sum) is rule='riemann-right'",
    options=(GRADIENT_SOURCE, IG_BASELINE, N_STEPS.but(50), RULE),
    layered=False,
)
def _integrated_gradients(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    x = ctx.model.to_channels_first(ctx.inputs)
    return M.integrated_gradients(ctx.need("path_gradients")[:, :, t], x, o["baseline"], o["rule"])


@method(
    "fullgrad",
    needs=("bias_gradients", "input_gradients"),
    math=M.fullgrad,
    paper="Srinivas & Fleuret, 2019, Full-Gradient Representation for Neural Network "
    "Visualization (NeurIPS 2019, arXiv:1905.00780)",
    equation="Sect. 4: S_f(x) = ψ(∇_x f(x) ⊙ x) + Σ_{l∈L} Σ_{c∈c_l} ψ(f^b(x)_c), f^b = ∇_z f ⊙ b, "
    "ψ = abs, min-max, upsampling (equation number not verified)",
    options=(GRADIENT_SOURCE, UPSAMPLE_MODE.but("linear-align-corners"), NORMALIZE_OVER, EPS, AUG_SMOOTH),
    layered=False,
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

from . import _methods14  # noqa: E402,F401  (issue 14: FEM, RandomCAM, KPCA-CAM, DFF, Seg-Eigen-CAM, ShapleyCAM, Finer-CAM, Smooth Grad-CAM++)
