"""The registry-level ``eigen_smooth`` and ``aug_smooth`` options (refcam.methods.SMOOTHING).

Oracles: every declared ``weights`` function sums back to the method's own map
(:math:`\\sum_k w^c_k A^k` = the map without ReLU), ``eigen_smooth`` is
:func:`refcam.math.eigen_smooth` of those weights, ``aug_smooth`` is the mean of the maps of the
six transformed inputs explained one by one, each flipped back (and hand numbers on a toy CAM).
The peers' agreement: ``tests/peers/test_peers_smoothing.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from refcam import explain
from refcam import math as M
from refcam.errors import InvalidArgumentError
from refcam.methods import METHODS, Method, SMOOTHING
from refcam.onnx.toy_models import cam_net
from refcam.registry import Option, boolean

X = np.random.default_rng(0).random((2, 3, 12, 12), dtype=np.float32)
EIGEN = sorted(n for n, m in METHODS.items() if "eigen_smooth" in m.defaults)
AUG = sorted(n for n, m in METHODS.items() if "aug_smooth" in m.defaults)


def close(a, b, tol=1e-5):
    from refcam._compare import within

    assert within(a, b, atol=tol), (a, b)


def test_the_peers_cam_methods_declare_the_options():
    # pytorch-grad-cam 1.5.7: eigen_smooth where get_cam_image sums weighted activations
    assert set(EIGEN) >= {"gradcam", "gradcampp", "xgradcam", "layercam", "hirescam",
                          "gradcam_elementwise", "scorecam", "ablationcam"}
    assert set(AUG) >= set(EIGEN) | {"eigencam", "eigengradcam", "fullgrad"}
    assert all(METHODS[n].weights is not None for n in EIGEN)
    assert "eigen_smooth" not in METHODS["eigengradcam"].defaults      # the peer ignores it
    assert METHODS["gradcam"].options[-2:] == SMOOTHING


@pytest.mark.parametrize("name", EIGEN)
def test_weights_sum_back_to_the_methods_map(name):
    """Σ_k w^c_k A^k with the declared weights = the method's own raw map without ReLU."""
    target = 1 if METHODS[name].targeted else None
    e = explain(cam_net(), X, name, target=target, relu=False, eigen_smooth=True)
    a = e.arrays["activations"]
    (w,) = e.arrays["eigen_smooth_weights"]
    plain = explain(cam_net(), X, name, target=target, relu=False)
    close(M.weighted_sum(a, w), plain.maps, 1e-5 * max(1.0, float(np.abs(plain.maps).max())))
    close(e.maps, M.eigen_smooth(a, w), 0)


def test_eigen_smooth_gradcam_weights_and_relu():
    e = explain(cam_net(), X, "gradcam", target=1, eigen_smooth=True)
    (w,) = e.arrays["eigen_smooth_weights"]
    close(w, M.gradient_weights(e.arrays["gradients"][:, 0]), 0)
    close(e.maps, M.eigen_smooth(e.arrays["activations"], w, relu=True), 0)
    assert e.maps.min() >= 0 and e.options["eigen_smooth"] is True


def test_eigen_smooth_hand():
    """Two positions, two channels, Grad-CAM weights α = mean of ∂y/∂A = (3, 1), so
    O^w = diag(3, 1) through a Method: the centred rows are
    ±(1.5, -0.5), v_1 = (3, -1)/√10, the projections ±5/√10 = ±√2.5 (max-abs sign: + first);
    without eigen_smooth the channel sum (3, 1)."""
    from refcam.registry import Context

    a = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    G = np.array([3.0, 1.0]).reshape(1, 1, 2, 1, 1)                  # (N, T, K, H, W), constant
    m = METHODS["gradcam"]
    ctx = Context(None, None, None, None, None,
                  {"relu": False, "eigen_smooth": True, "gradient_source": "vjp", "fd_mode": "auto"},
                  arrays={"activations": a, "gradients": np.broadcast_to(G, (1, 1, 2, 1, 2))})
    from refcam.explanation import _map

    close(_map(m, ctx, 0), [[[np.sqrt(2.5), -np.sqrt(2.5)]]], 1e-12)
    ctx.options["eigen_smooth"] = False
    close(_map(m, ctx, 0), [[[3.0, 1.0]]], 0)


@pytest.mark.parametrize("name", ["gradcam", "scorecam", "eigencam"])
def test_aug_smooth_is_the_mean_of_the_flipped_back_maps(name):
    target = None if name == "eigencam" else [1, 2]
    e = explain(cam_net(), X, name, target=target, aug_smooth=True)
    assert e.arrays["aug_maps"].shape == (6,) + e.maps.shape
    assert e.arrays["aug_factors"].tolist() == [0.9, 1.0, 1.1, 0.9, 1.0, 1.1]
    maps = []
    for flip, factor in M.AUG_TRANSFORMS:
        xa = (X[..., ::-1] if flip else X) * np.float32(factor)
        m = explain(cam_net(), xa, name, target=target).maps
        maps.append(m[..., ::-1] if flip else m)
    close(e.maps, np.mean(maps, axis=0), 0)
    close(e.arrays["aug_maps"][1], explain(cam_net(), X, name, target=target).maps, 0)


def test_aug_smooth_keeps_the_targets_of_the_unmodified_input():
    e = explain(cam_net(), X, "gradcam", aug_smooth=True)
    top = explain(cam_net(), X, "gradcam").targets
    np.testing.assert_array_equal(e.targets, top)
    for (flip, factor), m in zip(M.AUG_TRANSFORMS, e.arrays["aug_maps"]):
        xa = (X[..., ::-1] if flip else X) * np.float32(factor)
        close(m, explain(cam_net(), xa, "gradcam", target=top).maps, 0)


def test_refusals():
    with pytest.raises(InvalidArgumentError, match="eigen_smooth"):
        explain(cam_net(), X, "eigengradcam", target=1, eigen_smooth=True)
    with pytest.raises(InvalidArgumentError, match="eigen_smooth"):
        explain(cam_net(), X, "cam", target=1, eigen_smooth=True)       # no peer offers it on CAM
    with pytest.raises(InvalidArgumentError, match="eigen_smooth"):
        explain(cam_net(), X, "gradcam", target="all", eigen_smooth=True)
    with pytest.raises(InvalidArgumentError, match="aug_smooth"):
        explain(cam_net(), X, "gradcam", target="all", aug_smooth=True)
    with pytest.raises(InvalidArgumentError, match="weights function"):
        Method(name="x", needs=("activations",), math=M.cam, compute=lambda c, t: None, paper="",
               equation="", options=(Option("eigen_smooth", False, boolean),))
    with pytest.raises(InvalidArgumentError, match="True or False"):
        explain(cam_net(), X, "gradcam", target=1, aug_smooth="yes")
