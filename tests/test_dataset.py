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
