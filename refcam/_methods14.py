"""Registrations of the methods of issue 14 (FEM, RandomCAM, KPCA-CAM, Seg-Eigen-CAM, Deep Feature
Factorization) on the method registry (:mod:`refcam.methods`).  The math lives in
:mod:`refcam.math.forward_maps`, :mod:`refcam.math.projections` and
:mod:`refcam.math.factorization`; this module only wires needs and options to it.
"""

from __future__ import annotations

import numpy as np

from . import math as M
from .errors import ModelError
from .methods import Context, Method, Need, register_method, register_need

__all__: list[str] = []

_GRAD = dict(gradient_source="vjp", fd_mode="auto", gradient_output=None)


def _fem(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    return M.fem(ctx.need("activations"), k=o["k"], relu=o["relu"])


def _randomcam(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    a = ctx.need("activations")
    w = M.random_weights(a.shape[0], a.shape[1], seed=o["seed"], dtype=a.dtype)
    ctx.arrays["random_weights"] = w
    return M.randomcam(a, w, relu=o["relu"])


def _kpcacam(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    return M.kpcacam(ctx.need("activations"), kernel=o["kernel"], gamma=o["gamma"], degree=o["degree"],
                     coef0=o["coef0"], center=o["center"], sign=o["sign"], relu=o["relu"])


def _segeigencam(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    return M.segeigencam(ctx.need("activations"), ctx.need("gradients")[:, t], center=o["center"],
                         sign=o["sign"], relu=o["relu"])


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


register_method(Method(
    "fem", ("activations",), M.fem, _fem,
    "Fuad, Martin, Giot, Bourqui, Benois-Pineau & Zemmari, 2020, Features understanding in 3D CNNs "
    "for actions recognition in video (IPTA 2020)",
    "k-sigma rule: w_k = (1/Z) Σ_ij [A^k_ij > μ_k + k σ_k], L = ReLU(Σ_k w_k A^k) (weighting as "
    "pytorch-grad-cam fem.py; equation number not verified)",
    dict(k=2.0, relu=True), targeted=False))
register_method(Method(
    "randomcam", ("activations",), M.randomcam, _randomcam,
    "pytorch-grad-cam RandomCAM (no paper): the random-weights sanity baseline",
    "w_k ~ U[-1, 1), L = ReLU(Σ_k w_k A^k) (refcam's generator: random_weights(N, K, seed))",
    dict(seed=0, relu=True), targeted=False))
register_method(Method(
    "kpcacam", ("activations",), M.kpcacam, _kpcacam,
    "Karmani, Sivakaran, Prasad, Ali, Yang & Tang, 2024, KPCA-CAM: Visual Explainability of Deep Computer Vision Models "
    "using Kernel PCA (arXiv:2410.00267); kernel PCA: Schölkopf, Smola & Müller 1998",
    "L = sqrt(λ_1) v_1 of the double-centred Gram matrix of the (centred) positions "
    "(Schölkopf et al. Eqs. 14, 20)",
    dict(kernel="sigmoid", gamma=None, degree=3, coef0=1.0, center=True, sign="max-abs", relu=False),
    targeted=False))
register_method(Method(
    "segeigencam", ("activations", "gradients"), M.segeigencam, _segeigencam,
    "Chung & Ying, 2025, Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for Semantic "
    "Segmentation Models (Appl. Sci. 15(13), 7562)",
    "Eq. 10: O' = |∂y^c/∂A| ⊙ A; Eqs. 11-12: projection on v'_1 (centred); Eq. 13: sign correction",
    dict(_GRAD, center=True, sign="max-abs", relu=True)))
register_method(Method(
    "dff", ("activations",), M.dff, _dff,
    "Collins, Achanta & Süsstrunk, 2018, Deep Feature Factorization For Concept Discovery (ECCV 2018)",
    "Sect. 3, Eq. 1: A ≈ W H (NMF, non-negative), maps = rows of H, concepts = columns of W",
    dict(n_components=5, seed=0, max_iter=200, tol=1e-4, concept_scores=True), targeted=False))


# ------------------------------------------------------------------------------ ShapleyCAM
def provide_hessian_vector_products(ctx: Context) -> np.ndarray:
    r""":math:`H A = \frac{\partial^2 y^c}{\partial A^2} A` at the layer, ``(N, T, K, *S)`` (dtype of the
    activations), from refcam's own engine (:func:`refcam.autodiff.second_order.hvp`, reverse
    over reverse); also fills the ``gradients`` need :math:`\partial y^c/\partial A` from the same
    run.  Targets: class indices (one run per target column) or an
    :class:`~refcam.onnx.OnnxTarget` (e.g. ``softmax_probability``)."""
    from .autodiff.second_order import hvp
    from .onnx import OnnxTarget

    a = ctx.need("activations")
    if isinstance(ctx.targets.shared, OnnxTarget):
        runs = [hvp(ctx.model, ctx.inputs, wrt=ctx.layer.name, target=ctx.targets.shared)]
    else:
        cls = ctx.targets.classes
        if cls is None:
            from .errors import TargetError

            raise TargetError("target: ShapleyCAM needs class indices or a refcam.onnx.OnnxTarget")
        runs = [hvp(ctx.model, ctx.inputs, wrt=ctx.layer.name, target=cls[:, t]) for t in range(cls.shape[1])]
    ctx.arrays.setdefault("gradients", np.stack([r.gradients for r in runs], axis=1).astype(a.dtype, copy=False))
    return np.stack([r.hvp for r in runs], axis=1).astype(a.dtype, copy=False)


def _shapleycam(ctx: Context, t: int) -> np.ndarray:
    h = ctx.need("hessian_vector_products")[:, t]        # first: fills the gradients too
    return M.shapleycam(ctx.need("activations"), ctx.need("gradients")[:, t], h, relu=ctx.options["relu"])


register_need(Need("hessian_vector_products", provide_hessian_vector_products,
                   "H A = ∂²y^c/∂A² · A at the layer (N, T, K, *S), reverse over reverse"))
register_method(Method(
    "shapleycam", ("activations", "hessian_vector_products", "gradients"), M.shapleycam, _shapleycam,
    "Cai & Shi, 2025, CAMs as Shapley Value-based Explainers (arXiv:2501.06261)",
    "w^c_k = (1/Z) Σ_ij (∂y^c/∂A^k_ij − ½ (H A)^k_ij), L = ReLU(Σ_k w^c_k A^k) (as pytorch-grad-cam "
    "shapley_cam.py; equation number not verified)",
    dict(relu=True)))
