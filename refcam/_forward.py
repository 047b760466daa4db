"""Need providers of the forward-only methods (internal): model runs on masked inputs and on
ablated activations, batched in chunks under a memory budget, with a tqdm progress bar.

No CAM formula lives here: masks, SS-CAM noise, IS-CAM scales and ablation values come from the
math floor; weights and maps are computed by the math floor from the scores returned here.  Each
provider registers itself (:func:`refcam.registry.need`) with the options it reads.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from . import _validate as V
from . import math as M
from ._compare import max_abs_error, within
from .errors import InvalidArgumentError, ModelError, TargetError
from .onnx.model import DEFAULT_MEMORY_BUDGET
from .onnx.override import Override
from .onnx.targets import class_view
from .registry import Context, need

__all__ = [
    "class_probabilities",
    "masked_input_chunks",
    "prefetched",
    "provide_ablated_scores",
    "provide_ablation_base_scores",
    "provide_activations",
    "provide_baseline_scores",
    "provide_class_weights",
    "provide_masked_scores",
    "provide_noisy_masked_scores",
    "provide_scaled_masked_scores",
    "provide_target_scores",
]

_MASK_OPTIONS = ("upsample_mode", "mask_order", "mask_eps", "score")


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
    r"""Softmax over the classes of a classifier output (:func:`refcam.math.softmax` of the
    ``(m, C)`` view, :func:`refcam.onnx.class_view`).

    Examples
    --------
    >>> class_probabilities(np.array([[0.0, np.log(3.0)]]))
    array([[0.25, 0.75]])
    """
    return M.softmax(class_view(outputs), axis=1)


def _score_kind(ctx: Context) -> str:
    """The method's ``score`` option; methods without one (CAM, gradient methods) explain the
    logit ``y^c`` itself."""
    return ctx.options["score"] if "score" in ctx.options else "logit"


def _scores(ctx: Context, outputs: np.ndarray, samples: np.ndarray, score: str) -> np.ndarray:
    """Target scores ``(m, T)`` of output rows computed for ``samples``."""
    if score == "probability" and ctx.targets.classes is not None:
        outputs = class_probabilities(outputs)
    return ctx.targets.scores(outputs, samples)


@need("activations", "layer activations (N, K, *S), channels first")
def provide_activations(ctx: Context) -> np.ndarray:
    fw = ctx.model.forward(
        ctx.inputs,
        [ctx.layer.name],
        batch_size=ctx.batch_size,
        memory_budget=ctx.memory_budget,
        checked=True,
    )
    return fw.activations[ctx.layer.name]


@need("target_scores", "y^c of the unmodified inputs (N, T)")
def provide_target_scores(ctx: Context) -> np.ndarray:
    return _scores(ctx, ctx.outputs, np.arange(len(ctx.inputs)), _score_kind(ctx))


@need("class_weights", "GAP→linear class weights w^c (N, T, K)")
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
#: ``perturb(h, sample, k0, draw) -> masks``: the masks of channels ``k0:k0 + len(h)`` of one
#: sample, for one draw, from the Score-CAM masks ``h`` ``(kc, *S_in)`` of that chunk.
Perturbation = Callable[[np.ndarray, int, int, int], np.ndarray]


def _chunk(ctx: Context, per_item_bytes: int, factor: int, k: int) -> int:
    """Channels per model run: ``memory_budget // (factor × bytes of one item)``, at most
    ``batch_size`` and ``k``."""
    chunk = int(min(k, max(1, _budget(ctx) // (factor * per_item_bytes))))
    if ctx.batch_size is not None:
        chunk = min(chunk, V.positive_int(ctx.batch_size, "batch_size"))
    return chunk


def masked_input_chunks(
    ctx: Context, perturb: Perturbation, draws: int
) -> Iterator[tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]]:
    r"""The masked inputs :math:`X_s \circ \tilde H^k` one channel chunk at a time:
    ``(sample, k0, k1, rows, zero, native inputs (len(rows), ...))`` for every sample, chunk and
    draw: the inputs are those of channels ``k0 + rows``; ``zero`` (``(k1 - k0,)`` booleans) marks
    the channels whose mask is ``+0.0`` everywhere.

    :math:`H^k` = :func:`refcam.math.scorecam_masks` (options ``upsample_mode``, ``mask_order``,
    ``mask_eps``), computed once per chunk and passed to ``perturb`` for each draw.  A chunk holds
    ``memory_budget // (4 × bytes of one input)`` channels (at most ``batch_size``).

    **Identical inputs run once.**  Every channel whose mask is ``+0.0`` everywhere (a constant
    activation channel under the min-max division guard: a dead ReLU channel) has the same masked
    input :math:`X_s \cdot 0`, bit for bit; only the first such channel of each sample (over all
    chunks and draws) is in ``rows``, and :func:`_masked_scores` gives its scores to the others.
    ``-0.0`` or NaN entries make a mask non-zero here (their products differ in bits).
    """
    o = ctx.options
    a = ctx.need("activations")
    x = ctx.model.to_channels_first(ctx.inputs)  # (N, C, *S_in)
    n, k = a.shape[:2]
    size = tuple(x.shape[2:])
    chunk = _chunk(ctx, x[0].nbytes, 4, k)
    for s in range(n):
        zero_sent = False
        for k0 in range(0, k, chunk):
            k1 = min(k, k0 + chunk)
            h = M.scorecam_masks(
                a[s : s + 1, k0:k1],
                size,
                upsample_mode=o["upsample_mode"],
                mask_order=o["mask_order"],
                mask_eps=o["mask_eps"],
            )[0]  # (kc, *S_in)
            for i in range(draws):
                m = perturb(h, s, k0, i)
                flat = m.reshape(len(m), -1)
                zero = ((flat == 0) & ~np.signbit(flat)).all(axis=1)
                keep = ~zero
                if not zero_sent and zero.any():
                    keep[np.argmax(zero)] = zero_sent = True
                rows = np.flatnonzero(keep)
                if len(rows) < len(m):
                    m = m[rows]
                xm = x[s][None] * m[:, None]
                yield s, k0, k1, rows, zero, ctx.model.to_native(xm.astype(ctx.model.input_dtype, copy=False))


_END = object()


def prefetched(items: Iterable[Any]) -> Iterator[Any]:
    """``items`` with the next one computed on a worker thread while the caller uses the current
    one (NumPy and onnxruntime release the GIL): at most two items exist at once."""
    it = iter(items)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next, it, _END)
        while True:
            item = future.result()
            if item is _END:
                return
            future = pool.submit(next, it, _END)
            yield item


def _masked_scores(ctx: Context, perturb: Perturbation, draws: int, desc: str) -> np.ndarray:
    """Target scores of every masked input, ``(N, T, draws, K)``, dtype of the model output.

    The all-zero masks of a sample share one run (:func:`masked_input_chunks`): a ResNet-50 with
    seeded random weights has 5 % dead channels at ``layer4``, i.e. 5 % fewer forwards."""
    model = ctx.model
    n, k = ctx.need("activations").shape[:2]
    out = np.zeros((n, ctx.targets.n_targets, draws, k), dtype=ctx.outputs.dtype)
    i = 0
    bar = _bar(ctx, n * k * draws, desc)
    try:
        zero_scores: dict[int, np.ndarray] = {}  # sample -> scores (T,) of X_s · 0
        for s, k0, k1, rows, zero, xm in prefetched(masked_input_chunks(ctx, perturb, draws)):
            part = out[s, :, i, k0:k1]  # (T, k1 - k0), a view
            if len(rows):
                res = model.run(xm, batch_size=len(rows), checked=True)[model.output_name]
                part[:, rows] = _scores(ctx, res, np.full(len(rows), s), ctx.options["score"]).T
            if zero.any():
                if s not in zero_scores:  # the first zero mask of this sample was run in this chunk
                    zero_scores[s] = part[:, np.argmax(zero)].copy()
                part[:, zero] = zero_scores[s][:, None]
            i = (i + 1) % draws
            bar.update(k1 - k0)
    finally:
        bar.close()
    return out


@need("masked_scores", "f^c(X ∘ H^k) of the masked inputs (N, T, K)", options=_MASK_OPTIONS)
def provide_masked_scores(ctx: Context) -> np.ndarray:
    r"""Score-CAM: :math:`f^c(X \circ H^k)`, ``(N, T, K)`` (Wang et al. 2020, Eq. 6)."""
    return _masked_scores(ctx, lambda h, s, k0, i: h, 1, "score-cam forwards")[:, :, 0]


@need(
    "noisy_masked_scores",
    "f^c(X ∘ (H^k + δ_m)) of the SS-CAM noisy masks (N, T, n_samples, K)",
    options=_MASK_OPTIONS + ("n_samples", "std", "seed"),
)
def provide_noisy_masked_scores(ctx: Context) -> np.ndarray:
    r"""SS-CAM: :math:`f^c(X \circ (H^k + \delta^k_m))`, ``(N, T, n_samples, K)``, with the noise
    :math:`\delta^k_m` of :func:`refcam.math.sscam_noise` ``(seed, sample, k, m)``: element for
    element the masks of :func:`refcam.math.sscam_masks` with the same ``seed``."""
    o = ctx.options
    size = ctx.model.input_spatial_shape(ctx.inputs)

    def noisy(h: np.ndarray, s: int, k0: int, i: int) -> np.ndarray:
        d = np.stack([
            M.sscam_noise(size, std=o["std"], seed=o["seed"], sample=s, channel=kk, draw=i)
            for kk in range(k0, k0 + len(h))
        ])
        return h + d.astype(h.dtype, copy=False)

    return _masked_scores(ctx, noisy, o["n_samples"], "ss-cam forwards")


@need(
    "scaled_masked_scores",
    "f^c(X ∘ γ_i H^k) of the IS-CAM scaled masks (N, T, n_steps, K)",
    options=_MASK_OPTIONS + ("n_steps", "schedule"),
)
def provide_scaled_masked_scores(ctx: Context) -> np.ndarray:
    r"""IS-CAM: :math:`f^c(X \circ \gamma_i H^k)`, ``(N, T, n_steps, K)``, with :math:`\gamma_i`
    = :func:`refcam.math.iscam_scales` ``(n_steps, schedule)``: element for element the masks of
    :func:`refcam.math.iscam_masks`."""
    o = ctx.options
    gammas = M.iscam_scales(o["n_steps"], o["schedule"])

    def scaled(h: np.ndarray, s: int, k0: int, i: int) -> np.ndarray:
        return gammas[i].astype(h.dtype) * h

    return _masked_scores(ctx, scaled, o["n_steps"], "is-cam forwards")


@need(
    "baseline_scores",
    "f^c(X_b) of the Score-CAM baseline (N, T)",
    options=("baseline", "score"),
)
def provide_baseline_scores(ctx: Context) -> np.ndarray:
    """``f^c(X_b)``: ``baseline="zeros"`` runs an all-zero input; ``"input"`` uses the unmasked input."""
    samples = np.arange(len(ctx.inputs))
    if ctx.options["baseline"] == "input":
        return _scores(ctx, ctx.outputs, samples, ctx.options["score"])
    res = ctx.model.run(np.zeros_like(ctx.inputs), checked=True)[ctx.model.output_name]
    return _scores(ctx, res, samples, ctx.options["score"])


# ------------------------------------------------------------------------- Ablation-CAM
def _native_like(ctx: Context) -> np.ndarray | None:
    """The layer's activations in its native layout, batch first: what the head model takes.

    Token layers need them (the prefix tokens are not in the map; Ablation-CAM ablates them too,
    :func:`_ablation_view`); other layouts only need the shape, taken from the map itself.  Sequence-first layers are refused: the
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


