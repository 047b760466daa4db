r"""Maps of many classes in one pass: ``refcam.explain(..., target="all")`` or one list of classes
per image (internal; :func:`refcam.explain` dispatches here).

For a layer followed by a global-average-pooling → linear head
:math:`y^c = \sum_k w^c_k \frac{1}{Z}\sum_{ij} A^k_{ij} + b^c`, every class map is a linear
function of the same activations, so the maps of all requested classes come from **one** matrix
product of the activations ``(N, K, *S)`` with the rows of the head ``(C, K)``:

* **CAM** (Zhou et al. 2016, Sec. 2): :math:`M_c = \sum_k w^c_k A^k`.
* **Grad-CAM** (Selvaraju et al. 2017, Eqs. 1-2): on that head the gradient is exact and constant,
  :math:`\partial y^c / \partial A^k_{ij} = w^c_k / Z`, so Eq. 1 gives
  :math:`\alpha^c_k = \frac{1}{Z}\sum_{ij} w^c_k / Z = w^c_k / Z` and Eq. 2
  :math:`L^c = \mathrm{ReLU}(\sum_k \alpha^c_k A^k) = \mathrm{ReLU}(M_c) / Z` — no backward run.

The head is found in the graph (:meth:`refcam.onnx.Model.linear_head`) and checked numerically
(``W gap(A) + b`` must reproduce the model output, NaN-aware) before any map is returned.

**Any other head** (and every method computed from the activations and the layer gradients:
Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, ...): the gradients
:math:`\partial y^c/\partial A` are backpropagated **through the head only** (the sub-model
layer → logits, :meth:`refcam.onnx.Model.head`), with the activations repeated once per requested
class and the seeds of all those classes stacked in one batched VJP run
(:func:`refcam.autodiff.gradients`), in blocks of classes under the memory budget; the backbone
runs forward once.  Other methods (Score-CAM, input-gradient methods, ...) and CAM on a head that is
not GAP → linear are refused with :class:`~refcam.errors.InvalidArgumentError` /
:class:`~refcam.errors.ModelError`.

Conventions
-----------
* ``target="all"``: ``T = C`` maps per image, ``targets[n] = 0 … C-1``.
* a sequence of ``N`` class lists (a CSV of multi-label images): ``T = `` the longest list; shorter
  lists are **padded**: target ``-1``, score NaN, map NaN (never a silent zero map).
* Maps are computed in float64 and returned in the activations' dtype (as :func:`refcam.explain`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import math as M
from ._compare import max_abs_error, within
from .errors import InvalidArgumentError, ModelError, TargetError
from .onnx.targets import class_view

__all__ = ["ALL", "SUPPORTED", "class_sets", "explain_classes", "wants_class_sets"]

#: the ``target`` value asking for every class of the output
ALL = "all"
#: methods computed here (one matrix product with the head weights)
SUPPORTED = ("cam", "gradcam")


def wants_class_sets(target: Any) -> bool:
    """``target == "all"``, or a sequence whose entries are class lists (one list per image)."""
    if isinstance(target, str):
        return target == ALL
    if isinstance(target, (list, tuple)) and len(target) > 0:
        return all(isinstance(t, (list, tuple, np.ndarray)) for t in target)
    return False


def class_sets(target: Any, n: int, n_classes: int) -> np.ndarray:
    """``(N, T)`` int64 class indices, ``-1`` = padding (see the module conventions).

    >>> class_sets([[2], [0, 1]], 2, 3)
    array([[ 2, -1],
           [ 0,  1]])
    """
    if isinstance(target, str):
        if target != ALL:
            raise TargetError(f"target: got {target!r}, expected 'all' or class indices")
        return np.tile(np.arange(n_classes, dtype=np.int64), (n, 1))
    if len(target) != n:
        raise TargetError(f"target: got {len(target)} class lists for a batch of {n} images")
    rows = []
    for i, row in enumerate(target):
        vals = list(np.asarray(row).ravel()) if isinstance(row, np.ndarray) else list(row)
        for c in vals:
            if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
                raise TargetError(f"target[{i}]: got {c!r}, expected int class indices")
            if not -n_classes <= int(c) < n_classes:
                raise TargetError(
                    f"target[{i}]: class {int(c)} is out of range for an output with "
                    f"{n_classes} classes"
                )
        if not vals:
            raise TargetError(f"target[{i}]: an empty class list (nothing to explain)")
        rows.append([int(c) % n_classes for c in vals])
    t = max(len(r) for r in rows)
    out = np.full((n, t), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def explain_classes(
    meth: Any,
    m: Any,
    x: np.ndarray,
    li: Any,
    target: Any,
    opts: dict,
    *,
    batch_size: int | None,
    memory_budget: int | None,
):
    r"""The :class:`refcam.Explanation` of ``meth`` (CAM or Grad-CAM) for every class requested by
    ``target`` (``"all"`` or per-image class lists), from one product
    ``(N, K, *S) × (U, K) → (N, U, *S)`` over the ``U`` distinct classes requested.

    Raises
    ------
    InvalidArgumentError : a method other than ``cam`` / ``gradcam``, or Grad-CAM with a gradient
        source other than ``"vjp"``.
    ModelError : the layer is not followed by a GAP → linear head reproducing the output.
    """
    from .explanation import Explanation

    layer_gradient = (meth.layered and set(meth.needs) <= {"activations", "gradients"}
                      and "gradients" in meth.needs)
    if meth.name not in SUPPORTED and not layer_gradient:
        raise InvalidArgumentError(
            "target", target if isinstance(target, str) else "per-image class lists",
            f"a single class / TopK / (N, T) array for {meth.name!r}: all classes in one pass are "
            "computed for 'cam' (GAP → linear head) and the methods of the activations and layer "
            "gradients (gradcam, gradcampp, xgradcam, layercam, hirescam, ...)",
        )
    if "gradients" in meth.needs and opts.get("gradient_source") != "vjp":
        raise InvalidArgumentError(
            "gradient_source", opts.get("gradient_source"),
            "'vjp' with target='all' / class lists (exact gradients of the head)",
        )
    try:
        head = m.linear_head(li) if meth.name in SUPPORTED else None
    except ModelError as exc:
        if meth.name == "gradcam":
            head = None  # any other head: backpropagation through the head
        else:
            raise ModelError(
                f"{exc} — CAM of all classes in one pass needs a GAP → linear head after the "
                "layer; on other heads use gradcam (gradients through the head) or explain one "
                "class at a time"
            ) from None
    if head is None:
        return _through_head(meth, m, x, li, target, opts, batch_size=batch_size,
                             memory_budget=memory_budget)
    fw = m.forward(x, [li], batch_size=batch_size, memory_budget=memory_budget, checked=True)
    outputs, a = fw.outputs, fw.activations[li.name]
    logits = class_view(outputs).astype(np.float64)
    w = np.asarray(head.weight, dtype=np.float64)  # (C, K)
    if w.shape[1] != a.shape[1]:
        raise ModelError(
            f"{meth.name}: the linear layer has {w.shape[1]} inputs, the layer {li.name!r} has "
            f"{a.shape[1]} channels"
        )
    bias = 0.0 if head.bias is None else np.asarray(head.bias, dtype=np.float64)
    a64 = a.astype(np.float64)
    y = M.gap(a64) @ w.T + bias
    if y.shape != logits.shape or not within(y, logits, atol=1e-3, rtol=1e-3):
        raise ModelError(
            f"{meth.name}: the head found after {li.name!r} ({head.nodes}) does not reproduce the "
            f"model output (max deviation "
            f"{max_abs_error(y, logits) if y.shape == logits.shape else 'shape'})"
        )
    classes = class_sets(target, len(x), w.shape[0])
    wanted = np.unique(classes[classes >= 0])  # U distinct classes, sorted
    # one product: M_u = Σ_k w^u_k A^k for every requested class u   (N, U, *S)
    maps_u = np.einsum("nk...,uk->nu...", a64, w[wanted], optimize=True)
    if meth.name == "gradcam":
        z = int(np.prod(a.shape[2:]))  # Z: number of positions
        maps_u = maps_u / z  # α^c_k = w^c_k / Z
    if opts["relu"]:
        maps_u = np.maximum(maps_u, 0.0)
    pos = np.searchsorted(wanted, np.where(classes >= 0, classes, wanted[0]))
    pad = classes < 0
    rows = np.arange(len(x))[:, None]
    maps = maps_u[rows, pos]  # (N, T, *S)
    maps[pad] = np.nan
    scores = logits[rows, np.where(pad, 0, classes)]
    scores[pad] = np.nan
    maps = maps.astype(a.dtype, copy=False)
    out = maps[:, 0] if maps.shape[1] == 1 else maps
    arrays = {"activations": a, "linear_weights": head.weight, "linear_bias": head.bias,
              "target_scores": scores}
    return Explanation(
        maps=out, method=meth.name, layer=li, targets=classes, scores=scores, outputs=outputs,
        options=opts, arrays=arrays, input_size=m.input_spatial_shape(x),
    )


def _through_head(meth, m, x, li, target, opts, *, batch_size, memory_budget):
    r"""Layer-gradient methods for many classes: :math:`\partial y^c/\partial A` from VJP runs of
    the head (layer → output) on the activations repeated once per class of a block, the block's
    class seeds stacked in one batch; the method's map from the registry's ``compute``."""
    from .autodiff import gradients
    from .explanation import Explanation
    from .onnx.model import DEFAULT_MEMORY_BUDGET
    from .registry import Context

    lay = li.layout
    if lay is not None and (lay.batch_axis not in (None, 0) or lay.is_tokens):
        raise InvalidArgumentError(
            "layer", li.name, f"a batch-first spatial map for target='all' / class lists (the "
            f"layer is {lay.describe()})"
        )
    fw = m.forward(x, [li], batch_size=batch_size, memory_budget=memory_budget, checked=True)
    outputs, a = fw.outputs, fw.activations[li.name]
    logits = class_view(outputs)
    classes = class_sets(target, len(x), logits.shape[1])
    wanted = np.unique(classes[classes >= 0])
    head = m.head(li)
    native = m.map_to_layer(li, a).astype(head.input_dtype, copy=False)
    n = len(x)
    budget = memory_budget if memory_budget is not None else getattr(m, "memory_budget",
                                                                      DEFAULT_MEMORY_BUDGET)
    # a block of ub classes holds ~4 copies of (N·ub) activations (inputs, gradients, float64 maps)
    ub = int(max(1, min(len(wanted), budget // max(1, 4 * n * a[0].nbytes))))
    maps = np.full(classes.shape + a.shape[2:], np.nan, dtype=np.float64)
    ctx = Context(m, x, li, outputs, None, opts, batch_size, memory_budget, False,
                  {"activations": a}, method=meth.name)
    for u0 in range(0, len(wanted), ub):
        us = wanted[u0 : u0 + ub]
        rep = np.repeat(native, len(us), axis=0)  # row n·len(us) + j: sample n, class us[j]
        seeds = np.tile(us, n)[:, None]  # (N·ub, 1): one seed per row, all classes in one run
        r = gradients(head, rep, wrt="input", target=seeds, batch_size=batch_size)
        g = m._as_map(li.name, r.gradients[head.input_name][:, 0])  # (N·ub, K, *S)
        ctx.arrays["gradients"] = g.reshape((n, len(us)) + a.shape[1:]).astype(a.dtype, copy=False)
        for j, u in enumerate(us):
            mu = meth.compute(ctx, j)  # (N, *S)
            hit = classes == u
            maps[hit] = np.broadcast_to(mu[:, None], classes.shape + mu.shape[1:])[hit]
    del ctx.arrays["gradients"]
    pad = classes < 0
    rows = np.arange(n)[:, None]
    scores = logits.astype(np.float64)[rows, np.where(pad, 0, classes)]
    scores[pad] = np.nan
    maps = maps.astype(a.dtype, copy=False)
    return Explanation(
        maps=maps[:, 0] if maps.shape[1] == 1 else maps, method=meth.name, layer=li,
        targets=classes, scores=scores, outputs=outputs, options=opts,
        arrays={"activations": a, "target_scores": scores}, input_size=m.input_spatial_shape(x),
    )
