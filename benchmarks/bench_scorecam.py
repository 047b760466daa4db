"""Score-CAM cost on a ResNet-50-sized ONNX model versus the forward passes it cannot avoid.

Score-CAM on one image with K = 2048 channels needs 2048 forward passes of masked images.  This
script times ``refcam.explain(..., "scorecam")`` on a model with ResNet-50's final geometry
(input 224×224, last feature map 2048×7×7, GAP → Gemm 2048 → 1000; see
:func:`refcam.onnx.toy_models.resnet50_sized`) and, in the same run and the same process, 2048
plain forward passes of that model batched in the same chunks, and prints the ratio (goal ≤ 1.15).
Peak memory: tracemalloc (Python/NumPy allocations during Score-CAM) and ru_maxrss (process).

Run: ``PYTHONPATH=. python benchmarks/bench_scorecam.py [--repeats 2] [--budget-mib 64]``
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

import numpy as np

import refcam
from refcam.onnx import Model
from refcam.onnx.toy_models import resnet50_sized


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--budget-mib", type=int, default=64)
    args = ap.parse_args()
    budget = args.budget_mib * 2**20

    model = Model(resnet50_sized(), memory_budget=budget)
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    layer = model.default_layer()
    k = 2048
    assert layer.shape == ("N", k, 7, 7), layer.shape
    chunk = int(min(k, max(1, budget // (4 * x[0].nbytes))))  # the chunk Score-CAM uses
    xb = np.random.default_rng(1).random((chunk, 3, 224, 224), dtype=np.float32)
    model.run(xb, batch_size=chunk)  # warm-up: session creation and arena growth

    def forwards() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        done = 0
        while done < k:
            c = min(chunk, k - done)
            model.run(xb[:c], batch_size=c, checked=True)
            done += c
        return time.perf_counter() - t0, time.process_time() - c0

    def scorecam() -> tuple[float, float, int, np.ndarray]:
        tracemalloc.start()
        t0, c0 = time.perf_counter(), time.process_time()
        e = refcam.explain(model, x, "scorecam", progress=False)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return dt, dc, peak, e.maps

    t_fw, t_sc, c_fw, c_sc, peaks = [], [], [], [], []
    for _ in range(args.repeats):  # interleaved so drifts (thermal, other load) hit both
        w, c = forwards()
        t_fw.append(w)
        c_fw.append(c)
        dt, dc, peak, maps = scorecam()
        t_sc.append(dt)
        c_sc.append(dc)
        peaks.append(peak)
    fw, sc = min(t_fw), min(t_sc)
    print(
        f"model: input (1, 3, 224, 224), layer {layer.name!r} {layer.shape}, chunk {chunk} masked inputs, "
        f"budget {args.budget_mib} MiB, onnxruntime threads: default"
    )
    print(f"2048 plain forwards : {fw:8.2f} s   (runs: {', '.join(f'{t:.2f}' for t in t_fw)})")
    print(f"Score-CAM (K=2048)  : {sc:8.2f} s   (runs: {', '.join(f'{t:.2f}' for t in t_sc)})")
    print(f"ratio (wall)        : {sc / fw:8.3f}   (goal <= 1.15)")
    print(
        f"CPU time (all threads): forwards {min(c_fw):.2f} s, Score-CAM {min(c_sc):.2f} s, "
        f"ratio {min(c_sc) / min(c_fw):.3f} (robust to other processes' load)"
    )
    print(f"peak traced memory during Score-CAM: {max(peaks) / 2**20:.1f} MiB (tracemalloc)")
    print(
        f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (ru_maxrss)"
    )
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"map: shape {maps.shape}, finite {bool(np.isfinite(maps).all())}")


if __name__ == "__main__":
    main()
