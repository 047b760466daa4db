"""Tests of refcam.math.post: relu, normalize, interpolation_matrix, upsample, fuse."""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage

from refcam.errors import DTypeError, InvalidArgumentError, NonFiniteError, RefcamError, ShapeError
from refcam.math.post import fuse, interpolation_matrix, normalize, relu, upsample

UP_MODES = ("linear", "linear-align-corners", "nearest", "nearest-exact")

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


def batch_maps(min_dims=2, max_dims=4, dtype=np.float64, elements=finite):
    return hnp.arrays(
        dtype,
        hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=5),
        elements=elements,
    )


# ----------------------------------------------------------------------------------------- relu
def test_relu_hand_case_and_positive_zero():
    out = relu(np.array([[-2.0, -0.0, 0.0, 3.5]]))
    np.testing.assert_array_equal(out, [[0.0, 0.0, 0.0, 3.5]])
    assert not np.signbit(out).any()  # -0.0 becomes +0.0


def test_relu_dtypes():
    assert relu(np.ones((1, 2), np.float32)).dtype == np.float32
    out = relu(np.array([[-1, 2]]))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [[0.0, 2.0]])


def test_relu_errors_name_argument():
    with pytest.raises(NonFiniteError, match="maps"):
        relu(np.array([[np.nan]]))
    with pytest.raises(DTypeError, match="maps"):
        relu(np.array([[1j]]))


# ------------------------------------------------------------------------------------ normalize
def test_normalize_minmax_hand_case():
    # sample 0: min 1, max 5 -> (x-1)/4; sample 1 constant -> guard gives zeros
    m = np.array([[1.0, 3.0, 5.0, 2.0], [7.0, 7.0, 7.0, 7.0]])
    np.testing.assert_array_equal(normalize(m), [[0.0, 0.5, 1.0, 0.25], [0.0, 0.0, 0.0, 0.0]])


def test_normalize_other_modes_hand_cases():
    m = np.array([[[2.0, -8.0], [4.0, 2.0]]])
    # max |x| = 8
    np.testing.assert_array_equal(normalize(m, "max"), [[[0.25, -1.0], [0.5, 0.25]]])
    # sum |x| = 16
    np.testing.assert_array_equal(normalize(m, "sum"), [[[0.125, -0.5], [0.25, 0.125]]])
    out = normalize(m, "none")
    np.testing.assert_array_equal(out, m)
    assert out is not m
    z = np.zeros((2, 3))
    for mode in ("minmax", "max", "sum"):
        np.testing.assert_array_equal(normalize(z, mode), z)


def test_normalize_eps_peer_conventions():
    # (x - min)/(max - min + eps): min 0, max 3, eps 1 -> x/4
    np.testing.assert_array_equal(
        normalize(np.array([[0.0, 1.0, 3.0]]), eps=1.0), [[0.0, 0.25, 0.75]]
    )
    # max: x/(max|x| + eps) = x/4 ; sum: x/(6 + 2) = x/8
    np.testing.assert_array_equal(
        normalize(np.array([[-3.0, 1.0]]), "max", eps=1.0), [[-0.75, 0.25]]
    )
    np.testing.assert_array_equal(
        normalize(np.array([[-3.0, 3.0]]), "sum", eps=2.0), [[-0.375, 0.375]]
    )


@pytest.mark.parametrize("eps", [1e-7, 1e-8])
def test_normalize_reproduces_pytorch_grad_cam_and_torchcam_bitwise(eps):
    rng = np.random.default_rng(0)
    cams = (rng.normal(size=(3, 7, 7)) * 10).astype(np.float32)
    ref = []
    for img in cams:  # the peers' per-image float32 arithmetic
        img = img - np.min(img)
        img = img / (np.float32(eps) + np.max(img))
        ref.append(img)
    out = normalize(cams, "minmax", eps=eps)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.float32(ref))  # bit-identical (power-of-two prescaling)


