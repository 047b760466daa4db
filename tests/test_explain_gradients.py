"""Gradient methods end to end through the one entry point refcam.explain (formerly
refcam.autodiff.methods), with hand-derived expectations."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from refcam import math as M
from refcam import class_model_visualization, explain
from refcam.errors import InvalidArgumentError, TargetError
from refcam.onnx import Model, TopK
from refcam.onnx import toy_models as tm

CAM_METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "gradcam_elementwise",
               "eigengradcam")
X = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)


def _fc(proto):
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}["fc.weight"]


def test_gradcam_on_gap_linear_head_is_cam_over_z():
    """Selvaraju et al. 2017, Sect. 3.1: with GAP -> linear, alpha_k^c = w_ck / Z, so
    Grad-CAM = ReLU(sum_k w_ck A^k) / Z = ReLU(CAM) / Z (Z = 144); HiResCAM (no ReLU) = CAM / Z."""
    proto = tm.cam_net()
    m = Model(proto)
    a = m.forward(X, ["features"]).activations["features"]
    w = _fc(proto)
    got = explain(m, X, "gradcam", layer="features", target=[3, 1]).maps
    want = np.maximum(M.cam(a, w[[3, 1]]), 0) / 144
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    hi = explain(m, X, "hirescam", layer="features", target=[3, 1]).maps
    np.testing.assert_allclose(hi, M.cam(a, w[[3, 1]]) / 144, rtol=1e-5, atol=1e-7)
    for meth in CAM_METHODS:
        assert explain(m, X, meth, layer="features", target=0).maps.shape == (2, 12, 12)
    multi = explain(m, X, "gradcam", layer="features", target=TopK(2)).maps
    assert multi.shape == (2, 2, 12, 12)


def _linear_model():
    """S = W flatten(I) + b on I of shape (N, 2, 3, 3), 2 classes: every gradient is a row of W."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((2, 18))
    b = rng.standard_normal(2)
    from onnx import TensorProto

    g = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"]),
                           helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)], "linear",
                          [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 2, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 2])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return Model(proto), w.reshape(2, 2, 3, 3), b


def test_saliency_smoothgrad_ig_on_linear_model():
    m, w, b = _linear_model()
    x = np.random.default_rng(2).standard_normal((2, 2, 3, 3))
    # Simonyan et al. 2014: max_c |w_{c..}| for class 1
    np.testing.assert_allclose(explain(m, x, "saliency", target=1).maps, np.abs(w[1]).max(axis=0)[None].repeat(2, 0))
    # SmoothGrad of a linear model: every noisy copy has gradient w_c
    np.testing.assert_allclose(explain(m, x, "smoothgrad", target=[0, 1], n_samples=4).maps, w[[0, 1]])
    # IG of a linear model: (x - x') * w_c exactly (quadrature weights sum to 1)
    ig = explain(m, x, "integrated_gradients", target=[1, 0], baseline=0.5, n_steps=3).maps
    np.testing.assert_allclose(ig, (x - 0.5) * w[[1, 0]], rtol=1e-12)
    # guided / deconvnet on a ReLU-free model = plain gradient
    np.testing.assert_allclose(explain(m, x, "guided_backprop", target=0).maps, w[[0, 0]])
    np.testing.assert_allclose(explain(m, x, "deconvnet", target=0).maps, w[[0, 0]])


def test_class_model_visualisation_linear_closed_form():
    """Linear S_c: I_{t+1} = I_t + eta (w_c - 2 lambda I_t) from I_0 = 0 gives
    I_t = (1 - (1 - 2 lambda eta)^t) w_c / (2 lambda); with eta=0.5, lambda=0.5: I_t = (1 - 0.5^t) w_c."""
    m, w, b = _linear_model()
    img, scores = class_model_visualization(m, 1, steps=3, learning_rate=0.5, l2=0.5)
    np.testing.assert_allclose(img[0], (1 - 0.5 ** 3) * w[1], rtol=1e-12)
    want = [(1 - 0.5 ** t) * (w[1] ** 2).sum() + b[1] for t in range(4)]
    np.testing.assert_allclose(scores, want, rtol=1e-12)


