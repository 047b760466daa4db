"""Shared machinery of the peer cross-checks (needs torch and the genuine peer packages).

* two plain-torch models with seeded weights (ResNet-18-like, VGG-like; separate, non in-place
  ReLU modules so hooked tensors are never overwritten);
* :func:`extract`: activations ``A`` and gradients ``∂y^c/∂A`` of target layers via torch hooks;
* one runner per (peer, method) returning ``(refcam_map, peer_map)`` computed from the *same*
  model, input and targets -- the peer through its public API, refcam through
  :func:`refcam.presets.compute` on the hooked arrays.

Used by ``tests/peers/test_peers_*.py`` and by ``benchmarks/peers_report.py``.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch
from torch import nn

from refcam import math as rm
from refcam import presets

torch.set_num_threads(2)

INPUT_SIZE = (40, 56)          # non-square on purpose (catches H/W swaps)
CLASSES = [3, 7]               # one target per sample, batch of 2


# --------------------------------------------------------------------------- models

class Block(nn.Module):
    """ResNet BasicBlock with separate ReLU modules (``relu_out`` is the block output)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu_out(y + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """ResNet-18-like: stem, three BasicBlocks, global average pooling, linear head."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = Block(16, 16)
        self.layer2 = Block(16, 32, 2)
        self.layer3 = Block(32, 32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyVGG(nn.Module):
    """VGG-like: conv/ReLU stacks, max pooling, a two-layer classifier."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(96, 32), nn.ReLU(), nn.Linear(32, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            k = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(k, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(k, generator=gen))
            m.weight.data.copy_(0.8 + 0.4 * torch.rand(k, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(k, generator=gen))


def make_model(kind: str, seed: int = 0) -> nn.Module:
    """A seeded model in eval mode: ``"resnet"`` or ``"vgg"``."""
    torch.manual_seed(seed)
    model = TinyResNet() if kind == "resnet" else TinyVGG()
    _randomise_bn(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def make_input(seed: int = 0) -> torch.Tensor:
    return torch.randn((len(CLASSES), 3) + INPUT_SIZE, generator=torch.Generator().manual_seed(seed + 100))


def target_layers(model: nn.Module, multi: bool = False) -> list[nn.Module]:
    """Last feature layer (or, with ``multi``, an earlier one at another resolution too)."""
    if isinstance(model, TinyResNet):
        return [model.layer1, model.layer3] if multi else [model.layer3]
    return [model.features[3], model.features[8]] if multi else [model.features[8]]


# --------------------------------------------------------------------------- extraction

def extract(model: nn.Module, layers: list[nn.Module], x: torch.Tensor,
            classes: list[int]) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """(A per layer, ∂(Σ_n y_n^{c_n})/∂A per layer, logits) as float32 NumPy arrays."""
    store: dict[int, torch.Tensor] = {}
    handles = [layer.register_forward_hook(lambda m, i, o, k=k: store.__setitem__(k, o))
               for k, layer in enumerate(layers)]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    outs = [store[k] for k in range(len(layers))]
    y = out.gather(1, torch.tensor(classes).view(-1, 1)).sum()
    grads = torch.autograd.grad(y, outs)
    acts = [o.detach().numpy().copy() for o in outs]
    return acts, [g.detach().numpy().copy() for g in grads], out.detach().numpy()


def target_scores(model: nn.Module, inputs: torch.Tensor, classes: list[int], per: int,
                  batch: int = 64) -> np.ndarray:
    """Logit of ``classes[n]`` for inputs laid out as ``(N*per, C, *S)`` -> ``(N, per)``."""
    cls = torch.tensor(classes).repeat_interleave(per)
    out = []
    with torch.no_grad():
        for i in range(0, inputs.shape[0], batch):
            o = model(inputs[i:i + batch])
            out.append(o.gather(1, cls[i:i + batch].view(-1, 1))[:, 0])
    return torch.cat(out).numpy().reshape(len(classes), per)


def masked_scores(model: nn.Module, x: torch.Tensor, masks: np.ndarray, classes: list[int]) -> np.ndarray:
    """Score-CAM: target logits of ``x * H^k`` for masks ``(N, K, *S_in)`` -> ``(N, K)``."""
    n, k = masks.shape[:2]
    m = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))
    inputs = (x[:, None] * m[:, :, None]).reshape((n * k,) + tuple(x.shape[1:]))
    return target_scores(model, inputs, classes, k)


def ablated_scores(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: list[int],
                   value_rule: float | str, batch: int = 32) -> np.ndarray:
    """Ablation-CAM: target logits with channel k of ``layer`` replaced -> ``(N, K)``.

    ``value_rule`` a number: the channel set to it (the paper: 0.0).
    ``value_rule="pgc"``: pytorch-grad-cam 1.5.7 (``ablation_layer.py:70-85``) replayed
    literally -- per forward batch of ``batch`` copies, copy i gets ``0`` if the running
    minimum of the batch tensor is 0, else ``running_min - 1e7`` (the minimum includes the
    copies already ablated, hence the compounding).
    """
    with torch.no_grad():
        store = {}
        h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
        model(x)
        h.remove()
        acts = store["a"]
        n, k = acts.shape[:2]
        scores = np.zeros((n, k), np.float32)
        for s in range(n):
            for start in range(0, k, batch):
                idx = list(range(start, min(k, start + batch)))
                out = acts[s:s + 1].repeat(len(idx), *([1] * (acts.ndim - 1))).clone()
                for j, c in enumerate(idx):
                    if not isinstance(value_rule, str):
                        out[j, c] = value_rule
                    elif torch.min(out) == 0:
                        out[j, c] = 0
                    else:
                        out[j, c] = torch.min(out) - 1e7
                h = layer.register_forward_hook(lambda m, i, o, r=out: r)
                try:
                    o = model(x[s:s + 1].repeat(len(idx), 1, 1, 1))
                finally:
                    h.remove()
                scores[s, idx] = o[:, classes[s]].numpy()
    return scores


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield


# --------------------------------------------------------------------------- pytorch-grad-cam

PGC_METHODS = {
    "gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
    "layercam": "LayerCAM", "hirescam": "HiResCAM", "gradcam_elementwise": "GradCAMElementWise",
    "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}


def _signed_to_match(ref: np.ndarray, peer: np.ndarray) -> np.ndarray:
    """Per-sample sign s in {+1, -1} making ``s*ref`` closest to ``peer`` (Eigen-CAM's LAPACK sign)."""
    axes = tuple(range(1, ref.ndim))
    d_plus = np.max(np.abs(ref - peer), axis=axes)
    d_minus = np.max(np.abs(ref + peer), axis=axes)
    return np.where(d_minus < d_plus, -1, 1).astype(ref.dtype)


def baseline_scores(model: nn.Module, x: torch.Tensor, classes: list[int], rule: str) -> np.ndarray | None:
    """Score of the Score-CAM baseline: ``"input"`` (torchcam), ``"zeros"`` (black image), ``None``."""
    if rule is None:
        return None
    xb = x if rule == "input" else torch.zeros_like(x)
    with torch.no_grad():
        return model(xb).gather(1, torch.tensor(classes).view(-1, 1))[:, 0].numpy()


def paper_formula(conv: presets.Convention, relu: bool = False) -> presets.Convention:
    """``conv`` with the paper's formula (method keywords, Score-CAM masks/weights, ablation value;
    with ``relu`` also the paper's map ReLU) but the peer's post-processing."""
    paper = presets.PRESETS["paper"][conv.method]
    out = conv.replace(method_kwargs=dict(paper.method_kwargs), masks=paper.masks,
                       ablation_value=paper.ablation_value)
    return out.replace(relu=paper.relu) if relu else out


def run_pgc(method: str, kind: str = "resnet", multi: bool = False, seed: int = 0,
            conv: presets.Convention | None = None) -> dict:
    """Run pytorch-grad-cam and refcam's ``pytorch-grad-cam`` preset on the same model and input.

    Returns a dict with ``ref``/``peer`` at input resolution and, for single-layer runs,
    ``ref_feat``/``peer_feat``: the min-max-scaled map at feature resolution, the peer's taken
    from its own ``get_cam_image`` + ``scale_cam_image`` on the hooked arrays.
    """
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = make_model(kind, seed)
    x = make_input(seed)
    layers = target_layers(model, multi)
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    conv = conv or presets.get("pytorch-grad-cam", method)
    acts, grads, _ = extract(model, layers, x, CLASSES)

    cls = getattr(pgc, PGC_METHODS[method])
    with _quiet(), cls(model=model, target_layers=layers) as cam:
        peer = cam(input_tensor=x, targets=targets)
        peer_raw = None
        if not multi and method not in ("scorecam", "ablationcam"):
            peer_raw = cam.get_cam_image(x, layers[0], targets, acts[0], grads[0], False)
        weights = None
        if method in ("scorecam", "ablationcam"):
            weights = cam.get_cam_weights(x, layers[0], targets, acts[0], None)
    out: dict = {"peer": peer}

    kw: dict = {}
    if method == "scorecam":
        masks = presets.score_masks(conv, acts[0], INPUT_SIZE)
        kw["scores"] = masked_scores(model, x, masks, CLASSES)
        kw["baseline_score"] = baseline_scores(model, x, CLASSES, conv.masks.baseline)
    elif method == "ablationcam":
        kw["scores"] = ablated_scores(model, layers[0], x, CLASSES, conv.ablation_value)
        kw["baseline_score"] = baseline_scores(model, x, CLASSES, "input")
    if method in ("eigencam", "eigengradcam"):
        if method == "eigencam":
            raw = [rm.eigencam(a, relu=False, **conv.method_kwargs) for a in acts]
        else:
            raw = [rm.eigengradcam(a, g, relu=False, **conv.method_kwargs) for a, g in zip(acts, grads)]
        if peer_raw is not None and conv.method_kwargs.get("sign") == "none":
            out["raw_sign"] = _signed_to_match(raw[0], peer_raw)
            raw = [raw[0] * out["raw_sign"][:, None, None]]
            out["ref_raw"], out["peer_raw"] = raw[0], peer_raw
        out["ref"] = presets.postprocess(conv, [rm.relu(r) if conv.relu else r for r in raw], INPUT_SIZE)
    else:
        out["ref"] = presets.compute(method, convention=conv, activations=acts if multi else acts[0],
                                     gradients=grads if multi else grads[0], input_size=INPUT_SIZE, **kw)
    if method in ("scorecam",):
        out["ref_weights"] = presets.score_weights(conv, kw["scores"], kw["baseline_score"])
        out["peer_weights"] = weights
    if method == "ablationcam":
        out["ref_weights"] = rm.ablationcam_weights(kw["scores"], kw["baseline_score"])
        out["peer_weights"] = weights
    if peer_raw is not None:
        peer_feat = scale_cam_image(np.maximum(peer_raw, 0))
        feat_conv = conv.replace(upsample=None, renormalize_eps=None)
        if "ref_raw" in out:
            out["ref_feat"] = presets.postprocess(feat_conv, rm.relu(out["ref_raw"]) if conv.relu else out["ref_raw"])
        else:
            out["ref_feat"] = presets.compute(method, convention=feat_conv, activations=acts[0],
                                              gradients=grads[0])
        out["peer_feat"] = peer_feat
    return out


# --------------------------------------------------------------------------- torchcam

TORCHCAM_METHODS = {"cam": "CAM", "gradcam": "GradCAM", "gradcampp": "GradCAMpp",
                    "xgradcam": "XGradCAM", "layercam": "LayerCAM", "scorecam": "ScoreCAM"}


def run_torchcam(method: str, kind: str = "resnet", multi: bool = False, seed: int = 0,
                 conv: presets.Convention | None = None) -> dict:
    """torchcam (feature resolution; ``multi``: ``fuse_cams``) vs refcam's ``torchcam`` preset."""
    import torchcam.methods as tm

    model = make_model(kind, seed)
    x = make_input(seed)
    layers = target_layers(model, multi)
    acts, grads, _ = extract(model, layers, x, CLASSES)
    conv = conv or presets.get("torchcam", method)
    cls = getattr(tm, TORCHCAM_METHODS[method])
    kwargs = {"input_shape": (3,) + INPUT_SIZE}
    if method == "cam":
        kwargs["fc_layer"] = model.fc
    target = layers if multi else layers[0]
    with _quiet(), cls(model, target, **kwargs) as ex:
        scores = model(x)
        if method in ("cam", "scorecam"):
            cams = ex(class_idx=list(CLASSES))
        else:
            cams = ex(class_idx=list(CLASSES), scores=scores)
        peer = (ex.fuse_cams(cams) if multi else cams[0]).detach().numpy()
    kw: dict = {}
    if method == "cam":
        kw["class_weights"] = model.fc.weight.detach().numpy()[CLASSES]
    if method == "scorecam":
        masks = presets.score_masks(conv, acts[0], INPUT_SIZE)
        kw["scores"] = masked_scores(model, x, masks, CLASSES)
        kw["baseline_score"] = baseline_scores(model, x, CLASSES, conv.masks.baseline)
    ref = presets.compute(method, convention=conv, activations=acts if multi else acts[0],
                          gradients=None if method in ("cam", "scorecam") else (grads if multi else grads[0]),
                          input_size=INPUT_SIZE, **kw)
    return {"ref": ref, "peer": peer}


# --------------------------------------------------------------------------- captum

def run_captum(method: str = "gradcam", kind: str = "resnet", seed: int = 0,
               conv: presets.Convention | None = None) -> dict:
    """captum LayerGradCam (feature resolution) and ``LayerAttribution.interpolate`` (nearest)."""
    from captum.attr import LayerAttribution, LayerGradCam

    model = make_model(kind, seed)
    x = make_input(seed)
    layers = target_layers(model)
    acts, grads, _ = extract(model, layers, x, CLASSES)
    attr = LayerGradCam(model, layers[0]).attribute(x, target=list(CLASSES))
    peer_feat = attr.detach().numpy()[:, 0]
    peer = LayerAttribution.interpolate(attr, INPUT_SIZE).detach().numpy()[:, 0]
    conv = conv or presets.get("captum", method)
    ref_feat = presets.compute(method, convention=conv, activations=acts[0], gradients=grads[0])
    ref = presets.compute(method, convention=conv.replace(upsample=presets.CAPTUM_INTERPOLATE),
                          activations=acts[0], gradients=grads[0], input_size=INPUT_SIZE)
    return {"ref": ref, "peer": peer, "ref_feat": ref_feat, "peer_feat": peer_feat}


RUNNERS: dict[str, Callable[..., dict]] = {"pytorch-grad-cam": run_pgc, "torchcam": run_torchcam,
                                           "captum": run_captum}
CASES: dict[str, tuple[str, ...]] = {
    "pytorch-grad-cam": tuple(PGC_METHODS),
    "torchcam": tuple(TORCHCAM_METHODS),
    "captum": ("gradcam",),
}


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch: refcam {a.shape} vs peer {b.shape}")
    return float(np.max(np.abs(a - b)))


# --------------------------------------------------------------------------- ONNX level

ONNX_LAYER = {"resnet": "layer3.relu_out", "vgg": "features.8"}
CAPTUM_UPSAMPLE = presets.CAPTUM_INTERPOLATE
#: (peer, method) pairs cross-checked on the exported ONNX file: forward-only methods, and the
#: gradient methods with refcam.autodiff's exact VJP gradients (Eigen-CAM: LAPACK sign, omitted).
ONNX_CASES = (("torchcam", "cam"), ("pytorch-grad-cam", "scorecam"), ("torchcam", "scorecam"),
              ("pytorch-grad-cam", "ablationcam"),
              *(("pytorch-grad-cam", m) for m in ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam",
                                                  "gradcam_elementwise")),
              *(("torchcam", m) for m in ("gradcam", "gradcampp", "xgradcam", "layercam")),
              ("captum", "gradcam"))


def export_onnx(model: nn.Module, x: torch.Tensor, path: str, dynamo: bool) -> None:
    """Export with the legacy (``dynamo=False``, BN folded) or the default dynamo exporter."""
    import warnings

    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), path, dynamo=True, input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("n")},), verbose=False)
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17)


