"""Oracle tests of refcam.math.blocks: gap, weighted_sum, gradient_weights."""

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from refcam.errors import DTypeError, NonFiniteError, ShapeError
from refcam.math import gap, gradient_weights, weighted_sum

# A: one sample, two channels, 2x2 spatial
#   A^0 = [[1, 2], [3, 4]]   A^1 = [[0, 0], [0, 8]]
A = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]]])


def test_gap_hand():
    # (1+2+3+4)/4 = 2.5 ; (0+0+0+8)/4 = 2
    np.testing.assert_array_equal(gap(A), [[2.5, 2.0]])


def test_gap_3d_volume():
    # (1, 1, 2, 2, 2) holding 0..7: mean 3.5 over Z = 8 positions
    a = np.arange(8.0).reshape(1, 1, 2, 2, 2)
    np.testing.assert_array_equal(gap(a), [[3.5]])


def test_gap_1d_spatial():
    # (1, 2, 3): [1, 2, 6] -> 3 ; [0, 0, 3] -> 1
    np.testing.assert_array_equal(gap([[[1, 2, 6], [0, 0, 3]]]), [[3.0, 1.0]])


def test_weighted_sum_channel_weights_hand():
    # 2*A^0 - 1*A^1 = [[2, 4], [6, 8-8]]
    out = weighted_sum(A, np.array([[2.0, -1.0]]))
    np.testing.assert_array_equal(out, [[[2.0, 4.0], [6.0, 0.0]]])


def test_weighted_sum_pixelwise_weights_hand():
    # w^0 = [[1, 0], [0, 1]], w^1 = [[5, 5], [5, 0.5]]
    # M = [[1*1 + 5*0, 0*2 + 5*0], [0*3 + 5*0, 1*4 + 0.5*8]] = [[1, 0], [0, 8]]
    w = np.array([[[[1.0, 0.0], [0.0, 1.0]], [[5.0, 5.0], [5.0, 0.5]]]])
    np.testing.assert_array_equal(weighted_sum(A, w), [[[1.0, 0.0], [0.0, 8.0]]])


def test_weighted_sum_3d_hand():
    # (1, 2, 2, 1, 2): A^0 = 1..4, A^1 = all 1; w = [1, 10] -> A^0 + 10
    a = np.stack([np.arange(1.0, 5.0).reshape(2, 1, 2), np.ones((2, 1, 2))])[None]
    out = weighted_sum(a, [[1.0, 10.0]])
    np.testing.assert_array_equal(out, [[[[11.0, 12.0]], [[13.0, 14.0]]]])


def test_gradient_weights_hand():
    # G^0 = [[1, -1], [2, 2]] -> 4/4 = 1 ; G^1 = [[0, 0], [0, -2]] -> -0.5
    g = np.array([[[[1.0, -1.0], [2.0, 2.0]], [[0.0, 0.0], [0.0, -2.0]]]])
    np.testing.assert_array_equal(gradient_weights(g), [[1.0, -0.5]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype):
    a = A.astype(dtype)
    assert gap(a).dtype == dtype
    assert gradient_weights(a).dtype == dtype
    assert weighted_sum(a, np.ones((1, 2), dtype)).dtype == dtype
    assert weighted_sum(a, np.ones(a.shape, dtype)).dtype == dtype


def test_mixed_and_integer_dtypes():
    assert weighted_sum(A.astype(np.float32), np.ones((1, 2))).dtype == np.float64
    assert gap(A.astype(np.int64)).dtype == np.float64


def test_large_channel_count_matches_explicit_sum():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 2048, 7, 7))
    w = rng.standard_normal((2, 2048))
    expected = (a * w[:, :, None, None]).sum(axis=1)
    np.testing.assert_allclose(weighted_sum(a, w), expected, rtol=1e-10, atol=1e-10)
    a32, w32 = a.astype(np.float32), w.astype(np.float32)
    np.testing.assert_allclose(weighted_sum(a32, w32), expected, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------ error paths

def test_wrong_rank_names_argument():
    with pytest.raises(ShapeError, match="activations: got shape \\(2, 3\\)"):
        gap(np.ones((2, 3)))
    with pytest.raises(ShapeError, match="gradients"):
        gradient_weights(np.ones(4))


def test_weights_of_wrong_shape():
    with pytest.raises(ShapeError, match="weights: got shape \\(1, 3\\)") as info:
        weighted_sum(A, np.ones((1, 3)))
    assert "(1, 2)" in str(info.value)
    with pytest.raises(ShapeError, match="weights"):
        weighted_sum(A, np.ones((1, 2, 2)))


def test_nan_and_complex_refused():
    bad = A.copy()
    bad[0, 1, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="activations: got 1 non-finite"):
        gap(bad)
    with pytest.raises(NonFiniteError, match="weights"):
        weighted_sum(A, [[np.inf, 1.0]])
    with pytest.raises(DTypeError, match="activations"):
        gap(A.astype(complex))


def test_empty_axis_refused():
    with pytest.raises(ShapeError, match="activations"):
        gap(np.ones((1, 0, 2, 2)))


# ------------------------------------------------------------------ properties

finite = st.floats(-10, 10, allow_nan=False, width=64)


@st.composite
def maps_and_weights(draw, pixelwise=False):
    n = draw(st.integers(1, 3))
    k = draw(st.integers(1, 5))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    a = draw(hnp.arrays(np.float64, (n, k) + spatial, elements=finite))
    w = draw(hnp.arrays(np.float64, (n, k) + (spatial if pixelwise else ()), elements=finite))
    return a, w


@given(maps_and_weights(), st.booleans())
def test_weighted_sum_matches_definition_and_is_permutation_equivariant(aw, pixelwise):
    a, w = aw
    if pixelwise:
        w = np.broadcast_to(w.reshape(w.shape + (1,) * (a.ndim - 2)), a.shape).copy()
    wb = w if w.ndim == a.ndim else w.reshape(w.shape + (1,) * (a.ndim - 2))
    expected = sum(wb[:, k] * a[:, k] for k in range(a.shape[1]))
    out = weighted_sum(a, w)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-9)
    perm = np.random.default_rng(a.shape[1]).permutation(a.shape[1])
    np.testing.assert_allclose(weighted_sum(a[:, perm], w[:, perm]), out, rtol=1e-10, atol=1e-9)


@given(maps_and_weights())
def test_batch_independence_and_gap_linearity(aw):
    a, w = aw
    each = np.concatenate([weighted_sum(a[i:i + 1], w[i:i + 1]) for i in range(a.shape[0])])
    np.testing.assert_allclose(weighted_sum(a, w), each, rtol=1e-12, atol=1e-12)
    # GAP of the weighted sum == weighted sum of the GAPs (both linear)
    sp = tuple(range(1, a.ndim - 1))
    np.testing.assert_allclose(weighted_sum(a, w).mean(axis=sp), (gap(a) * w).sum(axis=1),
                               rtol=1e-9, atol=1e-9)
    assert np.array_equal(gradient_weights(a), gap(a))
