r"""Gradient-CAM variants of the peers: Smooth Grad-CAM++ (noise-averaged derivatives), Finer-CAM
(the gradient of a contrastive score, given as a seed over the classes), ShapleyCAM (gradient and
Hessian-vector product) and test-time augmentation smoothing (``aug_smooth``).

Layouts: activations and gradients ``(N, K, *S)``; gradient samples at ``n`` noisy copies of the
input ``(N, n, K, *S)``; logits ``(N, C)``; maps ``(N, *S)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._finite import finite_output
from .. import _validate as _v
from ..errors import InvalidArgumentError, ShapeError
from .blocks import _flag, _maps_and_gradients, _maybe_relu, _spatial_axes, _weighted_sum

__all__ = [
    "AUG_TRANSFORMS",
    "SGCPP_DENOMINATORS",
    "SGCPP_FIRST_ORDER",
    "aug_smooth",
    "finercam_classes",
    "finercam_score",
    "finercam_seed",
    "refinecam",
    "shapleycam",
    "shapleycam_weights",
    "smoothgradcampp",
    "smoothgradcampp_weights",
]

#: ``first_order`` of Smooth Grad-CAM++: the mean gradient (paper) or the last sample's (torchcam)
SGCPP_FIRST_ORDER = ("mean", "last")
#: ``denominator`` of the α of Smooth Grad-CAM++: per position as Grad-CAM++ Eq. 19 (paper), or
#: one value per channel :math:`\sum_{ab} A_{ab}\bar g^3_{ab}` (torchcam)
SGCPP_DENOMINATORS = ("position", "channel")


# ------------------------------------------------------------------------ Smooth Grad-CAM++
def _samples(activations: Any, gradient_samples: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _v.feature_maps(activations, "activations")
    g = _v.as_float_array(gradient_samples, "gradient_samples")
    if g.ndim != a.ndim + 1 or g.shape[:1] + g.shape[2:] != a.shape:
        raise ShapeError("gradient_samples", g.shape, f"(N, n) + {a.shape[1:]} with N = {a.shape[0]}",
                         "one gradient per sample, noisy copy, channel and position")
    dt = _v.result_dtype(a, g)
    return a.astype(dt, copy=False), g.astype(dt, copy=False)


@finite_output
def smoothgradcampp_weights(activations: Any, gradient_samples: Any, *, first_order: str = "mean",
                            denominator: str = "position", eps: float = 0.0) -> np.ndarray:
    r"""Smooth Grad-CAM++ channel weights: Grad-CAM++ with derivatives averaged over noisy inputs.

    .. math::
        \bar g^{p}_{ij} = \frac1n\sum_{m=1}^{n} \Big(\frac{\partial y^c}{\partial A^k_{ij}}
            (x + \delta_m)\Big)^{p},\qquad
        \alpha^{kc}_{ij} = \frac{\bar g^2_{ij}}{2\bar g^2_{ij} + \sum_{ab} A^k_{ab}\,\bar g^3_{ij}},
        \qquad w^c_k = \sum_{ij} \alpha^{kc}_{ij}\,\mathrm{ReLU}(\bar g^1_{ij})

    Omeiza, Speakman, Cintas & Weldemariam, 2019, "Smooth Grad-CAM++: An Enhanced Inference Level
    Visualization Technique for Deep Convolutional Neural Network Models" (arXiv:1908.01224): the
    Grad-CAM++ closed form (:func:`refcam.math.gradcampp_weights`, Chattopadhay et al. 2018 Eqs. 5
    and 19, with :math:`D^{(p)} = g^p`) with every derivative replaced by its SmoothGrad average
    over noisy copies :math:`x + \delta_m` (equation numbers of the Smooth Grad-CAM++ paper not
    verified).  :math:`A` are the activations of the clean input.

    torchcam 0.5.0 ``SmoothGradCAMpp`` (``methods/gradient.py:309-346``) differs:
    ``denominator="channel"`` (:math:`2\bar g^2_{ij} + \sum_{ab} A^k_{ab}\bar g^3_{ab} + 10^{-8}`, one
    sum per channel), ``first_order="last"`` (the ReLU'd gradient of the *last* noisy sample, the
    one its hook holds), ``eps=1e-8``; and its map weights the last noisy sample's activations
    (pass them as ``map_activations`` to :func:`smoothgradcampp`).  See ``docs/divergences.md``.

    Parameters
    ----------
    activations : array (N, K, *S), :math:`A` of the clean input.
    gradient_samples : array (N, n, K, *S), :math:`\partial y^c/\partial A` at the noisy copies.
    first_order : {"mean", "last"}
    denominator : {"position", "channel"}
    eps : float >= 0 added to the denominator (0: exact; :math:`\alpha = 0` where the denominator is 0,
        as :func:`refcam.math.gradcampp_weights`).

    Returns
    -------
    ndarray (N, K).

    Examples
    --------
    >>> a = np.array([[[1., 1.]]])                        # (1, 1, 2): sum A = 2
    >>> gs = np.array([[[[1., 0.]], [[3., 0.]]]])          # n = 2: g1 = [2, 0], g2 = [5, 0], g3 = [14, 0]
    >>> smoothgradcampp_weights(a, gs)                     # 5 / (10 + 28) * 2
    array([[0.26315789]])
    """
    a, g = _samples(activations, gradient_samples)
    first_order = _v.choice(first_order, "first_order", SGCPP_FIRST_ORDER)
    denominator = _v.choice(denominator, "denominator", SGCPP_DENOMINATORS)
    eps = _v.nonnegative_float(eps, "eps")
    axes = _spatial_axes(a)
    g2 = np.mean(g * g, axis=1)
    g3 = np.mean(g * g * g, axis=1)
    if denominator == "position":
        s = np.sum(a, axis=axes, keepdims=True) * g3
    else:
        s = np.sum(a * g3, axis=axes, keepdims=True)
    den = 2 * g2 + s + a.dtype.type(eps)
    alpha = np.divide(g2, den, out=np.zeros_like(g2), where=den != 0)
    g1 = np.mean(g, axis=1) if first_order == "mean" else g[:, -1]
    return np.sum(alpha * np.maximum(g1, 0), axis=axes)


@finite_output
def smoothgradcampp(activations: Any, gradient_samples: Any, *, first_order: str = "mean",
                    denominator: str = "position", eps: float = 0.0, map_activations: Any = None,
                    relu: bool = True) -> np.ndarray:
    r"""Smooth Grad-CAM++ map :math:`L = \mathrm{ReLU}(\sum_k w^c_k A^k)` with the weights of
    :func:`smoothgradcampp_weights` (Grad-CAM++ Eq. 20 with the smoothed weights).

    ``map_activations`` ``(N, K, *S)``: the maps weighted (default ``activations``; torchcam uses
    the activations of its last noisy sample).

    Examples
    --------
    >>> a = np.array([[[1., 1.]]]); gs = np.array([[[[1., 0.]], [[3., 0.]]]])
    >>> smoothgradcampp(a, gs)
    array([[0.26315789, 0.26315789]])
    """
    a, _ = _samples(activations, gradient_samples)
    w = smoothgradcampp_weights(a, gradient_samples, first_order=first_order, denominator=denominator,
                                eps=eps)
    m = a if map_activations is None else _v.feature_maps(map_activations, "map_activations")
    if m.shape != a.shape:
        raise ShapeError("map_activations", m.shape, a.shape, "the shape of the activations")
    dt = _v.result_dtype(m, w)
    return _maybe_relu(_weighted_sum(m.astype(dt, copy=False), w.astype(dt, copy=False)), relu)


# ------------------------------------------------------------------------------- Finer-CAM
def _logits(logits: Any) -> np.ndarray:
    y = _v.as_float_array(logits, "logits")
    if y.ndim != 2:
        raise ShapeError("logits", y.shape, "(N, C)", "one row of class scores per sample")
    return y


@finite_output
def finercam_classes(logits: Any, target: Any = None, comparisons: Sequence[int] = (1, 2, 3)
                     ) -> tuple[np.ndarray, np.ndarray]:
    r"""Finer-CAM's reference classes: the classes ranked by logit distance to the target class.

    Per sample, classes are sorted by :math:`|y_j - y_c|` ascending (stable sort: ties keep the
    class order); rank 0 is the main class (:math:`c` itself unless another class has exactly its
    logit), ranks ``comparisons`` are the comparison classes :math:`d` (pytorch-grad-cam 1.5.7
    ``finer_cam.py:75-96``; ranks beyond the class count are dropped, as there).

    Parameters
    ----------
    logits : (N, C).
    target : None (top-1), int or (N,) ints.
    comparisons : ranks of the comparison classes (default ``(1, 2, 3)``).

    Returns
    -------
    main : (N,) int64, compared : (N, R) int64.

    Examples
    --------
    >>> finercam_classes(np.array([[5., 1., 4.5, 3., 0.]]), comparisons=(1, 2))
    (array([0]), array([[2, 3]]))
    """
    y = _logits(logits)
    n, c = y.shape
    if target is None:
        ref = y.max(axis=1)
    else:
        t = np.broadcast_to(np.asarray(target), (n,))
        if t.dtype.kind not in "iu" or (t < 0).any() or (t >= c).any():
            raise InvalidArgumentError("target", target, f"class indices in [0, {c})")
        ref = y[np.arange(n), t]
    order = np.argsort(np.abs(y - ref[:, None]), axis=1, kind="stable")
    ranks = [int(r) for r in comparisons if 0 <= int(r) < c]
    return order[:, 0].astype(np.int64), order[:, ranks].astype(np.int64)


@finite_output
def finercam_score(logits: Any, main: Any, compared: Any, *, alpha: float = 1.0,
                   eps: float = 1e-9) -> np.ndarray:
    r"""Finer-CAM's contrastive score (pytorch-grad-cam ``FinerWeightedTarget``), ``(N,)``.

    .. math:: S = \frac{\sum_{d} p_d\,(y_c - \alpha\,y_d)}{\sum_d p_d + \epsilon},
              \qquad p = \mathrm{softmax}(y)

    Zhang, Gu, Chowdhury, Mai, Carlyn, Berger-Wolf, Su & Chao, 2025, "Finer-CAM: Spotting the
    Difference Reveals Finer Details for Visual Explanation" (CVPR 2025, arXiv:2501.11309): explain
    the logit difference :math:`y^c - \gamma y^d` (:math:`\gamma` = ``alpha``) instead of
    :math:`y^c`; several references :math:`d` are aggregated with softmax-probability weights as
    pytorch-grad-cam 1.5.7 does (``utils/model_targets.py:118-142``, :math:`\epsilon = 10^{-9}`);
    the weights are part of the differentiated score there (not detached).
    """
    y0 = _logits(logits)
    y = y0.astype(np.float64)
    main = np.asarray(main)
    d = np.asarray(compared)
    z = y - y.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    rows = np.arange(len(y))[:, None]
    pd = p[rows, d]
    num = np.sum(pd * (y[np.arange(len(y)), main][:, None] - alpha * y[rows, d]), axis=1)
    return (num / (pd.sum(axis=1) + eps)).astype(y0.dtype)


@finite_output
def finercam_seed(logits: Any, main: Any, compared: Any, *, alpha: float = 1.0,
                  eps: float = 1e-9) -> np.ndarray:
    r"""The seed :math:`s = \partial S/\partial y` ``(N, C)`` of :func:`finercam_score`, so that
    :math:`\partial S/\partial A = \sum_j s_j\,\partial y_j/\partial A` (one VJP seeded with
    :math:`s`).

    With :math:`D = \sum_d p_d + \epsilon`, :math:`P = \sum_d p_d (y_c - \alpha y_d)` and
    :math:`\partial p_d/\partial y_j = p_d(\delta_{dj} - p_j)`:

    .. math:: s_j = \frac{1}{D}\Big[\sum_d p_d(\delta_{dj} - p_j)(y_c - \alpha y_d)
              + \delta_{cj}\sum_d p_d - \alpha \sum_d p_d\,\delta_{dj}\Big]
              - \frac{P}{D^2}\sum_d p_d(\delta_{dj} - p_j)

    Examples
    --------
    >>> y = np.array([[2., 1., 0.]])
    >>> s = finercam_seed(y, [0], [[1]])              # one reference: S = p_1 (y_0 - y_1)/(p_1 + eps)
    >>> np.round(s, 6)                                 # ~ e_0 - e_1
    array([[ 1., -1.,  0.]])
    """
    y0 = _logits(logits)
    y = y0.astype(np.float64)
    n, c = y.shape
    main = np.asarray(main).reshape(n)
    d = np.asarray(compared).reshape(n, -1)
    z = y - y.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    rows = np.arange(n)[:, None]
    pd = p[rows, d]                                              # (N, R)
    diff = y[np.arange(n), main][:, None] - alpha * y[rows, d]   # (N, R)
    den = pd.sum(axis=1) + eps                                    # (N,)
    num = np.sum(pd * diff, axis=1)
    onehot_d = np.zeros((n, d.shape[1], c))
    onehot_d[rows, np.arange(d.shape[1])[None, :], d] = 1.0
    dp = pd[:, :, None] * (onehot_d - p[:, None, :])              # ∂p_d/∂y_j: (N, R, C)
    dnum = np.einsum("nrc,nr->nc", dp, diff) - alpha * np.einsum("nrc,nr->nc", onehot_d, pd)
    dnum[np.arange(n), main] += pd.sum(axis=1)
    dden = dp.sum(axis=1)
    return (dnum / den[:, None] - (num / den ** 2)[:, None] * dden).astype(y0.dtype)


# ------------------------------------------------------------------------------- ShapleyCAM
@finite_output
def shapleycam_weights(gradients: Any, hvp: Any) -> np.ndarray:
    r"""ShapleyCAM channel weights :math:`w^c_k = \frac1Z\sum_{ij}\big(g_{ij} - \tfrac12 (H A)_{ij}\big)`.

    .. math:: w^c_k = \frac1Z\sum_{ij}\Big(\frac{\partial y^c}{\partial A^k_{ij}}
              - \frac12\Big(\frac{\partial^2 y^c}{\partial A^2} A\Big)^k_{ij}\Big)

    Cai, 2025, "CAMs as Shapley Value-based Explainers" (arXiv:2501.06261), ShapleyCAM:
    the second-order Taylor estimate of each neuron's Shapley value,
    :math:`\phi \approx A \odot (g - \tfrac12 H A)`, aggregated per channel as Grad-CAM does
    (spatial mean); pytorch-grad-cam 1.5.7 ``shapley_cam.py:26-52`` (``hvp =
    autograd.grad(grads, activations, grad_outputs=activations)``, weights ``mean(grads - 0.5 *
    hvp)``).  The paper's equation number was not verified; the paper also proposes a "Residual
    Softmax Target-Class" (ReST) utility as the score :math:`y^c` -- pass the score as an
    :class:`~refcam.onnx.OnnxTarget` to :func:`refcam.autodiff.second_order.hvp` (the weights
    here do not depend on which score it is).  ``hvp`` :math:`= H A` is the
    Hessian of :math:`y^c` w.r.t. the activations applied to the activations themselves
    (:func:`refcam.autodiff.second_order.hvp`).

    Parameters
    ----------
    gradients, hvp : arrays (N, K, *S)

    Returns
    -------
    ndarray (N, K).

    Examples
    --------
    >>> g = np.array([[[1., 3.]]]); h = np.array([[[2., 2.]]])
    >>> shapleycam_weights(g, h)                  # mean([1 - 1, 3 - 1])
    array([[1.]])
    """
    g, h = _maps_and_gradients(gradients, hvp)
    return np.mean(g - h.dtype.type(0.5) * h, axis=_spatial_axes(g))


@finite_output
def shapleycam(activations: Any, gradients: Any, hvp: Any, *, relu: bool = True) -> np.ndarray:
    r"""ShapleyCAM map :math:`L = \mathrm{ReLU}(\sum_k w^c_k A^k)` with :func:`shapleycam_weights`.

    When :math:`y^c` is piecewise linear in :math:`A` (ReLU networks with a linear head and a logit
    target) :math:`H A = 0` almost everywhere and ShapleyCAM is Grad-CAM.

    Examples
    --------
    >>> a = np.array([[[1., 2.]]]); g = np.array([[[1., 3.]]]); h = np.array([[[2., 2.]]])
    >>> shapleycam(a, g, h)
    array([[1., 2.]])
    """
    a, g = _maps_and_gradients(activations, gradients)
    w = shapleycam_weights(g, hvp)
    return _maybe_relu(_weighted_sum(a, w.astype(a.dtype, copy=False)), relu)


# ------------------------------------------------------------------------------ aug_smooth
#: The test-time augmentations :math:`t` of ``aug_smooth``, as ``(flip, factor)``:
#: :math:`t(x) = \mathrm{factor}\cdot\mathrm{flip}(x)`, ``flip`` reversing the last (width) axis.
#: pytorch-grad-cam 1.5.7's default (``base_cam.py:43-48``: ttach ``Compose([HorizontalFlip(),
#: Multiply(factors=[0.9, 1, 1.1])])``, in ttach's product order, ``ttach/base.py:Compose``).
AUG_TRANSFORMS: tuple[tuple[bool, float], ...] = tuple(
    (flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1)
)


@finite_output
def aug_smooth(maps: Any, flips: Sequence[bool], *, axis: int = -1) -> np.ndarray:
    r"""Test-time augmentation smoothing: the mean of the maps of augmented inputs, each mapped back.

    .. math:: L = \frac1{|T|}\sum_{t\in T} t^{-1}\big(L(t(x))\big)

    For pytorch-grad-cam's default augmentations (``base_cam.py:43-48``, ttach
    ``Compose([HorizontalFlip(), Multiply([0.9, 1, 1.1])])``: 6 combinations) the inverse of a
    horizontal flip is the flip and the inverse of an intensity multiplication on a map is the
    identity; ``maps[t]`` is the map computed on :math:`t(x)` and ``flips[t]`` says whether
    :math:`t` flips axis ``axis`` (pytorch-grad-cam ``forward_augmentation_smoothing``,
    ``base_cam.py:196-218``: each map post-processed, de-augmented, then averaged, no
    re-normalisation).  No paper.

    Parameters
    ----------
    maps : array (T, N, *S)
    flips : sequence of T bools
    axis : the flipped axis of a map ``(N, *S)`` (default the last, the width)

    Examples
    --------
    >>> m = np.array([[[1., 0.]], [[0., 3.]]])           # T = 2, N = 1: plain, flipped input
    >>> aug_smooth(m, [False, True])                      # mean([1, 0], [3, 0])
    array([[2., 0.]])
    """
    m = _v.as_float_array(maps, "maps")
    fl = [_flag(f, "flips") for f in flips]
    if m.ndim < 3 or len(fl) != m.shape[0]:
        raise ShapeError("maps", m.shape, f"({len(fl)}, N, *S)", "one map batch per augmentation")
    ax = axis % (m.ndim - 1)
    back = [np.flip(mi, axis=ax) if f else mi for mi, f in zip(m, fl)]
    return np.mean(back, axis=0).astype(m.dtype, copy=False)


# ------------------------------------------------------------------------------- RefineCAM
@finite_output
def refinecam(layer_maps: Sequence[Any], *, layer_normalize: bool = True) -> np.ndarray:
    r"""RefineCAM: the product of the maps of several layers (brought to one resolution).

    .. math:: L = \prod_{l} \tilde L_l,\qquad
              \tilde L_l = \frac{\mathrm{ReLU}(L_l)}{\max \mathrm{ReLU}(L_l)}\ \ (\text{0 where the max is 0})

    Meta-method over layers (pytorch-grad-cam 1.5.7 ``refine_cam.py``, arXiv:2605.14641 as its
    docstring cites; the paper's equations were not verified): a region survives only where every
    layer's map is high, which denoises the maps of early layers.  The final map is then min-max
    scaled by the caller (post-processing).

    ``layer_normalize=False`` multiplies the maps as given: pytorch-grad-cam's normalisation loop
    (``refine_cam.py:41-44``) rebinds its loop variable and changes nothing, so the peer multiplies
    its base method's already min-max-scaled maps (``docs/divergences.md``).

    Parameters
    ----------
    layer_maps : sequence of L arrays (N, *S), same shape (e.g. each upsampled to the input size)
    layer_normalize : bool, default True

    Returns
    -------
    ndarray (N, *S)

    Examples
    --------
    >>> refinecam([np.array([[2., 1., -1.]]), np.array([[1., 4., 4.]])])   # [1, .5, 0] * [.25, 1, 1]
    array([[0.25, 0.5 , 0.  ]])
    """
    maps = [_v.maps(m, f"layer_maps[{i}]") for i, m in enumerate(layer_maps)]
    if not maps:
        raise InvalidArgumentError("layer_maps", layer_maps, "at least one map")
    for i, m in enumerate(maps[1:], start=1):
        if m.shape != maps[0].shape:
            raise ShapeError(f"layer_maps[{i}]", m.shape, maps[0].shape, "maps at one common resolution")
    dt = _v.result_dtype(*maps)
    out = np.ones(maps[0].shape, dtype=dt)
    for m in maps:
        m = m.astype(dt, copy=False)
        if _flag(layer_normalize, "layer_normalize"):
            r = np.maximum(m, 0)
            top = r.reshape(len(r), -1).max(axis=1).reshape((-1,) + (1,) * (r.ndim - 1))
            m = np.divide(r, top, out=np.zeros_like(r), where=top > 0)
        out = out * m
    return out
