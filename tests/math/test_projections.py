"""Oracle tests of refcam.math.projections (KPCA-CAM, Seg-Eigen-CAM, eigen_smooth)."""

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from refcam.errors import InvalidArgumentError, ShapeError
from refcam.math import eigen_smooth, eigencam, kernel_matrix, kpcacam, segeigencam
from refcam.testing import activations, activations_and_gradients


def close(x, y, tol=1e-12):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol, equal_nan=False)  # NaN never passes


def close_up_to_sign(x, y, tol):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    for xi, yi in zip(x, y):           # per sample
        assert min(np.abs(xi - yi).max(), np.abs(xi + yi).max()) <= tol * max(1.0, np.abs(yi).max())


# ------------------------------------------------------------------ hand-computed cases

def test_kernel_matrix_hand():
    x = np.array([[1.0, 0.0], [1.0, 1.0]])          # <x0,x1> = 1, |x0|^2 = 1, |x1|^2 = 2
    close(kernel_matrix(x, kernel="linear"), [[1, 1], [1, 2]])
    # poly, gamma = 1/2 (default 1/K), degree 3, coef0 1: (0.5 dot + 1)^3
    close(kernel_matrix(x, kernel="poly"), [[1.5 ** 3, 1.5 ** 3], [1.5 ** 3, 8.0]])
    close(kernel_matrix(x, kernel="sigmoid", gamma=1.0, coef0=0.0), np.tanh([[1, 1], [1, 2]]))
    close(kernel_matrix(x, kernel="rbf", gamma=2.0), [[1, np.exp(-2)], [np.exp(-2), 1]])
    close(kernel_matrix(x, kernel="cosine"), [[1, 1 / np.sqrt(2)], [1 / np.sqrt(2), 1]])
    close(kernel_matrix(np.zeros((2, 2)), kernel="cosine"), np.zeros((2, 2)))   # zero rows: 0


def test_kpcacam_two_positions_rbf():
    # O = [[0], [1]] (K = 1) -> centred [-.5, .5], d^2 = 1, gamma = 1/K = 1: K = [[1, e], [e, 1]]
    # double centring: (1 - e)/2 [[1, -1], [-1, 1]]: lambda1 = 1 - e, v1 = [1, -1]/sqrt 2
    # score sqrt(lambda1) v1 = sqrt((1 - e)/2) [1, -1]; |.| tie -> first element positive
    e = np.exp(-1.0)
    a = np.array([[[0.0, 1.0]]])
    s = np.sqrt((1 - e) / 2)
    close(kpcacam(a, kernel="rbf"), [[s, -s]])
    close(kpcacam(a, kernel="rbf", relu=True), [[s, 0.0]])


def test_kpcacam_linear_kernel_is_centred_pca_hand():
    # O = [[3, 4], [0, 0]] centred -> [[1.5, 2], [-1.5, -2]]: PCA score +-[2.5, -2.5]
    a = np.array([[[[3.0, 0.0]], [[4.0, 0.0]]]])
    close(kpcacam(a, kernel="linear"), [[[2.5, -2.5]]])


def test_kpcacam_constant_sample_is_zero():
    a = np.ones((1, 3, 2, 2))
    close(kpcacam(a), np.zeros((1, 2, 2)))


def test_segeigencam_sign_correction_hand():
    # K = 1, |G| A = [-3, 1, 1, 1] -> centred [-3, 1, 1, 1] (mean 0): projection +-[-3, 1, 1, 1]
    # Eq. 13: |min| must not exceed |max| -> [3, -1, -1, -1]; ReLU -> [3, 0, 0, 0]
    a = np.array([[[-3.0, 1.0, 1.0, 1.0]]])
    g = np.array([[[2.0, -2.0, 2.0, -2.0]]]) / 2
    close(segeigencam(a, g, relu=False), [[3.0, -1.0, -1.0, -1.0]])
    close(segeigencam(a, g), [[3.0, 0.0, 0.0, 0.0]])


