r"""Need providers of the gradient methods (internal), and Simonyan's class-model visualisation.

No CAM formula lives here: gradients come from the gradient floor (:mod:`refcam.autodiff`), maps
from the math floor.  Every gradient need is ``(N, T, ...)``: one gradient per sample and target
column ``t`` of the resolved targets (``Targets.classes``), or one gradient per sample of an
:class:`~refcam.onnx.OnnxTarget` score (``T = 1``; softmax probability, mask sum, embedding
similarity: the VJP graph covers the score's nodes, finite differences perturb through them).
Plain Python callables have no ONNX graph to differentiate and raise
:class:`~refcam.errors.TargetError` pointing to ``OnnxTarget``.

``gradient_source`` (option of every gradient method):

``"vjp"`` (default)
    the backward graph of :func:`refcam.autodiff.build_vjp_model`, forward + backward in one
    onnxruntime session (:func:`refcam.autodiff.gradients`).
``"fd"``
    central finite differences with Richardson extrapolation (:mod:`refcam.autodiff.fd`) of the
    model cut at the tensor.  ``fd_mode="channel"`` gives the Grad-CAM weights exactly from ``2K``
    directional derivatives along :math:`\mathbb 1_k` (``Σ_ij ∂y^c/∂A^k_ij``; only Grad-CAM needs
    nothing else); ``fd_mode="full"`` perturbs every element (``2·numel(A[0])`` copies — small
    tensors only); ``"auto"`` = channel for Grad-CAM, full otherwise.  Plain rules only.
``"exported"``
    the output tensor ``gradient_output`` of the model itself holds :math:`\partial y^c/\partial A`
    (layout of the layer; one target per sample).  refcam cannot know which class the export
    seeded: the caller vouches that it is the ``target`` passed.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from . import _validate as V
from . import math as M
from .errors import InvalidArgumentError, LayerNotFoundError, ModelError, ShapeError, TargetError
from .registry import Context, need

__all__ = [
    "class_model_visualization",
    "fullgrad_bias_layers",
    "provide_bias_gradients",
    "provide_deconvnet_input_gradients",
    "provide_gradient_weights",
    "provide_gradients",
    "provide_guided_input_gradients",
    "provide_input_gradients",
    "provide_path_gradients",
    "provide_smoothgrad_gradients",
]

#: options read by the layer-gradient needs
_LAYER_GRADIENT_OPTIONS = ("gradient_source", "fd_mode", "gradient_output")


def _classes(ctx: Context) -> Any:
    """``(N, T)`` class indices, or the :class:`~refcam.onnx.OnnxTarget` of every sample."""
    from .onnx import OnnxTarget

    if isinstance(ctx.targets.shared, OnnxTarget):
        return ctx.targets.shared
    cls = ctx.targets.classes
    if cls is None:
        raise TargetError(
            "target: gradient methods need class indices or a refcam.onnx.OnnxTarget "
            "(softmax_probability, log_softmax, mask_sum, embedding_similarity); a Python callable "
            "has no ONNX graph to differentiate"
        )
    return cls


def _seed(ctx: Context, outputs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """One-hot rows of the output tensor at the target classes (as the VJP graph seeds them)."""
    s = np.zeros(outputs.shape, dtype=np.float64)
    s.reshape(len(s), -1)[np.arange(len(s)), classes] = 1.0
    return s


def _source(ctx: Context) -> str:
    return ctx.options["gradient_source"]


def _channels_first(ctx: Context, g: np.ndarray) -> np.ndarray:
    """Input gradients ``(N, T, *native)`` → ``(N, T, C, *S)`` (a tabular ``(N, F)`` input reads
    as one channel over ``F`` positions, :attr:`refcam.onnx.Model.tabular_input`)."""
    return ctx.model.to_channels_first(g, lead=1)


def _fd(ctx: Context, tensor: str, mode: str) -> np.ndarray:
    """Finite differences of ``y^c`` w.r.t. ``tensor`` for every target column: ``(N, T, *native)``
    (``mode="full"``) or ``(N, T, K)`` channel sums (``mode="channel"``), float64."""
    from .autodiff.fd import FiniteDifferences

    classes = _classes(ctx)
    if not isinstance(classes, np.ndarray):  # OnnxTarget: perturb through its score nodes
        from .onnx.onnx_targets import SCORE_OUTPUT, WEIGHT_INPUT

        proto = classes.attach(ctx.model.proto_with_output(), ctx.model.output_name)
        fd = FiniteDifferences(proto, tensor, seed=SCORE_OUTPUT)
        w = classes.weights(ctx.outputs.shape, ctx.inputs.dtype)
        feeds = {**ctx.model.feed(ctx.inputs), WEIGHT_INPUT: w}
        _, r = fd(feeds, np.ones((len(w), 1)), mode=mode)
        return r.value[:, None]
    fd = FiniteDifferences(ctx.model.proto_with_output(), tensor, seed=ctx.model.output_name)
    feeds = ctx.model.feed(ctx.inputs)
    out = []
    for t in range(classes.shape[1]):
        _, r = fd(feeds, _seed(ctx, ctx.outputs, classes[:, t]), mode=mode)
        out.append(r.value)
    return np.stack(out, axis=1)


@need("gradients", "∂y^c/∂A^k at the layer (N, T, K, *S)", options=_LAYER_GRADIENT_OPTIONS)
def provide_gradients(ctx: Context) -> np.ndarray:
    r""":math:`\partial y^c/\partial A^k` at the layer, ``(N, T, K, *S)``, dtype of the activations."""
    a = ctx.need("activations")
    src = _source(ctx)
    layer = ctx.layer.name
    if src == "vjp":
        from .autodiff import gradients

        r = gradients(ctx.model, ctx.inputs, wrt=layer, target=_classes(ctx), batch_size=ctx.batch_size)
        return r.gradients[layer].astype(a.dtype, copy=False)
    if src == "fd":
        if ctx.options["fd_mode"] == "channel":
            raise InvalidArgumentError(
                "fd_mode", "channel", f"'full' or 'auto' for {ctx.method!r}: it needs every "
                "element of ∂y^c/∂A (only Grad-CAM is computed from channel sums)"
            )
        return ctx.model._as_map(layer, _fd(ctx, layer, "full"), lead=1).astype(a.dtype)
    # exported
    from .autodiff import exported_gradients

    name = ctx.options["gradient_output"]
    if not isinstance(name, str):
        raise InvalidArgumentError(
            "gradient_output", name, "the name of the model output holding ∂y^c/∂A "
            "(required with gradient_source='exported')"
        )
    if ctx.targets.n_targets != 1:
        raise TargetError(
            f"target: an exported gradient is one gradient per sample; got {ctx.targets.n_targets} "
            "targets per sample"
        )
    try:
        g = exported_gradients(ctx.model, ctx.inputs, name)[name]
    except LayerNotFoundError as e:
        raise LayerNotFoundError(f"gradient_output: {e}") from None
    g = ctx.model._as_map(layer, np.asarray(g)[:, None], lead=1)  # one target axis after axis 0
    if g.shape[0:1] + g.shape[2:] != a.shape:
        raise ShapeError("gradient_output", g.shape[:1] + g.shape[2:], a.shape,
                         f"the shape of the activations of {layer!r}")
    return g.astype(a.dtype, copy=False)


@need(
    "gradient_weights",
    "Grad-CAM weights α_k^c (N, T, K)",
    options=_LAYER_GRADIENT_OPTIONS,
)
def provide_gradient_weights(ctx: Context) -> np.ndarray:
    r"""Grad-CAM weights :math:`\alpha_k^c = \frac1Z \sum_{ij} \partial y^c/\partial A^k_{ij}`,
    ``(N, T, K)`` (Selvaraju et al. 2017, Eq. 1).

    ``gradient_source="fd"`` with ``fd_mode`` ``"channel"``/``"auto"``: the directional derivative
    along :math:`\mathbb 1_k` divided by :math:`Z` (2K head runs; exact structure-exploiting
    evaluation of :class:`refcam.autodiff.fd.FiniteDifferences`).  Otherwise the spatial mean of the
    ``gradients`` need (:func:`refcam.math.gradient_weights`).
    """
    a = ctx.need("activations")
    if _source(ctx) == "fd" and ctx.options["fd_mode"] != "full":
        lay = ctx.layer.layout
        if lay is not None and (lay.batch_axis, lay.channel_axis, lay.is_tokens) != (0, 1, False):
            raise InvalidArgumentError(
                "fd_mode", ctx.options["fd_mode"], f"'full' for a {lay.describe()} layer (the "
                "channel directions act on axis 1 of the native tensor)"
            )
        z = int(np.prod(a.shape[2:]))
        return (_fd(ctx, ctx.layer.name, "channel") / z).astype(a.dtype)
    g = ctx.need("gradients")
    return np.stack([M.gradient_weights(g[:, t]) for t in range(g.shape[1])], axis=1)


def _input_gradients(ctx: Context, rules: str) -> np.ndarray:
    """``(N, T, C, *S_in)`` input gradients with a rule set (VJP; plain rules also by FD)."""
    x = ctx.inputs
    src = _source(ctx)
    if src == "exported":
        raise InvalidArgumentError(
            "gradient_source", "exported", "'vjp' or 'fd' for input-gradient methods"
        )
    if src == "fd":
        if rules != "plain":
            raise InvalidArgumentError(
                "gradient_source", "fd", f"'vjp': the {rules!r} rule set is not a derivative"
            )
        return _channels_first(ctx, _fd(ctx, ctx.model.input_name, "full")).astype(x.dtype)
    return _vjp_input(ctx, x, _classes(ctx), rules)


def _vjp_input(ctx: Context, x: np.ndarray, classes: np.ndarray, rules: str) -> np.ndarray:
    from .autodiff import gradients

    r = gradients(ctx.model, x, wrt="input", target=classes, rules=rules, batch_size=ctx.batch_size)
    return _channels_first(ctx, r.gradients[ctx.model.input_name]).astype(x.dtype, copy=False)


# One need per rule set of refcam.autodiff, (N, T, C, *S_in) each: plain ∂y^c/∂X; guided
# backpropagation (Springenberg et al. 2015: Relu(g)·[X>0] at every ReLU-like node); the deconvnet
# reconstruction (Zeiler & Fergus 2014: Relu(g) at every ReLU-like node).
for _rules, _name, _description in [
    ("plain", "input_gradients", "∂y^c/∂X (N, T, C, *S_in)"),
    ("guided", "guided_input_gradients", "guided-backpropagation ∂y^c/∂X (N, T, C, *S_in)"),
    ("deconvnet", "deconvnet_input_gradients", "deconvnet reconstruction (N, T, C, *S_in)"),
]:
    need(_name, _description, options=("gradient_source",))(partial(_input_gradients, rules=_rules))


def _many(ctx: Context, points: np.ndarray) -> np.ndarray:
    """Plain input gradients at ``points`` ``(N, n, C, *S)`` (channels first) for the targets of
    each sample: ``(N, n, T, C, *S)``.  Targets were resolved on the clean inputs."""
    classes = _classes(ctx)
    n, n_pts = points.shape[:2]
    flat = ctx.model.to_native(points.reshape((n * n_pts,) + points.shape[2:]))
    flat = flat.astype(ctx.inputs.dtype, copy=False)
    if _source(ctx) != "vjp":
        raise InvalidArgumentError("gradient_source", _source(ctx), f"'vjp' for {ctx.method!r}")
    rows = np.repeat(np.arange(n), n_pts)
    per_point = classes[rows] if isinstance(classes, np.ndarray) else classes.take(rows, n)
    g = _vjp_input(ctx, flat, per_point, "plain")
    return g.reshape((n, n_pts) + g.shape[1:])


@need(
    "smoothgrad_gradients",
    "∂y^c/∂X at the SmoothGrad noisy copies (N, n, T, C, *S_in)",
    options=("gradient_source", "n_samples", "noise_level", "seed"),
)
def provide_smoothgrad_gradients(ctx: Context) -> np.ndarray:
    r"""Input gradients at the noisy copies of :func:`refcam.math.smoothgrad_inputs`
    (``n_samples``, ``noise_level``, ``seed``), ``(N, n, T, C, *S_in)`` (Smilkov et al. 2017)."""
    o = ctx.options
    x = ctx.model.to_channels_first(ctx.inputs)
    noisy = M.smoothgrad_inputs(x, o["n_samples"], o["noise_level"], o["seed"])
    return _many(ctx, noisy)


@need(
    "path_gradients",
    "∂y^c/∂X at the Integrated-Gradients path points (N, n_steps, T, C, *S_in)",
    options=("gradient_source", "n_steps", "rule", "baseline"),
)
def provide_path_gradients(ctx: Context) -> np.ndarray:
    r"""Input gradients at the straight-path points :func:`refcam.math.path_inputs` of the
    quadrature ``integration_points(n_steps, rule)``, ``(N, n_steps, T, C, *S_in)``
    (Sundararajan et al. 2017)."""
    o = ctx.options
    x = ctx.model.to_channels_first(ctx.inputs)
    alphas, _ = M.integration_points(o["n_steps"], o["rule"])
    return _many(ctx, M.path_inputs(x, o["baseline"], alphas))


# ------------------------------------------------------------------ FullGrad
def fullgrad_bias_layers(model: Any) -> list[tuple[str, str, np.ndarray]]:
    r"""The biases FullGrad aggregates: ``(output tensor, op type, bias (K,) float64)`` in graph order.

    Every ``Conv`` with a bias input ``B`` (an initializer or Constant) and every
    ``BatchNormalization`` in inference mode, whose bias is the constant term of the affine map,
    :math:`\beta - \gamma\mu/\sqrt{\sigma^2+\epsilon}` (:func:`refcam.math.batchnorm_bias`,
    computed in float64), as in the official FullGrad code and pytorch-grad-cam.  A Conv or
    BatchNormalization whose parameters are not constants raises
    :class:`~refcam.errors.ModelError`.  Dense biases (Gemm, MatMul + Add) are not listed: FullGrad's
    map aggregates the spatial (convolutional) bias-gradients only; they do enter the completeness
    sum :func:`refcam.math.full_gradient_sum`.
    """
    from .onnx import load
    from .onnx._nodes import node_attr
    from .onnx.head import constant_value

    m = load(model)
    g = m.proto.graph
    out = []

    def const(node, i: int, what: str) -> np.ndarray:
        v = constant_value(g, node.input[i])
        if v is None:
            raise ModelError(
                f"model: {node.op_type} node {node.name or node.output[0]!r} has a non-constant "
                f"{what} ({node.input[i]!r}); FullGrad needs the bias values"
            )
        return np.asarray(v, dtype=np.float64)

    for node in g.node:
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
            out.append((node.output[0], "Conv", const(node, 2, "bias").reshape(-1)))
        elif node.op_type == "BatchNormalization":
            if node_attr(node, "training_mode", 0):
                raise ModelError(
                    f"model: BatchNormalization {node.name or node.output[0]!r} has training_mode=1; "
                    "FullGrad needs the inference-mode (affine) BatchNorm"
                )
            gam, beta, mu, var = (const(node, i, w) for i, w in
                                  enumerate(("scale", "bias", "mean", "var"), start=1))
            eps = float(node_attr(node, "epsilon", 1e-5))
            out.append((node.output[0], "BatchNormalization", M.batchnorm_bias(gam, beta, mu, var, eps)))
    return out


@need(
    "bias_gradients",
    "FullGrad bias-gradients ∂y^c/∂z ⊙ b per Conv/BatchNorm output z: {name: (N, T, K, *S)}; "
    "also fills input_gradients (same VJP run)",
    options=("gradient_source",),
)
def provide_bias_gradients(ctx: Context) -> dict:
    r"""FullGrad's bias-gradients :math:`f^b = \partial y^c/\partial z \odot b` of every Conv /
    BatchNormalization output :math:`z` with a bias (:func:`fullgrad_bias_layers`), as a dict
    tensor name → ``(N, T, K, *S)`` (dtype of the inputs; layers whose output is not spatial are
    left out).

    One VJP run gives them together with the input gradient :math:`\partial y^c/\partial X`
    (:func:`refcam.autodiff.gradients` with several ``wrt``), which is stored as the
    ``input_gradients`` need ``(N, T, C, *S_in)`` (Srinivas & Fleuret 2019).
    """
    from .autodiff import gradients

    if _source(ctx) != "vjp":
        raise InvalidArgumentError("gradient_source", _source(ctx), f"'vjp' for {ctx.method!r}")
    m = ctx.model
    layers = fullgrad_bias_layers(m)
    wrt = [m.input_name] + [t for t, _, _ in layers]
    r = gradients(m, ctx.inputs, wrt=wrt, target=_classes(ctx), batch_size=ctx.batch_size)
    ig = _channels_first(ctx, r.gradients[m.input_name]).astype(ctx.inputs.dtype, copy=False)
    ctx.arrays.setdefault("input_gradients", ig)
    out = {}
    for name, _, b in layers:
        g = r.gradients[name]  # read through the tensor's layout: Conv / BatchNorm outputs are NCHW
        if g.ndim != ig.ndim:
            continue  # a dense BatchNorm (N, K): not part of the map
        fb = M.bias_gradient(g.reshape((-1,) + g.shape[2:]).astype(np.float64), b)
        out[name] = fb.reshape(g.shape).astype(ctx.inputs.dtype, copy=False)
    return out


# ------------------------------------------------------------------ class model visualisation
def class_model_visualization(
    model: Any,
    target: int,
    *,
    steps: int = 100,
    learning_rate: float = 1.0,
    l2: float = 1e-3,
    shape: tuple | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Class model visualisation: gradient ascent on the input from the zero image.

    Simonyan, Vedaldi & Zisserman (2014), "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", Sect. 2, Eq. 1:
    :math:`\arg\max_I S_c(I) - \lambda \lVert I\rVert_2^2`, ``steps`` steps of
    :func:`refcam.math.class_model_step` (:math:`I \leftarrow I + \eta(\partial S_c/\partial I -
    2\lambda I)`) with exact ONNX gradients (:func:`refcam.autodiff.gradients`, one forward +
    backward run per step; :math:`S_c` is the model's output tensor, pre-softmax by default).

    Parameters
    ----------
    model : path, bytes, ``onnx.ModelProto`` or :class:`refcam.onnx.Model`.
    target : int, the class :math:`c`.
    steps : int >= 1.
    learning_rate : float >= 0 (:math:`\eta`).
    l2 : float >= 0 (:math:`\lambda`).
    shape : ``(C, *S)`` of the image in the model's native layout; default the model's static
        input shape.

    Returns
    -------
    image : ``(1, *input_shape[1:])`` native layout, model input dtype.
    scores : ``(steps + 1,)`` float64: :math:`S_c` before each step and after the last.

    Examples
    --------
    >>> from refcam.onnx.toy_models import cam_net
    >>> img, s = class_model_visualization(cam_net(), 3, steps=2)
    >>> img.shape, s.shape, bool(s[-1] > s[0])
    ((1, 3, 12, 12), (3,), True)
    """
    from .autodiff import gradients
    from .onnx import load

    m = load(model)
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer)) or target < 0:
        raise InvalidArgumentError("target", target, "a non-negative class index")
    steps = V.positive_int(steps, "steps")
    learning_rate = V.nonnegative_float(learning_rate, "learning_rate")
    l2 = V.nonnegative_float(l2, "l2")
    if shape is None:
        if m.input_shape is None or not all(isinstance(d, int) for d in m.input_shape[1:]):
            raise InvalidArgumentError(
                "shape", shape, "the input shape (C, *S) for a model with dynamic input axes"
            )
        shape = tuple(m.input_shape[1:])
    img = np.zeros((1,) + tuple(shape), dtype=m.input_dtype)
    scores = []
    for _ in range(steps):
        r = gradients(m, img, wrt="input", target=[int(target)])
        scores.append(float(np.asarray(r.outputs).reshape(1, -1)[0, target]))
        img = M.class_model_step(
            img, r.gradients[m.input_name][:, 0], learning_rate=learning_rate, l2=l2
        ).astype(m.input_dtype)
    scores.append(float(np.asarray(m.run(img)[m.output_name]).reshape(1, -1)[0, target]))
    return img, np.asarray(scores)
