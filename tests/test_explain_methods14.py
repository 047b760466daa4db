"""End to end: the issue-14 methods through refcam.explain on an ONNX model equal their math
functions on the arrays the explanation reports (and the DFF concept scores equal the head)."""

import numpy as np
import pytest

import refcam
from refcam import math as M
from refcam.errors import InvalidArgumentError
from refcam.onnx.toy_models import cam_net

X = np.random.default_rng(0).random((2, 3, 12, 12), dtype=np.float32)


def test_fem_randomcam_kpcacam_equal_their_math():
    m = cam_net()
    e = refcam.explain(m, X, "fem", k=1.0)
    a = e.arrays["activations"]
    np.testing.assert_array_equal(e.maps, M.fem(a, k=1.0))
    e = refcam.explain(m, X, "randomcam", seed=5)
    np.testing.assert_array_equal(e.arrays["random_weights"], M.random_weights(2, a.shape[1], seed=5, dtype=a.dtype))
    np.testing.assert_array_equal(e.maps, M.randomcam(a, e.arrays["random_weights"]))
    e = refcam.explain(m, X, "kpca_cam", kernel="rbf", gamma=0.5)
    np.testing.assert_array_equal(e.maps, M.kpcacam(a, kernel="rbf", gamma=0.5))
    assert e.targets is None


def test_segeigencam_uses_the_target_gradients():
    e = refcam.explain(cam_net(), X, "segeigencam", target=[1, 4])
    g = e.arrays["gradients"][:, 0]
    np.testing.assert_array_equal(e.maps, M.segeigencam(e.arrays["activations"], g))
    # the GAP -> linear head: dy^c/dA^k = w^c_k / Z everywhere
    head = refcam.onnx.load(cam_net()).linear_head(e.layer)
    z = np.prod(e.maps.shape[1:])
    np.testing.assert_allclose(g[0, :, 0, 0], head.weight[1] / z, rtol=1e-5)


def test_dff_maps_concepts_and_concept_scores():
    e = refcam.explain(cam_net(), X, "dff", n_components=3)
    c, maps = M.dff(e.arrays["activations"], 3)
    np.testing.assert_array_equal(e.maps, maps)
    np.testing.assert_array_equal(e.arrays["concepts"], c)
    head = refcam.onnx.load(cam_net()).linear_head(e.layer)
    np.testing.assert_allclose(e.arrays["concept_scores"], c.T @ head.weight.T + head.bias, rtol=1e-6, atol=1e-6)
    assert e.maps.shape == (2, 3, 12, 12)


def test_option_errors():
    with pytest.raises(InvalidArgumentError):
        refcam.explain(cam_net(), X, "kpcacam", kernel="laplacian")
    with pytest.raises(InvalidArgumentError):
        refcam.explain(cam_net(), X, "fem", k=float("nan"))
    with pytest.raises(InvalidArgumentError):
        refcam.explain(cam_net(), X, "fem", target=1)          # class-agnostic


def test_shapleycam_logit_target_on_a_relu_net_is_gradcam():
    # ReLU features + GAP -> linear head, logit target: y is linear in A, H A = 0 exactly
    e = refcam.explain(cam_net(), X, "shapleycam", target=[1, 4])
    assert np.abs(e.arrays["hessian_vector_products"]).max() == 0
    np.testing.assert_array_equal(e.maps, refcam.explain(cam_net(), X, "gradcam", target=[1, 4]).maps)


