"""refcam.explain_dataset: Zarr store, manifest, failures, resume (single process)."""

import json

import numpy as np
import pytest

from refcam._compare import within
from refcam.dataset import DONE, FAILED, explain_dataset, read_items
from refcam.errors import InvalidArgumentError
from refcam.onnx.toy_models import cam_net

zarr = pytest.importorskip("zarr")
PIL = pytest.importorskip("PIL.Image")


def make_images(folder, n=7, corrupt=(3,), side=20, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = folder / f"im{i:03d}.png"
        if i in corrupt:
            p.write_bytes(b"this is not a png")
        else:
            PIL.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(p)
    return folder


@pytest.fixture
def model_file(tmp_path):
    import onnx

    p = tmp_path / "cam.onnx"
    onnx.save(cam_net(), p)
    return str(p)


def _inputs(model_file, paths):
    from refcam.onnx import load
    from refcam.zoo._images import load_inputs

    return np.concatenate([it.x for it in load_inputs(paths, load(model_file), crop_padding=0)])


@pytest.mark.parametrize("method,target", [("gradcam", "all"), ("cam", None), ("scorecam", 1)])
def test_store_equals_explain_and_corrupt_image_recorded(tmp_path, model_file, method, target):
    import refcam

    folder = make_images(tmp_path / "imgs")
    r = explain_dataset(model_file, folder, tmp_path / "out.zarr", method, target=target,
                        batch_size=3, crop_padding=0, progress=False)
    assert (r.n_items, r.n_done, r.n_failed, r.computed) == (7, 6, 1, [0, 1, 2])
    g = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    st = g["status"][:]
    assert st.tolist() == [DONE] * 3 + [FAILED] + [DONE] * 3
    assert np.isnan(g["maps"][3]).all() and (g["targets"][3] == -1).all()
    fails = json.loads((tmp_path / "out.zarr" / "failures" / "1.json").read_text())
    assert list(fails) == [str(folder / "im003.png")] and "neither an image" in fails[str(folder / "im003.png")]
    ids = g["ids"][:].tolist()
    assert ids == [str(folder / f"im{i:03d}.png") for i in range(7)]
    good = [i for i in range(7) if i != 3]
    x = _inputs(model_file, [ids[i] for i in good])
    e = refcam.explain(model_file, x, method, target=target)
    maps = g["maps"][good]
    want = e.maps if e.maps.ndim == maps.ndim else e.maps[:, None]
    assert within(maps, want, atol=1e-6 * np.abs(want).max(), rtol=1e-6)
    assert within(g["scores"][good], e.scores, atol=1e-6, rtol=1e-6)
    assert (g["targets"][good] == e.targets).all()
    man = json.loads((tmp_path / "out.zarr" / "manifest.json").read_text())
    assert man["method"] == method and man["n_items"] == 7 and len(man["model_sha256"]) == 64
    assert "refcam_version" in man and man["batch_size"] == 3


def test_resume_skips_finished_chunks_and_refuses_other_runs(tmp_path, model_file):
    folder = make_images(tmp_path / "imgs", n=6, corrupt=())
    store = tmp_path / "s.zarr"
    explain_dataset(model_file, folder, store, "cam", batch_size=2, crop_padding=0)
    g = zarr.open_group(str(store), mode="r+")
    full = g["maps"][:]
    g["status"][2:4] = 0  # chunk 1 unfinished (as after a crash before its status landed)
    g["maps"][2:4] = np.nan
    r = explain_dataset(model_file, folder, store, "cam", batch_size=2, crop_padding=0)
    assert r.computed == [1] and r.n_done == 6
    assert np.array_equal(zarr.open_group(str(store), mode="r")["maps"][:], full)
    with pytest.raises(InvalidArgumentError, match="method"):
        explain_dataset(model_file, folder, store, "gradcam", batch_size=2, crop_padding=0)
    with pytest.raises(InvalidArgumentError, match="resume=False"):
        explain_dataset(model_file, folder, store, "cam", batch_size=2, crop_padding=0, resume=False)


def test_csv_labels_multilabel(tmp_path, model_file):
    import refcam

    folder = make_images(tmp_path / "imgs", n=3, corrupt=())
    csv = tmp_path / "list.csv"
    csv.write_text("path,classes\nimgs/im000.png,1 3\nimgs/im001.png,0\nimgs/im002.png,4;2;1\n")
    paths, labels = read_items(csv)
    assert labels == [[1, 3], [0], [4, 2, 1]] and paths[0] == str(tmp_path / "imgs" / "im000.png")
    r = explain_dataset(model_file, csv, tmp_path / "l.zarr", "cam", target="labels",
                        batch_size=2, crop_padding=0)
    assert r.n_done == 3
    g = zarr.open_group(str(tmp_path / "l.zarr"), mode="r")
    assert g["targets"][:].tolist() == [[1, 3, -1], [0, -1, -1], [4, 2, 1]]
    x = _inputs(model_file, paths[1:2])
    e = refcam.explain(model_file, x, "cam", target=0)
    assert within(g["maps"][1, 0], e.maps[0], atol=1e-6, rtol=1e-6)
    assert np.isnan(g["maps"][1, 1:]).all()


def test_glob_and_bad_arguments(tmp_path, model_file):
    folder = make_images(tmp_path / "imgs", n=2, corrupt=())
    paths, labels = read_items(str(folder / "*.png"))
    assert len(paths) == 2 and labels is None
    with pytest.raises(InvalidArgumentError, match="labels"):
        explain_dataset(model_file, folder, tmp_path / "x.zarr", "cam", target="labels")
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        explain_dataset(model_file, folder, tmp_path / "x.zarr", "cam", batch_size=0)
    with pytest.raises(InvalidArgumentError, match="items"):
        explain_dataset(model_file, str(tmp_path / "nothing-*.png"), tmp_path / "x.zarr", "cam")
    # a directory that is no store is never overwritten (e.g. --out pointing at the images)
    with pytest.raises(InvalidArgumentError, match="nothing is overwritten"):
        explain_dataset(model_file, folder, folder, "cam")
    assert sorted(p.name for p in folder.iterdir()) == ["im000.png", "im001.png"]


def test_cli_explain_dataset_and_resume(tmp_path, model_file, capsys):
    from refcam.cli import main

    folder = make_images(tmp_path / "imgs", n=5, corrupt=(1,))
    argv = ["explain-dataset", model_file, str(folder), "--out", str(tmp_path / "c.zarr"),
            "--method", "cam", "--target", "all", "--batch-size", "2", "--crop-padding", "0",
            "--no-progress", "--workers", "0"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "4 done, 1 failed of 5 (3 chunks computed now)" in out.out
    assert "failures" in out.err
    assert main(argv) == 0
    assert "(0 chunks computed now)" in capsys.readouterr().out
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert g["maps"].shape[:2] == (5, 5)
    assert main(argv[:-1] + ["--target", "nope"]) == 2
    capsys.readouterr()
    m_argv = ["explain-dataset", model_file, str(folder), "--out", str(tmp_path / "m.zarr"),
              "--method", "gradcam", "--metrics", "--workers", "0", "--crop-padding", "0",
              "--progress"]
    assert main(m_argv) == 0
    out = capsys.readouterr()
    assert "average drop" in out.out and "over 4 images" in out.out
    assert "img/s" in out.err  # the progress bar: images per second (and the ETA)
    p_argv = ["explain-dataset", model_file, str(folder), "--out", str(tmp_path / "p.zarr"),
              "--method", "gradcam", "--metrics", "deletion,insertion", "--metric-step", "100",
              "--workers", "0", "--crop-padding", "0", "--no-progress"]
    assert main(p_argv) == 0
    out = capsys.readouterr().out
    assert "deletion AUC" in out and "insertion AUC" in out and "average drop" not in out
    a_argv = ["explain-dataset", model_file, str(folder), "--out", str(tmp_path / "a.zarr"),
              "--method", "gradcam", "--also", "cam:all", "--also", "gradcam:top2",
              "--workers", "0", "--crop-padding", "0", "--no-progress"]
    assert main(a_argv) == 0
    g = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    assert g["also/cam_all/maps"].shape[:2] == (5, 5) and g["also/gradcam_top2/targets"].shape == (5, 2)


def test_confidence_metrics_over_the_stream(tmp_path, model_file):
    import refcam
    from refcam.metrics import confidence as C
    from refcam.metrics.models import model_score_fn
    from refcam.onnx import load

    folder = make_images(tmp_path / "imgs", n=5, corrupt=(2,))
    r = explain_dataset(model_file, folder, tmp_path / "m.zarr", "gradcam", batch_size=2,
                        crop_padding=0, metrics=True)
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    good = [0, 1, 3, 4]
    ids = g["ids"][:].tolist()
    x = _inputs(model_file, [ids[i] for i in good])
    e = refcam.explain(model_file, x, "gradcam")
    want = C.confidence_metrics(model_score_fn(load(model_file), probabilities=True), x, e.maps,
                                e.targets[:, 0], resize="linear", progress=False)
    yo = g["confidence"][:]
    assert np.isnan(yo[2]).all()
    assert within(yo[good, 0], want.full_scores, atol=1e-6, rtol=1e-5)
    assert within(yo[good, 1], want.explanation_scores, atol=1e-6, rtol=1e-5)
    assert r.metrics["n"] == 4
    assert within(r.metrics["average_drop"], want.average_drop, atol=1e-4, rtol=1e-5)
    assert within(r.metrics["increase_in_confidence"], want.increase_in_confidence, atol=1e-9)
    assert json.loads((tmp_path / "m.zarr" / "metrics.json").read_text()) == r.metrics
    with pytest.raises(InvalidArgumentError, match="one target per image"):
        explain_dataset(model_file, folder, tmp_path / "n.zarr", "cam", target="all", metrics=True)


def _sum_model():
    """logits = (Σ_i x_i, 0) on (N, 3, 1, 2) inputs: p_0 = e^s / (e^s + 1), s the pixel sum."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((6, 2), np.float32)
    w[:, 0] = 1.0
    g = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "sum", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 1, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_perturbation_curve_hand_computed_and_batched(monkeypatch):
    """Deletion / insertion of the explained class on a model whose probability is σ(pixel sum):
    image 0 has pixel sums (1, 3) and the map ranks pixel 1 first; image 1 has sums (2, 0) and a
    map that ranks pixel 0 first.  step 1 → fractions (0, 1/2, 1); zeros baselines."""
    import math
    from types import SimpleNamespace

    from refcam import dataset as D
    from refcam.onnx import load

    m = load(_sum_model())
    x = np.zeros((2, 3, 1, 2), np.float32)
    x[0, 0] = [1, 2]
    x[0, 2] = [0, 1]
    x[1, 1] = [2, 0]
    e = SimpleNamespace(maps=np.array([[[0.2, 0.9]], [[0.5, 0.5]]], np.float32),  # 1: tie → raster
                        targets=np.array([[0], [0]]))
    sig = lambda s: math.exp(s) / (math.exp(s) + 1.0)  # noqa: E731  p_0 = softmax(s, 0)_0
    want_del = [[sig(4), sig(1), sig(0)], [sig(2), sig(0), sig(0)]]
    want_ins = [[sig(0), sig(3), sig(4)], [sig(0), sig(2), sig(2)]]
    auc = lambda y: 0.5 * (y[0] + y[1]) / 2 + 0.5 * (y[1] + y[2]) / 2  # noqa: E731
    sizes = []
    orig = D._probabilities

    def counting(model):
        f = orig(model)
        return lambda xb: (sizes.append(len(xb)), f(xb))[1]

    monkeypatch.setattr(D, "_probabilities", counting)
    conv = {"step": 1, "deletion_baseline": "zeros", "insertion_baseline": "zeros",
            "blur_sigma": 5.0, "batch_size": 4}
    for kind, want in (("deletion", want_del), ("insertion", want_ins)):
        c = D._perturbation_curve(m, x, e, kind, conv)
        assert within(c.fractions, [0.0, 0.5, 1.0], atol=0)
        assert within(c.scores, want, atol=1e-6, rtol=1e-6), kind
        assert within(c.auc, [auc(w) for w in want], atol=1e-6, rtol=1e-6), kind
    assert sizes == [4, 2, 4, 2]  # 2 images × 3 points, batched ONNX runs of 4 inputs


def test_deletion_insertion_auc_over_the_stream(tmp_path, model_file):
    """Stored curves and AUCs equal refcam.metrics.deletion / insertion on the same images."""
    import refcam
    from refcam.metrics import perturbation as P
    from refcam.metrics.models import model_score_fn
    from refcam.onnx import load

    folder = make_images(tmp_path / "imgs", n=5, corrupt=(2,))
    r = explain_dataset(model_file, folder, tmp_path / "p.zarr", "gradcam", batch_size=2,
                        crop_padding=0, metrics=("confidence", "deletion", "insertion"),
                        metric_step=40, metric_batch_size=7)
    g = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    good = [0, 1, 3, 4]
    ids = g["ids"][:].tolist()
    x = _inputs(model_file, [ids[i] for i in good])
    e = refcam.explain(model_file, x, "gradcam")
    f = model_score_fn(load(model_file), probabilities=True)
    n_px = x.shape[2] * x.shape[3]
    for kind, fn, base in (("deletion", P.deletion, "zeros"), ("insertion", P.insertion, "blur")):
        want = fn(f, x, e.maps, e.targets[:, 0], step=40, baseline=base, resize="linear",
                  progress=False)
        assert g[kind].shape == (5, len(want.fractions)) == (5, -(-n_px // 40) + 1)
        assert np.isnan(g[kind][2]).all() and np.isnan(g[f"{kind}_auc"][2])
        assert within(g[kind][good], want.scores, atol=1e-6, rtol=1e-5), kind
        assert within(g[f"{kind}_auc"][good], want.auc, atol=1e-6, rtol=1e-5), kind
        assert within(r.metrics[f"{kind}_auc"], want.auc.mean(), atol=1e-6, rtol=1e-5)
    assert "average_drop" in r.metrics and r.metrics["n"] == 4
    assert r.metrics["perturbation"]["points"] == g["deletion"].shape[1]
    assert r.metrics["perturbation"]["insertion_baseline"] == "blur"
    assert json.loads((tmp_path / "p.zarr" / "metrics.json").read_text()) == r.metrics
    # resume with other metric conventions is refused; bad metric arguments are refused
    with pytest.raises(InvalidArgumentError, match="perturbation"):
        explain_dataset(model_file, folder, tmp_path / "p.zarr", "gradcam", batch_size=2,
                        crop_padding=0, metrics=("confidence", "deletion", "insertion"),
                        metric_step=20)
    with pytest.raises(InvalidArgumentError, match="metric_step"):
        explain_dataset(model_file, folder, tmp_path / "q.zarr", "gradcam", metrics="deletion")
    with pytest.raises(InvalidArgumentError, match="metrics"):
        explain_dataset(model_file, folder, tmp_path / "q.zarr", "gradcam", metrics="drop")
    with pytest.raises(InvalidArgumentError, match="insertion_baseline"):
        explain_dataset(model_file, folder, tmp_path / "q.zarr", "gradcam", metrics="insertion",
                        metric_step=4, insertion_baseline="noise")


def test_peak_memory_is_bounded_by_the_batch_not_the_dataset(tmp_path):
    """tracemalloc peak of explain_dataset (NumPy buffers, the Zarr codecs' buffers): the same for
    4 and 16 images at the same batch size, linear in the batch size, and under the count of the
    arrays one chunk holds: B · (2 inputs (this chunk, the next one decoded ahead) + activations
    in float32 and float64 + T·h·w · 32 bytes (float64 product, float64 gathered maps, float32
    maps, the chunk written, its encoded copy)) plus 4 MB of fixed cost."""
    import tracemalloc

    import onnx

    model = tmp_path / "m.onnx"
    onnx.save(cam_net(size=64, num_classes=40), model)
    few = make_images(tmp_path / "few", n=4, corrupt=(), side=64)
    many = make_images(tmp_path / "many", n=16, corrupt=(), side=64)
    run = lambda folder, b, name: explain_dataset(  # noqa: E731
        str(model), folder, tmp_path / name, "cam", target="all", batch_size=b, crop_padding=0)
    run(few, 2, "warm.zarr")  # the session and imports, outside the measurement

    def peak(folder, b, name):
        tracemalloc.start()
        try:
            run(folder, b, name)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    p4, p16, p16_b8 = peak(few, 2, "a.zarr"), peak(many, 2, "b.zarr"), peak(many, 8, "c.zarr")
    per_item = 2 * 3 * 64 * 64 * 4 + 6 * 64 * 64 * (4 + 8) + 40 * 64 * 64 * 32
    assert p16 <= 1.1 * p4  # 4× the images, the same peak
    assert p16_b8 >= 3 * p16  # 4× the batch, ~4× the peak: the batch sets it
    for p, b in ((p4, 2), (p16, 2), (p16_b8, 8)):
        assert p <= b * per_item + 4e6, (p, b)
    assert p16 < 16 * 40 * 64 * 64 * 4  # less than the dataset's maps


def test_also_jobs_share_the_pass_and_equal_explain(tmp_path, model_file, monkeypatch):
    """Grad-CAM top-1 (primary) + all-class CAM (also) in one pass over the data, one forward run
    per chunk; each array equals its own refcam.explain on the same images; resume skips all."""
    import refcam
    from refcam.onnx import Model

    folder = make_images(tmp_path / "imgs", n=5, corrupt=(1,))
    explain_dataset(model_file, folder, tmp_path / "warm.zarr", "cam", crop_padding=0)
    runs = []
    real = Model.forward
    monkeypatch.setattr(Model, "forward",
                        lambda self, *a, **k: (runs.append(len(a[0])), real(self, *a, **k))[1])
    r = explain_dataset(model_file, folder, tmp_path / "a.zarr", "gradcam", batch_size=2,
                        crop_padding=0, also=[("cam", "all"), ("gradcam", 3, {"relu": False})])
    monkeypatch.setattr(Model, "forward", real)
    # the probe of the CAM job (one zero image), then one forward run per chunk (1, 2, 1 images)
    assert r.n_done == 4 and runs == [1, 1, 2, 1]
    g = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    good = [0, 2, 3, 4]
    x = _inputs(model_file, [str(g["ids"][i]) for i in good])
    for prefix, method, target, opts in (("", "gradcam", None, {}), ("also/cam_all/", "cam", "all", {}),
                                         ("also/gradcam_class3/", "gradcam", 3, {"relu": False})):
        e = refcam.explain(model_file, x, method, target=target, **opts)
        want = e.maps if e.maps.ndim == 4 else e.maps[:, None]
        got = g[prefix + "maps"][:]
        assert np.isnan(got[1]).all() and (g[prefix + "targets"][1] == -1).all()
        assert within(got[good], want, atol=1e-5 * np.abs(want).max(), rtol=1e-5), prefix
        assert (g[prefix + "targets"][good] == e.targets).all()
        assert within(g[prefix + "scores"][good], e.scores, atol=1e-6, rtol=1e-6)
    man = json.loads((tmp_path / "a.zarr" / "manifest.json").read_text())
    assert man["also"] == [["cam", "all", {}], ["gradcam", 3, {"relu": False}]]
    again = explain_dataset(model_file, folder, tmp_path / "a.zarr", "gradcam", batch_size=2,
                            crop_padding=0, also=[("cam", "all"), ("gradcam", 3, {"relu": False})])
    assert again.computed == []
    with pytest.raises(InvalidArgumentError, match="also"):
        explain_dataset(model_file, folder, tmp_path / "a.zarr", "gradcam", batch_size=2,
                        crop_padding=0, also=[("cam", "all")])
    with pytest.raises(InvalidArgumentError, match="twice"):
        explain_dataset(model_file, folder, tmp_path / "b.zarr", "gradcam",
                        also=[("cam", "all"), ("cam", "all")])
    with pytest.raises(InvalidArgumentError, match="also"):
        explain_dataset(model_file, folder, tmp_path / "b.zarr", "gradcam", also=["cam"])
