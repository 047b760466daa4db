"""Oracle tests of refcam.math.factorization (NMF, Deep Feature Factorization)."""

import numpy as np
import pytest
from hypothesis import given, settings

from refcam.errors import InvalidArgumentError, ShapeError
from refcam.math import dff, nmf
from refcam.testing import activations, float_arrays


def close(x, y, tol=1e-12):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol, equal_nan=False)  # NaN never passes


def test_nmf_one_by_one_hand():
    # x = [[4]], r = 1: s = sqrt(4 / 1) = 2; RandomState(0) draws H first: xi_H = 1.764052345967664,
    # then W: xi_W = 0.4001572083672233.  The first W update solves W H = 4 exactly: W = 4 / H;
    # the H update then has zero gradient, and iteration 2 has violation 0 <= tol * v0: stop.
    w, h, it = nmf(np.array([[4.0]]), 1)
    h0 = 2 * 1.764052345967664
    close(h, [[h0]])
    close(w, [[4.0 / h0]])
    assert it == 2


def test_nmf_rank_one_recovered():
    x = np.outer([1.0, 2.0, 0.5], [3.0, 0.0, 1.0, 2.0])
    w, h, _ = nmf(x, 1, max_iter=500, tol=0.0)
    close(w @ h, x, 1e-10)


def test_dff_offset_and_layout_hand():
    # A (N=2, K=1, Z=2) = [[-1, 1]], [[3, -1]]: offset min = -1; shifted row [0, 2, 4, 0]
    # r = 1 factorises a rank-one row exactly: concept c, maps m with (c - offset) m = shifted
    a = np.array([[[-1.0, 1.0]], [[3.0, -1.0]]])
    c, m = dff(a, 1, max_iter=500, tol=0.0)
    assert c.shape == (1, 1) and m.shape == (2, 1, 2)
    close((c[0, 0] + 1.0) * m[:, 0], [[0.0, 2.0], [4.0, 0.0]], 1e-10)


def test_errors():
    with pytest.raises(InvalidArgumentError):
        nmf(-np.ones((2, 2)), 1)
    with pytest.raises(ShapeError):
        nmf(np.ones(3), 1)
    with pytest.raises(InvalidArgumentError):
        nmf(np.ones((2, 2)), 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_kept(dtype):
    a = np.random.default_rng(0).random((2, 4, 3, 3)).astype(dtype)
    c, m = dff(a, 2)
    assert c.dtype == dtype and m.dtype == dtype


@settings(deadline=None, max_examples=50)
@given(float_arrays((4, 6), nonnegative=True, magnitude=10.0))
def test_nmf_nonnegative_deterministic_and_descends(x):
    w, h, _ = nmf(x, 2)
    assert (w >= 0).all() and (h >= 0).all()
    w2, h2, _ = nmf(x, 2)
    assert np.array_equal(w, w2) and np.array_equal(h, h2)
    # the objective never exceeds that of the initialisation (each coordinate step minimises it)
    w0, h0, _ = nmf(x, 2, max_iter=1)     # one iteration
    rng = np.random.RandomState(0)
    s = np.sqrt(x.mean() / 2)
    hi = np.abs(s * rng.standard_normal((2, 6)))
    wi = np.abs(s * rng.standard_normal((4, 2)))
    f = lambda a, b: float(np.sum((x - a @ b) ** 2))  # noqa: E731
    scale = 1e-9 * (1 + float(np.sum(x ** 2)))
    assert f(w0, h0) <= f(wi, hi) + scale
    assert f(w, h) <= f(w0, h0) + scale


@settings(deadline=None, max_examples=50)
@given(activations(max_positions=20))
def test_dff_shapes_and_nonnegative_maps(a):
    c, m = dff(a, 2)
    assert c.shape == (a.shape[1], 2) and m.shape == (a.shape[0], 2) + a.shape[2:]
    assert (m >= 0).all()
    assert (c >= a.min(axis=tuple(i for i in range(a.ndim) if i != 1))[:, None] - 1e-12).all()
