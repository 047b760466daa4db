"""Tests of refcam.math.gradients."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refcam.errors import InvalidArgumentError, NonFiniteError, ShapeError
from refcam.math.gradients import (
    channel_max_saliency,
    class_model_step,
    guided_gradcam,
    integrated_gradients,
    integration_points,
    path_inputs,
    saliency,
    smoothgrad,
    smoothgrad_inputs,
)

RULES = (
    "riemann-left",
    "riemann-right",
    "riemann-middle",
    "trapezoid",
    "trapezoid-captum",
    "gauss-legendre",
)
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
images = hnp.arrays(
    np.float64, hnp.array_shapes(min_dims=3, max_dims=5, min_side=1, max_side=4), elements=finite
)

# (N=1, C=3, H=2, W=2) gradients; per pixel the channel values are listed in the comments
G = np.array([[[[1.0, -4.0], [0.0, 2.0]], [[-3.0, 1.0], [0.5, -2.0]], [[2.0, 0.0], [-0.25, 1.0]]]])


# --------------------------------------------------------------------------- channel max / saliency
def test_channel_max_saliency_hand_case():
    # pixel (0,0): |1|,|-3|,|2| -> 3; (0,1): 4,1,0 -> 4; (1,0): 0,.5,.25 -> .5; (1,1): 2,2,1 -> 2
    np.testing.assert_array_equal(channel_max_saliency(G), [[[3.0, 4.0], [0.5, 2.0]]])


def test_channel_max_saliency_3d_and_dtype():
    g = np.zeros((2, 2, 1, 1, 2), np.float32)
    g[1, 0, 0, 0, 1] = -5.0
    out = channel_max_saliency(g)
    assert out.dtype == np.float32 and out.shape == (2, 1, 1, 2)
    np.testing.assert_array_equal(out[1, 0, 0], [0.0, 5.0])
    np.testing.assert_array_equal(out[0], 0.0)


def test_saliency_reductions_hand_cases():
    np.testing.assert_array_equal(saliency(G), channel_max_saliency(G))
    # sum |g|: (0,0) 1+3+2=6; (0,1) 4+1+0=5; (1,0) 0+.5+.25=.75; (1,1) 2+2+1=5
    np.testing.assert_array_equal(saliency(G, reduce="sum-abs"), [[[6.0, 5.0], [0.75, 5.0]]])
    np.testing.assert_array_equal(saliency(G, reduce="abs"), np.abs(G))
    out = saliency(G, reduce="none")
    np.testing.assert_array_equal(out, G)
    assert out is not G


@given(images)
def test_saliency_reduction_bounds(g):
    mx, sm = saliency(g), saliency(g, reduce="sum-abs")
    assert mx.shape == (g.shape[0],) + g.shape[2:]
    assert (mx >= 0).all() and (mx <= sm).all() and (sm <= g.shape[1] * mx * (1 + 1e-12)).all()
    np.testing.assert_array_equal(mx, saliency(g, reduce="abs").max(axis=1))


def test_saliency_errors_name_argument():
    with pytest.raises(ShapeError, match=r"input_gradients: got shape \(2, 3\)"):
        channel_max_saliency(np.ones((2, 3)))
    with pytest.raises(InvalidArgumentError, match="reduce"):
        saliency(G, reduce="l2")
    with pytest.raises(NonFiniteError, match="input_gradients"):
        saliency(np.full((1, 1, 2), np.nan))
    with pytest.raises(ShapeError, match="input_gradients"):
        saliency(np.ones((1, 0, 2)))


# ------------------------------------------------------------------------------- guided grad-cam
def test_guided_gradcam_hand_case():
    cam = np.array([[[0.0, 0.5], [1.0, 2.0]]])
    # channel 0 of G times cam: [[1*0, -4*.5], [0*1, 2*2]] = [[0, -2], [0, 4]]
    out = guided_gradcam(G, cam)
    np.testing.assert_array_equal(out[0, 0], [[0.0, -2.0], [0.0, 4.0]])
    np.testing.assert_array_equal(out[0, 2], [[0.0, 0.0], [-0.25, 2.0]])
    assert out.shape == G.shape


def test_guided_gradcam_3d_and_dtype_promotion():
    gb = np.ones((2, 1, 2, 1, 3), np.float32)
    cam32 = np.arange(12, dtype=np.float32).reshape(2, 2, 1, 3)
    out = guided_gradcam(gb, cam32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], cam32)
    assert guided_gradcam(gb, cam32.astype(np.float64)).dtype == np.float64


def test_guided_gradcam_shape_mismatch_names_cam_map():
    with pytest.raises(ShapeError, match=r"cam_map: got shape \(1, 7, 7\), expected \(1, 2, 2\)"):
        guided_gradcam(G, np.ones((1, 7, 7)))
    with pytest.raises(ShapeError, match="cam_map"):
        guided_gradcam(G, np.ones((1, 3, 2, 2)))  # a per-channel map is not a CAM
    with pytest.raises(ShapeError, match="guided_gradients"):
        guided_gradcam(np.ones((2, 2)), np.ones((2, 2)))


# ------------------------------------------------------------------------------------ smoothgrad
def test_smoothgrad_inputs_is_the_documented_draw():
    x = np.zeros((2, 1, 2, 2))
    x[0, 0, 0, 0] = 2.0  # sample 0: range 2  -> sigma = .15 * 2 = .3
    x[1, 0] = [[-1.0, 9.0], [0.0, 0.0]]  # sample 1: range 10 -> sigma = 1.5
    out = smoothgrad_inputs(x, 3, noise_level=0.15, seed=7)
    noise = np.random.default_rng(7).standard_normal((2, 3, 1, 2, 2))
    sigma = np.array([0.3, 1.5]).reshape(2, 1, 1, 1, 1)
    np.testing.assert_allclose(out, x[:, None] + sigma * noise, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(out, smoothgrad_inputs(x, 3, 0.15, seed=7))
    assert not np.array_equal(out, smoothgrad_inputs(x, 3, 0.15, seed=8))


def test_smoothgrad_inputs_noise_statistics():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(2, 3, 4, 4))
    x[1] *= 10.0
    out = smoothgrad_inputs(x, 2000, noise_level=0.2, seed=1)
    noise = out - x[:, None]
    for n in range(2):
        sigma = 0.2 * (x[n].max() - x[n].min())
        assert abs(noise[n].std() / sigma - 1) < 0.02  # 96 000 draws: relative s.e. ~0.2 %
        assert abs(noise[n].mean()) < 0.02 * sigma


def test_smoothgrad_inputs_constant_and_zero_noise_are_exact_and_dtype_kept():
    x = np.full((1, 2, 3), 5.0, np.float32)
    out = smoothgrad_inputs(x, 4, noise_level=0.5, seed=None)
    assert out.dtype == np.float32 and out.shape == (1, 4, 2, 3)
    np.testing.assert_array_equal(out, 5.0)
    y = np.arange(6.0).reshape(1, 2, 3)
    np.testing.assert_array_equal(
        smoothgrad_inputs(y, 2, noise_level=0.0), np.stack([y, y], axis=1)
    )
    gen = np.random.default_rng(3)
    assert smoothgrad_inputs(y, 2, seed=gen).shape == (1, 2, 2, 3)


def test_smoothgrad_hand_cases():
    # n = 2 samples of a (C=1, 1, 2) gradient: [1, -2] and [3, 4]
    g = np.array([[[[[1.0, -2.0]]], [[[3.0, 4.0]]]]])
    np.testing.assert_array_equal(smoothgrad(g), [[[[2.0, 1.0]]]])  # means
    np.testing.assert_array_equal(
        smoothgrad(g, square=True), [[[[5.0, 10.0]]]]
    )  # (1+9)/2, (4+16)/2
    assert smoothgrad(g.astype(np.float32)).dtype == np.float32


def test_smoothgrad_errors_name_argument():
    with pytest.raises(ShapeError, match="gradient_samples"):
        smoothgrad(np.ones((1, 2, 3)))
    with pytest.raises(InvalidArgumentError, match="square"):
        smoothgrad(np.ones((1, 2, 1, 3)), square="yes")
    with pytest.raises(InvalidArgumentError, match="n_samples"):
        smoothgrad_inputs(np.ones((1, 1, 2)), 0)
    with pytest.raises(InvalidArgumentError, match="noise_level"):
        smoothgrad_inputs(np.ones((1, 1, 2)), 2, noise_level=-0.1)
    with pytest.raises(InvalidArgumentError, match="seed"):
        smoothgrad_inputs(np.ones((1, 1, 2)), 2, seed=-1)
    with pytest.raises(InvalidArgumentError, match="seed"):
        smoothgrad_inputs(np.ones((1, 1, 2)), 2, seed="abc")
    with pytest.raises(ShapeError, match="inputs"):
        smoothgrad_inputs(np.ones((1, 2)), 2)


# ----------------------------------------------------------------------------- integration points
def test_integration_points_hand_cases():
    a, w = integration_points(4, "riemann-left")
    np.testing.assert_array_equal(a, [0.0, 0.25, 0.5, 0.75])
    np.testing.assert_array_equal(w, [0.25] * 4)
    a, w = integration_points(4, "riemann-right")
    np.testing.assert_array_equal(a, [0.25, 0.5, 0.75, 1.0])
    a, w = integration_points(4, "riemann-middle")
    np.testing.assert_array_equal(a, [0.125, 0.375, 0.625, 0.875])
    a, w = integration_points(5, "trapezoid")
    np.testing.assert_array_equal(a, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(w, [0.125, 0.25, 0.25, 0.25, 0.125])
    # captum's riemann_trapezoid: step 1/n = .2 on linspace(0, 1, 5), ends halved -> sums to .8
    a, w = integration_points(5, "trapezoid-captum")
    np.testing.assert_array_equal(a, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(w, [0.1, 0.2, 0.2, 0.2, 0.1], rtol=1e-15)
    a, w = integration_points(1, "gauss-legendre")
    np.testing.assert_array_equal(a, [0.5])
    np.testing.assert_array_equal(w, [1.0])
    # 2-point Gauss-Legendre: t = -+1/sqrt(3) -> alpha = 1/2 -+ 1/(2 sqrt 3)
    a, w = integration_points(2, "gauss-legendre")
    np.testing.assert_allclose(a, [0.5 - 0.5 / np.sqrt(3), 0.5 + 0.5 / np.sqrt(3)], rtol=1e-15)
    np.testing.assert_allclose(w, [0.5, 0.5], rtol=1e-15)


@given(st.integers(2, 80), st.sampled_from(RULES))
def test_integration_points_properties(n, rule):
    a, w = integration_points(n, rule)
    assert a.shape == w.shape == (n,) and a.dtype == w.dtype == np.float64
    assert (a >= 0).all() and (a <= 1).all() and (np.diff(a) > 0).all() and (w > 0).all()
    expected_sum = (n - 1) / n if rule == "trapezoid-captum" else 1.0
    np.testing.assert_allclose(w.sum(), expected_sum, rtol=1e-13)


@given(st.integers(1, 30))
def test_gauss_legendre_exact_for_degree_up_to_2n_minus_1(n):
    a, w = integration_points(n, "gauss-legendre")
    for k in range(2 * n):
        np.testing.assert_allclose(np.sum(w * a**k), 1.0 / (k + 1), rtol=1e-12, atol=1e-14)


@given(st.integers(2, 60))
def test_riemann_and_trapezoid_errors_on_linear_integrand(n):
    # integral of alpha over [0,1] = 1/2; left sum = (n-1)/(2n), right = (n+1)/(2n); middle and
    # trapezoid are exact on linear functions
    for rule, value in (
        ("riemann-left", (n - 1) / (2 * n)),
        ("riemann-right", (n + 1) / (2 * n)),
        ("riemann-middle", 0.5),
        ("trapezoid", 0.5),
    ):
        a, w = integration_points(n, rule)
        np.testing.assert_allclose(np.sum(w * a), value, rtol=1e-13)


def test_integration_points_errors_name_argument():
    with pytest.raises(InvalidArgumentError, match="n_steps"):
        integration_points(0, "riemann-left")
    with pytest.raises(InvalidArgumentError, match="n_steps"):
        integration_points(1, "trapezoid")
    with pytest.raises(InvalidArgumentError, match="rule"):
        integration_points(5, "simpson")


# ------------------------------------------------------------------------- integrated gradients
def test_path_inputs_hand_case_and_baseline_shapes():
    x = np.array([[[2.0, 4.0]], [[6.0, 8.0]]])  # (N=2, C=1, W=2)
    out = path_inputs(x, 0.0, [0.0, 0.5, 1.0])
    assert out.shape == (2, 3, 1, 2)
    np.testing.assert_array_equal(out[0, :, 0], [[0, 0], [1, 2], [2, 4]])
    per_pixel = np.array([[1.0, 2.0]])  # (C, *S): x' = [1, 2]; midpoint of sample 1 = [3.5, 5]
    np.testing.assert_array_equal(path_inputs(x, per_pixel, [0.5])[1, 0, 0], [3.5, 5.0])
    per_sample = np.array([[[0.0, 0.0]], [[6.0, 8.0]]])  # baseline == input for sample 1
    np.testing.assert_array_equal(path_inputs(x, per_sample, [0.3, 0.9])[1], np.stack([x[1], x[1]]))


@given(images, st.lists(st.floats(0, 1), min_size=1, max_size=4))
def test_path_inputs_endpoints(x, alphas):
    b = 0.5 * x[:1]  # broadcast over the batch
    out = path_inputs(x, b, [0.0] + alphas + [1.0])
    np.testing.assert_array_equal(out[:, 0], np.broadcast_to(b, x.shape))
    np.testing.assert_allclose(out[:, -1], x, rtol=1e-12, atol=1e-9)


def test_integrated_gradients_hand_case():
    # F(x) = x1^2 + 3 x2 at x = (1, 2), baseline 0.  dF/dx on the path = (2 alpha, 3).
    # Exact IG = (1 * 2 * 1/2, 2 * 3) = (1, 6), sum 7 = F(x) - F(0).
    x = np.array([[[1.0, 2.0]]])

    def grads(alphas):
        p = path_inputs(x, 0.0, alphas)
        return np.stack([2 * p[..., 0], np.full_like(p[..., 1], 3.0)], axis=-1)

    for rule in ("gauss-legendre", "riemann-middle", "trapezoid"):
        alphas, _ = integration_points(3, rule)
        np.testing.assert_allclose(
            integrated_gradients(grads(alphas), x, 0.0, rule), [[[1.0, 6.0]]], rtol=1e-14
        )
    # right Riemann with 2 steps: IG1 = 1 * (2*.5*.5 + 2*1*.5) = 1.5 (the paper's Sect. 5 sum)
    alphas, _ = integration_points(2, "riemann-right")
    np.testing.assert_allclose(
        integrated_gradients(grads(alphas), x, 0.0, "riemann-right"), [[[1.5, 6.0]]]
    )


@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_integrated_gradients_completeness_exact_for_gauss_legendre(n_points, c, seed):
    # F(x) = sum(a x^3 + b x^2 + d x): the path gradient is quadratic in alpha, so Gauss-Legendre
    # with >= 2 points is exact; completeness: sum IG = F(x) - F(x')
    rng = np.random.default_rng(seed)
    shape = (2, c, 3, 2)
    a, b, d = (rng.normal(size=shape[1:]) for _ in range(3))
    x, base = rng.normal(size=shape), rng.normal(size=shape[1:])

    def F(z):
        return np.sum(a * z**3 + b * z**2 + d * z, axis=tuple(range(1, z.ndim)))

    n = n_points + 1
    alphas, _ = integration_points(n, "gauss-legendre")
    p = path_inputs(x, base, alphas)
    ig = integrated_gradients(3 * a * p**2 + 2 * b * p + d, x, base)
    np.testing.assert_allclose(
        ig.reshape(2, -1).sum(1), F(x) - F(base[None]), rtol=1e-10, atol=1e-10
    )


def test_integrated_gradients_riemann_converges_at_first_order():
    x = np.array([[[2.0]]])
    errors = []
    for n in (10, 20, 40):
        alphas, _ = integration_points(n, "riemann-left")
        ig = integrated_gradients(
            3 * path_inputs(x, 0.0, alphas) ** 2, x, 0.0, "riemann-left"
        )  # F = x^3
        errors.append(8.0 - ig[0, 0, 0])
    # left sum of 3 (2 alpha)^2 * 2 = 24 alpha^2:  error = 24 (1/(2n) - 1/(6 n^2))
    np.testing.assert_allclose(
        errors, [24 * (1 / (2 * n) - 1 / (6 * n**2)) for n in (10, 20, 40)], rtol=1e-12
    )


def test_integrated_gradients_dtype_and_errors():
    x32 = np.ones((1, 1, 2), np.float32)
    g32 = np.ones((1, 3, 1, 2), np.float32)
    out = integrated_gradients(g32, x32, 0.0, "riemann-middle")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)
    with pytest.raises(ShapeError, match=r"path_gradients: got shape \(1, 3, 1, 5\)"):
        integrated_gradients(np.ones((1, 3, 1, 5)), x32, 0.0)
    with pytest.raises(ShapeError, match="path_gradients"):
        integrated_gradients(np.ones((1, 1, 2)), x32, 0.0)
    with pytest.raises(ShapeError, match=r"baseline: got shape \(3,\)"):
        integrated_gradients(g32, x32, np.zeros(3))
    with pytest.raises(ShapeError, match="baseline"):
        path_inputs(x32, np.zeros((2, 1, 2)), [0.5])  # would broadcast the batch to 2
    with pytest.raises(ShapeError, match="alphas"):
        path_inputs(x32, 0.0, [[0.5]])
    with pytest.raises(ShapeError, match="alphas"):
        path_inputs(x32, 0.0, [])
    with pytest.raises(InvalidArgumentError, match="rule"):
        integrated_gradients(g32, x32, 0.0, "left")
    with pytest.raises(NonFiniteError, match="baseline"):
        path_inputs(x32, np.nan, [0.5])


# ------------------------------------------------------------------------------ class model step
def test_class_model_step_hand_cases():
    # I = 1, dS/dI = 3, lr .1, lambda .5:  1 + .1 * (3 - 2 * .5 * 1) = 1.2
    out = class_model_step(np.ones((1, 1, 1)), np.full((1, 1, 1), 3.0), learning_rate=0.1, l2=0.5)
    np.testing.assert_allclose(out, [[[1.2]]], rtol=1e-15)
    # lambda 0: plain ascent 1 + .1 * 3
    np.testing.assert_allclose(
        class_model_step(np.ones((1, 1, 1)), np.full((1, 1, 1), 3.0), learning_rate=0.1, l2=0.0),
        [[[1.3]]],
        rtol=1e-15,
    )


def test_class_model_iteration_converges_to_regularised_optimum():
    # S_c(I) = <a, I> (linear): argmax <a, I> - lambda |I|^2 = a / (2 lambda)
    a = np.array([[[[1.0, -2.0], [0.5, 4.0]]]])
    img = np.zeros_like(a)
    for _ in range(200):
        img = class_model_step(img, a, learning_rate=0.5, l2=0.25)
    np.testing.assert_allclose(img, a / 0.5, rtol=1e-12)


def test_class_model_step_dtype_and_errors():
    out = class_model_step(
        np.ones((1, 1, 2), np.float32), np.ones((1, 1, 2), np.float32), learning_rate=0.1, l2=0.1
    )
    assert out.dtype == np.float32
    with pytest.raises(ShapeError, match="gradient"):
        class_model_step(np.ones((1, 1, 2)), np.ones((1, 1, 3)), learning_rate=0.1, l2=0.1)
    with pytest.raises(InvalidArgumentError, match="learning_rate"):
        class_model_step(np.ones((1, 1, 2)), np.ones((1, 1, 2)), learning_rate=-1, l2=0.1)
    with pytest.raises(InvalidArgumentError, match="l2"):
        class_model_step(np.ones((1, 1, 2)), np.ones((1, 1, 2)), learning_rate=0.1, l2=float("nan"))
    with pytest.raises(ShapeError, match="image"):
        class_model_step(np.ones(2), np.ones(2), learning_rate=0.1, l2=0.1)


def test_scalar_baseline_does_not_promote_but_array_baseline_does():
    x32 = np.ones((1, 1, 2), np.float32)
    assert path_inputs(x32, 0.0, [0.5]).dtype == np.float32
    assert path_inputs(x32, np.zeros((1, 2)), [0.5]).dtype == np.float64
    assert path_inputs(x32, np.zeros((1, 2), np.float32), np.array([0.5])).dtype == np.float32
