"""refcam.autodiff.gradients through the adapter (toy zoo) and exported gradients."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from refcam.autodiff import exported_gradients, gradients
from refcam.autodiff.fd import fd_gradients
from refcam.errors import LayerNotFoundError, TargetError
from refcam.onnx import Model, TopK
from refcam.onnx import toy_models as tm


def _fc(proto):
    w = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return w["fc.weight"]


@pytest.mark.parametrize("kw", [{}, {"softmax": True}, {"batch": 1}, {"dynamic_spatial": True}])
def test_cam_net_gradient_is_fc_row_over_z(kw):
    """GAP -> Gemm head: y^c = sum_k w_ck (1/Z) sum_ij A^k_ij + b_c, so dy^c/dA^k_ij = w_ck / Z
    exactly (Z = 12*12 = 144), at every position, whatever the input."""
    proto = tm.cam_net(**kw)
    x = np.random.default_rng(0).standard_normal((3, 3, 12, 12)).astype(np.float32)
    r = gradients(proto, x, wrt="features", target=[4, 0, 2])
    g = r.gradients["features"]
    assert g.shape == (3, 1, 6, 12, 12) and r.classes.tolist() == [[4], [0], [2]]
    w = _fc(proto)
    want = (w[[4, 0, 2]] / 144.0)[:, None, :, None, None] * np.ones((1, 1, 1, 12, 12))
    np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-9)
    assert r.activations["features"].shape == (3, 6, 12, 12)


def test_topk_and_default_targets_and_channels_last():
    proto = tm.cam_net()
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype(np.float32)
    r = gradients(proto, x, wrt="features", target=TopK(2))
    top = np.argsort(-r.outputs, axis=1)[:, :2]
    assert r.classes.tolist() == top.tolist()
    w = _fc(proto)
    np.testing.assert_allclose(r.gradients["features"][:, 1, :, 0, 0], w[top[:, 1]] / 144, rtol=1e-6)
    r1 = gradients(proto, x, wrt="features")
    assert r1.classes[:, 0].tolist() == np.argmax(r1.outputs, axis=1).tolist()
    # NHWC model: activations and gradients come back channels-first
    m = Model(tm.nhwc_net(), layout="NHWC")
    xs = np.random.default_rng(2).standard_normal((2,) + tuple(m.input_shape[1:])).astype(np.float32)
    rr = gradients(m, xs, target=1)
    name = next(iter(rr.gradients))
    assert rr.gradients[name].shape[2:] == rr.activations[name].shape[1:]


def test_resnet_like_input_gradient_matches_fd_and_guided_differs():
    proto = tm.resnet_like()
    m = Model(proto)
    x = np.random.default_rng(3).standard_normal((2,) + tuple(m.input_shape[1:])).astype(np.float32)
    r = gradients(m, x, wrt=["input", m.default_layer().name], target=[1, 2])
    s = np.zeros_like(r.outputs)
    s[[0, 1], [1, 2]] = 1
    layer = m.default_layer().name
    _, fd = fd_gradients(proto, {m.input_name: x}, layer, s, seed=m.output_name, mode="channel", step=1e-2)
    got = r.gradients[layer][:, 0].astype(np.float64).sum(axis=(2, 3))
    assert np.all(np.abs(got - fd.value) <= 1e-4 * np.abs(fd.value).max() + 10 * fd.error)
    rg = gradients(m, x, wrt="input", target=[1, 2], rules="guided")
    assert not np.allclose(rg.gradients["input"], r.gradients["input"])


def test_errors_name_arguments():
    proto = tm.cam_net()
    x = np.zeros((1, 3, 12, 12), np.float32)
    with pytest.raises(TargetError, match="callable"):
        gradients(proto, x, wrt="features", target=lambda y: y[:, 0])
    with pytest.raises(TargetError, match="out of range"):
        gradients(proto, x, wrt="features", target=7)
    with pytest.raises(LayerNotFoundError):
        gradients(proto, x, wrt="nope")


def test_exported_gradients_reads_named_outputs():
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"]), helper.make_node("Add", ["x", "x"], ["g"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 2]),
                           helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", 1, 2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out = exported_gradients(m, np.array([[[1.0, -2.0]]]), ["g"])
    assert out["g"].tolist() == [[[2.0, -4.0]]]   # d(x^2)/dx = 2x
    with pytest.raises(LayerNotFoundError, match="names"):
        exported_gradients(m, np.ones((1, 1, 2)), "h")


@pytest.mark.parametrize("name", ["resnet", "nhwc", "batch1", "softmax"])
def test_default_target_seeds_top1_in_graph(name):
    """target=None uses the in-graph one-hot(ArgMax) seed: same result as the explicit classes."""
    m = Model(tm.ZOO[name](), layout="NHWC" if name == "nhwc" else "NCHW")
    shape = tuple(d if isinstance(d, int) else 12 for d in m.input_shape[1:])
    n = m.fixed_batch or 3
    x = np.random.default_rng(4).standard_normal((n,) + shape).astype(np.float32)
    r0 = gradients(m, x, wrt=["input", m.default_layer().name])
    cls = np.argmax(m.run(x)[m.output_name], axis=1)
    assert r0.classes[:, 0].tolist() == cls.tolist()
    r1 = gradients(m, x, wrt=["input", m.default_layer().name], target=list(cls))
    for k in r0.gradients:
        np.testing.assert_array_equal(r0.gradients[k], r1.gradients[k])
    np.testing.assert_array_equal(r0.outputs, r1.outputs)
