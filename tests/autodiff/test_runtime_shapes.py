"""Shapes from the run (issue 12.1) and run-time tensors as rule inputs (12.2).

Every graph here hides something from static shape inference -- sizes (symbolic input axes),
index tensors (fed as graph inputs, so they are not constants), ranks (a Reshape to a shape fed
at run time) -- and every gradient is checked against float64 central differences.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ._harness import WORST, session, to_float64
from refcam.autodiff import SEED_INPUT, build_vjp_model, grad_name
from refcam.autodiff.fd import fd_gradients
from refcam.autodiff.rules import NeedsRuntimeShapes
from refcam._compare import max_abs_error
from refcam.errors import ModelError

R = np.random.default_rng(12)
D = TensorProto.DOUBLE
I64 = TensorProto.INT64


def graph(nodes, inputs, opset=17, inits=None, out=D):
    """``inputs``: name -> (elem, dims) with dims a list (str = symbolic) or None (unknown rank)."""
    g = helper.make_graph(nodes, "t",
                          [helper.make_tensor_value_info(k, e, d) for k, (e, d) in inputs.items()],
                          [helper.make_tensor_value_info("y", out, None)],
                          [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))


def check(label, model, feeds, *, wrt="x", runtime_shapes=None, rtol=1e-6, ref64=False):
    """VJP vs float64 central differences (Richardson) for a random seed; returns the gradient.

    ``ref64``: a float32 model (ops onnxruntime runs in float32 only), differenced on its float64
    twin by ``onnx.reference``."""
    y = session(model).run(["y"], feeds)[0]
    s = R.standard_normal(y.shape).astype(y.dtype)
    vjp = build_vjp_model(model, wrt, seed="y", runtime_shapes=runtime_shapes)
    got = session(vjp).run([grad_name(wrt)], {**feeds, SEED_INPUT: s})[0]
    if ref64:
        f64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
        _, fd = fd_gradients(to_float64(model), f64, wrt, s.astype(np.float64), seed="y", batched=False,
                             backend="reference")
    else:
        _, fd = fd_gradients(model, feeds, wrt, s, seed="y", batched=False)
    assert got.shape == fd.value.shape
    err = float(np.max(np.abs(got - fd.value)) / max(np.max(np.abs(fd.value)), 1e-12))
    WORST[label] = max(WORST.get(label, 0.0), err)
    assert err <= rtol, f"{label}: relative error {err:.3g}"
    return got


@pytest.mark.parametrize("steps", [[1, 1], [2, -1], [-2, 3]])
def test_slice_with_runtime_starts_ends_axes_steps(steps):
    x = R.standard_normal((2, 5, 7))
    st = np.array([1, -1] if steps[1] < 0 else [1, 0], np.int64) if steps[0] > 0 else np.array([-1, 1], np.int64)
    en = np.array([5, -8] if steps[1] < 0 else [5, 6], np.int64) if steps[0] > 0 else np.array([-6, 7], np.int64)
    m = graph([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["s"]),
               helper.make_node("Mul", ["s", "s"], ["y"])],
              {"x": (D, ["N", "A", "B"]), "st": (I64, [2]), "en": (I64, [2]), "ax": (I64, [2]), "sp": (I64, [2])})
    feeds = {"x": x, "st": st, "en": en, "ax": np.array([1, 2], np.int64), "sp": np.array(steps, np.int64)}
    g = check("Slice (run-time)", m, feeds)
    # hand oracle: d(s^2)/dx = 2 s seed at the sliced positions, 0 elsewhere
    sl = (slice(None), slice(st[0], en[0], steps[0]), slice(st[1], en[1], steps[1]))
    assert np.count_nonzero(g) == x[sl].size


def test_slice_with_constant_indices_on_unknown_sizes():
    m = graph([helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"])], {"x": (D, ["N", "A"])}, 13,
              inits={"st": np.array([1], np.int64), "en": np.array([-1], np.int64), "ax": np.array([1], np.int64)})
    g = check("Slice (run-time)", m, {"x": R.standard_normal((3, 6))})
    assert np.all(g[:, [0, 5]] == 0)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_with_runtime_pads(mode):
    x = R.standard_normal((2, 3, 4))
    m = graph([helper.make_node("Pad", ["x", "p"], ["q"], mode=mode),
               helper.make_node("Mul", ["q", "q"], ["y"])], {"x": (D, ["N", "A", "B"]), "p": (I64, [6])})
    check(f"Pad {mode} (run-time)", m, {"x": x, "p": np.array([0, 2, 1, 0, 1, 2], np.int64)})


def test_gather_on_axis_of_runtime_size_with_repeated_and_negative_indices():
    # the dynamo as_strided pattern: flatten the whole batch, gather with computed indices
    x = R.standard_normal((2, 3, 4))
    m = graph([helper.make_node("Reshape", ["x", "flat"], ["f"]),
               helper.make_node("Gather", ["f", "i"], ["g"], axis=0),
               helper.make_node("Mul", ["g", "g"], ["y"])],
              {"x": (D, ["N", 3, 4]), "i": (I64, [2, 3])}, inits={"flat": np.array([-1], np.int64)})
    idx = np.array([[0, 5, 5], [-1, 7, 23]], np.int64)
    g = check("Gather (run-time size)", m, {"x": x, "i": idx})
    want = np.zeros(24)
    np.add.at(want, idx.ravel() % 24, 2 * x.ravel()[idx.ravel() % 24])   # seed-free structure check
    assert set(np.flatnonzero(g.ravel())) <= set(np.flatnonzero(want))


def test_tile_with_runtime_repeats_and_sizes():
    m = graph([helper.make_node("Tile", ["x", "r"], ["t"]), helper.make_node("Mul", ["t", "t"], ["y"])],
              {"x": (D, ["N", "A"]), "r": (I64, [2])})
    check("Tile (run-time)", m, {"x": R.standard_normal((2, 3)), "r": np.array([2, 3], np.int64)})


def test_expand_reshape_squeeze_unsqueeze_with_runtime_shapes_and_axes():
    # x (N, 1, A) expanded to a run-time shape: the broadcast axis has unknown size statically
    m = graph([helper.make_node("Expand", ["x", "shp"], ["e"]),
               helper.make_node("Reshape", ["e", "rs"], ["r"]),
               helper.make_node("Unsqueeze", ["r", "ua"], ["u"]),
               helper.make_node("Squeeze", ["u", "ua"], ["v"]),
               helper.make_node("Mul", ["v", "v"], ["y"])],
              {"x": (D, ["N", "B", "A"]), "shp": (I64, [3]), "rs": (I64, [2]), "ua": (I64, [1])})
    feeds = {"x": R.standard_normal((2, 1, 3)), "shp": np.array([2, 4, 3], np.int64),
             "rs": np.array([2, 12], np.int64), "ua": np.array([1], np.int64)}
    g = check("Expand/Reshape/Squeeze (run-time)", m, feeds)
    np.testing.assert_allclose(g.shape, (2, 1, 3))


def test_broadcast_add_with_unknown_size_one_axis_is_summed_at_run_time():
    # b's axis 0 has an unknown size that is 1 at run time: the gradient must be summed over it
    m = graph([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Mul", ["a", "a"], ["y"])],
              {"x": (D, ["N", 3]), "b": (D, ["M", 3])})
    feeds = {"x": R.standard_normal((4, 3)), "b": R.standard_normal((1, 3))}
    g = check("Add (run-time broadcast)", m, feeds, wrt="b")
    assert g.shape == (1, 3)


@pytest.mark.parametrize("pads", [[1, 0, 1, 1], [0, 0, 0, 0]])
def test_conv_stride_two_with_runtime_spatial_sizes(pads):
    # onnxruntime's Conv is float32 only: float32 VJP vs float64 differences of the float64 twin.
    # need = s(o-1) + d(k-1) + 1 - p_b - n: > 0 (crop: 7 with pads 1,1), 0, < 0 (zero-pad: 6, 8
    # without pads, the last row/column is never read)
    w = R.standard_normal((2, 3, 3, 3)).astype(np.float32)
    m = graph([helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=pads)],
              {"x": (TensorProto.FLOAT, ["N", 3, "H", "W"])}, inits={"w": w}, out=TensorProto.FLOAT)
    for hw in ((7, 8), (6, 5), (5, 9)):
        check("Conv stride 2 (run-time sizes)", m, {"x": R.standard_normal((2, 3) + hw).astype(np.float32)},
              rtol=1e-5, ref64=True)


@pytest.mark.parametrize("strides", [[2, 2], [1, 1]])
def test_conv_weight_and_bias_gradients_with_runtime_spatial_sizes(strides):
    # x, W and B differentiated together (so the rule takes the run-time-size path for x and must
    # keep W's and B's adjoints beside it), x's spatial axes symbolic.  W, B as graph inputs and as
    # initializers (same function; differences taken on the graph-input twin).  Weight: correlation
    # of x^T with g^T (stride d, dilation s), cropped to k; bias: sum of g over batch and space.
    w = R.standard_normal((2, 3, 3, 3)).astype(np.float32)
    bias = R.standard_normal(2).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=strides, pads=[1, 0, 1, 1])
    x_in = {"x": (TensorProto.FLOAT, ["N", 3, "H", "W"])}
    fed = graph([node], {**x_in, "w": (TensorProto.FLOAT, [2, 3, 3, 3]), "b": (TensorProto.FLOAT, [2])},
                out=TensorProto.FLOAT)
    baked = graph([node], x_in, inits={"w": w, "b": bias}, out=TensorProto.FLOAT)
    for hw in ((7, 8), (6, 5)):
        x = R.standard_normal((2, 3) + hw).astype(np.float32)
        s = R.standard_normal(session(fed).run(["y"], {"x": x, "w": w, "b": bias})[0].shape).astype(np.float32)
        f64 = {"x": x.astype(np.float64), "w": w.astype(np.float64), "b": bias.astype(np.float64)}
        for model, feeds in ((fed, {"x": x, "w": w, "b": bias}), (baked, {"x": x})):
            vjp = build_vjp_model(model, ["x", "w", "b"], seed="y")
            got = session(vjp).run([grad_name(t) for t in "xwb"], {**feeds, SEED_INPUT: s})
            for t, gt in zip("xwb", got):
                _, fd = fd_gradients(to_float64(fed), f64, t, s.astype(np.float64), seed="y", batched=False,
                                     backend="reference")
                err = max_abs_error(gt, fd.value) / float(np.max(np.abs(fd.value)))
                WORST["Conv parameters (run-time sizes)"] = max(WORST.get("Conv parameters (run-time sizes)", 0.0), err)
                assert gt.shape == fd.value.shape and err <= 1e-5, (t, err)


def test_unknown_rank_is_read_from_the_run():
    # Reshape to a shape fed at run time: shape inference cannot know the rank of r
    x = R.standard_normal((2, 6))
    m = graph([helper.make_node("Reshape", ["x", "shp"], ["r"]),
               helper.make_node("Transpose", ["r"], ["t"]),
               helper.make_node("Softmax", ["t"], ["y"], axis=0)],
              {"x": (D, ["N", 6]), "shp": (I64, [None])})
    feeds = {"x": x, "shp": np.array([2, 3, 2], np.int64)}
    with pytest.raises(NeedsRuntimeShapes, match="rank of tensor"):
        build_vjp_model(m, "x", seed="y")
    assert issubclass(NeedsRuntimeShapes, ModelError)
    calls = []

    def probe():  # what refcam.onnx.Model.runtime_shapes returns: name -> (shape, elem)
        calls.append(1)
        sess = session(_with_outputs(m, ["r", "t"]))
        r, t = sess.run(["r", "t"], feeds)
        return {"r": (r.shape, D), "t": (t.shape, D)}

    g = check("Transpose (rank from the run)", m, feeds, runtime_shapes=probe)
    assert calls == [1] and g.shape == x.shape
    # the built graph does not depend on the probe's batch size
    vjp = build_vjp_model(m, "x", seed="y", runtime_shapes=probe)
    x3 = R.standard_normal((4, 6))
    out = session(vjp).run([grad_name("x")], {"x": x3, "shp": np.array([4, 3, 2], np.int64),
                                              SEED_INPUT: np.ones((2, 3, 4))})[0]
    assert out.shape == x3.shape


@pytest.mark.parametrize("op", ["Slice", "Pad-constant", "Pad-reflect"])
def test_slice_and_pad_with_constant_indices_need_no_rank(op):
    # rank of r unknown and no run at hand: Slice / Pad with constant starts or pads take their
    # rank-free run-time form (the node on the flat positions) instead of asking for a probe;
    # Pad's constant_value (a graph input) gets sum(g) - sum(dx).
    ints = lambda *v: np.array(v, np.int64)  # noqa: E731
    if op == "Slice":
        node = helper.make_node("Slice", ["r", "st", "en", "ax"], ["q"])
        inits, extra, wrt = {"st": ints(1), "en": ints(-1), "ax": ints(-1)}, {}, ["x"]
    else:
        mode = op.split("-")[1]
        ins = ["r", "p", "c"] if mode == "constant" else ["r", "p"]
        node = helper.make_node("Pad", ins, ["q"], mode=mode)
        inits, wrt = {"p": ints(0, 1, 0, 0, 0, 1)}, ["x", "c1"] if mode == "constant" else ["x"]
        extra = {"c1": (D, [1])} if mode == "constant" else {}
    sq = [helper.make_node("Squeeze", ["c1"], ["c"])] if extra else []     # constant_value: a scalar
    m = graph([helper.make_node("Reshape", ["x", "shp"], ["r"]), *sq, node, helper.make_node("Mul", ["q", "q"], ["y"])],
              {"x": (D, ["N", 6]), "shp": (I64, [None]), **extra}, 16, inits=inits)
    feeds = {"x": R.standard_normal((2, 6)), "shp": ints(2, 3, 2)}
    if extra:
        feeds["c1"] = np.array([0.7])
    for w in wrt:
        check(f"{op} (rank-free)", m, feeds, wrt=w)


def _with_outputs(m, names):
    p = onnx.ModelProto()
    p.CopyFrom(m)
    del p.graph.output[:]
    p.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return p


def test_gradients_api_probes_unknown_ranks_once_and_serves_every_batch(monkeypatch):
    from refcam.autodiff import gradients
    from refcam.onnx import Model

    # the PaddlePaddle flatten: Shape -> Cast(int32) -> Slice -> Cast -> Concat -> Reshape; shape
    # inference cannot give the rank of r (nor of the opset-11 Softmax after it)
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.INT32),
             helper.make_node("Slice", ["s32", "z", "o"], ["n32"]),
             helper.make_node("Cast", ["n32"], ["n"], to=TensorProto.INT64),
             helper.make_node("Concat", ["n", "tail"], ["shp"], axis=0),
             helper.make_node("Reshape", ["x", "shp"], ["r"]),
             helper.make_node("Softmax", ["r"], ["p"], axis=1),
             helper.make_node("Flatten", ["p"], ["y"], axis=1)]
    inits = {"z": np.array([0], np.int32), "o": np.array([1], np.int32), "tail": np.array([2, 3], np.int64)}
    proto = graph(nodes, {"x": (D, ["N", 6])}, inits=inits, opset=11)
    model = Model(proto)
    assert model.unknown_ranks()[:2] == ["r", "p"]
    probes = []
    real = Model.runtime_shapes
    monkeypatch.setattr(Model, "runtime_shapes", lambda self, x: probes.append(x.shape) or real(self, x))
    for n in (5, 3):
        x = R.standard_normal((n, 6))
        r = gradients(model, x, wrt="input", target=4)
        seed = np.zeros((n, 6))
        seed[:, 4] = 1
        _, fd = fd_gradients(proto, {"x": x}, "x", seed, seed="y")
        err = np.max(np.abs(r.gradients[model.input_name][:, 0] - fd.value)) / np.max(np.abs(fd.value))
        assert err <= 1e-7
    assert probes == [(5, 6)]       # one probe (one sample of the first call), one gradient graph
