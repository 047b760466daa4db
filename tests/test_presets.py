"""refcam.presets without torch: the table, hand-computed pipelines, properties, errors.

The cross-checks against the genuine peers live in tests/peers (they need the peers extra).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refcam.math as rm
from refcam import presets as P
from refcam.errors import InvalidArgumentError, RefcamError, ShapeError


# --------------------------------------------------------------------------- the table

def test_table_keys_and_coverage():
    assert P.PRESET_NAMES == ("paper", "pytorch-grad-cam", "torchcam", "captum")
    assert set(P.methods("pytorch-grad-cam")) == {
        "gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "gradcam_elementwise",
        "eigencam", "eigengradcam", "scorecam", "ablationcam"}
    assert set(P.methods("torchcam")) == {"cam", "gradcam", "gradcampp", "xgradcam", "layercam", "scorecam"}
    assert P.methods("captum") == ("gradcam",)
    for preset in P.PRESET_NAMES:
        for method, conv in P.PRESETS[preset].items():
            assert conv.preset == preset and conv.method == method
            assert callable(getattr(rm, method)), method
            assert conv.source


@pytest.mark.parametrize("method", P.methods("paper"))
def test_paper_relu_is_the_math_floor_default(method):
    # The paper row writes out the math floor's documented default of relu= for every method.
    default = inspect.signature(getattr(rm, method)).parameters["relu"].default
    assert P.get("paper", method).relu is default


def test_peer_constants_as_read_from_their_sources():
    pgc = P.PRESETS["pytorch-grad-cam"]
    assert dict(pgc["gradcampp"].method_kwargs) == {"eps": 1e-6}
    assert dict(pgc["xgradcam"].method_kwargs) == {"eps": 1e-7}
    assert dict(pgc["eigencam"].method_kwargs) == {"center": True, "sign": "none"}
    assert all(c.relu and c.normalize_eps == 1e-7 and c.renormalize_eps == 1e-7 for c in pgc.values())
    assert pgc["scorecam"].masks == P.MaskConvention("linear-align-corners", "upsample-then-normalize",
                                                     1e-8, True, None)
    tc = P.PRESETS["torchcam"]
    assert tc["cam"].relu is False and all(c.relu for m, c in tc.items() if m != "cam")
    assert all(c.normalize_eps == 1e-8 and c.upsample is None for c in tc.values())
    assert tc["scorecam"].masks.mask_order == "normalize-then-upsample"
    cap = P.get("captum", "gradcam")
    assert (cap.relu, cap.normalize_eps, cap.upsample, cap.fuse) == (False, None, None, None)
    assert P.CAPTUM_INTERPOLATE == "nearest"


def test_conventions_are_frozen():
    conv = P.get("torchcam", "gradcam")
    with pytest.raises(Exception):
        conv.relu = False
    with pytest.raises(TypeError):
        P.get("pytorch-grad-cam", "gradcampp").method_kwargs["eps"] = 0.0
    assert conv.replace(relu=False).relu is False and conv.relu is True


# --------------------------------------------------------------------------- hand-computed pipelines

A1 = np.array([[[[0.0, 1.0], [2.0, 4.0]]]])          # N=1, K=1, 2x2
G1 = np.ones_like(A1)                                 # Grad-CAM weight 1: map = A


def test_pytorch_grad_cam_pipeline_by_hand():
    # map [[0,1],[2,4]] -> /(4+1e-7) -> columns 2->4 half-pixel: [0,1] -> [0,.25,.75,1],
    # [2,4] -> [2,2.5,3.5,4] -> min-max again: / (m + 1e-7), m = 4/(4+1e-7) the new max.
    up = np.array([[0.0, 0.25, 0.75, 1.0], [2.0, 2.5, 3.5, 4.0]])
    m = 4.0 / (4.0 + 1e-7)
    expected = up / (4.0 + 1e-7) / (m + 1e-7)
    got = P.compute("gradcam", "pytorch-grad-cam", activations=A1, gradients=G1, input_size=(2, 4))
    np.testing.assert_allclose(got[0], expected, rtol=1e-15, atol=0)


def test_paper_pipeline_by_hand():
    got = P.compute("gradcam", "paper", activations=A1, gradients=G1, input_size=(2, 4))
    np.testing.assert_allclose(got[0], [[0, 0.0625, 0.1875, 0.25], [0.5, 0.625, 0.875, 1.0]], atol=1e-15)


def test_torchcam_gradcampp_alpha_g2_by_hand():
    a = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, 1.0]]]])
    g = np.array([[[[0.5, -0.2], [0.3, 0.1]], [[0.1, 0.4], [0.2, 0.3]]]])
    # w_k = sum g^2 relu(g): w0 = .125 + .027 + .001 = .153, w1 = .001 + .064 + .008 + .027 = .1
    # map = .153 A0 + .1 A1 = [[.553, .306], [.459, .712]]; ReLU no-op; no normalisation here
    conv = P.get("torchcam", "gradcampp").replace(normalize_eps=None)
    got = P.compute("gradcampp", convention=conv, activations=a, gradients=g)
    np.testing.assert_allclose(got[0], [[0.553, 0.306], [0.459, 0.712]], atol=1e-15)


def test_captum_keeps_sign_and_scale():
    got = P.compute("gradcam", "captum", activations=A1, gradients=-2 * G1)
    np.testing.assert_allclose(got[0], [[0.0, -2.0], [-4.0, -8.0]], atol=0)
    near = P.compute("gradcam", convention=P.get("captum", "gradcam").replace(upsample="nearest"),
                     activations=A1, gradients=G1, input_size=(2, 4))
    np.testing.assert_array_equal(near[0], [[0, 0, 1, 1], [2, 2, 4, 4]])


def test_torchcam_multilayer_fusion_by_hand():
    # Layer maps (1,2) [[0, 1]] and (1,1) [[1]] ... after ReLU and min-max(+1e-8):
    # [[0, 1/(1+1e-8)]] and [[0]] (constant map -> 0).  Largest size (1,2): second resized
    # stays [[0, 0]]; max -> [[0, 1/(1+1e-8)]].
    a1 = np.array([[[[0.0, 1.0]]]]); a2 = np.array([[[[1.0]]]])
    got = P.compute("gradcam", "torchcam", activations=[a1, a2], gradients=[np.ones_like(a1), np.ones_like(a2)])
    np.testing.assert_allclose(got, [[[0.0, 1 / (1 + 1e-8)]]], rtol=1e-15)
    # LayerCAM: tanh(2 m) before the max
    got = P.compute("layercam", "torchcam", activations=[a1, a2], gradients=[np.ones_like(a1), np.ones_like(a2)])
    np.testing.assert_allclose(got, [[[0.0, np.tanh(2 / (1 + 1e-8))]]], rtol=1e-15)


def test_score_masks_order_by_hand():
    # A = [0, 4, 0] (1-D) -> 4 samples, half-pixel u = (d + .5) * 3/4 - .5 = [-.125 -> 0, .625, 1.375, 2.125 -> 2]
    # upsample-then-normalize: [0, 2.5, 2.5, 0] -> [0, 1, 1, 0]
    # normalize-then-upsample: [0, 1, 0] -> [0, .625, .625, 0]
    a = np.array([[[0.0, 4.0, 0.0]]])
    np.testing.assert_allclose(P.score_masks(("paper", "scorecam"), a, (4,)), [[[0, 1, 1, 0]]], atol=1e-15)
    np.testing.assert_allclose(P.score_masks(("torchcam", "scorecam"), a, (4,)),
                               [[[0, 0.625 / (1 + 1e-8 / 4) * 1, 0.625 / (1 + 1e-8 / 4), 0]]], rtol=1e-12)


def test_score_weights_baselines():
    s = np.array([[np.log(3.0), 0.0]])
    # channel softmax: e^C = [3, 1] -> [.75, .25], whatever the baseline (shift invariant)
    np.testing.assert_allclose(P.score_weights(("pytorch-grad-cam", "scorecam"), s, np.array([9.0])), [[0.75, 0.25]])
    # paper: C = f(X o H) - f(X_b), no softmax
    np.testing.assert_allclose(P.score_weights(("paper", "scorecam"), s, np.array([1.0])),
                               [[np.log(3.0) - 1.0, -1.0]], rtol=1e-15)


def test_scorecam_and_ablation_maps_by_hand():
    a = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]])                     # (1, 2, 1, 2)
    # torchcam: softmax([log 3, 0]) = [.75, .25] -> map [.75, .25] -> min-max(+1e-8) -> [0, .5/(.5+1e-8)]
    got = P.compute("scorecam", "torchcam", activations=a, scores=np.array([[np.log(3.0), 0.0]]),
                    baseline_score=np.array([0.0]))
    np.testing.assert_allclose(got, [[[1 / (1 + 2e-8), 0.0]]], rtol=1e-12)
    # Ablation: w = (2 - [1, 3]) / 2 = [.5, -.5]; map [.5, -.5] -> ReLU [.5, 0] -> paper: upsample
    # (1,2)->(1,2) is the identity, min-max -> [1, 0]
    got = P.compute("ablationcam", "paper", activations=a, scores=np.array([[1.0, 3.0]]),
                    baseline_score=np.array([2.0]), input_size=(1, 2))
    np.testing.assert_array_equal(got, [[[1.0, 0.0]]])


# --------------------------------------------------------------------------- properties

_feat = hnp.arrays(np.float64, st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
                   elements=st.floats(-4, 4, allow_nan=False, width=64))
_GRAD_METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "gradcam_elementwise"]


@given(a=_feat, seed=st.integers(0, 2**16), method=st.sampled_from(_GRAD_METHODS),
       preset=st.sampled_from(["paper", "pytorch-grad-cam", "torchcam"]))
def test_normalised_presets_land_in_unit_interval(a, seed, method, preset):
    g = np.random.default_rng(seed).normal(size=a.shape)
    if method not in P.methods(preset):
        return
    out = P.compute(method, preset, activations=a, gradients=g, input_size=(5, 7))
    assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1


@given(a=_feat, seed=st.integers(0, 2**16), method=st.sampled_from(_GRAD_METHODS))
def test_float32_stays_float32(a, seed, method):
    g = np.random.default_rng(seed).normal(size=a.shape).astype(np.float32)
    out = P.compute(method, "pytorch-grad-cam", activations=a.astype(np.float32), gradients=g, input_size=(3, 6))
    assert out.dtype == np.float32 and out.shape == (a.shape[0], 3, 6)


@given(a=_feat, seed=st.integers(0, 2**16), method=st.sampled_from(["gradcam", "layercam", "hirescam"]))
def test_compute_equals_postprocess_of_the_math_map(a, seed, method):
    g = np.random.default_rng(seed).normal(size=a.shape)
    conv = P.get("pytorch-grad-cam", method)
    raw = getattr(rm, method)(a, g, relu=True)
    np.testing.assert_array_equal(P.compute(method, convention=conv, activations=a, gradients=g, input_size=(4, 4)),
                                  P.postprocess(conv, raw, (4, 4)))


@given(a=_feat, seed=st.integers(0, 2**16), scale=st.floats(0.01, 100))
def test_gradcam_presets_invariant_to_gradient_scale(a, seed, scale):
    # Min-max with eps=0 (paper) cancels a positive gradient scale exactly up to round-off.
    # Near-constant maps are excluded: min-max turns 1-ulp resampling round-off into [0, 1].
    g = np.random.default_rng(seed).normal(size=a.shape)
    raw = rm.gradcam(a, g)
    rng = np.ptp(raw.reshape(raw.shape[0], -1), axis=1)
    assume(np.all(rng > 1e-6 * (np.abs(raw).reshape(raw.shape[0], -1).max(axis=1) + 1e-300)))
    p1 = P.compute("gradcam", "paper", activations=a, gradients=g, input_size=(3, 3))
    p2 = P.compute("gradcam", "paper", activations=a, gradients=g * scale, input_size=(3, 3))
    np.testing.assert_allclose(p1, p2, atol=1e-9)


# --------------------------------------------------------------------------- errors

def test_errors_name_the_argument():
    with pytest.raises(InvalidArgumentError, match="^preset: got 'grad-cam'"):
        P.get("grad-cam", "gradcam")
    with pytest.raises(InvalidArgumentError, match="^method: got 'eigencam'.*torchcam"):
        P.compute("eigencam", "torchcam", activations=A1)
    with pytest.raises(InvalidArgumentError, match="^gradients: got None"):
        P.compute("gradcam", "torchcam", activations=A1)
    with pytest.raises(InvalidArgumentError, match="^input_size: got None"):
        P.compute("gradcam", "pytorch-grad-cam", activations=A1, gradients=G1)
    with pytest.raises(InvalidArgumentError, match="^input_size: got \\(4,\\)"):
        P.compute("gradcam", "paper", activations=A1, gradients=G1, input_size=(4,))
    with pytest.raises(InvalidArgumentError, match="^activations: got '2 layers'"):
        P.compute("gradcam", "captum", activations=[A1, A1], gradients=[G1, G1])
    with pytest.raises(ShapeError, match="^gradients: got shape \\(1, 1, 2, 3\\)"):
        P.compute("gradcam", "captum", activations=A1, gradients=np.ones((1, 1, 2, 3)))
    with pytest.raises(InvalidArgumentError, match="^scores: got None"):
        P.compute("scorecam", "torchcam", activations=A1)
    with pytest.raises(InvalidArgumentError, match="^class_weights: got None"):
        P.compute("cam", "torchcam", activations=A1)
    with pytest.raises(InvalidArgumentError, match="^conv: got 'gradcam'"):
        P.score_masks(("paper", "gradcam"), A1, (4, 4))
    with pytest.raises(ShapeError, match="^activations"):
        P.compute("gradcam", "captum", activations=np.ones((2, 3)), gradients=np.ones((2, 3)))
    with pytest.raises(RefcamError):
        P.postprocess(("captum", "gradcam"), [np.ones((1, 2, 2))] * 2)


def test_docs_table_is_the_code_table():
    import pathlib

    doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "presets.md").read_text(encoding="utf-8")
    assert P.markdown_table() in doc, "docs/presets.md is stale: paste refcam.presets.markdown_table()"


def test_gradient_presets():
    assert dict(P.GRADIENT_PRESETS["captum"]["saliency"]) == {"reduce": "abs"}
    ig = P.GRADIENT_PRESETS["captum"]["integrated_gradients"]
    assert (ig["rule"], ig["n_steps"], ig["baseline"]) == ("gauss-legendre", 50, 0.0)
    assert P.GRADIENT_PRESETS["paper"]["saliency"]["reduce"] == "max-abs"
    assert P.GRADIENT_PRESETS["paper"]["integrated_gradients"]["rule"] == "riemann-right"
    g = np.array([[[[1.0, -3.0]], [[-2.0, 0.5]]]])                   # (1, C=2, 1, 2)
    np.testing.assert_array_equal(rm.saliency(g, **P.GRADIENT_PRESETS["paper"]["saliency"]), [[[2.0, 3.0]]])
    np.testing.assert_array_equal(rm.saliency(g, **P.GRADIENT_PRESETS["captum"]["saliency"]), np.abs(g))


# --------------------------------------------------------------------------- presets through explain

def test_pgc_ablation_values_replay_the_peer_loop():
    # pytorch-grad-cam 1.5.7 AblationLayer.__call__ transcribed: the min is re-read from the batch
    # tensor after each edit, batches of 32 ablations (ablation_cam.py:105-132), float32 torch math
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 40, 2, 3)).astype(np.float32)
    a[1] = np.abs(a[1]) + 0.5          # positive minimum: min - 1e7 as well
    a[2] = np.maximum(a[2], 0)         # minimum 0: every ablated channel is set to 0
    want = np.empty(a.shape[:2], dtype=np.float32)
    for s in range(a.shape[0]):
        for start in range(0, a.shape[1], 32):
            idx = range(start, min(a.shape[1], start + 32))
            out = np.repeat(a[s:s + 1], len(idx), axis=0)
            for j, c in enumerate(idx):
                out[j, c] = 0 if out.min() == 0 else out.min() - np.float32(1e7)
                want[s, c] = out[j, c, 0, 0]
    got = rm.ablation_values(a, "pgc")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(rm.ablation_values(a, -2.5), np.full((3, 40), -2.5, np.float32))
    with pytest.raises(InvalidArgumentError, match="ablation_value"):
        rm.ablation_values(a, "zero")


def test_explain_options_use_the_option_names():
    from refcam.methods import METHODS

    for preset in P.PRESET_NAMES:
        for method in P.methods(preset):
            opts = P.explain_options((preset, method))
            assert set(opts) <= set(METHODS[method].defaults), (preset, method)
            METHODS[method].resolve(opts)            # every value passes the option's own check
    assert P.explain_options(("torchcam", "scorecam"))["baseline"] == "input"
    assert P.explain_options(("paper", "ablationcam"))["ablation_value"] == 0.0


@pytest.mark.parametrize("preset", P.PRESET_NAMES)
def test_cli_explain_preset_every_method(preset, tmp_path, capsys):
    # `refcam explain --preset` maps every convention of the table, Score-CAM and Ablation-CAM too
    import refcam
    from refcam import cli
    from refcam.onnx import Model
    from refcam.onnx.toy_models import cam_net

    x = np.random.default_rng(1).random((2, 3, 12, 12), dtype=np.float32)
    np.save(tmp_path / "b.npy", x)
    methods = P.methods(preset)
    code = cli.main(["explain", "toy:cam", str(tmp_path / "b.npy"), "-m", ",".join(methods),
                     "--preset", preset, "-o", str(tmp_path), "-q"])
    assert code == 0, capsys.readouterr().err
    for method in methods:
        conv = P.get(preset, method)
        e = refcam.explain(cam_net(), x, method, **P.explain_options(conv))
        want = P.from_explanation(conv, e)
        for i in range(2):
            np.testing.assert_array_equal(np.load(tmp_path / f"b_{i}_{method}_{preset}.npy"), want[i])
    if "scorecam" in methods:
        # independent of explain's arrays: the preset's masks, the model run directly, compute()
        conv = P.get(preset, "scorecam")
        m = Model(cam_net())
        a = m.forward(x, ["features"]).activations["features"]
        masks = P.score_masks(conv, a, (12, 12))
        logits = m.run(x)[m.output_name]
        cls = logits.argmax(1)
        prob = conv.masks.score == "probability"
        scores, base = np.zeros(a.shape[:2]), np.zeros(2)
        for s in range(2):
            y = m.run((x[s] * masks[s][:, None]).astype(np.float32))[m.output_name]
            scores[s] = (rm.softmax(y, axis=1) if prob else y)[:, cls[s]]
            yb = m.run(np.zeros_like(x[s:s + 1]) if conv.masks.baseline == "zeros" else x[s:s + 1])
            yb = yb[m.output_name]
            base[s] = (rm.softmax(yb, axis=1) if prob else yb)[0, cls[s]]
        want = P.compute("scorecam", preset, activations=a, scores=scores, baseline_score=base,
                         input_size=(12, 12))
        got = np.stack([np.load(tmp_path / f"b_{i}_scorecam_{preset}.npy") for i in range(2)])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pgc_ablation_value_through_explain():
    # layer "gap" (N, 6, 1, 1) > 0, then Flatten -> Gemm: pytorch-grad-cam's value min - j*1e7
    # enters a linear head, computed here in NumPy from the graph's initializers
    import refcam
    from onnx import numpy_helper
    from refcam.onnx.toy_models import cam_net

    x = np.random.default_rng(3).random((2, 3, 12, 12), dtype=np.float32)
    proto = cam_net()
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    w, b = init["fc.weight"].astype(np.float64), init["fc.bias"].astype(np.float64)
    opts = P.explain_options(("pytorch-grad-cam", "ablationcam"))
    e = refcam.explain(proto, x, "ablationcam", layer="gap", target=[1, 4], allow_small_map=True,
                       **opts)
    a = e.arrays["activations"]
    assert (a.reshape(2, -1).min(axis=1) > 0).all()
    v = rm.ablation_values(a, "pgc")
    assert (v < -1e6).all()
    want = np.empty((2, a.shape[1]))
    for s, c in enumerate((1, 4)):
        for k in range(a.shape[1]):
            ak = a[s].reshape(-1).astype(np.float64)
            ak[k] = v[s, k]
            want[s, k] = w[c] @ ak + b[c]
    np.testing.assert_allclose(e.arrays["ablated_scores"][:, 0], want, rtol=1e-5)
    zero = refcam.explain(proto, x, "ablationcam", layer="gap", target=[1, 4], allow_small_map=True)
    assert not np.allclose(zero.arrays["ablated_scores"], e.arrays["ablated_scores"])
