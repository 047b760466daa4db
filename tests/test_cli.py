"""The ``refcam`` command line, run in-process through ``refcam.cli.main`` (plus one subprocess).

What is checked: the files written and their contents (the ``.npy`` maps equal
``refcam.explain``'s maps bit for bit; the overlay PNG equals ``refcam.viz.overlay`` pixel for
pixel and is hot where the map is; the figure shows the explained class in red), the exit codes
and the one-line error messages, and that ``import refcam`` stays light.
"""

from __future__ import annotations

import importlib.machinery
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

import refcam
from refcam import cli, viz, zoo
from refcam._outputs import manifest_name
from refcam.errors import LayerNotFoundError
from refcam.methods import METHODS
from refcam.onnx.toy_models import cam_net, nhwc_net

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cat():
    """The default model's input and picture for the chelsea sample (the CLI's defaults)."""
    x, pics = zoo.preprocess(zoo.sample_image_path("chelsea"), return_images=True)
    return zoo.efficientnet_lite0(), x, pics[0]


# ----------------------------------------------------------------------------- the default job


def test_default_explain_writes_figure_overlay_and_raw_map(tmp_path, capsys, cat):
    model, x, picture = cat
    method = cli.default_method()
    code, out, err = run(capsys, "explain", "--out", str(tmp_path))
    assert code == 0, err
    paths = [Path(p) for p in out.split()]
    expected = {
        tmp_path / "chelsea.png",
        tmp_path / f"chelsea_{method}.png",
        tmp_path / f"chelsea_{method}.npy",
    }
    # ... and the run's manifest, named after that set of files (refcam._outputs)
    expected.add(tmp_path / manifest_name(p.name for p in expected))
    assert set(paths) == expected and all(p.is_file() for p in paths)

    # raw map = refcam.explain's map, exactly
    e = refcam.explain(model, x, method)
    raw = np.load(tmp_path / f"chelsea_{method}.npy")
    assert raw.shape == (7, 7) and raw.dtype == e.maps.dtype
    np.testing.assert_array_equal(raw, e.maps[0])

    # the overlay PNG is the picture the model saw with the map blended in, pixel for pixel
    ov = np.asarray(Image.open(tmp_path / f"chelsea_{method}.png").convert("RGB"))
    assert ov.shape == (224, 224, 3)
    np.testing.assert_array_equal(ov, viz.overlay(picture, e.maps[0], alpha=0.5, cmap="jet"))
    # hot where the map is hot: recover the colour a*255*cmap(m) = O - (1-a) I at the map's max / min
    up = refcam.upsample(e.maps[:1].astype(np.float64), (224, 224), "linear")[0]
    colour = (ov.astype(float) - 0.5 * picture.astype(float)) / (0.5 * 255)
    hot, cold = np.unravel_index(up.argmax(), up.shape), np.unravel_index(up.argmin(), up.shape)
    jet = colormaps["jet"]
    np.testing.assert_allclose(colour[hot], jet(1.0)[:3], atol=0.01)  # dark red (0.5, 0, 0)
    np.testing.assert_allclose(colour[cold], jet(0.0)[:3], atol=0.01)  # dark blue (0, 0, 0.5)

    # the figure: input | overlay | top-5 bars, the explained (top-1) class drawn in tab:red
    fig = np.asarray(Image.open(tmp_path / "chelsea.png").convert("RGB"))
    assert fig.shape == (360, 1020, 3)  # figsize (3 * 2 + 4.2, 3.6) inches at 100 dpi
    red = np.all(fig == (214, 39, 40), axis=-1)  # matplotlib "tab:red"
    cols = np.nonzero(red)[1]
    assert red.sum() > 500 and cols.min() > 2 * 1020 // 3 - 150  # a bar in the right-hand panel
    # the top-5 line on stderr names the model's top-1 class
    top1 = zoo.decode_predictions(e.outputs, 1)[0][0]
    assert f"{top1[1]} ({top1[0]})" in err


