"""Every backward rule against the finite-difference oracle on small random single/few-op graphs.

Tolerances: float64 graphs (ops onnxruntime runs in float64) use Richardson-extrapolated central
differences with the default step and ``rtol=1e-6`` (relative to the largest gradient entry).
float32-only ops (Conv, pools, Erf, ...) that are *linear* in the differentiated input use step
``h = 1`` (central differences are exact for linear maps, only float32 rounding remains:
``~1e-7 |S| / h``) and ``rtol=1e-4``; float32-only nonlinear ops are checked against float64 FD of
the model's float64 twin run by ``onnx.reference`` (default step, Richardson: ~1e-9), so only the
float32 arithmetic of the VJP remains: ``rtol=1e-4``.
Inputs of piecewise ops are drawn away from their kinks.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from ._harness import WORST, check_op, make_model

R = np.random.default_rng(1234)
F32, F64 = np.float32, np.float64


def rnd(*shape, dtype=F64, lo=None):
    a = R.standard_normal(shape)
    if lo is not None:  # keep |a| >= lo (away from kinks at 0)
        a = np.where(np.abs(a) < lo, np.sign(a + 1e-12) * lo + a, a)
    return a.astype(dtype)


def node(op, ins, outs=("y",), **attrs):
    return helper.make_node(op, list(ins), list(outs), **attrs)


LIN32 = dict(rtol=1e-4, step=1.0, richardson=False)
NL32 = dict(rtol=1e-4, ref64=True)
# onnx.reference evaluates Erf in float32 even for float64 input, so Erf/Gelu keep the float32
# onnxruntime oracle: Richardson removes truncation (O(h^4)), rounding ~1e-7 |S| / h with h = 5e-3
ORT32 = dict(rtol=1e-4)
D64 = dict(rtol=1e-6)

CASES = []


def case(label, nodes, inputs, inits=None, wrt=("x",), opset=17, **kw):
    CASES.append(pytest.param(label, nodes, inputs, inits or {}, list(wrt), opset, kw,
                              id=f"{label}-{len(CASES)}"))


# ---- convolution ----
x = rnd(2, 4, 7, 6, dtype=F32)
for attrs in [{}, dict(strides=[2, 2]), dict(pads=[1, 0, 2, 1]), dict(auto_pad="SAME_UPPER", strides=[2, 2]),
              dict(auto_pad="SAME_LOWER", strides=[2, 3]), dict(dilations=[2, 1], strides=[1, 2], pads=[1, 1, 1, 1]),
              dict(group=2, strides=[3, 2]), dict(group=4, auto_pad="VALID")]:
    grp = attrs.get("group", 1)
    case("Conv", [node("Conv", ["x", "w", "b"], **attrs)], {"x": x},
         {"w": rnd(4, 4 // grp, 3, 2, dtype=F32), "b": rnd(4, dtype=F32)}, **LIN32)
case("Conv", [node("Conv", ["x", "w"], strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0])], {"x": rnd(1, 2, 5, 4, 5, dtype=F32)},
     {"w": rnd(3, 2, 2, 3, 2, dtype=F32)}, **LIN32)  # 3-D
case("Conv", [node("Conv", ["x", "w"], strides=[2], pads=[2, 0])], {"x": rnd(2, 2, 9, dtype=F32)},
     {"w": rnd(3, 2, 3, dtype=F32)}, opset=11, **LIN32)  # 1-D, opset 11
for attrs in [{}, dict(strides=[2, 2], pads=[1, 0, 0, 1]), dict(strides=[2, 2], output_padding=[1, 0]),
              dict(group=2, dilations=[2, 1], strides=[1, 2])]:
    grp = attrs.get("group", 1)
    case("ConvTranspose", [node("ConvTranspose", ["x", "w"], **attrs)], {"x": rnd(2, 4, 4, 5, dtype=F32)},
         {"w": rnd(4, 6 // grp, 3, 2, dtype=F32)}, **LIN32)

# ---- linear algebra ----
for ta, tb in [(0, 0), (1, 0), (0, 1), (1, 1)]:
    a = rnd(3, 4) if not ta else rnd(4, 3)
    bm = rnd(4, 5) if not tb else rnd(5, 4)
    case("Gemm", [node("Gemm", ["x", "b", "c"], transA=ta, transB=tb, alpha=0.7, beta=1.3)], {"x": a, "b": bm},
         {"c": rnd(1, 5)}, wrt=("x", "b"), **D64)
case("Gemm", [node("Gemm", ["x", "b", "c"], beta=2.0)], {"x": rnd(3, 4), "c": rnd(5)}, {"b": rnd(4, 5)},
     wrt=("x", "c"), **D64)
for sa, sb in [((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,))]:
    case("MatMul", [node("MatMul", ["x", "b"])], {"x": rnd(*sa), "b": rnd(*sb)}, wrt=("x", "b"), **D64)

# ---- activations ----
for op, kw in [("Relu", {}), ("LeakyRelu", dict(alpha=0.1)), ("Sigmoid", {}), ("Tanh", {}),
               ("Exp", {}), ("Neg", {}), ("Abs", {})]:
    case(op, [node(op, ["x"], **kw)], {"x": rnd(2, 3, 4, lo=0.05)}, **D64)
case("PRelu", [node("PRelu", ["x", "s"])], {"x": rnd(2, 3, 4, 2, lo=0.05), "s": rnd(3, 1, 1)}, wrt=("x", "s"), **D64)
for op, kw in [("Elu", dict(alpha=0.7)), ("Selu", {}), ("Celu", dict(alpha=1.5)), ("Mish", {}), ("Softsign", {})]:
    case(op, [node(op, ["x"], **kw)], {"x": rnd(2, 3, 4, lo=0.05, dtype=F32)}, opset=18, **NL32)
case("Tile", [node("Tile", ["x", "r"])], {"x": rnd(2, 3, 4)}, {"r": np.array([1, 2, 3])}, **D64)
case("Softplus", [node("Softplus", ["x"])], {"x": rnd(2, 3, 4, dtype=F32)}, **NL32)


def away(x, kinks, gap=0.1):
    """Move entries of x at least ``gap`` away from every kink (piecewise ops)."""
    for k in kinks:
        close = np.abs(x - k) < gap
        x = np.where(close, k + np.sign(x - k + 1e-12) * gap, x)
    return x.astype(F32)


# piecewise linear / quadratic: central differences are exact on each piece, only float32 rounding
# (~1e-7 |S| / h) remains when no kink lies within h = 1e-2 of an entry
PW32 = dict(rtol=1e-3, step=1e-2, richardson=False)
case("HardSigmoid", [node("HardSigmoid", ["x"], alpha=0.3, beta=0.4)],
     {"x": away(rnd(2, 3, 4) * 3, [-4 / 3, 2.0])}, **PW32)   # kinks where 0.3 x + 0.4 = 0 or 1
case("HardSwish", [node("HardSwish", ["x"])], {"x": away(rnd(2, 3, 4) * 3, [-3.0, 3.0])}, **PW32)
case("Erf", [node("Erf", ["x"])], {"x": rnd(2, 3, 4, dtype=F32)}, **ORT32)
case("Gelu", [node("Gelu", ["x"])], {"x": rnd(2, 3, 4, dtype=F32)}, opset=20, **ORT32)
case("Gelu", [node("Gelu", ["x"], approximate="tanh")], {"x": rnd(2, 3, 4, dtype=F32)}, opset=20, **NL32)
case("Clip", [node("Clip", ["x", "lo", "hi"])], {"x": rnd(2, 3, 4, lo=0.05) * 2},
     {"lo": np.array(-0.5), "hi": np.array(1.0)}, opset=13, **D64)
case("Clip", [node("Clip", ["x", "", "hi"])], {"x": rnd(2, 3, 4, lo=0.05, dtype=F32)}, {"hi": np.array(0.5, F32)}, opset=13,
     rtol=1e-4, step=1e-2, richardson=False)
case("Softmax", [node("Softmax", ["x"], axis=1)], {"x": rnd(2, 3, 4)}, opset=13, **D64)
case("Softmax", [node("Softmax", ["x"], axis=1)], {"x": rnd(2, 3, 4)}, opset=11, **D64)  # 2-D coercion
case("LogSoftmax", [node("LogSoftmax", ["x"])], {"x": rnd(2, 3, 4)}, opset=17, **D64)
case("LogSoftmax", [node("LogSoftmax", ["x"], axis=0)], {"x": rnd(2, 3, 4)}, opset=12, **D64)
case("Sqrt", [node("Sqrt", ["x"])], {"x": np.abs(rnd(2, 3)) + 0.5}, **D64)
case("Log", [node("Log", ["x"])], {"x": np.abs(rnd(2, 3)) + 0.5}, **D64)
case("Reciprocal", [node("Reciprocal", ["x"])], {"x": np.abs(rnd(2, 3)) + 0.5}, **D64)
case("Pow", [node("Pow", ["x", "p"])], {"x": np.abs(rnd(2, 3)) + 0.5, "p": rnd(3)}, wrt=("x", "p"), **D64)

# ---- broadcasting arithmetic ----
for op in ["Add", "Sub", "Mul", "Div"]:
    for sa, sb in [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (3, 1)), ((1, 3, 1), (2, 1, 4)), ((4,), (2, 3, 1))]:
        bb = rnd(*sb) if op != "Div" else np.abs(rnd(*sb)) + 0.5
        case(op, [node(op, ["x", "b"])], {"x": rnd(*sa), "b": bb}, wrt=("x", "b"), **D64)
case("Sum", [node("Sum", ["x", "b", "c"])], {"x": rnd(2, 3), "b": rnd(3), "c": rnd(1, 1)}, wrt=("x", "b", "c"), **D64)
case("Mean", [node("Mean", ["x", "b"])], {"x": rnd(2, 3, dtype=F32), "b": rnd(3, dtype=F32)}, wrt=("x", "b"), **LIN32)
case("Max", [node("Max", ["x", "b"])], {"x": rnd(2, 3, 4), "b": rnd(3, 1)}, wrt=("x", "b"), **D64)
case("Min", [node("Min", ["x", "b", "c"])], {"x": rnd(2, 3), "b": rnd(3), "c": rnd(2, 1)}, wrt=("x", "b", "c"), **D64)
case("Where", [node("Where", ["c", "x", "b"])], {"x": rnd(2, 3, 4), "b": rnd(3, 1)},
     {"c": R.random((2, 1, 4)) > 0.5}, wrt=("x", "b"), **D64)
case("Expand", [node("Expand", ["x", "s"])], {"x": rnd(3, 1)}, {"s": np.array([2, 3, 4])}, **D64)

# ---- shape ops ----
case("Reshape", [node("Reshape", ["x", "s"])], {"x": rnd(2, 3, 4)}, {"s": np.array([4, -1])}, **D64)
case("Flatten", [node("Flatten", ["x"], axis=2)], {"x": rnd(2, 3, 4)}, **D64)
case("Squeeze", [node("Squeeze", ["x", "a"])], {"x": rnd(2, 1, 4)}, {"a": np.array([1])}, opset=13, **D64)
case("Squeeze", [node("Squeeze", ["x"], axes=[1])], {"x": rnd(2, 1, 4)}, opset=11, **D64)
case("Unsqueeze", [node("Unsqueeze", ["x", "a"])], {"x": rnd(2, 4)}, {"a": np.array([0, 2])}, opset=13, **D64)
case("Unsqueeze", [node("Unsqueeze", ["x"], axes=[1])], {"x": rnd(2, 4)}, opset=11, **D64)
case("Transpose", [node("Transpose", ["x"], perm=[2, 0, 1])], {"x": rnd(2, 3, 4)}, **D64)
case("Transpose", [node("Transpose", ["x"])], {"x": rnd(2, 3, 4)}, **D64)
case("Concat", [node("Concat", ["x", "b", "x"], axis=1)], {"x": rnd(2, 3, 4), "b": rnd(2, 2, 4)}, wrt=("x", "b"), **D64)
case("Split", [node("Split", ["x"], ["y0", "y1"], axis=1, split=[1, 3]), node("Mul", ["y1", "y1"], ["y"])],
     {"x": rnd(2, 4, 3)}, opset=11, **D64)
case("Split", [node("Split", ["x", "sp"], ["y0", "y1", "y2"], axis=-1), node("Concat", ["y2", "y0"], ["y"], axis=-1)],
     {"x": rnd(2, 5)}, {"sp": np.array([2, 1, 2])}, opset=13, **D64)
case("Split", [node("Split", ["x"], ["y0", "y1"], axis=1, num_outputs=2), node("Sub", ["y0", "y1"], ["y"])],
     {"x": rnd(2, 4)}, opset=18, **D64)
for st, en, ax, sp in [([1], [3], [1], [1]), ([-1, 0], [-10, 4], [2, 0], [-2, 2]), ([0], [100], [-1], [3])]:
    case("Slice", [node("Slice", ["x", "st", "en", "ax", "sp"])], {"x": rnd(3, 4, 5)},
         {"st": np.array(st), "en": np.array(en), "ax": np.array(ax), "sp": np.array(sp)}, **D64)
for mode in ["constant", "reflect", "edge"]:
    case("Pad", [node("Pad", ["x", "p"], mode=mode)], {"x": rnd(2, 3, 4)}, {"p": np.array([0, 1, 2, 0, 2, 1])},
         opset=13, **D64)
case("Pad", [node("Pad", ["x", "p"])], {"x": rnd(2, 3, 4)}, {"p": np.array([0, -1, 2, 0, 1, -1])}, opset=13, **D64)
case("Pad", [node("Pad", ["x", "p", "", "a"], mode="wrap")], {"x": rnd(2, 3, 4)}, {"p": np.array([2, 3]), "a": np.array([-1])},
     opset=19, **D64)
case("Gather", [node("Gather", ["x", "i"], axis=1)], {"x": rnd(2, 4, 3)}, {"i": np.array([[0, 3], [-1, 0]])}, **D64)
case("Gather", [node("Gather", ["x", "i"], axis=0)], {"x": rnd(4, 3)}, {"i": np.array(2)}, **D64)
case("Identity", [node("Identity", ["x"])], {"x": rnd(2, 3)}, **D64)
case("Dropout", [node("Dropout", ["x"])], {"x": rnd(2, 3)}, **D64)
case("Cast", [node("Cast", ["x"], ["c"], to=1), node("Cast", ["c"], to=11)], {"x": rnd(2, 3)},
     rtol=1e-5, step=1.0, richardson=False)

# ---- reductions ----
case("ReduceSum", [node("ReduceSum", ["x", "a"], keepdims=0)], {"x": rnd(2, 3, 4)}, {"a": np.array([0, 2])}, opset=13, **D64)
case("ReduceSum", [node("ReduceSum", ["x"], axes=[1])], {"x": rnd(2, 3, 4)}, opset=11, **D64)
case("ReduceMean", [node("ReduceMean", ["x"], axes=[-1], keepdims=0)], {"x": rnd(2, 3, 4)}, opset=13, **D64)
case("ReduceMean", [node("ReduceMean", ["x", "a"])], {"x": rnd(2, 3, 4)}, {"a": np.array([1, 2])}, opset=18, **D64)
case("ReduceMean", [node("ReduceMean", ["x"], keepdims=0)], {"x": rnd(2, 3, 4)}, opset=18, **D64)
case("ReduceMax", [node("ReduceMax", ["x"], axes=[1], keepdims=0)], {"x": rnd(2, 3, 4)}, opset=13, **D64)
case("GlobalAveragePool", [node("GlobalAveragePool", ["x"])], {"x": rnd(2, 3, 4, 5, dtype=F32)}, **LIN32)
case("GlobalMaxPool", [node("GlobalMaxPool", ["x"])], {"x": R.permutation(120).reshape(2, 3, 4, 5).astype(F32)},
     **LIN32 | {"step": 0.25})

# ---- pooling / resize ----
for attrs in [dict(kernel_shape=[2, 2], strides=[2, 2]), dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
              dict(kernel_shape=[3, 2], strides=[2, 1], ceil_mode=1), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
              dict(kernel_shape=[2, 2], dilations=[2, 1], pads=[1, 0, 0, 1])]:
    # distinct values with gaps >= 1 (a permutation): a step of 0.25 never moves an argmax
    case("MaxPool", [node("MaxPool", ["x"], **attrs)], {"x": R.permutation(252).reshape(2, 3, 7, 6).astype(F32)},
         rtol=1e-4, step=0.25, richardson=False)
case("MaxPool", [node("MaxPool", ["x"], kernel_shape=[3], strides=[2])], {"x": rnd(2, 3, 9)}, opset=16, **D64)
for attrs in [dict(kernel_shape=[2, 2], strides=[2, 2]), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
              dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0),
              dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1, pads=[1, 0, 0, 0], count_include_pad=1),
              dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1, pads=[1, 0, 0, 0]),
              dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER")]:
    case("AveragePool", [node("AveragePool", ["x"], **attrs)], {"x": rnd(2, 3, 7, 6, dtype=F32)}, **LIN32)
case("AveragePool", [node("AveragePool", ["x"], kernel_shape=[2, 3, 2], strides=[2, 2, 1])], {"x": rnd(1, 2, 4, 5, 3, dtype=F32)}, **LIN32)
for attrs, sc in [(dict(mode="nearest"), [1, 1, 2, 2]), (dict(mode="linear"), [1, 1, 2, 1.5]),
                  (dict(mode="linear", coordinate_transformation_mode="align_corners"), [1, 1, 1.5, 2]),
                  (dict(mode="cubic"), [1, 1, 2, 2]), (dict(mode="linear"), [1, 1, 0.5, 0.75])]:
    case("Resize", [node("Resize", ["x", "", "s"], **attrs)], {"x": rnd(2, 3, 4, 4, dtype=F32)},
         {"s": np.array(sc, F32)}, opset=13, **LIN32)
case("Resize", [node("Resize", ["x", "r", "e", "sz"], mode="linear")], {"x": rnd(2, 3, 4, 4, dtype=F32)},
     {"r": np.zeros(0, F32), "e": np.zeros(0, F32), "sz": np.array([2, 3, 7, 5])}, opset=11, **LIN32)

# ---- normalisation ----
case("BatchNormalization", [node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)],
     {"x": rnd(2, 3, 4, 2)}, {"s": rnd(3), "b": rnd(3), "m": rnd(3), "v": np.abs(rnd(3)) + 0.1}, **D64)
case("LayerNormalization", [node("LayerNormalization", ["x", "s", "b"], axis=-2)],
     {"x": rnd(2, 3, 4, 2)}, {"s": rnd(4, 2), "b": rnd(4, 2)}, **D64)
case("LayerNormalization", [node("LayerNormalization", ["x", "s"])], {"x": rnd(2, 3, 5, dtype=F32)},
     {"s": rnd(5, dtype=F32)}, **NL32)
case("InstanceNormalization", [node("InstanceNormalization", ["x", "s", "b"])], {"x": rnd(2, 3, 4, 5, dtype=F32)},
     {"s": rnd(3, dtype=F32), "b": rnd(3, dtype=F32)}, **NL32)


@pytest.mark.parametrize("label,nodes,inputs,inits,wrt,opset,kw", CASES)
def test_rule_matches_finite_differences(label, nodes, inputs, inits, wrt, opset, kw):
    model = make_model(nodes, inputs, ["y"], inits, opset=opset)
    check_op(label, model, dict(inputs), wrt, **kw)


def test_zz_report_worst_errors(capsys):
    """Prints the worst VJP-vs-FD relative error per op (run with -s to see it)."""
    with capsys.disabled():
        print("\nworst VJP-vs-FD relative error per op:")
        for k in sorted(WORST):
            print(f"  {k:22s} {WORST[k]:.2e}")


# ---- rules added for the backend node suite (issue 12) ----
NEW = []


def new_case(label, nodes, inputs, inits=None, wrt=("x",), opset=17, **kw):
    NEW.append(pytest.param(label, nodes, inputs, inits or {}, list(wrt), opset, kw, id=f"{label}-{len(NEW)}"))


new_case("Sin", [node("Sin", ["x"])], {"x": rnd(2, 3, 4)}, **D64)
new_case("Cos", [node("Cos", ["x"])], {"x": rnd(2, 3, 4)}, **D64)
for op in ["Atan", "Sinh", "Cosh", "Asinh", "Tan"]:  # float32-only kernels in onnxruntime
    new_case(op, [node(op, ["x"])], {"x": rnd(2, 3, 4, dtype=F32) * 0.5}, **NL32)
for op in ["Asin", "Acos", "Atanh"]:
    new_case(op, [node(op, ["x"])], {"x": (np.tanh(rnd(2, 3)) * 0.8).astype(F32)}, **NL32)
new_case("Acosh", [node("Acosh", ["x"])], {"x": (np.abs(rnd(2, 3)) + 1.5).astype(F32)}, **NL32)
new_case("CastLike", [node("CastLike", ["x", "t"], ["c"]), node("Mul", ["c", "c"], ["y"])], {"x": rnd(2, 3)},
         {"t": np.zeros(1, F32)}, rtol=1e-4, ref64=False, step=1e-2, richardson=True)
for op in ["ReduceL2", "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum", "ReduceL1", "ReduceProd", "ReduceMin"]:
    xx = np.abs(rnd(2, 3, 4)) + 0.3 if op == "ReduceLogSum" else rnd(2, 3, 4, lo=0.05)
    new_case(op, [node(op, ["x", "a"], keepdims=0)], {"x": xx}, {"a": np.array([1, -1])}, opset=18, **D64)
# runtime axes (a graph input, not a constant); ReduceProd with one zero per group is exact
new_case("ReduceSum-runtime-axes", [node("ReduceSum", ["x", "a"], keepdims=0)], {"x": rnd(2, 3, 4), "a": np.array([0, 2])},
         opset=13, **D64)
new_case("ReduceMean-runtime-axes", [node("ReduceMean", ["x", "a"], keepdims=1)], {"x": rnd(2, 3, 4), "a": np.array([-1])},
         opset=18, **D64)
xz = rnd(2, 3, 4, lo=0.1)
xz[0, 1, 2] = 0.0
new_case("ReduceProd-zero", [node("ReduceProd", ["x"], axes=[2], keepdims=1)], {"x": xz}, opset=13, **D64)
new_case("Slice-runtime", [node("Slice", ["x", "st", "en", "ax", "sp"])],
         {"x": rnd(3, 4, 5), "st": np.array([-1, 1]), "en": np.array([-10, 4]), "ax": np.array([2, 0]),
          "sp": np.array([-2, 2])}, **D64)
for p in (1, 2):
    new_case("LpNormalization", [node("LpNormalization", ["x"], axis=1, p=p)], {"x": rnd(2, 3, 4, lo=0.05)}, **D64)
new_case("LayerNormalization-params", [node("LayerNormalization", ["x", "s", "b"], axis=-2)],
         {"x": rnd(2, 3, 4, 2), "s": rnd(4, 2), "b": rnd(4, 2)}, wrt=("x", "s", "b"), **D64)
new_case("LayerNormalization-stats", [node("LayerNormalization", ["x", "s", "b"], ["o", "m", "r"], axis=1),
                                      node("Mul", ["m", "r"], ["mr"]), node("Add", ["o", "mr"], ["y"])],
         {"x": rnd(2, 3, 4, dtype=F32), "s": rnd(3, 4, dtype=F32), "b": rnd(3, 4, dtype=F32)}, wrt=("x",), **NL32)
new_case("LayerNormalization-stats-only", [node("LayerNormalization", ["x", "s", "b"], ["o", "m", "r"], axis=1),
                                           node("Mul", ["m", "r"], ["y"])],     # Y unused: scale/bias get 0
         {"x": rnd(2, 3, 4, dtype=F32), "s": rnd(3, 4, dtype=F32), "b": rnd(3, 4, dtype=F32)}, wrt=("x", "s", "b"),
         **NL32)
new_case("BatchNormalization-params", [node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)],
         {"x": rnd(2, 3, 4, 2), "s": rnd(3), "b": rnd(3), "m": rnd(3), "v": np.abs(rnd(3)) + 0.1},
         wrt=("x", "s", "b", "m", "v"), **D64)
new_case("InstanceNormalization-params", [node("InstanceNormalization", ["x", "s", "b"])],
         {"x": rnd(2, 3, 4, 5, dtype=F32), "s": rnd(3, dtype=F32), "b": rnd(3, dtype=F32)}, wrt=("x", "s", "b"), **NL32)
new_case("Conv-bias", [node("Conv", ["x", "w", "b"], strides=[2, 1])], {"x": rnd(2, 2, 5, 4, dtype=F32), "b": rnd(3, dtype=F32)},
         {"w": rnd(3, 2, 3, 2, dtype=F32)}, wrt=("x", "b"), **LIN32)
new_case("Pow-base0", [node("Pow", ["x", "p"])], {"x": np.array([[0.0, 1.5, 2.0]]), "p": np.array([2.5, 1.2, 0.7])},
         wrt=("p",), **D64)
# function ops differentiated through their ONNX function body
new_case("RMSNormalization", [node("RMSNormalization", ["x", "s"], axis=-1)], {"x": rnd(2, 3, 4), "s": rnd(4)},
         wrt=("x", "s"), opset=23, **D64)
new_case("GatherElements", [node("GatherElements", ["x", "i"], axis=1)], {"x": rnd(2, 3, 4)},
         {"i": np.array([[[0, 2, 2, -1]], [[1, 1, 0, 0]]])}, **D64)  # repeated and negative indices
# scalar inputs (Clip bounds, Range start/delta) enter as shape-(1,) tensors squeezed in the graph:
# the FD oracle perturbs along a leading axis
SQ = [node("Squeeze", ["lo1", "ax0"], ["lo"]), node("Squeeze", ["hi1", "ax0"], ["hi"])]
new_case("Clip-bounds", SQ + [node("Clip", ["x", "lo", "hi"])],
         {"x": rnd(2, 3, 4, lo=0.05) * 2, "lo1": np.array([-0.55]), "hi1": np.array([0.95])}, {"ax0": np.array([0])},
         wrt=("x", "lo1", "hi1"), opset=13, **D64)
new_case("Clip-min>max", SQ + [node("Clip", ["x", "lo", "hi"])],
         {"x": rnd(2, 3), "lo1": np.array([0.55]), "hi1": np.array([-0.25])}, {"ax0": np.array([0])},
         wrt=("lo1", "hi1"), opset=13, **D64)
new_case("OneHot-values", [node("OneHot", ["i", "d", "x"], axis=1)], {"x": np.array([-0.5, 2.0], F32)},
         {"i": np.array([[1, 9, -2], [0, 3, 4]]), "d": np.array(5)}, **LIN32)  # out-of-range index 9: all off
new_case("Pad-constant-value", SQ[:1] + [node("Pad", ["x", "p", "lo"])], {"x": rnd(2, 3), "lo1": np.array([0.5])},
         {"p": np.array([0, 1, -1, 2]), "ax0": np.array([0])}, wrt=("x", "lo1"), opset=13, **D64)
new_case("Pad-runtime", [node("Pad", ["x", "p"], mode="reflect")], {"x": rnd(2, 4), "p": np.array([1, 2, 0, 3])},
         opset=18, **D64)
new_case("Range-start-delta", SQ + [node("Range", ["lo", "l", "hi"], ["y0"]), node("Mul", ["y0", "y0"], ["y"])],
         {"lo1": np.array([0.3]), "hi1": np.array([1.1])}, {"l": np.array(5.0), "ax0": np.array([0])},
         wrt=("lo1", "hi1"), **D64)
new_case("TopK", [node("TopK", ["x", "k"], ["y", "i"], axis=1)], {"x": rnd(2, 5, 3)}, {"k": np.array([2])}, opset=11, **D64)
for ex, rev in [(0, 0), (1, 0), (0, 1), (1, 1)]:
    new_case("CumSum", [node("CumSum", ["x", "a"], exclusive=ex, reverse=rev)], {"x": rnd(2, 4, 3)}, {"a": np.array(1)},
             opset=14, **D64)
new_case("Trilu", [node("Trilu", ["x", "k"], upper=0)], {"x": rnd(2, 4, 5)}, {"k": np.array(1)}, opset=14, **D64)
for mode in ["DCR", "CRD"]:
    new_case("DepthToSpace", [node("DepthToSpace", ["x"], blocksize=2, mode=mode)], {"x": rnd(2, 8, 2, 3)}, opset=13, **D64)
new_case("SpaceToDepth", [node("SpaceToDepth", ["x"], blocksize=2)], {"x": rnd(2, 2, 4, 6)}, opset=13, **D64)
new_case("Mod", [node("Mod", ["x", "b"], fmod=1)], {"x": rnd(2, 3) * 3 + 0.01, "b": np.array([0.7, -1.3, 2.1])},
         wrt=("x", "b"), opset=13, **D64)
new_case("ScatterElements", [node("ScatterElements", ["x", "i", "u"], axis=1)], {"x": rnd(2, 4), "u": rnd(2, 2)},
         {"i": np.array([[3, 0], [1, 2]])}, wrt=("x", "u"), opset=16, **D64)
new_case("ScatterElements-add", [node("ScatterElements", ["x", "i", "u"], axis=1, reduction="add")],
         {"x": rnd(2, 4), "u": rnd(2, 2)}, {"i": np.array([[3, 3], [1, 2]])}, wrt=("x", "u"), opset=16, **D64)
new_case("ScatterND", [node("ScatterND", ["x", "i", "u"])], {"x": rnd(3, 4), "u": rnd(2, 4)},
         {"i": np.array([[2], [0]])}, wrt=("x", "u"), opset=16, **D64)
new_case("GatherND", [node("GatherND", ["x", "i"])], {"x": rnd(3, 4)}, {"i": np.array([[2, 1], [0, 3], [2, 1]])},
         opset=16, **D64)
# Resize: runtime scales / sizes / roi (in-graph probe) and constant roi with an extrapolation value
for attrs, sc in [(dict(mode="linear"), [1, 1, 0.6, 0.8]), (dict(mode="cubic", antialias=1), [1, 1, 0.5, 0.7]),
                  (dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric"), [1, 1, 1.7, 0.6])]:
    new_case("Resize-runtime-scales", [node("Resize", ["x", "", "s"], **attrs)],
             {"x": rnd(2, 3, 5, 4, dtype=F32), "s": np.array(sc, F32)}, opset=19, **LIN32)
ROI = np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 0.7], F32)
new_case("Resize-crop-runtime-roi", [node("Resize", ["x", "roi", "s"], mode="linear",
                                          coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=7.0)],
         {"x": rnd(2, 3, 5, 4, dtype=F32), "roi": ROI, "s": np.array([1, 1, 1.3, 2.0], F32)}, opset=19, **LIN32)
new_case("Resize-crop-const-roi", [node("Resize", ["x", "roi", "s"], mode="linear",
                                        coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=7.0)],
         {"x": rnd(2, 3, 5, 4, dtype=F32)}, {"roi": np.array([0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3], F32),
                                             "s": np.array([1, 1, 1.3, 2.0], F32)}, opset=19, **LIN32)
for eq, shapes in [("ij,jk->ik", [(3, 4), (4, 5)]), ("bhid,bhjd->bhij", [(2, 2, 3, 4), (2, 2, 5, 4)]),
                   ("ij,jk", [(3, 4), (4, 2)]), ("abc,cd->b", [(2, 3, 4), (4, 2)]), ("i,i->", [(5,), (5,)]),
                   ("ij,kj,k->ik", [(2, 3), (4, 3), (4,)])]:
    names = ["x", "b", "c"][: len(shapes)]
    new_case("Einsum", [node("Einsum", names, equation=eq)], {n: rnd(*sh) for n, sh in zip(names, shapes)},
             wrt=names, opset=13, **D64)
for attrs in [dict(kernel_shape=[2, 2], strides=[2, 1]), dict(kernel_shape=[3, 2], pads=[1, 0, 1, 1], p=3)]:
    new_case("LpPool", [node("LpPool", ["x"], **attrs)], {"x": rnd(2, 2, 5, 4, dtype=F32, lo=0.05)}, opset=18, **NL32)
new_case("Compress", [node("Compress", ["x", "c"], axis=1)], {"x": rnd(2, 4, 3)}, {"c": np.array([True, False, True, True])},
         opset=13, **D64)
new_case("ReverseSequence", [node("ReverseSequence", ["x", "l"], batch_axis=1, time_axis=0)], {"x": rnd(4, 3, 2)},
         {"l": np.array([4, 1, 3])}, opset=13, **D64)
new_case("Unique", [node("Unique", ["x"], ["y", "i", "inv", "cnt"], sorted=1)], {"x": rnd(7)}, opset=13, **D64)
for ac in (0, 1):
    new_case("AffineGrid", [node("AffineGrid", ["x", "sz"], align_corners=ac)], {"x": rnd(2, 2, 3, dtype=F32)},
             {"sz": np.array([2, 3, 4, 5])}, opset=20, **LIN32)
    new_case("AffineGrid", [node("AffineGrid", ["x", "sz"], align_corners=ac)], {"x": rnd(2, 3, 4, dtype=F32)},
             {"sz": np.array([2, 3, 2, 4, 3])}, opset=20, **LIN32)
# onnxruntime's LRN needs an odd size; onnx.reference's LRN disagrees with it (window), so the
# float32 onnxruntime oracle with Richardson is used (ORT32)
for size in (3, 5):
    new_case("LRN", [node("LRN", ["x"], size=size, alpha=0.3, beta=0.6, bias=1.5)], {"x": rnd(2, 5, 3, 2, dtype=F32)},
             opset=13, **ORT32)
xz2 = rnd(2, 4, 3)
xz2[0, 1, 0] = 0.0
xz2[1, 1, 2] = xz2[1, 3, 2] = 0.0  # one and two zeros in a line: exact
for ex, rev in [(0, 0), (1, 0), (0, 1), (1, 1)]:
    new_case("CumProd", [node("CumProd", ["x", "a"], exclusive=ex, reverse=rev)], {"x": xz2}, {"a": np.array(1)},
             opset=26, **D64)
# (GroupNormalization: through its function body; checked by the backend node suite)


@pytest.mark.parametrize("label,nodes,inputs,inits,wrt,opset,kw", NEW)
def test_new_rule_matches_finite_differences(label, nodes, inputs, inits, wrt, opset, kw):
    model = make_model(nodes, inputs, ["y"], inits, opset=opset)
    check_op(label, model, dict(inputs), wrt, **kw)


def test_missing_rule_for_a_needed_input_is_refused_not_zero():
    """A float input without a rule (Resize scales) raises an UnsupportedOpError naming it."""
    from refcam.autodiff import build_vjp_model
    from refcam.errors import UnsupportedOpError

    m = make_model([node("Resize", ["x", "", "s"], mode="linear")],
                   {"x": rnd(1, 1, 4, 4, dtype=F32), "s": np.array([1, 1, 2.0, 2.0], F32)}, ["y"], opset=13)
    with pytest.raises(UnsupportedOpError, match=r"Resize, opset 13.*input 2 \('s'\)"):
        build_vjp_model(m, ["s"])


def test_foreign_domain_model_is_refused_naming_the_op():
    from onnx import TensorProto

    from refcam.autodiff import build_vjp_model
    from refcam.errors import UnsupportedOpError

    g = helper.make_graph([helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml")], "ml",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)], ir_version=8)
    with pytest.raises(UnsupportedOpError, match=r"ai\.onnx\.ml\.Binarizer.*opset ai\.onnx\.ml 1"):
        build_vjp_model(m, "x")


def test_newest_opsets_are_accepted():
    """Every opset the installed onnx defines is accepted (the check said 11-21 and accepted 7-23)."""
    import onnx

    from refcam.autodiff import build_vjp_model

    top = onnx.defs.onnx_opset_version()
    m = make_model([node("Sin", ["x"])], {"x": rnd(2, 3)}, ["y"], opset=top)
    assert build_vjp_model(m, "x", check=False) is not None


def test_control_flow_capture_is_refused_not_zero():
    """A tensor used only inside an If branch (captured) must not get a silent zero gradient."""
    from onnx import TensorProto

    from refcam.autodiff import build_vjp_model
    from refcam.errors import UnsupportedOpError

    then_g = helper.make_graph([helper.make_node("Neg", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.DOUBLE, [2])])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.DOUBLE, [2])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2]),
                           helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(UnsupportedOpError, match=r"If .*opset 17"):
        build_vjp_model(m, "x")


def test_training_dropout_reuses_the_node_mask():
    """Training-mode Dropout with its mask output: dx = g * mask / (1 - ratio), hand-computed."""
    from refcam.autodiff import SEED_INPUT, build_vjp_model, grad_name

    from ._harness import session

    m = make_model([node("Dropout", ["x", "r", "t"], ["y", "mask"], seed=3)], {"x": rnd(4, 5, dtype=F32)}, ["y", "mask"],
                   {"r": np.array(0.25, F32), "t": np.array(True)}, opset=13)
    v = build_vjp_model(m, "x", seed="y")
    x = rnd(4, 5, dtype=F32)
    s = rnd(4, 5, dtype=F32)
    g, mask = session(v).run([grad_name("x"), "mask"], {"x": x, SEED_INPUT: s})
    from refcam._compare import within

    assert mask.any() and not mask.all()
    assert within(g, s.astype(np.float64) * mask / 0.75, rtol=1e-6)


# (collected by test_new_rule_matches_finite_differences: pytest reads NEW after the module ran)
for attrs, shp in [(dict(auto_pad="SAME_UPPER", strides=[2, 2]), None), (dict(auto_pad="SAME_LOWER", strides=[2, 3]), None),
                   (dict(output_shape=[9, 11], strides=[2, 3]), None), (dict(output_shape=[10, 10], strides=[3, 2]), None)]:
    new_case("ConvTranspose-autopad", [node("ConvTranspose", ["x", "w"], **attrs)],
             {"x": rnd(2, 2, 4, 4, dtype=F32), "w": rnd(2, 3, 3, 3, dtype=F32)}, wrt=("x", "w"), **LIN32)