def test_normalize_matches_direct_formula_bitwise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5, 6)) * 1e3
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(normalize(x), (x - lo) / (hi - lo))


def test_normalize_extreme_values_stay_finite():
    big = np.finfo(np.float64).max
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalize(np.array([[-big, 0.0, big]]))
        np.testing.assert_array_equal(out, [[0.0, 0.5, 1.0]])
        f32 = np.array([[0.0, np.finfo(np.float32).smallest_subnormal]], np.float32)
        out32 = normalize(
            f32, eps=1.0
        )  # eps dwarfs the range: result ~0, finite, no overflow warning
        assert out32.dtype == np.float32 and np.isfinite(out32).all()
        np.testing.assert_array_equal(normalize(f32), [[0.0, 1.0]])


@given(batch_maps(), st.floats(1e-3, 1e3), st.floats(-1e3, 1e3))
def test_normalize_minmax_invariant_to_positive_affine(x, a, b):
    ref = normalize(x)
    out = normalize(a * x + b)
    # samples whose range collapses numerically are excluded from the comparison
    rng_ = np.ptp(x.reshape(x.shape[0], -1), axis=1)
    ok = rng_ > 1e-6 * (np.abs(x.reshape(x.shape[0], -1)).max(axis=1) + abs(b) / a + 1)
    np.testing.assert_allclose(out[ok], ref[ok], atol=1e-6)


@given(batch_maps(elements=st.floats(allow_nan=False, allow_infinity=False, width=64)))
def test_normalize_range_and_batch_independence(x):
    for mode in ("minmax", "max", "sum"):
        out = normalize(x, mode)
        assert np.isfinite(out).all()
        if mode == "minmax":
            assert out.min() >= 0 and out.max() <= 1
        else:
            assert np.abs(out).max() <= 1
        for i in range(x.shape[0]):
            np.testing.assert_array_equal(out[i], normalize(x[i : i + 1], mode)[0])


@given(
    batch_maps(
        dtype=np.float32, elements=st.floats(allow_nan=False, allow_infinity=False, width=32)
    )
)
def test_normalize_float32_preserved(x):
    assert normalize(x).dtype == np.float32
    assert normalize(x, eps=1e-7).dtype == np.float32


def _normalize_scaled_reference(x, mode, eps):
    """The previous implementation of ``normalize`` (before the single-pass rewrite), kept as the
    bit-exact oracle: divide each sample by the power of two below max|x|, then the formula."""
    axes = tuple(range(1, x.ndim))
    _, e = np.frexp(np.max(np.abs(x), axis=axes, keepdims=True))
    scale = np.ldexp(np.ones_like(e, dtype=x.dtype), e - 1)
    xs = x / scale
    if mode == "minmax":
        lo = np.min(xs, axis=axes, keepdims=True)
        num, den = xs - lo, np.max(xs, axis=axes, keepdims=True) - lo
    elif mode == "max":
        num, den = xs, np.max(np.abs(xs), axis=axes, keepdims=True)
    else:
        num, den = xs, np.sum(np.abs(xs), axis=axes, keepdims=True)
    if eps > 0:
        den = den + np.minimum(eps / scale.astype(np.float64), np.finfo(x.dtype).max).astype(x.dtype)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=np.broadcast_to(den > 0, num.shape))
    return out


_EXTREMES = [0.0, -0.0, 1.0, -3.0, 1e-300, -1e-310, 5e-324, 1e300, -1.7e308, 1e-40, 3e38, 1.4e-45]


@given(st.sampled_from([np.float32, np.float64]), st.sampled_from(["minmax", "max", "sum"]),
       st.sampled_from([0.0, 1e-8, 1e-7, 1.0, 1e30]), st.integers(1, 3), st.integers(1, 4),
       st.integers(0, 2**32 - 1), st.booleans())
