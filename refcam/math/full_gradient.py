r"""FullGrad: full-gradient saliency (input-gradients and bias-gradients).

Srinivas & Fleuret (2019), "Full-Gradient Representation for Neural Network Visualization",
NeurIPS 2019 (arXiv:1905.00780).  For a network :math:`f` with biases :math:`b` the
*full-gradient decomposition* (completeness; exact for piecewise-linear networks such as ReLU
nets with max/average pooling and affine BatchNorm) reads

.. math:: f(x) = \nabla_x f(x)^\top x + \sum_{l} \sum_{c} f^b(x)_{l,c},
          \qquad f^b(x) = \nabla_b f(x) \odot b ,

and the FullGrad saliency map of a convolutional net aggregates both parts:

.. math:: S_f(x) = \psi\big(\nabla_x f(x) \odot x\big)
          + \sum_{l \in L} \sum_{c \in c_l} \psi\big(f^b(x)_c\big).

For a bias :math:`b` added at every position of a convolution output :math:`z`, the
bias-gradient per position is :math:`\partial f/\partial z \odot b` (:func:`bias_gradient`);
summing it over positions gives :math:`\partial f/\partial b_c \cdot b_c`.  The equation numbers
of the paper were not verified here (no copy of the paper's text was at hand); the conventions
below follow the authors' official implementation (idiap/fullgrad-saliency,
``saliency/fullgrad.py``), each departure being a named keyword.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._finite import finite_output
from .._validate import as_float_array, check_ndim, check_same_shape, choice, nonnegative_float
from .._validate import images
from ..errors import InvalidArgumentError, ShapeError
from .post import UPSAMPLE_MODES, normalize, upsample

__all__ = ["FULLGRAD_NORMALIZE_OVER", "bias_gradient", "batchnorm_bias", "full_gradient_sum", "fullgrad"]

FULLGRAD_NORMALIZE_OVER = ("layer", "channel")


def _layers(bias_gradients: Any, n: int, *, min_ndim: int, ndim: int | None = None) -> list[np.ndarray]:
    """Validate the sequence of per-layer bias-gradients (each ``(N, K_l, ...)``)."""
    if isinstance(bias_gradients, np.ndarray) or not isinstance(bias_gradients, (list, tuple)):
        raise InvalidArgumentError(
            "bias_gradients", type(bias_gradients).__name__,
            "a list or tuple of arrays, one (N, K_l, *S_l) array per layer with a bias",
        )
    out = []
    for i, b in enumerate(bias_gradients):
        name = f"bias_gradients[{i}]"
        arr = as_float_array(b, name)
        if ndim is not None and arr.ndim != ndim:
            raise ShapeError(
                name, arr.shape,
                f"(N, K, *S) with {ndim - 2} spatial axes, as the inputs (a bias-gradient map is "
                "upsampled to the input size)",
            )
        check_ndim(arr, name, min_ndim=min_ndim, layout="(N, K, ...): batch, channels, ...")
        if arr.shape[0] != n or any(s == 0 for s in arr.shape):
            raise ShapeError(name, arr.shape, f"batch size {n} (as the inputs) and every axis non-empty")
        out.append(arr)
    return out


@finite_output
def bias_gradient(gradients: Any, bias: Any) -> np.ndarray:
    r"""Bias-gradient :math:`f^b = \partial f/\partial z \odot b` of one layer.

    Srinivas & Fleuret (2019), Sect. 3 (definition of the bias-gradients; equation number not
    verified).  :math:`z` is the layer's output (the tensor the bias :math:`b` is added to) and
    ``b`` is broadcast over the spatial axes: :math:`f^b_{n,k,\mathbf s} = G_{n,k,\mathbf s}\,b_k`.
    Summed over the spatial positions it is :math:`\partial f/\partial b_k \cdot b_k`.

    Parameters
    ----------
    gradients : array_like, shape ``(N, K, *S)`` (``*S`` may be empty: a dense layer)
        :math:`\partial f/\partial z`.
    bias : array_like, shape ``(K,)``

    Returns
    -------
    ndarray, shape ``(N, K, *S)``, common dtype of the two arrays.

    Examples
    --------
    >>> bias_gradient(np.array([[[1.0, -2.0], [3.0, 0.5]]]), np.array([2.0, -1.0]))
    array([[[ 2. , -4. ],
            [-3. , -0.5]]])
    """
    g = as_float_array(gradients, "gradients")
    check_ndim(g, "gradients", min_ndim=2, layout="(N, K, *S): batch, channels, spatial axes")
    b = as_float_array(bias, "bias")
    if b.shape != (g.shape[1],):
        raise ShapeError("bias", b.shape, f"({g.shape[1]},): one bias per channel of gradients")
    return g * b.reshape((-1,) + (1,) * (g.ndim - 2))


@finite_output
def batchnorm_bias(scale: Any, bias: Any, mean: Any, var: Any, epsilon: float = 1e-5) -> np.ndarray:
    r"""Effective bias of an inference-mode BatchNormalization: :math:`\beta - \gamma\mu/\sqrt{\sigma^2+\epsilon}`.

    Inference BatchNorm is the affine map :math:`y = \frac{\gamma}{\sqrt{\sigma^2+\epsilon}}\,x +
    \big(\beta - \frac{\gamma\mu}{\sqrt{\sigma^2+\epsilon}}\big)`: its bias in the sense of the
    full-gradient decomposition (Srinivas & Fleuret 2019) is the constant term, as in the official
    implementation (``tensor_extractor.py``) and pytorch-grad-cam's ``FullGrad.get_bias_data``.

    Parameters
    ----------
    scale, bias, mean, var : array_like, shape ``(K,)``
        :math:`\gamma, \beta, \mu, \sigma^2` (ONNX ``BatchNormalization`` inputs 1–4).
    epsilon : float >= 0
        ONNX attribute ``epsilon`` (default 1e-5, the ONNX default).  Division guard: ``var +
        epsilon`` must be > 0 everywhere, otherwise :class:`~refcam.errors.InvalidArgumentError`.

    Returns
    -------
    ndarray, shape ``(K,)``, common dtype.

    Examples
    --------
    >>> batchnorm_bias([2.0], [1.0], [3.0], [3.0], epsilon=1.0)   # 1 - 2*3/sqrt(4)
    array([-2.])
    """
    arrs = [as_float_array(a, n) for a, n in ((scale, "scale"), (bias, "bias"), (mean, "mean"), (var, "var"))]
    eps = nonnegative_float(epsilon, "epsilon")
    k = arrs[0].shape
    if len(k) != 1:
        raise ShapeError("scale", k, "(K,): one value per channel")
    for a, n in zip(arrs[1:], ("bias", "mean", "var")):
        if a.shape != k:
            raise ShapeError(n, a.shape, f"{k} (as scale)")
    g, beta, mu, var_ = arrs
    den2 = var_ + np.asarray(eps, dtype=var_.dtype)
    if not (den2 > 0).all():
        raise InvalidArgumentError("var", var_.tolist(), f"var + epsilon > 0 (epsilon = {eps})")
    return beta - g * mu / np.sqrt(den2)


@finite_output
def full_gradient_sum(input_gradients: Any, inputs: Any, bias_gradients: Sequence[Any]) -> np.ndarray:
    r"""Sum of the full-gradient decomposition, per sample: :math:`\nabla_x f^\top x + \sum_l \sum f^b_l`.

    Srinivas & Fleuret (2019), Sect. 3 (full-gradient decomposition; equation number not
    verified): for a piecewise-linear network (ReLU, max/average pooling, affine layers) in which
    *every* bias is listed, this equals :math:`f(x)` (completeness).  A bias-gradient of any rank
    (convolutional ``(N, K, *S)`` or dense ``(N, K)``) is summed over all its non-batch axes.

    Parameters
    ----------
    input_gradients, inputs : array_like, shape ``(N, C, *S)``
    bias_gradients : sequence of array_like, each ``(N, K_l, ...)`` (:func:`bias_gradient`)

    Returns
    -------
    ndarray, shape ``(N,)``, common dtype.

    Examples
    --------
    >>> # f(x) = w x + b with w = 2, b = 1 at x = 3: 2*3 + 1 = 7
    >>> full_gradient_sum(np.array([[[2.0]]]), np.array([[[3.0]]]), [np.array([[1.0]])])
    array([7.])
    """
    g = images(input_gradients, "input_gradients")
    x = images(inputs, "inputs")
    check_same_shape(g, "input_gradients", x, "inputs")
    layers = _layers(bias_gradients, g.shape[0], min_ndim=2)
    dt = np.result_type(g, x, *layers)
    total = np.sum((g * x).reshape(len(g), -1), axis=1, dtype=dt)
    for b in layers:
        total = total + np.sum(b.reshape(len(b), -1), axis=1, dtype=dt)
    return total.astype(dt, copy=False)


def _psi_sum(t: np.ndarray, over: str, eps: float) -> np.ndarray:
    """:math:`\\sum_c` of abs + min-max normalisation (per sample or per channel), ``(N, *S)``."""
    a = np.abs(t)
    if over == "layer":
        a = normalize(a, "minmax", eps)
    else:
        a = normalize(a.reshape((-1,) + a.shape[2:]), "minmax", eps).reshape(a.shape)
    return np.sum(a, axis=1)


@finite_output
def fullgrad(
    input_gradients: Any,
    inputs: Any,
    bias_gradients: Sequence[Any],
    *,
    upsample_mode: str = "linear-align-corners",
    normalize_over: str = "layer",
    eps: float = 0.0,
) -> np.ndarray:
    r"""FullGrad saliency map :math:`S_f(x) = \psi(\nabla_x f \odot x) + \sum_{l\in L}\sum_{c\in c_l}\psi(f^b(x)_c)`.

    Srinivas & Fleuret (2019), "Full-Gradient Representation for Neural Network Visualization",
    Sect. 4 "FullGrad" (equation number not verified).  :math:`\psi` is the post-processing
    operator: absolute value, min-max rescaling to :math:`[0, 1]`, upsampling to the input size;
    then the channels and the layers are summed.  Conventions (defaults = the authors' official
    code, ``FullGrad.saliency`` / ``_postProcess`` of idiap/fullgrad-saliency):

    * ``normalize_over="layer"``: the min and max are taken per sample over *all* channels and
      positions of one term (the input-gradient term :math:`(C, *S)`, or one layer
      :math:`(K_l, *S_l)`), as the official code does.  ``"channel"`` rescales each channel
      :math:`c` on its own (the paper's notation :math:`\psi(f^b(x)_c)` read literally, and
      pytorch-grad-cam's ``FullGrad``, which also rescales each input channel separately).
    * ``eps``: min-max division guard, :math:`(a - \min a)/(\max a - \min a + \epsilon)`.
      Default 0 with a mask (a constant term contributes zeros, see
      :func:`refcam.math.normalize`); ``eps=1e-6`` is the official code, ``eps=1e-7``
      pytorch-grad-cam.
    * ``upsample_mode``: bilinear with ``align_corners=True`` (``"linear-align-corners"``,
      official code); pytorch-grad-cam resizes with OpenCV ``INTER_LINEAR`` (``"linear"``).
      Terms already at the input size are not resampled.  Upsampling is linear, so each layer's
      channel sum is upsampled once (:math:`\sum_c \mathrm{up}(m_c) = \mathrm{up}(\sum_c m_c)`).
    * no final normalisation and no ReLU (the map is non-negative): the raw :math:`S_f` is
      returned; rescale for display with :func:`refcam.math.normalize`.

    Parameters
    ----------
    input_gradients : array_like, shape ``(N, C, *S)``
        :math:`\nabla_x f(x)` (one target class per sample).
    inputs : array_like, shape ``(N, C, *S)``
        :math:`x`.
    bias_gradients : sequence of array_like, each ``(N, K_l, *S_l)``
        :math:`f^b(x)` of every convolutional layer with a bias (:func:`bias_gradient`), with as
        many spatial axes as the inputs (``S_l`` may differ from ``S``).  May be empty.
    upsample_mode : {"linear-align-corners", "linear", "nearest", "nearest-exact"}
    normalize_over : {"layer", "channel"}
    eps : float >= 0

    Returns
    -------
    ndarray, shape ``(N, *S)``, common dtype of all arrays.  Any spatial rank.

    Examples
    --------
    >>> g = np.array([[[[1.0, -2.0]]]])            # (N=1, C=1, 1, 2)
    >>> x = np.array([[[[3.0, 1.0]]]])             # |g x| = [3, 2] -> minmax [1, 0]
    >>> fb = np.array([[[[0.5]], [[-1.0]]]])       # one 1x1 layer, K=2 -> |.| = [0.5, 1] -> [0, 1]
    >>> fullgrad(g, x, [fb])                       # [1, 0] + up(0 + 1) = [2, 1]
    array([[[2., 1.]]])
    >>> fullgrad(g, x, [fb], normalize_over="channel")   # each channel constant -> zeros
    array([[[1., 0.]]])
    """
    mode = choice(upsample_mode, "upsample_mode", UPSAMPLE_MODES)
    over = choice(normalize_over, "normalize_over", FULLGRAD_NORMALIZE_OVER)
    eps = nonnegative_float(eps, "eps")
    g = images(input_gradients, "input_gradients")
    x = images(inputs, "inputs")
    check_same_shape(g, "input_gradients", x, "inputs")
    layers = _layers(bias_gradients, g.shape[0], min_ndim=3, ndim=g.ndim)
    dt = np.result_type(g, x, *layers)
    size = g.shape[2:]
    out = _psi_sum((g * x).astype(dt, copy=False), over, eps)
    for b in layers:
        m = _psi_sum(b.astype(dt, copy=False), over, eps)
        out = out + (m if m.shape[1:] == size else upsample(m, size, mode))
    return out.astype(dt, copy=False)
