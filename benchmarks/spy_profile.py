"""py-spy profiles of refcam and the peers on the same work: where each one's time goes.

    python benchmarks/spy_profile.py                       # ResNet-50, b=1 and b=8, 10 s each
    python benchmarks/spy_profile.py --seconds 5 --batches 8

Each workload runs in its own process under ``py-spy record --native`` (200 Hz, 1 thread, the
model of ``benchmarks/peers_bench.py``: torchvision ``resnet50`` with ``torch.manual_seed(0)``
weights; refcam loads its legacy ONNX export).  Only samples of the timed loop are counted (not
imports or the first call).  For each workload the script prints the share of samples by the
innermost Python frame and by the innermost native frame (onnxruntime's shared library carries
no symbols, so inside ``InferenceSession.run`` only its addresses show: the per-operator split of
that run is onnxruntime's own profiler, ``docs/benchmarks_profile.md``).

Needs ``py-spy`` (``pip install py-spy``) and, for the peers, torch, torchvision, torchcam and
captum.  Times are not the point here (py-spy slows torch's native unwinding); shares are.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

WORKLOADS = ("refcam_gradcam", "torchcam_gradcam", "refcam_saliency", "captum_saliency")
LOOP = "# timed loop"


def worker(what: str, batch: int, seconds: float, path: str) -> None:
    import numpy as np

    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    cls = [1 + i for i in range(batch)]
    if what.startswith("refcam"):
        import refcam

        m = refcam.onnx.Model(path, intra_op_num_threads=1, inter_op_num_threads=1)
        meth = what.split("_")[1]
        layer = "layer4" if meth == "gradcam" else None

        def f():
            refcam.explain(m, x, meth, layer=layer, target=cls, progress=False)
    else:
        import torch
        import torchvision

        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = torchvision.models.resnet50(weights=None).eval()
        xt = torch.from_numpy(x)
        if what == "torchcam_gradcam":
            from torchcam.methods import GradCAM

            ext = GradCAM(model, "layer4")

            def f():
                ext(cls, model(xt))
                model.zero_grad(set_to_none=True)
        else:
            from captum.attr import Saliency

            sal, t = Saliency(model), torch.tensor(cls)

            def f():
                sal.attribute(xt, target=t, abs=True)
    f()
    t0, n = time.time(), 0
    while time.time() - t0 < seconds:
        f()  # timed loop
        n += 1
    print(f"{what} b={batch}: {n} calls, {(time.time() - t0) / n * 1e3:.0f} ms each (under py-spy)")


def _loop_line() -> int:
    for i, ln in enumerate(Path(__file__).read_text().splitlines(), 1):
        if ln.strip().startswith("f()") and ln.strip().endswith(LOOP):
            return i
    raise RuntimeError("timed loop line not found")


def summarise(raw: Path, top: int = 6) -> str:
    """Markdown lines: shares of the loop's samples by innermost Python and native frame."""
    tag = f"({Path(__file__).name}:{_loop_line()})"
    py, native, total = collections.Counter(), collections.Counter(), 0
    for ln in raw.read_text().splitlines():
        stack, n = ln.rsplit(" ", 1)
        if tag not in stack:
            continue
        n = int(n)
        total += n
        frames = stack.split(";")
        pyf = [f for f in frames if re.search(r"\.py:\d+\)$", f)]
        py[re.sub(r":\d+\)$", ")", pyf[-1]) if pyf else "?"] += n
        leaf = frames[-1]
        native[("(onnxruntime, no symbols)" if "onnxruntime" in leaf and leaf.startswith("0x")
                 else re.sub(r"\s*\(.*", "", leaf)[:70])] += n
    if not total:
        return "  (no samples in the timed loop)"
    out = [f"  {total} samples in the timed loop; innermost Python frame:"]
    out += [f"  - {v / total:5.1%} `{k}`" for k, v in py.most_common(top)]
    out += ["  innermost native frame:"]
    out += [f"  - {v / total:5.1%} `{k}`" for k, v in native.most_common(top)]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "refcam-bench")
    a = ap.parse_args(argv)
    if a.worker:
        what, b, s, path = a.worker
        worker(what, int(b), float(s), path)
        return 0
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    from cold_start import export

    a.dir.mkdir(parents=True, exist_ok=True)
    path = export(a.dir, ["resnet50"])["resnet50"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               REFCAM_PROGRESS="0", PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT)))
    print(f"py-spy profiles, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"load {os.getloadavg()[0]:.1f}")
    for b in a.batches:
        for what in a.only:
            with tempfile.TemporaryDirectory() as td:
                raw = Path(td) / "raw.txt"
                r = subprocess.run([spy, "record", "--native", "-r", "200", "-f", "raw", "-o", str(raw), "--",
                                    sys.executable, __file__, "--worker", what, str(b), str(a.seconds), str(path)],
                                   env=env, capture_output=True, text=True)
                line = [ln for ln in r.stdout.splitlines() if " calls, " in ln]
                print(f"\n* **{what}, b={b}**" + (f" ({line[0].split(': ', 1)[1]})" if line else ""))
                print(summarise(raw) if raw.exists() else f"  py-spy failed: {r.stderr.strip()[-300:]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