def test_npy_inputs_toy_model_several_methods(tmp_path, capsys):
    x = np.random.default_rng(0).random((2, 3, 12, 12), dtype=np.float32)
    np.save(tmp_path / "batch.npy", x)
    out_dir = tmp_path / "out"
    code, _, err = run(
        capsys,
        "explain",
        "toy:cam",
        str(tmp_path / "batch.npy"),
        "-m",
        "cam,eigencam",
        "-o",
        str(out_dir),
        "-q",
    )
    assert code == 0, err
    for method in ("cam", "eigencam"):
        e = refcam.explain(cam_net(), x, method)
        for i in range(2):
            np.testing.assert_array_equal(np.load(out_dir / f"batch_{i}_{method}.npy"), e.maps[i])
            assert Image.open(out_dir / f"batch_{i}_{method}.png").size == (12, 12)
    figs = sorted(p.name for p in out_dir.glob("batch_?.png"))
    assert figs == ["batch_0.png", "batch_1.png"]
    # the figure has one overlay panel per method: 3 * 3 + 4.2 inches wide
    assert Image.open(out_dir / "batch_0.png").size == (1320, 360)


def test_onnx_file_model_non_square(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    wf = rng.standard_normal((5, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "Wf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "nonsquare",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(wf, "Wf")],
    )
    path = tmp_path / "nonsquare.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path
    )
    code, _, err = run(capsys, "explain", str(path), "chelsea")
    assert code == 2 and "has shape ('N', 3, 8, 12), not square" in err
    x = rng.random((3, 8, 12), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = run(
        capsys,
        "explain",
        str(path),
        str(tmp_path / "x.npy"),
        "-m",
        "cam",
        "-o",
        str(tmp_path / "o"),
        "-q",
    )
    assert code == 0, err
    np.testing.assert_array_equal(
        np.load(tmp_path / "o" / "x_cam.npy"), refcam.explain(str(path), x[None], "cam").maps[0]
    )
    assert Image.open(tmp_path / "o" / "x_cam.png").size == (12, 8)  # overlay at input size (W, H)


def test_class_agnostic_first_method_still_titles_the_target(tmp_path, capsys):
    def red_pixels(path):
        return int(
            np.all(np.asarray(Image.open(path).convert("RGB")) == (214, 39, 40), axis=-1).sum()
        )

    code, _, err = run(
        capsys, "explain", "toy:cam", "coffee", "-m", "eigencam", "-o", str(tmp_path / "a")
    )
    assert code == 0, err
    assert red_pixels(tmp_path / "a" / "coffee.png") == 0  # class-agnostic: no explained class
    code, _, err = run(
        capsys, "explain", "toy:cam", "coffee", "-m", "eigencam,cam", "-o", str(tmp_path / "b")
    )
    assert code == 0, err
    assert red_pixels(tmp_path / "b" / "coffee.png") > 100  # the target of cam, drawn in red
    assert "# coffee: class " in err


def test_input_gradient_maps_are_drawn_as_saliency_images(tmp_path, capsys, monkeypatch):
    import dataclasses

    # a stand-in for an input-gradient method: its "gradient" is the input itself, (N, 3, H, W)
    fake = dataclasses.replace(
        METHODS["eigencam"], name="fakegrad", compute=lambda ctx, t: ctx.inputs
    )
    monkeypatch.setitem(METHODS, "fakegrad", fake)
    x = np.random.default_rng(3).standard_normal((1, 3, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = run(
        capsys,
        "explain",
        "toy:cam",
        str(tmp_path / "x.npy"),
        "-m",
        "fakegrad",
        "-o",
        str(tmp_path / "o"),
        "-q",
    )
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "x_fakegrad.npy"), x[0])
    png = np.asarray(Image.open(tmp_path / "o" / "x_fakegrad.png").convert("RGB"))
    grey = np.rint(255 * viz.saliency_image(x[0], mode="abs").astype(np.float64)).astype(np.uint8)
    np.testing.assert_array_equal(png, np.repeat(grey[..., None], 3, axis=2))
    assert (png[..., 0] == 255).sum() >= 1  # the 99th-percentile cap saturates the largest values


def test_volumes_write_arrays_only(tmp_path, capsys):
    from refcam.onnx.toy_models import conv3d_net

    x = np.random.default_rng(2).random((1, 1, 6, 6, 6), dtype=np.float32)
    np.save(tmp_path / "vol.npy", x[0])  # (C, D, H, W): the batch axis is added
    code, out, err = run(
        capsys,
        "explain",
        "toy:conv3d",
        str(tmp_path / "vol.npy"),
        "-m",
        "cam",
        "-o",
        str(tmp_path / "o"),
        "-q",
    )
    assert code == 0, err
    manifest = str(tmp_path / "o" / manifest_name(["vol_cam.npy"]))
    assert out.split() == [str(tmp_path / "o" / "vol_cam.npy"), manifest]  # 2-D pictures: no PNG
    np.testing.assert_array_equal(
        np.load(tmp_path / "o" / "vol_cam.npy"), refcam.explain(conv3d_net(), x, "cam").maps[0]
    )


def test_target_by_name_per_image_and_options(tmp_path, capsys, cat):
    model, x, _ = cat
    code, _, err = run(
        capsys, "explain", "chelsea", "-m", "cam", "--target", "tabby", "-o", str(tmp_path), "-q"
    )
    assert code == 0, err
    np.testing.assert_array_equal(
        np.load(tmp_path / "chelsea_cam.npy"), refcam.explain(model, x, "cam", target=281).maps[0]
    )
    # the cat seen as an espresso (967): CAM has negative evidence, which relu=true removes
    code, _, err = run(
        capsys,
        "explain",
        "chelsea",
        "-m",
        "cam",
        "--target",
        "Espresso",
        "-O",
        "relu=true",
        "-o",
        str(tmp_path),
        "-q",
    )
    assert code == 0, err
    e = refcam.explain(model, x, "cam", target=967, relu=True)
    raw = np.load(tmp_path / "chelsea_cam.npy")
    np.testing.assert_array_equal(raw, e.maps[0])
    assert raw.min() == 0.0 and refcam.explain(model, x, "cam", target=967).maps.min() < 0

    # one target per image, comma-separated; two images of the same stem are told apart
    code, _, err = run(
        capsys,
        "explain",
        "chelsea",
        "coffee",
        "-m",
        "cam",
        "--target",
        "967,967",
        "-o",
        str(tmp_path / "b"),
        "-q",
    )
    assert code == 0, err
    xb = zoo.preprocess([zoo.sample_image_path("chelsea"), zoo.sample_image_path("coffee")])
    eb = refcam.explain(model, xb, "cam", target=967)
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "coffee_cam.npy"), eb.maps[1])
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "chelsea_cam.npy"), eb.maps[0])


