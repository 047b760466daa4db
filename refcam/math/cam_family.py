r"""The CAM family: class activation maps from activations and (optionally) gradients.

Shapes: activations ``A`` and gradients ``G = dy^c/dA`` are ``(N, K, *S)`` (any spatial rank >= 1,
batch always), per-channel weights are ``(N, K)``, maps are ``(N, *S)``.  Every method returns the
**raw map at feature resolution**; normalisation and upsampling live in :mod:`refcam.math.post`.

The keyword ``relu=`` of each map function defaults to what the method's paper writes in its
final-map equation:

==========================  ===========  ==================================================
function                    ``relu``     source of the default
==========================  ===========  ==================================================
:func:`cam`                 ``False``    Zhou et al. 2016, Sec. 2, :math:`M_c=\sum_k w^c_k f_k`
:func:`gradcam`             ``True``     Selvaraju et al. 2017, eq. 2
:func:`gradcampp`           ``True``     Chattopadhay et al. 2018, arXiv:1710.11063 eq. 20
:func:`xgradcam`            ``True``     Fu et al. 2020 (Grad-CAM's map with new weights)
:func:`layercam`            ``True``     Jiang et al. 2021, final LayerCAM equation
:func:`hirescam`            ``False``    Draelos & Carin 2020, HiResCAM equation
:func:`gradcam_elementwise` ``True``     pytorch-grad-cam (no paper); a sum of ReLUs anyway
==========================  ===========  ==================================================

Division guards are explicit masks (a zero denominator gives a zero weight), never an additive
epsilon; the ``eps=`` keywords exist only to reproduce libraries that add one (default ``0.0``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._finite import finite_output
from .. import _validate as _v
from .blocks import (
    _channel_vector,
    _maps_and_gradients,
    _maybe_relu,
    _relu,
    _spatial_axes,
    _weighted_sum,
    gradient_weights,
)

__all__ = [
    "cam",
    "gradcam_weights",
    "gradcam",
    "gradcampp_weights",
    "gradcampp",
    "xgradcam_weights",
    "xgradcam",
    "layercam",
    "hirescam",
    "gradcam_elementwise",
]


def _masked_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` where ``den != 0``, exactly ``0`` where ``den == 0`` (no warning, no eps)."""
    nonzero = den != 0
    return np.where(nonzero, num / np.where(nonzero, den, 1), 0).astype(num.dtype, copy=False)


# --------------------------------------------------------------------------- CAM

@finite_output
def cam(activations: Any, class_weights: Any, *, relu: bool = False) -> np.ndarray:
    r"""Class activation map (CAM).

    .. math:: M_c(x, y) = \sum_k w^c_k\, f_k(x, y)

    Zhou, Khosla, Lapedriza, Oliva & Torralba, 2016, "Learning Deep Features for Discriminative
    Localization", Sec. 2 (the definition of :math:`M_c`; the paper numbers no equations there).
    :math:`f_k` is the last convolutional feature map (our ``A^k``) and :math:`w^c_k` the weight of
    the linear layer after global average pooling for class :math:`c`.

    Parameters
    ----------
    activations : array of shape (N, K, *S)
    class_weights : array of shape (N, K)
        Row :math:`w^c` of the linear layer, one row per sample (its target class).
    relu : bool, default False
        The paper's map is the plain linear combination (no ReLU).

    Returns
    -------
    ndarray of shape (N, *S), dtype ``np.result_type(activations, class_weights)``.

    Notes
    -----
    With a GAP -> linear head, :math:`y^c = \sum_k w^c_k \frac{1}{Z}\sum_{ij}A^k_{ij} + b_c`, so
    :math:`\sum_{ij} M_c = Z (y^c - b_c)` and Grad-CAM without ReLU equals ``cam / Z``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[1., 2.]], [[3., -1.]]]])          # (1, 2, 1, 2)
    >>> cam(a, np.array([[1., 2.]]))                        # [1+6, 2-2]
    array([[[7., 0.]]])
    """
    a = _v.feature_maps(activations, "activations")
    w = _channel_vector(class_weights, "class_weights", a)
    dt = _v.result_dtype(a, w)
    return _maybe_relu(_weighted_sum(a.astype(dt, copy=False), w.astype(dt, copy=False)), relu)


# --------------------------------------------------------------------------- Grad-CAM

