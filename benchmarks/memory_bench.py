"""Peak memory of Grad-CAM and saliency: refcam versus torchcam, pytorch-grad-cam and captum.

One command prints the table and writes it into ``docs/benchmarks.md`` (between the markers
``<!-- memory:begin -->`` / ``<!-- memory:end -->``)::

    python benchmarks/memory_bench.py                 # ResNet-50, batches 1 and 8
    python benchmarks/memory_bench.py --batches 1 --out -

* Model: torchvision ``resnet50(weights=None)`` after ``torch.manual_seed(0)`` (the torch workers
  build exactly that; refcam loads its legacy ONNX export, ``benchmarks/cold_start.py``'s), inputs
  seeded N(0, 1) 3×224×224, target each image's class 1 + index (fixed, the same for all).
* Every cell is its own fresh subprocess (1 thread): it loads the model (torch: the module and the
  method object with its hooks; refcam: ``refcam.onnx.Model(path)``), reads its peak RSS
  (``VmHWM`` of /proc/self/status: the kernel's high-water mark, native torch/onnxruntime memory
  included), calls the method twice (the first call builds refcam's gradient session), and reads
  the peak again.  **Growth** = peak after − peak after loading: what the explanation costs on top
  of the loaded model.  The loaded peak itself is shown too (it differs between a torch module and
  an ONNX file's weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
BEGIN, END = "<!-- memory:begin -->", "<!-- memory:end -->"

CELLS = {  # method -> implementations
    "gradcam": ("refcam", "torchcam", "pytorch-grad-cam"),
    "saliency": ("refcam", "captum"),
}


def _peak_mib() -> float:
    for ln in Path("/proc/self/status").read_text().splitlines():
        if ln.startswith("VmHWM:"):
            return int(ln.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _torch_model():
    import torch
    import torchvision

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()


def worker(method: str, impl: str, batch: int, path: str) -> None:
    import numpy as np

    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    cls = [1 + i for i in range(batch)]
    if impl == "refcam":
        import refcam

        m = refcam.onnx.Model(path, intra_op_num_threads=1, inter_op_num_threads=1)
        layer = "layer4" if method == "gradcam" else None
        run = lambda: refcam.explain(m, x, method, layer=layer, target=cls, progress=False).maps  # noqa: E731
    else:
        import torch

        model = _torch_model()
        xt = torch.from_numpy(x)
        if impl == "torchcam":
            from torchcam.methods import GradCAM

            ext = GradCAM(model, "layer4")

            def run():
                return ext(class_idx=cls, scores=model(xt))[0].detach().numpy()
        elif impl == "pytorch-grad-cam":
            from pytorch_grad_cam import GradCAM
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            cam = GradCAM(model=model, target_layers=[model.layer4[-1]])
            tg = [ClassifierOutputTarget(c) for c in cls]
            run = lambda: cam(input_tensor=xt, targets=tg)  # noqa: E731
        else:
            from captum.attr import Saliency

            s = Saliency(model)
            t = torch.tensor(cls)
            run = lambda: s.attribute(xt, target=t, abs=True).detach().numpy()  # noqa: E731
    base = _peak_mib()
    t0 = time.perf_counter()
    run()
    t1 = time.perf_counter()
    run()
    print("RESULT " + json.dumps({"base": base, "peak": _peak_mib(), "first_s": t1 - t0,
                                  "load_avg": os.getloadavg()[0]}))


def spawn(method: str, impl: str, batch: int, path: Path) -> dict:
    env = dict(os.environ)
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[v] = "1"
    env["REFCAM_PROGRESS"] = "0"
    env.setdefault("PYTHONPATH", str(ROOT))
    env["REFCAM_CACHE"] = "0"  # the cold first call: the gradient graph is built in the measurement
    p = subprocess.run([sys.executable, "-W", "ignore", str(Path(__file__).resolve()), "--worker", method,
                        impl, str(batch), str(path)], env=env, capture_output=True, text=True)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not line:
        raise RuntimeError(f"{method} {impl} b={batch} failed:\n{p.stderr[-3000:]}")
    return json.loads(line[0][7:])


def table(res: dict, batches, started: str) -> str:
    loads = [r["load_avg"] for r in res.values()]
    L = [BEGIN, "## Peak memory: Grad-CAM and saliency (ResNet-50)", "",
         f"Command: `python benchmarks/memory_bench.py` (started {started}; load average "
         f"{min(loads):.1f}–{max(loads):.1f}; 1 thread).  Each cell is its own fresh process: peak RSS "
         "(`VmHWM`) after loading the model (torch module + method object, or `refcam.onnx.Model(path)`), "
         "then two calls of the method (refcam's first call builds its gradient session; cache off).  "
         "**+growth** = peak after − peak after loading; the loaded peak is in brackets.", "",
         "| method | implementation | " + " | ".join(f"b={b}: +growth MiB (loaded)" for b in batches) + " |",
         "|---|---|" + "---|" * len(batches)]
    for method, impls in CELLS.items():
        for impl in impls:
            cells = []
            for b in batches:
                r = res.get((method, impl, b))
                cells.append("failed" if r is None else f"+{r['peak'] - r['base']:.0f} ({r['base']:.0f})")
            L.append(f"| {method} | {impl} | " + " | ".join(cells) + " |")
    L += ["", "Target (issue 13): refcam's growth ≤ the best peer's for each method and batch.  refcam's "
          "growth includes creating its gradient session inside the measured call: onnxruntime copies the "
          "weights it is handed (~96 MiB for ResNet-50) and writes its blocked (NCHWc) copy of the convolution "
          "weights (~94 MiB) before it frees the first copy, so the creation peaks at about two weight copies "
          "(`refcam/onnx/_weights.py`, `docs/benchmarks_profile.md`); the torch peers run their modules' own "
          "weights, and their loaded process (the bracketed figure) is 3–4× refcam's.", END]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=4, metavar=("METHOD", "IMPL", "BATCH", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--dir", default=None, help="folder for the exported model (kept; default a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"),
                    help="markdown file whose memory section is replaced ('-' to skip)")
    a = ap.parse_args(argv)
    if a.worker:
        method, impl, batch, path = a.worker
        worker(method, impl, int(batch), path)
        return 0
    from cold_start import export, write_section

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res = {}
    with tempfile.TemporaryDirectory(prefix="refcam-mem-") as tmp:
        d = Path(a.dir) if a.dir else Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        path = export(d, ["resnet50"])["resnet50"]
        for b in a.batches:
            for method, impls in CELLS.items():
                for impl in impls:
                    try:
                        r = spawn(method, impl, b, path)
                    except RuntimeError as exc:
                        print(f"  {exc}", flush=True)
                        continue
                    res[(method, impl, b)] = r
                    print(f"  {method:8s} {impl:16s} b={b}: +{r['peak'] - r['base']:.0f} MiB "
                          f"(loaded {r['base']:.0f}, first call {r['first_s']:.2f} s, load avg {r['load_avg']:.1f})",
                          flush=True)
    section = table(res, a.batches, started)
    print("\n" + section)
    if a.out != "-":
        write_section(Path(a.out), section, BEGIN, END)
        print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
