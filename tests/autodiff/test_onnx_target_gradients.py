"""Gradients of OnnxTarget scores (softmax probability, log-softmax, mask sum, embedding similarity)
through the VJP graph: exact closed forms on the float64 toy nets, central differences of the
NumPy twins, refcam.explain for gradient and forward-only methods, error paths."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import refcam
from refcam import math as M
from refcam.autodiff import api as vjp_api
from refcam.autodiff import gradients
from refcam.errors import TargetError
from refcam.onnx import (
    Model,
    OnnxTarget,
    embedding_similarity,
    linear_head,
    log_softmax,
    logit,
    mask_sum,
    softmax_probability,
)
from refcam.onnx import toy_models as tm
from refcam.onnx.onnx_targets import SCORE_OUTPUT, WEIGHT_INPUT

RNG = np.random.default_rng(11)


D = onnx.TensorProto.DOUBLE


def _model(nodes, out_shape, inits, opset=17):
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("input", D, ["N", 6, 12, 12])],
        [helper.make_tensor_value_info("logits", D, ["N"] + out_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _cam64(opset=17):
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(5, 6)), rng.normal(size=5)
    nodes = [helper.make_node("Relu", ["input"], ["features"]),
             helper.make_node("ReduceMean", ["features"], ["gap"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["gap", "fc.weight", "fc.bias"], ["logits"], transB=1)]
    return Model(_model(nodes, [5], {"fc.weight": w, "fc.bias": b}, opset)), w, b


@pytest.fixture(scope="module")
def cam64():
    """float64 GAP→Gemm net (onnxruntime has no float64 Conv / GlobalAveragePool): features
    A = Relu(input) (N, 6, 12, 12), logits y = W mean_ij(A) + b with W (5, 6)."""
    return _cam64()


@pytest.fixture(scope="module")
def seg64():
    """float64 per-pixel classifier: features = Relu(input) (N, 6, 12, 12), logits (N, 3, 12, 12)
    = Σ_k Wc[c, k] features^k + b_c (a 1x1 convolution as Transpose→MatMul→Transpose→Add)."""
    rng = np.random.default_rng(7)
    wc, bc = rng.normal(size=(3, 6)), rng.normal(size=(1, 3, 1, 1))
    nodes = [helper.make_node("Relu", ["input"], ["features"]),
             helper.make_node("Transpose", ["features"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["nhwc", "wt"], ["mm"]),
             helper.make_node("Transpose", ["mm"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Add", ["nchw", "bc"], ["logits"])]
    return Model(_model(nodes, [3, 12, 12], {"wt": wc.T.copy(), "bc": bc})), wc


def _x(n=3, dtype=np.float64):
    return RNG.normal(size=(n, 6, 12, 12)).astype(dtype)


def _softmax(y):
    e = np.exp(y - y.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _central(m, x, target, d, h=1e-5):
    """Central difference of the NumPy twin of ``target`` on the model outputs along ``d``."""
    def f(z):
        return target.numpy(m.run(z)[m.output_name])
    return (f(x + h * d) - f(x - h * d)) / (2 * h)


# ------------------------------------------------------------------ exact closed forms (cam net)
def test_softmax_probability_gradient_equals_closed_form(cam64):
    # y = W gap(A) + b, so ∂y^j/∂A^k_ij = W[j, k]/Z and
    # ∂p_c/∂A^k_ij = p_c (W[c, k] − Σ_j p_j W[j, k]) / Z, the same at every position (i, j).
    m, w, _ = cam64
    x = _x()
    cls = np.array([1, 4, 0])
    r = gradients(m, x, wrt="features", target=softmax_probability(cls))
    g = r.gradients["features"][:, 0]
    z = 12 * 12
    p = _softmax(r.outputs)
    expect = p[np.arange(3), cls][:, None] * (w[cls] - p @ w) / z          # (N, K)
    np.testing.assert_allclose(g, np.broadcast_to(expect[:, :, None, None], g.shape),
                               rtol=1e-12, atol=1e-17)
    assert r.classes is None


def test_log_softmax_and_logit_gradients_equal_closed_form(cam64):
    # ∂ log p_c/∂A^k_ij = (W[c, k] − Σ_j p_j W[j, k]) / Z ;  ∂y^c/∂A^k_ij = W[c, k] / Z
    m, w, _ = cam64
    x = _x(2)
    g = gradients(m, x, wrt="features", target=log_softmax(3))
    p = _softmax(g.outputs)
    np.testing.assert_allclose(g.gradients["features"][:, 0, :, 5, 7], (w[3] - p @ w) / 144, rtol=1e-12)
    gl = gradients(m, x, wrt="features", target=logit([2, 0])).gradients["features"][:, 0]
    gi = gradients(m, x, wrt="features", target=[2, 0]).gradients["features"][:, 0]
    np.testing.assert_array_equal(gl, gi)
    np.testing.assert_allclose(gl[:, :, 0, 0], w[[2, 0]] / 144, rtol=1e-14)


@pytest.mark.parametrize("kind", ["cosine", "dot"])
def test_embedding_similarity_gradient_equals_closed_form(cam64, kind):
    # logits y (N, 5) as an embedding, v (5,).  dot: ∂⟨v,y⟩/∂A^k = (Wᵀv)_k / Z.
    # cosine: ∂cos/∂y = v/(|y||v|) − cos·y/|y|², then ∂/∂A^k = (Wᵀ ∂cos/∂y)_k / Z.
    m, w, _ = cam64
    v = np.array([0.5, -1.0, 2.0, 0.0, 1.5])
    x = _x()
    r = gradients(m, x, wrt="features", target=embedding_similarity(v, kind=kind))
    y = r.outputs
    if kind == "dot":
        dy = np.broadcast_to(v, y.shape)
    else:
        ny, nv = np.linalg.norm(y, axis=1, keepdims=True), np.linalg.norm(v)
        cos = (y @ v)[:, None] / (ny * nv)
        dy = v / (ny * nv) - cos * y / ny**2
    np.testing.assert_allclose(r.gradients["features"][:, 0, :, 3, 3], dy @ w / 144, rtol=1e-11)


def test_per_sample_vectors_and_indices_follow_the_samples(cam64):
    m, _, _ = cam64
    x = _x(2)
    vs = np.array([[1.0, 0, 0, 2, 0], [0, -1.0, 3, 0, 1]])
    both = gradients(m, x, wrt="input", target=embedding_similarity(vs)).gradients["input"]
    for i in range(2):
        one = gradients(m, x[i:i + 1], wrt="input", target=embedding_similarity(vs[i])).gradients["input"]
        np.testing.assert_allclose(both[i], one[0], rtol=1e-13, atol=1e-18)
    per = gradients(m, x, wrt="input", target=softmax_probability([4, 1])).gradients["input"]
    one = gradients(m, x[1:], wrt="input", target=softmax_probability(1)).gradients["input"]
    np.testing.assert_allclose(per[1], one[0], rtol=1e-13, atol=1e-18)


# ------------------------------------------------------------------ segmentation: mask sum
def test_mask_sum_gradient_equals_closed_form_and_central_differences(seg64):
    # logits = 1x1 Conv(features): S = Σ_s M_s y^c_s, so ∂S/∂features^k_s = M_s · Wc[c, k] exactly.
    m, wc = seg64
    x = _x(2)
    mask = np.zeros((12, 12))
    mask[2:7, 3:9] = 1.0
    mask[10, 10] = 0.5
    tg = mask_sum(mask, [2, 1])
    r = gradients(m, x, wrt=["features", "input"], target=tg)
    expect = wc[[2, 1]][:, :, None, None] * mask                          # (N, K, H, W)
    np.testing.assert_allclose(r.gradients["features"][:, 0], expect, rtol=1e-14, atol=0)
    # input gradient vs central differences of the NumPy twin along random directions
    gi = r.gradients["input"][:, 0]
    for _ in range(3):
        d = RNG.normal(size=x.shape)
        fd = _central(m, x, tg, d)
        np.testing.assert_allclose((gi * d).reshape(2, -1).sum(1), fd, rtol=1e-7)


def test_onnx_snippet_equals_numpy_twin(seg64, cam64):
    # The appended nodes compute exactly the NumPy twin (same float64 formula).
    m, _ = seg64
    x = _x(2)
    mask = RNG.uniform(size=(2, 12, 12))
    for tg in (mask_sum(mask, 0), embedding_similarity(RNG.normal(size=(3 * 144,)))):
        p = tg.attach(m.proto, m.output_name)
        sess = __import__("onnxruntime").InferenceSession(p.SerializeToString())
        y, s = sess.run([m.output_name, SCORE_OUTPUT], {"input": x, WEIGHT_INPUT: tg.weights((2, 3, 12, 12))})
        np.testing.assert_allclose(s[:, 0], tg.numpy(y), rtol=1e-13)
    mc, _, _ = cam64
    for tg in (softmax_probability([0, 3]), log_softmax(1), embedding_similarity(np.ones(5), "dot")):
        p = tg.attach(mc.proto, mc.output_name)
        sess = __import__("onnxruntime").InferenceSession(p.SerializeToString())
        y, s = sess.run([mc.output_name, SCORE_OUTPUT], {"input": x, WEIGHT_INPUT: tg.weights((2, 5))})
        np.testing.assert_allclose(s[:, 0], tg.numpy(y), rtol=1e-13)


def test_cosine_guard_zero_embedding_gives_zero_score_and_gradient():
    # y = Relu(x): x ≤ 0 gives y = 0, |y| = 0 → score 0 and gradient 0 (mask guard, no NaN).
    g = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g",
                          [helper.make_tensor_value_info("input", onnx.TensorProto.DOUBLE, ["N", 3])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, ["N", 3])])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.array([[-1.0, -2.0, 0.0], [3.0, 0.0, 4.0]])
    r = gradients(proto, x, wrt="input", target=embedding_similarity([1.0, 1.0, 0.0]))
    # sample 1: y = (3, 0, 4), v = (1, 1, 0): cos = 3/(5·√2); ∂cos/∂y = v/(5√2) − cos·y/25
    cos = 3 / (5 * np.sqrt(2))
    dy = np.array([1.0, 1.0, 0.0]) / (5 * np.sqrt(2)) - cos * np.array([3.0, 0.0, 4.0]) / 25
    expect = np.array([[0.0, 0.0, 0.0], dy * np.array([1.0, 0.0, 1.0])])   # Relu'(0) = 0
    np.testing.assert_allclose(r.gradients["input"][:, 0], expect, rtol=1e-14, atol=0)
    assert np.isfinite(r.gradients["input"]).all()


def test_opset_11_reduce_sum_attribute_form(cam64):
    m, w, _ = cam64
    old, _, _ = _cam64(opset=11)
    x = _x(2)
    a = gradients(old, x, wrt="features", target=softmax_probability(2)).gradients["features"]
    b = gradients(m, x, wrt="features", target=softmax_probability(2)).gradients["features"]
    np.testing.assert_allclose(a, b, rtol=1e-13)


def test_one_vjp_model_per_target_kind():
    m, _, _ = _cam64()          # a fresh Model: its own session cache
    x = _x(1)
    for c in range(5):
        gradients(m, x, wrt="features", target=softmax_probability(c))
    gradients(m, x, wrt="features", target=embedding_similarity(np.ones(5)))
    gradients(m, x, wrt="features", target=embedding_similarity(np.ones(5), "dot"))
    gradients(m, x, wrt="features", target=logit(1))
    assert sorted(k[3] for k in vjp_api._CACHE[m]) == [
        ("identity", "cosine"), ("identity", "dot"), ("softmax", "dot")]


# ------------------------------------------------------------------ through refcam.explain
def test_gradcam_with_softmax_probability_equals_closed_form(cam64):
    # α_k = (1/Z) Σ_ij ∂p_c/∂A^k_ij = p_c (W[c, k] − Σ_j p_j W[j, k]) / Z; map = ReLU(Σ_k α_k A^k)
    m, w, _ = cam64
    x = _x()
    cls = [0, 2, 4]
    e = refcam.explain(m, x, "gradcam", target=softmax_probability(cls))
    a = m.forward(x, ["features"]).activations["features"]
    p = _softmax(m.run(x)[m.output_name])
    alpha = p[np.arange(3), cls][:, None] * (w[cls] - p @ w) / 144
    expect = np.maximum(np.einsum("nk,nkhw->nhw", alpha, a), 0)
    np.testing.assert_allclose(e.maps, expect, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(e.scores.ravel(), p[np.arange(3), cls], rtol=1e-13)
    assert e.targets is None
    fd = refcam.explain(m, x, "gradcam", target=softmax_probability(cls), gradient_source="fd")
    np.testing.assert_allclose(fd.maps, expect, rtol=1e-7, atol=1e-12)


def test_every_gradient_method_runs_with_an_onnx_target(cam64):
    m, _, _ = cam64
    x = _x(2)
    tg = softmax_probability([1, 3])
    for meth in ("gradcampp", "xgradcam", "layercam", "hirescam", "gradcam_elementwise",
                 "eigengradcam", "saliency", "guided_backprop", "guided_gradcam", "deconvnet"):
        e = refcam.explain(m, x, meth, target=tg)
        assert np.isfinite(e.maps).all() and e.maps.shape[0] == 2


def test_integrated_gradients_per_sample_target_follows_the_copies(cam64):
    # the n_steps path copies of sample i carry sample i's class: same map as explaining it alone
    m, _, _ = cam64
    x = _x(2)
    both = refcam.explain(m, x, "integrated_gradients", target=softmax_probability([1, 3]), n_steps=4)
    one = refcam.explain(m, x[1:], "integrated_gradients", target=softmax_probability(3), n_steps=4)
    np.testing.assert_allclose(both.maps[1], one.maps[0], rtol=1e-12, atol=1e-18)


def test_scorecam_with_softmax_probability_equals_probability_score(cam64):
    # forward-only: the NumPy twin gives the softmax probability Score-CAM uses by default
    m, _, _ = cam64
    x = _x(2)
    a = refcam.explain(m, x, "scorecam", target=softmax_probability([1, 3]))
    b = refcam.explain(m, x, "scorecam", target=[1, 3], score="probability")
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-12, atol=1e-15)


def test_gradcam_on_segmentation_with_mask_sum(seg64):
    # α_k = (1/Z) Σ_s M_s Wc[c, k]: the map is ReLU(mean(M) Σ_k Wc[c, k] A^k)
    m, wc = seg64
    x = _x(1)
    mask = np.zeros((12, 12))
    mask[:4] = 1.0
    e = refcam.explain(m, x, "gradcam", layer="features", target=mask_sum(mask, 1))
    a = m.forward(x, ["features"]).activations["features"]
    expect = np.maximum(mask.mean() * np.einsum("k,nkhw->nhw", wc[1], a), 0)
    np.testing.assert_allclose(e.maps, expect, rtol=1e-12, atol=1e-18)


# ------------------------------------------------------------------ errors
def test_python_callable_for_gradient_method_points_to_onnx_target(cam64):
    m, _, _ = cam64
    x = _x(1)
    with pytest.raises(TargetError, match="OnnxTarget"):
        gradients(m, x, target=lambda y: y[:, 0])
    with pytest.raises(TargetError, match="OnnxTarget"):
        refcam.explain(m, x, "gradcam", target=lambda y: y[:, 0])


def test_target_errors_name_the_argument(cam64, seg64):
    m, _, _ = cam64
    ms, _ = seg64
    x = _x(2)
    with pytest.raises(TargetError, match=r"class_index: class 5 is out of range.*5 classes"):
        gradients(m, x, target=softmax_probability(5))
    with pytest.raises(TargetError, match=r"class_index: got 3 per-sample.*batch of 2"):
        refcam.explain(m, x, "gradcam", target=softmax_probability([0, 1, 2]))
    with pytest.raises(TargetError, match=r"class_index: got 1.5"):
        softmax_probability(1.5)
    with pytest.raises(TargetError, match=r"mask: got shape \(12, 11\), expected \(12, 12\)"):
        gradients(ms, x, target=mask_sum(np.ones((12, 11)), 0))
    with pytest.raises(TargetError, match=r"mask: contains NaN"):
        mask_sum(np.full((2, 2), np.nan), 0)
    with pytest.raises(TargetError, match=r"vector: got shape \(4,\), expected \(5,\)"):
        refcam.explain(m, x, "scorecam", target=embedding_similarity(np.ones(4)))
    with pytest.raises(TargetError, match=r"kind: got 'l2'"):
        embedding_similarity(np.ones(4), kind="l2")
    with pytest.raises(TargetError, match=r"softmax_probability needs a class output.*\(2, 3, 12, 12\)"):
        gradients(ms, x, target=softmax_probability(0))
    with pytest.raises(TargetError, match=r"mask_sum needs a per-pixel output"):
        gradients(m, x, target=mask_sum(np.ones(5), 0))


# ------------------------------------------------------------------ properties of the twins
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(2, 6), st.integers(0, 10**6), st.floats(0.1, 10.0))
def test_twin_properties(n, c, seed, scale):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, c)) * 5
    # probabilities of all classes sum to one; log_softmax = log of softmax_probability
    total = sum(softmax_probability(k).numpy(y) for k in range(c))
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)
    np.testing.assert_allclose(log_softmax(1).numpy(y), np.log(softmax_probability(1).numpy(y)), rtol=1e-9,
                               atol=1e-12)
    # cosine is in [-1, 1] and invariant to positive scaling of the embedding; dot is linear
    v = rng.normal(size=c)
    cos = embedding_similarity(v).numpy(y)
    assert np.all(np.abs(cos) <= 1 + 1e-12)
    np.testing.assert_allclose(embedding_similarity(v).numpy(scale * y), cos, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(embedding_similarity(v, "dot").numpy(scale * y),
                               scale * embedding_similarity(v, "dot").numpy(y), rtol=1e-12, atol=1e-12)
    assert isinstance(softmax_probability(0), OnnxTarget)


# ------------------------------------------------------------------ the float32 toy zoo (Conv nets)
def test_toy_cam_net_softmax_probability_float32_closed_form():
    # refcam.onnx.toy_models.cam_net (Conv→Relu→Conv→Relu→GAP→Gemm), float32: same closed form
    # ∂p_c/∂A^k_ij = p_c (W[c, k] − Σ_j p_j W[j, k]) / Z, evaluated in float64 from the float32 logits.
    proto = tm.cam_net()
    m = Model(proto)
    w = linear_head(proto.graph, "features", "logits", rank=4).weight
    x = RNG.normal(size=(2, 3, 12, 12)).astype(np.float32)
    r = gradients(m, x, wrt="features", target=softmax_probability([3, 0]))
    assert r.gradients["features"].dtype == np.float32
    p = _softmax(r.outputs.astype(np.float64))
    expect = p[[0, 1], [3, 0]][:, None] * (w[[3, 0]] - p @ w) / 144
    g = r.gradients["features"][:, 0].astype(np.float64)
    np.testing.assert_allclose(g, np.broadcast_to(expect[:, :, None, None], g.shape),
                               rtol=2e-5, atol=1e-6 * np.abs(expect).max())


def test_toy_segmentation_net_mask_sum_float32_closed_form():
    # toy_models.segmentation_net: logits = 1x1 Conv(features) ⇒ ∂S/∂features^k_s = M_s Wc[c, k]
    proto = tm.segmentation_net()
    wc = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}["logits.weight"][:, :, 0, 0]
    mask = np.zeros((12, 12), np.float32)
    mask[5:, :6] = 1.0
    x = RNG.normal(size=(1, 3, 12, 12)).astype(np.float32)
    e = refcam.explain(proto, x, "gradcam", layer="features", target=mask_sum(mask, 2))
    r = gradients(proto, x, wrt="features", target=mask_sum(mask, 2))
    np.testing.assert_allclose(r.gradients["features"][0, 0], wc[2][:, None, None] * mask, rtol=1e-6)
    a = Model(proto).forward(x, ["features"]).activations["features"].astype(np.float64)
    expect = np.maximum(mask.mean() * np.einsum("k,nkhw->nhw", wc[2].astype(np.float64), a), 0)
    np.testing.assert_allclose(e.maps, expect, rtol=1e-5, atol=1e-6 * expect.max())


def test_fixed_batch_one_model_runs_per_sample_weights_in_chunks():
    # toy 'batch1' (batch axis fixed to 1): 3 samples in 3 runs, each with its own class weights
    m = Model(tm.toy_model("batch1"))
    x = RNG.normal(size=(3, 3, 12, 12)).astype(np.float32)
    both = gradients(m, x, target=softmax_probability([0, 4, 2]))
    name = next(iter(both.gradients))
    for i, c in enumerate([0, 4, 2]):
        one = gradients(m, x[i:i + 1], target=softmax_probability(c))
        np.testing.assert_array_equal(both.gradients[name][i], one.gradients[name][0])
