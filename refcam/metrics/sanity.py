"""Sanity checks for saliency maps (Adebayo et al. 2018): map similarity and a pass/fail report.

Adebayo et al. randomise a model's parameters (cascading from the top layer down, or one layer at
a time) and compare the explanation of the randomised model with the original one.  A method whose
maps barely change is not explaining the model (it behaves like an edge detector).  The comparison
uses Spearman rank correlation (of the maps and of their absolute values) and SSIM.

This module holds the comparison part (pure NumPy/SciPy).  The randomisation of an ONNX model's
initializers lives in :mod:`refcam.onnx.randomize`, and :func:`model_randomization_test` drives it.

Reference: J. Adebayo, J. Gilmer, M. Muelly, I. Goodfellow, M. Hardt, B. Kim, "Sanity Checks for
Saliency Maps", NeurIPS 2018, arXiv:1810.03292, "model parameter randomization test" (no numbered equations;
Spearman with and without absolute values, SSIM, HOG).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, stats

from .. import _validate as V
from ..errors import InvalidArgumentError, ShapeError
from ._common import minmax01

__all__ = [
    "SanityReport",
    "compare_maps",
    "hog_features",
    "hog_similarity",
    "model_randomization_test",
    "spearman",
    "ssim",
]


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x = V.maps(a, "maps_a")
    y = V.maps(b, "maps_b")
    V.check_same_shape(x, "maps_a", y, "maps_b")
    return x, y


def spearman(maps_a: Any, maps_b: Any, *, absolute: bool = False) -> np.ndarray:
    r"""Spearman rank correlation between two batches of maps, per sample.

    .. math::
        \rho = \frac{\sum_p (R_p - \bar R)(S_p - \bar S)}
                    {\sqrt{\sum_p (R_p - \bar R)^2 \sum_p (S_p - \bar S)^2}}

    with :math:`R, S` the ranks of the flattened maps (ties get their average rank,
    :func:`scipy.stats.rankdata` ``method="average"``); equals :func:`scipy.stats.spearmanr`.
    ``absolute=True`` ranks :math:`|L|` (Adebayo et al. report both).

    **Division guard**: if either map is constant its ranks carry no order, the correlation is
    undefined and refcam returns 0 (masked, not divided).

    Parameters
    ----------
    maps_a, maps_b : (N, *S) arrays of the same shape.
    absolute : bool

    Returns
    -------
    (N,) in [-1, 1], the maps' common floating dtype (ranks are computed in float64).

    Examples
    --------
    >>> spearman([[1.0, 2.0, 3.0]], [[10.0, 30.0, 20.0]])   # ranks (1,2,3) vs (1,3,2)
    array([0.5])
    >>> spearman([[1.0, -3.0]], [[1.0, 3.0]], absolute=True)
    array([1.])
    """
    a, b = _pair(maps_a, maps_b)
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    if absolute:
        a, b = np.abs(a), np.abs(b)
    ra = stats.rankdata(a, axis=1, method="average")
    rb = stats.rankdata(b, axis=1, method="average")
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    ok = den > 0
    return np.where(ok, (ra * rb).sum(axis=1) / np.where(ok, den, 1), 0.0).astype(
        V.result_dtype(a, b)
    )


def ssim(
    maps_a: Any,
    maps_b: Any,
    *,
    data_range: float = 1.0,
    sigma: float = 1.5,
    truncate: float = 3.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    r"""Mean structural similarity (SSIM) per sample (Wang et al. 2004), Gaussian window.

    .. math::
        \mathrm{SSIM}(x, y) = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
                                   {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},
        \qquad C_1 = (K_1 L)^2,\ C_2 = (K_2 L)^2

    (eq. 13; constants eqs. 7 and 9 with :math:`K_1 = 0.01`, :math:`K_2 = 0.03`).  Local statistics
    use the Gaussian window of §III-C (eqs. 14–16, :math:`\sigma = 1.5`, here truncated at
    ``truncate·sigma`` = 5 px, an 11×11 window), population (1/n) moments; the mean SSIM (eq. 17)
    averages over the positions where the window fits entirely (the "valid" region, as Wang's
    reference MATLAB code and ``skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``).  Works for any spatial rank.  :math:`C_1, C_2 > 0`
    keep the ratio finite (they are part of the formula, not an added eps).

    Reference: Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image Quality Assessment: From
    Error Visibility to Structural Similarity", IEEE TIP 13(4):600–612, 2004.  The equation and
    section numbers above are from recollection (the TIP text was not reachable to verify them);
    the implementation is checked numerically against scikit-image.

    Parameters
    ----------
    maps_a, maps_b : (N, *S) arrays of the same shape; every spatial axis ≥ 2·radius+1
        (radius = ``int(truncate*sigma + 0.5)``, 11 by default).
    data_range : float > 0 — :math:`L`, the dynamic range (1 for maps in [0, 1]).
    sigma, truncate : Gaussian window.
    k1, k2 : SSIM constants.

    Returns
    -------
    (N,), the maps' common floating dtype (statistics are computed in float64).

    Examples
    --------
    >>> x = np.linspace(0, 1, 144).reshape(1, 12, 12)
    >>> ssim(x, x)
    array([1.])
    >>> float(ssim(x, 1 - x)[0]) < 0
    True
    """
    a, b = _pair(maps_a, maps_b)
    dt = V.result_dtype(a, b)
    L = V.nonnegative_float(data_range, "data_range")
    if L == 0:
        raise InvalidArgumentError(
            "data_range", data_range, "a positive number (L in C1 = (K1 L)^2)"
        )
    sig = V.nonnegative_float(sigma, "sigma")
    if sig == 0:
        raise InvalidArgumentError("sigma", sigma, "a positive window width")
    tr = V.nonnegative_float(truncate, "truncate")
    radius = int(tr * sig + 0.5)
    side = 2 * radius + 1
    if any(s < side for s in a.shape[1:]):
        raise ShapeError(
            "maps_a",
            a.shape,
            f"every spatial axis >= {side} (the SSIM window)",
            "upsample the maps to the input size first",
        )
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    c1 = (V.nonnegative_float(k1, "k1") * L) ** 2
    c2 = (V.nonnegative_float(k2, "k2") * L) ** 2
    sg = (0.0,) + (sig,) * (a.ndim - 1)

    def filt(z: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(z, sigma=sg, truncate=tr, mode="reflect")

    mu_a, mu_b = filt(a), filt(b)
    va = filt(a * a) - mu_a * mu_a
    vb = filt(b * b) - mu_b * mu_b
    cov = filt(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    crop = (slice(None),) + (slice(radius, -radius if radius else None),) * (a.ndim - 1)
    return s[crop].reshape(a.shape[0], -1).mean(axis=1).astype(dt)


def hog_features(
    maps: Any,
    *,
    orientations: int = 9,
    pixels_per_cell: tuple[int, int] = (8, 8),
    cells_per_block: tuple[int, int] = (3, 3),
) -> np.ndarray:
    r"""Histogram-of-oriented-gradients descriptors of 2-D maps (Dalal & Triggs 2005), per sample.

    The variant of ``skimage.feature.hog`` (defaults: 9 unsigned orientations, 8×8-pixel cells,
    3×3-cell blocks, L2-Hys block normalisation, no gamma compression), reproduced in NumPy:

    1. gradients :math:`g_r = L_{r+1,c} - L_{r-1,c}`, :math:`g_c = L_{r,c+1} - L_{r,c-1}`, zero on
       the border rows/columns;
    2. magnitude :math:`\sqrt{g_r^2 + g_c^2}`, orientation
       :math:`\theta = \mathrm{atan2}(g_r, g_c)` in degrees mod 180, bin
       :math:`b` with :math:`180 b / O \le \theta < 180 (b+1)/O`;
    3. cell histograms: magnitude summed per bin over each whole cell (cells that do not fit are
       dropped), divided by the cell area;
    4. every block of cells (stride one cell) normalised by L2-Hys:
       :math:`v \leftarrow v/\sqrt{\lVert v\rVert_2^2 + \epsilon^2}`, clip at 0.2, renormalise,
       :math:`\epsilon = 10^{-5}` (Dalal & Triggs' constant, part of the descriptor's definition).

    Inherently 2-D.  Reference: N. Dalal, B. Triggs, "Histograms of Oriented Gradients for Human
    Detection", CVPR 2005 (L2-Hys block normalisation; section not verified); used for map similarity by Adebayo
    et al. 2018.

    Parameters
    ----------
    maps : (N, H, W) array, with H, W at least one block.
    orientations, pixels_per_cell, cells_per_block : as in ``skimage.feature.hog``.

    Returns
    -------
    (N, F) float64, ``F = n_blocks_row·n_blocks_col·b_r·b_c·O`` in skimage's ravel order.

    Examples
    --------
    >>> hog_features(np.zeros((1, 16, 16)), pixels_per_cell=(8, 8), cells_per_block=(2, 2)).shape
    (1, 36)
    """
    m = V.maps(maps, "maps")
    if m.ndim != 3:
        raise ShapeError("maps", m.shape, "(N, H, W): HOG is 2-D")
    o = V.positive_int(orientations, "orientations")
    cr, cc = (V.positive_int(v, "pixels_per_cell") for v in pixels_per_cell)
    br, bc = (V.positive_int(v, "cells_per_block") for v in cells_per_block)
    n, h, w = m.shape
    nr, nc = h // cr, w // cc
    if nr < br or nc < bc:
        raise ShapeError(
            "maps", m.shape, f"(N, >= {br * cr}, >= {bc * cc})", "too small for one HOG block"
        )
    x = m.astype(np.float64)
    gr = np.zeros_like(x)
    gc = np.zeros_like(x)
    gr[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    gc[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    mag = np.hypot(gr, gc)[:, : nr * cr, : nc * cc]
    ori = (np.rad2deg(np.arctan2(gr, gc)) % 180)[:, : nr * cr, : nc * cc]
    edges = (180.0 / o) * np.arange(o + 1)
    b = np.clip(np.searchsorted(edges, ori, side="right") - 1, 0, o - 1)
    ni, ri, ci = np.indices(mag.shape)
    cell = ((ni * nr + ri // cr) * nc + ci // cc) * o + b
    hist = np.bincount(cell.ravel(), weights=mag.ravel(), minlength=n * nr * nc * o)
    hist = hist.reshape(n, nr, nc, o) / (cr * cc)
    blocks = np.lib.stride_tricks.sliding_window_view(hist, (br, bc), axis=(1, 2))
    blocks = np.moveaxis(blocks, 3, -1)  # (N, nbr, nbc, br, bc, O)
    eps = 1e-5
    ax = (3, 4, 5)
    v = blocks / np.sqrt((blocks**2).sum(axis=ax, keepdims=True) + eps**2)
    v = np.minimum(v, 0.2)
    v = v / np.sqrt((v**2).sum(axis=ax, keepdims=True) + eps**2)
    return v.reshape(n, -1)


def hog_similarity(maps_a: Any, maps_b: Any, **hog_kwargs: Any) -> np.ndarray:
    r"""Pearson correlation of the HOG descriptors of two batches of 2-D maps (Adebayo et al. 2018).

    .. math::
        r = \frac{\sum_f (h_f - \bar h)(g_f - \bar g)}
                 {\sqrt{\sum_f (h_f - \bar h)^2 \sum_f (g_f - \bar g)^2}}

    with :math:`h, g` = :func:`hog_features` of the two maps.  **Division guard**: a constant
    descriptor (e.g. a flat map) gives 0.

    Examples
    --------
    >>> x = np.linspace(0, 1, 576).reshape(1, 24, 24) ** 2
    >>> hog_similarity(x, 3 * x + 1)
    array([1.])
    """
    a, b = _pair(maps_a, maps_b)
    ha = hog_features(a, **hog_kwargs)
    hb = hog_features(b, **hog_kwargs)
    ha -= ha.mean(axis=1, keepdims=True)
    hb -= hb.mean(axis=1, keepdims=True)
    den = np.sqrt((ha * ha).sum(axis=1) * (hb * hb).sum(axis=1))
    ok = den > 0
    r = np.where(ok, (ha * hb).sum(axis=1) / np.where(ok, den, 1), 0.0)
    return r.astype(V.result_dtype(a, b))


@dataclass(frozen=True)
class SanityReport:
    """Similarity of randomised-model maps to the original maps, and the verdict.

    Attributes
    ----------
    labels : tuple of str — one per randomisation step (e.g. the layers randomised so far).
    mode : str — ``"cascading"``, ``"independent"`` or ``"custom"``.
    spearman : (T, N) — Spearman of the signed maps, per step and sample.
    spearman_abs : (T, N) — Spearman of the absolute maps.
    ssim : (T, N) or None — SSIM of the min-max normalised maps (data range 1); ``None`` when the
        maps are smaller than the 11×11 SSIM window on some axis.
    hog : (T, N) or None — :func:`hog_similarity` of the min-max normalised maps (skimage
        defaults); ``None`` unless the maps are 2-D and at least 24×24 (one 3×3 block of 8-px cells).
    threshold : float — the pass threshold on the mean ``spearman_abs``.
    decisive_step : int — the step the verdict is read at (last step for cascading, the step with
        the lowest mean ``spearman_abs`` otherwise).
    passes : bool — ``mean(spearman_abs[decisive_step]) < threshold``.
    """

    labels: tuple[str, ...]
    mode: str
    spearman: np.ndarray
    spearman_abs: np.ndarray
    ssim: np.ndarray | None
    hog: np.ndarray | None
    threshold: float
    decisive_step: int
    passes: bool

    def to_markdown(self) -> str:
        """A markdown table: one row per step, mean similarities, and the verdict."""
        rows = [
            "| step | randomised | Spearman | Spearman (abs) | SSIM | HOG |",
            "|---|---|---|---|---|---|",
        ]
        for i, lab in enumerate(self.labels):
            ss = "n/a" if self.ssim is None else f"{self.ssim[i].mean():.3f}"
            hg = "n/a" if self.hog is None else f"{self.hog[i].mean():.3f}"
            rows.append(
                f"| {i} | {lab} | {self.spearman[i].mean():.3f} "
                f"| {self.spearman_abs[i].mean():.3f} | {ss} | {hg} |"
            )
        verdict = "PASSES" if self.passes else "FAILS"
        rows.append("")
        rows.append(
            f"{verdict} ({self.mode}): mean Spearman(abs) at step {self.decisive_step} = "
            f"{self.spearman_abs[self.decisive_step].mean():.3f} vs threshold {self.threshold}"
        )
        return "\n".join(rows)


def compare_maps(
    original: Any,
    randomized: Any,
    *,
    labels: Sequence[str] | None = None,
    mode: str = "cascading",
    threshold: float = 0.5,
) -> SanityReport:
    r"""Compare original maps with maps from randomised models (Adebayo et al. 2018).

    For each step :math:`t` and sample :math:`i`: Spearman :math:`\rho(L_i, L_i^{(t)})`, Spearman of
    absolute values :math:`\rho(|L_i|, |L_i^{(t)}|)`, and SSIM and HOG similarity of the per-sample
    min-max normalised maps (constant maps → zeros; data range 1).

    **Verdict** (Adebayo et al. judge visually and give no number; this threshold is refcam's
    documented choice): the method passes when the mean absolute-value Spearman correlation at the
    decisive step is below ``threshold`` (0.5) — the last step for ``"cascading"`` (all listed
    layers randomised), the most-changed step for ``"independent"``/``"custom"``.

    Parameters
    ----------
    original : (N, *S) array.
    randomized : (T, N, *S) array or sequence of T (N, *S) arrays, one per randomisation step.
    labels : T strings, default ``"step 0"``, ...
    mode : {"cascading", "independent", "custom"}
    threshold : float in [0, 1].

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> orig = rng.random((2, 4, 4))
    >>> r = compare_maps(orig, [orig * 2, rng.random((2, 4, 4))], labels=["scaled", "noise"])
    >>> r.spearman_abs[0], r.passes
    (array([1., 1.]), True)
    """
    o = V.maps(original, "original")
    if isinstance(randomized, np.ndarray):
        rnd = (
            [randomized[t] for t in range(randomized.shape[0])]
            if randomized.ndim == o.ndim + 1
            else None
        )
        if rnd is None:
            raise ShapeError("randomized", randomized.shape, f"(T, {', '.join(map(str, o.shape))})")
    else:
        if isinstance(randomized, (str, bytes)) or not hasattr(randomized, "__len__"):
            raise InvalidArgumentError(
                "randomized", type(randomized).__name__, "a sequence of map batches"
            )
        rnd = list(randomized)
    if not rnd:
        raise ShapeError("randomized", (0,), "at least one randomisation step")
    V.choice(mode, "mode", ("cascading", "independent", "custom"))
    th = V.nonnegative_float(threshold, "threshold")
    if labels is None:
        labels = [f"step {t}" for t in range(len(rnd))]
    labels = tuple(str(s) for s in labels)
    if len(labels) != len(rnd):
        raise InvalidArgumentError("labels", len(labels), f"{len(rnd)} labels (one per step)")
    sp, spa, ss, hg = [], [], [], []
    on = minmax01(o)
    do_ssim = all(s >= 11 for s in o.shape[1:])
    do_hog = o.ndim == 3 and min(o.shape[1:]) >= 24
    for t, r in enumerate(rnd):
        rt = V.maps(r, f"randomized[{t}]")
        V.check_same_shape(o, "original", rt, f"randomized[{t}]")
        sp.append(spearman(o, rt))
        spa.append(spearman(o, rt, absolute=True))
        rn = minmax01(rt)
        if do_ssim:
            ss.append(ssim(on, rn))
        if do_hog:
            hg.append(hog_similarity(on, rn))
    spa_arr = np.array(spa)
    means = spa_arr.mean(axis=1)
    step = len(rnd) - 1 if mode == "cascading" else int(np.argmin(means))
    return SanityReport(
        labels,
        mode,
        np.array(sp),
        spa_arr,
        np.array(ss) if do_ssim else None,
        np.array(hg) if do_hog else None,
        th,
        step,
        bool(means[step] < th),
    )


def model_randomization_test(
    explain: Callable[[Any], Any],
    model: Any,
    layers: Sequence[str] | None = None,
    *,
    mode: str = "cascading",
    seed: int = 0,
    randomized: Iterable[tuple[str, Any]] | None = None,
    threshold: float = 0.5,
    progress: bool = True,
) -> SanityReport:
    r"""Model parameter randomisation test (Adebayo et al. 2018): recompute maps, compare, judge.

    ``explain(model) -> maps (N, *S)`` is called once on the original model and once per randomised
    model; :func:`compare_maps` compares the results.

    Parameters
    ----------
    explain : callable model -> (N, *S) maps
        The explanation method with inputs and targets fixed (a closure); it receives ``model`` and
        then each randomised model (ONNX ``ModelProto`` objects when ``randomized`` is ``None``).
    model : the original model.
    layers : sequence of str, optional
        Layers to randomise, **top (output side) first**; ``None`` = every parameterised layer.
        Used only when ``randomized`` is ``None``.
    mode : {"cascading", "independent"}
        Cascading: step :math:`t` randomises ``layers[:t+1]``; independent: only ``layers[t]``.
    seed : int
        Seed of the randomisation.
    randomized : iterable of (label, model), optional
        Ready randomised models (any model type ``explain`` accepts).  Default: the ONNX graph's
        initializers randomised by :func:`refcam.onnx.randomize.randomize_initializers` (imported
        lazily; this module never imports onnx).
    threshold : float — see :func:`compare_maps`.
    progress : bool — tqdm bar over the randomisation steps.

    Returns
    -------
    SanityReport

    Examples
    --------
    >>> gradient = lambda w: np.stack([w, w])     # linear "model" w: its input gradient is w
    >>> w0 = np.linspace(0, 1, 64).reshape(8, 8)
    >>> rnd = [("w", np.random.default_rng(1).normal(size=(8, 8)))]
    >>> r = model_randomization_test(gradient, w0, randomized=rnd, progress=False)
    >>> r.spearman_abs.round(3), r.passes
    (array([[0.053, 0.053]]), True)
    """
    if not callable(explain):
        raise InvalidArgumentError("explain", type(explain).__name__, "a callable model -> maps")
    V.choice(mode, "mode", ("cascading", "independent"))
    if randomized is None:
        from ..onnx.randomize import randomize_initializers  # lazy: only this path needs onnx

        randomized = randomize_initializers(model, layers, mode=mode, seed=seed, lazy=True)
    original = V.maps(explain(model), "explain(model)")
    from tqdm.auto import tqdm

    labels, maps = [], []
    for label, m in tqdm(
        randomized, desc=f"randomisation ({mode})", disable=None if progress else True, leave=False
    ):
        labels.append(str(label))
        maps.append(V.maps(explain(m), f"explain(randomized model {label!r})"))
    return compare_maps(original, maps, labels=labels, mode=mode, threshold=threshold)
