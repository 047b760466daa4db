"""Oracle tests of refcam.math.forward_maps (FEM, RandomCAM)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refcam.errors import InvalidArgumentError, ShapeError
from refcam.math import fem, fem_weights, random_weights, randomcam
from refcam.testing import activations


def close(x, y, tol=1e-12):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol, equal_nan=False)  # NaN never passes


# ------------------------------------------------------------------ hand-computed cases

def test_fem_hand():
    # channel 0 = [0, 0, 0, 4]: mu = 1, sigma^2 = (3*1 + 9)/4 = 3, sigma = 1.732
    #   k = 1: tau = 2.732 -> one position (4) above: w0 = 1/4
    #   k = 2: tau = 4.464 -> none: w0 = 0
    # channel 1 = [1, 2, 3, 4]: mu = 2.5, sigma^2 = (2.25 + .25 + .25 + 2.25)/4 = 1.25, sigma = 1.118
    #   k = 1: tau = 3.618 -> one position (4): w1 = 1/4
    #   k = 0: tau = 2.5 -> two positions: w1 = 1/2 (channel 0: tau = 1 -> 1/4)
    a = np.array([[[0.0, 0.0, 0.0, 4.0], [1.0, 2.0, 3.0, 4.0]]])
    close(fem_weights(a, k=1.0), [[0.25, 0.25]])
    close(fem_weights(a, k=2.0), [[0.0, 0.0]])
    close(fem_weights(a, k=0.0), [[0.25, 0.5]])
    # map with k = 1: 0.25 * A^0 + 0.25 * A^1 = [0.25, 0.5, 0.75, 2]
    close(fem(a, k=1.0), [[0.25, 0.5, 0.75, 2.0]])


def test_fem_threshold_is_strict():
    # channel [0, 2]: mu = 1, sigma = 1; k = 1: tau = 2, and 2 > 2 is false
    a = np.array([[[0.0, 2.0]]])
    close(fem_weights(a, k=1.0), [[0.0]])
    close(fem_weights(a, k=0.5), [[0.5]])


def test_fem_relu_and_3d():
    # negative activations, k = 0: [-4, 0] -> mu -2: w = 1/2; map -2, 0 -> ReLU 0, 0
    a = np.array([[[[-4.0]], [[0.0]]]]).reshape(1, 1, 2, 1, 1)
    close(fem(a, k=0.0, relu=False), np.array([[-2.0, 0.0]]).reshape(1, 2, 1, 1))
    close(fem(a, k=0.0), np.zeros((1, 2, 1, 1)))


def test_randomcam_hand_and_seed():
    a = np.array([[[1.0, 2.0], [3.0, 0.0]]])
    close(randomcam(a, np.array([[0.5, -1.0]]), relu=False), [[-2.5, 1.0]])
    w = random_weights(1, 2, seed=7)
    close(randomcam(a, seed=7, relu=False), (w[0, 0] * a[0, 0] + w[0, 1] * a[0, 1])[None])
    assert not np.array_equal(random_weights(3, 5, seed=1), random_weights(3, 5, seed=2))


def test_random_weights_distribution():
    # U[-1, 1): mean 0, variance 1/3; 200000 draws -> standard errors 1.3e-3 and 6e-4
    w = random_weights(400, 500, seed=0)
    assert abs(w.mean()) < 6 * np.sqrt(1 / 3 / w.size)
    assert abs(w.var() - 1 / 3) < 6 * np.sqrt(4 / 45 / w.size)
    assert w.min() >= -1 and w.max() < 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_kept(dtype):
    a = np.arange(8, dtype=dtype).reshape(1, 2, 4)
    assert fem(a).dtype == dtype and fem_weights(a).dtype == dtype
    assert randomcam(a).dtype == dtype


def test_errors():
    a = np.ones((1, 2, 3))
    with pytest.raises(InvalidArgumentError):
        fem(a, k=np.nan)
    with pytest.raises(InvalidArgumentError):
        fem(a, k=True)
    with pytest.raises(ShapeError):
        randomcam(a, np.ones((1, 3)))


# ------------------------------------------------------------------ properties

@settings(deadline=None)
@given(activations(), st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]))
def test_fem_weights_are_fractions_and_map_is_sum(a, k):
    w = fem_weights(a, k=k)
    z = int(np.prod(a.shape[2:]))
    assert ((w >= 0) & (w <= 1)).all()
    close(w * z, np.round(w * z))                               # counts of positions
    close(fem(a, k=k, relu=False), np.einsum("nk,nk...->n...", w, a), 1e-9)


@settings(deadline=None)
@given(activations(), st.sampled_from([0.25, 0.5, 2.0, 4.0]))
def test_fem_positive_scale_power_of_two(a, c):
    # mean, std and the threshold scale exactly by a power of two: same weights, map scaled
    close(fem_weights(c * a), fem_weights(a))
    close(fem(c * a, relu=False), c * fem(a, relu=False))


@settings(deadline=None)
@given(activations(channels=(2, 4)), st.data())
def test_fem_channel_permutation(a, data):
    perm = np.array(data.draw(st.permutations(range(a.shape[1]))))
    close(fem_weights(a[:, perm]), fem_weights(a)[:, perm])


@settings(deadline=None)
@given(activations())
def test_randomcam_linear_in_weights(a):
    w = random_weights(*a.shape[:2], seed=3)
    close(randomcam(a, 2 * w, relu=False), 2 * randomcam(a, w, relu=False), 1e-9)
    close(randomcam(a, -w, relu=False), -randomcam(a, w, relu=False), 1e-9)
