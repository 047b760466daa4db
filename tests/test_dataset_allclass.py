"""target="all" / per-image class lists (refcam.allclass): oracle = the single-class explain loop."""

import numpy as np
import pytest

import refcam
from refcam._compare import within
from refcam.errors import InvalidArgumentError, ModelError, TargetError
from refcam.onnx.toy_models import cam_net, vgg_like


def _x(n=3, size=12, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("method", ["cam", "gradcam"])
@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_all_classes_equal_single_class_loop(method, head):
    model, x = cam_net(head=head), _x()
    e = refcam.explain(model, x, method, target="all")
    n_classes = e.outputs.shape[1]
    assert e.maps.shape == (3, n_classes) + e.maps.shape[2:]
    assert e.maps.dtype == np.float32
    assert (e.targets == np.arange(n_classes)).all()
    for c in range(n_classes):
        one = refcam.explain(model, x, method, target=c)
        scale = float(np.abs(one.maps).max())
        assert within(e.maps[:, c], one.maps, atol=1e-5 * scale, rtol=1e-5), c
        assert within(e.scores[:, c], one.scores[:, 0], atol=1e-6, rtol=1e-6)


def test_gradcam_all_hand_computed():
    """Grad-CAM on GAP → linear = ReLU(Σ_k w^c_k A^k) / Z, written out with the head weights."""
    model, x = cam_net(), _x(2)
    e = refcam.explain(model, x, "gradcam", target="all")
    a = e.arrays["activations"].astype(np.float64)
    w = np.asarray(e.arrays["linear_weights"], np.float64)
    z = a.shape[2] * a.shape[3]
    want = np.maximum(np.einsum("nkhw,ck->nchw", a, w), 0) / z
    assert within(e.maps, want, atol=1e-6 * np.abs(want).max(), rtol=1e-6)


def test_ragged_class_lists_padded_and_equal_loop():
    model, x = cam_net(), _x(3)
    lists = [[4], [0, 2], [1, 3, 4]]
    e = refcam.explain(model, x, "cam", target=lists, relu=True)
    assert e.maps.shape[:2] == (3, 3)
    assert e.targets.tolist() == [[4, -1, -1], [0, 2, -1], [1, 3, 4]]
    assert np.isnan(e.maps[0, 1:]).all() and np.isnan(e.scores[0, 1:]).all()
    for i, row in enumerate(lists):
        for t, c in enumerate(row):
            one = refcam.explain(model, x[i : i + 1], "cam", target=c, relu=True)
            assert within(e.maps[i, t], one.maps[0], atol=1e-5 * np.abs(one.maps).max(), rtol=1e-5)


def test_float64_in_float64_out():
    from refcam.onnx import load

    e = refcam.explain(cam_net(), _x(2), "cam", target="all")
    assert e.maps.dtype == e.arrays["activations"].dtype


@pytest.mark.parametrize("method", ["scorecam", "gradcampp", "eigencam", "saliency"])
def test_other_methods_refused(method):
    with pytest.raises((InvalidArgumentError, TargetError), match="all|class-agnostic"):
        refcam.explain(cam_net(), _x(1), method, target="all")


def test_other_head_refused_clearly():
    # vgg_like: Flatten → Gemm stack, no GAP → linear head after the last conv block
    with pytest.raises(ModelError, match="GAP → linear head"):
        refcam.explain(vgg_like(), np.zeros((1, 3, 16, 16), np.float32), "cam", target="all")


def test_bad_class_lists():
    with pytest.raises(TargetError, match="out of range"):
        refcam.explain(cam_net(), _x(2), "cam", target=[[0], [9]])
    with pytest.raises(TargetError, match="2 class lists|class lists"):
        refcam.explain(cam_net(), _x(3), "cam", target=[[0], [1]])
    with pytest.raises(TargetError, match="empty"):
        refcam.explain(cam_net(), _x(2), "cam", target=[[0], []])
