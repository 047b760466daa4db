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

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import math as M
from ._compare import max_abs_error, within
from .errors import InvalidArgumentError, ModelError, ShapeError, TargetError
from .onnx.targets import class_view

__all__ = ["ALL", "SUPPORTED", "ClassChunk", "class_sets", "explain_classes", "explain_classes_into",
           "explain_many", "iter_class_maps", "wants_class_sets"]

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


class _ClassMaps:
    r"""The state shared by every block of classes: one forward run of the backbone (outputs and
    the layer's activations ``(N, K, *S)``), the head (GAP → linear weights, or the sub-model
    layer → logits), and :meth:`blocks` computing the maps of any block of classes."""

    def __init__(self, meth, m, x, li, target, opts, *, batch_size, memory_budget):
        from .onnx.model import DEFAULT_MEMORY_BUDGET

        self.m, self.x, self.li = m, x, li
        self.batch_size, self.memory_budget = batch_size, memory_budget
        self.budget = memory_budget if memory_budget is not None else getattr(
            m, "memory_budget", DEFAULT_MEMORY_BUDGET)
        self._set_method(meth, target, opts)
        fw = m.forward(x, [li], batch_size=batch_size, memory_budget=memory_budget, checked=True)
        self.outputs, self.a = fw.outputs, fw.activations[li.name]
        self.logits = class_view(self.outputs)
        self.n_classes = self.logits.shape[1]
        self._bind_head()

    def with_method(self, meth, target, opts) -> _ClassMaps:
        """The same forward run (outputs, activations) for another method: no model run."""
        c = copy.copy(self)
        c._set_method(meth, target, opts)
        c._bind_head()
        return c

    def _set_method(self, meth, target, opts) -> None:
        m, li = self.m, self.li
        layer_gradient = (meth.layered and set(meth.needs) <= {"activations", "gradients"}
                          and "gradients" in meth.needs)
        if meth.name not in SUPPORTED and not layer_gradient:
            raise InvalidArgumentError(
                "target", target if isinstance(target, str) else "per-image class lists",
                f"a single class / TopK / (N, T) array for {meth.name!r}: all classes in one pass "
                "are computed for 'cam' (GAP → linear head) and the methods of the activations "
                "and layer gradients (gradcam, gradcampp, xgradcam, layercam, hirescam, ...)",
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
                    "layer; on other heads use gradcam (gradients through the head) or explain "
                    "one class at a time"
                ) from None
        if head is None:
            lay = li.layout
            if lay is not None and (lay.batch_axis not in (None, 0) or lay.is_tokens):
                raise InvalidArgumentError(
                    "layer", li.name, f"a batch-first spatial map for target='all' / class lists "
                    f"(the layer is {lay.describe()})"
                )
        self.meth, self.opts, self.head = meth, opts, head

    def _bind_head(self) -> None:
        """The head weights ``(C, K)`` and the float64 activations, checked: ``W gap(A) + b``
        must reproduce the model output (NaN-aware) before any map is computed from them."""
        head, meth, li = self.head, self.meth, self.li
        if head is None or getattr(self, "bound", None) is head:
            return
        w = np.asarray(head.weight, dtype=np.float64)  # (C, K)
        if w.shape[1] != self.a.shape[1]:
            raise ModelError(
                f"{meth.name}: the linear layer has {w.shape[1]} inputs, the layer "
                f"{li.name!r} has {self.a.shape[1]} channels"
            )
        bias = 0.0 if head.bias is None else np.asarray(head.bias, dtype=np.float64)
        if getattr(self, "a64", None) is None:
            self.a64 = self.a.astype(np.float64)
        self.w = w
        y = M.gap(self.a64) @ w.T + bias
        lg = self.logits.astype(np.float64)
        if y.shape != lg.shape or not within(y, lg, atol=1e-3, rtol=1e-3):
            raise ModelError(
                f"{meth.name}: the head found after {li.name!r} ({head.nodes}) does not "
                f"reproduce the model output (max deviation "
                f"{max_abs_error(y, lg) if y.shape == lg.shape else 'shape'})"
            )
        self.bound = head

    def default_block(self) -> int:
        """Classes per block: the float64 maps of a block (and, through the head, ~4 copies of the
        repeated activations) stay under the memory budget."""
        n, per = len(self.x), int(np.prod(self.a.shape[2:]))
        if self.head is not None:
            return int(max(1, self.budget // max(1, 2 * n * per * 8)))
        return int(max(1, self.budget // max(1, 4 * n * self.a[0].nbytes)))

    def blocks(self, wanted: np.ndarray, block: int):
        """Yield ``(us, maps_u)`` over blocks of ``block`` classes of ``wanted``: ``maps_u`` the
        float64 maps ``(N, len(us), *S)`` of the classes ``us``."""
        for u0 in range(0, len(wanted), block):
            us = wanted[u0 : u0 + block]
            yield us, (self._product(us) if self.head is not None else self._through_head(us))

    def _product(self, us: np.ndarray) -> np.ndarray:
        # one product: M_u = Σ_k w^u_k A^k for every requested class u   (N, U, *S)
        maps_u = np.einsum("nk...,uk->nu...", self.a64, self.w[us], optimize=True)
        if self.meth.name == "gradcam":
            maps_u = maps_u / int(np.prod(self.a.shape[2:]))  # α^c_k = w^c_k / Z
        return np.maximum(maps_u, 0.0) if self.opts["relu"] else maps_u

    def _through_head(self, us: np.ndarray) -> np.ndarray:
        r""":math:`\partial y^c/\partial A` from one VJP run of the head (layer → output) on the
        activations repeated once per class of the block, the class seeds stacked in one batch; the
        method's map from the registry's ``compute``."""
        from .autodiff import gradients
        from .registry import Context

        m, li, a, n = self.m, self.li, self.a, len(self.x)
        head = m.head(li)
        native = m.map_to_layer(li, a).astype(head.input_dtype, copy=False)
        rep = np.repeat(native, len(us), axis=0)  # row n·len(us) + j: sample n, class us[j]
        seeds = np.tile(us, n)[:, None]  # (N·ub, 1): one seed per row, all classes in one run
        r = gradients(head, rep, wrt="input", target=seeds, batch_size=self.batch_size)
        g = m._as_map(li.name, r.gradients[head.input_name][:, 0])  # (N·ub, K, *S)
        ctx = Context(m, self.x, li, self.outputs, None, self.opts, self.batch_size,
                      self.memory_budget, False, {"activations": a}, method=self.meth.name)
        ctx.arrays["gradients"] = g.reshape((n, len(us)) + a.shape[1:]).astype(a.dtype, copy=False)
        out = np.empty((n, len(us)) + a.shape[2:], dtype=np.float64)
        for j in range(len(us)):
            out[:, j] = self.meth.compute(ctx, j)  # (N, *S)
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
    r"""The :class:`refcam.Explanation` of ``meth`` for every class requested by ``target``
    (``"all"`` or per-image class lists): on a GAP → linear head one product
    ``(N, K, *S) × (U, K) → (N, U, *S)`` over the ``U`` distinct classes requested; otherwise VJP
    runs of the head in blocks of classes (see the module docstring).

    Raises
    ------
    InvalidArgumentError : a method other than ``cam`` / a layer-gradient method, or a gradient
        source other than ``"vjp"``.
    ModelError : CAM on a layer not followed by a GAP → linear head reproducing the output.
    """
    cm = _ClassMaps(meth, m, x, li, target, opts, batch_size=batch_size,
                    memory_budget=memory_budget)
    return _assemble(cm, target)


def _assemble(cm: _ClassMaps, target: Any):
    """The Explanation of ``cm``'s method for the classes of ``target`` (all, or class lists)."""
    from .explanation import Explanation

    a, x, meth, m = cm.a, cm.x, cm.meth, cm.m
    classes = class_sets(target, len(x), cm.n_classes)
    wanted = np.unique(classes[classes >= 0])  # U distinct classes, sorted
    block = len(wanted) if cm.head is not None else cm.default_block()
    maps_u = np.concatenate([mu for _, mu in cm.blocks(wanted, block)], axis=1)
    pos = np.searchsorted(wanted, np.where(classes >= 0, classes, wanted[0]))
    pad = classes < 0
    rows = np.arange(len(x))[:, None]
    maps = maps_u[rows, pos]  # (N, T, *S)
    del maps_u
    maps[pad] = np.nan
    scores = cm.logits.astype(np.float64)[rows, np.where(pad, 0, classes)]
    scores[pad] = np.nan
    maps = maps.astype(a.dtype, copy=False)
    out = maps[:, 0] if maps.shape[1] == 1 else maps
    arrays = {"activations": a, "target_scores": scores}
    if cm.head is not None:
        arrays.update(linear_weights=cm.head.weight, linear_bias=cm.head.bias)
    return Explanation(
        maps=out, method=meth.name, layer=cm.li, targets=classes, scores=scores,
        outputs=cm.outputs, options=cm.opts, arrays=arrays, input_size=m.input_spatial_shape(x),
    )


def explain_many(m: Any, x: np.ndarray, li: Any, jobs: list, *, batch_size: int | None = None,
                 memory_budget: int | None = None) -> list:
    r"""Several ``(method, target, options)`` jobs on **one** forward run of the model.

    Every job is computed as :func:`explain_classes` computes it — on a GAP → linear head CAM
    :math:`M_c = \sum_k w^c_k A^k` and Grad-CAM :math:`\mathrm{ReLU}(M_c)/Z` (exact: the head's
    gradient is :math:`w^c_k/Z`); on another head, Grad-CAM from VJP runs of the head — from the
    same activations :math:`A`.  A target ``None`` (top-1), a class index, :class:`TopK` or an
    ``(N, T)`` array is first resolved against the model output (:func:`resolve_targets`: top-1 is
    the first maximum) and turned into one class list per image.  Methods: ``cam``, ``gradcam``
    and the layer-gradient methods (as :func:`explain_classes`).

    Returns one :class:`refcam.Explanation` per job (maps ``(N, *S)`` when one class per image).
    """
    from .methods import get_method
    from .onnx.targets import resolve_targets

    cm, out = None, []
    for method, target, options in jobs:
        meth = get_method(method)
        opts = meth.resolve(options)
        if not meth.targeted or not meth.layered:
            raise InvalidArgumentError("method", meth.name, "a class-targeted layer method")
        cm = (_ClassMaps(meth, m, x, li, target, opts, batch_size=batch_size,
                         memory_budget=memory_budget) if cm is None
              else cm.with_method(meth, target, opts))
        if not wants_class_sets(target):
            tg = resolve_targets(target, cm.outputs)
            if tg.classes is None:
                raise InvalidArgumentError("target", target, "class indices (None, an int, TopK, "
                                           "an array) for jobs sharing one forward run")
            target = tg.classes.tolist()
        out.append(_assemble(cm, target))
    return out


# ------------------------------------------------------------------------------ streaming
@dataclass(frozen=True)
class ClassChunk:
    """One block of classes of :func:`iter_class_maps`: ``classes`` ``(U_b,)``, ``maps``
    ``(N, U_b, *S)`` (the activations' dtype), ``scores`` ``(N, U_b)`` float64 (:math:`y^c`)."""

    classes: np.ndarray
    maps: np.ndarray
    scores: np.ndarray


def _class_maps(model, inputs, method, layer, classes, layout, batch_size, memory_budget,
                options):
    from .methods import get_method
    from .onnx import load

    meth = get_method(method)
    m = load(model) if layout is None else load(model, layout=layout)
    meth.check_needs()
    opts = meth.resolve(options)
    x = m.check_inputs(inputs)
    if not meth.layered or not meth.targeted:
        raise InvalidArgumentError("method", meth.name, "a class-targeted layer method (cam, "
                                   "gradcam, gradcampp, xgradcam, layercam, hirescam, ...)")
    li = m.spatial_layer(layer)
    cm = _ClassMaps(meth, m, x, li, ALL, opts, batch_size=batch_size,
                    memory_budget=memory_budget)
    if isinstance(classes, str):
        wanted = class_sets(classes, 1, cm.n_classes)[0]
    else:
        wanted = class_sets([list(classes)], 1, cm.n_classes)[0]
    return cm, wanted


def iter_class_maps(
    model: Any,
    inputs: Any,
    method: str = "gradcam",
    *,
    layer: Any = None,
    classes: Any = ALL,
    chunk: int | None = None,
    layout: str | None = None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    **options: Any,
):
    r"""The maps of many classes, in blocks of ``chunk`` classes, with bounded memory.

    The backbone runs forward **once**; each block then costs one product with the head weights
    (CAM / Grad-CAM on a GAP → linear head) or one batched VJP run of the head, exactly as
    ``refcam.explain(..., target="all")`` (whose result equals the blocks concatenated along
    axis 1), but only one block of maps is alive at a time: memory is the activations
    ``(N, K, *S)`` (and their float64 copy) plus ``N · chunk · prod(S)`` float64 numbers, instead
    of the ``(N, C, *S)`` result.

    Parameters
    ----------
    model, inputs, method, layer, layout, batch_size, memory_budget, **options :
        as :func:`refcam.explain`.
    classes : ``"all"`` or a sequence of class indices (the same for every image), in the order
        of the blocks.
    chunk : classes per block; default: as many as fit the memory budget (64 MiB by default).

    Yields
    ------
    ClassChunk
    """
    cm, wanted = _class_maps(model, inputs, method, layer, classes, layout, batch_size,
                             memory_budget, options)
    block = cm.default_block() if chunk is None else chunk
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise InvalidArgumentError("chunk", chunk, "classes per block, an integer >= 1")
    logits = cm.logits.astype(np.float64)
    for u0 in range(0, len(wanted), int(block)):
        us = wanted[u0 : u0 + int(block)]
        # blocks() sorts nothing: the classes come in the order asked
        _, mu = next(cm.blocks(us, len(us)))
        yield ClassChunk(us.copy(), mu.astype(cm.a.dtype, copy=False), logits[:, us])


def explain_classes_into(
    out: Any,
    model: Any,
    inputs: Any,
    method: str = "gradcam",
    *,
    classes: Any = ALL,
    chunk: int | None = None,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Write the maps of ``classes`` into ``out[:, j]`` block by block (:func:`iter_class_maps`)
    and return ``(classes (U,), scores (N, U))``.

    ``out`` is any array with slice assignment and shape ``(N, U, *S)``: a :class:`numpy.memmap`,
    a Zarr or HDF5 array, or a NumPy array.  Memory as in :func:`iter_class_maps`; the result
    equals ``refcam.explain(model, inputs, method, target="all").maps`` (for ``classes="all"``).
    """
    done, scores, j = [], [], 0
    for ch in iter_class_maps(model, inputs, method, classes=classes, chunk=chunk, **kwargs):
        if j == 0:
            want = (ch.maps.shape[0], None) + ch.maps.shape[2:]
            shape = tuple(getattr(out, "shape", ()))
            if len(shape) != len(want) or shape[0] != want[0] or shape[2:] != want[2:]:
                raise ShapeError("out", shape, f"(N, U, *S) = ({want[0]}, U, "
                                 f"{', '.join(map(str, want[2:]))})")
        k = ch.maps.shape[1]
        if j + k > out.shape[1]:
            raise ShapeError("out", tuple(out.shape), f"room for at least {j + k} classes on axis 1")
        out[:, j : j + k] = ch.maps
        done.append(ch.classes)
        scores.append(ch.scores)
        j += k
    if j != out.shape[1]:
        raise ShapeError("out", tuple(out.shape), f"{j} classes on axis 1")
    return np.concatenate(done), np.concatenate(scores, axis=1)