def test_eigen_smooth_hand_pixel_weights():
    # per-position weights: w A = [[2, 0], [0, 0]] over (channel, position) -> O^w = [[2, 0], [0, 0]]
    # centred [[1, 0], [-1, 0]]: first component along channel 0: [1, -1]
    a = np.array([[[1.0, 5.0], [3.0, 0.0]]])
    w = np.array([[[2.0, 0.0], [0.0, 7.0]]])
    close(eigen_smooth(a, w), [[1.0, -1.0]])


def test_errors():
    a = np.ones((1, 2, 3))
    with pytest.raises(InvalidArgumentError):
        kpcacam(a, kernel="laplacian")
    with pytest.raises(InvalidArgumentError):
        kpcacam(a, gamma=-1.0)
    with pytest.raises(ShapeError):
        eigen_smooth(a, np.ones((1, 3)))
    with pytest.raises(InvalidArgumentError):
        segeigencam(a, a, sign="random")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes(dtype):
    a = np.random.default_rng(0).random((2, 3, 4, 5)).astype(dtype)
    assert kpcacam(a).dtype == dtype
    assert segeigencam(a, a).dtype == dtype
    assert eigen_smooth(a, np.ones((2, 3), dtype)).dtype == dtype


# ------------------------------------------------------------------ properties

def _gap(a):
    n, k = a.shape[:2]
    o = np.swapaxes(a.reshape(n, k, -1), 1, 2)
    o = o - o.mean(axis=1, keepdims=True)
    s = np.linalg.svd(o, compute_uv=False)
    s = np.concatenate([s, np.zeros((n, 2))], axis=1)
    return s[:, 0], s[:, 1]


@settings(deadline=None)
@given(activations(max_positions=40))
def test_kpcacam_linear_equals_centred_eigencam(a):
    s1, s2 = _gap(a)
    assume(((s1 - s2) > 1e-3 * (s1 + 1)).all())    # a unique top direction
    close_up_to_sign(kpcacam(a, kernel="linear"), eigencam(a, center=True, sign="none"), 1e-7)


@settings(deadline=None)
@given(activations(channels=(2, 4), max_positions=40), st.sampled_from(["sigmoid", "rbf", "poly", "cosine"]),
       st.data())
def test_kpcacam_channel_permutation_invariant(a, kernel, data):
    perm = np.array(data.draw(st.permutations(range(a.shape[1]))))
    # the eigenvector is only defined for a simple top eigenvalue: compare where it is
    n, k = a.shape[:2]
    o = np.swapaxes(a.reshape(n, k, -1), 1, 2)
    o = o - o.mean(axis=1, keepdims=True)
    g = kernel_matrix(o, kernel=kernel)
    g = g - g.mean(axis=1, keepdims=True)
    g = g - g.mean(axis=2, keepdims=True)
    lam = np.linalg.eigvalsh(g)
    lam = np.concatenate([np.zeros((n, 1)), lam], axis=1)
    assume(((lam[:, -1] - lam[:, -2]) > 1e-4 * (np.abs(lam[:, -1]) + 1)).all())
    close_up_to_sign(kpcacam(a[:, perm], kernel=kernel), kpcacam(a, kernel=kernel), 1e-6)


@settings(deadline=None)
@given(activations_and_gradients())
def test_segeigencam_positive_side_dominates(ag):
    a, g = ag
    m = segeigencam(a, g, relu=False)
    flat = m.reshape(len(m), -1).astype(np.float64)
    assert (flat.max(axis=1) >= -flat.min(axis=1) - 1e-6 * np.abs(flat).max(axis=1)).all()
    close(segeigencam(a, g), np.maximum(m, 0))
    close(segeigencam(a, -g), segeigencam(a, g))     # |G|: the sign of the gradient is irrelevant


@settings(deadline=None)
@given(activations(), st.data())
def test_eigen_smooth_is_eigencam_of_weighted_maps(a, data):
    w = data.draw(st.lists(st.sampled_from([-2.0, -0.5, 0.5, 1.0, 3.0]), min_size=a.size // int(np.prod(a.shape[2:])),
                           max_size=a.size // int(np.prod(a.shape[2:]))))
    w = np.asarray(w, a.dtype).reshape(a.shape[:2])
    close(eigen_smooth(a, w), eigencam(w[:, :, *([None] * (a.ndim - 2))] * a, center=True, sign="max-abs"))
