"""refcam versus pytorch-grad-cam, torchcam and captum on the same ResNet-50, in one run.

One command (documented in README.md) prints the tables and writes ``docs/benchmarks.md`` and
``docs/benchmarks_scaling.png``::

    python benchmarks/peers_bench.py --out docs/benchmarks.md          # complete (≈ 15 min quiet)
    python benchmarks/peers_bench.py --quick --out /tmp/bench.md       # smoke run (a few minutes)

What it does
------------
* Builds torchvision's ``resnet50(weights=None)`` with ``torch.manual_seed(0)`` weights (eval mode),
  exports it to ONNX with the legacy exporter (``dynamo=False``, opset 17, dynamic batch axis,
  static 224×224 plus one static export per scaling input size, ``do_constant_folding=True``:
  BatchNorm folded into the convolutions, as a deployment export), and feeds both worlds the same
  seeded inputs and the same targets (each image's 2nd-ranked class).
* Times (wall ``perf_counter`` and CPU ``process_time``) in two long-lived timing servers, one per
  side (``--serve refcam``: onnxruntime and refcam; ``--serve torch``: torch, pytorch-grad-cam,
  torchcam, captum, one hooked model per peer method), with one thread on both sides
  (``torch.set_num_threads``, onnxruntime ``intra_op_num_threads``, ``OMP/MKL/OPENBLAS`` = T).
  Every measurement is set up and warmed up once; then the repeats run round-robin over all of
  them (:func:`interleaved`), so load changes of the shared machine hit all measurements alike.
  The 1-min load average is sampled at every call and printed.
* Main table (b=1 and b=8): onnxruntime and torch forwards, refcam's VJP run, every gradient CAM
  method (Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, element-wise Grad-CAM) against the
  same method in torchcam / pytorch-grad-cam and one onnxruntime forward, saliency and guided
  backprop against captum, FD Grad-CAM weights; Score-CAM (all 2048 masks) against 2048 plain
  forwards run before and after it and against the peers (their first ``--peer-masks`` masks,
  extrapolated linearly to 2048: one batched forward per mask, everything else negligible).
* Scaling: batch 1–32 at 224×224 and input sizes 224–512 at batch 1 (``--batches``,
  ``--sizes``), interleaved as well, plotted as ms per image and as ratios.
* Peak memory (``--no-memory`` skips it): one fresh process per measurement (``--worker``), peak RSS
  over the RSS after loading.  Marked sections that other benchmarks write into the same report
  (``<!-- name:begin -->`` … ``<!-- name:end -->``, e.g. ``benchmarks/cold_start.py``) are kept.
* Checks the maps agree (max abs difference after each side's normalisation).

Without torch and the peers the script exits with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LAYER_MODULE = "layer4"  # torch module (and pytorch-grad-cam's model.layer4[-1])
K = 2048


# ----------------------------------------------------------------------------------------- helpers
def _rss_mib() -> float:
    """Peak resident set size of this process in MiB: ``VmHWM`` of /proc/self/status (the kernel's RSS
    high-water mark of this address space; unlike ``ru_maxrss`` it does not carry the parent's peak over
    ``fork``+``exec``), falling back to ``resource.getrusage(RUSAGE_SELF).ru_maxrss``."""
    try:
        for ln in Path("/proc/self/status").read_text().splitlines():
            if ln.startswith("VmHWM:"):
                return int(ln.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def timed(fn, repeats: int, warmup: int = 1):
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    out = None
    for _ in range(warmup):
        out = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return float(np.median(walls)), float(np.median(cpus)), out, walls


_MEMO: dict = {}


def _memo(key, make):
    """One object per ``key`` in this process (a timing server sets up every measurement once)."""
    if key not in _MEMO:
        _MEMO[key] = make()
    return _MEMO[key]


def _onnx_path(d: Path, size: int = 224) -> Path:
    """The static-shape export for the input size ``size`` (224: the main table's model)."""
    return d / ("resnet50.onnx" if size == 224 else f"resnet50_{size}.onnx")


def _inputs(d: Path, batch: int, size: int = 224):
    """Seeded N(0,1) inputs and each image's 2nd-ranked class (same in both worlds)."""
    sfx = "" if size == 224 else f"_{size}"
    return np.load(d / f"x{sfx}.npy")[:batch], np.load(d / f"classes{sfx}.npy")[:batch]


def _torch_model(d: Path, threads: int, key=None):
    """A fresh torchvision ResNet-50 with the exported weights; with ``key``, one per key and
    process (each peer method hooks its own instance)."""
    import torch
    import torchvision

    def make():
        torch.set_num_threads(threads)
        m = torchvision.models.resnet50(weights=None)
        m.load_state_dict(torch.load(d / "weights.pt"))
        return m.eval()

    return make() if key is None else _memo(("torch", key), make)


def _refcam_model(d: Path, threads: int, budget_mib: int = 64, size: int = 224):
    """One :class:`refcam.onnx.Model` per process, export and budget (its sessions are cached)."""
    from refcam.onnx import Model

    path = _onnx_path(d, size)
    return _memo(("refcam", str(path), threads, budget_mib),
                 lambda: Model(str(path), intra_op_num_threads=threads, inter_op_num_threads=1,
                               memory_budget=budget_mib * 2**20))


def _meta(d: Path) -> dict:
    return json.loads((d / "meta.json").read_text())


# ----------------------------------------------------------------------------------------- workers
def _w_ort_forward(d, x, cls, a):
    import onnxruntime as ort

    path = _onnx_path(d, a.size)

    def make():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
        so.log_severity_level = 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    s = _memo(("ort", str(path)), make)
    return lambda: s.run(None, {"input": x})[0], None


def _w_torch_forward(d, x, cls, a):
    import torch

    m = _torch_model(d, a.threads, "forward")
    xt = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return m(xt).numpy()

    return run, None


#: refcam's gradient CAM methods and the same method in pytorch-grad-cam / torchcam (None: absent)
GRADIENT_CAMS = [
    ("gradcam", "Grad-CAM", "GradCAM", "GradCAM"),
    ("gradcampp", "Grad-CAM++", "GradCAMPlusPlus", "GradCAMpp"),
    ("xgradcam", "XGrad-CAM", "XGradCAM", "XGradCAM"),
    ("layercam", "LayerCAM", "LayerCAM", "LayerCAM"),
    ("hirescam", "HiResCAM", "HiResCAM", None),
    ("gradcam_elementwise", "element-wise Grad-CAM", "GradCAMElementWise", None),
]


def _refcam_method(method: str, layered: bool = True):
    """``refcam.explain(model, x, method, ...).maps`` on the ResNet-50 (layer4 for CAM methods)."""

    def worker(d, x, cls, a):
        import refcam

        m = _refcam_model(d, a.threads, size=a.size)
        kw = {"layer": _meta(d)["layer"]} if layered else {}
        tg = [int(c) for c in cls]
        return lambda: refcam.explain(m, x, method, target=tg, progress=False, **kw).maps, None

    return worker


def _pgc_method(cls_name: str):
    """pytorch-grad-cam's ``cls_name`` on ``model.layer4[-1]`` (one hooked model per method)."""

    def worker(d, x, cls, a):
        import pytorch_grad_cam
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def make():
            m = _torch_model(d, a.threads)
            return getattr(pytorch_grad_cam, cls_name)(model=m, target_layers=[m.layer4[-1]])

        cam = _memo(("pgc", cls_name), make)
        xt = torch.from_numpy(x)
        tg = [ClassifierOutputTarget(int(c)) for c in cls]

        def run():
            mp = cam(input_tensor=xt, targets=tg)
            # BaseCAM keeps its outputs, whose graph backward(retain_graph=True) kept alive: free it
            # now (a fresh process per call would free it at exit, a loop at the next call)
            cam.outputs = None
            return mp

        return run, None

    return worker


def _tc_method(cls_name: str):
    """torchcam's ``cls_name`` on ``layer4`` (forward, then the extractor; one hooked model each)."""

    def worker(d, x, cls, a):
        import torch
        import torchcam.methods as tcm

        def make():
            m = _torch_model(d, a.threads)
            return m, getattr(tcm, cls_name)(m, LAYER_MODULE)

        m, ext = _memo(("tc", cls_name), make)
        xt = torch.from_numpy(x)
        ci = [int(c) for c in cls]

        def run():
            out = m(xt)
            mp = ext(class_idx=ci, scores=out)[0].detach().numpy()
            # the hooked activations keep the forward graph below the layer alive (its backward
            # stops at the layer): free it now, as the next forward would
            ext.hook_a = [None] * len(ext.hook_a)
            ext.hook_g = [None] * len(ext.hook_g)
            return mp

        return run, None

    return worker


def _w_refcam_vjp(d, x, cls, a):
    """The raw VJP session run (forward + backward to layer4 in one onnxruntime run)."""
    from refcam.autodiff import gradients

    m = _refcam_model(d, a.threads, size=a.size)
    layer = _meta(d)["layer"]
    return lambda: gradients(m, x, wrt=layer, target=[int(c) for c in cls]).gradients[layer][:, 0], None


def _w_refcam_fd(d, x, cls, a):
    """FD Grad-CAM weights: channel-directional central differences through the head (2K copies)."""
    import onnx

    import onnxruntime as ort

    import refcam.autodiff.fd as fdm
    from refcam.autodiff.fd import FiniteDifferences

    def pinned(model, backend="onnxruntime"):  # fd._session uses onnxruntime's default thread count
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
        so.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    fdm._session = pinned  # benchmark-local: same thread pinning as every other measurement
    proto = onnx.load(str(d / "resnet50.onnx"))
    fd = FiniteDifferences(proto, _meta(d)["layer"])
    seed = np.zeros((x.shape[0], 1000), np.float32)
    seed[np.arange(x.shape[0]), cls] = 1

    def run():
        act, r = fd({"input": x}, seed, mode="channel", step=None, richardson=False)  # library default step
        return r.value / np.prod(act.shape[2:])  # alpha_k = (1/Z) sum_ij dy/dA

    return run, None


def _w_captum_saliency(d, x, cls, a):
    import torch
    from captum.attr import Saliency

    s = _memo("captum_saliency", lambda: Saliency(_torch_model(d, a.threads)))
    xt = torch.from_numpy(x)
    t = torch.from_numpy(cls)
    return lambda: s.attribute(xt, target=t, abs=True).detach().numpy(), None


def _fold_bn(m):
    """The same torch model with every BatchNorm folded into its convolution (as the ONNX export does):
    a float32-rounding twin, to measure the noise floor of torch-vs-torch input gradients."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m.conv1, m.bn1 = fuse_conv_bn_eval(m.conv1, m.bn1), torch.nn.Identity()
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        for blk in layer:
            for i in (1, 2, 3):
                setattr(blk, f"conv{i}", fuse_conv_bn_eval(getattr(blk, f"conv{i}"), getattr(blk, f"bn{i}")))
                setattr(blk, f"bn{i}", torch.nn.Identity())
            if blk.downsample is not None:
                blk.downsample = torch.nn.Sequential(fuse_conv_bn_eval(blk.downsample[0], blk.downsample[1]))
    return m


def _w_captum_saliency_folded(d, x, cls, a):
    import torch
    from captum.attr import Saliency

    s = _memo("captum_folded", lambda: Saliency(_fold_bn(_torch_model(d, a.threads))))
    xt = torch.from_numpy(x)
    t = torch.from_numpy(cls)
    return lambda: s.attribute(xt, target=t, abs=True).detach().numpy(), None


def _w_captum_gbp(d, x, cls, a):
    import torch
    from captum.attr import GuidedBackprop

    def make():
        m = _torch_model(d, a.threads)
        for mod in m.modules():  # captum's module hooks cannot wrap in-place ReLUs
            if isinstance(mod, torch.nn.ReLU):
                mod.inplace = False
        return GuidedBackprop(m)

    s = _memo("captum_gbp", make)
    xt = torch.from_numpy(x)
    t = torch.from_numpy(cls)
    return lambda: s.attribute(xt, target=t).detach().numpy(), None


PGC_SCORE = dict(upsample_mode="linear-align-corners", mask_order="upsample-then-normalize", mask_eps=1e-8,
                 score="logit", softmax=True, baseline=None)


def _w_refcam_scorecam(d, x, cls, a):
    """refcam.explain Score-CAM on layer4, all 2048 masks, pytorch-grad-cam's mask/score convention."""
    import refcam

    m = _refcam_model(d, a.threads, a.budget_mib)
    m.run(x, checked=True)  # session creation outside the timing
    layer = _meta(d)["layer"]

    def run():
        e = refcam.explain(m, x, "scorecam", layer=layer, target=[int(c) for c in cls], progress=False,
                           **PGC_SCORE)
        return {"map": e.maps, "masked_scores": e.arrays["masked_scores"], "activations": e.arrays["activations"]}

    return run, None


def _w_forwards(d, x, cls, a):
    """2048 plain forwards of the model, batched in the chunk Score-CAM uses."""
    m = _refcam_model(d, a.threads, a.budget_mib)
    chunk = int(min(K, max(1, m.memory_budget // (4 * x[0].nbytes))))
    xb = np.random.default_rng(1).standard_normal((chunk,) + x.shape[1:]).astype(np.float32)
    m.run(xb, batch_size=chunk)

    def run():
        done = 0
        while done < K * x.shape[0]:
            c = min(chunk, K * x.shape[0] - done)
            m.run(xb[:c], batch_size=c, checked=True)
            done += c
        return {"chunk": chunk}

    return run, None


def _w_pgc_scorecam(d, x, cls, a):
    import torch
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    mk = a.peer_masks
    saved = {}

    class FirstMasks(ScoreCAM):
        """pytorch-grad-cam's ScoreCAM on the first ``mk`` channels (zero weight elsewhere)."""

        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            w = super().get_cam_weights(input_tensor, target_layer, targets, activations[:, :mk], grads)
            saved["w"] = w
            full = np.zeros(activations.shape[:2], w.dtype)
            full[:, :mk] = w
            return full

    m = _torch_model(d, a.threads)
    cam = FirstMasks(model=m, target_layers=[m.layer4[-1]])
    xt = torch.from_numpy(x)
    tg = [ClassifierOutputTarget(int(c)) for c in cls]

    def run():
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
            mp = cam(input_tensor=xt, targets=tg)
        return {"map": mp, "weights": saved["w"]}

    return run, None


def _w_tc_scorecam(d, x, cls, a):
    import torch
    from torchcam.methods import ScoreCAM

    mk = a.peer_masks

    class FirstMasks(ScoreCAM):
        """torchcam's ScoreCAM on the first ``mk`` channels (zero weight elsewhere)."""

        def _get_weights(self, class_idx, *args, **kw):
            full_a = self.hook_a
            self.hook_a = [h[:, :mk] for h in full_a]
            try:
                ws = super()._get_weights(class_idx, *args, **kw)
            finally:
                self.hook_a = full_a
            self.saved = [w.detach().clone() for w in ws]
            out = []
            for w, h in zip(ws, full_a):
                f = w.new_zeros(h.shape[:2] + w.shape[2:])
                f[:, :mk] = w
                out.append(f)
            return out

    m = _torch_model(d, a.threads)
    ext = FirstMasks(m, LAYER_MODULE)
    xt = torch.from_numpy(x)
    ci = [int(c) for c in cls]

    def run():
        with torch.inference_mode():
            out = m(xt)
        mp = ext(class_idx=ci, scores=out)[0].detach().numpy()
        return {"map": mp, "weights": ext.saved[0].numpy().reshape(x.shape[0], -1)}

    return run, None


def _w_refcam_scorecam_tc(d, x, cls, a):
    """torchcam's mask convention with refcam's pieces on the first ``peer_masks`` channels (check only)."""
    import refcam.math as M

    m = _refcam_model(d, a.threads, a.budget_mib)
    layer = _meta(d)["layer"]
    mk = a.peer_masks

    def run():
        acts = m.forward(x, [layer], checked=True).activations[layer][:, :mk]
        h = M.scorecam_masks(acts, x.shape[2:], upsample_mode="linear", mask_order="normalize-then-upsample",
                             mask_eps=1e-8)  # (N, mk, H, W)
        scores = np.stack([m.run(x[i][None] * h[i][:, None], checked=True)[m.output_name][:, cls[i]]
                           for i in range(x.shape[0])])
        return {"scores": scores}

    return run, None


def _w_export(d, x, cls, a):
    return (lambda: None), None


WORKERS = {k[3:]: v for k, v in dict(globals()).items() if k.startswith("_w_")}
WORKERS["forwards_after"] = _w_forwards  # the 2048 forwards again after Score-CAM (load drift check)
for _name, _lab, _pgc, _tc in GRADIENT_CAMS:
    WORKERS[f"refcam_{_name}"] = _refcam_method(_name)
    WORKERS[f"pgc_{_name}"] = _pgc_method(_pgc)
    if _tc is not None:
        WORKERS[f"tc_{_name}"] = _tc_method(_tc)
WORKERS["refcam_saliency"] = _refcam_method("saliency", layered=False)
WORKERS["refcam_gbp"] = _refcam_method("guided_backprop", layered=False)


def _save(d: Path, key: str, out) -> dict:
    """Store a measurement's arrays (for the agreement checks); return its scalar extras."""
    arrays = out if isinstance(out, dict) else {"map": out}
    arrays = {k: np.asarray(v) for k, v in arrays.items() if not np.isscalar(v)}
    np.savez(d / f"{key}.npz", **arrays)
    return {k: v for k, v in (out.items() if isinstance(out, dict) else []) if np.isscalar(v)}


def run_worker(a) -> None:
    """One measurement alone in this process (``--worker``): timing plus its peak memory."""
    d = Path(a.dir)
    if a.worker == "export":
        export(d, sizes=[int(v) for v in a.sizes.split(",") if v])
        return
    x, cls = _inputs(d, a.batch, a.size)
    t_setup = time.perf_counter()
    fn, _ = WORKERS[a.worker](d, x, cls, a)
    base = _rss_mib()
    t_setup = time.perf_counter() - t_setup
    wall, cpu, out, walls = timed(fn, a.repeats, a.warmup)
    res = {"worker": a.worker, "batch": a.batch, "wall": wall, "cpu": cpu, "walls": walls,
           "rss_base_mib": base, "rss_peak_mib": _rss_mib(), "setup_s": t_setup, "load": os.getloadavg()[0]}
    res.update(_save(d, f"mem_{a.worker}_{a.batch}", out))
    print("RESULT " + json.dumps(res))


def serve(a) -> None:
    """A timing server (``--serve``): reads one JSON command per line on stdin, answers one JSON
    line per command.  ``setup`` builds a measurement (worker, batch, size) and runs its warm-up
    calls; ``run`` times one call (wall: ``perf_counter``, CPU: ``process_time``); ``quit``.
    Every measurement of one side (refcam/onnxruntime, or torch and its peers) lives in one
    server, so the driver can interleave the repeats of all of them."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the libraries print goes to stderr, not into the protocol
    d = Path(a.dir)
    fns: dict = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        key = (cmd["worker"], cmd["batch"], cmd.get("size", 224))
        try:
            if cmd["op"] == "setup":
                a.size = key[2]
                x, cls = _inputs(d, key[1], key[2])
                t0 = time.perf_counter()
                fn, _ = WORKERS[key[0]](d, x, cls, a)
                for _ in range(cmd.get("warmup", 1)):
                    fn()
                fns[key] = fn
                res = {"setup_s": time.perf_counter() - t0}
            else:
                t0, c0 = time.perf_counter(), time.process_time()
                out = fns[key]()
                res = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                       "load": os.getloadavg()[0]}
                if cmd.get("save"):
                    res.update(_save(d, f"{key[0]}_{key[1]}" + ("" if key[2] == 224 else f"_{key[2]}"), out))
        except Exception as e:  # noqa: BLE001  (reported to the driver, which prints it)
            import traceback

            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {e}"}
        proto.write(json.dumps(res, default=float) + "\n")


TORCH_SIDE = ("torch_", "pgc_", "tc_", "captum_")


class Server:
    """The driver's handle on one timing server process (see :func:`serve`)."""

    def __init__(self, side: str, d: Path, a) -> None:
        env = dict(os.environ)
        for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[v] = str(a.threads)
        self.log = open(d / f"server_{side}.log", "w")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", side, "--dir", str(d),
               "--threads", str(a.threads), "--peer-masks", str(a.peer_masks), "--budget-mib", str(a.budget_mib)]
        self.p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.log, text=True, bufsize=1)
        self.side = side

    def call(self, **cmd) -> dict:
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            self.log.flush()
            tail = Path(self.log.name).read_text()[-3000:]
            raise RuntimeError(f"timing server {self.side} died:\n{tail}")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.p.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.p.stdin.flush()
            self.p.wait(timeout=60)
        except Exception:  # noqa: BLE001
            self.p.kill()
        self.log.close()


def interleaved(d: Path, a, plan: list, repeats: int, servers: dict, label: str = "",
                save: bool = True, warmup: int = 1) -> list[dict]:
    """Median wall / CPU time of every ``(worker, batch, size)`` in ``plan``: each is set up (and
    warmed up once) in its side's server, then the repeats run round-robin -- repeat ``r`` runs
    every measurement once, in plan order on even ``r`` and reversed on odd ``r`` -- so load
    changes hit all measurements alike.  One thread on both sides; the 1-min load average is
    sampled at every call."""
    res = {}
    for w, b, size in plan:
        side = "torch" if w.startswith(TORCH_SIDE) else "refcam"
        if side in servers and servers[side].p.poll() is not None:
            del servers[side]
        if side not in servers:
            servers[side] = Server(side, d, a)
        r = servers[side].call(op="setup", worker=w, batch=b, size=size, warmup=warmup)
        res[(w, b, size)] = {"worker": w, "batch": b, "size": size, "walls": [], "cpus": [], "loads": [],
                             "server": side, **r}
        if "error" in r:
            print(f"  {w} b={b} size={size} FAILED: {r['error']}", flush=True)
    live = [k for k in plan if "error" not in res[k]]
    for rep in range(repeats):
        for k in (live if rep % 2 == 0 else live[::-1]):
            if "dead" in res[k]:
                continue
            try:
                r = servers[res[k]["server"]].call(op="run", worker=k[0], batch=k[1], size=k[2],
                                                   save=save and rep == 0)
            except RuntimeError as e:  # the server died (e.g. out of memory): its measurements stop
                print(f"  {k[0]} b={k[1]}: {e}", flush=True)
                for k2 in live:
                    if res[k2]["server"] == res[k]["server"]:
                        res[k2]["dead"] = res[k2]["error"] = f"{res[k]['server']} server died at {k[0]} b={k[1]}"
                continue
            if "error" in r:
                res[k]["error"] = r["error"]
                continue
            res[k]["walls"].append(r.pop("wall"))
            res[k]["cpus"].append(r.pop("cpu"))
            res[k]["loads"].append(r.pop("load"))
            res[k].update(r)
        print(f"  {label}repeat {rep + 1}/{repeats} done, load {os.getloadavg()[0]:.1f}", flush=True)
    out = []
    for k in plan:
        r = res[k]
        if r["walls"]:
            r["wall"], r["cpu"] = float(np.median(r["walls"])), float(np.median(r["cpus"]))
            r["load"] = float(np.mean(r["loads"]))
            print(f"  {k[0]:28s} b={k[1]:<2d} {'' if k[2] == 224 else f'{k[2]}px '}{r['wall'] * 1e3:10.1f} ms wall, "
                  f"{r['cpu'] * 1e3:10.1f} ms cpu, load {r['load']:.1f}", flush=True)
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------- setup
def export(d: Path, seed: int = 0, sizes=()) -> None:
    """The seeded ResNet-50 (weights for torch, static-shape ONNX exports with a dynamic batch
    axis for 224×224 and every extra input size), 32 seeded inputs per size and their classes."""
    import onnx
    import torch
    import torchvision

    torch.manual_seed(seed)
    m = torchvision.models.resnet50(weights=None).eval()
    torch.save(m.state_dict(), d / "weights.pt")
    for size in [224] + [s_ for s_ in sizes if s_ != 224]:
        x = np.random.default_rng(seed).standard_normal((32 if size == 224 else 1, 3, size, size)).astype(np.float32)
        torch.onnx.export(m, torch.from_numpy(x[:1]), str(_onnx_path(d, size)), dynamo=False, opset_version=17,
                          do_constant_folding=True, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        with torch.no_grad():
            logits = m(torch.from_numpy(x)).numpy()
        classes = np.argsort(logits, axis=1)[:, -2].astype(np.int64)  # 2nd-ranked class: not the argmax shortcut
        sfx = "" if size == 224 else f"_{size}"
        np.save(d / f"x{sfx}.npy", x)
        np.save(d / f"classes{sfx}.npy", classes)
    g = onnx.load(str(d / "resnet50.onnx"), load_external_data=False).graph
    # the output of the last bottleneck of layer4 (its final ReLU), pytorch-grad-cam's model.layer4[-1]
    layer = [n.output[0] for n in g.node if n.name.startswith("/layer4/layer4.2/") and n.op_type == "Relu"][-1]
    (d / "meta.json").write_text(json.dumps({"layer": layer}))


def spawn(d: Path, worker: str, batch: int, a, repeats: int, warmup: int = 1) -> dict:
    env = dict(os.environ)
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[v] = str(a.threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--dir", str(d), "--batch",
           str(batch), "--threads", str(a.threads), "--repeats", str(repeats), "--warmup", str(warmup),
           "--size", "224",
           "--peer-masks", str(a.peer_masks), "--budget-mib", str(a.budget_mib)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not line:
        print(f"  {worker} b={batch} FAILED:\n{p.stderr[-3000:]}", flush=True)
        return {"worker": worker, "batch": batch, "error": p.stderr.strip().splitlines()[-1:] or ["?"]}
    r = json.loads(line[0][7:])
    r["total_s"] = time.perf_counter() - t0
    print(f"  {worker:22s} b={batch}: {r['wall'] * 1e3:10.1f} ms wall, {r['cpu'] * 1e3:10.1f} ms cpu, "
          f"peak RSS {r['rss_peak_mib']:.0f} MiB (+{r['rss_peak_mib'] - r['rss_base_mib']:.0f}), "
          f"load {r['load']:.1f}", flush=True)
    return r


def load(d: Path, worker: str, batch: int) -> dict:
    return dict(np.load(d / f"{worker}_{batch}.npz"))


# ----------------------------------------------------------------------------------------- checks
def _pgc_post(M, maps, size):
    """pytorch-grad-cam's post-processing of a raw map: ReLU, min-max (+1e-7), bilinear half-pixel to
    ``size``, min-max (+1e-7) again (the presets' ``renormalize_eps``)."""
    return M.normalize(M.upsample(M.normalize(M.relu(maps), eps=1e-7), size, mode="linear"), eps=1e-7)


def checks(d: Path, batches, mk: int, have: set) -> dict:
    """Max abs differences between refcam and the peers after each side's normalisation."""
    import refcam.math as M

    out = {}
    for b in batches:
        if {("refcam_gradcam", b), ("pgc_gradcam", b)} <= have:
            r = load(d, "refcam_gradcam", b)["map"]
            p = load(d, "pgc_gradcam", b)["map"]
            # pytorch-grad-cam: ReLU, (x - min)/(max + 1e-7), cv2 INTER_LINEAR (half-pixel) to 224, then
            # (layer mean and) min-max + 1e-7 again at 224x224 (base_cam.py aggregate_multi_layers)
            ref = _pgc_post(M, r, p.shape[1:])
            out[f"Grad-CAM vs pytorch-grad-cam (b={b}, 224×224, min-max)"] = float(np.abs(ref - p).max())
            try:  # how much of that is cv2's resize itself (same 7x7 map through both resizers)
                import cv2

                n7 = M.normalize(M.relu(r), eps=1e-7).astype(np.float32)
                cv = np.stack([cv2.resize(m_, p.shape[1:][::-1], interpolation=cv2.INTER_LINEAR) for m_ in n7])
                out[f"  of which cv2.resize vs refcam.math.upsample on the same 7×7 maps (b={b})"] = float(
                    np.abs(cv - M.upsample(n7, p.shape[1:], mode="linear")).max())
            except ImportError:
                pass
        if {("refcam_gradcam", b), ("tc_gradcam", b)} <= have:
            r = load(d, "refcam_gradcam", b)["map"]
            t = load(d, "tc_gradcam", b)["map"]
            out[f"Grad-CAM vs torchcam (b={b}, 7×7, min-max)"] = float(np.abs(M.normalize(M.relu(r), eps=1e-8) - t).max())
        if {("refcam_saliency", b), ("captum_saliency", b)} <= have:
            r = load(d, "refcam_saliency", b)["map"]
            c = load(d, "captum_saliency", b)["map"].max(axis=1)  # |grad| max over colour channels
            dd = np.abs(M.normalize(r, "max") - M.normalize(c, "max"))
            out[f"saliency vs captum Saliency (b={b}, /max)"] = float(dd.max())
            out[f"  saliency: 99.9th percentile of the pixel differences (b={b})"] = float(np.quantile(dd, 0.999))
            if ("captum_saliency_folded", b) in have:  # torch vs torch with BatchNorm folded: float32 floor
                f = load(d, "captum_saliency_folded", b)["map"].max(axis=1)
                dd = np.abs(M.normalize(f, "max") - M.normalize(c, "max"))
                out[f"  noise floor: captum Saliency, torch model vs its BN-folded twin (b={b}): max, p99.9"] = (
                    float(dd.max()), float(np.quantile(dd, 0.999)))
        if {("refcam_gbp", b), ("captum_gbp", b)} <= have:
            r = load(d, "refcam_gbp", b)["map"]
            c = load(d, "captum_gbp", b)["map"]
            dd = np.abs(M.normalize(r, "max") - M.normalize(c, "max"))
            out[f"guided backprop vs captum GuidedBackprop (b={b}, /max|.|)"] = float(dd.max())
            out[f"  guided backprop: 99.9th percentile (b={b})"] = float(np.quantile(dd, 0.999))
        if {("refcam_fd", b), ("refcam_vjp", b)} <= have:
            af = load(d, "refcam_fd", b)["map"]
            g = load(d, "refcam_vjp", b)["map"].astype(np.float64)
            av = g.mean(axis=(2, 3))
            out[f"FD α vs VJP α (b={b}, max|Δα|/max|α|)"] = float(np.abs(af - av).max() / np.abs(av).max())
    if {("refcam_scorecam", 1), ("pgc_scorecam", 1)} <= have:
        r = load(d, "refcam_scorecam", 1)
        p = load(d, "pgc_scorecam", 1)
        s = r["masked_scores"][:, 0, :mk].astype(np.float64)
        w = np.exp(s - s.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        out[f"Score-CAM weights vs pytorch-grad-cam (first {mk} masks, softmax)"] = float(np.abs(w - p["weights"]).max())
        mp = M.relu(M.weighted_sum(r["activations"][:, :mk].astype(np.float64), w))
        ref = _pgc_post(M, mp, (224, 224))
        out[f"Score-CAM map vs pytorch-grad-cam (first {mk} masks, 224×224, min-max)"] = float(np.abs(ref - p["map"]).max())
    if {("refcam_scorecam_tc", 1), ("tc_scorecam", 1), ("refcam_scorecam", 1)} <= have:
        s = load(d, "refcam_scorecam_tc", 1)["scores"].astype(np.float64)
        t = load(d, "tc_scorecam", 1)
        w = np.exp(s - s.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        out[f"Score-CAM weights vs torchcam (first {mk} masks, softmax)"] = float(np.abs(w - t["weights"]).max())
        a = load(d, "refcam_scorecam", 1)["activations"][:, :mk].astype(np.float64)
        out[f"Score-CAM map vs torchcam (first {mk} masks, 7×7, min-max)"] = float(
            np.abs(M.normalize(M.relu(M.weighted_sum(a, w)), eps=1e-8) - t["map"]).max())
    return out


# ----------------------------------------------------------------------------------------- scaling
def kernel_scaling(quick: bool, threads: int) -> dict:
    """Combine kernels (refcam.math) and Score-CAM (toy resnet50_sized head) versus K, map size,
    batch size and input size.  Times: median of repeats, milliseconds."""
    import refcam.math as M

    rng = np.random.default_rng(0)
    rep = 3 if quick else 7

    def t(fn):
        return timed(fn, rep)[0] * 1e3

    res: dict = {"kernels": [], "scorecam": [], "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                 "load": os.getloadavg()[0]}
    Ks = [64, 256, 1024, 2048]
    for k in Ks:  # channels, 7x7, N=1
        a = rng.random((1, k, 7, 7), dtype=np.float32)
        g = rng.standard_normal((1, k, 7, 7)).astype(np.float32)
        w = rng.random((1, k), dtype=np.float32)
        res["kernels"].append(("K", k, t(lambda: M.weighted_sum(a, w)), t(lambda: M.gradcam(a, g)), None))
    for s in [7, 14, 28, 56]:  # map size, K=512, N=1, upsample to 224
        a = rng.random((1, 512, s, s), dtype=np.float32)
        g = rng.standard_normal((1, 512, s, s)).astype(np.float32)
        w = rng.random((1, 512), dtype=np.float32)
        mp = rng.random((1, s, s), dtype=np.float32)
        res["kernels"].append(("map size", s, t(lambda: M.weighted_sum(a, w)), t(lambda: M.gradcam(a, g)),
                               t(lambda: M.upsample(mp, (224, 224)))))
    for n in [1, 8, 32]:  # batch, K=2048 at 7x7
        a = rng.random((n, 2048, 7, 7), dtype=np.float32)
        g = rng.standard_normal((n, 2048, 7, 7)).astype(np.float32)
        w = rng.random((n, 2048), dtype=np.float32)
        mp = rng.random((n, 7, 7), dtype=np.float32)
        res["kernels"].append(("batch", n, t(lambda: M.weighted_sum(a, w)), t(lambda: M.gradcam(a, g)),
                               t(lambda: M.upsample(mp, (224, 224)))))
    for size in [112, 224, 448]:  # input size: upsampling a 7x7 map
        mp = rng.random((1, 7, 7), dtype=np.float32)
        res["kernels"].append(("input size", size, None, None, t(lambda: M.upsample(mp, (size, size)))))

    import refcam
    from refcam.onnx import Model
    from refcam.onnx import toy_models

    if not hasattr(refcam, "explain") or not hasattr(toy_models, "resnet50_sized"):
        print("scaling: refcam.explain / toy_models.resnet50_sized absent: Score-CAM scaling skipped", file=sys.stderr)
        return res
    resnet50_sized = toy_models.resnet50_sized

    def sc(k, size, n):
        m = Model(resnet50_sized(channels=k, size=size), intra_op_num_threads=threads, inter_op_num_threads=1)
        x = rng.random((n, 3, size, size), dtype=np.float32)
        return timed(lambda: refcam.explain(m, x, "scorecam", progress=False), 1 if not quick else 1)[0] * 1e3

    for k in ([64, 128, 256] if not quick else [32, 64]):
        res["scorecam"].append(("K", k, sc(k, 112, 1)))
    for size in ([64, 112, 224] if not quick else [64, 112]):
        res["scorecam"].append(("input size", size, sc(64, size, 1)))
    for n in ([1, 2, 4] if not quick else [1, 2]):
        res["scorecam"].append(("batch", n, sc(64, 112, n)))
    return res


def plot_kernels(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    for ax, axis in zip(axes[0], ["K", "map size", "batch", "input size"]):
        rows = [r for r in res["kernels"] if r[0] == axis]
        xs = [r[1] for r in rows]
        for i, lab in ((2, "weighted_sum"), (3, "gradcam"), (4, "upsample → 224×224" if axis != "input size"
                                                              else "upsample 7×7 → size²")):
            ys = [r[i] for r in rows]
            if all(y is not None for y in ys):
                ax.plot(xs, ys, "o-", label=lab)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel("ms (median)")
        ax.set_title(f"refcam.math kernels vs {axis}")
        ax.legend(fontsize=8)
    for ax, axis in zip(axes[1], ["K", "input size", "batch"]):
        rows = [r for r in res["scorecam"] if r[0] == axis]
        if not rows:
            continue
        ax.plot([r[1] for r in rows], [r[2] for r in rows], "o-", color="C3")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel("ms")
        ax.set_title(f"Score-CAM (toy resnet50_sized) vs {axis}")
    axes[1, 3].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


#: the end-to-end scaling measurements (ResNet-50, batch axis at 224×224, input-size axis at batch 1)
SCALE_WORKERS = [("ort_forward", "onnxruntime forward"), ("refcam_gradcam", "refcam Grad-CAM"),
                 ("tc_gradcam", "torchcam GradCAM"), ("pgc_gradcam", "pytorch-grad-cam GradCAM"),
                 ("refcam_saliency", "refcam saliency"), ("captum_saliency", "captum Saliency")]
#: the measurements whose peak memory ``--memory`` records (one fresh process each)
MEMORY_WORKERS = ["ort_forward", "refcam_gradcam", "tc_gradcam", "pgc_gradcam", "refcam_saliency",
                  "captum_saliency", "refcam_gbp", "captum_gbp"]


def _xaxis(ax, axis: str, xs: list) -> None:
    """Batch sizes on a log2 axis, input sizes on a linear one; ticks at the measured values."""
    if axis == "batch":
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(v) for v in xs])
    ax.minorticks_off()


def plot_scaling(rows: list, path: Path) -> None:
    """CPU ms per image and the refcam/peer CPU-time ratios versus batch size (224×224) and input
    size (batch 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    R = {(r["worker"], r["batch"], r["size"]): r["cpu"] for r in rows if "cpu" in r}
    batches = sorted({b for (_, b, s_) in R if s_ == 224})
    sizes = sorted({s_ for (_, b, s_) in R if b == 1})
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    for col, (axis, pts) in enumerate((("batch", [(b, 224) for b in batches]), ("input size", [(1, s_) for s_ in sizes]))):
        xs = [b if axis == "batch" else s_ for b, s_ in pts]
        ax = axes[0, col]
        for w, lab in SCALE_WORKERS:
            ys = [R.get((w, b, s_)) for b, s_ in pts]
            if all(y is not None for y in ys):
                ax.plot(xs, [y * 1e3 / b for y, (b, s_) in zip(ys, pts)], "o-", label=lab)
        _xaxis(ax, axis, xs)
        ax.set_yscale("log")
        ax.set_xlabel(axis + (" (224×224)" if axis == "batch" else " (pixels per side, batch 1)"))
        ax.set_ylabel("CPU ms per image (median, 1 thread)")
        ax.legend(fontsize=8, loc="best")
        ax.set_title(f"ResNet-50 vs {axis}")
        ax = axes[1, col]
        for (num, den), lab in (((("refcam_gradcam", "ort_forward")), "Grad-CAM / ORT forward (≤ 1.2)"),
                                ((("refcam_gradcam", "tc_gradcam")), "Grad-CAM / torchcam (≤ 0.55)"),
                                ((("refcam_gradcam", "pgc_gradcam")), "Grad-CAM / pytorch-grad-cam (≤ 0.2)"),
                                ((("refcam_saliency", "captum_saliency")), "saliency / captum (≤ 0.7)")):
            ys = [(R.get((num, b, s_)), R.get((den, b, s_))) for b, s_ in pts]
            if all(u is not None and v is not None for u, v in ys):
                ax.plot(xs, [u / v for u, v in ys], "o-", label=lab)
        _xaxis(ax, axis, xs)
        ax.set_xlabel(axis)
        ax.set_ylabel("ratio of CPU times (same run)")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


# ----------------------------------------------------------------------------------------- report
def machine() -> list[str]:
    cpu = "?"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vers = []
    for mod in ("numpy", "onnx", "onnxruntime", "torch", "torchvision", "pytorch_grad_cam", "torchcam", "captum"):
        try:
            v = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            try:
                from importlib.metadata import version

                v = version({"pytorch_grad_cam": "grad-cam"}.get(mod, mod))
            except Exception:  # noqa: BLE001
                v = "absent"
        vers.append(f"{mod} {v}")
    return [f"CPU: {cpu}, nproc {os.cpu_count()}", f"Python {platform.python_version()}, " + ", ".join(vers)]


def _fmt(v):
    return ", ".join(f"{z:.2e}" for z in v) if isinstance(v, (tuple, list)) else f"{v:.2e}"


def fmt_ms(s):
    return "—" if s is None else (f"{s * 1e3:,.0f}" if s >= 1 else f"{s * 1e3:.1f}")


def _ratio(R, num, den, fnum=1.0, fden=1.0):
    """(wall ratio, CPU ratio) of two measurements of the same run, or (None, None)."""
    if num not in R or den not in R:
        return None, None
    return R[num]["wall"] * fnum / (R[den]["wall"] * fden), R[num]["cpu"] * fnum / (R[den]["cpu"] * fden)


def _cell(R, key, den=None, goal=None):
    """``ms (ratio×)`` with a ✓/✗ against ``goal`` (wall time; the ratio is to ``den``)."""
    if key not in R:
        return "—"
    txt = f"{fmt_ms(R[key]['wall'])} ms"
    if den is not None:
        w, c = _ratio(R, key, den)
        if w is not None:
            txt += f" ({w:.2f}×" + ("" if goal is None else (" ✓" if w <= goal else " ✗")) + ")"
    return txt


def memory_section(mem: list) -> list[str]:
    """Peak-memory table of the ``--memory`` runs (one fresh process per measurement).  Hook for the
    memory work of issue 13 (perf-session): extend here, the driver calls it with its results."""
    if not mem:
        return []
    M = {(r["worker"], r["batch"]): r for r in mem if "rss_peak_mib" in r}
    L = ["\n## Peak memory (one fresh process per measurement)\n",
         "Peak RSS (`VmHWM`) and its growth over the RSS after imports and model/session loading (`+Δ`); "
         "one warm-up and one timed call.\n",
         "| measurement | b=1 MiB (+Δ) | b=8 MiB (+Δ) |", "|---|---|---|"]
    for w in MEMORY_WORKERS:
        cells = []
        for b in (1, 8):
            r = M.get((w, b))
            cells.append("—" if r is None else f"{r['rss_peak_mib']:.0f} (+{r['rss_peak_mib'] - r['rss_base_mib']:.0f})")
        L.append(f"| {w} | " + " | ".join(cells) + " |")
    return L


def kept_sections(path: Path) -> list[str]:
    """The marked sections other benchmarks write into the same report (``<!-- name:begin -->`` …
    ``<!-- name:end -->``, e.g. ``benchmarks/cold_start.py``): kept verbatim when this report is
    rewritten."""
    import re

    if not path.exists():
        return []
    found = re.findall(r"<!-- ([\w.-]+):begin -->.*?<!-- \1:end -->", path.read_text(), flags=re.S)
    text = path.read_text()
    return ["\n" + text[text.index(f"<!-- {n}:begin -->"):text.index(f"<!-- {n}:end -->") + len(f"<!-- {n}:end -->")]
            for n in found]


LABELS = {"ort_forward": "onnxruntime forward", "torch_forward": "torch forward (inference_mode)",
          "refcam_vjp": "refcam gradients to layer4 (VJP graph)", "refcam_fd": "refcam FD Grad-CAM weights (2K directions)",
          "refcam_saliency": "refcam saliency", "captum_saliency": "captum Saliency",
          "captum_saliency_folded": "captum Saliency, BN-folded torch twin (check only)",
          "refcam_gbp": "refcam guided backprop", "captum_gbp": "captum GuidedBackprop"}
for _name, _lab, _pgc, _tc in GRADIENT_CAMS:
    LABELS[f"refcam_{_name}"] = f"refcam {_lab}"
    LABELS[f"pgc_{_name}"] = f"pytorch-grad-cam {_pgc}"
    if _tc:
        LABELS[f"tc_{_name}"] = f"torchcam {_tc}"


def report(a, res: list, chk: dict, sc_rows: list, kern: dict | None, mem: list, started: str,
           minutes: float, d: Path) -> str:
    R = {(r["worker"], r["batch"]): r for r in res if "wall" in r and r.get("size", 224) == 224}
    fb, fa = R.get(("forwards", 1)), R.get(("forwards_after", 1))
    if fb and fa:  # Score-CAM is bracketed by two runs of the 2048 forwards: compare with their mean
        R[("forwards", 1)] = dict(fb, wall=(fb["wall"] + fa["wall"]) / 2, cpu=(fb["cpu"] + fa["cpu"]) / 2,
                                  note=f"mean of the runs before ({fb['wall']:.0f} s) and after "
                                       f"({fa['wall']:.0f} s) Score-CAM")
    loads = [v for r in list(res) + list(sc_rows) for v in r.get("loads", [])]
    L = ["# Benchmarks: refcam versus pytorch-grad-cam, torchcam and captum\n"]
    cmd = getattr(a, "command", None) or "python benchmarks/peers_bench.py --out docs/benchmarks.md"
    L.append(f"Command: `{cmd}` (run started {started} UTC, "
             f"{minutes:.0f} min in all; {a.repeats} interleaved repeats after one warm-up, medians of wall and "
             "CPU time; "
             "`--quick` for a smoke run).\n")
    L.append("## Machine and settings\n")
    L += [f"- {ln}" for ln in machine()]
    L.append(f"- Threads: {a.threads} on both sides (`torch.set_num_threads`, onnxruntime `intra_op_num_threads`, "
             "OMP/MKL/OPENBLAS env); refcam's FD sessions are pinned the same way by the benchmark.")
    if loads:
        L.append(f"- Load average (1-min, sampled at every timed call): min {min(loads):.1f}, mean "
                 f"{np.mean(loads):.1f}, max {max(loads):.1f} on {os.cpu_count()} CPUs.  Ratios of one run are what "
                 "count: absolute times move with the load of the machine.")
    L.append("- Timing: two server processes, one per side (refcam and onnxruntime; torch with pytorch-grad-cam, "
             "torchcam and captum, one hooked model per peer method).  Every measurement is set up and warmed "
             "up once, then the repeats run round-robin over all measurements (plan order, then reversed), so a "
             "change of load hits all of them alike; only one process computes at a time.")
    L.append("- Model: torchvision `resnet50(weights=None)`, `torch.manual_seed(0)`, eval mode; ONNX via the "
             "legacy exporter (`dynamo=False`, opset 17, `do_constant_folding=True`: BatchNorm folded), dynamic "
             "batch, static 224×224.  Inputs: seeded N(0,1); target = each image's 2nd-ranked class "
             "(same indices in both worlds).  Layer: output of `layer4[-1]` (2048×7×7).  refcam methods via "
             "`refcam.explain` (maps at 7×7 / input resolution, default options).")
    L.append("\n## Throughput (wall ms, ratio to the onnxruntime forward of the same batch)\n")
    L.append("| work | b=1 | b=8 |")
    L.append("|---|---|---|")
    for key in ("ort_forward", "torch_forward", "refcam_vjp", "refcam_gradcam", "tc_gradcam", "pgc_gradcam",
                "refcam_fd", "refcam_saliency", "captum_saliency", "refcam_gbp", "captum_gbp"):
        if any((key, b) in R for b in (1, 8)):
            L.append(f"| {LABELS[key]} | " + " | ".join(_cell(R, (key, b), ("ort_forward", b)) for b in (1, 8)) + " |")
    L.append("\n## Targets of issue 13 (CPU-time ratios of this run; wall-time ratio in brackets)\n")
    L.append("Every measurement is single-threaded, so its CPU time (`process_time`) is the work it did; "
             "its wall time adds whatever time other processes of a busy machine held the core.  The "
             "targets are judged on the CPU-time ratio; on a quiet machine the two agree.\n")
    L.append("Gradient CAM methods against one onnxruntime forward (≤ 1.2×), the same method in torchcam "
             "(≤ 0.55×; torchcam has no HiResCAM / element-wise Grad-CAM: its GradCAM instead) and in "
             "pytorch-grad-cam (≤ 0.2×):\n")
    L.append("| method | b | refcam ms | / ORT forward | / torchcam | / pytorch-grad-cam |")
    L.append("|---|---|---|---|---|---|")
    missed = []

    def rc(num, den, goal, what):
        w, c = _ratio(R, num, den)
        if w is None:
            return "—"
        ok = c <= goal
        if not ok:
            missed.append(f"{what}: {c:.2f}× (goal ≤ {goal})")
        return f"{c:.2f}× ({w:.2f}×) {'✓' if ok else '✗'}"

    for name, lab, pgc, tc in GRADIENT_CAMS:
        for b in (1, 8):
            k = (f"refcam_{name}", b)
            if k not in R:
                continue
            tck = (f"tc_{name}" if tc else "tc_gradcam", b)
            L.append(f"| {lab} | {b} | {fmt_ms(R[k]['wall'])} | {rc(k, ('ort_forward', b), 1.2, f'{lab} / forward b={b}')} | "
                     f"{rc(k, tck, 0.55, f'{lab} / torchcam b={b}')}{'' if tc else ' (GradCAM)'} | "
                     f"{rc(k, (f'pgc_{name}', b), 0.2, f'{lab} / pytorch-grad-cam b={b}')} |")
    dec = []
    for b in (1, 8):
        f = _ratio(R, ("torch_forward", b), ("ort_forward", b))[1]
        t = _ratio(R, ("tc_gradcam", b), ("ort_forward", b))[1]
        g = _ratio(R, ("refcam_gradcam", b), ("ort_forward", b))[1]
        if None not in (f, t, g):
            dec.append(f"b={b}: Grad-CAM / torchcam = (Grad-CAM / ORT forward) ÷ (torchcam / ORT forward) = "
                       f"{g:.2f} ÷ {t:.2f}, with torch's own forward at {f:.2f}× onnxruntime's")
    if dec:
        L.append("\nThe ratios to the torch peers decompose (CPU time): " + "; ".join(dec) + ".  refcam's "
                 "gradient CAM costs one onnxruntime forward (the VJP run adds only the head's backward), "
                 "so ≤ 0.55× torchcam holds exactly where torchcam's forward + head backward costs ≥ 1.8× "
                 "onnxruntime's forward: a property of the two runtimes on the machine and its load, not "
                 "of refcam (see benchmarks_profile.md).")
    L.append("\nInput-gradient methods against captum (≤ 0.7×):\n")
    L.append("| method | b | refcam ms | captum ms | refcam / captum | refcam / ORT forward |")
    L.append("|---|---|---|---|---|---|")
    for mine, theirs, lab in (("refcam_saliency", "captum_saliency", "saliency"),
                              ("refcam_gbp", "captum_gbp", "guided backprop")):
        for b in (1, 8):
            if (mine, b) in R and (theirs, b) in R:
                w, _ = _ratio(R, (mine, b), ("ort_forward", b))
                L.append(f"| {lab} | {b} | {fmt_ms(R[(mine, b)]['wall'])} | {fmt_ms(R[(theirs, b)]['wall'])} | "
                         f"{rc((mine, b), (theirs, b), 0.7, f'{lab} / captum b={b}')} | "
                         f"{'—' if w is None else f'{w:.2f}×'} |")
    scale = K / a.peer_masks
    if ("refcam_scorecam", 1) in R:
        L.append("\nScore-CAM (1 image, all 2048 layer4 masks, pytorch-grad-cam's mask convention; the peers run the "
                 f"first {a.peer_masks} masks, time × 2048/{a.peer_masks}, marked *):\n")
        L.append("| measurement | wall s | ratio (CPU; wall) |")
        L.append("|---|---|---|")
        fw = R.get(("forwards", 1))
        if fw:
            L.append(f"| 2048 plain onnxruntime forwards, chunk {fw.get('chunk', '?')} ({fw.get('note', 'one run')}) | "
                     f"{fw['wall']:.1f} | 1.00× |")
        L.append(f"| refcam Score-CAM | {R[('refcam_scorecam', 1)]['wall']:.1f} | "
                 f"{rc(('refcam_scorecam', 1), ('forwards', 1), 1.0, 'Score-CAM / 2048 forwards')} |")
        for k, lab in (("pgc_scorecam", "pytorch-grad-cam ScoreCAM*"), ("tc_scorecam", "torchcam ScoreCAM*")):
            if (k, 1) in R:
                w, c = _ratio(R, ("refcam_scorecam", 1), (k, 1), 1.0, scale)
                L.append(f"| {lab} | {R[(k, 1)]['wall'] * scale:.1f} | refcam / peer {c:.2f}× ({w:.2f}×) |")
    else:
        L.append("\nScore-CAM: not measured in this run (`--skip-scorecam`, `--quick`); the command without "
                 "them measures it against 2048 plain forwards and the peers.")
    L.append("\n**Missed targets:** " + ("; ".join(missed) if missed else "none") + ".")
    failed = [r for r in res if "error" in r]
    if failed:
        L.append("\nFailed: " + "; ".join(f"{r['worker']} b={r['batch']}: {r['error']}" for r in failed))
    L.append("\nProfiles of the gradient graphs and of the peers: [benchmarks_profile.md](benchmarks_profile.md).")
    if sc_rows:
        S = {(r["worker"], r["batch"], r["size"]): r for r in sc_rows if "wall" in r}
        pts = sorted({(b, s_) for (_, b, s_) in S})
        L.append("\n## Scaling: batch 1–32 (224×224) and input size 224–512 (batch 1)\n")
        L.append("![scaling](benchmarks_scaling.png)\n")
        L.append("CPU ms per call (single-threaded; interleaved, medians of "
                 f"{a.scaling_repeats} repeats; a separate static export per input size):\n")
        L.append("| batch | size | " + " | ".join(lab for _, lab in SCALE_WORKERS)
                 + " | Grad-CAM / fwd | Grad-CAM / torchcam | Grad-CAM / pgc | saliency / captum |")
        L.append("|---|---|" + "---|" * (len(SCALE_WORKERS) + 4))
        for b, s_ in pts:
            cells = [fmt_ms(S[(w, b, s_)]["cpu"]) if (w, b, s_) in S else "—" for w, _ in SCALE_WORKERS]
            rat = []
            for num, den in (("refcam_gradcam", "ort_forward"), ("refcam_gradcam", "tc_gradcam"),
                             ("refcam_gradcam", "pgc_gradcam"), ("refcam_saliency", "captum_saliency")):
                u, v = S.get((num, b, s_)), S.get((den, b, s_))
                rat.append("—" if u is None or v is None else f"{u['cpu'] / v['cpu']:.2f}×")
            L.append(f"| {b} | {s_} | " + " | ".join(cells + rat) + " |")
    L += memory_section(mem) if mem else ["\n## Peak memory\n", "Not measured in this run (`--no-memory`, "
                                             "`--quick`): one fresh process per measurement without them."]
    L.append("\n## Correctness (max abs difference after each side's normalisation)\n")
    for k, v in chk.items():
        L.append(f"- {k}: {_fmt(v)}")
    if kern:
        L.append("\n## refcam.math kernels (float32, ms, median; `--kernels`)\n")
        L.append(f"Measured {kern.get('started', '?')} UTC, load average {kern.get('load', 0):.1f}.\n")
        L.append("![kernels](benchmarks_kernels.png)\n")
        L.append("| axis | value | weighted_sum | gradcam | upsample |")
        L.append("|---|---|---|---|---|")
        for ax, v, ws, gc, up in kern["kernels"]:
            f = lambda z: "—" if z is None else f"{z:.3f}"  # noqa: E731
            L.append(f"| {ax} | {v} | {f(ws)} | {f(gc)} | {f(up)} |")
        if kern.get("scorecam"):
            L.append("\nScore-CAM on the toy `resnet50_sized` net, ms: " + "; ".join(
                f"{ax} {v}: {ms:,.0f}" for ax, v, ms in kern["scorecam"]))
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="markdown report (e.g. docs/benchmarks.md; the plot goes next to it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the main table")
    ap.add_argument("--scaling-repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,2,4,8,16,32", help="scaling: batch sizes (224×224)")
    ap.add_argument("--sizes", default="224,288,384,448,512", help="scaling: input sizes (batch 1)")
    ap.add_argument("--peer-masks", type=int, default=128)
    ap.add_argument("--budget-mib", type=int, default=64)
    ap.add_argument("--skip-scorecam", action="store_true", help="skip the (long) Score-CAM measurements")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs (fresh process each)")
    ap.add_argument("--kernels", action="store_true", help="also time the refcam.math kernels (own section)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 repeats, no Score-CAM, no memory, scaling on batches 1,2 and sizes 224,288")
    ap.add_argument("--only", default=None, help="comma-separated worker names (main table)")
    ap.add_argument("--dir", default=None, help="reuse an export directory")
    ap.add_argument("--from-json", default=None, help="re-render the report (and plots) of a previous run's JSON")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        run_worker(a)
        return 0
    if a.serve:
        serve(a)
        return 0
    if a.from_json:
        j = json.loads(Path(a.from_json).read_text())
        for k, v in j.get("args", {}).items():
            if k in ("repeats", "scaling_repeats", "threads", "peer_masks", "budget_mib", "command"):
                setattr(a, k, v)
        write(a, j["results"], j["checks"], j["scaling"], j["kernels"], j["memory"], j["started"],
              j.get("minutes", 0.0), Path("."))
        return 0
    a.command = "python benchmarks/peers_bench.py " + " ".join(
        v for v in (sys.argv[1:] if argv is None else argv))
    if a.quick:
        a.repeats, a.scaling_repeats = min(a.repeats, 2), 1
        a.skip_scorecam, a.no_memory = True, True
        a.batches, a.sizes = "1,2", "224,288"
    import importlib.util

    missing = [p for p in ("torch", "torchvision", "pytorch_grad_cam", "torchcam", "captum", "onnxruntime")
               if importlib.util.find_spec(p) is None]
    if missing:
        print(f"peers_bench: needs torch, torchvision, grad-cam, torchcam and captum (missing: {missing}); install "
              "the `peers` extra", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    batches = [int(v) for v in a.batches.split(",") if v]
    sizes = [int(v) for v in a.sizes.split(",") if v]
    d = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="refcam_peers_"))
    if not (d / "meta.json").exists() or any(not _onnx_path(d, s_).exists() for s_ in sizes):
        print(f"exporting the model to {d} ...", flush=True)
        # in a subprocess: this process stays free of torch
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "export", "--dir", str(d),
                        "--sizes", ",".join(map(str, sizes))], check=True)
    plan = []
    for b in (1, 8):
        for w in ["ort_forward", "torch_forward", "refcam_vjp"] + [f"{p_}_{n}" for n, _, _, tc in GRADIENT_CAMS
                                                                   for p_ in ("refcam", "tc", "pgc")
                                                                   if p_ != "tc" or tc] + \
                 ["refcam_fd", "refcam_saliency", "captum_saliency", "captum_saliency_folded", "refcam_gbp", "captum_gbp"]:
            plan.append((w, b, 224))
    if a.only:
        keep = set(a.only.split(","))
        plan = [p_ for p_ in plan if p_[0] in keep]
    servers: dict = {}
    try:
        print(f"main table: {len(plan)} measurements, {a.repeats} interleaved repeats", flush=True)
        res = interleaved(d, a, plan, a.repeats, servers, "main: ")
        if not a.skip_scorecam:
            print("Score-CAM (minutes) ...", flush=True)
            sc_plan = [("forwards", 1, 224), ("refcam_scorecam", 1, 224), ("pgc_scorecam", 1, 224),
                       ("tc_scorecam", 1, 224), ("refcam_scorecam_tc", 1, 224), ("forwards_after", 1, 224)]
            # one run each, no warm-up run (minutes each; the workers create their sessions at setup)
            res += interleaved(d, a, sc_plan, 1, servers, "Score-CAM: ", warmup=0)
        sc_rows = []
        if not a.no_scaling:
            pts = [(b, 224) for b in batches] + [(1, s_) for s_ in sizes if s_ != 224]
            sp = [(w, b, s_) for b, s_ in pts for w, _ in SCALE_WORKERS]
            print(f"scaling: {len(sp)} measurements, {a.scaling_repeats} interleaved repeats", flush=True)
            sc_rows = interleaved(d, a, sp, a.scaling_repeats, servers, "scaling: ", save=False)
    finally:
        for sv in servers.values():
            sv.close()
    mem = []
    if not a.no_memory:
        print("peak memory (one fresh process per measurement) ...", flush=True)
        for b in (1, 8):
            for w in MEMORY_WORKERS:
                mem.append(spawn(d, w, b, a, 1, 1))
    have = {(r["worker"], r["batch"]) for r in res if "wall" in r}
    chk = checks(d, (1, 8), a.peer_masks, have)
    for k, v in chk.items():
        print(f"  {k}: {_fmt(v)}")
    kern = None
    if a.kernels:
        kern = kernel_scaling(a.quick, a.threads)
    write(a, res, chk, sc_rows, kern, mem, started, (time.perf_counter() - t_start) / 60, d)
    return 0


def write(a, res, chk, sc_rows, kern, mem, started, minutes, d) -> None:
    """Print the report; with ``--out`` write it (keeping other benchmarks' marked sections), the
    plots next to it and the raw results as JSON (``--from-json`` re-renders from that)."""
    text = report(a, res, chk, sc_rows, kern, mem, started, minutes, d)
    print(text)
    if a.out:
        out = Path(a.out)
        kept = kept_sections(out)
        out.write_text(text + "\n".join(kept) + ("\n" if kept else ""))
        if sc_rows:
            plot_scaling(sc_rows, out.with_name("benchmarks_scaling.png"))
        if kern:
            plot_kernels(kern, out.with_name("benchmarks_kernels.png"))
        args = {k: getattr(a, k, None) for k in ("repeats", "scaling_repeats", "threads", "peer_masks",
                                                 "budget_mib", "command")}
        out.with_suffix(".json").write_text(json.dumps(
            {"results": res, "scaling": sc_rows, "memory": mem, "checks": chk, "kernels": kern,
             "started": started, "minutes": minutes, "args": args}, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