def test_shapleycam_softmax_target_closed_form_hessian():
    """GAP -> linear head z = W gap(A) + b, score p_c = softmax(z)_c: in closed form
    H_z = p_c [(e_c - p)(e_c - p)^T - (diag p - p p^T)] and, gap being linear (1/Z),
    (H A)^k_ij = (W^T H_z W gap(A))_k / Z at every position."""
    from refcam.onnx import softmax_probability

    e = refcam.explain(cam_net(), X.astype(np.float32), "shapleycam", target=softmax_probability([1, 4]))
    a = e.arrays["activations"].astype(np.float64)
    head = refcam.onnx.load(cam_net()).linear_head(e.layer)
    w = head.weight.astype(np.float64)
    z_sp = a.shape[2] * a.shape[3]
    gap = a.mean(axis=(2, 3))
    zl = gap @ w.T + head.bias
    p = np.exp(zl - zl.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    for n, c in enumerate([1, 4]):
        d = np.eye(len(p[n]))[c] - p[n]
        hz = p[n, c] * (np.outer(d, d) - (np.diag(p[n]) - np.outer(p[n], p[n])))
        ha = (w.T @ hz @ w @ gap[n]) / z_sp
        gk = (w.T @ (p[n, c] * d)) / z_sp
        np.testing.assert_allclose(e.arrays["hessian_vector_products"][n, 0, :, 0, 0], ha, rtol=2e-4,
                                   atol=2e-4 * np.abs(ha).max())
        np.testing.assert_allclose(e.arrays["gradients"][n, 0, :, 0, 0], gk, rtol=2e-4, atol=2e-4 * np.abs(gk).max())
    g = e.arrays["gradients"][:, 0]
    np.testing.assert_array_equal(e.maps, M.shapleycam(e.arrays["activations"], g, e.arrays["hessian_vector_products"][:, 0]))


def test_finercam_gradient_is_the_seeded_head_gradient():
    # GAP -> linear head: dy_j/dA^k = w_jk / Z everywhere, so dS/dA^k = (s . w_k) / Z
    e = refcam.explain(cam_net(), X, "finercam", target=[1, 4], alpha=0.7)
    y = e.outputs.reshape(len(X), -1).astype(np.float64)
    main, comp = M.finercam_classes(y, np.array([1, 4]))
    assert main.tolist() == [1, 4]
    np.testing.assert_array_equal(e.arrays["finer_classes"][:, 0], comp)
    s = M.finercam_seed(y, main, comp, alpha=0.7)
    head = refcam.onnx.load(cam_net()).linear_head(e.layer)
    z = np.prod(e.maps.shape[1:])
    g = e.arrays["finer_gradients"][:, 0]
    np.testing.assert_allclose(g[:, :, 0, 0], s @ head.weight / z, rtol=1e-4, atol=1e-6 * np.abs(g).max())
    np.testing.assert_array_equal(e.maps, M.gradcam(e.arrays["activations"], g))


def test_smoothgradcampp_without_noise_is_gradcampp():
    e = refcam.explain(cam_net(), X, "smoothgradcampp", target=[1, 4], std=0.0, n_samples=3)
    g = refcam.explain(cam_net(), X, "gradcampp", target=[1, 4])
    np.testing.assert_allclose(e.maps, g.maps, rtol=1e-5, atol=1e-6 * np.abs(g.maps).max())
    assert e.arrays["noisy_layer_gradients"].shape == (2, 3, 1) + e.arrays["activations"].shape[1:]


def test_smoothgradcampp_torchcam_options_use_the_last_sample():
    o = dict(std=0.3, n_samples=2, seed=3, first_order="last", denominator="channel", eps=1e-8,
             map_activations="last-sample")
    e = refcam.explain(cam_net(), X, "smoothgradcampp", target=[1, 4], **o)
    gs = e.arrays["noisy_layer_gradients"][:, :, 0]
    ref = M.smoothgradcampp(e.arrays["activations"], gs, first_order="last", denominator="channel", eps=1e-8,
                            map_activations=e.arrays["noisy_activations"][:, -1])
    np.testing.assert_array_equal(e.maps, ref)
    e2 = refcam.explain(cam_net(), X, "smoothgradcampp", target=[1, 4], **o)
    np.testing.assert_array_equal(e.maps, e2.maps)                  # seeded


def test_refinecam_multiplies_the_base_maps_of_the_layers():
    e = refcam.explain(cam_net(), X, "refinecam", layer="features", layers=("relu1",), target=[1, 4])
    maps = [refcam.explain(cam_net(), X, "gradcampp", layer=L, target=[1, 4]).maps for L in ("features", "relu1")]
    np.testing.assert_array_equal(e.maps, M.refinecam([M.upsample(m, (12, 12)) for m in maps]))
    assert e.arrays["layer_maps"][0].shape == (2, 2, 12, 12)
    with pytest.raises(InvalidArgumentError):
        refcam.explain(cam_net(), X, "refinecam", base="saliency")
    with pytest.raises(InvalidArgumentError):
        refcam.explain(cam_net(), X, "refinecam", layers="relu1")


def test_sess_end_to_end_on_a_square_input():
    """SESS through explain equals its math floor composition: windows of the resized input
    explained with the base method (ReLU -> upsample to the window -> min-max), weighted by the
    softmax probability of the target / max, fused, blurred."""
    xs = X[:1]
    e = refcam.explain(cam_net(), xs, "sess", target=[2], n_scales=2, step_ratio=0.5)
    assert e.maps.shape == (1, 12, 12)
    patches, boxes = [], []
    for s in M.sess_scales(12, 2, 0.5):                      # 12, 18
        big = M.upsample(xs[0], (s, s), "linear")
        for y1 in M.window_starts(s, 12, 12):
            for x1 in M.window_starts(s, 12, 12):
                patches.append(big[:, y1:y1 + 12, x1:x1 + 12])
                boxes.append((x1, y1, s, s))
    g = refcam.explain(cam_net(), np.stack(patches), "gradcam", target=[2] * len(patches))
    p = M.softmax(g.outputs.astype(np.float64), axis=-1)[:, 2]
    cams = M.normalize(M.upsample(M.relu(g.maps), (12, 12)), "minmax")
    ref = M.gaussian_blur(M.sess_fuse(cams, (p / p.max()).astype(cams.dtype), boxes, (12, 12))[None])
    np.testing.assert_allclose(e.maps, ref, rtol=1e-6, atol=1e-7)
