"""Whole-graph behaviour of build_vjp_model: rule sets, multi-use tensors, opsets, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper

from ._harness import check_op, make_model, session, vjp
from ._models import resnet
from refcam.autodiff import SEED_INPUT, build_vjp_model, grad_name, supported_ops
from refcam.autodiff.fd import fd_gradients
from refcam.errors import InvalidArgumentError, LayerNotFoundError, UnsupportedOpError

R = np.random.default_rng(7)


# ---------------------------------------------------------------- hand-computed NumPy backward
def np_conv(x, w, pad):
    """Cross-correlation, stride 1: y[o,i,j] = sum_{c,u,v} w[o,c,u,v] x[c,i+u-pad,j+v-pad]."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, w.shape[2:], axis=(1, 2))  # (C, H', W', kh, kw)
    return np.einsum("ocuv,cijuv->oij", w, win)


def np_conv_adjoint(g, w, pad, in_hw):
    """dx[c, i+u-pad, j+v-pad] += w[o,c,u,v] g[o,i,j] (explicit scatter over the kernel offsets)."""
    kh, kw = w.shape[2:]
    H, W = in_hw
    dxp = np.zeros((w.shape[1], H + 2 * pad, W + 2 * pad))
    for u in range(kh):
        for v in range(kw):
            dxp[:, u:u + g.shape[1], v:v + g.shape[2]] += np.einsum("oc,oij->cij", w[:, :, u, v], g)
    return dxp[:, pad:pad + H, pad:pad + W]


@pytest.mark.parametrize("rules", ["plain", "guided", "deconvnet"])
def test_rule_sets_match_hand_computed_backward_on_conv_relu_conv(rules):
    x = R.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w1 = R.standard_normal((3, 2, 3, 3)).astype(np.float32)
    w2 = R.standard_normal((2, 3, 3, 3)).astype(np.float32)
    m = make_model([helper.make_node("Conv", ["x", "w1"], ["z"], pads=[1, 1, 1, 1]),
                    helper.make_node("Relu", ["z"], ["h"]),
                    helper.make_node("Conv", ["h", "w2"], ["y"])], {"x": x}, ["y"], {"w1": w1, "w2": w2})
    s = R.standard_normal((1, 2, 3, 3)).astype(np.float32)
    got = vjp(m, {"x": x}, "x", s, rules=rules)
    z = np_conv(x[0].astype(np.float64), w1.astype(np.float64), 1)
    dh = np_conv_adjoint(s[0].astype(np.float64), w2.astype(np.float64), 0, z.shape[1:])
    if rules == "plain":       # chain rule: R^l = [z > 0] R^{l+1}
        dz = dh * (z > 0)
    elif rules == "guided":    # Springenberg et al. 2015: [z > 0][R^{l+1} > 0] R^{l+1}
        dz = np.maximum(dh, 0) * (z > 0)
    else:                      # Zeiler & Fergus 2014: max(R^{l+1}, 0)
        dz = np.maximum(dh, 0)
    dx = np_conv_adjoint(dz, w1.astype(np.float64), 1, x.shape[2:])
    np.testing.assert_allclose(got[0], dx, rtol=1e-5, atol=1e-5)
    # the three rule sets really differ on this input
    assert (dh < 0).any() and ((dh > 0) & (z <= 0)).any()


def test_guided_relu_hand_case():
    # x = [-1, 2, 3], g = [5, -4, 6]: plain [0,-4,6]; guided [0,0,6]; deconvnet [5,0,6]
    x = np.array([[-1.0, 2.0, 3.0]])
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": x}, ["y"])
    g = np.array([[5.0, -4.0, 6.0]])
    assert vjp(m, {"x": x}, "x", g).tolist() == [[0.0, -4.0, 6.0]]
    assert vjp(m, {"x": x}, "x", g, rules="guided").tolist() == [[0.0, 0.0, 6.0]]
    assert vjp(m, {"x": x}, "x", g, rules="deconvnet").tolist() == [[5.0, 0.0, 6.0]]


