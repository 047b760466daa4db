r"""Eigen-CAM: the projection of the feature maps on their first principal direction.

Per sample, the activations are reshaped to a matrix :math:`O \in \mathbb{R}^{Z \times K}`
(one row per spatial position, one column per channel) and factorised
:math:`O = U \Sigma V^\top`; the map is the projection :math:`O v_1 = \sigma_1 u_1` on the first
right singular vector, reshaped to the spatial grid.  The whole batch is computed at once on
the stacked ``(N, Z, K)`` array: a QR factorisation of its long side, then ``np.linalg.svd`` of
the small triangular factor (same accuracy as an SVD of ``O``, several times faster).

Sign convention.  A singular vector is defined up to sign, and LAPACK's choice depends on the
build and on round-off, so "the raw SVD output" is not a reproducible quantity.  refcam fixes
the sign with a documented rule (``sign=``); ``sign="none"`` returns LAPACK's sign for
inspection only (not deterministic across platforms, and what pytorch-grad-cam returns).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._finite import finite_output
from .. import _validate as _v
from ..errors import InvalidArgumentError
from .blocks import _flag, _maps_and_gradients, _maybe_relu

__all__ = ["SIGN_RULES", "eigencam", "eigengradcam"]

#: ``sign`` rules of the first singular vector (see the module docstring).
SIGN_RULES = ("sum", "max-abs", "none")


def first_component(x: np.ndarray, center: bool, sign: str, component: int = 1) -> np.ndarray:
    """``x`` of shape (N, K, *S) -> signed projection on the ``component``-th right singular
    vector (1 = the first)."""
    n, k = x.shape[:2]
    spatial = x.shape[2:]
    # LAPACK has no float16: compute in float32, round back at the end.  Each sample is divided by
    # the power of two just below its largest |value| (exact in binary floating point, and the
    # projection is homogeneous of degree 1 in O), so the QR/SVD never sees values near the
    # dtype's overflow threshold (LAPACK fails with "SVD did not converge" there); the factor is
    # multiplied back at the end, where only a genuinely unrepresentable map can overflow.
    work = x.astype(np.float32) if x.dtype == np.float16 else x
    peak = np.abs(work.reshape(n, -1)).max(axis=1)
    _, exponent = np.frexp(np.where(peak > 0, peak, 1))
    scale = np.ldexp(np.ones_like(peak), exponent - 1)[:, None]   # (N, 1)
    o = np.swapaxes((work.reshape(n, k, -1) / scale[:, :, None]), 1, 2)   # (N, Z, K), scaled
    if center:
        o = o - o.mean(axis=1, keepdims=True)              # centre each channel over positions
        # a spatially constant channel centres to exactly 0 (the mean's round-off must not leave
        # 1e-17 residue that a later min-max normalisation would blow up into noise)
        const = x.reshape(n, k, -1).max(axis=2) == x.reshape(n, k, -1).min(axis=2)
        if const.any():
            o = np.where(const[:, None, :], 0, o)
    p = _projection_on_v(o, component)                      # O v_c = sigma_c u_c, shape (N, Z)
    if sign != "none":
        p = p * sign_factor(p, sign)[:, None]
    return (p * scale).reshape((n,) + spatial).astype(x.dtype, copy=False)


def _projection_on_v(o: np.ndarray, c: int) -> np.ndarray:
    """``O v_c = sigma_c u_c`` for a stack ``o`` (N, Z, K), through a QR of the long side.

    The SVD is taken of the small triangular factor only (backward stable, same accuracy as
    ``np.linalg.svd(o)``, 2-5x faster for the usual Z << K or Z >> K):
    tall (Z >= K): ``O = Q R``, the right singular vectors of ``R`` are those of ``O``, so
    ``p = O v1``; wide (Z < K): ``O^T = Q R``, so ``O = R^T Q^T`` and the left singular pairs of
    ``R^T`` are those of ``O``: ``p = sigma1 u1``.
    """
    z, k = o.shape[1:]
    if z >= k:
        r = np.linalg.qr(o, mode="r")                       # (N, K, K)
        _, _, vt = np.linalg.svd(r)
        return np.matmul(o, vt[:, c - 1, :, None])[:, :, 0]
    r = np.linalg.qr(np.swapaxes(o, 1, 2), mode="r")        # (N, Z, Z)
    u, s, _ = np.linalg.svd(np.swapaxes(r, 1, 2))
    return u[:, :, c - 1] * s[:, c - 1 : c]


def sign_factor(p: np.ndarray, rule: str) -> np.ndarray:
    """+1/-1 per row of ``p`` (N, Z) so that the rule's reference quantity is positive."""
    rel = np.sqrt(np.finfo(p.dtype).eps)
    mag = np.abs(p)
    # max-abs rule: among the elements within a relative sqrt(eps) of max |p| (ties, which
    # round-off must not decide), the first one in C order is made positive.
    near_max = mag >= (1 - rel) * mag.max(axis=1, keepdims=True)
    idx = np.argmax(near_max, axis=1)
    by_max = np.where(np.take_along_axis(p, idx[:, None], axis=1)[:, 0] < 0, -1, 1)
    if rule == "max-abs":
        return by_max.astype(p.dtype)
    total = p.sum(axis=1)
    # A sum within round-off of zero is a tie (always the case with center=True, where the
    # projection sums to 0 by construction): fall back to the max-abs rule.
    tie = np.abs(total) <= rel * mag.sum(axis=1)
    return np.where(tie, by_max, np.where(total < 0, -1, 1)).astype(p.dtype)


