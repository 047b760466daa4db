"""Transformers and channels-last models: refcam on the ONNX export vs pytorch-grad-cam with its
documented ``reshape_transform`` on the torch model.

Models (reduced torchvision configurations, seeded weights, both exporters, dynamic batch):
``vit`` (torchvision ``VisionTransformer``, one class token), ``deit`` (the same with a
distillation token: two prefix tokens, head = mean of both readouts), ``swin`` (``SwinTransformer``,
channels-last stages), ``convnext`` (``ConvNeXt``, channels-last blocks inside channels-first
stages), ``maxvit`` (``MaxVit``, block and grid attention partitions).

refcam is given no layer, no layout and no reshape: the default layer and its layout come from the
graph (:mod:`refcam.onnx.layout`).  pytorch-grad-cam gets the matching module and its README's
``reshape_transform`` (``t[:, p:, :].reshape(N, h, w, D)`` then channels first; Swin: permute
``(N, H, W, C)`` to channels first).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np
import pytest

REASON = ("peer cross-checks need torch and the genuine peers "
          "(pip install -e '.[peers]'; see docs/presets.md)")
for _mod in ("torch", "torchvision", "pytorch_grad_cam", "onnxscript"):
    pytest.importorskip(_mod, reason=REASON)

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models import convnext as tv_convnext  # noqa: E402
from torchvision.models import maxvit as tv_maxvit  # noqa: E402
from torchvision.models import swin_transformer as tv_swin  # noqa: E402
from torchvision.models import vision_transformer as tv_vit  # noqa: E402

from refcam import presets  # noqa: E402
from refcam._compare import max_abs_error  # noqa: E402
from refcam.errors import ModelError  # noqa: E402
from refcam.onnx import Model  # noqa: E402

torch.set_num_threads(2)
CLASSES = [3, 7]
TOL = 1e-5  # of the maps' maximum (pytorch-grad-cam maps are min-max scaled to [0, 1])


class DeiT(tv_vit.VisionTransformer):
    """torchvision's ViT with a distillation token (DeiT): two prefix tokens."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        self.encoder.pos_embedding = nn.Parameter(torch.zeros(1, self.seq_length + 1, self.hidden_dim))
        self.head_dist = nn.Linear(self.hidden_dim, kw["num_classes"])

    def forward(self, x):
        x = self._process_input(x)
        n = x.shape[0]
        x = torch.cat([self.class_token.expand(n, -1, -1), self.dist_token.expand(n, -1, -1), x], 1)
        x = self.encoder(x)
        return (self.heads(x[:, 0]) + self.head_dist(x[:, 1])) / 2


SIZE = {"vit": 32, "deit": 32, "swin": 64, "convnext": 32, "maxvit": 32}


def make_model(kind: str, seed: int = 0) -> nn.Module:
    """Reduced configurations; every parameter re-drawn from a seeded generator (torchvision's ViT
    head is zero-initialised: with it every gradient would be 0)."""
    torch.manual_seed(seed)
    if kind == "vit":
        m = tv_vit.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                     hidden_dim=16, mlp_dim=32, num_classes=10)
    elif kind == "deit":
        m = DeiT(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                 num_classes=10)
    elif kind == "swin":
        m = tv_swin.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                    window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=10)
    elif kind == "convnext":
        m = tv_convnext.ConvNeXt([tv_convnext.CNBlockConfig(8, 16, 1), tv_convnext.CNBlockConfig(16, None, 1)],
                                 num_classes=10)
    elif kind == "maxvit":
        m = tv_maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
                             block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10)
    else:
        raise ValueError(kind)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.1))
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))
    return m.eval()


def make_input(kind: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn((len(CLASSES), 3, SIZE[kind], SIZE[kind]), generator=g)


def export(model: nn.Module, kind: str, path: str, dynamo: bool) -> None:
    """Dynamic batch; the legacy exporter runs with grad enabled (it fails on ViT under no_grad)."""
    x = make_input(kind)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), path, dynamo=True, input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("n")},), external_data=False)
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17)


