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
