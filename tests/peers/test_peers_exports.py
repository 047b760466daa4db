"""torchvision architectures exported by both torch exporters, dynamic batch axis (issue 12.6 of
the done-when list): Grad-CAM equals pytorch-grad-cam and input saliency equals torch autograd,
each to <= 1e-5 of the maximum.

Reduced widths and depths (seeded weights, random BatchNorm statistics) keep the file fast; the
architectures' graph patterns are the full models' (channel shuffle with computed Slice starts,
Swin's batch-dependent as_strided Gather and windows, MaxViT's Einsum, ViT's class token and
attention).  Every model is exported once per session into a temporary folder.  The ViT check is
input saliency and the gradient at an encoder block (token-layer CAMs belong to the layouts issue;
token layers come back from ``gradients`` as maps, compared on the patch grid).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

REASON = ("peer cross-checks need torch and the genuine peers "
          "(pip install -e '.[peers]'; see docs/presets.md)")
for _mod in ("torch", "torchvision", "pytorch_grad_cam", "onnxscript"):
    pytest.importorskip(_mod, reason=REASON)

import torch  # noqa: E402
from torchvision.models import convnext, maxvit, resnet, shufflenetv2, swin_transformer  # noqa: E402
from torchvision.models import vision_transformer  # noqa: E402

import refcam  # noqa: E402
from refcam import presets  # noqa: E402
from refcam._compare import max_abs_error  # noqa: E402
from refcam.autodiff import RULES, gradients  # noqa: E402
from refcam.onnx import Model  # noqa: E402

torch.set_num_threads(2)
CLASSES = [1, 3]    # one target per sample; per model below where a class gives an all-zero map
CLASSES_OF = {"shufflenet_v2": [2, 4], "maxvit_t": [1, 5]}


def _classes(kind: str) -> list[int]:
    return CLASSES_OF.get(kind, CLASSES)
TOL = 1e-5          # of the maximum, Grad-CAM maps (max 1 after min-max) and saliency maps


def _redraw(m, seed: int) -> None:
    """Every parameter re-drawn from a seeded generator: N(0, 0.3²) for matrices and kernels,
    N(0, 0.1²) for vectors, LayerNorm scales 1 + N(0, 0.1²) (``test_peers_transformers.make_model``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.1))
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))


def _build(kind: str, seed: int = 0):
    """(model, input, Grad-CAM target module path or None) with seeded weights, eval mode."""
    torch.manual_seed(seed)
    size = (64, 80)
    if kind == "resnet50":
        m, layer = resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], num_classes=10, width_per_group=16), "layer4"
    elif kind == "convnext_tiny":
        cfg = [convnext.CNBlockConfig(16, 32, 1), convnext.CNBlockConfig(32, 64, 1),
               convnext.CNBlockConfig(64, None, 1)]
        m, layer = convnext.ConvNeXt(cfg, num_classes=10), "features"
    elif kind == "shufflenet_v2":
        m, layer = shufflenetv2.ShuffleNetV2([2, 2, 2], [24, 16, 32, 64, 128], num_classes=10), "conv5"
    elif kind == "swin_t":
        m = swin_transformer.SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=10)
        layer, size = "permute", (64, 64)       # norm -> permute: (N, C, H, W), the map pytorch-grad-cam hooks
    elif kind == "maxvit_t":
        m = maxvit.MaxVit(input_size=(64, 64), stem_channels=8, partition_size=4, block_channels=[16, 32],
                          block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10)
        layer, size = "blocks.1", (64, 64)
        _redraw(m, seed)    # torchvision's init: a cancelling last-block map (see _amplification)
    else:  # vit_b_16
        m = vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=10)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():   # torchvision zero-initialises the head: every gradient would be 0
            m.heads.head.weight.copy_(torch.randn(m.heads.head.weight.shape, generator=g) * 0.2)
            m.heads.head.bias.copy_(torch.randn(m.heads.head.bias.shape, generator=g) * 0.1)
        layer, size = "encoder.layers.encoder_layer_0", (32, 32)   # not the last block: its patch
        # tokens reach the class token only through the next block's attention
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    m.eval()
    x = torch.randn((2, 3) + size, generator=torch.Generator().manual_seed(3))
    return m, x, layer


def _export(model, x, path: str, dynamo: bool) -> None:
    # the legacy exporter fails on ViT under torch.no_grad(): export with grad enabled
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), path, dynamo=True, input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("n")},), verbose=False)
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17)


