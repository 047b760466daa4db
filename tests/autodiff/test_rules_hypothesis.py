"""Hypothesis-generated geometries for the convolution and pooling rules.

Conv, ConvTranspose and AveragePool are linear in X: central differences with h = 1 are exact up
to float32 rounding, so the VJP must match to 1e-4 of the largest entry.  MaxPool gets inputs that
are a random permutation of 0..n-1 (no ties, gaps >= 1), so a step h = 0.25 never changes an argmax
and its FD is exact too.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from ._harness import check_op, make_model

FAST = settings(max_examples=25, deadline=None)


@st.composite
def conv_cases(draw):
    nd = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    k = [draw(st.integers(1, 3)) for _ in range(nd)]
    s = [draw(st.integers(1, 3)) for _ in range(nd)]
    d = [draw(st.integers(1, 2)) for _ in range(nd)]
    size = [draw(st.integers((k[i] - 1) * d[i] + 1, (k[i] - 1) * d[i] + 6)) for i in range(nd)]
    auto = draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    attrs = dict(strides=s, dilations=d, group=groups, kernel_shape=k)
    if auto == "NOTSET":
        attrs["pads"] = [draw(st.integers(0, 2)) for _ in range(2 * nd)]
    else:
        attrs["auto_pad"] = auto
        if auto != "VALID":
            attrs["dilations"] = [1] * nd  # onnxruntime refuses SAME_* with dilation
    return nd, cin, cout, size, attrs


@FAST
@given(conv_cases(), st.integers(0, 2**31 - 1))
def test_conv_geometries(case, seed):
    nd, cin, cout, size, attrs = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal([2, cin] + size).astype(np.float32)
    w = rng.standard_normal([cout, cin // attrs["group"]] + attrs["kernel_shape"]).astype(np.float32)
    m = make_model([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], {"x": x}, ["y"], {"w": w})
    check_op("Conv", m, {"x": x}, "x", rtol=1e-4, step=1.0, richardson=False, rng=rng)


@FAST
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 1),
       st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_convtranspose_geometries(groups, k, s, d, extra, size, seed):
    rng = np.random.default_rng(seed)
    pads = [int(v) for v in rng.integers(0, k, 4)]
    room = s * (size - 1) + d * (k - 1)   # keep every output axis >= 1: pad_begin + pad_end <= room
    pads[2] = min(pads[2], room - pads[0])
    pads[3] = min(pads[3], room - pads[1])
    op = [min(extra, s - 1)] * 2  # onnxruntime needs output_padding < stride
    x = rng.standard_normal((2, 2 * groups, size, size + 1)).astype(np.float32)
    w = rng.standard_normal((2 * groups, 2, k, k)).astype(np.float32)
    m = make_model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[s, s], dilations=[d, d],
                                     group=groups, pads=pads, output_padding=op)], {"x": x}, ["y"], {"w": w})
    check_op("ConvTranspose", m, {"x": x}, "x", rtol=1e-4, step=1.0, richardson=False, rng=rng)


@st.composite
def pool_cases(draw):
    nd = draw(st.sampled_from([1, 2, 3]))
    k = [draw(st.integers(1, 3)) for _ in range(nd)]
    s = [draw(st.integers(1, 3)) for _ in range(nd)]
    size = [draw(st.integers(k[i], k[i] + 5)) for i in range(nd)]
    attrs = dict(kernel_shape=k, strides=s, ceil_mode=draw(st.integers(0, 1)))
    auto = draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto == "NOTSET":
        attrs["pads"] = [draw(st.integers(0, k[i % nd] - 1)) for i in range(2 * nd)]
    else:
        attrs["auto_pad"] = auto
        attrs["ceil_mode"] = 0
        if auto != "VALID":  # onnxruntime computes negative pads for SAME_* with stride > kernel
            attrs["strides"] = [min(a, b) for a, b in zip(s, k)]
    return nd, size, attrs


@FAST
@given(pool_cases(), st.integers(0, 1), st.integers(0, 2**31 - 1))
def test_averagepool_geometries(case, cip, seed):
    nd, size, attrs = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal([2, 2] + size).astype(np.float32)
    m = make_model([helper.make_node("AveragePool", ["x"], ["y"], count_include_pad=cip, **attrs)], {"x": x}, ["y"])
    check_op("AveragePool", m, {"x": x}, "x", rtol=1e-4, step=1.0, richardson=False, rng=rng)


@FAST
@given(pool_cases(), st.integers(0, 2**31 - 1))
def test_maxpool_geometries(case, seed):
    nd, size, attrs = case
    rng = np.random.default_rng(seed)
    shape = [2, 2] + size
    x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float32)
    m = make_model([helper.make_node("MaxPool", ["x"], ["y"], **attrs)], {"x": x}, ["y"], opset=17)
    check_op("MaxPool", m, {"x": x}, "x", rtol=1e-4, step=0.25, richardson=False, rng=rng)


@FAST
@given(conv_cases(), st.integers(0, 2**31 - 1))
def test_conv_weight_and_bias_geometries(case, seed):
    """Weight and bias gradients (Conv is linear in W and B: FD with h = 1 is exact)."""
    nd, cin, cout, size, attrs = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal([2, cin] + size).astype(np.float32)
    w = rng.standard_normal([cout, cin // attrs["group"]] + attrs["kernel_shape"]).astype(np.float32)
    bias = rng.standard_normal([cout]).astype(np.float32)
    feeds = {"x": x, "w": w, "b": bias}
    m = make_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)], feeds, ["y"])
    check_op("Conv-weight", m, feeds, ["w", "b"], rtol=1e-4, step=1.0, richardson=False, rng=rng)


@FAST
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 1),
       st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_convtranspose_weight_geometries(groups, k, s, d, extra, size, seed):
    rng = np.random.default_rng(seed)
    pads = [int(v) for v in rng.integers(0, k, 4)]
    room = s * (size - 1) + d * (k - 1)
    pads[2] = min(pads[2], room - pads[0])
    pads[3] = min(pads[3], room - pads[1])
    op = [min(extra, s - 1)] * 2
    x = rng.standard_normal((2, 2 * groups, size, size + 1)).astype(np.float32)
    w = rng.standard_normal((2 * groups, 2, k, k)).astype(np.float32)
    bias = rng.standard_normal((2 * groups,)).astype(np.float32)
    feeds = {"x": x, "w": w, "b": bias}
    m = make_model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[s, s], dilations=[d, d],
                                     group=groups, pads=pads, output_padding=op)], feeds, ["y"])
    check_op("ConvTranspose-weight", m, feeds, ["w", "b"], rtol=1e-4, step=1.0, richardson=False, rng=rng)