def test_normalize_bit_identical_to_the_scaled_reference(dtype, mode, eps, n, z, seed, extreme):
    # the rewrite (one min + one max pass, multiplication by the exact reciprocal, in-place ops)
    # must give the same bits as the previous implementation for every finite input, including
    # overflow-prone, subnormal, signed-zero and constant maps
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore", under="ignore"):
        if extreme:
            x = rng.choice(np.array(_EXTREMES), size=(n, z, 3)).astype(dtype)
            x[~np.isfinite(x)] = 0
        else:
            x = (rng.standard_normal((n, z, 3)) * 10.0 ** rng.integers(-30, 30)).astype(dtype)
        if rng.random() < 0.2:
            x[0] = x[0, 0, 0]  # a constant sample
        got = normalize(x, mode, eps)
        want = _normalize_scaled_reference(x, mode, eps)
    assert got.dtype == want.dtype == dtype
    np.testing.assert_array_equal(got, want)
    # signed zeros too, except where a scaled value underflowed to -0.0: there the old code's
    # min over {-0.0, +0.0} (an arbitrary pick of np.min) decided the sign of the zero
    axes = tuple(range(1, x.ndim))
    scale = np.ldexp(np.ones(1, dtype), np.frexp(np.abs(x).max(axis=axes, keepdims=True))[1] - 1)
    with np.errstate(under="ignore"):
        underflow = ((x != 0) & (x / scale == 0)).any(axis=axes)
    keep = ~underflow
    np.testing.assert_array_equal(np.signbit(got[keep]), np.signbit(want[keep]))


def test_normalize_errors_name_argument():
    with pytest.raises(InvalidArgumentError, match="mode"):
        normalize(np.ones((1, 2)), "zscore")
    with pytest.raises(InvalidArgumentError, match="eps"):
        normalize(np.ones((1, 2)), eps=-1.0)
    with pytest.raises(ShapeError, match=r"maps: got shape \(3,\)"):
        normalize(np.ones(3))
    with pytest.raises(NonFiniteError, match="maps"):
        normalize(np.array([[np.inf, 1.0]]))


