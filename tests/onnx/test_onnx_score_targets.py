"""NumPy twins of refcam.onnx OnnxTarget scores: hand-computed cases, sample mapping, errors."""

from __future__ import annotations

import numpy as np
import pytest

from refcam.errors import TargetError
from refcam.onnx import embedding_similarity, log_softmax, logit, mask_sum, resolve_targets, softmax_probability


def test_softmax_probability_hand_case():
    # y = (0, log 2, log 5): e^y = (1, 2, 5), Z = 8 → p = (1/8, 2/8, 5/8)
    y = np.array([[0.0, np.log(2.0), np.log(5.0)]] * 2)
    np.testing.assert_allclose(softmax_probability([2, 0]).numpy(y), [0.625, 0.125], rtol=1e-15)
    np.testing.assert_allclose(log_softmax(1).numpy(y), np.log([0.25, 0.25]), rtol=1e-15)
    # large logits: max subtracted, no overflow: (1000, 0) → p_0 = 1/(1 + e^-1000) = 1.0
    assert softmax_probability(0).numpy(np.array([[1000.0, 0.0]]))[0] == 1.0
    np.testing.assert_array_equal(logit(-1).numpy(y), y[:, 2])


def test_mask_sum_per_sample_masks_hand_case():
    # y[n, c] = 2×2 block; sample 0: class 0, mask [[1,0],[0,0]] → y[0,0,0,0] = 0
    # sample 1: class 1, mask [[0.5,0.5],[1,0]] → 0.5·12 + 0.5·13 + 1·14 = 26.5
    y = np.arange(16.0).reshape(2, 2, 2, 2)
    masks = np.array([[[1, 0], [0, 0]], [[0.5, 0.5], [1, 0]]])
    np.testing.assert_array_equal(mask_sum(masks, [0, 1]).numpy(y), [0.0, 26.5])


def test_embedding_similarity_hand_cases():
    # v = (1, 2, 2), |v| = 3; y0 = (2, 0, 0): cos = 2/(2·3) = 1/3; y1 = 0: guarded to 0
    y = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(embedding_similarity([1, 2, 2]).numpy(y), [1 / 3, 0.0], rtol=1e-15)
    np.testing.assert_array_equal(embedding_similarity([1, 2, 2], "dot").numpy(y), [2.0, 0.0])
    # zero reference vector: every score guarded to 0 (no NaN, no warning)
    np.testing.assert_array_equal(embedding_similarity([0, 0, 0]).numpy(y), [0.0, 0.0])


def test_targets_scores_follow_samples_and_take():
    # per-sample classes follow the rows' samples (Score-CAM feeds masked copies of each sample)
    y = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    tg = logit([2, 0])
    t = resolve_targets(tg, y)
    assert t.classes is None and t.n_targets == 1
    rows = np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0], [70.0, 80.0, 90.0]])
    # rows of samples 1, 1, 0 → classes 0, 0, 2 → 10, 40, 90
    np.testing.assert_array_equal(t.scores(rows, np.array([1, 1, 0])), [[10.0], [40.0], [90.0]])
    # take: copies of sample 1, 1, 0 → classes 0, 0, 2
    np.testing.assert_array_equal(tg.take(np.array([1, 1, 0]), 2).numpy(rows), [10.0, 40.0, 90.0])


def test_errors_name_the_argument():
    y = np.zeros((2, 3))
    with pytest.raises(TargetError, match=r"class_index: class -4 is out of range.*3 classes"):
        resolve_targets(softmax_probability(-4), y)
    with pytest.raises(TargetError, match=r"class_index: got 1 per-sample class indices for a batch of 2"):
        resolve_targets(logit([0]), y)
    with pytest.raises(TargetError, match=r"class_index: got 'a'"):
        logit("a")
    with pytest.raises(TargetError, match=r"mask: got shape \(3, 3\), expected \(2, 2\) or \(2, 2, 2\)"):
        mask_sum(np.ones((3, 3)), 0).numpy(np.zeros((2, 1, 2, 2)))
    with pytest.raises(TargetError, match=r"mask: got <U1"):
        mask_sum(np.array(["a"]), 0)
    with pytest.raises(TargetError, match=r"vector: got shape \(2, 2\), expected \(3,\) or \(2, 3\)"):
        resolve_targets(embedding_similarity(np.ones((2, 2))), y)
    with pytest.raises(TargetError, match=r"vector: contains NaN"):
        embedding_similarity([np.inf, 0.0])
