"""Cascading / independent randomisation of ONNX initializers (Adebayo et al. 2018) and the driver."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from refcam.errors import InvalidArgumentError, LayerNotFoundError, ModelError
from refcam.metrics import model_randomization_test
from refcam.onnx import Model
from refcam.onnx.randomize import parameter_layers, randomize_initializers, truncated_normal_like
from refcam.onnx.toy_models import cam_net, resnet_like, toy_model


def params(proto):
    out = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def changed(a, b):
    pa, pb = params(a), params(b)
    return sorted(k for k in pa if not np.array_equal(pa[k], pb[k]))


def test_cascading_randomises_top_down_cumulatively_with_stable_values():
    m = cam_net()
    steps = randomize_initializers(m, mode="cascading", seed=3)
    assert [s for s, _ in steps] == ["logits", "conv2", "conv1"]
    assert changed(m, steps[0][1]) == ["fc.bias", "fc.weight"]
    assert changed(m, steps[1][1]) == ["conv2.bias", "conv2.weight", "fc.bias", "fc.weight"]
    assert len(changed(m, steps[2][1])) == 6
    # a layer keeps its random values in later steps
    np.testing.assert_array_equal(
        params(steps[0][1])["fc.weight"], params(steps[2][1])["fc.weight"]
    )
    # the input model is never modified
    assert changed(m, cam_net()) == []


def test_independent_and_explicit_layers_and_aliases():
    m = toy_model("cam_matmul")
    steps = randomize_initializers(
        m, ["logits", "conv1"], mode="independent", seed=0
    )  # 'logits' = Add alias
    assert [s for s, _ in steps] == ["fc_mm", "conv1"]
    assert changed(m, steps[0][1]) == ["fc.bias", "fc.weight_t"]
    assert changed(m, steps[1][1]) == ["conv1.bias", "conv1.weight"]
    ind = randomize_initializers(cam_net(), mode="independent", seed=3)
    cas = randomize_initializers(cam_net(), mode="cascading", seed=3)
    np.testing.assert_array_equal(
        params(ind[2][1])["conv1.weight"], params(cas[2][1])["conv1.weight"]
    )


def test_batchnorm_statistics_untouched_and_constant_nodes():
    m = resnet_like()
    bn = next(p for p in parameter_layers(m) if p.op_type == "BatchNormalization")
    steps = randomize_initializers(m, [bn.name], seed=1)
    assert changed(m, steps[0][1]) == sorted(bn.tensors)  # gamma/beta only, not mean/var
    c = toy_model("constant")
    steps = randomize_initializers(c, ["conv1"], seed=1)
    assert len(changed(c, steps[0][1])) == 2  # Constant-node weights replaced


def test_values_truncated_normal_with_tensor_scale_and_models_run():
    rng = np.random.default_rng(0)
    v = rng.normal(0.3, 2.0, size=20000).astype(np.float32)
    z = truncated_normal_like(v, np.random.default_rng(1))
    s = float(v.std())
    assert z.dtype == np.float32 and np.abs(z).max() <= 2 * s * (1 + 1e-6)
    # std of N(0,1) truncated to +-2: sqrt(1 - 2*2*phi(2)/(2*Phi(2)-1)) = 0.8796
    assert abs(z.std() / s - 0.8796) < 0.01
    np.testing.assert_array_equal(
        truncated_normal_like(np.full(4, -3.0), np.random.default_rng(2)).shape, (4,)
    )
    assert np.abs(truncated_normal_like(np.full(1000, -3.0), np.random.default_rng(2))).max() <= 6.0
    x = rng.random((2, 3, 12, 12)).astype(np.float32)
    for _, p in randomize_initializers(cam_net(), seed=0):
        out = Model(p).run(x)
        assert np.isfinite(next(iter(out.values()))).all()
    a = randomize_initializers(cam_net(), seed=5)
    b = randomize_initializers(cam_net(), seed=5)
    assert all(changed(pa, pb) == [] for (_, pa), (_, pb) in zip(a, b))
    assert changed(a[0][1], randomize_initializers(cam_net(), seed=6)[0][1]) != []


def test_errors():
    with pytest.raises(LayerNotFoundError, match="conv9"):
        randomize_initializers(cam_net(), ["conv9"])
    with pytest.raises(InvalidArgumentError, match="mode"):
        randomize_initializers(cam_net(), mode="cascade")
    with pytest.raises(InvalidArgumentError, match="seed"):
        randomize_initializers(cam_net(), seed=-1)
    with pytest.raises(InvalidArgumentError, match="layers"):
        randomize_initializers(cam_net(), ["conv1", "conv1"])
    with pytest.raises(InvalidArgumentError, match="model"):
        randomize_initializers(3.5)
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    with pytest.raises(ModelError, match="no parameter layers"):
        randomize_initializers(onnx.helper.make_model(g))


def test_driver_end_to_end_cam_on_onnx():
    x = np.random.default_rng(0).random((3, 3, 12, 12)).astype(np.float32)

    def cam(proto):
        # CAM (Zhou et al. 2016): sum_k w_k^c A^k for the top-1 class of the original model
        model = Model(proto)
        fw = model.forward(x, ["features"])
        w = model.linear_head("features").weight  # (C, K)
        return np.einsum("nk,nkhw->nhw", w[top], fw.activations["features"])

    top = Model(cam_net()).run(x)["logits"].argmax(axis=1)
    r = model_randomization_test(cam, cam_net(), mode="cascading", seed=0, progress=False)
    assert r.labels == ("logits", "conv2", "conv1")
    assert r.spearman.shape == (3, 3) and np.all(r.spearman_abs < 1.0)
    assert r.passes  # CAM depends on the weights: mean Spearman(abs) 0.10 after the full cascade
    # an explanation that ignores the model (edge detector) fails the same test
    edge = model_randomization_test(
        lambda p: np.abs(np.diff(x[:, 0], axis=1, prepend=0)), cam_net(), seed=0, progress=False
    )
    assert not edge.passes
    np.testing.assert_array_equal(edge.spearman_abs, 1.0)
