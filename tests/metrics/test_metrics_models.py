"""score_fn helpers: softmax and the duck-typed model wrapper (with a real ONNX toy model)."""

import numpy as np
import pytest

from refcam.errors import InvalidArgumentError
from refcam.metrics import confidence_metrics, deletion, model_score_fn, softmax, softmax_scores


def test_softmax_hand_computed_and_stable():
    # logits (0, ln 3): e^0 = 1, e^ln3 = 3 -> (1/4, 3/4); huge logits do not overflow
    np.testing.assert_allclose(softmax([[0.0, np.log(3.0)]]), [[0.25, 0.75]], rtol=1e-15)
    np.testing.assert_allclose(softmax([[1000.0, 1000.0]]), [[0.5, 0.5]])
    assert softmax(np.zeros((1, 2), np.float32)).dtype == np.float32
    with pytest.raises(InvalidArgumentError, match="score_fn"):
        softmax_scores(lambda x: np.ones(len(x)))(np.ones((1, 1, 1, 1)))


def test_model_score_fn_on_onnx_toy_model():
    from refcam.onnx import Model
    from refcam.onnx.toy_models import cam_net

    m = Model(cam_net())
    x = np.random.default_rng(0).random((2, 3, 12, 12)).astype(np.float32)
    logits = m.run(x)[m.output_name]
    np.testing.assert_array_equal(model_score_fn(m)(x), logits)
    p = model_score_fn(m, probabilities=True)
    np.testing.assert_allclose(p(x).sum(axis=1), 1.0, rtol=1e-6)
    c = deletion(p, x, x.mean(axis=1), targets=logits.argmax(axis=1), step=36, progress=False)
    assert c.scores.shape == (2, 5) and ((0 <= c.scores) & (c.scores <= 1)).all()
    r = confidence_metrics(p, x, x.mean(axis=1), targets=logits.argmax(axis=1), progress=False)
    assert 0 <= r.average_drop <= 100
    with pytest.raises(InvalidArgumentError, match="model"):
        model_score_fn(object())
