"""refcam.explain runs gradient methods in ONE onnxruntime session (the VJP graph also gives the
outputs and activations), and its maps equal those of the provider path."""

from __future__ import annotations

import numpy as np
import pytest

import refcam
from refcam._compare import errors, within
from refcam.onnx import Model
from refcam.onnx.toy_models import resnet_like


@pytest.mark.parametrize("method", ["saliency", "guided_backprop", "deconvnet", "gradcam", "gradcampp"])
@pytest.mark.parametrize("target", [None, [2, 0, 1]])
def test_one_session_and_same_maps(method, target, monkeypatch):
    m = Model(resnet_like())
    calls = []
    real = Model.new_session
    monkeypatch.setattr(Model, "new_session", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    x = np.random.default_rng(3).standard_normal((3, *m.input_shape[1:])).astype(np.float32)
    e = refcam.explain(m, x, method, target=target)
    assert len(calls) == 1, f"{method}: {len(calls)} sessions"
    # the same method through a forward run first, then the need providers
    from refcam import explanation

    monkeypatch.setattr(explanation, "_one_vjp_run", lambda *a: False)
    e2 = refcam.explain(Model(resnet_like()), x, method, target=target)
    np.testing.assert_array_equal(e.targets, e2.targets)
    # two onnxruntime graphs (one seeded in the graph): float32 rounding apart, relative to max|map|
    assert within(e.maps, e2.maps, rtol=1e-5), errors(e.maps, e2.maps)
