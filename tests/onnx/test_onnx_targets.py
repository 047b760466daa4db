"""Tests of refcam.onnx.targets: every target form, scores, and the error paths."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refcam.errors import TargetError
from refcam.onnx.targets import TopK, class_view, resolve_targets

LOGITS = np.array([[0.5, 3.0, -1.0, 2.0], [4.0, 1.0, 1.0, -2.0], [0.0, 0.0, 5.0, 0.0]], np.float32)
ROWS = np.arange(3)


def test_none_is_argmax():
    t = resolve_targets(None, LOGITS)
    np.testing.assert_array_equal(t.classes, [[1], [0], [2]])
    np.testing.assert_array_equal(t.scores(LOGITS, ROWS), [[3.0], [4.0], [5.0]])


def test_int_for_all_and_negative_index():
    np.testing.assert_array_equal(
        resolve_targets(3, LOGITS).scores(LOGITS, ROWS), [[2.0], [-2.0], [0.0]]
    )
    np.testing.assert_array_equal(resolve_targets(-1, LOGITS).classes, [[3], [3], [3]])
    np.testing.assert_array_equal(resolve_targets(np.int64(2), LOGITS).classes, [[2], [2], [2]])


def test_topk_order_and_ties():
    t = resolve_targets(TopK(3), LOGITS)
    # row 1: 4.0 (c0), then the tie 1.0/1.0 broken by lower index (c1, c2)
    np.testing.assert_array_equal(t.classes, [[1, 3, 0], [0, 1, 2], [2, 0, 1]])
    np.testing.assert_array_equal(
        t.scores(LOGITS, ROWS), [[3.0, 2.0, 0.5], [4.0, 1.0, 1.0], [5.0, 0.0, 0.0]]
    )
    assert t.n_targets == 3


def test_per_sample_list_mixed_with_callables_and_row_grouping():
    def prob(out):
        e = np.exp(out - out.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True))[:, 0]

    t = resolve_targets([2, prob, 0], LOGITS)
    assert t.classes is None
    # rows may repeat samples in any order (masked copies in Score-CAM)
    out = np.stack([LOGITS[1], LOGITS[0], LOGITS[1], LOGITS[2]])
    got = t.scores(out, np.array([1, 0, 1, 2]))
    e = np.exp(LOGITS[1] - LOGITS[1].max())
    p1 = e[0] / e.sum()
    np.testing.assert_allclose(got[:, 0], [p1, -1.0, p1, 0.0], rtol=1e-6)


def test_two_dim_int_array():
    t = resolve_targets(np.array([[0, 1], [1, 2], [3, 0]]), LOGITS)
    np.testing.assert_array_equal(t.scores(LOGITS, ROWS), [[0.5, 3.0], [1.0, 1.0], [0.0, 0.0]])


def test_class_view_flattens_pooled_outputs():
    assert class_view(LOGITS[:, :, None, None]).shape == (3, 4)
    with pytest.raises(TargetError, match="callable target"):
        resolve_targets(1, np.zeros((2, 3, 4, 4)))
    # a callable works on segmentation outputs: sum of class 1 over the mask
    seg = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    t = resolve_targets(lambda o: o[:, 1].sum(axis=(1, 2)), seg)
    np.testing.assert_array_equal(
        t.scores(seg, np.arange(2))[:, 0], [4 + 5 + 6 + 7, 16 + 17 + 18 + 19]
    )


def test_errors():
    with pytest.raises(TargetError, match=r"class 4 is out of range.*0 <= c < 4"):
        resolve_targets(4, LOGITS)
    with pytest.raises(TargetError, match=r"target\[1\]: class -5 is out of range"):
        resolve_targets([0, -5, 1], LOGITS)
    with pytest.raises(TargetError, match="got 2 per-sample target\\(s\\) for a batch of 3"):
        resolve_targets([0, 1], LOGITS)
    with pytest.raises(TargetError, match="got 4 per-sample"):
        resolve_targets([0, 1, 2, 3], LOGITS)
    with pytest.raises(TargetError, match=r"TopK\(k=5\)"):
        resolve_targets(TopK(5), LOGITS)
    with pytest.raises(TargetError, match=r"TopK\(k=0\)"):
        resolve_targets(TopK(0), LOGITS)
    with pytest.raises(TargetError, match="expected an int class index"):
        resolve_targets([0, 1.5, 2], LOGITS)
    with pytest.raises(TargetError, match="expected an int class index"):
        resolve_targets([True, 1, 2], LOGITS)
    with pytest.raises(TargetError, match="expected None, an int"):
        resolve_targets("cat", LOGITS)
    with pytest.raises(TargetError, match="expected None, an int"):
        resolve_targets(True, LOGITS)
    with pytest.raises(TargetError, match="integer class indices"):
        resolve_targets(np.zeros((3, 2)), LOGITS)
    t = resolve_targets(lambda o: o[:, :2], LOGITS)
    with pytest.raises(TargetError, match=r"callable returned shape \(3, 2\), expected \(3,\)"):
        t.scores(LOGITS, ROWS)
    t = resolve_targets(lambda o: o[:, 0] / 0.0 if False else np.full(len(o), np.inf), LOGITS)
    with pytest.raises(TargetError, match="non-finite"):
        t.scores(LOGITS, ROWS)
    t = resolve_targets(lambda o: 1 / 0, LOGITS)
    with pytest.raises(TargetError, match="ZeroDivisionError"):
        t.scores(LOGITS, ROWS)


@given(
    arrays(
        np.float64, st.tuples(st.integers(1, 5), st.integers(1, 6)), elements=st.floats(-1e3, 1e3)
    ),
    st.data(),
)
def test_scores_equal_fancy_indexing(out, data):
    n, c = out.shape
    cls = data.draw(st.lists(st.integers(-c, c - 1), min_size=n, max_size=n))
    t = resolve_targets(cls, out)
    np.testing.assert_array_equal(
        t.scores(out, np.arange(n))[:, 0], out[np.arange(n), np.array(cls) % c]
    )
    top = resolve_targets(None, out).scores(out, np.arange(n))[:, 0]
    np.testing.assert_array_equal(top, out.max(axis=1))
