"""Datasets at scale (issue 15): every "done when" figure as a ratio measured in one run.

One command (473 s on the shared 2-core machine at load 3.5, less when idle; ``--quick``, 64
images and fewer repeats: 82 s)::

    PYTHONPATH=. OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/dataset_bench.py \\
        --out docs/dataset_bench.md

Every side runs on **one thread** (onnxruntime ``intra_op_num_threads=1``, torch
``set_num_threads(1)``, OMP / BLAS 1), so that two Dask workers can use the two cores.

Part A, all classes (torchvision ResNet-50, random weights seeded 0, exported to ONNX; b = 8,
``layer4``): one forward run; ``refcam.explain(..., "cam" | "gradcam", target="all")`` (1000
maps per image) as multiples of it (goals <= 1.2x and <= 2x); pytorch-grad-cam ``GradCAM`` looping
over the targets, measured on ``--peer-classes`` classes and extrapolated to 1000.  Median of
``--repeats`` interleaved rounds.

Part B, a dataset (``--images`` images cut from the bundled photos by seeded crops and flips;
the four runs interleaved over slices of the images),
Grad-CAM top-1 plus all-class CAM (one ``explain_dataset`` pass: ``also=[("cam", "all")]``,
``batch_size=16``): single process; a local Dask cluster of 1 and of 2 single-threaded workers
(cluster start-up and a warm-up run in which every worker builds its sessions timed apart;
throughput and speed-up, goal >= 1.7x; per worker the CPU / wall
ratio of its chunks, its onnxruntime setting and its thread count, to check that a worker really uses one core); a plain
pytorch-grad-cam loop (``GradCAM``, top-1, batches of 16, the same decoded images): refcam / peer
time (goal <= 0.4x).

Part C, peak memory per worker: a 1-worker cluster per batch size, peak RSS of the worker
(``VmHWM``) after the same workload, and the linear fit ``peak = session + B * per_image``.

Ratios are meaningful within one run; the load average is printed next to every part.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the repository root

BATCH = 16
LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def load() -> str:
    return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())


def export(d: Path) -> Path:
    """torchvision ResNet-50 (weights=None, torch.manual_seed(0)) → ``d/resnet50.onnx``."""
    p = d / "resnet50.onnx"
    if p.exists() and (d / "weights.pt").exists():
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


def torch_model(d: Path):
    import torch
    import torchvision

    torch.set_num_threads(1)
    tm = torchvision.models.resnet50(weights=None)
    tm.load_state_dict(torch.load(d / "weights.pt"))
    return tm.eval()


# ------------------------------------------------------------------------------ part A
def part_classes(d: Path, repeats: int, peer_classes: int) -> None:
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import refcam
    from refcam.onnx import Model

    path = export(d)
    layer = layer4(path)
    m = Model(str(path), intra_op_num_threads=1, inter_op_num_threads=1)
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    fns = {
        "one forward": lambda: m.run(x),
        "CAM, 1000 classes": lambda: refcam.explain(m, x, "cam", layer=layer, target="all"),
        "Grad-CAM, 1000 classes": lambda: refcam.explain(m, x, "gradcam", layer=layer,
                                                         target="all"),
    }
    for f in fns.values():
        f()  # warm-up (sessions, head lookup)
    times: dict = {k: [] for k in fns}
    cpus: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            times[k].append(time.perf_counter() - t)
            cpus[k].append(time.process_time() - c)
    med = {k: float(np.median(v)) for k, v in times.items()}
    cpu = {k: float(np.median(v)) for k, v in cpus.items()}
    tm = torch_model(d)
    cam = GradCAM(model=tm, target_layers=[tm.layer4[-1]])
    xt = torch.from_numpy(x)
    cam(input_tensor=xt, targets=[ClassifierOutputTarget(0)] * len(x))  # warm-up
    t, c0 = time.perf_counter(), time.process_time()
    for c in range(peer_classes):
        cam(input_tensor=xt, targets=[ClassifierOutputTarget(c)] * len(x))
    per_class = (time.perf_counter() - t) / peer_classes
    per_class_cpu = (time.process_time() - c0) / peer_classes
    fwd, fwd_cpu = med["one forward"], cpu["one forward"]
    say(f"### A. All 1000 classes, ResNet-50, b = 8, layer4 ({load()})")
    say()
    say(f"median of {repeats} interleaved rounds; maps (8, 1000, 7, 7)")
    say()
    say("| | wall time | / one forward | CPU time | / one forward | goal |")
    say("|---|---:|---:|---:|---:|---|")
    goals = {"one forward": "", "CAM, 1000 classes": "<= 1.2x", "Grad-CAM, 1000 classes": "<= 2x"}
    for k, v in med.items():
        say(f"| refcam {k} | {v * 1e3:.0f} ms | {v / fwd:.2f}x | {cpu[k] * 1e3:.0f} ms | "
            f"{cpu[k] / fwd_cpu:.2f}x | {goals[k]} |")
    say(f"| pytorch-grad-cam GradCAM, per class ({peer_classes} measured) | "
        f"{per_class * 1e3:.0f} ms | {per_class / fwd:.2f}x | {per_class_cpu * 1e3:.0f} ms | "
        f"{per_class_cpu / fwd_cpu:.2f}x | |")
    say(f"| pytorch-grad-cam, 1000 classes (extrapolated) | {per_class * 1000:.0f} s | "
        f"{per_class * 1000 / fwd:.0f}x | {per_class_cpu * 1000:.0f} s | "
        f"{per_class_cpu * 1000 / fwd_cpu:.0f}x | |")
    say()
    say(f"pytorch-grad-cam's loop over 1000 classes / refcam's Grad-CAM of all classes: "
        f"**{per_class * 1000 / med['Grad-CAM, 1000 classes']:.0f}x** (wall), "
        f"{per_class_cpu * 1000 / cpu['Grad-CAM, 1000 classes']:.0f}x (CPU).  CPU time (the "
        "process's, every side on one thread) is the figure least disturbed by other jobs.")
    say()


# ------------------------------------------------------------------------------ part B
def make_images(folder: Path, n: int) -> list[Path]:
    """``n`` images from the bundled photos: seeded random square crops, resized to 256, every
    other one flipped horizontally."""
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


def image_folder(d: Path, name: str, n: int) -> Path:
    """``d / name`` holding exactly the ``n`` images of :func:`make_images` (reused if it has
    ``n`` files, rebuilt otherwise)."""
    folder = d / name
    if not folder.exists() or len(list(folder.iterdir())) != n:
        shutil.rmtree(folder, ignore_errors=True)
        make_images(folder, n)
    return folder


def _workload(path: Path, layer: str, folder: Path, store: Path, **kw):
    from refcam.dataset import explain_dataset

    shutil.rmtree(store, ignore_errors=True)
    t = time.perf_counter()
    r = explain_dataset(str(path), folder, store, "gradcam", layer=layer, also=[("cam", "all")],
                        batch_size=kw.pop("batch_size", BATCH), progress=False, **kw)
    dt = time.perf_counter() - t
    assert r.n_done == r.n_items, (r.n_done, r.n_items)
    return dt, r


def _worker_info() -> dict:
    """Run on each worker: its threads (``/proc/self/task``) and the thread settings."""
    from refcam import dataset

    # the session of the model's output, as the worker built it (Model.session caches it)
    intra = sorted({m.session([m.output_name]).get_session_options().intra_op_num_threads
                    for m in dataset._MODELS.values()})
    task = "/proc/self/task"
    return {"pid": os.getpid(), "threads": len(os.listdir(task)) if os.path.isdir(task) else -1,
            "ort_intra_op": intra, "omp": os.environ.get("OMP_NUM_THREADS"),
            "blas": os.environ.get("OPENBLAS_NUM_THREADS")}


def _per_worker(r) -> dict:
    by: dict = {}
    for s in r.chunk_stats:
        w = by.setdefault(s["pid"], {"chunks": 0, "cpu": 0.0, "wall": 0.0, "rss": 0})
        w["chunks"] += 1
        w["cpu"] += s["cpu"]
        w["wall"] += s["wall"]
        w["rss"] = max(w["rss"], s["peak_rss"])
    return by


def part_workers(d: Path, n_images: int, n_parts: int) -> None:
    """The four runs interleaved over ``n_parts`` slices of the images (single process, the
    peer, 1 worker, 2 workers on slice 1, then on slice 2, ...), so that a change of the machine's
    load during the run falls on all four alike; times are summed over the slices."""
    import torch
    from distributed import Client, LocalCluster
    from pytorch_grad_cam import GradCAM

    from refcam.onnx import load as load_model
    from refcam.zoo._images import load_inputs

    path = export(d)
    layer = layer4(path)
    folder = image_folder(d, f"images{n_images}", n_images)
    say(f"### B. {n_images} images, Grad-CAM top-1 + all-class CAM, batch {BATCH} ({load()})")
    say()
    warm = image_folder(d, "images-warm", 4)
    files = sorted(str(f) for f in folder.iterdir())
    parts = [list(p) for p in np.array_split(np.asarray(files, dtype=object), n_parts)]
    clusters, starts = {}, {}
    tm = torch_model(d)
    cam = GradCAM(model=tm, target_layers=[tm.layer4[-1]])
    m = load_model(str(path))
    names = {0: "refcam, single process (`workers=0`, 1 thread)",
             1: "refcam, Dask, 1 worker x 1 thread", 2: "refcam, Dask, 2 workers x 1 thread",
             "peer": "pytorch-grad-cam GradCAM loop, top-1 only (1 thread)"}
    wall = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    stats: dict = {1: [], 2: []}
    try:
        for w in (1, 2):  # both clusters up and warm before any measurement (idle ones cost no CPU)
            t = time.perf_counter()
            cluster = LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.CRITICAL)
            clusters[w] = (cluster, Client(cluster))
            # warm-up: every worker loads the model and builds its sessions (once per worker)
            _workload(path, layer, warm, d / "store-warm.zarr",
                      scheduler=cluster.scheduler_address, batch_size=1)
            starts[w] = time.perf_counter() - t
        _workload(path, layer, warm, d / "store-warm.zarr", workers=0, threads=1)
        cam(input_tensor=torch.from_numpy(
            np.concatenate([it.x for it in load_inputs([files[0]], m)])), targets=None)
        for k, part in enumerate(parts):
            c = time.process_time()
            dt, _ = _workload(path, layer, part, d / f"store-0-{k}.zarr", workers=0, threads=1)
            wall[0] += dt
            cpu[0] += time.process_time() - c
            t, c = time.perf_counter(), time.process_time()
            for i in range(0, len(part), BATCH):
                x = np.concatenate([it.x for it in load_inputs(part[i:i + BATCH], m)])
                cam(input_tensor=torch.from_numpy(x), targets=None)
            wall["peer"] += time.perf_counter() - t
            cpu["peer"] += time.process_time() - c
            for w in (1, 2):
                dt, r = _workload(path, layer, part, d / f"store-{w}-{k}.zarr",
                                  scheduler=clusters[w][0].scheduler_address)
                wall[w] += dt
                cpu[w] += sum(s["cpu"] for s in r.chunk_stats)
                stats[w] += r.chunk_stats
        infos = {w: clusters[w][1].run(_worker_info) for w in (1, 2)}
    finally:
        for cluster, client in clusters.values():
            client.close()
            cluster.close()
    say(f"Interleaved over {n_parts} slices of {len(parts[0])} images (single process, peer, "
        "1 worker, 2 workers on each slice in turn); times summed.")
    say()
    say("| run | wall time | images/s | CPU time | cluster start-up + warm-up |")
    say("|---|---:|---:|---:|---:|")
    for key, name in names.items():
        start = f"{starts[key]:.1f} s" if key in starts else ""
        say(f"| {name} | {wall[key]:.1f} s | {n_images / wall[key]:.2f} | {cpu[key]:.1f} s | "
            f"{start} |")
    say()
    say(f"* speed-up, 2 workers vs 1 (throughput, start-up excluded): "
        f"**{wall[1] / wall[2]:.2f}x** (goal >= 1.7x)")
    per2 = _per_worker(SimpleNamespace(chunk_stats=stats[2]))
    busiest = max(s["cpu"] for s in per2.values())
    say(f"* CPU-time estimate of the same, if each worker had a core to itself: 1-worker CPU "
        f"{cpu[1]:.1f} s / busiest of the 2 workers {busiest:.1f} s = {cpu[1] / busiest:.2f}x "
        "(an estimate that ignores memory-bandwidth sharing)")
    say(f"* refcam single process (Grad-CAM top-1 **and** all-class CAM) / pytorch-grad-cam loop "
        f"(Grad-CAM top-1): **{wall[0] / wall['peer']:.2f}x** wall, "
        f"{cpu[0] / cpu['peer']:.2f}x CPU (goal <= 0.4x; refcam's CPU time includes the thread "
        "decoding the next chunk)")
    for w in (1, 2):
        by_pid = {inf["pid"]: inf for inf in infos[w].values()}
        for pid, s in sorted(_per_worker(SimpleNamespace(chunk_stats=stats[w])).items()):
            inf = by_pid.get(pid, {"threads": "?", "ort_intra_op": "?", "omp": "?", "blas": "?"})
            say(f"* {w} worker(s), worker pid {pid}: {s['chunks']} chunks, CPU / wall of its "
                f"chunks {s['cpu'] / s['wall']:.2f}, {inf['threads']} OS threads, onnxruntime "
                f"intra-op {inf['ort_intra_op']}, OMP {inf['omp']}, BLAS {inf['blas']}, peak "
                f"RSS {s['rss'] / 2**20:.0f} MiB")
    say()


# ------------------------------------------------------------------------------ part C
def part_memory(d: Path, batches: list[int]) -> None:
    from distributed import Client, LocalCluster

    path = export(d)
    layer = layer4(path)
    n = 2 * max(batches)
    folder = image_folder(d, f"images{n}", n)
    say(f"### C. Peak memory per worker vs batch size ({load()})")
    say()
    say(f"1 Dask worker, {n} images, Grad-CAM top-1 + all-class CAM; peak RSS of the worker "
        "process (`VmHWM`), which includes Python, onnxruntime and the model (~100 MB of "
        "weights).")
    say()
    say("| batch B | peak RSS per worker |")
    say("|---:|---:|")
    peaks = []
    for b in batches:
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.CRITICAL)
        client = Client(cluster)
        try:
            _, r = _workload(path, layer, folder, d / f"store-mem{b}.zarr",
                             scheduler=cluster.scheduler_address, batch_size=b)
        finally:
            client.close()
            cluster.close()
        peak = max(s["peak_rss"] for s in r.chunk_stats)
        peaks.append(peak)
        say(f"| {b} | {peak / 2**20:.0f} MiB |")
    slope, icpt = np.polyfit(np.asarray(batches, float), np.asarray(peaks, float) / 2**20, 1)
    say()
    say(f"Linear fit: peak ≈ **{icpt:.0f} MiB + B × {slope:.1f} MiB** (session and runtime + "
        "per image in the batch).")
    say()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="64 images, 3 peer classes, 1 repeat, batch sizes 1 and 8 (~2 min)")
    ap.add_argument("--part", default="all", choices=("classes", "workers", "memory", "all"))
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--peer-classes", type=int, default=None)
    ap.add_argument("--dir", default="/tmp/refcam-dataset-bench")
    ap.add_argument("--out", help="write the tables (Markdown) to this file")
    a = ap.parse_args()
    repeats = a.repeats or (1 if a.quick else 3)
    images = a.images or (64 if a.quick else 512)
    peer_classes = a.peer_classes or (3 if a.quick else 20)
    batches = [1, 8] if a.quick else [1, 4, 16, 32]
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    say("# Datasets at scale: benchmark (`benchmarks/dataset_bench.py`)")
    say()
    say(f"{os.cpu_count()} CPUs, {load()} at the start; every side on one thread.  Command: "
        f"`python benchmarks/dataset_bench.py{' --quick' if a.quick else ''}`")
    say()
    if a.part in ("classes", "all"):
        part_classes(d, repeats, peer_classes)
    if a.part in ("workers", "all"):
        part_workers(d, images, 2 if a.quick else 4)
    if a.part in ("memory", "all"):
        part_memory(d, batches)
    say(f"Total run time {time.perf_counter() - t0:.0f} s; {load()} at the end.")
    if a.out:
        Path(a.out).write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
