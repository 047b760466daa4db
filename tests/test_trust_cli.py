"""Issue 17 (trust), command-line / file / image / target / message items: one test per item.

Each test replays the reproduction written in the issue and fails on the code the issue was filed
against.  Modules added for the fixes (``refcam._outputs``, ``refcam.zoo._images``) are imported
inside the tests, so that every test of this file fails on its own there, not at collection.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import refcam
from refcam import cli, zoo
from refcam.onnx.toy_models import cam_net

ROOT = Path(refcam.__file__).resolve().parents[1]  # the refcam under test


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _manifest(folder: Path) -> dict:
    found = sorted(folder.glob("refcam-*.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def default_model():
    return zoo.efficientnet_lite0()


@pytest.fixture
def no_compute(monkeypatch):
    """Make any computation fail loudly: usage errors must be found before it."""
    import refcam.explanation

    def explain(*a, **k):
        raise AssertionError("refcam.explain was called before the usage error was reported")

    monkeypatch.setattr(refcam.explanation, "explain", explain)


# ============================================================================ data loss


def test_inputs_overwritten(tmp_path, capsys, monkeypatch):
    """`refcam explain cat.png cup.png -o .` with the photos in `.` must not replace them."""
    shutil.copy(zoo.sample_image_path("chelsea"), tmp_path / "cat.png")
    shutil.copy(zoo.sample_image_path("coffee"), tmp_path / "cup.png")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "explain", "cat.png", "cup.png", "-o", ".")
    assert code == 2, err
    assert "would overwrite the input" in err and "cat.png" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written
    # the same run into another folder works
    code, _, err = run(capsys, "explain", "cat.png", "cup.png", "-m", "cam", "-o", "maps", "-q")
    assert code == 0, err
    assert {"cat.png", "cup.png", "cat_cam.npy", "cup_cam.npy"} <= {
        p.name for p in (tmp_path / "maps").iterdir()
    }


def test_non_atomic_writes_interrupted(tmp_path, capsys, monkeypatch):
    """Ctrl-C while the figures are written leaves no truncated PNG (the old set stays whole)."""
    from matplotlib.figure import Figure

    out = tmp_path / "out"
    code, _, err = run(capsys, "explain", "toy:cam", "chelsea", "-m", "cam", "-o", out, "-q")
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = Figure.savefig

    def interrupted(self, fname, *a, **k):  # the figure is half written when Ctrl-C arrives
        buf = io.BytesIO()
        real(self, buf, *a, **k)
        data = buf.getvalue()
        if hasattr(fname, "write"):
            fname.write(data[: len(data) // 2])
        else:
            with open(fname, "wb") as fh:
                fh.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    code, _, err = run(
        capsys, "explain", "toy:cam", "coffee", "chelsea", "-m", "cam", "-o", out, "-q"
    )
    assert code == 130 and "interrupted" in err
    # nothing half-written, no temporary file left, the previous run's files untouched
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    for p in out.glob("*.png"):
        Image.open(p).load()


def test_non_atomic_writes_interrupted_inside_a_file(tmp_path):
    """A failure in the middle of writing one file leaves neither it nor its temporary."""
    from refcam._outputs import OutputSet

    (tmp_path / "a.npy").write_bytes(b"old")
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        raise OSError(28, "No space left on device")

    s = OutputSet(tmp_path).prepare(["a.npy"])
    mp = pytest.MonkeyPatch()
    mp.setattr(os, "fsync", failing_fsync)
    try:
        with pytest.raises(OSError), s:
            s.stage("a.npy", b"new" * 1000)
    finally:
        mp.undo()
    assert calls and sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]
    assert (tmp_path / "a.npy").read_bytes() == b"old"


_CONCURRENT = """
import os, sys, time
from pathlib import Path
from refcam import cli

# Make the two runs' renames interleave.  Both runs meet at their first rename (a barrier: files
# in a folder, given up after 3 s), then run k renames its i-th file at t0 + 0.2 i (k = 0) or
# t0 + 0.2 i +- 0.1 (k = 1: + for even i, - for odd i), so without a lock the later rename of a
# name alternates between the runs: a mixed set, every time.  With the folder lock, the second
# run cannot rename before the first has renamed all its files.
k, barrier = int(sys.argv[4]), Path(sys.argv[3])
_replace, calls = os.replace, []


