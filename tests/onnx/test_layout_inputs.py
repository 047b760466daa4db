"""Inputs of any rank and several inputs, checked against captum's own tests' hard-coded numbers
(the same tiny models built in ONNX with onnx.helper; captum 0.9, tests/attr/...).

* Saliency ``test_saliency_test_basic_vanilla``: BasicModel ``1 - relu(1 - x)`` on
  ``[1, 2, 3, 0, -1, 7]`` → ``|∂/∂x| = [0, 0, 0, 1, 1, 0]``.  captum's input has no batch axis and
  no target: it differentiates the sum of the outputs, so the ONNX model ends in ReduceSum and the
  input is one sample ``(1, 6)``;
* LayerGradCam ``test_simple_multi_input_conv``: BasicModel_ConvNet_One_Conv on
  ``(arange(16), ones)`` at ``conv1``, target 0 → ``[[14.5, 19.0], [32.5, 37.0]]`` (captum: no ReLU);
  the second input is held at its given value.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import refcam
from refcam._compare import max_abs_error
from refcam.errors import InvalidArgumentError, ModelError
from refcam.onnx import Model


def _proto(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "g", inputs, outputs,
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def basic_model(f: int = 6):
    """captum BasicModel: ``1 - relu(1 - x)``, summed (captum's target=None)."""
    return _proto(
        [helper.make_node("Sub", ["one", "x"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Sub", ["one", "r"], ["y"]),
         helper.make_node("ReduceSum", ["y", "ax"], ["s"], keepdims=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1])],
        {"one": np.array(1, np.float32), "ax": np.array([1], np.int64)},
    )


def convnet_one_conv():
    """captum BasicModel_ConvNet_One_Conv with its second input: ``x + x2`` → conv1 → relu →
    view(-1, 8) → fc1 → relu."""
    fc = np.concatenate([np.ones((4, 5)), -np.ones((4, 3))], 1).astype(np.float32)
    return _proto(
        [helper.make_node("Add", ["x", "x2"], ["xs"]),
         helper.make_node("Conv", ["xs", "w", "b"], ["conv1"]),
         helper.make_node("Relu", ["conv1"], ["relu1"]),
         helper.make_node("Reshape", ["relu1", "shp"], ["flat"]),
         helper.make_node("Gemm", ["flat", "fc", "fcb"], ["fc1"], transB=1),
         helper.make_node("Relu", ["fc1"], ["out"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4]),
         helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])],
        {"w": np.ones((2, 1, 3, 3), np.float32), "b": np.array([-50.0, -75.0], np.float32),
         "shp": np.array([-1, 8], np.int64), "fc": fc, "fcb": np.zeros(4, np.float32)},
    )


def test_captum_saliency_basic_vanilla():
    x = np.array([[1.0, 2.0, 3.0, 0.0, -1.0, 7.0]])
    e = refcam.explain(basic_model(), x, "saliency", target=0)
    assert e.maps.shape == (1, 6)
    assert e.maps.ravel().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def test_tabular_input_integrated_gradients_completeness():
    """(N, F) input through IG: per-feature attributions summing to f(x) - f(0) (each feature of
    the BasicModel is separable: 1 - relu(1 - x) - 0 = min(x, 1))."""
    x = np.array([[0.5, 2.0, -1.0, 0.25]])
    e = refcam.explain(basic_model(4), x, "integrated_gradients", target=0, n_steps=64)
    assert e.maps.shape == (1, 1, 4)
    assert max_abs_error(e.maps.ravel(), np.minimum(x, 1).ravel()) <= 1e-6


def test_captum_layer_gradcam_multi_input_conv():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    m = Model(convnet_one_conv(), input_name="x", other_inputs={"x2": np.ones((1, 1, 4, 4), np.float32)})
    e = refcam.explain(m, x, "gradcam", layer="conv1", target=0, relu=False)
    np.testing.assert_array_equal(e.maps[0], [[14.5, 19.0], [32.5, 37.0]])


