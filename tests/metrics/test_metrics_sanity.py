"""Sanity-check comparisons: Spearman, SSIM, report (Adebayo et al. 2018; Wang et al. 2004)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from skimage.metrics import structural_similarity

from refcam.errors import InvalidArgumentError, NonFiniteError, ShapeError
from refcam.metrics import compare_maps, hog_features, hog_similarity, spearman, ssim


def test_spearman_hand_computed_with_ties():
    # ranks a (1.5, 1.5, 3), b (1, 2, 3); centred (-.5, -.5, 1), (-1, 0, 1)
    # rho = 1.5 / sqrt(1.5 * 2) = sqrt(3)/2
    np.testing.assert_allclose(
        spearman([[1.0, 1.0, 2.0]], [[1.0, 2.0, 3.0]]), [np.sqrt(3) / 2], rtol=1e-15
    )
    np.testing.assert_allclose(spearman([[3.0, 2.0, 1.0]], [[1.0, 2.0, 3.0]]), [-1.0])
    # absolute: |(-3, 1, 2)| = (3, 1, 2) -> ranks (3, 1, 2) vs (1, 2, 3): centred (1,-1,0),(-1,0,1) -> -1/2
    np.testing.assert_allclose(
        spearman([[-3.0, 1.0, 2.0]], [[1.0, 2.0, 3.0]], absolute=True), [-0.5]
    )


def test_spearman_constant_map_guard():
    assert spearman(np.ones((1, 2, 2)), np.arange(4.0).reshape(1, 2, 2))[0] == 0.0


@given(st.integers(0, 2**31 - 1))
def test_spearman_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, size=(3, 4, 5)).astype(float)
    b = a + rng.integers(0, 3, size=(3, 4, 5))
    got = spearman(a, b)
    for i in range(3):
        want = stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic
        np.testing.assert_allclose(got[i], want, atol=1e-12)
    np.testing.assert_allclose(spearman(a, 3 * a + 1), 1.0)


def test_ssim_hand_computed_constant_images():
    # constant images c = 1 and d = 0: sigma terms vanish, SSIM = (2cd + C1)/(c^2 + d^2 + C1)
    # with C1 = (0.01*1)^2 = 1e-4: 1e-4 / 1.0001
    got = ssim(np.ones((1, 11, 11)), np.zeros((1, 11, 11)))
    np.testing.assert_allclose(got, [1e-4 / 1.0001], rtol=1e-12)
    # c = d: SSIM = 1 exactly
    np.testing.assert_allclose(
        ssim(np.full((1, 12, 13), 0.3), np.full((1, 12, 13), 0.3)), [1.0], rtol=1e-14
    )


def test_ssim_matches_skimage_gaussian_reference():
    rng = np.random.default_rng(3)
    a = rng.random((2, 24, 30))
    b = 0.6 * a + 0.4 * rng.random((2, 24, 30))
    got = ssim(a, b, data_range=1.0)
    for i in range(2):
        want = structural_similarity(
            a[i],
            b[i],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        np.testing.assert_allclose(got[i], want, rtol=1e-12)


def test_ssim_3d_and_symmetry():
    rng = np.random.default_rng(4)
    a = rng.random((1, 11, 12, 11))
    b = rng.random((1, 11, 12, 11))
    np.testing.assert_allclose(ssim(a, b), ssim(b, a), rtol=1e-14)
    np.testing.assert_allclose(ssim(a, a), [1.0], rtol=1e-14)


def test_compare_maps_report_cascading_and_independent():
    rng = np.random.default_rng(5)
    orig = rng.random((3, 12, 12))
    same = orig * 3.0  # perfectly rank-correlated
    noise = rng.random((3, 12, 12))  # unrelated
    r = compare_maps(orig, [same, noise], labels=["fc", "fc+conv"])
    np.testing.assert_allclose(r.spearman_abs[0], 1.0)
    assert r.decisive_step == 1 and r.passes and r.hog is None  # 12x12 < one HOG block
    np.testing.assert_allclose(r.ssim[0], 1.0, rtol=1e-12)  # min-max normalised maps are equal
    assert "PASSES" in r.to_markdown() and "fc+conv" in r.to_markdown()
    # an edge detector: the maps never change -> fails
    r2 = compare_maps(orig, np.stack([orig, orig]), mode="independent")
    assert not r2.passes and "FAILS" in r2.to_markdown()
    # independent: the most-changed step decides
    r3 = compare_maps(orig, [same, noise], mode="independent")
    assert r3.decisive_step == 1 and r3.passes
    # small maps: SSIM not computed, flagged
    r4 = compare_maps(orig[:, :5, :5], [noise[:, :5, :5]])
    assert r4.ssim is None and r4.hog is None and "n/a" in r4.to_markdown()
    r5 = compare_maps(np.tile(orig, (1, 2, 2)), [np.tile(noise, (1, 2, 2))])  # 24x24: HOG too
    assert r5.hog.shape == (1, 3) and r5.ssim.shape == (1, 3)


def test_hog_matches_skimage_and_similarity():
    from skimage.feature import hog

    rng = np.random.default_rng(8)
    a = rng.random((2, 35, 41))
    a[1] = np.round(a[1] * 3)  # integer maps: many gradients exactly on bin edges (0, 20, ... deg)
    for kw in ({}, {"orientations": 7, "pixels_per_cell": (4, 6), "cells_per_block": (2, 2)}):
        got = hog_features(a, **kw)
        for i in range(2):
            want = hog(a[i], **kw)
            # skimage accumulates cell histograms in C float (float32): agreement to ~3e-8
            np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(hog_similarity(a, 2 * a + 1), 1.0, rtol=1e-9)
    assert hog_similarity(np.zeros((1, 24, 24)), a[:1, :24, :24])[0] == 0.0  # flat map: guard
    # hand-computed: a vertical step edge 0 | 1 at column 12 of a 24x24 map, one block of 3x3 cells
    # g_c = 1 at columns 11 and 12 (central differences), orientation 0 deg -> bin 0 only;
    # cells of column-block 1 (cols 8..15) hold magnitude 2 per row * 8 rows / 64 = 0.25 in bin 0
    step = np.zeros((1, 24, 24))
    step[0, :, 12:] = 1.0
    f = hog_features(step).reshape(3, 3, 9)  # (cell row, cell col, orientation)
    # L2-Hys: three non-zero entries 0.25 -> normalised 1/sqrt(3) = 0.577 -> clipped to 0.2 ->
    # renormalised to 1/sqrt(3) again (all equal)
    np.testing.assert_allclose(f[:, 1, 0], 1 / np.sqrt(3), rtol=1e-8)
    assert np.count_nonzero(f) == 3


def test_errors_name_argument():
    with pytest.raises(ShapeError, match="maps_b"):
        spearman(np.ones((1, 3)), np.ones((1, 4)))
    with pytest.raises(NonFiniteError, match="maps_a"):
        spearman(np.array([[np.nan, 1.0]]), np.ones((1, 2)))
    with pytest.raises(ShapeError, match="maps_a"):
        ssim(np.ones((1, 10, 20)), np.ones((1, 10, 20)))
    with pytest.raises(InvalidArgumentError, match="data_range"):
        ssim(np.ones((1, 11, 11)), np.ones((1, 11, 11)), data_range=0)
    with pytest.raises(ShapeError, match=r"randomized\[1\]"):
        compare_maps(np.ones((1, 3, 3)), [np.ones((1, 3, 3)), np.ones((1, 3, 4))])
    with pytest.raises(ShapeError, match="randomized"):
        compare_maps(np.ones((1, 3, 3)), [])
    with pytest.raises(InvalidArgumentError, match="labels"):
        compare_maps(np.ones((1, 3, 3)), [np.ones((1, 3, 3))], labels=["a", "b"])
    with pytest.raises(InvalidArgumentError, match="mode"):
        compare_maps(np.ones((1, 3, 3)), [np.ones((1, 3, 3))], mode="cascade")
    with pytest.raises(ShapeError, match="maps"):
        hog_features(np.ones((1, 20, 30)))
    with pytest.raises(ShapeError, match="maps"):
        hog_features(np.ones((1, 24, 24, 24)))


def test_model_randomization_test_with_toy_models():
    # toy "model" = weight map w; explanation = x * w (gradient x input of a linear model)
    from refcam.metrics import model_randomization_test

    rng = np.random.default_rng(6)
    x = rng.random((2, 12, 12)) + 0.5
    w = np.linspace(0.0, 1.0, 144).reshape(12, 12)
    calls = []

    def explain(model):
        calls.append(model)
        return x * model

    rnd = [("head", w * 2.0), ("head+body", rng.normal(size=(12, 12)))]
    r = model_randomization_test(explain, w, randomized=rnd, progress=False)
    assert len(calls) == 3 and calls[0] is w
    assert r.labels == ("head", "head+body")
    np.testing.assert_allclose(r.spearman[0], 1.0)  # scaling keeps the ranks
    assert r.passes and r.decisive_step == 1
    # an edge detector ignores the model: identical maps -> fails
    edge = model_randomization_test(lambda m: x, w, randomized=rnd, progress=False)
    np.testing.assert_allclose(edge.spearman_abs, 1.0)
    assert not edge.passes
    with pytest.raises(InvalidArgumentError, match="explain"):
        model_randomization_test(None, w, randomized=rnd)
    with pytest.raises(InvalidArgumentError, match="mode"):
        model_randomization_test(explain, w, randomized=rnd, mode="custom")
    with pytest.raises(NonFiniteError, match="randomized model 'head'"):
        model_randomization_test(
            lambda m: x * np.nan if m is not w else x, w, randomized=rnd, progress=False
        )


def test_float32_in_float32_out():
    a = np.random.default_rng(0).random((1, 11, 11)).astype(np.float32)
    assert spearman(a, a).dtype == np.float32 and ssim(a, a).dtype == np.float32