@finite_output
def eigencam(
    activations: Any,
    *,
    center: bool = False,
    sign: str = "sum",
    relu: bool = False,
    component: int = 1,
) -> np.ndarray:
    r"""Eigen-CAM map: projection of the activations on their first principal direction.

    .. math:: L_{\text{Eigen-CAM}} = O\, v_1, \qquad O = U \Sigma V^\top,
              \quad O_{(ij),k} = A^k_{ij}

    Muhammad & Yeasin, 2020, "Eigen-CAM: Class Activation Map using Principal Components"
    (IJCNN; arXiv:2008.00299), the equation :math:`L_{\text{Eigen-CAM}} = O_{L=k} V_1`: the
    projection of the layer output :math:`O_{L=k} = U\Sigma V^\top` on its first right singular
    vector ("first eigenvector") :math:`V_1`.

    Parameters
    ----------
    activations : array of shape (N, K, *S)
    center : bool, default False
        The paper factorises the layer output as it is: no mean subtraction is written in the
        Eigen-CAM equation (the full text was not available to verify the surrounding prose).
        ``True`` subtracts each channel's spatial mean first, i.e. a true PCA, as
        pytorch-grad-cam's ``get_2d_projection`` does.
    sign : {"sum", "max-abs", "none"}, default "sum"
        ``"sum"``: flip so that the map sums to a positive value; when the sum is zero within
        round-off (:math:`|\sum p| \le \sqrt{\epsilon}\sum|p|`; always the case with
        ``center=True``, where the projection sums to 0 by construction) use ``"max-abs"``.
        ``"max-abs"``: the element of largest absolute value is positive; elements within a
        relative :math:`\sqrt{\epsilon}` of the largest count as tied and the first of them in
        C order decides (so round-off never decides a symmetric case).
        ``"none"``: LAPACK's sign, not reproducible (documented only; this is what
        pytorch-grad-cam returns).
        For non-negative activations and ``center=False``, :math:`v_1 \ge 0`
        (Perron-Frobenius) and ``"sum"`` makes every value of the map >= 0.
    relu : bool, default False
        The paper's map has no ReLU.
    component : int, default 1
        :math:`c` in :math:`O\, v_c`: 1 is the paper's first right singular vector; 2, 3, ... show
        the next principal directions (ordered by :math:`\sigma_c`, at most :math:`\min(Z, K)`).

    Returns
    -------
    ndarray of shape (N, *S), dtype of ``activations``.  All-zero (or, with ``center=True``,
    spatially constant) activations give an all-zero map: :math:`\sigma_1 = 0`.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[3., 0.]], [[4., 0.]]]])            # O = [[3, 4], [0, 0]]
    >>> eigencam(a)                                          # v1 = [0.6, 0.8]: O v1 = [5, 0]
    array([[[5., 0.]]])
    """
    x = _v.feature_maps(activations, "activations")
    sign = _v.choice(sign, "sign", SIGN_RULES)
    c = _v.positive_int(component, "component")
    rank = min(x.shape[1], x[0, 0].size)
    if c > rank:
        raise InvalidArgumentError("component", component,
                                   f"an integer in 1..{rank} (at most min(channels, positions))")
    m = first_component(x, _flag(center, "center"), sign, c)
    return _maybe_relu(m, relu)


@finite_output
def eigengradcam(
    activations: Any, gradients: Any, *, center: bool = False, sign: str = "sum", relu: bool = False
) -> np.ndarray:
    r"""Eigen-Grad-CAM: Eigen-CAM of the element-wise product of activations and gradients.

    .. math:: L = O'\, v'_1, \qquad O'_{(ij),k} = A^k_{ij}\,\frac{\partial y^c}{\partial A^k_{ij}}

    No paper of its own: ``EigenGradCAM`` of pytorch-grad-cam
    (https://github.com/jacobgil/pytorch-grad-cam, ``eigen_grad_cam.py``) applies Eigen-CAM
    (Muhammad & Yeasin, 2020) to ``grads * activations``.  refcam defines it exactly as
    ``eigencam(activations * gradients, ...)`` with the same keywords and defaults; the library's
    behaviour is ``center=True, sign="none"`` followed by a ReLU.

    Parameters
    ----------
    activations, gradients : arrays of shape (N, K, *S)
    center, sign, relu
        As in :func:`eigencam`.

    Returns
    -------
    ndarray of shape (N, *S).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[3., 1.]], [[2., 5.]]]])
    >>> g = np.array([[[[1., 0.]], [[2., 0.]]]])              # A * G: O = [[3, 4], [0, 0]]
    >>> eigengradcam(a, g)
    array([[[5., 0.]]])
    """
    a, g = _maps_and_gradients(activations, gradients)
    sign = _v.choice(sign, "sign", SIGN_RULES)
    m = first_component(a * g, _flag(center, "center"), sign)
    return _maybe_relu(m, relu)
