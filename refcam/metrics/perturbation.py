"""Deletion and insertion curves and their AUC (Petsiuk et al. 2018, RISE).

Conventions (all explicit, all documented here once):

* **pixel order** — descending saliency; ties broken by ascending flat (C-order) spatial index.
  Implemented as a stable argsort of the negated map, i.e. sort by the key ``(-value, flat index)``.
  A constant map therefore removes pixels in raster order.
* **step** — ``step`` pixels (spatial positions, all channels at once) per step; the curve has
  ``T = ceil(P / step) + 1`` points for ``P`` spatial positions, the first with nothing
  removed/inserted and the last with everything; point ``k`` has ``min(k·step, P)`` pixels changed.
* **fraction axis** — ``x_k = min(k·step, P) / P`` in [0, 1] (the last step may be shorter).
* **baselines** — ``"zeros"``; ``"blur"`` = :func:`scipy.ndimage.gaussian_filter` of the image over
  the spatial axes only (``sigma=blur_sigma``, default 5.0, ``truncate=4.0``, ``mode="reflect"``),
  each channel separately; ``"mean"`` = per-sample, per-channel spatial mean; or an explicit array
  broadcastable to the inputs ``(N, C, *S)``.  RISE's defaults: deletion → zeros (black),
  insertion → blur.
* **AUC** — trapezoid rule over the fraction axis:
  :math:`\\mathrm{AUC} = \\sum_k (x_{k+1}-x_k)\\,(y_k + y_{k+1})/2`.

Differences from the RISE reference code (``evaluation.py``), stated so results can be compared:
its pixel order flips an ascending, non-stable ``np.argsort`` (tie order unspecified); its x axis is
uniform ``k / n_steps`` even when ``step`` does not divide ``P`` (refcam uses the true fraction; the
two agree when it does); its blur is a conv2d with an 11×11 kernel (``gaussian_filter`` of a delta,
σ = 5) and zero padding, which darkens the borders, whereas refcam's ``"blur"`` filters the whole
image (reflect padding, 4σ radius).

Reference: V. Petsiuk, A. Das, K. Saenko, "RISE: Randomized Input Sampling for Explanation of
Black-box Models", BMVC 2018, arXiv:1806.07421 (deletion and insertion are defined in the text, no
equation number; the section is not verified).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from .. import _validate as V
from ..errors import ShapeError
from ._common import ScoreFn, batched_scores, images, maps_for_inputs, targets_array

__all__ = [
    "BASELINES",
    "PerturbationCurve",
    "auc",
    "deletion",
    "insertion",
    "make_baseline",
    "saliency_order",
]

BASELINES = ("zeros", "blur", "mean")


def saliency_order(maps: Any) -> np.ndarray:
    r"""Flat spatial indices sorted by descending saliency, ties by ascending index.

    The sort key is :math:`(-L_p,\ p)` for flat C-order position :math:`p` (stable argsort of the
    negated map), so a constant map yields ``0, 1, ..., P-1``.

    Parameters
    ----------
    maps : (N, *S) array

    Returns
    -------
    (N, P) int64 array, ``P = prod(S)``.

    Examples
    --------
    >>> saliency_order(np.array([[[0.5, 0.9], [0.5, 0.1]]]))
    array([[1, 0, 2, 3]])
    """
    m = V.maps(maps, "maps")
    flat = m.reshape(m.shape[0], -1)
    return np.argsort(-flat, axis=1, kind="stable").astype(np.int64)


def make_baseline(inputs: Any, baseline: Any = "zeros", *, blur_sigma: float = 5.0) -> np.ndarray:
    r"""The image that removed pixels are replaced by (deletion) or start from (insertion).

    ``"zeros"``: :math:`B = 0`.  ``"mean"``: :math:`B_{c} = \frac{1}{P}\sum_p I_{c,p}` per sample and
    channel.  ``"blur"``: :math:`B = G_\sigma * I` over the spatial axes only
    (:func:`scipy.ndimage.gaussian_filter`, ``mode="reflect"``, ``truncate=4.0``).  An array is
    broadcast to the inputs' shape.

    Parameters
    ----------
    inputs : (N, C, *S) array
    baseline : {"zeros", "blur", "mean"} or array broadcastable to (N, C, *S)
    blur_sigma : float
        Standard deviation (pixels) of the Gaussian blur; 0 leaves the image unchanged.

    Returns
    -------
    (N, C, *S) array, the inputs' dtype (common dtype with an array baseline).

    Examples
    --------
    >>> make_baseline(np.array([[[[1.0, 3.0]]]]), "mean")
    array([[[[2., 2.]]]])
    """
    x = images(inputs)
    if isinstance(baseline, str):
        V.choice(baseline, "baseline", BASELINES)
        if baseline == "zeros":
            return np.zeros_like(x)
        if baseline == "mean":
            axes = tuple(range(2, x.ndim))
            return np.broadcast_to(x.mean(axis=axes, keepdims=True), x.shape).astype(x.dtype)
        sigma = V.nonnegative_float(blur_sigma, "blur_sigma")
        sig = (0.0, 0.0) + (sigma,) * (x.ndim - 2)
        return ndimage.gaussian_filter(x, sigma=sig, mode="reflect", truncate=4.0).astype(
            x.dtype, copy=False
        )
    b = V.as_float_array(baseline, "baseline")
    try:
        out = np.broadcast_to(b, x.shape)
    except ValueError:
        raise ShapeError("baseline", b.shape, x.shape, "must broadcast to inputs") from None
    return out.astype(V.result_dtype(x, b))


def auc(fractions: Any, scores: Any) -> np.ndarray:
    r"""Area under a perturbation curve by the trapezoid rule over the fraction axis.

    .. math::
        \mathrm{AUC} = \sum_{k=0}^{T-2} (x_{k+1} - x_k)\,\frac{y_k + y_{k+1}}{2}

    Parameters
    ----------
    fractions : (T,) array, non-decreasing, ``T >= 2`` — :math:`x_k`.
    scores : (..., T) array — :math:`y_k` (one curve per leading index).

    Returns
    -------
    (...) array.

    Examples
    --------
    >>> auc([0.0, 0.5, 1.0], [1.0, 0.5, 0.0])
    array(0.5)
    """
    x = V.as_float_array(fractions, "fractions")
    y = V.as_float_array(scores, "scores")
    if x.ndim != 1 or x.shape[0] < 2:
        raise ShapeError("fractions", x.shape, "(T,) with T >= 2")
    if y.ndim < 1 or y.shape[-1] != x.shape[0]:
        raise ShapeError("scores", y.shape, f"(..., {x.shape[0]}) matching fractions")
    if (np.diff(x) < 0).any():
        raise ShapeError(
            "fractions", x.shape, "non-decreasing values", "fractions must not decrease"
        )
    dt = V.result_dtype(x, y)
    return np.asarray((np.diff(x) * (y[..., 1:] + y[..., :-1]) / 2).sum(axis=-1), dtype=dt)


@dataclass(frozen=True)
class PerturbationCurve:
    """A deletion or insertion curve.

    Attributes
    ----------
    fractions : (T,) — share of pixels removed (deletion) or inserted (insertion), 0 to 1.
    scores : (N, T) — target score after each step.
    auc : (N,) — trapezoid AUC of each curve over ``fractions``.
    order : (N, P) int64 — the pixel order used (:func:`saliency_order`).
    """

    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray
    order: np.ndarray


def _curve_metric(kind: str, default_baseline: str, doc: str) -> Callable[..., PerturbationCurve]:
    """The public ``deletion`` / ``insertion`` (``kind``), with RISE's baseline of that kind."""

    def metric(
        score_fn: ScoreFn,
        inputs: Any,
        maps: Any,
        targets: Any = None,
        *,
        step: int,
        baseline: Any = default_baseline,
        blur_sigma: float = 5.0,
        resize: str | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> PerturbationCurve:
        x = images(inputs)
        m = maps_for_inputs(maps, x, resize=resize)
        step = V.positive_int(step, "step")
        base = make_baseline(x, baseline, blur_sigma=blur_sigma)
        dt = V.result_dtype(x, m, base)
        x = x.astype(dt, copy=False)
        base = base.astype(dt, copy=False)
        t = targets_array(targets, x.shape[0])
        order = saliency_order(m)
        n, p = order.shape
        rank = np.empty_like(order)
        np.put_along_axis(
            rank, order, np.broadcast_to(np.arange(p), (n, p)), axis=1
        )  # rank of each pixel
        counts = np.minimum(np.arange(-(-p // step) + 1) * step, p)  # pixels changed at each point
        n_pts = counts.size
        xs = x.reshape(n, x.shape[1], p)
        bs = base.reshape(n, x.shape[1], p)
        first, then = (xs, bs) if kind == "deletion" else (bs, xs)

        def build(items: np.ndarray) -> np.ndarray:
            s, k = items // n_pts, items % n_pts
            changed = rank[s] < counts[k][:, None]  # (B, P): the first counts[k] pixels in the order
            out = np.where(changed[:, None, :], then[s], first[s])
            return out.reshape((items.size,) + x.shape[1:])

        item_t = None if t is None else np.repeat(t, n_pts)
        sc = (
            batched_scores(
                score_fn, n * n_pts, build, item_t, batch_size=batch_size, progress=progress, desc=kind
            )
            .reshape(n, n_pts)
            .astype(dt)
        )
        fr = (counts / p).astype(dt)
        return PerturbationCurve(fr, sc, auc(fr, sc), order)

    metric.__name__ = metric.__qualname__ = kind
    metric.__doc__ = doc
    return metric


deletion = _curve_metric(
    "deletion", "zeros",
    r"""Deletion curve and AUC (Petsiuk et al. 2018, RISE): remove the most salient pixels first.

    Point :math:`k` of the curve is :math:`y_k = f_c(I^{(k)})` with

    .. math::
        I^{(k)}_{c,p} = \begin{cases} B_{c,p} & \mathrm{rank}(p) < \min(k\,s, P) \\
                         I_{c,p} & \text{otherwise}\end{cases},
        \qquad x_k = \min(k\,s, P)/P

    where :math:`\mathrm{rank}` is the position in :func:`saliency_order` (descending saliency, ties
    by flat index), :math:`s` = ``step`` and :math:`B` the baseline.  Lower AUC is better.

    Parameters
    ----------
    score_fn : callable ``(M, C, *S) -> (M,)`` or ``(M, n_classes)``
    inputs : (N, C, *S) array
    maps : (N, *S) array — saliency; must match the input's spatial size unless ``resize`` is given.
    targets : None, int or (N,) ints
    step : int, required — pixels (spatial positions) removed per step.  No default on purpose: the
        exact curve (``step=1``) costs ``P + 1`` forward passes per image; RISE used 224 on
        224×224 images (``T = 225`` points).
    baseline : {"zeros", "blur", "mean"} or array — see :func:`make_baseline`; RISE uses zeros.
    blur_sigma : float — sigma of the ``"blur"`` baseline.
    resize : None or str — see :func:`refcam.metrics.confidence.explanation_inputs`.
    batch_size : int — perturbed inputs per ``score_fn`` call.
    progress : bool — tqdm bar.

    Returns
    -------
    PerturbationCurve

    Examples
    --------
    >>> f = lambda x: x.reshape(len(x), -1).sum(axis=1)          # linear toy model
    >>> c = deletion(f, np.array([[[[1.0, 2.0]]]]), np.array([[[0.0, 1.0]]]), step=1, progress=False)
    >>> c.fractions, c.scores, c.auc       # remove pixel 1 (value 2) first, then pixel 0
    (array([0. , 0.5, 1. ]), array([[3., 1., 0.]]), array([1.25]))
    """,
)

insertion = _curve_metric(
    "insertion", "blur",
    r"""Insertion curve and AUC (Petsiuk et al. 2018, RISE): insert the most salient pixels first.

    .. math::
        I^{(k)}_{c,p} = \begin{cases} I_{c,p} & \mathrm{rank}(p) < \min(k\,s, P) \\
                         B_{c,p} & \text{otherwise}\end{cases},
        \qquad x_k = \min(k\,s, P)/P

    starting from the baseline :math:`B` (RISE: a blurred copy of the image).  Higher AUC is better.
    Parameters as in :func:`deletion`.

    Examples
    --------
    >>> f = lambda x: x.reshape(len(x), -1).sum(axis=1)
    >>> c = insertion(f, np.array([[[[1.0, 2.0]]]]), np.array([[[0.0, 1.0]]]), step=1, baseline="zeros",
    ...               progress=False)
    >>> c.scores, c.auc
    (array([[0., 2., 3.]]), array([1.75]))
    """,
)
