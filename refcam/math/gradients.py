r"""Gradient saliency: vanilla gradients, Guided Grad-CAM, SmoothGrad, Integrated Gradients, ...

Everything here is the arithmetic *around* gradients of a class score :math:`S_c` with respect to
the input image :math:`I` (layout ``(N, C, *S)``); the adapter/autodiff floors compute those
gradients, with one target class per sample already applied.  The helpers that create the
inputs to run (:func:`smoothgrad_inputs`, :func:`path_inputs`, :func:`integration_points`) and
those that reduce the resulting gradients (:func:`smoothgrad`, :func:`integrated_gradients`)
come in matching pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._finite import finite_output
from .._validate import (
    as_float_array,
    check_ndim,
    check_same_shape,
    choice,
    images,
    nonnegative_float,
    positive_int,
)
from ..errors import InvalidArgumentError, ShapeError

__all__ = [
    "INTEGRATION_RULES",
    "SALIENCY_REDUCTIONS",
    "channel_max_saliency",
    "saliency",
    "guided_gradcam",
    "smoothgrad_inputs",
    "smoothgrad",
    "integration_points",
    "path_inputs",
    "integrated_gradients",
    "class_model_step",
]

SALIENCY_REDUCTIONS = ("max-abs", "abs", "sum-abs", "none")
INTEGRATION_RULES = (
    "riemann-left",
    "riemann-right",
    "riemann-middle",
    "trapezoid",
    "trapezoid-captum",
    "gauss-legendre",
)



def _samples(x: Any, name: str, what: str) -> np.ndarray:
    """Validate (N, n, C, *S) stacks of per-sample gradients."""
    arr = as_float_array(x, name)
    check_ndim(
        arr, name, min_ndim=4, layout=f"(N, {what}, C, *S): batch, {what}, channels, spatial axes"
    )
    if any(s == 0 for s in arr.shape):
        raise ShapeError(name, arr.shape, f"(N, {what}, C, *S) with every axis non-empty")
    return arr


def _broadcast_baseline(baseline: Any, inputs: np.ndarray) -> np.ndarray:
    b = as_float_array(baseline, "baseline")
    expected = (
        f"a scalar or an array broadcastable to inputs {inputs.shape}, e.g. (C, *S) or (N, C, *S)"
    )
    try:
        shape = np.broadcast_shapes(b.shape, inputs.shape)
    except ValueError:
        raise ShapeError("baseline", b.shape, expected) from None
    if shape != inputs.shape:
        raise ShapeError("baseline", b.shape, expected)
    return b


def _common_dtype(*arrays: np.ndarray, baseline: np.ndarray) -> np.dtype:
    """Result dtype; a scalar (0-d) baseline does not promote (0.0 with float32 stays float32)."""
    dtypes = [a.dtype for a in arrays] + ([baseline.dtype] if baseline.ndim else [])
    return np.result_type(*dtypes)


@finite_output
def channel_max_saliency(input_gradients: Any) -> np.ndarray:
    r"""Image-specific class saliency map: the largest gradient magnitude over colour channels.

    Simonyan, Vedaldi & Zisserman (2014), "Deep Inside Convolutional Networks: Visualising
    Image Classification Models and Saliency Maps", Sect. 3.1: with
    :math:`w = \partial S_c / \partial I \,|_{I_0}` (Eq. 4; Eq. 3 is the first-order Taylor expansion it comes from),

    .. math:: M_{ij} = \max_c |w_{h(i,j,c)}| ,

    where :math:`h(i,j,c)` is the index of pixel :math:`(i,j)` in channel :math:`c`.  Any
    number of spatial axes is accepted (the max runs over axis 1 only).

    Parameters
    ----------
    input_gradients : array_like, shape ``(N, C, *S)``
        :math:`\partial S_c/\partial I` for each sample's target class.

    Returns
    -------
    ndarray, shape ``(N, *S)``, dtype of ``input_gradients``; non-negative.

    Examples
    --------
    >>> g = np.array([[[[1.0, -3.0]], [[-2.0, 0.5]]]])   # (N=1, C=2, H=1, W=2)
    >>> channel_max_saliency(g)
    array([[[2., 3.]]])
    """
    g = images(input_gradients, "input_gradients")
    return np.max(np.abs(g), axis=1)


@finite_output
def saliency(input_gradients: Any, *, reduce: str = "max-abs") -> np.ndarray:
    r"""Vanilla-gradient saliency with a choice of channel reduction.

    .. math::

        \text{max-abs}: \max_c |g_c| \ \text{(Simonyan et al. 2014, Sect. 3.1)},\quad
        \text{sum-abs}: \sum_c |g_c|,\quad
        \text{abs}: |g_c|,\quad
        \text{none}: g_c,

    with :math:`g = \partial S_c/\partial I`.  ``"max-abs"`` is the paper's map (see
    :func:`channel_max_saliency`); ``"abs"`` is captum's ``Saliency`` default
    (``abs=True``: the absolute gradient per channel, no channel reduction); ``"none"``
    is captum's ``abs=False``.

    Parameters
    ----------
    input_gradients : array_like, shape ``(N, C, *S)``
    reduce : {"max-abs", "sum-abs", "abs", "none"}

    Returns
    -------
    ndarray, shape ``(N, *S)`` for ``"max-abs"``/``"sum-abs"``, ``(N, C, *S)`` for
    ``"abs"``/``"none"``; dtype of ``input_gradients``.

    Examples
    --------
    >>> g = np.array([[[[1.0, -3.0]], [[-2.0, 0.5]]]])
    >>> saliency(g, reduce="sum-abs")
    array([[[3. , 3.5]]])
    >>> saliency(g, reduce="abs")[0, :, 0]
    array([[1. , 3. ],
           [2. , 0.5]])
    """
    reduce = choice(reduce, "reduce", SALIENCY_REDUCTIONS)
    g = images(input_gradients, "input_gradients")
    if reduce == "max-abs":
        return np.max(np.abs(g), axis=1)
    if reduce == "sum-abs":
        return np.sum(np.abs(g), axis=1)
    if reduce == "abs":
        return np.abs(g)
    return g.copy()


@finite_output
def guided_gradcam(guided_gradients: Any, cam_map: Any) -> np.ndarray:
    r"""Guided Grad-CAM: guided backpropagation times the Grad-CAM map, point-wise.

    Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra (2017), "Grad-CAM: Visual Explanations
    from Deep Networks via Gradient-based Localization", Sect. 3 ("Guided Grad-CAM"): the
    Grad-CAM map :math:`L^c` is first up-sampled to the input resolution (the paper: bilinear;
    use :func:`refcam.math.post.upsample`), then fused with Guided Backpropagation
    :math:`G^c` by element-wise multiplication, broadcast over the channels:

    .. math:: \text{Guided-Grad-CAM}^c_{n,k,\mathbf{x}} = G^c_{n,k,\mathbf{x}}\, L^c_{n,\mathbf{x}}

    No normalisation is applied here (the map is used as given, e.g. after ReLU).

    Parameters
    ----------
    guided_gradients : array_like, shape ``(N, C, *S_in)``
        Guided-backpropagation gradients of the class score w.r.t. the input.
    cam_map : array_like, shape ``(N, *S_in)``
        The class activation map already at input resolution.

    Returns
    -------
    ndarray, shape ``(N, C, *S_in)``, common dtype of the two arguments.

    Examples
    --------
    >>> gb = np.array([[[[1.0, -2.0]], [[3.0, 4.0]]]])   # (1, 2, 1, 2)
    >>> guided_gradcam(gb, np.array([[[0.5, 1.0]]]))[0, :, 0]
    array([[ 0.5, -2. ],
           [ 1.5,  4. ]])
    """
    g = images(guided_gradients, "guided_gradients")
    m = as_float_array(cam_map, "cam_map")
    expected = (g.shape[0],) + g.shape[2:]
    if m.shape != expected:
        raise ShapeError(
            "cam_map",
            m.shape,
            expected,
            "(N, *S_in) matching guided_gradients; upsample the CAM to the input size first",
        )
    return g * m[:, None]


def _rng(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgumentError(
            "seed", seed, "a non-negative integer, None or a numpy.random.Generator"
        )
    return np.random.default_rng(int(seed))


@finite_output(widen=False)
def smoothgrad_inputs(
    inputs: Any, n_samples: int, noise_level: float = 0.15, seed: Any = 0
) -> np.ndarray:
    r"""Noisy copies of each input for SmoothGrad: :math:`x + \mathcal N(0, \sigma^2)`.

    Smilkov, Thorat, Kim, Viégas & Wattenberg (2017), "SmoothGrad: removing noise by adding
    noise", Eq. 3 (average of the sensitivity map over noisy copies) and Sect. 4.1 (noise
    level): the standard deviation is set *relative to the input's range*,

    .. math:: \sigma_n = \text{noise\_level}\cdot(\max x_n - \min x_n),

    with max/min over all channels and positions of sample :math:`n` (the authors' code,
    PAIR-code ``saliency``, uses ``stdev_spread * (max - min)`` the same way; the paper
    recommends 10--20 %).  captum's ``NoiseTunnel`` instead takes an absolute ``stdevs``.

    The noise is drawn in float64 from ``numpy.random.default_rng(seed)`` as one standard
    normal array of shape ``(N, n_samples, C, *S)`` (C order), scaled, added, then cast to
    the input dtype; the same seed gives the same samples.  A constant input gets
    :math:`\sigma = 0`: its copies are exact.

    Parameters
    ----------
    inputs : array_like, shape ``(N, C, *S)``
    n_samples : int >= 1
    noise_level : float >= 0
    seed : int >= 0, None or numpy.random.Generator

    Returns
    -------
    ndarray, shape ``(N, n_samples, C, *S)``, dtype of ``inputs``.

    Examples
    --------
    >>> x = np.zeros((1, 1, 2, 2)); x[0, 0, 0, 0] = 1.0
    >>> s = smoothgrad_inputs(x, 3, noise_level=0.0)
    >>> s.shape, bool((s == x[:, None]).all())
    ((1, 3, 1, 2, 2), True)
    """
    x = images(inputs, "inputs")
    n = positive_int(n_samples, "n_samples")
    level = nonnegative_float(noise_level, "noise_level")
    rng = _rng(seed)
    axes = tuple(range(1, x.ndim))
    spread = (np.max(x, axis=axes) - np.min(x, axis=axes)).astype(np.float64)
    sigma = (level * spread).reshape((x.shape[0],) + (1,) * x.ndim)
    noise = rng.standard_normal((x.shape[0], n) + x.shape[1:])
    return (x[:, None].astype(np.float64) + sigma * noise).astype(x.dtype)


@finite_output
def smoothgrad(gradient_samples: Any, *, square: bool = False) -> np.ndarray:
    r"""Average of the gradients of noisy copies (SmoothGrad), optionally of their squares.

    Smilkov et al. (2017), "SmoothGrad: removing noise by adding noise", Eq. 3:

    .. math:: \hat M_c(x) = \frac1n \sum_{i=1}^{n} M_c\big(x + \mathcal N(0, \sigma^2)\big),

    with :math:`M_c = \partial S_c/\partial x` evaluated at the copies of
    :func:`smoothgrad_inputs`.  ``square=True`` is SmoothGrad-Squared (Hooker, Erhan,
    Kindermans & Kim, 2019, "A Benchmark for Interpretability Methods in Deep Neural
    Networks"; captum ``NoiseTunnel(nt_type="smoothgrad_sq")``):
    :math:`\frac1n\sum_i M_c(x_i)^2`.  Channel reduction (e.g. :func:`saliency`) is a
    separate step.

    Parameters
    ----------
    gradient_samples : array_like, shape ``(N, n, C, *S)``
    square : bool

    Returns
    -------
    ndarray, shape ``(N, C, *S)``, dtype of ``gradient_samples``.

    Examples
    --------
    >>> g = np.array([[[[1.0, -2.0]], [[3.0, 4.0]]]])[:, :, None]   # (N=1, n=2, C=1, 1, 2)
    >>> smoothgrad(g)
    array([[[[2., 1.]]]])
    >>> smoothgrad(g, square=True)
    array([[[[ 5., 10.]]]])
    """
    g = _samples(gradient_samples, "gradient_samples", "n")
    if not isinstance(square, (bool, np.bool_)):
        raise InvalidArgumentError("square", square, "True or False")
    return np.mean(g * g if square else g, axis=1)


@finite_output
def integration_points(n_steps: int, rule: str = "gauss-legendre") -> tuple[np.ndarray, np.ndarray]:
    r"""Quadrature nodes and weights: :math:`\int_0^1 f \approx \sum_m w_m f(\alpha_m)`.

    With :math:`n` = ``n_steps`` and :math:`m = 0..n-1`:

    .. math::

        \begin{array}{lll}
        \text{riemann-left}     & \alpha_m = m/n            & w_m = 1/n \\
        \text{riemann-right}    & \alpha_m = (m+1)/n        & w_m = 1/n \\
        \text{riemann-middle}   & \alpha_m = (m+\tfrac12)/n & w_m = 1/n \\
        \text{trapezoid}        & \alpha_m = m/(n-1)        & w_m = 1/(n-1),\ \text{ends halved} \\
        \text{trapezoid-captum} & \alpha_m = m/(n-1)        & w_m = 1/n,\ \text{ends halved} \\
        \text{gauss-legendre}   & \alpha_m = (1 + t_m)/2    & w_m = \omega_m / 2
        \end{array}

    where :math:`(t_m, \omega_m)` is the :math:`n`-point Gauss--Legendre rule on
    :math:`[-1, 1]` (``numpy.polynomial.legendre.leggauss``), exact for polynomials of degree
    :math:`\le 2n-1`.  Every rule's weights sum to 1 except ``"trapezoid-captum"``.

    Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep Networks", Sect. 5,
    approximate the integral by the right Riemann sum (``"riemann-right"``, steps
    :math:`k/m`, :math:`k = 1..m`).  captum's ``approximation_methods.py`` (names
    ``riemann_left/right/middle``, ``riemann_trapezoid``, ``gausslegendre``, the default
    with ``n_steps=50``) uses the same nodes -- built with ``torch.linspace`` in float32, so
    its Riemann nodes differ from these exact ones by ~1e-8 -- and the same weights, except
    that its trapezoid keeps step :math:`1/n` on the :math:`n` nodes
    :math:`\mathrm{linspace}(0, 1, n)` so its weights sum to :math:`1 - 1/n`; that variant is
    ``"trapezoid-captum"``.  captum refuses ``n_steps < 2`` for the Riemann rules.

    Parameters
    ----------
    n_steps : int >= 1 (>= 2 for the trapezoid rules)
    rule : str
        One of the six names in the table (``INTEGRATION_RULES``).

    Returns
    -------
    alphas, weights : ndarray, shape ``(n_steps,)``, float64, ``alphas`` increasing in ``[0, 1]``.

    Examples
    --------
    >>> integration_points(4, "riemann-middle")
    (array([0.125, 0.375, 0.625, 0.875]), array([0.25, 0.25, 0.25, 0.25]))
    >>> integration_points(3, "trapezoid")
    (array([0. , 0.5, 1. ]), array([0.25, 0.5 , 0.25]))
    >>> a, w = integration_points(2, "gauss-legendre")
    >>> np.round(a, 6), w
    (array([0.211325, 0.788675]), array([0.5, 0.5]))
    """
    n = positive_int(n_steps, "n_steps")
    rule = choice(rule, "rule", INTEGRATION_RULES)
    m = np.arange(n, dtype=np.float64)
    if rule == "gauss-legendre":
        t, omega = np.polynomial.legendre.leggauss(n)
        return 0.5 * (1.0 + t), 0.5 * omega
    if rule in ("trapezoid", "trapezoid-captum"):
        if n < 2:
            raise InvalidArgumentError("n_steps", n_steps, f"an integer >= 2 for rule {rule!r}")
        alphas = m / (n - 1)
        weights = np.full(n, 1.0 / (n - 1 if rule == "trapezoid" else n))
        weights[[0, -1]] /= 2
        return alphas, weights
    offset = {"riemann-left": 0.0, "riemann-right": 1.0, "riemann-middle": 0.5}[rule]
    return (m + offset) / n, np.full(n, 1.0 / n)


@finite_output
def path_inputs(inputs: Any, baseline: Any, alphas: Any) -> np.ndarray:
    r"""The points of the straight-line path at which Integrated Gradients needs gradients.

    .. math:: x^{(m)} = x' + \alpha_m (x - x'),

    (Sundararajan et al. 2017, Eq. 1's integrand).  Feed the result, reshaped to
    ``(N * n_steps, C, *S)``, through the model and pass the gradients, reshaped back to
    ``(N, n_steps, C, *S)``, to :func:`integrated_gradients`.

    Parameters
    ----------
    inputs : array_like, shape ``(N, C, *S)``
    baseline : array_like, scalar or broadcastable to ``inputs`` (``(C, *S)``, ``(N, C, *S)``, ...)
    alphas : array_like, shape ``(n_steps,)``, e.g. from :func:`integration_points`

    Returns
    -------
    ndarray, shape ``(N, n_steps, C, *S)``, common dtype of ``inputs`` and ``baseline`` (a
    scalar baseline does not promote: float32 inputs with ``baseline=0.0`` stay float32).

    Examples
    --------
    >>> path_inputs(np.full((1, 1, 1), 4.0), 0.0, [0.0, 0.25, 1.0])[0, :, 0, 0]
    array([0., 1., 4.])
    """
    x = images(inputs, "inputs")
    b = _broadcast_baseline(baseline, x)
    a = as_float_array(alphas, "alphas")
    check_ndim(a, "alphas", min_ndim=1, max_ndim=1, layout="(n_steps,) with n_steps >= 1")
    if a.size == 0:
        raise ShapeError("alphas", a.shape, "(n_steps,) with n_steps >= 1")
    dtype = _common_dtype(x, baseline=b)
    x = x.astype(dtype, copy=False)
    b = np.broadcast_to(b.astype(dtype, copy=False), x.shape)
    a = a.astype(dtype, copy=False).reshape((1, -1) + (1,) * (x.ndim - 1))
    return b[:, None] + a * (x - b)[:, None]


@finite_output
def integrated_gradients(
    path_gradients: Any, inputs: Any, baseline: Any, rule: str = "gauss-legendre"
) -> np.ndarray:
    r"""Integrated Gradients from gradients sampled along the straight path.

    Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep Networks", Eq. 1:

    .. math::

        \mathrm{IG}_i(x) = (x_i - x'_i) \int_0^1
            \frac{\partial F(x' + \alpha (x - x'))}{\partial x_i}\, d\alpha
        \approx (x_i - x'_i) \sum_{m} w_m\, \frac{\partial F(x^{(m)})}{\partial x_i},

    with :math:`(\alpha_m, w_m)` = ``integration_points(n_steps, rule)`` and
    :math:`x^{(m)} = x' + \alpha_m (x - x')` (see :func:`path_inputs`).  Completeness
    (Proposition 1): :math:`\sum_i \mathrm{IG}_i(x) = F(x) - F(x')` up to the quadrature
    error (zero for Gauss--Legendre when the path gradient is a polynomial in
    :math:`\alpha` of degree :math:`\le 2n-1`).  Same arithmetic as captum's
    ``IntegratedGradients`` (``(inputs - baselines) * sum_m step_m * grad_m``).

    Parameters
    ----------
    path_gradients : array_like, shape ``(N, n_steps, C, *S)``
        :math:`\partial F/\partial x` at ``path_inputs(inputs, baseline, alphas)``, the
        ``alphas`` of the same ``rule`` and ``n_steps``.
    inputs : array_like, shape ``(N, C, *S)``
    baseline : array_like, scalar or broadcastable to ``inputs``
    rule : str, see :func:`integration_points`

    Returns
    -------
    ndarray, shape ``(N, C, *S)``, common dtype of the arguments (a scalar baseline does
    not promote).

    Examples
    --------
    >>> # F(x) = x^2 at x = 3, baseline 0: path gradient 2 * 3 alpha; IG = 3 * 3 = 9 = F(3) - F(0)
    >>> x = np.full((1, 1, 1), 3.0)
    >>> alphas, _ = integration_points(2, "gauss-legendre")
    >>> grads = 2 * path_inputs(x, 0.0, alphas)
    >>> integrated_gradients(grads, x, 0.0)
    array([[[9.]]])
    """
    x = images(inputs, "inputs")
    g = _samples(path_gradients, "path_gradients", "n_steps")
    b = _broadcast_baseline(baseline, x)
    expected = (x.shape[0], g.shape[1]) + x.shape[1:]
    if g.shape != expected:
        raise ShapeError(
            "path_gradients", g.shape, f"(N, n_steps, C, *S) = {expected} to match inputs {x.shape}"
        )
    _, weights = integration_points(g.shape[1], rule)
    dtype = _common_dtype(x, g, baseline=b)
    w = weights.astype(dtype).reshape((1, -1) + (1,) * (x.ndim - 1))
    avg = np.sum(w * g.astype(dtype, copy=False), axis=1)
    return (x.astype(dtype, copy=False) - b.astype(dtype, copy=False)) * avg


@finite_output
def class_model_step(image: Any, gradient: Any, *, learning_rate: float, l2: float) -> np.ndarray:
    r"""One gradient-ascent step of class model visualisation.

    Simonyan, Vedaldi & Zisserman (2014), "Deep Inside Convolutional Networks", Eq. 1:
    :math:`\arg\max_I\ S_c(I) - \lambda \lVert I \rVert_2^2`.  Its gradient is
    :math:`\partial S_c/\partial I - 2\lambda I`, so one step is

    .. math:: I \leftarrow I + \eta\,\big(\partial S_c/\partial I - 2\lambda I\big).

    (The paper starts from the zero image, uses the unnormalised class score :math:`S_c`,
    and adds the training-set mean image back for display.)

    Parameters
    ----------
    image : array_like, shape ``(N, C, *S)``
    gradient : array_like, same shape: :math:`\partial S_c/\partial I` at ``image``
    learning_rate : float >= 0  (:math:`\eta`)
    l2 : float >= 0  (:math:`\lambda`)

    Returns
    -------
    ndarray, same shape, common dtype of ``image`` and ``gradient``: the new image.

    Examples
    --------
    >>> image, grad = np.full((1, 1, 1), 2.0), np.full((1, 1, 1), 1.0)
    >>> class_model_step(image, grad, learning_rate=0.5, l2=0.25)   # 2 + .5 (1 - 2 * .25 * 2)
    array([[[2.]]])
    """
    i = images(image, "image")
    g = as_float_array(gradient, "gradient")
    check_same_shape(i, "image", g, "gradient")
    lr = nonnegative_float(learning_rate, "learning_rate")
    lam = nonnegative_float(l2, "l2")
    dtype = np.result_type(i.dtype, g.dtype)
    i = i.astype(dtype, copy=False)
    return i + dtype.type(lr) * (g.astype(dtype, copy=False) - dtype.type(2.0 * lam) * i)
