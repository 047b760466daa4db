"""Faithfulness metrics and sanity checks of every available method on the embedded default model.

Runs on EfficientNet-Lite0 (:mod:`refcam.zoo`) and its bundled sample photos, explaining the top-1
class at :data:`refcam.zoo.CAM_LAYER`, and writes a markdown table (stdout and ``--out``).

Usage (from the repository root)::

    PYTHONPATH=$PWD python benchmarks/metrics_table.py --quick --out docs/metrics_table.md
    PYTHONPATH=$PWD python benchmarks/metrics_table.py --out docs/metrics_table.md   # full, ~30 min

Reproducible bit for bit: every random draw is seeded (``--seed``) and onnxruntime runs with one
intra-op thread (``--threads`` to change that at the price of run-to-run float noise).

Methods, all through :func:`refcam.explain` with their papers' defaults: CAM, Grad-CAM,
Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, Eigen-CAM, Score-CAM (softmax probability scores),
Ablation-CAM, the Simonyan saliency map, plus two reference maps that explain nothing (a seeded
random map and a centred Gaussian blob) to show each metric's scale.

Metrics (see ``docs/metrics.md`` for every convention): Average Drop %, Increase in
Confidence % and Win % against CAM on softmax probabilities (Grad-CAM++), deletion AUC (zeros baseline) and insertion
AUC (blur baseline) on probabilities (RISE), ROAD MoRF/LeRF mean probability (noisy linear
imputation), and the cascading model-parameter randomisation test on the top parameter layers
(Adebayo et al.; Spearman of absolute maps after the last step, verdict at threshold 0.5).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import refcam
from refcam import zoo
from refcam.metrics import (
    confidence_metrics,
    deletion,
    insertion,
    model_randomization_test,
    model_score_fn,
    road,
    win_percentage,
)
from refcam.onnx import Model
from refcam.onnx.randomize import parameter_layers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# Display name -> refcam.explain method key (every real map comes from the one entry point).
METHODS = {
    "CAM": "cam",
    "Grad-CAM": "gradcam",
    "Grad-CAM++": "gradcampp",
    "XGrad-CAM": "xgradcam",
    "LayerCAM": "layercam",
    "HiResCAM": "hirescam",
    "Eigen-CAM": "eigencam",
    "Score-CAM": "scorecam",
    "Ablation-CAM": "ablationcam",
    "Saliency": "saliency",
}
REFERENCE_MAPS = ("random (reference)", "centre (reference)")
NAMES = [*METHODS, *REFERENCE_MAPS]


def method_maps(
    model: Model, x: np.ndarray, layer: str, targets: np.ndarray, names, *, seed: int, batch: int
) -> dict[str, np.ndarray]:
    """Maps of every method in ``names``: (N, h, w) at feature resolution (Saliency: input resolution).

    Each real method runs through :func:`refcam.explain` with its paper defaults (Score-CAM scores
    the softmax probability, Ablation-CAM zeroes the channel); the two reference maps explain
    nothing and bound the table from below.
    """
    out: dict[str, np.ndarray] = {}
    for nm in names:
        key = METHODS.get(nm)
        if key is None:
            continue
        kwargs = {} if key == "saliency" else {"layer": layer}
        target = None if key == "eigencam" else targets.tolist()  # Eigen-CAM is class-agnostic
        ex = refcam.explain(model, x, key, target=target, batch_size=batch, progress=False, **kwargs)
        out[nm] = np.asarray(ex.maps)
    h, w_ = model.forward(x[:1], [layer]).activations[layer].shape[2:]
    n = x.shape[0]
    if "random (reference)" in names:
        out["random (reference)"] = np.random.default_rng(seed).random((n, h, w_))
    if "centre (reference)" in names:
        yy, xx = np.mgrid[0:h, 0:w_]
        blob = np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w_ - 1) / 2) ** 2) / (2 * (h / 4) ** 2)))
        out["centre (reference)"] = np.broadcast_to(blob, (n, h, w_)).copy()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="coarse curves (33 points, ROAD at 3 percentages)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads (1 = bit-reproducible)"
    )
    p.add_argument("--images", nargs="*", default=list(zoo.sample_images()))
    p.add_argument("--out", default=None, help="also write the markdown here")
    p.add_argument("--no-sanity", action="store_true")
    args = p.parse_args(argv)

    t0 = time.time()
    model = Model(zoo.efficientnet_lite0(), intra_op_num_threads=args.threads)
    layer = zoo.CAM_LAYER
    x = np.concatenate([zoo.preprocess(zoo.sample_image(nm)) for nm in args.images])
    logits = model.run(x)[model.output_name]
    targets = logits.argmax(axis=1)
    names = list(NAMES)
    log(f"model loaded, {len(x)} images, targets {targets.tolist()}")
    maps = method_maps(model, x, layer, targets, names, seed=args.seed, batch=64)
    log("maps computed")

    prob = model_score_fn(model, probabilities=True)
    p_total = x.shape[2] * x.shape[3]
    step = p_total // 32 if args.quick else 224
    pct = (0.2, 0.5, 0.8) if args.quick else (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    common = dict(resize="linear", batch_size=32, progress=False)
    rows = []
    explained = {}
    for nm in names:
        m = maps[nm]
        conf = confidence_metrics(prob, x, m, targets, **common)
        de = deletion(prob, x, m, targets, step=step, baseline="zeros", **common)
        ins = insertion(prob, x, m, targets, step=step, baseline="blur", **common)
        morf = road(prob, x, m, targets, percentages=pct, order="morf", seed=args.seed, **common)
        lerf = road(prob, x, m, targets, percentages=pct, order="lerf", seed=args.seed, **common)
        explained[nm] = conf
        rows.append(
            (
                nm,
                conf.average_drop,
                conf.increase_in_confidence,
                de.auc.mean(),
                ins.auc.mean(),
                morf.mean.mean(),
                lerf.mean.mean(),
            )
        )
        log(f"{nm}: done")

    lines = [
        "# Metrics of the CAM and saliency methods on EfficientNet-Lite0",
        "",
        f"Images: {', '.join(args.images)} (top-1 class each: "
        f"{', '.join(zoo.imagenet_classes()[t] for t in targets)}); layer `{layer}`; maps upsampled "
        "bilinearly (half-pixel) to 224×224; scores are softmax probabilities of the target class.",
        f"Deletion/insertion: {step} pixels per step ({p_total // step + 1} points), zeros / blur "
        f"(σ = 5) baselines, trapezoid AUC over [0, 1].  ROAD: percentages {list(pct)}, noise 0.01, "
        f"seed {args.seed}.  Generated by `benchmarks/metrics_table.py{' --quick' if args.quick else ''}`.",
        "",
        "| method | Average Drop % ↓ | Increase in Conf. % ↑ | Win % vs CAM ↑ | Deletion AUC ↓ "
        "| Insertion AUC ↑ | ROAD MoRF ↓ | ROAD LeRF ↑ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref = explained["CAM"]
    for nm, ad, ic, d, i, mo, le in rows:
        win = win_percentage(
            ref.full_scores, explained[nm].explanation_scores, ref.explanation_scores
        )
        lines.append(
            f"| {nm} | {ad:.2f} | {ic:.1f} | {win:.1f} | {d:.4f} | {i:.4f} | {mo:.4f} | {le:.4f} |"
        )

    if not args.no_sanity:
        top = [pl.name for pl in parameter_layers(model.proto)][::-1][:4]
        lines += [
            "",
            f"## Cascading randomisation (Adebayo et al.), top layers {top}",
            "",
            "| method | Spearman(abs) per step | SSIM per step | HOG per step | verdict |",
            "|---|---|---|---|---|",
        ]
        for nm in ("CAM", "Grad-CAM", "Grad-CAM++", "Eigen-CAM", "Saliency", "centre (reference)"):

            def explain(proto, nm=nm):
                mm = (
                    model
                    if proto is model.proto
                    else Model(proto, intra_op_num_threads=args.threads)
                )
                fmaps = method_maps(mm, x, layer, targets, [nm], seed=args.seed, batch=64)[nm]
                if fmaps.shape[1:] == x.shape[2:]:
                    return fmaps
                return refcam.upsample(fmaps, x.shape[2:], mode="linear")

            r = model_randomization_test(
                explain, model.proto, top, mode="cascading", seed=args.seed, progress=False
            )

            def fmt(a):
                return "n/a" if a is None else ", ".join(f"{v:.2f}" for v in a.mean(axis=1))

            lines.append(
                f"| {nm} | {fmt(r.spearman_abs)} | {fmt(r.ssim)} | {fmt(r.hog)} | "
                f"{'passes' if r.passes else 'fails'} |"
            )
            log(f"sanity {nm}: done")
    log(f"wall time {time.time() - t0:.0f} s")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
