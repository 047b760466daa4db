"""refcam.conformance on the genuine peers' formula code: it names the preset each one follows."""

from __future__ import annotations

import numpy as np
import pytest

REASON = ("peer cross-checks need torch and the genuine peers "
          "(pip install -e '.[peers]'; see docs/presets.md)")
for _mod in ("torch", "torchvision", "pytorch_grad_cam", "torchcam", "captum"):
    pytest.importorskip(_mod, reason=REASON)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from refcam.conformance import check  # noqa: E402


def _pgc_fn(cls):
    """pytorch-grad-cam's own get_cam_image + ReLU + scale_cam_image + aggregate_multi_layers."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    dummy = nn.Sequential(nn.Conv2d(1, 1, 1))  # the formula methods never run the model
    obj = cls(model=dummy, target_layers=[dummy[0]])

    def fn(a, g):
        raw = obj.get_cam_image(None, None, None, a, g, False)
        per_layer = scale_cam_image(np.maximum(raw, 0))
        return obj.aggregate_multi_layers([per_layer[:, None]])
    return fn


class _PerSampleLinear(nn.Module):
    """y_n = sum A[n] * W[n], output (N, 1): ∂y_n/∂A[n] = W[n] exactly (class index 0)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.w = nn.Parameter(w)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nkhw,nkhw->n", self.feat(a), self.w)[:, None]


def _torchcam_fn(cls):
    def fn(a, g):
        model = _PerSampleLinear(torch.from_numpy(g)).eval()
        x = torch.from_numpy(a).requires_grad_(True)
        with cls(model, "feat", input_shape=a.shape[1:]) as ex:
            cams = ex(class_idx=[0] * a.shape[0], scores=model(x))
        return cams[0].detach().numpy()
    return fn


@pytest.mark.parametrize("name,method", [("GradCAM", "gradcam"), ("GradCAMPlusPlus", "gradcampp"),
                                         ("XGradCAM", "xgradcam"), ("LayerCAM", "layercam"),
                                         ("HiResCAM", "hirescam"), ("GradCAMElementWise", "gradcam_elementwise")])
def test_pytorch_grad_cam_formulas_conform_to_their_preset(name, method):
    import pytorch_grad_cam as pgc

    rep = check(_pgc_fn(getattr(pgc, name)), method, preset="pytorch-grad-cam", max_examples=25,
                atol=1e-6, rtol=1e-5)       # the peer returns float32
    assert rep.matched("pytorch-grad-cam"), str(rep)
    if method == "gradcampp":               # the additive 1e-6 departs from the paper
        assert not rep.matched("paper (min-max)")


@pytest.mark.parametrize("name,method", [("GradCAM", "gradcam"), ("GradCAMpp", "gradcampp"),
                                         ("XGradCAM", "xgradcam"), ("LayerCAM", "layercam")])
def test_torchcam_formulas_conform_to_their_preset(name, method):
    import torchcam.methods as tm

    rep = check(_torchcam_fn(getattr(tm, name)), method, preset="torchcam", max_examples=25)
    assert rep.matched("torchcam"), str(rep)
    if method == "gradcampp":               # alpha stays g^2
        assert not rep.matched("paper (min-max)")
        assert rep.errors["paper (min-max)"][0] > 0.1


# --------------------------------------------------------------------------- issue 18: the diagnosis
# Each known divergence of docs/divergences.md, diagnosed by name and value from the genuine
# package's own class, called natively through refcam.peer_adapters.

from refcam.peer_adapters import adapt  # noqa: E402


def _diagnose(cls, n=25, **kw):
    fn, method, mode = adapt(cls, input_size=kw.get("input_size"))
    rep = check(fn, method, mode=mode, max_examples=n, **kw)
    print(rep.diagnosis)                    # the text the report shows (pytest -s)
    return rep, rep.diagnosis


def test_diagnosis_pgc_gradcampp_eps_from_the_class():
    import pytorch_grad_cam as pgc

    rep, d = _diagnose(pgc.GradCAMPlusPlus)
    assert rep.matched("pytorch-grad-cam (min-max)") and not rep.matched("paper (min-max)")
    assert d.knob("eps") == 1e-6
    assert "eps = 1e-06 added to the α denominator" in d.summary
    assert "pytorch-grad-cam's convention" in d.summary


