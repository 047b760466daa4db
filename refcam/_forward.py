"""Need providers of the forward-only methods (internal): model runs on masked inputs and on
ablated activations, batched in chunks under a memory budget, with a tqdm progress bar.

No CAM formula lives here: masks come from the math floor, weights and maps are computed by the
math floor from the scores returned here.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

from . import _validate as V
from . import math as M
from ._compare import max_abs_error, within
from .errors import InvalidArgumentError, ModelError, TargetError
from .onnx.model import DEFAULT_MEMORY_BUDGET
from .onnx.targets import class_view

if TYPE_CHECKING:  # pragma: no cover
    from .methods import Context

__all__ = [
    "class_probabilities",
    "mask_coefficients",
    "provide_ablated_scores",
    "provide_ablation_base_scores",
    "provide_activations",
    "provide_baseline_scores",
    "provide_class_weights",
    "provide_masked_scores",
    "provide_target_scores",
]

SCORES = ("logit", "probability")
BASELINES = (None, "zeros", "input")


def _bar(ctx: Context, total: int, desc: str):
    from tqdm.auto import tqdm

    show = ctx.progress if ctx.progress is not None else sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="forward", disable=not show, leave=False)


def _budget(ctx: Context) -> int:
    return (
        ctx.memory_budget
        if ctx.memory_budget is not None
        else getattr(ctx.model, "memory_budget", DEFAULT_MEMORY_BUDGET)
    )


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    r"""Softmax over the classes of a classifier output, :math:`p_c = e^{y_c - m} / \sum_j e^{y_j - m}`
    with :math:`m = \max_j y_j` (the maximal term is 1, so the sum is >= 1: no division guard needed).

    Parameters
    ----------
    outputs : ``(m, C)`` (or ``(m, C, 1, 1)``) class scores.

    Examples
    --------
    >>> class_probabilities(np.array([[0.0, np.log(3.0)]]))
    array([[0.25, 0.75]])
    """
    y = class_view(outputs)
    e = np.exp(y - y.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _scores(
    ctx: Context, outputs: np.ndarray, samples: np.ndarray, score: str = "logit"
) -> np.ndarray:
    """Target scores ``(m, T)`` of output rows computed for ``samples``."""
    if score == "probability" and ctx.targets.classes is not None:
        outputs = class_probabilities(outputs)
    return ctx.targets.scores(outputs, samples)


def provide_activations(ctx: Context) -> np.ndarray:
    fw = ctx.model.forward(
        ctx.inputs,
        [ctx.layer.name],
        batch_size=ctx.batch_size,
        memory_budget=ctx.memory_budget,
        checked=True,
    )
    return fw.activations[ctx.layer.name]


def provide_target_scores(ctx: Context) -> np.ndarray:
    return _scores(ctx, ctx.outputs, np.arange(len(ctx.inputs)), ctx.options.get("score", "logit"))


def provide_class_weights(ctx: Context) -> np.ndarray:
    """Rows ``w^c`` of the GAP → linear head, ``(N, T, K)``; checks ``y = W gap(A) + b`` numerically."""
    head = ctx.model.linear_head(ctx.layer)  # ModelError first: no GAP -> linear head at all
    if ctx.targets.classes is None:
        raise TargetError(
            "target: CAM needs class-index targets (the rows of the linear layer), not a callable"
        )
    a = ctx.need("activations")
    if head.weight.shape[1] != a.shape[1]:
        raise ModelError(
            f"CAM: the linear layer has {head.weight.shape[1]} inputs, the layer {ctx.layer.name!r} "
            f"has {a.shape[1]} channels"
        )
    y = M.gap(a.astype(np.float64)) @ head.weight.T + (0 if head.bias is None else head.bias)
    out = class_view(ctx.outputs).astype(np.float64)
    # NaN-aware (refcam._compare): a NaN in the model output or the head is a mismatch, never a pass
    if not within(y, out, atol=1e-3, rtol=1e-3):
        raise ModelError(
            f"CAM: the head found after {ctx.layer.name!r} ({head.nodes}) does not reproduce the "
            f"model output (max deviation {max_abs_error(y, out) if y.shape == out.shape else 'shape'})"
        )
    ctx.arrays["linear_bias"] = head.bias
    # the graph stores the weights in the activations' precision: keep the activations' dtype
    return head.weight[ctx.targets.classes].astype(a.dtype)


# ------------------------------------------------------------------------- Score-CAM family
def mask_coefficients(variant: str, n_samples: int, scales: str = "accumulated") -> np.ndarray:
    r"""Mask scales of one masked-scores variant: :func:`refcam.math.iscam_scales` ``(n_samples,
    scales)`` for IS-CAM (``variant="integrate"``; the math floor is the single implementation of
    the schedule and documents its source), ``[1.0]`` for Score-CAM and SS-CAM.

    >>> mask_coefficients("integrate", 4)
    array([0.25, 0.75, 1.5 , 2.5 ])
    >>> mask_coefficients("integrate", 4, "linear")
    array([0.25, 0.5 , 0.75, 1.  ])
    >>> mask_coefficients("plain", 4)
    array([1.])
    """
    if variant != "integrate":
        return np.ones(1)
    return M.iscam_scales(n_samples, scales)


def provide_masked_scores(ctx: Context) -> np.ndarray:
    r"""Mean target score of the masked inputs, ``(N, T, K)``.

    Score-CAM: :math:`f^c(X \circ H^k)`; SS-CAM: :math:`\frac1n\sum_i f^c(X \circ (H^k + \delta_i))`,
    :math:`\delta_i \sim N(0, \sigma^2)` per pixel (seeded per sample, channel and draw, so the
    numbers do not depend on the chunking); IS-CAM: :math:`\frac1n\sum_i f^c(X \circ \gamma_i H^k)`
    with :math:`\gamma_i` = :func:`refcam.math.iscam_scales` (the masked input is
    ``X * (γ_i H^k)``, element for element the masks of :func:`refcam.math.iscam_masks`).

    Masked inputs are built one channel chunk at a time, the next chunk on a worker thread while
    onnxruntime runs the current one (NumPy and onnxruntime release the GIL).  At most two chunks
    exist at once: the chunk is ``memory_budget // (4 × bytes of one input)``.
    """
    from concurrent.futures import ThreadPoolExecutor

    o = ctx.options
    model = ctx.model
    a = ctx.need("activations")
    x = model.to_channels_first(ctx.inputs)  # (N, C, *S_in)
    n, k = a.shape[:2]
    size = tuple(x.shape[2:])
    variant = o.get("variant", "plain")
    nsamp = V.positive_int(o.get("n_samples", 1), "n_samples") if variant != "plain" else 1
    sigma = V.nonnegative_float(o.get("sigma", 0.0), "sigma")
    seed = o.get("seed", 0)
    coeffs = mask_coefficients(variant, nsamp, o.get("scales", "accumulated"))
    draws = nsamp if variant == "noise" else len(coeffs)
    score = o.get("score", "logit")
    chunk = int(min(k, max(1, _budget(ctx) // (4 * x[0].nbytes))))
    if ctx.batch_size is not None:
        chunk = min(chunk, V.positive_int(ctx.batch_size, "batch_size"))
    items = [
        (s, k0, min(k, k0 + chunk), i)
        for s in range(n)
        for k0 in range(0, k, chunk)
        for i in range(draws)
    ]
    last: dict = {}

    def prepare(item: tuple[int, int, int, int]) -> np.ndarray:
        s, k0, k1, i = item
        if last.get("key") != (s, k0):  # masks of this chunk, reused by every draw
            last["key"] = (s, k0)
            last["h"] = M.scorecam_masks(
                a[s : s + 1, k0:k1],
                size,
                upsample_mode=o["upsample_mode"],
                order=o["mask_order"],
                eps=o["mask_eps"],
            )[0]  # (kc, *S_in)
        h = last["h"]
        if variant == "noise":
            noise = np.stack(
                [
                    np.random.default_rng([seed, s, kk, i]).standard_normal(size)
                    for kk in range(k0, k1)
                ]
            )
            h = h + (sigma * noise).astype(h.dtype, copy=False)
        elif variant == "integrate":
            h = h * h.dtype.type(coeffs[i])
        return model.to_native((x[s][None] * h[:, None]).astype(model.input_dtype, copy=False))

    out = np.zeros((n, ctx.targets.n_targets, k), dtype=np.float64)
    bar = _bar(ctx, n * k * draws, f"{variant if variant != 'plain' else 'score'}-cam forwards")
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(prepare, items[0])
            for j, (s, k0, k1, _) in enumerate(items):
                xm = future.result()
                if j + 1 < len(items):
                    future = pool.submit(prepare, items[j + 1])
                res = model.run(xm, batch_size=k1 - k0, checked=True)[model.output_name]
                del xm
                out[s, :, k0:k1] += _scores(ctx, res, np.full(k1 - k0, s), score).T
                bar.update(k1 - k0)
    finally:
        bar.close()
    return (out / draws).astype(
        ctx.outputs.dtype
    )  # model precision (float32 scores -> float32 maps)


def provide_baseline_scores(ctx: Context) -> np.ndarray:
    """``f^c(X_b)``: ``baseline="zeros"`` runs an all-zero input; ``"input"`` uses the unmasked input."""
    b = ctx.options.get("baseline")
    score = ctx.options.get("score", "logit")
    if b == "input":
        return _scores(ctx, ctx.outputs, np.arange(len(ctx.inputs)), score)
    if b == "zeros":
        res = ctx.model.run(np.zeros_like(ctx.inputs), checked=True)[ctx.model.output_name]
        return _scores(ctx, res, np.arange(len(ctx.inputs)), score)
    raise ModelError(f"baseline: got {b!r}")  # validated earlier; unreachable


# ------------------------------------------------------------------------- Ablation-CAM
def _native_like(ctx: Context) -> np.ndarray | None:
    """The layer's activations in its native layout, batch first: what the head model takes.

    Token layers need them (the prefix tokens are not in the map and are fed unchanged); other
    layouts only need the shape, taken from the map itself.  Sequence-first layers are refused: the
    head model runs its batch on axis 0."""
    lay = ctx.layer.layout
    if lay is not None and lay.batch_axis not in (None, 0):
        raise InvalidArgumentError(
            "layer", ctx.layer.name, f"a batch-first layer for {ctx.method!r} (the layer is "
            f"{lay.describe()}: the head model cut there runs its batch on axis 0); pick the "
            "batch-first tensor next to it"
        )
    if lay is not None and lay.is_tokens:
        return ctx.model.run(ctx.inputs, [ctx.layer.name], checked=True,
                             batch_size=ctx.batch_size)[ctx.layer.name]
    return None


def provide_ablated_scores(ctx: Context) -> np.ndarray:
    """``y^c_k``: the head model (graph cut at the layer) run on the activations with channel ``k``
    set to ``ablation_value`` (0 in the paper), ``(N, T, K)``; chunks of ``memory_budget // (2 ×
    bytes of one activation)`` channels."""
    model = ctx.model
    head = model.head(ctx.layer)
    a = ctx.need("activations")
    native = _native_like(ctx)
    n, k = a.shape[:2]
    value = float(ctx.options.get("ablation_value", 0.0))
    chunk = int(min(k, max(1, _budget(ctx) // (2 * a[0].nbytes))))
    if ctx.batch_size is not None:
        chunk = min(chunk, V.positive_int(ctx.batch_size, "batch_size"))
    out = np.zeros((n, ctx.targets.n_targets, k), dtype=np.float64)
    bar = _bar(ctx, n * k, "ablation-cam forwards")
    try:
        for s in range(n):
            for k0 in range(0, k, chunk):
                k1 = min(k, k0 + chunk)
                b = np.repeat(a[s : s + 1], k1 - k0, axis=0)
                b[np.arange(k1 - k0), np.arange(k0, k1)] = value
                res = head.run(
                    model.map_to_layer(
                        ctx.layer, b, None if native is None else np.repeat(native[s : s + 1], k1 - k0, 0)
                    )
                    .astype(head.input_dtype, copy=False),
                    batch_size=k1 - k0,
                    checked=True,
                )[head.output_name]
                out[s, :, k0:k1] = _scores(ctx, res, np.full(k1 - k0, s)).T
                bar.update(k1 - k0)
    finally:
        bar.close()
    return out.astype(ctx.outputs.dtype)


def provide_ablation_base_scores(ctx: Context) -> np.ndarray:
    """``y^c`` from the head model on the unablated activations (same numerics as ``ablated_scores``)."""
    model = ctx.model
    head = model.head(ctx.layer)
    a = ctx.need("activations")
    native = model.map_to_layer(ctx.layer, a, _native_like(ctx))
    res = head.run(native.astype(head.input_dtype, copy=False), checked=True)[head.output_name]
    return _scores(ctx, res, np.arange(a.shape[0]))
