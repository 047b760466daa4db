"""Oracle tests of refcam.math.scale_and_slide (SESS geometry and fusion)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refcam.errors import InvalidArgumentError, ShapeError
from refcam.math import gaussian_blur, sess_fuse, sess_scales, window_starts
from refcam.testing import float_arrays


def close(x, y, tol=1e-12):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


def test_scales_and_windows_hand():
    assert sess_scales(40, 4) == [40, 51, 62, 73]                  # round(40 * 2/7) = round(11.43) = 11
    assert sess_scales(7, 3, 0.5) == [7, 11, 15]                    # round(3.5) = 4 (half to even)
    assert window_starts(56, 40, 40) == [0, 16]
    assert window_starts(40, 40, 40) == [0]
    assert window_starts(10, 3, 4) == [0, 3, 6]                     # 6 + 4 = 10 >= 10: last, unshifted
    assert window_starts(3, 2, 5) == [0]                            # window longer than the axis


def test_sess_fuse_hand_mean_max_theta():
    # canvas 1x2 (no resize): patch A = [1] at x=0 (w 1), patch B = [0.4] at x=1, and C = [0.8] at x=0
    cams = np.array([[[1.0]], [[0.4]], [[0.8]]])
    boxes = [(0, 0, 2, 1), (1, 0, 2, 1), (0, 0, 2, 1)]
    w = [1.0, 1.0, 0.5]                                              # C pasted as 0.4
    close(sess_fuse(cams, w, boxes, (1, 2)), [[(1.0 + 0.4) / 2, 0.4]])
    close(sess_fuse(cams, w, boxes, (1, 2), pool="max"), [[1.0, 0.4]])
    close(sess_fuse(cams, w, boxes, (1, 2), theta=0.5), [[1.0, 0.0]])   # only values > 0.5 count
    # a canvas twice the image: bilinear half-pixel downsampling averages pairs
    close(sess_fuse(np.array([[[1.0, 3.0]]]), [1.0], [(0, 0, 2, 1)], (1, 1)), [[2.0]])


def test_gaussian_blur_hand_and_constant():
    m = np.zeros((1, 1, 5))
    m[0, 0, 2] = 1.0
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / 2)
    g /= g.sum()
    close(gaussian_blur(m, 3, 1.0)[0, 0], [0, g[0], g[1], g[2], 0])
    close(gaussian_blur(np.full((2, 4, 6), 3.0)), np.full((2, 4, 6), 3.0))          # mass preserved
    # reflect-101 at the border: [a b c] -> ... b | a b c | b ...
    e = np.zeros((1, 1, 3))
    e[0, 0, 0] = 1.0
    close(gaussian_blur(e, 3, 1.0)[0, 0, 0], g[1])
    e = np.zeros((1, 1, 3))
    e[0, 0, 1] = 1.0                                                        # b: reaches a from both sides
    close(gaussian_blur(e, 3, 1.0)[0, 0, 0], 2 * g[0])


def test_errors():
    with pytest.raises(InvalidArgumentError):
        gaussian_blur(np.ones((2, 2)), 4)
    with pytest.raises(InvalidArgumentError):
        gaussian_blur(np.ones((2, 2)), 3, 0.0)
    with pytest.raises(ShapeError):
        sess_fuse(np.ones((2, 1, 1)), [1.0], [(0, 0, 1, 1)], (1, 1))
    with pytest.raises(InvalidArgumentError):
        sess_fuse(np.ones((1, 2, 2)), [1.0], [(1, 0, 2, 2)], (2, 2))          # window outside


@settings(deadline=None)
@given(float_arrays((3, 4, 5), nonnegative=True, magnitude=1.0), st.sampled_from(["mean", "max"]))
def test_fuse_of_full_windows_is_a_pooling(cams, pool):
    # every window covers the whole image at scale 1: mean/max of the weighted maps (theta below all)
    boxes = [(0, 0, 5, 4)] * 3
    fused = sess_fuse(cams, [1.0, 1.0, 1.0], boxes, (4, 5), pool=pool, theta=-1.0)
    close(fused, cams.mean(axis=0) if pool == "mean" else np.maximum(cams.max(axis=0), 0), 1e-12)


@settings(deadline=None)
@given(float_arrays((2, 6, 7)))
def test_blur_is_linear_and_preserves_the_mean_of_symmetric_extensions(m):
    close(gaussian_blur(2 * m), 2 * gaussian_blur(m), 1e-9)
    assert gaussian_blur(m).min() >= m.min() - 1e-9 and gaussian_blur(m).max() <= m.max() + 1e-9
