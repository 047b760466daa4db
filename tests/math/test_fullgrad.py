"""Tests of refcam.math.full_gradient (Srinivas & Fleuret 2019, FullGrad)."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refcam.errors import InvalidArgumentError, NonFiniteError, ShapeError
from refcam.math import upsample
from refcam.math.full_gradient import batchnorm_bias, bias_gradient, full_gradient_sum, fullgrad

# (N=1, C=2, H=1, W=2)
G = np.array([[[[1.0, -2.0]], [[0.5, 4.0]]]])
X = np.array([[[[2.0, 1.0]], [[-2.0, 0.5]]]])
# one 1x1 layer with K=2 channels
FB = np.array([[[[3.0]], [[-1.0]]]])


# --------------------------------------------------------------------------- hand cases
def test_fullgrad_hand_case_layer_normalisation():
    # g*x = [[2, -2], [-1, 2]] -> |.| = [[2, 2], [1, 2]]; min 1, max 2 over (C, H, W) ->
    # [[1, 1], [0, 1]] -> channel sum [1, 2].
    # layer: |f^b| = [3, 1] -> min-max [1, 0] -> sum 1 at 1x1 -> upsampled to (1, 2): [1, 1].
    np.testing.assert_array_equal(fullgrad(G, X, []), [[[1.0, 2.0]]])
    np.testing.assert_array_equal(fullgrad(G, X, [FB]), [[[2.0, 3.0]]])
    # two layers add up
    np.testing.assert_array_equal(fullgrad(G, X, [FB, FB]), [[[3.0, 4.0]]])


def test_fullgrad_hand_case_channel_normalisation():
    # per channel: [2, 2] is constant -> [0, 0]; [1, 2] -> [0, 1]; every 1x1 layer channel -> 0
    np.testing.assert_array_equal(fullgrad(G, X, [FB], normalize_over="channel"), [[[0.0, 1.0]]])


@pytest.mark.parametrize(
    "mode, want",
    [
        # |[-1, 3]| -> [0, 1] min-max, then 2 -> 4 samples
        ("linear-align-corners", [0.0, 1 / 3, 2 / 3, 1.0]),  # src = i / 3
        ("linear", [0.0, 0.25, 0.75, 1.0]),  # src = (i + 0.5) / 2 - 0.5, clamped
        ("nearest", [0.0, 0.0, 1.0, 1.0]),  # src = floor(i / 2)
    ],
)
def test_fullgrad_upsampling_modes(mode, want):
    g = np.zeros((1, 1, 1, 4))  # input term all zero -> contributes zeros (mask guard)
    x = np.ones((1, 1, 1, 4))
    fb = np.array([[[[-1.0, 3.0]]]])
    np.testing.assert_allclose(fullgrad(g, x, [fb], upsample_mode=mode)[0, 0], want, rtol=0, atol=1e-15)


def test_fullgrad_eps_reproduces_official_code():
    # official _postProcess: (a - min) / (max(a - min) + 1e-6); |[-1, 3]| = [1, 3] -> [0, 2/(2+1e-6)]
    g = np.zeros((1, 1, 1, 2))
    fb = np.array([[[[-1.0, 3.0]]]])
    got = fullgrad(g, np.ones_like(g), [fb], eps=1e-6)
    np.testing.assert_array_equal(got, [[[0.0, 2.0 / (2.0 + 1e-6)]]])
    assert fullgrad(g, np.ones_like(g), [fb])[0, 0, 1] == 1.0  # eps=0: the exact formula


def test_fullgrad_all_zero_is_zero_without_warning():
    z = np.zeros((2, 3, 4, 4))
    out = fullgrad(z, z, [np.zeros((2, 5, 2, 2))])
    assert out.shape == (2, 4, 4) and not out.any()


def test_fullgrad_3d_volumes():
    # (N=1, C=1, 2, 1, 1) input; |g x| = [1, 3] -> [0, 1]; a 1x1x1 layer with one channel -> 0
    g = np.array([[[[[1.0]], [[3.0]]]]])
    got = fullgrad(g, np.ones_like(g), [np.full((1, 1, 1, 1, 1), 5.0)])
    np.testing.assert_array_equal(got, [[[[0.0]], [[1.0]]]])


def test_fullgrad_dtype():
    g32 = G.astype(np.float32)
    assert fullgrad(g32, X.astype(np.float32), [FB.astype(np.float32)]).dtype == np.float32
    assert fullgrad(g32, X.astype(np.float32), [FB]).dtype == np.float64
    assert fullgrad(G.astype(int), X.astype(int), []).dtype == np.float64


def _official(g, x, layers, eps):
    """Independent transcription of the official FullGrad.saliency loop (per sample, per layer,
    per channel), for N samples and 2-D maps: abs, (a - min)/(max(a - min) + eps) per sample over
    all channels, bilinear align_corners=True upsampling, channel sums."""
    n, _, h, w = g.shape
    out = np.zeros((n, h, w))
    for i in range(n):
        for term in [g[i] * x[i]] + [b[i] for b in layers]:
            a = np.abs(term)
            a = a - a.min()
            a = a / (a.max() + eps)
            for c in range(a.shape[0]):
                ch = a[c]
                hh, ww = ch.shape
                ys = np.arange(h) * ((hh - 1) / (h - 1) if h > 1 else 0.0)
                xs = np.arange(w) * ((ww - 1) / (w - 1) if w > 1 else 0.0)
                y0 = np.minimum(np.floor(ys).astype(int), hh - 1)
                x0 = np.minimum(np.floor(xs).astype(int), ww - 1)
                y1, x1 = np.minimum(y0 + 1, hh - 1), np.minimum(x0 + 1, ww - 1)
                wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
                up = ((1 - wy) * (1 - wx) * ch[np.ix_(y0, x0)] + (1 - wy) * wx * ch[np.ix_(y0, x1)]
                      + wy * (1 - wx) * ch[np.ix_(y1, x0)] + wy * wx * ch[np.ix_(y1, x1)])
                out[i] += up
    return out


def test_fullgrad_equals_official_loop():
    rng = np.random.default_rng(0)
    g, x = rng.standard_normal((2, 3, 8, 6)), rng.standard_normal((2, 3, 8, 6))
    layers = [rng.standard_normal((2, 4, 8, 6)), rng.standard_normal((2, 5, 4, 3)),
              rng.standard_normal((2, 2, 1, 1))]
    np.testing.assert_allclose(fullgrad(g, x, layers, eps=1e-6), _official(g, x, layers, 1e-6),
                               rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- properties
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
# zero or far from the subnormal range: scaling by 2^-20 stays exact
normal = st.just(0.0) | st.floats(1e-100, 1e3) | st.floats(-1e3, -1e-100)


@st.composite
def problems(draw, dtype=np.float64, elements=finite):
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 3))
    s = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    g = draw(hnp.arrays(dtype, (n, c) + s, elements=elements))
    x = draw(hnp.arrays(dtype, (n, c) + s, elements=elements))
    layers = []
    for _ in range(draw(st.integers(0, 3))):
        k = draw(st.integers(1, 3))
        sl = tuple(draw(st.integers(1, 5)) for _ in s)
        layers.append(draw(hnp.arrays(dtype, (n, k) + sl, elements=elements)))
    return g, x, layers


@settings(max_examples=60, deadline=None)
@given(problems(), st.sampled_from(["layer", "channel"]))
def test_fullgrad_bounds(p, over):
    g, x, layers = p
    out = fullgrad(g, x, layers, normalize_over=over)
    assert out.shape == (g.shape[0],) + g.shape[2:]
    # every normalised channel lies in [0, 1] and linear upsampling is a convex combination
    bound = g.shape[1] + sum(b.shape[1] for b in layers)
    assert np.all(out >= 0) and np.all(out <= bound * (1 + 1e-12))


@settings(max_examples=60, deadline=None)
@given(problems(elements=normal), st.integers(-20, 20), st.integers(-20, 20),
       st.sampled_from(["layer", "channel"]))
def test_fullgrad_invariant_to_power_of_two_scaling_and_sign(p, k1, k2, over):
    """ψ = abs + min-max: scaling a term by ±2^k is exact in floating point and leaves it unchanged."""
    g, x, layers = p
    want = fullgrad(g, x, layers, normalize_over=over)
    got = fullgrad(-(2.0**k1) * g, x, [-(2.0**k2) * b for b in layers], normalize_over=over)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_fullgrad_is_a_sum_of_layer_terms(p):
    g, x, layers = p
    assume(layers)
    zero = np.zeros_like(g)
    parts = fullgrad(g, x, []) + sum(fullgrad(zero, x, [b]) for b in layers)
    np.testing.assert_allclose(fullgrad(g, x, layers), parts, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(problems(np.float32))
def test_fullgrad_float32_matches_float64(p):
    g, x, layers = p
    got = fullgrad(g, x, layers)
    assert got.dtype == np.float32
    want = fullgrad(g.astype(np.float64), x.astype(np.float64), [b.astype(np.float64) for b in layers])
    # float32 products g*x are rounded before the min-max: near-constant terms amplify that
    # rounding without bound, so compare where every term has a clear range
    def ranged(a):
        a = np.abs(a.astype(np.float64)).reshape(len(a), -1)
        return bool(np.all(a.max(1) - a.min(1) > 1e-3 * np.maximum(a.max(1), 1e-30)))
    assume(ranged(g.astype(np.float64) * x) and all(ranged(b) for b in layers))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * (1 + len(layers)))


def test_fullgrad_layer_mode_sum_commutes_with_upsampling():
    """Σ_c up(m_c) = up(Σ_c m_c): the implementation upsamples the channel sum once."""
    rng = np.random.default_rng(1)
    b = rng.standard_normal((2, 3, 3, 2))
    g = np.zeros((2, 1, 7, 5))
    a = np.abs(b)
    a = (a - a.min(axis=(1, 2, 3), keepdims=True))
    a = a / a.max(axis=(1, 2, 3), keepdims=True)
    want = upsample(a, (7, 5), "linear-align-corners").sum(axis=1)
    np.testing.assert_allclose(fullgrad(g, np.ones_like(g), [b]), want, rtol=1e-13, atol=1e-14)


# --------------------------------------------------------------------------- completeness
def test_full_gradient_sum_hand_case():
    # f(x) = 2 x_0 - x_1 + relu-free bias 0.5 at x = (3, 4): 6 - 4 + 0.5 = 2.5
    g = np.array([[[[2.0, -1.0]]]])
    x = np.array([[[[3.0, 4.0]]]])
    np.testing.assert_array_equal(full_gradient_sum(g, x, [np.array([[0.5]])]), [2.5])
    np.testing.assert_array_equal(full_gradient_sum(g, x, []), [2.0])


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_full_gradient_sum_completeness_of_a_relu_net(seed):
    """f(x) = v · relu(W x + b1) + b2 (Srinivas & Fleuret 2019, full-gradient decomposition):
    ∇_x f = Wᵀ(v ⊙ [z > 0]), ∂f/∂z = v ⊙ [z > 0], f^b1 = ∂f/∂z ⊙ b1, f^b2 = b2."""
    rng = np.random.default_rng(seed)
    n, c, h, k = 3, 2, 4, 5
    x = rng.standard_normal((n, c, h))
    w, b1, v, b2 = (rng.standard_normal((k, c * h)), rng.standard_normal(k), rng.standard_normal(k),
                    rng.standard_normal())
    z = x.reshape(n, -1) @ w.T + b1
    f = np.maximum(z, 0) @ v + b2
    dz = v * (z > 0)
    gx = (dz @ w).reshape(x.shape)
    got = full_gradient_sum(gx, x, [bias_gradient(dz, b1), np.full((n, 1), b2)])
    np.testing.assert_allclose(got, f, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- bias helpers
def test_bias_gradient_hand_case_and_dense():
    g = np.array([[[[1.0, 2.0]], [[-1.0, 0.5]]]])  # (1, 2, 1, 2)
    np.testing.assert_array_equal(bias_gradient(g, [3.0, -2.0]), [[[[3.0, 6.0]], [[2.0, -1.0]]]])
    np.testing.assert_array_equal(bias_gradient([[1.0, 2.0]], [3.0, 4.0]), [[3.0, 8.0]])


def test_batchnorm_bias_hand_case():
    # beta - gamma mu / sqrt(var + eps): 1 - 2*3/sqrt(3+1) = -2;  0.5 - (-1)(2)/sqrt(0+1) = 2.5
    got = batchnorm_bias([2.0, -1.0], [1.0, 0.5], [3.0, 2.0], [3.0, 0.0], epsilon=1.0)
    np.testing.assert_array_equal(got, [-2.0, 2.5])
    # epsilon 4 -> 1 - 6/sqrt(7) and 0.5 + 2/sqrt(4) = 1.5
    np.testing.assert_allclose(batchnorm_bias([2.0, -1.0], [1.0, 0.5], [3.0, 2.0], [3.0, 0.0], 4.0),
                               [1 - 6 / np.sqrt(7), 1.5], rtol=1e-15)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, err, arg",
    [
        (dict(input_gradients=np.zeros((1, 2, 3))), ShapeError, "input_gradients"),
        (dict(inputs=np.zeros((1, 2, 1, 3))), ShapeError, "input_gradients"),
        (dict(bias_gradients=np.zeros((1, 2, 1, 2))), InvalidArgumentError, "bias_gradients"),
        (dict(bias_gradients=[np.zeros((1, 2, 2))]), ShapeError, "bias_gradients[0]"),
        (dict(bias_gradients=[FB, np.zeros((2, 2, 1, 1))]), ShapeError, "bias_gradients[1]"),
        (dict(bias_gradients=[np.zeros((1, 0, 1, 1))]), ShapeError, "bias_gradients[0]"),
        (dict(bias_gradients=[np.array([[[[np.nan]]]])]), NonFiniteError, "bias_gradients[0]"),
        (dict(inputs=np.full((1, 2, 1, 2), np.inf)), NonFiniteError, "inputs"),
        (dict(upsample_mode="cubic"), InvalidArgumentError, "upsample_mode"),
        (dict(normalize_over="sample"), InvalidArgumentError, "normalize_over"),
        (dict(eps=-1.0), InvalidArgumentError, "eps"),
        (dict(bias_gradients=[np.array([[[["a"]]]])]), Exception, "bias_gradients[0]"),
    ],
)
def test_fullgrad_errors(kwargs, err, arg):
    args = dict(input_gradients=G, inputs=X, bias_gradients=[FB])
    args.update(kwargs)
    with pytest.raises(err) as e:
        fullgrad(args.pop("input_gradients"), args.pop("inputs"), args.pop("bias_gradients"), **args)
    assert arg in str(e.value)


def test_helper_errors():
    with pytest.raises(ShapeError, match="bias"):
        bias_gradient(np.zeros((1, 2, 3)), [1.0, 2.0, 3.0])
    with pytest.raises(ShapeError, match="gradients"):
        bias_gradient(np.zeros(3), [1.0])
    with pytest.raises(InvalidArgumentError, match="var"):
        batchnorm_bias([1.0], [0.0], [0.0], [0.0], epsilon=0.0)
    with pytest.raises(ShapeError, match="mean"):
        batchnorm_bias([1.0], [0.0], [0.0, 1.0], [1.0])
    with pytest.raises(ShapeError, match="inputs"):
        full_gradient_sum(G, np.zeros((1, 2, 2, 2)), [])
    with pytest.raises(ShapeError, match=r"bias_gradients\[0\]"):
        full_gradient_sum(G, X, [np.zeros(1)])
