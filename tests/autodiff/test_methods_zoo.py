"""Every gradient method through refcam.explain equals the math floor fed independently computed
gradients.

Oracle: float64 central differences with Richardson extrapolation (refcam.autodiff.fd, backend
``onnx.reference`` on the float64 twin of each toy model), i.e. no VJP rule is involved.  Measured
on this zoo (float32 models, VJP in onnxruntime): relative map error <= 7.4e-7 for the layer methods,
<= 3e-7 for input gradients; the tests allow 1e-5.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ._harness import to_float64
from refcam import explain
from refcam import math as M
from refcam.autodiff import build_vjp_model, grad_name
from refcam.autodiff.fd import FiniteDifferences
from refcam.errors import InvalidArgumentError, LayerNotFoundError, TargetError
from refcam.methods import METHODS
from refcam.onnx import Model, TopK
from refcam.onnx import toy_models as tm
from refcam.onnx.toy_models import ZOO

LAYER_METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "gradcam_elementwise",
                 "eigengradcam")
TOL = 1e-5


def _setup(name, n=2, size=None):
    m = Model(ZOO[name](), layout="NHWC" if name == "nhwc" else "NCHW")
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    shape = tuple(d if isinstance(d, int) else (size or 12) for d in m.input_shape[1:])
    x = rng.standard_normal(((m.fixed_batch or n),) + shape).astype(np.float32)
    return m, x


def _fd(m, x, tensor, classes):
    """float64 FD of y^c w.r.t. ``tensor`` (native layout) on the float64 twin, one seed per sample."""
    fd = FiniteDifferences(to_float64(m.proto_with_output()), tensor, seed=m.output_name,
                           backend="reference")
    y = m.run(x)[m.output_name]
    s = np.zeros(y.shape)
    s.reshape(len(s), -1)[np.arange(len(s)), classes] = 1
    _, r = fd({m.input_name: x.astype(np.float64)}, s, mode="full")
    return r.value


def _rel(got, want):
    """max |got - want| / max |want| (the absolute difference when ``want`` is all zero)."""
    d, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
    return d / scale if scale > 0 else d


@pytest.mark.parametrize("name", sorted(set(ZOO) - {"segmentation"}))
def test_layer_gradient_methods_equal_math_floor_on_fd_gradients(name):
    m, x = _setup(name)
    n = x.shape[0]
    classes = np.arange(n) % 3  # a per-sample list of targets
    e0 = explain(m, x, "gradcam", target=list(classes))
    g = m.to_channels_first(_fd(m, x, e0.layer.name, classes))  # (N, K, *S) float64
    a = e0.arrays["activations"].astype(np.float64)
    for meth in LAYER_METHODS:
        # with the paper's ReLU and without (a ReLU'd map can be all zero for a low-scoring class)
        for relu in (METHODS[meth].defaults["relu"], False):
            e = explain(m, x, meth, target=list(classes), relu=relu)
            assert e.maps.dtype == np.float32 and e.maps.shape == (n,) + a.shape[2:]
            kw = {k: v for k, v in e.options.items() if k in ("relu", "eps", "center", "sign")}
            want = METHODS[meth].math(a, g, **kw)
            assert _rel(e.maps, want) <= TOL, (meth, relu, _rel(e.maps, want))
            # and bit for bit the math floor on the arrays the explanation carries
            np.testing.assert_array_equal(e.maps, METHODS[meth].math(
                e.arrays["activations"], e.arrays["gradients"][:, 0], **kw))
        assert np.abs(want).max() > 0  # relu=False: a non-trivial comparison


@pytest.mark.parametrize("name", ["cam", "mobilenet", "dynamic", "nhwc"])
def test_input_gradient_methods_equal_math_floor_on_fd_gradients(name):
    m, x = _setup(name, size=6)
    classes = np.array([1, 0][: x.shape[0]])
    gx = m.to_channels_first(_fd(m, x, m.input_name, classes))  # (N, C, *S_in)
    e = explain(m, x, "saliency", target=list(classes))
    assert e.layer is None and e.maps.dtype == np.float32
    assert _rel(e.maps, M.saliency(gx)) <= TOL
    gg = explain(m, x, "guided_gradcam", target=list(classes))
    # Guided Grad-CAM: the guided part from the VJP (the guided rule is not a derivative), the
    # Grad-CAM part from FD layer gradients
    gl = m.to_channels_first(_fd(m, x, gg.layer.name, classes))
    cam = M.upsample(M.gradcam(gg.arrays["activations"].astype(np.float64), gl), gg.input_size)
    want = M.guided_gradcam(gg.arrays["guided_input_gradients"][:, 0].astype(np.float64), cam)
    assert _rel(gg.maps, want) <= TOL


def test_smoothgrad_and_integrated_gradients_equal_math_floor_on_fd_gradients():
    m, x = _setup("cam")
    classes = np.array([2, 4])
    sg = explain(m, x, "smoothgrad", target=list(classes), n_samples=2, noise_level=0.2, seed=3)
    noisy = M.smoothgrad_inputs(x, 2, 0.2, 3)  # (N, 2, C, *S) the same copies
    g = np.stack([_fd(m, noisy[:, i], m.input_name, classes) for i in range(2)], axis=1)
    assert sg.maps.dtype == np.float32
    assert _rel(sg.maps, M.smoothgrad(g)) <= TOL
    ig = explain(m, x, "integrated_gradients", target=list(classes), n_steps=2, baseline=0.25)
    alphas, _ = M.integration_points(2)
    pts = M.path_inputs(x, 0.25, alphas)
    g = np.stack([_fd(m, pts[:, i], m.input_name, classes) for i in range(2)], axis=1)
    assert _rel(ig.maps, M.integrated_gradients(g, x.astype(np.float64), 0.25)) <= TOL


def _fc(proto):
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}["fc.weight"]


def test_gradcam_is_cam_over_z_on_gap_linear_head_for_every_gradient_source():
    """GAP -> linear: ∂y^c/∂A^k_ij = w_ck / Z, so Grad-CAM = ReLU(CAM) / Z (Selvaraju et al. 2017,
    Sect. 3 'Grad-CAM generalizes CAM'), Z = 12 * 12 = 144, with VJP, FD channel and FD full
    gradients; HiResCAM (no ReLU) = CAM / Z."""
    proto = tm.cam_net()
    m = Model(proto)
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    cam = explain(m, x, "cam", target=[3, 1])
    want = np.maximum(cam.maps.astype(np.float64), 0) / 144
    for src, mode, tol in [("vjp", "auto", 1e-6), ("fd", "channel", 1e-5), ("fd", "full", 2e-3)]:
        got = explain(m, x, "gradcam", target=[3, 1], gradient_source=src, fd_mode=mode).maps
        # float32 FD over single elements (step 4.9e-3) resolves 1/144-sized derivatives to ~1e-3
        assert got.dtype == np.float32
        assert _rel(got, want) <= tol, (src, mode, _rel(got, want))
    hi = explain(m, x, "hirescam", target=[3, 1]).maps
    assert _rel(hi, cam.maps.astype(np.float64) / 144) <= 1e-6
    np.testing.assert_allclose(cam.arrays["class_weights"], _fc(proto)[[[3], [1]]])


def test_fd_channel_weights_equal_vjp_gradient_means():
    m, x = _setup("resnet")
    v = explain(m, x, "gradcam", target=TopK(2))
    f = explain(m, x, "gradcam", target=TopK(2), gradient_source="fd")
    assert f.maps.shape == v.maps.shape == (2, 2) + v.arrays["activations"].shape[2:]
    w_vjp = np.stack([M.gradient_weights(v.arrays["gradients"][:, t]) for t in range(2)], 1)
    assert _rel(f.arrays["gradient_weights"], w_vjp) <= 1e-3  # float32 FD, step 4.9e-3 x scale
    assert "gradients" not in f.arrays  # 2K directional derivatives only


def _tiny_relu_net():
    """x (N,2,3,3) -> 1x1 conv W1 (4,2) -> Relu -> 1x1 conv W2 (3,4) -> Relu -> spatial mean -> W3 (2,3),
    the 1x1 convolutions as Transpose + MatMul (onnxruntime has no float64 Conv)."""
    rng = np.random.default_rng(7)
    w1, w2, w3 = rng.standard_normal((4, 2)), rng.standard_normal((3, 4)), rng.standard_normal((2, 3))
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["xt", "w1"], ["z1"]), helper.make_node("Relu", ["z1"], ["h1"]),
             helper.make_node("MatMul", ["h1", "w2"], ["z2"]), helper.make_node("Relu", ["z2"], ["h2"]),
             helper.make_node("ReduceMean", ["h2"], ["p"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["p", "w3"], ["y"])]
    inits = [numpy_helper.from_array(w1.T.copy(), "w1"), numpy_helper.from_array(w2.T.copy(), "w2"),
             numpy_helper.from_array(w3.T.copy(), "w3")]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 2, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 2])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), (w1, w2, w3)


def _hand_backward(x, ws, c, rule):
    """NumPy backward of the tiny net with a ReLU rule: 'plain' g·[z>0], 'guided' relu(g)·[z>0]
    (Springenberg et al. 2015), 'deconvnet' relu(g) (Zeiler & Fergus 2014)."""
    w1, w2, w3 = ws
    z1 = np.einsum("kc,nchw->nkhw", w1, x)
    z2 = np.einsum("jk,nkhw->njhw", w2, np.maximum(z1, 0))
    relu = {"plain": lambda g, z: g * (z > 0), "guided": lambda g, z: np.maximum(g, 0) * (z > 0),
            "deconvnet": lambda g, z: np.maximum(g, 0)}[rule]
    g = np.broadcast_to(w3[c][:, :, None, None] / 9, z2.shape)  # ∂y^c/∂h2 through GAP
    g = np.einsum("jk,njhw->nkhw", w2, relu(g, z2))
    return np.einsum("kc,nkhw->nchw", w1, relu(g, z1))


def test_guided_backprop_and_deconvnet_equal_hand_numpy_backward():
    proto, ws = _tiny_relu_net()
    x = np.random.default_rng(8).standard_normal((3, 2, 3, 3))
    c = np.array([0, 1, 1])
    for meth, rule in [("guided_backprop", "guided"), ("deconvnet", "deconvnet")]:
        got = explain(proto, x, meth, target=list(c)).maps
        want = _hand_backward(x, ws, c, rule)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        assert not np.allclose(want, _hand_backward(x, ws, c, "plain"))  # the rule matters here
    sal = explain(proto, x, "saliency", target=list(c)).maps
    np.testing.assert_allclose(sal, np.abs(_hand_backward(x, ws, c, "plain")).max(axis=1), rtol=1e-12)
    red = explain(proto, x, "guided_backprop", target=list(c), reduce="max-abs").maps
    np.testing.assert_allclose(red, np.abs(_hand_backward(x, ws, c, "guided")).max(axis=1), rtol=1e-12)


def test_targets_class_list_topk_with_gradient_methods():
    m, x = _setup("vgg")
    y = m.run(x)[m.output_name]
    top2 = np.argsort(-y, axis=1)[:, :2]
    for meth in ("gradcampp", "saliency", "smoothgrad"):
        opts = dict(n_samples=2) if meth == "smoothgrad" else {}
        multi = explain(m, x, meth, target=TopK(2), **opts)
        np.testing.assert_array_equal(multi.targets, top2)
        for t in range(2):
            single = explain(m, x, meth, target=list(top2[:, t]), **opts).maps
            np.testing.assert_allclose(multi.maps[:, t], single, rtol=1e-6, atol=1e-7)
        same = explain(m, x, meth, target=int(top2[0, 1]), **opts)
        np.testing.assert_array_equal(same.targets, np.full((2, 1), top2[0, 1]))
    with pytest.raises(TargetError, match="target"):
        explain(m, x, "gradcam", target=lambda out: out[:, 0])
    with pytest.raises(TargetError):
        explain(m, x, "saliency", target=[0, 1, 2])  # 3 targets for a batch of 2


def test_exported_gradients_source():
    """A model that outputs ∂y^c/∂A itself (here: the top-1-seeded VJP model) gives the same maps."""
    m, x = _setup("resnet")
    layer = m.default_layer().name
    exp = build_vjp_model(m.proto_with_output(), [layer], seed=m.output_name, seed_mode="top1")
    e = explain(exp, x, "layercam", layer=layer, gradient_source="exported",
                gradient_output=grad_name(layer))
    v = explain(m, x, "layercam", layer=layer)
    np.testing.assert_allclose(e.maps, v.maps, rtol=1e-6, atol=1e-7)
    with pytest.raises(InvalidArgumentError, match="gradient_output"):
        explain(exp, x, "gradcam", layer=layer, gradient_source="exported")
    with pytest.raises(LayerNotFoundError, match="gradient_output"):
        explain(exp, x, "gradcam", layer=layer, gradient_source="exported", gradient_output="nope")
    with pytest.raises(TargetError, match="target"):
        explain(exp, x, "gradcam", layer=layer, target=TopK(2), gradient_source="exported",
                gradient_output=grad_name(layer))
    assert isinstance(exp, onnx.ModelProto)


def test_gradient_option_errors_name_the_argument():
    m, x = _setup("cam")
    with pytest.raises(InvalidArgumentError, match="fd_mode"):
        explain(m, x, "gradcampp", gradient_source="fd", fd_mode="channel")
    with pytest.raises(InvalidArgumentError, match="gradient_source"):
        explain(m, x, "guided_backprop", gradient_source="fd")
    with pytest.raises(InvalidArgumentError, match="gradient_source"):
        explain(m, x, "gradcam", gradient_source="autograd")
    with pytest.raises(InvalidArgumentError, match="reduce"):
        explain(m, x, "saliency", reduce="mean")
    with pytest.raises(InvalidArgumentError, match="rule"):
        explain(m, x, "integrated_gradients", rule="simpson")
    with pytest.raises(InvalidArgumentError, match="layer"):
        explain(m, x, "saliency", layer="features")
    with pytest.raises(InvalidArgumentError, match="square"):
        explain(m, x, "smoothgrad", square="yes")
    with pytest.raises(InvalidArgumentError, match="noise_level"):
        explain(m, x, "smoothgrad", noise_level=-1.0)