# ------------------------------------------------------------------------ interpolation_matrix
def test_interpolation_matrix_hand_cases():
    # half-pixel 2 -> 4: u = (d + .5)/2 - .5 = [-.25->0, .25, .75, 1.25->i0=1 clamped]
    np.testing.assert_array_equal(
        interpolation_matrix(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]
    )
    # half-pixel 4 -> 2: u = (d + .5)*2 - .5 = [.5, 2.5] -> averages of neighbours (= area for 2x)
    np.testing.assert_array_equal(interpolation_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    # half-pixel 3 -> 2: u = (d + .5)*1.5 - .5 = [.25, 1.75]
    np.testing.assert_array_equal(interpolation_matrix(3, 2), [[0.75, 0.25, 0], [0, 0.25, 0.75]])
    # align corners 2 -> 3: u = d * 1/2
    np.testing.assert_array_equal(
        interpolation_matrix(2, 3, "linear-align-corners"), [[1, 0], [0.5, 0.5], [0, 1]]
    )
    # align corners 3 -> 2: u = d * 2/1 = [0, 2];  n_out = 1 -> u = 0
    np.testing.assert_array_equal(
        interpolation_matrix(3, 2, "linear-align-corners"), [[1, 0, 0], [0, 0, 1]]
    )
    np.testing.assert_array_equal(interpolation_matrix(3, 1, "linear-align-corners"), [[1, 0, 0]])
    # half-pixel 3 -> 1: u = .5*3 - .5 = 1 -> the middle sample
    np.testing.assert_array_equal(interpolation_matrix(3, 1), [[0, 1, 0]])
    # nearest 3 -> 2: floor(d*1.5) = [0, 1];  nearest-exact: floor((d+.5)*1.5) = [0, 2]
    np.testing.assert_array_equal(interpolation_matrix(3, 2, "nearest"), [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(
        interpolation_matrix(3, 2, "nearest-exact"), [[1, 0, 0], [0, 0, 1]]
    )
    # nearest 2 -> 5: floor(d*.4) = [0,0,0,1,1];  nearest-exact floor((d+.5)*.4) = [0,0,1,1,1]
    np.testing.assert_array_equal(interpolation_matrix(2, 5, "nearest").argmax(1), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(
        interpolation_matrix(2, 5, "nearest-exact").argmax(1), [0, 0, 1, 1, 1]
    )
    # 1 -> n: every mode replicates the single sample
    for mode in UP_MODES:
        np.testing.assert_array_equal(interpolation_matrix(1, 3, mode), np.ones((3, 1)))


sizes = st.integers(1, 40)


@given(sizes, sizes, st.sampled_from(UP_MODES))
def test_interpolation_matrix_rows_are_convex_and_identity_when_same_size(n_in, n_out, mode):
    w = interpolation_matrix(n_in, n_out, mode)
    assert w.shape == (n_out, n_in) and w.dtype == np.float64
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert (np.count_nonzero(w, axis=1) <= 2).all()
    np.testing.assert_array_equal(interpolation_matrix(n_in, n_in, mode), np.eye(n_in))


@given(st.integers(2, 40), st.integers(2, 40))
def test_linear_reproduces_affine_functions_inside(n_in, n_out):
    # x_i = 3 i - 2 sampled at u = (d + .5) n_in/n_out - .5 gives 3u - 2 wherever 0 <= u <= n_in - 1
    x = 3.0 * np.arange(n_in) - 2.0
    u = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    inside = (u >= 0) & (u <= n_in - 1)
    np.testing.assert_allclose(
        (interpolation_matrix(n_in, n_out) @ x)[inside], 3 * u[inside] - 2, atol=1e-9
    )
    # align corners: u = d (n_in-1)/(n_out-1), always inside
    ua = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    np.testing.assert_allclose(
        interpolation_matrix(n_in, n_out, "linear-align-corners") @ x, 3 * ua - 2, atol=1e-9
    )


@given(st.integers(1, 30), st.integers(1, 30))
def test_linear_matches_scipy_zoom_grid_mode(n_in, n_out):
    x = np.random.default_rng(n_in * 31 + n_out).normal(size=n_in)
    ref = ndimage.zoom(x, n_out / n_in, order=1, grid_mode=True, mode="nearest")
    assert ref.shape == (n_out,)
    np.testing.assert_allclose(interpolation_matrix(n_in, n_out) @ x, ref, rtol=1e-12, atol=1e-12)


def test_interpolation_matrix_errors_name_argument():
    with pytest.raises(InvalidArgumentError, match="in_size"):
        interpolation_matrix(0, 3)
    with pytest.raises(InvalidArgumentError, match="out_size"):
        interpolation_matrix(3, 2.0)
    with pytest.raises(InvalidArgumentError, match="mode"):
        interpolation_matrix(3, 2, "bicubic")


# ------------------------------------------------------------------------------------ upsample
def test_upsample_1d_hand_case():
    # 2 -> 4 half-pixel: [a, .75a + .25b, .25a + .75b, b] with a = 4, b = 8
    np.testing.assert_array_equal(upsample(np.array([[4.0, 8.0]]), (4,)), [[4.0, 5.0, 7.0, 8.0]])
    # align corners 2 -> 3: [a, (a+b)/2, b]
    np.testing.assert_array_equal(
        upsample(np.array([[4.0, 8.0]]), [3], "linear-align-corners"), [[4.0, 6.0, 8.0]]
    )
    np.testing.assert_array_equal(
        upsample(np.array([[4.0, 8.0]]), (5,), "nearest"), [[4, 4, 4, 8, 8]]
    )
    np.testing.assert_array_equal(
        upsample(np.array([[4.0, 8.0]]), (5,), "nearest-exact"), [[4, 4, 8, 8, 8]]
    )


def test_upsample_2d_bilinear_hand_case():
    # f(i, j) = 8 i + 4 j is bilinear; half-pixel 2 -> 4 samples u = [0, .25, .75, 1] on both axes
    x = np.array([[[0.0, 4.0], [8.0, 12.0]]])
    u = np.array([0.0, 0.25, 0.75, 1.0])
    expected = 8 * u[:, None] + 4 * u[None, :]
    np.testing.assert_array_equal(upsample(x, (4, 4))[0], expected)
    np.testing.assert_array_equal(expected[1], [2.0, 3.0, 5.0, 6.0])  # the hand numbers of row 1


def test_upsample_leading_axes_are_batch_like():
    rng = np.random.default_rng(2)
    masks = rng.normal(size=(2, 3, 4, 5))
    out = upsample(masks, (7, 3))
    assert out.shape == (2, 3, 7, 3)
    for n in range(2):
        for k in range(3):
            np.testing.assert_allclose(
                out[n, k], upsample(masks[n, k][None], (7, 3))[0], rtol=1e-15
            )
    # and equals the explicit separable product W_h X W_w^T
    wh, ww = interpolation_matrix(4, 7), interpolation_matrix(5, 3)
    np.testing.assert_allclose(
        out, np.einsum("pi,nkij,qj->nkpq", wh, masks, ww), rtol=1e-13, atol=1e-13
    )


def test_upsample_3d_trilinear_is_separable_product():
    rng = np.random.default_rng(3)
    a, b, c = rng.normal(size=2), rng.normal(size=3), rng.normal(size=4)
    vol = np.einsum("i,j,k->ijk", a, b, c)[None]
    out = upsample(vol, (5, 6, 3))
    ua, ub, uc = (upsample(v[None], (s,))[0] for v, s in ((a, 5), (b, 6), (c, 3)))
    np.testing.assert_allclose(out[0], np.einsum("i,j,k->ijk", ua, ub, uc), rtol=1e-12, atol=1e-14)


@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)),
        elements=finite,
    ),
    st.integers(1, 9),
    st.integers(1, 9),
)
def test_upsample_2d_matches_scipy_zoom_grid_mode(x, h, w):
    out = upsample(x, (h, w))
    for n in range(x.shape[0]):
        ref = ndimage.zoom(
            x[n], (h / x.shape[1], w / x.shape[2]), order=1, grid_mode=True, mode="nearest"
        )
        np.testing.assert_allclose(out[n], ref, rtol=1e-9, atol=1e-6)


