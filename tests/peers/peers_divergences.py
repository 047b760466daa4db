"""Minimal reproductions of the peers' departures from the papers (genuine peer code, real numbers).

Each ``repro_*`` function runs the genuine peer on the smallest input that shows one
convention, and returns a dict of measured quantities plus ``verdict`` ("confirmed"/"refuted")
and ``diagnosis``.  ``tests/peers/test_peers_divergences.py`` asserts on the numbers;
``benchmarks/peers_report.py`` writes them into ``docs/divergences.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import numpy as np
import torch
from torch import nn

from . import peers_harness as H
from refcam import math as rm
from refcam import presets


class GivenFeatures(nn.Module):
    """``y = einsum("nkhw,ckhw->nc", A, W)`` with ``A`` = the input seen through an Identity layer,
    so the hooked activations are exactly the input and ``∂y^c/∂A = W[c]`` exactly."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nkhw,ckhw->nc", self.feat(a), self.weight)


# --------------------------------------------------------------------------- torchcam Grad-CAM++

def repro_torchcam_gradcampp() -> dict:
    """torchcam 0.5.0 GradCAMpp: ``alpha[mask].div_(...)`` acts on a boolean-index copy."""
    import torchcam.methods as tm

    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, 1.0]]]])      # (1, 2, 2, 2)
    g = torch.tensor([[[0.5, -0.2], [0.3, 0.1]], [[0.1, 0.4], [0.2, 0.3]]])       # class-0 gradient
    model = GivenFeatures(g[None]).eval()
    with tm.GradCAMpp(model, "feat", input_shape=(2, 2, 2)) as ex:
        scores = model(a.clone().requires_grad_(True))       # identity output must require grad
        peer = ex(class_idx=0, scores=scores, normalized=False)[0].detach().numpy()
    A, G = a.numpy().astype(np.float64), g[None].numpy().astype(np.float64)
    paper = rm.gradcampp(A, G, relu=True)                           # exact alpha, ReLU as torchcam
    g2 = presets.compute("gradcampp", convention=presets.get("torchcam", "gradcampp").replace(
        normalize_eps=None), activations=A, gradients=G)
    return {
        "peer": peer, "alpha_g2": g2, "paper": paper,
        "err_vs_alpha_g2": H.max_abs(peer, g2), "err_vs_paper": H.max_abs(peer, paper),
        "verdict": "confirmed",
        "diagnosis": "torchcam's map equals sum_k (sum_ij g^2 relu(g)) A^k: the division by "
                     "2g^2 + sum(A) g^3 never reaches alpha (boolean indexing returns a copy).",
    }


# --------------------------------------------------------------------------- pytorch-grad-cam Grad-CAM++

def repro_pgc_gradcampp_eps(scales=(1.0, 1e-2, 1e-3, 1e-4)) -> dict:
    """pytorch-grad-cam 1.5.7 Grad-CAM++: ``+1e-6`` in the alpha denominator vs the exact formula."""
    from pytorch_grad_cam import GradCAMPlusPlus

    a = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float64)
    g0 = np.array([[[[0.5, 0.2], [0.3, 0.1]]]], np.float64)
    ratios = {}
    for s in scales:
        w_peer = GradCAMPlusPlus.get_cam_weights(None, None, None, None, a, g0 * s)
        w_paper = rm.gradcampp_weights(a, g0 * s)
        ratios[s] = float(w_peer[0, 0] / w_paper[0, 0])
    # Two channels with small gradients of different magnitude (|g| ~ 1e-3 and ~ 3e-4): the eps
    # shrinks their weights by different factors, so the normalised map changes shape.
    a2 = np.concatenate([a, a[:, :, ::-1]], axis=1)
    g2 = np.concatenate([g0 * 3e-3, g0 * 1e-3], axis=1)
    pgc = presets.get("pytorch-grad-cam", "gradcampp").replace(upsample=None, renormalize_eps=None)
    peer_map = presets.compute("gradcampp", convention=pgc, activations=a2, gradients=g2)
    paper_map = presets.compute("gradcampp", convention=H.paper_formula(pgc), activations=a2, gradients=g2)
    return {
        "ratios": ratios, "map_diff": H.max_abs(peer_map, paper_map),
        "verdict": "confirmed",
        "diagnosis": "w_peer / w_paper per gradient scale: "
                     + ", ".join(f"{k:g}: {v:.4f}" for k, v in ratios.items())
                     + ". The additive 1e-6 is negligible for O(1) gradients and dominates once "
                       "g^2 ~ 1e-6 (|g| ~ 1e-3, common at late layers): channels with small "
                       "gradients are down-weighted, so the normalised map changes.",
    }


