"""ROAD: noisy linear imputation and the MoRF/LeRF curves (Rong et al. 2022)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refcam.errors import InvalidArgumentError, ShapeError
from refcam.metrics import noisy_linear_imputation, road


def test_centre_pixel_is_weighted_neighbour_mean():
    x = np.array([[[[1.0, 2.0, 3.0], [4.0, 100.0, 6.0], [7.0, 8.0, 9.0]]]])
    rem = np.zeros((1, 3, 3), bool)
    rem[0, 1, 1] = True
    # (2+4+6+8)/6 + (1+3+7+9)/12 = 20/6 + 20/12 = 5 ; weights sum to 1
    out = noisy_linear_imputation(x, rem, noise=0.0)
    assert out[0, 0, 1, 1] == pytest.approx(5.0, abs=1e-12)
    np.testing.assert_array_equal(np.delete(out.ravel(), 4), np.delete(x.ravel(), 4))


def test_joint_system_two_adjacent_unknowns():
    # row [0, a, b, 9]: a = (0 + b)/2, b = (a + 9)/2  ->  a = 3, b = 6
    x = np.array([[[[0.0, -1.0, -1.0, 9.0]]]], dtype=np.float32)
    out = noisy_linear_imputation(x, np.array([[[False, True, True, False]]]), noise=0.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [0, 3, 6, 9], atol=1e-6)


def test_border_renormalisation_and_channels():
    # corner (0,0) of a 2x2: neighbours (0,1) w 1/6, (1,0) w 1/6, (1,1) w 1/12; sum 5/12
    # channel 0 values 6, 6, 12 -> (1 + 1 + 1)/(5/12) = 7.2 ; channel 1: zeros -> 0
    x = np.zeros((1, 2, 2, 2))
    x[0, 0] = [[50.0, 6.0], [6.0, 12.0]]
    rem = np.array([[[True, False], [False, False]]])
    out = noisy_linear_imputation(x, rem, noise=0.0)
    assert out[0, 0, 0, 0] == pytest.approx(7.2, abs=1e-12)
    assert out[0, 1, 0, 0] == 0.0


@given(st.integers(0, 2**31 - 1))
def test_affine_images_reconstructed_exactly_inside(seed):
    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(size=3)
    yy, xx = np.mgrid[0:7, 0:8]
    img = (a * yy + b * xx + c)[None, None]
    rem = np.zeros((1, 7, 8), bool)
    rem[0, 1:-1, 1:-1] = rng.random((5, 6)) < 0.7  # interior only: symmetric neighbourhoods
    out = noisy_linear_imputation(img, rem, noise=0.0)
    np.testing.assert_allclose(out, img, atol=1e-9)


def test_noise_statistics_and_reproducibility():
    x = np.full((1, 1, 40, 40), 3.0)
    rem = np.ones((1, 40, 40), bool)
    rem[0, 0, 0] = False
    out = noisy_linear_imputation(x, rem, noise=0.5, seed=7)
    resid = out[0, 0][rem[0]] - 3.0
    assert abs(resid.std() - 0.5) < 0.03 and abs(resid.mean()) < 0.03  # 1599 samples
    np.testing.assert_array_equal(out, noisy_linear_imputation(x, rem, noise=0.5, seed=7))
    assert not np.array_equal(out, noisy_linear_imputation(x, rem, noise=0.5, seed=8))


def sum_model(x):
    return x.reshape(len(x), -1).sum(axis=1)


def test_road_curve_hand_computed_morf_and_lerf():
    x = np.array([[[[1.0, 2.0, 3.0, 4.0]]]])
    m = np.array([[[0.0, 0.0, 1.0, 0.5]]])  # morf: 2, 3, then ties 0, 1 ; lerf: 0, 1 (ties), 3, 2
    # morf 25 % removes pixel 2 -> (2 + 4)/2 = 3 -> sum 10 ; 50 % removes 2, 3 ->
    # p3 has only p2 as neighbour -> p3 = p2, p2 = (2 + p3)/2 -> p2 = p3 = 2 -> sum 1+2+2+2 = 7
    r = road(sum_model, x, m, percentages=[0.25, 0.5], noise=0.0, progress=False)
    np.testing.assert_array_equal(r.counts, [1, 2])
    np.testing.assert_allclose(r.scores, [[10.0, 7.0]], atol=1e-12)
    np.testing.assert_allclose(r.mean, [8.5])
    # lerf 25 % removes pixel 0 -> its only neighbour is 2 -> sum 2+2+3+4 = 11 ;
    # 50 % removes 0, 1: p1 = (p0 + 3)/2, p0 = p1 -> 3, 3 -> sum 3+3+3+4 = 13
    r = road(sum_model, x, m, percentages=[0.25, 0.5], order="lerf", noise=0.0, progress=False)
    np.testing.assert_allclose(r.scores, [[11.0, 13.0]], atol=1e-12)


def test_road_batching_independent_with_noise():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 6, 6))
    m = rng.random((2, 6, 6))
    a = road(sum_model, x, m, noise=0.1, seed=3, batch_size=1, progress=False)
    b = road(sum_model, x, m, noise=0.1, seed=3, batch_size=100, progress=False)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_errors_name_argument():
    x = np.ones((1, 1, 2, 2))
    with pytest.raises(InvalidArgumentError, match="remove"):
        noisy_linear_imputation(x, np.ones((1, 2, 2), bool))
    with pytest.raises(ShapeError, match="remove"):
        noisy_linear_imputation(x, np.ones((1, 3, 2), bool))
    with pytest.raises(ShapeError, match="inputs"):
        noisy_linear_imputation(np.ones((1, 1, 2, 2, 2)), np.ones((1, 2, 2, 2), bool))
    with pytest.raises(InvalidArgumentError, match="noise"):
        noisy_linear_imputation(x, np.zeros((1, 2, 2), bool), noise=-1)
    with pytest.raises(InvalidArgumentError, match="seed"):
        noisy_linear_imputation(x, np.zeros((1, 2, 2), bool), seed=-1)
    with pytest.raises(InvalidArgumentError, match="percentages"):
        road(sum_model, x, np.ones((1, 2, 2)), percentages=[1.0], progress=False)
    with pytest.raises(InvalidArgumentError, match="percentages"):
        road(sum_model, x, np.ones((1, 2, 2)), percentages=[0.9], progress=False)  # rounds to all 4
    with pytest.raises(InvalidArgumentError, match="order"):
        road(sum_model, x, np.ones((1, 2, 2)), order="random", progress=False)
    with pytest.raises(ShapeError, match="maps"):
        road(sum_model, x, np.ones((1, 3, 3)), progress=False)
