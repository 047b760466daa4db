"""refcam.conformance: the harness recognises which convention an implementation follows."""

from __future__ import annotations

import numpy as np
import pytest

import refcam.math as rm
from refcam.conformance import METHOD_ARGUMENTS, assert_conforms, check
from refcam.errors import InvalidArgumentError, ShapeError


def _pgc_gradcampp(a, g):
    """A NumPy transcription of pytorch-grad-cam 1.5.7's Grad-CAM++ (one layer, feature res.)."""
    g2 = g**2
    s = a.sum(axis=(2, 3), keepdims=True)
    aij = np.where(g != 0, g2 / (2 * g2 + s * g2 * g + 1e-6), 0)
    cam = np.maximum(np.einsum("nk,nkhw->nhw", (np.maximum(g, 0) * aij).sum(axis=(2, 3)), a), 0)
    for _ in range(2):                       # scale_cam_image per layer, then again after the mean
        cam = cam - cam.min(axis=(1, 2), keepdims=True)
        cam = cam / (1e-7 + cam.max(axis=(1, 2), keepdims=True))
    return cam


def test_paper_implementation_matches_paper():
    rep = check(lambda a, g: rm.normalize(rm.gradcam(a, g)), "gradcam", max_examples=30)
    assert rep.matched("paper (min-max)") and rep.target == "paper (min-max)"
    assert rep.counterexample is None and rep.n_cases == 30 + 5      # 5 fixed probe cases
    assert rep.errors["paper (min-max)"][0] <= 1e-12


def test_pgc_transcription_is_recognised_and_paper_counterexample_has_small_gradients():
    rep = check(_pgc_gradcampp, "gradcampp", max_examples=40)
    assert rep.matches[0] == "pytorch-grad-cam (min-max)"
    assert not rep.matched("paper (min-max)")
    rep = check(_pgc_gradcampp, "gradcampp", preset="paper (min-max)", max_examples=40)
    ce = rep.counterexample
    assert ce is not None and set(ce) == {"activations", "gradients", "got", "expected"}
    # The eps shows when g^2 is not >> 1e-6 (here tolerance 1e-5 relative): small gradients.
    assert 0 < np.abs(ce["gradients"]).max() <= 0.1
    assert np.abs(ce["got"] - ce["expected"]).max() > 1e-6
    assert "shrunk counterexample against 'paper (min-max)'" in str(rep)


def test_missing_relu_is_caught_with_a_minimal_case():
    rep = check(lambda a, g: rm.gradcam(a, g, relu=False), "gradcam", preset="paper (raw)", max_examples=40)
    assert rep.matched("paper (raw, ReLU flipped)") and not rep.matched("paper (raw)")
    ce = rep.counterexample
    assert ce["expected"].min() == 0 and ce["got"].min() < 0      # a negative value ReLU would clip


@pytest.mark.parametrize("method", sorted(METHOD_ARGUMENTS))
def test_refcam_paper_function_conforms_to_itself(method):
    fn = getattr(rm, method)
    assert_conforms(fn, method, preset="paper (raw)", max_examples=8)


def test_upsampled_outputs_and_float32():
    def mine(a, g):
        return rm.normalize(rm.upsample(rm.gradcam(a, g), (6, 7), "linear"))
    rep = check(mine, "gradcam", input_size=(6, 7), dtype=np.float32, max_examples=20, atol=1e-5, rtol=1e-4)
    assert rep.matched("paper (upsampled)") and rep.matched("paper")


def test_errors():
    with pytest.raises(InvalidArgumentError, match="^method: got 'gradcam3'"):
        check(lambda a, g: a, "gradcam3")
    with pytest.raises(InvalidArgumentError, match="^fn: got 3"):
        check(3, "gradcam")
    with pytest.raises(InvalidArgumentError, match="^preset: got 'pgc'"):
        check(lambda a, g: a, "gradcam", preset="pgc")
    with pytest.raises(InvalidArgumentError, match="^dtype"):
        check(lambda a, g: a, "gradcam", dtype=np.int32)
    with pytest.raises(ShapeError, match="^fn\\(\\.\\.\\.\\): got shape \\(2, 3, 3, 4\\), expected \\(2, 3, 4\\)"):
        check(lambda a, g: a, "gradcam", max_examples=5)
    with pytest.raises(AssertionError, match="does not conform to 'paper \\(raw\\)'"):
        assert_conforms(lambda a, g: 2 * rm.gradcam(a, g), "gradcam", preset="paper (raw)", max_examples=10)


# --------------------------------------------------------------------------- issue 17: NaN passes

_NAN_FILE = '''import numpy as np


def nan(activations, gradients):
    return np.full(activations.shape[:1] + activations.shape[2:], np.nan)
'''