def _ablation_runner(ctx: Context) -> Callable[[int, np.ndarray], np.ndarray]:
    """``run(n, B)``: the output tensor with the layer set to the rows of ``B`` (native layout),
    input sample ``n``.  The head model when the graph can be cut at the layer; otherwise (a
    residual stream bypasses the layer, as around ``ln_1`` in a transformer block) the masked
    re-run: the whole model on sample ``n`` with the layer tensor fed from outside
    (:class:`refcam.onnx.override.Override`, what pytorch-grad-cam's ablation layer does)."""
    model = ctx.model
    try:
        head = model.head(ctx.layer)
    except ModelError as cut_error:
        try:
            ov = Override.of(model, ctx.layer.name)
        except ModelError:
            raise cut_error from None
        return lambda n, b: ov.run(ctx.inputs[n : n + 1], b, sample=n)
    return lambda n, b: head.run(b.astype(head.input_dtype, copy=False), batch_size=len(b),
                                 checked=True)[head.output_name]


def _ablation_view(ctx: Context) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """``(V, to_native)``: the activations Ablation-CAM ablates, channels first ``(N, K, *P)``, and
    the map back to the layer's native layout.  Token layers: the native ``(N, T, C)`` as
    ``(N, C, T)``, so channel ``k`` is ablated on every token, prefix tokens included (as
    pytorch-grad-cam's ``AblationLayerVit``); other layers: the map ``A`` itself."""
    lay = ctx.layer.layout
    native = _native_like(ctx)  # refuses a sequence-first layer before anything is run
    if native is not None:
        c = lay.channel_axis
        return np.moveaxis(native, c, 1), lambda b: np.moveaxis(b, 1, c)
    return ctx.need("activations"), lambda b: ctx.model.map_to_layer(ctx.layer, b, None)


