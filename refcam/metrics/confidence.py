"""Average Drop, Increase in Confidence and Win % (Chattopadhay et al. 2018, Grad-CAM++).

Notation of the paper: :math:`Y_i^c` is the model's score for class :math:`c` on the full image
:math:`i`, :math:`O_i^c` its score on the *explanation image* :math:`E^c = L^c \\circ I` (the map,
upsampled to the input and scaled to [0, 1], multiplied pointwise into the image).  The paper uses
softmax probabilities; pass a ``score_fn`` returning probabilities to reproduce its numbers.

Reference: A. Chattopadhay, A. Sarkar, P. Howlader, V. N. Balasubramanian, "Grad-CAM++: Improved
Visual Explanations for Deep Convolutional Networks", arXiv:1710.11063 (WACV 2018 as "Grad-CAM++:
Generalized Gradient-based Visual Explanations ..."), Sec. 4.1: the three metrics are inline and
unnumbered (Win % in words only); :math:`E^c = L^c \\circ I` is eq. (25).  The printed Average Drop
formula omits :math:`1/N`, but the text says it is "computed per image and averaged over the entire
dataset", which is what refcam does.  (Score-CAM, Sec. 4.2, uses the same formulas with the map
restricted to 50 % of the pixels; refcam does not apply that restriction.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _validate as V
from ..errors import InvalidArgumentError
from ._common import (
    ScoreFn,
    as_score_vector,
    batched_scores,
    images,
    maps_for_inputs,
    minmax01,
    targets_array,
)

__all__ = [
    "ConfidenceResult",
    "average_drop",
    "confidence_metrics",
    "explanation_inputs",
    "increase_in_confidence",
    "win_percentage",
]


def _positive(y: np.ndarray, name: str) -> None:
    if (y <= 0).any():
        i = int(np.argmax(y <= 0))
        raise InvalidArgumentError(
            name,
            float(y[i]),
            f"scores > 0 (entry {i}); Average Drop divides by Y_i^c, "
            "so pass probabilities (e.g. softmax) rather than logits",
        )


def average_drop(full_scores: Any, explanation_scores: Any) -> float:
    r"""Average Drop % (Chattopadhay et al. 2018, Grad-CAM++).

    .. math::
        \mathrm{AD} = \frac{100}{N} \sum_{i=1}^{N} \frac{\max(0,\; Y_i^c - O_i^c)}{Y_i^c}

    Lower is better.

    Parameters
    ----------
    full_scores : (N,) array
        :math:`Y_i^c`, the score on the full image.  Must be > 0 (division guard: the formula is
        undefined for :math:`Y_i^c \le 0`, so such input raises instead of being masked).
    explanation_scores : (N,) array
        :math:`O_i^c`, the score on the explanation image :math:`E^c = L^c \circ I`.

    Returns
    -------
    float
        The percentage in [0, 100].

    Examples
    --------
    >>> average_drop([0.8, 0.5], [0.4, 0.6])   # (0.4/0.8 + 0) / 2 * 100
    25.0
    """
    y = as_score_vector(full_scores, "full_scores")
    o = as_score_vector(explanation_scores, "explanation_scores", y.shape[0])
    _positive(y, "full_scores")
    return float(100.0 * np.mean(np.maximum(0.0, y - o) / y))


def increase_in_confidence(full_scores: Any, explanation_scores: Any) -> float:
    r"""Increase in Confidence % (Chattopadhay et al. 2018, Grad-CAM++).

    .. math::
        \mathrm{IC} = \frac{100}{N} \sum_{i=1}^{N} \mathbb{1}\left[Y_i^c < O_i^c\right]

    Strict inequality: equal scores are not an increase.  Higher is better.

    Parameters
    ----------
    full_scores : (N,) array
        :math:`Y_i^c`.
    explanation_scores : (N,) array
        :math:`O_i^c`.

    Examples
    --------
    >>> increase_in_confidence([0.8, 0.5, 0.3, 0.2], [0.4, 0.6, 0.3, 0.9])
    50.0
    """
    y = as_score_vector(full_scores, "full_scores")
    o = as_score_vector(explanation_scores, "explanation_scores", y.shape[0])
    return float(100.0 * np.mean(y < o))


def win_percentage(full_scores: Any, scores_a: Any, scores_b: Any) -> float:
    r"""Win % of method A over method B (Chattopadhay et al. 2018, Grad-CAM++).

    The share of images on which the fall in confidence caused by A's explanation image is smaller
    than B's:

    .. math::
        \mathrm{Win}_{A/B} = \frac{100}{N} \sum_{i=1}^{N}
        \mathbb{1}\left[(Y_i^c - O_{i,A}^c) < (Y_i^c - O_{i,B}^c)\right]

    Ties count as a win for neither method, so ``win(A,B) + win(B,A) <= 100``.

    Parameters
    ----------
    full_scores : (N,) array
        :math:`Y_i^c` (the same for both methods).
    scores_a, scores_b : (N,) arrays
        :math:`O_{i,A}^c`, :math:`O_{i,B}^c`.

    Examples
    --------
    >>> win_percentage([0.9, 0.9, 0.9, 0.9], [0.8, 0.2, 0.5, 0.5], [0.7, 0.3, 0.5, 0.6])
    25.0
    """
    y = as_score_vector(full_scores, "full_scores")
    a = as_score_vector(scores_a, "scores_a", y.shape[0])
    b = as_score_vector(scores_b, "scores_b", y.shape[0])
    return float(100.0 * np.mean((y - a) < (y - b)))


def explanation_inputs(
    inputs: Any, maps: Any, *, normalize: bool = True, resize: str | None = None
) -> np.ndarray:
    r"""The explanation images :math:`E^c = L^c \circ I` of Grad-CAM++.

    Parameters
    ----------
    inputs : (N, C, *S) array
        The images :math:`I`.
    maps : (N, *S) array
        The maps :math:`L^c`.  With ``normalize=True`` (default) each map is min-max scaled to
        [0, 1] first (constant maps become zeros); with ``normalize=False`` the maps are used as
        given.
    normalize : bool
    resize : None or str
        ``None`` refuses maps of another spatial size; a :func:`refcam.math.upsample` mode resizes.

    Returns
    -------
    (N, C, *S) array in the common floating dtype of ``inputs`` and ``maps``.

    Examples
    --------
    >>> explanation_inputs(np.full((1, 1, 1, 2), 4.0), np.array([[[1.0, 3.0]]]))
    array([[[[0., 4.]]]])
    """
    x = images(inputs)
    m = maps_for_inputs(maps, x, resize=resize)
    if normalize:
        m = minmax01(m)
    dt = V.result_dtype(x, m)
    return (x * m[:, None]).astype(dt, copy=False)


@dataclass(frozen=True)
class ConfidenceResult:
    """Scores and metrics of :func:`confidence_metrics`.

    Attributes
    ----------
    full_scores : (N,) float64 — :math:`Y_i^c`.
    explanation_scores : (N,) float64 — :math:`O_i^c`.
    average_drop : float — Average Drop %.
    increase_in_confidence : float — Increase in Confidence %.
    """

    full_scores: np.ndarray
    explanation_scores: np.ndarray
    average_drop: float
    increase_in_confidence: float


def confidence_metrics(
    score_fn: ScoreFn,
    inputs: Any,
    maps: Any,
    targets: Any = None,
    *,
    normalize: bool = True,
    resize: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> ConfidenceResult:
    r"""Run the model on the images and on :math:`E^c = L^c \circ I`; return AD and IC.

    See :func:`average_drop` and :func:`increase_in_confidence` for the formulas
    (Chattopadhay et al. 2018).

    Parameters
    ----------
    score_fn : callable ``(M, C, *S) -> (M,)`` or ``(M, n_classes)``
        The model (see :mod:`refcam.metrics`).
    inputs : (N, C, *S) array
    maps : (N, *S) array
    targets : None, int or (N,) ints
        Class per sample when ``score_fn`` returns one column per class.
    normalize, resize : see :func:`explanation_inputs`.
    batch_size : int
        Inputs per ``score_fn`` call.
    progress : bool
        Show a tqdm bar.

    Examples
    --------
    >>> f = lambda x: x.reshape(len(x), -1).mean(axis=1)       # score = mean pixel
    >>> r = confidence_metrics(f, np.ones((1, 1, 2, 2)), np.array([[[0.0, 1.0], [1.0, 1.0]]]),
    ...                        progress=False)
    >>> r.full_scores, r.explanation_scores, r.average_drop
    (array([1.]), array([0.75]), 25.0)
    """
    x = images(inputs)
    e = explanation_inputs(x, maps, normalize=normalize, resize=resize)
    t = targets_array(targets, x.shape[0])
    both = np.concatenate([x.astype(e.dtype, copy=False), e])
    tt = None if t is None else np.concatenate([t, t])
    s = batched_scores(
        score_fn,
        both.shape[0],
        lambda i: both[i],
        tt,
        batch_size=batch_size,
        progress=progress,
        desc="confidence",
    )
    y, o = s[: x.shape[0]], s[x.shape[0] :]
    return ConfidenceResult(y, o, average_drop(y, o), increase_in_confidence(y, o))
