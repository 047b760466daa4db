"""The skeleton + weights split of refcam.onnx._weights: lossless, handed to every session, exact."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from refcam.autodiff import build_vjp_model, gradients
from refcam.onnx import Model
from refcam.onnx import _weights as W
from refcam.onnx.toy_models import ZOO, cam_net, resnet_like, toy_model, vgg_like

BUILD = {"resnet_like": resnet_like, "vgg_like": vgg_like, "cam_net": cam_net}


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch):
    """The toy models' weights are small: move every initializer of 64 bytes or more."""
    monkeypatch.setattr(W, "MIN_BYTES", 64)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_split_join_round_trip_is_lossless(name):
    proto = toy_model(name)
    original = proto.SerializeToString(deterministic=True)
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    skel, weights = W.split(work, min_bytes=64)
    n_raw = sum(len(t.raw_data) >= 64 for t in proto.graph.initializer)
    assert len(weights) == n_raw  # (some toy models keep their weights in Constant nodes)
    for t in skel.graph.initializer:
        if t.name in weights:
            assert not t.raw_data and t.data_location == onnx.TensorProto.EXTERNAL
            assert tuple(t.dims) == weights[t.name].shape
    assert sorted(W.external_names(skel)) == sorted(weights)
    assert W.join(skel, weights).SerializeToString(deterministic=True) == original


def test_small_and_typed_initializers_stay_in_the_proto():
    from onnx import TensorProto, helper, numpy_helper

    big = numpy_helper.from_array(np.arange(2048, dtype=np.float32).reshape(2, 1024), "big")
    small = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [2048], np.ones(2048, np.float32).tolist())
    g = helper.make_graph(
        [helper.make_node("Reshape", ["big", "shape"], ["r"]),
         helper.make_node("Add", ["r", "typed"], ["y"])], "g", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2048])], [big, small, typed])
    skel, weights = W.split(helper.make_model(g, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]))
    assert list(weights) == ["big"]
    assert np.array_equal(weights["big"], numpy_helper.to_array(big))
    by = {t.name: t for t in skel.graph.initializer}
    assert by["shape"].raw_data and by["typed"].float_data


@pytest.mark.parametrize("name", ["resnet_like", "vgg_like", "cam_net"])
def test_model_sessions_from_the_skeleton_are_bit_identical(name):
    proto = BUILD[name]()
    m = Model(proto)
    assert m.weights
    x = np.random.default_rng(0).standard_normal((2, *m.input_shape[1:])).astype(np.float32)
    full = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = full.run([m.output_name], {m.input_name: x})[0]
    got = m.run(x)[m.output_name]
    assert np.array_equal(got, want)
    # the proto property gives the model back with its values
    assert m.proto.SerializeToString(deterministic=True) == proto.SerializeToString(deterministic=True) \
        or m.proto.ir_version != proto.ir_version


@pytest.mark.parametrize("rules", ["plain", "guided"])
def test_vjp_from_the_skeleton_equals_vjp_from_the_full_proto(rules):
    proto = resnet_like()
    m = Model(proto)
    x = np.random.default_rng(1).standard_normal((3, *m.input_shape[1:])).astype(np.float32)
    layer = m.default_layer().name
    r = gradients(m, x, wrt=[layer, "input"], target=[1, 2, 0], rules=rules)
    # reference: the public builder on the full proto, its own session
    full = m.proto_with_output()
    vjp = build_vjp_model(full, [layer, m.input_name], seed=m.output_name, rules=rules)
    sess = ort.InferenceSession(vjp.SerializeToString(), providers=["CPUExecutionProvider"])
    seed = np.zeros((3, 10), np.float32)
    seed[np.arange(3), [1, 2, 0]] = 1
    gl, gi = sess.run(["refcam_grad/" + layer, "refcam_grad/" + m.input_name],
                      {m.input_name: x, "refcam_seed": seed})
    assert np.array_equal(r.gradients[layer][:, 0], gl)
    assert np.array_equal(r.gradients[m.input_name][:, 0], gi)


def test_user_session_options_are_not_modified():
    so = ort.SessionOptions()
    m = Model(resnet_like(), session_options=so)
    x = np.zeros((1, *m.input_shape[1:]), np.float32)
    m.run(x)
    gradients(m, x, target=0)
    # a second model with the same options: would fail if external initializers had been added
    m2 = Model(vgg_like(), session_options=so)
    m2.run(np.zeros((1, *m2.input_shape[1:]), np.float32))


def test_builder_records_weights_whose_values_were_read():
    m = Model(resnet_like())
    skel = m.skeleton
    vjp = build_vjp_model(skel, m.default_layer().name, seed=m.output_name, weights=m.weights)
    meta = {p.key: p.value for p in vjp.metadata_props}
    assert "refcam.weights_read" in meta
    import json

    assert set(json.loads(meta["refcam.weights_read"])) <= set(m.weights)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_load_split_of_a_file_equals_split_of_onnx_load(name, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(toy_model(name), str(path))
    fast = W.load_split(str(path))
    assert fast is not None
    skel, weights = W.split(onnx.load(str(path)))
    assert fast[0].SerializeToString(deterministic=True) == skel.SerializeToString(deterministic=True)
    assert list(fast[1]) == list(weights)
    for k in weights:
        assert fast[1][k].dtype == weights[k].dtype and np.array_equal(fast[1][k], weights[k])
        assert fast[1][k].flags.aligned and not fast[1][k].flags.writeable


def test_load_split_declines_what_it_does_not_read(tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data

    assert W.load_split(str(tmp_path / "missing.onnx")) is None
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert W.load_split(str(tmp_path / "empty.onnx")) is None
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 100)
    assert W.load_split(str(tmp_path / "junk.onnx")) is None
    proto = resnet_like()
    convert_model_to_external_data(proto, location="w.bin", size_threshold=0)
    onnx.save(proto, str(tmp_path / "ext.onnx"))
    assert W.load_split(str(tmp_path / "ext.onnx")) is None  # external data: onnx.load resolves it
    m = Model(str(tmp_path / "ext.onnx"))  # and Model falls back to it
    ref = Model(resnet_like())
    x = np.ones((1, *ref.input_shape[1:]), np.float32)
    assert np.array_equal(m.run(x)[m.output_name], ref.run(x)[ref.output_name])


def test_a_skeleton_alone_is_refused_with_a_clear_error():
    from refcam.errors import ModelError

    m = Model(resnet_like())
    assert m.weights
    with pytest.raises(ModelError, match="hold no values"):
        Model(m.skeleton)
    Model(m)  # the model itself (its weights come along) is fine
    Model(m.proto)