def test_issue17_cli_check_fails_a_nan_function(tmp_path, capsys):
    """Exact reproduction: ``refcam check f.py:nan --method gradcam`` printed matches, exit 0."""
    from refcam.cli import main

    f = tmp_path / "f.py"
    f.write_text(_NAN_FILE)
    code = main(["check", f"{f}:nan", "--method", "gradcam", "--max-examples", "10"])
    out = capsys.readouterr().out
    assert code == 1
    assert "matches: none" in out


def test_issue17_assert_conforms_raises_on_a_nan_function():
    def nan(a, g):
        return np.full(a.shape[:1] + a.shape[2:], np.nan)
    with pytest.raises(AssertionError, match="does not conform"):
        assert_conforms(nan, "gradcam", max_examples=10)
    rep = check(nan, "gradcam", max_examples=10)
    assert rep.matches == [] and all(e[0] == np.inf for e in rep.errors.values())


# --------------------------------------------------------------------------- issue 18: the diagnosis

from refcam import diagnosis as D  # noqa: E402
from refcam.conformance import TinyModel, candidate_settings  # noqa: E402


def _planted_fn(setting, method, mode, input_size=None):
    """A hand-written implementation: refcam's renderer with one convention knob changed."""
    if mode == "model":
        def fn(model, x, t):
            case = {"model": model, "inputs": x, "targets": t, "activations": model.features(x),
                    "gradients": model.gradients(t)}
            return D.render(setting, case)
        return fn
    args = METHOD_ARGUMENTS[method]

    def fn(*arrays):
        case = dict(zip(args, arrays))
        if setting.sign == "none":         # no sign rule: the opposite of the paper's sum rule
            return -D.render(setting.replace(sign="sum", relu=False), case, input_size)
        return D.render(setting, case, input_size)
    return fn


# (method, stage, knob, value, mode): one planted change of the paper's setting per knob.
PLANTS = [
    ("gradcam", "raw", "relu", False, "arrays"),
    ("gradcampp", "raw", "eps", 1e-5, "arrays"),
    ("xgradcam", "raw", "eps", 1e-3, "arrays"),
    ("gradcampp", "raw", "alpha", "squared-only", "arrays"),
    ("gradcampp", "raw", "alpha", "torchcam", "arrays"),
    ("gradcampp", "raw", "alpha", "authors", "arrays"),
    ("gradcam", "raw", "spatial", "sum", "arrays"),
    ("eigencam", "raw", "center", True, "arrays"),
    ("eigencam", "raw", "sign", "none", "arrays"),
    ("scorecam", "raw", "softmax", True, "arrays"),
    ("gradcam", "min-max", "normalize_eps", 1e-4, "arrays"),
    ("gradcam", "upsampled", "upsample", "nearest", "arrays"),
    ("gradcam", "upsampled", "upsample", "linear-align-corners", "arrays"),
    ("gradcam", "upsampled", "order", "normalize-then-upsample", "arrays"),
    ("scorecam", "upsampled", "upsample_mode", "linear-align-corners", "model"),
    ("scorecam", "upsampled", "mask_order", "normalize-then-upsample", "model"),
    ("scorecam", "upsampled", "mask_eps", 1e-2, "model"),
    ("scorecam", "upsampled", "baseline", None, "model"),
    ("scorecam", "upsampled", "score", "logit", "model"),
    ("ablationcam", "upsampled", "ablation_value", "pgc", "model"),
]


def _diagnose_plant(method, stage, knob, value, mode, seed=0, max_examples=15):
    size = (7, 9) if stage == "upsampled" and mode == "arrays" else None
    base = candidate_settings(method, upsampled=stage == "upsampled", model_mode=mode == "model")[f"paper ({stage})"]
    planted = base.replace(**{knob: value})
    rep = check(_planted_fn(planted, method, mode, size), method, mode=mode, input_size=size,
                max_examples=max_examples, seed=seed)
    return rep.diagnosis


@pytest.mark.parametrize("method,stage,knob,value,mode", PLANTS)
def test_one_planted_convention_change_is_diagnosed_by_name_and_value(method, stage, knob, value, mode):
    d = _diagnose_plant(method, stage, knob, value, mode)
    assert d.explained, d.summary
    assert [c["knob"] for c in d.changes] == [knob], d.summary
    assert d.knob(knob) == value
    assert d.counterexample is not None             # the minimal case against the paper


