"""The registry-level ``eigen_smooth`` and ``aug_smooth`` options against genuine pytorch-grad-cam.

Level tested: ``refcam.explain(onnx_export, x, method, eigen_smooth=..., aug_smooth=...,
**presets.explain_options(pgc))`` + the pytorch-grad-cam post-processing
(:func:`refcam.presets.postprocess_explanation`) versus ``cam(input_tensor, targets,
eigen_smooth=..., aug_smooth=...)`` on the torch model, as maps at the input size in ``[0, 1]``:
``max |refcam - peer| <= 1e-5 * max |peer|``.

``eigen_smooth``: pytorch-grad-cam keeps LAPACK's sign of the first singular vector (not
reproducible, ``docs/divergences.md``); refcam's projection (``sign="max-abs"``) is taken with
the per-sample sign whose final map is closer to the peer's (the other sign gives a different
picture: the ReLU keeps the other half).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

REASON = ("peer cross-checks need torch and the genuine peers "
          "(pip install -e '.[peers]'; see docs/presets.md)")
for _mod in ("torch", "pytorch_grad_cam", "ttach"):
    pytest.importorskip(_mod, reason=REASON)

from . import peers_harness as H  # noqa: E402

from refcam import presets  # noqa: E402
from refcam._compare import max_abs_error  # noqa: E402

REL_TOL = 1e-5
METHODS = ("gradcam", "gradcampp", "scorecam", "layercam")


@pytest.fixture(scope="module", params=["resnet", "vgg"])
def setup(request, tmp_path_factory):
    import refcam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    kind = request.param
    model, x = H.make_model(kind), H.make_input()
    path = str(tmp_path_factory.mktemp("smoothing") / f"{kind}.onnx")
    H.export_onnx(model, x, path, dynamo=False)
    targets = [ClassifierOutputTarget(c) for c in H.CLASSES]
    return kind, model, x, targets, refcam.onnx.load(path)


def _peer(method, model, kind, x, targets, **kw):
    import pytorch_grad_cam as pgc

    with H._quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with getattr(pgc, H.PGC_METHODS[method])(model=model, target_layers=H.target_layers(model)) as cam:
            return cam(input_tensor=x, targets=targets, **kw)


def _refcam(method, m, kind, x, **kw):
    import refcam

    conv = presets.get("pytorch-grad-cam", method)
    opts = dict(presets.explain_options(conv), **kw)
    e = refcam.explain(m, x.numpy(), method, layer=H.ONNX_LAYER[kind], target=list(H.CLASSES), **opts)
    return conv, e


def _rel(ref, peer) -> float:
    return max_abs_error(ref, peer) / float(np.abs(peer).max())


@pytest.mark.parametrize("method", METHODS)
def test_aug_smooth(setup, method):
    kind, model, x, targets, m = setup
    peer = _peer(method, model, kind, x, targets, aug_smooth=True)
    conv, e = _refcam(method, m, kind, x, aug_smooth=True)
    assert e.arrays["aug_maps"].shape[0] == 6 and e.arrays["aug_flips"].tolist() == [0, 0, 0, 1, 1, 1]
    ref = presets.postprocess_explanation(conv, e)
    assert _rel(ref, peer) <= REL_TOL


def _closer_sign(conv, raw, peer, size):
    """The peer's final map from refcam's raw projection ``(N, *S)``, each sample with the sign
    (of LAPACK's two) whose final map is closer to ``peer``."""
    finals = [presets.postprocess(conv, np.maximum(s * raw, 0), size) for s in (1, -1)]
    axes = tuple(range(1, raw.ndim))
    pick = np.abs(finals[1] - peer).max(axis=axes) < np.abs(finals[0] - peer).max(axis=axes)
    return np.where(pick.reshape((-1,) + (1,) * len(axes)), finals[1], finals[0])


@pytest.mark.parametrize("method", METHODS)
def test_eigen_smooth(setup, method):
    kind, model, x, targets, m = setup
    peer = _peer(method, model, kind, x, targets, eigen_smooth=True)
    conv, e = _refcam(method, m, kind, x, eigen_smooth=True, relu=False)
    assert len(e.arrays["eigen_smooth_weights"]) == 1
    assert _rel(_closer_sign(conv, e.maps, peer, e.input_size), peer) <= REL_TOL


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_eigen_smooth_and_aug_smooth(setup, method):
    """Both options: refcam's projection of every augmented input, each with the sign the peer's
    map of that augmented input (genuine ``cam(t(x), eigen_smooth=True)``) has, averaged, vs the
    peer's ``cam(x, eigen_smooth=True, aug_smooth=True)``."""
    import torch

    from refcam import math as rm

    kind, model, x, targets, m = setup
    peer = _peer(method, model, kind, x, targets, eigen_smooth=True, aug_smooth=True)
    conv, e = _refcam(method, m, kind, x, eigen_smooth=True, aug_smooth=True, relu=False)
    finals = []
    for (flip, factor), raw in zip(rm.AUG_TRANSFORMS, e.arrays["aug_maps"]):
        xa = (torch.flip(x, dims=[-1]) if flip else x) * factor
        peer_t = _peer(method, model, kind, xa, targets, eigen_smooth=True)
        finals.append(_closer_sign(conv, raw, peer_t, e.input_size))
    ref = rm.aug_smooth(np.stack(finals), [f for f, _ in rm.AUG_TRANSFORMS])
    assert _rel(ref, peer) <= REL_TOL
