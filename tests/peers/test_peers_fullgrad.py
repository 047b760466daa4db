"""refcam's FullGrad math reproduces pytorch-grad-cam's ``FullGrad`` on the same torch model.

Level tested: :func:`refcam.math.fullgrad` on the input gradient and the bias-gradients the torch
model gives (autograd w.r.t. the input and every ``Conv2d`` / ``BatchNorm2d`` output with a bias,
times the (effective) bias), with pytorch-grad-cam's conventions as keywords
(``normalize_over="channel"``, ``eps=1e-7``, ``upsample_mode="linear"`` = OpenCV INTER_LINEAR,
then :func:`refcam.math.normalize` with ``eps=1e-7``) versus ``pytorch_grad_cam.FullGrad``.
Measured agreement ~1e-7 (float32); the test allows 1e-4 (upsampled maps, as the other peers).
"""

from __future__ import annotations

import numpy as np
import pytest

REASON = ("peer cross-checks need torch and the genuine peers "
          "(pip install -e '.[peers]'; see docs/presets.md)")
for _mod in ("torch", "pytorch_grad_cam"):
    pytest.importorskip(_mod, reason=REASON)

from . import peers_harness as H  # noqa: E402
import torch  # noqa: E402

from refcam import math as M  # noqa: E402

UP_TOL = 1e-4


def _bias_layers(model):
    out = []
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            b = M.batchnorm_bias(m.weight.detach().numpy(), m.bias.detach().numpy(),
                                 m.running_mean.numpy(), m.running_var.numpy(), m.eps)
            out.append((m, b))
        elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
            out.append((m, m.bias.detach().numpy()))
    return out


def _refcam(model, x, classes, **kw):
    layers = _bias_layers(model)
    store: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: store.__setitem__(k, o))
             for k, (m, _) in enumerate(layers)]
    x = x.clone().requires_grad_(True)
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    y = out.gather(1, torch.tensor(classes).view(-1, 1)).sum()
    grads = torch.autograd.grad(y, [x] + [store[k] for k in range(len(layers))])
    gx = grads[0].numpy()
    fb = [M.bias_gradient(g.numpy(), b.astype(np.float32)) for g, (_, b) in zip(grads[1:], layers)]
    return M.fullgrad(gx, x.detach().numpy(), fb, **kw)


@pytest.mark.parametrize("kind", ["resnet", "vgg"])
def test_pytorch_grad_cam_fullgrad(kind):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = H.make_model(kind), H.make_input()
    with H._quiet(), pgc.FullGrad(model=model, target_layers=[]) as cam:
        peer = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in H.CLASSES])
    raw = _refcam(model, x, H.CLASSES, normalize_over="channel", eps=1e-7, upsample_mode="linear")
    ref = M.normalize(raw, eps=1e-7)
    assert peer.shape == ref.shape == (2,) + H.INPUT_SIZE and ref.dtype == np.float32
    assert H.max_abs(ref, peer) <= UP_TOL
    # the official convention (per-layer min-max, align_corners=True) is a different map
    official = M.normalize(_refcam(model, x, H.CLASSES, eps=1e-6), eps=1e-7)
    assert H.max_abs(official, peer) > 1e-2