# --------------------------------------------------------------------------- Score-CAM masks

def repro_pgc_scorecam_align_corners(kind: str = "resnet") -> dict:
    """pytorch-grad-cam ScoreCAM upsamples masks with ``UpsamplingBilinear2d`` (align_corners=True)."""
    model = H.make_model(kind)
    x = H.make_input()
    acts, _, _ = H.extract(model, H.target_layers(model), x, H.CLASSES)
    a = torch.from_numpy(acts[0])
    peer_up = torch.nn.UpsamplingBilinear2d(size=H.INPUT_SIZE)(a).numpy()   # the peer's own op
    ac = rm.upsample(acts[0], H.INPUT_SIZE, "linear-align-corners")
    hp = rm.upsample(acts[0], H.INPUT_SIZE, "linear")
    # End-to-end effect on the map: pgc preset vs the same preset with half-pixel masks.
    pgc = presets.get("pytorch-grad-cam", "scorecam")
    half = pgc.replace(masks=dataclasses.replace(pgc.masks, upsample_mode="linear"))
    r_peer = H.run_pgc("scorecam", kind=kind)
    r_half = H.run_pgc("scorecam", kind=kind, conv=half)
    scale = float(np.abs(peer_up).max())
    return {
        "op_is_align_corners": H.max_abs(peer_up, ac) / scale, "vs_half_pixel": H.max_abs(peer_up, hp) / scale,
        "map_diff": H.max_abs(r_peer["peer"], r_half["ref"]),
        "verdict": "confirmed",
        "diagnosis": "the peer's mask upsampling equals refcam upsample(mode='linear-align-corners') "
                     "and differs from the half-pixel 'linear' (Score-CAM's and torchcam's) by "
                     "a relative amount shown; on the final map the effect is map_diff.",
    }


# --------------------------------------------------------------------------- captum

def repro_captum_layergradcam(kind: str = "resnet") -> dict:
    """captum LayerGradCam: no ReLU unless ``relu_attributions=True``; ``interpolate`` is nearest."""
    from captum.attr import LayerAttribution, LayerGradCam

    model = H.make_model(kind)
    x = H.make_input()
    layer = H.target_layers(model)[0]
    acts, grads, _ = H.extract(model, [layer], x, H.CLASSES)
    attr = LayerGradCam(model, layer).attribute(x, target=list(H.CLASSES))
    raw = attr.detach().numpy()[:, 0]
    up = LayerAttribution.interpolate(attr, H.INPUT_SIZE).detach().numpy()[:, 0]
    scale = float(np.abs(raw).max())
    paper = rm.gradcam(acts[0], grads[0])                                  # ReLU (Eq. 2)
    return {
        "min_over_maxabs": float(raw.min() / scale),
        "relu_diff": H.max_abs(raw, paper) / scale,
        "nearest_exact": H.max_abs(up, rm.upsample(raw, H.INPUT_SIZE, "nearest")),
        "nearest_vs_linear": H.max_abs(up, rm.upsample(raw, H.INPUT_SIZE, "linear")) / scale,
        "verdict": "confirmed",
        "diagnosis": "LayerGradCam returns sum_k alpha_k A^k with its negative part (no ReLU by "
                     "default) and LayerAttribution.interpolate defaults to legacy nearest, which "
                     "equals refcam upsample(mode='nearest') exactly.",
    }


