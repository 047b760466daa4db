"""Layouts of layers from the graph (refcam.onnx.layout): hand-built graphs with known axis roles.

Each graph is built so that its shapes alone cannot tell the layout (channels = height = width),
so every pass below comes from the ops, never from a guess on the shape.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import refcam
from refcam._compare import max_abs_error
from refcam.errors import AmbiguousLayerError, InvalidArgumentError, LayerNotFoundError, ShapeError
from refcam.onnx import Model
from refcam.onnx.layout import Layout, parse_layout

RNG = np.random.default_rng(0)


def _model(nodes, inits, inp, out_shape=("N", 5), extra_out=()):
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(inp))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(out_shape)), *extra_out],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32) * 0.5


def vit_like(prefix: int = 1, d: int = 4, grid: int = 2, patch: int = 2):
    """Conv patch embedding → Reshape (N, D, h·w) → Transpose (N, T, D) → Concat prefix tokens →
    LayerNorm → self-attention (Softmax(QKᵀ) V) + residual → LayerNorm → Gather(class token) → Gemm.
    D = grid·grid so the token count minus the prefix equals the width (shapes can't tell)."""
    size = grid * patch
    t = prefix + grid * grid
    inits = {
        "wp": _w(d, 3, patch, patch), "shp": np.array([0, d, -1], np.int64),
        "cls": _w(1, prefix, d), "exp": np.array([1, 1, 1], np.int64),
        "g1": np.ones(d, np.float32), "b1": np.zeros(d, np.float32),
        "wq": _w(d, d), "wk": _w(d, d), "wv": _w(d, d), "wo": _w(d, d),
        "g2": np.ones(d, np.float32), "b2": np.zeros(d, np.float32),
        "idx": np.array(0, np.int64), "wh": _w(5, d),
        "sh": np.array([0, 0, 0], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["input", "wp"], ["patches"], strides=[patch, patch]),
        helper.make_node("Reshape", ["patches", "shp"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),
        helper.make_node("Shape", ["input"], ["ishape"]),
        helper.make_node("Gather", ["ishape", "idx"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero"], ["n1"]),
        helper.make_node("Concat", ["n1", "one", "one"], ["eshape"], axis=0),
        helper.make_node("Expand", ["cls", "eshape"], ["clsN"]),
        helper.make_node("Concat", ["clsN", "tokens"], ["x0"], axis=1),
        helper.make_node("LayerNormalization", ["x0", "g1", "b1"], ["norm1"], axis=-1),
        # a sequence-first round trip, as nn.MultiheadAttention's legacy export has it
        helper.make_node("Transpose", ["norm1"], ["norm1_tnc"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["norm1_tnc"], ["norm1_back"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["norm1_back", "wq"], ["q"]),
        helper.make_node("MatMul", ["norm1_back", "wk"], ["k"]),
        helper.make_node("MatMul", ["norm1_back", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["ctx"]),
        helper.make_node("MatMul", ["ctx", "wo"], ["proj"]),
        helper.make_node("Add", ["x0", "proj"], ["x1"]),
        helper.make_node("LayerNormalization", ["x1", "g2", "b2"], ["norm2"], axis=-1),
        helper.make_node("Gather", ["norm2", "idx"], ["cls_out"], axis=1),
        helper.make_node("Gemm", ["cls_out", "wh"], ["logits"], transB=1),
    ]
    inits["zero"] = np.array([0], np.int64)
    inits["one"] = np.array([1], np.int64)
    del inits["exp"], inits["sh"]
    return _model(nodes, inits, ("N", 3, size, size)), t, d


def channels_last_net(c: int = 4):
    """Conv (NCHW) → Transpose to NHWC → LayerNorm over C → Transpose back → GAP → Gemm; C = H = W."""
    inits = {"w": _w(c, 3, 3, 3), "g": np.ones(c, np.float32), "b": np.zeros(c, np.float32),
             "wh": _w(5, c)}
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["conv"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["nhwc", "g", "b"], ["ln"], axis=-1),
        helper.make_node("Transpose", ["ln"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("GlobalAveragePool", ["nchw"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "wh"], ["logits"], transB=1),
    ]
    return _model(nodes, inits, ("N", 3, c, c))


def window_net(c: int = 2, size: int = 4, win: int = 2):
    """Channels-last map split into windows (batch merged with windows) and merged back."""
    nw = (size // win) ** 2
    inits = {"w": _w(c, 3, 1, 1),
             "s1": np.array([-1, size // win, win, size // win, win, c], np.int64),
             "s2": np.array([-1, win * win, c], np.int64),
             "s3": np.array([-1, size // win, size // win, win, win, c], np.int64),
             "s4": np.array([-1, size, size, c], np.int64), "wh": _w(5, c)}
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["conv"]),
        helper.make_node("Transpose", ["conv"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["nhwc", "s1"], ["split"]),
        helper.make_node("Transpose", ["split"], ["perm"], perm=[0, 1, 3, 2, 4, 5]),
        helper.make_node("Reshape", ["perm", "s2"], ["windows"]),
        helper.make_node("Relu", ["windows"], ["wrelu"]),
        helper.make_node("Reshape", ["wrelu", "s3"], ["back"]),
        helper.make_node("Transpose", ["back"], ["bperm"], perm=[0, 1, 3, 2, 4, 5]),
        helper.make_node("Reshape", ["bperm", "s4"], ["merged"]),
        helper.make_node("Add", ["merged", "nhwc"], ["res"]),
        helper.make_node("ReduceMean", ["res"], ["pooled"], axes=[1, 2], keepdims=0),
        helper.make_node("Gemm", ["pooled", "wh"], ["logits"], transB=1),
    ]
    del nw
    return _model(nodes, inits, ("N", 3, size, size))


# ---------------------------------------------------------------------------- parse / convert
@pytest.mark.parametrize("spec,axes,desc", [
    ("NCHW", ("N", "C", "S0", "S1"), "NCHW"),
    ("NHWC", ("N", "S0", "S1", "C"), "NHWC"),
    ("channels_last", ("N", "S0", "S1", "C"), "NHWC"),
    ("NCL", ("N", "C", "S0"), "NCL"),
    ("NDHWC", ("N", "S0", "S1", "S2", "C"), "NDHWC"),
    ("NTC:1+14x14", ("N", "T", "C"), "NTC 1+14x14"),
    ("TNC:2+3x4+1", ("T", "N", "C"), "TNC 2+3x4+1"),
])
def test_parse_layout(spec, axes, desc):
    lay = parse_layout(spec)
    assert lay.axes == axes and lay.describe() == desc and lay.source == "given"


@pytest.mark.parametrize("bad", ["NCXW", "NTC", "NHWC:1+2x2", "NNC", "CHW", "NTC:1+0x2", 3, "NHTC:1+2x2"])
def test_parse_layout_refuses(bad):
    with pytest.raises(InvalidArgumentError, match="layer_layout"):
        parse_layout(bad)


def test_tokens_to_map_by_hand():
    """NTC with 2 prefix tokens and a 2x3 grid: token 2 + (i·3 + j) is map position (i, j)."""
    a = np.arange(2 * 8 * 4, dtype=np.float64).reshape(2, 8, 4)
    m = parse_layout("NTC:2+2x3").to_map(a)
    assert m.shape == (2, 4, 2, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(m[:, :, i, j], a[:, 2 + i * 3 + j, :])


def test_sequence_first_with_target_axis():
    """(T, N, C) native; gradients stack a target axis after native axis 0: (T, targets, N, C)."""
    a = RNG.standard_normal((5, 3, 2))                   # T=1+2x2, N=3, C=2
    lay = parse_layout("TNC:1+2x2")
    m = lay.to_map(a)
    np.testing.assert_array_equal(m, np.transpose(a[1:], (1, 2, 0)).reshape(3, 2, 2, 2))
    g = np.stack([a, 2 * a], axis=1)                     # (T, 2 targets, N, C)
    mg = lay.to_map(g, lead=1)
    assert mg.shape == (3, 2, 2, 2, 2)
    np.testing.assert_array_equal(mg[:, 1], 2 * m)


def test_from_map_inverts_and_keeps_prefix():
    a = RNG.standard_normal((2, 5, 3))
    lay = parse_layout("NTC:1+2x2")
    m = lay.to_map(a)
    back = lay.from_map(m * 0 + 7, a)
    np.testing.assert_array_equal(back[:, 0], a[:, 0])
    assert (back[:, 1:] == 7).all()
    lay2 = parse_layout("NHWC")
    b = RNG.standard_normal((2, 3, 4, 5))
    np.testing.assert_array_equal(lay2.from_map(lay2.to_map(b)), b)


def test_token_count_must_fit_grid():
    with pytest.raises(ShapeError, match="token count does not fit"):
        parse_layout("NTC:1+2x2").to_map(np.zeros((1, 6, 3)))


def test_unclear_layout_refuses_conversion():
    with pytest.raises(ShapeError, match="layer_layout"):
        Layout((None, "C"), reason="test").to_map(np.zeros((1, 2)))


# ---------------------------------------------------------------------------- inference
@pytest.mark.parametrize("prefix", [1, 2])
def test_vit_like_layouts_and_default(prefix):
    proto, t, d = vit_like(prefix=prefix)
    m = Model(proto)
    lay = {li.name: li.layout.describe() for li in m.layers()}
    assert lay["patches"] == "NCHW"
    assert lay["tokens"] == "NTC 0+2x2"
    assert lay["x0"] == lay["norm1"] == lay["x1"] == lay["norm2"] == f"NTC {prefix}+2x2"
    assert lay["scores"] == "?" and lay["attn"] == "?"        # attention internals: tokens mixed
    assert lay["cls_out"] == "NC"
    # class-token readout: the input of the last attention, not the final LayerNorm
    assert m.default_layer().name == "norm1"


def test_vit_like_final_block_output_has_zero_patch_gradients():
    """Why the default is norm1: at norm2 only the class token reaches the head."""
    from refcam.autodiff import gradients

    proto, _, _ = vit_like()
    m = Model(proto)
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    g = gradients(m, x, wrt="norm2", target=[1, 2]).gradients["norm2"]
    assert np.count_nonzero(g) == 0                           # grid tokens only: all zero
    e = refcam.explain(m, x, "gradcam", target=[1, 2])
    assert e.layer.name == "norm1" and np.count_nonzero(e.maps) > 0


def test_vit_like_gradcam_equals_manual_reshape():
    """Grad-CAM on the token layer = Grad-CAM on t[:, p:, :].reshape(N, h, w, D) channels first."""
    from refcam.autodiff import gradients

    proto, t, d = vit_like(prefix=2)
    m = Model(proto)
    x = RNG.standard_normal((3, 3, 4, 4)).astype(np.float32)
    e = refcam.explain(m, x, "gradcam", target=[0, 1, 2])
    m2 = Model(proto)
    r = gradients(m2, x, wrt="norm1", target=[0, 1, 2])
    nat = m2.run(x, ["norm1"])["norm1"]
    assert nat.shape == (3, t, d)

    def rt(a):
        return np.transpose(a[:, 2:, :].reshape(a.shape[0], 2, 2, d), (0, 3, 1, 2))

    # the gradient in native layout, through the same reshape (FD-free: VJP of the same graph)
    a_ref = rt(nat)
    np.testing.assert_array_equal(e.arrays["activations"], a_ref)
    g = r.gradients["norm1"][:, 0]
    ref = refcam.gradcam(a_ref, g)
    assert max_abs_error(e.maps, ref) == 0.0


def test_channels_last_from_transposes_not_shapes():
    m = Model(channels_last_net(c=4))                         # (N, 4, 4, 4) everywhere
    lay = {li.name: li.layout.describe() for li in m.layers()}
    assert lay["conv"] == "NCHW" and lay["nhwc"] == "NHWC" and lay["ln"] == "NHWC"
    assert lay["nchw"] == "NCHW"
    assert m.default_layer().name == "ln"                     # the view's source
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    a = m.forward(x, ["ln"]).activations["ln"]
    nat = m.run(x, ["ln"])["ln"]
    np.testing.assert_array_equal(a, np.transpose(nat, (0, 3, 1, 2)))


def test_windows_are_unclear_and_recovered_by_residual():
    m = Model(window_net())
    lay = {li.name: li.layout for li in m.layers()}
    assert lay["windows"].kind == "unclear" and lay["merged"].kind == "unclear"
    assert lay["res"].describe() == "NHWC"                    # the residual's other operand
    with pytest.raises(ShapeError, match="layer_layout"):
        m.spatial_layer("windows")
    assert m.default_layer().name == "res"


def test_layer_layout_override_reads_an_unclear_layer():
    m = Model(window_net())
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    e = refcam.explain(m, x, "gradcam", layer="merged", layer_layout="NHWC", target=1)
    e_res = refcam.explain(m, x, "gradcam", layer="res", target=1)
    assert e.maps.shape == e_res.maps.shape == (2, 4, 4)
    with pytest.raises(ShapeError, match="rank 4"):
        refcam.explain(m, x, "gradcam", layer="merged", layer_layout="NTC:1+2x2")


def test_small_maps_refused_unless_allowed():
    m = Model(channels_last_net())
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    with pytest.raises(ShapeError, match="1 position.*allow_small_map"):
        refcam.explain(m, x, "gradcam", layer="gap")
    e = refcam.explain(m, x, "gradcam", layer="gap", allow_small_map=True)
    assert e.maps.shape == (1, 1, 1)


def test_vector_layer_refused_with_hint():
    proto, _, _ = vit_like()
    m = Model(proto)
    with pytest.raises(ShapeError, match="NC.*layer_layout"):
        m.spatial_layer("cls_out")


# ---------------------------------------------------------------------------- names
def test_ambiguous_name_lists_candidates():
    """swin_t's dynamo export: tensor ``permute`` lives in module ``features.0.1`` while a module is
    named ``permute``.  The name is refused, each candidate listed, and the prefixes resolve."""
    inits = {"w": _w(4, 3, 1, 1), "wh": _w(5, 4)}

    def scoped(node, path):
        e = node.metadata_props.add()
        e.key = "pkg.torch.onnx.name_scopes"
        e.value = repr(["", *path, node.output[0]])
        return node

    nodes = [
        scoped(helper.make_node("Conv", ["input", "w"], ["conv"], name="n0"), ["features.0"]),
        scoped(helper.make_node("Transpose", ["conv"], ["permute"], perm=[0, 2, 3, 1], name="n1"),
               ["features.0", "features.0.1"]),
        scoped(helper.make_node("Relu", ["permute"], ["relu"], name="n2"), ["permute"]),
        helper.make_node("ReduceMean", ["relu"], ["pooled"], axes=[1, 2], keepdims=0),
        helper.make_node("Gemm", ["pooled", "wh"], ["logits"], transB=1),
    ]
    m = Model(_model(nodes, inits, ("N", 3, 4, 4)))
    with pytest.raises(AmbiguousLayerError, match=r"'permute' names 2 different tensors.*tensor:permute.*module:permute"):
        m.layer("permute")
    assert isinstance(AmbiguousLayerError("x"), LayerNotFoundError)
    assert m.layer("tensor:permute").name == "permute"
    assert m.layer("module:permute").name == "relu"
    assert m.layer("features.0.1").name == "permute"
    with pytest.raises(AmbiguousLayerError):
        refcam.explain(m, np.zeros((1, 3, 4, 4), np.float32), "gradcam", layer="permute")


def test_graph_input_is_a_layer():
    m = Model(channels_last_net())
    li = m.layer("input")
    assert li.op_type == "Input" and li.layout.describe() == "NCHW"
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    e = refcam.explain(m, x, "gradcam", layer="input", target=0)
    assert e.maps.shape == (1, 4, 4)


def test_sequence_first_layer_end_to_end():
    """A (T, N, C) tensor: batch axis 1, chunks joined on it; Grad-CAM equals the batch-first one."""
    proto, _, _ = vit_like(prefix=1)
    m = Model(proto)
    assert m.layer("norm1_tnc").layout.describe() == "TNC 1+2x2"
    x = RNG.standard_normal((3, 3, 4, 4)).astype(np.float32)
    a = refcam.explain(m, x, "gradcam", layer="norm1", target=[0, 1, 2])
    b = refcam.explain(m, x, "gradcam", layer="norm1_tnc", target=[0, 1, 2], batch_size=1)
    np.testing.assert_array_equal(b.arrays["activations"], a.arrays["activations"])
    # the VJP runs one sample at a time here (float32 sums in another order): rounding only
    assert max_abs_error(b.maps, a.maps) <= 1e-6 * float(np.abs(a.maps).max())
    # Ablation-CAM cuts the graph there and runs the head batch-first: refused, not garbled
    with pytest.raises(InvalidArgumentError, match="batch-first"):
        refcam.explain(m, x, "ablationcam", layer="norm1_tnc", target=0)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["NCHW", "NHWC", "NCL", "NLC", "NCDHW", "NDHWC", "NTC:1+2x3", "TNC:2+3x2",
                        "NTC:0+6x1+1"]), st.integers(1, 3), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_to_map_from_map_round_trip(spec, n, k, seed):
    """from_map(to_map(a), a) == a for every layout (tokens: prefix/suffix copied back)."""
    lay = parse_layout(spec)
    sizes = {"N": n, "C": k, "T": (lay.prefix or 0) + int(np.prod(lay.grid or (1,))) + (lay.suffix or 0)}
    shape = tuple(sizes.get(t, 2 + i) for i, t in enumerate(lay.axes))
    a = np.random.default_rng(seed).standard_normal(shape)
    m = lay.to_map(a)
    assert m.shape[:2] == (n, k)
    np.testing.assert_array_equal(lay.from_map(m, a), a)
