r"""Conventions as knobs: render a CAM under any documented convention, and name the knob that differs.

The CAM libraries disagree with the papers on a small, documented set of conventions.  This
module spells each one out as a **knob** of a frozen :class:`Setting`, renders the map of any
setting with :mod:`refcam.math` functions only (:func:`render`), and searches the knob space
for the setting that explains a function's outputs (:func:`search`).  :mod:`refcam.conformance`
uses it to say *why* a function differs from the paper: "Grad-CAM++ (eq. 19) with eps = 1e-6 added
to the α denominator -- pytorch-grad-cam's convention".

Knobs (``Setting`` field = the name used on every floor where the floor has it):

=================  ===========================================================================
knob               values
=================  ===========================================================================
``relu``           ReLU on the raw map (the method's ``relu=``)
``eps``            additive eps of the method's division: Grad-CAM++ α denominator
                   (``gradcampp(eps=)``), XGrad-CAM :math:`\sum A` (``xgradcam(eps=)``); fitted
``alpha``          Grad-CAM++ α: ``"closed-form"`` (eq. 19), ``"squared-only"`` (the cubic term
                   dropped: :math:`g^2/(2g^2)`), ``"torchcam"`` (:math:`g^2`, torchcam 0.5.0's lost
                   division), ``"authors"`` (eq. 19 then :math:`\alpha/\sum_{ij}\alpha` per channel,
                   the authors' TensorFlow code)
``spatial``        Grad-CAM weights: ``"mean"`` (eq. 1, :math:`1/Z`) or ``"sum"`` over positions
``center``         Eigen-CAM: centre the channels before the SVD
``sign``           Eigen-CAM sign rule: ``"sum"``, ``"max-abs"`` or ``"none"`` (LAPACK's sign)
``softmax``        Score-CAM: channel softmax of the scores (``True``) or the logits (``False``)
``score``          Score-CAM (model mode): the model's score ``"logit"`` or ``"probability"``
``baseline``       Score-CAM (model mode): score subtracted: ``None``/``"input"``/``"zeros"``
``upsample_mode``  Score-CAM (model mode): mask upsampling, a :func:`refcam.math.upsample` mode
``mask_order``     Score-CAM (model mode): ``"upsample-then-normalize"`` or the reverse
``mask_eps``       Score-CAM (model mode): additive eps of the mask min-max; fitted
``ablation_value`` Ablation-CAM (model mode): ``0.0`` (paper) or ``"pgc"`` (min - 1e7, compounding)
``normalize``      per-sample min-max of the map
``normalize_eps``  additive eps of that min-max denominator; fitted
``renormalize``    pytorch-grad-cam: ReLU + min-max (same eps) again after resizing/fusion
``upsample``       resize to the input: ``None``, ``"linear"`` (half-pixel), ``"linear-align-corners"``,
                   ``"nearest"`` (torch legacy)
``order``          ``"normalize-then-upsample"`` or ``"upsample-then-normalize"``
=================  ===========================================================================

The search is small and exact: discrete knobs are enumerated (one knob changed, then two);
continuous ones (the eps knobs) are fitted by 1-D root finding (:func:`scipy.optimize.brentq`)
on the element where the function and the setting differ most, then snapped to one significant
digit when that also explains every case.

Examples
--------
>>> import numpy as np
>>> s = Setting("gradcampp", relu=True, eps=1e-6)
>>> describe_changes(s, Setting("gradcampp", relu=True))
['eps = 1e-06 added to the α denominator']
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import math as _m
from ._compare import errors as _errors, within as _within

__all__ = ["Setting", "KNOBS", "render", "knob_variants", "describe_changes", "formula",
           "search", "Explanation", "changed_knobs", "EPS_KNOBS"]

#: Knob names (fields of :class:`Setting` other than ``method``).
#: Formula knobs first, then the map's ReLU, then post-processing (the order of a diagnosis).
KNOBS: tuple[str, ...] = ("alpha", "eps", "spatial", "center", "sign", "softmax", "score", "baseline",
                          "upsample_mode", "mask_order", "mask_eps", "ablation_value", "relu", "normalize",
                          "normalize_eps", "renormalize", "upsample", "order")
#: The continuous knobs (fitted, not enumerated).
EPS_KNOBS: tuple[str, ...] = ("eps", "mask_eps", "normalize_eps")

ALPHA_VARIANTS = ("closed-form", "squared-only", "torchcam", "authors")
SIGN_RULES = ("sum", "max-abs", "none")
UPSAMPLE_MODES = ("linear", "linear-align-corners", "nearest")
ORDERS = ("normalize-then-upsample", "upsample-then-normalize")
BASELINES = (None, "input", "zeros")

_GRADIENT = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "gradcam_elementwise",
             "eigengradcam")


@dataclass(frozen=True)
class Setting:
    """One point of the convention space of a method (see the module docstring for each knob)."""

    method: str
    relu: bool = True
    alpha: str = "closed-form"
    eps: float = 0.0
    spatial: str = "mean"
    center: bool = False
    sign: str = "sum"
    softmax: bool = False
    baseline: str | None = "zeros"
    score: str = "logit"
    upsample_mode: str = "linear"
    mask_order: str = "upsample-then-normalize"
    mask_eps: float = 0.0
    ablation_value: float | str = 0.0
    normalize: bool = False
    normalize_eps: float = 0.0
    renormalize: bool = False
    upsample: str | None = None
    order: str = "upsample-then-normalize"

    def replace(self, **changes: Any) -> "Setting":
        return dataclasses.replace(self, **changes)

    @property
    def stage(self) -> str:
        """``"raw"`` (feature resolution, no scaling), ``"min-max"`` or ``"upsampled"``."""
        if self.upsample is not None:
            return "upsampled"
        return "min-max" if self.normalize else "raw"


def _relevant(method: str, model_mode: bool, upsampled: bool) -> tuple[str, ...]:
    """The knobs that can change ``method``'s map (others are fixed at their default)."""
    k = ["relu"]
    if method == "gradcampp":
        k += ["alpha", "eps"]
    if method == "xgradcam":
        k += ["eps"]
    if method == "gradcam":
        k += ["spatial"]
    if method in ("eigencam", "eigengradcam"):
        k += ["center", "sign"]
    if method == "scorecam":
        k += ["softmax"]
        if model_mode:
            k += ["score", "baseline", "upsample_mode", "mask_order", "mask_eps"]
    if method == "ablationcam" and model_mode:
        k += ["ablation_value"]
    k += ["normalize", "normalize_eps", "renormalize"]
    if upsampled:
        k += ["upsample", "order"]
    return tuple(k)


