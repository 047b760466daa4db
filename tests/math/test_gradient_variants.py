"""Oracle tests of refcam.math.gradient_variants (Smooth Grad-CAM++, Finer-CAM, ShapleyCAM, aug_smooth)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refcam.errors import InvalidArgumentError, ShapeError
from refcam.math import (
    aug_smooth, finercam_classes, finercam_score, finercam_seed, gradcampp_weights, gradient_weights,
    shapleycam, shapleycam_weights, smoothgradcampp, smoothgradcampp_weights,
)
from refcam.testing import activations_and_gradients, float_arrays


def close(x, y, tol=1e-12):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


# ------------------------------------------------------------------ Smooth Grad-CAM++

def test_smoothgradcampp_hand():
    # A = [1, 1] (sum 2); samples g = [1, 0] and [3, 0]
    # mean g = [2, 0], mean g^2 = [5, 0], mean g^3 = [14, 0]
    # position: alpha = 5 / (10 + 2*14) = 5/38 ; w = 5/38 * 2 = 10/38
    a = np.array([[[1.0, 1.0]]])
    gs = np.array([[[[1.0, 0.0]], [[3.0, 0.0]]]])
    close(smoothgradcampp_weights(a, gs), [[10 / 38]])
    # channel: denominator 10 + sum(A * g3) = 10 + 14 = 24 -> alpha 5/24; last g = 3 -> w = 15/24
    close(smoothgradcampp_weights(a, gs, denominator="channel", first_order="last"), [[15 / 24]])
    # eps adds to the denominator: 5 / (24 + 1) * 3
    close(smoothgradcampp_weights(a, gs, denominator="channel", first_order="last", eps=1.0), [[15 / 25]])
    # map on other activations
    close(smoothgradcampp(a, gs, map_activations=np.array([[[2.0, -1.0]]])), [[20 / 38, 0.0]])


def test_smoothgradcampp_zero_denominator_guard():
    # g = [1] and [-1]: mean g^2 = 1, mean g^3 = 0; A sum = -2/... choose denominator 2*1 + 0 = 2 (no pole)
    # pole: one sample g = 1, A sum = -2: 2 + (-2)(1) = 0 -> alpha = 0, no NaN
    a = np.array([[[-1.0, -1.0]]])
    gs = np.array([[[[1.0, 1.0]]]])
    close(smoothgradcampp_weights(a, gs), [[0.0]])


@settings(deadline=None)
@given(activations_and_gradients())
def test_one_sample_is_gradcampp(ag):
    a, g = ag
    close(smoothgradcampp_weights(a, g[:, None]), gradcampp_weights(a, g), 1e-9)


@settings(deadline=None)
@given(activations_and_gradients(), st.integers(2, 4))
def test_identical_samples_are_gradcampp(ag, n):
    a, g = ag
    gs = np.repeat(g[:, None], n, axis=1)
    close(smoothgradcampp_weights(a, gs), gradcampp_weights(a, g), 1e-7)


def test_smoothgradcampp_errors():
    a = np.ones((1, 2, 3))
    with pytest.raises(ShapeError):
        smoothgradcampp_weights(a, np.ones((1, 2, 3)))
    with pytest.raises(InvalidArgumentError):
        smoothgradcampp_weights(a, np.ones((1, 2, 2, 3)), first_order="median")


# ------------------------------------------------------------------ Finer-CAM

def test_finercam_classes_hand():
    y = np.array([[5.0, 1.0, 4.5, 3.0, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    main, comp = finercam_classes(y)
    assert main.tolist() == [0, 4] and comp.tolist() == [[2, 3, 1], [3, 2, 1]]
    main, comp = finercam_classes(y, target=[3, 0], comparisons=(1, 2, 9))   # rank 9 dropped
    # row 0: |y - 3| = [2, 2, 1.5, 0, 3]: classes 0 and 1 tie at 2 -> the stable sort keeps 0 first
    assert main.tolist() == [3, 0] and comp.tolist() == [[2, 0], [1, 2]]


def test_finercam_score_hand():
    # y = [0, 0], d = [1]: p = [.5, .5]; S = .5 (0 - 0)/(.5 + eps) = 0; alpha irrelevant
    # y = [2, 0], d = [1], alpha = .5: S = p1 (2 - 0) / (p1 + eps) = 2 (eps = 0)
    close(finercam_score(np.array([[2.0, 0.0]]), [0], [[1]], alpha=0.5, eps=0.0), [2.0])
    # two references with equal logits: S = y_c - alpha y_d
    close(finercam_score(np.array([[3.0, 1.0, 1.0]]), [0], [[1, 2]], alpha=2.0, eps=0.0), [1.0])


@settings(deadline=None)
@given(float_arrays((2, 6), magnitude=4.0), st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_finercam_seed_is_the_gradient_of_the_score(y, alpha):
    main, comp = finercam_classes(y)
    s = finercam_seed(y, main, comp, alpha=alpha)
    h = 1e-6
    fd = np.zeros_like(y)
    for j in range(y.shape[1]):
        e = np.zeros_like(y)
        e[:, j] = h
        fd[:, j] = (finercam_score(y + e, main, comp, alpha=alpha)
                    - finercam_score(y - e, main, comp, alpha=alpha)) / (2 * h)
    close(s, fd, 1e-6)


# ------------------------------------------------------------------ ShapleyCAM

def test_shapleycam_hand():
    # g = [1, 3], HA = [2, 2]: w = mean(g - HA/2) = mean([0, 2]) = 1; L = ReLU(1 * A)
    a = np.array([[[1.0, -2.0]]])
    g = np.array([[[1.0, 3.0]]])
    h = np.array([[[2.0, 2.0]]])
    close(shapleycam_weights(g, h), [[1.0]])
    close(shapleycam(a, g, h), [[1.0, 0.0]])
    close(shapleycam(a, g, h, relu=False), [[1.0, -2.0]])


def test_shapleycam_quadratic_oracle():
    # y = sum_k (b_k . A^k + 0.5 A^k . Q_k A^k): g = b + Q A, HA = Q A -> w = mean(b + Q A / 2)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 2, 3))
    b = rng.standard_normal((2, 3))
    q = rng.standard_normal((2, 3, 3))
    q = q + np.swapaxes(q, 1, 2)
    qa = np.einsum("kij,kj->ki", q, a[0])[None]
    g = b[None] + qa
    close(shapleycam_weights(g, qa), (b + qa[0] / 2).mean(axis=1)[None])


@settings(deadline=None)
@given(activations_and_gradients())
def test_zero_hessian_is_gradcam_weights(ag):
    a, g = ag
    close(shapleycam_weights(g, np.zeros_like(g)), gradient_weights(g), 1e-12)


# ------------------------------------------------------------------ aug_smooth

def test_aug_smooth_hand_and_errors():
    m = np.array([[[1.0, 0.0]], [[0.0, 3.0]]])
    close(aug_smooth(m, [False, True]), [[2.0, 0.0]])
    m2 = np.arange(8.0).reshape(2, 1, 2, 2)
    close(aug_smooth(m2, [True, False], axis=-2), (np.flip(m2[0], axis=-2) + m2[1]) / 2)
    with pytest.raises(ShapeError):
        aug_smooth(m, [True])


@settings(deadline=None)
@given(float_arrays((3, 2, 4, 5)))
def test_aug_smooth_flip_equivariance(m):
    # flipping every input map and every flag flips the result
    flips = [False, True, True]
    close(aug_smooth(np.flip(m, axis=-1), [not f for f in flips]), aug_smooth(m, flips), 1e-12)


# ------------------------------------------------------------------ RefineCAM

def test_refinecam_hand_and_guards():
    from refcam.math import refinecam

    # [2, 1, -1] -> ReLU/max [1, .5, 0]; [1, 4, 4] -> [.25, 1, 1]; product [.25, .5, 0]
    close(refinecam([np.array([[2.0, 1.0, -1.0]]), np.array([[1.0, 4.0, 4.0]])]), [[0.25, 0.5, 0.0]])
    # an all-negative layer is all zero after ReLU: the product is 0 (no NaN)
    close(refinecam([np.array([[-1.0, -2.0]]), np.array([[1.0, 2.0]])]), [[0.0, 0.0]])
    # as given: plain product
    close(refinecam([np.array([[2.0, -1.0]]), np.array([[3.0, 3.0]])], layer_normalize=False), [[6.0, -3.0]])
    with pytest.raises(ShapeError):
        refinecam([np.ones((1, 2)), np.ones((1, 3))])


@settings(deadline=None)
@given(float_arrays((2, 3, 4)), float_arrays((2, 3, 4)), st.sampled_from([0.5, 2.0, 4.0]))
def test_refinecam_scale_invariant_per_layer_and_bounded(m1, m2, c):
    from refcam.math import refinecam

    r = refinecam([m1, m2])
    assert ((r >= 0) & (r <= 1)).all()
    close(refinecam([c * m1, m2]), r)                 # each layer normalised by its own max
    close(refinecam([m2, m1]), r)                     # order of layers irrelevant
