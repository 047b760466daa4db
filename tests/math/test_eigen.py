"""Oracle tests of refcam.math.eigen (Eigen-CAM, Eigen-Grad-CAM).

Layout reminder: per sample the activations become O (Z x K), one row per position; the map is
O v1 = sigma1 u1 reshaped to the spatial grid, with refcam's deterministic sign rule.
"""

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st
from hypothesis.extra import numpy as hnp

from refcam.errors import InvalidArgumentError, NonFiniteError, ShapeError
from refcam.math import eigencam, eigengradcam


def close(x, y, rtol=1e-12, atol=1e-12):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, equal_nan=False)  # NaN never passes


# ------------------------------------------------------------------ hand-computed cases

def test_rank_one_hand():
    # A (1, 2, 1, 2): A^0 = [3, 0], A^1 = [4, 0] -> O = [[3, 4], [0, 0]]
    # O^T O = [[9, 12], [12, 16]] -> sigma1 = 5, v1 = [0.6, 0.8], O v1 = [5, 0]
    a = np.array([[[[3.0, 0.0]], [[4.0, 0.0]]]])
    close(eigencam(a), [[[5.0, 0.0]]])
    # negated activations: O v1 = -[5, 0] for either sign of v1 up to the rule -> [5, 0]
    close(eigencam(-a), [[[5.0, 0.0]]])
    close(eigencam(-a, sign="max-abs"), [[[5.0, 0.0]]])