def test_other_inputs_per_sample_and_broadcast():
    """(N, ...) other inputs go with their samples through chunking; (1, ...) applies to all."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 4, 4)).astype(np.float32) * 10
    x2 = rng.standard_normal((3, 1, 4, 4)).astype(np.float32) * 10
    m = Model(convnet_one_conv(), input_name="x", other_inputs={"x2": x2})
    full = refcam.explain(m, x, "gradcam", layer="conv1", target=1, relu=False, batch_size=1)
    for i in range(3):
        mi = Model(convnet_one_conv(), input_name="x", other_inputs={"x2": x2[i:i + 1]})
        one = refcam.explain(mi, x[i:i + 1], "gradcam", layer="conv1", target=1, relu=False)
        np.testing.assert_array_equal(full.maps[i], one.maps[0])


def test_several_inputs_need_a_choice():
    with pytest.raises(ModelError, match="input_name=.*other_inputs="):
        Model(convnet_one_conv())
    with pytest.raises(InvalidArgumentError, match="other_inputs"):
        Model(convnet_one_conv(), input_name="x")
    with pytest.raises(InvalidArgumentError, match="not inputs of the model"):
        Model(convnet_one_conv(), input_name="x", other_inputs={"x2": np.ones((1, 1, 4, 4)), "z": 1})


def test_graph_input_named_as_layer_in_one_dimension():
    """(N, C, L) input: a 1-D conv net; the input itself is a layer (NCL)."""
    w = np.random.default_rng(1).standard_normal((3, 2, 3)).astype(np.float32)
    proto = _proto(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("ReduceMean", ["r"], ["p"], axes=[2], keepdims=0),
         helper.make_node("Gemm", ["p", "wh"], ["y"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        {"w": w, "wh": np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)},
    )
    m = Model(proto)
    assert m.default_layer().name == "r" and m.default_layer().layout.describe() == "NCL"
    assert m.layer("x").layout.describe() == "NCL"
    x = np.random.default_rng(3).standard_normal((2, 2, 7)).astype(np.float32)
    for meth in ("gradcam", "scorecam", "saliency"):
        e = refcam.explain(m, x, meth, target=1)
        assert e.maps.shape == (2, 7)
    e = refcam.explain(m, x, "gradcam", layer="x", target=1)
    assert e.maps.shape == (2, 7)


def basic_model2_packed():
    """captum BasicModel2 ``f(x1, x2) = relu(relu(x1) - 1 - relu(x2))`` (Sundararajan et al.'s
    example) with its two scalar inputs as the two features of one ``(N, 2)`` input."""
    return _proto(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Slice", ["r", "s0", "s1", "ax"], ["r1"]),
         helper.make_node("Slice", ["r", "s1", "s2", "ax"], ["r2"]),
         helper.make_node("Sub", ["r1", "one"], ["d1"]),
         helper.make_node("Sub", ["d1", "r2"], ["d2"]),
         helper.make_node("Relu", ["d2"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        {"s0": np.array([0], np.int64), "s1": np.array([1], np.int64), "s2": np.array([2], np.int64),
         "ax": np.array([1], np.int64), "one": np.array(1, np.float32)},
    )


def test_captum_ig_multivariable_vanilla():
    """captum ``test_multivariable_vanilla``: IG of BasicModel2 at (x1, x2) = (3, 1) from (0, 0),
    riemann_right, 500 steps → (1.5, -0.5) (captum asserts delta 0.05).  captum scales both inputs
    along one path, so the two inputs are the two features of one tabular input here.  By hand: on
    the path (3α, α), f = relu(2α − 1), ∂f/∂x1 = 1 and ∂f/∂x2 = −1 for α > 1/2, so IG = (3·½, −1·½);
    the right Riemann points α = k/500 put 250 points above ½ (ReLU'(0) = 0 at α = ½): exact."""
    x = np.array([[3.0, 1.0]])
    e = refcam.explain(basic_model2_packed(), x, "integrated_gradients", target=0,
                       rule="riemann-right", n_steps=500)
    assert e.maps.shape == (1, 1, 2)
    got = e.maps.ravel()
    assert max_abs_error(got, [1.5, -0.5]) <= 1e-5             # captum's own check: delta 0.05
    # completeness (Sundararajan et al. Prop. 1): the attributions sum to f(x) - f(0) = 1
    assert abs(got.sum() - 1.0) <= 1e-5
