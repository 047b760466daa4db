r"""Principal-component maps beyond Eigen-CAM: kernel PCA (KPCA-CAM), Seg-Eigen-CAM and the
``eigen_smooth`` option (first principal component of the channel-weighted activations).

Per sample the activations become :math:`O \in \mathbb R^{Z\times K}` (one row per spatial
position, :math:`O_{(ij),k} = A^k_{ij}`), as in :mod:`refcam.math.eigen`; every map here is a
projection of the rows of :math:`O` (or of a weighted :math:`O`) on one principal direction,
with a documented, deterministic sign rule (``sign=``, the rules of :func:`refcam.math.eigencam`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._finite import finite_output
from .. import _validate as _v
from ..errors import ShapeError
from .blocks import _flag, _maps_and_gradients, _maybe_relu
from .eigen import SIGN_RULES, first_component, sign_factor

__all__ = ["KERNELS", "eigen_smooth", "kernel_matrix", "kpcacam", "segeigencam"]

#: kernels of :func:`kernel_matrix` (scikit-learn's ``pairwise_kernels`` names)
KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")


@finite_output
def kernel_matrix(x: Any, *, kernel: str = "sigmoid", gamma: float | None = None,
                  degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    r"""Gram matrix :math:`K_{ab} = \kappa(x_a, x_b)` of the rows of ``x`` ``(..., Z, K)`` -> ``(..., Z, Z)``.

    =========== =======================================================================
    ``linear``  :math:`\langle x_a, x_b\rangle`
    ``poly``    :math:`(\gamma\langle x_a, x_b\rangle + c_0)^d`
    ``rbf``     :math:`\exp(-\gamma\lVert x_a - x_b\rVert^2)`
    ``sigmoid`` :math:`\tanh(\gamma\langle x_a, x_b\rangle + c_0)`
    ``cosine``  :math:`\langle x_a, x_b\rangle / (\lVert x_a\rVert\lVert x_b\rVert)` (0 for a zero row)
    =========== =======================================================================

    :math:`\gamma` defaults to :math:`1/K` (the number of features, columns of ``x``),
    :math:`d` = ``degree``, :math:`c_0` = ``coef0``: scikit-learn's ``pairwise_kernels``
    conventions and defaults (``KernelPCA(kernel=..., gamma=None)``, ``degree=3``, ``coef0=1``).
    The squared distance is :math:`\lVert x_a\rVert^2 + \lVert x_b\rVert^2 - 2\langle x_a, x_b\rangle`
    clipped at 0, with an exact 0 on the diagonal.

    Examples
    --------
    >>> x = np.array([[1., 0.], [0., 2.]])
    >>> kernel_matrix(x, kernel="linear")
    array([[1., 0.],
           [0., 4.]])
    >>> np.round(kernel_matrix(x, kernel="rbf", gamma=1.0), 6)     # exp(-5) off the diagonal
    array([[1.      , 0.006738],
           [0.006738, 1.      ]])
    """
    a = _v.as_float_array(x, "x")
    if a.ndim < 2:
        raise ShapeError("x", a.shape, "(..., Z, K)", "rows of features")
    kernel = _v.choice(kernel, "kernel", KERNELS)
    g = 1.0 / a.shape[-1] if gamma is None else _v.nonnegative_float(gamma, "gamma")
    degree = _v.positive_int(degree, "degree")
    c0 = float(coef0)
    dot = np.matmul(a, np.swapaxes(a, -1, -2))
    if kernel == "linear":
        return dot
    if kernel == "poly":
        return (g * dot + c0) ** degree
    if kernel == "sigmoid":
        return np.tanh(g * dot + c0)
    sq = np.einsum("...i,...i->...", a, a)
    if kernel == "rbf":
        d2 = np.maximum(sq[..., :, None] + sq[..., None, :] - 2 * dot, 0)
        idx = np.arange(a.shape[-2])
        d2[..., idx, idx] = 0
        return np.exp(-g * d2)
    norm = np.sqrt(sq)
    den = norm[..., :, None] * norm[..., None, :]
    return np.divide(dot, den, out=np.zeros_like(dot), where=den > 0)


@finite_output
def kpcacam(activations: Any, *, kernel: str = "sigmoid", gamma: float | None = None,
            degree: int = 3, coef0: float = 1.0, center: bool = True, sign: str = "max-abs",
            relu: bool = False) -> np.ndarray:
    r"""KPCA-CAM: projection of the positions on the first kernel principal component.

    .. math:: \tilde K = (I - \tfrac1Z \mathbf 1\mathbf 1^\top)\,K\,(I - \tfrac1Z \mathbf 1\mathbf 1^\top),
              \quad K_{ab} = \kappa(o_a, o_b),\qquad
              L = \sqrt{\lambda_1}\, v_1

    where :math:`o_a` are the rows of :math:`O` (centred per channel when ``center``, as
    pytorch-grad-cam does before its ``KernelPCA``), :math:`(\lambda_1, v_1)` the largest
    eigenpair of the double-centred Gram matrix :math:`\tilde K` (:math:`\lambda_1` clipped at
    0) and :math:`\sqrt{\lambda_1} v_1` the kernel-PCA score of every position (Schölkopf, Smola &
    Müller 1998, "Nonlinear component analysis as a kernel eigenvalue problem", Eqs. 14 and 20).
    KPCA-CAM: Karmani, Sivakaran, Prasad, Ali, Yang & Tang, 2024, "KPCA-CAM: Visual Explainability of Deep Computer Vision
    Models using Kernel PCA" (arXiv:2410.00267); pytorch-grad-cam 1.5.7 ``KPCA_CAM``
    (``utils/svd_on_activations.py:24-38``, ``sklearn.decomposition.KernelPCA(n_components=1)``),
    re-implemented here in NumPy: same kernels and defaults (:func:`kernel_matrix`), same
    centring, same scaling, same sign rule (scikit-learn's ``svd_flip``: the entry of largest
    absolute value of :math:`v_1` is positive, = ``sign="max-abs"``).

    Parameters
    ----------
    activations : array (N, K, *S)
    kernel, gamma, degree, coef0 : see :func:`kernel_matrix` (defaults: pytorch-grad-cam's
        ``kernel="sigmoid"``, ``gamma=None`` = :math:`1/K`).
    center : bool, default True
        Subtract each channel's spatial mean before the kernel (pytorch-grad-cam does).
    sign : {"max-abs", "sum", "none"}, default "max-abs"
        As in :func:`refcam.math.eigencam`; the projection of a centred kernel sums to 0, so
        ``"sum"`` falls back to ``"max-abs"``.  Elements within a relative :math:`\sqrt\epsilon`
        of the largest count as tied (the first in C order decides); scikit-learn takes the
        exact first arg-max, so the two differ only on such near-ties.
    relu : bool, default False
        No ReLU in the projection (pytorch-grad-cam applies its ReLU to every map afterwards).

    Returns
    -------
    ndarray (N, *S), dtype of ``activations`` (computed in float64).  A sample whose centred
    Gram matrix has no positive eigenvalue gives a zero map.  A repeated top eigenvalue has no
    unique eigenvector: the map is then whatever LAPACK returns in that eigenspace.

    Examples
    --------
    >>> a = np.array([[[1., 0., 0., 0.]]])          # K = 1, linear kernel: plain PCA
    >>> np.round(kpcacam(a, kernel="linear"), 6)     # centred [.75, -.25, -.25, -.25]
    array([[ 0.75, -0.25, -0.25, -0.25]])
    """
    x = _v.feature_maps(activations, "activations")
    sign = _v.choice(sign, "sign", SIGN_RULES)
    n, k = x.shape[:2]
    o = np.swapaxes(x.reshape(n, k, -1), 1, 2).astype(np.float64)   # (N, Z, K)
    if _flag(center, "center"):
        o = o - o.mean(axis=1, keepdims=True)
    gram = kernel_matrix(o, kernel=kernel, gamma=gamma, degree=degree, coef0=coef0)
    gram = gram - gram.mean(axis=1, keepdims=True)
    gram = gram - gram.mean(axis=2, keepdims=True)
    lam, vec = np.linalg.eigh(gram)                  # ascending
    lam1 = np.maximum(lam[:, -1], 0.0)
    p = vec[:, :, -1] * np.sqrt(lam1)[:, None]       # (N, Z)
    if sign != "none":
        p = p * sign_factor(p, sign)[:, None]
    m = p.reshape((n,) + x.shape[2:]).astype(x.dtype)
    return _maybe_relu(m, relu)


@finite_output
def segeigencam(activations: Any, gradients: Any, *, center: bool = True, sign: str = "max-abs",
                relu: bool = True) -> np.ndarray:
    r"""Seg-Eigen-CAM: Eigen-CAM of the gradient-magnitude-weighted activations, sign-corrected.

    .. math:: O'_{(ij),k} = \Big|\frac{\partial y^c}{\partial A^k_{ij}}\Big|\,A^k_{ij},
              \qquad L = \mathrm{ReLU}(s\;O'_c\, v'_1)

    with :math:`O'_c` the column-centred :math:`O'`, :math:`v'_1` its first right singular vector
    and :math:`s = \pm 1` chosen so that :math:`|\max L| \ge |\min L|`.  Chung & Ying, 2025,
    "Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for Semantic Segmentation Models",
    Appl. Sci. 15(13), 7562: Eq. 10 (gradient weighting), Eqs. 11-12 (SVD projection), Eq. 13
    (sign correction); pytorch-grad-cam 1.5.7 ``seg_eigen_cam.py`` and
    ``utils/svd_on_activations.py:41-82``.

    Eq. 13's rule is ``sign="max-abs"`` (flip when :math:`|\min| > |\max|`).  At an exact tie
    :math:`|\min| = |\max|` the peer keeps LAPACK's sign; refcam makes the first tied element in
    C order positive (deterministic).

    Parameters
    ----------
    activations, gradients : arrays (N, K, *S)
    center : bool, default True (the paper and the peer centre the columns)
    sign : {"max-abs", "sum", "none"}, default "max-abs" (Eq. 13)
    relu : bool, default True (pytorch-grad-cam's ReLU on the final map)

    Examples
    --------
    >>> a = np.array([[[[3., 1.]], [[2., 5.]]]])
    >>> g = np.array([[[[-1., 0.]], [[2., 0.]]]])     # |G| A: O' = [[3, 4], [0, 0]]
    >>> segeigencam(a, g)                              # centred [[1.5, 2], [-1.5, -2]]: +-2.5
    array([[[2.5, 0. ]]])
    """
    a, g = _maps_and_gradients(activations, gradients)
    sign = _v.choice(sign, "sign", SIGN_RULES)
    m = first_component(np.abs(g) * a, _flag(center, "center"), sign)
    return _maybe_relu(m, relu)


@finite_output
def eigen_smooth(activations: Any, weights: Any, *, center: bool = True, sign: str = "max-abs",
                 relu: bool = False) -> np.ndarray:
    r"""The ``eigen_smooth`` map: first principal component of the channel-weighted activations.

    .. math:: O^w_{(ij),k} = w^c_k A^k_{ij}\ \ (\text{or } w^c_{k,ij} A^k_{ij}),\qquad
              L = s\;O^w_c\, v^w_1

    instead of the channel sum :math:`\sum_k w^c_k A^k` of a CAM method (:math:`O^w_c`
    column-centred when ``center``, :math:`v^w_1` its first right singular vector, :math:`s` the
    sign rule).  pytorch-grad-cam 1.5.7 ``base_cam.py:84-87`` (``eigen_smooth=True``:
    ``get_2d_projection(weights[:, :, None, None] * activations)``, centred, LAPACK's sign) and the
    per-position weighted variants (LayerCAM, HiResCAM, Grad-CAM element-wise pass their
    weighted activations to the same function).  No paper of its own: the projection is
    Eigen-CAM's (Muhammad & Yeasin 2020) applied to the weighted maps.

    Parameters
    ----------
    activations : array (N, K, *S)
    weights : array (N, K) (channel weights :math:`w^c_k`) or (N, K, *S) (per-position weights)
    center : bool, default True (the peer centres)
    sign : {"max-abs", "sum", "none"}, default "max-abs"
        The peer has no sign rule (``"none"``, not reproducible); refcam's default makes the
        element of largest magnitude positive.
    relu : bool, default False (the method's ReLU is applied by the caller, as for its plain map)

    Examples
    --------
    >>> a = np.array([[[[1., 0.]], [[0., 1.]]]])         # O = I (2 positions, 2 channels)
    >>> eigen_smooth(a, np.array([[3., 1.]]))   # O^w = diag(3, 1), centred rows +-(1.5, -0.5)
    array([[[ 1.58113883, -1.58113883]]])
    """
    x = _v.feature_maps(activations, "activations")
    w = _v.as_float_array(weights, "weights")
    if w.shape == x.shape[:2]:
        w = w.reshape(w.shape + (1,) * (x.ndim - 2))
    elif w.shape != x.shape:
        raise ShapeError("weights", w.shape, f"{x.shape[:2]} or {x.shape}",
                         "channel weights (N, K) or per-position weights like the activations")
    dt = _v.result_dtype(x, w)
    sign = _v.choice(sign, "sign", SIGN_RULES)
    m = first_component((w * x).astype(dt, copy=False), _flag(center, "center"), sign)
    return _maybe_relu(m, relu)
