r"""Activation-only channel weightings: FEM (k-sigma rule) and the random-weights baseline.

Both weight the channels of the activations :math:`A^k` of shape ``(N, K, *S)`` without any
gradient or score, and return the map :math:`L = \sum_k w_k A^k` (``(N, *S)``).

* :func:`fem` -- Fuad, Martin, Giot, Bourqui, Benois-Pineau & Zemmari, 2020, "Features
  understanding in 3D CNNs for actions recognition in video" (IPTA 2020, hal-02963298): a channel
  weighs the fraction of its positions above its own "k-sigma" threshold
  :math:`\mu_k + \kappa\,\sigma_k`.
* :func:`randomcam` -- the sanity baseline of pytorch-grad-cam's ``RandomCAM``: channel weights
  drawn uniformly in :math:`[-1, 1)` (no paper; the reference every explanation must beat).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._finite import finite_output
from .. import _validate as _v
from ..errors import InvalidArgumentError, ShapeError
from .blocks import _maybe_relu, _spatial_axes, _weighted_sum

__all__ = ["fem", "fem_weights", "random_weights", "randomcam"]


@finite_output
def fem_weights(activations: Any, *, k: float = 2.0) -> np.ndarray:
    r"""FEM channel weights: the fraction of positions above the channel's k-sigma threshold.

    .. math:: \tau_k = \mu_k + \kappa\,\sigma_k,\qquad
              w_k = \frac1Z \sum_{ij} [A^k_{ij} > \tau_k]

    with :math:`\mu_k = \frac1Z\sum_{ij} A^k_{ij}` and the population standard deviation
    :math:`\sigma_k = \sqrt{\frac1Z\sum_{ij}(A^k_{ij}-\mu_k)^2}` (``ddof=0``) over the spatial
    positions, :math:`\kappa` = ``k``.  Fuad et al. 2020 (IPTA), the "k-sigma rule" binarisation
    of each feature map; the weighting by the mean of the binary mask is pytorch-grad-cam 1.5.7's
    ``fem.py:38-45`` (the paper's text was not available to check an equation number).

    Strict inequality: a position equal to the threshold is not counted.  :math:`\mu_k` and
    :math:`\sigma_k` are computed in the dtype of the activations with NumPy's ``mean``/``std``
    (as the peer does, so the float32 comparisons decide identically).

    Parameters
    ----------
    activations : array (N, K, *S)
    k : float, default 2.0
        :math:`\kappa`, a finite real number (the peer's ``k``; negative values are allowed).

    Returns
    -------
    ndarray (N, K), values in ``[0, 1]``; a spatially constant channel gets weight 0
    (:math:`\sigma_k = 0` and no position exceeds its mean) up to the round-off of its mean.

    Examples
    --------
    >>> a = np.array([[[0., 0., 0., 4.]]])        # mu = 1, sigma = sqrt(3): tau(k=1) = 2.73
    >>> fem_weights(a, k=1.0)                      # one position of four is above
    array([[0.25]])
    """
    a = _v.feature_maps(activations, "activations")
    kappa = _real(k, "k")
    axes = _spatial_axes(a)
    mu = np.mean(a, axis=axes, keepdims=True)
    sd = np.std(a, axis=axes, keepdims=True)
    tau = mu + a.dtype.type(kappa) * sd
    return np.mean(a > tau, axis=axes).astype(a.dtype)


@finite_output
def fem(activations: Any, *, k: float = 2.0, relu: bool = True) -> np.ndarray:
    r"""FEM map: :math:`L = \sum_k w_k A^k` with the k-sigma weights of :func:`fem_weights`.

    .. math:: L^{\mathrm{FEM}} = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big),\qquad
              w_k = \frac1Z \sum_{ij} [A^k_{ij} > \mu_k + \kappa\sigma_k]

    Fuad et al. 2020 (IPTA); pytorch-grad-cam 1.5.7 ``FEM`` (``fem.py``).  Class-agnostic: no
    target, no gradient.

    Parameters
    ----------
    activations : array (N, K, *S)
    k : float, default 2.0
        :math:`\kappa` of the threshold.
    relu : bool, default True
        The weights are non-negative, so the map is negative only where activations are; the
        default keeps the positive evidence as every CAM map does (pytorch-grad-cam applies its
        ReLU to every map).

    Returns
    -------
    ndarray (N, *S), dtype of ``activations``.

    Examples
    --------
    >>> a = np.array([[[0., 0., 0., 4.]], [[1., 1., 1., 1.]]]).reshape(1, 2, 4)
    >>> fem(a, k=1.0)                              # w = [0.25, 0]: 0.25 * A^0
    array([[0., 0., 0., 1.]])
    """
    a = _v.feature_maps(activations, "activations")
    w = fem_weights(a, k=k)
    return _maybe_relu(_weighted_sum(a, w), relu)


@finite_output(widen=False)
def random_weights(n: int, k: int, *, seed: Any = 0, dtype: Any = np.float64) -> np.ndarray:
    r"""Random channel weights :math:`w_k \sim U[-1, 1)`, ``(n, k)``, from ``numpy.random.default_rng(seed)``.

    The generator is refcam's, not pytorch-grad-cam's (``np.random.uniform`` on NumPy's global
    legacy state): to reproduce a peer run pass the peer's draws to :func:`randomcam` as
    ``weights``.  Two generators agree only in distribution.

    Examples
    --------
    >>> w = random_weights(2, 3, seed=1)
    >>> w.shape, bool((w >= -1).all() and (w < 1).all())
    ((2, 3), True)
    >>> bool((random_weights(2, 3, seed=1) == w).all())
    True
    """
    n = _v.positive_int(n, "n")
    k = _v.positive_int(k, "k")
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, k)).astype(dtype)


@finite_output(widen=False)
def randomcam(activations: Any, weights: Any = None, *, seed: Any = 0, relu: bool = True) -> np.ndarray:
    r"""Random-weights CAM, the sanity baseline: :math:`L = \sum_k w_k A^k`, :math:`w_k \sim U[-1, 1)`.

    pytorch-grad-cam 1.5.7 ``RandomCAM`` (``random_cam.py:19``: ``np.random.uniform(-1, 1, size=(N,
    K))``); no paper.  A faithful explanation method must do better than this map on every
    metric (Adebayo et al. 2018 style sanity reference).

    Parameters
    ----------
    activations : array (N, K, *S)
    weights : array (N, K), optional
        The draws to use (e.g. the peer's); default :func:`random_weights` ``(N, K, seed=seed)``.
    seed : int or sequence of ints
        Seed of ``numpy.random.default_rng`` when ``weights`` is not given.
    relu : bool, default True
        pytorch-grad-cam's ReLU on every map.

    Returns
    -------
    ndarray (N, *S), dtype of ``activations``.

    Examples
    --------
    >>> a = np.array([[[1., 2.]], [[3., 0.]]]).reshape(1, 2, 2)
    >>> randomcam(a, np.array([[0.5, -1.0]]))       # 0.5 [1, 2] - [3, 0] = [-2.5, 1]
    array([[0., 1.]])
    """
    a = _v.feature_maps(activations, "activations")
    if weights is None:
        w = random_weights(a.shape[0], a.shape[1], seed=seed, dtype=a.dtype)
    else:
        w = _v.as_float_array(weights, "weights")
        if w.shape != a.shape[:2]:
            raise ShapeError("weights", w.shape, a.shape[:2], "one weight per sample and channel")
    dt = _v.result_dtype(a, w)
    return _maybe_relu(_weighted_sum(a.astype(dt, copy=False), w.astype(dt, copy=False)), relu)


def _real(x: Any, name: str) -> float:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)) \
            or not np.isfinite(x):
        raise InvalidArgumentError(name, x, "a finite real number")
    return float(x)
