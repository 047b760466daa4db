"""ONNX level: refcam on the exported ONNX file (both torch exporters) vs the peer on the torch model.

Activations, class weights (``linear_head``), masked-input scores, ablated scores
(``Model.head``) and the gradients ∂y^c/∂A (``refcam.autodiff.gradients``, exact VJP graph) all
come from onnxruntime.  Eigen-CAM is left to the array level (its sign is LAPACK's).
"""

from __future__ import annotations

import pytest

REASON = ("peer cross-checks need torch and the genuine peers "
          "(pip install -e '.[peers]'; see docs/presets.md)")
for _mod in ("torch", "torchvision", "pytorch_grad_cam", "torchcam", "captum", "onnxscript"):
    pytest.importorskip(_mod, reason=REASON)

from . import peers_harness as H  # noqa: E402
from refcam.onnx import Model  # noqa: E402

FEAT_TOL = 1e-5
UP_TOL = 1e-4


@pytest.fixture(scope="module", params=[("resnet", False), ("resnet", True), ("vgg", False), ("vgg", True)],
                ids=["resnet-legacy", "resnet-dynamo", "vgg-legacy", "vgg-dynamo"])
def exported(request, tmp_path_factory):
    kind, dynamo = request.param
    path = tmp_path_factory.mktemp("onnx") / f"{kind}.onnx"
    H.export_onnx(H.make_model(kind), H.make_input(), str(path), dynamo)
    return kind, Model(str(path))


@pytest.mark.parametrize("peer,method", H.ONNX_CASES, ids=[f"{p}-{m}" for p, m in H.ONNX_CASES])
def test_forward_only_methods_from_onnx(exported, peer, method):
    kind, m = exported
    if method == "cam" and kind != "resnet":
        pytest.skip("CAM needs a GAP -> linear head (the VGG-like model has a two-layer classifier)")
    r = H.run_onnx(peer, method, kind, m)
    assert r["act_err"] <= 1e-5 and r["logit_err"] <= 1e-5      # onnxruntime vs torch, relative
    tol = FEAT_TOL if peer == "torchcam" else UP_TOL               # torchcam maps: feature resolution
    if peer == "captum":                                           # raw, unnormalised map: relative
        tol = UP_TOL * float(abs(r["peer"]).max())
    assert H.max_abs(r["ref"], r["peer"]) <= tol
