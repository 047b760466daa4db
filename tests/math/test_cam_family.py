"""Oracle tests of refcam.math.cam_family (CAM, Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM,
Grad-CAM element-wise).

The hand case used throughout (one sample, K = 2 channels, 2x2 positions, Z = 4):

    A^0 = [[1, 2], [3, 4]]     G^0 = [[ 1,  0], [-1,  2]]
    A^1 = [[0, 3], [2, 0]]     G^1 = [[-1, -1], [ 1, -1]]

    sum A^0 = 10, sum A^1 = 5
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from refcam.errors import InvalidArgumentError, NonFiniteError, ShapeError
from refcam.math import (
    cam, gradcam, gradcam_elementwise, gradcam_weights, gradcampp, gradcampp_weights, hirescam,
    layercam, xgradcam, xgradcam_weights,
)

A = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 3.0], [2.0, 0.0]]]])
G = np.array([[[[1.0, 0.0], [-1.0, 2.0]], [[-1.0, -1.0], [1.0, -1.0]]]])

GRAD_METHODS = [gradcam, gradcampp, xgradcam, layercam, hirescam, gradcam_elementwise]
WEIGHT_FNS = [gradcam_weights, gradcampp_weights, xgradcam_weights]


def close(x, y, rtol=1e-12, atol=1e-12):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, equal_nan=False)  # NaN never passes


# ------------------------------------------------------------------ hand-computed cases

def test_cam_hand():
    # w = [1, -1]: A^0 - A^1 = [[1, -1], [1, 4]]; the paper's map has no ReLU
    out = cam(A, [[1.0, -1.0]])
    close(out, [[[1.0, -1.0], [1.0, 4.0]]])
    close(cam(A, [[1.0, -1.0]], relu=True), [[[1.0, 0.0], [1.0, 4.0]]])


def test_gradcam_hand():
    # alpha^0 = (1 + 0 - 1 + 2)/4 = 0.5 ; alpha^1 = (-1 - 1 + 1 - 1)/4 = -0.5
    close(gradcam_weights(A, G), [[0.5, -0.5]])
    # 0.5 A^0 - 0.5 A^1 = 0.5 [[1, -1], [1, 4]] ; eq. 2 applies a ReLU
    close(gradcam(A, G, relu=False), [[[0.5, -0.5], [0.5, 2.0]]])
    close(gradcam(A, G), [[[0.5, 0.0], [0.5, 2.0]]])


def test_gradcampp_hand():
    # alpha_ij = g^2 / (2 g^2 + S g^3) = 1 / (2 + S g) for g != 0
    # channel 0 (S = 10):  g = 1 -> 1/12 ; g = 0 -> masked 0 ; g = -1 -> ReLU(g) = 0 ;
    #                      g = 2 -> 4 / (8 + 80) = 1/22
    #   w^0 = (1/12)*1 + (1/22)*2 = 1/12 + 1/11 = 23/132
    # channel 1 (S = 5):   only g = 1 at (1, 0) has ReLU(g) > 0: alpha = 1/(2 + 5) = 1/7
    #   w^1 = 1/7
    w0, w1 = 23 / 132, 1 / 7
    close(gradcampp_weights(A, G), [[w0, w1]])
    expected = w0 * A[0, 0] + w1 * A[0, 1]
    # = [[23/132, 46/132 + 3/7], [69/132 + 2/7, 92/132]]
    close(expected, [[23 / 132, 46 / 132 + 3 / 7], [69 / 132 + 2 / 7, 92 / 132]])
    close(gradcampp(A, G), expected[None])


def test_gradcampp_relu_default_is_eq_20():
    # A = [-1, 2] (S = 1), g = [1, 1]: alpha = 1/(2 + 1) = 1/3 at both, w = 2/3
    # linear map 2/3 * [-1, 2] = [-2/3, 4/3]; eq. 20 applies the ReLU -> [0, 4/3]
    a, g = np.array([[[-1.0, 2.0]]]), np.ones((1, 1, 2))
    close(gradcampp_weights(a, g), [[2 / 3]])
    close(gradcampp(a, g, relu=False), [[-2 / 3, 4 / 3]])
    close(gradcampp(a, g), [[0.0, 4 / 3]])


def test_gradcampp_pytorch_grad_cam_eps_convention():
    # eps = 1e-6 added to the denominator, alpha zeroed where g == 0:
    # w^0 = 1/(12 + 1e-6) + 2 * 4/(88 + 1e-6) ; w^1 = 1/(7 + 1e-6)
    w = gradcampp_weights(A, G, eps=1e-6)
    close(w, [[1 / (12 + 1e-6) + 8 / (88 + 1e-6), 1 / (7 + 1e-6)]])
    assert not np.allclose(w, gradcampp_weights(A, G), rtol=1e-9, atol=0)


def test_gradcampp_pole_is_masked():
    # one channel, sum A = -2, g = 1 everywhere: 2 g^2 + S g^3 = 2 - 2 = 0 -> alpha = 0, w = 0
    a = np.array([[[[-1.0, -1.0]]]])
    g = np.ones_like(a)
    close(gradcampp_weights(a, g), [[0.0]])
    close(gradcampp(a, g), [[[0.0, 0.0]]])


def test_xgradcam_hand():
    # alpha^0 = (1*1 + 2*0 + 3*(-1) + 4*2) / 10 = 6/10 = 0.6
    # alpha^1 = (0*(-1) + 3*(-1) + 2*1 + 0*(-1)) / 5 = -1/5 = -0.2
    close(xgradcam_weights(A, G), [[0.6, -0.2]])
    # 0.6 A^0 - 0.2 A^1 = [[0.6, 1.2 - 0.6], [1.8 - 0.4, 2.4]]
    close(xgradcam(A, G), [[[0.6, 0.6], [1.4, 2.4]]])


def test_xgradcam_relu_and_zero_sum_channel():
    # A = [2, -1], g = [1, 3]: alpha = (2 - 3)/1 = -1, map = [-2, 1] -> ReLU [0, 1]
    a, g = np.array([[[2.0, -1.0]]]), np.array([[[1.0, 3.0]]])
    close(xgradcam(a, g, relu=False), [[-2.0, 1.0]])
    close(xgradcam(a, g), [[0.0, 1.0]])
    # an all-zero channel: sum A = 0 -> alpha = 0 by the mask (no warning, no NaN)
    a2 = np.array([[[1.0, 3.0], [0.0, 0.0]]])
    g2 = np.array([[[2.0, 1.0], [5.0, 5.0]]])
    close(xgradcam_weights(a2, g2), [[1.25, 0.0]])
    # eps convention of pytorch-grad-cam: 5 / (4 + 1e-7)
    close(xgradcam_weights(a2, g2, eps=1e-7), [[5 / (4 + 1e-7), 0.0]])


def test_layercam_hand():
    # ReLU(G^0) = [[1, 0], [0, 2]], ReLU(G^1) = [[0, 0], [1, 0]]
    # sum_k ReLU(g) A = [[1*1 + 0, 0 + 0], [0 + 1*2, 2*4 + 0]] = [[1, 0], [2, 8]]
    close(layercam(A, G), [[[1.0, 0.0], [2.0, 8.0]]])
    # ReLU matters with a negative activation: A = [-2, 1], g = [1, 1]
    a, g = np.array([[[-2.0, 1.0]]]), np.ones((1, 1, 2))
    close(layercam(a, g, relu=False), [[-2.0, 1.0]])
    close(layercam(a, g), [[0.0, 1.0]])


def test_hirescam_hand():
    # G^0*A^0 = [[1, 0], [-3, 8]], G^1*A^1 = [[0, -3], [2, 0]] -> sum [[1, -3], [-1, 8]]
    close(hirescam(A, G), [[[1.0, -3.0], [-1.0, 8.0]]])
    close(hirescam(A, G, relu=True), [[[1.0, 0.0], [0.0, 8.0]]])


def test_gradcam_elementwise_hand():
    # ReLU(G^0*A^0) + ReLU(G^1*A^1) = [[1, 0], [0, 8]] + [[0, 0], [2, 0]] = [[1, 0], [2, 8]]
    # (differs from ReLU(HiResCAM) = [[1, 0], [0, 8]] at (1, 0): ReLU inside the channel sum)
    close(gradcam_elementwise(A, G), [[[1.0, 0.0], [2.0, 8.0]]])
    close(gradcam_elementwise(A, G, relu=False), [[[1.0, 0.0], [2.0, 8.0]]])


def test_3d_hand_same_numbers_on_a_volume():
    # the same 4 positions laid out as a (2, 1, 2) volume: every result is the 2-D one reshaped
    a3, g3 = A.reshape(1, 2, 2, 1, 2), G.reshape(1, 2, 2, 1, 2)
    close(gradcam(a3, g3, relu=False), np.array([[0.5, -0.5], [0.5, 2.0]]).reshape(1, 2, 1, 2))
    close(hirescam(a3, g3), np.array([[1.0, -3.0], [-1.0, 8.0]]).reshape(1, 2, 1, 2))
    close(xgradcam_weights(a3, g3), [[0.6, -0.2]])
    close(gradcampp_weights(a3, g3), [[23 / 132, 1 / 7]])
    close(layercam(a3, g3), np.array([[1.0, 0.0], [2.0, 8.0]]).reshape(1, 2, 1, 2))
    close(cam(a3, [[1.0, -1.0]]), np.array([[1.0, -1.0], [1.0, 4.0]]).reshape(1, 2, 1, 2))
    close(gradcam_elementwise(a3, g3), np.array([[1.0, 0.0], [2.0, 8.0]]).reshape(1, 2, 1, 2))
    close(gradcam_weights(a3, g3), [[0.5, -0.5]])
    close(gradcampp(a3, g3), (23 / 132 * A[0, 0] + 1 / 7 * A[0, 1]).reshape(1, 2, 1, 2))
    close(xgradcam(a3, g3), np.array([[0.6, 0.6], [1.4, 2.4]]).reshape(1, 2, 1, 2))


def test_3d_volume_gradcam_z8():
    # (1, 1, 2, 2, 2), A = 0..7, G = 0..7 -> alpha = mean(G) = 3.5 -> map = 3.5 A
    a = np.arange(8.0).reshape(1, 1, 2, 2, 2)
    close(gradcam(a, a), 3.5 * a[:, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", GRAD_METHODS + WEIGHT_FNS)
def test_dtype_is_kept_and_float32_agrees(fn, dtype):
    out = fn(A.astype(dtype), G.astype(dtype))
    assert out.dtype == dtype
    close(out, fn(A, G), rtol=1e-6, atol=1e-6)


def test_cam_dtype():
    assert cam(A.astype(np.float32), np.ones((1, 2), np.float32)).dtype == np.float32
    assert cam(A.astype(np.float32), np.ones((1, 2))).dtype == np.float64


# ------------------------------------------------------------------ error paths

@pytest.mark.parametrize("fn", GRAD_METHODS + WEIGHT_FNS)
def test_errors_name_the_argument(fn):
    with pytest.raises(ShapeError, match="activations: got shape \\(2, 2\\)"):
        fn(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ShapeError, match="gradients: got shape \\(1, 2, 2, 3\\)") as info:
        fn(A, np.ones((1, 2, 2, 3)))
    assert "(1, 2, 2, 2)" in str(info.value) and "activations" in str(info.value)
    bad = G.copy()
    bad[0, 0, 1, 1] = np.nan
    with pytest.raises(NonFiniteError, match="gradients"):
        fn(A, bad)
    with pytest.raises(NonFiniteError, match="activations"):
        fn(np.where(bad == bad, A, np.inf), G)


def test_cam_class_weights_shape():
    with pytest.raises(ShapeError, match="class_weights: got shape \\(2,\\)"):
        cam(A, [1.0, 2.0])
    with pytest.raises(ShapeError, match="class_weights"):
        cam(A, np.ones((2, 2)))


@pytest.mark.parametrize("fn", [gradcampp, gradcampp_weights, xgradcam, xgradcam_weights])
def test_negative_eps_refused(fn):
    with pytest.raises(InvalidArgumentError, match="eps"):
        fn(A, G, eps=-1e-6)


# ------------------------------------------------------------------ properties

finite = st.floats(-5, 5, allow_nan=False, width=64)
positive = st.floats(0.1, 5, allow_nan=False, width=64)


@st.composite
def shapes(draw):
    n = draw(st.integers(1, 3))
    k = draw(st.integers(1, 5))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    return (n, k) + spatial


@st.composite
def pairs(draw, a_elements=finite, g_elements=finite):
    shape = draw(shapes())
    return (draw(hnp.arrays(np.float64, shape, elements=a_elements)),
            draw(hnp.arrays(np.float64, shape, elements=g_elements)))


@given(pairs(), st.sampled_from(GRAD_METHODS + WEIGHT_FNS), st.randoms(use_true_random=False))
def test_channel_permutation_equivariance(ag, fn, rnd):
    a, g = ag
    perm = list(range(a.shape[1]))
    rnd.shuffle(perm)
    out, outp = fn(a, g), fn(a[:, perm], g[:, perm])
    if fn in WEIGHT_FNS:
        out = out[:, perm]
    close(outp, out, rtol=1e-9, atol=1e-9)


@given(pairs(), st.sampled_from(GRAD_METHODS + WEIGHT_FNS))
def test_batch_independence(ag, fn):
    a, g = ag
    each = np.concatenate([fn(a[i:i + 1], g[i:i + 1]) for i in range(a.shape[0])])
    close(fn(a, g), each, rtol=1e-12, atol=1e-12)


@given(st.data())
def test_gradcam_equals_cam_over_z_for_gap_linear_head(data):
    # y^c = sum_k w_k GAP(A^k) + b  =>  dy^c/dA^k_ij = w_k / Z everywhere
    a, _ = data.draw(pairs())
    n, k = a.shape[:2]
    z = int(np.prod(a.shape[2:]))
    w = data.draw(hnp.arrays(np.float64, (n, k), elements=finite))
    g = np.broadcast_to((w / z).reshape((n, k) + (1,) * (a.ndim - 2)), a.shape)
    close(gradcam(a, g, relu=False), cam(a, w) / z, rtol=1e-9, atol=1e-12)
    close(gradcam(a, g), np.maximum(cam(a, w), 0) / z, rtol=1e-9, atol=1e-12)


@given(st.data())
def test_hirescam_equals_gradcam_for_spatially_constant_gradients(data):
    a, _ = data.draw(pairs())
    c = data.draw(hnp.arrays(np.float64, a.shape[:2], elements=finite))
    g = np.broadcast_to(c.reshape(c.shape + (1,) * (a.ndim - 2)), a.shape)
    close(hirescam(a, g), gradcam(a, g, relu=False), rtol=1e-9, atol=1e-9)
    close(hirescam(a, g, relu=True), gradcam(a, g), rtol=1e-9, atol=1e-9)


@given(pairs(g_elements=st.floats(0, 5, width=64)))
def test_layercam_equals_relu_hirescam_for_nonnegative_gradients(ag):
    a, g = ag
    close(layercam(a, g), hirescam(a, g, relu=True), rtol=1e-12, atol=1e-12)


@given(pairs(a_elements=positive))
def test_xgradcam_conservation(ag):
    # sum_k alpha_k sum_ij A^k_ij == sum_k sum_ij A^k_ij g^k_ij (every channel has a nonzero sum)
    a, g = ag
    sp = tuple(range(2, a.ndim))
    lhs = (xgradcam_weights(a, g) * a.sum(axis=sp)).sum(axis=1)
    rhs = (a * g).sum(axis=tuple(range(1, a.ndim)))
    close(lhs, rhs, rtol=1e-9, atol=1e-9)
    # ... and the linear map sums to the same number
    total = xgradcam(a, g, relu=False).sum(axis=tuple(range(1, a.ndim - 1)))
    close(total, rhs, rtol=1e-9, atol=1e-9)


@given(st.data())
def test_gradcampp_constant_gradient_closed_form(data):
    # g^k_ij = c_k everywhere: alpha = c^2 / (2c^2 + S_k c^3) = 1/(2 + S_k c_k) for c_k != 0,
    # so w_k = Z ReLU(c_k) / (2 + S_k c_k); with A >= 0 and c_k > 0 the denominator is > 0.
    a, _ = data.draw(pairs(a_elements=st.floats(0, 5, width=64)))
    n, k = a.shape[:2]
    z = int(np.prod(a.shape[2:]))
    c = data.draw(hnp.arrays(np.float64, (n, k), elements=finite))
    g = np.broadcast_to(c.reshape((n, k) + (1,) * (a.ndim - 2)), a.shape)
    s = a.sum(axis=tuple(range(2, a.ndim)))
    pos = c > 0
    expected = np.zeros_like(c)
    expected[pos] = z * c[pos] / (2 + s[pos] * c[pos])
    close(gradcampp_weights(a, g), expected, rtol=1e-9, atol=1e-12)


@given(pairs(), st.floats(0.01, 100))
def test_gradcam_scales_linearly_with_positive_score_scale(ag, scale):
    # y -> s*y multiplies G by s: Grad-CAM, HiResCAM, LayerCAM maps scale by s (ReLU commutes)
    a, g = ag
    for fn in (gradcam, hirescam, layercam, gradcam_elementwise):
        close(fn(a, scale * g), scale * fn(a, g), rtol=1e-9, atol=1e-9)
    # XGrad-CAM weights too; Grad-CAM++ alpha is NOT scale invariant (1/(2 + S c)), by design


@given(pairs(a_elements=st.sampled_from([0.0, 1.0, -1.0, 2.5]),
             g_elements=st.sampled_from([0.0, 1.0, -1.0, -2.0])),
       st.sampled_from(GRAD_METHODS + WEIGHT_FNS), st.booleans())
def test_no_nan_or_inf_for_finite_input(ag, fn, zeros):
    a, g = ag
    if zeros:
        a = np.zeros_like(a)
    out = fn(a, g)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("fn", GRAD_METHODS + WEIGHT_FNS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_zero_inputs_give_zeros(fn, dtype):
    z = np.zeros((2, 3, 4, 5), dtype)
    out = fn(z, z)
    assert out.dtype == dtype and np.array_equal(out, np.zeros_like(out))
    out = fn(z, np.ones_like(z))
    assert np.isfinite(out).all()


def test_gradcampp_tiny_and_huge_float32_gradients():
    # S = 2.  g = 1e-25: alpha = 1/(2 + 2e-25) = 0.5 although g^2 underflows in float32;
    # w = 0.5 * 1e-25 (second position g = 0 contributes nothing)
    a = np.ones((1, 1, 1, 2), np.float32)
    w = gradcampp_weights(a, np.array([[[[1e-25, 0.0]]]], np.float32))
    assert w.dtype == np.float32
    close(w, [[0.5e-25]], rtol=1e-6, atol=0)
    # g = 1e15 at both positions: g^3 overflows float32; alpha = 1/(2 + 2e15),
    # w = 2 * 1e15 / (2 + 2e15) = 1 (to float32 precision)
    w = gradcampp_weights(a, np.full((1, 1, 1, 2), 1e15, np.float32))
    close(w, [[1.0]], rtol=1e-6, atol=0)


def _pgc_gradcampp_weights(activations, grads):
    """pytorch-grad-cam GradCAMPlusPlus.get_cam_weights, transcribed (2-D maps)."""
    grads_power_2 = grads**2
    grads_power_3 = grads_power_2 * grads
    sum_activations = np.sum(activations, axis=(2, 3))
    eps = 0.000001
    den = 2 * grads_power_2 + sum_activations[:, :, None, None] * grads_power_3 + eps
    aij = grads_power_2 / den
    aij = np.where(grads != 0, aij, 0)
    weights = np.maximum(grads, 0) * aij
    return np.sum(weights, axis=(2, 3))


def _pgc_xgradcam_weights(activations, grads):
    """pytorch-grad-cam XGradCAM.get_cam_weights, transcribed (2-D maps)."""
    sum_activations = np.sum(activations, axis=(2, 3))
    eps = 1e-7
    weights = grads * activations / (sum_activations[:, :, None, None] + eps)
    return weights.sum(axis=(2, 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eps_keywords_reproduce_pytorch_grad_cam(dtype):
    rng = np.random.default_rng(3)
    a = np.maximum(rng.standard_normal((2, 64, 7, 7)), 0).astype(dtype)
    g = (rng.standard_normal((2, 64, 7, 7)) * 1e-2).astype(dtype)
    g[0, :5] = 0
    with np.errstate(all="ignore"):
        ref_pp, ref_x = _pgc_gradcampp_weights(a, g), _pgc_xgradcam_weights(a, g)
    # same operations in the same order: bit for bit
    np.testing.assert_array_equal(gradcampp_weights(a, g, eps=1e-6), ref_pp)
    # sum(A g) / (sum A + eps) vs sum(A g / (sum A + eps)): equal up to rounding
    close(xgradcam_weights(a, g, eps=1e-7), ref_x, rtol=1e-5 if dtype == np.float32 else 1e-12,
          atol=1e-7 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("fn", GRAD_METHODS)
def test_relu_flag_must_be_boolean(fn):
    with pytest.raises(InvalidArgumentError, match="relu: got 'yes'"):
        fn(A, G, relu="yes")
    assert fn(A, G, relu=np.bool_(False)).shape == (1, 2, 2)
