"""``refcam layers`` shows each layer's layout; ``refcam explain`` ends every bad layout, ambiguous
name and 1x1 layer in exit code 1 with a message saying what to pass — never exit 0 with a
meaningless picture."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from refcam.cli import main

from .test_layout import channels_last_net, vit_like, window_net

pytest.importorskip("matplotlib")


@pytest.fixture()
def files(tmp_path):
    out = {}
    for name, proto in [("vit", vit_like()[0]), ("cl", channels_last_net()), ("win", window_net())]:
        p = tmp_path / f"{name}.onnx"
        onnx.save(proto, str(p))
        out[name] = str(p)
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out["x"] = str(tmp_path / "x.npy")
    out["out"] = str(tmp_path / "out")
    return out


def test_layers_shows_layout_column(files, capsys):
    assert main(["layers", files["vit"], "--all"]) == 0
    text = capsys.readouterr().out
    rows = {ln.split()[1] if ln.startswith("*") else ln.split()[0]: ln for ln in text.splitlines() if ln.strip()}
    assert "layout" in text.splitlines()[0]
    assert "NTC 1+2x2" in rows["norm1"] and rows["norm1"].startswith("*")
    assert "NCHW" in rows["patches"] and " ? " in rows["attn"] + " "
    assert "NC " in rows["cls_out"] + " "


def _explain(files, model, *extra):
    return main(["explain", files[model], files["x"], "-o", files["out"], "-m", "gradcam", *extra])


def test_cli_default_token_layer_exit_0(files, capsys):
    assert _explain(files, "vit") == 0


def test_cli_pooled_layer_exit_1_unless_allowed(files, capsys):
    assert _explain(files, "cl", "-l", "gap") == 1
    err = capsys.readouterr().err
    assert "2x2" in err and "--allow-small-map" in err
    assert _explain(files, "cl", "-l", "gap", "--allow-small-map") == 0


def test_cli_unclear_layout_exit_1_then_override(files, capsys):
    assert _explain(files, "win", "-l", "merged") == 1
    assert "--layer-layout" in capsys.readouterr().err
    assert _explain(files, "win", "-l", "merged", "--layer-layout", "NHWC") == 0
    assert _explain(files, "win", "-l", "merged", "--layer-layout", "NTC") == 1   # malformed
    assert "layer_layout" in capsys.readouterr().err


def test_cli_vector_layer_exit_1(files, capsys):
    assert _explain(files, "vit", "-l", "cls_out") == 1
    assert "not a spatial activation" in capsys.readouterr().err


def test_cli_several_inputs(tmp_path, capsys):
    """captum's two-input conv net from the command line: --input-name and --other-input."""
    from .test_layout_inputs import convnet_one_conv

    p = tmp_path / "two.onnx"
    onnx.save(convnet_one_conv(), str(p))
    np.save(tmp_path / "x.npy", np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    np.save(tmp_path / "x2.npy", np.ones((1, 1, 4, 4), np.float32))
    base = ["explain", str(p), str(tmp_path / "x.npy"), "-o", str(tmp_path / "o"), "-m", "gradcam",
            "-l", "conv1", "-t", "0", "-O", "relu=false"]
    assert main(base) == 1
    assert "--input-name" in capsys.readouterr().err
    assert main(base + ["--input-name", "x", "--other-input", f"x2={tmp_path / 'x2.npy'}"]) == 0
    got = np.load(tmp_path / "o" / "x_gradcam.npy")
    np.testing.assert_array_equal(got.reshape(2, 2), [[14.5, 19.0], [32.5, 37.0]])


def test_cli_embedded_model_pooled_layer_exit_1(tmp_path, capsys):
    """The issue's case: ``-l head.pool`` on the embedded model was a uniform 1x1 overlay, exit 0."""
    assert main(["explain", "chelsea", "-l", "head.pool", "-o", str(tmp_path), "-m", "gradcam"]) == 1
    err = capsys.readouterr().err
    assert "2x2" in err and "--allow-small-map" in err
