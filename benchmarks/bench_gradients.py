"""Gradient engine timings on a ResNet-50-sized ONNX model at 1x3x224x224 (random weights).

Prints, measured in this one run (median of interleaved repeats, sessions created beforehand):
  * plain forward time;
  * Grad-CAM gradients via the VJP graph (forward + backward to the last stage in ONE session run),
    goal <= 3.5x forward; also the input gradient (full backward) for reference;
  * FD Grad-CAM weights (channel-directional central differences, 2K head copies), goal <= 2x forward.

Usage:  PYTHONPATH=. python benchmarks/bench_gradients.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the repository root
from tests.autodiff._models import resnet  # noqa: E402

from refcam.autodiff import SEED_INPUT, build_vjp_model, grad_name  # noqa: E402
from refcam.autodiff.fd import FiniteDifferences  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model, names = resnet(depths=(3, 4, 6, 3), width=64, bottleneck=True, classes=1000, size=224, batch=1)
    layer = names["stage3"]
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    fwd = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    logits = fwd.run(None, {"input": x})[0]
    c = int(np.argmax(logits[0]))
    seed = np.zeros_like(logits)
    seed[0, c] = 1

    t_build = time.perf_counter()
    vjp = build_vjp_model(model, [layer])
    t_build = time.perf_counter() - t_build
    gsess = ort.InferenceSession(vjp.SerializeToString(), so, providers=["CPUExecutionProvider"])
    vjp_in = build_vjp_model(model, ["input"])
    isess = ort.InferenceSession(vjp_in.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fd = FiniteDifferences(model, layer)
    from refcam import explain
    from refcam.onnx import Model

    rm = Model(model)

    # interleaved rounds: the four measurements share the machine's load conditions
    fns = {
        "fwd": lambda: fwd.run(None, {"input": x}),
        "gc": lambda: gsess.run([grad_name(layer), layer], {"input": x, SEED_INPUT: seed}),
        "in": lambda: isess.run([grad_name("input")], {"input": x, SEED_INPUT: seed}),
        "fd": lambda: fd({"input": x}, seed, mode="channel", step=1e-2, richardson=False),
        "e2e": lambda: explain(rm, x, "gradcam", layer=layer),
    }
    times = {k: [] for k in fns}
    for k, f in fns.items():
        f()  # warm-up
    for _ in range(args.repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    t_fwd, t_gc, t_in, t_fd, t_e2e = (float(np.median(times[k])) for k in ("fwd", "gc", "in", "fd", "e2e"))

    g, a = gsess.run([grad_name(layer), layer], {"input": x, SEED_INPUT: seed})
    _, r = fd({"input": x}, seed, mode="channel", step=1e-2, richardson=False)
    z = np.prod(a.shape[2:])
    alpha_vjp = g.astype(np.float64).sum(axis=(2, 3)) / z
    alpha_fd = r.value / z
    rel = np.abs(alpha_vjp - alpha_fd).max() / np.abs(alpha_fd).max()

    print(f"model: ResNet-50-sized bottleneck ResNet, {n_params / 1e6:.1f} M parameters, input 1x3x224x224, "
          f"target layer {layer} {tuple(a.shape)}; onnxruntime {ort.__version__}, {os.cpu_count()} cores")
    print(f"gradient model build time        {t_build * 1e3:8.1f} ms (once)")
    print(f"plain forward                    {t_fwd * 1e3:8.1f} ms   1.00x")
    print(f"Grad-CAM via VJP (fwd+bwd)       {t_gc * 1e3:8.1f} ms   {t_gc / t_fwd:.2f}x  (goal <= 3.5x)")
    print(f"Grad-CAM map end to end          {t_e2e * 1e3:8.1f} ms   {t_e2e / t_fwd:.2f}x  "
          "(refcam.explain: one forward for activations + targets, then fwd+bwd)")
    print(f"input gradient via VJP (fwd+bwd) {t_in * 1e3:8.1f} ms   {t_in / t_fwd:.2f}x")
    print(f"FD Grad-CAM weights (2K={2 * a.shape[1]})   {t_fd * 1e3:8.1f} ms   {t_fd / t_fwd:.2f}x  (goal <= 2x)")
    print(f"max |alpha_VJP - alpha_FD| / max |alpha_FD| = {rel:.2e}")


if __name__ == "__main__":
    main()
