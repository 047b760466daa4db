"""Oracle tests of refcam.math.perturbation (Score-CAM and Ablation-CAM math)."""

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from refcam.errors import NonFiniteError, ShapeError
from refcam.math import ablationcam, ablationcam_weights, cam, gap, scorecam, scorecam_weights

# one sample, K = 2, 2x2:  A^0 = [[1, 2], [3, 4]], A^1 = [[0, 3], [2, 0]]
A = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 3.0], [2.0, 0.0]]]])


def close(x, y, rtol=1e-12, atol=1e-12):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, equal_nan=False)  # NaN never passes


# ------------------------------------------------------------------ Score-CAM

def test_scorecam_weights_hand():
    # C(A^k) = f(X o H^k) - f(X_b): [0.9 - 0.1, 0.3 - 0.1] (per-sample baseline)
    close(scorecam_weights([[0.9, 0.3], [0.5, 0.5]], [0.1, 0.5]), [[0.8, 0.2], [0.0, 0.0]])
    # scalar baseline broadcasts; None means no subtraction
    close(scorecam_weights([[0.9, 0.3]], 0.1), [[0.8, 0.2]])
    close(scorecam_weights([[0.9, 0.3]]), [[0.9, 0.3]])


def test_scorecam_weights_channel_softmax_hand():
    # softmax over k of [ln 1, ln 2, ln 5] = [1, 2, 5] / 8
    c = np.log([[1.0, 2.0, 5.0]])
    close(scorecam_weights(c, softmax=True), [[0.125, 0.25, 0.625]])
    # shift invariant: the baseline does not matter under the channel softmax
    close(scorecam_weights(c, [7.0], softmax=True), [[0.125, 0.25, 0.625]])
    # large logits do not overflow: [1000, 1000 + ln 3] -> [0.25, 0.75]
    close(scorecam_weights([[1000.0, 1000.0 + np.log(3.0)]], softmax=True), [[0.25, 0.75]],
          rtol=1e-9)


def test_scorecam_hand():
    # alpha = [0.5, -0.5]: 0.5 (A^0 - A^1) = [[0.5, -0.5], [0.5, 2]] -> ReLU
    close(scorecam(A, [[0.5, -0.5]], relu=False), [[[0.5, -0.5], [0.5, 2.0]]])
    close(scorecam(A, [[0.5, -0.5]]), [[[0.5, 0.0], [0.5, 2.0]]])
    # with baseline 0.5: alpha = [0, -1] -> -A^1 -> ReLU -> zeros
    close(scorecam(A, [[0.5, -0.5]], baseline_score=[0.5]), np.zeros((1, 2, 2)))
    # channel softmax of [0, ln 3] -> [0.25, 0.75]: 0.25 A^0 + 0.75 A^1
    close(scorecam(A, [[0.0, np.log(3.0)]], softmax=True),
          [[[0.25, 0.5 + 2.25], [0.75 + 1.5, 1.0]]])


def test_scorecam_3d_hand():
    a = A.reshape(1, 2, 2, 1, 2)
    close(scorecam(a, [[0.5, -0.5]], relu=False),
          np.array([[0.5, -0.5], [0.5, 2.0]]).reshape(1, 2, 1, 2))


# ------------------------------------------------------------------ Ablation-CAM

def test_ablationcam_weights_hand():
    # y = 2: w = (2 - [1, 3]) / 2 = [0.5, -0.5] ; y = 4: (4 - [0, 6]) / 4 = [1, -0.5]
    close(ablationcam_weights([[1.0, 3.0], [0.0, 6.0]], [2.0, 4.0]), [[0.5, -0.5], [1.0, -0.5]])


