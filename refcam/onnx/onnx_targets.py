r"""Score targets expressed in ONNX: one scalar score per sample, differentiable by the VJP graph.

An :class:`OnnxTarget` appends a few standard ai.onnx nodes after the model's target output
:math:`y` (shape ``(N, ...)``) and produces ``(N, 1)`` scores.  Gradient methods differentiate
the score (the VJP graph of :mod:`refcam.autodiff` covers the appended nodes and seeds the score
with ones); forward-only methods (Score-CAM, Ablation-CAM...) evaluate its NumPy twin
:meth:`OnnxTarget.numpy`, which computes the same formula.

Every target is ``score_n = R(T(y_n), W_n)`` with

* a transform :math:`T`: identity, softmax or log-softmax over the class axis;
* a weight tensor :math:`W_n` of the shape of one output row, fed to the graph as the input
  ``refcam_target_weight`` (so one built VJP model serves every class / mask / vector: the
  cache key is only ``(transform, reduction)``);
* a reduction :math:`R`: ``"dot"`` :math:`\sum W \odot T(y)` or ``"cosine"``
  :math:`\frac{\sum W\odot y}{\lVert y\rVert\,\lVert W\rVert}`, with the guard *score = 0 (and
  gradient 0) where* :math:`\lVert y\rVert\,\lVert W\rVert = 0` (an explicit mask, no eps).

Constructors: :func:`logit`, :func:`softmax_probability`, :func:`log_softmax`, :func:`mask_sum`,
:func:`embedding_similarity`.

>>> import numpy as np
>>> y = np.array([[0.0, np.log(3.0)]])
>>> softmax_probability(1).numpy(y)
array([0.75])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import TargetError

__all__ = [
    "OnnxTarget",
    "SCORE_OUTPUT",
    "WEIGHT_INPUT",
    "embedding_similarity",
    "log_softmax",
    "logit",
    "mask_sum",
    "softmax_probability",
]

#: graph input holding the per-sample weights :math:`W` (shape of the target output)
WEIGHT_INPUT = "refcam_target_weight"
#: graph output holding the ``(N, 1)`` scores
SCORE_OUTPUT = "refcam_target_score"

_TRANSFORMS = ("identity", "softmax", "log_softmax")
_REDUCTIONS = ("dot", "cosine")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


@dataclass(frozen=True, eq=False)
class OnnxTarget:
    r"""A differentiable score target ``score_n = R(T(y_n), W_n)`` (see the module docstring).

    Build it with a constructor (:func:`softmax_probability`, :func:`mask_sum`...).  It is
    callable on model outputs ``(N, ...)`` → ``(N,)`` (its NumPy twin), so it works wherever the
    adapter accepts a callable target, and :func:`refcam.autodiff.gradients` /
    :func:`refcam.explain` differentiate it exactly through the VJP graph.

    Attributes
    ----------
    name : constructor name (for messages and ``repr``).
    transform : ``"identity"``, ``"softmax"`` or ``"log_softmax"`` (over axis 1, class outputs).
    reduction : ``"dot"`` or ``"cosine"``.
    make_weights : ``(output_shape) -> (N, *output_shape[1:])`` weights :math:`W`, validating the
        target's parameters against the output shape (raises :class:`TargetError`).
    """

    name: str
    transform: str
    reduction: str
    make_weights: Any = field(repr=False)

    @property
    def signature(self) -> tuple:
        """Hashable key of the appended graph (the weights are a graph input)."""
        return (self.transform, self.reduction)

    def weights(self, output_shape: tuple, dtype: Any = np.float64) -> np.ndarray:
        """:math:`W`, ``(N, *output_shape[1:])`` in ``dtype``; :class:`TargetError` on a mismatch."""
        output_shape = tuple(int(d) for d in output_shape)
        if self.transform != "identity":
            _class_shape(output_shape, self.name)
        return np.ascontiguousarray(self.make_weights(output_shape), dtype=dtype)

    # ---------------------------------------------------------------- NumPy twin
    def numpy(self, outputs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        r"""The score of every row, ``(N,)`` float64: the formula of the appended ONNX nodes.

        Parameters
        ----------
        outputs : ``(N, ...)`` model outputs :math:`y`.
        weights : ``(N, ...)`` :math:`W`; default :meth:`weights` of ``outputs.shape``.
        """
        y = np.asarray(outputs, dtype=np.float64)
        w = self.weights(y.shape) if weights is None else np.asarray(weights, dtype=np.float64)
        n = y.shape[0]
        if self.transform != "identity":
            y = y.reshape(n, -1)
            w = w.reshape(n, -1)
            z = y - y.max(axis=1, keepdims=True)
            lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
            y = np.exp(z - lse) if self.transform == "softmax" else z - lse
        y = y.reshape(n, -1)
        w = w.reshape(n, -1)
        dot = (w * y).sum(axis=1)
        if self.reduction == "dot":
            return dot
        den = np.sqrt((y * y).sum(axis=1) * (w * w).sum(axis=1))
        pos = den > 0
        return np.where(pos, dot / np.where(pos, den, 1.0), 0.0)

    def __call__(self, outputs: np.ndarray) -> np.ndarray:
        return self.numpy(outputs)

    def scores(self, outputs: np.ndarray, samples: np.ndarray, n_samples: int) -> np.ndarray:
        """Scores ``(m,)`` of output rows ``outputs`` ``(m, ...)`` computed for ``samples``
        (indices into a batch of ``n_samples``): per-sample parameters follow the samples."""
        outputs = np.asarray(outputs)
        w = self.weights((n_samples,) + outputs.shape[1:])[np.asarray(samples, dtype=np.int64)]
        return self.numpy(outputs, w)

    def take(self, rows: np.ndarray, n_samples: int) -> "OnnxTarget":
        """The target for a new batch whose sample ``i`` is sample ``rows[i]`` of this batch of
        ``n_samples`` (e.g. SmoothGrad / Integrated-Gradients copies)."""
        rows = np.asarray(rows, dtype=np.int64)
        base = self.make_weights

        def make(shape):
            return base((n_samples,) + tuple(shape[1:]))[rows]
        return OnnxTarget(self.name, self.transform, self.reduction, make)

    # ---------------------------------------------------------------- ONNX graph
    def attach(self, model: onnx.ModelProto, output: str) -> onnx.ModelProto:
        """A copy of ``model`` with the target's nodes after tensor ``output``: extra graph input
        :data:`WEIGHT_INPUT` (shape of ``output``) and extra graph output :data:`SCORE_OUTPUT`
        ``(N, 1)``.  Only Flatten, Softmax, LogSoftmax, Mul, ReduceSum, Greater, Where, Sqrt, Div
        (all with VJP rules; Greater has no gradient)."""
        new = onnx.ModelProto()
        new.CopyFrom(model)
        g = new.graph
        opset = max([o.version for o in new.opset_import if o.domain in ("", "ai.onnx")] or [1])
        elem, rank = _type_of(model, output)
        dt = helper.tensor_dtype_to_np_dtype(elem)
        nodes: list = []
        count = [0]

        def op(t: str, ins: list, **attrs) -> str:
            count[0] += 1
            out = f"refcam_target/{t}_{count[0]}"
            nodes.append(helper.make_node(t, ins, [out], name=out, **attrs))
            return out

        def const(v: float) -> str:
            count[0] += 1
            nm = f"refcam_target/const_{count[0]}"
            g.initializer.append(numpy_helper.from_array(np.array(v, dtype=dt), nm))
            return nm

        def rsum(x: str) -> str:  # (N, M) -> (N, 1)
            if opset >= 13:
                count[0] += 1
                ax = f"refcam_target/axes_{count[0]}"
                g.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), ax))
                return op("ReduceSum", [x, ax], keepdims=1)
            return op("ReduceSum", [x], axes=[1], keepdims=1)

        y = op("Flatten", [output], axis=1)
        w = op("Flatten", [WEIGHT_INPUT], axis=1)
        if self.transform == "softmax":
            y = op("Softmax", [y], axis=1)
        elif self.transform == "log_softmax":
            y = op("LogSoftmax", [y], axis=1)
        dot = rsum(op("Mul", [y, w]))
        if self.reduction == "dot":
            nodes.append(helper.make_node("Identity", [dot], [SCORE_OUTPUT], name=SCORE_OUTPUT))
        else:
            den2 = op("Mul", [rsum(op("Mul", [y, y])), rsum(op("Mul", [w, w]))])
            pos = op("Greater", [den2, const(0.0)])
            safe = op("Where", [pos, den2, const(1.0)])
            ratio = op("Div", [dot, op("Sqrt", [safe])])
            nodes.append(helper.make_node("Where", [pos, ratio, const(0.0)], [SCORE_OUTPUT],
                                          name=SCORE_OUTPUT))
        g.node.extend(nodes)
        g.input.append(helper.make_tensor_value_info(
            WEIGHT_INPUT, elem, None if rank is None else [f"refcam_target_d{i}" for i in range(rank)]))
        g.output.append(helper.make_tensor_value_info(SCORE_OUTPUT, elem, ["refcam_target_n", 1]))
        return new


def _type_of(model: onnx.ModelProto, name: str) -> tuple[int, int | None]:
    """(elem type, rank or None) of tensor ``name``, from the graph or shape inference."""
    def look(g):
        for vi in list(g.output) + list(g.value_info) + list(g.input):
            tt = vi.type.tensor_type
            if vi.name == name and tt.elem_type:
                return tt.elem_type, (len(tt.shape.dim) if tt.HasField("shape") else None)
        return None
    found = look(model.graph)
    if found is None or found[1] is None:
        found = look(onnx.shape_inference.infer_shapes(model).graph) or found
    return found if found is not None else (onnx.TensorProto.FLOAT, None)


def _class_shape(shape: tuple, name: str) -> int:
    """Number of classes of an ``(N, C)`` (or ``(N, C, 1, ...)``) output."""
    if len(shape) >= 2 and int(np.prod(shape[2:])) == 1:
        return shape[1]
    raise TargetError(
        f"target: {name} needs a class output of shape (N, C); the output has shape {shape}"
    )


def _indices(index: Any, n: int, n_classes: int, argument: str) -> np.ndarray:
    """Class index (int or per-sample sequence of length N) → ``(N,)`` int64, validated."""
    if _is_int(index):
        idx = np.full(n, int(index), dtype=np.int64)
    else:
        arr = np.asarray(index)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise TargetError(
                f"{argument}: got {index!r}, expected an int class index or a length-N sequence of ints"
            )
        if len(arr) != n:
            raise TargetError(
                f"{argument}: got {len(arr)} per-sample class indices for a batch of {n}, "
                f"expected exactly {n}"
            )
        idx = arr.astype(np.int64)
    bad = (idx < -n_classes) | (idx >= n_classes)
    if bad.any():
        raise TargetError(
            f"{argument}: class {int(idx[bad][0])} is out of range for an output with {n_classes} "
            f"classes (expected 0 <= c < {n_classes})"
        )
    return idx % n_classes


def _check_index(index: Any, argument: str) -> None:
    """Early check (before the output shape is known): an int or a 1-D integer sequence."""
    if _is_int(index):
        return
    arr = np.asarray(index) if isinstance(index, (list, tuple, np.ndarray)) else None
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise TargetError(
            f"{argument}: got {index!r}, expected an int class index or a length-N sequence of ints"
        )


def _one_hot_target(name: str, transform: str, index: Any, argument: str) -> OnnxTarget:
    def make(shape):
        c = _class_shape(shape, name)
        idx = _indices(index, shape[0], c, argument)
        w = np.zeros((shape[0], c))
        w[np.arange(shape[0]), idx] = 1.0
        return w.reshape(shape)

    _check_index(index, argument)
    return OnnxTarget(name, transform, "dot", make)


def logit(class_index: Any) -> OnnxTarget:
    r"""The raw class score :math:`y^c_n` (same as an int target; here as an :class:`OnnxTarget`).

    ``class_index``: an int or a length-``N`` sequence (one class per sample).

    >>> logit([1, 0]).numpy(np.array([[1.0, 2.0], [3.0, 4.0]]))
    array([2., 3.])
    """
    return _one_hot_target("logit", "identity", class_index, "class_index")


def softmax_probability(class_index: Any) -> OnnxTarget:
    r"""Softmax probability :math:`p^c_n = e^{y^c_n} / \sum_j e^{y^j_n}` of class ``c``.

    Its gradient w.r.t. an activation is :math:`p^c(\partial y^c/\partial A - \sum_j p^j
    \partial y^j/\partial A)`.  ``class_index``: int or length-``N`` sequence.  Needs an
    ``(N, C)`` output (TargetError otherwise).  Numerically stable (max subtracted).

    >>> softmax_probability([0, 1]).numpy(np.array([[0.0, 0.0], [np.log(3.0), 0.0]]))
    array([0.5 , 0.25])
    """
    return _one_hot_target("softmax_probability", "softmax", class_index, "class_index")


def log_softmax(class_index: Any) -> OnnxTarget:
    r"""Log-probability :math:`\log p^c_n = y^c_n - \log\sum_j e^{y^j_n}` of class ``c``.

    >>> log_softmax(1).numpy(np.array([[0.0, np.log(3.0)]])).round(6)
    array([-0.287682])
    """
    return _one_hot_target("log_softmax", "log_softmax", class_index, "class_index")


def mask_sum(mask: Any, class_index: Any) -> OnnxTarget:
    r"""Segmentation target :math:`S_n = \sum_{s} M_{n,s}\, y^c_{n,s}` (pytorch-grad-cam's
    ``SemanticSegmentationTarget``: the class-``c`` logits summed over the mask).

    Parameters
    ----------
    mask : ``(*S)`` one mask for every sample, or ``(N, *S)`` per sample; real weights allowed
        (a 0/1 mask is the usual case); ``*S`` = spatial shape of the output ``(N, C, *S)``.
    class_index : int or length-``N`` sequence.

    >>> y = np.arange(8.0).reshape(1, 2, 2, 2)   # class 1 logits [[4, 5], [6, 7]]
    >>> mask_sum(np.array([[1, 0], [0, 1]]), 1).numpy(y)
    array([11.])
    """
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf" or m.ndim == 0:
        raise TargetError(f"mask: got {m.dtype} array of shape {m.shape}, expected a real array "
                          "of the output's spatial shape (*S) or (N, *S)")
    if not np.isfinite(m.astype(np.float64)).all():
        raise TargetError("mask: contains NaN or Inf")
    m = m.astype(np.float64)

    def make(shape):
        if len(shape) < 3:
            raise TargetError(f"target: mask_sum needs a per-pixel output (N, C, *S); the output "
                              f"has shape {shape}")
        n, c, sp = shape[0], shape[1], tuple(shape[2:])
        if m.shape == sp:
            mm = np.broadcast_to(m, (n,) + sp)
        elif m.shape == (n,) + sp:
            mm = m
        else:
            raise TargetError(f"mask: got shape {m.shape}, expected {sp} or {(n,) + sp} (spatial "
                              f"shape of the output {shape})")
        idx = _indices(class_index, n, c, "class_index")
        w = np.zeros(shape)
        w[np.arange(n), idx] = mm
        return w

    _check_index(class_index, "class_index")
    return OnnxTarget("mask_sum", "identity", "dot", make)


def embedding_similarity(vector: Any, kind: str = "cosine") -> OnnxTarget:
    r"""Similarity of the output embedding :math:`y_n` (``(N, D)``, or any ``(N, ...)`` flattened)
    to a reference :math:`v` (pytorch-grad-cam's ``SimilarityToConceptTarget``):

    * ``kind="cosine"``: :math:`\frac{\langle v, y_n\rangle}{\lVert v\rVert\,\lVert y_n\rVert}`,
      score and gradient 0 where :math:`\lVert v\rVert\lVert y_n\rVert = 0` (mask guard);
    * ``kind="dot"``: :math:`\langle v, y_n\rangle`.

    ``vector``: ``(D,)`` for every sample or ``(N, D)`` per sample (``D`` = numel of one row).

    >>> embedding_similarity([3.0, 4.0]).numpy(np.array([[4.0, 3.0], [0.0, 0.0]]))
    array([0.96, 0.  ])
    >>> embedding_similarity([3.0, 4.0], kind="dot").numpy(np.array([[1.0, 1.0]]))
    array([7.])
    """
    if kind not in ("cosine", "dot"):
        raise TargetError(f"kind: got {kind!r}, expected 'cosine' or 'dot'")
    v = np.asarray(vector)
    if v.dtype.kind not in "biuf" or v.ndim not in (1, 2):
        raise TargetError(f"vector: got {v.dtype} array of shape {v.shape}, expected (D,) or (N, D)")
    if not np.isfinite(v.astype(np.float64)).all():
        raise TargetError("vector: contains NaN or Inf")
    v = v.astype(np.float64)

    def make(shape):
        n, d = shape[0], int(np.prod(shape[1:]))
        if v.shape == (d,):
            w = np.broadcast_to(v, (n, d))
        elif v.shape == (n, d):
            w = v
        else:
            raise TargetError(f"vector: got shape {v.shape}, expected ({d},) or ({n}, {d}) (the "
                              f"output has shape {shape})")
        return w.reshape(shape)

    return OnnxTarget(f"embedding_similarity[{kind}]", "identity", kind, make)
