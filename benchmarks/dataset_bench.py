"""Datasets at scale (issue 15): all-class maps in one pass, and explain_dataset on 1 vs 2 workers.

Part ``classes`` (torchvision ResNet-50, random weights seeded 0, exported to ONNX; b=8, layer4):
  * one forward run of the model (onnxruntime, the session made beforehand);
  * ``refcam.explain(..., "cam", target="all")`` and ``"gradcam"``, 1000 maps per image: goals
    CAM <= 1.2x and Grad-CAM <= 2x one forward (both come from one forward + one product with
    the head weights, :mod:`refcam.allclass`);
  * ``--peers``: pytorch-grad-cam ``GradCAM`` looping over the targets, measured on 20 classes and
    extrapolated to 1000.
  Median of ``--repeats`` interleaved rounds (the measurements share the machine's load).

Part ``workers``: ``--images`` images made from the bundled photos by crops and flips, Grad-CAM
  top-1 and all-class CAM through ``refcam.explain_dataset`` with ``--workers-list`` local Dask
  workers (``0`` = in process); images/s and the speed-up.  ``--peers``: a plain pytorch-grad-cam
  loop in batches of 16 over the same images (top-1 Grad-CAM), for the ratio refcam / peer.

Ratios are only meaningful within one run on an otherwise idle machine.

Usage:  PYTHONPATH=. python benchmarks/dataset_bench.py [--part classes|workers|all] [--repeats 3]
            [--images 512] [--workers-list 1,2] [--peers] [--dir /tmp/refcam-dataset-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the repository root


def export(d: Path) -> Path:
    """torchvision ResNet-50 (weights=None, torch.manual_seed(0)) → ``d/resnet50.onnx``."""
    p = d / "resnet50.onnx"
    if p.exists():
        return p
    import torch
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.resnet50(weights=None).eval()
    torch.save(m.state_dict(), d / "weights.pt")
    x = torch.zeros((1, 3, 224, 224))
    torch.onnx.export(m, x, str(p), dynamo=False, opset_version=17, do_constant_folding=True,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return p


def layer4(path: Path) -> str:
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    return [n.output[0] for n in g.node
            if n.name.startswith("/layer4/layer4.2/") and n.op_type == "Relu"][-1]


def part_classes(d: Path, repeats: int, peers: bool) -> None:
    import refcam
    from refcam.onnx import Model

    path = export(d)
    layer = layer4(path)
    m = Model(str(path), intra_op_num_threads=1, inter_op_num_threads=1)
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    fns = {
        "forward": lambda: m.run(x),
        "cam all 1000": lambda: refcam.explain(m, x, "cam", layer=layer, target="all"),
        "gradcam all 1000": lambda: refcam.explain(m, x, "gradcam", layer=layer, target="all"),
    }
    for f in fns.values():
        f()  # warm-up (sessions, head lookup)
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    e = refcam.explain(m, x, "gradcam", layer=layer, target="all")
    print(f"ResNet-50 b=8, layer {layer}, maps {e.maps.shape}, median of {repeats}")
    for k, v in med.items():
        print(f"  {k:18s} {v * 1e3:9.1f} ms   {v / med['forward']:.2f}x forward")
    print("  goals: cam <= 1.2x, gradcam <= 2x forward")
    if peers:
        import torch
        import torchvision
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        torch.set_num_threads(1)
        tm = torchvision.models.resnet50(weights=None)
        tm.load_state_dict(torch.load(d / "weights.pt"))
        tm.eval()
        cam = GradCAM(model=tm, target_layers=[tm.layer4[-1]])
        xt = torch.from_numpy(x)
        t = time.perf_counter()
        for c in range(20):
            cam(input_tensor=xt, targets=[ClassifierOutputTarget(c)] * len(x))
        dt = (time.perf_counter() - t) / 20
        print(f"  pytorch-grad-cam loop: {dt * 1e3:.1f} ms per class (20 measured) → "
              f"{dt * 1000:.1f} s for 1000 classes = {dt * 1000 / med['gradcam all 1000']:.0f}x "
              "refcam's one pass")


def make_images(folder: Path, n: int) -> list[Path]:
    """``n`` images from the bundled photos: random crops (seeded) and horizontal flips."""
    from PIL import Image

    from refcam.zoo import sample_image_path, sample_images

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = [Image.open(sample_image_path(s)).convert("RGB") for s in sample_images()]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = im.size
        s = int(min(w, h) * rng.uniform(0.5, 1.0))
        x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        c = im.crop((x0, y0, x0 + s, y0 + s)).resize((256, 256))
        if i % 2:
            c = c.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        p = folder / f"img{i:04d}.png"
        c.save(p)
        out.append(p)
    return out


def part_workers(d: Path, n_images: int, workers_list: list[int], peers: bool) -> None:
    from refcam.dataset import explain_dataset

    path = export(d)
    layer = layer4(path)
    folder = d / f"images{n_images}"
    if not folder.exists():
        make_images(folder, n_images)
    rates = {}
    for w in workers_list:
        t0 = time.perf_counter()
        for method, target in (("gradcam", None), ("cam", "all")):
            store = d / f"store-{method}-{w}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            explain_dataset(str(path), folder, store, method, layer=layer, target=target,
                            batch_size=16, workers=w, progress=False)
        dt = time.perf_counter() - t0
        rates[w] = n_images / dt
        print(f"  explain_dataset workers={w}: {dt:.1f} s, {rates[w]:.2f} images/s "
              "(Grad-CAM top-1 + all-class CAM, cluster start-up included)")
    ws = sorted(rates)
    if len(ws) > 1:
        print(f"  speed-up {ws[-1]} vs {ws[0]} workers: {rates[ws[-1]] / rates[ws[0]]:.2f}x "
              "(goal >= 1.7x for 2 vs 1 on an idle 2-core machine)")
    if peers:
        import torch
        import torchvision
        from pytorch_grad_cam import GradCAM

        from refcam.onnx import load
        from refcam.zoo._images import load_inputs

        torch.set_num_threads(1)
        tm = torchvision.models.resnet50(weights=None)
        tm.load_state_dict(torch.load(d / "weights.pt"))
        tm.eval()
        cam = GradCAM(model=tm, target_layers=[tm.layer4[-1]])
        files = sorted(folder.iterdir())
        m = load(str(path))
        t0 = time.perf_counter()
        for i in range(0, len(files), 16):
            x = np.concatenate([it.x for it in load_inputs([str(f) for f in files[i:i + 16]], m)])
            cam(input_tensor=torch.from_numpy(x), targets=None)
        dt = time.perf_counter() - t0
        print(f"  pytorch-grad-cam loop (b=16, top-1 Grad-CAM only): {dt:.1f} s, "
              f"{n_images / dt:.2f} images/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=("classes", "workers", "all"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--workers-list", default="1,2")
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--dir", default="/tmp/refcam-dataset-bench")
    a = ap.parse_args()
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    if a.part in ("classes", "all"):
        part_classes(d, a.repeats, a.peers)
    if a.part in ("workers", "all"):
        part_workers(d, a.images, [int(w) for w in a.workers_list.split(",")], a.peers)


if __name__ == "__main__":
    main()
