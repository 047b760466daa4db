"""Oracle tests of refcam.math.attention: the papers' equations evaluated element by element."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refcam._compare import max_abs_error
from refcam.errors import InvalidArgumentError, ShapeError
from refcam.math import attention_rollout, gradient_weighted_relevance, token_relevance_map


def _softmax_rows(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _atts(seed, n=2, h=3, t=5, layers=3):
    rng = np.random.default_rng(seed)
    return [_softmax_rows(rng.standard_normal((n, h, t, t))) for _ in range(layers)]


def test_rollout_by_hand_two_tokens():
    """Abnar & Zuidema Eq. 1 on numbers small enough to write down."""
    a1 = np.array([[[[0.8, 0.2], [0.4, 0.6]], [[0.6, 0.4], [0.2, 0.8]]]])  # heads mean [[.7,.3],[.3,.7]]
    a2 = np.array([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])  # mean [[.5,.5],[.5,.5]]
    h1 = np.array([[0.85, 0.15], [0.15, 0.85]])                            # .5*mean + .5*I
    h2 = np.array([[0.75, 0.25], [0.25, 0.75]])
    expected = np.array([[0.75 * 0.85 + 0.25 * 0.15, 0.75 * 0.15 + 0.25 * 0.85],
                         [0.25 * 0.85 + 0.75 * 0.15, 0.25 * 0.15 + 0.75 * 0.85]])
    assert max_abs_error(h2 @ h1, expected) <= 1e-15
    assert max_abs_error(attention_rollout([a1, a2])[0], expected) <= 1e-15


def test_rollout_elementwise_loops():
    atts = _atts(0)
    n, _, t, _ = atts[0].shape
    ref = np.zeros((n, t, t))
    for s in range(n):
        r = np.eye(t)
        for a in atts:
            f = a[s].mean(axis=0) * 0.5 + 0.5 * np.eye(t)
            new = np.zeros((t, t))
            for i in range(t):
                for j in range(t):
                    new[i, j] = sum(f[i, k] * r[k, j] for k in range(t))
            r = new
        ref[s] = r
    assert max_abs_error(attention_rollout(atts), ref) <= 1e-14


@pytest.mark.parametrize("fusion", ["max", "min"])
def test_rollout_head_fusion_renormalises(fusion):
    atts = _atts(1)
    out = attention_rollout(atts, head_fusion=fusion)
    assert max_abs_error(out.sum(axis=-1), np.ones(out.shape[:2])) <= 1e-12
    f = getattr(np, fusion)
    r = np.eye(5)
    for a in atts:
        m = 0.5 * f(a[0], axis=0) + 0.5 * np.eye(5)
        r = (m / m.sum(axis=-1, keepdims=True)) @ r
    assert max_abs_error(out[0], r) <= 1e-14


def test_rollout_without_residual_is_the_product():
    atts = _atts(2, layers=2)
    out = attention_rollout(atts, residual=False)
    assert max_abs_error(out, atts[1].mean(1) @ atts[0].mean(1)) <= 1e-14


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 6))
def test_rollout_rows_are_distributions(seed, layers, t):
    out = attention_rollout(_atts(seed, n=2, h=2, t=t, layers=layers))
    assert (out >= 0).all()
    assert max_abs_error(out.sum(axis=-1), np.ones((2, t))) <= 1e-12


def test_chefer_by_hand():
    """Eq. 5-6 with one head, two layers, written out."""
    a1 = np.array([[[[0.75, 0.25], [0.5, 0.5]]]])
    g1 = np.array([[[[2.0, -4.0], [1.0, 1.0]]]])
    a2 = np.array([[[[0.5, 0.5], [1.0, 0.0]]]])
    g2 = np.array([[[[1.0, 2.0], [-1.0, 3.0]]]])
    c1 = np.array([[1.5, 0.0], [0.5, 0.5]])            # relu(g1 * a1)
    r1 = np.eye(2) + c1 @ np.eye(2)                    # [[2.5, 0], [0.5, 1.5]]
    c2 = np.array([[0.5, 1.0], [0.0, 0.0]])            # relu(g2 * a2)
    r2 = r1 + c2 @ r1                                  # [[2.5+1.25+0.5, 1.5], [0.5, 1.5]]
    assert r2.tolist() == [[4.25, 1.5], [0.5, 1.5]]
    assert gradient_weighted_relevance([a1, a2], [g1, g2])[0].tolist() == r2.tolist()


def test_chefer_elementwise_loops_and_heads_mean():
    atts = _atts(3)
    rng = np.random.default_rng(4)
    grads = [rng.standard_normal(a.shape) for a in atts]
    n, h, t, _ = atts[0].shape
    ref = np.zeros((n, t, t))
    for s in range(n):
        r = np.eye(t)
        for a, g in zip(atts, grads):
            cam = np.zeros((t, t))
            for i in range(t):
                for j in range(t):
                    cam[i, j] = sum(max(g[s, k, i, j] * a[s, k, i, j], 0.0) for k in range(h)) / h
            r = r + cam @ r
        ref[s] = r
    assert max_abs_error(gradient_weighted_relevance(atts, grads), ref) <= 1e-13


def test_chefer_zero_gradients_is_identity():
    atts = _atts(5)
    out = gradient_weighted_relevance(atts, [np.zeros_like(a) for a in atts])
    assert (out == np.eye(5)).all()


def test_token_map_reads_class_row():
    r = np.arange(2 * 7 * 7, dtype=float).reshape(2, 7, 7)
    m = token_relevance_map(r, (2, 3), prefix=1)
    assert m.shape == (2, 2, 3)
    assert m[1, 1, 2] == r[1, 0, 1 + 1 * 3 + 2]
    m2 = token_relevance_map(r, (2, 2), prefix=2, token=1)
    assert m2[0].ravel().tolist() == r[0, 1, 2:6].tolist()


def test_errors():
    atts = _atts(6)
    with pytest.raises(InvalidArgumentError, match="head_fusion"):
        attention_rollout(atts, head_fusion="median")
    with pytest.raises(ShapeError):
        attention_rollout([np.ones((1, 2, 3, 4))])
    with pytest.raises(ShapeError):
        gradient_weighted_relevance(atts, atts[:2])
    with pytest.raises(ShapeError):
        token_relevance_map(np.zeros((1, 5, 5)), (3, 3))
    assert attention_rollout(np.ones((1, 1, 2, 2)) / 2).shape == (1, 2, 2)
