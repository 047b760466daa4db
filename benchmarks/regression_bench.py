"""Speed regression check: the gradient benchmarks of the current checkout against a baseline commit.

Issue 12's "no regression in speed on the benchmarks", measured in ONE run.  The baseline (default
``92198b6``, the round-1 code ``bench_gradients.py`` was first measured on) is checked out into a
temporary ``git worktree --detach``; each version is imported in its own worker subprocess
(``PYTHONPATH`` = its root, ``refcam.__file__`` checked), and both workers get the same model file
(the ResNet-50-sized bottleneck ResNet of ``bench_gradients.py``, 1x3x224x224, random weights,
built once by this process).  The workers prepare everything (gradient models, sessions, one
warm-up call per benchmark), then the parent asks for ONE timed call at a time, interleaving
benchmark by benchmark and alternating which version goes first, so both sides see the same load;
only one worker runs at a time.  Every onnxruntime session is single-threaded on both sides
(``SessionOptions`` defaults patched to 1 intra-/inter-op thread before refcam is imported), BLAS too.

Benchmarks (``bench_gradients.py``'s, plus end-to-end saliency):

* ``forward``       plain forward, one session run;
* ``gradcam_vjp``   Grad-CAM gradients via the VJP graph (activations + gradient at ``stage3``);
* ``input_grad``    input gradient via the VJP graph (full backward);
* ``fd_weights``    FD Grad-CAM weights (channel-directional central differences, step 1e-2, no
  Richardson; the current version also runs its exactness checks -- issue 12.5 -- and that cost is
  part of what is measured);
* ``explain_gradcam`` / ``explain_saliency``  ``refcam.explain`` end to end on a reused
  :class:`refcam.onnx.Model` (gradient graphs cached after the warm-up call).

Printed: median seconds per version, the ratios new/old of the medians and of the minima (load only
adds time: on a busy machine the minima are the steadier figure), the range of the per-round paired
ratios, the load average before and after.  ``forward`` runs the same onnxruntime session on the
same model on both sides: its ratio is the control (1.00 up to noise).  ``--write`` replaces
(or appends) the section "Speed regression vs round 1" of ``docs/benchmarks.md``.

Usage (from the repository root, project importable)::

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/regression_bench.py --repeats 7 --write

Roughly 3-4 minutes on a quiet 2-core machine at 7 repeats (most of it building the two versions'
gradient models and sessions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BENCHES = ["forward", "gradcam_vjp", "input_grad", "fd_weights", "explain_gradcam", "explain_saliency"]
SECTION = "## Speed regression vs round 1"


# ------------------------------------------------------------------------------------------ worker
def _single_threaded_ort() -> None:
    """Make every ``onnxruntime.SessionOptions()`` single-threaded unless the caller sets threads."""
    import onnxruntime as ort

    base = ort.SessionOptions

    class SessionOptions(base):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.intra_op_num_threads = 1
            self.inter_op_num_threads = 1

    ort.SessionOptions = SessionOptions


def _signature(model, vjp) -> list[str]:
    """The backward nodes of ``vjp`` in a name-free canonical form, one string per node: op type,
    attributes, and each input as the forward tensor's name (the same in both versions), ``#k``
    (the k-th backward node's output j) or ``const`` (a constant the builder added)."""
    fwd = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    fwd |= {o for n in model.graph.node for o in n.output}
    made: dict[str, str] = {}
    sig = []
    for k, n in enumerate(vjp.graph.node[len(model.graph.node):]):
        ins = [i if i in fwd else made.get(i, "const" if i else "") for i in n.input]
        attrs = sorted((a.name, str(a).replace("\n", " ")) for a in n.attribute)
        sig.append(f"{n.op_type}({', '.join(ins)}){attrs}")
        for j, o in enumerate(n.output):
            made[o] = f"#{k}.{j}"
    return sig


def worker(root: str, model_path: str, layer: str) -> None:
    """Prepare the benchmarks with the refcam of ``root``, then time one call per stdin line."""
    _single_threaded_ort()
    sys.path.insert(0, root)
    import numpy as np
    import onnx
    import onnxruntime as ort

    import refcam
    from refcam import explain
    from refcam.autodiff import SEED_INPUT, build_vjp_model, grad_name
    from refcam.autodiff.fd import FiniteDifferences
    from refcam.onnx import Model

    here = os.path.dirname(os.path.abspath(refcam.__file__))
    if os.path.commonpath([here, os.path.abspath(root)]) != os.path.abspath(root):
        raise SystemExit(f"worker for {root} imported refcam from {here}")
    model = onnx.load(model_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 3

    def session(m):
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])

    fwd = session(model)
    logits = fwd.run(None, {"input": x})[0]
    c = int(np.argmax(logits[0]))
    seed = np.zeros_like(logits)
    seed[0, c] = 1
    t = time.perf_counter()
    gvjp = build_vjp_model(model, [layer])
    t_build = time.perf_counter() - t
    ivjp = build_vjp_model(model, ["input"])
    gsess, isess = session(gvjp), session(ivjp)
    # the backward part of each gradient graph, as a noise-free structural comparison
    graphs = {k: _signature(model, v) for k, v in (("gradcam", gvjp), ("input", ivjp))}
    fd = FiniteDifferences(model, layer)
    rm = Model(model_path)
    fns = {
        "forward": lambda: fwd.run(None, {"input": x}),
        "gradcam_vjp": lambda: gsess.run([grad_name(layer), layer], {"input": x, SEED_INPUT: seed}),
        "input_grad": lambda: isess.run([grad_name("input")], {"input": x, SEED_INPUT: seed}),
        "fd_weights": lambda: fd({"input": x}, seed, mode="channel", step=1e-2, richardson=False),
        "explain_gradcam": lambda: explain(rm, x, "gradcam", layer=layer, target=c),
        "explain_saliency": lambda: explain(rm, x, "saliency", target=c),
    }
    for f in fns.values():
        f()  # warm-up (explain builds and caches its gradient graphs here)
    print(json.dumps({"ready": here, "vjp_build_s": t_build, "graphs": graphs}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        t = time.perf_counter()
        fns[name]()
        print(json.dumps({name: time.perf_counter() - t}), flush=True)


# ------------------------------------------------------------------------------------------ parent
def _git(*args: str, cwd: str = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _start(root: str, model_path: str, layer: str) -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, PYTHONPATH=root, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", root, model_path, layer],
                         cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line:
        raise SystemExit(f"worker for {root} failed to start (exit code {p.wait()})")
    return p, json.loads(line)


def _ask(p: subprocess.Popen, name: str) -> float:
    p.stdin.write(name + "\n")
    p.stdin.flush()
    line = p.stdout.readline()
    if not line:
        raise SystemExit(f"worker died during {name} (exit code {p.wait()})")
    return float(json.loads(line)[name])


def _table(res: dict, paired: dict) -> list[str]:
    import numpy as np

    rows = ["| benchmark | old median (s) | new median (s) | new/old, medians | new/old, minima | paired ratios min–max |",
            "|---|---|---|---|---|---|"]
    for b in BENCHES:
        o, n = float(np.median(res["old"][b])), float(np.median(res["new"][b]))
        lo, ln = min(res["old"][b]), min(res["new"][b])
        rows.append(f"| {b} | {o:.3f} | {n:.3f} | **{n / o:.2f}** | {ln / lo:.2f} | "
                    f"{min(paired[b]):.2f}–{max(paired[b]):.2f} |")
    return rows


def _op_diff(old: list[str], new: list[str]) -> str:
    """Op-type counts that differ, ``op old→new``."""
    from collections import Counter

    co, cn = (Counter(s.split("(")[0] for s in v) for v in (old, new))
    return ", ".join(f"{k} {co[k]}→{cn[k]}" for k in sorted(set(co) | set(cn)) if co[k] != cn[k]) or \
        "the same op counts, wired differently"


def _write(lines: list[str]) -> None:
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    with open(path) as f:
        text = f.read()
    block = "\n".join(lines) + "\n"
    if SECTION in text:
        start = text.index(SECTION)
        # the section ends at the next heading or at the next marked section of another benchmark
        ends = [i for i in (text.find("\n## ", start + len(SECTION)), text.find("\n<!-- ", start)) if i >= 0]
        nxt = min(ends) if ends else -1
        text = text[:start] + block + ("\n" + text[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(path, "w") as f:
        f.write(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="92198b6", help="baseline commit (default: round 1, 92198b6)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    args = ap.parse_args()

    import numpy as np
    import onnx
    import onnxruntime as ort

    sys.path.insert(0, ROOT)
    from tests.autodiff._models import resnet

    t0 = time.time()
    load0 = os.getloadavg()
    head = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    base = _git("rev-parse", "--short", args.base)
    tmp = tempfile.mkdtemp(prefix="refcam_regression_")
    base_root = os.path.join(tmp, "base")
    workers = {}
    try:
        _git("worktree", "add", "--detach", base_root, args.base)
        model, names = resnet(depths=(3, 4, 6, 3), width=64, bottleneck=True, classes=1000, size=224, batch=1)
        layer = names["stage3"]
        model_path = os.path.join(tmp, "resnet50_sized.onnx")
        onnx.save(model, model_path)
        info = {}
        for side, root in (("old", base_root), ("new", ROOT)):
            workers[side], info[side] = _start(root, model_path, layer)
        res = {s: {b: [] for b in BENCHES} for s in workers}
        paired = {b: [] for b in BENCHES}
        for i in range(args.repeats):
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for b in BENCHES:
                t = {s: _ask(workers[s], b) for s in order}
                for s in order:
                    res[s][b].append(t[s])
                paired[b].append(t["new"] / t["old"])
        load1 = os.getloadavg()
    finally:
        for p in workers.values():
            try:
                p.stdin.write("quit\n")
                p.stdin.flush()
                p.wait(timeout=60)
            except Exception:  # noqa: BLE001  a dead worker: nothing to stop
                pass
        subprocess.run(["git", "worktree", "remove", "--force", base_root], cwd=ROOT, capture_output=True)
        subprocess.run(["rm", "-rf", tmp])
    runtime = time.time() - t0
    lines = [
        SECTION + f" ({base})",
        "",
        f"`benchmarks/regression_bench.py --repeats {args.repeats}`: old = {base}"
        f"{' (round 1)' if base.startswith('92198b6') else ''}, new = {head}"
        f"{' + uncommitted changes' if dirty else ''}; one run, {args.repeats} interleaved rounds (order "
        "alternating), one onnxruntime/BLAS thread per side, only one side running at a time. "
        f"ResNet-50-sized bottleneck ResNet (tests/autodiff/_models.resnet), 1x3x224x224, Grad-CAM layer "
        f"`{layer}`. {platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}, numpy "
        f"{np.__version__}; load average {load0[0]:.2f} before, {load1[0]:.2f} after; run time "
        f"{runtime:.0f} s. Gradient model build (stage3): old {info['old']['vjp_build_s']:.2f} s, new "
        f"{info['new']['vjp_build_s']:.2f} s (once, not interleaved). `forward` is the control (the same "
        "session on both sides): its ratio shows the noise.",
        "",
        *[f"Backward nodes of the {k} gradient graph: old {len(info['old']['graphs'][k])}, new "
          f"{len(info['new']['graphs'][k])} ("
          + ("identical up to tensor names" if info['old']['graphs'][k] == info['new']['graphs'][k] else "different: "
             + _op_diff(info['old']['graphs'][k], info['new']['graphs'][k])) + ")." for k in ("gradcam", "input")],
        "",
        *_table(res, paired),
    ]
    print("\n".join(lines))
    if args.write:
        _write(lines)
        print(f"\nwritten to docs/benchmarks.md ({SECTION})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:5])
    else:
        main()
