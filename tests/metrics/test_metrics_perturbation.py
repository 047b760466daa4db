"""Deletion / insertion curves and AUC (Petsiuk et al. 2018) with toy NumPy models."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from refcam.errors import InvalidArgumentError, NonFiniteError, ShapeError
from refcam.metrics import auc, deletion, insertion, make_baseline, saliency_order


def linear(x):
    """Toy model: score = sum of all pixel values (weights 1)."""
    return x.reshape(len(x), -1).sum(axis=1)


def test_order_descending_ties_by_flat_index():
    m = np.array([[[0.5, 0.9, 0.5], [0.1, 0.9, 0.5]]])
    # values 0.9 at flat 1 and 4 -> (1, 4); 0.5 at 0, 2, 5 -> (0, 2, 5); then 0.1 at 3
    np.testing.assert_array_equal(saliency_order(m), [[1, 4, 0, 2, 5, 3]])
    np.testing.assert_array_equal(saliency_order(np.zeros((2, 2, 2))), [[0, 1, 2, 3]] * 2)


def test_deletion_hand_computed_step_three_weighted_model():
    # model: score = 1*x0 + 2*x1 + 3*x2 + 4*x3 (flat 2x2 positions), single channel
    w = np.array([1.0, 2.0, 3.0, 4.0])

    def f(x):
        return x.reshape(len(x), -1) @ w

    x = np.array([[[[1.0, 1.0], [2.0, 1.0]]]])  # flat (1, 1, 2, 1) -> full score 1+2+6+4 = 13
    m = np.array([[[0.2, 0.7], [0.7, 0.1]]])  # order: 1, 2 (tie 0.7 by index), 0, 3
    c = deletion(f, x, m, step=3, progress=False)
    # counts: 0, 3, 4 -> fractions 0, .75, 1
    # k=1 removes positions 1, 2, 0 -> remaining 4*1 = 4 ; k=2 -> 0
    np.testing.assert_array_equal(c.fractions, [0.0, 0.75, 1.0])
    np.testing.assert_array_equal(c.scores, [[13.0, 4.0, 0.0]])
    # AUC = .75*(13+4)/2 + .25*(4+0)/2 = 6.375 + 0.5
    np.testing.assert_allclose(c.auc, [6.875], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(c.order, [[1, 2, 0, 3]])


def test_insertion_hand_computed_mean_baseline_two_channels():
    x = np.zeros((1, 2, 1, 3))
    x[0, 0] = [[3.0, 0.0, 0.0]]
    x[0, 1] = [[0.0, 0.0, 6.0]]
    # mean baseline per channel: channel 0 -> 1, channel 1 -> 2; baseline score = 3*1 + 3*2 = 9
    m = np.array([[[0.0, 1.0, 2.0]]])  # order 2, 1, 0
    c = insertion(linear, x, m, step=1, baseline="mean", progress=False)
    # k=1: insert pos 2 -> ch0 (1,1,0) ch1 (2,2,6) -> 2 + 10 = 12
    # k=2: insert pos 1 -> ch0 (1,0,0) ch1 (2,0,6) -> 1 + 8 = 9 ; k=3: the image -> 9
    np.testing.assert_array_equal(c.scores, [[9.0, 12.0, 9.0, 9.0]])
    np.testing.assert_allclose(c.fractions, [0, 1 / 3, 2 / 3, 1])
    # AUC = (1/3) * ((9+12)/2 + (12+9)/2 + (9+9)/2) = (1/3) * 30 = 10
    np.testing.assert_allclose(c.auc, [10.0], atol=1e-12)


def test_blur_baseline_is_spatial_gaussian():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 6))
    b = make_baseline(x, "blur", blur_sigma=1.5)
    expect = np.stack(
        [
            np.stack([ndimage.gaussian_filter(x[n, c], 1.5, mode="reflect") for c in range(3)])
            for n in range(2)
        ]
    )
    np.testing.assert_allclose(b, expect, atol=1e-12)
    np.testing.assert_array_equal(make_baseline(x, "blur", blur_sigma=0), x)


def test_targets_and_batching_do_not_change_results():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, 3, 4)).astype(np.float32)
    m = rng.normal(size=(3, 3, 4)).astype(np.float32)
    w = rng.normal(size=(5, 24))

    def f(z):
        return z.reshape(len(z), -1) @ w.T

    a = deletion(f, x, m, targets=[0, 3, 4], step=5, batch_size=1, progress=False)
    b = deletion(f, x, m, targets=[0, 3, 4], step=5, batch_size=1000, progress=False)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.scores.dtype == np.float32 and a.auc.dtype == np.float32
    # per-sample 1-D model equals the column pick
    g = lambda z: f(z)[:, 3]
    c = deletion(g, x, m, step=5, progress=False)
    d = deletion(f, x, m, targets=3, step=5, progress=False)
    np.testing.assert_array_equal(c.scores, d.scores)


def test_3d_volumes():
    x = np.ones((1, 1, 2, 2, 2))
    m = np.arange(8.0).reshape(1, 2, 2, 2)
    c = deletion(linear, x, m, step=4, progress=False)
    np.testing.assert_array_equal(c.scores, [[8.0, 4.0, 0.0]])


@given(st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_linear_model_deletion_plus_insertion_is_constant(step, seed):
    # for a linear model with zero baseline, deletion(k) + insertion(k) = f(I) + f(0) = f(I)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 2, 3, 3))
    m = rng.integers(0, 3, size=(2, 3, 3)).astype(float)  # many ties
    d = deletion(linear, x, m, step=step, progress=False)
    i = insertion(linear, x, m, step=step, baseline="zeros", progress=False)
    np.testing.assert_allclose(
        d.scores + i.scores, linear(x)[:, None] * np.ones_like(d.scores), atol=1e-9
    )
    assert d.fractions[0] == 0 and d.fractions[-1] == 1
    assert np.all(np.diff(d.fractions) > 0)
    np.testing.assert_allclose(d.auc + i.auc, linear(x), atol=1e-9)


def test_auc_rule():
    np.testing.assert_allclose(auc([0, 0.25, 1], [[1, 1, 0], [0, 0, 0]]), [0.25 + 0.375, 0.0])
    with pytest.raises(ShapeError, match="fractions"):
        auc([0.0], [1.0])
    with pytest.raises(ShapeError, match="scores"):
        auc([0.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ShapeError, match="fractions"):
        auc([1.0, 0.0], [1.0, 2.0])


def test_errors_name_argument():
    x = np.ones((1, 1, 2, 2))
    with pytest.raises(ShapeError, match="maps"):
        deletion(linear, x, np.ones((1, 3, 2)), step=1, progress=False)
    with pytest.raises(ShapeError, match="maps"):
        deletion(linear, x, np.ones((2, 2, 2)), step=1, progress=False)
    with pytest.raises(NonFiniteError, match="maps"):
        deletion(linear, x, np.array([[[np.nan, 1.0], [0.0, 0.0]]]), step=1, progress=False)
    with pytest.raises(ShapeError, match="inputs"):
        deletion(linear, np.ones((2, 2)), np.ones((2, 2)), step=1, progress=False)
    with pytest.raises(InvalidArgumentError, match="step"):
        deletion(linear, x, np.ones((1, 2, 2)), step=0, progress=False)
    with pytest.raises(InvalidArgumentError, match="baseline"):
        insertion(linear, x, np.ones((1, 2, 2)), step=1, baseline="noise", progress=False)
    with pytest.raises(ShapeError, match="baseline"):
        insertion(linear, x, np.ones((1, 2, 2)), step=1, baseline=np.ones(3), progress=False)
    with pytest.raises(InvalidArgumentError, match="blur_sigma"):
        insertion(linear, x, np.ones((1, 2, 2)), step=1, blur_sigma=-1, progress=False)
    with pytest.raises(InvalidArgumentError, match="score_fn"):
        deletion(None, x, np.ones((1, 2, 2)), step=1, progress=False)


def test_resize_option_uses_math_upsample():
    from refcam.math import upsample

    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 1, 4, 4))
    small = rng.random((2, 2, 2))
    for mode in ("linear", "nearest"):
        got = deletion(linear, x, small, step=4, resize=mode, progress=False)
        want = deletion(linear, x, upsample(small, (4, 4), mode=mode), step=4, progress=False)
        np.testing.assert_array_equal(got.scores, want.scores)
        np.testing.assert_array_equal(got.order, want.order)
    # nearest 2x: each coarse cell becomes a 2x2 block -> blocks removed in descending coarse order
    s = np.array([[[0.1, 0.9], [0.5, 0.3]]])
    c = deletion(linear, np.ones((1, 1, 4, 4)), s, step=4, resize="nearest", progress=False)
    np.testing.assert_array_equal(c.order[0, :4], [2, 3, 6, 7])  # top-right block first
    np.testing.assert_array_equal(c.scores, [[16.0, 12.0, 8.0, 4.0, 0.0]])