def changed_knobs(a: Setting, b: Setting) -> tuple[str, ...]:
    """Knobs whose values differ between ``a`` and ``b`` (irrelevant combinations skipped:
    ``normalize_eps`` when neither normalises, ``order`` unless both normalise and upsample)."""
    out = []
    for k in KNOBS:
        va, vb = getattr(a, k), getattr(b, k)
        if va == vb:
            continue
        if k == "normalize_eps" and not (a.normalize and b.normalize):
            continue
        if k == "order" and not (a.normalize and b.normalize and a.upsample and b.upsample):
            continue
        if k == "eps" and a.method == "gradcampp" and "torchcam" in (a.alpha, b.alpha):
            continue                           # torchcam's α has no division
        out.append(k)
    return tuple(out)


# --------------------------------------------------------------------------- rendering

def _sum_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def _gradcampp_weights(s: Setting, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    r"""Grad-CAM++ weights :math:`w_k = \sum_{ij} \alpha_{ij} \mathrm{ReLU}(g_{ij})` per α variant."""
    axes = _sum_axes(g)
    if s.alpha == "closed-form":
        return _m.gradcampp_weights(a, g, eps=s.eps)
    g2 = g * g
    if s.alpha == "torchcam":                              # α = g² (the division never lands)
        alpha = g2
    elif s.alpha == "squared-only":                        # α = g² / (2 g² + eps), 0 where g = 0
        den = 2 * g2 + s.eps
        alpha = np.divide(g2, den, out=np.zeros_like(g2), where=(g != 0) & (den != 0))
    else:                                                  # authors: eq. 19, then α / Σ_ij α
        sa = a.sum(axis=axes, keepdims=True)
        den = 2 * g2 + sa * g2 * g + s.eps
        alpha = np.where(den != 0, np.divide(g2, den, out=np.zeros_like(g2), where=den != 0), g2)
        tot = alpha.sum(axis=axes, keepdims=True)
        alpha = np.divide(alpha, tot, out=np.zeros_like(alpha), where=tot != 0)
    return (alpha * np.maximum(g, 0)).sum(axis=axes)


def raw_map(s: Setting, case: Mapping[str, Any], input_size: Sequence[int] | None = None) -> np.ndarray:
    """The map of ``s.method`` at feature resolution, before any scaling (ReLU per ``s.relu``).

    ``case`` holds the arrays (``activations``, ``gradients``, ``class_weights``, ``scores``,
    ``baseline_score``) and, in model mode, ``model``/``inputs``/``targets`` (Score-CAM and
    Ablation-CAM then compute their scores from the model with the setting's masks/ablation).
    """
    m = s.method
    a = case["activations"]
    g = case.get("gradients")
    if m == "cam":
        out = _m.cam(a, case["class_weights"], relu=False)
    elif m == "gradcam":
        w = g.mean(axis=_sum_axes(g)) if s.spatial == "mean" else g.sum(axis=_sum_axes(g))
        out = _m.weighted_sum(a, w)
    elif m == "gradcampp":
        out = _m.weighted_sum(a, _gradcampp_weights(s, a, g))
    elif m == "xgradcam":
        out = _m.xgradcam(a, g, relu=False, eps=s.eps)
    elif m in ("layercam", "hirescam", "gradcam_elementwise"):
        out = getattr(_m, m)(a, g, relu=False)
    elif m == "eigencam":
        out = _m.eigencam(a, center=s.center, sign="sum" if s.sign == "none" else s.sign)
    elif m == "eigengradcam":
        out = _m.eigengradcam(a, g, center=s.center, sign="sum" if s.sign == "none" else s.sign)
    elif m == "scorecam":
        if "model" in case:
            model, x, t = case["model"], case["inputs"], case["targets"]
            cache = case.setdefault("_cache", {})          # the forward passes, per mask convention
            key = ("masked", s.upsample_mode, s.mask_order, s.mask_eps, s.score)
            if key not in cache:
                masks = _m.scorecam_masks(a, x.shape[2:], upsample_mode=s.upsample_mode,
                                          mask_order=s.mask_order, mask_eps=s.mask_eps)
                cache[key] = model.masked_scores(x, masks, t, s.score)
            bkey = ("base", s.baseline, s.score)
            if bkey not in cache:
                cache[bkey] = (None if s.baseline is None else model.target_scores(
                    x if s.baseline == "input" else np.zeros_like(x), t, s.score))
            w = _m.scorecam_weights(cache[key], cache[bkey], softmax=s.softmax)
        else:
            w = _m.scorecam_weights(case["scores"], None, softmax=s.softmax)
        out = _m.weighted_sum(a, w)
    elif m == "ablationcam":
        if "model" in case:
            model, x, t = case["model"], case["inputs"], case["targets"]
            cache = case.setdefault("_cache", {})
            if ("ablated", s.ablation_value) not in cache:
                cache[("ablated", s.ablation_value)] = (model.ablated_scores(x, t, s.ablation_value),
                                                       model.target_scores(x, t))
            out = _m.ablationcam(a, *cache[("ablated", s.ablation_value)], relu=False)
        else:
            out = _m.ablationcam(a, case["scores"], case["baseline_score"], relu=False)
    else:
        raise KeyError(m)
    return _m.relu(out) if s.relu else out


def postprocess(s: Setting, raw: np.ndarray, input_size: Sequence[int] | None) -> np.ndarray:
    """Scaling and resizing of a raw map per the setting (see the module docstring)."""
    def norm(x: np.ndarray) -> np.ndarray:
        return _m.normalize(x, "minmax", eps=s.normalize_eps) if s.normalize else x

    def up(x: np.ndarray) -> np.ndarray:
        if s.upsample is None or input_size is None:
            return x
        return _m.upsample(x, tuple(input_size), s.upsample)

    out = up(norm(raw)) if s.order == "normalize-then-upsample" else norm(up(raw))
    if s.renormalize:
        out = _m.normalize(_m.relu(out), "minmax", eps=s.normalize_eps)
    return out


def render(s: Setting, case: Mapping[str, Any], input_size: Sequence[int] | None = None,
           got: np.ndarray | None = None) -> np.ndarray:
    """The map of ``case`` under setting ``s`` (raw map, then :func:`postprocess`).

    With ``sign="none"`` (Eigen-CAM without a sign rule) the sign of the projection is not a
    function of the input: the sign of each sample is chosen to agree best with ``got`` (the
    map of the function under test), so the setting means "up to the per-sample sign".
    """
    with np.errstate(all="ignore"):                 # overflow -> Inf -> a failed comparison
        return _render(s, case, input_size, got)


def _render(s: Setting, case: Mapping[str, Any], input_size: Sequence[int] | None,
            got: np.ndarray | None) -> np.ndarray:
    if input_size is None and "inputs" in case:      # model mode: the case's own input size
        input_size = case["inputs"].shape[2:]
    if s.method in ("eigencam", "eigengradcam") and s.sign == "none":
        plain = s.replace(relu=False)
        p = raw_map(plain, case, input_size)
        outs = []
        for q in (p, -p):
            outs.append(postprocess(s, _m.relu(q) if s.relu else q, input_size))
        if got is None:
            return outs[0]
        pick = []
        for i in range(p.shape[0]):
            e0 = _errors(got[i], outs[0][i])[0]
            e1 = _errors(got[i], outs[1][i])[0]
            pick.append(outs[1][i] if e1 < e0 else outs[0][i])
        return np.stack(pick)
    return postprocess(s, raw_map(s, case, input_size), input_size)


# --------------------------------------------------------------------------- the search

def knob_variants(s: Setting, knob: str, upsampled: bool) -> list[Setting]:
    """Settings with one discrete ``knob`` of ``s`` changed (eps knobs: only switched off)."""
    cur = getattr(s, knob)
    if knob in ("relu", "center", "softmax", "renormalize"):
        vals: Iterable[Any] = [not cur]
    elif knob == "alpha":
        vals = ALPHA_VARIANTS
    elif knob == "spatial":
        vals = ("mean", "sum")
    elif knob == "sign":
        vals = SIGN_RULES
    elif knob == "baseline":
        vals = BASELINES
    elif knob == "score":
        vals = ("logit", "probability")
    elif knob in ("upsample_mode",):
        vals = UPSAMPLE_MODES
    elif knob == "mask_order":
        vals = ("upsample-then-normalize", "normalize-then-upsample")
    elif knob == "ablation_value":
        vals = (0.0, "pgc")
    elif knob == "normalize":
        vals = [not cur]
    elif knob == "upsample":
        vals = UPSAMPLE_MODES if upsampled else ()
    elif knob == "order":
        vals = ORDERS if (s.normalize and s.upsample) else ()
    elif knob in EPS_KNOBS:
        vals = (0.0,) if cur else ()
    else:
        vals = ()
    out = []
    for v in vals:
        if v == cur:
            continue
        t = s.replace(**{knob: v})
        if knob == "normalize" and not v:
            t = t.replace(renormalize=False, normalize_eps=0.0)
        out.append(t)
    return out


@dataclass
class Explanation:
    """A setting that explains every case of the function, and where it came from."""

    setting: Setting
    base: str                     # the candidate it was derived from
    changes: tuple[str, ...]      # knobs changed from the base candidate
    max_abs_error: float


def _eps_target(s: Setting, knob: str) -> bool:
    m = s.method
    if knob == "eps":
        return m == "xgradcam" or (m == "gradcampp" and s.alpha in ("closed-form", "squared-only",
                                                                      "authors"))
    if knob == "mask_eps":
        return m == "scorecam"
    if knob == "normalize_eps":
        return s.normalize
    return False


def _snap(x: float) -> float:
    """``x`` rounded to one significant digit (1.02e-6 -> 1e-6)."""
    if x <= 0:
        return 0.0
    e = np.floor(np.log10(x))
    return float(np.round(x / 10 ** e) * 10 ** e)


def fit_eps(s: Setting, knob: str, cases: Sequence[Mapping[str, Any]], gots: Sequence[np.ndarray],
            input_size: Sequence[int] | None, ok: Callable[[Setting], bool]) -> Setting | None:
    r"""Fit the additive eps ``knob`` by 1-D root finding on the worst element, then verify.

    The element :math:`(c, p)` where the function and ``s`` (eps = 0) differ most gives
    :math:`h(\log_{10}\varepsilon) = \mathrm{render}_\varepsilon(c)_p - \mathrm{got}(c)_p`; a
    sign change is bracketed on a grid from 1e-12 to 1 and refined with ``brentq``.  The
    fitted value is snapped to one significant digit when the snapped value also passes
    ``ok`` (every case within tolerance); otherwise the raw root is kept if it passes.
    """
    from scipy.optimize import brentq

    base = s.replace(**{knob: 0.0})
    worst, worst_err = None, 0.0
    for i, (c, g) in enumerate(zip(cases, gots)):
        r = render(base, c, input_size, g)
        if r.shape != g.shape:
            return None
        d = np.abs(np.asarray(g, np.float64) - r)
        d[~np.isfinite(d)] = 0
        if d.size and d.max() > worst_err:
            worst_err, worst = float(d.max()), (i, np.unravel_index(int(np.argmax(d)), d.shape))
    if worst is None:
        return None
    i, idx = worst
    target = float(gots[i][idx])

    def h(log_e: float) -> float:
        return float(render(s.replace(**{knob: float(10.0 ** log_e)}), cases[i], input_size, gots[i])[idx]) - target

    grid = np.linspace(-12, 0, 49)
    vals = [h(x) for x in grid]
    roots = []
    for x0, x1, v0, v1 in zip(grid[:-1], grid[1:], vals[:-1], vals[1:]):
        if v0 == 0:
            roots.append(x0)
        elif np.sign(v0) != np.sign(v1) and np.isfinite(v0) and np.isfinite(v1):
            roots.append(brentq(h, x0, x1, xtol=1e-12))
    for r in roots:
        e = float(10.0 ** r)
        for cand in (_snap(e), e):
            t = s.replace(**{knob: cand})
            if ok(t):
                return t
    return None


def search(
    bases: Mapping[str, Setting],
    cases: Sequence[Mapping[str, Any]],
    gots: Sequence[np.ndarray],
    *,
    input_size: Sequence[int] | None,
    model_mode: bool,
    atol: float,
    rtol: float,
    max_changes: int = 2,
) -> list[Explanation]:
    """Settings within ``max_changes`` knobs of a base candidate that explain every case.

    Returns the explanations found at the smallest number of changes (one knob before two),
    sorted by error; empty when none.
    """
    cache: dict[Setting, bool] = {}
    order = list(range(len(cases)))

    def ok(t: Setting) -> bool:
        if t in cache:
            return cache[t]
        res = True
        for j, i in enumerate(order):
            try:
                r = render(t, cases[i], input_size, gots[i])
            except Exception:                  # a setting the arrays cannot take: not an explanation
                res = False
                break
            if not _within(gots[i], r, atol=atol, rtol=rtol):
                res = False
                if j:                           # the failing case first next time (early exit)
                    order.insert(0, order.pop(j))
                break
        cache[t] = res
        return res

    def err(t: Setting) -> float:
        return max(_errors(g, render(t, c, input_size, g))[0] for c, g in zip(cases, gots))

    def neighbours(s: Setting, upsampled: bool, done: tuple[str, ...]):
        for knob in _relevant(s.method, model_mode, upsampled):
            if knob in done:
                continue
            for t in knob_variants(s, knob, upsampled):
                yield knob, t
            if knob in EPS_KNOBS and _eps_target(s, knob):
                yield knob, ("fit", knob)

    found: dict[Setting, Explanation] = {}
    for depth in range(max_changes + 1):
        for name, base in bases.items():
            upsampled = base.upsample is not None
            frontier = [(base, ())]
            for _ in range(depth):
                nxt = []
                for s, done in frontier:
                    if isinstance(s, tuple):
                        continue
                    for knob, t in neighbours(s, upsampled, done):
                        if isinstance(t, tuple):
                            # fits are tried only as the last change (they need the others set)
                            nxt.append(((s, knob), done + (knob,)))
                        else:
                            nxt.append((t, done + (knob,)))
                frontier = nxt
            for s, done in frontier:
                if isinstance(s, tuple):
                    s0, knob = s
                    t = fit_eps(s0, knob, cases, gots, input_size, ok)
                    if t is None:
                        continue
                    s = t
                elif not ok(s):
                    continue
                if s in found:
                    continue
                found[s] = Explanation(s, name, done, 0.0)
        if found:
            break
    out = list(found.values())
    for e in out:
        e.max_abs_error = err(e.setting)
    out.sort(key=lambda e: (len(e.changes), e.max_abs_error))
    return out


# --------------------------------------------------------------------------- words

METHOD_NAMES = {
    "cam": "CAM (Zhou et al. 2016, eq. 2)", "gradcam": "Grad-CAM (Selvaraju et al. 2017, eq. 1-2)",
    "gradcampp": "Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19)",
    "xgradcam": "XGrad-CAM (Fu et al. 2020, eq. 13)", "layercam": "LayerCAM (Jiang et al. 2021, eq. 5-6)",
    "hirescam": "HiResCAM (Draelos & Carin 2020)", "gradcam_elementwise": "element-wise Grad-CAM",
    "eigencam": "Eigen-CAM (Muhammad & Yeasin 2020)", "eigengradcam": "Eigen-Grad-CAM",
    "scorecam": "Score-CAM (Wang et al. 2020, eq. 6-10)", "ablationcam": "Ablation-CAM (Desai & Ramaswamy 2020)",
}

_ALPHA_WORDS = {
    "closed-form": "the closed-form α of eq. 19",
    "squared-only": "α = g²/(2g²) (the cubic term Σ A g³ of eq. 19 dropped)",
    "torchcam": "α = g² (the division of eq. 19 lost: torchcam 0.5.0's in-place division of a copy)",
    "authors": "α of eq. 19 divided by Σ_ij α per channel (the authors' TensorFlow code)",
}
_UP_WORDS = {"linear": "bilinear half-pixel (torch align_corners=False, OpenCV INTER_LINEAR)",
             "linear-align-corners": "bilinear align-corners (torch align_corners=True)",
             "nearest": "nearest (torch legacy 'nearest')", None: "no resizing"}

#: Where a knob's difference shows (the "where it matters" of the diagnosis).
WHERE = {
    "relu": "where the map Σ_k w_k A^k is negative",
    "eps": "where the divisor is small (Grad-CAM++: where 2g² + Σ A g³ ≲ eps, i.e. |g| ≲ √eps; "
           "XGrad-CAM: where Σ A ≲ eps)",
    "alpha": "wherever Σ_ab A_ab g_ij is not ≪ 2",
    "spatial": "on the raw map's scale (a factor Z = number of positions; invisible after min-max)",
    "center": "where channels have a large mean",
    "sign": "where the first singular vector's sign is not fixed by the input (about half of the cases)",
    "softmax": "everywhere (softmax compresses the weights' range)",
    "score": "where the target class's probability saturates (softmax compresses logit differences)",
    "baseline": "on the weights' offset (visible without the channel softmax)",
    "upsample_mode": "near the borders of the masks (align-corners stretches the grid)",
    "mask_order": "where channel ranges differ between feature and input resolution",
    "mask_eps": "where a channel's range is ≲ eps",
    "ablation_value": "at layers whose minimum is not 0 (the ablated value is min - 1e7, compounding)",
    "normalize": "on the scale of the map",
    "normalize_eps": "where the map's range is ≲ eps",
    "renormalize": "where the first min-max left the maximum below 1",
    "upsample": "between feature-map pixel centres and at the borders",
    "order": "where scaling and resizing do not commute (min/max between pixel centres)",
}


def describe_change(knob: str, new: Setting, ref: Setting) -> str:
    """One knob's difference, in words (``new`` vs the reference ``ref``)."""
    v = getattr(new, knob)
    if knob == "relu":
        return "a ReLU on the map" if v else "no ReLU on the map"
    if knob == "eps":
        where = "the α denominator" if new.method == "gradcampp" else "the Σ A denominator"
        return f"eps = {v:g} added to {where}" if v else f"no eps in {where} (exact division)"
    if knob == "alpha":
        return _ALPHA_WORDS[v]
    if knob == "spatial":
        return "weights summed over positions instead of averaged (×Z)" if v == "sum" else "weights averaged over positions"
    if knob == "center":
        return "channels centred before the SVD" if v else "channels not centred before the SVD"
    if knob == "sign":
        return {"none": "no sign rule (the SVD's arbitrary sign)", "sum": "sign rule: positive sum",
                "max-abs": "sign rule: largest |value| positive"}[v]
    if knob == "softmax":
        return "channel softmax of the scores" if v else "raw scores (no softmax)"
    if knob == "score":
        return ("scores are the class probabilities softmax(logits)_c" if v == "probability"
                else "scores are the raw logits")
    if knob == "baseline":
        return {None: "no baseline score subtracted", "input": "the unmasked input's score subtracted",
                "zeros": "the black image's score subtracted"}[v]
    if knob == "upsample_mode":
        return f"masks upsampled {_UP_WORDS[v]}"
    if knob == "mask_order":
        return "masks min-max scaled at feature resolution, then upsampled" if v == "normalize-then-upsample" \
            else "masks upsampled, then min-max scaled"
    if knob == "mask_eps":
        return f"eps = {v:g} added to the mask min-max denominator"
    if knob == "ablation_value":
        return "ablated channels set to min(A) - 1e7, compounding (pytorch-grad-cam)" if v == "pgc" \
            else f"ablated channels set to {v:g}"
    if knob == "normalize":
        return "min-max scaled" if v else "not scaled"
    if knob == "normalize_eps":
        return f"min-max with eps = {v:g} added to the denominator" if v else "min-max without eps"
    if knob == "renormalize":
        return "ReLU and min-max applied a second time" if v else "min-max once"
    if knob == "upsample":
        return f"upsampled {_UP_WORDS[v]}" + (f" instead of {_UP_WORDS[ref.upsample]}" if ref.upsample else "")
    if knob == "order":
        return "scaled before resizing" if v == "normalize-then-upsample" else "resized before scaling"
    return f"{knob} = {v!r}"  # pragma: no cover


def knob_values(s: Setting, model_mode: bool = False) -> dict[str, Any]:
    """The knobs that matter for ``s.method`` and their values in ``s``."""
    out = {}
    for k in _relevant(s.method, model_mode, s.upsample is not None):
        if k == "normalize_eps" and not s.normalize:
            continue
        if k == "eps" and s.method == "gradcampp" and s.alpha == "torchcam":
            continue
        if k == "order" and not s.normalize:
            continue
        out[k] = getattr(s, k)
    return out


def describe_changes(new: Setting, ref: Setting) -> list[str]:
    """Every knob difference of ``new`` from ``ref``, in words."""
    return [describe_change(k, new, ref) for k in changed_knobs(new, ref)]


def formula(s: Setting) -> str:
    """The map the setting computes, in plain text (one line per step)."""
    m = s.method
    lines = []

    def relu(x: str) -> str:
        return f"ReLU({x})" if s.relu else x
    if m == "gradcampp":
        num_den = {"closed-form": "g² / (2g² + Σ_ab A_ab g³" + (f" + {s.eps:g})" if s.eps else ")"),
                   "squared-only": "g² / (2g²" + (f" + {s.eps:g})" if s.eps else ")"),
                   "torchcam": "g²",
                   "authors": "a / Σ_ij a,  a = g² / (2g² + Σ_ab A_ab g³" + (f" + {s.eps:g})" if s.eps else ")")}
        lines.append(f"α_ij = {num_den[s.alpha]};  w_k = Σ_ij α_ij ReLU(g_ij)")
        lines.append(f"M = {relu('Σ_k w_k A^k')}")
    elif m == "gradcam":
        lines.append(("w_k = (1/Z) Σ_ij g_ij" if s.spatial == "mean" else "w_k = Σ_ij g_ij")
                     + f";  M = {relu('Σ_k w_k A^k')}")
    elif m == "xgradcam":
        lines.append("w_k = Σ_ij A_ij g_ij / (Σ_ab A_ab" + (f" + {s.eps:g})" if s.eps else ")")
                     + f";  M = {relu('Σ_k w_k A^k')}")
    elif m in ("eigencam", "eigengradcam"):
        o = "A" if m == "eigencam" else "A ⊙ g"
        lines.append(f"O = {o} as (positions × channels)" + (", channels centred" if s.center else "")
                     + f";  M = {relu('O v_1')}, sign rule: {s.sign}")
    elif m == "scorecam":
        w = "softmax_k(C_k)" if s.softmax else "C_k"
        lines.append(f"w_k = {w};  M = {relu('Σ_k w_k A^k')}")
        if s.baseline or s.upsample_mode:
            lines.append(f"C_k = f(X ∘ H^k)" + {None: "", "input": " - f(X)", "zeros": " - f(0)"}[s.baseline]
                         + f";  H^k = {s.mask_order} ({s.upsample_mode}" + (f", eps {s.mask_eps:g})" if s.mask_eps else ")"))
    elif m == "ablationcam":
        lines.append(f"w_k = (y - y_k) / y;  M = {relu('Σ_k w_k A^k')};  ablation value: {s.ablation_value}")
    elif m == "cam":
        lines.append(f"M = {relu('Σ_k w^c_k A^k')}")
    else:
        lines.append(f"M = {relu(m + ' map')}")
    post = []
    norm = ("min-max" + (f" (x - min)/(max - min + {s.normalize_eps:g})" if s.normalize_eps else "")) if s.normalize else None
    up = None if s.upsample is None else f"resize to the input, {s.upsample}"
    steps = [norm, up] if s.order == "normalize-then-upsample" else [up, norm]
    post = [p for p in steps if p]
    if s.renormalize:
        post.append("ReLU, min-max again")
    if post:
        lines.append("then " + " → ".join(post))
    return "\n".join(lines)
