"""refcam.conformance: the harness recognises which convention an implementation follows."""

from __future__ import annotations

import numpy as np
import pytest

import refcam.math as rm
from refcam.conformance import METHOD_ARGUMENTS, assert_conforms, check
from refcam.errors import InvalidArgumentError, ShapeError


def _pgc_gradcampp(a, g):
    """A NumPy transcription of pytorch-grad-cam 1.5.7's Grad-CAM++ (one layer, feature res.)."""
    g2 = g**2
    s = a.sum(axis=(2, 3), keepdims=True)
    aij = np.where(g != 0, g2 / (2 * g2 + s * g2 * g + 1e-6), 0)
    cam = np.maximum(np.einsum("nk,nkhw->nhw", (np.maximum(g, 0) * aij).sum(axis=(2, 3)), a), 0)
    for _ in range(2):                       # scale_cam_image per layer, then again after the mean
        cam = cam - cam.min(axis=(1, 2), keepdims=True)
        cam = cam / (1e-7 + cam.max(axis=(1, 2), keepdims=True))
    return cam


def test_paper_implementation_matches_paper():
    rep = check(lambda a, g: rm.normalize(rm.gradcam(a, g)), "gradcam", max_examples=30)
    assert rep.matched("paper (min-max)") and rep.target == "paper (min-max)"
    assert rep.counterexample is None and rep.n_cases == 30 + 5      # 5 fixed probe cases
    assert rep.errors["paper (min-max)"][0] <= 1e-12


def test_pgc_transcription_is_recognised_and_paper_counterexample_has_small_gradients():
    rep = check(_pgc_gradcampp, "gradcampp", max_examples=40)
    assert rep.matches[0] == "pytorch-grad-cam (min-max)"
    assert not rep.matched("paper (min-max)")
    rep = check(_pgc_gradcampp, "gradcampp", preset="paper (min-max)", max_examples=40)
    ce = rep.counterexample
    assert ce is not None and set(ce) == {"activations", "gradients", "got", "expected"}
    # The eps shows when g^2 is not >> 1e-6 (here tolerance 1e-5 relative): small gradients.
    assert 0 < np.abs(ce["gradients"]).max() <= 0.1
    assert np.abs(ce["got"] - ce["expected"]).max() > 1e-6
    assert "shrunk counterexample against 'paper (min-max)'" in str(rep)


def test_missing_relu_is_caught_with_a_minimal_case():
    rep = check(lambda a, g: rm.gradcam(a, g, relu=False), "gradcam", preset="paper (raw)", max_examples=40)
    assert rep.matched("paper (raw, ReLU flipped)") and not rep.matched("paper (raw)")
    ce = rep.counterexample
    assert ce["expected"].min() == 0 and ce["got"].min() < 0      # a negative value ReLU would clip


@pytest.mark.parametrize("method", sorted(METHOD_ARGUMENTS))
def test_refcam_paper_function_conforms_to_itself(method):
    fn = getattr(rm, method)
    assert_conforms(fn, method, preset="paper (raw)", max_examples=8)


def test_upsampled_outputs_and_float32():
    def mine(a, g):
        return rm.normalize(rm.upsample(rm.gradcam(a, g), (6, 7), "linear"))
    rep = check(mine, "gradcam", input_size=(6, 7), dtype=np.float32, max_examples=20, atol=1e-5, rtol=1e-4)
    assert rep.matched("paper (upsampled)") and rep.matched("paper")


def test_errors():
    with pytest.raises(InvalidArgumentError, match="^method: got 'gradcam3'"):
        check(lambda a, g: a, "gradcam3")
    with pytest.raises(InvalidArgumentError, match="^fn: got 3"):
        check(3, "gradcam")
    with pytest.raises(InvalidArgumentError, match="^preset: got 'pgc'"):
        check(lambda a, g: a, "gradcam", preset="pgc")
    with pytest.raises(InvalidArgumentError, match="^dtype"):
        check(lambda a, g: a, "gradcam", dtype=np.int32)
    with pytest.raises(ShapeError, match="^fn\\(\\.\\.\\.\\): got shape \\(2, 3, 3, 4\\), expected \\(2, 3, 4\\)"):
        check(lambda a, g: a, "gradcam", max_examples=5)
    with pytest.raises(AssertionError, match="does not conform to 'paper \\(raw\\)'"):
        assert_conforms(lambda a, g: 2 * rm.gradcam(a, g), "gradcam", preset="paper (raw)", max_examples=10)


# --------------------------------------------------------------------------- issue 17: NaN passes

_NAN_FILE = '''import numpy as np


def nan(activations, gradients):
    return np.full(activations.shape[:1] + activations.shape[2:], np.nan)
'''


def test_issue17_cli_check_fails_a_nan_function(tmp_path, capsys):
    """Exact reproduction: ``refcam check f.py:nan --method gradcam`` printed matches, exit 0."""
    from refcam.cli import main

    f = tmp_path / "f.py"
    f.write_text(_NAN_FILE)
    code = main(["check", f"{f}:nan", "--method", "gradcam", "--max-examples", "10"])
    out = capsys.readouterr().out
    assert code == 1
    assert "matches: none" in out


def test_issue17_assert_conforms_raises_on_a_nan_function():
    def nan(a, g):
        return np.full(a.shape[:1] + a.shape[2:], np.nan)
    with pytest.raises(AssertionError, match="does not conform"):
        assert_conforms(nan, "gradcam", max_examples=10)
    rep = check(nan, "gradcam", max_examples=10)
    assert rep.matches == [] and all(e[0] == np.inf for e in rep.errors.values())
