r"""SESS (Saliency Enhancing with Scaling and Sliding): the geometry and the fusion of patch maps.

Tyagi, Shibu, ..., 2022, "SESS: Saliency Enhancing with Scaling and Sliding" (ECCV 2022,
arXiv:2207.01769): the image is resized to several scales, a fixed-size window slides over every
scale, the base method's map of every patch is weighted by the patch's class score, pasted back
into the coordinates it came from, resized to the image, and the patch maps are fused by a
spatial weighted average (or a maximum), then smoothed.  This module holds the pure parts, with
pytorch-grad-cam 1.5.7's conventions (``sess.py``) as defaults:

* :func:`sess_scales` -- the scales (shorter side of the resized image);
* :func:`window_starts` -- the window positions along one axis (last window shifted back inside);
* :func:`sess_fuse` -- paste, resize (bilinear half-pixel = OpenCV ``INTER_LINEAR``), fuse;
* :func:`gaussian_blur` -- OpenCV's ``GaussianBlur`` (separable, reflect-101 border).

The model-dependent parts (resizing the input, scoring and explaining the patches) belong to the
caller; the peer resizes its input with torchvision's bilinear resize (antialiased, which for the
up-scalings SESS uses equals half-pixel bilinear up to ~2e-6: :func:`refcam.math.upsample`).
The paper's equations were not verified; the conventions are the peer's.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import _validate as _v
from ..errors import InvalidArgumentError, ShapeError
from ._finite import finite_output
from .post import upsample

__all__ = ["SESS_POOLS", "gaussian_blur", "sess_fuse", "sess_scales", "window_starts"]

#: fusion of the patch maps: spatial weighted average or maximum
SESS_POOLS = ("mean", "max")


@finite_output
def sess_scales(window: int, n_scales: int = 12, step_ratio: float = 2.0 / 7.0) -> list[int]:
    r"""The SESS scales :math:`s_i = w + \mathrm{round}(w\,r)\, i`, :math:`i = 0..n-1` (the shorter
    side of each resized image; :math:`w` the window, :math:`r` = ``step_ratio``; Python's
    ``round``, half to even, as pytorch-grad-cam ``sess.py:177-181``).

    >>> sess_scales(224, 3)
    [224, 288, 352]
    """
    window = _v.positive_int(window, "window")
    n_scales = _v.positive_int(n_scales, "n_scales")
    step = int(round(window * _v.nonnegative_float(step_ratio, "step_ratio")))
    return [window + step * i for i in range(n_scales)]


@finite_output
def window_starts(length: int, step: int, window: int) -> list[int]:
    r"""Start positions of the windows of size ``window`` and stride ``step`` covering ``length``;
    a window that would cross the end is shifted back inside (pytorch-grad-cam ``sess.py:268-275``).

    >>> window_starts(10, 4, 4)        # 0, 4, then 8 would cross: shifted to 6
    [0, 4, 6]
    >>> window_starts(4, 4, 4)
    [0]
    """
    length = _v.positive_int(length, "length")
    step = _v.positive_int(step, "step")
    window = _v.positive_int(window, "window")
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


@finite_output
def sess_fuse(cams: Any, weights: Any, boxes: Sequence[Sequence[int]], size: Sequence[int], *,
              pool: str = "mean", theta: float = 0.0) -> np.ndarray:
    r"""Fuse patch maps into one map of the image.

    Patch :math:`p` (map :math:`C_p` of the window at :math:`(x_1, y_1)` of the image resized to
    :math:`W_s\times H_s`, weight :math:`\omega_p`) is pasted into a zero canvas of size
    :math:`H_s\times W_s`, resized to ``size`` (:func:`refcam.math.upsample` ``"linear"``:
    half-pixel bilinear, OpenCV ``INTER_LINEAR``), giving :math:`P_p`; then

    .. math:: \text{mean: } L = \frac{\sum_p P_p [P_p > \theta]}{\sum_p [P_p > \theta]}\ (0 \text{ where no patch counts}),
              \qquad \text{max: } L = \max(0, \max_p P_p)

    (pytorch-grad-cam ``sess.py:_CAMFusion``, ``paste_cam``; sums in the order of the patches).

    Parameters
    ----------
    cams : (P, h, w) patch maps.
    weights : (P,) patch weights :math:`\omega_p`.
    boxes : P tuples ``(x1, y1, W_s, H_s)``.
    size : ``(H, W)`` of the image.
    pool : {"mean", "max"}
    theta : threshold of the mean pooling.

    Returns
    -------
    ndarray (H, W), dtype of ``cams``.

    Examples
    --------
    >>> cams = np.ones((2, 1, 1))
    >>> sess_fuse(cams, [1.0, 0.5], [(0, 0, 2, 1), (1, 0, 2, 1)], (1, 2))   # mean over covering patches
    array([[1. , 0.5]])
    """
    c = _v.as_float_array(cams, "cams")
    w = _v.as_float_array(weights, "weights").reshape(-1)
    if c.ndim != 3 or len(w) != len(c) or len(boxes) != len(c):
        raise ShapeError("cams", c.shape, f"(P, h, w) with P = len(weights) = len(boxes) = {len(w)}",
                         "one map, weight and box per patch")
    pool = _v.choice(pool, "pool", SESS_POOLS)
    theta = float(theta)
    h_out, w_out = (int(s) for s in size)
    dt = c.dtype
    total = np.zeros((h_out, w_out), dtype=dt)
    counts = np.zeros((h_out, w_out), dtype=dt)
    for cam, wt, (x1, y1, ws, hs) in zip(c, w, boxes):
        if y1 + cam.shape[0] > hs or x1 + cam.shape[1] > ws:
            raise InvalidArgumentError("boxes", (x1, y1, ws, hs), "a window inside its resized image")
        full = np.zeros((int(hs), int(ws)), dtype=dt)
        full[y1:y1 + cam.shape[0], x1:x1 + cam.shape[1]] = cam * dt.type(wt)
        back = full if full.shape == (h_out, w_out) else upsample(full[None], (h_out, w_out), "linear")[0]
        if pool == "max":
            np.maximum(total, back, out=total)
        else:
            mask = back > theta
            total[mask] += back[mask]
            counts += mask
    if pool == "max":
        return total
    return np.divide(total, counts, out=np.zeros_like(total), where=counts > 0)


@finite_output
def gaussian_blur(maps: Any, ksize: int = 11, sigma: float = 5.0) -> np.ndarray:
    r"""Separable Gaussian smoothing of the last two axes, OpenCV ``GaussianBlur`` conventions.

    .. math:: g_i = \frac{e^{-(i - (k-1)/2)^2 / (2\sigma^2)}}{\sum_j e^{-(j - (k-1)/2)^2/(2\sigma^2)}},
              \quad i = 0..k-1

    correlated along each of the last two axes with the reflect-101 border (``d c b | a b c d | c b
    a``; OpenCV ``BORDER_REFLECT_101``, SciPy ``mode="mirror"``).  ``ksize`` odd (OpenCV's fixed
    tables for ``ksize <= 7`` with ``sigma <= 0`` are not reproduced: ``sigma`` must be > 0).

    Examples
    --------
    >>> m = np.zeros((1, 1, 5)); m[0, 0, 2] = 1.0
    >>> np.round(gaussian_blur(m, 3, 1.0), 4)          # kernel [.2741, .4519, .2741]
    array([[[0.    , 0.2741, 0.4519, 0.2741, 0.    ]]])
    """
    m = _v.as_float_array(maps, "maps")
    if m.ndim < 2:
        raise ShapeError("maps", m.shape, "(..., H, W)", "maps with two spatial axes")
    ksize = _v.positive_int(ksize, "ksize")
    if ksize % 2 == 0:
        raise InvalidArgumentError("ksize", ksize, "an odd positive int")
    sigma = _v.nonnegative_float(sigma, "sigma")
    if sigma == 0:
        raise InvalidArgumentError("sigma", sigma, "a positive number")
    x = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    from scipy import ndimage  # imported here: scipy.ndimage costs ~0.2 s of every refcam import

    out = ndimage.correlate1d(m.astype(np.float64), g, axis=-1, mode="mirror")
    return ndimage.correlate1d(out, g, axis=-2, mode="mirror").astype(m.dtype)
