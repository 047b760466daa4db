r"""Adapters from the peers' native calling conventions to :func:`refcam.conformance.check`.

Point the conformance harness at a peer's class as it is -- ``pytorch_grad_cam.GradCAMPlusPlus``,
``torchcam.methods.GradCAMpp``, ``captum.attr.LayerGradCam`` -- and :func:`adapt` returns a
function of the harness's signature that builds the small torch model the class needs and calls
the class the way its users do:

* **arrays mode** (``fn(activations, gradients)`` etc.): the model's input *is* the layer
  (``feature``, an ``nn.Identity``), and its output is :math:`y_n = \sum A_n \odot G_n` per
  sample, so the activations the peer hooks are exactly ``activations`` and the gradients it
  back-propagates are exactly ``gradients`` (CAM: a GAP -> linear head whose rows are
  ``class_weights``);
* **model mode** (``fn(model, inputs, targets)``): the torch twin of a
  :class:`refcam.conformance.TinyModel` (:func:`torch_model`); used for the methods whose
  numbers come from forward passes of masked or ablated inputs (Score-CAM, Ablation-CAM).

torch is imported here only, lazily (the ``peers`` extra: ``pip install refcam[peers]``).

Examples
--------
>>> from refcam.peer_adapters import PEER_CLASSES
>>> PEER_CLASSES["pytorch_grad_cam"]["GradCAMPlusPlus"]
'gradcampp'
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any, Callable

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["adapt", "torch_model", "PEER_CLASSES", "MODEL_MODE_CLASSES", "is_peer_class"]

#: ``package -> class name -> refcam method`` the adapters know.
PEER_CLASSES: dict[str, dict[str, str]] = {
    "pytorch_grad_cam": {"GradCAM": "gradcam", "GradCAMPlusPlus": "gradcampp", "XGradCAM": "xgradcam",
                         "LayerCAM": "layercam", "HiResCAM": "hirescam",
                         "GradCAMElementWise": "gradcam_elementwise", "EigenCAM": "eigencam",
                         "EigenGradCAM": "eigengradcam", "ScoreCAM": "scorecam",
                         "AblationCAM": "ablationcam"},
    "torchcam": {"CAM": "cam", "GradCAM": "gradcam", "GradCAMpp": "gradcampp", "XGradCAM": "xgradcam",
                 "LayerCAM": "layercam", "ScoreCAM": "scorecam"},
    "captum": {"LayerGradCam": "gradcam"},
}
#: Classes whose numbers need forward passes of a model (checked in model mode by default).
MODEL_MODE_CLASSES = {("pytorch_grad_cam", "ScoreCAM"), ("pytorch_grad_cam", "AblationCAM"),
                      ("torchcam", "ScoreCAM")}


def _package(obj: Any) -> str:
    return str(getattr(obj, "__module__", "")).split(".")[0]


def is_peer_class(obj: Any) -> bool:
    """Whether ``obj`` is a class of a peer package the adapters know."""
    return isinstance(obj, type) and obj.__name__ in PEER_CLASSES.get(_package(obj), {})


def peer_method(obj: Any) -> str:
    """The refcam method of a peer class (``GradCAMPlusPlus`` -> ``"gradcampp"``)."""
    return PEER_CLASSES[_package(obj)][obj.__name__]


def default_mode(obj: Any) -> str:
    return "model" if (_package(obj), obj.__name__) in MODEL_MODE_CLASSES else "arrays"


def _torch():
    try:
        import torch
    except ImportError as exc:                      # pragma: no cover - depends on the install
        raise ImportError("the peer adapters need torch: pip install 'refcam[peers]'") from exc
    return torch


def torch_model(model: Any):
    """The torch twin (float64) of a :class:`refcam.conformance.TinyModel`; layer ``A`` = ``.feature``."""
    torch = _torch()
    nn = torch.nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            k = model.w1.shape[0]
            self.pool = nn.AvgPool2d(model.pool)
            self.conv = nn.Conv2d(3, k, 1)
            with torch.no_grad():
                self.conv.weight.copy_(torch.from_numpy(model.w1[:, :, None, None]))
                self.conv.bias.copy_(torch.from_numpy(model.b1))
            self.feature = nn.Identity()
            self.v = nn.Parameter(torch.from_numpy(model.v.copy()))
            self.c = nn.Parameter(torch.from_numpy(model.c.copy()))

        def forward(self, x):
            a = self.feature(self.conv(self.pool(x)))
            return torch.einsum("qkhw,nkhw->nq", self.v, a) + self.c

    return Tiny().double().eval()


def _given_features(g: np.ndarray):
    """``y_n = Σ A_n ⊙ G_n`` (output (N, 1)); ``A`` = the input through ``feature`` (+ a zero
    parameter so that the layer output requires grad, as inside a real network)."""
    torch = _torch()
    nn = torch.nn

    class GivenFeatures(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.zero = nn.Parameter(torch.zeros((), dtype=torch.float64))
            self.feature = nn.Identity()
            self.w = nn.Parameter(torch.from_numpy(np.ascontiguousarray(g, np.float64)))

        def forward(self, a):
            return torch.einsum("nkhw,nkhw->n", self.feature(a + self.zero), self.w)[:, None]

    return GivenFeatures().double().eval()


def _gap_linear(class_weights: np.ndarray):
    torch = _torch()
    nn = torch.nn
    n, k = class_weights.shape
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(k, n, bias=False))
    with torch.no_grad():
        model[3].weight.copy_(torch.from_numpy(np.ascontiguousarray(class_weights, np.float64)))
    return model.double().eval()


@contextlib.contextmanager
def _quiet():
    """Silence the peers' progress bars and their NumPy warnings (a NaN the peer returns is
    reported by the harness itself, as a failure)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def _pgc(cls: type, mode: str) -> Callable[..., np.ndarray]:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    torch = _torch()

    def run(model, x, targets):
        kw = {}
        if cls.__name__ == "AblationCAM":
            # pgc's default ``ablation_layer=AblationLayer()`` is one instance shared by every
            # AblationCAM object (a mutable default argument): give each call its own
            from pytorch_grad_cam.ablation_layer import AblationLayer
            kw["ablation_layer"] = AblationLayer()
        with _quiet(), cls(model=model, target_layers=[model.feature], **kw) as cam:
            return np.asarray(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))

    if mode == "model":
        return lambda model, x, t: run(torch_model(model), torch.from_numpy(x), t)

    def arrays(a, g=None):
        g = np.zeros_like(a) if g is None else g
        return run(_given_features(g), torch.from_numpy(np.ascontiguousarray(a, np.float64)), [0] * a.shape[0])
    return arrays


