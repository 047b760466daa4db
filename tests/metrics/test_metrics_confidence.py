"""Average Drop, Increase in Confidence, Win % and the confidence driver (Chattopadhay et al. 2018)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refcam.errors import InvalidArgumentError, ModelError, ShapeError, TargetError
from refcam.metrics import (
    average_drop,
    confidence_metrics,
    explanation_inputs,
    increase_in_confidence,
    win_percentage,
)


def test_average_drop_hand_computed():
    # Y = (0.8, 0.5, 0.4), O = (0.2, 0.7, 0.3)
    # drops: max(0, 0.6)/0.8 = 0.75 ; max(0, -0.2)/0.5 = 0 ; 0.1/0.4 = 0.25  -> mean 1/3 -> 33.33 %
    assert average_drop([0.8, 0.5, 0.4], [0.2, 0.7, 0.3]) == pytest.approx(100 / 3, abs=1e-12)


def test_increase_in_confidence_hand_computed_and_strict():
    # increases: 0.2<0.7 yes ; 0.5<0.5 no (strict) ; 0.4<0.3 no ; 0.1<0.2 yes -> 2/4
    assert increase_in_confidence([0.2, 0.5, 0.4, 0.1], [0.7, 0.5, 0.3, 0.2]) == 50.0


def test_win_percentage_hand_computed_ties_count_for_nobody():
    y = [1.0, 1.0, 1.0, 1.0, 1.0]
    a = [0.9, 0.1, 0.5, 0.6, 0.2]
    b = [0.8, 0.3, 0.5, 0.7, 0.1]
    # falls A: .1 .9 .5 .4 .8 ; falls B: .2 .7 .5 .3 .9 -> A smaller at items 0 and 4 -> 40 %
    assert win_percentage(y, a, b) == 40.0
    # B smaller at items 1 and 3 -> 40 %; the tie (item 2) is nobody's
    assert win_percentage(y, b, a) == 40.0


@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=20), st.data())
def test_properties(y, data):
    o = data.draw(st.lists(st.floats(0.0, 1.0), min_size=len(y), max_size=len(y)))
    ad = average_drop(y, o)
    ic = increase_in_confidence(y, o)
    assert 0.0 <= ad <= 100.0 and 0.0 <= ic <= 100.0
    assert average_drop(y, y) == 0.0 and increase_in_confidence(y, y) == 0.0
    assert win_percentage(y, o, o) == 0.0
    # shares of disjoint events (ties belong to neither); 1e-9 absorbs the rounding of two percentages
    assert win_percentage(y, o, y) + win_percentage(y, y, o) <= 100.0 + 1e-9


def test_average_drop_refuses_nonpositive_full_scores():
    with pytest.raises(InvalidArgumentError, match="full_scores"):
        average_drop([0.5, 0.0], [0.1, 0.1])
    with pytest.raises(InvalidArgumentError, match="full_scores"):
        average_drop([-2.0], [0.1])


def test_score_vector_errors_name_argument():
    with pytest.raises(ShapeError, match="explanation_scores"):
        average_drop([0.5, 0.4], [0.1])
    with pytest.raises(ShapeError, match="full_scores"):
        increase_in_confidence([[0.5]], [[0.1]])
    with pytest.raises(ShapeError, match="scores_b"):
        win_percentage([1.0], [0.5], [0.5, 0.2])
    with pytest.raises(Exception, match="explanation_scores"):
        average_drop([0.5], [np.nan])


def test_explanation_inputs_normalises_and_keeps_dtype():
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    m = np.array([[[2.0, 4.0], [6.0, 4.0]]], dtype=np.float32)
    # min-max: (0, 0.5, 1, 0.5) -> x * m = (0, 0.5, 2, 1.5)
    e = explanation_inputs(x, m)
    assert e.dtype == np.float32
    np.testing.assert_array_equal(e.ravel(), [0.0, 0.5, 2.0, 1.5])
    # constant map -> zeros (no division by zero)
    np.testing.assert_array_equal(explanation_inputs(x, np.ones((1, 2, 2))), np.zeros((1, 1, 2, 2)))
    np.testing.assert_array_equal(explanation_inputs(x, m, normalize=False).ravel(), [0, 4, 12, 12])


def test_confidence_metrics_with_class_scores_and_targets():
    # two-class linear toy model: class 0 = sum of pixels, class 1 = 10 - sum
    def f(x):
        s = x.reshape(len(x), -1).sum(axis=1)
        return np.stack([s, 10.0 - s], axis=1)

    x = np.ones((2, 1, 1, 2))
    maps = np.array([[[0.0, 1.0]], [[1.0, 1.0]]])  # second map constant -> normalised to zeros
    r = confidence_metrics(f, x, maps, targets=[0, 1], batch_size=3, progress=False)
    # Y = (2, 8). E_0 = (0, 1) -> class-0 score 1 ; E_1 = zeros -> class-1 score 10
    np.testing.assert_array_equal(r.full_scores, [2.0, 8.0])
    np.testing.assert_array_equal(r.explanation_scores, [1.0, 10.0])
    assert r.average_drop == pytest.approx(25.0)  # (0.5 + 0) / 2
    assert r.increase_in_confidence == 50.0


def test_driver_errors():
    f = lambda x: x.reshape(len(x), -1).sum(axis=1)
    x = np.ones((1, 1, 2, 2))
    with pytest.raises(ShapeError, match="maps"):
        confidence_metrics(f, x, np.ones((1, 3, 3)), progress=False)
    with pytest.raises(Exception, match="maps"):
        confidence_metrics(f, x, np.full((1, 2, 2), np.nan), progress=False)
    with pytest.raises(TargetError, match="targets"):
        confidence_metrics(f, x, np.ones((1, 2, 2)), targets=0, progress=False)
    with pytest.raises(TargetError, match="targets"):
        confidence_metrics(lambda x: np.ones((len(x), 3)), x, np.ones((1, 2, 2)), progress=False)
    with pytest.raises(TargetError, match="targets"):
        confidence_metrics(
            lambda x: np.ones((len(x), 3)), x, np.ones((1, 2, 2)), targets=5, progress=False
        )
    with pytest.raises(ModelError, match="score_fn"):
        confidence_metrics(lambda x: np.ones(7), x, np.ones((1, 2, 2)), progress=False)
    with pytest.raises(ModelError, match="score_fn"):
        confidence_metrics(lambda x: np.full(len(x), np.inf), x, np.ones((1, 2, 2)), progress=False)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        confidence_metrics(f, x, np.ones((1, 2, 2)), batch_size=0, progress=False)
    with pytest.raises(InvalidArgumentError, match="resize"):
        confidence_metrics(f, x, np.ones((1, 3, 3)), resize="cubic", progress=False)
