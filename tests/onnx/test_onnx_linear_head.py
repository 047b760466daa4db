"""refcam.onnx.head.linear_head: the GAP -> linear class weights read from the graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from refcam.errors import ModelError
from refcam.onnx import Model
from refcam.onnx.head import constant_value
from refcam.onnx.toy_models import cam_net, nhwc_net, vgg_like


@pytest.mark.parametrize("kw", [dict(), dict(head="matmul"), dict(constant_weights=True)])
def test_weights_and_logits(kw):
    m = Model(cam_net(**kw))
    head = m.linear_head("features")
    # same seed -> the same fc weights whatever the head's ONNX form
    ref = cam_net()
    w = onnx.numpy_helper.to_array(next(t for t in ref.graph.initializer if t.name == "fc.weight"))
    b = onnx.numpy_helper.to_array(next(t for t in ref.graph.initializer if t.name == "fc.bias"))
    np.testing.assert_array_equal(head.weight, w.astype(np.float64))
    np.testing.assert_array_equal(head.bias, b.astype(np.float64))
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    fw = m.forward(x, ["features"])
    y = fw.activations["features"].astype(np.float64).mean(axis=(2, 3)) @ head.weight.T + head.bias
    np.testing.assert_allclose(fw.outputs, y, rtol=1e-5, atol=1e-5)


def test_gemm_alpha_beta_transb_folded():
    proto = cam_net()
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    w = next(t for t in proto.graph.initializer if t.name == "fc.weight")
    wt = onnx.numpy_helper.to_array(w)
    w.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(wt.T), "fc.weight"))
    del gemm.attribute[:]
    gemm.attribute.extend(
        [onnx.helper.make_attribute("alpha", 2.0), onnx.helper.make_attribute("beta", 0.5)]
    )
    head = Model(proto).linear_head("features")
    np.testing.assert_allclose(head.weight, 2.0 * wt, rtol=1e-7)
    b = constant_value(proto.graph, "fc.bias")
    np.testing.assert_allclose(head.bias, 0.5 * b, rtol=1e-7)


def test_nhwc_reduce_mean_head():
    m = Model(nhwc_net(), layout="NHWC")
    head = m.linear_head("features")
    assert head.weight.shape == (5, 6) and head.nodes == ["gap_node", "fc_mm_node", "logits_node"]


def test_no_gap_head_errors():
    m = Model(vgg_like())
    with pytest.raises(
        ModelError, match=r"consumed by \['Flatten'\], not by global average pooling"
    ):
        m.linear_head(m.default_layer())
    m = Model(cam_net())
    with pytest.raises(ModelError, match="not by global average pooling"):
        m.linear_head("relu1")
    m = Model(cam_net(softmax=True), strip_softmax=False)
    with pytest.raises(ModelError, match="produces 'logits', not the class scores 'probs'"):
        m.linear_head("features")


def test_opset18_reduce_mean_axes_input():
    # opset >= 18 (torch dynamo exports): ReduceMean takes its axes as an input tensor
    from onnx import version_converter

    proto = version_converter.convert_version(cam_net(head="matmul"), 18)
    proto.ir_version = 8
    rm = next(n for n in proto.graph.node if n.op_type == "ReduceMean")
    assert len(rm.input) == 2 and not any(a.name == "axes" for a in rm.attribute)
    m = Model(proto)
    assert m.default_layer().name == "features"
    np.testing.assert_array_equal(
        m.linear_head("features").weight, Model(cam_net()).linear_head("features").weight
    )
