"""End to end: ONNX model + inputs -> map, for every forward-only method on every zoo model it
applies to.  Each map is compared with the math floor fed arrays computed *independently* here
(onnx.reference.ReferenceEvaluator for activations and scores, graph initializers for weights,
masks built from refcam.math.upsample/normalize), never with the adapter's own arrays.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import refcam
from refcam import math as M
from refcam.errors import (
    InvalidArgumentError,
    LayerNotFoundError,
    ModelError,
    ShapeError,
    TargetError,
)
from refcam.methods import METHODS, get_method
from refcam.onnx import Model, TopK
from refcam.onnx.toy_models import ZOO, cam_net, toy_model

LAYOUT = {"nhwc": "NHWC"}
SPATIAL = {"vgg": 16, "resnet": 16, "mobilenet": 16, "nhwc": 10, "conv3d": 6}
CAM_ZOO = sorted(set(ZOO) - {"vgg", "segmentation"})  # the models with a GAP -> linear head
CLASSIFIERS = sorted(set(ZOO) - {"segmentation"})  # (N, C) outputs: class-index targets


def _x(name: str, n: int = 2, seed: int = 0) -> np.ndarray:
    m = Model(toy_model(name), layout=LAYOUT.get(name, "NCHW"))
    s = SPATIAL.get(name, 12 if name != "dynamic" else 10)
    shape = [n] + [d if isinstance(d, int) else s for d in m.input_shape[1:]]
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


class Oracle:
    """Independent evaluation of a zoo model with onnx.reference (no refcam.onnx code)."""

    def __init__(self, name: str):
        self.name = name
        self.proto = toy_model(name)
        self.ref = ReferenceEvaluator(self.proto)
        self.nhwc = name == "nhwc"
        self.input = self.proto.graph.input[0].name

    def run(self, x, names):
        # the fixed-batch model runs one sample at a time, as its graph demands
        if self.name == "batch1":
            parts = [self.ref.run(names, {self.input: x[i : i + 1]}) for i in range(len(x))]
            return [np.concatenate([p[j] for p in parts]) for j in range(len(names))]
        return self.ref.run(names, {self.input: x})

    def logits_name(self):
        return "logits"  # every zoo model's class scores (pre-softmax for the Softmax model)

    def forward(self, x, layer):
        a, y = self.run(x, [layer, self.logits_name()])
        if self.nhwc:
            a = np.moveaxis(a, -1, 1)
        return a, y

    def masked_logits(self, x, masks):
        """x (N, C|native...), masks (N, K, *S_in) -> logits (N, K, classes)."""
        xc = np.moveaxis(x, -1, 1) if self.nhwc else x
        n, k = masks.shape[:2]
        xm = (xc[:, None] * masks[:, :, None]).astype(np.float32).reshape(n * k, *xc.shape[1:])
        if self.nhwc:
            xm = np.moveaxis(xm, 1, -1)
        (y,) = self.run(np.ascontiguousarray(xm), [self.logits_name()])
        return y.reshape(n, k, -1)


def _softmax(y, axis=-1):
    e = np.exp(y - y.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _masks(a, size, mode="linear"):
    n, k = a.shape[:2]
    return M.normalize(M.upsample(a, size, mode).reshape(n * k, *size), "minmax").reshape(
        n, k, *size
    )


def _layer(name):
    return Model(toy_model(name), layout=LAYOUT.get(name, "NCHW")).default_layer().name


def _close(got, want, rtol=2e-4):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


# ------------------------------------------------------------------------------------ CAM
@pytest.mark.parametrize("name", CAM_ZOO)
def test_cam_equals_math_with_graph_weights(name):
    x = _x(name, 3)
    e = refcam.explain(toy_model(name), x, "cam", layout=LAYOUT.get(name))
    o = Oracle(name)
    a, y = o.forward(x, e.layer.name)
    # weights straight from the initializers / Constant nodes of the fc layer
    const = {t.name: numpy_helper.to_array(t) for t in o.proto.graph.initializer}
    for node in o.proto.graph.node:
        if node.op_type == "Constant":
            const[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    if "fc.weight" in const or "logits.weight" in const:  # Gemm transB=1: (classes, K)
        w = const.get("fc.weight", const.get("logits.weight"))
    else:  # MatMul: (K, classes)
        w = const.get("fc.weight_t", const.get("fc.kernel")).T
    b = const.get("fc.bias", const.get("logits.bias"))
    cls = y.argmax(1)
    np.testing.assert_array_equal(e.targets[:, 0], cls)
    want = M.cam(a, w[cls])
    _close(e.maps, want)
    assert e.maps.dtype == np.float32
    # the CAM identity of Zhou et al.: mean_ij M_c + b_c = y^c
    axes = tuple(range(1, e.maps.ndim))
    _close(e.maps.mean(axis=axes) + b[cls], y[np.arange(len(cls)), cls])


def test_cam_hand_example():
    # a 1-pixel CAM net: A = ReLU(conv) is checked by hand through the math floor: with K=6
    # channels and weights w^c, M_c = sum_k w^c_k A^k; here we pick target 0 and compare one pixel
    x = _x("cam", 1)
    e = refcam.explain(cam_net(), x, "cam", target=0)
    a = e.arrays["activations"][0, :, 3, 4].astype(np.float64)
    w0 = e.arrays["class_weights"][0, 0].astype(np.float64)
    assert e.maps[0, 3, 4] == pytest.approx(float(a @ w0), rel=1e-6)


def test_cam_errors():
    with pytest.raises(ModelError, match="not by global average pooling"):
        refcam.explain(toy_model("vgg"), _x("vgg"), "cam")
    with pytest.raises(TargetError, match="CAM needs class-index targets"):
        refcam.explain(cam_net(), _x("cam"), "cam", target=lambda o: o[:, 0])


# ------------------------------------------------------------------------------------ Score-CAM family
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_scorecam_equals_math(name):
    x = _x(name, 2)
    e = refcam.explain(toy_model(name), x, "scorecam", layout=LAYOUT.get(name), progress=False)
    o = Oracle(name)
    a, y = o.forward(x, e.layer.name)
    size = x.shape[1:-1] if o.nhwc else x.shape[2:]
    logits = o.masked_logits(x, _masks(a, size))  # (N, K, classes)
    cls = y.argmax(1)
    scores = _softmax(logits)[np.arange(len(x)), :, cls]  # probabilities f^c(X o H^k)
    _close(e.arrays["masked_scores"][:, 0], scores, rtol=1e-4)
    _close(e.maps, M.scorecam(a, scores))
    assert e.maps.dtype == np.float32


def test_scorecam_pytorch_grad_cam_options_and_baseline():
    x = _x("resnet", 2)
    e = refcam.explain(
        toy_model("resnet"),
        x,
        "scorecam",
        score="logit",
        softmax=True,
        upsample_mode="linear-align-corners",
        baseline="zeros",
    )
    o = Oracle("resnet")
    a, y = o.forward(x, "relu_4")
    logits = o.masked_logits(x, _masks(a, (16, 16), "linear-align-corners"))
    cls = y.argmax(1)
    s = logits[np.arange(2), :, cls]
    (y0,) = o.run(np.zeros_like(x), ["logits"])
    b = y0[np.arange(2), cls]
    _close(e.arrays["baseline_scores"][:, 0], b)
    _close(e.maps, M.scorecam(a, s, baseline_score=b, softmax=True))


@pytest.mark.parametrize("name", ["cam", "conv3d", "nhwc", "mobilenet"])
def test_sscam_equals_math(name):
    x = _x(name, 2)
    n_samples, sigma = 3, 0.5
    e = refcam.explain(
        toy_model(name),
        x,
        "sscam",
        n_samples=n_samples,
        std=sigma,
        seed=7,
        layout=LAYOUT.get(name),
    )
    o = Oracle(name)
    a, y = o.forward(x, e.layer.name)
    size = x.shape[1:-1] if o.nhwc else x.shape[2:]
    h = _masks(a, size)
    n, k = a.shape[:2]
    cls = y.argmax(1)
    total = np.zeros((n, k))
    for i in range(n_samples):
        # documented seeding: one generator per (seed, sample, channel, draw)
        noise = np.stack(
            [
                np.stack(
                    [np.random.default_rng([7, s, kk, i]).standard_normal(size) for kk in range(k)]
                )
                for s in range(n)
            ]
        )
        total += o.masked_logits(x, h + sigma * noise.astype(np.float32))[np.arange(n), :, cls]
    _close(e.maps, M.scorecam(a, total / n_samples, softmax=True))


@pytest.mark.parametrize("method", ["sscam", "iscam"])
def test_sscam_iscam_reproduced_bit_for_bit_by_the_math_floor(method):
    # explain(..., "sscam", seed=s) and sscam_masks(..., seed=s) + model runs + sscam (weights of
    # sscam_weights) agree bit for bit: same noise stream, same masked inputs, same reduction
    x = _x("cam", 2)
    m = Model(cam_net())
    opts = dict(n_samples=3, std=0.5, seed=11) if method == "sscam" else dict(n_steps=3)
    e = refcam.explain(m, x, method, **opts)
    a = e.arrays["activations"]
    h = M.scorecam_masks(a, (12, 12))
    if method == "sscam":
        masks = M.sscam_masks(h, 3, std=0.5, seed=11)
    else:
        masks = M.iscam_masks(h, 3)
    cls = e.targets[:, 0]
    scores = np.empty(masks.shape[:3], dtype=np.float32)
    for s in range(2):
        for i in range(3):
            y = m.run(x[s][None] * masks[s, i][:, None], batch_size=a.shape[1])[m.output_name]
            scores[s, i] = y[:, cls[s]]  # score="logit" (the SS-CAM / IS-CAM default)
    weights = (M.sscam_weights if method == "sscam" else M.iscam_weights)(scores, softmax=True)
    np.testing.assert_array_equal(e.maps, getattr(M, method)(a, scores, softmax=True))
    np.testing.assert_array_equal(e.maps, M.relu(M.weighted_sum(a, weights)))


@pytest.mark.parametrize("name", ["cam", "resnet", "dynamic"])
def test_iscam_equals_math(name):
    x = _x(name, 2)
    e = refcam.explain(toy_model(name), x, "iscam", n_steps=4)
    o = Oracle(name)
    a, y = o.forward(x, e.layer.name)
    h = _masks(a, x.shape[2:])
    cls = y.argmax(1)
    gammas = [0.25, 0.75, 1.5, 2.5]  # 1/4, 1/4+2/4, +3/4, +4/4
    s = np.mean([o.masked_logits(x, g * h)[np.arange(2), :, cls] for g in gammas], axis=0)
    _close(e.maps, M.scorecam(a, s, softmax=True))
    lin = refcam.explain(toy_model(name), x, "iscam", n_steps=4, schedule="linear", softmax=False)
    s = np.mean(
        [o.masked_logits(x, g * h)[np.arange(2), :, cls] for g in [0.25, 0.5, 0.75, 1.0]], axis=0
    )
    _close(lin.maps, M.scorecam(a, s))


# ------------------------------------------------------------------------------------ Ablation-CAM
@pytest.mark.parametrize("name", CAM_ZOO)
def test_ablationcam_equals_math_gap_linear(name):
    # with a GAP -> linear head, ablating channel k changes y^c by exactly w^c_k mean(A^k)
    x = _x(name, 2)
    e = refcam.explain(toy_model(name), x, "ablationcam", layout=LAYOUT.get(name))
    o = Oracle(name)
    a, y = o.forward(x, e.layer.name)
    head = Model(toy_model(name), layout=LAYOUT.get(name, "NCHW")).linear_head(e.layer.name)
    cls = y.argmax(1)
    yc = y[np.arange(2), cls].astype(np.float64)
    gap = a.reshape(2, a.shape[1], -1).astype(np.float64).mean(-1)
    ablated = yc[:, None] - head.weight[cls] * gap  # y^c_k
    _close(e.arrays["ablated_scores"][:, 0], ablated, rtol=1e-4)
    _close(e.maps, M.ablationcam(a, ablated, yc), rtol=1e-3)


@pytest.mark.parametrize("name", ["vgg", "resnet", "mobilenet"])
def test_ablationcam_nonlinear_heads(name, tmp_path):
    x = _x(name, 2)
    e = refcam.explain(toy_model(name), x, "ablationcam", ablation_value=-1.0)
    o = Oracle(name)
    a, y = o.forward(x, e.layer.name)
    # the head cut independently with onnx.utils.extract_model + ReferenceEvaluator
    path = tmp_path / "m.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(toy_model(name)), path)
    onnx.utils.extract_model(str(path), str(tmp_path / "h.onnx"), [e.layer.name], ["logits"])
    ref = ReferenceEvaluator(onnx.load(tmp_path / "h.onnx"))
    n, k = a.shape[:2]
    abl = np.repeat(a[:, None], k, axis=1)  # (N, K, K, *S)
    abl[:, np.arange(k), np.arange(k)] = -1.0
    (yk,) = ref.run(None, {e.layer.name: abl.reshape(n * k, *a.shape[1:])})
    cls = y.argmax(1)
    yk = yk.reshape(n, k, -1)[np.arange(n), :, cls]
    yc = ref.run(None, {e.layer.name: a})[0][np.arange(n), cls]
    _close(e.maps, M.ablationcam(a, yk, yc), rtol=1e-3)


# ------------------------------------------------------------------------------------ Eigen-CAM
@pytest.mark.parametrize("name", sorted(ZOO))
def test_eigencam_equals_math(name):
    x = _x(name, 2)
    e = refcam.explain(toy_model(name), x, "eigencam", layout=LAYOUT.get(name))
    a, _ = Oracle(name).forward(x, e.layer.name)
    _close(e.maps, M.eigencam(a), rtol=1e-4)
    assert e.targets is None and e.scores is None


# ------------------------------------------------------------------------------------ explain()
def test_topk_stacks_targets():
    x = _x("cam", 2)
    e = refcam.explain(cam_net(), x, "cam", target=TopK(2))
    assert e.maps.shape == (2, 2, 12, 12)
    for t in range(2):
        single = refcam.explain(cam_net(), x, "cam", target=list(e.targets[:, t]))
        np.testing.assert_array_equal(e.maps[:, t], single.maps)


def test_chunking_and_budget_do_not_change_numbers():
    x = _x("resnet", 2)
    ref = refcam.explain(toy_model("resnet"), x, "scorecam")
    for kw in (dict(batch_size=1), dict(memory_budget=1), dict(batch_size=5, memory_budget=10**9)):
        e = refcam.explain(toy_model("resnet"), x, "scorecam", **kw)
        np.testing.assert_allclose(e.maps, ref.maps, rtol=1e-5, atol=1e-6)
    a = refcam.explain(toy_model("resnet"), x, "ablationcam", memory_budget=1)
    b = refcam.explain(toy_model("resnet"), x, "ablationcam")
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-6)


def test_progress_bar(capsys):
    refcam.explain(cam_net(), _x("cam", 1), "scorecam", progress=True)
    assert "score-cam forwards" in capsys.readouterr().err
    refcam.explain(cam_net(), _x("cam", 1), "scorecam", progress=False)
    assert capsys.readouterr().err == ""


def test_layer_by_module_path_and_model_object():
    m = Model(toy_model("resnet"))
    x = _x("resnet")
    e = refcam.explain(m, x, "eigencam", layer="layer1")
    assert e.layer.name == "relu_2" and e.maps.shape == (2, 16, 16)
    up = e.upsampled()
    assert up.shape == (2, 16, 16)


def test_explain_errors():
    x = _x("cam")
    with pytest.raises(InvalidArgumentError, match=r"method: got 'scorcam'.*closest: scorecam"):
        refcam.explain(cam_net(), x, "scorcam")
    with pytest.raises(InvalidArgumentError, match="no such option for 'cam'"):
        refcam.explain(cam_net(), x, "cam", std=1.0)
    with pytest.raises(InvalidArgumentError, match="upsample_mode"):
        refcam.explain(cam_net(), x, "scorecam", upsample_mode="cubic")
    with pytest.raises(InvalidArgumentError, match="n_samples"):
        refcam.explain(cam_net(), x, "sscam", n_samples=0)
    with pytest.raises(InvalidArgumentError, match="baseline"):
        refcam.explain(cam_net(), x, "scorecam", baseline="blur")
    with pytest.raises(InvalidArgumentError, match="relu"):
        refcam.explain(cam_net(), x, "cam", relu="yes")
    with pytest.raises(InvalidArgumentError, match="class-agnostic"):
        refcam.explain(cam_net(), x, "eigencam", target=1)
    with pytest.raises(LayerNotFoundError, match="closest: 'features'"):
        refcam.explain(cam_net(), x, "eigencam", layer="feature")
    with pytest.raises(ShapeError, match="not a spatial activation"):
        refcam.explain(cam_net(), x, "eigencam", layer="flat")
    with pytest.raises(TargetError, match="out of range"):
        refcam.explain(cam_net(), x, "scorecam", target=5)
    with pytest.raises(TargetError, match="got 3 per-sample target"):
        refcam.explain(cam_net(), x, "ablationcam", target=[0, 1, 2])
    with pytest.raises(ShapeError, match=r"inputs: got shape \(2, 3, 11, 12\)"):
        refcam.explain(cam_net(), x[:, :, :11], "cam")
    with pytest.raises(ModelError, match="does not exist"):
        refcam.explain("/nonexistent/model.onnx", x, "cam")


def test_registry_is_data_and_extensible():
    m = get_method("Score-CAM")
    assert m is METHODS["scorecam"] and m.math is M.scorecam
    assert "Wang" in m.paper and "Definition" in m.equation
    for meth in METHODS.values():
        assert meth.paper and meth.equation
        # layer methods consume the activations; input-gradient methods resolve no layer
        assert ("activations" in meth.needs) == meth.layered, meth.name
    from refcam.methods import NEEDS, Method, Need, register_method, register_need

    register_need(Need("doubled", lambda ctx: 2 * ctx.need("activations"), "test need"))
    register_method(
        Method(
            name="testcam",
            needs=("doubled",),
            math=M.eigencam,
            compute=lambda ctx, t: M.eigencam(ctx.need("doubled")),
            paper="nobody",
            equation="none",
            targeted=False,
        )
    )
    try:
        x = _x("cam")
        e = refcam.explain(cam_net(), x, "testcam")
        np.testing.assert_allclose(
            e.maps, 2 * refcam.explain(cam_net(), x, "eigencam").maps, rtol=1e-6
        )
        with pytest.raises(InvalidArgumentError, match="not registered yet"):
            register_need(Need("doubled", lambda ctx: None, ""))
    finally:
        NEEDS.pop("doubled")
        METHODS.pop("testcam")


def test_import_refcam_does_not_import_onnx():
    code = (
        "import sys, refcam; assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules; "
        "f = refcam.explain; assert callable(f) and 'onnxruntime' in sys.modules; "
        "import refcam.explanation; assert callable(refcam.explain)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scorecam_torchcam_mask_convention():
    # torchcam: normalise at feature resolution (eps 1e-8), then upsample half-pixel 8x8 -> 16x16;
    # channel softmax of the raw logits
    x = _x("resnet", 2)
    e = refcam.explain(
        toy_model("resnet"),
        x,
        "scorecam",
        score="logit",
        softmax=True,
        mask_order="normalize-then-upsample",
        mask_eps=1e-8,
    )
    o = Oracle("resnet")
    a, y = o.forward(x, "relu_4")
    lo = a.min(axis=(2, 3), keepdims=True)
    hi = a.max(axis=(2, 3), keepdims=True)
    h = M.upsample((a - lo) / (hi - lo + 1e-8), (16, 16), "linear")
    cls = y.argmax(1)
    s = o.masked_logits(x, h)[np.arange(2), :, cls]
    _close(e.maps, M.scorecam(a, s, softmax=True))
    # the other order gives different masks here, hence (slightly) different scores
    p = refcam.explain(toy_model("resnet"), x, "scorecam", score="logit", softmax=True)
    assert not np.allclose(p.arrays["masked_scores"], e.arrays["masked_scores"], rtol=1e-6, atol=0)
    with pytest.raises(InvalidArgumentError, match="mask_order"):
        refcam.explain(toy_model("resnet"), x, "scorecam", mask_order="both")


def test_scorecam_callable_target_per_sample():
    # per-sample targets: a class index for sample 0, a callable (probability of class 3) for 1
    x = _x("cam", 2)

    def prob3(out):
        return _softmax(out)[:, 3]

    e = refcam.explain(cam_net(), x, "scorecam", target=[1, prob3], score="logit")
    o = Oracle("cam")
    a, y = o.forward(x, "features")
    logits = o.masked_logits(x, _masks(a, (12, 12)))
    s = np.stack([logits[0, :, 1], _softmax(logits[1])[:, 3]])
    _close(e.arrays["masked_scores"][:, 0], s, rtol=1e-4)
    _close(e.maps, M.scorecam(a, s))
    assert e.targets is None  # callables have no class index
    _close(e.scores[:, 0], np.array([y[0, 1], _softmax(y[1])[3]]))


def test_segmentation_callable_target_mask_sum():
    # "how much does each region support class 1 inside the top-left quadrant": a mask-sum target
    x = _x("segmentation", 2)

    def region(out):
        return out[:, 1, :6, :6].sum(axis=(1, 2))

    o = Oracle("segmentation")
    a, y = o.forward(x, "features")
    s = (
        o.masked_logits(x.copy(), _masks(a, (12, 12)))
        .reshape(2, 6, 3, 12, 12)[:, :, 1, :6, :6]
        .sum((-1, -2))
    )
    e = refcam.explain(toy_model("segmentation"), x, "scorecam", target=region, score="logit")
    assert e.layer.name == "features"
    _close(e.maps, M.scorecam(a, s))
    _close(e.scores[:, 0], y[:, 1, :6, :6].sum((1, 2)))
    ab = refcam.explain(toy_model("segmentation"), x, "ablationcam", target=region)
    assert ab.maps.shape == (2, 12, 12)
    with pytest.raises(TargetError, match="callable target"):
        refcam.explain(toy_model("segmentation"), x, "scorecam")
    with pytest.raises(ModelError, match="not by global average pooling"):
        refcam.explain(toy_model("segmentation"), x, "cam", target=region)


def test_explanation_arrays_reproduce_maps_exactly():
    # "a user can reproduce any number": the math floor on Explanation.arrays gives the maps bit for bit
    x = _x("resnet", 2)
    m = Model(toy_model("resnet"))
    e = refcam.explain(m, x, "scorecam", baseline="zeros")
    a = e.arrays["activations"]
    want = M.scorecam(
        a, e.arrays["masked_scores"][:, 0], baseline_score=e.arrays["baseline_scores"][:, 0]
    )
    np.testing.assert_array_equal(e.maps, want)
    e = refcam.explain(m, x, "ablationcam")
    want = M.ablationcam(
        a, e.arrays["ablated_scores"][:, 0], e.arrays["ablation_base_scores"][:, 0]
    )
    np.testing.assert_array_equal(e.maps, want)
    e = refcam.explain(m, x, "cam", target=TopK(2))
    for t in range(2):
        np.testing.assert_array_equal(e.maps[:, t], M.cam(a, e.arrays["class_weights"][:, t]))
    assert e.options == {"relu": False} and e.method == "cam" and e.input_size == (16, 16)


def test_eigencam_component_option_reaches_the_math():
    x = _x("cam", 2)
    e = refcam.explain(cam_net(), x, "eigencam", component=2)
    np.testing.assert_array_equal(e.maps, M.eigencam(e.arrays["activations"], component=2))
    assert not np.allclose(e.maps, refcam.explain(cam_net(), x, "eigencam").maps)
    with pytest.raises(InvalidArgumentError, match="component"):
        refcam.explain(cam_net(), x, "eigencam", component=0)


def _dead_channel_net() -> onnx.ModelProto:
    """Conv(3 -> 6) + ReLU + GAP + Gemm, channels 1 and 4 dead (zero weights, negative bias)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    b = rng.random(6).astype(np.float32)
    w[[1, 4]] = 0.0
    b[[1, 4]] = -1.0
    fc = rng.standard_normal((4, 6)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["pre"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["pre"], ["feat"]),
         helper.make_node("GlobalAveragePool", ["feat"], ["gap"]),
         helper.make_node("Flatten", ["gap"], ["flat"]),
         helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)],
        "dead", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), numpy_helper.from_array(fc, "fc")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("method, draws", [("scorecam", None), ("iscam", 3)])