def scheduled_replace(a, b):
    if not calls:
        (barrier / str(k)).touch()
        deadline = time.monotonic() + 3
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.002)
        calls.append(time.monotonic())
    i = len(calls) - 1
    at = calls[0] + 0.2 * i + (0 if k == 0 else (0.1 if i % 2 == 0 else -0.1))
    time.sleep(max(0.0, at - time.monotonic()))
    calls.append(None)
    _replace(a, b)


os.replace = scheduled_replace
sys.exit(cli.main(["explain", "toy:cam", sys.argv[1], "-m", "cam,eigencam", "-o", sys.argv[2], "-q"]))
"""


@pytest.mark.slow
def test_non_atomic_writes_concurrent(tmp_path):
    """Two `refcam explain` processes writing one folder never leave a mixed or truncated set."""
    rng = np.random.default_rng(0)
    inputs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        x = rng.random((3, 12, 12), dtype=np.float32)
        np.save(tmp_path / name / "x.npy", x)  # same file name: the two runs write the same names
        inputs.append(x)
    expected = {
        str(tmp_path / n / "x.npy"): {
            m: refcam.explain(cam_net(), x[None], m).maps[0] for m in ("cam", "eigencam")
        }
        for n, x in zip("ab", inputs)
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(2):
        out, barrier = tmp_path / f"out{round_}", tmp_path / f"barrier{round_}"
        barrier.mkdir()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _CONCURRENT,
                    str(tmp_path / n / "x.npy"),
                    str(out),
                    str(barrier),
                    str(k),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for k, n in enumerate("ab")
        ]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()
        names = sorted(p.name for p in out.iterdir())
        assert not [n for n in names if n.startswith(".")], names  # no temporary files left
        man = _manifest(out)
        # one run's complete set: every file is the one its manifest lists ...
        listed = {o["name"]: o["sha256"] for o in man["outputs"]}
        assert set(listed) | {out.glob("refcam-*.json").__next__().name} == set(names)
        for name, sha in listed.items():
            assert _sha(out / name) == sha, (round_, name)
        # ... and the maps are that run's input's maps
        (src,) = [i["path"] for i in man["inputs"]]
        for m in ("cam", "eigencam"):
            np.testing.assert_array_equal(np.load(out / f"x_{m}.npy"), expected[src][m])


def test_manifest_per_run(tmp_path, capsys):
    """A small manifest per run: inputs, model hash, method, options, outputs, refcam version."""
    x = np.random.default_rng(1).random((1, 3, 12, 12), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "o"
    code, stdout, err = run(
        capsys, "explain", "toy:cam", tmp_path / "x.npy", "-m", "cam", "-O", "relu=true", "-o", out
    )
    assert code == 0, err
    man = _manifest(out)
    assert man["refcam_version"] == refcam.__version__
    assert man["inputs"] == [{"path": str(tmp_path / "x.npy"), "sha256": _sha(tmp_path / "x.npy")}]
    assert man["model"]["spec"] == "toy:cam"
    assert man["model"]["sha256"] == hashlib.sha256(cam_net().SerializeToString()).hexdigest()
    (meth,) = man["methods"]
    assert meth["name"] == "cam" and meth["options"]["relu"] is True and meth["layer"] == "features"
    assert man["options"]["out"] == str(out)
    assert {o["name"] for o in man["outputs"]} == {"x.png", "x_cam.npy", "x_cam.png"}
    for o in man["outputs"]:
        assert (
            _sha(out / o["name"]) == o["sha256"] and (out / o["name"]).stat().st_size == o["bytes"]
        )
    assert str(min(out.glob("refcam-*.json"))) in stdout.split()


def _read_only_folder(tmp_path: Path) -> Path:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").write_bytes(b"")
    except OSError:
        return ro
    (ro / "probe").unlink()  # root ignores the mode bits: use a folder no one can write
    for cand in (Path("/sys"), Path("/proc/self")):
        try:
            (cand / ".refcam-probe").write_bytes(b"")
        except OSError:
            return cand
    pytest.skip("no read-only folder available to this user")


def test_output_folder_checked_first(tmp_path, capsys, no_compute):
    """A read-only output folder is reported before any computation (exit code 2)."""
    ro = _read_only_folder(tmp_path)
    try:
        code, _, err = run(capsys, "explain", "-m", "scorecam", "-o", ro)
    finally:
        if ro.is_relative_to(tmp_path):
            ro.chmod(0o755)
    assert code == 2, err
    assert "--out: cannot write into directory" in err


# ============================================================================ false passes


def _grey_chelsea() -> np.ndarray:
    return np.asarray(Image.open(zoo.sample_image_path("chelsea")).convert("L"))


def test_16bit_png(tmp_path, capsys):
    """A 16-bit PNG is read as its picture, not as a white image ("nematode 0.010")."""
    g8 = _grey_chelsea()
    Image.fromarray(g8.astype(np.uint16) * 257).save(tmp_path / "cat16.png")  # v16 = 257 v8
    Image.fromarray(g8).save(tmp_path / "cat8.png")
    assert Image.open(tmp_path / "cat16.png").mode == "I;16"
    # the 16-bit file gives exactly the 8-bit file's model input
    np.testing.assert_array_equal(
        zoo.preprocess(tmp_path / "cat16.png"), zoo.preprocess(tmp_path / "cat8.png")
    )
    code8, _, err8 = run(
        capsys, "explain", tmp_path / "cat8.png", "-m", "cam", "-o", tmp_path / "a"
    )
    code16, _, err16 = run(
        capsys, "explain", tmp_path / "cat16.png", "-m", "cam", "-o", tmp_path / "b"
    )
    assert code8 == code16 == 0, err16
    top8 = err8.split(":", 1)[1]
    assert err16.split(":", 1)[1] == top8 and "nematode" not in err16
    np.testing.assert_array_equal(
        np.load(tmp_path / "b" / "cat16_cam.npy"), np.load(tmp_path / "a" / "cat8_cam.npy")
    )


def test_exif_orientation(tmp_path, capsys):
    """A JPEG with EXIF Orientation=6 is explained upright (not "Egyptian cat")."""
    upright = Image.open(zoo.sample_image_path("chelsea"))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "sideways.jpg", quality=95, exif=exif)
    upright.save(tmp_path / "upright.jpg", quality=95)
    raw = Image.open(tmp_path / "sideways.jpg")
    assert raw.size == (300, 451) and raw.getexif()[0x0112] == 6
    code, _, err_up = run(capsys, "explain", tmp_path / "upright.jpg", "-m", "cam", "-o", tmp_path)
    assert code == 0, err_up
    code, _, err_side = run(
        capsys, "explain", tmp_path / "sideways.jpg", "-m", "cam", "-o", tmp_path
    )
    assert code == 0, err_side

    def top1(err: str) -> str:
        return err.split(":", 1)[1].split(",")[0].split("(")[0].strip()

    assert top1(err_side) == top1(err_up) != "Egyptian cat"
    # decoded upright: exactly the stored pixels turned 90 degrees clockwise
    from refcam.zoo import open_image

    np.testing.assert_array_equal(
        np.asarray(open_image(tmp_path / "sideways.jpg")),
        np.asarray(raw.convert("RGB").transpose(Image.Transpose.ROTATE_270)),
    )


def test_negative_targets_cli(capsys, no_compute):
    """`-t -1` is refused on the command line (it silently explained class 999)."""
    code, _, err = run(capsys, "explain", "-t", "-1")
    assert code == 2, err
    assert "--target: got -1, expected a class index >= 0" in err and "999" in err


def test_negative_targets_api(default_model):
    """The API keeps NumPy-style negatives and reports the resolved class in the result."""
    x = zoo.preprocess(zoo.sample_image_path("chelsea"))
    e = refcam.explain(default_model, x, "cam", target=-1)
    assert e.targets.tolist() == [[999]]
    assert "targets=array([[999]])" in repr(e)
    np.testing.assert_array_equal(e.maps, refcam.explain(default_model, x, "cam", target=999).maps)


def test_target_names_ambiguous(capsys, no_compute):
    """`-t crane` reports that "crane" is both 134 and 517 instead of picking 134."""
    code, _, err = run(capsys, "explain", "-t", "crane")
    assert code == 2, err
    assert "'crane' is the name of 2 classes" in err and "(134)" in err and "(517)" in err


def test_target_names_substring(capsys, no_compute):
    """`-t cat` suggests the cats (words/substrings of the names), not "crate, oxcart, castle"."""
    code, _, err = run(capsys, "explain", "-t", "cat")
    assert code == 2, err
    for cat in (
        "tabby, tabby cat (281)",
        "tiger cat (282)",
        "Persian cat (283)",
        "Egyptian cat (285)",
    ):
        assert cat in err
    assert "crate" not in err.split("classes containing it:")[1].split(";")[0][:200]


def test_target_names_synonym_and_case(tmp_path, capsys, default_model):
    """A full synonym ("tabby cat") names its class; the resolved class is printed."""
    code, _, err = run(capsys, "explain", "-m", "cam", "-t", "Tabby_Cat", "-o", tmp_path)
    assert code == 0, err
    assert "target: tabby (281)" in err
    x = zoo.preprocess(zoo.sample_image_path("chelsea"))
    np.testing.assert_array_equal(
        np.load(tmp_path / "chelsea_cam.npy"),
        refcam.explain(default_model, x, "cam", target=281).maps[0],
    )


def test_metadata_of_model_passed_by_path(tmp_path, capsys, default_model):
    """The embedded model passed by path prints class names and uses its own preprocessing."""
    path = tmp_path / "model.onnx"
    shutil.copy(zoo.efficientnet_lite0(path_only=True), path)
    code, _, err = run(capsys, "explain", path, "chelsea", "-m", "cam", "-o", tmp_path / "o")
    assert code == 0, err
    assert "class 285" not in err and "tabby (281)" in err
    x = zoo.preprocess(zoo.sample_image_path("chelsea"))  # (x - 127) / 128, not ImageNet mean/std
    np.testing.assert_array_equal(
        np.load(tmp_path / "o" / "chelsea_cam.npy"), refcam.explain(default_model, x, "cam").maps[0]
    )


def test_metadata_of_any_model(tmp_path, capsys):
    """Labels and preprocessing are read from `metadata_props` for any model."""
    import onnx

    m = cam_net()
    onnx.helper.set_model_props(
        m,
        {
            "labels": json.dumps(["ant", "bee", "cat", "dog", "eel"]),
            "refcam.preprocessing": json.dumps({"mean": [0, 0, 0], "std": [255, 255, 255]}),
        },
    )
    onnx.save(m, tmp_path / "toy.onnx")
    code, _, err = run(
        capsys,
        "explain",
        tmp_path / "toy.onnx",
        "coffee",
        "-m",
        "cam",
        "-t",
        "dog",
        "-o",
        tmp_path / "o",
    )
    assert code == 0, err
    assert "target: dog (3)" in err and "class " not in err
    x = zoo.preprocess(
        zoo.sample_image_path("coffee"), size=12, mean=(0, 0, 0), std=(255, 255, 255)
    )
    np.testing.assert_array_equal(
        np.load(tmp_path / "o" / "coffee_cam.npy"),
        refcam.explain(cam_net(), x, "cam", target=3).maps[0],
    )


def test_cache_is_checked(tmp_path):
    """A tampered cache file is not used as is; a corrupt one is rebuilt, not a DecodeError."""
    import onnx

    good = zoo.efficientnet_lite0(path_only=True, cache=tmp_path)
    reference = good.read_bytes()
    # tampered: a valid model whose classifier bias was changed
    m = onnx.load(str(good))
    bias = next(t for t in m.graph.initializer if t.name == "head.fc.bias")
    arr = onnx.numpy_helper.to_array(bias).copy()
    arr[0] += 100.0
    bias.CopyFrom(onnx.numpy_helper.from_array(arr, bias.name))
    good.write_bytes(m.SerializeToString())
    with pytest.warns(RuntimeWarning, match=str(good).replace(".", r"\.") + ".*SHA-256"):
        loaded = zoo.efficientnet_lite0(cache=tmp_path)
    assert loaded.SerializeToString() == reference and good.read_bytes() == reference
    # corrupt: truncated
    good.write_bytes(reference[: len(reference) // 3])
    with pytest.warns(RuntimeWarning, match="fails its SHA-256 check"):
        p = zoo.efficientnet_lite0(path_only=True, cache=tmp_path)
    assert p.read_bytes() == reference


# ============================================================================ usage errors


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--size", "0"], "--size: got 0, expected an integer >= 1"),
        (["--cmap", "x"], "--cmap: got 'x', expected a matplotlib colormap name"),
        (["-O", "relu=maybe"], "relu: got 'maybe', expected True or False"),
    ],
)
def test_exit_codes(capsys, no_compute, argv, needle):
    """Usage errors exit with 2, as the README promises (they exited 1)."""
    code, _, err = run(capsys, "explain", *argv)
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_size_7_message(capsys, no_compute):
    """`--size 7` blames --size and the model's fixed input, not the image."""
    code, _, err = run(capsys, "explain", "--size", "7")
    assert code == 2, err
    assert err.startswith("refcam: error: --size: got 7") and "(N, 3, 224, 224)" in err
    assert "image" not in err


