"""Tests of refcam.onnx.Model: loading, layers, runs, batching, layouts, heads, errors."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from refcam.errors import (
    DTypeError,
    InvalidArgumentError,
    LayerNotFoundError,
    ModelError,
    NonFiniteError,
    RefcamError,
    ShapeError,
)
from refcam.onnx import Model, cut_head, load, max_ir_version
from refcam.onnx.toy_models import ZOO, cam_net, resnet_like, toy_model, vgg_like

LAYOUT = {"nhwc": "NHWC"}


def _inputs(m: Model, n: int = 2, seed: int = 0, spatial: int = 12) -> np.ndarray:
    shape = [n] + [d if isinstance(d, int) else spatial for d in m.input_shape[1:]]
    if m.fixed_batch:
        shape[0] = n
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def zoo():
    return {k: Model(toy_model(k), layout=LAYOUT.get(k, "NCHW")) for k in ZOO}


# ---------------------------------------------------------------- loading
def test_load_path_bytes_proto_same_outputs_and_file_untouched(tmp_path):
    proto = cam_net()
    path = tmp_path / "cam.onnx"
    onnx.save(proto, path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    x = np.random.default_rng(1).standard_normal((3, 3, 12, 12)).astype(np.float32)
    outs = []
    for src in (path, str(path), path.read_bytes(), proto):
        m = Model(src)
        outs.append(m.forward(x, ["features", "relu1"]).outputs)
        m.head("features")  # building sessions/heads must not write anything
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    assert len(proto.graph.output) == 1  # the caller's proto is not modified


def test_load_external_data(tmp_path):
    proto = cam_net()
    path = tmp_path / "ext.onnx"
    onnx.save(
        proto,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    assert (tmp_path / "ext.onnx.data").exists()
    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    x = np.ones((1, 3, 12, 12), np.float32)
    got = Model(path).run(x)["logits"]
    want = Model(cam_net()).run(x)["logits"]
    np.testing.assert_array_equal(got, want)
    assert {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()
    } == hashes


def test_ir_version_too_new_is_clamped_in_memory():
    proto = cam_net()
    proto.ir_version = onnx.IR_VERSION  # what onnx 1.23 writes by default
    m = Model(proto)
    assert m.proto.ir_version == min(onnx.IR_VERSION, max_ir_version())
    assert m.run(np.zeros((1, 3, 12, 12), np.float32))["logits"].shape == (1, 5)
    assert proto.ir_version == onnx.IR_VERSION


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        Model(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="directory"):
        Model(tmp_path)
    txt = tmp_path / "notes.onnx"
    txt.write_text("this is not a model\n" * 20)
    with pytest.raises(ModelError, match="notes.onnx"):
        Model(txt)
    good = cam_net().SerializeToString()
    with pytest.raises(ModelError, match="bytes"):
        Model(good[: len(good) // 2])
    with pytest.raises(ModelError, match="bytes"):
        Model(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelError, match="expected a path"):
        Model(12)
    assert issubclass(ModelError, RefcamError)


def test_session_options_and_threads():
    m = Model(
        cam_net(),
        intra_op_num_threads=1,
        inter_op_num_threads=1,
        providers=["CPUExecutionProvider"],
    )
    sess = m.session(["logits"])
    assert sess.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(InvalidArgumentError, match="intra_op_num_threads"):
        Model(cam_net(), intra_op_num_threads=0)
    with pytest.raises(InvalidArgumentError, match="layout"):
        Model(cam_net(), layout="HWCN")


def test_session_cache_per_output_set():
    m = Model(cam_net(), max_sessions=2)
    s1 = m.session(["logits", "features"])
    assert m.session(["features", "logits"]) is s1  # a set: order does not matter
    s2 = m.session(["logits"])
    assert s2 is not s1
    m.session(["relu1"])  # evicts the least recently used (s1)
    assert m.session(["logits"]) is s2
    assert m.session(["logits", "features"]) is not s1
    # the pruned session contains only what the outputs need
    assert [o.name for o in s2.get_outputs()] == ["logits"]


# ---------------------------------------------------------------- layers
def test_layers_legacy_module_paths():
    m = Model(vgg_like())
    paths = {li.name: li.module_path for li in m.layers()}
    assert paths["/features/features.4/Relu_output_0"] == "features.4"
    assert paths["/Flatten_output_0"] is None
    assert m.layer("features.4").name == "/features/features.4/Relu_output_0"
    # a container resolves to its last tensor (its output)
    assert m.layer("features").name == "/features/features.5/MaxPool_output_0"
    assert m.layer("classifier").name == "/classifier/classifier.1/Relu_output_0"
    assert (
        m.layer("/features/features.4/Relu_output_0_node").name
        == "/features/features.4/Relu_output_0"
    )


def test_layers_dynamo_module_paths_and_shapes():
    m = Model(resnet_like())
    info = {li.name: li for li in m.layers()}
    assert info["relu_3"].module_path == "layer2.0.relu"
    assert info["conv2d_5"].module_path == "layer2.0.downsample.0"
    assert info["relu_3"].shape == ("N", 16, 8, 8) and info["relu_3"].op_type == "Relu"
    assert m.layer("layer1").name == "relu_2"
    assert m.layer("layer2").name == "relu_4"
    assert m.layer("layer2.0.downsample").name == "batch_norm_5"
    assert "conv2d.weight" not in info  # initializers are not layers


def test_unknown_layer_suggests_closest():
    m = Model(resnet_like())
    with pytest.raises(LayerNotFoundError, match=r"layer: got 'layr2'.*closest: 'layer2'"):
        m.layer("layr2")
    with pytest.raises(LayerNotFoundError, match="target_layer"):
        m.layer("nothing_like_it_at_all", argument="target_layer")


def test_non_spatial_layer_is_refused():
    m = Model(vgg_like())
    with pytest.raises(ShapeError, match=r"layer: got shape \(N, 256\).*not a spatial"):
        m.spatial_layer("/Flatten_output_0")


DEFAULTS = {
    "vgg": "/features/features.5/MaxPool_output_0",
    "resnet": "relu_4",
    "mobilenet": "pw_act",
    "cam": "features",
    "cam_matmul": "features",
    "conv3d": "features",
    "nhwc": "features",
    "softmax": "features",
    "dynamic": "features",
    "batch1": "features",
    "constant": "features",
    "segmentation": "features",  # not the per-pixel logits (the output is never the default)
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_default_layer(zoo, name):
    # mobilenet: the squeeze-excite GlobalAveragePool pools dw_act, but the default is the input
    # of the final pooling (pw_act)
    assert zoo[name].default_layer().name == DEFAULTS[name]


# ---------------------------------------------------------------- running
@pytest.mark.parametrize("name", sorted(ZOO))
def test_activations_match_reference_evaluator(zoo, name):
    m = zoo[name]
    x = _inputs(
        m,
        n=1 if m.fixed_batch else 2,
        spatial=10 if name == "nhwc" else (6 if name == "conv3d" else 12),
    )
    names = [li.name for li in m.layers()]
    got = m.run(x, names)
    ref = ReferenceEvaluator(m.proto)
    want = ref.run(names, {m.input_name: x})
    for nm, w in zip(names, want):
        np.testing.assert_allclose(got[nm], w, rtol=2e-5, atol=2e-5, err_msg=nm)


def test_cam_head_direct_numpy(zoo):
    # logits = W · mean_{ij} A_{ij} + b exactly, with W, b read from the initializers
    m = zoo["cam"]
    x = _inputs(m, 3)
    fw = m.forward(x, ["features"])
    w = onnx.numpy_helper.to_array(
        next(t for t in m.proto.graph.initializer if t.name == "fc.weight")
    )
    b = onnx.numpy_helper.to_array(
        next(t for t in m.proto.graph.initializer if t.name == "fc.bias")
    )
    want = fw.activations["features"].astype(np.float64).mean(axis=(2, 3)) @ w.T + b
    np.testing.assert_allclose(fw.outputs, want, rtol=1e-5, atol=1e-5)


def test_constant_weights_equal_initializer_weights(zoo):
    x = _inputs(zoo["cam"], 2)
    a = zoo["cam"].forward(x, ["features"])
    b = zoo["constant"].forward(x, ["features"])
    np.testing.assert_array_equal(a.outputs, b.outputs)
    np.testing.assert_array_equal(a.activations["features"], b.activations["features"])


@pytest.mark.parametrize(
    "kw", [dict(batch_size=1), dict(batch_size=3), dict(memory_budget=1), dict(memory_budget=10**9)]
)
def test_chunking_is_exact(zoo, kw):
    m = zoo["resnet"]
    x = _inputs(m, 7, spatial=16)
    full = m.run(x, ["relu_4", "logits"], batch_size=7)
    got = m.run(x, ["relu_4", "logits"], **kw)
    for k in full:
        np.testing.assert_allclose(got[k], full[k], rtol=1e-6, atol=1e-6)


def test_memory_budget_bounds_chunk():
    m = Model(cam_net())
    x = _inputs(m, 10)
    calls = []
    sess = m.session(["logits", "features"])
    orig = sess.run
    sess_run = lambda names, feeds: (
        calls.append(feeds[m.input_name].shape[0]),
        orig(names, feeds),
    )[1]
    m._sessions[frozenset(["logits", "features"])] = type(
        "S", (), {"run": staticmethod(sess_run)}
    )()
    per = x[0].nbytes + 6 * 12 * 12 * 4 + 5 * 4  # input + features + logits bytes per sample
    m.run(x, ["logits", "features"], memory_budget=3 * per)
    assert calls == [1, 3, 3, 3]  # first sample measures, then budget // per = 3


def test_fixed_batch_one_loops_transparently(zoo):
    m = zoo["batch1"]
    x = _inputs(zoo["cam"], 5)
    got = m.forward(x, ["features"])
    want = zoo["cam"].forward(x, ["features"])
    np.testing.assert_allclose(got.outputs, want.outputs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        got.activations["features"], want.activations["features"], rtol=1e-6, atol=1e-6
    )


def test_fixed_batch_three_pads_last_chunk():
    m3 = Model(cam_net(batch=3))
    x = _inputs(m3, 5)
    want = Model(cam_net()).run(x)["logits"]
    np.testing.assert_allclose(m3.run(x)["logits"], want, rtol=1e-6, atol=1e-6)


def test_dynamic_spatial_sizes(zoo):
    m = zoo["dynamic"]
    for hw in [(12, 12), (9, 7)]:
        x = np.random.default_rng(0).standard_normal((2, 3, *hw)).astype(np.float32)
        fw = m.forward(x, [m.default_layer()])
        assert fw.activations["features"].shape == (2, 6, *hw)
        np.testing.assert_allclose(
            fw.outputs, ReferenceEvaluator(m.proto).run(None, {"input": x})[0], rtol=1e-5, atol=1e-5
        )


def test_nhwc_activations_are_transposed(zoo):
    m = zoo["nhwc"]
    x = _inputs(m, 2, spatial=10)
    native = m.run(x, ["features"])["features"]
    assert native.shape == (2, 10, 10, 6)
    fw = m.forward(x, ["features"])
    np.testing.assert_array_equal(fw.activations["features"], np.transpose(native, (0, 3, 1, 2)))
    np.testing.assert_array_equal(m.to_native(fw.activations["features"]), native)
    assert m.input_spatial_shape(x) == (10, 10)


def test_softmax_model_targets_logits(zoo):
    m = zoo["softmax"]
    assert m.output_name == "logits" and m.softmax_stripped
    x = _inputs(m, 2)
    logits = m.run(x)["logits"]
    np.testing.assert_allclose(logits, zoo["cam"].run(x)["logits"], rtol=1e-6, atol=1e-6)
    keep = Model(cam_net(softmax=True), strip_softmax=False)
    assert keep.output_name == "probs"
    p = keep.run(x)["probs"]
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert Model(cam_net(softmax=True), output="gap").output_name == "gap"
    with pytest.raises(LayerNotFoundError, match="output"):
        Model(cam_net(), output="nope")


def test_input_errors(zoo):
    m = zoo["cam"]
    with pytest.raises(
        ShapeError, match=r"inputs: got shape \(3, 12, 12\), expected \(N, 3, 12, 12\)"
    ):
        m.run(np.zeros((3, 12, 12), np.float32))
    with pytest.raises(ShapeError, match=r"inputs: got shape \(1, 4, 12, 12\).*axis 1 must be 3"):
        m.run(np.zeros((1, 4, 12, 12), np.float32))
    with pytest.raises(ShapeError, match=r"axis 3 must be 12"):
        m.run(np.zeros((1, 3, 12, 13), np.float32))
    with pytest.raises(ShapeError, match="non-empty"):
        m.run(np.zeros((0, 3, 12, 12), np.float32))
    with pytest.raises(DTypeError, match="inputs: got dtype complex128"):
        m.run(np.zeros((1, 3, 12, 12), complex))
    x = np.zeros((1, 3, 12, 12))
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="inputs"):
        m.run(x)
    # float64 and int inputs are cast to the model's float32
    assert m.run(np.zeros((1, 3, 12, 12), np.int64))["logits"].dtype == np.float32
    # a size the graph cannot take (Flatten -> Gemm expects 16x16) on a symbolic-size input
    proto = vgg_like()
    for d, nm in zip(proto.graph.input[0].type.tensor_type.shape.dim[2:], "HW"):
        d.Clear()
        d.dim_param = nm
    with pytest.raises(ModelError, match=r"onnxruntime failed on inputs of shape \(1, 3, 12, 12\)"):
        Model(proto).run(np.zeros((1, 3, 12, 12), np.float32))


# ---------------------------------------------------------------- heads
@pytest.mark.parametrize(
    "name", ["cam", "constant", "resnet", "mobilenet", "conv3d", "nhwc", "vgg", "batch1", "softmax"]
)
def test_head_reproduces_outputs(zoo, name):
    m = zoo[name]
    x = _inputs(
        m,
        1 if m.fixed_batch else 3,
        spatial=10 if name == "nhwc" else (6 if name == "conv3d" else 12 if name != "vgg" else 16),
    )
    layer = m.default_layer()
    native = m.run(x, [layer.name, m.output_name])
    head = m.head(layer)
    assert head is m.head(layer.name)  # cached
    assert head.input_name == layer.name and head.output_name == m.output_name
    np.testing.assert_allclose(
        head.run(native[layer.name])[m.output_name], native[m.output_name], rtol=1e-5, atol=1e-5
    )


def test_head_refuses_cut_bypassed_by_skip():
    m = Model(resnet_like())
    with pytest.raises(ModelError, match="bypasses the cut"):
        m.head("relu_3")  # the projection shortcut reads relu_2 around it
    assert m.head("relu_2").input_shape == ("N", 8, 16, 16)


def test_cut_head_without_value_info_on_foreign_graph():
    proto = cam_net(constant_weights=True)
    del proto.graph.value_info[:]
    head = cut_head(proto, "features", ["logits"])  # no shape info at all
    x = np.random.default_rng(0).random((2, 6, 12, 12)).astype(np.float32)
    got = ReferenceEvaluator(head).run(None, {"features": x})[0]
    m = Model(head)
    np.testing.assert_allclose(m.run(x)["logits"], got, rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match="not produced"):
        cut_head(proto, "nope", ["logits"])


def test_load_passthrough():
    m = Model(cam_net())
    assert load(m) is m
    assert load(m, layout="NCHW") is not m


# ---------------------------------------------------------------- properties
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from refcam.onnx.layers import legacy_module_path  # noqa: E402

_ident = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True) | st.integers(0, 12).map(str)


@given(
    st.lists(st.tuples(_ident, st.booleans()), min_size=1, max_size=5),
    st.sampled_from(["Relu", "Conv"]),
)
def test_legacy_module_path_recovers_qualified_name(parts, op):
    # torch's legacy exporter writes each scope either relative ('conv1') or qualified
    # ('layer4.1'); both spellings must give the same module path
    names = [p for p, _ in parts]
    scopes = []
    for i, (p, qualified) in enumerate(parts):
        scopes.append(".".join(names[: i + 1]) if qualified and i > 0 else p)
    tensor = "/" + "/".join(scopes) + f"/{op}_output_0"
    assert legacy_module_path(tensor) == ".".join(names)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 9),
    batch_size=st.one_of(st.none(), st.integers(1, 10)),
    budget=st.integers(1, 10**6),
)
def test_run_is_chunk_invariant(zoo, n, batch_size, budget):
    m = zoo["cam"]
    x = _inputs(m, n, seed=n)
    want = ReferenceEvaluator(m.proto).run(["features", "logits"], {"input": x})
    got = m.run(x, ["features", "logits"], batch_size=batch_size, memory_budget=budget)
    np.testing.assert_allclose(got["features"], want[0], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(got["logits"], want[1], rtol=2e-5, atol=2e-5)
    got1 = zoo["batch1"].run(x, ["logits"], batch_size=batch_size)  # fixed batch: loops of 1
    np.testing.assert_allclose(got1["logits"], want[1], rtol=2e-5, atol=2e-5)
