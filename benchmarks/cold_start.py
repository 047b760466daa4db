"""Cold start: a fresh process, the model file on disk, to the first Grad-CAM map.

One command prints the table and writes it into ``docs/benchmarks.md`` (between the markers
``<!-- cold-start:begin -->`` / ``<!-- cold-start:end -->``)::

    python benchmarks/cold_start.py                      # ResNet-50 and vgg16_bn, 3 rounds
    python benchmarks/cold_start.py --models resnet50 --repeats 5 --out /tmp/b.md

* The models are torchvision's ``resnet50`` / ``vgg16_bn`` with ``torch.manual_seed(0)`` random
  weights (no download), exported once into ``--dir`` with the legacy exporter (``dynamo=False``,
  opset 17, constant folding, dynamic batch), as ``benchmarks/peers_bench.py`` does.
* Every measurement is a fresh ``python`` subprocess, timed from its start to its exit by the parent
  (interpreter start, imports, loading, the result), 1 thread everywhere:

  - **ORT**: ``import onnxruntime``; ``InferenceSession(path)`` + one forward (the floor);
  - **refcam, cold cache**: ``import refcam``; ``refcam.explain(path-loaded Model, x, "gradcam")``
    with an empty ``REFCAM_CACHE_DIR`` (the gradient graph is built);
  - **refcam, warm cache**: the same with the cache filled by an earlier process.

  The three run interleaved, ``--repeats`` rounds; the table shows medians and the ratio to the
  ORT floor of the same round.  Inside each process the worker also reports its own split (imports,
  model load, first map) and its peak RSS (``VmHWM``).
* The machine's load average is printed next to the figures: on a shared machine wall times move
  with it; ratios measured within one round are the figures to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN, END = "<!-- cold-start:begin -->", "<!-- cold-start:end -->"
MODELS = ("resnet50", "vgg16_bn")


def _peak_mib() -> float:
    for ln in Path("/proc/self/status").read_text().splitlines():
        if ln.startswith("VmHWM:"):
            return int(ln.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------- workers
def worker(kind: str, path: str) -> None:
    t0 = time.perf_counter()
    import numpy as np

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    if kind == "ort":
        import onnxruntime as ort

        t1 = time.perf_counter()
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        so.log_severity_level = 3
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        t2 = time.perf_counter()
        s.run(None, {s.get_inputs()[0].name: x})
    else:
        import refcam

        t1 = time.perf_counter()
        m = refcam.onnx.Model(path, intra_op_num_threads=1, inter_op_num_threads=1)
        t2 = time.perf_counter()
        refcam.explain(m, x, "gradcam", progress=False)
    t3 = time.perf_counter()
    print("RESULT " + json.dumps({"import": t1 - t0, "load": t2 - t1, "first": t3 - t2,
                                  "peak_mib": _peak_mib()}))


def export(d: Path, names) -> dict:
    """Export the torchvision models (seeded random weights) once; returns name → path."""
    out = {n: d / f"{n}.onnx" for n in names}
    todo = [n for n, p in out.items() if not p.exists()]
    if todo:
        code = (
            "import sys, numpy as np, torch, torchvision\n"
            "for n in sys.argv[2:]:\n"
            "    torch.manual_seed(0)\n"
            "    m = getattr(torchvision.models, n)(weights=None).eval()\n"
            "    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))\n"
            "    torch.onnx.export(m, x, f'{sys.argv[1]}/{n}.onnx', dynamo=False, opset_version=17,\n"
            "                      do_constant_folding=True, input_names=['input'], output_names=['logits'],\n"
            "                      dynamic_axes={'input': {0: 'N'}, 'logits': {0: 'N'}})\n")
        print(f"exporting {todo} to {d} ...", flush=True)
        subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(d), *todo], check=True)
    return out


def spawn(kind: str, path: Path, cache: Path | None) -> dict:
    env = dict(os.environ)
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[v] = "1"
    env["REFCAM_PROGRESS"] = "0"
    env.setdefault("PYTHONPATH", str(ROOT))
    if cache is not None:
        env["REFCAM_CACHE_DIR"] = str(cache)
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(path)],
                       env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not line:
        raise RuntimeError(f"{kind} {path.name} failed:\n{p.stderr[-3000:]}")
    r = json.loads(line[0][7:])
    r["wall"] = wall
    r["cpu"] = cpu
    r["load_avg"] = os.getloadavg()[0]
    return r


def measure(paths: dict, repeats: int, tmp: Path) -> dict:
    res: dict = {n: {"ort": [], "cold": [], "warm": []} for n in paths}
    warm_dir = tmp / "warm-cache"
    for n, p in paths.items():  # fill the warm cache (untimed)
        spawn("refcam", p, warm_dir)
    for r in range(repeats):
        for n, p in paths.items():
            cold_dir = tmp / f"cold-{n}-{r}"
            for kind, key, cache in (("ort", "ort", None), ("refcam", "cold", cold_dir),
                                     ("refcam", "warm", warm_dir)):
                out = spawn(kind, p, cache)
                res[n][key].append(out)
                print(f"  round {r + 1} {n:9s} {key:5s}: {out['wall']:6.2f} s wall, {out['cpu']:6.2f} s CPU (import {out['import']:.2f}, "
                      f"load {out['load']:.2f}, first {out['first']:.2f}; peak {out['peak_mib']:.0f} MiB; "
                      f"load avg {out['load_avg']:.1f})", flush=True)
    return res


def table(res: dict, repeats: int, started: str, loads: list) -> str:
    med = statistics.median
    L = [BEGIN, "## Cold start: fresh process to the first Grad-CAM", "",
         f"Command: `python benchmarks/cold_start.py` ({repeats} interleaved rounds, medians; started "
         f"{started}; load average during the run {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} CPUs; "
         "1 thread everywhere).  Each cell is one fresh `python` process timed by the parent, from its "
         "start to its exit: the ORT floor is `import onnxruntime` + `InferenceSession(path)` + one "
         "forward; refcam is `import refcam` + `Model(path)` + `refcam.explain(m, x, \"gradcam\")` (b=1, "
         "top-1 class, default layer), with an empty gradient-graph cache (cold) or one filled by an "
         "earlier process (warm, `refcam.autodiff.cache`).  Ratios are per round, then the median; "
         "CPU time (user + system of the process, all its threads) is less sensitive to the machine's "
         "load than wall time and is shown in brackets.", "",
         "| model | ORT session + 1 forward | refcam Grad-CAM, cold cache | refcam Grad-CAM, warm cache | "
         "refcam split (import / load / first map), cold | peak RSS MiB: ORT / refcam cold |",
         "|---|---|---|---|---|---|"]
    for n, r in res.items():
        def col(key: str, what: str) -> list:
            return [x[what] for x in r[key]]

        def cell(key: str) -> str:
            w, c = col(key, "wall"), col(key, "cpu")
            if key == "ort":
                return f"{med(w):.2f} s [{med(c):.2f} s]"
            rw = med([a / b for a, b in zip(w, col("ort", "wall"))])
            rc = med([a / b for a, b in zip(c, col("ort", "cpu"))])
            return f"{med(w):.2f} s ({rw:.2f}×) [{med(c):.2f} s, {rc:.2f}×]"

        sp = " / ".join(f"{med([x[k] for x in r['cold']]):.2f}" for k in ("import", "load", "first"))
        L.append(f"| {n} | {cell('ort')} | {cell('cold')} | {cell('warm')} | "
                 f"{sp} s | {med([x['peak_mib'] for x in r['ort']]):.0f} / "
                 f"{med([x['peak_mib'] for x in r['cold']]):.0f} |")
    L += ["", "Target (issue 13): refcam's first Grad-CAM ≤ 2× the ORT floor.", END]
    return "\n".join(L) + "\n"


def write_section(path: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the part of ``path`` between the markers ``begin``/``end`` by ``section`` (which carries
    the same markers), or append it; the rest of the file is kept (memory_bench.py passes its own)."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        a = text.index(begin)
        b = text.index(end) + len(end)
        text = text[:a] + section.rstrip("\n") + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="folder for the exported models (kept; default a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"),
                    help="markdown file whose cold-start section is replaced ('-' to skip)")
    a = ap.parse_args(argv)
    if a.worker:
        worker(*a.worker)
        return 0
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="refcam-cold-") as tmp:
        d = Path(a.dir) if a.dir else Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        paths = export(d, a.models)
        res = measure(paths, a.repeats, Path(tmp))
    loads = [x["load_avg"] for r in res.values() for v in r.values() for x in v]
    section = table(res, a.repeats, started, loads)
    print("\n" + section)
    if a.out != "-":
        write_section(Path(a.out), section)
        print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