def _onnx_scores(m, inputs: np.ndarray, per: int) -> np.ndarray:
    out = m.run(inputs.astype(np.float32))[m.output_name]
    cls = np.repeat(np.asarray(CLASSES), per)
    return out[np.arange(out.shape[0]), cls].reshape(len(CLASSES), per)


def run_onnx(peer: str, method: str, kind: str, m) -> dict:
    """refcam on the ONNX :class:`refcam.onnx.Model` ``m`` vs ``peer`` on the torch model."""
    model, x = make_model(kind), make_input()
    fw = m.forward(x.numpy(), [ONNX_LAYER[kind]])
    (a,) = fw.activations.values()
    logits = fw.outputs
    kw: dict = {}
    if method in PGC_METHODS and method not in ("scorecam", "ablationcam", "eigencam", "eigengradcam"):
        from refcam.autodiff import gradients

        gr = gradients(m, x.numpy(), wrt=ONNX_LAYER[kind], target=list(CLASSES))
        (name,) = gr.gradients
        a, kw["gradients"] = gr.activations[name], gr.gradients[name][:, 0]
    if method == "cam":
        kw["class_weights"] = m.linear_head(ONNX_LAYER[kind]).weight[CLASSES].astype(np.float32)
    elif method == "scorecam":
        masks = presets.score_masks((peer, method), a, INPUT_SIZE)
        inputs = (x.numpy()[:, None] * masks[:, :, None]).reshape((-1, 3) + INPUT_SIZE)
        kw["scores"] = _onnx_scores(m, inputs, a.shape[1])
        kw["baseline_score"] = logits[np.arange(len(CLASSES)), CLASSES]
    elif method == "ablationcam":
        if a.min() != 0:      # pytorch-grad-cam's value is 0 exactly when the layer's min is 0
            raise AssertionError("the ONNX ablation check needs a layer whose minimum is 0")
        n, k = a.shape[:2]
        ablated = np.repeat(a[:, None], k, axis=1)                  # (N, K copies, K, *S)
        ablated[:, np.arange(k), np.arange(k)] = 0.0
        head = m.head(ONNX_LAYER[kind])
        out = head.run(ablated.reshape((n * k,) + a.shape[1:]))[head.output_name].reshape(n, k, -1)
        kw["scores"] = out[np.arange(n), :, CLASSES]
        kw["baseline_score"] = logits[np.arange(n), CLASSES]
    conv = presets.get(peer, method)
    if peer == "captum":
        conv = conv.replace(upsample=CAPTUM_UPSAMPLE)
    ref = presets.compute(method, convention=conv, activations=a, input_size=INPUT_SIZE, **kw)
    peer_map = RUNNERS[peer](method, kind=kind)["peer"]
    acts, _, torch_logits = extract(model, target_layers(model), x, CLASSES)
    return {"ref": ref, "peer": peer_map, "act_err": max_abs(a, acts[0]) / float(np.abs(acts[0]).max()),
            "logit_err": max_abs(logits, torch_logits) / float(np.abs(torch_logits).max())}


