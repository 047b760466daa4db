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