def test_relu_like_choices_clip_and_leakyrelu():
    # Clip(0, 1) on x=[-1, .5, 2], g=[5,-4,6]: plain [0,-4,0]; guided [0,0,0]; deconvnet [5,0,6]
    x = np.array([[-1.0, 0.5, 2.0]])
    g = np.array([[5.0, -4.0, 6.0]])
    m = make_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], {"x": x}, ["y"],
                   {"lo": np.array(0.0), "hi": np.array(1.0)})
    assert vjp(m, {"x": x}, "x", g).tolist() == [[0.0, -4.0, 0.0]]
    assert vjp(m, {"x": x}, "x", g, rules="guided").tolist() == [[0.0, 0.0, 0.0]]
    assert vjp(m, {"x": x}, "x", g, rules="deconvnet").tolist() == [[5.0, 0.0, 6.0]]
    # LeakyRelu(0.5) on x=[-1, 2, 3], g=[4,-4,6]: plain [2,-4,6]; guided relu(g)*f' = [2,0,6]; deconv [4,0,6]
    x = np.array([[-1.0, 2.0, 3.0]])
    g = np.array([[4.0, -4.0, 6.0]])
    m = make_model([helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.5)], {"x": x}, ["y"])
    assert vjp(m, {"x": x}, "x", g).tolist() == [[2.0, -4.0, 6.0]]
    assert vjp(m, {"x": x}, "x", g, rules="guided").tolist() == [[2.0, 0.0, 6.0]]
    assert vjp(m, {"x": x}, "x", g, rules="deconvnet").tolist() == [[4.0, 0.0, 6.0]]


def test_tensor_used_twice_sums_contributions():
    # y = x*x + 3x  ->  dy/dx = 2x + 3 ; x = [1, -2] -> [5, -1]
    x = np.array([[1.0, -2.0]])
    m = make_model([helper.make_node("Mul", ["x", "x"], ["a"]), helper.make_node("Mul", ["x", "k"], ["b"]),
                    helper.make_node("Add", ["a", "b"], ["y"])], {"x": x}, ["y"], {"k": np.array(3.0)})
    assert vjp(m, {"x": x}, "x", np.ones((1, 2))).tolist() == [[5.0, -1.0]]


