r"""Gradient methods end to end on ONNX models: exact gradients (:func:`~refcam.autodiff.gradients`)
fed to the math floor (:mod:`refcam.math`).

Every function takes ``model`` (a :class:`refcam.onnx.Model` or anything :func:`refcam.onnx.load`
accepts), ``inputs`` ``(N, C, *S_in)`` and ``target`` (as :func:`refcam.onnx.resolve_targets`;
callables are refused — no ONNX graph to differentiate).  With ``target=TopK(k)`` or an ``(N, T)``
class array the result has an extra axis ``T`` after the batch axis; otherwise it has none.
Maps are raw (no normalisation) at feature resolution for CAMs, input resolution for saliency.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import math as M
from .._validate import choice, nonnegative_float, positive_int
from ..onnx import TopK, load
from ..onnx.targets import resolve_targets
from .api import gradients

__all__ = ["CAM_METHODS", "gradient_cam", "saliency_map", "guided_backprop", "deconvnet",
           "guided_gradcam", "smoothgrad_map", "integrated_gradients_map", "class_model_visualisation"]

#: gradient CAMs: name -> math function ``f(activations, gradients, **kw) -> (N, *S)``
CAM_METHODS: dict[str, Callable] = {
    "gradcam": M.gradcam, "gradcampp": M.gradcampp, "xgradcam": M.xgradcam, "layercam": M.layercam,
    "hirescam": M.hirescam, "gradcam_elementwise": M.gradcam_elementwise, "eigengradcam": M.eigengradcam,
}


def _multi(target: Any) -> bool:
    return isinstance(target, TopK) or (isinstance(target, np.ndarray) and target.ndim == 2)


def _per_target(fn: Callable, n_t: int, multi: bool) -> np.ndarray:
    maps = np.stack([fn(t) for t in range(n_t)], axis=1)
    return maps if multi else maps[:, 0]


def gradient_cam(model: Any, inputs: Any, method: str = "gradcam", *, layer: Any = None,
                 target: Any = None, **kwargs: Any) -> np.ndarray:
    r"""A gradient CAM (``method`` in :data:`CAM_METHODS`) computed with exact ONNX gradients.

    :math:`A^k` = activation of ``layer`` (default: the model's default CAM layer), :math:`G =
    \partial y^c/\partial A` from the VJP graph; the map is ``CAM_METHODS[method](A, G, **kwargs)``
    (Grad-CAM: Selvaraju et al. 2017, Eq. 1–2; see each math function for its paper and defaults,
    e.g. ``relu=``).

    Returns
    -------
    ``(N, *S)`` (or ``(N, T, *S)`` for multi-target ``target``), dtype of the activations.

    Examples
    --------
    >>> from refcam.onnx.toy_models import cam_net
    >>> gradient_cam(cam_net(), np.ones((2, 3, 12, 12), np.float32), "gradcam", target=0).shape
    (2, 12, 12)
    """
    method = choice(method, "method", list(CAM_METHODS))
    r = gradients(model, inputs, wrt=layer, target=target)
    name = next(iter(r.gradients))
    a, g = r.activations[name], r.gradients[name]
    return _per_target(lambda t: CAM_METHODS[method](a, g[:, t], **kwargs), g.shape[1], _multi(target))


def _input_grads(model: Any, inputs: Any, target: Any, rules: str):
    m = load(model)
    r = gradients(m, inputs, wrt="input", target=target, rules=rules)
    return m, r, r.gradients[m.input_name]


def saliency_map(model: Any, inputs: Any, *, target: Any = None, reduce: str = "max-abs") -> np.ndarray:
    r"""Image-specific class saliency (Simonyan, Vedaldi & Zisserman 2014, Sect. 3.1):
    :math:`M_{ij} = \max_c |\partial S_c/\partial I_{c,ij}|` (``reduce="max-abs"``; see
    :func:`refcam.math.saliency`).  Returns ``(N, *S_in)`` (``(N, T, *S_in)`` multi-target).

    Examples
    --------
    >>> from refcam.onnx.toy_models import cam_net
    >>> saliency_map(cam_net(), np.ones((1, 3, 12, 12), np.float32), target=2).shape
    (1, 12, 12)
    """
    _, _, g = _input_grads(model, inputs, target, "plain")
    return _per_target(lambda t: M.saliency(g[:, t], reduce=reduce), g.shape[1], _multi(target))


def guided_backprop(model: Any, inputs: Any, *, target: Any = None) -> np.ndarray:
    r"""Guided backpropagation (Springenberg et al. 2015, Sect. 3.4): the input gradient with the
    ``"guided"`` rule set (``Relu(g)·[X>0]`` at every ReLU).  Returns ``(N, C, *S_in)``."""
    _, _, g = _input_grads(model, inputs, target, "guided")
    return g if _multi(target) else g[:, 0]


def deconvnet(model: Any, inputs: Any, *, target: Any = None) -> np.ndarray:
    r"""Deconvnet reconstruction (Zeiler & Fergus 2014, Sect. 2.1): the input "gradient" with the
    ``"deconvnet"`` rule set (``Relu(g)`` at every ReLU).  Returns ``(N, C, *S_in)``."""
    _, _, g = _input_grads(model, inputs, target, "deconvnet")
    return g if _multi(target) else g[:, 0]


def guided_gradcam(model: Any, inputs: Any, *, layer: Any = None, target: Any = None,
                   upsample_mode: str = "linear") -> np.ndarray:
    r"""Guided Grad-CAM (Selvaraju et al. 2017, Sect. 3): guided backpropagation times the
    Grad-CAM map (ReLU, Eq. 2) up-sampled to the input size (``upsample_mode``, bilinear by default
    as in the paper), see :func:`refcam.math.guided_gradcam`.  Returns ``(N, C, *S_in)``."""
    m = load(model)
    x = m.check_inputs(inputs)
    maps = gradient_cam(m, x, "gradcam", layer=layer, target=target)
    gb = guided_backprop(m, x, target=target)
    size = m.input_spatial_shape(x)
    if _multi(target):
        return np.stack([M.guided_gradcam(gb[:, t], M.upsample(maps[:, t], size, mode=upsample_mode))
                         for t in range(gb.shape[1])], axis=1)
    return M.guided_gradcam(gb, M.upsample(maps, size, mode=upsample_mode))


def _classes(m, x, target) -> np.ndarray:
    out = m.run(x, [m.output_name], checked=True)[m.output_name]
    tg = resolve_targets(target, out)
    if tg.classes is None:
        from ..errors import TargetError

        raise TargetError("target: a callable target has no ONNX graph to differentiate; pass class indices")
    return tg.classes


def smoothgrad_map(model: Any, inputs: Any, *, target: Any = None, n_samples: int = 50,
                   noise_level: float = 0.15, seed: Any = 0, square: bool = False) -> np.ndarray:
    r"""SmoothGrad (Smilkov et al. 2017, Eq. 3): the mean input gradient over ``n_samples`` noisy
    copies (:func:`refcam.math.smoothgrad_inputs`, :func:`refcam.math.smoothgrad`).  The target
    classes are resolved on the clean inputs, so every copy explains the same class.
    Returns ``(N, C, *S_in)`` (``(N, T, C, *S_in)`` multi-target)."""
    m = load(model)
    x = m.check_inputs(inputs)
    n_samples = positive_int(n_samples, "n_samples")
    classes = _classes(m, x, target)
    noisy = M.smoothgrad_inputs(x, n_samples, noise_level, seed).astype(x.dtype)  # (N, n, C, *S)
    n = x.shape[0]
    flat = noisy.reshape((n * n_samples,) + x.shape[1:])
    rep = np.repeat(classes, n_samples, axis=0)
    r = gradients(m, flat, wrt="input", target=rep)
    g = r.gradients[m.input_name].reshape((n, n_samples, classes.shape[1]) + x.shape[1:])
    return _per_target(lambda t: M.smoothgrad(g[:, :, t], square=square), classes.shape[1], _multi(target))


def integrated_gradients_map(model: Any, inputs: Any, *, target: Any = None, baseline: Any = 0.0,
                             n_steps: int = 50, rule: str = "gauss-legendre") -> np.ndarray:
    r"""Integrated Gradients (Sundararajan, Taly & Yan 2017, Eq. 1) along the straight path from
    ``baseline``, with the quadrature of :func:`refcam.math.integration_points`.  Targets are
    resolved on the inputs.  Returns ``(N, C, *S_in)`` (``(N, T, C, *S_in)`` multi-target).

    Examples
    --------
    >>> from refcam.onnx.toy_models import cam_net
    >>> from refcam.onnx import Model
    >>> m = Model(cam_net())
    >>> x = np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32)
    >>> ig = integrated_gradients_map(m, x, target=1, n_steps=32)
    >>> y = m.run(np.stack([x[0], 0 * x[0]]))[m.output_name][:, 1]
    >>> bool(abs(ig.sum() - (y[0] - y[1])) < 2e-2 * abs(y[0] - y[1]))   # completeness
    True
    """
    m = load(model)
    x = m.check_inputs(inputs)
    classes = _classes(m, x, target)
    alphas, _ = M.integration_points(positive_int(n_steps, "n_steps"), rule)
    pts = M.path_inputs(x, baseline, alphas).astype(x.dtype)  # (N, n_steps, C, *S)
    n = x.shape[0]
    flat = pts.reshape((n * len(alphas),) + x.shape[1:])
    r = gradients(m, flat, wrt="input", target=np.repeat(classes, len(alphas), axis=0))
    g = r.gradients[m.input_name].reshape((n, len(alphas), classes.shape[1]) + x.shape[1:])
    return _per_target(lambda t: M.integrated_gradients(g[:, :, t], x, baseline, rule),
                       classes.shape[1], _multi(target))


def class_model_visualisation(model: Any, target: int, *, steps: int = 100, learning_rate: float = 1.0,
                              l2: float = 1e-3, shape: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""Class model visualisation (Simonyan, Vedaldi & Zisserman 2014, Sect. 2, Eq. 1): gradient
    ascent on :math:`S_c(I) - \lambda\lVert I\rVert_2^2` from the zero image, ``steps`` steps of
    :func:`refcam.math.class_model_step`.

    Returns
    -------
    (image ``(1, C, *S_in)``, scores ``(steps + 1,)`` — :math:`S_c` before each step and after the last).
    """
    m = load(model)
    steps = positive_int(steps, "steps")
    learning_rate = nonnegative_float(learning_rate, "learning_rate")
    l2 = nonnegative_float(l2, "l2")
    if shape is None:
        if m.input_shape is None or not all(isinstance(d, int) for d in m.input_shape[1:]):
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError("shape", shape, "the input shape (C, *S) for a model with dynamic input axes")
        shape = tuple(m.input_shape[1:])
    img = np.zeros((1,) + tuple(shape), dtype=m.input_dtype)
    scores = []
    for _ in range(steps):
        r = gradients(m, img, wrt="input", target=[target])
        scores.append(float(np.asarray(r.outputs).reshape(1, -1)[0, target]))
        img = M.class_model_step(img, r.gradients[m.input_name][:, 0], learning_rate=learning_rate,
                                 l2=l2).astype(m.input_dtype)
    scores.append(float(np.asarray(m.run(img)[m.output_name]).reshape(1, -1)[0, target]))
    return img, np.asarray(scores)