@finite_output
def gradcam_weights(activations: Any, gradients: Any) -> np.ndarray:
    r"""Grad-CAM channel weights: the spatial mean of the gradients.

    .. math:: \alpha_k^c = \frac{1}{Z} \sum_i \sum_j \frac{\partial y^c}{\partial A^k_{ij}}

    Selvaraju et al., 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", eq. 1.  This is :func:`refcam.math.gradient_weights` (the one implementation)
    under the signature ``(activations, gradients)`` shared by every weight function
    (:func:`gradcampp_weights`, :func:`xgradcam_weights`); ``activations`` only fixes the
    expected shape.

    Parameters
    ----------
    activations : array of shape (N, K, *S)
    gradients : array of shape (N, K, *S)

    Returns
    -------
    ndarray of shape (N, K).

    Examples
    --------
    >>> import numpy as np
    >>> gradcam_weights(np.zeros((1, 1, 2, 2)), np.array([[[[1., 3.], [0., 0.]]]]))
    array([[1.]])
    """
    _, g = _maps_and_gradients(activations, gradients)
    return gradient_weights(g)


@finite_output
def gradcam(activations: Any, gradients: Any, *, relu: bool = True) -> np.ndarray:
    r"""Grad-CAM map.

    .. math:: L^c_{\text{Grad-CAM}} = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big), \qquad
              \alpha_k^c = \frac{1}{Z}\sum_{ij}\frac{\partial y^c}{\partial A^k_{ij}}

    Selvaraju et al., 2017, eq. 2 (weights: eq. 1, :func:`gradcam_weights`).

    Parameters
    ----------
    activations, gradients : arrays of shape (N, K, *S)
    relu : bool, default True
        Eq. 2 applies a ReLU to the linear combination.

    Returns
    -------
    ndarray of shape (N, *S).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[1., 2.]], [[4., 0.]]]])              # (1, 2, 1, 2)
    >>> g = np.array([[[[1., 1.]], [[-1., 0.]]]])             # alpha = [1, -0.5]
    >>> gradcam(a, g, relu=False)                              # [1-2, 2-0]
    array([[[-1., 2.]]])
    >>> gradcam(a, g)
    array([[[0., 2.]]])
    """
    a, g = _maps_and_gradients(activations, gradients)
    w = g.mean(axis=_spatial_axes(g))
    return _maybe_relu(_weighted_sum(a, w), relu)


# --------------------------------------------------------------------------- Grad-CAM++

