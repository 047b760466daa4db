"""Localisation metrics: pointing game, energy-based pointing game, CAM boxes, IoU, localisation accuracy.

Box convention (everywhere in refcam.metrics)
---------------------------------------------
A box is ``(x_min, y_min, x_max, y_max)`` in **pixel-edge coordinates, half-open**: ``x`` runs along
the last (width) axis, ``y`` along the second-to-last (height) axis, and pixel ``(row r, col c)``
lies in the box iff its centre does, ``x_min <= c + 0.5 < x_max`` and ``y_min <= r + 0.5 < y_max``.
For integer boxes that is ``x_min <= c < x_max``; the area is ``(x_max - x_min)(y_max - y_min)``.
(Inclusive ``[x1, x2]`` annotations such as ImageNet's convert as ``x_max = x2 + 1``.)
Boxes are 2-D; masks work for any spatial rank.

Ground truth is given per sample either as ``masks`` (N, *S) booleans, or ``boxes``: a sequence of N
array-likes of shape (n_i, 4) (or (4,) for one box).  Empty boxes (``x_max <= x_min`` or
``y_max <= y_min``), boxes reaching outside the image and empty masks raise a
:class:`~refcam.errors.RefcamError` naming the argument; ``clip=True`` clips boxes to the image first
(a box that is empty after clipping still raises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .. import _validate as V
from ..errors import InvalidArgumentError, ShapeError
from ._common import sequence_of

__all__ = [
    "LocalizationResult",
    "PointingResult",
    "box_iou",
    "boxes_to_masks",
    "cam_box",
    "energy_pointing_game",
    "localization_accuracy",
    "pointing_game",
]


def _box_list(
    boxes: Any, n: int, size: tuple[int, int] | None, *, clip: bool, name: str = "boxes"
) -> list[np.ndarray]:
    seq = sequence_of(boxes, name)
    if len(seq) != n:
        raise ShapeError(
            name, f"a sequence of {len(seq)}", f"a sequence of {n} (one entry per sample)"
        )
    out = []
    for i, b in enumerate(seq):
        arr = V.as_float_array(b, f"{name}[{i}]")
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] == 0:
            raise ShapeError(
                f"{name}[{i}]",
                arr.shape,
                "(n_boxes, 4) with n_boxes >= 1: (x_min, y_min, x_max, y_max)",
            )
        if size is not None:
            h, w = size
            lim = np.array([w, h, w, h], dtype=float)
            if clip:
                arr = np.clip(arr, 0.0, lim)
            bad = (arr < 0).any(axis=1) | (arr > lim).any(axis=1)
            if bad.any():
                j = int(np.argmax(bad))
                raise InvalidArgumentError(
                    f"{name}[{i}]",
                    tuple(arr[j].tolist()),
                    f"a box inside the image [0, {w}] x [0, {h}] (or pass clip=True)",
                )
        empty = (arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])
        if empty.any():
            j = int(np.argmax(empty))
            raise InvalidArgumentError(
                f"{name}[{i}]",
                tuple(arr[j].tolist()),
                "a non-empty box with x_min < x_max and y_min < y_max",
            )
        out.append(arr)
    return out


def boxes_to_masks(boxes: Any, size: Any, *, clip: bool = False) -> np.ndarray:
    r"""Rasterise per-sample boxes into boolean masks (union of each sample's boxes).

    Pixel :math:`(r, c)` is inside box :math:`(x_0, y_0, x_1, y_1)` iff
    :math:`x_0 \le c + \tfrac12 < x_1` and :math:`y_0 \le r + \tfrac12 < y_1`.

    Parameters
    ----------
    boxes : sequence of N array-likes (n_i, 4) or (4,)
        ``(x_min, y_min, x_max, y_max)``, half-open pixel-edge coordinates.
    size : (H, W)
    clip : bool
        Clip boxes to the image instead of refusing boxes that reach outside it.

    Returns
    -------
    (N, H, W) bool array.

    Examples
    --------
    >>> boxes_to_masks([[1, 0, 3, 1]], (2, 3)).astype(int)
    array([[[0, 1, 1],
            [0, 0, 0]]])
    """
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise InvalidArgumentError("size", size, "(H, W)")
    h, w = (V.positive_int(s, "size") for s in size)
    bl = _box_list(boxes, len(sequence_of(boxes, "boxes")), (h, w), clip=clip)
    sid = np.repeat(np.arange(len(bl)), [len(b) for b in bl])  # sample of each box
    b = np.concatenate(bl)  # all boxes, (B_total, 4)
    cx = np.arange(w) + 0.5
    cy = np.arange(h) + 0.5
    inx = (b[:, 0, None] <= cx) & (cx < b[:, 2, None])  # (B_total, W)
    iny = (b[:, 1, None] <= cy) & (cy < b[:, 3, None])  # (B_total, H)
    count = np.zeros((len(bl), h, w), dtype=np.int64)
    np.add.at(count, sid, iny[:, :, None] & inx[:, None, :])  # union = covered by >= 1 box
    return count > 0


def _regions(m: np.ndarray, masks: Any, boxes: Any, clip: bool) -> np.ndarray:
    if (masks is None) == (boxes is None):
        raise InvalidArgumentError(
            "masks/boxes",
            "both" if masks is not None else "neither",
            "exactly one of masks= or boxes=",
        )
    if boxes is not None:
        if m.ndim != 3:
            raise ShapeError(
                "maps", m.shape, "(N, H, W): boxes are 2-D; use masks= for other ranks"
            )
        _box_list(boxes, m.shape[0], m.shape[1:], clip=clip)  # count, shape, emptiness, bounds
        r = boxes_to_masks(boxes, m.shape[1:], clip=clip)
        empty = ~r.reshape(r.shape[0], -1).any(axis=1)
        if empty.any():
            i = int(np.argmax(empty))
            raise InvalidArgumentError(
                f"boxes[{i}]",
                "boxes covering no pixel centre",
                "boxes that contain at least one pixel centre",
            )
        return r
    r = np.asarray(masks)
    if r.dtype.kind not in "biuf":
        raise InvalidArgumentError("masks", str(r.dtype), "a boolean (or 0/1) array")
    if r.shape != m.shape:
        raise ShapeError("masks", r.shape, m.shape, "must match maps")
    r = r != 0
    empty = ~r.reshape(r.shape[0], -1).any(axis=1)
    if empty.any():
        raise InvalidArgumentError(
            "masks",
            f"an empty mask for sample {int(np.argmax(empty))}",
            "at least one True pixel per sample",
        )
    return r


@dataclass(frozen=True)
class PointingResult:
    """Result of :func:`pointing_game`.

    Attributes
    ----------
    hits : (N,) bool — whether each map's maximum point hit the region (within the tolerance).
    points : (N, d) int64 — the maximum point of each map (array index order: row, col, ...).
    accuracy : float — ``#hits / (#hits + #misses)`` in [0, 1].
    """

    hits: np.ndarray
    points: np.ndarray
    accuracy: float


def pointing_game(
    maps: Any, *, masks: Any = None, boxes: Any = None, tolerance: float = 15.0, clip: bool = False
) -> PointingResult:
    r"""Pointing game (Zhang et al. 2018, "Top-down neural attention by excitation backprop").

    A hit is counted when the maximum point of the map lies within ``tolerance`` pixels of the
    annotated region of the target category (15 px in the paper):

    .. math::
        \mathrm{hit}_i = \mathbb{1}\Big[\min_{q \in R_i} \lVert p_i^* - q \rVert_2 \le \tau\Big],
        \quad p_i^* = \arg\max_p L_i(p), \qquad
        \mathrm{Acc} = \frac{\#\mathrm{hits}}{\#\mathrm{hits} + \#\mathrm{misses}}

    Distances are Euclidean between pixel centres.  **Ties in the maximum**: the first maximum in
    flat C order (``np.argmax``) is the point, so a constant map points at pixel ``(0, 0, ...)``.

    Reference: J. Zhang, S. A. Bargal, Z. Lin, J. Brandt, X. Shen, S. Sclaroff, "Top-down Neural
    Attention by Excitation Backprop", IJCV 2018 (ECCV 2016), arXiv:1608.00507: accuracy
    :math:`\#\mathrm{Hits}/(\#\mathrm{Hits}+\#\mathrm{Misses})` (text, no equation number).  The
    15-px tolerance is quoted from recollection of the paper and not verified against its text.

    Parameters
    ----------
    maps : (N, *S) array
    masks : (N, *S) bool array, optional — the regions :math:`R_i`.
    boxes : sequence of N (n_i, 4) array-likes, optional — 2-D boxes, see module docstring.
    tolerance : float — :math:`\tau` in pixels (default 15).
    clip : bool — clip boxes to the image instead of refusing them.

    Examples
    --------
    >>> m = np.zeros((2, 4, 4)); m[0, 1, 1] = 1; m[1, 3, 3] = 1
    >>> pointing_game(m, boxes=[[0, 0, 2, 2], [0, 0, 2, 2]], tolerance=0).hits
    array([ True, False])
    >>> pointing_game(m, boxes=[[0, 0, 2, 2], [0, 0, 2, 2]], tolerance=3).accuracy  # sqrt(8) <= 3
    1.0
    """
    m = V.maps(maps, "maps")
    tau = V.nonnegative_float(tolerance, "tolerance")
    r = _regions(m, masks, boxes, clip)
    n = m.shape[0]
    flat = m.reshape(n, -1)
    arg = np.argmax(flat, axis=1)
    pts = np.stack(np.unravel_index(arg, m.shape[1:]), axis=1).astype(np.int64)  # (N, d)
    grid = np.stack(np.unravel_index(np.arange(flat.shape[1]), m.shape[1:]), axis=1)  # (P, d)
    d2 = ((grid[None, :, :] - pts[:, None, :]) ** 2).sum(axis=2)  # (N, P) squared distances
    d2 = np.where(r.reshape(n, -1), d2, np.iinfo(np.int64).max)
    hits = d2.min(axis=1) <= tau * tau
    return PointingResult(hits, pts, float(hits.mean()))


def energy_pointing_game(
    maps: Any, *, masks: Any = None, boxes: Any = None, clip: bool = False
) -> np.ndarray:
    r"""Energy-based pointing game (Wang et al. 2020, Score-CAM): share of the map's energy in the region.

    .. math::
        \mathrm{Proportion}_i = \frac{\sum_{p \in R_i} L_i(p)}
                                     {\sum_{p \in R_i} L_i(p) + \sum_{p \notin R_i} L_i(p)}

    The map is used as given (apply ReLU/normalisation beforehand); it must be non-negative.
    **Division guard**: a map with zero total energy gets proportion 0 (masked, not divided).

    Reference: H. Wang, Z. Wang, M. Du, F. Yang, Z. Zhang, S. Ding, P. Mardziel, X. Hu,
    "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks", CVPR
    Workshops 2020, Sec. 4.3 "Localization Evaluation" (inline, unnumbered).  The paper also drops
    images whose object covers more than 50 % of the image or that have several boxes; that data
    selection is left to the caller.

    Parameters
    ----------
    maps : (N, *S) array, non-negative.
    masks, boxes, clip : see :func:`pointing_game`.

    Returns
    -------
    (N,) array in the maps' dtype, values in [0, 1]; average it for the dataset score.

    Examples
    --------
    >>> energy_pointing_game(np.array([[[1.0, 3.0], [0.0, 4.0]]]), boxes=[[1, 0, 2, 2]])
    array([0.875])
    """
    m = V.maps(maps, "maps")
    if (m < 0).any():
        raise InvalidArgumentError(
            "maps", f"minimum {float(m.min())}", "non-negative maps (apply refcam.math.relu first)"
        )
    r = _regions(m, masks, boxes, clip)
    axes = tuple(range(1, m.ndim))
    inside = np.where(r, m, 0).sum(axis=axes)
    total = m.sum(axis=axes)
    ok = total > 0
    return np.where(ok, inside / np.where(ok, total, 1), 0).astype(m.dtype, copy=False)


def cam_box(maps: Any, threshold: float = 0.2) -> np.ndarray:
    r"""The CAM paper's weakly supervised box (Zhou et al. 2016, "Weakly-supervised localization").

    Segment :math:`\{p : L(p) > \theta \max_q L(q)\}` (strictly above ``threshold`` times the max),
    take the largest connected component (8-connectivity, as MATLAB's ``bwlabel``; equal sizes: the
    component whose first pixel comes first in raster order) and return its bounding box
    ``(x_min, y_min, x_max, y_max)`` (half-open pixel edges).  Inherently 2-D.

    If no pixel passes the threshold (only possible when :math:`\max L \le 0`) the box is the
    empty box ``(0, 0, 0, 0)`` (IoU 0 with anything).

    Reference: B. Zhou, A. Khosla, A. Lapedriza, A. Oliva, A. Torralba, "Learning Deep Features for
    Discriminative Localization", CVPR 2016 (threshold 20 % of the max, stated in the text; the
    section number is not verified).  (Grad-CAM's localisation uses 15 %: pass ``threshold=0.15``.)

    Parameters
    ----------
    maps : (N, H, W) array — maps at the resolution the boxes live in (upsample first).
    threshold : float in [0, 1] — :math:`\theta`.

    Returns
    -------
    (N, 4) int64 boxes.

    Examples
    --------
    >>> m = np.array([[[0.0, 0.0, 0.0, 0.0],
    ...                [0.0, 0.9, 1.0, 0.0],
    ...                [0.0, 0.0, 0.0, 0.5]]])
    >>> cam_box(m)             # 8-connected: (1,1), (1,2), (2,3) form one component
    array([[1, 1, 4, 3]])
    """
    m = V.maps(maps, "maps")
    if m.ndim != 3:
        raise ShapeError("maps", m.shape, "(N, H, W): the CAM box is 2-D")
    th = V.nonnegative_float(threshold, "threshold")
    if th > 1:
        raise InvalidArgumentError("threshold", threshold, "a fraction of the max in [0, 1]")
    n = m.shape[0]
    mx = m.reshape(n, -1).max(axis=1)
    seg = m > (th * mx)[:, None, None]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connectivity inside each image, never across the batch axis
    labels, count = ndimage.label(seg, structure=structure)
    boxes = np.zeros((n, 4), dtype=np.int64)
    if count == 0:
        return boxes
    idx = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, idx)
    sample = ndimage.minimum(
        np.broadcast_to(np.arange(n)[:, None, None], m.shape), labels, idx
    ).astype(np.int64)
    # per sample: largest component, ties -> smallest label (= first in raster order)
    order = np.lexsort((idx, -sizes, sample))
    first = np.ones(order.size, dtype=bool)
    first[1:] = sample[order][1:] != sample[order][:-1]
    best = idx[order[first]]
    rows, cols = np.indices(m.shape[1:])
    rows = np.broadcast_to(rows, m.shape)
    cols = np.broadcast_to(cols, m.shape)
    s = sample[best - 1]
    boxes[s, 0] = np.asarray(ndimage.minimum(cols, labels, best), dtype=np.int64)
    boxes[s, 1] = np.asarray(ndimage.minimum(rows, labels, best), dtype=np.int64)
    boxes[s, 2] = np.asarray(ndimage.maximum(cols, labels, best), dtype=np.int64) + 1
    boxes[s, 3] = np.asarray(ndimage.maximum(rows, labels, best), dtype=np.int64) + 1
    return boxes


def box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    r"""Intersection over union of boxes (broadcast over leading axes).

    .. math::
        \mathrm{IoU}(A, B) = \frac{|A \cap B|}{|A| + |B| - |A \cap B|}

    with areas of half-open pixel-edge boxes ``(x_max - x_min)(y_max - y_min)``.  **Division
    guard**: when the union is 0 (both boxes empty) the IoU is 0.

    Parameters
    ----------
    boxes_a, boxes_b : (..., 4) arrays, broadcastable.

    Examples
    --------
    >>> box_iou([0, 0, 2, 2], [1, 0, 3, 2])     # intersection 2, union 6
    array(0.33333333)
    """
    a = V.as_float_array(boxes_a, "boxes_a")
    b = V.as_float_array(boxes_b, "boxes_b")
    for arr, name in ((a, "boxes_a"), (b, "boxes_b")):
        if arr.ndim < 1 or arr.shape[-1] != 4:
            raise ShapeError(name, arr.shape, "(..., 4): (x_min, y_min, x_max, y_max)")
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ShapeError("boxes_b", b.shape, f"broadcastable with boxes_a {a.shape}") from None

    def area(x: np.ndarray) -> np.ndarray:
        return np.maximum(x[..., 2] - x[..., 0], 0) * np.maximum(x[..., 3] - x[..., 1], 0)

    lo = np.maximum(a[..., :2], b[..., :2])
    hi = np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.maximum(hi - lo, 0), axis=-1)
    union = area(a) + area(b) - inter
    ok = union > 0
    dt = V.result_dtype(a, b)
    return np.asarray(np.where(ok, inter / np.where(ok, union, 1), 0), dtype=dt)


@dataclass(frozen=True)
class LocalizationResult:
    """Result of :func:`localization_accuracy`.

    Attributes
    ----------
    boxes : (N, 4) int64 — the predicted CAM boxes.
    iou : (N,) float64 — best IoU of each predicted box with the sample's ground-truth boxes.
    correct : (N,) bool — ``iou >= iou_threshold`` (and the classification correct, if given).
    accuracy : float — mean of ``correct`` in [0, 1].
    """

    boxes: np.ndarray
    iou: np.ndarray
    correct: np.ndarray
    accuracy: float


def localization_accuracy(
    maps: Any,
    boxes: Any,
    *,
    threshold: float = 0.2,
    iou_threshold: float = 0.5,
    classified: Any = None,
    clip: bool = False,
) -> LocalizationResult:
    r"""Weakly supervised localisation accuracy (Zhou et al. 2016, CAM; ILSVRC criterion).

    .. math::
        \mathrm{correct}_i = \mathbb{1}\Big[\max_j \mathrm{IoU}(\hat B_i, B_{ij}) \ge 0.5\Big]
        \;(\wedge\ \text{class correct}_i)

    with :math:`\hat B_i` = :func:`cam_box` of map :math:`i`.

    Parameters
    ----------
    maps : (N, H, W) array
    boxes : sequence of N (n_i, 4) array-likes — ground truth, half-open pixel edges.
    threshold : float — :func:`cam_box` threshold (20 %).
    iou_threshold : float — 0.5.
    classified : None or (N,) bool — optional per-sample classification correctness (top-1/top-5
        localisation); ``None`` = localisation alone ("GT-known").
    clip : bool — clip ground-truth boxes to the image.

    Examples
    --------
    >>> m = np.zeros((1, 4, 4)); m[0, :2, :2] = 1
    >>> r = localization_accuracy(m, [[0, 0, 2, 3]])   # IoU 4/6
    >>> r.boxes, r.iou, r.accuracy
    (array([[0, 0, 2, 2]]), array([0.66666667]), 1.0)
    """
    m = V.maps(maps, "maps")
    if m.ndim != 3:
        raise ShapeError("maps", m.shape, "(N, H, W): boxes are 2-D")
    iou_t = V.nonnegative_float(iou_threshold, "iou_threshold")
    gt = _box_list(boxes, m.shape[0], m.shape[1:], clip=clip)
    pred = cam_box(m, threshold)
    sid = np.repeat(np.arange(len(gt)), [len(g) for g in gt])
    per_box = box_iou(pred[sid], np.concatenate(gt)).astype(np.float64)
    iou = np.zeros(len(gt))
    np.maximum.at(iou, sid, per_box)  # best IoU per sample (IoU >= 0, so 0 is a neutral start)
    ok = iou >= iou_t
    if classified is not None:
        c = np.asarray(classified)
        if c.shape != (m.shape[0],) or c.dtype.kind not in "biu":
            raise ShapeError("classified", c.shape, (m.shape[0],), "one bool per sample")
        ok = ok & (c != 0)
    return LocalizationResult(pred, iou, ok, float(ok.mean()))
