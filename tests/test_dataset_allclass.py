"""target="all" / per-image class lists (refcam.allclass): oracle = the single-class explain loop."""

import numpy as np
import pytest

import refcam
from refcam._compare import within
from refcam.errors import InvalidArgumentError, ModelError, TargetError
from refcam.onnx.toy_models import cam_net, resnet_like, vgg_like


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


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "eigencam", "saliency"])
def test_other_methods_refused(method):
    with pytest.raises((InvalidArgumentError, TargetError), match="all|class-agnostic"):
        refcam.explain(cam_net(), _x(1), method, target="all")


def test_cam_on_other_head_refused_clearly():
    # vgg_like: Flatten → Gemm stack, no GAP → linear head after the last conv block
    with pytest.raises(ModelError, match="GAP → linear head"):
        refcam.explain(vgg_like(), np.zeros((1, 3, 16, 16), np.float32), "cam", target="all")


def test_non_vjp_gradient_source_refused():
    with pytest.raises(InvalidArgumentError, match="vjp"):
        refcam.explain(cam_net(), _x(1), "gradcam", target="all", gradient_source="fd")


@pytest.mark.parametrize("make", [vgg_like, resnet_like, cam_net])
@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"])
def test_head_backprop_equals_single_class_loop(make, method):
    """Other heads / other layer-gradient methods: gradients through the head only, all class
    seeds stacked in one batched run; oracle = the single-class explain (full-model VJP)."""
    model = make()
    size = 12 if make is cam_net else 16
    x = _x(2, size=size, seed=1)
    e = refcam.explain(model, x, method, target="all")
    n_classes = e.outputs.shape[1]
    assert e.maps.shape[:2] == (2, n_classes)
    for c in range(n_classes):
        one = refcam.explain(model, x, method, target=c)
        scale = max(float(np.abs(one.maps).max()), 1e-30)
        assert within(e.maps[:, c], one.maps, atol=1e-5 * scale, rtol=1e-5), c


def test_head_backprop_is_one_batched_run(monkeypatch):
    import refcam.autodiff as ad

    calls = []
    real = ad.gradients

    def counting(model, inputs, *a, **k):
        calls.append(len(inputs))
        return real(model, inputs, *a, **k)

    monkeypatch.setattr(ad, "gradients", counting)
    e = refcam.explain(vgg_like(), _x(3, size=16), "gradcam", target=[[1, 2], [2], [7, 1, 2]])
    assert calls == [3 * 3]  # one run: 3 images × the 3 distinct classes requested
    assert e.targets.tolist() == [[1, 2, -1], [2, -1, -1], [7, 1, 2]]
    assert np.isnan(e.maps[1, 1:]).all()
    one = refcam.explain(vgg_like(), _x(3, size=16)[2:], "gradcam", target=7)
    assert within(e.maps[2, 0], one.maps[0], atol=1e-6, rtol=1e-5)


def test_bad_class_lists():
    with pytest.raises(TargetError, match="out of range"):
        refcam.explain(cam_net(), _x(2), "cam", target=[[0], [9]])
    with pytest.raises(TargetError, match="2 class lists|class lists"):
        refcam.explain(cam_net(), _x(3), "cam", target=[[0], [1]])
    with pytest.raises(TargetError, match="empty"):
        refcam.explain(cam_net(), _x(2), "cam", target=[[0], []])


# ------------------------------------------------------------------ streaming in blocks of classes
@pytest.mark.parametrize("make,method", [(cam_net, "cam"), (cam_net, "gradcam"),
                                         (vgg_like, "gradcam"), (resnet_like, "gradcampp")])
def test_iter_class_maps_equals_one_shot(make, method):
    from refcam.allclass import iter_class_maps

    model = make(num_classes=7) if make is cam_net else make()
    x = _x(2, size=12 if make is cam_net else 16, seed=3)
    e = refcam.explain(model, x, method, target="all")
    chunks = list(iter_class_maps(model, x, method, chunk=3))
    n_classes = e.outputs.shape[1]
    assert [len(c.classes) for c in chunks] == [3] * (n_classes // 3) + (
        [n_classes % 3] if n_classes % 3 else [])
    assert np.concatenate([c.classes for c in chunks]).tolist() == list(range(n_classes))
    maps = np.concatenate([c.maps for c in chunks], axis=1)
    assert maps.dtype == e.maps.dtype and maps.shape == e.maps.shape
    scale = float(np.abs(e.maps).max())
    assert within(maps, e.maps, atol=1e-6 * scale, rtol=1e-6)
    assert within(np.concatenate([c.scores for c in chunks], axis=1), e.scores, atol=0)