def _torchcam(cls: type, mode: str) -> Callable[..., np.ndarray]:
    torch = _torch()

    def run(model, layer, x, class_idx, **kw):
        x = x.requires_grad_(True) if cls.__name__ not in ("CAM", "ScoreCAM") else x
        with _quiet(), cls(model, layer, input_shape=tuple(x.shape[1:]), **kw) as ex:
            if cls.__name__ in ("CAM", "ScoreCAM"):
                with torch.no_grad():
                    scores = model(x)
                cams = ex(class_idx=list(class_idx))
            else:
                cams = ex(class_idx=list(class_idx), scores=model(x))
        return cams[0].detach().numpy()

    if mode == "model":
        return lambda model, x, t: run(torch_model(model), "feature", torch.from_numpy(x), [int(c) for c in t])
    if cls.__name__ == "CAM":
        def cam(a, class_weights):
            model = _gap_linear(class_weights)
            return run(model, "0", torch.from_numpy(np.ascontiguousarray(a, np.float64)), range(a.shape[0]),
                       fc_layer="3")
        return cam

    def arrays(a, g):
        return run(_given_features(g), "feature", torch.from_numpy(np.ascontiguousarray(a, np.float64)),
                   [0] * a.shape[0])
    return arrays


def _captum(cls: type, mode: str, input_size) -> Callable[..., np.ndarray]:
    from captum.attr import LayerAttribution
    torch = _torch()

    def finish(attr):
        if input_size is not None:
            attr = LayerAttribution.interpolate(attr, tuple(input_size))    # captum's default: nearest
        return attr.detach().numpy()[:, 0]

    if mode == "model":
        def model_fn(model, x, t):
            tm = torch_model(model)
            return finish(cls(tm, tm.feature).attribute(torch.from_numpy(x), target=[int(c) for c in t]))
        return model_fn

    def arrays(a, g):
        model = _given_features(g)
        return finish(cls(model, model.feature).attribute(torch.from_numpy(np.ascontiguousarray(a, np.float64)),
                                                          target=0))
    return arrays


def adapt(obj: Any, *, mode: str | None = None, input_size: Any = None) -> tuple[Callable[..., np.ndarray], str, str]:
    """``(fn, method, mode)`` for a peer class: ``fn`` has the signature of
    :func:`refcam.conformance.check` in ``mode`` (default: model mode for Score-CAM and
    Ablation-CAM, arrays otherwise).  ``input_size`` (captum, arrays mode): resize the layer
    attribution with ``LayerAttribution.interpolate`` as captum's users do.

    Raises
    ------
    InvalidArgumentError
        ``obj`` is not a class the adapters know (see :data:`PEER_CLASSES`).
    """
    if not is_peer_class(obj):
        known = ", ".join(f"{p}.{c}" for p, cs in PEER_CLASSES.items() for c in cs)
        raise InvalidArgumentError("obj", obj, f"a peer class: {known}")
    method = peer_method(obj)
    mode = default_mode(obj) if mode is None else mode
    if mode == "arrays" and (_package(obj), obj.__name__) in MODEL_MODE_CLASSES:
        raise InvalidArgumentError("mode", mode, f"'model' ({obj.__name__} runs forward passes of masked inputs)")
    pkg = _package(obj)
    if pkg == "pytorch_grad_cam":
        return _pgc(obj, mode), method, mode
    if pkg == "torchcam":
        return _torchcam(obj, mode), method, mode
    return _captum(obj, mode, input_size), method, mode
