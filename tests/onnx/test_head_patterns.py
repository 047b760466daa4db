"""linear_head on the flatten patterns real exporters write (issue 12.6), checked numerically:
the class weights read from the graph must reproduce the model output, y = W gap(A) + b."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import refcam
from refcam.errors import ModelError
from refcam.onnx import Model

R = np.random.default_rng(3)
K, C = 4, 3


def _model(head_nodes, inits, *, opset=17, out="y"):
    """x (N, 2, 6, 5) -> Conv 3x3 -> Relu = A (N, K, 6, 5) -> head_nodes -> out."""
    inits = {"w0": R.standard_normal((K, 2, 3, 3)).astype(np.float32), **inits}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["A"])] + head_nodes
    g = helper.make_graph(nodes, "h", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 5])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _check(proto, w_want, b_want):
    m = Model(proto)
    head = m.linear_head("A")
    np.testing.assert_allclose(head.weight, w_want, rtol=0, atol=0)
    if b_want is None:
        assert head.bias is None
    else:
        np.testing.assert_allclose(head.bias, b_want, rtol=0, atol=0)
    x = R.standard_normal((2, 2, 6, 5)).astype(np.float32)
    fw = m.forward(x, ["A"])
    y = fw.activations["A"].astype(np.float64).mean(axis=(2, 3)) @ head.weight.T + (0 if b_want is None else b_want)
    np.testing.assert_allclose(fw.outputs.reshape(2, -1), y, rtol=1e-5, atol=1e-5)
    # the CAM map of class 1 (Zhou et al. 2016, Eq. 2) from these weights: sum_k w^c_k A^k
    a = fw.activations["A"]
    np.testing.assert_allclose(refcam.cam(a, np.repeat(head.weight[1:2], 2, axis=0).astype(a.dtype), relu=False),
                               np.einsum("k,nkhw->nhw", head.weight[1], a.astype(np.float64)), rtol=1e-5, atol=1e-6)
    # and refcam.explain's CAM runs on it (its provider re-checks y = W gap(A) + b numerically)
    e = refcam.explain(m, x, "cam", layer="A", target=1, relu=False)
    np.testing.assert_allclose(e.maps, np.einsum("k,nkhw->nhw", head.weight[1], a.astype(np.float64)),
                               rtol=1e-5, atol=1e-6)
    return head


W = R.standard_normal((C, K)).astype(np.float32)
B = R.standard_normal(C).astype(np.float32)


def test_view_size0_minus1_pattern_shape_gather_concat_reshape_gemm():
    # torch x.view(x.size(0), -1): the pooled tensor feeds Shape and Reshape
    nodes = [helper.make_node("GlobalAveragePool", ["A"], ["p"]),
             helper.make_node("Shape", ["p"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shp"], axis=0),
             helper.make_node("Reshape", ["p", "shp"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "B"], ["y"], transB=1)]
    inits = {"zero": np.array(0, np.int64), "ax0": np.array([0], np.int64), "minus1": np.array([-1], np.int64),
             "W": W, "B": B}
    _check(_model(nodes, inits), W.astype(np.float64), B.astype(np.float64))


def test_paddle_pattern_shape_slice_concat_reshape_matmul_add_opset11():
    nodes = [helper.make_node("GlobalAveragePool", ["A"], ["p"]),
             helper.make_node("Shape", ["p"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
             helper.make_node("Concat", ["n", "minus1"], ["shp"], axis=0),
             helper.make_node("Reshape", ["p", "shp"], ["f"]),
             helper.make_node("MatMul", ["f", "Wt"], ["z"]),
             helper.make_node("Add", ["z", "B"], ["y"])]
    inits = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64), "minus1": np.array([-1], np.int64),
             "Wt": np.ascontiguousarray(W.T), "B": B}
    _check(_model(nodes, inits, opset=11), W.astype(np.float64), B.astype(np.float64))


def test_squeeze_then_matmul_without_bias():
    nodes = [helper.make_node("ReduceMean", ["A"], ["p"], axes=[2, 3], keepdims=1),
             helper.make_node("Squeeze", ["p", "ax"], ["f"]),
             helper.make_node("MatMul", ["f", "Wt"], ["y"])]
    _check(_model(nodes, {"ax": np.array([2, 3], np.int64), "Wt": np.ascontiguousarray(W.T)}),
           W.astype(np.float64), None)


def test_conv1x1_classifier_after_pooling_torchcam_style():
    nodes = [helper.make_node("GlobalAveragePool", ["A"], ["p"]),
             helper.make_node("Conv", ["p", "Wc", "B"], ["q"], kernel_shape=[1, 1]),
             helper.make_node("Flatten", ["q"], ["y"])]
    _check(_model(nodes, {"Wc": W.reshape(C, K, 1, 1), "B": B}), W.astype(np.float64), B.astype(np.float64))


def test_conv1x1_before_pooling_commutes_with_the_mean():
    nodes = [helper.make_node("Conv", ["A", "Wc", "B"], ["q"]),
             helper.make_node("GlobalAveragePool", ["q"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    _check(_model(nodes, {"Wc": W.reshape(C, K, 1, 1), "B": B}), W.astype(np.float64), B.astype(np.float64))


def test_squeezenet_head_pool_is_the_output_identity_weights():
    # SqueezeNet: final 1x1 Conv -> Relu = class maps -> GAP -> Flatten; CAM at the class maps
    nodes = [helper.make_node("GlobalAveragePool", ["A"], ["p"]),
             helper.make_node("Dropout", ["p"], ["d"]),
             helper.make_node("Flatten", ["d"], ["y"])]
    _check(_model(nodes, {}), np.eye(K), None)


def test_strided_or_3x3_conv_after_pooling_is_refused_with_the_reason():
    nodes = [helper.make_node("GlobalAveragePool", ["A"], ["p"]),
             helper.make_node("Conv", ["p", "Wc"], ["q"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["q"], ["y"])]
    with pytest.raises(ModelError, match="not a 1×1 convolution"):
        Model(_model(nodes, {"Wc": R.standard_normal((C, K, 3, 3)).astype(np.float32)})).linear_head("A")


def test_pooled_tensor_read_by_two_value_consumers_is_refused():
    nodes = [helper.make_node("GlobalAveragePool", ["A"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "W"], ["z"], transB=1),
             helper.make_node("ReduceSum", ["p"], ["r"], keepdims=0),
             helper.make_node("Add", ["z", "r"], ["y"])]
    with pytest.raises(ModelError, match="feeds 2 nodes"):
        Model(_model(nodes, {"W": W})).linear_head("A")
