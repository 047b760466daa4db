"""A ViT-style encoder block (float64, opset 17): LayerNorm, multi-head attention (MatMul, Split,
Reshape, Transpose, Softmax), tanh-GELU written with Pow/Tanh, residual Adds, class-token Gather,
Concat of a learned token, Gemm head.  VJP vs float64 central differences with Richardson: 1e-6."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ._harness import check_op


def vit_block(n_tok=5, d=8, heads=2, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    w = lambda *s: rng.standard_normal(s) / np.sqrt(s[0])  # noqa: E731
    inits = {
        "cls": rng.standard_normal((1, 1, d)), "ln1_s": 1 + 0.1 * rng.standard_normal(d),
        "ln1_b": 0.1 * rng.standard_normal(d), "w_qkv": w(d, 3 * d), "w_o": w(d, d),
        "ln2_s": 1 + 0.1 * rng.standard_normal(d), "ln2_b": 0.1 * rng.standard_normal(d),
        "w1": w(d, 2 * d), "w2": w(2 * d, d), "head_w": w(d, classes), "head_b": rng.standard_normal(classes),
        "sh_heads": np.array([0, n_tok + 1, heads, d // heads]), "sh_back": np.array([0, n_tok + 1, d]),
        "scale": np.array(np.sqrt(d // heads)), "c3": np.array(3.0), "c0044": np.array(0.044715),
        "ck": np.array(np.sqrt(2 / np.pi)), "half": np.array(0.5), "one": np.array(1.0),
        "tok0": np.array(0), "cls_shape": np.array([1, 1, 1]),
    }
    N = helper.make_node
    nodes = [
        N("Shape", ["x"], ["xs"]), N("Slice", ["xs", "zero1", "one1"], ["nb"]),
        N("Concat", ["nb", "one1", "one1"], ["rep"], axis=0), N("Tile", ["cls", "rep"], ["clsb"]),
        N("Concat", ["clsb", "x"], ["tokens"], axis=1),
        N("LayerNormalization", ["tokens", "ln1_s", "ln1_b"], ["h1"], axis=-1),
        N("MatMul", ["h1", "w_qkv"], ["qkv"]), N("Split", ["qkv", "split3"], ["q", "k", "v"], axis=-1),
    ]
    inits.update({"zero1": np.array([0]), "one1": np.array([1]), "split3": np.array([d, d, d])})
    for t in "qkv":
        nodes += [N("Reshape", [t, "sh_heads"], [t + "r"]), N("Transpose", [t + "r"], [t + "h"], perm=[0, 2, 1, 3])]
    nodes += [
        N("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]), N("MatMul", ["qh", "kt"], ["att"]),
        N("Div", ["att", "scale"], ["atts"]), N("Softmax", ["atts"], ["p"], axis=-1),
        N("MatMul", ["p", "vh"], ["ctx"]), N("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]),
        N("Reshape", ["ctxt", "sh_back"], ["ctxr"]), N("MatMul", ["ctxr", "w_o"], ["proj"]),
        N("Add", ["tokens", "proj"], ["res1"]),
        N("LayerNormalization", ["res1", "ln2_s", "ln2_b"], ["h2"], axis=-1),
        N("MatMul", ["h2", "w1"], ["m1"]),
        # tanh GELU: 0.5 m (1 + tanh(k (m + 0.044715 m^3)))
        N("Pow", ["m1", "c3"], ["m3"]), N("Mul", ["m3", "c0044"], ["m3c"]), N("Add", ["m1", "m3c"], ["u0"]),
        N("Mul", ["u0", "ck"], ["u"]), N("Tanh", ["u"], ["tu"]), N("Add", ["tu", "one"], ["tu1"]),
        N("Mul", ["m1", "tu1"], ["g0"]), N("Mul", ["g0", "half"], ["gelu"]),
        N("MatMul", ["gelu", "w2"], ["m2"]), N("Add", ["res1", "m2"], ["res2"]),
        N("Gather", ["res2", "tok0"], ["cls_out"], axis=1),
        N("Gemm", ["cls_out", "head_w", "head_b"], ["y"]),
    ]
    g = helper.make_graph(nodes, "vit", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", n_tok, d])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", classes])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_vit_block_gradients_match_fd():
    m = vit_block()
    x = np.random.default_rng(1).standard_normal((2, 5, 8))
    # wrt the input and intermediate token tensors (attention probabilities, residual stream)
    check_op("ViT block", m, {"x": x}, ["x", "res1", "p", "tokens"], rtol=1e-6)
