r"""Finite-difference gradients of ONNX models: the oracle every backward rule is tested against.

The score of sample :math:`n` is :math:`S_n = \langle s_n, y_n\rangle` (seed :math:`s` times the
seeded output, e.g. :math:`y^c` for a one-hot seed).  The model is cut at the tensor :math:`A`
(a *head* model maps :math:`A` and the other tensors it needs to the outputs) and all perturbed
copies :math:`A \pm h\,d` are stacked along the batch axis and run in few onnxruntime calls.

Step size and error
-------------------
Central differences :math:`D(h) = (S(A + h d) - S(A - h d)) / (2h)` have truncation error
:math:`\tfrac{h^2}{6} S'''` and rounding error :math:`\approx \epsilon |S| / h`; balancing both gives
:math:`h^\ast \propto \epsilon^{1/3}` (Press et al., *Numerical Recipes*, 3rd ed., Sec. 5.7, Eq.
5.7.8).  The default step is :math:`h = \epsilon^{1/3} \max(1, \max|A|)` with :math:`\epsilon` the
machine epsilon of :math:`A`'s dtype (float32: :math:`4.9\cdot10^{-3}`, float64:
:math:`6.1\cdot10^{-6}` times the scale).  With ``richardson=True`` the result is the Richardson
extrapolation :math:`(4 D(h/2) - D(h)) / 3` and the reported error estimate is
:math:`|D(h/2) - D(h)| / 3` (the estimated error of :math:`D(h/2)`, an upper bound for the
extrapolated value when the Taylor model holds).  Piecewise-linear heads (ReLU, max-pool) make
:math:`D(h)` exact unless a kink lies within :math:`h` of :math:`A`; the error estimate then shows
it.  Tests should use float64 models where onnxruntime has float64 kernels.

Batching assumption
-------------------
``batched=True`` (default) stacks the copies along axis 0, so the head must treat the samples of
its batch independently (true for CNN classifiers; false if a Reshape hard-codes the batch size or
an op mixes samples).  Side tensors the head needs besides :math:`A` (e.g. the other branch of a
residual block) are computed once and tiled when their leading axis has the batch size.
``batched=False`` runs one copy per onnxruntime call (any model, slower).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, shape_inference

from .._validate import as_float_array
from ..errors import InvalidArgumentError, LayerNotFoundError, ShapeError
from .builder import _ir_for, model_opset
from .graph import TensorInfo

__all__ = ["FDResult", "default_step", "directional_derivatives", "cut_head", "fd_gradients",
           "channel_directions"]


@dataclass
class FDResult:
    """A finite-difference estimate.

    Attributes
    ----------
    value : the derivative estimate.
    error : estimated absolute error (same shape as ``value``); ``None`` without Richardson.
    step : the step :math:`h` used (the larger one with Richardson).
    """

    value: np.ndarray
    error: np.ndarray | None
    step: float


def default_step(x: np.ndarray) -> float:
    r"""Central-difference step :math:`h = \epsilon^{1/3}\max(1, \max|x|)`.

    Parameters
    ----------
    x : the point (any shape, floating dtype; its dtype gives :math:`\epsilon`).

    Examples
    --------
    >>> round(default_step(np.zeros(3)), 9)
    6.055e-06
    >>> round(default_step(np.full(2, 10.0, np.float32)), 6)
    0.049237
    """
    eps = np.finfo(x.dtype if x.dtype.kind == "f" else np.float64).eps
    scale = max(1.0, float(np.max(np.abs(x)))) if x.size else 1.0
    return float(np.cbrt(eps) * scale)


def channel_directions(shape: Sequence[int], dtype: Any = np.float64) -> np.ndarray:
    r"""Directions :math:`\mathbb{1}_k` (ones on channel :math:`k` of every sample), shape ``(K, *shape)``.

    The derivative along :math:`\mathbb{1}_k` is :math:`\sum_{ij} \partial S/\partial A^k_{ij} =
    Z\,\alpha_k^c` (Grad-CAM weights, Selvaraju et al. 2017, Eq. 1).

    Examples
    --------
    >>> channel_directions((1, 2, 2))[1]
    array([[[0., 0.],
            [1., 1.]]])
    """
    k = shape[1]
    d = np.zeros((k,) + tuple(shape), dtype=dtype)
    d[np.arange(k), :, np.arange(k)] = 1
    return d


def directional_derivatives(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                            directions: np.ndarray | None = None, *, step: float | None = None,
                            richardson: bool = True, channel: bool = False) -> FDResult:
    r"""Central differences :math:`(f(x + h d_m) - f(x - h d_m)) / 2h` for every direction :math:`d_m`.

    Parameters
    ----------
    f : maps a stack ``(M, *x.shape)`` of points to scores ``(M, N)`` (one per sample) or ``(M,)``.
    x : the point, shape ``(N, ...)``.
    directions : ``(D, *x.shape)``; ignored when ``channel=True`` (then the directions are
        :math:`\mathbb{1}_k` for every channel :math:`k` of axis 1, built without materialising them).
    step : :math:`h` (default :func:`default_step`).
    richardson : also evaluate at :math:`h/2`, return :math:`(4D(h/2)-D(h))/3` and an error estimate.

    Returns
    -------
    FDResult with ``value`` of shape ``(D, N)`` (or ``(D,)``).

    Examples
    --------
    >>> f = lambda xs: (xs ** 3).sum(axis=(-1,))
    >>> r = directional_derivatives(f, np.array([[1.0, 2.0]]), np.eye(2).reshape(2, 1, 2))
    >>> np.round(r.value, 8)
    array([[3.],
           [12.]])
    """
    x = np.asarray(x)
    h = default_step(x) if step is None else float(step)
    if not (np.isfinite(h) and h > 0):
        raise InvalidArgumentError("step", step, "a finite positive number")
    hs = [h, h / 2] if richardson else [h]
    if channel:
        k = x.shape[1]
        ks = np.concatenate([np.arange(k)] * 2 * len(hs))
        signs = np.concatenate([np.full(k, s * hh) for hh in hs for s in (1.0, -1.0)])
        m = ks.size

        def make(sl: slice) -> np.ndarray:
            idx = np.arange(sl.start, min(sl.stop, m))
            st = np.repeat(x[None], idx.size, axis=0)
            st[np.arange(idx.size), :, ks[idx]] += signs[idx].astype(x.dtype)[:, None, *([None] * (x.ndim - 2))]
            return st

        ndir = k
    else:
        directions = np.asarray(directions, dtype=x.dtype)
        if directions.shape[1:] != x.shape:
            raise ShapeError("directions", directions.shape, ("D",) + x.shape)
        ndir = directions.shape[0]
        pert = np.concatenate([s * hh * directions for hh in hs for s in (1.0, -1.0)], axis=0)
        m = pert.shape[0]

        def make(sl: slice) -> np.ndarray:
            return x[None] + pert[sl]

    budget = max(1, int(2 ** 24 // max(1, x.size)))  # ~16 M elements per call
    vals = []
    for start in range(0, m, budget):
        vals.append(np.asarray(f(make(slice(start, start + budget))), dtype=np.float64))
    v = np.concatenate(vals, axis=0)
    ests = []
    for i, hh in enumerate(hs):
        plus = v[(2 * i) * ndir:(2 * i + 1) * ndir]
        minus = v[(2 * i + 1) * ndir:(2 * i + 2) * ndir]
        ests.append((plus - minus) / (2 * hh))
    if richardson:
        value = (4 * ests[1] - ests[0]) / 3
        err = np.abs(ests[1] - ests[0]) / 3
        return FDResult(value, err, h)
    return FDResult(ests[0], None, h)


# ============================ cutting the model at a tensor ===================================
def cut_head(model: onnx.ModelProto, tensor: str, outputs: Sequence[str] | None = None
             ) -> tuple[onnx.ModelProto, list[str]]:
    """Cut ``model`` at ``tensor``: a head model computing ``outputs`` from ``tensor`` (+ side inputs).

    Returns ``(head, side)`` where ``side`` lists the other tensors the head takes as inputs (values
    the prefix computes that do not depend on ``tensor``, e.g. a residual branch).  Local helper,
    to be replaced by the adapter's head cut.
    """
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    info = TensorInfo(inferred)
    g = inferred.graph
    produced = {o for n in g.node for o in n.output}
    graph_inputs = [i.name for i in g.input]
    if tensor not in produced and tensor not in graph_inputs:
        raise LayerNotFoundError(f"tensor {tensor!r} is not in the model")
    outputs = [o.name for o in g.output] if outputs is None else list(outputs)
    dep = {tensor}
    head_nodes = []
    for n in g.node:
        if any(i in dep for i in n.input if i):
            head_nodes.append(n)
            dep.update(o for o in n.output if o)
    # keep only nodes needed for the requested outputs
    need = set(outputs)
    keep = []
    for n in reversed(head_nodes):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    keep.reverse()
    inits = {t.name for t in g.initializer}
    made = {o for n in keep for o in n.output}
    side = []
    for n in keep:
        for i in n.input:
            if i and i not in made and i not in inits and i != tensor and i not in side:
                side.append(i)

    def vi(name: str) -> onnx.ValueInfoProto:
        shp = info.shape.get(name)
        return helper.make_tensor_value_info(name, info.elem.get(name, onnx.TensorProto.FLOAT),
                                             None if shp is None else [None] + list(shp[1:]) if shp else [])

    used = {i for n in keep for i in n.input}
    head_outputs = [o for o in outputs if o in made or o == tensor]
    graph = helper.make_graph(
        keep, "head", [vi(tensor)] + [vi(s) for s in side], [vi(o) for o in head_outputs],
        [t for t in g.initializer if t.name in used])
    head = helper.make_model(graph, opset_imports=list(model.opset_import),
                             ir_version=_ir_for(model_opset(model), model.ir_version))
    return head, side


def _session(model: onnx.ModelProto, backend: str = "onnxruntime"):
    if backend == "reference":
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    m.ir_version = _ir_for(model_opset(model), model.ir_version)
    return m


def fd_gradients(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], wrt: str,
                 seed_values: np.ndarray, *, seed: str | None = None, mode: str = "full",
                 step: float | None = None, richardson: bool = True, batched: bool = True,
                 backend: str = "onnxruntime") -> tuple[np.ndarray, FDResult]:
    r"""Finite-difference gradient of :math:`S_n = \langle s_n, y_n\rangle` with respect to tensor ``wrt``.

    Parameters
    ----------
    model : the forward model.
    inputs : feeds of the model's graph inputs.
    wrt : the tensor :math:`A` (graph input or intermediate).
    seed_values : :math:`s`, shape of output ``seed`` (batch axis first).
    seed : output name (default: the first output).
    mode : ``"full"`` — every element (returns ``(N, *A.shape[1:])`` = :math:`\partial S_n/\partial A`,
        2·numel(A[0]) perturbed copies) or ``"channel"`` — the directional derivatives along
        :math:`\mathbb{1}_k`, returns ``(N, K)`` = :math:`\sum_{ij}\partial S_n/\partial A^k_{ij}`
        (2K copies).
    step, richardson : see :func:`directional_derivatives`.
    batched : stack copies along axis 0 (see the module notes) or run them one by one.
    backend : ``"onnxruntime"`` or ``"reference"`` (``onnx.reference.ReferenceEvaluator``: ~50x
        slower but runs every op in float64 — the accurate oracle for float32-only kernels).

    Returns
    -------
    (activation, FDResult) — the value of :math:`A` and the gradient estimate (``value`` and
    ``error`` already in the layout described above).
    """
    if mode not in ("full", "channel"):
        raise InvalidArgumentError("mode", mode, "'full' or 'channel'")
    if backend not in ("onnxruntime", "reference"):
        raise InvalidArgumentError("backend", backend, "'onnxruntime' or 'reference'")
    outs = [o.name for o in model.graph.output]
    seed = outs[0] if seed is None else seed
    head, side = cut_head(model, wrt, [seed])
    graph_inputs = [i.name for i in model.graph.input]
    need = [n for n in [wrt] + side if n not in graph_inputs]
    values = dict(inputs)
    if need:
        full = _session(_with_outputs(model, need), backend)
        res = full.run(need, dict(inputs))
        values.update(zip(need, res))
    a = np.asarray(values[wrt])
    s = as_float_array(seed_values, "seed_values")
    n = a.shape[0]
    sess = _session(head, backend)
    side_vals = {k: np.asarray(values[k]) for k in side}

    if not batched:
        if mode == "channel":
            raise InvalidArgumentError("mode", mode, "'full' when batched=False")

        def score1(stack: np.ndarray) -> np.ndarray:
            out = []
            for j in range(stack.shape[0]):
                feed = {wrt: stack[j, 0].astype(a.dtype, copy=False)}
                feed.update(side_vals)
                y = sess.run([seed], feed)[0]
                out.append(float(np.sum(y.astype(np.float64) * s.astype(np.float64))))
            return np.asarray(out)[:, None]

        eye = np.eye(a.size, dtype=a.dtype).reshape((a.size, 1) + a.shape)
        r = directional_derivatives(score1, a[None], eye, step=step, richardson=richardson)
        val = r.value[:, 0].reshape(a.shape)
        err = None if r.error is None else r.error[:, 0].reshape(a.shape)
        return a, FDResult(val, err, r.step)

    def score(stack: np.ndarray) -> np.ndarray:
        m = stack.shape[0]
        feed = {wrt: stack.reshape((m * n,) + a.shape[1:]).astype(a.dtype, copy=False)}
        for k, v in side_vals.items():
            feed[k] = np.concatenate([v] * m, axis=0) if v.ndim and v.shape[0] == n else v
        y = sess.run([seed], feed)[0]
        y = y.reshape((m, n) + y.shape[1:])
        prod = y.astype(np.float64) * s[None].astype(np.float64)
        return prod.reshape(m, n, -1).sum(axis=-1)

    if mode == "channel":
        r = directional_derivatives(score, a, step=step, richardson=richardson, channel=True)
        return a, FDResult(r.value.T, None if r.error is None else r.error.T, r.step)
    # full: unit directions over one sample's elements, applied to every sample at once
    per = int(np.prod(a.shape[1:]))
    eye = np.eye(per, dtype=a.dtype).reshape((per, 1) + a.shape[1:])
    dirs = np.broadcast_to(eye, (per,) + a.shape)
    r = directional_derivatives(score, a, dirs, step=step, richardson=richardson)
    val = r.value.T.reshape(a.shape)
    err = None if r.error is None else r.error.T.reshape(a.shape)
    return a, FDResult(val, err, r.step)