# module pytorch-grad-cam hooks, refcam's expected default (module path), and the layout refcam
# must find there
EXPECTED = {
    "vit": (lambda m: m.encoder.layers[-1].ln_1, "encoder.layers.encoder_layer_1.ln_1", "NTC 1+4x4"),
    "deit": (lambda m: m.encoder.layers[-1].ln_1, "encoder.layers.encoder_layer_1.ln_1", "NTC 2+4x4"),
    "swin": (lambda m: m.norm, "norm", "NHWC"),
    "convnext": (lambda m: m.features[-1][-1], "features.3.0", "NCHW"),
    "maxvit": (lambda m: m.blocks[-1], "blocks.1", "NCHW"),
}


def reshape_transform(kind: str, h: int, w: int):
    """pytorch-grad-cam's documented transforms (README "How does it work with Vision Transformers")."""
    if kind in ("vit", "deit"):
        p = 1 if kind == "vit" else 2

        def rt(t):
            r = t[:, p:, :].reshape(t.size(0), h, w, t.size(2))
            return r.transpose(2, 3).transpose(1, 2)
        return rt
    if kind == "swin":
        return lambda t: t.permute(0, 3, 1, 2)
    return None


CASES = [(k, d) for k in ("vit", "deit", "swin", "convnext", "maxvit") for d in (False, True)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{k}-{'dynamo' if d else 'legacy'}" for k, d in CASES])
def exported(request, tmp_path_factory):
    kind, dynamo = request.param
    model = make_model(kind)
    path = tmp_path_factory.mktemp("onnx") / f"{kind}.onnx"
    export(model, kind, str(path), dynamo)
    return kind, dynamo, model, Model(str(path))


def test_default_layer_and_layout(exported):
    kind, _, _, m = exported
    li = m.default_layer()
    assert li.name == m.layer(EXPECTED[kind][1]).name  # the module's output tensor
    assert li.layout.describe() == EXPECTED[kind][2]


def test_default_layer_activations_equal_torch(exported):
    """The default layer read through its inferred layout equals the hooked torch module output
    after pytorch-grad-cam's reshape_transform."""
    kind, _, model, m = exported
    x = make_input(kind)
    li = m.default_layer()
    a = m.forward(x.numpy(), [li]).activations[li.name]
    store = {}
    hook = EXPECTED[kind][0](model).register_forward_hook(lambda mod, i, o: store.setdefault("a", o))
    with torch.no_grad():
        model(x)
    hook.remove()
    rt = reshape_transform(kind, *a.shape[2:])
    t = store["a"] if rt is None else rt(store["a"])
    ref = t.detach().numpy()
    assert a.shape == ref.shape
    assert max_abs_error(a, ref) <= TOL * float(np.abs(ref).max())


PGC = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "layercam": "LayerCAM", "scorecam": "ScoreCAM"}