# --------------------------------------------------------------------------- Eigen-CAM sign

def repro_pgc_eigencam_sign(n_trials: int = 200) -> dict:
    """pytorch-grad-cam ``get_2d_projection``: LAPACK's sign; a channel permutation can flip it."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    flips, first = 0, None
    for seed in range(n_trials):
        r = np.random.default_rng(seed)
        a = np.maximum(r.normal(size=(1, 4, 3, 3)), 0).astype(np.float32)
        perm = r.permutation(4)
        p1, p2 = get_2d_projection(a), get_2d_projection(a[:, perm])
        if np.allclose(p1, -p2, atol=1e-5) and not np.allclose(p1, p2, atol=1e-5):
            flips += 1
            if first is None:
                first = (seed, perm, a, p1, p2)
    seed, perm, a, p1, p2 = first
    ref1 = rm.eigencam(a, center=True, sign="max-abs")
    ref2 = rm.eigencam(a[:, perm], center=True, sign="max-abs")
    relu_overlap = float(np.sum(np.maximum(p1, 0) * np.maximum(p2, 0)))
    return {
        "flip_fraction": flips / n_trials, "seed": seed, "perm": perm.tolist(),
        "peer_flip_diff": H.max_abs(p1, -p2), "relu_overlap": relu_overlap,
        "refcam_perm_invariant": H.max_abs(ref1, ref2),
        "verdict": "confirmed",
        "diagnosis": "the same activations with channels permuted (an irrelevant relabelling) give "
                     "the opposite projection in the fraction shown of random cases; after the "
                     "peer's ReLU the two maps do not overlap at all. refcam's sign rules "
                     "('sum', 'max-abs') are permutation invariant.",
    }


# --------------------------------------------------------------------------- torchcam CAM ReLU

def repro_torchcam_cam_relu() -> dict:
    """torchcam CAM: ``_relu`` stays False (its docstring writes a ReLU)."""
    import torchcam.methods as tm

    a = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]]])           # K=1 feature map with a negative value
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2)).eval()
    with torch.no_grad():
        model[3].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    with tm.CAM(model, "0", fc_layer="3", input_shape=(1, 2, 2)) as ex:
        model(a)
        peer = ex(class_idx=0)[0].numpy()
    a_np = a.numpy().astype(np.float64)
    w = np.array([[1.0]])
    no_relu = rm.normalize(rm.cam(a_np, w, relu=False), "minmax", eps=1e-8)
    with_relu = rm.normalize(rm.cam(a_np, w, relu=True), "minmax", eps=1e-8)
    return {
        "peer": peer, "err_no_relu": H.max_abs(peer, no_relu), "err_relu": H.max_abs(peer, with_relu),
        "verdict": "confirmed (code), and it agrees with Zhou et al. 2016, whose CAM has no ReLU",
        "diagnosis": "CAM keeps negative evidence: [[1,-2],[3,0]] min-max scales to "
                     "[[0.6,0],[1,0.4]]; with the docstring's ReLU it would be [[1/3,0],[1,0]].",
    }


# --------------------------------------------------------------------------- Ablation value

def repro_pgc_ablation_value() -> dict:
    """pytorch-grad-cam AblationLayer: ``min - 1e7`` (compounding) when the layer's min is not 0."""
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = H.make_model("resnet")
    x = H.make_input()
    # BatchNorm output inside the last block (before the residual add and the ReLU): negative
    # values, and not clamped right after (a Conv->ReLU layer would hide the value: ReLU(-1e7) = 0).
    layer = model.layer3.bn2
    targets = [ClassifierOutputTarget(c) for c in H.CLASSES]
    acts, _, _ = H.extract(model, [layer], x, H.CLASSES)
    with contextlib.redirect_stderr(io.StringIO()), AblationCAM(model, [layer]) as cam:
        w_peer = cam.get_cam_weights(x, layer, targets, acts[0], None)
    with torch.no_grad():
        y = model(x).gather(1, torch.tensor(H.CLASSES).view(-1, 1))[:, 0].numpy()
    w_replay = rm.ablationcam_weights(H.ablated_scores(model, layer, x, H.CLASSES, "pgc"), y)
    w_zero = rm.ablationcam_weights(H.ablated_scores(model, layer, x, H.CLASSES, 0.0), y)
    return {
        "layer_min": float(acts[0].min()), "err_replay": H.max_abs(w_peer, w_replay),
        "vs_zero": H.max_abs(w_peer, w_zero), "weight_scale": float(np.abs(w_zero).max()),
        "verdict": "confirmed",
        "diagnosis": "for a layer whose minimum is not 0 the ablated channel is set to "
                     "min - 1e7, min - 2e7, ... (the min is re-read from the tensor being edited), "
                     "not to 0 as in Ablation-CAM; weights differ from the paper's by vs_zero.",
    }


