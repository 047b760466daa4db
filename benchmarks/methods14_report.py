"""Measure refcam's agreement with the genuine peers for the methods of issue 14 (needs the
``peers`` extra); prints the markdown rows of docs/methods_peers14.md.

    PYTHONPATH=.:tests/peers python benchmarks/methods14_report.py

The assertions on the same quantities are in tests/peers/test_peers_methods14.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

import peers_harness as H
from refcam import math as rm
from refcam import presets
from refcam._compare import max_abs_error


def rel(a, b):
    return max_abs_error(a, b) / max(float(np.abs(np.asarray(b, np.float64)).max()), 1e-30)


def conv(name):
    return presets.get("pytorch-grad-cam", "gradcam").replace(method=name)


def setup(kind):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = H.make_model(kind)
    x = H.make_input()
    layers = H.target_layers(model)
    acts, grads, logits = H.extract(model, layers, x, H.CLASSES)
    return model, x, layers, [ClassifierOutputTarget(c) for c in H.CLASSES], acts[0], grads[0], logits


def run(cls, model, layers, x, targets, a, g, **kw):
    with H._quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with cls(model=model, target_layers=layers, **kw) as cam:
            return cam(input_tensor=x, targets=targets), cam.get_cam_image(x, layers[0], targets, a, g, False)


def main() -> None:
    import pytorch_grad_cam as pgc

    rows = []
    for kind in ("resnet", "vgg"):
        model, x, layers, targets, a, g, logits = setup(kind)
        peer, raw = run(pgc.FEM, model, layers, x, targets, a, g, k=2)
        rows.append(("pytorch-grad-cam", "FEM (k=2)", kind, rel(rm.fem(a, relu=False), raw),
                     max_abs_error(presets.postprocess(conv("fem"), rm.fem(a), H.INPUT_SIZE), peer)))
        np.random.seed(5)
        peer, _ = run(pgc.RandomCAM, model, layers, x, targets, a, g)
        np.random.seed(5)
        w = np.random.uniform(-1, 1, size=a.shape[:2])
        rows.append(("pytorch-grad-cam", "RandomCAM (peer draws)", kind, None,
                     max_abs_error(presets.postprocess(conv("randomcam"), rm.randomcam(a, w), H.INPUT_SIZE), peer)))
        for kernel in ("sigmoid", "rbf", "poly", "linear", "cosine"):
            peer, raw = run(pgc.KPCA_CAM, model, layers, x, targets, a, g, kernel=kernel)
            r = rm.kpcacam(a, kernel=kernel)
            rows.append(("pytorch-grad-cam", f"KPCA_CAM ({kernel})", kind, rel(r, raw),
                         max_abs_error(presets.postprocess(conv("kpcacam"), rm.relu(r), H.INPUT_SIZE), peer)))
        peer, raw = run(pgc.SegEigenCAM, model, layers, x, targets, a, g)
        rows.append(("pytorch-grad-cam", "SegEigenCAM", kind, rel(rm.segeigencam(a, g, relu=False), raw),
                     max_abs_error(presets.postprocess(conv("segeigencam"), rm.segeigencam(a, g), H.INPUT_SIZE), peer)))
        with H._quiet(), pgc.GradCAM(model=model, target_layers=layers) as cam:
            peer = cam(input_tensor=x, targets=targets, eigen_smooth=True)
            raw = cam.get_cam_image(x, layers[0], targets, a, g, True)
        r = rm.eigen_smooth(a, rm.gradient_weights(g))
        r = r * H._signed_to_match(r, raw)[:, None, None]
        rows.append(("pytorch-grad-cam", "eigen_smooth (Grad-CAM, sign matched)", kind, rel(r, raw),
                     max_abs_error(presets.postprocess(conv("gradcam"), rm.relu(r), H.INPUT_SIZE), peer)))
        with H._quiet(), pgc.GradCAM(model=model, target_layers=layers) as cam:
            peer = cam(input_tensor=x, targets=targets, aug_smooth=True)
        maps, flips = [], []
        for flip in (False, True):
            for f in (0.9, 1.0, 1.1):
                xa = (torch.flip(x, dims=[-1]) if flip else x) * f
                aa, gg, _ = H.extract(model, layers, xa, H.CLASSES)
                maps.append(presets.compute("gradcam", "pytorch-grad-cam", activations=aa[0], gradients=gg[0],
                                            input_size=H.INPUT_SIZE))
                flips.append(flip)
        rows.append(("pytorch-grad-cam", "aug_smooth (Grad-CAM)", kind, None,
                     max_abs_error(rm.aug_smooth(np.stack(maps), flips), peer)))
        with H._quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peer = pgc.FinerCAM(model=model, target_layers=layers)(x)
        main_, comp = rm.finercam_classes(logits)
        seed = rm.finercam_seed(logits, main_, comp)
        store = {}
        h = layers[0].register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
        out = model(x)
        h.remove()
        (ga,) = torch.autograd.grad(out, store["a"], grad_outputs=torch.from_numpy(seed.astype(np.float32)))
        rows.append(("pytorch-grad-cam", "FinerCAM (alpha=1)", kind, None,
                     max_abs_error(presets.postprocess(conv("finercam"), rm.gradcam(a, ga.numpy()), H.INPUT_SIZE), peer)))
        import torchcam.methods as tm

        with H._quiet(), tm.SmoothGradCAMpp(model, layers[0], num_samples=4, std=0.3,
                                            input_shape=(3,) + H.INPUT_SIZE) as ex:
            model(x)
            torch.manual_seed(77)
            peer = ex(class_idx=list(H.CLASSES))[0].detach().numpy()
        torch.manual_seed(77)
        dist = torch.distributions.normal.Normal(0, 0.3)
        per = [H.extract(model, layers, x + dist.sample(x.size()), H.CLASSES) for _ in range(4)]
        gs = np.stack([p[1][0] for p in per], axis=1)
        raw = rm.smoothgradcampp(a, gs, first_order="last", denominator="channel", eps=1e-8,
                                 map_activations=per[-1][0][0])
        rows.append(("torchcam", "SmoothGradCAMpp (peer noise)", kind, max_abs_error(
            presets.postprocess(presets.get("torchcam", "gradcampp"), raw), peer), None))
    model, x, layers, *_ = setup("resnet")
    from pytorch_grad_cam import DeepFeatureFactorization

    _, _, _, _, a, _, _ = setup("resnet")
    with H._quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        concepts, maps, outputs = DeepFeatureFactorization(model=model, target_layer=layers[0],
                                                           computation_on_concepts=model.fc)(x, 4)
    c, m = rm.dff(a, 4)
    ref = presets.postprocess(conv("dff").replace(renormalize_eps=None), m.reshape((-1,) + m.shape[2:]),
                              H.INPUT_SIZE).reshape((2, 4) + H.INPUT_SIZE)
    rows.append(("pytorch-grad-cam", "DeepFeatureFactorization (r=4): concepts / maps", "resnet", rel(c, concepts),
                 max_abs_error(ref, np.stack(maps))))
    print("| peer | method | model | feature res. (rel. to max) | output (abs) |")
    print("|---|---|---|---|---|")
    for p, meth, k, f, o in rows:
        fmt = lambda v: "—" if v is None else f"{v:.1e}"  # noqa: E731
        print(f"| {p} | {meth} | {k} | {fmt(f)} | {fmt(o)} |")
    for line in end_to_end_rows():
        print(line)


#: the tests that measure refcam end to end on ONNX exports print their rows as ``ROW| ... |``
END_TO_END = "shapleycam_end_to_end or test_refinecam or vit_token or smoothgradcampp_on_the_onnx"


def end_to_end_rows() -> list[str]:
    """Rows printed by the end-to-end tests of tests/peers/test_peers_methods14.py (run once, -s)."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                          "tests/peers/test_peers_methods14.py", "-k", END_TO_END],
                         cwd=root, capture_output=True, text=True, check=False).stdout
    return ["|" + line.split("ROW|", 1)[1] for line in out.splitlines() if "ROW|" in line]


if __name__ == "__main__":
    main()