@need(
    "ablated_scores",
    "y^c_k with channel k ablated (N, T, K)",
    options=("ablation_value",),
)
def provide_ablated_scores(ctx: Context) -> np.ndarray:
    """``y^c_k``: the network after the layer run on the activations with channel ``k`` set to
    :func:`refcam.math.ablation_values` ``(V, ablation_value)`` (0 in the paper) at every position
    (:func:`refcam.math.ablated_activations`; ``V`` and the run: :func:`_ablation_view`,
    :func:`_ablation_runner`), ``(N, T, K)``; chunks of ``memory_budget // (2 × bytes of one
    activation)`` channels."""
    view, to_native = _ablation_view(ctx)
    run = _ablation_runner(ctx)
    n, k = view.shape[:2]
    values = M.ablation_values(view, ctx.options["ablation_value"])
    chunk = _chunk(ctx, view[0].nbytes, 2, k)
    out = np.zeros((n, ctx.targets.n_targets, k), dtype=np.float64)
    bar = _bar(ctx, n * k, "ablation-cam forwards")
    try:
        for s in range(n):
            for k0 in range(0, k, chunk):
                k1 = min(k, k0 + chunk)
                b = M.ablated_activations(view[s : s + 1], values[s : s + 1, k0:k1], np.arange(k0, k1))[0]
                res = run(s, to_native(b))
                out[s, :, k0:k1] = _scores(ctx, res, np.full(k1 - k0, s), "logit").T
                bar.update(k1 - k0)
    finally:
        bar.close()
    return out.astype(ctx.outputs.dtype)


@need(
    "ablation_base_scores", "y^c from the head model on the unablated activations (N, T)"
)
def provide_ablation_base_scores(ctx: Context) -> np.ndarray:
    """``y^c`` from the same run as ``ablated_scores`` on the unablated activations (same numerics)."""
    view, to_native = _ablation_view(ctx)
    run = _ablation_runner(ctx)
    res = np.concatenate([run(s, to_native(view[s : s + 1])) for s in range(view.shape[0])])
    return _scores(ctx, res, np.arange(view.shape[0]), "logit")