def test_explain_classes_into_memmap_and_zarr_equal_one_shot(tmp_path):
    from refcam.allclass import explain_classes_into
    from refcam.errors import ShapeError

    model, x = cam_net(num_classes=9), _x(3, seed=4)
    e = refcam.explain(model, x, "gradcam", target="all")
    mm = np.lib.format.open_memmap(tmp_path / "maps.npy", mode="w+", dtype=np.float32,
                                   shape=e.maps.shape)
    cls, scores = explain_classes_into(mm, model, x, "gradcam", chunk=4)
    mm.flush()
    assert cls.tolist() == list(range(9)) and within(scores, e.scores, atol=0)
    assert within(np.load(tmp_path / "maps.npy"), e.maps, atol=1e-6 * np.abs(e.maps).max(),
                  rtol=1e-6)
    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(str(tmp_path / "m.zarr"), shape=(3, 4) + e.maps.shape[2:],
                          chunks=(3, 2) + e.maps.shape[2:], dtype="float32")
    cls, _ = explain_classes_into(z, model, x, "cam", classes=[8, 0, 5, 2], chunk=2)
    one = refcam.explain(model, x, "cam", target="all")
    assert cls.tolist() == [8, 0, 5, 2]
    assert within(z[:], one.maps[:, [8, 0, 5, 2]], atol=1e-6 * np.abs(one.maps).max(), rtol=1e-6)
    with pytest.raises(ShapeError, match="out"):
        explain_classes_into(np.zeros((3, 5) + e.maps.shape[2:], np.float32), model, x, "cam")
    with pytest.raises(InvalidArgumentError, match="chunk"):
        next(refcam.allclass.iter_class_maps(model, x, "cam", chunk=0))
    with pytest.raises(InvalidArgumentError, match="method"):
        next(refcam.allclass.iter_class_maps(model, x, "saliency"))


def test_streamed_classes_memory_is_bounded_by_the_block():
    """tracemalloc (NumPy reports its buffers): writing 400 classes into a memmap in blocks of 8
    peaks far below the (N, C, h, w) result that the one-shot path allocates (twice: float64
    product, then the output)."""
    import tracemalloc

    from refcam.allclass import iter_class_maps

    model, x = cam_net(num_classes=400, channels=4, size=24), _x(4, size=24, seed=5)
    result = 4 * 400 * 24 * 24 * 8  # the float64 (N, C, h, w) product of the one-shot path
    it = iter_class_maps(model, x, "cam", chunk=8)
    first = next(it)  # the forward run, sessions and head lookup happen before the measurement
    tracemalloc.start()
    for ch in it:
        del ch
    _, peak_stream = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracemalloc.start()
    refcam.explain(model, x, "cam", target="all")
    _, peak_shot = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    block = 4 * 8 * 24 * 24 * 8
    assert first.maps.shape == (4, 8, 24, 24)
    assert peak_shot >= result
    assert peak_stream <= 4 * block < result / 10


def test_explain_many_one_forward_equals_separate_explains(monkeypatch):
    """Grad-CAM top-1, CAM of all classes and Grad-CAM TopK(2) from one forward run; each equals
    its own refcam.explain (Grad-CAM there by a full-model VJP)."""
    from refcam.allclass import explain_many
    from refcam.onnx import Model, load

    m, x = load(cam_net(num_classes=6)), _x(3, seed=6)
    li = m.spatial_layer(None)
    runs = []
    real = Model.forward
    monkeypatch.setattr(Model, "forward", lambda self, *a, **k: (runs.append(1), real(self, *a, **k))[1])
    es = explain_many(m, x, li, [("gradcam", None, {}), ("cam", "all", {}),
                                 ("gradcam", refcam.onnx.TopK(2), {"relu": False})])
    assert len(runs) == 1
    monkeypatch.setattr(Model, "forward", real)
    for e, (method, target, opts) in zip(es, [("gradcam", None, {}), ("cam", "all", {}),
                                              ("gradcam", refcam.onnx.TopK(2), {"relu": False})]):
        one = refcam.explain(m, x, method, target=target, **opts)
        assert e.maps.shape == one.maps.shape and (e.targets == one.targets).all()
        scale = float(np.abs(one.maps).max())
        assert within(e.maps, one.maps, atol=1e-5 * scale, rtol=1e-5), method
        assert within(e.scores, one.scores, atol=1e-6, rtol=1e-6)