KINDS = ["resnet50", "convnext_tiny", "shufflenet_v2", "swin_t", "maxvit_t", "vit_b_16"]
CASES = [(k, e) for k in KINDS for e in ("legacy", "dynamo")]


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """Export cache: (kind, exporter) -> (torch model, input, layer path, refcam Model)."""
    cache: dict = {}
    folder = tmp_path_factory.mktemp("exports")

    def get(kind: str, exporter: str):
        if (kind, exporter) not in cache:
            model, x, layer = _build(kind)
            path = str(folder / f"{kind}-{exporter}.onnx")
            _export(model, x, path, exporter == "dynamo")
            cache[kind, exporter] = (model, x, layer, Model(path))
        return cache[kind, exporter]

    return get


def _tensor(m: Model, path: str) -> str:
    """The ONNX tensor of the output of torch module ``path``: the last tensor produced inside it
    (legacy names ``/a/a.0/...``, dynamo ``name_scopes`` module paths)."""
    prefix = "/" + path.replace(".", "/") + "/"
    inside = [li for li in m.layers() if li.name.startswith(prefix)
              or (li.module_path is not None and (li.module_path == path or li.module_path.startswith(path + ".")))]
    assert inside, f"no tensor of module {path!r} in the export"
    return inside[-1].name


def _module(model, path: str):
    for p in path.split("."):
        model = getattr(model, p)
    return model


def _torch_grads(model, x, path, classes):
    store = {}
    h = _module(model, path).register_forward_hook(lambda mod, i, o: store.__setitem__("a", o))
    xi = x.clone().requires_grad_(True)
    try:
        y = model(xi)
    finally:
        h.remove()
    s = y[torch.arange(len(classes)), torch.tensor(classes)].sum()
    ga, gx = torch.autograd.grad(s, [store["a"], xi])
    return store["a"].detach().numpy(), ga.numpy(), gx.numpy()


def _needs_einsum(kind: str) -> None:
    if kind == "maxvit_t" and "Einsum" not in RULES:
        pytest.skip("MaxViT's attention is an Einsum: its backward rule arrives with issue 12.3")


@pytest.mark.parametrize("kind,exporter", CASES, ids=[f"{k}-{e}" for k, e in CASES])
def test_input_saliency_equals_torch_autograd(exports, kind, exporter):
    _needs_einsum(kind)
    model, x, layer, m = exports(kind, exporter)
    _, _, gx = _torch_grads(model, x, layer, _classes(kind))
    want = np.abs(gx).max(axis=1)                          # Simonyan et al. 2014: max_c |dS_c/dI_c|
    r = gradients(m, x.numpy(), wrt="input", target=_classes(kind))
    got = refcam.saliency(r.gradients[m.input_name][:, 0])
    assert max_abs_error(got, want) <= TOL * float(np.abs(want).max())


@pytest.mark.parametrize("kind,exporter", CASES, ids=[f"{k}-{e}" for k, e in CASES])
def test_gradients_at_a_layer_equal_torch_autograd(exports, kind, exporter):
    model, x, layer, m = exports(kind, exporter)
    a_t, g_t, _ = _torch_grads(model, x, layer, _classes(kind))
    name = _tensor(m, layer)
    r = gradients(m, x.numpy(), wrt=name, target=_classes(kind))
    lay = m.layer(name).layout
    if lay is not None and lay.is_tokens:
        # token layers come back as maps (N, D, h, w): prefix tokens dropped, patches on the grid
        # (pytorch-grad-cam's ViT reshape_transform); torch's (N, T, D) the same way
        def as_map(t):
            t = t[:, lay.prefix:t.shape[1] - lay.suffix]
            return np.moveaxis(t.reshape((t.shape[0],) + tuple(lay.grid) + (t.shape[-1],)), -1, 1)

        a_t, g_t = as_map(a_t), as_map(g_t)
        assert np.abs(g_t).max() > 0                     # patch tokens do get a gradient here
    assert max_abs_error(r.activations[name], a_t) <= TOL * float(np.abs(a_t).max())
    assert max_abs_error(r.gradients[name][:, 0], g_t) <= TOL * float(np.abs(g_t).max())


GRADCAM = [c for c in CASES if c[0] != "vit_b_16"]


