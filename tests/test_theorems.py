r"""Cross-method theorems: identities the papers prove, checked as hypothesis properties.

Every property draws its inputs from the public strategies of :mod:`refcam.testing`.  The
*GAP → linear* head (:func:`refcam.testing.gap_linear_problems`) has the closed-form gradient
:math:`\partial y^c/\partial A^k_{ij} = w^c_k / Z`, which turns the papers' remarks into exact
identities up to rounding.

Tolerances: a quantity assembled from ``K`` products ``|w||A|`` carries a rounding error of a few
``K * eps * max|w| * max|A|``; :func:`assert_close` uses ``TOL_ULPS`` (64) times ``eps`` of the
dtype times that scale, absolute, plus the same relative term.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import Phase, assume, given, settings, strategies as st

import refcam
from refcam.testing import (
    activations, activations_and_gradients, float_arrays, float_dtypes, gap_linear_problems,
    gradients_like, input_gradients, maps,
)

TOL_ULPS = 64

# Bugs the properties found in refcam.math (minimal counterexamples pinned in the "minimal
# counterexamples" section at the end).  Fixed: none is known now.  A new
# one goes here as {name: pytest.mark.xfail(...)} until it is fixed.
KNOWN_BUGS: dict = {}


#: an expected failure need not be shrunk (shrinking a failure costs tens of seconds)
NO_SHRINK = settings(phases=[Phase.explicit, Phase.reuse, Phase.generate])


def assert_close(actual, expected, scale, dtype, ulps=TOL_ULPS):
    """``|actual - expected| <= ulps * eps(dtype) * (scale + |expected|)`` element-wise."""
    eps = np.finfo(dtype).eps
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=ulps * eps, atol=ulps * eps * scale,
                               equal_nan=False)  # a NaN never passes, not even against NaN


def sum_scale(a, w):
    """Scale of ``sum_k w_k A^k``: ``K * max|w| * max|A|``."""
    a = np.asarray(a, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    return a.shape[1] * np.abs(w).max(initial=0) * np.abs(a).max(initial=0)


def spatial_sum(m):
    return np.asarray(m, dtype=np.float64).reshape(m.shape[0], -1).sum(axis=1)


def bcast(w, a):
    """(N, K) -> broadcastable against (N, K, *S)."""
    return w.reshape(w.shape + (1,) * (a.ndim - 2))


# --------------------------------------------------------------------------- the method table
# Each entry: name -> f(A, G, W, S, B) where A, G are (N,K,*S), W are CAM class weights (N,K),
# S are per-channel scores (N,K) (Score-CAM / Ablation-CAM), B is the unablated score (N,).
# Every method returns the raw map (N, *S) with its paper's default ReLU.

GRADIENT_METHODS = {
    "gradcam": lambda a, g: refcam.gradcam(a, g),
    "gradcampp": lambda a, g: refcam.gradcampp(a, g),
    "xgradcam": lambda a, g: refcam.xgradcam(a, g),
    "layercam": lambda a, g: refcam.layercam(a, g),
    "hirescam": lambda a, g: refcam.hirescam(a, g),
    "gradcam_elementwise": lambda a, g: refcam.gradcam_elementwise(a, g),
    "eigengradcam": lambda a, g: refcam.eigengradcam(a, g),
}

METHODS = {
    **{name: (lambda f: lambda a, g, w, s, b: f(a, g))(f) for name, f in GRADIENT_METHODS.items()},
    "cam": lambda a, g, w, s, b: refcam.cam(a, w),
    "eigencam": lambda a, g, w, s, b: refcam.eigencam(a),
    "scorecam": lambda a, g, w, s, b: refcam.scorecam(a, s),
    "ablationcam": lambda a, g, w, s, b: refcam.ablationcam(a, s, b),
}

#: methods that are positively homogeneous in the gradient (G -> sG multiplies the map by s).
HOMOGENEOUS = ["gradcam", "xgradcam", "layercam", "hirescam", "gradcam_elementwise"]


MAGNITUDES = [1e-30, 1.0, 10.0, 1e15]


@st.composite
def method_inputs(draw, dtype=None, magnitudes=None, **shape_bounds):
    """(A, G, W, S, B) of one dtype for the METHODS table.

    ``magnitudes``: a list of value bounds; each of A, G, W, S and B draws its own from it
    (default: all 10).
    """
    dt = draw(float_dtypes()) if dtype is None else np.dtype(dtype)
    labels = ["|A|", "|G|", "|W|", "|S|", "|B|"]
    mag = st.just(10.0) if magnitudes is None else st.sampled_from(magnitudes)
    mag_a, mag_g, mag_w, mag_s, mag_b = (draw(mag, label=lab) for lab in labels)
    shape_bounds.setdefault("max_positions", 36)
    a = draw(activations(dtype=dt, magnitude=mag_a, **shape_bounds))
    g = draw(gradients_like(a, magnitude=mag_g))
    n, k = a.shape[:2]
    w = draw(float_arrays((n, k), dtype=dt, magnitude=mag_w))
    s = draw(float_arrays((n, k), dtype=dt, magnitude=mag_s))
    b = draw(float_arrays((n,), dtype=dt, magnitude=mag_b))
    return a, g, w, s, b


def top_two_singular_gap(mats):
    """min over samples of (s1 - s2) / max(s1, tiny) for a batch of (Z, K) matrices."""
    gaps = []
    for m in mats:
        sv = np.linalg.svd(m, compute_uv=False)
        s1 = sv[0] if sv.size else 0.0
        s2 = sv[1] if sv.size > 1 else 0.0
        gaps.append((s1 - s2) / s1 if s1 > 0 else 0.0)
    return min(gaps)


# --------------------------------------------------------------------------- Grad-CAM vs CAM

@given(st.data())
def test_gradcam_equals_cam_over_z_on_a_gap_linear_head(data):
    # Selvaraju et al. 2017, Sec. 3.1 "Grad-CAM generalizes CAM": alpha_k^c = w_k^c / Z, so
    # sum_k alpha_k A^k = (1/Z) sum_k w_k A^k, with ReLU on both sides: ReLU(cam)/Z.
    dt = data.draw(float_dtypes())
    p = data.draw(gap_linear_problems(dtype=dt))
    scale = sum_scale(p.activations, p.class_weights) / p.Z
    raw_cam = refcam.cam(p.activations, p.class_weights, relu=False)
    assert_close(refcam.gradcam(p.activations, p.gradients, relu=False), raw_cam / p.Z, scale, dt)
    assert_close(refcam.gradcam(p.activations, p.gradients, relu=True),
                 np.maximum(raw_cam, 0) / p.Z, scale, dt)
    assert_close(refcam.cam(p.activations, p.class_weights, relu=True), np.maximum(raw_cam, 0),
                 scale * p.Z, dt)


@given(st.data())
def test_cam_is_the_class_weighted_sum(data):
    # Zhou et al. 2016, Eq. (2): M_c = sum_k w_k^c f_k, computed here with plain NumPy.
    p = data.draw(gap_linear_problems(dtype=data.draw(float_dtypes())))
    expected = (bcast(p.class_weights.astype(np.float64), p.activations)
                * p.activations.astype(np.float64)).sum(axis=1)
    assert_close(refcam.cam(p.activations, p.class_weights, relu=False), expected,
                 sum_scale(p.activations, p.class_weights), p.activations.dtype)


@given(st.data())
def test_blocks_reproduce_the_head_gap_gives_the_logits_and_gradient_weights_give_w_over_z(data):
    # y = W GAP(A) + b (Zhou et al. 2016, Eq. 1-2) and alpha_k = mean_ij dy^c/dA^k_ij = w_k^c / Z
    # (Selvaraju et al. 2017, Eq. 1), against the NumPy oracle of the strategy.
    dt = data.draw(float_dtypes())
    p = data.draw(gap_linear_problems(dtype=dt))
    pooled = refcam.gap(p.activations)
    assert pooled.dtype == dt and pooled.shape == p.activations.shape[:2]
    logits = pooled.astype(np.float64) @ p.weight.T.astype(np.float64) + p.bias
    assert_close(logits, p.logits, sum_scale(p.activations, p.weight) + np.abs(p.bias).max(), dt)
    alpha = refcam.gradient_weights(p.gradients)
    assert alpha.dtype == dt
    assert_close(alpha, p.class_weights.astype(np.float64) / p.Z, np.abs(p.class_weights).max(), dt)
    assert_close(refcam.weighted_sum(p.activations, p.class_weights),
                 refcam.cam(p.activations, p.class_weights, relu=False),
                 sum_scale(p.activations, p.class_weights), dt)


# --------------------------------------------------------------------------- HiResCAM, LayerCAM

@given(st.data())
def test_hirescam_equals_gradcam_for_spatially_constant_gradients(data):
    # Draelos & Carin 2020: HiResCAM = sum_k G^k * A^k; with G^k constant, G^k = alpha_k (Grad-CAM).
    a, g = data.draw(activations_and_gradients(dtype=data.draw(float_dtypes()),
                                               spatially_constant_gradients=True))
    scale = sum_scale(a, g)
    for relu in (False, True):
        assert_close(refcam.hirescam(a, g, relu=relu), refcam.gradcam(a, g, relu=relu), scale,
                     a.dtype)


@given(st.data())
def test_layercam_equals_relu_hirescam_for_nonnegative_gradients(data):
    # Jiang et al. 2021, Eq. (5)-(6): LayerCAM = ReLU(sum_k ReLU(g^k) * A^k); with g >= 0 the inner
    # ReLU is the identity, leaving ReLU(HiResCAM).
    a, g = data.draw(activations_and_gradients(dtype=data.draw(float_dtypes()),
                                               nonnegative_gradients=True))
    scale = sum_scale(a, g)
    hires = refcam.hirescam(a, g, relu=False)
    assert_close(refcam.layercam(a, g), np.maximum(hires, 0), scale, a.dtype)
    assert_close(refcam.layercam(a, g, relu=False), hires, scale, a.dtype)


@given(st.data())
def test_elementwise_gradcam_bounds_relu_hirescam_with_equality_when_products_are_nonnegative(data):
    # sum_k ReLU(g^k A^k) >= ReLU(sum_k g^k A^k) (positive part is subadditive), with equality when
    # every product g^k_ij A^k_ij >= 0, e.g. post-ReLU activations and non-negative gradients.
    dt = data.draw(float_dtypes())
    a, g = data.draw(activations_and_gradients(dtype=dt))
    scale = sum_scale(a, g)
    elementwise = refcam.gradcam_elementwise(a, g).astype(np.float64)
    hires = np.maximum(refcam.hirescam(a, g, relu=False).astype(np.float64), 0)
    assert (elementwise >= hires - TOL_ULPS * np.finfo(dt).eps * scale).all()
    a2, g2 = np.abs(a), np.abs(g)
    assert_close(refcam.gradcam_elementwise(a2, g2), refcam.hirescam(a2, g2, relu=False), scale, dt)


# --------------------------------------------------------------------------- XGrad-CAM

@given(st.data())
def test_xgradcam_conserves_sum_of_activation_times_gradient(data):
    # Fu et al. 2020, Eq. (6)-(8): alpha_k = sum_ij (A^k_ij / sum_ab A^k_ab) G^k_ij, so
    # sum_ij sum_k alpha_k A^k_ij = sum_k sum_ij A^k_ij G^k_ij whenever every channel sum is nonzero
    # (strictly positive activations guarantee it).
    dt = data.draw(float_dtypes())
    a = data.draw(activations(dtype=dt, min_value=0.5, max_value=10.0))
    g = data.draw(gradients_like(a))
    expected = (a.astype(np.float64) * g).reshape(a.shape[0], -1).sum(axis=1)
    scale = sum_scale(a, g) * np.prod(a.shape[2:])
    assert_close(spatial_sum(refcam.xgradcam(a, g, relu=False)), expected, scale, dt)


@given(st.data())
def test_xgradcam_map_sums_to_the_score_minus_bias_on_a_gap_linear_head(data):
    # Fu et al. 2020, the "conservation" axiom: sum over the map = y^c for a ReLU-CNN without biases
    # (Euler's theorem); on a GAP-linear head sum_k sum_ij A G = sum_k w_k mean(A^k) = y^c - b_c.
    dt = data.draw(float_dtypes())
    p = data.draw(gap_linear_problems(dtype=dt, nonnegative_activations=True, min_activation=0.5))
    n = p.activations.shape[0]
    rows = np.arange(n)
    expected = p.logits.astype(np.float64)[rows, p.targets] - p.bias.astype(np.float64)[p.targets]
    scale = sum_scale(p.activations, p.class_weights) + np.abs(p.bias).max()
    assert_close(spatial_sum(refcam.xgradcam(p.activations, p.gradients, relu=False)), expected,
                 scale, dt)


# --------------------------------------------------------------------------- Grad-CAM++

def gradcampp_closed_form_weights(p):
    r"""Grad-CAM++ (Chattopadhyay et al. 2018, Eq. 19 and 10) with the constant gradient g = w_k/Z:

    alpha^{kc}_{ij} = g^2 / (2 g^2 + sum_ab A^k_ab g^3) = 1 / (2 + m_k w_k)      (g != 0)
    w_k^{++} = sum_ij alpha^{kc}_{ij} ReLU(g) = Z ReLU(w_k / Z) / (2 + m_k w_k)
             = ReLU(w_k) / (2 + m_k w_k)

    with m_k = mean_ij A^k_ij (since sum_ab A^k_ab g = Z m_k w_k / Z).  Channels with w_k <= 0
    weigh 0.
    """
    w = p.class_weights.astype(np.float64)
    m = p.activations.astype(np.float64).reshape(w.shape + (-1,)).mean(axis=2)
    denom = 2.0 + m * w
    out = np.zeros_like(w)
    pos = w > 0
    out[pos] = w[pos] / denom[pos]
    return out, denom


@given(st.data())
def test_gradcampp_closed_form_on_a_gap_linear_head_post_relu(data):
    # Post-ReLU activations: m_k >= 0, so the denominator 2 + m_k w_k >= 2 for w_k > 0.
    dt = data.draw(float_dtypes())
    p = data.draw(gap_linear_problems(dtype=dt, nonnegative_activations=True))
    weights, _ = gradcampp_closed_form_weights(p)
    assert_close(refcam.gradcampp_weights(p.activations, p.gradients), weights,
                 np.abs(weights).max(initial=0), dt)
    expected = (bcast(weights, p.activations) * p.activations.astype(np.float64)).sum(axis=1)
    assert_close(refcam.gradcampp(p.activations, p.gradients, relu=False), expected,
                 sum_scale(p.activations, weights), dt)
    assert_close(refcam.gradcampp(p.activations, p.gradients, relu=True), np.maximum(expected, 0),
                 sum_scale(p.activations, weights), dt)


@given(gap_linear_problems(magnitude=5.0))
def test_gradcampp_closed_form_on_a_gap_linear_head_signed_activations(p):
    # Signed activations: the formula still holds wherever the denominator is away from 0.
    weights, denom = gradcampp_closed_form_weights(p)
    assume(np.all(np.abs(denom[p.class_weights > 0]) > 1e-3))
    expected = (bcast(weights, p.activations) * p.activations).sum(axis=1)
    scale = sum_scale(p.activations, weights) * max(1.0, np.abs(p.class_weights).max()
                                                    * np.abs(p.activations).max())
    assert_close(refcam.gradcampp(p.activations, p.gradients, relu=False), expected, scale,
                 np.float64, ulps=1024)


# --------------------------------------------------------------------------- scale invariance

def _minmax_range_ok(m, scale, ratio=1e-2):
    """The map's range is a real one: above ``ratio`` times the scale of its rounding errors
    (``K eps scale`` each, in both maps; min-max divides them by the range, so a range of 1e-3 of
    the scale left float32 errors of ~4.8e-4, at the 4096-ulp bound; 1e-2 keeps a 10x margin)."""
    m = np.asarray(m, dtype=np.float64).reshape(m.shape[0], -1)
    rng = m.max(axis=1) - m.min(axis=1)
    return np.all((rng == 0) | (rng > ratio * scale))


@pytest.mark.parametrize("name", HOMOGENEOUS + ["cam", "eigengradcam"])
@given(data=st.data())
def test_minmax_normalised_maps_are_invariant_to_positive_scaling_of_the_score(name, data):
    # y -> s y (W -> sW, b -> sb, s > 0) multiplies G by s; these methods are positively homogeneous
    # in G, so the min-max normalised map does not change.  (Grad-CAM++ is NOT: its weights
    # ReLU(w)/(2 + m w) are not homogeneous in w — see the closed-form tests above.)
    dt = data.draw(float_dtypes())
    p = data.draw(gap_linear_problems(dtype=dt))
    s = data.draw(st.sampled_from([0.25, 3.0, 1000.0]) | st.floats(0.01, 100.0))
    q = p.scaled(s)
    f = METHODS[name]
    m1 = f(p.activations, p.gradients, p.class_weights, None, None)
    m2 = f(q.activations, q.gradients, q.class_weights, None, None)
    scale = sum_scale(p.activations, p.class_weights)
    # near-constant maps amplify rounding without bound under min-max: require a real range
    # (divide in float64: a float32 division by s can merge adjacent floats and hide a range)
    assume(_minmax_range_ok(m1, scale) and _minmax_range_ok(np.asarray(m2, dtype=np.float64) / s, scale))
    if name == "eigengradcam":
        # A tie between the two largest singular values of A*G leaves the principal direction
        # undefined (any unit vector of the tied subspace is a first singular vector), so no
        # invariance can hold there: require a clear gap, as the Eigen-CAM theorems below do.
        z = (p.activations * p.gradients).reshape(p.activations.shape[0], p.activations.shape[1], -1)
        assume(top_two_singular_gap(np.swapaxes(z, 1, 2).astype(np.float64)) > 1e-3)
    n1, n2 = refcam.normalize(m1), refcam.normalize(m2)
    assert_close(n1, n2, 1.0, dt, ulps=4096)


# ----------------------------------------------------- every method: structure, robustness, dtype

@pytest.mark.parametrize("name", sorted(set(METHODS) - set(KNOWN_BUGS)))
@given(data=st.data())
def test_every_method_structure_and_robustness(name, data):
    check_structure_and_robustness(name, data)


if KNOWN_BUGS:  # (an empty parametrisation would only report a skip)
    @pytest.mark.parametrize("name", [pytest.param(n, marks=m) for n, m in sorted(KNOWN_BUGS.items())])
    @NO_SHRINK
    @given(data=st.data())
    def test_every_method_structure_and_robustness_known_bugs(name, data):
        check_structure_and_robustness(name, data)


def _ablation_representable(a, s, b):
    """Whether the exact Ablation-CAM weights (y - y_k)/y and map sum_k w_k A^k fit the dtype
    (evaluated in extended precision, np.longdouble, with a 1 % margin against rounding at the
    edge; draws within the margin are discarded)."""
    big = np.longdouble(np.finfo(a.dtype).max)
    y = b.astype(np.longdouble)[:, None]
    w = np.where(y != 0, (y - s.astype(np.longdouble)) / np.where(y != 0, y, 1), 0)
    m = np.einsum("nk,nk...->n...", w, a.astype(np.longdouble))
    top = max(np.abs(w).max(initial=0), np.abs(m).max(initial=0))
    assume(not (big / np.longdouble(1.01) < top < big * np.longdouble(1.01)))
    return bool(top < big)


def check_structure_and_robustness(name, data):
    """For every method and finite input of any magnitude, float32 or float64:

    * the raw map has shape (N, *S) and the input dtype, and is finite; so are ``normalize`` (in
      [0, 1]) and ``upsample`` of it, in every mode;
    * batch items are independent: the batch result equals the results of the items one by one;
    * channel order does not matter: permuting K in A, G, class weights and channel scores gives
      the same map (for the Eigen methods only where the first principal direction and the sign
      rule are well conditioned: a tie makes them ambiguous by definition).
    """
    a, g, w, s, b = data.draw(method_inputs(magnitudes=MAGNITUDES))
    f = METHODS[name]
    dt = a.dtype
    if name == "ablationcam" and not _ablation_representable(a, s, b):
        # the exact weights or map exceed the dtype: a clear error, never inf/NaN
        with pytest.raises(refcam.InvalidArgumentError, match="baseline_score|activations"):
            f(a, g, w, s, b)
        return
    m = f(a, g, w, s, b)
    assert m.shape == (a.shape[0],) + a.shape[2:]
    assert m.dtype == dt, "float32 in must give float32 out (float64 likewise)"
    assert np.isfinite(m).all()
    n = refcam.normalize(m)
    assert n.dtype == dt and np.isfinite(n).all() and n.min() >= 0 and n.max() <= 1
    size = tuple(data.draw(st.integers(1, 9)) for _ in a.shape[2:])
    modes = ["linear", "linear-align-corners", "nearest", "nearest-exact"]
    mode = data.draw(st.sampled_from(modes))
    u = refcam.upsample(n, size, mode=mode)
    assert u.shape == (a.shape[0],) + size and u.dtype == dt and np.isfinite(u).all()

    eigen = name.startswith("eigen")
    ulps = 1024 if eigen else TOL_ULPS
    tol_scale = sum_scale(a, np.abs(g).max() + np.abs(w).max() + np.abs(s).max() + 1)
    singles = np.concatenate([f(a[i:i + 1], g[i:i + 1], w[i:i + 1], s[i:i + 1], b[i:i + 1])
                              for i in range(a.shape[0])])
    assert_close(m, singles, tol_scale, dt, ulps=ulps)

    perm = np.array(data.draw(st.permutations(range(a.shape[1])), label="perm"))
    if eigen:
        o = a if name == "eigencam" else a * g
        z = o.reshape(o.shape[0], o.shape[1], -1).transpose(0, 2, 1).astype(np.float64)
        if not (top_two_singular_gap(z) > 1e-3 and _sum_rule_is_clear(m, dt)):
            return
    assert_close(f(a[:, perm], g[:, perm], w[:, perm], s[:, perm], b), m, tol_scale, dt, ulps=ulps)


# --------------------------------------------------------------------------- Eigen-CAM

def _sum_rule_is_clear(p, dt, margin=4.0):
    """The sum-sign rule is decided away from its tie tolerance sqrt(eps) * sum|p|, per sample."""
    p = np.asarray(p, dtype=np.float64).reshape(len(p), -1)
    tol = np.sqrt(np.finfo(dt).eps) * np.abs(p).sum(axis=1)
    total = np.abs(p.sum(axis=1))
    return bool(np.all(total > margin * tol))


@given(st.data())
def test_eigencam_of_rank_one_activations_is_the_common_pattern(data):
    # Bany Muhammad & Yeasin 2020 (Eigen-CAM): projection of O (Z x K) on its first right singular
    # vector.  For A^k = c_k P (rank one), O = P c^T, v_1 = +-c/|c| and O v_1 = +-|c| P; the sum
    # rule fixes the sign so that the map sums to a positive number: |c| P sign(sum P).
    dt = data.draw(float_dtypes())
    shape = data.draw(st.sampled_from([(2, 3, 4, 4), (1, 2, 6), (2, 4, 2, 3, 3), (1, 1, 5, 5)]))
    n, k, spatial = shape[0], shape[1], shape[2:]
    c = data.draw(float_arrays((n, k), min_value=0.5, max_value=3.0))
    c = c * np.where(data.draw(float_arrays((n, k), min_value=-1.0, max_value=1.0)) >= 0, 1.0, -1.0)
    # drawn in the tested dtype: a float64 pattern below float32's range would flush to zero in A
    pattern = data.draw(float_arrays((n,) + spatial, dtype=dt, magnitude=5.0)).astype(np.float64)
    assume(_sum_rule_is_clear(pattern, np.float64, margin=64))
    # and its squares must stay representable in dt (the SVD forms them)
    assume(np.abs(pattern).max() >= 1e4 * np.sqrt(np.finfo(dt).tiny))
    a = (c.reshape((n, k) + (1,) * len(spatial)) * pattern[:, None]).astype(dt)
    expected = (np.linalg.norm(c, axis=1).reshape((n,) + (1,) * len(spatial)) * pattern
                * np.sign(pattern.reshape(n, -1).sum(axis=1)).reshape((n,) + (1,) * len(spatial)))
    out = refcam.eigencam(a)
    assert out.dtype == dt
    assert_close(out, expected, np.abs(expected).max(), dt, ulps=1024)


@pytest.mark.parametrize("name", ["eigencam", "eigengradcam"])
@pytest.mark.parametrize("sign", ["sum", "max-abs"])
@given(data=st.data())
def test_eigen_methods_are_deterministic_under_a_sign_flip_of_the_activations(name, sign, data):
    # A -> -A flips O (and A*G), hence O v_1; the documented sign rule must undo it.
    dt = data.draw(float_dtypes())
    a, g = data.draw(activations_and_gradients(dtype=dt))
    o = a if name == "eigencam" else a * g
    z = o.reshape(o.shape[0], o.shape[1], -1).transpose(0, 2, 1).astype(np.float64)
    assume(top_two_singular_gap(z) > 1e-3)
    f = (lambda x: refcam.eigencam(x, sign=sign)) if name == "eigencam" else (
        lambda x: refcam.eigengradcam(x, g, sign=sign))
    m = f(a)
    flat = np.asarray(m, dtype=np.float64).reshape(len(m), -1)
    if sign == "sum":
        assume(_sum_rule_is_clear(m, dt))
    else:  # the largest |value| must be unique, else the rule's reference entry is ambiguous
        top2 = np.sort(np.abs(flat), axis=1)[:, -2:] if flat.shape[1] > 1 else None
        assume(top2 is None or np.all(top2[:, 1] - top2[:, 0] > 1e-3 * top2[:, 1]))
    assume(np.abs(flat).max() > 0)
    assert_close(f(-a), m, np.abs(flat).max(), dt, ulps=4096)


# --------------------------------------------------------------------------- upsampling

@st.composite
def affine_maps(draw):
    """(dtype, coefficients c of f(x) = c_0 + sum_d c_d x_d, input size, output size)."""
    dt = draw(float_dtypes())
    rank = draw(st.integers(1, 3))
    in_size = tuple(draw(st.integers(1, 6)) for _ in range(rank))
    out_size = tuple(draw(st.integers(1, 12)) for _ in range(rank))
    n = draw(st.integers(1, 2))
    # drawn in dt itself: a float64 draw cast to float32 can land on a subnormal (or 0), where
    # the upsampled float32 map cannot reproduce the float64 expectation
    coef = draw(float_arrays((n, rank + 1), dtype=dt, magnitude=5.0)).astype(np.float64)
    return dt, coef, in_size, out_size


def _affine(coef, coords):
    """c_0 + sum_d c_d coords_d on the grid spanned by the 1-D coordinate vectors ``coords``."""
    grids = np.meshgrid(*coords, indexing="ij")
    out = np.broadcast_to(coef[:, :1].reshape((-1,) + (1,) * len(coords)),
                          (coef.shape[0],) + grids[0].shape).copy()
    for d, grid in enumerate(grids):
        out += coef[:, d + 1].reshape((-1,) + (1,) * len(coords)) * grid
    return out


@given(affine_maps())
def test_linear_half_pixel_upsampling_reproduces_affine_functions_in_the_interior(case):
    # Half-pixel (align_corners=False) sampling: output index j reads the input at
    # x = (j + 1/2) in/out - 1/2; multilinear interpolation is exact on affine functions wherever
    # no clamping happens, i.e. 0 <= x <= in - 1 on every axis.
    dt, coef, in_size, out_size = case
    maps = _affine(coef, [np.arange(s, dtype=np.float64) for s in in_size]).astype(dt)
    src = [(np.arange(o) + 0.5) * i / o - 0.5 for i, o in zip(in_size, out_size)]
    inside = np.ix_(*[np.flatnonzero((x >= 0) & (x <= i - 1)) for x, i in zip(src, in_size)])
    out = refcam.upsample(maps, out_size, mode="linear")
    assert out.shape == (coef.shape[0],) + out_size and out.dtype == dt
    expected = _affine(coef, src)
    scale = np.abs(coef).sum() * max(in_size)
    assert_close(out[(slice(None),) + inside], expected[(slice(None),) + inside], scale, dt)


@given(affine_maps())
def test_align_corners_upsampling_reproduces_affine_functions_everywhere(case):
    # align_corners=True: x = j (in - 1)/(out - 1) (x = 0 when out = 1) stays inside [0, in - 1].
    dt, coef, in_size, out_size = case
    maps = _affine(coef, [np.arange(s, dtype=np.float64) for s in in_size]).astype(dt)
    src = [np.arange(o) * (i - 1) / (o - 1) if o > 1 else np.zeros(1)
           for i, o in zip(in_size, out_size)]
    out = refcam.upsample(maps, out_size, mode="linear-align-corners")
    scale = np.abs(coef).sum() * max(in_size)
    assert_close(out, _affine(coef, src), scale, dt)


# --------------------------------------------------------------------------- perturbation methods

@given(st.data())
def test_scorecam_softmax_ignores_a_common_shift_and_the_baseline_is_a_shift(data):
    # Wang et al. 2020, Eq. (5): softmax(s + t) = softmax(s); and alpha_k = f(X o H^k) - f(X_b)
    # (Definition 2) so a baseline score is the same as subtracting it from every channel score.
    dt = data.draw(float_dtypes())
    a, g, w, s, b = data.draw(method_inputs(dtype=dt))
    t = np.asarray(data.draw(st.floats(-50, 50)), dtype=dt)
    scale = sum_scale(a, np.ones(1))
    assert_close(refcam.scorecam(a, s + t, softmax=True, relu=False),
                 refcam.scorecam(a, s, softmax=True, relu=False), scale, dt, ulps=256)
    assert_close(refcam.scorecam(a, s, baseline_score=b, relu=False),
                 refcam.scorecam(a, s - b[:, None], relu=False),
                 sum_scale(a, np.abs(s).max() + np.abs(b).max()), dt)
    # without softmax nor baseline the channel scores are the CAM weights
    assert_close(refcam.scorecam(a, w, relu=False), refcam.cam(a, w, relu=False), sum_scale(a, w),
                 dt)


@given(st.data())
def test_ablationcam_recovers_cam_weights_and_ignores_the_score_scale(data):
    # Desai & Ramaswamy 2020: w_k = (y^c - y^c_k) / y^c.  Scores y_k = y (1 - v_k) give w = v, and
    # (y, y_k) -> (t y, t y_k) leaves w unchanged for any t != 0.
    dt = data.draw(float_dtypes())
    a, g, v, s, y = data.draw(method_inputs(dtype=dt))
    y = np.where(np.abs(y) < 0.5, 1.0, y).astype(dt)      # a baseline score away from 0
    scores = (y[:, None].astype(np.float64) * (1 - v.astype(np.float64))).astype(dt)
    scale = sum_scale(a, 2 + np.abs(v).max())
    assert_close(refcam.ablationcam(a, scores, y, relu=False), refcam.cam(a, v, relu=False),
                 scale, dt, ulps=256)
    t = data.draw(st.sampled_from([-3.0, 0.5, 8.0]))
    assert_close(refcam.ablationcam(a, (t * scores).astype(dt), (t * y).astype(dt), relu=False),
                 refcam.ablationcam(a, scores, y, relu=False), scale, dt)


# --------------------------------------------------------------------------- normalisation

@given(maps(dtype=np.float64) | maps(dtype=np.float32), st.floats(0.01, 100.0),
       st.floats(-100, 100))
def test_minmax_normalisation_is_invariant_to_positive_affine_maps(m, scale, shift):
    # (a m + b - min)/(max - min) is the same for every a > 0: min-max normalisation only sees the
    # order and the relative spacing of the values.
    dt = m.dtype
    m64 = m.astype(np.float64)
    rng = m64.reshape(len(m), -1).max(axis=1) - m64.reshape(len(m), -1).min(axis=1)
    size = np.abs(m64).max(initial=0) * scale + abs(shift)
    assume(np.all((rng == 0) | (rng * scale > 1e-3 * size)))
    moved = (m64 * scale + shift).astype(dt)
    moved_rng = moved.reshape(len(m), -1).max(axis=1) - moved.reshape(len(m), -1).min(axis=1)
    assume(np.all((rng == 0) == (moved_rng == 0)))     # rounding may not create/destroy a range
    assert_close(refcam.normalize(moved), refcam.normalize(m), 1.0, dt, ulps=8 * 4096)


# --------------------------------------------------------------------------- Integrated Gradients

@st.composite
def quadratic_ig_problems(draw):
    """F(x) = 1/2 x^T Q x + c^T x per sample on (N, C, *S) inputs, with inputs and a baseline."""
    x = draw(input_gradients(magnitude=3.0, max_positions=12, batch=(1, 2)))
    d = int(np.prod(x.shape[1:]))
    q = draw(float_arrays((d, d), magnitude=2.0))
    q = (q + q.T) / 2
    c = draw(float_arrays((d,), magnitude=2.0))
    base = draw(float_arrays(x.shape, magnitude=3.0))
    return x, base, q, c


def _quadratic(xs, q, c):
    flat = xs.reshape(xs.shape[0], -1)
    return 0.5 * np.einsum("ni,ij,nj->n", flat, q, flat) + flat @ c


@pytest.mark.parametrize("rule", ["gauss-legendre", "trapezoid", "riemann-middle", "riemann-left",
                                  "riemann-right", "trapezoid-captum"])
@given(problem=quadratic_ig_problems(), n_steps=st.integers(2, 9))
def test_integrated_gradients_completeness_on_quadratic_models(rule, problem, n_steps):
    # Sundararajan et al. 2017, Prop. 1 (completeness): sum_i IG_i = F(x) - F(x').  For quadratic F
    # the path gradient is affine in alpha, p + q alpha with q = Q d, d = x - x', so every rule that
    # integrates affine functions exactly (Gauss-Legendre, trapezoid, midpoint) is complete; the
    # others have a closed-form error:  left/right Riemann -/+ d^T Q d / (2n);
    # captum's trapezoid (weights 1/n, ends 1/(2n), sum (n-1)/n) gives (n-1)/n (F(x) - F(x')).
    x, base, q, c = problem
    alphas, _ = refcam.integration_points(n_steps, rule)
    path = refcam.path_inputs(x, base, alphas)                           # (N, n, C, *S)
    flat = path.reshape(path.shape[0], n_steps, -1)
    grads = (flat @ q + c).reshape(path.shape)                           # Q x + c (Q symmetric)
    ig = refcam.integrated_gradients(grads, x, base, rule)
    total = ig.reshape(len(x), -1).sum(axis=1)
    delta = _quadratic(x, q, c) - _quadratic(base, q, c)
    d = (x - base).reshape(len(x), -1)
    dqd = np.einsum("ni,ij,nj->n", d, q, d)
    expected = {"riemann-left": delta - dqd / (2 * n_steps),
                "riemann-right": delta + dqd / (2 * n_steps),
                "trapezoid-captum": delta * (n_steps - 1) / n_steps}.get(rule, delta)
    size = d.shape[1] * (np.abs(q).max() * 36 + 2 * 6)
    assert_close(total, expected, size, np.float64, ulps=256)


# ------------------------------------------------------------------------ minimal counterexamples
# Found by the properties above against the first version of refcam.math (see the report); kept
# as plain tests so the regressions stay pinned even if hypothesis stops generating them.

def test_ablationcam_tiny_baseline_score_gives_finite_weights():
    # (y - y_k) / y with y = 1e-308, y_k = 4: the exact weight 1 - 4e308 is not representable
    # (|.| > 1.8e308) although every input is finite.  It was -inf with an overflow warning; the
    # reference behaviour is a clear error naming baseline_score and the sample (never inf/NaN),
    # with or without the ReLU.
    for relu in (False, True):
        with pytest.raises(refcam.InvalidArgumentError, match=r"baseline_score.*sample 1"):
            refcam.ablationcam(np.ones((2, 1, 1)), np.array([[4.0], [4.0]]), np.array([1.0, 1e-308]),
                               relu=relu)
    # representable neighbours stay exact: y = 1e-300 gives w = 1 - 4e300 (= -4e300 in float64)
    out = refcam.ablationcam(np.ones((1, 1, 1)), np.array([[4.0]]), np.array([1e-300]), relu=False)
    np.testing.assert_array_equal(out, [[1 - 4.0 / 1e-300]])
    # y - y_k overflows but the weight (y - y_k) / y = 2 is representable: no error
    w = refcam.ablationcam_weights(np.array([[-1.5e308]]), np.array([1.5e308]))
    np.testing.assert_array_equal(w, [[2.0]])


@pytest.mark.parametrize("dtype, g", [(np.float32, 1e13), (np.float64, 1e160)])
def test_gradcampp_large_gradients_give_the_closed_form_not_nan(dtype, g):
    # alpha = g^2 / (2 g^2 + sum(A) g^3) = 1 / (2 + g sum(A)) for g != 0: with A = [1, 1] (sum 2)
    # and g constant, w = sum_ij alpha * relu(g) = 2 g / (2 + 2 g), map = w * A ~= [1, 1].
    a = np.ones((1, 1, 2), dtype=dtype)
    grads = np.full((1, 1, 2), g, dtype=dtype)
    expected = 2 * g / (2 + 2 * g)
    np.testing.assert_allclose(refcam.gradcampp(a, grads, relu=False), [[expected, expected]],
                               rtol=8 * np.finfo(dtype).eps)


def test_gradcampp_tiny_gradients_do_not_underflow_to_zero():
    # g = 1e-170: g^2 underflows to 0 in float64, but alpha = 1 / (2 + g sum(A)) = 1/2 exactly in
    # value; w = 1/2 * relu(g) = 5e-171 and the map of A = [[1]] is 5e-171, not 0.
    out = refcam.gradcampp_weights(np.ones((1, 1, 1)), np.full((1, 1, 1), 1e-170))
    np.testing.assert_allclose(out, [[5e-171]], rtol=1e-15)
