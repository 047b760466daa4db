r"""Forward-only (perturbation) CAM methods: the math around the model's scores.

The adapter runs the model on perturbed inputs (masked images for Score-CAM, ablated channels
for Ablation-CAM) and passes the target-class scores here; these functions turn those scores
into channel weights and maps.  Shapes: activations ``(N, K, *S)``; ``scores`` ``(N, K)`` -- the
target score of sample ``n`` when channel ``k`` is used to perturb it; ``baseline_score``
``(N,)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _validate as _v
from ..errors import ShapeError
from .blocks import _channel_vector, _relu, _weighted_sum

__all__ = [
    "scorecam_weights",
    "scorecam",
    "ablationcam_weights",
    "ablationcam",
]


def _scores(x: Any, name: str = "scores") -> np.ndarray:
    arr = _v.as_float_array(x, name)
    _v.check_ndim(arr, name, min_ndim=2, max_ndim=2, layout="(N, K): one score per sample and channel")
    if 0 in arr.shape:
        raise ShapeError(name, arr.shape, "(N, K) with N, K >= 1")
    return arr


def _baseline(x: Any, name: str, n: int, *, allow_scalar: bool) -> np.ndarray:
    arr = _v.as_float_array(x, name)
    if allow_scalar and arr.ndim == 0:
        return np.broadcast_to(arr, (n,))
    if arr.shape != (n,):
        raise ShapeError(name, arr.shape, (n,) if not allow_scalar else f"() or {(n,)}",
                         "one score per sample")
    return arr


def _scorecam_weights(c: np.ndarray, b: np.ndarray | None, softmax: bool) -> np.ndarray:
    dt = c.dtype if b is None else _v.result_dtype(c, b)
    c = c.astype(dt, copy=False)
    if b is not None:
        c = c - b.astype(dt, copy=False)[:, None]
    if softmax:
        e = np.exp(c - c.max(axis=1, keepdims=True))    # max term is exp(0) = 1: sum >= 1
        c = e / e.sum(axis=1, keepdims=True)
    return c


# --------------------------------------------------------------------------- Score-CAM

def scorecam_weights(scores: Any, baseline_score: Any = None, *, softmax: bool = False) -> np.ndarray:
    r"""Score-CAM channel weights from the scores of the masked inputs.

    .. math:: \alpha^c_k = C(A^k) = f^c(X \circ H^k) - f^c(X_b)

    Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu, 2020, "Score-CAM: Score-Weighted Visual
    Explanations for Convolutional Neural Networks" (CVPR Workshops), Definition 1 (increase of
    confidence) and Definition 2 (:math:`\alpha^c_k = C(A^k_l)`).

    Parameters
    ----------
    scores : array of shape (N, K)
        :math:`f^c(X \circ H^k)`, the target score of each masked input.
    baseline_score : None, scalar or array of shape (N,)
        :math:`f^c(X_b)`, the score of the baseline input; ``None`` means 0 (no subtraction,
        which is what pytorch-grad-cam and torchcam do).
    softmax : bool, default False
        ``False``: :math:`\alpha^c_k = C(A^k)` as in Definition 2; there the score :math:`f^c`
        is the model's **softmax probability** of class :math:`c` (the adapter chooses what
        ``scores`` are).  ``True``: softmax **over the channels k** of
        :math:`C(A^k)`, :math:`\alpha_k = e^{C_k} / \sum_{k'} e^{C_{k'}}`, as in the paper's
        Algorithm 1 and in pytorch-grad-cam / torchcam, which apply it to the **raw logits** of
        the masked inputs.  The softmax is shift invariant, so ``baseline_score`` has no effect
        when ``softmax=True``.

    Returns
    -------
    ndarray of shape (N, K).

    Examples
    --------
    >>> import numpy as np
    >>> scorecam_weights(np.array([[0.5, 0.2]]), np.array([0.1]))
    array([[0.4, 0.1]])
    >>> scorecam_weights(np.array([[np.log(3.), 0.]]), softmax=True)   # e^C = [3, 1]
    array([[0.75, 0.25]])
    """
    c = _scores(scores)
    b = None if baseline_score is None else _baseline(baseline_score, "baseline_score", c.shape[0],
                                                      allow_scalar=True)
    return _scorecam_weights(c, b, bool(softmax))


def scorecam(
    activations: Any,
    scores: Any,
    *,
    baseline_score: Any = None,
    softmax: bool = False,
    relu: bool = True,
) -> np.ndarray:
    r"""Score-CAM map.

    .. math:: L^c_{\text{Score-CAM}} = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big),
              \qquad \alpha^c_k = f^c(X \circ H^k) - f^c(X_b)

    Wang et al., 2020, Definition 2 (weights: :func:`scorecam_weights`).

    Parameters
    ----------
    activations : array of shape (N, K, *S)
    scores : array of shape (N, K)
    baseline_score : None, scalar or array of shape (N,)
    softmax : bool, default False
        See :func:`scorecam_weights`.
    relu : bool, default True
        Definition 2 applies a ReLU.

    Returns
    -------
    ndarray of shape (N, *S).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[1., 0.]], [[0., 1.]]]])
    >>> scorecam(a, np.array([[0.5, -0.2]]))                   # ReLU([0.5, -0.2])
    array([[[0.5, 0. ]]])
    """
    a = _v.feature_maps(activations, "activations")
    c = _channel_vector(scores, "scores", a)
    b = None if baseline_score is None else _baseline(baseline_score, "baseline_score", a.shape[0],
                                                      allow_scalar=True)
    w = _scorecam_weights(c, b, bool(softmax))
    dt = _v.result_dtype(a, w)
    m = _weighted_sum(a.astype(dt, copy=False), w.astype(dt, copy=False))
    return _relu(m) if relu else m


# --------------------------------------------------------------------------- Ablation-CAM

def _ablation_weights(c: np.ndarray, y: np.ndarray) -> np.ndarray:
    dt = _v.result_dtype(c, y)
    c = c.astype(dt, copy=False)
    y = y.astype(dt, copy=False)[:, None]
    nonzero = y != 0
    return np.where(nonzero, (y - c) / np.where(nonzero, y, 1), 0).astype(dt, copy=False)


def ablationcam_weights(scores: Any, baseline_score: Any) -> np.ndarray:
    r"""Ablation-CAM channel weights: relative drop of the class score when a channel is ablated.

    .. math:: w^c_k = \frac{y^c - y^c_k}{y^c}

    Ramaswamy & Desai, 2020, "Ablation-CAM: Visual Explanations for Deep Convolutional Network
    via Gradient-free Localization" (WACV), the Ablation-CAM weight (the "slope" normalised by
    the unablated score).

    Parameters
    ----------
    scores : array of shape (N, K)
        :math:`y^c_k`, the class score with channel :math:`k` ablated (set to zero in the paper).
    baseline_score : array of shape (N,)
        :math:`y^c`, the class score of the unablated input.

    Returns
    -------
    ndarray of shape (N, K).

    Notes
    -----
    **Division guard (explicit mask).**  When :math:`y^c = 0` the relative drop is undefined;
    refcam returns :math:`w^c_k = 0` for every channel of that sample (so the map is zero)
    instead of Inf/NaN.  pytorch-grad-cam divides unguarded.  The paper assumes
    :math:`y^c > 0`; a negative :math:`y^c` flips the sign of every weight (not guarded: it is
    what the formula says).

    Examples
    --------
    >>> import numpy as np
    >>> ablationcam_weights(np.array([[1., 3.], [5., 1.]]), np.array([2., 0.]))
    array([[ 0.5, -0.5],
           [ 0. ,  0. ]])
    """
    c = _scores(scores)
    y = _baseline(baseline_score, "baseline_score", c.shape[0], allow_scalar=False)
    return _ablation_weights(c, y)


def ablationcam(activations: Any, scores: Any, baseline_score: Any, *, relu: bool = True) -> np.ndarray:
    r"""Ablation-CAM map.

    .. math:: L^c_{\text{Ablation-CAM}} = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big), \qquad
              w^c_k = \frac{y^c - y^c_k}{y^c}

    Ramaswamy & Desai, 2020 (WACV), the Ablation-CAM map (weights: :func:`ablationcam_weights`).

    Parameters
    ----------
    activations : array of shape (N, K, *S)
    scores : array of shape (N, K)
        :math:`y^c_k`, score with channel k ablated.
    baseline_score : array of shape (N,)
        :math:`y^c`, unablated score; 0 gives a zero map (see :func:`ablationcam_weights`).
    relu : bool, default True
        The paper's map applies a ReLU, as Grad-CAM's eq. 2.

    Returns
    -------
    ndarray of shape (N, *S).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[2., 0.]], [[0., 2.]]]])
    >>> ablationcam(a, np.array([[1., 3.]]), np.array([2.]))   # w = [0.5, -0.5]
    array([[[1., 0.]]])
    """
    a = _v.feature_maps(activations, "activations")
    c = _channel_vector(scores, "scores", a)
    y = _baseline(baseline_score, "baseline_score", a.shape[0], allow_scalar=False)
    w = _ablation_weights(c, y)
    dt = _v.result_dtype(a, w)
    m = _weighted_sum(a.astype(dt, copy=False), w.astype(dt, copy=False))
    return _relu(m) if relu else m