@given(batch_maps(min_dims=2, max_dims=4), st.sampled_from(UP_MODES))
def test_upsample_same_size_is_identity_copy(x, mode):
    out = upsample(x, x.shape[1:], mode)
    np.testing.assert_array_equal(out, x)
    assert out is not x and not np.shares_memory(out, x)


@given(
    batch_maps(min_dims=2, max_dims=3, dtype=np.float32, elements=st.floats(-1e3, 1e3, width=32)),
    st.sampled_from(UP_MODES),
)
def test_upsample_float32_preserved_and_bounded(x, mode):
    size = tuple(s + 2 for s in x.shape[1:])
    out = upsample(x, size, mode)
    assert out.dtype == np.float32 and out.shape == x.shape[:1] + size
    # every output is a convex combination of inputs of the same sample
    lo = x.reshape(x.shape[0], -1).min(1)
    hi = x.reshape(x.shape[0], -1).max(1)
    flat = out.reshape(out.shape[0], -1)
    assert (flat >= lo[:, None] - 1e-3).all() and (flat <= hi[:, None] + 1e-3).all()


def test_upsample_int_input_becomes_float64_and_nearest_is_exact():
    out = upsample(np.array([[1, 2]]), (4,), "nearest")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [[1, 1, 2, 2]])


def test_upsample_errors_name_argument():
    x = np.ones((2, 3, 4))
    with pytest.raises(ShapeError, match=r"maps: got shape \(2, 3, 4\)"):
        upsample(x, (5, 5, 5))  # would leave no batch axis
    with pytest.raises(InvalidArgumentError, match="size"):
        upsample(x, 5)
    with pytest.raises(InvalidArgumentError, match="size"):
        upsample(x, (0, 4))
    with pytest.raises(InvalidArgumentError, match="size"):
        upsample(x, ())
    with pytest.raises(InvalidArgumentError, match="size"):
        upsample(x, (2.5, 4))
    with pytest.raises(InvalidArgumentError, match="mode"):
        upsample(x, (5, 5), "area")
    with pytest.raises(ShapeError, match="maps"):
        upsample(np.ones((2, 0, 4)), (5, 5))
    with pytest.raises(NonFiniteError, match="maps"):
        upsample(np.full((1, 2), np.nan), (3,))


