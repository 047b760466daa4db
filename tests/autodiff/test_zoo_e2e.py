"""Every model of the adapter's toy zoo: VJP gradients (layer and input) against finite differences.

Oracle: float64 central differences (default step 6e-6 x scale, Richardson) of the float64 twin of
each model run by ``onnx.reference`` (float32 FD cannot resolve derivatives that are small next to
the score: rounding ~1e-7 |S| / h).  The float32 VJP (onnxruntime) must match to 1e-4 of the
largest gradient entry (float32 arithmetic through a few layers).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from ._harness import to_float64
from refcam.autodiff import SEED_INPUT, build_vjp_model, grad_name
from refcam.autodiff.fd import FiniteDifferences, directional_derivatives
from refcam.onnx import Model
from refcam.onnx.toy_models import ZOO


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_gradients_match_fd(name, seed=0):
    proto = ZOO[name]()
    layout = "NHWC" if name == "nhwc" else "NCHW"
    m = Model(proto, layout=layout)
    rng = np.random.default_rng(zlib.crc32(name.encode()) + seed)
    shape = tuple(d if isinstance(d, int) else 12 for d in m.input_shape[1:])
    n = m.fixed_batch or 2
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    layer = m.default_layer().name
    vjp = build_vjp_model(m.proto if m.output_name in m.graph_outputs else _with_out(m), [layer, m.input_name],
                          seed=m.output_name)
    import onnxruntime as ort

    vs = ort.InferenceSession(vjp.SerializeToString(), providers=["CPUExecutionProvider"])
    y = m.run(x)[m.output_name]
    s = rng.standard_normal(y.shape).astype(np.float32)
    out = dict(zip([o.name for o in vjp.graph.output], vs.run(None, {m.input_name: x, SEED_INPUT: s})))
    m64 = to_float64(m.proto)
    x64 = x.astype(np.float64)
    fd = FiniteDifferences(m64, layer, seed=m.output_name, backend="reference")
    _, r = fd({m.input_name: x64}, s, mode="full")
    assert np.all(np.abs(out[grad_name(layer)] - r.value) <= 1e-4 * np.abs(r.value).max() + 10 * r.error)
    # input gradient: 4 random directions
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(_with_out_proto(m64, m))
    v = rng.standard_normal((4,) + x.shape)
    score = lambda st: np.stack([(ref.run([m.output_name], {m.input_name: p})[0] * s).reshape(n, -1).sum(-1)  # noqa: E731
                                 for p in st])
    d = directional_derivatives(score, x64, v)
    got = np.einsum("mnj,nj->mn", v.reshape(4, n, -1), out[grad_name(m.input_name)].reshape(n, -1).astype(np.float64))
    # a random direction can cross a kink (HardSwish at +-3, Clip, ReLU) within h: Richardson's
    # error estimate flags exactly those directions, so it widens the tolerance entry-wise
    assert np.all(np.abs(got - d.value) <= 1e-4 * np.abs(d.value).max() + 10 * d.error)


def _with_out_proto(p64, m):
    import onnx

    if m.output_name in [o.name for o in p64.graph.output]:
        return p64
    p = onnx.ModelProto()
    p.CopyFrom(p64)
    p.graph.output.append(onnx.ValueInfoProto(name=m.output_name))
    return p


def _with_out(m):
    import onnx

    p = onnx.ModelProto()
    p.CopyFrom(m.proto)
    p.graph.output.append(m.value_info[m.output_name])
    return p