def test_rank_two_picks_largest_singular_value():
    # A (1, 2, 3): A^0 = [2, 0, 0], A^1 = [0, 1, 0] -> O = [[2, 0], [0, 1], [0, 0]]
    # singular values 2 > 1, v1 = [1, 0] -> O v1 = [2, 0, 0]
    a = np.array([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    close(eigencam(a), [[2.0, 0.0, 0.0]])


def test_single_channel_uncentred_and_centred():
    # K = 1, O = [[1], [2], [3]]: v1 = [1] -> projection [1, 2, 3] (sum > 0)
    a = np.array([[[1.0, 2.0, 3.0]]])
    close(eigencam(a), [[1.0, 2.0, 3.0]])
    # centred: O - mean = [-1, 0, 1] -> +/-[-1, 0, 1]; the sum is 0 (always, after centring),
    # so the max-abs rule applies; |-1| == |1| is an exact tie -> first position made positive
    close(eigencam(a, center=True), [[1.0, 0.0, -1.0]])
    # no tie: O = [0, 0, 3] -> centred [-1, -1, 2]; the largest |value| (2) is made positive
    close(eigencam(np.array([[[0.0, 0.0, 3.0]]]), center=True), [[-1.0, -1.0, 2.0]])
    close(eigencam(np.array([[[0.0, 0.0, 3.0]]]), center=True, relu=True), [[0.0, 0.0, 2.0]])


def test_sum_rule_differs_from_max_abs_rule():
    # K = 1, O = [[-3], [1], [1], [2]]: projection is +/- O; sum(O) = 1 > 0 keeps O as is,
    # while max-abs makes -3 positive: [3, -1, -1, -2]
    a = np.array([[[-3.0, 1.0, 1.0, 2.0]]])
    close(eigencam(a), [[-3.0, 1.0, 1.0, 2.0]])
    close(eigencam(a, sign="max-abs"), [[3.0, -1.0, -1.0, -2.0]])
    close(np.abs(eigencam(a, sign="none")), [[3.0, 1.0, 1.0, 2.0]])


def test_eigengradcam_hand():
    # A * G: channel 0 = [3*1, 1*0] = [3, 0], channel 1 = [2*2, 5*0] = [4, 0] -> [5, 0]
    a = np.array([[[[3.0, 1.0]], [[2.0, 5.0]]]])
    g = np.array([[[[1.0, 0.0]], [[2.0, 0.0]]]])
    close(eigengradcam(a, g), [[[5.0, 0.0]]])
    close(eigengradcam(a, g, center=True), eigencam(a * g, center=True))


def test_3d_volume_hand():
    # (1, 2, 2, 1, 2): channel 0 = 3*u, channel 1 = 4*u with u = [[1, 0]], [[0, 2]]] (D=2,H=1,W=2)
    # O = u_flat [3, 4]: rank one, O v1 = u_flat * 5 = [5, 0, 0, 10]
    u = np.array([[[1.0, 0.0]], [[0.0, 2.0]]])
    a = np.stack([3 * u, 4 * u])[None]
    close(eigencam(a), (5 * u)[None])
    # Eigen-Grad-CAM on the same volume: gradients 2 everywhere -> O doubles -> 10 u
    close(eigengradcam(a, np.full_like(a, 2.0)), (10 * u)[None])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_kept(dtype):
    a = np.array([[[[3.0, 0.0]], [[4.0, 0.0]]]], dtype)
    out = eigencam(a)
    assert out.dtype == dtype
    close(out, [[[5.0, 0.0]]], rtol=1e-6, atol=1e-6)
    assert eigengradcam(a, a).dtype == dtype
    assert eigengradcam(a, a.astype(np.float64)).dtype == np.float64


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_and_constant_activations_give_zero_map(center, dtype):
    z = np.zeros((2, 3, 4, 4), dtype)
    out = eigencam(z, center=center)
    assert out.dtype == dtype and np.array_equal(out, np.zeros((2, 4, 4), dtype))
    assert np.array_equal(eigengradcam(z, z, center=center), np.zeros((2, 4, 4), dtype))
    c = np.full((1, 3, 4, 4), 2.5, dtype)
    out = eigencam(c, center=center)
    assert np.isfinite(out).all()
    if center:  # exactly zero, even though 2.5 * 16 / 16 style means may round
        assert np.array_equal(out, np.zeros((1, 4, 4), dtype))
        third = np.full((1, 3, 5, 7), 0.1, dtype)
        assert np.array_equal(eigencam(third, center=True), np.zeros((1, 5, 7), dtype))
    else:  # rank one: O = 2.5 * ones(16, 3) -> O v1 = 2.5 * sqrt(3) everywhere
        close(out, np.full((1, 4, 4), 2.5 * np.sqrt(3)), rtol=1e-5)


# ------------------------------------------------------------------ error paths

def test_errors_name_the_argument():
    with pytest.raises(ShapeError, match="activations: got shape \\(3, 4\\)"):
        eigencam(np.ones((3, 4)))
    with pytest.raises(ShapeError, match="gradients"):
        eigengradcam(np.ones((1, 2, 3)), np.ones((1, 2, 4)))
    with pytest.raises(NonFiniteError, match="activations"):
        eigencam(np.array([[[np.nan, 1.0]]]))
    with pytest.raises(NonFiniteError, match="gradients"):
        eigengradcam(np.ones((1, 1, 2)), np.array([[[np.inf, 1.0]]]))
    with pytest.raises(InvalidArgumentError, match="sign: got 'positive'"):
        eigencam(np.ones((1, 1, 2)), sign="positive")


# ------------------------------------------------------------------ properties

# no subnormals, and no values so small that their products would be (safe under any seed)
finite = st.floats(-5, 5, allow_nan=False, width=64, allow_subnormal=False).map(
    lambda v: 0.0 if abs(v) < 1e-60 else v)


@st.composite
def activations(draw, elements=finite):
    n = draw(st.integers(1, 3))
    k = draw(st.integers(1, 5))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    return draw(hnp.arrays(np.float64, (n, k) + spatial, elements=elements))


def _pgc_projection(a, center):
    """Independent per-sample oracle: pytorch-grad-cam's get_2d_projection loop (sign unfixed)."""
    out = []
    for act in a:
        o = act.reshape(act.shape[0], -1).T
        if center:
            o = o - o.mean(axis=0)
        _, _, vt = np.linalg.svd(o, full_matrices=True)
        out.append((o @ vt[0]).reshape(act.shape[1:]))
    return np.stack(out)


@given(activations(), st.booleans())
def test_matches_loop_oracle_up_to_sign(a, center):
    out = eigencam(a, center=center)
    ref = _pgc_projection(a, center)
    close(np.abs(out), np.abs(ref), rtol=1e-7, atol=1e-7)


@given(activations(elements=finite.map(abs)))
def test_nonnegative_activations_give_nonnegative_map(a):
    # Perron-Frobenius: v1 >= 0 for O >= 0, so with the sum rule every value is >= 0 -- when v1 is
    # unique.  With tied top singular values (e.g. O = [[1, 0], [0, 1]]) any unit vector of the
    # tied subspace is a first singular vector, [1, -1]/sqrt(2) included: no sign theorem there.
    for act in a:
        sv = np.linalg.svd(act.reshape(act.shape[0], -1).T, compute_uv=False)
        assume(len(sv) < 2 or sv[0] - sv[1] > 1e-3 * sv[0])
    assert (eigencam(a) >= -1e-9 * max(1.0, np.abs(a).max())).all()


@given(activations(), st.booleans(), st.randoms(use_true_random=False))
def test_channel_permutation_and_sign_invariance(a, center, rnd):
    perm = list(range(a.shape[1]))
    rnd.shuffle(perm)
    out = eigencam(a, center=center)
    # sign rules only flip the whole map, so compare where the map is unambiguous
    scale = 1e-7 * max(1.0, np.abs(out).max())
    for other in (eigencam(a[:, perm], center=center), eigencam(-a, center=center)):
        ok = np.allclose(other, out, rtol=1e-7, atol=scale) or not _well_separated(a, center)
        assert ok


def _well_separated(a, center):
    """True when sigma1 > sigma2 clearly and the sign reference is clearly nonzero (all samples)."""
    for act in a:
        o = act.reshape(act.shape[0], -1).T
        if center:
            o = o - o.mean(axis=0)
        s = np.linalg.svd(o, compute_uv=False)
        if s[0] < 1e-6 or (len(s) > 1 and s[0] - s[1] < 1e-3 * s[0]):
            return False
        p = np.abs(o @ np.linalg.svd(o)[2][0])
        srt = np.sort(p.ravel())[::-1]
        if center and len(srt) > 1 and srt[0] - srt[1] < 1e-6 * srt[0]:
            return False  # max-abs tie
        if not center and abs((o @ np.linalg.svd(o)[2][0]).sum()) < 1e-6 * p.sum():
            return False
    return True


@given(activations(), st.floats(0.1, 10))
def test_positive_scale_and_batch_independence(a, s):
    out = eigencam(a)
    if _well_separated(a, False):
        close(eigencam(s * a), s * out, rtol=1e-7, atol=1e-7 * s * max(1.0, np.abs(out).max()))
    each = np.concatenate([eigencam(a[i:i + 1]) for i in range(a.shape[0])])
    close(out, each, rtol=1e-9, atol=1e-9 * max(1.0, np.abs(out).max()))


@given(st.data())
def test_rank_one_recovery(data):
    # A^k_ij = u_ij v_k  =>  O = u v^T, O v1 = u ||v|| (sign: sum(u) > 0 drawn)
    n = 1
    spatial = tuple(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    u = data.draw(hnp.arrays(np.float64, spatial, elements=st.floats(0.1, 5)))
    v = data.draw(hnp.arrays(np.float64, (data.draw(st.integers(1, 5)),), elements=finite))
    if np.linalg.norm(v) < 1e-3:
        v = v + 1.0
    a = (v[:, None] * u.ravel()[None]).reshape((n, len(v)) + spatial)
    close(eigencam(a), (u * np.linalg.norm(v))[None], rtol=1e-7, atol=1e-7)


@given(activations(), activations())
def test_eigengradcam_is_eigencam_of_product(a, b):
    if a.shape != b.shape:
        b = np.resize(b, a.shape)
    for center in (False, True):
        close(eigengradcam(a, b, center=center), eigencam(a * b, center=center), rtol=0, atol=0)


def test_flags_must_be_boolean():
    a = np.ones((1, 2, 3))
    with pytest.raises(InvalidArgumentError, match="center"):
        eigencam(a, center=None)
    with pytest.raises(InvalidArgumentError, match="relu"):
        eigengradcam(a, a, relu=1)


def test_eigencam_component_hand():
    # O = [[3, 0], [0, 1]] (positions x channels): sigma = (3, 1), v1 = e1, v2 = e2
    a = np.array([[[3.0, 0.0], [0.0, 1.0]]])            # (N=1, K=2, Z=2): A^1 = [3, 0], A^2 = [0, 1]
    np.testing.assert_array_equal(eigencam(a), [[3.0, 0.0]])
    np.testing.assert_array_equal(eigencam(a, component=2), [[0.0, 1.0]])
    # wide case (Z < K): O = [[1, 0, 0], [0, 2, 0]] -> O v_2 = sigma_2 u_2 = [1, 0]
    w = np.array([[[1.0], [0.0], [0.0]], [[0.0], [2.0], [0.0]]]).transpose(2, 1, 0)  # (1, 3, 2)
    np.testing.assert_allclose(eigencam(w, component=2), [[1.0, 0.0]], atol=1e-15)
    with pytest.raises(InvalidArgumentError, match="component"):
        eigencam(a, component=3)
    with pytest.raises(InvalidArgumentError, match="component"):
        eigencam(a, component=0)