def _amplification(a: np.ndarray, g: np.ndarray) -> float:
    r"""Cancellation in the Grad-CAM map: :math:`\max \sum_k |\alpha_k A^k| / \mathrm{range}(\mathrm{ReLU}
    (\sum_k \alpha_k A^k))` (worst sample).  Relative errors :math:`\delta` of ``A`` and ``G`` reach the
    min-max normalised map multiplied by about twice this factor (shown when the comparison fails).

    Note (why MaxViT's weights are re-drawn): with torchvision's own initialisation the reduced
    MaxViT's last-block map is a 240-1500x cancellation for every seed tried (0-7) -- pytorch-grad-cam
    on torch's own hooked float32 arrays then differs from the float64 formula by 1.2e-5 to 7.5e-5 of
    the max, so no implementation can meet 1e-5 against it.  Re-drawn weights (:func:`_redraw`) give a
    factor of 26 and 3-4e-6.  (ResNet's factor is ~2000 but its layer gradients are bit-equal to
    torch's, so nothing is amplified.)"""
    al = g.astype(np.float64).mean(axis=(2, 3))
    raw = np.maximum(np.einsum("nk,nkhw->nhw", al, a.astype(np.float64)), 0)
    terms = np.einsum("nk,nkhw->nhw", np.abs(al), np.abs(a.astype(np.float64)))
    rng = raw.max(axis=(1, 2)) - raw.min(axis=(1, 2))
    return float(np.max(np.where(rng > 0, terms.max(axis=(1, 2)) / np.where(rng > 0, rng, 1), 0)))


@pytest.mark.parametrize("kind,exporter", GRADCAM, ids=[f"{k}-{e}" for k, e in GRADCAM])
def test_gradcam_equals_pytorch_grad_cam(exports, kind, exporter):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, layer, m = exports(kind, exporter)
    with contextlib.redirect_stderr(io.StringIO()), GradCAM(model=model, target_layers=[_module(model, layer)]) as cam:
        peer = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in _classes(kind)])
    assert np.all(peer.reshape(len(peer), -1).max(axis=1) > 0.5)     # non-trivial maps (max 1 after min-max)
    name = _tensor(m, layer)
    r = gradients(m, x.numpy(), wrt=name, target=_classes(kind))
    a, g = r.activations[name], r.gradients[name][:, 0]
    ref = presets.compute("gradcam", convention=presets.get("pytorch-grad-cam", "gradcam"),
                          activations=a, gradients=g, input_size=tuple(x.shape[2:]))
    err = max_abs_error(ref, peer)
    assert err <= TOL * float(np.abs(peer).max()), \
        f"Grad-CAM error {err:.2e}; cancellation factor of the map {_amplification(a, g):.0f}"


# ---------------------------------------------------------------- mobilenet_v2 features.18.0 (issue 12.7)
@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "legacy-folded"])
def test_mobilenet_v2_features_18_0_gradient(tmp_path, fold):
    """torchcam's ``test_img_cams`` model (random weights) at ``features.18.0`` (1×1 Conv → BN → ReLU6).

    Unfolded export: refcam's gradient at the Conv output equals torch autograd to float32
    rounding (measured: exactly 0.0 on 7 inputs).  The legacy exporter folds the BatchNorm into the
    Conv: the tensor named ``/features/features.18/features.18.0/Conv_output_0`` is then the BN
    *output*, and its gradient is torch's gradient at the Conv output divided by the BN factor
    :math:`\\gamma_k/\\sqrt{\\sigma_k^2+\\epsilon}` -- per channel, exactly (1.000005 with the default
    statistics, ±tens of % with random ones as here).  That is a different tensor, not an error.
    """
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    model = mobilenet_v2(weights=None)
    bn = model.features[18][1]
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    model.eval()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    store = {}
    h = model.features[18][0].register_forward_hook(lambda mod, i, o: store.__setitem__("a", o))
    y = model(x)
    h.remove()
    c = int(y.argmax())
    (g_t,) = torch.autograd.grad(y[0, c], store["a"])
    g_t = g_t.numpy()
    path = str(tmp_path / "mnv2.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "n"}}, opset_version=17, do_constant_folding=fold,
                          training=torch.onnx.TrainingMode.PRESERVE if not fold else torch.onnx.TrainingMode.EVAL)
    m = Model(path)
    name = "/features/features.18/features.18.0/Conv_output_0"
    r = gradients(m, x.numpy(), wrt=name, target=c)
    got = r.gradients[name][0, 0]
    factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()[:, None, None]
    want = g_t[0] / factor if fold else g_t[0]
    assert max_abs_error(got, want) <= TOL * float(np.abs(want).max())
    if fold:   # and the folded tensor's gradient is NOT torch's Conv-output gradient
        assert max_abs_error(got, g_t[0]) > 0.1 * float(np.abs(g_t).max())