def run_captum_gradients(kind: str = "resnet", seed: int = 0) -> dict:
    """captum ``Saliency`` and ``IntegratedGradients`` (defaults) vs refcam with the captum presets,
    input gradients from torch autograd on the same model."""
    from captum.attr import IntegratedGradients, Saliency

    model, x = make_model(kind, seed), make_input(seed)
    cls = torch.tensor(CLASSES)

    def input_grads(inputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        xi = inputs.clone().requires_grad_(True)
        y = model(xi).gather(1, targets.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(y, xi)
        return g.numpy()

    sal_kw = presets.GRADIENT_PRESETS["captum"]["saliency"]
    ig_kw = presets.GRADIENT_PRESETS["captum"]["integrated_gradients"]
    peer_sal = Saliency(model).attribute(x, target=list(CLASSES)).detach().numpy()
    ref_sal = rm.saliency(input_grads(x, cls), **sal_kw)
    n = ig_kw["n_steps"]
    peer_ig = IntegratedGradients(model).attribute(x, target=list(CLASSES)).detach().numpy()
    alphas, _ = rm.integration_points(n, ig_kw["rule"])
    path = rm.path_inputs(x.numpy(), ig_kw["baseline"], alphas).astype(np.float32)   # (N, n, C, *S)
    flat = torch.from_numpy(path.reshape((-1,) + tuple(x.shape[1:])))
    pg = input_grads(flat, cls.repeat_interleave(n)).reshape(path.shape)
    ref_ig = rm.integrated_gradients(pg, x.numpy(), ig_kw["baseline"], ig_kw["rule"])
    return {"ref_saliency": ref_sal, "peer_saliency": peer_sal, "ref_ig": ref_ig, "peer_ig": peer_ig}
