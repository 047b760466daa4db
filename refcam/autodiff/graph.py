"""A small ONNX graph builder used by the backward rules (internal).

Every helper emits only standard ``ai.onnx`` ops, creates fresh unique tensor names and stores
constants as initializers.  Helpers that depend on the opset (``ReduceSum`` axes as attribute
before opset 13 and as an input from 13 on, ``ReduceMean`` from 18 on, ``Squeeze``/``Unsqueeze``
axes as input from 13 on, ...) choose the right form from :attr:`GraphBuilder.opset`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..onnx.head import constant_node_value

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
AXES_AS_INPUT = {"ReduceSum": 13}
for _op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"):
    AXES_AS_INPUT[_op] = 18


class TensorInfo:
    """Static facts about the tensors of a model: element type, shape (None = unknown dim), constants.

    Built from ``onnx.shape_inference`` output; ``const`` holds initializers and ``Constant`` node
    values so rules can read attributes that later opsets moved to inputs (pads, axes, scales...).
    ``weights`` gives the values of initializers a skeleton proto keeps outside itself
    (:mod:`refcam.onnx._weights`; the arrays are used as they are, not copied).
    """

    def __init__(self, model: onnx.ModelProto, weights: Mapping[str, np.ndarray] | None = None) -> None:
        g = model.graph
        self.elem: dict[str, int] = {}
        self.shape: dict[str, tuple | None] = {}
        #: per tensor, each axis as shape inference names it: an int, a symbol (``dim_param``) or None
        self.symbols: dict[str, tuple | None] = {}
        self.const: dict[str, np.ndarray] = {}
        #: tensors whose rank (and element type) came from a run of the model, not from inference
        self.from_run: set[str] = set()
        #: symbolic dimension names (dim_param) per tensor, None where a dim has none
        self.dim_params: dict[str, tuple] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            t = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                continue
            if t.elem_type or vi.name not in self.elem:
                self.elem[vi.name] = t.elem_type
            if t.HasField("shape"):
                self.shape[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in t.shape.dim)
                self.symbols[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") and d.dim_value >= 0
                    else (d.dim_param or None) for d in t.shape.dim)
                self.dim_params[vi.name] = tuple(d.dim_param or None for d in t.shape.dim)
            elif self.shape.get(vi.name) is None:
                self.shape[vi.name] = None
                self.symbols[vi.name] = None
        for init in g.initializer:
            if weights is not None and init.name in weights and \
                    init.data_location == onnx.TensorProto.EXTERNAL:
                arr = weights[init.name]  # values held outside the proto (refcam.onnx._weights)
            else:
                arr = numpy_helper.to_array(init)
            self.const[init.name] = arr
            self.elem[init.name] = init.data_type
            self.shape[init.name] = tuple(arr.shape)
        for node in g.node:
            arr = constant_node_value(node)
            if arr is not None:
                self.const[node.output[0]] = arr
                self.shape[node.output[0]] = tuple(arr.shape)

    def add_runtime(self, shapes: dict) -> None:
        """Complete unknown ranks (and element types) with those seen in a run of the model.

        ``shapes`` maps tensor name → ``(shape, onnx element type)`` observed by
        :meth:`refcam.onnx.Model.runtime_shapes`.  Only the rank is taken (every axis stays
        unknown): sizes may change with the input (batch), ranks do not, so the gradient graph
        built from these facts serves every input of the model.
        """
        for name, (shp, elem) in shapes.items():
            if self.shape.get(name) is None:
                self.shape[name] = (None,) * len(shp)
                self.symbols[name] = (None,) * len(shp)
                self.from_run.add(name)
            if not self.elem.get(name):
                self.elem[name] = int(elem)

    def same_dim(self, a: str, ia: int, b: str, ib: int) -> bool:
        """Axis ``ia`` of ``a`` and axis ``ib`` of ``b`` are provably equal (same size or symbol)."""
        sa, sb = self.symbols.get(a), self.symbols.get(b)
        if sa is None or sb is None:
            return False
        da, db = sa[ia], sb[ib]
        return da is not None and da == db

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

    def _with_axes(self, op_type: str, x: str, axes: Sequence[int], since: int, **attrs: Any) -> str:
        """``op_type`` over ``axes`` (``x`` itself when there are none): the axes are an int64 input
        from opset ``since`` on, an attribute before."""
        axes = [int(a) for a in axes]
        if not axes:
            return x
        if self.opset >= since:
            return self.op(op_type, [x, self.ints(axes, "axes")], **attrs)
        return self.op(op_type, [x], axes=axes, **attrs)

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        return self._with_axes(op_type, x, axes, AXES_AS_INPUT[op_type], keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self._with_axes("Unsqueeze", x, axes, 13)

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self._with_axes("Squeeze", x, axes, 13)

    def add_all(self, terms: Sequence[str]) -> str:
        terms = list(terms)
        if len(terms) == 1:
            return terms[0]
        return self.op("Sum", terms, hint="acc")

    def unbroadcast(self, g: str, g_shape: tuple | None, x: str, x_shape: tuple | None) -> str:
        """Sum ``g`` (shape of the broadcast result) down to the shape of operand ``x``.

        ``g_shape`` / ``x_shape`` give each axis as an int (static size), a symbol (``dim_param``:
        equal symbols are equal sizes) or ``None``.  When every axis is decided statically, leading
        axes that ``x`` lacks and axes where ``x`` has size 1 are summed (ReduceSum, then Reshape to
        ``Shape(x)``).  Otherwise (an axis of ``x`` of unknown size that may be 1 while the result's
        is not, or an unknown rank) the axes are found at run time: ``Shape(x)`` left-padded with 1
        to the rank of ``g``, ``NonZero(== 1)`` gives the axes, ``ReduceSum(noop_with_empty_axes)``
        sums them (summing an axis where both sizes are 1 changes nothing).  Needs opset >= 13.
        """
        if g_shape is not None and x_shape is not None and len(g_shape) >= len(x_shape):
            rg, rx = len(g_shape), len(x_shape)
            lead = rg - rx
            axes = list(range(lead))
            decided = True
            for i, d in enumerate(x_shape):
                gd = g_shape[lead + i]
                if isinstance(d, int):
                    if d == 1 and gd != 1:
                        axes.append(lead + i)
                elif not (gd == 1 or (gd is not None and gd == d)):
                    decided = False  # x's size unknown: maybe 1 under a larger result axis
            if decided or self.opset < 13:
                if not axes and decided:
                    return g
                out = self.reduce("ReduceSum", g, axes, keepdims=True)
                # undecided (opset < 13: no run-time axes): the Reshape to Shape(x) fails loudly in
                # onnxruntime if an axis of x turns out to be a broadcast 1 -- never a silent sum
                return self.reshape_like(out, x)
        return self._unbroadcast_runtime(g, x)

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
