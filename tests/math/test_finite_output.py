"""Finite input never yields NaN/Inf (issue 17, "Non-finite output"; docs/design.md, dtype rule).

Every public function of :mod:`refcam.math` runs under :func:`refcam.math._finite.finite_output`:
computed in the input dtype, recomputed in float64 when a step overflows, rounded back, or a
:class:`~refcam.errors.NonFiniteResultError` when the exact result is not representable.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import refcam
import refcam.math as rm
from refcam.errors import NonFiniteResultError, RefcamError
from refcam.math.attention import HEAD_FUSIONS
from refcam.math.eigen import SIGN_RULES
from refcam.math.gradient_variants import SGCPP_DENOMINATORS, SGCPP_FIRST_ORDER
from refcam.math.gradients import INTEGRATION_RULES, SALIENCY_REDUCTIONS
from refcam.math.perturbation import ISCAM_SCHEDULES, MASK_ORDERS
from refcam.math.projections import KERNELS
from refcam.math.scale_and_slide import SESS_POOLS
from refcam.math.post import FUSE_MODES, NORMALIZE_MODES, UPSAMPLE_MODES

PUBLIC = [n for n in rm.__all__ if callable(getattr(rm, n)) and not isinstance(getattr(rm, n), type)]
DTYPES = [np.float16, np.float32, np.float64]


# --------------------------------------------------------------------------- the issue's reproductions

def test_gradcam_float16_moderate_values_whose_products_overflow():
    # issue 17: "refcam.gradcam on float16 activations of moderate size returns inf".  Each product
    # A*alpha (8e4) overflows float16 (max 65504); the exact map (200) does not.
    a = np.full((1, 2, 2, 2), 200.0, np.float16)
    g = np.stack([np.full((2, 2), 400.0), np.full((2, 2), -399.0)])[None].astype(np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = refcam.gradcam(a, g)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, np.full((1, 2, 2), 200.0, np.float16))


def test_gradcam_float16_result_beyond_float16_raises():
    a = np.full((1, 64, 7, 7), 40.0, np.float16)
    g = np.full((1, 64, 7, 7), 40.0, np.float16)          # exact map: 64 * 1600 = 102400 > 65504
    with pytest.raises(NonFiniteResultError, match=r"^gradcam: .*float16.*102400|^gradcam: .*1.02e\+05"):
        refcam.gradcam(a, g)


def test_gradcam_float32_near_1e30():
    # issue 17: "... or on float32 ones near 1e30, returns inf with only a NumPy RuntimeWarning"
    a = np.full((1, 2, 2, 2), 2.0**100, np.float32)      # 1.27e30, exact in binary
    g = np.full((1, 2, 2, 2), 2.0**33, np.float32)
    with pytest.raises(NonFiniteResultError, match="float32.*pass float64 inputs"):
        refcam.gradcam(a, g)                               # exact map 2^134 = 2.2e40 > float32 max
    got = refcam.gradcam(a.astype(np.float64), g.astype(np.float64))
    assert got.dtype == np.float64 and np.all(got == 2.0**134)
    g[:, 1] *= -1                                          # exact map 0: representable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = refcam.gradcam(a, g, relu=False)
    assert out.dtype == np.float32 and np.all(out == 0)


def test_an_overflow_hidden_by_the_relu_is_not_a_silent_zero():
    # float32: -3e38 - 3e38 + 3e38 + 3e38 + 1e38 overflows to -inf in the left-to-right sum and a
    # ReLU would return 0; the exact map is 1e38.
    a = np.ones((1, 5, 1, 1), np.float32)
    w = np.array([[-3e38, -3e38, 3e38, 3e38, 1e38]], np.float32)
    out = refcam.cam(a, w, relu=True)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.astype(np.float64), 1e38, rtol=1e-6)
    # pixel-wise weights go through einsum, which raises no floating-point flag
    g = np.broadcast_to(w[:, :, None, None], a.shape)
    np.testing.assert_allclose(refcam.hirescam(a, g, relu=True).astype(np.float64), 1e38, rtol=1e-6)


def test_float64_overflow_raises():
    a = np.full((1, 2, 1, 1), 1e200)
    with pytest.raises(NonFiniteResultError, match="too large.*rescale"):
        refcam.gradcam(a, a)


def test_every_public_math_function_is_guarded():
    missing = [n for n in PUBLIC if not getattr(getattr(rm, n), "__refcam_finite__", False)]
    assert missing == [], ("decorate these with @finite_output (refcam/math/_finite.py) and add "
                           f"a case for them to _case in tests/math/test_finite_output.py: {missing}")


def test_guard_keeps_docstrings_signatures_and_doctests_in_their_module():
    import doctest
    import inspect

    from refcam.math import cam_family

    f = rm.gradcam
    assert f.__module__ == "refcam.math.cam_family" and f.__doc__.startswith("Grad-CAM map")
    assert list(inspect.signature(f).parameters) == ["activations", "gradients", "relu"]
    names = {t.name for t in doctest.DocTestFinder().find(cam_family)}
    assert "refcam.math.cam_family.gradcam" in names


# --------------------------------------------------------------------------- every function, every dtype

def _elements(dt):
    # float64 values within dt's finite range, rounded to dt by the cast in arr() (drawing float16
    # elements directly makes hypothesis filter most examples)
    big = float(np.finfo(dt).max)
    return st.floats(-big, big, allow_nan=False, allow_infinity=False)


@st.composite
def _case(draw, name, dt):
    """(args, kwargs) for public function ``name`` with float arrays of dtype ``dt`` drawn over the
    whole finite range of ``dt`` (huge values provoke the overflows)."""
    el = _elements(dt)
    n, k = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))

    def arr(shape):
        return draw(hnp.arrays(np.float64, shape, elements=el)).astype(dt)

    def pos(shape):
        return np.abs(arr(shape))

    nk_s = (n, k) + s
    relu = draw(st.booleans())
    base = draw(st.none() | st.just("arr"))
    b = None if base is None else arr((n,))
    steps = draw(st.integers(1, 3))
    A = arr(nk_s)
    table = {
        "relu": lambda: ((arr((n,) + s),), {}),
        "normalize": lambda: ((arr((n,) + s), draw(st.sampled_from(NORMALIZE_MODES)),
                               draw(st.sampled_from([0.0, 1e-7, 1.0]))), {}),
        "interpolation_matrix": lambda: ((draw(st.integers(1, 4)), draw(st.integers(1, 4)),
                                          draw(st.sampled_from(UPSAMPLE_MODES))), {}),
        "upsample": lambda: ((arr((n,) + s), (draw(st.integers(1, 5)), draw(st.integers(1, 5))),
                              draw(st.sampled_from(UPSAMPLE_MODES))), {}),
        "fuse": lambda: (([arr((n,) + s), arr((n,) + s)], draw(st.sampled_from(FUSE_MODES))), {}),
        "channel_max_saliency": lambda: ((A,), {}),
        "saliency": lambda: ((A,), {"reduce": draw(st.sampled_from(SALIENCY_REDUCTIONS))}),
        "guided_gradcam": lambda: ((A, arr((n,) + s)), {}),
        "smoothgrad_inputs": lambda: ((A, 2, draw(st.sampled_from([0.0, 0.15, 1e3]))), {"seed": 0}),
        "smoothgrad": lambda: ((arr((n, 2) + nk_s[1:]),), {"square": draw(st.booleans())}),
        "integration_points": lambda: ((2, draw(st.sampled_from(INTEGRATION_RULES))), {}),
        "path_inputs": lambda: ((A, arr(nk_s), np.array([0.0, 0.5, 1.0], dt)), {}),
        "integrated_gradients": lambda: ((arr((n, 2) + nk_s[1:]), A, arr(nk_s),
                                          draw(st.sampled_from(("gauss-legendre", "trapezoid")))),
                                         {}),
        "class_model_step": lambda: ((A, arr(nk_s)), {
            "learning_rate": draw(st.sampled_from([0.0, 0.5, 1e3])),
            "l2": draw(st.sampled_from([0.0, 0.25, 1e3]))}),
        "gap": lambda: ((A,), {}),
        "weighted_sum": lambda: ((A, arr((n, k)) if draw(st.booleans()) else arr(nk_s)), {}),
        "gradient_weights": lambda: ((A,), {}),
        "cam": lambda: ((A, arr((n, k))), {"relu": relu}),
        "gradcam_weights": lambda: ((A, arr(nk_s)), {}),
        "gradcam": lambda: ((A, arr(nk_s)), {"relu": relu}),
        "gradcampp_weights": lambda: ((A, arr(nk_s)), {"eps": draw(st.sampled_from([0.0, 1e-6]))}),
        "gradcampp": lambda: ((A, arr(nk_s)), {"relu": relu,
                                               "eps": draw(st.sampled_from([0.0, 1e-6]))}),
        "xgradcam_weights": lambda: ((A, arr(nk_s)), {"eps": draw(st.sampled_from([0.0, 1e-7]))}),
        "xgradcam": lambda: ((A, arr(nk_s)), {"relu": relu}),
        "layercam": lambda: ((A, arr(nk_s)), {"relu": relu}),
        "hirescam": lambda: ((A, arr(nk_s)), {"relu": relu}),
        "gradcam_elementwise": lambda: ((A, arr(nk_s)), {"relu": relu}),
        "eigencam": lambda: ((A,), {"center": draw(st.booleans()),
                                    "sign": draw(st.sampled_from(SIGN_RULES)), "relu": relu}),
        "eigengradcam": lambda: ((A, arr(nk_s)), {"center": draw(st.booleans()),
                                                  "sign": draw(st.sampled_from(SIGN_RULES))}),
        "scorecam_masks": lambda: ((A, (draw(st.integers(1, 5)), draw(st.integers(1, 5)))), {
            "upsample_mode": draw(st.sampled_from(UPSAMPLE_MODES)),
            "mask_order": draw(st.sampled_from(MASK_ORDERS)),
            "mask_eps": draw(st.sampled_from([0.0, 1e-7]))}),
        "scorecam_weights": lambda: ((arr((n, k)), b), {"softmax": draw(st.booleans())}),
        "scorecam": lambda: ((A, arr((n, k))), {"baseline_score": b,
                                               "softmax": draw(st.booleans()), "relu": relu}),
        "ablationcam_weights": lambda: ((arr((n, k)), arr((n,))), {}),
        "ablationcam": lambda: ((A, arr((n, k)), arr((n,))), {"relu": relu}),
        "sscam_masks": lambda: ((pos(nk_s), 2), {"std": draw(st.sampled_from([0.0, 0.5])),
                                                 "seed": 0}),
        "sscam_weights": lambda: ((arr((n, steps, k)), b), {"softmax": draw(st.booleans())}),
        "iscam_scales": lambda: ((steps, draw(st.sampled_from(ISCAM_SCHEDULES))), {}),
        "iscam_masks": lambda: ((pos(nk_s), steps), {
            "schedule": draw(st.sampled_from(ISCAM_SCHEDULES))}),
        "iscam_weights": lambda: ((arr((n, steps, k)), b), {"softmax": draw(st.booleans())}),
        "bias_gradient": lambda: ((A, arr((k,))), {}),
        "batchnorm_bias": lambda: ((arr((k,)), arr((k,)), arr((k,)), pos((k,))), {}),
        "full_gradient_sum": lambda: ((A, arr(nk_s), [arr((n, 2) + s)]), {}),
        "fullgrad": lambda: ((A, arr(nk_s), [arr((n, 2, 1, 1))]), {
            "upsample_mode": draw(st.sampled_from(UPSAMPLE_MODES)),
            "normalize_over": draw(st.sampled_from(("layer", "channel"))),
            "eps": draw(st.sampled_from([0.0, 1e-6]))}),
        "softmax": lambda: ((arr((n, k)),), {"axis": -1}),
        "ablation_values": lambda: ((A, draw(st.sampled_from([0.0, -5.0, "pgc"]))), {}),
        "ablated_activations": lambda: ((A, arr((n, k))), {}),
        "sscam": lambda: ((A, arr((n, steps, k))), {"baseline_score": b,
                                                    "softmax": draw(st.booleans()), "relu": relu}),
        "iscam": lambda: ((A, arr((n, steps, k))), {"baseline_score": b,
                                                    "softmax": draw(st.booleans()), "relu": relu}),
        "sscam_noise": lambda: ((s,), {"std": draw(st.sampled_from([0.0, 1.0, 1e300])), "seed": 1,
                                       "sample": 0, "channel": 1, "draw": 2}),
        "fem_weights": lambda: ((A,), {"k": draw(st.sampled_from([0.0, 2.0]))}),
        "fem": lambda: ((A,), {"k": 2.0, "relu": relu}),
        "random_weights": lambda: ((n, k), {"seed": 0, "dtype": dt}),
        "randomcam": lambda: ((A,), {"seed": 0, "relu": relu}),
        "kernel_matrix": lambda: ((arr((n,) + s),), {"kernel": draw(st.sampled_from(KERNELS))}),
        "kpcacam": lambda: ((A,), {"kernel": draw(st.sampled_from(KERNELS)), "relu": relu}),
        "segeigencam": lambda: ((A, arr(nk_s)), {"relu": relu}),
        "eigen_smooth": lambda: ((A, arr((n, k))), {"relu": relu}),
        "nmf": lambda: ((pos((3, 4)), 2), {"max_iter": 20}),
        "dff": lambda: ((pos(nk_s), 2), {"max_iter": 20}),
        # issue 16 (attention)
        "attention_rollout": lambda: (([arr((n, 2, 3, 3)), arr((n, 2, 3, 3))],),
                                      {"head_fusion": draw(st.sampled_from(HEAD_FUSIONS)),
                                       "residual": draw(st.booleans())}),
        "gradient_weighted_relevance": lambda: (([arr((n, 2, 3, 3))], [arr((n, 2, 3, 3))]), {}),
        "token_relevance_map": lambda: ((arr((n, 5, 5)), (2, 2)), {"prefix": 1}),
        # issue 14 (gradient_variants, scale_and_slide)
        "aug_smooth": lambda: ((arr((2, n) + s), [False, True]), {}),
        "finercam_classes": lambda: ((arr((n, 5)),), {}),
        "finercam_score": lambda: ((arr((n, 5)), np.zeros(n, np.int64), np.ones((n, 2), np.int64)),
                                   {"alpha": draw(st.sampled_from([0.0, 1.0]))}),
        "finercam_seed": lambda: ((arr((n, 5)), np.zeros(n, np.int64), np.ones((n, 2), np.int64)),
                                  {"alpha": draw(st.sampled_from([0.0, 1.0]))}),
        "shapleycam": lambda: ((A, arr(nk_s), arr(nk_s)), {"relu": relu}),
        "shapleycam_weights": lambda: ((arr(nk_s), arr(nk_s)), {}),
        "smoothgradcampp": lambda: ((A, arr((n, 2) + nk_s[1:])), {
            "first_order": draw(st.sampled_from(SGCPP_FIRST_ORDER)),
            "denominator": draw(st.sampled_from(SGCPP_DENOMINATORS)), "relu": relu}),
        "smoothgradcampp_weights": lambda: ((A, arr((n, 2) + nk_s[1:])), {
            "first_order": draw(st.sampled_from(SGCPP_FIRST_ORDER)),
            "denominator": draw(st.sampled_from(SGCPP_DENOMINATORS)), "eps": draw(st.sampled_from([0.0, 1e-8]))}),
        "refinecam": lambda: (([arr((n,) + s), arr((n,) + s)],), {"layer_normalize": draw(st.booleans())}),
        "sess_scales": lambda: ((draw(st.integers(1, 50)), 3), {}),
        "window_starts": lambda: ((draw(st.integers(1, 20)), draw(st.integers(1, 5)), draw(st.integers(1, 5))), {}),
        "sess_fuse": lambda: ((arr((2, 1, 1)), arr((2,)), [(0, 0, 2, 1), (1, 0, 2, 1)], (1, 2)), {
            "pool": draw(st.sampled_from(SESS_POOLS)), "theta": 0.0}),
        "gaussian_blur": lambda: ((arr((n,) + s),), {"ksize": 3, "sigma": 1.0}),
        "attention_rollout": lambda: (([pos((n, 2, 3, 3)), pos((n, 2, 3, 3))],), {
            "head_fusion": draw(st.sampled_from(["mean", "max", "min"]))}),
        "gradient_weighted_relevance": lambda: (([pos((n, 2, 3, 3))], [arr((n, 2, 3, 3))]), {}),
        "token_relevance_map": lambda: ((arr((n, 5, 5)), (2, 2)), {"prefix": 1}),
    }
    return table[name]()


#: output dtype does not follow the inputs (no float array argument, or float64 by definition)
FLOAT64_OUTPUT = {"interpolation_matrix", "integration_points", "iscam_scales", "sscam_noise",
                  "finercam_classes"}   # finercam_classes: int64 class indices (finercam_seed keeps the logits' dtype)


def test_every_public_math_function_has_a_case():
    from hypothesis import find

    missing = []
    for name in PUBLIC:
        try:
            find(_case(name, np.float64), lambda c: True, settings=settings(max_examples=1,
                                                                            database=None))
        except KeyError:
            missing.append(name)
    assert missing == [], f"add a builder for {missing} to _case in {__file__}"


@pytest.mark.parametrize("name", PUBLIC)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_finite_input_never_yields_nan_or_inf(name, dtype, data):
    args, kwargs = data.draw(_case(name, dtype), label="args, kwargs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # no RuntimeWarning may escape either
        try:
            out = getattr(rm, name)(*args, **kwargs)
        except RefcamError:
            return                                        # a clear error is a valid answer
    outs = out if isinstance(out, tuple) else (out,)
    for o in (o for o in outs if isinstance(o, np.ndarray)):
        assert np.isfinite(o).all(), f"{name} returned non-finite values for finite input"
        if name not in FLOAT64_OUTPUT and o.dtype.kind == "f":
            assert o.dtype == np.dtype(dtype), (name, o.dtype)
