"""Attention probabilities found in a hand-built graph (refcam.onnx.attention_probe) and the
end-to-end rollout / Chefer relevance (refcam.attention_explanation) against the math floor fed
with the same tensors read by hand."""

from __future__ import annotations

import numpy as np
import pytest

from refcam import math as M
from refcam._compare import max_abs_error
from refcam.attention_explanation import explain_attention
from refcam.errors import InvalidArgumentError, ModelError
from refcam.onnx import Model
from refcam.onnx.attention_probe import attention_probes

from .test_layout import channels_last_net, vit_like


def test_probe_finds_softmax_of_attention():
    proto, t, _ = vit_like(prefix=2)
    m = Model(proto)
    (p,) = attention_probes(m)
    assert p.name == "attn" and p.shape[0] == "N" and p.shape[2:] == (t, t)


def test_rollout_and_chefer_end_to_end():
    from refcam.autodiff import gradients

    proto, t, _ = vit_like(prefix=2)
    m = Model(proto)
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4)).astype(np.float32)
    e = explain_attention(m, x, "rollout")
    a = m.run(x, ["attn"])["attn"][:, None]                       # (N, 1 head, T, T)
    assert e.prefix == 2 and e.grid == (2, 2)
    ref = M.attention_rollout([a])
    assert max_abs_error(e.relevance, ref) == 0.0
    assert max_abs_error(e.maps, ref[:, 0, 2:].reshape(3, 2, 2)) == 0.0
    with pytest.raises(InvalidArgumentError, match="class-agnostic"):
        explain_attention(m, x, "rollout", target=1)


def test_chefer_end_to_end_uses_gradients_of_the_probabilities():
    from refcam.autodiff import gradients

    proto, t, _ = vit_like(prefix=1)
    m = Model(proto)
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    e = explain_attention(m, x, "chefer", target=[0, 3])
    r = gradients(m, x, wrt="attn", target=[0, 3])
    a = r.activations["attn"][:, None]
    g = r.gradients["attn"][:, 0][:, None]
    ref = M.gradient_weighted_relevance([a], [g])
    assert max_abs_error(e.relevance, ref) == 0.0
    assert e.targets.ravel().tolist() == [0, 3]


def test_no_attention_is_refused():
    with pytest.raises(ModelError, match="no attention"):
        explain_attention(Model(channels_last_net()), np.zeros((1, 3, 4, 4), np.float32))


def _with_attention_op(prefix=1):
    """vit_like with its attention as one opset-23 ``Attention`` node (3-D q, k, v, one head)."""
    from onnx import helper

    proto, t, d = vit_like(prefix=prefix)
    g = proto.graph
    keep = [n for n in g.node if n.output[0] not in ("kt", "scores", "attn", "ctx")]
    i = [n.output[0] for n in keep].index("v")
    keep.insert(i + 1, helper.make_node("Attention", ["q", "k", "v"], ["ctx"], q_num_heads=1, kv_num_heads=1))
    del g.node[:]
    g.node.extend(keep)
    del proto.opset_import[:]
    proto.opset_import.extend([helper.make_opsetid("", 23)])
    proto.ir_version = 10
    return proto, t


def test_opset23_attention_op_probabilities():
    from refcam.onnx.attention_probe import expose_attention_probabilities

    proto, t = _with_attention_op()
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4)).astype(np.float32)
    with pytest.raises(ModelError, match="expose_attention_probabilities"):
        explain_attention(Model(proto), x, "rollout")
    m = Model(expose_attention_probabilities(proto))
    (p,) = attention_probes(m)
    assert p.name == "ctx/probabilities" and p.shape[1:] == (1, t, t)
    e = explain_attention(m, x, "rollout")
    # the same probabilities by hand from q and k (scale 1/sqrt(D), the op's default)
    q, k = (m.run(x, [n])[n] for n in ("q", "k"))
    s = q @ np.transpose(k, (0, 2, 1)) / np.sqrt(q.shape[-1])
    a = np.exp(s - s.max(-1, keepdims=True))
    a = (a / a.sum(-1, keepdims=True))[:, None]
    assert max_abs_error(e.arrays["attentions"][0], a) <= 1e-6
    assert max_abs_error(e.relevance, M.attention_rollout([a])) <= 1e-6