# ----------------------------------------------------------------------------------------- fuse
def test_fuse_hand_cases():
    a = np.array([[0.0, 2.0, 4.0]])
    b = np.array([[1.0, 1.0, -2.0]])
    np.testing.assert_array_equal(fuse([a, b], "mean"), [[0.5, 1.5, 1.0]])
    np.testing.assert_array_equal(fuse([a, b], "sum"), [[1.0, 3.0, 2.0]])
    np.testing.assert_array_equal(fuse((a, b), "max"), [[1.0, 2.0, 4.0]])
    np.testing.assert_array_equal(fuse(np.stack([a, b]), "max"), [[1.0, 2.0, 4.0]])
    # tanh-max with gamma 1: a/max|a| = [0, .5, 1]; b/max|b| = [.5, .5, -1]
    expected = np.maximum(np.tanh([0.0, 0.5, 1.0]), np.tanh([0.5, 0.5, -1.0]))
    np.testing.assert_allclose(fuse([a, b], "tanh-max", gamma=1.0), [expected], rtol=1e-15)
    # an all-zero layer stays zero under the "max" scaling guard
    np.testing.assert_array_equal(fuse([np.zeros((1, 3))], "tanh-max"), np.zeros((1, 3)))


def test_fuse_pytorch_grad_cam_recipe_hand_case():
    # per layer: relu -> minmax ; mean ; relu -> minmax   (eps = 0 for exact numbers)
    ms = [np.array([[0.0, 2.0, 4.0]]), np.array([[-1.0, 1.0, 3.0]])]
    per_layer = [normalize(relu(m)) for m in ms]  # [0, .5, 1] and [0, 1/3, 1]
    out = normalize(relu(fuse(per_layer, "mean")))  # mean [0, 5/12, 1] -> unchanged by minmax
    np.testing.assert_allclose(out, [[0.0, 5 / 12, 1.0]], rtol=1e-15)


def test_fuse_dtype_promotion():
    a32 = np.ones((1, 2), np.float32)
    assert fuse([a32, a32]).dtype == np.float32
    assert fuse([a32, np.ones((1, 2))]).dtype == np.float64
    assert fuse([a32, a32], "tanh-max").dtype == np.float32


def test_fuse_errors_name_argument():
    with pytest.raises(
        ShapeError, match=r"maps_per_layer\[1\]: got shape \(1, 3\), expected \(1, 2\)"
    ):
        fuse([np.ones((1, 2)), np.ones((1, 3))])
    with pytest.raises(InvalidArgumentError, match="maps_per_layer"):
        fuse([])
    with pytest.raises(InvalidArgumentError, match="maps_per_layer"):
        fuse(np.ones((1, 2)).tolist().__iter__())
    with pytest.raises(NonFiniteError, match=r"maps_per_layer\[0\]"):
        fuse([np.full((1, 2), np.nan)])
    with pytest.raises(InvalidArgumentError, match="mode"):
        fuse([np.ones((1, 2))], "median")
    with pytest.raises(InvalidArgumentError, match="gamma"):
        fuse([np.ones((1, 2))], "tanh-max", gamma=-1)
    assert issubclass(ShapeError, RefcamError)