def _eps_weights(weights, activations: Any, gradients: Any, eps: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(A, weights(A, G, eps))`` with ``A``, ``G`` and ``eps`` validated (Grad-CAM++, XGrad-CAM)."""
    a, g = _maps_and_gradients(activations, gradients)
    return a, weights(a, g, _v.nonnegative_float(eps, "eps"))


def _gradcampp_weights(a: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    axes = _spatial_axes(a)
    sum_a = a.sum(axis=axes, keepdims=True)  # sum, not mean: sum_{a,b} A^k_{ab}
    if eps:
        # the peer formula as written: g^2 / (2 g^2 + S g^3 + eps), zeroed where g == 0
        g2 = g * g
        den = np.where(g != 0, 2 * g2 + sum_a * (g2 * g) + eps, 0)
        alpha = _masked_divide(g2, den)
    else:
        # eq. 19 with g^2 cancelled: alpha = 1 / (2 + g S) where g != 0 -- identical in exact
        # arithmetic, immune to the under/overflow of g^2 and g^3 (float32 |g| < 1e-19 or > 1e13)
        den = np.where(g != 0, 2 + g * sum_a, 0)
        alpha = _masked_divide(np.ones_like(den), den)
    return (alpha * _relu(g)).sum(axis=axes)


@finite_output
def gradcampp_weights(activations: Any, gradients: Any, *, eps: float = 0.0) -> np.ndarray:
    r"""Grad-CAM++ channel weights (closed form under the exponential-output assumption).

    .. math::
        \alpha^{kc}_{ij} = \frac{g_{ij}^2}{2 g_{ij}^2 + \sum_{a,b} A^k_{ab}\, g_{ij}^3},
        \qquad g_{ij} = \frac{\partial y^c}{\partial A^k_{ij}},
        \qquad w^c_k = \sum_{i,j} \alpha^{kc}_{ij}\, \mathrm{ReLU}(g_{ij})

    Chattopadhay, Sarkar, Howlader & Balasubramanian, 2018, "Grad-CAM++: Generalized
    Gradient-based Visual Explanations for Deep Convolutional Networks" (WACV 2018); equation
    numbers are those of arXiv:1710.11063 ("Grad-CAM++: Improved Visual Explanations for Deep
    Convolutional Networks"; the WACV numbering was not checked): eq. 19 (the higher
    derivatives of :math:`Y^c=\exp(S^c)` written with first derivatives of :math:`S^c`) and
    eq. 5, :math:`w^c_k=\sum_{ij}\alpha^{kc}_{ij}\mathrm{ReLU}(\partial Y^c/\partial A^k_{ij})`
    (pytorch-grad-cam's comments call it "eq. 7").
    ``gradients`` are the gradients of the *score* :math:`S^c` (the pre-softmax class score).
    The paper's :math:`\partial Y^c/\partial A = \exp(S^c)\,\partial S^c/\partial A` in eq. 5
    differs by the positive per-sample factor :math:`\exp(S^c)`, which cancels in
    :math:`\alpha` and only rescales the map; it is dropped, as pytorch-grad-cam and torchcam do
    (the authors' code keeps it; multiply the weights by :math:`\exp(S^c)` to reproduce it).

    Parameters
    ----------
    activations, gradients : arrays of shape (N, K, *S)
    eps : float >= 0, default 0.0
        ``0.0`` is paper-exact.  A positive value adds ``eps`` to the denominator and zeroes
        :math:`\alpha` where :math:`g=0`, reproducing pytorch-grad-cam's ``GradCAMPlusPlus``
        (which uses ``eps = 1e-6``); it changes every non-degenerate weight slightly.

    Returns
    -------
    ndarray of shape (N, K).

    Notes
    -----
    **Evaluation.**  For :math:`g \ne 0` the closed form is evaluated as
    :math:`\alpha = 1/(2 + g\sum_{ab}A^k_{ab})` (the common factor :math:`g^2` cancelled: equal in
    exact arithmetic, and free of the underflow/overflow of :math:`g^2, g^3` that would zero or
    NaN the weight of tiny or huge float32 gradients).

    **Division guard (explicit mask).**  Where the denominator
    :math:`g^2(2 + g\sum_{ab}A^k_{ab})` is exactly zero, :math:`\alpha` is set to 0.  This
    happens (i) where :math:`g = 0` -- the usual case, and harmless: the term is multiplied by
    :math:`\mathrm{ReLU}(g)=0` and contributes nothing; (ii) where :math:`g = -2/\sum_{ab}A^k_{ab}`.
    When :math:`\sum_{ab}A^k_{ab} > 0` (e.g. post-ReLU activations) that :math:`g` is negative, so
    :math:`\mathrm{ReLU}(g) = 0` and the term again contributes nothing.  Only for a channel with a
    negative sum is it a genuine pole of the closed form; the mask gives 0 there too.

    **Other implementations.**  pytorch-grad-cam: ``eps = 1e-6`` plus ``alpha = 0`` where
    ``g == 0`` (``eps=1e-6`` here).  The authors' TensorFlow code (adityac94/Grad_CAM_plus_plus,
    ``misc/utils.py``) replaces a zero denominator by 1 (same as the mask where :math:`g = 0`,
    :math:`\alpha = g^2` at a pole) and additionally divides :math:`\alpha^{kc}_{ij}` by
    :math:`\sum_{ij}\alpha^{kc}_{ij}` per channel, a step the paper does not write (not
    reproduced).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[1., 1.]]]])              # (1, 1, 1, 2), sum A = 2
    >>> g = np.array([[[[1., 0.]]]])              # alpha = [1/(2+2), masked 0]
    >>> gradcampp_weights(a, g)                   # 0.25 * ReLU(1) + 0
    array([[0.25]])
    """
    return _eps_weights(_gradcampp_weights, activations, gradients, eps)[1]


@finite_output
def gradcampp(
    activations: Any, gradients: Any, *, relu: bool = True, eps: float = 0.0
) -> np.ndarray:
    r"""Grad-CAM++ map.

    .. math:: L^c_{ij} = \mathrm{relu}\Big(\sum_k w^c_k A^k_{ij}\Big)

    Chattopadhay et al., 2018, arXiv:1710.11063 eq. 20 ("a linear combination of the forward
    activation maps, followed by a relu layer"), with :math:`w^c_k` from
    :func:`gradcampp_weights` (eqs. 5 and 19).

    Parameters
    ----------
    activations, gradients : arrays of shape (N, K, *S)
    relu : bool, default True
        Eq. 20 applies the ReLU (the ReLU-free :math:`\sum_k w^c_k A^k_{ij}`, eq. 2 there, is
        CAM's map quoted in the related work).  The authors' code and pytorch-grad-cam apply it
        too.  For non-negative (post-ReLU) activations the weights are >= 0
        (:math:`\alpha = 1/(2 + g\sum A) > 0` where :math:`g > 0`), so it rarely bites.
    eps : float >= 0, default 0.0
        See :func:`gradcampp_weights` (``1e-6`` reproduces pytorch-grad-cam).

    Returns
    -------
    ndarray of shape (N, *S).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[1., 1.]]]])
    >>> g = np.array([[[[1., 0.]]]])
    >>> gradcampp(a, g)                           # w = 0.25 -> 0.25 * A
    array([[[0.25, 0.25]]])
    """
    a, w = _eps_weights(_gradcampp_weights, activations, gradients, eps)
    return _maybe_relu(_weighted_sum(a, w), relu)


# --------------------------------------------------------------------------- XGrad-CAM

def _xgradcam_weights(a: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    axes = _spatial_axes(a)
    num = (a * g).sum(axis=axes)
    den = a.sum(axis=axes)
    if eps:
        den = den + eps
    return _masked_divide(num, den)


@finite_output
def xgradcam_weights(activations: Any, gradients: Any, *, eps: float = 0.0) -> np.ndarray:
    r"""XGrad-CAM channel weights: activation-weighted mean of the gradients.

    .. math:: \alpha_k^c = \sum_{i,j} \frac{A^k_{ij}}{\sum_{a,b} A^k_{ab}}
              \frac{\partial y^c}{\partial A^k_{ij}}

    Fu, Hu, Dong, Guo, Gao & Li, 2020, "Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs" (BMVC), the XGrad-CAM weight (their solution of the axiom-constrained
    problem).  Computed as :math:`\big(\sum_{ij}A^k_{ij}g_{ij}\big) / \sum_{ab}A^k_{ab}`.

    Parameters
    ----------
    activations, gradients : arrays of shape (N, K, *S)
    eps : float >= 0, default 0.0
        ``0.0`` is paper-exact; a positive value is added to :math:`\sum_{ab}A^k_{ab}`,
        reproducing pytorch-grad-cam's ``XGradCAM`` (``eps = 1e-7``) or the authors' code
        (Fu0511/XGrad-CAM, ``eps = 1e-6``).

    Returns
    -------
    ndarray of shape (N, K).

    Notes
    -----
    **Conservation.**  For every channel with :math:`\sum_{ab}A^k_{ab} \ne 0`,
    :math:`\alpha_k \sum_{ij} A^k_{ij} = \sum_{ij} A^k_{ij} g^k_{ij}`, hence
    :math:`\sum_{ij} \sum_k \alpha_k A^k_{ij} = \sum_k\sum_{ij} A^k_{ij} g^k_{ij}`: the map (before
    ReLU) sums to the first-order Taylor term of :math:`y^c`, which equals :math:`y^c` for a
    head that is positively homogeneous of degree 1 in :math:`A` (ReLU / linear / pooling).

    **Division guard (explicit mask).**  A channel with :math:`\sum_{ab}A^k_{ab} = 0` gets
    :math:`\alpha_k = 0`: for non-negative (post-ReLU) activations such a channel is all zero,
    so its term :math:`\alpha_k A^k` is zero whatever :math:`\alpha_k` is.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[1., 3.]]]])              # sum A = 4
    >>> g = np.array([[[[2., 1.]]]])              # (1*2 + 3*1) / 4
    >>> xgradcam_weights(a, g)
    array([[1.25]])
    """
    return _eps_weights(_xgradcam_weights, activations, gradients, eps)[1]


@finite_output
def xgradcam(
    activations: Any, gradients: Any, *, relu: bool = True, eps: float = 0.0
) -> np.ndarray:
    r"""XGrad-CAM map.

    .. math:: M^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big)

    with :math:`\alpha_k^c` from :func:`xgradcam_weights` (Fu et al., 2020).

    Parameters
    ----------
    activations, gradients : arrays of shape (N, K, *S)
    relu : bool, default True
        XGrad-CAM keeps Grad-CAM's map (Selvaraju et al. eq. 2, with ReLU) and only replaces the
        weights; the authors' code (Fu0511/XGrad-CAM) applies the ReLU.  The conservation axiom
        is stated for the linear map, i.e. ``relu=False``.
    eps : float >= 0, default 0.0
        See :func:`xgradcam_weights`.

    Returns
    -------
    ndarray of shape (N, *S).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[1., 3.]]]])
    >>> g = np.array([[[[2., 1.]]]])
    >>> xgradcam(a, g)                            # 1.25 * [1, 3]
    array([[[1.25, 3.75]]])
    """
    a, w = _eps_weights(_xgradcam_weights, activations, gradients, eps)
    return _maybe_relu(_weighted_sum(a, w), relu)


# --------------------------------------------------------------------------- pixel-wise methods

@finite_output
def layercam(activations: Any, gradients: Any, *, relu: bool = True) -> np.ndarray:
    r"""LayerCAM map: activations weighted by their positive gradients, position by position.

    .. math:: M^c = \mathrm{ReLU}\Big(\sum_k \hat A^k\Big), \qquad
              \hat A^k_{ij} = \mathrm{ReLU}\Big(\frac{\partial y^c}{\partial A^k_{ij}}\Big) A^k_{ij}

    Jiang, Zhang, Hou, Cheng & Wei, 2021, "LayerCAM: Exploring Hierarchical Class Activation
    Maps for Localization" (IEEE TIP 30, 2021): pixel-wise weight
    :math:`w^{kc}_{ij}=\mathrm{ReLU}(g^{kc}_{ij})`, weighted map, final map with ReLU (the
    consensus of torchcam and the other ports; equation numbers not verified).

    Parameters
    ----------
    activations, gradients : arrays of shape (N, K, *S)
    relu : bool, default True
        The paper's final map applies a ReLU.

    Returns
    -------
    ndarray of shape (N, *S).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[2., 1.]], [[1., -3.]]]])             # (1, 2, 1, 2)
    >>> g = np.array([[[[1., -1.]], [[2., 1.]]]])             # ReLU(g) = [[1, 0], [2, 1]]
    >>> layercam(a, g, relu=False)                             # [2+2, 0-3]
    array([[[ 4., -3.]]])
    """
    a, g = _maps_and_gradients(activations, gradients)
    return _maybe_relu(_weighted_sum(a, _relu(g)), relu)


@finite_output
def hirescam(activations: Any, gradients: Any, *, relu: bool = False) -> np.ndarray:
    r"""HiResCAM map: element-wise gradient times activation, summed over channels.

    .. math:: \tilde A^c_{\text{HiResCAM}} = \sum_k \frac{\partial y^c}{\partial A^k} \odot A^k

    Draelos & Carin, 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks" (arXiv:2011.08891), the HiResCAM equation.  When the gradient
    is spatially constant per channel (e.g. a GAP -> linear head), :math:`g^k_{ij}=\alpha_k^c`
    and HiResCAM equals Grad-CAM without its ReLU.

    Parameters
    ----------
    activations, gradients : arrays of shape (N, K, *S)
    relu : bool, default False
        The HiResCAM equation is written without a ReLU (a signed explanation; the paper's
        final-map ReLU placement could not be verified against its text).  pytorch-grad-cam
        applies one in post-processing.

    Returns
    -------
    ndarray of shape (N, *S).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[2., 1.]], [[1., -3.]]]])
    >>> g = np.array([[[[1., -1.]], [[2., 1.]]]])
    >>> hirescam(a, g)                                         # [2+2, -1-3]
    array([[[ 4., -4.]]])
    """
    a, g = _maps_and_gradients(activations, gradients)
    return _maybe_relu(_weighted_sum(a, g), relu)


@finite_output
def gradcam_elementwise(activations: Any, gradients: Any, *, relu: bool = True) -> np.ndarray:
    r"""Element-wise Grad-CAM: sum over channels of the positive part of gradient times activation.

    .. math:: M^c = \sum_k \mathrm{ReLU}\Big(\frac{\partial y^c}{\partial A^k} \odot A^k\Big)

    No paper: this is ``GradCAMElementWise`` of pytorch-grad-cam (J. Gildenblat and contributors,
    https://github.com/jacobgil/pytorch-grad-cam, ``pytorch_grad_cam/grad_cam_elementwise.py``),
    which computes ``np.maximum(grads * activations, 0).sum(axis=1)`` and then, like every
    method of that library, a ReLU.

    Parameters
    ----------
    activations, gradients : arrays of shape (N, K, *S)
    relu : bool, default True
        Matches the library; a sum of ReLUs is already >= 0, so it changes nothing.

    Returns
    -------
    ndarray of shape (N, *S).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[[2., 1.]], [[1., -3.]]]])
    >>> g = np.array([[[[1., -1.]], [[2., 1.]]]])              # g*A = [[2, -1], [2, -3]]
    >>> gradcam_elementwise(a, g)
    array([[[4., 0.]]])
    """
    a, g = _maps_and_gradients(activations, gradients)
    return _maybe_relu(_relu(a * g).sum(axis=1), relu)