def test_guided_gradcam_shape_and_factorisation():
    proto = tm.cam_net()
    m = Model(proto)
    gg = explain(m, X, "guided_gradcam", layer="features", target=2).maps
    gb = explain(m, X, "guided_backprop", target=2).maps
    cam = explain(m, X, "gradcam", layer="features", target=2).maps
    np.testing.assert_allclose(gg, gb * M.upsample(cam, (12, 12))[:, None], rtol=1e-6)
    assert not np.allclose(gb, explain(m, X, "deconvnet", target=2).maps)


def test_method_errors():
    m = Model(tm.cam_net())
    with pytest.raises(InvalidArgumentError, match="method"):
        explain(m, X, "gradcam-plus-minus")
    with pytest.raises(TargetError):
        explain(m, X, "smoothgrad", target=lambda y: y[:, 0], n_samples=2)
    with pytest.raises(InvalidArgumentError, match="n_samples"):
        explain(m, X, "smoothgrad", n_samples=0)


@pytest.mark.parametrize("target", [None, 1, [3, 0], TopK(2)])
def test_gradient_methods_take_outputs_and_activations_from_the_vjp_run(monkeypatch, target):
    # issue 13: one VJP session run gives y, A and dy/dA; no separate forward run of the model
    from refcam import explanation
    from refcam.methods import get_method

    m = Model(tm.cam_net())
    with monkeypatch.context() as mp:          # the former path: a forward run, then the VJP run
        mp.setattr(explanation, "_one_vjp_run", lambda *a: False)
        before = {k: explain(m, X, k, target=target) for k in ("gradcam", "layercam")}
    calls = []
    monkeypatch.setattr(Model, "forward", lambda self, *a, **k: calls.append(a) or 1 / 0)
    for k, e0 in before.items():
        e = explain(m, X, k, target=target)
        np.testing.assert_array_equal(e.targets, e0.targets)
        np.testing.assert_allclose(e.outputs, e0.outputs, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(e.arrays["activations"], e0.arrays["activations"], rtol=1e-6,
                                   atol=1e-6)
        np.testing.assert_allclose(e.maps, e0.maps, rtol=1e-5, atol=1e-6)
    assert calls == []
    # finite differences still resolve the outputs from a forward run first
    layer = m.spatial_layer(None)
    assert not explanation._one_vjp_run(get_method("gradcam"), {"gradient_source": "fd"}, m, layer,
                                        None)
    assert not explanation._one_vjp_run(get_method("gradcam"), {"gradient_source": "vjp"}, m, layer,
                                        lambda y: y[:, 0])


@pytest.mark.parametrize("target", [None, 1, [3, 0], TopK(2)])
def test_input_gradient_methods_take_outputs_from_the_vjp_run(monkeypatch, target):
    # issue 13: saliency / guided backprop / deconvnet get y and dy/dX from one VJP session run
    from refcam import explanation
    from refcam.methods import get_method

    m = Model(tm.cam_net())
    meths = ("saliency", "guided_backprop", "deconvnet")
    with monkeypatch.context() as mp:          # the former path: a forward run, then the VJP run
        mp.setattr(explanation, "_one_vjp_run", lambda *a: False)
        before = {k: explain(m, X, k, target=target) for k in meths}
    calls = []
    monkeypatch.setattr(Model, "forward", lambda self, *a, **k: calls.append(a) or 1 / 0)
    for k, e0 in before.items():
        e = explain(m, X, k, target=target)
        np.testing.assert_array_equal(e.targets, e0.targets)
        np.testing.assert_allclose(e.outputs, e0.outputs, rtol=1e-6, atol=1e-6)
        assert e.maps.dtype == e0.maps.dtype and e.maps.shape == e0.maps.shape
        np.testing.assert_allclose(e.maps, e0.maps, rtol=1e-5, atol=1e-7)
        assert set(e.arrays) == set(e0.arrays)
    assert calls == []
    assert explanation._one_vjp_run(get_method("guided_backprop"), {"gradient_source": "vjp"}, m,
                                    None, None) == ("input", "guided", "guided_input_gradients")
    assert not explanation._one_vjp_run(get_method("saliency"), {"gradient_source": "fd"}, m, None,
                                        None)
    # guided Grad-CAM needs two rule sets: its layer gradients come from the one run, the guided
    # input gradient from a second
    assert explanation._one_vjp_run(get_method("guided_gradcam"), {"gradient_source": "vjp"}, m,
                                    m.spatial_layer(None), None)[2] == "gradients"
