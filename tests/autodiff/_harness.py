"""Helpers for the autodiff tests: tiny ONNX graphs, VJP runs, finite-difference oracle."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from refcam.autodiff import SEED_INPUT, build_vjp_model, grad_name
from refcam.autodiff.fd import fd_gradients

NP2ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
           np.dtype(np.int64): TensorProto.INT64}

#: worst relative error seen per op (filled by the tests, printed by test_zz_report)
WORST: dict[str, float] = {}


def make_model(nodes, inputs: dict, outputs, inits: dict | None = None, opset: int = 17):
    """inputs: name -> ndarray (shape/dtype), inits: name -> ndarray."""
    g = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(k, NP2ONNX[v.dtype], list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          ir_version=helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    m = onnx.shape_inference.infer_shapes(m)
    # give outputs their inferred types
    vis = {v.name: v for v in m.graph.value_info}
    for o in m.graph.output:
        if o.name in vis:
            o.CopyFrom(vis[o.name])
    return m


def session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def vjp(model, feeds, wrt, seed_values, rules="plain", seed=None):
    m = build_vjp_model(model, wrt, seed=seed, rules=rules)
    sess = session(m)
    wl = [wrt] if isinstance(wrt, str) else wrt
    out = sess.run([grad_name(w) for w in wl], {**feeds, SEED_INPUT: seed_values})
    return out if not isinstance(wrt, str) else out[0]


def check_op(label, model, feeds, wrt, *, rtol, seed=None, batched=False, rng=None, step=None,
             richardson=True, ref64=False):
    """Compare the VJP gradient with the FD oracle; record the worst relative error under ``label``."""
    rng = rng or np.random.default_rng(0)
    sess = session(model)
    out_name = seed or model.graph.output[0].name
    y = sess.run([out_name], feeds)[0]
    s = rng.standard_normal(y.shape).astype(y.dtype)
    wl = [wrt] if isinstance(wrt, str) else list(wrt)
    grads = vjp(model, feeds, wl, s, seed=seed)
    for w, gv in zip(wl, grads):
        if ref64:  # float64 twin run by onnx.reference: FD accurate to ~1e-9
            f64 = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in feeds.items()}
            _, fd = fd_gradients(to_float64(model), f64, w, s, seed=seed, batched=batched, step=step,
                                 richardson=richardson, backend="reference")
        else:
            _, fd = fd_gradients(model, feeds, w, s, seed=seed, batched=batched, step=step,
                                 richardson=richardson)
        assert gv.shape == fd.value.shape, (gv.shape, fd.value.shape)
        scale = max(np.max(np.abs(fd.value)), 1e-12)
        err = float(np.max(np.abs(gv - fd.value)) / scale)
        WORST[label] = max(WORST.get(label, 0.0), err)
        assert err <= rtol, f"{label}: wrt {w}: relative error {err:.3g} > {rtol}"
    return grads


def agree(vjp_value, fd, rel=1e-4, k=10.0):
    """VJP within float32 FD's own accuracy: ``rel`` of the scale (float32 rounding at h=1e-2) plus
    ``k`` times the Richardson error estimate (which flags ReLU/max kinks crossed inside [A-h, A+h]).
    Returns (ok, worst relative error)."""
    scale = np.max(np.abs(fd.value))
    err = np.abs(np.asarray(vjp_value, np.float64) - fd.value)
    return bool(np.all(err <= rel * scale + k * fd.error)), float(err.max() / scale)


def to_float64(proto):
    """A float64 twin of a float32 model: every FLOAT initializer, Constant value, value info and
    Cast target becomes DOUBLE (weights are the float32 values widened exactly)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    for i, t in enumerate(list(g.initializer)):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for n in g.node:
        for a in n.attribute:
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
    return m