def test_preprocessing_options_nhwc(tmp_path, capsys):
    code, _, err = run(
        capsys,
        "explain",
        "toy:nhwc",
        "coffee",
        "--layout",
        "NHWC",
        "--norm",
        "unit",
        "--crop-padding",
        "0",
        "--resample",
        "bilinear",
        "-m",
        "cam",
        "-o",
        str(tmp_path),
        "-q",
    )
    assert code == 0, err
    # toy:nhwc takes (N, 10, 10, 3): size 10 from the model, x / 255, largest centred square, bilinear
    x = zoo.preprocess(
        zoo.sample_image_path("coffee"),
        size=10,
        crop_padding=0,
        mean=(0, 0, 0),
        std=(255, 255, 255),
        resample="bilinear",
    ).transpose(0, 2, 3, 1)
    e = refcam.explain(nhwc_net(), x, "cam", layout="NHWC")
    np.testing.assert_array_equal(np.load(tmp_path / "coffee_cam.npy"), e.maps[0])

    # explicit mean/std override the preset (imagenet is the default for non-default models)
    code, _, err = run(
        capsys,
        "explain",
        "toy:cam",
        "coffee",
        "--mean",
        "0,0,0",
        "--std",
        "1,1,1",
        "-m",
        "cam",
        "-o",
        str(tmp_path / "raw"),
        "-q",
    )
    assert code == 0, err
    x = zoo.preprocess(zoo.sample_image_path("coffee"), size=12, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_array_equal(
        np.load(tmp_path / "raw" / "coffee_cam.npy"), refcam.explain(cam_net(), x, "cam").maps[0]
    )


def test_progress_bar_on_request(tmp_path, capsys):
    code, _, err = run(
        capsys,
        "explain",
        "toy:cam",
        "chelsea",
        "-m",
        "cam,eigencam",
        "--progress",
        "-o",
        str(tmp_path),
        "-q",
    )
    assert code == 0 and "refcam explain" in err and "0/2" in err and "eigencam" in err
    code, _, err = run(
        capsys, "explain", "toy:cam", "chelsea", "-m", "cam", "-o", str(tmp_path), "-q"
    )
    assert code == 0 and "refcam explain" not in err  # not a terminal: no bar by default


def test_preset_postprocessing(tmp_path, capsys, cat):
    presets = pytest.importorskip("refcam.presets")
    model, x, picture = cat
    code, _, err = run(
        capsys, "explain", "-m", "cam", "--preset", "paper", "-o", str(tmp_path), "-q"
    )
    assert code == 0, err
    e = refcam.explain(model, x, "cam", relu=presets.get("paper", "cam").relu)
    np.testing.assert_array_equal(np.load(tmp_path / "chelsea_cam.npy"), e.maps[0])
    shown = presets.postprocess(("paper", "cam"), e.maps, (224, 224))
    np.testing.assert_array_equal(np.load(tmp_path / "chelsea_cam_paper.npy"), shown[0])
    assert shown.shape == (1, 224, 224) and shown.min() == 0.0 and shown.max() == 1.0
    ov = np.asarray(Image.open(tmp_path / "chelsea_cam.png").convert("RGB"))
    np.testing.assert_array_equal(ov, viz.overlay(picture, shown[0]))
    # a method the preset does not cover: a usage error (every convention of a preset maps:
    # tests/test_presets.py::test_cli_explain_preset_every_method)
    code, _, err = run(capsys, "explain", "-m", "cam", "--preset", "captum")
    assert code == 2 and err.startswith("refcam: error: --preset captum: method: got 'cam'")


def test_default_method_follows_the_registry(monkeypatch):
    assert cli.default_method() == ("gradcam" if "gradcam" in METHODS else "cam")
    monkeypatch.setitem(METHODS, "gradcam", METHODS["cam"])
    assert cli.default_method() == "gradcam"
    monkeypatch.delitem(METHODS, "gradcam")
    assert cli.default_method() == "cam"


# ----------------------------------------------------------------------------- layers / methods


def test_layers_default_model_marks_head_relu(capsys):
    code, out, _ = run(capsys, "layers")
    assert code == 0
    marked = [ln for ln in out.splitlines() if ln.startswith("*  ")]
    assert len(marked) == 1 and marked[0].split()[1:] == [
        "head.relu",
        "Clip",
        "(N,",
        "1280,",
        "7,",
        "7)",
        "NCHW",
        "_swish",
    ]
    assert "_conv_head" in out and "head.pool" in out and "* default layer: head.relu" in out


def test_layers_all_and_toy(capsys):
    code, out, _ = run(capsys, "layers", "toy:cam")
    spatial = [
        ln.split()[-4] if ln.startswith("*") else ln.split()[0] for ln in out.splitlines()[1:5]
    ]
    assert code == 0 and "features" in out and "logits" not in out
    code, out, _ = run(capsys, "layers", "toy:cam", "--all")
    assert code == 0 and "logits" in out and "(N, 5)" in out
    assert any(ln.startswith("*") and "features" in ln for ln in out.splitlines())
    assert spatial  # a table was printed


def test_methods_lists_registry(capsys):
    code, out, _ = run(capsys, "methods")
    assert code == 0
    for name, m in METHODS.items():
        assert f"\n{name}" in "\n" + out
        assert m.paper in out and m.equation in out and ", ".join(m.needs) in out
    assert "(default of `refcam explain`)" in out
    code, out, _ = run(capsys, "methods", "Score-CAM")
    assert code == 0 and out.startswith("scorecam\n") and "ablationcam" not in out


# ----------------------------------------------------------------------------- errors and help


@pytest.mark.parametrize(
    "argv, code, needle",
    [
        (["explain", "nofile.onnx", "x.jpg"], 2, "model: no such file 'nofile.onnx'"),
        (["explain", "missing.jpg"], 2, "image: no such file 'missing.jpg'"),
        (["explain", "--method", "foo"], 2, "method: got 'foo', expected one of"),
        (
            ["explain", "--target", "tabbby"],
            2,
            "--target: unknown class name 'tabbby' (closest: tabby",
        ),
        (
            ["explain", "--target", "1,2,3"],
            2,
            "--target: got 3 comma-separated targets for 1 image(s)",
        ),
        (["explain", "--size", "x"], 2, "argument --size: invalid int value: 'x'"),
        (["explain", "--alpha", "2"], 2, "--alpha: got 2.0, expected a number in [0, 1]"),
        (["explain", "-O", "relu"], 2, "--option: got 'relu', expected KEY=VALUE"),
        (
            ["explain", "--mean", "1,2"],
            2,
            "--mean: got '1,2', expected three comma-separated numbers",
        ),
        (["explain", "toy:nope", "x.npy"], 2, "model: unknown toy model 'nope'"),
        (["explain", "toy:nhwc", "chelsea"], 2, "pass --layout NHWC"),
        (["explain", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        (
            ["explain", "--layer", "nope"],
            1,
            "layer: got 'nope', expected one of the model's tensor names",
        ),
        (["explain", "--target", "5000"], 1, "target: class 5000 is out of range"),
        (
            ["explain", "-m", "cam", "-O", "foo=1"],
            2,  # a bad option is a usage error (issue 17), checked before the model is run
            "foo: got 1, expected no such option for 'cam'",
        ),
        (["explain", "toy:cam", "chelsea", "--layer", "logits"], 1, "layer: got shape (N, 5)"),
    ],
)
def test_errors_are_one_line_with_exit_code(capsys, argv, code, needle):
    got, out, err = run(capsys, *argv)
    assert got == code
    assert err.startswith("refcam: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert needle in err, err
    assert out == ""


def test_unknown_layer_hint_and_debug_traceback(capsys):
    _, _, err = run(capsys, "explain", "--layer", "nope")
    assert "run `refcam layers MODEL`" in err
    for argv in (
        ["--debug", "explain", "--layer", "nope"],
        ["explain", "--layer", "nope", "--debug"],
    ):
        with pytest.raises(LayerNotFoundError):
            cli.main(argv)


def test_unsupported_op_and_internal_errors_are_one_line(monkeypatch, capsys):
    import refcam.explanation
    from refcam.errors import UnsupportedOpError

    def unsupported(*args, **kwargs):
        raise UnsupportedOpError(
            "op 'NonMaxSuppression' (node 'nms') has no backward rule in opset 17"
        )

    monkeypatch.setattr(refcam.explanation, "explain", unsupported)
    code, out, err = run(capsys, "explain", "toy:cam", "chelsea")
    assert (code, out) == (1, "")
    assert (
        err
        == "refcam: error: op 'NonMaxSuppression' (node 'nms') has no backward rule in opset 17\n"
    )

    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(refcam.explanation, "explain", bug)
    code, _, err = run(capsys, "explain", "toy:cam", "chelsea")
    assert code == 1 and err == (
        "refcam: error: ZeroDivisionError: division by zero second line "
        "(run with --debug for the traceback)\n"
    )
    with pytest.raises(ZeroDivisionError):
        cli.main(["explain", "toy:cam", "chelsea", "--debug"])


def test_not_an_onnx_file_and_unwritable_out(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    code, _, err = run(capsys, "layers", str(bad))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(
        capsys, "explain", "toy:cam", "chelsea", "-m", "cam", "-o", str(blocker / "sub")
    )
    assert code == 2 and "--out: cannot create directory" in err


@pytest.mark.parametrize(
    "argv", [["--help"], ["explain", "--help"], ["layers", "--help"], ["methods", "-h"]]
)
def test_help_everywhere(capsys, argv):
    code, out, _ = run(capsys, *argv)
    assert code == 0 and out.startswith("usage: refcam")
    if argv[0] == "explain":
        for opt in (
            "--method",
            "--layer",
            "--target",
            "--preset",
            "--out",
            "--size",
            "--crop-padding",
            "--norm",
            "--layout",
            "--progress",
        ):
            assert opt in out


def test_no_command_prints_help_and_exits_2(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and out.startswith("usage: refcam")


def test_plugin_hook_adds_a_subcommand(monkeypatch, capsys):
    mod = types.ModuleType("refcam_fake_plugin")
    mod.__spec__ = importlib.machinery.ModuleSpec("refcam_fake_plugin", None)

    def add_cli(sub, *, parents, parser_class):
        p = sub.add_parser("check", parents=parents, help="fake check")
        p.add_argument("--strict", action="store_true")
        p.set_defaults(func=lambda args: 3 if args.strict else 0)

    mod.add_cli = add_cli
    monkeypatch.setitem(sys.modules, "refcam_fake_plugin", mod)
    monkeypatch.setattr(cli, "PLUGINS", ("refcam_fake_plugin", "refcam_no_such_plugin_module"))
    assert run(capsys, "check")[0] == 0
    assert run(capsys, "check", "--strict")[0] == 3
    assert "check" in run(capsys, "--help")[1]


# ----------------------------------------------------------------------------- subprocess


def test_python_m_refcam_help_and_light_import():
    env_code = (
        "import sys, refcam; heavy = [m for m in ('onnx', 'onnxruntime', 'matplotlib') if m in sys.modules];"
        "print(heavy); assert callable(refcam.explain) and refcam.zoo.CAM_LAYER == 'head.relu'"
        " and callable(refcam.viz.overlay); print('zoo' in dir(refcam))"
    )
    r = subprocess.run(
        [sys.executable, "-c", env_code],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "True"]
    r = subprocess.run(
        [sys.executable, "-m", "refcam", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: refcam") and "explain" in r.stdout and "layers" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "refcam", "explain", "--layer"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- refcam check

MY_CAMS = """
import numpy as np
import refcam


def paper_gradcam(a, g):
    return refcam.normalize(refcam.gradcam(a, g))


def sum_gradcam(a, g):  # alpha = sum instead of mean: off by the factor Z
    return np.maximum(np.einsum("nk,nkhw->nhw", g.sum(axis=(2, 3)), a), 0)
"""


def test_check_conforming_and_buggy_functions(tmp_path, capsys):
    pytest.importorskip("refcam.conformance")
    (tmp_path / "my_cams.py").write_text(MY_CAMS)
    target = str(tmp_path / "my_cams.py")
    code, out, err = run(
        capsys, "check", f"{target}:paper_gradcam", "-m", "gradcam", "--max-examples", "10"
    )
    assert code == 0, err
    assert out.startswith("conformance of a gradcam implementation: ") and "paper (min-max)" in out
    matches = [ln for ln in out.splitlines() if ln.startswith("matches: ")]
    assert matches and "paper (min-max)" in matches[0]

    code, out, _ = run(
        capsys,
        "check",
        f"{target}:sum_gradcam",
        "-m",
        "gradcam",
        "-p",
        "paper (raw)",
        "--max-examples",
        "10",
    )
    assert code == 1
    assert "shrunk counterexample against 'paper (raw)'" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["check", "no_colon", "-m", "gradcam"], "expected MODULE:FUNCTION or FILE.py:FUNCTION"),
        (["check", "missing.py:f", "-m", "gradcam"], "check: no such file 'missing.py'"),
        (
            ["check", "refcam_no_such_module:f", "-m", "gradcam"],
            "cannot import module 'refcam_no_such_module'",
        ),
        (
            ["check", "refcam.math:no_such_fn", "-m", "gradcam"],
            "'refcam.math' has no function 'no_such_fn'",
        ),
        (
            ["check", "refcam.math:gradcam", "-m", "gradcamm"],
            "--method: got 'gradcamm', expected one of",
        ),
        (
            ["check", "refcam.math:gradcam", "-m", "gradcam", "--input-size", "7"],
            "--input-size: got '7'",
        ),
        (["check", "refcam.math:gradcam"], "the following arguments are required: -m/--method"),
    ],
)
def test_check_usage_errors(capsys, argv, needle):
    pytest.importorskip("refcam.conformance")
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, err
