"""A small ONNX graph builder used by the backward rules (internal).

Every helper emits only standard ``ai.onnx`` ops, creates fresh unique tensor names and stores
constants as initializers.  Helpers that depend on the opset (``ReduceSum`` axes as attribute
before opset 13 and as an input from 13 on, ``ReduceMean`` from 18 on, ``Squeeze``/``Unsqueeze``
axes as input from 13 on, ...) choose the right form from :attr:`GraphBuilder.opset`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["GraphBuilder", "TensorInfo", "node_inputs"]


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Names a node reads: its inputs and the outer-scope tensors its subgraphs (If/Loop/Scan
    bodies) capture.  A gradient flowing through a captured tensor must not be missed."""
    names = [i for i in node.input if i]
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sub in graphs:
            local = {i.name for i in sub.input} | {i.name for i in sub.initializer}
            for n in sub.node:
                for i in node_inputs(n):
                    if i not in local:
                        names.append(i)
                local.update(o for o in n.output if o)
    return list(dict.fromkeys(names))

# opset from which each Reduce* op takes its axes as an input instead of an attribute
_AXES_AS_INPUT = {"ReduceSum": 13}
for _op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"):
    _AXES_AS_INPUT[_op] = 18


class TensorInfo:
    """Static facts about the tensors of a model: element type, shape (None = unknown dim), constants.

    Built from ``onnx.shape_inference`` output; ``const`` holds initializers and ``Constant`` node
    values so rules can read attributes that later opsets moved to inputs (pads, axes, scales...).
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.elem: dict[str, int] = {}
        self.shape: dict[str, tuple | None] = {}
        self.const: dict[str, np.ndarray] = {}
        #: symbolic dimension names (dim_param) per tensor, None where a dim has none
        self.dim_params: dict[str, tuple] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            t = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                continue
            self.elem[vi.name] = t.elem_type
            if t.HasField("shape"):
                self.shape[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
                self.dim_params[vi.name] = tuple(d.dim_param or None for d in t.shape.dim)
            else:
                self.shape[vi.name] = None
        for init in g.initializer:
            arr = numpy_helper.to_array(init)
            self.const[init.name] = arr
            self.elem[init.name] = init.data_type
            self.shape[init.name] = tuple(arr.shape)
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value":
                        arr = numpy_helper.to_array(a.t)
                    elif a.name in ("value_float", "value_int"):
                        arr = np.asarray(helper.get_attribute_value(a))
                    elif a.name in ("value_floats", "value_ints"):
                        arr = np.asarray(helper.get_attribute_value(a))
                    else:
                        continue
                    self.const[node.output[0]] = arr
                    self.shape[node.output[0]] = tuple(arr.shape)

    def is_float(self, name: str) -> bool:
        return self.elem.get(name) in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                       onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)

    def rank(self, name: str) -> int | None:
        s = self.shape.get(name)
        return None if s is None else len(s)


class GraphBuilder:
    """Accumulates nodes and initializers for the backward graph.

    Parameters
    ----------
    opset : the ai.onnx opset of the model the nodes are added to.
    prefix : prefix of every fresh tensor name (kept unique against ``taken``).
    taken : names already used in the model.
    """

    def __init__(self, opset: int, prefix: str = "refcam_bw", taken: set[str] | None = None) -> None:
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = set(taken or ())
        self._count = 0
        self._shape_cache: dict[str, str] = {}

    # ---- names and constants -------------------------------------------------------------
    def fresh(self, hint: str = "t") -> str:
        while True:
            self._count += 1
            name = f"{self.prefix}/{hint}_{self._count}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def const(self, value: Any, dtype: Any = None, hint: str = "const") -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), hint=hint)

    def scalar(self, value: float, elem: int, hint: str = "c") -> str:
        return self.const(np.asarray(value, dtype=helper.tensor_dtype_to_np_dtype(elem)), hint=hint)

    # ---- nodes ---------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, hint: str | None = None,
           **attrs: Any) -> Any:
        outs = [self.fresh(hint or op_type.lower()) for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def shape(self, x: str) -> str:
        if x not in self._shape_cache:
            self._shape_cache[x] = self.op("Shape", [x])
        return self._shape_cache[x]

    def reshape_like(self, g: str, x: str) -> str:
        return self.op("Reshape", [g, self.shape(x)])

    def zeros_like(self, x: str, elem: int) -> str:
        val = numpy_helper.from_array(np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(elem)))
        return self.op("ConstantOfShape", [self.shape(x)], value=val)

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        axes = [int(a) for a in axes]
        if not axes:
            return x
        if self.opset >= _AXES_AS_INPUT[op_type]:
            return self.op(op_type, [x, self.ints(axes, "axes")], keepdims=int(keepdims))
        return self.op(op_type, [x], axes=axes, keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        axes = [int(a) for a in axes]
        if not axes:
            return x
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.ints(axes, "axes")])
        return self.op("Unsqueeze", [x], axes=axes)

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        axes = [int(a) for a in axes]
        if not axes:
            return x
        if self.opset >= 13:
            return self.op("Squeeze", [x, self.ints(axes, "axes")])
        return self.op("Squeeze", [x], axes=axes)

    def add_all(self, terms: Sequence[str]) -> str:
        terms = list(terms)
        if len(terms) == 1:
            return terms[0]
        return self.op("Sum", terms, hint="acc")

    def unbroadcast(self, g: str, g_shape: tuple | None, x: str, x_shape: tuple | None) -> str:
        """Sum ``g`` (shape of the broadcast result) down to the shape of operand ``x``.

        Leading axes that ``x`` lacks are summed away; axes where ``x`` has size 1 and ``g`` not are
        summed with ``keepdims``; then the result is reshaped to ``Shape(x)``.  With static ranks and
        static size-1 axes the summed axes are chosen here; otherwise (a rank unknown, or an axis of
        ``x`` unknown where ``g``'s is not 1) they are computed in the graph from ``Shape(g)`` and
        ``Shape(x)`` (opset >= 13: ``ReduceSum`` with runtime axes).  A size marked ``-1`` means
        "unknown but equal in both" (same symbolic dimension, see ``RuleContext.unbroadcast``).
        """
        dynamic = g_shape is None or x_shape is None
        if not dynamic:
            rg, rx = len(g_shape), len(x_shape)
            lead = rg - rx
            dynamic = lead < 0 or any(
                d is None and g_shape[lead + i] != 1 for i, d in enumerate(x_shape))
            if dynamic and self.opset < 13 and lead >= 0 and not any(
                    d is None and g_shape[lead + i] not in (None, 1) for i, d in enumerate(x_shape)):
                # opset < 13 has no ReduceSum with runtime axes: an axis unknown in both operands
                # is taken as equal (not broadcast), as the exporters' dynamic batch axis is
                dynamic = False
        if dynamic:
            return self._unbroadcast_runtime(g, x)
        axes = list(range(lead))
        for i, d in enumerate(x_shape):
            gd = g_shape[lead + i]
            if d == 1 and gd != 1:
                axes.append(lead + i)
        if not axes:
            return g
        out = self.reduce("ReduceSum", g, axes, keepdims=True)
        return self.reshape_like(out, x)

    def _unbroadcast_runtime(self, g: str, x: str) -> str:
        r"""``unbroadcast`` with the summed axes computed at run time: with :math:`s_x` the shape of
        ``x`` left-padded with ones to the rank of ``g``, sum over
        :math:`\{i : s_x[i] = 1 \ne s_g[i]\}` (keepdims), then reshape to ``Shape(x)``."""
        if self.opset < 13:
            from ..errors import ModelError

            raise ModelError(
                f"cannot reduce the gradient over broadcast axes for tensor {x!r}: its rank or size-1 "
                "axes are not known after shape inference and the model's opset < 13 has no ReduceSum "
                "with runtime axes; give the model static shapes")
        sg, sx = self.shape(g), self.shape(x)
        n_lead = self.op("Sub", [self.op("Shape", [sg]), self.op("Shape", [sx])])
        ones = self.op("ConstantOfShape", [n_lead], value=numpy_helper.from_array(np.ones(1, np.int64)))
        sxp = self.op("Concat", [ones, sx], axis=0)
        one = self.ints([1])
        cond = self.op("And", [self.op("Equal", [sxp, one]), self.op("Not", [self.op("Equal", [sg, one])])])
        axes = self.op("Reshape", [self.op("NonZero", [cond]), self.ints([-1])])
        red = self.op("ReduceSum", [g, axes], keepdims=1, noop_with_empty_axes=1)
        return self.reshape_like(red, x)

    def move_axis_matmul(self, g: str, rank: int, axis: int, matrix: str) -> str:
        """Contract axis ``axis`` of ``g`` (rank ``rank``) with ``matrix`` (size_in × size_out)."""
        axis = axis % rank
        if axis == rank - 1:
            return self.op("MatMul", [g, matrix])
        perm = list(range(rank))
        perm[axis], perm[rank - 1] = perm[rank - 1], perm[axis]
        t = self.op("Transpose", [g], perm=perm)
        t = self.op("MatMul", [t, matrix])
        return self.op("Transpose", [t], perm=perm)