def test_diagnosis_pgc_gradcampp_raw_weights_issue_reproduction():
    """Issue 18: pgc's own ``get_cam_weights`` with the raw map relu(Σ w A) matched nothing."""
    from pytorch_grad_cam import GradCAMPlusPlus

    def raw(a, g):
        w = GradCAMPlusPlus.get_cam_weights(None, None, None, None, a, g)
        return np.maximum(np.einsum("nk,nkhw->nhw", w, a), 0)

    rep = check(raw, "gradcampp", dtype=np.float32, max_examples=50)
    assert "pytorch-grad-cam (raw)" in rep.matches
    assert rep.diagnosis.knob("eps") == 1e-6
    assert rep.diagnosis.summary.startswith("your function = Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19), "
                                            "raw map, ReLU on the map, with eps = 1e-06 added to the α denominator")


def test_diagnosis_torchcam_alpha_from_the_class():
    import torchcam.methods as tm

    rep, d = _diagnose(tm.GradCAMpp)
    assert rep.matched("torchcam (min-max)")
    assert d.knob("alpha") == "torchcam"
    assert "α = g²" in d.summary and "torchcam's convention" in d.summary


def test_diagnosis_pgc_scorecam_align_corners_from_the_class():
    import pytorch_grad_cam as pgc

    rep, d = _diagnose(pgc.ScoreCAM, n=15)
    assert rep.mode == "model" and rep.matched("pytorch-grad-cam (upsampled)")
    assert d.knob("upsample_mode") == "linear-align-corners"
    assert "masks upsampled bilinear align-corners" in d.summary


def test_diagnosis_captum_nearest_and_no_relu_from_the_class():
    from captum.attr import LayerGradCam

    rep, d = _diagnose(LayerGradCam, input_size=(7, 9))
    assert rep.matched("captum (upsampled)")
    assert d.knob("relu") is False and d.knob("upsample") == "nearest"
    assert "no ReLU on the map" in d.summary and "upsampled nearest" in d.summary


def test_diagnosis_pgc_eigencam_sign_from_the_class():
    import pytorch_grad_cam as pgc

    rep, d = _diagnose(pgc.EigenCAM, n=40)
    assert d.knob("sign") == "none" and d.knob("center") is True
    assert "no sign rule" in d.summary


def test_diagnosis_torchcam_cam_relu_from_the_class():
    import torchcam.methods as tm

    rep, d = _diagnose(tm.CAM)
    assert rep.matched("torchcam (min-max)")
    # no ReLU: the paper's CAM (Zhou et al. eq. 2) has none either, so it is not a change; the
    # divergence is from torchcam's own docstring.  The knob is named with its value.
    assert d.knobs["relu"] is False and d.setting.relu is False
    assert "ReLU" not in d.formula.splitlines()[0]
    assert d.knob("normalize_eps") == 1e-8
    assert "min-max scaled map, no ReLU on the map" in d.summary


def test_diagnosis_pgc_ablation_compounding_from_the_class():
    import pytorch_grad_cam as pgc

    rep, d = _diagnose(pgc.AblationCAM, n=15)
    assert d.knob("ablation_value") == "pgc"
    assert "min(A) - 1e7, compounding" in d.summary
    # pgc divides by the unablated score: a zero score gives NaN, which is reported, never matched
    if d.non_finite:
        assert d.summary.startswith("your function returned NaN or Inf on finite input")


def test_cli_check_points_at_a_peer_class(capsys):
    import json

    from refcam.cli import main

    code = main(["check", "pytorch_grad_cam:GradCAMPlusPlus", "--max-examples", "15", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "gradcampp" and "pytorch-grad-cam (min-max)" in out["matches"]
    assert code == 0
    assert {"knob": "eps", "value": 1e-6, "text": "eps = 1e-06 added to the α denominator"} in \
        out["diagnosis"]["changes"]