def test_ablationcam_hand():
    # w = [0.5, -0.5] -> 0.5 (A^0 - A^1) = [[0.5, -0.5], [0.5, 2]] -> ReLU
    close(ablationcam(A, [[1.0, 3.0]], [2.0], relu=False), [[[0.5, -0.5], [0.5, 2.0]]])
    close(ablationcam(A, [[1.0, 3.0]], [2.0]), [[[0.5, 0.0], [0.5, 2.0]]])
    close(ablationcam(A.reshape(1, 2, 4, 1), [[1.0, 3.0]], [2.0]), [[[0.5], [0.0], [0.5], [2.0]]])
    # 3-D volume (1, 2, 2, 1, 2): same four positions
    close(ablationcam(A.reshape(1, 2, 2, 1, 2), [[1.0, 3.0]], [2.0]),
          np.array([[0.5, 0.0], [0.5, 2.0]]).reshape(1, 2, 1, 2))


def test_ablationcam_zero_baseline_is_masked():
    # y^c = 0: the relative drop is undefined -> zero weights -> zero map, no warning
    close(ablationcam_weights([[1.0, -1.0]], [0.0]), [[0.0, 0.0]])
    close(ablationcam(A, [[1.0, -1.0]], [0.0], relu=False), np.zeros((1, 2, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes(dtype):
    a = A.astype(dtype)
    s = np.array([[1.0, 3.0]], dtype)
    b = np.array([2.0], dtype)
    assert scorecam_weights(s, b).dtype == dtype
    assert scorecam_weights(s, softmax=True).dtype == dtype
    assert scorecam(a, s, softmax=True).dtype == dtype
    assert ablationcam_weights(s, b).dtype == dtype
    out = ablationcam(a, s, b)
    assert out.dtype == dtype
    close(out, [[[0.5, 0.0], [0.5, 2.0]]], rtol=1e-6)
    assert ablationcam(a, s, b.astype(np.float64)).dtype == np.float64


# ------------------------------------------------------------------ error paths

def test_errors_name_the_argument():
    with pytest.raises(ShapeError, match="scores: got shape \\(2,\\)"):
        scorecam_weights([1.0, 2.0])
    with pytest.raises(ShapeError, match="scores: got shape \\(1, 3\\)") as info:
        scorecam(A, [[1.0, 2.0, 3.0]])
    assert "(1, 2)" in str(info.value)
    with pytest.raises(ShapeError, match="baseline_score: got shape \\(2,\\)"):
        scorecam(A, [[1.0, 2.0]], baseline_score=[1.0, 2.0])
    with pytest.raises(ShapeError, match="baseline_score: got shape \\(\\)"):
        ablationcam_weights([[1.0, 2.0]], 1.0)          # Ablation-CAM needs one y^c per sample
    with pytest.raises(ShapeError, match="activations"):
        ablationcam(np.ones((1, 2)), [[1.0, 2.0]], [1.0])
    with pytest.raises(NonFiniteError, match="scores"):
        scorecam(A, [[np.nan, 1.0]])
    with pytest.raises(NonFiniteError, match="baseline_score"):
        ablationcam(A, [[1.0, 1.0]], [np.inf])
    with pytest.raises(NonFiniteError, match="activations"):
        ablationcam(np.full((1, 2, 2, 2), np.nan), [[1.0, 1.0]], [1.0])


# ------------------------------------------------------------------ properties

finite = st.floats(-5, 5, allow_nan=False, width=64)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 3))
    k = draw(st.integers(1, 5))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    a = draw(hnp.arrays(np.float64, (n, k) + spatial, elements=finite))
    s = draw(hnp.arrays(np.float64, (n, k), elements=finite))
    b = draw(hnp.arrays(np.float64, (n,), elements=st.sampled_from([0.0, 1.0, -2.0, 3.5])))
    return a, s, b


METHODS = [
    lambda a, s, b: scorecam(a, s, baseline_score=b),
    lambda a, s, b: scorecam(a, s, softmax=True, relu=False),
    lambda a, s, b: ablationcam(a, s, b, relu=False),
]


@given(problems(), st.sampled_from(METHODS), st.randoms(use_true_random=False))
def test_permutation_equivariance_batch_independence_finiteness(p, fn, rnd):
    a, s, b = p
    out = fn(a, s, b)
    assert np.isfinite(out).all()
    perm = list(range(a.shape[1]))
    rnd.shuffle(perm)
    close(fn(a[:, perm], s[:, perm], b), out, rtol=1e-9, atol=1e-9)
    each = np.concatenate([fn(a[i:i + 1], s[i:i + 1], b[i:i + 1]) for i in range(a.shape[0])])
    close(out, each, rtol=1e-12, atol=1e-12)


@given(problems())
def test_channel_softmax_is_a_distribution(p):
    _, s, b = p
    w = scorecam_weights(s, b, softmax=True)
    assert (w > 0).all()
    close(w.sum(axis=1), np.ones(len(w)), rtol=1e-12)


@given(st.data())
def test_ablation_of_a_gap_linear_head(data):
    # y^c = sum_k w_k GAP(A^k) (no bias); zeroing channel k gives y^c_k = y^c - w_k GAP(A^k)
    # => Ablation-CAM weight = w_k GAP(A^k) / y^c, and the map = CAM with weights w_k GAP_k / y^c
    a, _, _ = data.draw(problems())
    n, k = a.shape[:2]
    wl = data.draw(hnp.arrays(np.float64, (n, k), elements=finite))
    contrib = wl * gap(a)
    y = contrib.sum(axis=1)
    yk = y[:, None] - contrib
    expected = np.where(y[:, None] != 0, contrib / np.where(y == 0, 1, y)[:, None], 0)
    close(ablationcam_weights(yk, y), expected, rtol=1e-6, atol=1e-6 * (1 + np.abs(expected).max()))
    ok = np.abs(y) > 1e-3
    close(ablationcam(a, yk, y, relu=False)[ok], cam(a, expected, relu=False)[ok],
          rtol=1e-6, atol=1e-6 * (1 + np.abs(cam(a, expected)).max()))


# ------------------------------------------------------------------ SS-CAM / IS-CAM helpers

from refcam.errors import InvalidArgumentError  # noqa: E402
from refcam.math import iscam_masks, iscam_scales, iscam_weights, sscam_masks, sscam_weights  # noqa: E402


def test_sscam_masks_noise_statistics_and_reproducibility():
    h = np.full((2, 3, 40, 50), 0.5)
    m = sscam_masks(h, 4, std=2.0, seed=0)
    assert m.shape == (2, 4, 3, 40, 50) and m.dtype == np.float64
    d = m - h[:, None]
    # 48000 i.i.d. N(0, 4) draws: mean within 5 standard errors (5 * 2/sqrt(48000) ~ 0.046)
    assert abs(d.mean()) < 0.046 and abs(d.std() - 2.0) < 0.03
    assert np.array_equal(m, sscam_masks(h, 4, std=2.0, seed=0))
    assert not np.array_equal(m, sscam_masks(h, 4, std=2.0, seed=1))
    assert sscam_masks(h.astype(np.float32), 2, std=1.0, seed=0).dtype == np.float32
    np.testing.assert_array_equal(sscam_masks(h, 2, std=0.0), np.stack([h, h], axis=1))
    # 3-D masks keep their layout: (1, 1, 2, 2, 2) -> (1, 3, 1, 2, 2, 2)
    assert sscam_masks(np.zeros((1, 1, 2, 2, 2)), 3, std=1.0, seed=0).shape == (1, 3, 1, 2, 2, 2)


def test_sscam_weights_hand():
    # scores (1, 2 samples, 2 channels): means [(1+3)/2, (4+0)/2] = [2, 2]; baseline 0.5 -> 1.5
    s = np.array([[[1.0, 4.0], [3.0, 0.0]]])
    close(sscam_weights(s, [0.5]), [[1.5, 1.5]])
    close(sscam_weights(s, softmax=True), [[0.5, 0.5]])


def test_iscam_masks_and_weights_hand():
    # linear schedule, H = [[2, 4]] (1, 1, 2), n = 2: steps 1/2 and 1 -> [[1, 2]], [[2, 4]]
    m = iscam_masks(np.array([[[2.0, 4.0]]]), 2, schedule="linear")
    close(m, [[[[1.0, 2.0]], [[2.0, 4.0]]]])
    # accumulated (default), n = 2: gamma = 1/2, 1/2 + 2/2 = 3/2 -> [[1, 2]], [[3, 6]]
    close(iscam_masks(np.array([[[2.0, 4.0]]]), 2), [[[[1.0, 2.0]], [[3.0, 6.0]]]])
    assert iscam_masks(np.ones((1, 1, 2), np.float32), 3).dtype == np.float32
    # 3D masks (1, 1, 1, 1, 2), n = 4 -> linear scales 0.25, 0.5, 0.75, 1
    close(iscam_masks(np.full((1, 1, 1, 1, 2), 8.0), 4, schedule="linear")[0, :, 0, 0, 0, 0],
          [2.0, 4.0, 6.0, 8.0])
    # accumulated 1/4, 3/4, 6/4, 10/4 times 8 -> 2, 6, 12, 20
    close(iscam_masks(np.full((1, 1, 1, 1, 2), 8.0), 4)[0, :, 0, 0, 0, 0], [2.0, 6.0, 12.0, 20.0])
    # weights: mean over steps of [[1, 0], [2, 0], [3, 3]] = [2, 1]; minus baseline 1
    close(iscam_weights(np.array([[[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]]]), 1.0), [[1.0, 0.0]])


def test_iscam_scales_exact_numbers():
    # accumulated: gamma_i = sum_{j=1}^{i} j/n = i (i + 1) / (2 n)
    np.testing.assert_array_equal(iscam_scales(1), [1.0])
    np.testing.assert_array_equal(iscam_scales(2), [0.5, 1.5])
    np.testing.assert_array_equal(iscam_scales(4), [0.25, 0.75, 1.5, 2.5])
    np.testing.assert_array_equal(iscam_scales(8, "linear"), np.arange(1, 9) / 8)
    assert iscam_scales(3).dtype == np.float64
    with pytest.raises(InvalidArgumentError, match="schedule"):
        iscam_scales(3, "cumulative")
    with pytest.raises(InvalidArgumentError, match="schedule"):
        iscam_masks(np.ones((1, 1, 2)), 3, schedule="exp")
    with pytest.raises(InvalidArgumentError, match="n_steps"):
        iscam_scales(0)


@given(st.integers(1, 200))
def test_iscam_scales_match_torchcam_running_sum(n):
    # torchcam ISCAM: coeff = 0; for sidx in range(n): coeff += (sidx + 1) / n; score(coeff * mask)
    # -- the increment comes before the use, so gamma_1 = 1/n (not 0 as its docstring's j=0..i-1),
    # and gamma_n = (n + 1) / 2 exactly.
    coeff, running = 0.0, []
    for sidx in range(n):
        coeff += (sidx + 1) / n
        running.append(coeff)
    g = iscam_scales(n)
    np.testing.assert_allclose(g, running, rtol=4 * n * np.finfo(float).eps, atol=0)
    assert g[0] == 1 / n and g[-1] == (n + 1) / 2
    # steps gamma_i - gamma_{i-1} = i / n
    np.testing.assert_allclose(np.diff(g), np.arange(2, n + 1) / n, rtol=8 * n * np.finfo(float).eps)


def test_sampled_helpers_errors():
    with pytest.raises(ShapeError, match="scores: got shape \\(1, 2\\)"):
        sscam_weights([[1.0, 2.0]])
    with pytest.raises(ShapeError, match="baseline_score"):
        iscam_weights(np.ones((2, 3, 4)), [1.0, 2.0, 3.0])
    with pytest.raises(ShapeError, match="masks"):
        iscam_masks(np.ones((2, 3)), 2)
    with pytest.raises(InvalidArgumentError, match="n_steps"):
        iscam_masks(np.ones((1, 1, 2)), 0)
    with pytest.raises(InvalidArgumentError, match="n_samples"):
        sscam_masks(np.ones((1, 1, 2)), 2.5, std=1.0)
    with pytest.raises(InvalidArgumentError, match="std"):
        sscam_masks(np.ones((1, 1, 2)), 2, std=-1.0)
    with pytest.raises(NonFiniteError, match="masks"):
        sscam_masks(np.full((1, 1, 2), np.nan), 2, std=1.0)


@given(problems(), st.integers(1, 4))
def test_one_sample_or_constant_scores_reduce_to_scorecam(p, n):
    _, s, b = p
    # n identical samples average to the sample itself
    stacked = np.repeat(s[:, None], n, axis=1)
    close(sscam_weights(stacked, b), scorecam_weights(s, b), rtol=1e-12, atol=1e-12)
    close(iscam_weights(stacked, b, softmax=True), scorecam_weights(s, b, softmax=True),
          rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ Score-CAM masks

from refcam.math import scorecam_masks  # noqa: E402


def test_scorecam_masks_hand_1d():
    # channel 0 = [0, 4]: half-pixel linear to 4 samples -> [0, 1, 3, 4] -> min-max [0, .25, .75, 1]
    # channel 1 = [3, 3]: constant -> all-zero mask (zero-range guard)
    a = np.array([[[0.0, 4.0], [3.0, 3.0]]])
    close(scorecam_masks(a, (4,)), [[[0.0, 0.25, 0.75, 1.0], [0.0, 0.0, 0.0, 0.0]]])
    # align-corners to 3 samples: [0, 2, 4] -> [0, .5, 1]
    close(scorecam_masks(a, (3,), upsample_mode="linear-align-corners"),
          [[[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]])
    # nearest to 4: [0, 0, 4, 4] -> [0, 0, 1, 1]
    close(scorecam_masks(a, [4], upsample_mode="nearest")[0, 0], [0.0, 0.0, 1.0, 1.0])


def test_scorecam_masks_order_matters_for_interior_peaks():
    # [0, 4, 0] -> 6 samples at input coordinates -0.25(->0), .25, .75, 1.25, 1.75, 2.25(->2):
    # Up = [0, 1, 3, 3, 1, 0]  -> s(Up) = [0, 1/3, 1, 1, 1/3, 0]
    # s = [0, 1, 0]            -> Up(s) = [0, .25, .75, .75, .25, 0]
    a = np.array([[[0.0, 4.0, 0.0]]])
    close(scorecam_masks(a, (6,)), [[[0.0, 1 / 3, 1.0, 1.0, 1 / 3, 0.0]]])
    close(scorecam_masks(a, (6,), mask_order="normalize-then-upsample"),
          [[[0.0, 0.25, 0.75, 0.75, 0.25, 0.0]]])


def test_scorecam_masks_eps_convention():
    # (x - min) / (max - min + eps): [0, 4] at the same size -> [0, 4 / (4 + 1)]
    close(scorecam_masks(np.array([[[0.0, 4.0]]]), (2,), mask_eps=1.0), [[[0.0, 0.8]]])


def test_scorecam_masks_2d_and_3d_hand():
    # 2-D: (1, 1, 2, 2) [[0, 2], [2, 4]] kept at 2x2 -> (x - 0)/4
    close(scorecam_masks(np.array([[[[0.0, 2.0], [2.0, 4.0]]]]), (2, 2)),
          [[[[0.0, 0.5], [0.5, 1.0]]]])
    # 3-D: (1, 1, 1, 1, 2) [0, 4] -> (1, 1, 4): [0, .25, .75, 1] along the last axis
    m = scorecam_masks(np.array([0.0, 4.0]).reshape(1, 1, 1, 1, 2), (1, 1, 4))
    assert m.shape == (1, 1, 1, 1, 4)
    close(m[0, 0, 0, 0], [0.0, 0.25, 0.75, 1.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scorecam_masks_dtype(dtype):
    out = scorecam_masks(np.array([[[0.0, 4.0], [3.0, 3.0]]], dtype), (4,))
    assert out.dtype == dtype
    close(out, [[[0.0, 0.25, 0.75, 1.0], [0.0, 0.0, 0.0, 0.0]]], rtol=1e-6)


def test_scorecam_masks_errors():
    a = np.ones((1, 2, 3, 3))
    with pytest.raises(InvalidArgumentError, match="size"):
        scorecam_masks(a, (8,))
    with pytest.raises(InvalidArgumentError, match="size"):
        scorecam_masks(a, 8)
    with pytest.raises(InvalidArgumentError, match="size"):
        scorecam_masks(a, (8, 0))
    with pytest.raises(InvalidArgumentError, match="upsample_mode"):
        scorecam_masks(a, (8, 8), upsample_mode="cubic")
    with pytest.raises(InvalidArgumentError, match="order"):
        scorecam_masks(a, (8, 8), mask_order="both")
    with pytest.raises(ShapeError, match="activations"):
        scorecam_masks(np.ones((2, 3)), (8,))
    with pytest.raises(NonFiniteError, match="activations"):
        scorecam_masks(np.full((1, 1, 2), np.nan), (4,))


@given(problems(), st.sampled_from(["linear", "linear-align-corners", "nearest", "nearest-exact"]),
       st.sampled_from(["upsample-then-normalize", "normalize-then-upsample"]), st.integers(1, 7))
def test_scorecam_masks_properties(p, mode, order, factor):
    a = p[0]
    size = tuple(s * factor for s in a.shape[2:])
    m = scorecam_masks(a, size, upsample_mode=mode, mask_order=order)
    assert m.shape == a.shape[:2] + size and np.isfinite(m).all()
    assert (m >= 0).all() and (m <= 1 + 1e-12).all()
    sp = tuple(range(2, a.ndim))
    constant = a.max(axis=sp) == a.min(axis=sp)
    assert np.array_equal(m[constant], np.zeros_like(m[constant]))
    if order == "upsample-then-normalize":
        # every non-constant channel's mask spans exactly [0, 1]
        # (nearest modes at an integer factor repeat every input sample, so min and max survive)
        if mode.startswith("nearest"):
            close(m.max(axis=sp)[~constant], 1.0)
            close(m.min(axis=sp)[~constant], 0.0)
    # batch independence and channel equivariance
    each = np.concatenate([scorecam_masks(a[i:i + 1], size, upsample_mode=mode, mask_order=order)
                           for i in range(a.shape[0])])
    close(m, each, rtol=0, atol=0)
    rev = scorecam_masks(a[:, ::-1], size, upsample_mode=mode, mask_order=order)
    close(rev, m[:, ::-1], rtol=0, atol=0)


@pytest.mark.parametrize("value", [3.75, 0.1, 1e-3, 7.3e5])
@pytest.mark.parametrize("mode", ["linear", "linear-align-corners"])
def test_scorecam_masks_constant_channel_is_exactly_zero_despite_round_off(value, mode):
    # Up(3.75 * ones(2)) to 6 samples has 1-ulp ripples; min-max of those would be 0/1 noise
    for order in ("upsample-then-normalize", "normalize-then-upsample"):
        m = scorecam_masks(np.full((1, 2, 2, 3), value), (6, 9), upsample_mode=mode, mask_order=order)
        assert np.array_equal(m, np.zeros((1, 2, 6, 9)))


def test_flags_must_be_boolean():
    with pytest.raises(InvalidArgumentError, match="softmax"):
        scorecam_weights([[1.0, 2.0]], softmax="channels")
    with pytest.raises(InvalidArgumentError, match="relu"):
        ablationcam(A, [[1.0, 3.0]], [2.0], relu=None)


# ------------------------------------------------------------------ ablated activations

from refcam.math import ablated_activations, ablation_values  # noqa: E402


def test_ablated_activations_hand():
    # A (module top): copy 0 has A^0 := -1 everywhere, copy 1 has A^1 := 7 everywhere
    out = ablated_activations(A, np.array([[-1.0, 7.0]]))
    assert out.shape == (1, 2, 2, 2, 2)
    close(out[0, 0], [[[-1, -1], [-1, -1]], [[0, 3], [2, 0]]])
    close(out[0, 1], [[[1, 2], [3, 4]], [[7, 7], [7, 7]]])
    # a subset of channels, in the caller's order
    sub = ablated_activations(A, np.array([[5.0]]), channels=[1])
    close(sub[0, 0], [[[1, 2], [3, 4]], [[5, 5], [5, 5]]])


def test_ablated_activations_token_view_ablates_the_class_token():
    # a token layer (N, T, C) = 1 class token + 2 patch tokens, C = 2, ablated through its
    # channels-first view (N, C, T) with pytorch-grad-cam's compounding value: min over every token
    # (class token -3 included) - 1e7, then - 1e7 again for the second channel of the batch
    t = np.array([[[-3.0, 1.0], [2.0, 0.5], [4.0, 6.0]]])
    cf = np.moveaxis(t, 2, 1)
    v = ablation_values(cf, "pgc")
    close(v, [[-3 - 1e7, -3 - 2e7]])
    out = np.moveaxis(ablated_activations(cf, v), 2, 3)          # (N, J, T, C)
    close(out[0, 0], [[-3 - 1e7, 1.0], [-3 - 1e7, 0.5], [-3 - 1e7, 6.0]])
    close(out[0, 1], [[-3.0, -3 - 2e7], [2.0, -3 - 2e7], [4.0, -3 - 2e7]])


def test_ablated_activations_errors_and_dtype():
    a32 = A.astype(np.float32)
    assert ablated_activations(a32, np.zeros((1, 2), np.float32)).dtype == np.float32
    assert ablated_activations(a32, np.zeros((1, 2))).dtype == np.float64
    with pytest.raises(ShapeError, match="values"):
        ablated_activations(A, np.zeros((1, 3)))
    for bad in ([2], [0, 0], [-1], [], [[0]], [0.5]):
        with pytest.raises(InvalidArgumentError, match="channels"):
            ablated_activations(A, np.zeros((1, max(1, np.size(bad)))), channels=bad)
    with pytest.raises(NonFiniteError, match="values"):
        ablated_activations(A, np.array([[0.0, np.nan]]))


@given(st.data())
def test_ablated_activations_properties(data):
    """Copy j differs from A only in channel k_j, which holds v^{k_j}_n at every position; the
    copies of sample n depend on sample n only."""
    a, _, _ = data.draw(problems())
    n, k = a.shape[:2]
    ch = np.array(data.draw(st.permutations(range(k)))[: data.draw(st.integers(1, k))])
    v = data.draw(hnp.arrays(np.float64, (n, ch.size), elements=finite))
    out = ablated_activations(a, v, channels=ch)
    assert out.shape == (n, ch.size) + a.shape[1:]
    for j, kj in enumerate(ch):
        keep = np.arange(k) != kj
        assert np.array_equal(out[:, j][:, keep], a[:, keep])
        assert np.array_equal(out[:, j, kj], np.broadcast_to(v[:, j].reshape((n,) + (1,) * (a.ndim - 2)),
                                                             a[:, kj].shape))
    for i in range(n):
        assert np.array_equal(ablated_activations(a[i:i + 1], v[i:i + 1], channels=ch), out[i:i + 1])
