"""Finite differences are never silently wrong (issue 12.5).

The batched evaluation (copies stacked on the batch axis) and the structured channel shortcut
are checked on a few directions against one-copy-per-run central differences; on disagreement
they are not used.  Every failure is a RefcamError.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from ._harness import session
from ._models import resnet
from refcam.autodiff import SEED_INPUT, build_vjp_model, grad_name
from refcam.autodiff.fd import FiniteDifferences
from refcam.errors import ModelError, RefcamError

R = np.random.default_rng(21)
N, K, H, W, C = 2, 5, 3, 3, 4


def _model(head, inits, batch="N"):
    """x (N, K, H, W) -> Relu = A -> head -> y (N, C), float64."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["A"])] + head, "m",
                          [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [batch, K, H, W])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


WT = R.standard_normal((K, C))


def _gather_head():
    # the dynamo as_strided pattern: the whole batch flattened, a Gather with indices computed for
    # batch N (constant here), reshaped back: stacked copies beyond the first N are never read
    idx = np.arange(N * K * H * W).reshape(N, K, H, W)[:, :, 0, 0].ravel()   # A[n, k, 0, 0]
    head = [helper.make_node("Reshape", ["A", "flat"], ["f"]),
            helper.make_node("Gather", ["f", "idx"], ["g"], axis=0),
            helper.make_node("Reshape", ["g", "nk"], ["p"]),
            helper.make_node("MatMul", ["p", "WT"], ["y"])]
    return head, {"flat": np.array([-1], np.int64), "idx": idx.astype(np.int64),
                  "nk": np.array([-1, K], np.int64), "WT": WT}


def _batch_mean_head():
    # batch statistics in the head (y depends on the other samples): stacking copies changes the
    # values, not the shapes -- the silent case
    head = [helper.make_node("ReduceMean", ["A"], ["p"], axes=[2, 3], keepdims=0),
            helper.make_node("ReduceMean", ["p"], ["mu"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["p", "mu"], ["q"]),
            helper.make_node("MatMul", ["q", "WT"], ["y"])]
    return head, {"WT": WT}


def _vjp(model, x, s):
    v = build_vjp_model(model, "A", seed="y")
    return session(v).run([grad_name("A")], {"x": x, SEED_INPUT: s})[0]


@pytest.mark.parametrize("mode", ["channel", "full"])
@pytest.mark.parametrize("head", [_gather_head, _batch_mean_head], ids=["gather-flat-batch", "batch-mean"])
def test_head_mixing_the_batch_falls_back_to_one_copy_per_run(mode, head):
    model = _model(*head())
    x = R.standard_normal((N, K, H, W)) + 0.5
    s = R.standard_normal((N, C))
    fd = FiniteDifferences(model, "A", seed="y")
    _, r = fd({"x": x}, s, mode=mode)
    if head is _batch_mean_head:
        # y_n depends on every sample: one sample perturbed at a time, the total score differenced
        assert fd.last_check == {"samples_interact": True}
    else:
        dev = fd.last_check["stack_deviation"]   # a number (silent disagreement) or why stacking failed
        assert fd.last_check["stacked"] is False and (isinstance(dev, str) or dev > 10 * fd.last_check["tolerance"])
        if mode == "channel":   # the structured shortcut (seed folding after a reshape) is rejected too
            assert fd.last_check["plan"] == "rejected"
    g = _vjp(model, x, s)
    want = g.sum(axis=(2, 3)) if mode == "channel" else g
    np.testing.assert_allclose(r.value, want, rtol=0, atol=1e-8 * np.abs(want).max())


def test_independent_samples_keep_the_fast_paths():
    model, names = resnet(depths=(1, 1), width=4, size=16, seed=5)
    x = R.standard_normal((2, 3, 16, 16)).astype(np.float32)
    s = R.standard_normal((2, 5)).astype(np.float32)
    fd = FiniteDifferences(model, names["stage1"])
    _, r = fd({"input": x}, s, mode="channel", step=1e-2)
    assert fd.last_check["stacked"] is True and fd.last_check["plan"] == "used"
    assert fd.last_check["plan_deviation"] <= fd.last_check["tolerance"]
    # the check can see an error: its tolerance is far below the derivatives it guards
    assert fd.last_check["tolerance"] < 0.05 * np.abs(r.value).max()


def test_fixed_batch_reshape_is_not_a_raw_numpy_error():
    # Reshape to the constant (N, K*H*W) (a fixed-batch export): stacked copies cannot run
    head = [helper.make_node("Reshape", ["A", "shp"], ["f"]),
            helper.make_node("MatMul", ["f", "W2"], ["y"])]
    w2 = R.standard_normal((K * H * W, C))
    model = _model(head, {"shp": np.array([N, K * H * W], np.int64), "W2": w2}, batch=N)
    x = R.standard_normal((N, K, H, W))
    s = R.standard_normal((N, C))
    fd = FiniteDifferences(model, "A", seed="y")
    a, r = fd({"x": x}, s, mode="channel")
    assert fd.last_check["stacked"] is False
    want = (np.maximum(x, 0) > -1) * (s @ w2.T).reshape(N, K, H, W)     # dS/dA = W2 s, hand formula
    np.testing.assert_allclose(r.value, want.sum(axis=(2, 3)), atol=1e-8 * np.abs(want).sum(axis=(2, 3)).max())


def test_every_failure_is_a_refcam_error():
    model = _model(*_gather_head())
    fd = FiniteDifferences(model, "A", seed="y")
    with pytest.raises(RefcamError):
        fd({"x": R.standard_normal((N + 1, K, H, W))}, R.standard_normal((N + 1, C)))   # Gather out of range
    with pytest.raises(ModelError, match="failed"):
        fd({"wrong": np.zeros((N, K, H, W))}, np.zeros((N, C)))


@pytest.mark.parametrize("kind", ["ConvTranspose-group", "BatchNormalization-9"])
def test_reference_backend_refuses_its_wrong_kernels(kind):
    # onnx.reference's grouped ConvTranspose and BatchNormalization-9 disagree with the spec
    # (measured: 2.3 and 0.08 off): finite differences on them would be silently wrong
    from onnx.reference import ReferenceEvaluator

    from refcam.autodiff.fd import fd_gradients
    from refcam.errors import UnsupportedOpError

    D = TensorProto.DOUBLE
    x = R.standard_normal((2, 3, 4, 5))
    if kind.startswith("ConvTranspose"):
        node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], group=3)
        inits, opset = {"w": R.standard_normal((3, 1, 3, 3)), "b": R.standard_normal(3)}, 17
    else:
        node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
        inits = {k: R.standard_normal(3) for k in "sbm"} | {"v": np.abs(R.standard_normal(3)) + 0.5}
        opset = 13
    g = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", D, [2, 3, 4, 5])],
                          [helper.make_tensor_value_info("y", D, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    if kind.startswith("ConvTranspose"):   # the disagreement: every group gets the bias's first entry
        w = inits["w"]
        y = ReferenceEvaluator(m).run(None, {"x": x})[0]
        want = np.zeros_like(y) + inits["b"][:, None, None]
        for j in range(3):
            for a in range(3):
                for b in range(3):
                    want[:, j, a:a + 4, b:b + 5] += x[:, j] * w[j, 0, a, b]
        assert np.abs(y - want).max() > 0.1
    with pytest.raises(UnsupportedOpError, match=f"{kind.split('-')[0]}.*backend='reference'"):
        fd_gradients(m, {"x": x}, "x", np.ones((2, 3, 6, 7) if kind.startswith("Conv") else (2, 3, 4, 5)),
                     seed="y", backend="reference")
