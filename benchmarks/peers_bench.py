"""refcam versus pytorch-grad-cam, torchcam and captum on the same ResNet-50, in one run.

One command (documented in README.md)::

    PYTHONPATH=. /tmp/peers/bin/python benchmarks/peers_bench.py --out docs/benchmarks.md

What it does
------------
* Builds torchvision's ``resnet50(weights=None)`` with ``torch.manual_seed(0)`` weights (eval mode),
  exports it to ONNX with the legacy exporter (``dynamo=False``, opset 17, dynamic batch axis,
  ``do_constant_folding=True``: BatchNorm folded into the convolutions, as a deployment export), and
  feeds both worlds the same seeded inputs (1 and 8 images of 3×224×224) and the same targets.
* Every measurement runs in a fresh subprocess (``--worker``) with the same thread pinning:
  ``torch.set_num_threads(T)``, onnxruntime ``intra_op_num_threads=T`` and ``OMP/MKL/OPENBLAS`` =
  T.  Each worker reports median wall time and CPU time (``time.process_time``, all threads) over
  the repeats after one warm-up call, and peak memory as ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
  (peak resident set size, native allocations of torch/onnxruntime included): the process peak and
  its growth over the baseline taken after imports and model loading.
* Checks the maps agree (max abs difference after each side's normalisation) and writes a markdown
  report with the machine description, the load average and the scaling tables, plus a PNG plot.

Score-CAM peers at 2048 masks take many minutes: they are measured on the first ``--peer-masks``
channels (default 128) and the time is extrapolated linearly to 2048 (the cost is one batched
forward per mask; everything else is negligible).  Their maps are checked against refcam's
masked-input scores restricted to the same channels.

Without torch the script exits with a message (the scaling part alone: ``--scaling-only``).
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


def _torch_model(d: Path, threads: int):
    import torch
    import torchvision

    torch.set_num_threads(threads)
    m = torchvision.models.resnet50(weights=None)
    m.load_state_dict(torch.load(d / "weights.pt"))
    return m.eval()


def _refcam_model(d: Path, threads: int, budget_mib: int = 64):
    from refcam.onnx import Model

    return Model(str(d / "resnet50.onnx"), intra_op_num_threads=threads, inter_op_num_threads=1,
                 memory_budget=budget_mib * 2**20)


def _meta(d: Path) -> dict:
    return json.loads((d / "meta.json").read_text())


# ----------------------------------------------------------------------------------------- workers
def _w_ort_forward(d, x, cls, a):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
    so.log_severity_level = 3
    s = ort.InferenceSession(str(d / "resnet50.onnx"), so, providers=["CPUExecutionProvider"])
    return lambda: s.run(None, {"input": x})[0], None


def _w_torch_forward(d, x, cls, a):
    import torch

    m = _torch_model(d, a.threads)
    xt = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return m(xt).numpy()

    return run, None


def _explain_or_legacy(method: str):
    """``refcam.explain(m, x, method, ...).maps`` (current API), or the older
    ``refcam.autodiff.methods`` function the first published numbers were measured with."""
    import refcam

    if hasattr(refcam, "explain") and method in __import__("refcam.methods", fromlist=["METHODS"]).METHODS:
        return lambda m, x, **kw: refcam.explain(m, x, method, progress=False, **kw).maps
    from refcam.autodiff import methods as am

    fn = {"gradcam": lambda m, x, **kw: am.gradient_cam(m, x, "gradcam", **kw),
          "saliency": am.saliency_map, "guided_backprop": am.guided_backprop}[method]
    return fn


def _w_refcam_gradcam(d, x, cls, a):
    f = _explain_or_legacy("gradcam")
    m = _refcam_model(d, a.threads)
    layer = _meta(d)["layer"]
    return lambda: f(m, x, layer=layer, target=[int(c) for c in cls]), None


def _w_refcam_vjp(d, x, cls, a):
    """The raw VJP session run (forward + backward to layer4 in one onnxruntime run)."""
    from refcam.autodiff import gradients

    m = _refcam_model(d, a.threads)
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


def _w_pgc_gradcam(d, x, cls, a):
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m = _torch_model(d, a.threads)
    cam = GradCAM(model=m, target_layers=[m.layer4[-1]])
    xt = torch.from_numpy(x)
    tg = [ClassifierOutputTarget(int(c)) for c in cls]
    return lambda: cam(input_tensor=xt, targets=tg), None


def _w_tc_gradcam(d, x, cls, a):
    import torch
    from torchcam.methods import GradCAM

    m = _torch_model(d, a.threads)
    ext = GradCAM(m, LAYER_MODULE)
    xt = torch.from_numpy(x)
    ci = [int(c) for c in cls]

    def run():
        out = m(xt)
        return ext(class_idx=ci, scores=out)[0].detach().numpy()

    return run, None


def _w_refcam_saliency(d, x, cls, a):
    f = _explain_or_legacy("saliency")
    m = _refcam_model(d, a.threads)
    return lambda: f(m, x, target=[int(c) for c in cls]), None


def _w_captum_saliency(d, x, cls, a):
    import torch
    from captum.attr import Saliency

    m = _torch_model(d, a.threads)
    s = Saliency(m)
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

    s = Saliency(_fold_bn(_torch_model(d, a.threads)))
    xt = torch.from_numpy(x)
    t = torch.from_numpy(cls)
    return lambda: s.attribute(xt, target=t, abs=True).detach().numpy(), None


def _w_refcam_gbp(d, x, cls, a):
    f = _explain_or_legacy("guided_backprop")
    m = _refcam_model(d, a.threads)
    return lambda: f(m, x, target=[int(c) for c in cls]), None


def _w_captum_gbp(d, x, cls, a):
    import torch
    from captum.attr import GuidedBackprop

    m = _torch_model(d, a.threads)
    for mod in m.modules():  # captum's module hooks cannot wrap in-place ReLUs
        if isinstance(mod, torch.nn.ReLU):
            mod.inplace = False
    s = GuidedBackprop(m)
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
        h = M.scorecam_masks(acts, x.shape[2:], upsample_mode="linear", order="normalize-then-upsample",
                             eps=1e-8)  # (N, mk, H, W)
        scores = np.stack([m.run(x[i][None] * h[i][:, None], checked=True)[m.output_name][:, cls[i]]
                           for i in range(x.shape[0])])
        return {"scores": scores}

    return run, None


def _w_export(d, x, cls, a):
    return (lambda: None), None


WORKERS = {k[3:]: v for k, v in dict(globals()).items() if k.startswith("_w_")}
WORKERS["forwards_after"] = _w_forwards  # the 2048 forwards again after Score-CAM (load drift check)


def run_worker(a) -> None:
    d = Path(a.dir)
    if a.worker == "export":
        export(d)
        return
    x = np.load(d / "x.npy")[: a.batch]
    cls = np.load(d / "classes.npy")[: a.batch]
    t_setup = time.perf_counter()
    fn, _ = WORKERS[a.worker](d, x, cls, a)
    base = _rss_mib()
    t_setup = time.perf_counter() - t_setup
    wall, cpu, out, walls = timed(fn, a.repeats, a.warmup)
    res = {"worker": a.worker, "batch": a.batch, "wall": wall, "cpu": cpu, "walls": walls,
           "rss_base_mib": base, "rss_peak_mib": _rss_mib(), "setup_s": t_setup, "load": os.getloadavg()[0]}
    arrays = out if isinstance(out, dict) else {"map": out}
    arrays = {k: np.asarray(v) for k, v in arrays.items() if not np.isscalar(v)}
    res.update({k: v for k, v in (out.items() if isinstance(out, dict) else []) if np.isscalar(v)})
    np.savez(d / f"{a.worker}_{a.batch}.npz", **arrays)
    print("RESULT " + json.dumps(res))


# ----------------------------------------------------------------------------------------- setup
def export(d: Path, seed: int = 0) -> None:
    import torch
    import torchvision

    torch.manual_seed(seed)
    m = torchvision.models.resnet50(weights=None).eval()
    torch.save(m.state_dict(), d / "weights.pt")
    x = np.random.default_rng(seed).standard_normal((8, 3, 224, 224)).astype(np.float32)
    torch.onnx.export(m, torch.from_numpy(x[:1]), str(d / "resnet50.onnx"), dynamo=False, opset_version=17,
                      do_constant_folding=True, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    import onnx

    g = onnx.load(str(d / "resnet50.onnx")).graph
    # the output of the last bottleneck of layer4 (its final ReLU), pytorch-grad-cam's model.layer4[-1]
    layer = [n.output[0] for n in g.node if n.name.startswith("/layer4/layer4.2/") and n.op_type == "Relu"][-1]
    with torch.no_grad():
        logits = m(torch.from_numpy(x)).numpy()
    classes = np.argsort(logits, axis=1)[:, -2].astype(np.int64)  # 2nd-ranked class: not the argmax shortcut
    np.save(d / "x.npy", x)
    np.save(d / "classes.npy", classes)
    (d / "meta.json").write_text(json.dumps({"layer": layer}))


def spawn(d: Path, worker: str, batch: int, a, repeats: int, warmup: int = 1) -> dict:
    env = dict(os.environ)
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[v] = str(a.threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--dir", str(d), "--batch",
           str(batch), "--threads", str(a.threads), "--repeats", str(repeats), "--warmup", str(warmup),
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
def scaling(quick: bool, threads: int) -> dict:
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


def plot(res: dict, path: Path) -> None:
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


def report(a, res: dict, chk: dict, sc: dict | None, loads: list, started: str, d: Path) -> str:
    R = {(r["worker"], r["batch"]): r for r in res if "wall" in r}
    fb, fa = R.get(("forwards", 1)), R.get(("forwards_after", 1))
    if fb and fa:  # Score-CAM is bracketed by two runs of the 2048 forwards: compare with their mean
        R[("forwards", 1)] = dict(fb, wall=(fb["wall"] + fa["wall"]) / 2, cpu=(fb["cpu"] + fa["cpu"]) / 2,
                                  rss_peak_mib=max(fb["rss_peak_mib"], fa["rss_peak_mib"]),
                                  note=f"mean of the runs before ({fb['wall']:.0f} s) and after "
                                       f"({fa['wall']:.0f} s) Score-CAM")
        del R[("forwards_after", 1)]
    L = []
    L.append("# Benchmarks: refcam versus pytorch-grad-cam, torchcam and captum\n")
    L.append(f"Command: `PYTHONPATH=. /tmp/peers/bin/python benchmarks/peers_bench.py --out {a.out}` "
             f"(run started {started} UTC, {a.repeats} repeats after one warm-up, medians).\n")
    L.append("## Machine and settings\n")
    for ln in machine():
        L.append(f"- {ln}")
    L.append(f"- Threads: {a.threads} everywhere (`torch.set_num_threads`, onnxruntime `intra_op_num_threads`, "
             f"OMP/MKL/OPENBLAS env); refcam's FD sessions are pinned the same way by the benchmark.")
    L.append(f"- Load average during the run (1-min, sampled per measurement): min {min(loads):.1f}, max "
             f"{max(loads):.1f} on {os.cpu_count()} CPUs. **The machine is shared** with other test runs: wall "
             "times are inflated and noisy; the CPU-time column (`time.process_time`, all threads of the "
             "worker) is less sensitive to the load.")
    L.append("- Model: torchvision `resnet50(weights=None)`, `torch.manual_seed(0)`, eval mode; ONNX via the "
             "legacy exporter (`dynamo=False`, opset 17, `do_constant_folding=True`: BatchNorm folded), dynamic "
             "batch.  Inputs: seeded N(0,1) 3×224×224, batches 1 and 8; target = each image's 2nd-ranked class "
             "(same indices in both worlds).  Layer: output of `layer4[-1]` (2048×7×7).")
    L.append("- Memory: peak RSS (`VmHWM` of /proc/self/status, = `ru_maxrss` without the parent's peak carried over "
             "exec) in a fresh subprocess per measurement (native torch/onnxruntime memory included); `+Δ` = growth over the RSS after "
             "imports and model/session loading.")
    L.append(f"- Score-CAM: refcam runs all 2048 masks (`refcam.explain(..., 'scorecam')`, memory budget "
             f"{a.budget_mib} MiB → chunk of masked inputs shown below); pytorch-grad-cam and torchcam run "
             f"the first {a.peer_masks} masks and their time is multiplied by 2048/{a.peer_masks} (linear "
             "extrapolation, marked *).\n")
    L.append("## Times (one run)\n")
    L.append("| measurement | batch | wall ms | CPU ms | ratio to ORT forward (wall) | peak RSS MiB (+Δ) |")
    L.append("|---|---|---|---|---|---|")
    names = [("ort_forward", "onnxruntime forward"), ("torch_forward", "torch forward (inference_mode)"), ("refcam_vjp", "refcam gradients to layer4 (VJP graph)"),
             ("refcam_gradcam", "refcam Grad-CAM (VJP graph)"), ("pgc_gradcam", "pytorch-grad-cam GradCAM"),
             ("tc_gradcam", "torchcam GradCAM"), ("refcam_fd", "refcam FD Grad-CAM weights (2K directions)"),
             ("refcam_saliency", "refcam saliency"), ("captum_saliency", "captum Saliency"),
             ("captum_saliency_folded", "captum Saliency, BN-folded torch twin (check only)"),
             ("refcam_gbp", "refcam guided backprop"), ("captum_gbp", "captum GuidedBackprop"),
             ("forwards", "2048 plain ORT forwards (Score-CAM chunks)"),
             ("refcam_scorecam", "refcam Score-CAM (2048 masks)"),
             ("pgc_scorecam", "pytorch-grad-cam ScoreCAM (2048 masks*)"),
             ("tc_scorecam", "torchcam ScoreCAM (2048 masks*)")]
    scale = K / a.peer_masks
    for key, lab in names:
        for b in (1, 8):
            r = R.get((key, b))
            if r is None:
                continue
            f = scale if key in ("pgc_scorecam", "tc_scorecam") else 1.0
            fw = R.get(("ort_forward", b))
            per = K if key in ("forwards", "refcam_scorecam", "pgc_scorecam", "tc_scorecam") else 1
            ratio = (f"{r['wall'] * f / (per * fw['wall']):.2f}×" + (" of 2048 fwd" if per > 1 else "")) if fw else "—"
            extra = f" (chunk {r['chunk']})" if "chunk" in r else ""
            extra += f", {r['note']}" if "note" in r else ""
            L.append(f"| {lab}{extra} | {b} | {fmt_ms(r['wall'] * f)} | {fmt_ms(r['cpu'] * f)} | {ratio} | "
                     f"{r['rss_peak_mib']:.0f} (+{r['rss_peak_mib'] - r['rss_base_mib']:.0f}) |")
    failed = [r for r in res if "error" in r]
    if failed:
        L.append("\nFailed: " + "; ".join(f"{r['worker']} b={r['batch']}: {r['error'][0]}" for r in failed))
    L.append("\n## Targets (ratios of the run above; wall time, CPU time in brackets)\n")
    L.append("| target | goal | measured | met |")
    L.append("|---|---|---|---|")

    def ratio(num, den, fnum=1.0, fden=1.0):
        if num not in R or den not in R:
            return None, None
        return R[num]["wall"] * fnum / (R[den]["wall"] * fden), R[num]["cpu"] * fnum / (R[den]["cpu"] * fden)

    rows = []
    for b in (1, 8):
        rows += [(f"Grad-CAM / pytorch-grad-cam GradCAM (b={b})", 0.5, ratio(("refcam_gradcam", b), ("pgc_gradcam", b))),
                 (f"Grad-CAM / one ORT forward (b={b})", 3.5, ratio(("refcam_gradcam", b), ("ort_forward", b))),
                 (f"FD Grad-CAM weights / one ORT forward (b={b})", 2.0, ratio(("refcam_fd", b), ("ort_forward", b)))]
    rows += [("Score-CAM / pytorch-grad-cam ScoreCAM (b=1, 2048 masks*)", 0.33,
              ratio(("refcam_scorecam", 1), ("pgc_scorecam", 1), 1.0, scale)),
             ("Score-CAM / 2048 plain forwards (b=1)", 1.15, ratio(("refcam_scorecam", 1), ("forwards", 1)))]
    for lab, goal, (w, c) in rows:
        if w is None:
            L.append(f"| {lab} | ≤ {goal} | not measured | — |")
        else:
            L.append(f"| {lab} | ≤ {goal} | {w:.2f}× ({c:.2f}×) | {'yes' if w <= goal else 'NO'} |")
    other = [("Grad-CAM / torchcam GradCAM", ("refcam_gradcam", "tc_gradcam")),
             ("saliency / captum Saliency", ("refcam_saliency", "captum_saliency")),
             ("guided backprop / captum GuidedBackprop", ("refcam_gbp", "captum_gbp")),
             ("FD weights / VJP gradients", ("refcam_fd", "refcam_vjp"))]
    L.append("\nOther ratios (wall, CPU in brackets): " + "; ".join(
        f"{lab} b={b}: {w:.2f}× ({c:.2f}×)" for lab, (p, q) in other for b in (1, 8)
        for (w, c) in [ratio((p, b), (q, b))] if w is not None)
        + (f"; Score-CAM / torchcam ScoreCAM (2048 masks*): "
           + "{:.2f}× ({:.2f}×)".format(*ratio(("refcam_scorecam", 1), ("tc_scorecam", 1), 1.0, scale))
           if ratio(("refcam_scorecam", 1), ("tc_scorecam", 1))[0] is not None else "") + ".")
    if all(k in R for k in (("refcam_scorecam", 1), ("forwards", 1), ("pgc_scorecam", 1))):
        a_ = R[("refcam_scorecam", 1)]["wall"] / R[("forwards", 1)]["wall"]
        b_ = R[("forwards", 1)]["wall"] / (R[("pgc_scorecam", 1)]["wall"] * scale)
        L.append(f"\nScore-CAM / pytorch-grad-cam decomposes as (refcam Score-CAM / 2048 onnxruntime forwards) × "
                 f"(2048 onnxruntime forwards / pytorch-grad-cam ScoreCAM) = {a_:.2f} × {b_:.2f}.  The second "
                 "factor is onnxruntime's forward speed against eager torch at these batch sizes (chunk "
                 f"{R[('forwards', 1)].get('chunk', '?')} vs pytorch-grad-cam's 16): no Score-CAM built on "
                 "onnxruntime forwards can go below it without skipping forwards, so the ≤ 0.33× goal needs "
                 "onnxruntime to be ≥ 3× faster than torch per image, which it is not on this CPU.")
    L.append("\nNotes: threads = 1 by default because on this loaded 2-core machine torch with 2 threads "
             "collapses in backward passes (ResNet-50 forward+backward 11–14 s at 2 threads vs ≈ 1 s at 1 "
             "thread, measured at load ≈ 6), which would flatter refcam; `--threads 2` is available.  "
             "pytorch-grad-cam's ScoreCAM materialises all K masked inputs at once (2048 × 3 × 224 × 224 "
             "float32 = 1.2 GiB for one image), so its peak memory at the first-masks subset understates its "
             "real peak; torchcam and refcam build masked inputs chunk by chunk.")
    sr = R.get(("refcam_scorecam", 1))
    if sr:
        L.append(f"\nScore-CAM peak memory: {sr['rss_peak_mib']:.0f} MiB process peak, "
                 f"+{sr['rss_peak_mib'] - sr['rss_base_mib']:.0f} MiB over the loaded model; the masked inputs "
                 f"exist one chunk at a time (plus the next one being built): chunk = budget // (4 × bytes of "
                 f"one input) = {a.budget_mib} MiB // (4 × 588 KiB), i.e. ≤ 2 chunks of masked inputs + "
                 "onnxruntime's activation arena for one chunk-sized batch; independent of K = 2048.")
    L.append("\nProfiles (py-spy) of the missed target, the thread choice and the correctness floors: "
             "[benchmarks_profile.md](benchmarks_profile.md).")
    L.append("\n## Correctness (max abs difference after each side's normalisation)\n")
    for k, v in chk.items():
        L.append(f"- {k}: {_fmt(v)}")
    if sc:
        L.append("\n## Scaling (refcam.math combine kernels, float32, ms, median)\n")
        if "started" in sc:
            L.append(f"Measured {sc['started']} UTC, load average {sc['load']:.1f} (separate from the run above: "
                     "kernel timings of < 1 ms are easily disturbed by the other processes).\n")
        L.append("![scaling](benchmarks_scaling.png)\n")
        L.append("| axis | value | weighted_sum | gradcam | upsample |")
        L.append("|---|---|---|---|---|")
        for ax, v, ws, gc, up in sc["kernels"]:
            f = lambda z: "—" if z is None else f"{z:.3f}"  # noqa: E731
            L.append(f"| {ax} | {v} | {f(ws)} | {f(gc)} | {f(up)} |")
        L.append("\nAxes: K channels at 7×7 (N=1); map size s×s at K=512 (upsample s×s → 224×224); batch N at "
                 "K=2048, 7×7; input size: upsampling 7×7 → size×size.\n")
        L.append("Score-CAM (`refcam.explain`, toy `resnet50_sized` net: 4 strided convs → K×(size/32)², "
                 "default chunking), ms:\n")
        L.append("| axis | value | Score-CAM ms |")
        L.append("|---|---|---|")
        for ax, v, ms in sc.get("scorecam", []):
            L.append(f"| {ax} | {v} | {ms:,.0f} |")
        L.append("\nAxes: K channels (input 112, N=1); input size (K=64, N=1); batch N (K=64, input 112).  "
                 "Score-CAM cost is linear in K × N (one forward per mask and image) and in the forward "
                 "cost (∝ input pixels).")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="markdown report (e.g. docs/benchmarks.md)")
    ap.add_argument("--png", default=None, help="scaling plot (default: next to --out, benchmarks_scaling.png)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peer-masks", type=int, default=128)
    ap.add_argument("--budget-mib", type=int, default=64)
    ap.add_argument("--skip-scorecam", action="store_true", help="skip the (long) Score-CAM measurements")
    ap.add_argument("--scaling-only", action="store_true", help="only the scaling part (no torch needed)")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer repeats / smaller scaling grid (smoke run)")
    ap.add_argument("--only", default=None, help="comma-separated worker names")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--from-json", default=None, help="re-render the report from a previous run's JSON")
    a = ap.parse_args(argv)
    if a.from_json:
        j = json.loads(Path(a.from_json).read_text())
        res, chk, sc = j["results"], j["checks"], j["scaling"]
        loads = j.get("loads") or [r["load"] for r in res if "load" in r]
        text = report(a, res, chk, sc, loads, j.get("started", "?"), Path("."))
        Path(a.out).write_text(text) if a.out else print(text)
        if a.out and sc:
            plot(sc, Path(a.png or Path(a.out).with_name("benchmarks_scaling.png")))
        return 0
    if a.worker:
        run_worker(a)
        return 0
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    sc = None
    if a.scaling_only:
        sc = scaling(a.quick, a.threads)
        print(json.dumps(sc, indent=1))
        jp = Path(a.out).with_suffix(".json") if a.out else None
        if jp is not None and jp.exists():  # refresh the scaling part of a previous full run's report
            j = json.loads(jp.read_text())
            j["scaling"] = sc
            jp.write_text(json.dumps(j, indent=1, default=str))
            return main(["--from-json", str(jp), "--out", a.out] + (["--png", a.png] if a.png else []))
        if a.out:
            png = Path(a.png or Path(a.out).with_name("benchmarks_scaling.png"))
            plot(sc, png)
        return 0
    import importlib.util

    missing = [p for p in ("torch", "torchvision", "pytorch_grad_cam", "torchcam", "captum", "onnxruntime")
               if importlib.util.find_spec(p) is None]
    if missing:
        print(f"peers_bench: needs torch, torchvision, grad-cam, torchcam and captum (missing: {missing}); install them "
              "(e.g. into a separate venv) or run with --scaling-only", file=sys.stderr)
        return 2
    import refcam

    if not hasattr(refcam, "explain") and not a.skip_scorecam:
        print("peers_bench: refcam.explain is not available in this refcam; Score-CAM is skipped", file=sys.stderr)
        a.skip_scorecam = True
    d = Path(tempfile.mkdtemp(prefix="refcam_peers_"))
    print(f"exporting the model to {d} ...", flush=True)
    # in a subprocess: this process stays free of torch (its workers are fresh processes)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "export", "--dir", str(d)],
                   check=True)
    rep = 2 if a.quick else a.repeats
    plan = []
    for b in (1, 8):
        for w in ("ort_forward", "torch_forward", "refcam_vjp", "refcam_gradcam", "pgc_gradcam", "tc_gradcam", "refcam_fd",
                  "refcam_saliency", "captum_saliency", "captum_saliency_folded", "refcam_gbp", "captum_gbp"):
            plan.append((w, b, rep, 1))
    if not a.skip_scorecam:
        plan += [("forwards", 1, 1, 0), ("refcam_scorecam", 1, 1, 0), ("forwards_after", 1, 1, 0),
                 ("pgc_scorecam", 1, 1, 0),
                 ("tc_scorecam", 1, 1, 0), ("refcam_scorecam_tc", 1, 1, 0)]
    if a.only:
        keep = set(a.only.split(","))
        plan = [p for p in plan if p[0] in keep]
    res, loads = [], []
    for w, b, r, wu in plan:
        loads.append(os.getloadavg()[0])
        res.append(spawn(d, w, b, a, r, wu))
        if "load" in res[-1]:
            loads.append(res[-1]["load"])
    have = {(r["worker"], r["batch"]) for r in res if "wall" in r}
    chk = checks(d, (1, 8), a.peer_masks, have)
    for k, v in chk.items():
        print(f"  {k}: {_fmt(v)}")
    if not a.no_scaling:
        print("scaling ...", flush=True)
        sc = scaling(a.quick, a.threads)
        loads.append(os.getloadavg()[0])
    text = report(a, res, chk, sc, loads, started, d)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
        if sc:
            plot(sc, Path(a.png or Path(a.out).with_name("benchmarks_scaling.png")))
        (Path(a.out).with_suffix(".json")).write_text(json.dumps({"results": res, "checks": chk, "scaling": sc, "loads": loads, "started": started},
                                                                  indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
