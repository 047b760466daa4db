r"""Building blocks shared by the CAM family: pooling and channel-weighted sums.

Layout conventions (see ``docs/design.md``): activations ``A`` have shape ``(N, K, *S)``
(batch, channels, one or more spatial axes), gradients ``G = dy^c/dA`` have the same shape,
maps have shape ``(N, *S)``.  ``Z = prod(S)`` is the number of spatial positions.

Every function keeps the floating dtype of its input (float32 in, float32 out); when two arrays
enter, the result dtype is ``np.result_type`` of both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._finite import finite_output, report_nonfinite
from .. import _validate as _v
from ..errors import InvalidArgumentError, ShapeError

__all__ = ["gap", "weighted_sum", "gradient_weights"]


# --------------------------------------------------------------------------- internal helpers
# (shared by cam.py, eigen.py and perturbation.py; not public API)

def _maps_and_gradients(activations: Any, gradients: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``(A, G)`` of identical layout ``(N, K, *S)``; cast both to their common dtype."""
    a = _v.feature_maps(activations, "activations")
    g = _v.feature_maps(gradients, "gradients")
    _v.check_same_shape(a, "activations", g, "gradients")
    dt = _v.result_dtype(a, g)
    return a.astype(dt, copy=False), g.astype(dt, copy=False)


def _channel_vector(x: Any, name: str, a: np.ndarray) -> np.ndarray:
    """Validate a per-sample, per-channel array of shape ``(N, K)`` matching ``a``."""
    arr = _v.as_float_array(x, name)
    if arr.shape != a.shape[:2]:
        raise ShapeError(name, arr.shape, a.shape[:2],
                         "one value per sample and channel of activations")
    return arr


def _spatial_axes(a: np.ndarray) -> tuple[int, ...]:
    return tuple(range(2, a.ndim))


def _relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)`` keeping the dtype (unvalidated twin of ``refcam.math.post.relu``)."""
    return np.maximum(x, 0)


def _flag(value: Any, name: str) -> bool:
    """Require a real boolean (``True``/``False``, NumPy bools accepted)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(name, value, "True or False")
    return bool(value)


def _maybe_relu(m: np.ndarray, relu: Any) -> np.ndarray:
    """Apply the final ReLU when the (validated) ``relu`` flag says so.

    A non-finite raw map is reported to the finite-output guard first (:mod:`._finite`): the ReLU
    would turn an overflowed ``-inf`` into a plausible ``0``."""
    report_nonfinite(m, "overflow")
    return _relu(m) if _flag(relu, "relu") else m


def _weighted_sum(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Unvalidated kernel of :func:`weighted_sum` (``a`` and ``w`` already share a dtype)."""
    n, k = a.shape[:2]
    spatial = a.shape[2:]
    a3 = a.reshape(n, k, -1)
    if w.ndim == 2:
        # (N, 1, K) @ (N, K, Z) -> (N, 1, Z): one BLAS gemv per sample, fast for K = 2048.
        out = np.matmul(w[:, None, :], a3)[:, 0, :]
    else:
        # pixel-wise weights: contract the channel axis without a (N, K, Z) temporary.
        out = np.einsum("nkz,nkz->nz", w.reshape(n, k, -1), a3)
        report_nonfinite(out, "overflow")  # einsum raises no floating-point flag
    return out.reshape((n,) + spatial)


# --------------------------------------------------------------------------- public API

@finite_output
def gap(activations: Any) -> np.ndarray:
    r"""Global average pooling over every spatial axis.

    .. math:: \mathrm{GAP}(A)^k = \frac{1}{Z} \sum_{i,j} A^k_{ij}, \qquad Z = \prod S

    This is the pooling of CAM (Zhou et al., 2016, "Learning Deep Features for Discriminative
    Localization", Sec. 2, :math:`F_k = \sum_{x,y} f_k(x,y)` up to the constant :math:`1/Z`).
    A *mean*, not a sum.

    Parameters
    ----------
    activations : array of shape (N, K, *S)
        Feature maps, at least one spatial axis.

    Returns
    -------
    ndarray of shape (N, K), same floating dtype as ``activations``.

    Examples
    --------
    >>> import numpy as np
    >>> gap(np.array([[[[1., 2.], [3., 6.]]]]))
    array([[3.]])
    """
    a = _v.feature_maps(activations, "activations")
    return a.mean(axis=_spatial_axes(a))


@finite_output
def weighted_sum(activations: Any, weights: Any) -> np.ndarray:
    r"""Channel-weighted sum of feature maps, :math:`\sum_k w_k A^k`.

    .. math:: M_{ij} = \sum_k w_k A^k_{ij} \quad\text{or, pixel-wise,}\quad
              M_{ij} = \sum_k w^k_{ij} A^k_{ij}

    The linear combination shared by CAM (Zhou et al., 2016, :math:`M_c(x,y)=\sum_k w^c_k
    f_k(x,y)`), Grad-CAM (Selvaraju et al., 2017, eq. 2 before its ReLU) and every method of
    the family.  No ReLU, no normalisation.

    Parameters
    ----------
    activations : array of shape (N, K, *S)
    weights : array of shape (N, K) (one weight per channel) or (N, K, *S) (one weight per
        channel and position).

    Returns
    -------
    ndarray of shape (N, *S), dtype ``np.result_type(activations, weights)``.

    Notes
    -----
    Per-channel weights use a batched matrix product (BLAS), so ``K = 2048`` costs one
    gemv per sample; pixel-wise weights use ``einsum`` without a ``(N, K, Z)`` temporary.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[1., 0.]], [[0., 2.]]]])       # (1, 2, 1, 2)
    >>> weighted_sum(a, np.array([[3., -1.]]))
    array([[[ 3., -2.]]])
    """
    a = _v.feature_maps(activations, "activations")
    w = _v.as_float_array(weights, "weights")
    if w.shape != a.shape[:2] and w.shape != a.shape:
        raise ShapeError("weights", w.shape, f"{a.shape[:2]} or {a.shape}",
                         "per-channel or pixel-wise weights matching activations")
    dt = _v.result_dtype(a, w)
    return _weighted_sum(a.astype(dt, copy=False), w.astype(dt, copy=False))


@finite_output
def gradient_weights(gradients: Any) -> np.ndarray:
    r"""Grad-CAM neuron-importance weights, the spatial mean of the gradients.

    .. math:: \alpha_k^c = \frac{1}{Z} \sum_i \sum_j \frac{\partial y^c}{\partial A^k_{ij}}

    Selvaraju et al., 2017, "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", eq. 1 (global average pooling of the gradients).

    Parameters
    ----------
    gradients : array of shape (N, K, *S)
        :math:`\partial y^c / \partial A`, one target class per sample already applied.

    Returns
    -------
    ndarray of shape (N, K), same floating dtype as ``gradients``.

    Examples
    --------
    >>> import numpy as np
    >>> gradient_weights(np.array([[[[1., -1.], [2., 2.]]]]))
    array([[1.]])
    """
    g = _v.feature_maps(gradients, "gradients")
    return g.mean(axis=_spatial_axes(g))
