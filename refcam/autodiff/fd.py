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

Batching, checked
-----------------
``batched=True`` (default) stacks the copies along axis 0, which assumes the head treats the
samples of its batch independently and accepts any batch size.  Side tensors the head needs
besides :math:`A` (e.g. the other branch of a residual block) are computed once and tiled when
their leading axis has the batch size.  Nothing of this is trusted blindly; each call checks

1. *independence*: every sample is moved along a random direction in turn, one run per copy; if
   the score of another sample changes beyond rounding, the samples interact (batch statistics)
   and the derivatives are taken of the total score :math:`\sum_n S_n` along directions confined
   to one sample (what the VJP computes), one copy per run;
2. *stacking*: three directions (first, last and a random one) are evaluated stacked and one copy
   per run (each copy with the model's own batch); on disagreement beyond rounding
   (:func:`_agreement_tol`) or any failure of the stacked run (a fixed batch size, a Gather with
   indices computed for one batch size) every copy runs on its own;
3. *the channel shortcut* (``_ChannelPlan``): its values on the same three channels must equal the
   one-copy-per-run central differences; otherwise it is not used.

``FiniteDifferences.last_check`` records what was decided and the deviations measured.
``batched=False`` runs one copy per onnxruntime call with the whole batch as one point.  Every
failure is a :class:`~refcam.errors.RefcamError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, shape_inference

from .._validate import as_float_array
from ..errors import InvalidArgumentError, LayerNotFoundError, ModelError, RefcamError, ShapeError, UnsupportedOpError
from .builder import ir_for, model_opset
from .graph import TensorInfo

__all__ = ["FDResult", "FiniteDifferences", "default_step", "directional_derivatives", "cut_head", "fd_gradients",
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
    >>> print(f"{default_step(np.zeros(3)):.4g}")
    6.055e-06
    >>> print(f"{default_step(np.full(2, 10.0, np.float32)):.4g}")
    0.04922
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
    >>> np.round(r.value, 8)   # d/dx_i of x_1^3 + x_2^3 = 3 x_i^2
    array([[ 3.],
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

    Returns ``(head, side)`` where ``side`` lists the other tensors the head takes as inputs: values
    the prefix computes that do not depend on ``tensor`` (e.g. the other branch of a residual block
    around the cut).  The graph is cut by the adapter's :func:`refcam.onnx.cut_head` at
    ``[tensor, *side]``; the batch axis of the head's inputs and outputs is made symbolic so the
    perturbed copies can be stacked along it.
    """
    from ..onnx.head import cut_head as _adapter_cut

    inferred = shape_inference.infer_shapes(model, data_prop=True)
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
    need = set(outputs)
    keep = []
    for n in reversed(head_nodes):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    consts = {t.name for t in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    made = {o for n in keep for o in n.output}
    side: list[str] = []
    for n in reversed(keep):
        for i in n.input:
            if i and i not in made and i not in consts and i != tensor and i not in side:
                side.append(i)
    value_info = {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}
    head = _adapter_cut(model, [tensor] + side, outputs, value_info=value_info,
                        ir_version=ir_for(model_opset(model), model.ir_version))
    for vi in list(head.graph.input) + list(head.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and len(tt.shape.dim):
            tt.shape.dim[0].Clear()
            tt.shape.dim[0].dim_param = "refcam_fd_batch"
    return head, side


def _reference_refusals(model: onnx.ModelProto) -> None:
    """Refuse the ``onnx.reference`` kernels measured to disagree with the ONNX spec (onnx 1.23):
    ConvTranspose with ``group`` > 1 (``op_conv_transpose.py`` hands every group the whole bias,
    whose first M/G entries it then adds, and slices W by output instead of input channels: 1.1-2.3
    off a direct sum of the groups' transposed convolutions, which onnxruntime matches to 8e-7) and
    BatchNormalization-9 (opsets 9-13; 0.08 off onnxruntime, which BatchNormalization-14/15 match
    to 4e-16).  Differences of a wrong forward
    would be silently wrong."""
    opset = model_opset(model)
    for n in model.graph.node:
        why = None
        if n.op_type == "ConvTranspose" and n.domain in ("", "ai.onnx"):
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            why = f"its grouped ConvTranspose (group={group}) is wrong" if group > 1 else None
        elif n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx") and 9 <= opset < 14:
            why = f"its BatchNormalization-9 (opset {opset}) is wrong"
        if why:
            raise UnsupportedOpError(
                f"node {n.name or '?'} ({n.op_type}, opset {opset}): finite differences with "
                f"backend='reference' refused: {why} (measured against the spec); use "
                "backend='onnxruntime'")


def _session(model: onnx.ModelProto, backend: str = "onnxruntime"):
    if backend == "reference":
        from onnx.reference import ReferenceEvaluator

        _reference_refusals(model)
        return ReferenceEvaluator(model)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """``model`` with exactly ``names`` as outputs and the nodes they do not need removed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name: o for o in m.graph.output}
    del m.graph.output[:]
    for n in names:
        m.graph.output.append(have[n] if n in have else onnx.ValueInfoProto(name=n))
    need = set(names)
    keep = []
    for node in reversed(list(m.graph.node)):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
    del m.graph.node[:]
    m.graph.node.extend(reversed(keep))
    m.ir_version = ir_for(model_opset(model), model.ir_version)
    return m


class FiniteDifferences:
    r"""Finite-difference gradients of :math:`S_n = \langle s_n, y_n\rangle` with respect to tensor ``wrt``,
    with the cut and the onnxruntime sessions prepared once (reuse it across calls).

    Parameters
    ----------
    model : the forward model.
    wrt : the tensor :math:`A` (graph input or intermediate).
    seed : output name (default: the first output).
    backend : ``"onnxruntime"`` or ``"reference"`` (``onnx.reference.ReferenceEvaluator``: ~50x
        slower but runs every op in float64 — the accurate oracle for float32-only kernels).

    Examples
    --------
    >>> import numpy as np
    >>> from onnx import helper, TensorProto
    >>> g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["a"]),
    ...                        helper.make_node("ReduceSum", ["a"], ["y"], keepdims=1, axes=[1])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 1])])
    >>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)], ir_version=6)
    >>> fd = FiniteDifferences(m, "a")               # y = sum_i a_i,  a = x^2
    >>> a, r = fd({"x": np.array([[1.0, 3.0]])}, np.ones((1, 1)))
    >>> a, np.round(r.value, 10)
    (array([[1., 9.]]), array([[1., 1.]]))
    """

    def __init__(self, model: onnx.ModelProto, wrt: str, *, seed: str | None = None,
                 backend: str = "onnxruntime") -> None:
        if backend not in ("onnxruntime", "reference"):
            raise InvalidArgumentError("backend", backend, "'onnxruntime' or 'reference'")
        outs = [o.name for o in model.graph.output]
        self.seed = outs[0] if seed is None else seed
        self.wrt = wrt
        head, self.side = cut_head(model, wrt, [self.seed])
        graph_inputs = [i.name for i in model.graph.input]
        self.need = [n for n in [wrt] + self.side if n not in graph_inputs]
        self.prefix = _session(_with_outputs(model, self.need), backend) if self.need else None
        self.head = _session(head, backend)
        self._model = model
        self._backend = backend
        self._channel_plan: _ChannelPlan | None = None

    def __call__(self, inputs: Mapping[str, np.ndarray], seed_values: np.ndarray, *,
                 mode: str = "full", step: float | None = None, richardson: bool = True,
                 batched: bool = True) -> tuple[np.ndarray, FDResult]:
        r"""Run the estimate.

        Parameters
        ----------
        inputs : feeds of the model's graph inputs.
        seed_values : :math:`s`, shape of the seeded output (batch axis first).
        mode : ``"full"`` — every element: ``value`` has the shape of :math:`A`,
            :math:`\partial S_n/\partial A_n` (2·numel(A[0]) perturbed copies); ``"channel"`` —
            the directional derivatives along :math:`\mathbb{1}_k`: ``value`` is ``(N, K)`` =
            :math:`\sum_{ij}\partial S_n/\partial A^k_{n,ij}` (2K copies).
        step, richardson : see :func:`directional_derivatives`.
        batched : stack copies along axis 0 (see the module notes) or run them one by one
            (then ``mode="full"`` only and the whole tensor is one point).

        Returns
        -------
        (activation, FDResult) — the value of :math:`A` and the estimate (``value``, ``error``).
        """
        if mode not in ("full", "channel"):
            raise InvalidArgumentError("mode", mode, "'full' or 'channel'")
        try:
            return self._call(inputs, seed_values, mode, step, richardson, batched)
        except RefcamError:
            raise
        except Exception as exc:  # onnxruntime or NumPy: never a raw error from the oracle
            raise ModelError(f"finite differences with respect to {self.wrt!r} failed: "
                             f"{type(exc).__name__}: {exc}") from exc

    def _run_head(self, feed: dict) -> np.ndarray:
        try:
            return np.asarray(self.head.run([self.seed], feed)[0])
        except Exception as exc:
            shapes = {k: tuple(np.shape(v)) for k, v in feed.items()}
            raise ModelError(f"finite differences: the model cut at {self.wrt!r} failed on inputs "
                             f"{shapes}: {exc}") from exc

    def _call(self, inputs, seed_values, mode, step, richardson, batched):
        wrt, seed = self.wrt, self.seed
        values = dict(inputs)
        if self.need:
            try:
                values.update(zip(self.need, self.prefix.run(self.need, dict(inputs))))
            except Exception as exc:
                raise ModelError(f"finite differences: running the model up to {wrt!r} failed: {exc}") from exc
        a = np.asarray(values[wrt])
        s = as_float_array(seed_values, "seed_values")
        n = a.shape[0]
        side_vals = {k: np.asarray(values[k]) for k in self.side}
        self.last_check = {}

        if not batched:
            if mode == "channel":
                raise InvalidArgumentError("mode", mode, "'full' when batched=False")

            def score1(stack: np.ndarray) -> np.ndarray:
                out = []
                for j in range(stack.shape[0]):
                    feed = {wrt: stack[j, 0].astype(a.dtype, copy=False)}
                    feed.update(side_vals)
                    y = self._run_head(feed)
                    out.append(float(np.sum(y.astype(np.float64) * s.astype(np.float64))))
                return np.asarray(out)[:, None]

            eye = np.eye(a.size, dtype=a.dtype).reshape((a.size, 1) + a.shape)
            r = directional_derivatives(score1, a[None], eye, step=step, richardson=richardson)
            val = r.value[:, 0].reshape(a.shape)
            err = None if r.error is None else r.error[:, 0].reshape(a.shape)
            return a, FDResult(val, err, r.step)

        if s.shape[0] != n:
            raise ShapeError("seed_values", s.shape, f"({n}, ...) with the batch size of {wrt!r}")

        def reduce(y: np.ndarray, m: int) -> np.ndarray:
            if y.shape[0] != m * n or y.size != m * s.size:
                raise _StackError(f"the head returned {y.shape} for {m} stacked copies of batch {n}")
            prod = y.reshape((m,) + s.shape).astype(np.float64) * s[None].astype(np.float64)
            return prod.reshape(m, n, -1).sum(axis=-1)

        def stacked(stack: np.ndarray) -> np.ndarray:
            """All copies in one run, stacked along the batch axis (assumes independent samples)."""
            m = stack.shape[0]
            feed = {wrt: stack.reshape((m * n,) + a.shape[1:]).astype(a.dtype, copy=False)}
            for k, v in side_vals.items():
                feed[k] = np.concatenate([v] * m, axis=0) if v.ndim and v.shape[0] == n else v
            try:
                y = np.asarray(self.head.run([seed], feed)[0])
            except Exception as exc:
                raise _StackError(str(exc)) from exc
            return reduce(y, m)

        def single(stack: np.ndarray) -> np.ndarray:
            """One run per copy, each with the model's own batch: no batching assumption at all."""
            rows = []
            for j in range(stack.shape[0]):
                feed = {wrt: stack[j].astype(a.dtype, copy=False)}
                feed.update(side_vals)
                rows.append(reduce(self._run_head(feed), 1)[0])
            return np.stack(rows)

        h = default_step(a) if step is None else float(step)
        rng = np.random.default_rng(0)
        if mode == "channel":
            k = a.shape[1]
            probe_dirs = sorted({0, k - 1, int(rng.integers(k))})
            dirs = np.zeros((len(probe_dirs),) + a.shape, a.dtype)   # 1_k for the probed channels only
            dirs[np.arange(len(probe_dirs)), :, probe_dirs] = 1
        else:
            per = int(np.prod(a.shape[1:]))
            probe_dirs = sorted({0, per - 1, int(rng.integers(per))})
            dirs = np.zeros((len(probe_dirs), per), a.dtype)
            dirs[np.arange(len(probe_dirs)), probe_dirs] = 1
            dirs = np.broadcast_to(dirs.reshape((len(probe_dirs), 1) + a.shape[1:]), (len(probe_dirs),) + a.shape)
        base = single(a[None])
        if n > 1 and self._samples_interact(single, a, base, h, rng):
            # S_n depends on other samples (batch statistics...): per-sample directions would not
            # be the gradient of sum_n S_n.  Perturb one sample at a time, score the total.
            self.last_check = {"samples_interact": True}
            return a, self._joint(single, a, mode, h, richardson)
        truth = directional_derivatives(single, a, dirs, step=h, richardson=richardson)
        tol = _agreement_tol(a.dtype, base, truth.value, h)
        try:
            check = directional_derivatives(stacked, a, dirs, step=h, richardson=richardson)
            dev = float(np.max(np.abs(check.value - truth.value)))
            ok = dev <= tol
        except _StackError as exc:
            ok, dev = False, str(exc)
        self.last_check = {"stacked": ok, "stack_deviation": dev, "tolerance": tol,
                           "directions": probe_dirs}
        score = stacked if ok else single

        if mode == "channel":
            if self._channel_plan is None:
                self._channel_plan = _ChannelPlan(self._model, wrt, seed, self._backend)
            plan = self._channel_plan
            r = None
            if plan.usable and set(plan.side) <= set(values):
                side_all = {key: np.asarray(values[key]) for key in plan.side}
                try:
                    r = plan.run(a, s, side_all, step=h, richardson=richardson)
                    pdev = float(np.max(np.abs(r.value[probe_dirs] - truth.value)))
                except Exception as exc:  # a shortcut that cannot run is not used
                    r, pdev = None, f"{type(exc).__name__}: {exc}"
                if r is not None and not pdev <= tol:
                    r = None
                self.last_check.update(plan="used" if r is not None else "rejected", plan_deviation=pdev)
            if r is None:
                r = directional_derivatives(score, a, step=h, richardson=richardson, channel=True)
            return a, FDResult(r.value.T, None if r.error is None else r.error.T, r.step)
        # full: unit directions over one sample's elements, applied to every sample at once
        per = int(np.prod(a.shape[1:]))
        eye = np.eye(per, dtype=a.dtype).reshape((per, 1) + a.shape[1:])
        dirs = np.broadcast_to(eye, (per,) + a.shape)
        r = directional_derivatives(score, a, dirs, step=h, richardson=richardson)
        val = r.value.T.reshape(a.shape)
        err = None if r.error is None else r.error.T.reshape(a.shape)
        return a, FDResult(val, err, r.step)


    @staticmethod
    def _samples_interact(single, a: np.ndarray, base: np.ndarray, h: float, rng) -> bool:
        """Does moving sample j (a random dense direction) change the score of another sample?"""
        n = a.shape[0]
        pts = []
        for j in range(n):
            d = np.zeros_like(a)
            d[j] = rng.standard_normal(a.shape[1:]).astype(a.dtype)
            pts += [a + h * d, a - h * d]
        vals = single(np.stack(pts)).reshape(n, 2, n)
        eps = float(np.finfo(a.dtype if a.dtype.kind == "f" else np.float64).eps)
        tol = 64 * eps * max(float(np.max(np.abs(base))), 1e-300)
        others = ~np.eye(n, dtype=bool)
        return bool(np.any(np.abs(vals - base[0][None, None])[np.broadcast_to(others[:, None], vals.shape)] > tol))

    @staticmethod
    def _joint(single, a: np.ndarray, mode: str, h: float, richardson: bool) -> FDResult:
        r"""Derivatives of the total score along directions confined to one sample each (the channel
        directions :math:`\mathbb{1}_{n,k}` or single elements), built in chunks of ~4 M entries."""
        n = a.shape[0]
        total = lambda st: single(st).sum(axis=1, keepdims=True)  # noqa: E731
        if mode == "channel":
            units = [(j, k) for j in range(n) for k in range(a.shape[1])]
        else:
            units = list(range(a.size))
        chunk = max(1, 2 ** 22 // max(1, a.size))
        vals, errs = [], []
        for start in range(0, len(units), chunk):
            part = units[start:start + chunk]
            dirs = np.zeros((len(part),) + a.shape, a.dtype)
            for i, u in enumerate(part):
                if mode == "channel":
                    dirs[i, u[0], u[1]] = 1
                else:
                    dirs[i].flat[u] = 1
            r = directional_derivatives(total, a, dirs, step=h, richardson=richardson)
            vals.append(r.value[:, 0])
            errs.append(None if r.error is None else r.error[:, 0])
        shape = (n, a.shape[1]) if mode == "channel" else a.shape
        err = None if errs[0] is None else np.concatenate(errs).reshape(shape)
        return FDResult(np.concatenate(vals).reshape(shape), err, h)


class _StackError(Exception):
    """Stacking copies along the batch axis does not work for this head (internal)."""


def _agreement_tol(dtype: np.dtype, base: np.ndarray, truth: np.ndarray, h: float) -> float:
    r"""How far two evaluations of the same central differences may differ by rounding alone.

    Both evaluate :math:`S` at the same points; only the batch composition (stacked copies, or the
    structured channel evaluation) changes the rounding of each score, by about
    :math:`\epsilon |S|`.  The central difference divides score differences by :math:`2h`
    (Richardson: weights summing to :math:`\le 1.5/h`), so :math:`|\Delta D| \approx c\,\epsilon
    \max|S| / h` with ``c = 8`` (two scores, ~2.7 ε each): the resolution of the finite differences
    themselves -- a disagreement they can resolve is a real one.  A shortcut or batching error
    changes :math:`D` by the derivative itself (the perturbation is lost or misplaced).  A tolerance
    too tight only costs time (the exact fallback), never correctness.
    """
    eps = float(np.finfo(dtype if np.dtype(dtype).kind == "f" else np.float64).eps)
    scale = max(float(np.max(np.abs(base))), 1e-300)
    return 8.0 * eps * scale / h + 1e-9 * float(np.max(np.abs(truth)))


_RESHAPES = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity"}

# ops that act on each channel (axis 1) separately when their other inputs are constants
_CHANNELWISE = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Identity", "Elu",
                "Selu", "Softplus", "Erf", "Gelu", "Abs", "Neg", "Exp", "Clip", "GlobalAveragePool",
                "GlobalMaxPool", "BatchNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"}


class _ChannelPlan:
    r"""Structure-exploiting evaluation of the 2K channel-perturbed copies (exact, not approximate).

    1. Channel-wise chain: the ops at the start of the head that act on each channel separately
       (element-wise activations, BatchNormalization, global pools, spatial reductions with
       ``keepdims``) are run once on :math:`A`, :math:`A + h\mathbb{1}` and :math:`A - h\mathbb{1}`
       (every channel shifted at once): channel :math:`k` of their output depends on channel
       :math:`k` of their input only, so the output of copy :math:`A \pm h\mathbb{1}_k` is the
       unperturbed output with channel :math:`k` replaced -- the same numbers the 2K full copies give.
    2. Seed folding: if the seeded output is ``Gemm``/``MatMul`` of a tensor :math:`F` with constant
       weights, the head stops at :math:`F` and :math:`\langle s_n, \alpha F_n B + \beta C\rangle =
       \alpha F_n \cdot (B s_n) + \beta \langle s_n, C\rangle` is evaluated exactly in NumPy.
    """

    def __init__(self, model: onnx.ModelProto, wrt: str, seed: str, backend: str) -> None:
        g = model.graph
        inits = {t.name: t for t in g.initializer}
        consts = set(inits) | {n.output[0] for n in g.node if n.op_type == "Constant"}
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        outs = {o.name for o in g.output}
        chain, cur = [], wrt
        while cur not in outs and cur != seed and len(consumers.get(cur, [])) == 1:
            n = consumers[cur][0]
            if n.op_type not in _CHANNELWISE or n.input[0] != cur or n.domain not in ("", "ai.onnx"):
                break
            if any(i and i not in consts for i in n.input[1:]):
                break
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if n.op_type.startswith("Reduce"):
                axes = attrs.get("axes")
                if axes is None and len(n.input) > 1 and n.input[1] in inits:
                    axes = onnx.numpy_helper.to_array(inits[n.input[1]]).tolist()
                if not axes or any(a in (0, 1) or a < 0 for a in axes) or not attrs.get("keepdims", 1):
                    break
            if n.op_type == "BatchNormalization" and (attrs.get("training_mode", 0) or len(n.output) > 1):
                break
            chain.append(n)
            cur = n.output[0]
        self.chain_end = cur
        # seed folding
        prod = {o: n for n in g.node for o in n.output}
        self.fold = None
        head_out = seed
        p = prod.get(seed)
        if p is not None and p.op_type in ("Gemm", "MatMul") and p.input[1] in inits:
            attrs = {a.name: helper.get_attribute_value(a) for a in p.attribute}
            bm = onnx.numpy_helper.to_array(inits[p.input[1]]).astype(np.float64)
            ok = bm.ndim == 2 and not attrs.get("transA", 0)
            c = None
            if len(p.input) > 2 and p.input[2]:
                ok = ok and p.input[2] in inits
                if ok:
                    c = onnx.numpy_helper.to_array(inits[p.input[2]]).astype(np.float64)
            if ok:
                if attrs.get("transB", 0):
                    bm = bm.T
                self.fold = (float(attrs.get("alpha", 1.0)), bm, float(attrs.get("beta", 1.0)), c)
                head_out = p.input[0]
        self.head_out = head_out
        self.usable = bool(chain) or self.fold is not None
        if not self.usable:
            return
        used = {i for n in chain for i in n.input}
        self.sep = None
        if chain:
            sg = helper.make_graph(chain, "chain", [onnx.ValueInfoProto(name=wrt)],
                                   [onnx.ValueInfoProto(name=cur)], [t for t in g.initializer if t.name in used])
            sm = helper.make_model(sg, opset_imports=list(model.opset_import), ir_version=model.ir_version)
            self.sep = _session(_typed(sm, model, [wrt, cur]), backend)
        self.rest = None
        self.side: list[str] = []
        # a rest made of reshapes only keeps each sample's elements in order: no run needed
        rest_nodes = []
        t = head_out
        while t != cur and t in prod and prod[t].op_type in _RESHAPES:
            rest_nodes.append(prod[t])
            t = prod[t].input[0]
        self.reshape_only = t == cur
        if head_out != cur and not self.reshape_only:
            rest, self.side = cut_head(model, cur, [head_out])
            self.rest = _session(rest, backend)
        self.cur = cur
        self.wrt = wrt

    def run(self, a: np.ndarray, s: np.ndarray, side: dict, *, step, richardson) -> FDResult:
        n, k = a.shape[0], a.shape[1]
        h = default_step(a) if step is None else float(step)
        hs = [h, h / 2] if richardson else [h]
        shifts = [0.0] + [sg * hh for hh in hs for sg in (1.0, -1.0)]
        pts = np.concatenate([a + np.asarray(d, a.dtype) for d in shifts], axis=0)
        t = self.sep.run([self.cur], {self.wrt: pts})[0] if self.sep is not None else pts
        t = t.reshape((len(shifts), n) + t.shape[1:])
        t0 = t[0]
        ar = np.arange(k)
        ests = []
        if self.fold is not None and self.reshape_only:
            # <s_n, alpha F_n B + beta C> is affine in F_n = flatten(T_n): the score of copy k differs
            # from the base score by alpha <T±_k - T0_k, (B s_n)_k>; the central difference is
            # alpha <T+_k - T-_k, (B s_n)_k> / 2h (exact algebra, no copies materialised).
            alpha, bm, _beta, _c = self.fold
            v = (s.reshape(n, -1).astype(np.float64) @ bm.T)
            if v.shape[1] != t0[0].size:
                raise ModelError(f"seed folding: {v.shape[1]} features expected, got {t0[0].size}")
            v = v.reshape(n, k, -1)
            for i, hh in enumerate(hs):
                d = (t[1 + 2 * i].astype(np.float64) - t[2 + 2 * i]).reshape(n, k, -1)
                ests.append(alpha * np.einsum("nke,nke->kn", d, v) / (2 * hh))
            if richardson:
                return FDResult((4 * ests[1] - ests[0]) / 3, np.abs(ests[1] - ests[0]) / 3, h)
            return FDResult(ests[0], None, h)
        for i, hh in enumerate(hs):
            vals = []
            for j in (1 + 2 * i, 2 + 2 * i):
                stack = np.repeat(t0[None], k, axis=0)           # (K, N, K, *s')
                stack[ar, :, ar] = np.moveaxis(t[j], 1, 0)      # copy k: channel k perturbed
                vals.append(self._score(stack, s, side))
            ests.append((vals[0] - vals[1]) / (2 * hh))
        if richardson:
            return FDResult((4 * ests[1] - ests[0]) / 3, np.abs(ests[1] - ests[0]) / 3, h)
        return FDResult(ests[0], None, h)

    def _score(self, stack: np.ndarray, s: np.ndarray, side: dict) -> np.ndarray:
        m, n = stack.shape[:2]
        budget = max(1, int(2 ** 24 // max(1, int(np.prod(stack.shape[1:])))))
        outs = []
        for st in range(0, m, budget):
            part = stack[st:st + budget]
            mm = part.shape[0]
            x = part.reshape((mm * n,) + part.shape[2:])
            if self.rest is not None:
                feed = {self.cur: x}
                for key, v in side.items():
                    feed[key] = np.concatenate([v] * mm, axis=0) if v.ndim and v.shape[0] == n else v
                x = self.rest.run([self.head_out], feed)[0]
            x = x.reshape((mm, n) + x.shape[1:]).astype(np.float64)
            if self.fold is not None:
                alpha, bm, beta, c = self.fold
                f = x.reshape(mm, n, -1)
                sv = s.reshape(n, -1).astype(np.float64)
                val = alpha * np.einsum("mnf,nf->mn", f, sv @ bm.T)
                if c is not None:
                    val = val + beta * (np.broadcast_to(c, sv.shape) * sv).sum(axis=1)[None]
            else:
                val = (x * s[None]).reshape(mm, n, -1).sum(axis=-1)
            outs.append(val)
        return np.concatenate(outs, axis=0)


def _typed(m: onnx.ModelProto, model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """Give the chain model's input/output the element types (and batch-free shapes) of ``model``."""
    info = TensorInfo(shape_inference.infer_shapes(model, data_prop=True))
    for vi in list(m.graph.input) + list(m.graph.output):
        shp = info.shape.get(vi.name)
        vi.CopyFrom(helper.make_tensor_value_info(
            vi.name, info.elem[vi.name], None if shp is None else [None] + list(shp[1:])))
    m.ir_version = ir_for(model_opset(model), model.ir_version)
    return m


def fd_gradients(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], wrt: str,
                 seed_values: np.ndarray, *, seed: str | None = None, mode: str = "full",
                 step: float | None = None, richardson: bool = True, batched: bool = True,
                 backend: str = "onnxruntime") -> tuple[np.ndarray, FDResult]:
    r"""One-shot :class:`FiniteDifferences` (``FiniteDifferences(model, wrt, seed=seed,
    backend=backend)(inputs, seed_values, mode=..., step=..., richardson=..., batched=...)``)."""
    return FiniteDifferences(model, wrt, seed=seed, backend=backend)(
        inputs, seed_values, mode=mode, step=step, richardson=richardson, batched=batched)
