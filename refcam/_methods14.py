"""Declarations of the methods of issue 14 on the registry (:mod:`refcam.registry`): FEM, RandomCAM,
KPCA-CAM, Seg-Eigen-CAM, Deep Feature Factorization, ShapleyCAM, Finer-CAM, Smooth Grad-CAM++,
and the providers of their new needs (``hessian_vector_products``, ``finer_gradients``,
``noisy_layer_gradients``).

The math lives in :mod:`refcam.math.forward_maps`, :mod:`refcam.math.projections`,
:mod:`refcam.math.factorization` and :mod:`refcam.math.gradient_variants`; second-order gradients
in :mod:`refcam.autodiff.second_order`.  Imported by :mod:`refcam.methods` (module level: math
and registry only; the providers import the adapter lazily).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import math as M
from .errors import InvalidArgumentError, ModelError, TargetError
from .methods import (
    AUG_SMOOTH, CENTER, LAYER_GRADIENT_OPTIONS, N_SAMPLES, SEED, SIGN, SMOOTHING, STD, UPSAMPLE_MODE, relu,
)
from .registry import Context, Option, boolean, finite_real, method, need, nonnegative, one_of, positive_int

__all__: list[str] = []


def _optional_nonnegative(value: Any, name: str) -> Any:
    return None if value is None else nonnegative(value, name)


def _ranks(value: Any, name: str) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidArgumentError(name, value, "a sequence of non-negative ints (ranks)")
    out = tuple(value)
    if not out or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0
                      for v in out):
        raise InvalidArgumentError(name, value, "a non-empty sequence of non-negative ints (ranks)")
    return tuple(int(v) for v in out)


K_SIGMA = Option("k", 2.0, finite_real, "FEM threshold μ + k σ")
KERNEL = Option("kernel", "sigmoid", one_of(*M.KERNELS), "kernel of KPCA-CAM (refcam.math.kernel_matrix)")
GAMMA = Option("gamma", None, _optional_nonnegative, "kernel γ (None: 1/K)")
DEGREE = Option("degree", 3, positive_int, "degree of the polynomial kernel")
COEF0 = Option("coef0", 1.0, finite_real, "c_0 of the polynomial and sigmoid kernels")
N_COMPONENTS = Option("n_components", 5, positive_int, "number of concepts (NMF rank)")
MAX_ITER = Option("max_iter", 200, positive_int, "NMF iterations")
TOL = Option("tol", 1e-4, nonnegative, "NMF stopping tolerance (relative violation)")
CONCEPT_SCORES = Option("concept_scores", True, boolean,
                        "class scores of every concept through the GAP -> linear head")
ALPHA = Option("alpha", 1.0, finite_real, "Finer-CAM comparison strength γ")
COMPARISONS = Option("comparisons", (1, 2, 3), _ranks, "ranks of the compared classes by logit distance")
FIRST_ORDER = Option("first_order", "mean", one_of(*M.SGCPP_FIRST_ORDER),
                     "Smooth Grad-CAM++ first derivative: mean over samples or the last sample")
DENOMINATOR = Option("denominator", "position", one_of(*M.SGCPP_DENOMINATORS),
                     "Smooth Grad-CAM++ α denominator per position or per channel")
MAP_ACTIVATIONS = Option("map_activations", "clean", one_of("clean", "last-sample"),
                         "activations weighted by the map: the clean input's or the last noisy sample's")
EPS = Option("eps", 0.0, nonnegative, "additive eps of the α denominator (0: exact guard)")


# ------------------------------------------------------------------- forward-only methods
@method(
    "fem",
    needs=("activations",),
    math=M.fem,
    paper="Fuad, Martin, Giot, Bourqui, Benois-Pineau & Zemmari, 2020, Features understanding in 3D "
    "CNNs for actions recognition in video (IPTA 2020)",
    equation="k-sigma rule: w_k = (1/Z) Σ_ij [A^k_ij > μ_k + k σ_k], L = ReLU(Σ_k w_k A^k) "
    "(weighting as pytorch-grad-cam fem.py; equation number not verified)",
    options=(K_SIGMA, relu(True), AUG_SMOOTH),
    targeted=False,
)
def _fem(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    return M.fem(ctx.need("activations"), k=o["k"], relu=o["relu"])


@method(
    "randomcam",
    needs=("activations",),
    math=M.randomcam,
    paper="pytorch-grad-cam RandomCAM (no paper): the random-weights sanity baseline",
    equation="w_k ~ U[-1, 1), L = ReLU(Σ_k w_k A^k) (refcam's generator: random_weights(N, K, seed))",
    options=(SEED, relu(True), *SMOOTHING),
    targeted=False,
    weights=lambda ctx, t: _random_weights(ctx),
)
def _randomcam(ctx: Context, t: int) -> np.ndarray:
    return M.randomcam(ctx.need("activations"), _random_weights(ctx), relu=ctx.options["relu"])


def _random_weights(ctx: Context) -> np.ndarray:
    a = ctx.need("activations")
    w = M.random_weights(a.shape[0], a.shape[1], seed=ctx.options["seed"], dtype=a.dtype)
    ctx.arrays["random_weights"] = w
    return w


@method(
    "kpcacam",
    needs=("activations",),
    math=M.kpcacam,
    paper="Karmani, Sivakaran, Prasad, Ali, Yang & Tang, 2024, KPCA-CAM: Visual Explainability of "
    "Deep Computer Vision Models using Kernel PCA (arXiv:2410.00267); kernel PCA: Schölkopf, Smola & "
    "Müller 1998",
    equation="L = sqrt(λ_1) v_1 of the double-centred Gram matrix of the (centred) positions "
    "(Schölkopf et al. Eqs. 14, 20)",
    options=(KERNEL, GAMMA, DEGREE, COEF0, CENTER.but(True), SIGN.but("max-abs"), relu(False), AUG_SMOOTH),
    targeted=False,
)
def _kpcacam(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    return M.kpcacam(ctx.need("activations"), kernel=o["kernel"], gamma=o["gamma"], degree=o["degree"],
                     coef0=o["coef0"], center=o["center"], sign=o["sign"], relu=o["relu"])


@method(
    "dff",
    needs=("activations",),
    math=M.dff,
    paper="Collins, Achanta & Süsstrunk, 2018, Deep Feature Factorization For Concept Discovery (ECCV 2018)",
    equation="Sect. 3, Eq. 1: A ≈ W H (NMF, non-negative), maps = rows of H, concepts = columns of W",
    options=(N_COMPONENTS, SEED, MAX_ITER, TOL, CONCEPT_SCORES),
    targeted=False,
)
def _dff(ctx: Context, t: int) -> np.ndarray:
    """Concept maps ``(N, r, *S)``; ``arrays["concepts"]`` ``(K, r)`` and, with ``concept_scores``,
    ``arrays["concept_scores"]`` ``(r, C)`` = the GAP → linear head applied to every concept
    (``w^c · concept + b``, pytorch-grad-cam's ``computation_on_concepts``)."""
    o = ctx.options
    a = ctx.need("activations")
    concepts, maps = M.dff(a, o["n_components"], seed=o["seed"], max_iter=o["max_iter"], tol=o["tol"])
    ctx.arrays["concepts"] = concepts
    if o["concept_scores"]:
        try:
            head = ctx.model.linear_head(ctx.layer)
        except ModelError as e:
            raise ModelError(f"{e}; Deep Feature Factorization's concept scores need a GAP -> linear "
                             "head after the layer (pass concept_scores=False for the maps only)") from None
        bias = 0.0 if head.bias is None else head.bias
        ctx.arrays["concept_scores"] = concepts.T.astype(np.float64) @ head.weight.T.astype(np.float64) + bias
    return maps


# --------------------------------------------------------------------------- gradient methods
@method(
    "segeigencam",
    needs=("activations", "gradients"),
    math=M.segeigencam,
    paper="Chung & Ying, 2025, Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for Semantic "
    "Segmentation Models (Appl. Sci. 15(13), 7562)",
    equation="Eq. 10: O' = |∂y^c/∂A| ⊙ A; Eqs. 11-12: projection on v'_1 (centred); Eq. 13: sign correction",
    options=(*LAYER_GRADIENT_OPTIONS, CENTER.but(True), SIGN.but("max-abs"), relu(True), AUG_SMOOTH),
)
def _segeigencam(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    return M.segeigencam(ctx.need("activations"), ctx.need("gradients")[:, t], center=o["center"],
                         sign=o["sign"], relu=o["relu"])


def _target_of(ctx: Context, t: int) -> Any:
    """Class indices ``(N,)`` of target column ``t``, or the shared :class:`~refcam.onnx.OnnxTarget`."""
    from .onnx import OnnxTarget

    if isinstance(ctx.targets.shared, OnnxTarget):
        return ctx.targets.shared
    if ctx.targets.classes is None:
        raise TargetError(f"target: {ctx.method} needs class indices or a refcam.onnx.OnnxTarget "
                          "(a Python callable has no ONNX graph to differentiate)")
    return ctx.targets.classes[:, t]


@need("hessian_vector_products",
      "H A = ∂²y^c/∂A² · A at the layer (N, T, K, *S), reverse over reverse; fills gradients")
def provide_hessian_vector_products(ctx: Context) -> np.ndarray:
    r""":math:`H A = \frac{\partial^2 y^c}{\partial A^2} A` at the layer, ``(N, T, K, *S)`` (dtype of the
    activations), from refcam's own engine (:func:`refcam.autodiff.second_order.hvp`, reverse over
    reverse); the same runs give :math:`\partial y^c/\partial A`, stored as the ``gradients``
    array.  Targets: class indices (one run per target column) or an
    :class:`~refcam.onnx.OnnxTarget` (e.g. ``softmax_probability``)."""
    from .autodiff.second_order import hvp

    a = ctx.need("activations")
    n_t = 1 if ctx.targets.classes is None else ctx.targets.classes.shape[1]
    runs = [hvp(ctx.model, ctx.inputs, wrt=ctx.layer.name, target=_target_of(ctx, t)) for t in range(n_t)]
    ctx.arrays["gradients"] = np.stack([r.gradients for r in runs], axis=1).astype(a.dtype, copy=False)
    return np.stack([r.hvp for r in runs], axis=1).astype(a.dtype, copy=False)


@method(
    "shapleycam",
    needs=("activations", "hessian_vector_products"),
    math=M.shapleycam,
    paper="Cai, 2025, CAMs as Shapley Value-based Explainers (arXiv:2501.06261)",
    equation="w^c_k = (1/Z) Σ_ij (∂y^c/∂A^k_ij − ½ (H A)^k_ij), L = ReLU(Σ_k w^c_k A^k) (as "
    "pytorch-grad-cam shapley_cam.py; equation number not verified)",
    options=(relu(True), *SMOOTHING),
    weights=lambda ctx, t: _shapley_weights(ctx, t),
)
def _shapleycam(ctx: Context, t: int) -> np.ndarray:
    h = ctx.need("hessian_vector_products")[:, t]         # also stores arrays["gradients"]
    return M.shapleycam(ctx.need("activations"), ctx.arrays["gradients"][:, t], h, relu=ctx.options["relu"])


def _shapley_weights(ctx: Context, t: int) -> np.ndarray:
    h = ctx.need("hessian_vector_products")[:, t]         # also stores arrays["gradients"]
    return M.shapleycam_weights(ctx.arrays["gradients"][:, t], h)


@need("finer_gradients",
      "∂S/∂A of Finer-CAM's contrastive score S (N, T, K, *S) and the classes compared",
      options=("alpha", "comparisons"))
def provide_finer_gradients(ctx: Context) -> np.ndarray:
    r""":math:`\partial S/\partial A = \sum_j s_j\,\partial y_j/\partial A`, ``(N, T, K, *S)``: one VJP
    seeded with :math:`s = \partial S/\partial y` (:func:`refcam.math.finercam_seed`) per target
    column; the main class is the target, the compared classes are ranked by logit distance
    (:func:`refcam.math.finercam_classes`, stored as ``arrays["finer_classes"]`` ``(N, T, R)``)."""
    from .autodiff import gradients
    from .onnx import OnnxTarget
    from .onnx.targets import class_view

    o = ctx.options
    if ctx.targets.classes is None:
        raise TargetError("target: Finer-CAM compares class scores; it needs class-index targets")
    y = class_view(ctx.outputs).astype(np.float64)
    a = ctx.need("activations")
    out, compared = [], []
    for t in range(ctx.targets.classes.shape[1]):
        main, comp = M.finercam_classes(y, ctx.targets.classes[:, t], o["comparisons"])
        seed = M.finercam_seed(y, main, comp, alpha=o["alpha"])
        tgt = OnnxTarget("finercam_seed", "identity", "dot", lambda shape, s=seed: s.reshape(shape))
        r = gradients(ctx.model, ctx.inputs, wrt=ctx.layer.name, target=tgt, batch_size=ctx.batch_size)
        out.append(r.gradients[ctx.layer.name][:, 0])
        compared.append(comp)
    ctx.arrays["finer_classes"] = np.stack(compared, axis=1)
    return np.stack(out, axis=1).astype(a.dtype, copy=False)


@method(
    "finercam",
    needs=("activations", "finer_gradients"),
    math=M.finercam_seed,
    paper="Zhang, Gu, Chowdhury, Mai, Carlyn, Berger-Wolf, Su & Chao, 2025, Finer-CAM: Spotting the "
    "Difference Reveals Finer Details for Visual Explanation (CVPR 2025, arXiv:2501.11309)",
    equation="Grad-CAM of S = Σ_d p_d (y^c − γ y^d) / (Σ_d p_d + 1e-9) over the classes d nearest in "
    "logit (explain y^c − γ y^d instead of y^c; softmax-weighted aggregation as pytorch-grad-cam)",
    options=(ALPHA, COMPARISONS, relu(True), *SMOOTHING),
    weights=lambda ctx, t: M.gradient_weights(ctx.need("finer_gradients")[:, t]),
)
def _finercam(ctx: Context, t: int) -> np.ndarray:
    return M.gradcam(ctx.need("activations"), ctx.need("finer_gradients")[:, t], relu=ctx.options["relu"])


@need("noisy_layer_gradients",
      "∂y^c/∂A at n noisy copies x + δ_m, δ ~ N(0, std²) (N, n, T, K, *S); fills noisy_activations",
      options=("n_samples", "std", "seed"))
def provide_noisy_layer_gradients(ctx: Context) -> np.ndarray:
    r"""Layer gradients at ``n_samples`` noisy copies :math:`x + \delta_m`, :math:`\delta_m \sim
    \mathcal N(0, \mathrm{std}^2)` i.i.d. per input element (``numpy.random.default_rng(seed)``,
    drawn channels-first ``(N, n, C, *S_in)``), ``(N, n, T, K, *S)``; the activations of the copies
    are stored as ``arrays["noisy_activations"]`` ``(N, n, K, *S)``."""
    from .autodiff import gradients

    o = ctx.options
    m = ctx.model
    x = m.to_channels_first(ctx.inputs)
    n, k = len(x), o["n_samples"]
    noise = np.random.default_rng(o["seed"]).standard_normal((n, k) + x.shape[1:]) * o["std"]
    flat = m.to_native((x[:, None] + noise).reshape((n * k,) + x.shape[1:]).astype(ctx.inputs.dtype))
    rows = np.repeat(np.arange(n), k)
    cols = []
    acts = None
    n_t = 1 if ctx.targets.classes is None else ctx.targets.classes.shape[1]
    for t in range(n_t):
        tg = _target_of(ctx, t)
        tg = tg[rows] if isinstance(tg, np.ndarray) else tg.take(rows, n)
        r = gradients(m, flat, wrt=ctx.layer.name, target=tg, batch_size=ctx.batch_size)
        cols.append(r.gradients[ctx.layer.name][:, 0])
        acts = r.activations[ctx.layer.name]
    g = np.stack(cols, axis=1)                                          # (N*n, T, K, *S)
    ctx.arrays["noisy_activations"] = acts.reshape((n, k) + acts.shape[1:])
    return g.reshape((n, k) + g.shape[1:]).astype(ctx.need("activations").dtype, copy=False)


@method(
    "smoothgradcampp",
    needs=("activations", "noisy_layer_gradients"),
    math=M.smoothgradcampp,
    paper="Omeiza, Speakman, Cintas & Weldemariam, 2019, Smooth Grad-CAM++: An Enhanced Inference "
    "Level Visualization Technique for Deep Convolutional Neural Network Models (arXiv:1908.01224)",
    equation="Grad-CAM++ Eqs. 5, 19-20 with every derivative g^p replaced by its mean over noisy "
    "inputs (equation numbers of the Smooth Grad-CAM++ paper not verified)",
    options=(N_SAMPLES.but(4), STD.but(0.3), SEED, FIRST_ORDER, DENOMINATOR, MAP_ACTIVATIONS, EPS, relu(True)),
)
def _smoothgradcampp(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    gs = ctx.need("noisy_layer_gradients")[:, :, t]
    mapped = ctx.arrays["noisy_activations"][:, -1] if o["map_activations"] == "last-sample" else None
    return M.smoothgradcampp(ctx.need("activations"), gs, first_order=o["first_order"],
                             denominator=o["denominator"], eps=o["eps"], map_activations=mapped,
                             relu=o["relu"])


# ------------------------------------------------------------------------------ RefineCAM
def _layer_names(value: Any, name: str) -> tuple:
    if isinstance(value, str) or not hasattr(value, "__iter__") or not all(isinstance(v, str) for v in value):
        raise InvalidArgumentError(name, value, "a sequence of layer names")
    return tuple(value)


def _base_method(value: Any, name: str) -> str:
    from .registry import METHODS

    if not isinstance(value, str) or value.lower() in ("refinecam",) or value.lower() not in METHODS \
            or not METHODS[value.lower()].layered:
        raise InvalidArgumentError(name, value, "the name of a registered layer method (not refinecam)")
    return value.lower()


LAYERS = Option("layers", (), _layer_names, "further layers whose maps multiply the layer's map")
BASE = Option("base", "gradcampp", _base_method, "the method computing every layer's map")
LAYER_NORMALIZE = Option("layer_normalize", True, boolean, "ReLU / max of every layer's map before the product")


@method(
    "refinecam",
    needs=("activations",),
    math=M.refinecam,
    paper="RefineCAM (arXiv:2605.14641, as cited by pytorch-grad-cam 1.5.7 refine_cam.py): a meta-method "
    "over layers",
    equation="L = Π_l ReLU(Up(L_l)) / max ReLU(Up(L_l)), L_l the base method's map at layer l "
    "(equations not verified)",
    options=(LAYERS, BASE, UPSAMPLE_MODE, LAYER_NORMALIZE),
)
def _refinecam(ctx: Context, t: int) -> np.ndarray:
    """Input-resolution map ``(N, *S_in)``: the base method at ``layer`` and every ``layers`` entry,
    each upsampled to the input size (``upsample_mode``), multiplied (:func:`refcam.math.refinecam`).
    The per-layer maps are stored as ``arrays["layer_maps"]`` ``(L, N, *S_in)``."""
    from .explanation import explain
    from .onnx import OnnxTarget

    o = ctx.options
    target = ctx.targets.shared if isinstance(ctx.targets.shared, OnnxTarget) else ctx.targets.classes[:, t]
    size = ctx.model.input_spatial_shape(ctx.inputs)
    maps = []
    for layer in (ctx.layer.name, *o["layers"]):
        e = explain(ctx.model, ctx.inputs, o["base"], layer=layer, target=target, batch_size=ctx.batch_size,
                    memory_budget=ctx.memory_budget, progress=ctx.progress)
        maps.append(M.upsample(e.maps, size, o["upsample_mode"]))
    ctx.arrays.setdefault("layer_maps", [])
    ctx.arrays["layer_maps"].append(np.stack(maps))
    return M.refinecam(maps, layer_normalize=o["layer_normalize"])


# ------------------------------------------------------------------------------------ SESS
def _optional_positive_int(value: Any, name: str) -> Any:
    return None if value is None else positive_int(value, name)


N_SCALES = Option("n_scales", 12, positive_int, "number of scales")
STEP_RATIO = Option("step_ratio", 2.0 / 7.0, nonnegative, "scale step / window size")
WINDOW_SIZE = Option("window_size", None, _optional_positive_int, "sliding window side (None: shorter input side)")
STEP_SIZE = Option("step_size", None, _optional_positive_int, "window stride (None: the window size)")
POOL = Option("pool", "mean", one_of(*M.SESS_POOLS), "fusion of the patch maps")
THETA = Option("theta", 0.0, finite_real, "threshold of the mean fusion")
SMOOTH = Option("smooth", True, boolean, "Gaussian blur (11x11, sigma 5) of the fused map")
SESS_BASE = Option("base", "gradcam", _base_method, "the method computing every patch's map")


@method(
    "sess",
    needs=("activations",),
    math=M.sess_fuse,
    paper="Tyagi, Shibu, ..., 2022, SESS: Saliency Enhancing with Scaling and Sliding (ECCV 2022, "
    "arXiv:2207.01769)",
    equation="patch maps of every scale and window, weighted by the patch's class probability / max, "
    "pasted back, resized, fused (mean over covering patches or max), Gaussian-blurred (as "
    "pytorch-grad-cam sess.py; equations not verified)",
    options=(SESS_BASE, N_SCALES, STEP_RATIO, WINDOW_SIZE, STEP_SIZE, POOL, THETA, SMOOTH),
)
def _sess(ctx: Context, t: int) -> np.ndarray:
    """Input-resolution map ``(N, H, W)``.  The input is resized (``math.upsample`` "linear") so its
    shorter side is each scale; every window is explained with ``base`` (its raw map ReLU'd, upsampled
    to the window, min-max scaled), weighted by the softmax probability of the target class of the
    window / the largest one, and fused by :func:`refcam.math.sess_fuse`.  The model must accept
    inputs of the window's size (dynamic spatial axes, or a square input)."""
    from .explanation import explain

    o = ctx.options
    if ctx.targets.classes is None:
        raise TargetError("target: SESS weights the windows by class probabilities; it needs class indices")
    m = ctx.model
    x = m.to_channels_first(ctx.inputs)
    h, w = x.shape[-2:]
    win = o["window_size"] or min(h, w)
    step = o["step_size"] or win
    out = []
    for i in range(len(x)):
        c = int(ctx.targets.classes[i, t])
        patches, boxes = [], []
        for s in M.sess_scales(win, o["n_scales"], o["step_ratio"]):
            if s < win:
                raise InvalidArgumentError("step_ratio", o["step_ratio"], "scales of at least the window size")
            size = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
            xs = M.upsample(x[i], size, "linear")
            for y1 in M.window_starts(size[0], step, win):
                for x1 in M.window_starts(size[1], step, win):
                    patches.append(xs[:, y1:y1 + win, x1:x1 + win])
                    boxes.append((x1, y1, size[1], size[0]))
        pt = m.to_native(np.stack(patches).astype(ctx.inputs.dtype))
        e = explain(m, pt, o["base"], layer=ctx.layer.name, target=[c] * len(pt), batch_size=ctx.batch_size,
                    memory_budget=ctx.memory_budget, progress=ctx.progress)
        from .onnx.targets import class_view

        scores = np.maximum(M.softmax(class_view(e.outputs).astype(np.float64), axis=-1)[:, c], 0)
        top = scores.max()
        weights = scores / top if top > 0 else np.ones_like(scores)
        cams = M.normalize(M.upsample(M.relu(e.maps), (win, win), "linear"), "minmax")
        fused = M.sess_fuse(cams, weights.astype(cams.dtype), boxes, (h, w), pool=o["pool"], theta=o["theta"])
        out.append(M.gaussian_blur(fused[None])[0] if o["smooth"] else fused)
    return np.stack(out)