@pytest.mark.parametrize("method", list(PGC))
def test_pgc_reshape_transform(exported, method):
    """Grad-CAM, Grad-CAM++, LayerCAM and Score-CAM with refcam's ``pytorch-grad-cam`` preset on the
    default layer equal pytorch-grad-cam with reshape_transform, ≤ 1e-5 of the maximum."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from refcam.autodiff import gradients

    kind, dynamo, model, m = exported
    x = make_input(kind)
    xn = x.numpy()
    size = tuple(xn.shape[2:])
    li = m.default_layer()
    conv = presets.get("pytorch-grad-cam", method)
    kw = {}
    if method == "scorecam":
        fw = m.forward(xn, [li])
        a = fw.activations[li.name]
        masks = presets.score_masks(conv, a, size)
        k = a.shape[1]
        inputs = (xn[:, None] * masks[:, :, None]).reshape((-1,) + xn.shape[1:]).astype(np.float32)
        out = m.run(inputs)[m.output_name].reshape(len(CLASSES), k, -1)
        kw["scores"] = out[np.arange(len(CLASSES)), :, CLASSES]
        kw["baseline_score"] = fw.outputs[np.arange(len(CLASSES)), CLASSES]
    else:
        gr = gradients(m, xn, wrt=li.name, target=list(CLASSES))
        a, kw["gradients"] = gr.activations[li.name], gr.gradients[li.name][:, 0]
    ref = presets.compute(method, convention=conv, activations=a, input_size=size, **kw)
    layer = EXPECTED[kind][0](model)
    with contextlib.redirect_stdout(io.StringIO()), \
            getattr(pgc, PGC[method])(model=model, target_layers=[layer],
                                      reshape_transform=reshape_transform(kind, *a.shape[2:])) as cam:
        if method == "scorecam":
            cam.batch_size = 16
        peer = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in CLASSES])
    assert float(np.abs(peer).max()) > 0.5  # a real map, not the all-zero one of a wrong layer
    assert max_abs_error(ref, peer) <= TOL * float(np.abs(peer).max())


# ---------------------------------------------------------------------------- attention attribution
class ExplicitAttention(nn.Module):
    """torchvision's ``nn.MultiheadAttention`` (batch_first) written out, keeping the attention
    probabilities ``softmax(QKᵀ/√d)`` with their gradients: the by-hand reference."""

    def __init__(self, mha: nn.MultiheadAttention, store: list):
        super().__init__()
        self.mha, self.store = mha, store

    def forward(self, q, k, v, need_weights=False):
        mha = self.mha
        n, t, d = q.shape
        h = mha.num_heads
        qkv = q @ mha.in_proj_weight.T + mha.in_proj_bias
        qq, kk, vv = (z.reshape(n, t, h, d // h).transpose(1, 2) for z in qkv.chunk(3, dim=-1))
        a = torch.softmax(qq @ kk.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)
        a.retain_grad()
        self.store.append(a)
        o = (a @ vv).transpose(1, 2).reshape(n, t, d)
        return mha.out_proj(o), None


def _torch_attention(kind, model, target=None):
    import copy

    m = copy.deepcopy(model)
    store: list = []
    for blk in m.encoder.layers:
        blk.self_attention = ExplicitAttention(blk.self_attention, store)
    x = make_input(kind)
    out = m(x)
    if target is not None:
        out[torch.arange(len(target)), torch.tensor(target)].sum().backward()
    return out.detach().numpy(), store


def _rollout_by_hand(atts):
    """Abnar & Zuidema's rollout as in their reference code (heads averaged, 0.5(A + I), rows
    renormalised, multiplied from the first layer on)."""
    n, _, t, _ = atts[0].shape
    result = np.broadcast_to(np.eye(t), (n, t, t)).copy()
    for a in atts:
        fused = a.mean(axis=1)
        aa = (fused + np.eye(t)) / 2
        aa = aa / aa.sum(axis=-1, keepdims=True)
        result = np.einsum("nij,njk->nik", aa, result)
    return result


def _chefer_by_hand(atts, grads):
    """Chefer et al.'s ViT reference loop: R = I; R += mean_h(relu(∇A ⊙ A)) @ R per block."""
    n, _, t, _ = atts[0].shape
    r = np.broadcast_to(np.eye(t), (n, t, t)).copy()
    for a, g in zip(atts, grads):
        cam = np.clip(g * a, 0, None).mean(axis=1)
        r = r + np.einsum("nij,njk->nik", cam, r)
    return r


ATT_CASES = [(k, d) for k in ("vit", "deit") for d in (False, True)]


@pytest.mark.parametrize("kind,dynamo", ATT_CASES, ids=[f"{k}-{'dynamo' if d else 'legacy'}" for k, d in ATT_CASES])
@pytest.mark.parametrize("method", ["rollout", "chefer"])
def test_attention_attribution_equals_torch_by_hand(kind, dynamo, method, tmp_path):
    from refcam.attention_explanation import explain_attention

    model = make_model(kind)
    path = tmp_path / f"{kind}.onnx"
    export(model, kind, str(path), dynamo)
    m = Model(str(path))
    x = make_input(kind).numpy()
    prefix = 1 if kind == "vit" else 2
    if method == "rollout":
        e = explain_attention(m, x, "rollout")
        logits, store = _torch_attention(kind, model)
        ref = _rollout_by_hand([a.detach().numpy() for a in store])
    else:
        e = explain_attention(m, x, "chefer", target=CLASSES)
        logits, store = _torch_attention(kind, model, target=CLASSES)
        ref = _chefer_by_hand([a.detach().numpy() for a in store], [a.grad.numpy() for a in store])
    assert e.prefix == prefix and e.grid == (4, 4)
    for a, t in zip(e.arrays["attentions"], store):
        assert max_abs_error(a, t.detach().numpy()) <= 1e-5
    ref_map = ref[:, 0, prefix:].reshape(len(x), 4, 4)
    assert max_abs_error(e.relevance, ref) <= TOL * float(np.abs(ref).max())
    assert max_abs_error(e.maps, ref_map) <= TOL * float(np.abs(ref_map).max())


