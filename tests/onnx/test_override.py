"""The masked re-run (refcam.onnx.override): Ablation-CAM at layers a residual stream bypasses.

Oracles: hand-written graphs whose ablated scores are computed in NumPy from the same weights.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import refcam
from refcam import math as M
from refcam.errors import ModelError
from refcam.onnx import Model
from refcam.onnx.override import OVERRIDE_SUFFIX, Override, override_proto

RNG = np.random.default_rng(0)


def _model(nodes, inputs, inits, out="logits"):
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _conv_skip():
    """x (N,2,3,3) -> act = Relu(Conv1x1 W1) (N,3,3,3) -> Conv1x1 W2 (N,2,3,3) + x (skip around
    act) -> Tanh -> GAP -> Gemm Wf (4 classes)."""
    w = {"W1": RNG.normal(size=(3, 2, 1, 1)), "W2": RNG.normal(size=(2, 3, 1, 1)), "Wf": RNG.normal(size=(4, 2))}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["pre"]), helper.make_node("Relu", ["pre"], ["act"]),
             helper.make_node("Conv", ["act", "W2"], ["b"]), helper.make_node("Add", ["b", "x"], ["s"]),
             helper.make_node("Tanh", ["s"], ["t"]), helper.make_node("GlobalAveragePool", ["t"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "Wf"], ["logits"], transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])
    w64 = {k: v.astype(np.float32).astype(np.float64) for k, v in w.items()}

    def numpy_logits(xn, act):
        b = np.einsum("ok,nkhw->nohw", w64["W2"][:, :, 0, 0], act)
        return np.tanh(b + xn).mean((2, 3)) @ w64["Wf"].T

    def numpy_act(xn):
        return np.maximum(np.einsum("ok,nkhw->nohw", w64["W1"][:, :, 0, 0], xn), 0)
    return _model(nodes, [x], w), numpy_act, numpy_logits


def _tokens_residual():
    """Tokens x (N, T=5, C=2) (token 0 = class token): t = x·c, ln = Tanh(t) (the layer), res =
    t + ln W (residual around ln), logits = Wf res[:, 0]."""
    w = {"c": RNG.normal(size=(2,)), "W": RNG.normal(size=(2, 2)), "Wf": RNG.normal(size=(4, 2)),
         "idx": np.array(0)}
    nodes = [helper.make_node("Mul", ["x", "c"], ["t"]), helper.make_node("Tanh", ["t"], ["ln"]),
             helper.make_node("MatMul", ["ln", "W"], ["br"]), helper.make_node("Add", ["t", "br"], ["res"]),
             helper.make_node("Gather", ["res", "idx"], ["cls"], axis=1),
             helper.make_node("Gemm", ["cls", "Wf"], ["logits"], transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 2])
    inits = {k: v for k, v in w.items() if k != "idx"}
    m = _model(nodes, [x], inits)
    m.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "idx"))
    w64 = {k: v.astype(np.float32).astype(np.float64) for k, v in inits.items()}

    def numpy_t(xn):
        return xn * w64["c"]

    def numpy_logits(t, ln):
        return (t + ln @ w64["W"])[:, 0] @ w64["Wf"].T
    return m, numpy_t, numpy_logits


def test_override_reruns_with_the_fed_tensor():
    proto, numpy_act, numpy_logits = _conv_skip()
    m = Model(proto)
    with pytest.raises(ModelError, match="bypasses the cut"):
        m.head("act")
    x = RNG.normal(size=(2, 2, 3, 3)).astype(np.float32)
    ov = Override.of(m, "act")
    assert Override.of(m, "act") is ov                      # cached per (model, layer)
    act = m.run(x, ["act"])["act"]
    for n in range(2):
        np.testing.assert_array_equal(ov.run(x[n:n + 1], act[n:n + 1], sample=n), m.run(x[n:n + 1])["logits"])
        other = RNG.normal(size=(3, 3, 3, 3)).astype(np.float32)
        np.testing.assert_allclose(ov.run(x[n:n + 1], other, sample=n),
                                   numpy_logits(np.repeat(x[n:n + 1].astype(np.float64), 3, 0), other),
                                   rtol=1e-5, atol=1e-5)
    p = override_proto(m.proto, "act", ["logits"], value_info=m.value_info)
    assert "act" + OVERRIDE_SUFFIX in [i.name for i in p.graph.input]
    assert all("act" not in n.input for n in p.graph.node)
    with pytest.raises(ModelError, match="not produced"):
        override_proto(m.proto, "nope", ["logits"])
    with pytest.raises(ModelError, match="no node reads"):
        override_proto(m.proto, "logits", ["logits"])


@pytest.mark.parametrize("value", [-1.0, 0.0, "pgc"])
def test_ablationcam_at_a_bypassed_conv_layer_equals_numpy(value):
    proto, numpy_act, numpy_logits = _conv_skip()
    x = RNG.normal(size=(2, 2, 3, 3)).astype(np.float32)
    e = refcam.explain(Model(proto), x, "ablationcam", layer="act", target=[1, 3], ablation_value=value)
    xd = x.astype(np.float64)
    act = numpy_act(xd)
    v = M.ablation_values(act, value)
    want = np.empty((2, 3))
    for n, c in enumerate([1, 3]):
        abl = M.ablated_activations(act[n:n + 1], v[n:n + 1])[0]
        want[n] = numpy_logits(np.repeat(xd[n:n + 1], 3, 0), abl)[:, c]
    base = numpy_logits(xd, act)[[0, 1], [1, 3]]
    scale = 1 + np.abs(v).max()
    np.testing.assert_allclose(e.arrays["ablated_scores"][:, 0], want, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(e.arrays["ablation_base_scores"][:, 0], base, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [-1.0, "pgc"])
def test_ablationcam_at_a_bypassed_token_layer_ablates_the_class_token(value):
    """Channel k is set on every token, the class token included (pytorch-grad-cam's
    AblationLayerVit); the map is over the 2x2 grid only."""
    proto, numpy_t, numpy_logits = _tokens_residual()
    m = Model(proto, layer_layouts={"ln": "NTC:1+2x2"})
    x = RNG.normal(size=(2, 5, 2)).astype(np.float32)
    e = refcam.explain(m, x, "ablationcam", layer="ln", target=[0, 2], ablation_value=value)
    t = numpy_t(x.astype(np.float64))
    ln = np.tanh(t)
    cf = np.moveaxis(ln, 2, 1)                                     # (N, C, T): every token
    v = M.ablation_values(cf, value)
    want = np.empty((2, 2))
    for n, c in enumerate([0, 2]):
        abl = np.moveaxis(M.ablated_activations(cf[n:n + 1], v[n:n + 1])[0], 1, 2)    # (K, T, C)
        want[n] = numpy_logits(np.repeat(t[n:n + 1], 2, 0), abl)[:, c]
    scale = 1 + np.abs(v).max()
    np.testing.assert_allclose(e.arrays["ablated_scores"][:, 0], want, rtol=1e-5, atol=1e-5 * scale)
    assert e.arrays["activations"].shape == (2, 2, 2, 2)
    # the class token matters here (the readout is token 0): leaving it unablated gives other scores
    keep_cls = np.empty((2, 2))
    for n, c in enumerate([0, 2]):
        abl = np.moveaxis(M.ablated_activations(cf[n:n + 1], v[n:n + 1])[0], 1, 2)
        abl[:, 0] = ln[n, 0]
        keep_cls[n] = numpy_logits(np.repeat(t[n:n + 1], 2, 0), abl)[:, c]
    assert np.abs(keep_cls - want).max() > 1e-3