def test_masked_scores_run_identical_zero_masks_once(method, draws):
    # dead channels have all-zero masks, hence the same masked input X_s * 0: it runs once per
    # sample (over every chunk and draw) and every dead channel gets its scores, bit for bit the
    # scores of running each masked input
    m = Model(_dead_channel_net())
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    rows = []
    run = m.run
    def counted(xm, *args, **kw):  # the masked runs ask for the output only (no names)
        if not args and "names" not in kw:
            rows.append(len(xm))
        return run(xm, *args, **kw)

    m.run = counted
    opts = {} if draws is None else {"n_steps": draws}
    e = refcam.explain(m, x, method, score="logit", batch_size=2, progress=False, **opts)
    a = e.arrays["activations"]
    assert (a[:, [1, 4]] == 0).all() and (a.reshape(2, 6, -1).max(-1)[:, [0, 2, 3, 5]] > 0).all()
    n_draws = draws or 1
    assert sum(rows) == 2 * (4 * n_draws + 1)  # live channels x draws, + one dead mask per sample
    h = M.scorecam_masks(a, (8, 8))
    assert (h[:, [1, 4]] == 0).all()
    masks = h[:, None] if draws is None else M.iscam_masks(h, draws)
    cls = e.targets[:, 0]
    want = np.stack([np.stack([run(x[s][None] * masks[s, i][:, None], batch_size=6)[m.output_name][:, cls[s]]
                               for i in range(n_draws)]) for s in range(2)])  # (N, draws, K)
    got = e.arrays[{"scorecam": "masked_scores", "iscam": "scaled_masked_scores"}[method]][:, 0]
    np.testing.assert_array_equal(got, want[:, 0] if draws is None else want)
