"""Randomly initialised ResNet-style ONNX models built with onnx.helper (no framework needed).

``resnet(depths=(3, 4, 6, 3), width=64)`` with bottleneck blocks is ResNet-50 sized
(~25.6 M parameters, ~4.1 GFLOPs at 224x224); small settings give test-sized models.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _G:
    def __init__(self, dtype, seed):
        self.nodes, self.inits, self.n = [], [], 0
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype

    def name(self, hint):
        self.n += 1
        return f"{hint}_{self.n}"

    def w(self, shape, scale):
        nm = self.name("w")
        self.inits.append(numpy_helper.from_array((self.rng.standard_normal(shape) * scale).astype(self.dtype), nm))
        return nm

    def node(self, op, ins, hint=None, **attrs):
        out = self.name(hint or op.lower())
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def conv_bn(self, x, cin, cout, k, stride=1, relu=True, hint="conv", gain=1.0):
        w = self.w((cout, cin, k, k), np.sqrt(2.0 / (cin * k * k)))
        y = self.node("Conv", [x, w], hint=hint, kernel_shape=[k, k], strides=[stride, stride],
                      pads=[k // 2] * 4)
        sc = self.w((cout,), 0.1)
        self.inits[-1] = numpy_helper.from_array(
            (gain * (1.0 + numpy_helper.to_array(self.inits[-1]))).astype(self.dtype), sc)
        b = self.w((cout,), 0.1)
        m = self.w((cout,), 0.1)
        v = self.name("var")
        self.inits.append(numpy_helper.from_array((0.5 + self.rng.random(cout)).astype(self.dtype), v))
        y = self.node("BatchNormalization", [y, sc, b, m, v], hint="bn")
        return self.node("Relu", [y], hint="relu") if relu else y


def resnet(depths=(1, 1), width=4, bottleneck=False, classes=5, in_ch=3, size=32, dtype=np.float32,
           seed=0, batch=None, opset=17):
    """A ResNet (He et al. 2016) with random weights; returns (model, names) where names maps
    'stage{i}' to the output tensor of each stage (post-ReLU block output)."""
    g = _G(dtype, seed)
    x = "input"
    y = g.conv_bn(x, in_ch, width, 7, 2, hint="stem")
    y = g.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = width
    names = {}
    exp = 4 if bottleneck else 1
    for si, d in enumerate(depths):
        mid = width * 2 ** si
        cout = mid * exp
        for bi in range(d):
            stride = 2 if (bi == 0 and si > 0) else 1
            if bottleneck:
                h = g.conv_bn(y, cin, mid, 1)
                h = g.conv_bn(h, mid, mid, 3, stride)
                h = g.conv_bn(h, mid, cout, 1, relu=False, gain=0.3)
            else:
                h = g.conv_bn(y, cin, mid, 3, stride)
                h = g.conv_bn(h, mid, cout, 3, relu=False, gain=0.3)
            sc = y if (stride == 1 and cin == cout) else g.conv_bn(y, cin, cout, 1, stride, relu=False, hint="down")
            y = g.node("Relu", [g.node("Add", [h, sc])], hint=f"stage{si}_block{bi}")
            cin = cout
        names[f"stage{si}"] = y
    p = g.node("GlobalAveragePool", [y])
    f = g.node("Flatten", [p])
    fw = g.w((classes, cin), 1.0 / np.sqrt(cin))
    fb = g.w((classes,), 0.1)
    g.nodes.append(helper.make_node("Gemm", [f, fw, fb], ["logits"], name="fc", transB=1))
    et = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    graph = helper.make_graph(g.nodes, "resnet",
                              [helper.make_tensor_value_info(x, et, [batch or "N", in_ch, size, size])],
                              [helper.make_tensor_value_info("logits", et, [batch or "N", classes])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    onnx.checker.check_model(model)
    return model, names