# --------------------------------------------------------------------------- targets

def repro_pgc_short_targets() -> dict:
    """pytorch-grad-cam: ``zip(targets, outputs)`` silently drops samples without a target."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = H.make_model("resnet")
    x = H.make_input()
    with GradCAM(model, H.target_layers(model)) as cam:
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(H.CLASSES[0])])
    return {
        "shape": out.shape, "second_sample_max": float(np.abs(out[1]).max()),
        "verdict": "confirmed",
        "diagnosis": "a batch of 2 with 1 target returns 2 maps, the second all zeros (zero "
                     "gradient), without an error; refcam's front raises TargetError instead.",
    }


# --------------------------------------------------------------------------- 3-D maps

def repro_pgc_3d_upsampling() -> dict:
    """pytorch-grad-cam ``scale_cam_image`` resizes 3-D maps with ``scipy.ndimage.zoom`` (cubic)."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    r = np.random.default_rng(0)
    m = r.random((1, 3, 4, 5)).astype(np.float32)
    size = (6, 8, 10)                                           # (D, H, W)
    peer = scale_cam_image(m, target_size=size[::-1])           # the peer passes (W, H, D)
    n = rm.normalize(m, "minmax", eps=1e-7)
    return {
        "vs_linear": H.max_abs(peer, rm.upsample(n, size, "linear")),
        "vs_align_corners": H.max_abs(peer, rm.upsample(n, size, "linear-align-corners")),
        "range": (float(peer.min()), float(peer.max())),
        "verdict": "confirmed (not reproducible by refcam: no cubic-spline mode)",
        "diagnosis": "3-D maps go through scipy.ndimage.zoom with its default order=3 spline "
                     "(align-corners grid, overshoots [0, 1]); 2-D maps through cv2 bilinear. "
                     "The pytorch-grad-cam preset therefore covers 2-D inputs only.",
    }


REPROS = {
    "torchcam GradCAMpp alpha stays g^2": repro_torchcam_gradcampp,
    "pytorch-grad-cam Grad-CAM++ additive eps 1e-6": repro_pgc_gradcampp_eps,
    "pytorch-grad-cam Score-CAM masks align_corners=True": repro_pgc_scorecam_align_corners,
    "captum LayerGradCam: no ReLU, nearest interpolation": repro_captum_layergradcam,
    "pytorch-grad-cam Eigen-CAM: no sign rule": repro_pgc_eigencam_sign,
    "torchcam CAM: no ReLU": repro_torchcam_cam_relu,
    "pytorch-grad-cam Ablation-CAM value min-1e7 (compounding)": repro_pgc_ablation_value,
    "pytorch-grad-cam short target list": repro_pgc_short_targets,
    "pytorch-grad-cam 3-D maps: cubic zoom": repro_pgc_3d_upsampling,
}
