"""A zoo of small ONNX models built with :mod:`onnx.helper` and seeded NumPy weights (no torch).

Every builder returns an :class:`onnx.ModelProto` (opset 17, IR version 8) that onnxruntime loads.
The weights come from ``numpy.random.default_rng(seed)`` with He-style scaling so activations stay
O(1).  The models are public so tests, notebooks and benchmarks share them:

==================  ==============================================================================
name                what it exercises
==================  ==============================================================================
``vgg``             Conv/Relu/MaxPool, Flatten → Gemm → Relu → Gemm; legacy torch tensor names
``resnet``          Conv + BatchNormalization, Add skips, GAP → Flatten → Gemm; dynamo metadata
``mobilenet``       depthwise Conv, Clip (ReLU6), HardSwish, squeeze-excite, GAP → Gemm
``cam``             Conv → Relu → Conv → Relu → GlobalAveragePool → Flatten → Gemm (CAM head)
``cam_matmul``      same, ReduceMean → Reshape → MatMul → Add head (dynamo-export style)
``conv3d``          3-D convolutions on (N, 1, D, H, W) volumes, GAP → Gemm
``nhwc``            NHWC input and activations (tf2onnx style), ReduceMean(1,2) → MatMul → Add
``softmax``         the ``cam`` net ending in Softmax
``dynamic``         the ``cam`` net with symbolic height and width
``batch1``          the ``cam`` net with the batch axis fixed to 1
``constant``        the ``cam`` net with every weight in a Constant node (PaddlePaddle style)
``segmentation``    fully convolutional, per-pixel class scores ``(N, 3, H, W)`` (callable targets)
==================  ==============================================================================

>>> sorted(ZOO)[:3]
['batch1', 'cam', 'cam_matmul']
>>> toy_model("cam").graph.input[0].name
'input'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "IR_VERSION",
    "OPSET",
    "ZOO",
    "cam_net",
    "conv3d_net",
    "mobilenet_like",
    "nhwc_net",
    "resnet50_sized",
    "segmentation_net",
    "resnet_like",
    "toy_model",
    "vgg_like",
]

OPSET = 17
IR_VERSION = 8


class _Builder:
    """Accumulates nodes and weights; ``const=True`` stores weights in Constant nodes."""

    def __init__(self, seed: int, *, const: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.const = const

    def weight(self, name: str, arr: np.ndarray) -> str:
        arr = np.asarray(arr)
        if self.const:
            self.nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [name],
                    name=name + "_const",
                    value=numpy_helper.from_array(arr, name),
                )
            )
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(
        self,
        op: str,
        inputs: Sequence[str],
        out: str,
        *,
        scope: Sequence[str] | None = None,
        **attrs,
    ) -> str:
        n = helper.make_node(op, list(inputs), [out], name=out + "_node", **attrs)
        if scope is not None:  # torch dynamo exporter metadata
            entry = n.metadata_props.add()
            entry.key = "pkg.torch.onnx.name_scopes"
            entry.value = repr(["", *scope, out])
        self.nodes.append(n)
        return out

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int | Sequence[int],
        out: str,
        *,
        stride: int = 1,
        group: int = 1,
        pad: bool = True,
        bias: bool = True,
        scope=None,
        ndim: int = 2,
    ) -> str:
        ks = [k] * ndim if isinstance(k, int) else list(k)
        fan_in = cin // group * int(np.prod(ks))
        w = (self.rng.standard_normal((cout, cin // group, *ks)) * np.sqrt(2.0 / fan_in)).astype(
            np.float32
        )
        ins = [x, self.weight(out + ".weight", w)]
        if bias:
            ins.append(
                self.weight(
                    out + ".bias", (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
                )
            )
        pads = [kk // 2 for kk in ks] * 2 if pad else [0] * (2 * ndim)
        return self.node(
            "Conv",
            ins,
            out,
            scope=scope,
            kernel_shape=ks,
            strides=[stride] * ndim,
            pads=pads,
            group=group,
        )

    def bn(self, x: str, c: int, out: str, scope=None) -> str:
        r = self.rng
        ins = [
            x,
            self.weight(out + ".gamma", (1 + 0.1 * r.standard_normal(c)).astype(np.float32)),
            self.weight(out + ".beta", (0.1 * r.standard_normal(c)).astype(np.float32)),
            self.weight(out + ".mean", (0.1 * r.standard_normal(c)).astype(np.float32)),
            self.weight(out + ".var", (1 + 0.2 * r.random(c)).astype(np.float32)),
        ]
        return self.node("BatchNormalization", ins, out, scope=scope, epsilon=1e-5)

    def linear_weights(self, cin: int, cout: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        w = (self.rng.standard_normal((cout, cin)) * np.sqrt(1.0 / cin)).astype(np.float32)
        b = (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        return w, b

    def gemm(self, x: str, cin: int, cout: int, out: str, scope=None) -> str:
        w, b = self.linear_weights(cin, cout, out)
        return self.node(
            "Gemm",
            [x, self.weight(out + ".weight", w), self.weight(out + ".bias", b)],
            out,
            scope=scope,
            transB=1,
        )

    def model(
        self, name: str, inp: onnx.ValueInfoProto, outs: Sequence[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, [inp], list(outs), initializer=self.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="refcam.onnx.toy_models",
        )
        onnx.checker.check_model(model)
        return model


def _input(shape, name: str = "input") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _output(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def vgg_like(
    *, num_classes: int = 10, size: int = 16, batch: int | str = "N", seed: int = 0
) -> onnx.ModelProto:
    """VGG-like: two Conv→Relu→MaxPool stages, Flatten, Gemm→Relu→Gemm.

    Tensor names follow torch's legacy exporter (``/features/features.1/Relu_output_0``), so module
    paths such as ``features.1`` can be derived from them.  Input ``(N, 3, size, size)``.
    """
    b = _Builder(seed)
    x = "input"
    x = b.conv(x, 3, 8, 3, "/features/features.0/Conv_output_0")
    x = b.node("Relu", [x], "/features/features.1/Relu_output_0")
    x = b.node(
        "MaxPool", [x], "/features/features.2/MaxPool_output_0", kernel_shape=[2, 2], strides=[2, 2]
    )
    x = b.conv(x, 8, 16, 3, "/features/features.3/Conv_output_0")
    x = b.node("Relu", [x], "/features/features.4/Relu_output_0")
    x = b.node(
        "MaxPool", [x], "/features/features.5/MaxPool_output_0", kernel_shape=[2, 2], strides=[2, 2]
    )
    x = b.node("Flatten", [x], "/Flatten_output_0", axis=1)
    s = size // 4
    x = b.gemm(x, 16 * s * s, 32, "/classifier/classifier.0/Gemm_output_0")
    x = b.node("Relu", [x], "/classifier/classifier.1/Relu_output_0")
    x = b.gemm(x, 32, num_classes, "logits")
    return b.model(
        "vgg_like", _input([batch, 3, size, size]), [_output("logits", [batch, num_classes])]
    )


def resnet_like(*, num_classes: int = 10, size: int = 16, seed: int = 1) -> onnx.ModelProto:
    """ResNet-like: stem Conv→BN→Relu, an identity block and a strided block with a 1×1 projection.

    Both blocks end in ``Add`` skips followed by Relu; head GAP → Flatten → Gemm.  Nodes carry
    ``pkg.torch.onnx.name_scopes`` metadata like torch's dynamo exporter, with FX-style tensor
    names (``relu_3``), so ``layer2`` resolves to the block output.  Input ``(N, 3, size, size)``.
    """
    b = _Builder(seed)
    x = b.conv("input", 3, 8, 3, "conv2d", bias=False, scope=["conv1"])
    x = b.bn(x, 8, "batch_norm", scope=["bn1"])
    stem = b.node("Relu", [x], "relu", scope=["relu"])
    # layer1: identity block
    s1 = ["layer1", "layer1.0"]
    x = b.conv(stem, 8, 8, 3, "conv2d_1", bias=False, scope=s1 + ["layer1.0.conv1"])
    x = b.bn(x, 8, "batch_norm_1", scope=s1 + ["layer1.0.bn1"])
    x = b.node("Relu", [x], "relu_1", scope=s1 + ["layer1.0.relu"])
    x = b.conv(x, 8, 8, 3, "conv2d_2", bias=False, scope=s1 + ["layer1.0.conv2"])
    x = b.bn(x, 8, "batch_norm_2", scope=s1 + ["layer1.0.bn2"])
    x = b.node("Add", [x, stem], "add", scope=s1)
    l1 = b.node("Relu", [x], "relu_2", scope=s1 + ["layer1.0.relu"])
    # layer2: strided block with projection
    s2 = ["layer2", "layer2.0"]
    x = b.conv(l1, 8, 16, 3, "conv2d_3", stride=2, bias=False, scope=s2 + ["layer2.0.conv1"])
    x = b.bn(x, 16, "batch_norm_3", scope=s2 + ["layer2.0.bn1"])
    x = b.node("Relu", [x], "relu_3", scope=s2 + ["layer2.0.relu"])
    x = b.conv(x, 16, 16, 3, "conv2d_4", bias=False, scope=s2 + ["layer2.0.conv2"])
    x = b.bn(x, 16, "batch_norm_4", scope=s2 + ["layer2.0.bn2"])
    p = b.conv(
        l1,
        8,
        16,
        1,
        "conv2d_5",
        stride=2,
        bias=False,
        scope=s2 + ["layer2.0.downsample", "layer2.0.downsample.0"],
    )
    p = b.bn(p, 16, "batch_norm_5", scope=s2 + ["layer2.0.downsample", "layer2.0.downsample.1"])
    x = b.node("Add", [x, p], "add_1", scope=s2)
    x = b.node("Relu", [x], "relu_4", scope=s2 + ["layer2.0.relu"])
    x = b.node("GlobalAveragePool", [x], "avgpool", scope=["avgpool"])
    x = b.node("Flatten", [x], "flatten", axis=1)
    x = b.gemm(x, 16, num_classes, "logits", scope=["fc"])
    return b.model(
        "resnet_like", _input(["N", 3, size, size]), [_output("logits", ["N", num_classes])]
    )


def mobilenet_like(*, num_classes: int = 10, size: int = 16, seed: int = 2) -> onnx.ModelProto:
    """MobileNet-like: Conv(s2)→HardSwish, depthwise Conv→Clip(0, 6), squeeze-excite
    (GlobalAveragePool→Conv→Relu→Conv→HardSigmoid→Mul), pointwise Conv→HardSwish, GAP→Flatten→Gemm.
    Input ``(N, 3, size, size)``.
    """
    b = _Builder(seed)
    lo = b.weight("clip_min", np.array(0.0, np.float32))
    hi = b.weight("clip_max", np.array(6.0, np.float32))
    x = b.conv("input", 3, 16, 3, "stem_conv", stride=2)
    x = b.node("HardSwish", [x], "stem_act")
    x = b.conv(x, 16, 16, 3, "dw_conv", group=16)
    x = b.node("Clip", [x, lo, hi], "dw_act")
    se = b.node("GlobalAveragePool", [x], "se_pool")
    se = b.conv(se, 16, 4, 1, "se_reduce", pad=False)
    se = b.node("Relu", [se], "se_relu")
    se = b.conv(se, 4, 16, 1, "se_expand", pad=False)
    se = b.node("HardSigmoid", [se], "se_gate", alpha=1.0 / 6.0, beta=0.5)
    x = b.node("Mul", [x, se], "se_scale")
    x = b.conv(x, 16, 24, 1, "pw_conv", pad=False)
    x = b.node("HardSwish", [x], "pw_act")
    x = b.node("GlobalAveragePool", [x], "pool")
    x = b.node("Flatten", [x], "flatten", axis=1)
    x = b.gemm(x, 24, num_classes, "logits")
    return b.model(
        "mobilenet_like", _input(["N", 3, size, size]), [_output("logits", ["N", num_classes])]
    )


def cam_net(
    *,
    num_classes: int = 5,
    size: int = 12,
    channels: int = 6,
    head: str = "gemm",
    softmax: bool = False,
    batch: int | str = "N",
    dynamic_spatial: bool = False,
    constant_weights: bool = False,
    seed: int = 3,
) -> onnx.ModelProto:
    """The CAM architecture of Zhou et al. (2016): convolutions, global average pooling, one linear
    layer.  Conv(3→4)→Relu→Conv(4→channels)→Relu (``features``) → GAP → Flatten → Gemm (``logits``).

    ``head="matmul"`` uses ReduceMean(axes 2, 3) → Reshape → MatMul → Add instead; ``softmax=True``
    appends Softmax (output ``probs``); ``batch=1`` fixes the batch axis; ``dynamic_spatial=True``
    makes H and W symbolic; ``constant_weights=True`` stores every weight in a Constant node.
    """
    b = _Builder(seed, const=constant_weights)
    x = b.conv("input", 3, 4, 3, "conv1")
    x = b.node("Relu", [x], "relu1")
    x = b.conv(x, 4, channels, 3, "conv2")
    x = b.node("Relu", [x], "features")
    w, bias = b.linear_weights(channels, num_classes, "fc")
    if head == "gemm":
        x = b.node("GlobalAveragePool", [x], "gap")
        x = b.node("Flatten", [x], "flat", axis=1)
        x = b.node(
            "Gemm", [x, b.weight("fc.weight", w), b.weight("fc.bias", bias)], "logits", transB=1
        )
    elif head == "matmul":
        x = b.node("ReduceMean", [x], "gap", axes=[2, 3], keepdims=1)
        shp = b.weight("flat_shape", np.array([-1, channels], np.int64))
        x = b.node("Reshape", [x, shp], "flat")
        x = b.node("MatMul", [x, b.weight("fc.weight_t", np.ascontiguousarray(w.T))], "fc_mm")
        x = b.node("Add", [x, b.weight("fc.bias", bias)], "logits")
    else:
        raise ValueError(f"head must be 'gemm' or 'matmul', got {head!r}")
    outs = [_output("logits", [batch, num_classes])]
    if softmax:
        b.node("Softmax", ["logits"], "probs", axis=1)
        outs = [_output("probs", [batch, num_classes])]
    hw = ["H", "W"] if dynamic_spatial else [size, size]
    return b.model("cam_net", _input([batch, 3, *hw]), outs)


def conv3d_net(*, num_classes: int = 4, size: int = 6, seed: int = 4) -> onnx.ModelProto:
    """3-D CNN on volumes ``(N, 1, size, size, size)``: Conv3d→Relu→Conv3d→Relu (``features``) →
    GlobalAveragePool → Flatten → Gemm."""
    b = _Builder(seed)
    x = b.conv("input", 1, 3, 3, "conv1", ndim=3)
    x = b.node("Relu", [x], "relu1")
    x = b.conv(x, 3, 5, 3, "conv2", ndim=3)
    x = b.node("Relu", [x], "features")
    x = b.node("GlobalAveragePool", [x], "gap")
    x = b.node("Flatten", [x], "flat", axis=1)
    x = b.gemm(x, 5, num_classes, "logits")
    return b.model(
        "conv3d_net", _input(["N", 1, size, size, size]), [_output("logits", ["N", num_classes])]
    )


def nhwc_net(*, num_classes: int = 5, size: int = 10, seed: int = 5) -> onnx.ModelProto:
    """tf2onnx-style channels-last net: input ``(N, size, size, 3)``; each Conv is wrapped in
    Transposes so the Relu activations (``features``: ``(N, H, W, 6)``) are NHWC; head
    ReduceMean(axes 1, 2, keepdims 0) → MatMul → Add."""
    b = _Builder(seed)
    x = b.node("Transpose", ["input"], "to_nchw", perm=[0, 3, 1, 2])
    x = b.conv(x, 3, 4, 3, "conv1")
    x = b.node("Transpose", [x], "conv1_nhwc", perm=[0, 2, 3, 1])
    x = b.node("Relu", [x], "relu1")
    x = b.node("Transpose", [x], "relu1_nchw", perm=[0, 3, 1, 2])
    x = b.conv(x, 4, 6, 3, "conv2")
    x = b.node("Transpose", [x], "conv2_nhwc", perm=[0, 2, 3, 1])
    x = b.node("Relu", [x], "features")
    x = b.node("ReduceMean", [x], "gap", axes=[1, 2], keepdims=0)
    w, bias = b.linear_weights(6, num_classes, "fc")
    x = b.node("MatMul", [x, b.weight("fc.kernel", np.ascontiguousarray(w.T))], "fc_mm")
    x = b.node("Add", [x, b.weight("fc.bias", bias)], "logits")
    return b.model(
        "nhwc_net", _input(["N", size, size, 3]), [_output("logits", ["N", num_classes])]
    )


def segmentation_net(*, num_classes: int = 3, size: int = 12, seed: int = 7) -> onnx.ModelProto:
    """Fully convolutional segmenter: Conv→Relu→Conv→Relu (``features``, 6 channels) → 1×1 Conv
    (``logits``: ``(N, num_classes, size, size)`` per-pixel class scores).  No global pooling, so
    class-index targets are ambiguous: explain it with a callable target (e.g. a mask sum)."""
    b = _Builder(seed)
    x = b.conv("input", 3, 4, 3, "conv1")
    x = b.node("Relu", [x], "relu1")
    x = b.conv(x, 4, 6, 3, "conv2")
    x = b.node("Relu", [x], "features")
    x = b.conv(x, 6, num_classes, 1, "logits", pad=False)
    return b.model(
        "segmentation_net",
        _input(["N", 3, size, size]),
        [_output("logits", ["N", num_classes, size, size])],
    )


def resnet50_sized(
    *, num_classes: int = 1000, size: int = 224, channels: int = 2048, seed: int = 6
) -> onnx.ModelProto:
    """A shallow net with ResNet-50's final geometry: input ``(N, 3, 224, 224)``, last feature map
    ``features`` of shape ``(N, 2048, 7, 7)``, GAP → Flatten → Gemm(2048 → 1000).

    Four strided convolutions (k4 s4, then k2 s2 ×3: 224 → 56 → 28 → 14 → 7) with Relu; about
    7 M parameters.  For benchmarks, not for accuracy.
    """
    b = _Builder(seed)
    x = b.conv("input", 3, 64, 4, "conv1", stride=4, pad=False)
    x = b.node("Relu", [x], "relu1")
    x = b.conv(x, 64, 256, 2, "conv2", stride=2, pad=False)
    x = b.node("Relu", [x], "relu2")
    x = b.conv(x, 256, 512, 2, "conv3", stride=2, pad=False)
    x = b.node("Relu", [x], "relu3")
    x = b.conv(x, 512, channels, 2, "conv4", stride=2, pad=False)
    x = b.node("Relu", [x], "features")
    x = b.node("GlobalAveragePool", [x], "gap")
    x = b.node("Flatten", [x], "flat", axis=1)
    x = b.gemm(x, channels, num_classes, "logits")
    return b.model(
        "resnet50_sized", _input(["N", 3, size, size]), [_output("logits", ["N", num_classes])]
    )


ZOO: dict[str, Callable[[], onnx.ModelProto]] = {
    "vgg": vgg_like,
    "resnet": resnet_like,
    "mobilenet": mobilenet_like,
    "cam": cam_net,
    "cam_matmul": lambda: cam_net(head="matmul"),
    "conv3d": conv3d_net,
    "nhwc": nhwc_net,
    "softmax": lambda: cam_net(softmax=True),
    "dynamic": lambda: cam_net(dynamic_spatial=True),
    "batch1": lambda: cam_net(batch=1),
    "constant": lambda: cam_net(constant_weights=True),
    "segmentation": segmentation_net,
}


def toy_model(name: str) -> onnx.ModelProto:
    """Build the zoo model ``name`` (one of :data:`ZOO`)."""
    try:
        return ZOO[name]()
    except KeyError:
        raise KeyError(f"unknown toy model {name!r}; expected one of {sorted(ZOO)}") from None