def test_outputs_activations_and_zero_gradient_for_unrelated_tensor():
    x = np.array([[1.0, 2.0]])
    m = make_model([helper.make_node("Mul", ["x", "x"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
                    helper.make_node("Identity", ["a"], ["y"]), helper.make_node("Identity", ["b"], ["z"])],
                   {"x": x}, ["y", "z"])
    g = build_vjp_model(m, ["a", "b"], seed="y")
    names = [o.name for o in g.graph.output]
    assert names == ["y", "z", grad_name("a"), "a", grad_name("b"), "b"]
    meta = {p.key: p.value for p in g.metadata_props}
    assert json.loads(meta["refcam.gradients"]) == {"a": grad_name("a"), "b": grad_name("b")}
    assert g.ir_version <= 10
    out = session(g).run(None, {"x": x, SEED_INPUT: np.array([[2.0, 3.0]])})
    assert out[2].tolist() == [[2.0, 3.0]] and out[3].tolist() == [[1.0, 4.0]]
    assert out[4].tolist() == [[0.0, 0.0]]   # b does not reach y


def test_one_model_serves_every_target_and_batch():
    model, names = resnet(depths=(1, 1), width=4, size=16)
    x = R.standard_normal((3, 3, 16, 16)).astype(np.float32)
    vm = build_vjp_model(model, [names["stage1"], "input"])
    sess = session(vm)
    seeds = np.eye(5, dtype=np.float32)[[0, 4, 2]]
    both = sess.run(None, {"input": x, SEED_INPUT: seeds})
    one = sess.run(None, {"input": x[1:2], SEED_INPUT: seeds[1:2]})
    np.testing.assert_allclose(both[1][1:2], one[1], rtol=1e-5, atol=1e-6)


def _agree(vjp_value, fd):
    """VJP within float32 FD's own accuracy: 1e-4 of the scale (float32 rounding at h=1e-2) plus 10x
    the Richardson error estimate (which flags ReLU/max kinks crossed inside [A-h, A+h])."""
    scale = np.max(np.abs(fd.value))
    err = np.abs(vjp_value - fd.value)
    return bool(np.all(err <= 1e-4 * scale + 10 * fd.error)), float(err.max() / scale)


@pytest.mark.parametrize("opset", [11, 13, 17, 18, 21])
def test_whole_resnet_matches_float64_fd(opset):
    """float32 VJP on onnxruntime vs float64 FD (reference evaluator, h = 6e-6, Richardson) of the
    same ResNet built in float64: kinks are practically never crossed, so the only gap is the float32
    arithmetic of the VJP (and the float32 rounding of the weights): rtol 1e-4."""
    rng = np.random.default_rng(opset)
    model, names = resnet(depths=(1, 1), width=4, size=16, opset=opset, seed=opset)
    # float64 twin at opset 17: same weights and function (onnx.reference's BatchNormalization-9,
    # used for opsets < 14, disagrees with the ONNX spec and onnxruntime, so the oracle avoids it)
    m64, _ = resnet(depths=(1, 1), width=4, size=16, opset=17, seed=opset, dtype=np.float64)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    with pytest.warns(UserWarning, match="opset 16") if opset < 16 else _nullcontext():
        vm = build_vjp_model(model, [names["stage0"], names["stage1"], "input"])
    s = np.eye(5, dtype=np.float32)[[1, 3]]
    out = dict(zip([o.name for o in vm.graph.output], session(vm).run(None, {"input": x, SEED_INPUT: s})))
    x64 = x.astype(np.float64)
    for name in (names["stage0"], names["stage1"]):
        _, fd = fd_gradients(m64, {"input": x64}, name, s, mode="channel", backend="reference")
        got = out[grad_name(name)].astype(np.float64).sum(axis=(2, 3))
        np.testing.assert_allclose(got, fd.value, atol=1e-4 * np.abs(fd.value).max())
    _, fd = fd_gradients(m64, {"input": x64}, names["stage1"], s, mode="full", backend="reference")
    np.testing.assert_allclose(out[grad_name(names["stage1"])], fd.value, atol=1e-4 * np.abs(fd.value).max())
    # input gradient (through the stem's overlapping MaxPool): 6 random directions
    from onnx.reference import ReferenceEvaluator

    from refcam.autodiff.fd import directional_derivatives

    ref = ReferenceEvaluator(m64)
    v = rng.standard_normal((6,) + x.shape)
    score = lambda st: (ref.run(None, {"input": st.reshape((-1,) + x.shape[1:])})[0]  # noqa: E731
                        .reshape(st.shape[0], 2, 5) * s).sum(-1)
    fd = directional_derivatives(score, x64, v)
    got = np.einsum("mnchw,nchw->mn", v, out[grad_name("input")].astype(np.float64))
    np.testing.assert_allclose(got, fd.value, atol=1e-4 * np.abs(fd.value).max())


def test_channel_fd_on_onnxruntime_float32_agrees_within_its_error_estimate():
    rng = np.random.default_rng(3)
    model, names = resnet(depths=(1, 1), width=4, size=16, seed=3)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    vm = build_vjp_model(model, [names["stage0"], names["stage1"]])
    s = np.eye(5, dtype=np.float32)[[1, 3]]
    out = dict(zip([o.name for o in vm.graph.output], session(vm).run(None, {"input": x, SEED_INPUT: s})))
    for name in (names["stage0"], names["stage1"]):
        _, fd = fd_gradients(model, {"input": x}, name, s, mode="channel", step=1e-2)
        ok, rel = _agree(out[grad_name(name)].astype(np.float64).sum(axis=(2, 3)), fd)
        assert ok, rel


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_maxpool_nonoverlapping_old_opset_needs_no_conversion():
    x = R.standard_normal((1, 2, 4, 4)).astype(np.float32)
    m = make_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                   {"x": x}, ["y"], opset=11)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_op("MaxPool", m, {"x": x}, "x", rtol=1e-4, step=1e-3, richardson=False)


def test_unsupported_op_error_names_op_node_opset_and_fd():
    x = np.ones((1, 4))
    m = make_model([helper.make_node("Det", ["x2"], ["y"], name="det0"),
                    helper.make_node("Reshape", ["x", "s"], ["x2"])], {"x": x}, ["y"], {"s": np.array([2, 2])})
    # reorder to a valid topological order
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend([nodes[1], nodes[0]])
    with pytest.raises(UnsupportedOpError, match=r"Det.*det0.*opset 17.*finite differences"):
        build_vjp_model(m, "x")


def test_argument_errors_name_the_argument():
    x = np.ones((1, 2))
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": x}, ["y"])
    with pytest.raises(LayerNotFoundError, match="wrt.*nope"):
        build_vjp_model(m, "nope")
    with pytest.raises(LayerNotFoundError, match="seed.*zz"):
        build_vjp_model(m, "x", seed="zz")
    with pytest.raises(InvalidArgumentError, match="rules"):
        build_vjp_model(m, "x", rules="smooth")
    with pytest.raises(InvalidArgumentError, match="wrt"):
        build_vjp_model(m, [])


def test_registry_lists_issue_ops():
    required = """Conv ConvTranspose Gemm MatMul Relu LeakyRelu PRelu Sigmoid Tanh HardSigmoid HardSwish Clip
    Erf Gelu Softmax LogSoftmax MaxPool AveragePool GlobalAveragePool GlobalMaxPool BatchNormalization
    LayerNormalization InstanceNormalization Add Sub Mul Div Max Min Reshape Flatten Squeeze Unsqueeze
    Transpose Concat Split Slice Pad ReduceMean ReduceSum Resize Expand Where Gather Identity Dropout Cast
    Shape Size ConstantOfShape Range ArgMax""".split()
    assert set(required) <= set(supported_ops())


@pytest.mark.parametrize("stage", ["stage0", "stage1"])
def test_structured_channel_fd_equals_running_all_copies(stage):
    """The channel-wise chain + seed folding evaluation gives the numbers of the 2K explicit copies."""
    from refcam.autodiff.fd import FiniteDifferences, directional_derivatives

    rng = np.random.default_rng(5)
    model, names = resnet(depths=(1, 1), width=4, size=16, seed=5)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    s = rng.standard_normal((2, 5)).astype(np.float32)
    fd = FiniteDifferences(model, names[stage])
    a, r = fd({"input": x}, s, mode="channel", step=1e-2)
    assert fd._channel_plan.usable and fd._channel_plan.fold is not None
    assert bool(fd._channel_plan.sep) == (stage == "stage1")  # stage1 -> GlobalAveragePool chain
    head = fd.head
    side = fd.side
    vals = dict(zip(fd.need, fd.prefix.run(fd.need, {"input": x})))

    def score(stack):
        m = stack.shape[0]
        feed = {names[stage]: stack.reshape((-1,) + a.shape[1:])}
        feed.update({k: np.concatenate([vals[k]] * m) for k in side})
        return (head.run(None, feed)[0].reshape(m, 2, 5).astype(np.float64) * s).sum(-1)

    ref = directional_derivatives(score, a, step=1e-2, channel=True)
    np.testing.assert_allclose(r.value, ref.value.T, rtol=1e-4, atol=1e-4 * np.abs(ref.value).max())


@pytest.mark.parametrize("opset", [13, 18])
def test_mean_backward_with_dynamic_spatial_sizes(opset):
    """H, W symbolic: the 1/Z of GlobalAveragePool / ReduceMean comes from Shape at run time.
    y = GAP(x) + mean_{HW}(x)  ->  dS/dx_{nkij} = 2 s_{nk} / (H W)."""
    from onnx import TensorProto, numpy_helper

    axes_in = [numpy_helper.from_array(np.array([2, 3]), "a")] if opset >= 18 else []
    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
         helper.make_node("ReduceMean", ["x"] + (["a"] if opset >= 18 else []), ["q"],
                          **({} if opset >= 18 else {"axes": [2, 3]})),
         helper.make_node("Add", ["p", "q"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 1, 1])], axes_in)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    x = np.random.default_rng(0).random((2, 2, 3, 4)).astype(np.float32)
    s = np.array([[3.0, -1.0], [0.5, 2.0]], np.float32).reshape(2, 2, 1, 1)
    got = vjp(m, {"x": x}, "x", s)
    np.testing.assert_allclose(got, np.broadcast_to(2 * s / 12, x.shape), rtol=1e-6)
