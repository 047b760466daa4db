r"""Post-processing of class activation maps: ReLU, normalisation, resampling, multi-layer fusion.

Methods in :mod:`refcam.math` return the *raw* map at feature resolution.  Everything a
visualisation or a peer library does afterwards lives here, as separate, named steps:

* :func:`relu` -- clip negative evidence;
* :func:`normalize` -- per-sample rescaling (min-max, max-abs, sum, none), with an explicit
  zero-range guard and an optional additive ``eps`` that reproduces peer libraries;
* :func:`upsample` / :func:`interpolation_matrix` -- separable linear or nearest resampling
  whose conventions are those of ``torch.nn.functional.interpolate`` (and OpenCV ``resize``);
* :func:`fuse` -- combine maps of several layers already at a common size.

Peer conventions (read from the peers' source; the presets in the front floor name them)
-----------------------------------------------------------------------------------------
pytorch-grad-cam (``pytorch_grad_cam/utils/image.py``, ``scale_cam_image``)
    per image: ``img - min(img)`` then ``/ (1e-7 + max(img - min))``, i.e.
    :math:`(x-\min)/(\max-\min+10^{-7})` = ``normalize(m, "minmax", eps=1e-7)``, computed in
    float32, then ``cv2.resize(img, (W, H))`` (``INTER_LINEAR``) =
    ``upsample(m, (H, W), "linear")``.
    In ``base_cam.py`` each layer's map is ReLU'd (``np.maximum(cam, 0)``) *before* this
    scaling; ``aggregate_multi_layers`` then concatenates the per-layer scaled maps, applies
    ReLU again, takes the **mean over layers** and calls ``scale_cam_image`` once more.
torchcam (``torchcam/methods/core.py``, ``_CAM._normalize``)
    in place: ``cams -= min`` then ``cams /= max(cams) + eps`` with ``eps=1e-8``, i.e.
    :math:`(x-\min)/(\max-\min+10^{-8})` = ``normalize(m, "minmax", eps=1e-8)``, at feature
    resolution.  ``_CAM._fuse_cams`` interpolates every layer's map to the largest size with
    ``F.interpolate(mode="bilinear"|"trilinear", align_corners=False)`` and takes the
    **element-wise maximum**; LayerCAM's ``_scale_cams`` first applies ``tanh(2 * cam)`` to the
    (min-max normalised) maps ("cf. Equation 9 in the paper").
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._finite import finite_output
from .._validate import as_float_array, choice, nonnegative_float, positive_int
from .._validate import maps as _maps
from ..errors import InvalidArgumentError, ShapeError

__all__ = [
    "FUSE_MODES",
    "NORMALIZE_MODES",
    "UPSAMPLE_MODES",
    "relu",
    "softmax",
    "normalize",
    "interpolation_matrix",
    "upsample",
    "fuse",
]

NORMALIZE_MODES = ("minmax", "max", "sum", "none")
UPSAMPLE_MODES = ("linear", "linear-align-corners", "nearest", "nearest-exact")
FUSE_MODES = ("mean", "max", "sum", "tanh-max")


@finite_output
def relu(maps: Any) -> np.ndarray:
    r"""Rectified linear unit, element-wise: :math:`\max(x, 0)`.

    The CAM papers apply it to the final map to keep only positive evidence, e.g. Grad-CAM
    (Selvaraju et al., 2017, "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", Eq. 2): :math:`L^c = \mathrm{ReLU}(\sum_k \alpha_k^c A^k)`.

    Parameters
    ----------
    maps : array_like, any shape (typically ``(N, *S)``)
        Real, finite values.

    Returns
    -------
    ndarray, same shape and floating dtype as ``maps``; negative values (and ``-0.0``) become
    ``+0.0``.

    Examples
    --------
    >>> relu(np.array([[-1.0, 0.0, 2.5]]))
    array([[0. , 0. , 2.5]])
    """
    x = as_float_array(maps, "maps")
    return np.where(x > 0, x, np.zeros((), dtype=x.dtype))


def _spatial_axes(ndim: int) -> tuple[int, ...]:
    return tuple(range(1, ndim))


def _pow2_floor(a: np.ndarray) -> np.ndarray:
    """Largest power of two <= ``a`` (elementwise, ``a >= 0``; 0 -> 0.5), never overflowing.

    Dividing by it is exact in binary floating point and brings ``a`` into ``[1, 2)``.
    """
    _, exponent = np.frexp(a)
    return np.ldexp(np.ones_like(a), exponent - 1)


@finite_output
def softmax(x: Any, axis: int = -1) -> np.ndarray:
    r"""Softmax along ``axis``: :math:`p_j = e^{x_j - m} / \sum_i e^{x_i - m}`, :math:`m = \max_i x_i`.

    The one softmax of refcam (class probabilities of a model output, Score-CAM's channel
    softmax).  Subtracting the maximum changes nothing mathematically and keeps :math:`e^{x - m}
    \le 1`; the maximal term is :math:`e^0 = 1`, so the sum is :math:`\ge 1`: no division guard.

    Parameters
    ----------
    x : array_like, real, finite
    axis : int, default -1

    Returns
    -------
    ndarray, shape and float dtype of ``x``.

    Examples
    --------
    >>> softmax(np.array([[0.0, np.log(3.0)]]))
    array([[0.25, 0.75]])
    """
    a = as_float_array(x, "x")
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@finite_output
def normalize(maps: Any, mode: str = "minmax", eps: float = 0.0) -> np.ndarray:
    r"""Rescale each sample of a batch of maps, over all its non-batch axes.

    For a sample :math:`x` (all axes but the first) the modes are

    .. math::

        \text{minmax}:\; \frac{x - \min x}{\max x - \min x + \epsilon}, \qquad
        \text{max}:\; \frac{x}{\max |x| + \epsilon}, \qquad
        \text{sum}:\; \frac{x}{\sum |x| + \epsilon}, \qquad
        \text{none}:\; x .

    ``"minmax"`` maps to :math:`[0, 1]` (the convention of every CAM library for display);
    ``"max"`` divides by the largest *absolute* value, so signs are kept and the result lies in
    :math:`[-1, 1]` (for non-negative maps, e.g. after :func:`relu`, it is :math:`x/\max x`);
    ``"sum"`` makes the absolute values sum to 1 (a distribution for non-negative maps).

    Division guard: with the default ``eps=0`` a sample whose denominator is exactly 0 (a
    constant map for ``"minmax"``, an all-zero map for ``"max"``/``"sum"``) becomes all zeros
    (explicit mask, no warning); non-degenerate samples are not changed by any additive term.
    ``eps > 0`` is added to every denominator, as peer libraries do:
    pytorch-grad-cam ``scale_cam_image`` = ``mode="minmax", eps=1e-7``;
    torchcam ``_CAM._normalize`` = ``mode="minmax", eps=1e-8`` (see the module docstring).

    Overflow-safe: each sample is first divided by the power of two just below its largest
    absolute value (``eps`` likewise), which is exact in binary floating point, so the result
    is bit-identical to the direct formula (in the input's dtype) unless that formula would
    overflow or the scaled values fall into the subnormal range, and finite for every finite
    input.  In particular the float32 results equal pytorch-grad-cam's and torchcam's float32
    arithmetic bit for bit (tested).

    Parameters
    ----------
    maps : array_like, shape ``(N, *S)``
        Batch of maps (any number of non-batch axes >= 1).
    mode : {"minmax", "max", "sum", "none"}
    eps : float >= 0
        Additive denominator term (default 0: exact formula with the zero-range guard).

    Returns
    -------
    ndarray, shape ``(N, *S)``, dtype of ``maps`` (floats kept; ints/bools -> float64).

    Examples
    --------
    >>> m = np.array([[1.0, 3.0, 5.0], [2.0, 2.0, 2.0]])
    >>> normalize(m)                       # the constant second sample becomes zeros
    array([[0. , 0.5, 1. ],
           [0. , 0. , 0. ]])
    >>> normalize(np.array([[1.0, -4.0]]), "max")
    array([[ 0.25, -1.  ]])
    >>> normalize(np.array([[1.0, 3.0]]), "sum")
    array([[0.25, 0.75]])
    >>> normalize(np.array([[0.0, 1.0]]), eps=1.0)    # (x - min) / (max - min + eps)
    array([[0. , 0.5]])
    """
    mode = choice(mode, "mode", NORMALIZE_MODES)
    eps = nonnegative_float(eps, "eps")
    x = as_float_array(maps, "maps", finite=False)
    if mode == "none" or x.ndim < 2 or 0 in x.shape:
        x = _maps(maps, "maps")  # full validation (raises on a bad shape / non-finite input)
        return x.copy()
    return normalize_validated(x, mode, eps, maps)


def normalize_validated(x: np.ndarray, mode: str, eps: float, original: Any = None, out: np.ndarray | None = None
               ) -> np.ndarray:
    """Kernel of :func:`normalize` for a float array of shape ``(N, *S)`` and a validated ``mode`` /
    ``eps``; ``out=x`` normalises in place (callers that own ``x``).  Internal to the math floor
    (not in ``__all__``): the Score-CAM masks (:func:`refcam.math.scorecam_masks`) use it."""
    # One pass each for min and max; the finiteness check reads them (a NaN or Inf anywhere shows
    # up in a per-sample min or max) instead of scanning the maps once more.
    axes = _spatial_axes(x.ndim)
    lo = np.min(x, axis=axes, keepdims=True)
    hi = np.max(x, axis=axes, keepdims=True)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        _maps(x if original is None else original, "maps")  # raises NonFiniteError with the count
    # max|x| = max(max x, -min x) exactly; scaling by a power of two is exact and rounding is
    # monotone, so min(x / s) = min(x) / s and max|x / s| = max|x| / s bit for bit: the scaled
    # extremes need no second pass over the scaled maps.
    scale = _pow2_floor(np.maximum(hi, -lo))
    out = _scaled(x, scale, out)
    lo_s, hi_s = lo / scale, hi / scale
    if mode == "minmax":
        out -= lo_s
        den = hi_s - lo_s
    elif mode == "max":
        den = np.maximum(hi_s, -lo_s)
    else:  # "sum"
        den = np.sum(np.abs(out), axis=axes, keepdims=True)
    if eps > 0:
        # eps / scale in float64, clipped to the dtype's range (a huge term only drives out to 0)
        with np.errstate(over="ignore"):  # eps / (a subnormal scale) may overflow: clipped
            eps_scaled = np.minimum(eps / scale.astype(np.float64), np.finfo(x.dtype).max)
        den = den + eps_scaled.astype(x.dtype)
    degenerate = ~(den > 0)
    out /= np.where(degenerate, 1, den).astype(x.dtype, copy=False)
    if degenerate.any():
        out[np.broadcast_to(degenerate, out.shape)] = 0  # +0.0 (also for maps of -0.0)
    return out


def _scaled(x: np.ndarray, scale: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``x / scale`` for power-of-two ``scale`` (into ``out``, default a new array), as a
    multiplication by the exact reciprocal when it is representable (same bits, faster)."""
    with np.errstate(over="ignore"):
        inv = 1 / scale
    if np.isfinite(inv).all():
        return np.multiply(x, inv.astype(x.dtype, copy=False), out=out)
    return np.divide(x, scale, out=out)


@finite_output
def interpolation_matrix(in_size: int, out_size: int, mode: str = "linear") -> np.ndarray:
    r"""The ``(out_size, in_size)`` matrix :math:`W` of 1-D resampling: ``y = W @ x``.

    Output index :math:`d \in \{0..n_{out}-1\}`, input size :math:`n_{in}`,
    :math:`s = n_{in}/n_{out}`.  Every row sums to 1.  All source coordinates are computed in
    exact integer/rational arithmetic (one rounding per weight).

    ``"linear"`` -- half-pixel centres, torch ``F.interpolate(mode="(bi|tri)linear",
    align_corners=False, antialias=False)`` and OpenCV ``cv2.resize(..., INTER_LINEAR)``:

    .. math::

        u = \max\!\big(0,\ (d + \tfrac12)\, s - \tfrac12\big),\quad
        i_0 = \lfloor u \rfloor,\quad i_1 = \min(i_0 + 1, n_{in} - 1),\quad
        \lambda = u - i_0,\quad W_{d,i_0} \mathrel{+}= 1-\lambda,\ W_{d,i_1} \mathrel{+}= \lambda .

    The clamp of :math:`u` at 0 and of :math:`i_1` at :math:`n_{in}-1` replicate the border
    sample.  Torch (``area_pixel_compute_source_index``) and OpenCV (``resize.cpp``:
    ``sx < 0 -> fx = 0, sx = 0``; ``sx >= W-1 -> fx = 0, sx = W-1``) apply the same rule for
    up- *and* down-sampling; neither antialiases (no low-pass when :math:`s > 1`).  OpenCV
    computes the weights in float32 (and in 11-bit fixed point for uint8 images) and turns
    an exact 2x down-scale into ``INTER_AREA``, which for this kernel is the same average.
    ``scipy.ndimage.zoom(x, z, order=1, grid_mode=True, mode="nearest")`` gives the same
    values (tested).

    ``"linear-align-corners"`` -- torch ``align_corners=True``: corner samples coincide,

    .. math:: u = d\,\frac{n_{in}-1}{n_{out}-1}\ \ (u = 0 \text{ if } n_{out} = 1),

    then the same two-tap weights.

    ``"nearest"`` -- torch legacy ``mode="nearest"`` (= OpenCV ``INTER_NEAREST``):
    :math:`W_{d, i} = 1` for :math:`i = \min(\lfloor d\, s \rfloor, n_{in}-1)`.

    ``"nearest-exact"`` -- torch ``mode="nearest-exact"`` (= OpenCV ``INTER_NEAREST_EXACT``):
    :math:`i = \min(\lfloor (d + \tfrac12)\, s \rfloor, n_{in}-1)`.

    Torch evaluates :math:`s` in the tensor's floating type, so in rare cases where
    :math:`d\,s` is an exact integer its nearest index can differ from this exact one; and
    torch called with ``scale_factor=`` (instead of ``size=``) uses
    :math:`s = 1/\text{scale\_factor}` unless ``recompute_scale_factor=True``.

    Parameters
    ----------
    in_size, out_size : int >= 1
    mode : {"linear", "linear-align-corners", "nearest", "nearest-exact"}

    Returns
    -------
    ndarray, shape ``(out_size, in_size)``, float64.

    Examples
    --------
    >>> interpolation_matrix(2, 4)
    array([[1.  , 0.  ],
           [0.75, 0.25],
           [0.25, 0.75],
           [0.  , 1.  ]])
    >>> interpolation_matrix(2, 3, "linear-align-corners")
    array([[1. , 0. ],
           [0.5, 0.5],
           [0. , 1. ]])
    >>> interpolation_matrix(3, 2, "nearest")
    array([[1., 0., 0.],
           [0., 1., 0.]])
    """
    n_in = positive_int(in_size, "in_size")
    n_out = positive_int(out_size, "out_size")
    mode = choice(mode, "mode", UPSAMPLE_MODES)
    d = np.arange(n_out, dtype=np.int64)
    rows = np.arange(n_out)
    w = np.zeros((n_out, n_in), dtype=np.float64)
    if mode in ("nearest", "nearest-exact"):
        if mode == "nearest":
            src = (d * n_in) // n_out
        else:
            src = ((2 * d + 1) * n_in) // (2 * n_out)
        w[rows, np.minimum(src, n_in - 1)] = 1.0
        return w
    if mode == "linear":
        # u = ((2d + 1) n_in - n_out) / (2 n_out), clamped at 0
        num = np.maximum((2 * d + 1) * n_in - n_out, 0)
        den = 2 * n_out
    else:  # align corners
        num = d * (n_in - 1)
        den = max(n_out - 1, 1)
    i0 = num // den
    lam = (num - i0 * den) / den
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    np.add.at(w, (rows, i0), 1.0 - lam)
    np.add.at(w, (rows, i1), lam)
    return w


def _size(size: Any, name: str = "size") -> tuple[int, ...]:
    expected = "a non-empty sequence of positive integers (one per trailing spatial axis)"
    if (
        isinstance(size, (str, bytes))
        or not isinstance(size, Sequence)
        and not isinstance(size, np.ndarray)
    ):
        raise InvalidArgumentError(name, size, expected)
    items = list(np.asarray(size).ravel()) if isinstance(size, np.ndarray) else list(size)
    if not items:
        raise InvalidArgumentError(name, size, expected)
    out = []
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InvalidArgumentError(name, size, expected)
        out.append(int(v))
    return tuple(out)


@finite_output
def upsample(maps: Any, size: Sequence[int], mode: str = "linear") -> np.ndarray:
    r"""Resample the trailing ``len(size)`` axes of ``maps`` to ``size`` (up or down).

    All leading axes are batch-like, so the same call serves maps ``(N, *S)`` and Score-CAM
    masks ``(N, K, *S)``; any spatial rank works (1-D, 2-D bilinear, 3-D trilinear, ...).
    The resampling is separable: with :math:`W^{(a)}` = :func:`interpolation_matrix` of axis
    :math:`a`, for two spatial axes

    .. math:: Y_{n} = W^{(h)}\, X_{n}\, {W^{(w)}}^{\top},

    i.e. :math:`Y_{n,p,q} = \sum_{i,j} W^{(h)}_{p i} W^{(w)}_{q j} X_{n,i,j}` (bilinear; trilinear
    adds a third factor).  The matrices are applied last axis first, the order in which torch's
    CPU kernel nests its lerps.  An axis whose size does not change is left untouched (every
    mode's matrix is then the identity).

    Modes (formulas in :func:`interpolation_matrix`): ``"linear"`` = torch
    ``F.interpolate(mode="bilinear"/"trilinear", align_corners=False, antialias=False)`` =
    OpenCV ``INTER_LINEAR`` (half-pixel centres, border replicated, no antialiasing when
    down-sampling); ``"linear-align-corners"`` = torch ``align_corners=True``;
    ``"nearest"`` = torch ``"nearest"`` (legacy, :math:`\lfloor d\,s\rfloor`);
    ``"nearest-exact"`` = torch ``"nearest-exact"``.

    Parameters
    ----------
    maps : array_like, shape ``(B_1, ..., B_m, *S_in)``
        ``m >= 1`` batch-like axes, then ``len(size)`` spatial axes.
    size : sequence of int >= 1
        Output spatial size ``S_out``, e.g. ``(H, W)`` (numpy order, **not** OpenCV's ``(W, H)``).
    mode : {"linear", "linear-align-corners", "nearest", "nearest-exact"}

    Returns
    -------
    ndarray, shape ``(B_1, ..., B_m, *size)``, dtype of ``maps`` (float32 stays float32).

    Examples
    --------
    >>> upsample(np.array([[0.0, 4.0]]), (4,))
    array([[0., 1., 3., 4.]])
    >>> upsample(np.array([[[0.0, 4.0]]]), (1, 3), "linear-align-corners")
    array([[[0., 2., 4.]]])
    >>> upsample(np.array([[[1.0, 2.0], [3.0, 4.0]]]), (4, 4), "nearest")[0]
    array([[1., 1., 2., 2.],
           [1., 1., 2., 2.],
           [3., 3., 4., 4.],
           [3., 3., 4., 4.]])
    """
    x = as_float_array(maps, "maps")
    out_size = _size(size)
    mode = choice(mode, "mode", UPSAMPLE_MODES)
    nsp = len(out_size)
    if x.ndim < nsp + 1:
        raise ShapeError(
            "maps",
            x.shape,
            f"at least one batch axis followed by {nsp} spatial axes (len(size) = {nsp})",
        )
    if any(s == 0 for s in x.shape):
        raise ShapeError("maps", x.shape, "every axis non-empty")
    y = x
    for k in range(nsp - 1, -1, -1):
        axis = x.ndim - nsp + k
        n_in, n_out = x.shape[axis], out_size[k]
        if n_in == n_out:
            continue
        w = interpolation_matrix(n_in, n_out, mode).astype(x.dtype, copy=False)
        y = np.moveaxis(np.moveaxis(y, axis, -1) @ w.T, -1, axis)
    return y.copy() if y is x else np.ascontiguousarray(y)


@finite_output
def fuse(maps_per_layer: Any, mode: str = "mean", *, gamma: float = 2.0) -> np.ndarray:
    r"""Combine the maps of several layers, already resampled to one common size.

    With :math:`M_l` the map of layer :math:`l = 1..L` (one sample):

    .. math::

        \text{mean}: \tfrac1L \sum_l M_l,\quad
        \text{sum}: \sum_l M_l,\quad
        \text{max}: \max_l M_l,\quad
        \text{tanh-max}: \max_l \tanh\!\Big(\gamma\, \frac{M_l}{\max |M_l|}\Big).

    ``"tanh-max"`` is the LayerCAM fusion (Jiang, Zhang, Hou, Cheng & Wei, 2021, "LayerCAM:
    Exploring Hierarchical Class Activation Maps for Localization", IEEE TIP; the tanh scaling
    with :math:`\gamma = 2` is the equation torchcam cites as "Equation 9"; torchcam then fuses
    by element-wise maximum).  :math:`M_l/\max|M_l|` is ``normalize(M_l, "max")`` with its
    zero guard (an all-zero layer map stays zero); for the non-negative LayerCAM maps it is
    :math:`M_l/\max M_l`.  (torchcam applies ``tanh(2 cam)`` to min-max normalised maps,
    which coincides when each map's minimum is 0.)

    pytorch-grad-cam's multi-layer default (``BaseCAM.aggregate_multi_layers``) is reproduced
    by ``normalize(relu(fuse([normalize(relu(m), eps=1e-7) for m in ms], "mean")), eps=1e-7)``
    (each layer's map ReLU'd, min-max scaled with ``eps=1e-7`` and resized to the input, then
    ReLU, mean over layers, min-max again).  This function does not normalise by itself
    except in ``"tanh-max"``.

    Parameters
    ----------
    maps_per_layer : sequence of L array_like of one shape ``(N, *S)``, or array ``(L, N, *S)``
    mode : {"mean", "sum", "max", "tanh-max"}
    gamma : float >= 0
        The tanh gain of ``"tanh-max"`` (LayerCAM: 2).  Ignored by the other modes.

    Returns
    -------
    ndarray, shape ``(N, *S)``, the common floating dtype of the inputs.

    Examples
    --------
    >>> a = np.array([[0.0, 2.0]]); b = np.array([[1.0, 1.0]])
    >>> fuse([a, b], "mean")
    array([[0.5, 1.5]])
    >>> fuse([a, b], "max")
    array([[1., 2.]])
    >>> np.round(fuse([a, b], "tanh-max"), 4)   # tanh(2 * [0, 1]) vs tanh(2 * [1, 1])
    array([[0.964, 0.964]])
    """
    mode = choice(mode, "mode", FUSE_MODES)
    g = nonnegative_float(gamma, "gamma")
    if isinstance(maps_per_layer, np.ndarray):
        items = (
            [maps_per_layer[i] for i in range(maps_per_layer.shape[0])]
            if maps_per_layer.ndim
            else []
        )
    elif isinstance(maps_per_layer, (list, tuple)):
        items = list(maps_per_layer)
    else:
        raise InvalidArgumentError(
            "maps_per_layer",
            type(maps_per_layer).__name__,
            "a non-empty list of (N, *S) maps or an (L, N, *S) array",
        )
    if not items:
        raise InvalidArgumentError("maps_per_layer", maps_per_layer, "at least one layer map")
    arrays = [_maps(m, f"maps_per_layer[{i}]") for i, m in enumerate(items)]
    for i, a in enumerate(arrays[1:], start=1):
        if a.shape != arrays[0].shape:
            raise ShapeError(
                f"maps_per_layer[{i}]",
                a.shape,
                arrays[0].shape,
                "every layer's map must already be at the common size (use upsample first)",
            )
    dtype = np.result_type(*arrays)
    stack = np.stack([a.astype(dtype, copy=False) for a in arrays])
    if mode == "mean":
        return np.mean(stack, axis=0)
    if mode == "sum":
        return np.sum(stack, axis=0)
    if mode == "max":
        return np.max(stack, axis=0)
    scaled = np.stack([np.tanh(dtype.type(g) * normalize(a, "max")) for a in stack])
    return np.max(scaled, axis=0)