def test_planted_changes_property():
    """Any seed: a planted change (knob, value) drawn at random is named with its value."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    eps_values = st.sampled_from([1e-6, 3e-6, 1e-5, 2e-4, 1e-3])

    # check() runs hypothesis inside: nesting is intended (each outer example is one whole check)
    @settings(max_examples=6, deadline=None, database=None, suppress_health_check=[HealthCheck.nested_given])
    @given(st.sampled_from([p for p in PLANTS if p[4] == "arrays"]), eps_values, st.integers(0, 2**16))
    def prop(plant, eps, seed):
        method, stage, knob, value, mode = plant
        if knob in D.EPS_KNOBS:
            value = eps if knob == "eps" and method == "gradcampp" else value
        d = _diagnose_plant(method, stage, knob, value, mode, seed=seed, max_examples=10)
        assert [c["knob"] for c in d.changes] == [knob], d.summary
        assert d.knob(knob) == value

    prop()


def test_diagnosis_text_of_the_issue_example():
    """Issue 18's example: Grad-CAM++ with eps 1e-6 in the α denominator, raw map."""
    rep = check(lambda a, g: rm.gradcampp(a, g, eps=1e-6), "gradcampp", max_examples=30)
    d = rep.diagnosis
    assert rep.matches == ["pytorch-grad-cam (raw)"]
    assert d.summary.startswith("your function = Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19), raw map, "
                                "ReLU on the map, with eps = 1e-06 added to the α denominator — pytorch-grad-cam's convention; "
                                "it differs from the paper by up to ")
    assert "+ 1e-06)" in d.formula
    ce = d.counterexample                            # the smallest case: 1x1 map, one channel
    assert ce["activations"].shape == (1, 1, 1, 1) and ce["got"][0, 0, 0] < ce["paper"][0, 0, 0]
    assert "inputs with 0 < max|g| < 1e-3" in d.where


def test_check_json_for_ci(tmp_path, capsys):
    import json

    from refcam.cli import main

    f = tmp_path / "mine.py"
    f.write_text("import refcam.math as rm\n\ndef pp(a, g):\n    return rm.gradcampp(a, g, eps=1e-5)\n")
    code = main(["check", f"{f}:pp", "--method", "gradcampp", "--max-examples", "15", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["matches"] == []
    d = out["diagnosis"]
    assert d["explained"] and d["changes"] == [{"knob": "eps", "value": 1e-5, "text": "eps = 1e-05 added to "
                                                                                        "the α denominator"}]
    assert d["counterexample"]["activations"] and "formula" in d and "where" in d


def test_shape_wrong_functions_fail_loudly(tmp_path, capsys):
    from refcam.cli import main

    # right shape for one sample only: the batch-2 probe case fails at once
    with pytest.raises(ShapeError, match="expected \\(2, 3, 4\\)"):
        check(lambda a, g: rm.gradcam(a[:1], g[:1]), "gradcam", max_examples=5)
    # a scalar, a string
    with pytest.raises(ShapeError):
        check(lambda a, g: 0.0, "gradcam", max_examples=5)
    with pytest.raises(Exception, match="fn\\(\\.\\.\\.\\)"):
        check(lambda a, g: "map", "gradcam", max_examples=5)
    f = tmp_path / "f.py"
    f.write_text("def bad(a, g):\n    return a\n")
    code = main(["check", f"{f}:bad", "--method", "gradcam", "--max-examples", "5"])
    err = capsys.readouterr().err
    assert code != 0 and "fn(...)" in err


def test_nan_on_some_cases_is_reported_and_the_rest_diagnosed():
    def sometimes_nan(a, g):                 # NaN on constant activations, else the paper formula
        m = rm.gradcam(a, g)
        const = (a.max(axis=(1, 2, 3)) == a.min(axis=(1, 2, 3)))
        m[const] = np.nan
        return m
    rep = check(sometimes_nan, "gradcam", max_examples=30)
    assert rep.matches == []
    d = rep.diagnosis
    assert d.non_finite > 0 and not d.explained
    assert d.summary.startswith("your function returned NaN or Inf on finite input")
    assert "exactly as the paper writes it" in d.summary
    assert not np.isfinite(d.counterexample["got"]).all()


def test_tiny_model_is_exact():
    r = np.random.default_rng(0)
    m = TinyModel(r.normal(size=(2, 3)), r.normal(size=2), r.normal(size=(3, 2, 2, 3)), r.normal(size=3))
    x = r.random((2, 3, 4, 6))
    t = np.array([1, 2])
    a = m.features(x)
    # finite differences of the score in A give V[t]
    e = np.zeros_like(a)
    e[0, 1, 1, 2] = 1e-6
    fd = (m.head(a + e) - m.head(a - e))[0, 1] / 2e-6
    assert abs(fd - m.gradients(t)[0, 1, 1, 2]) < 1e-8
    # masked scores with all-ones masks = the unmasked score; ablation of every channel at 0
    ones = np.ones((2, 2, 4, 6))
    assert np.allclose(m.masked_scores(x, ones, t), m.target_scores(x, t)[:, None])
    z = m.ablated_scores(x, t, 0.0)
    a0 = a.copy()
    a0[1, 0] = 0
    assert np.isclose(z[1, 0], m.head(a0)[1, 2])
    # pgc compounding: the second ablated copy sees the first copy's min - 1e7
    p = m.ablated_scores(x, t, "pgc")
    b = np.repeat(a[:1], 2, axis=0)
    b[0, 0] = b.min() - 1e7
    b[1, 1] = b.min() - 1e7                      # min over the batch: already includes copy 0
    assert np.allclose(p[0], m.head(b)[:, 1])
