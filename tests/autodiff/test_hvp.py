"""Hessian-vector products (refcam.autodiff.second_order) against central differences of the gradient.

Oracle: for every forward op type in SECOND_ORDER_OPS, a one-op graph followed by a smooth
non-linear tail (swish, z·σ(z), so the Hessian is not zero) is differentiated twice by refcam's
engine (reverse over reverse) and compared with (g(x + h v) - g(x - h v)) / 2h, g the first-order
VJP gradient.  float64 graphs where onnxruntime runs the op in float64 (tolerance 1e-6 relative),
float32 otherwise (tolerance 2e-3 relative: the central difference itself is that noisy in float32).
Inputs keep away from kinks (|x| >= 0.1, |x| <= 2: ReLU/Clip at 0, HardSwish at ±3,
HardSigmoid at ±2.5) so the step never crosses one.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from refcam.autodiff import build_vjp_model, grad_name
from refcam.autodiff.second_order import (
    CLASS_SEED_INPUT, SECOND_ORDER_OPS, build_hvp_model, hvp, hvp_output_names,
)
from refcam.autodiff.rules import NO_GRADIENT_OPS
from refcam._compare import max_abs_error
from refcam.errors import UnsupportedOpError

F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE
SHAPE = (2, 3, 4, 4)


def _c(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(nodes, inits, elem, in_shape, opset=17):
    """x -> nodes -> t; y = Flatten(t * Sigmoid(t))."""
    nodes = list(nodes) + [
        helper.make_node("Sigmoid", ["t"], ["tail_sig"]),
        helper.make_node("Mul", ["t", "tail_sig"], ["tail_u"]),
        helper.make_node("Flatten", ["tail_u"], ["y"], axis=1),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, list(in_shape))],
                          [helper.make_tensor_value_info("y", elem, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _cases():
    r = np.random.default_rng(0)
    w = lambda *s, dt=np.float32: (r.standard_normal(s) * 0.5).astype(dt)  # noqa: E731
    n = helper.make_node
    c = []   # (name, op type covered, nodes, inits, elem, input shape)
    c.append(("conv_s1", "Conv", [n("Conv", ["x", "w"], ["t"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])],
              [_c("w", w(4, 3, 3, 3))], F32, SHAPE))
    c.append(("conv_s2", "Conv", [n("Conv", ["x", "w"], ["t"], pads=[1, 1, 1, 1], strides=[2, 2], kernel_shape=[3, 3])],
              [_c("w", w(4, 3, 3, 3))], F32, SHAPE))
    c.append(("convtranspose", "ConvTranspose", [n("ConvTranspose", ["x", "w"], ["t"], strides=[2, 2], kernel_shape=[3, 3])],
              [_c("w", w(3, 2, 3, 3))], F32, SHAPE))
    c.append(("gemm", "Gemm", [n("Flatten", ["x"], ["f"]), n("Gemm", ["f", "w", "b"], ["t"], transB=1)],
              [_c("w", w(5, 48, dt=np.float64)), _c("b", w(5, dt=np.float64))], F64, SHAPE))
    c.append(("matmul", "MatMul", [n("MatMul", ["x", "w"], ["t"])], [_c("w", w(4, 3, dt=np.float64))], F64, SHAPE))
    c.append(("batchnorm", "BatchNormalization",
              [n("BatchNormalization", ["x", "sc", "bi", "mu", "va"], ["t"])],
              [_c("sc", w(3)), _c("bi", w(3)), _c("mu", w(3)), _c("va", np.abs(w(3)) + 0.5)], F32, SHAPE))
    for op in ("Add", "Sub", "Mul", "Div"):
        c.append((op.lower(), op, [n("Sigmoid", ["x"], ["q"]), n(op, ["x", "q"], ["t"])], [], F64, SHAPE))
    c.append(("sum", "Sum", [n("Exp", ["x"], ["q"]), n("Sum", ["x", "q", "x"], ["t"])], [], F64, SHAPE))
    c.append(("mean", "Mean", [n("Tanh", ["x"], ["q"]), n("Mean", ["x", "q"], ["t"])], [], F32, SHAPE))
    c.append(("neg", "Neg", [n("Neg", ["x"], ["t"])], [], F64, SHAPE))
    c.append(("maxpool_2x2", "MaxPool", [n("MaxPool", ["x"], ["t"], kernel_shape=[2, 2], strides=[2, 2])], [], F32, SHAPE))
    c.append(("maxpool_overlap", "MaxPool", [n("MaxPool", ["x"], ["t"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])],
              [], F32, SHAPE))
    c.append(("avgpool", "AveragePool", [n("AveragePool", ["x"], ["t"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
              [], F32, SHAPE))
    c.append(("gap", "GlobalAveragePool", [n("GlobalAveragePool", ["x"], ["t"])], [], F32, SHAPE))
    c.append(("gmp", "GlobalMaxPool", [n("GlobalMaxPool", ["x"], ["t"])], [], F32, SHAPE))
    c.append(("reducemean", "ReduceMean", [n("ReduceMean", ["x", "ax"], ["t"])], [_c("ax", np.array([2, 3]))], F64, SHAPE,
              18))
    c.append(("reducesum", "ReduceSum", [n("ReduceSum", ["x", "ax"], ["t"], keepdims=0)], [_c("ax", np.array([1]))], F64, SHAPE))
    c.append(("resize", "Resize", [n("Resize", ["x", "", "sc"], ["t"], mode="linear")],
              [_c("sc", np.array([1, 1, 2, 2], np.float32))], F32, SHAPE))
    for op, attrs in [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("HardSigmoid", {}),
                      ("HardSwish", {}), ("Tanh", {}), ("Exp", {}), ("Softplus", {}), ("Softmax", {"axis": 1}),
                      ("LogSoftmax", {"axis": 1}), ("Identity", {}), ("Dropout", {})]:
        elem = F32 if op in ("HardSigmoid", "HardSwish", "Softplus") else F64
        c.append((op.lower(), op, [n(op, ["x"], ["t"], **attrs)], [], elem, SHAPE))
    c.append(("clip", "Clip", [n("Clip", ["x", "lo", "hi"], ["t"])], [_c("lo", np.float32(0)), _c("hi", np.float32(1.5))],
              F32, SHAPE))
    c.append(("flatten", "Flatten", [n("Flatten", ["x"], ["t"], axis=2)], [], F64, SHAPE))
    c.append(("reshape", "Reshape", [n("Reshape", ["x", "s"], ["t"])], [_c("s", np.array([2, -1]))], F64, SHAPE))
    c.append(("squeeze_unsqueeze", "Squeeze", [n("Unsqueeze", ["x", "a"], ["q"]), n("Squeeze", ["q", "a"], ["t"])],
              [_c("a", np.array([1]))], F64, SHAPE))
    c.append(("unsqueeze", "Unsqueeze", [n("Unsqueeze", ["x", "a"], ["t"])], [_c("a", np.array([0]))], F64, SHAPE))
    c.append(("transpose", "Transpose", [n("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1])], [], F64, SHAPE))
    c.append(("concat", "Concat", [n("Tanh", ["x"], ["q"]), n("Concat", ["x", "q"], ["t"], axis=1)], [], F64, SHAPE))
    c.append(("split", "Split", [n("Split", ["x", "sp"], ["p", "q"], axis=1), n("Mul", ["p", "q"], ["t0"]),
                                 n("Identity", ["t0"], ["t"])], [_c("sp", np.array([1, 2]))], F64, (2, 3, 4, 4)))
    c.append(("slice", "Slice", [n("Slice", ["x", "st", "en", "ax"], ["t"])],
              [_c("st", np.array([1])), _c("en", np.array([3])), _c("ax", np.array([3]))], F64, SHAPE))
    c.append(("pad", "Pad", [n("Pad", ["x", "p"], ["t"], mode="reflect")], [_c("p", np.array([0, 0, 1, 1, 0, 0, 1, 1]))],
              F64, SHAPE))
    c.append(("expand", "Expand", [n("ReduceSum", ["x", "a"], ["q"]), n("Expand", ["q", "s"], ["t"])],
              [_c("a", np.array([1])), _c("s", np.array([2, 3, 4, 4]))], F64, SHAPE))
    c.append(("cast", "Cast", [n("Cast", ["x"], ["t"], to=F64)], [], F64, SHAPE))
    return c


CASES = _cases()


def _run(model, feeds, outs):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(outs, feeds)


def test_every_second_order_op_has_an_fd_case():
    covered = {c[1] for c in CASES} | {"Squeeze", "Unsqueeze"}
    assert SECOND_ORDER_OPS - NO_GRADIENT_OPS <= covered


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hvp_matches_central_differences_of_the_gradient(case):
    name, _, nodes, inits, elem, shape, *opset = case
    model = _model(nodes, inits, elem, shape, *(opset or [17]))
    dt = np.float32 if elem == F32 else np.float64
    r = np.random.default_rng(1)
    x = (np.sign(r.standard_normal(shape)) * r.uniform(0.1, 2.0, shape)).astype(dt)
    v = r.standard_normal(shape).astype(dt)
    y = _run(model, {"x": x}, ["y"])[0]
    s = r.standard_normal(y.shape).astype(dt)
    g1, hname = hvp_output_names("x")
    built = build_hvp_model(model, "x", seed="y")
    g, hv = _run(built, {"x": x, CLASS_SEED_INPUT: s, "refcam_seed": v}, [g1, hname])
    first = build_vjp_model(model, "x", seed="y")
    grad = lambda z: _run(first, {"x": z, "refcam_seed": s}, [grad_name("x")])[0].astype(np.float64)  # noqa: E731
    np.testing.assert_array_equal(g, _run(first, {"x": x, "refcam_seed": s}, [grad_name("x")])[0])
    h = 1e-5 if dt == np.float64 else 3e-3
    fd = (grad((x + h * v).astype(dt)) - grad((x - h * v).astype(dt))) / (2 * h)
    tol = 1e-6 if dt == np.float64 else 2e-3
    scale = max(float(np.abs(fd).max()), 1e-12)
    assert max_abs_error(hv, fd) <= tol * scale, name


def test_hvp_of_a_cubic_is_exact():
    g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["q"]), helper.make_node("Mul", ["q", "x"], ["y"])],
                          "cube", [helper.make_tensor_value_info("x", F64, [1, 3])],
                          [helper.make_tensor_value_info("y", F64, [1, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x, v, s = np.array([[1.0, -2.0, 0.5]]), np.array([[3.0, 1.0, -1.0]]), np.array([[1.0, 2.0, 1.0]])
    gn, hn = hvp_output_names("x")
    gv, hv = _run(build_hvp_model(m, "x"), {"x": x, CLASS_SEED_INPUT: s, "refcam_seed": v}, [gn, hn])
    np.testing.assert_allclose(gv, 3 * s * x ** 2, rtol=1e-15)          # y = x^3
    np.testing.assert_allclose(hv, 6 * s * x * v, rtol=1e-15)


@pytest.mark.parametrize("op,attrs", [("Erf", {}), ("Gelu", {}), ("Mish", {}), ("Sin", {})])
def test_ops_outside_the_second_order_set_are_refused(op, attrs):
    model = _model([helper.make_node(op, ["x"], ["t"], **attrs)], [], F32, SHAPE, 20)
    with pytest.raises(UnsupportedOpError, match=op):
        build_hvp_model(model, "x", seed="y")


def test_hvp_api_shapleycam_quantities_on_a_toy_cnn():
    """refcam.autodiff.second_order.hvp on the adapter's toy model: g equals refcam.autodiff.gradients, and with
    a ReLU network + linear head + logit target the Hessian is 0 (ShapleyCAM = Grad-CAM)."""
    from refcam.autodiff import gradients
    from refcam.onnx import softmax_probability
    from refcam.onnx.toy_models import cam_net

    x = np.random.default_rng(0).random((2, 3, 12, 12), dtype=np.float32)
    r = hvp(cam_net(), x, target=[1, 4])
    gr = gradients(cam_net(), x, target=[1, 4])
    (name,) = gr.gradients
    np.testing.assert_allclose(r.gradients, gr.gradients[name][:, 0], rtol=1e-6, atol=1e-7)
    assert np.abs(r.hvp).max() == 0.0
    # softmax-probability target: H A = p (w_c - w̄)(...) is not zero, and FD of g confirms it
    rs = hvp(cam_net(), x, target=softmax_probability([1, 4]))
    assert np.abs(rs.hvp).max() > 0