def test_attention_attribution_refuses_windows_and_convnets(exported):
    """Swin's windowed attention has no image-wide token matrix; ConvNeXt has no attention; MaxViT's
    block/grid attention is windowed too: each is a clear ModelError, never a map."""
    from refcam.attention_explanation import explain_attention

    kind, _, _, m = exported
    if kind in ("vit", "deit"):
        pytest.skip("covered by test_attention_attribution_equals_torch_by_hand")
    x = make_input(kind).numpy()
    with pytest.raises(ModelError, match="windowed|no attention"):
        explain_attention(m, x, "rollout")


def test_issue_cases_swin_and_convnext(exported):
    """The issue's reports: swin's ``permute`` names a tensor and a module (ambiguous, listed);
    a channels-last block norm is read as NHWC (map (N, H, W)), not (N, 7, C); ConvNeXt's pooled
    LayerNorm (N, 1, 1, C) is refused unless allowed."""
    from refcam.errors import AmbiguousLayerError, ShapeError
    import refcam

    kind, dynamo, _, m = exported
    x = make_input(kind).numpy()
    if kind == "swin":
        if dynamo:
            with pytest.raises(AmbiguousLayerError, match="tensor:permute.*module:permute"):
                m.layer("permute")
        li = m.layer("features.3.0.norm1")
        assert li.layout.describe() == "NHWC"
        e = refcam.explain(m, x, "eigencam", layer=li)
        assert e.maps.shape == (len(x), 8, 8)
    elif kind == "convnext":
        ln = next(li for li in m.layers() if li.module_path == "classifier.0"
                  and li.op_type == "LayerNormalization")
        assert not ln.is_spatial or ln.map_shape[2:] == (1, 1)   # 1x1, or unclear (dynamo)
        with pytest.raises(ShapeError, match="allow_small_map|layer_layout"):
            refcam.explain(m, x, "eigencam", layer=ln)
        assert m.default_layer().name != ln.name
    else:
        pytest.skip("swin and convnext cases")


TORCHCAM = {"gradcam": "GradCAM", "gradcampp": "GradCAMpp", "layercam": "LayerCAM"}


@pytest.mark.parametrize("method", list(TORCHCAM))
def test_torchcam_reshape_transform(exported, method):
    """The ``torchcam`` preset on the default layer equals torchcam's extractor with its
    ``reshape_transform`` (torchcam ≥ 0.5) on the matching module, ≤ 1e-5 of the maximum."""
    import torchcam.methods as tm

    from refcam.autodiff import gradients

    kind, _, model, m = exported
    x = make_input(kind)
    li = m.default_layer()
    gr = gradients(m, x.numpy(), wrt=li.name, target=list(CLASSES))
    a, g = gr.activations[li.name], gr.gradients[li.name][:, 0]
    ref = presets.compute(method, convention=presets.get("torchcam", method), activations=a, gradients=g)
    rt = reshape_transform(kind, *a.shape[2:])
    kw = {"input_shape": tuple(x.shape[1:])}
    if rt is not None:
        kw["reshape_transform"] = rt
    with contextlib.redirect_stdout(io.StringIO()), \
            getattr(tm, TORCHCAM[method])(model, EXPECTED[kind][0](model), **kw) as ex:
        cams = ex(class_idx=list(CLASSES), scores=model(x))
    peer = cams[0].detach().numpy()
    assert peer.shape == ref.shape
    assert float(np.abs(peer).max()) > 0.5
    assert max_abs_error(ref, peer) <= TOL * float(np.abs(peer).max())