def test_expected_1_or_1(capsys, no_compute):
    """Too many targets for one image: "expected 1 (there is one image)", not "1 or 1"."""
    code, _, err = run(capsys, "explain", "-t", "1,2")
    assert code == 2, err
    assert "1 or 1" not in err and "got 2 comma-separated targets for 1 image(s), expected 1" in err


def test_refcam_check_without_hypothesis(tmp_path, capsys, monkeypatch):
    """`refcam check` without hypothesis names the missing package and how to install it."""
    (tmp_path / "f.py").write_text("def cam(a, w):\n    return (a * w[:, :, None, None]).sum(1)\n")
    for mod in list(sys.modules):
        if mod.split(".")[0] == "hypothesis" or mod in ("refcam.conformance", "refcam.testing"):
            monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # import hypothesis -> ImportError
    code, _, err = run(capsys, "check", f"{tmp_path / 'f.py'}:cam", "--method", "cam")
    assert code == 1 and err.count("\n") == 1, err
    assert (
        "hypothesis" in err and "pip install hypothesis" in err and "ModuleNotFoundError" not in err
    )


def _fake_torch_files(folder: Path) -> list[Path]:
    """The two layouts torch.save writes (zip since torch 1.6; the legacy pickle), without torch."""
    new = folder / "model.pt"
    with zipfile.ZipFile(new, "w") as zf:
        zf.writestr("model/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("model/version", b"3\n")
    legacy = folder / "weights.pth"
    legacy.write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19." + b"\x00" * 64)
    return [new, legacy]


def test_pt_file_says_export_to_onnx(tmp_path, capsys, no_compute):
    """A PyTorch file is not "an unreadable image": say to export it to ONNX."""
    for pt in _fake_torch_files(tmp_path):
        for argv in (
            ["explain", pt, "chelsea"],
            ["explain", pt],
            ["explain", "toy:cam", pt],
            ["layers", pt],
        ):
            code, _, err = run(capsys, *argv)
            assert code == 2, (argv, err)
            assert "export it to ONNX (torch.onnx.export" in err and str(pt) in err, err


def test_onnx_without_suffix_is_sniffed(tmp_path, capsys):
    """An ONNX file without the .onnx suffix is a model for `explain`, as for `refcam layers`."""
    import onnx

    onnx.save(cam_net(), tmp_path / "model")
    x = np.random.default_rng(2).random((1, 3, 12, 12), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    code, _, err = run(
        capsys,
        "explain",
        tmp_path / "model",
        tmp_path / "x.npy",
        "-m",
        "cam",
        "-o",
        tmp_path / "o",
        "-q",
    )
    assert code == 0, err
    np.testing.assert_array_equal(
        np.load(tmp_path / "o" / "x_cam.npy"), refcam.explain(cam_net(), x, "cam").maps[0]
    )
    # and an image with a misleading suffix is still read as what it is
    shutil.copy(zoo.sample_image_path("coffee"), tmp_path / "photo.onnx.bin")
    code, _, err = run(
        capsys,
        "explain",
        "toy:cam",
        tmp_path / "photo.onnx.bin",
        "-m",
        "cam",
        "-o",
        tmp_path / "o",
        "-q",
    )
    assert code == 0, err


def test_non_atomic_writes_commit_waits_for_the_folder_lock(tmp_path):
    """The renames of a run wait while another run holds the folder: sets never interleave."""
    import threading

    from refcam._outputs import OutputSet, _folder_lock

    s = OutputSet(tmp_path).prepare(["a.npy", "a.png"])
    s.stage("a.npy", b"1")
    s.stage("a.png", b"2")
    started, done = threading.Event(), []

    def commit():
        started.set()
        done.extend(s.commit())

    with _folder_lock(tmp_path):
        t = threading.Thread(target=commit)
        t.start()
        started.wait()
        t.join(0.3)  # the commit cannot finish while the lock is held
        assert (
            t.is_alive() and not (tmp_path / "a.npy").exists() and not (tmp_path / "a.png").exists()
        )
    t.join()
    assert [p.name for p in done] == ["a.npy", "a.png"]
    assert (tmp_path / "a.npy").read_bytes() == b"1" and (tmp_path / "a.png").read_bytes() == b"2"


def test_outputs_get_the_usual_file_mode(tmp_path, capsys):
    """Files written through temporary names get the mode a plain open() gives (not 0600)."""
    old = os.umask(0o022)
    try:
        code, _, err = run(
            capsys, "explain", "toy:cam", "coffee", "-m", "cam", "-o", tmp_path, "-q"
        )
    finally:
        os.umask(old)
    assert code == 0, err
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {"0o644"}
