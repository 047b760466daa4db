r"""Gradients of a model's class scores through the adapter: forward + backward in one session run.

:func:`gradients` builds (once per model, ``wrt`` set and rule set; cached) the VJP model of
:func:`~refcam.autodiff.build_vjp_model`, seeds it with one-hot rows of the resolved targets and
runs forward and backward together in one onnxruntime session, batched.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .._validate import choice
from ..errors import ModelError, TargetError
from ..onnx import Model, load
from ..onnx.onnx_targets import SCORE_OUTPUT, WEIGHT_INPUT, OnnxTarget
from ..onnx.targets import resolve_targets
from . import cache
from .builder import SEED_INPUT, build_vjp_model, grad_name
from .rules import RULE_SETS

__all__ = ["gradients", "GradientResult", "exported_gradients"]

_CACHE: "weakref.WeakKeyDictionary[Model, dict]" = weakref.WeakKeyDictionary()


@dataclass
class GradientResult:
    r"""Result of :func:`gradients`.

    Attributes
    ----------
    outputs : ``(N, ...)`` the model's target output tensor (pre-softmax logits by default).
    classes : ``(N, T)`` int64 target classes (``None`` for an :class:`~refcam.onnx.OnnxTarget`).
    activations : name → ``(N, K, *S)`` channels-first activation :math:`A` (the model input for
        ``"input"``, in its native layout).
    gradients : name → ``(N, T, K, *S)``: :math:`\partial y^{c_{n,t}} / \partial A_n` for each
        target :math:`t` of sample :math:`n` (axis ``T`` always present).
    """

    outputs: np.ndarray
    classes: np.ndarray
    activations: dict
    gradients: dict


class _Session:
    """An onnxruntime session whose failures become :class:`~refcam.errors.ModelError`."""

    def __init__(self, sess: ort.InferenceSession) -> None:
        self._sess = sess

    def run(self, names, feeds):
        try:
            return self._sess.run(names, feeds)
        except Exception as exc:
            shapes = {k: tuple(np.shape(v)) for k, v in feeds.items()}
            raise ModelError(f"onnxruntime failed running the gradient model on inputs {shapes}: {exc}") from exc


def _vjp_session(model: Model, wrt: tuple, rules: str, seed_mode: str = "input",
                 target: OnnxTarget | None = None, x: np.ndarray | None = None):
    """The cached gradient session: one gradient graph per model, ``wrt`` set, rule set and target
    kind.  Ranks static shape inference leaves unknown are read from one probe run on ``x``
    (:meth:`Model.runtime_shapes`, only when a rule needs them); sizes are read at run time, so the
    graph serves every batch size."""
    per = _CACHE.setdefault(model, {})
    key = (wrt, rules, seed_mode, None if target is None else target.signature,
           None if model.input_shape is not None or x is None else x.ndim)
    if key not in per:
        # built from the model's skeleton (its large initializers stay in model.weights and are
        # handed to the session as external initializers: refcam.onnx._weights)
        proto = onnx.ModelProto()
        proto.CopyFrom(model.skeleton)
        if model.output_name not in [o.name for o in proto.graph.output]:
            vi = model.value_info.get(model.output_name)
            proto.graph.output.append(vi if vi is not None else onnx.ValueInfoProto(name=model.output_name))
        seed = model.output_name
        if target is not None:  # score nodes after the output; the score (N, 1) is seeded with ones
            proto = target.attach(proto, model.output_name)
            seed = SCORE_OUTPUT
        probe = None if x is None else (lambda: model.runtime_shapes(x))
        signature = None if x is None else (tuple(x.shape[1:]), x.dtype.str)
        dkey = cache.graph_key(proto, wrt, rules, seed_mode, signature) if cache.cache_enabled() else None
        with _Progress(f"building the gradient graph ({rules} rules, wrt {', '.join(wrt)})") as note:
            vjp = cache.load_graph(dkey, model.weights) if dkey else None
            sess = None
            if vjp is not None:
                note.done = "from the cache"
                try:
                    sess = model.new_session(vjp, gradient=True)
                except Exception:  # noqa: BLE001 - an entry onnxruntime refuses is rebuilt
                    cache.discard(dkey)
                    sess = vjp = None
            if vjp is None:
                vjp = build_vjp_model(proto, list(wrt), seed=seed, rules=rules, seed_mode=seed_mode,
                                      runtime_shapes=probe, weights=model.weights)
                if dkey and cache.store_graph(dkey, vjp, model.weights, {"wrt": list(wrt), "rules": rules}):
                    note.done = f"cached in {cache.cache_dir()}"
            if sess is None:
                try:
                    sess = model.new_session(vjp, gradient=True)
                except Exception as exc:
                    raise ModelError(f"onnxruntime could not load the gradient model: {exc}") from exc
        per[key] = _Session(sess)
    return per[key]


class _Progress:
    """A line on stderr when the block takes over ``delay`` seconds (a gradient graph build and
    its session on a large model).  ``REFCAM_PROGRESS=0`` silences it."""

    def __init__(self, what: str, delay: float = 1.0) -> None:
        self.what, self.delay, self.done = what, delay, ""
        self._shown = False
        self._timer = None

    def _show(self) -> None:
        self._shown = True
        print(f"refcam: {self.what} ...", file=sys.stderr, flush=True)

    def __enter__(self) -> "_Progress":
        if os.environ.get("REFCAM_PROGRESS", "1").strip().lower() not in ("0", "off", "false", "no"):
            self._t0 = time.perf_counter()
            self._timer = threading.Timer(self.delay, self._show)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
            if self._shown and exc[0] is None:
                took = time.perf_counter() - self._t0
                print(f"refcam: {self.what}: done in {took:.1f} s" + (f" ({self.done})" if self.done else ""),
                      file=sys.stderr, flush=True)


def _resolve_wrt(model: Model, wrt: Any) -> list[str]:
    if wrt is None:
        return [model.default_layer().name]
    items = [wrt] if isinstance(wrt, str) else list(wrt)
    out = []
    for w in items:
        out.append(model.input_name if w in ("input", model.input_name) else model.layer(w, argument="wrt").name)
    return list(dict.fromkeys(out))


def gradients(model: Any, inputs: Any, wrt: Any = None, target: Any = None, *, rules: str = "plain",
              batch_size: int | None = None) -> GradientResult:
    r"""Activations and exact gradients :math:`\partial y^c/\partial A` from an ONNX model.

    Parameters
    ----------
    model : a :class:`refcam.onnx.Model` or anything :func:`refcam.onnx.load` accepts.
    inputs : ``(N, *input_shape[1:])`` batch in the model's native layout.
    wrt : layer name(s) (tensor names, node names or module paths as :meth:`Model.layer`
        resolves them) or ``"input"``; default the model's default CAM layer.
    target : ``None`` (top-1), an ``int``, :class:`refcam.onnx.TopK`, a per-sample sequence or an
        ``(N, T)`` int array (see :mod:`refcam.onnx.targets`), or an
        :class:`~refcam.onnx.OnnxTarget` (softmax probability, mask sum, embedding similarity...):
        its nodes are appended after the output and the VJP graph differentiates the score
        (gradients :math:`\partial\,\mathrm{score}_n/\partial A_n`; one VJP model per target
        kind, cached).  Plain Python callables have no ONNX graph to differentiate: they raise
        :class:`~refcam.errors.TargetError` (express the score as an ``OnnxTarget``).
    rules : ``"plain"``, ``"guided"`` or ``"deconvnet"`` (see :mod:`refcam.autodiff.rules`).
    batch_size : samples per onnxruntime run (default: from the model's ``memory_budget``).

    Returns
    -------
    GradientResult.  ``target=None`` seeds the top-1 class inside the graph (one run);
    ``TopK`` targets need the outputs first: one extra forward run.

    Examples
    --------
    >>> from refcam.onnx.toy_models import cam_net
    >>> r = gradients(cam_net(), np.ones((2, 3, 12, 12), np.float32), target=1)
    >>> name = next(iter(r.gradients))
    >>> r.activations[name].shape, r.gradients[name].shape, r.classes.tolist()
    ((2, 6, 12, 12), (2, 1, 6, 12, 12), [[1], [1]])
    """
    m = load(model)
    rules = choice(rules, "rules", RULE_SETS)
    x = m.check_inputs(inputs)
    n = x.shape[0]
    names = _resolve_wrt(m, wrt)
    if isinstance(target, OnnxTarget):
        return _onnx_target(m, x, names, rules, batch_size, target)
    if callable(target) or (isinstance(target, (list, tuple)) and any(callable(t) for t in target)):
        raise TargetError("target: a Python callable has no ONNX graph to differentiate; express the score "
                          "as a refcam.onnx.OnnxTarget (softmax_probability, log_softmax, mask_sum, "
                          "embedding_similarity), pass class indices, or use finite differences "
                          "(refcam.autodiff.fd)")
    # targets that need the outputs (top-1, top-k) or a class count: one forward run
    out_vi = m.value_info.get(m.output_name)
    n_cls = None
    if out_vi is not None and out_vi.type.tensor_type.HasField("shape"):
        dims = out_vi.type.tensor_type.shape.dim
        if len(dims) == 2 and dims[1].HasField("dim_value"):
            n_cls = dims[1].dim_value
    if target is None and out_vi is not None and out_vi.type.tensor_type.HasField("shape") and \
            len(out_vi.type.tensor_type.shape.dim) >= 2:
        return _top1(m, x, names, rules, batch_size)
    if target is None or n_cls is None or not isinstance(target, (int, np.integer, list, tuple, np.ndarray)):
        outputs_first = m.run(x, [m.output_name], checked=True)[m.output_name]
        tg = resolve_targets(target, outputs_first)
    else:
        tg = resolve_targets(target, np.zeros((n, n_cls), dtype=m.input_dtype))
    classes = tg.classes
    sess = _vjp_session(m, tuple(names), rules, x=x)
    run_names = [m.output_name] + [grad_name(w) for w in names] + [w for w in names if w != m.input_name]
    out_shape = None
    chunk = batch_size or m.fixed_batch or max(1, m.memory_budget // max(1, x[:1].nbytes * (1 + 2 * len(names))))
    results: dict[str, list] = {k: [] for k in run_names}
    grads_t: dict[str, list] = {w: [] for w in names}
    for t in range(tg.n_targets):
        per_t: dict[str, list] = {w: [] for w in names}
        for start in range(0, n, chunk):
            xb = x[start:start + chunk]
            cb = classes[start:start + chunk, t]
            pad = 0
            if m.fixed_batch is not None and xb.shape[0] < m.fixed_batch:
                pad = m.fixed_batch - xb.shape[0]
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
                cb = np.concatenate([cb, np.repeat(cb[-1:], pad)])
            if out_shape is None:
                probe = m.session([m.output_name]).run([m.output_name], m.feed(xb[:1], start))[0] \
                    if n_cls is None else None
                out_shape = (n_cls,) if n_cls is not None else probe.shape[1:]
            seed = np.zeros((xb.shape[0],) + tuple(out_shape), dtype=m.input_dtype)
            seed.reshape(xb.shape[0], -1)[np.arange(xb.shape[0]), cb] = 1
            outs = sess.run(run_names, {**m.feed(xb, start, pad), SEED_INPUT: seed})
            if pad:
                outs = [o[: xb.shape[0] - pad] for o in outs]
            for k, o in zip(run_names, outs):
                if t == 0:
                    results[k].append(o)
                if k.startswith("refcam_grad/"):
                    per_t[k[len("refcam_grad/"):]].append(o)
        for w in names:
            grads_t[w].append(per_t[w])
    outputs = np.concatenate(results[m.output_name], axis=0)
    acts = {}
    grads = {}
    for w in names:
        if w == m.input_name:
            acts[w] = x
            grads[w] = np.stack([np.concatenate(per, axis=0) for per in grads_t[w]], axis=1)  # (N, T, *native)
        else:
            b = m._batch_axis(w)  # chunks join along the layer's batch axis (axis 1: sequence-first)
            a = np.concatenate(results[w], axis=b)
            g = np.stack([np.concatenate(per, axis=b) for per in grads_t[w]],
                         axis=1)                                # (native axis 0, T, *native[1:])
            acts[w] = m._as_map(w, a)
            grads[w] = m._as_map(w, g, lead=1)
    return GradientResult(outputs, classes, acts, grads)


def _collect(m: Model, x: np.ndarray, names: list[str], run_names: list[str], outs: dict) -> tuple[dict, dict]:
    acts, grads = {}, {}
    for w in names:
        if w == m.input_name:
            acts[w], grads[w] = x, np.concatenate(outs[grad_name(w)], axis=0)[:, None]  # (N, 1, *native)
        else:
            b = m._batch_axis(w)  # chunks join along the layer's batch axis (axis 1: sequence-first)
            g = np.concatenate(outs[grad_name(w)], axis=b)[:, None]
            acts[w] = m._as_map(w, np.concatenate(outs[w], axis=b))
            grads[w] = m._as_map(w, g, lead=1)
    return acts, grads


def _top1(m: Model, x: np.ndarray, names: list[str], rules: str, batch_size: int | None) -> GradientResult:
    """target=None: the VJP model seeds one-hot(ArgMax(y)) itself, so one run gives y and the gradients."""
    sess = _vjp_session(m, tuple(names), rules, "top1", x=x)
    run_names = [m.output_name] + [grad_name(w) for w in names] + [w for w in names if w != m.input_name]
    n = x.shape[0]
    chunk = batch_size or m.fixed_batch or max(1, m.memory_budget // max(1, x[:1].nbytes * (1 + 2 * len(names))))
    outs: dict[str, list] = {k: [] for k in run_names}
    for start in range(0, n, chunk):
        xb = x[start:start + chunk]
        pad = 0
        if m.fixed_batch is not None and xb.shape[0] < m.fixed_batch:
            pad = m.fixed_batch - xb.shape[0]
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
        res = sess.run(run_names, m.feed(xb, start, pad))
        for k, o in zip(run_names, res):
            outs[k].append(o[: xb.shape[0] - pad] if pad else o)
    outputs = np.concatenate(outs[m.output_name], axis=0)
    classes = np.argmax(outputs.reshape(n, outputs.shape[1], -1)[:, :, 0], axis=1)[:, None].astype(np.int64)
    acts, grads = _collect(m, x, names, run_names, outs)
    return GradientResult(outputs, classes, acts, grads)


def _chunk(m: Model, x: np.ndarray, names: list[str], batch_size: int | None) -> int:
    return batch_size or m.fixed_batch or max(1, m.memory_budget // max(1, x[:1].nbytes * (1 + 2 * len(names))))


def _onnx_target(m: Model, x: np.ndarray, names: list[str], rules: str, batch_size: int | None,
                 target: OnnxTarget) -> GradientResult:
    """Gradients of an :class:`OnnxTarget` score: weights fed as ``refcam_target_weight``, the
    ``(N, 1)`` score seeded with ones.  ``classes`` of the result is ``None``."""
    n = x.shape[0]
    out_vi = m.value_info.get(m.output_name)
    dims = out_vi.type.tensor_type.shape.dim if out_vi is not None and \
        out_vi.type.tensor_type.HasField("shape") else None
    if dims is not None and len(dims) >= 1 and all(d.HasField("dim_value") for d in dims[1:]):
        out_shape = (n,) + tuple(d.dim_value for d in dims[1:])
    else:  # dynamic output shape: one probe run
        probe = m.session([m.output_name]).run([m.output_name], m.feed(x[:1]) if m.fixed_batch is None
                                               else m.feed(np.repeat(x[:1], m.fixed_batch, 0), 0,
                                                           m.fixed_batch - 1))[0]
        out_shape = (n,) + probe.shape[1:]
    w = target.weights(out_shape, m.input_dtype)
    sess = _vjp_session(m, tuple(names), rules, target=target, x=x)
    run_names = [m.output_name] + [grad_name(w_) for w_ in names] + [w_ for w_ in names if w_ != m.input_name]
    chunk = _chunk(m, x, names, batch_size)
    outs: dict[str, list] = {k: [] for k in run_names}
    for start in range(0, n, chunk):
        xb, wb = x[start:start + chunk], w[start:start + chunk]
        pad = 0
        if m.fixed_batch is not None and xb.shape[0] < m.fixed_batch:
            pad = m.fixed_batch - xb.shape[0]
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
            wb = np.concatenate([wb, np.repeat(wb[-1:], pad, axis=0)])
        seed = np.ones((xb.shape[0], 1), dtype=m.input_dtype)
        res = sess.run(run_names, {**m.feed(xb, start, pad), WEIGHT_INPUT: wb, SEED_INPUT: seed})
        for k, o in zip(run_names, res):
            outs[k].append(o[: xb.shape[0] - pad] if pad else o)
    outputs = np.concatenate(outs[m.output_name], axis=0)
    acts, grads = _collect(m, x, names, run_names, outs)
    return GradientResult(outputs, None, acts, grads)


def exported_gradients(model: Any, inputs: Any, names: Sequence[str] | str, *,
                       feeds: dict | None = None) -> dict:
    """Gradients a model already outputs itself (e.g. a user's own export with gradient outputs).

    Parameters
    ----------
    model : a :class:`refcam.onnx.Model` or anything :func:`refcam.onnx.load` accepts.
    inputs : the batch for the model's image input.
    names : the output tensor name(s) holding gradients.
    feeds : extra graph inputs (e.g. a seed/one-hot input the export takes).

    Returns
    -------
    dict name → array as the model returns it (native layout).

    Examples
    --------
    >>> from onnx import helper, TensorProto
    >>> g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"]),
    ...                        helper.make_node("Add", ["x", "x"], ["dy_dx"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 1])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 1]),
    ...      helper.make_tensor_value_info("dy_dx", TensorProto.FLOAT, ["N", 2, 1])])
    >>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    >>> exported_gradients(m, np.array([[[1.0], [3.0]]]), "dy_dx")["dy_dx"].ravel()
    array([2., 6.], dtype=float32)
    """
    from ..errors import LayerNotFoundError

    m = load(model)
    x = m.check_inputs(inputs)
    wanted = [names] if isinstance(names, str) else list(names)
    for nm in wanted:
        if nm not in m.graph_outputs:
            raise LayerNotFoundError(f"names: {nm!r} is not an output of the model (outputs: {m.graph_outputs})")
    sess = m.session(wanted)
    feed = {m.input_name: x}
    feed.update(feeds or {})
    return dict(zip(wanted, sess.run(wanted, feed)))
