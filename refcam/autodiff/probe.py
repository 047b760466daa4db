r"""Runtime probes: the matrix of a separable linear op along one axis, measured in onnxruntime.

Some backward rules (``AveragePool``, ``Resize``) do not re-derive the op's arithmetic: they run
the op itself, in onnxruntime, on the identity basis of one axis and read its matrix.  For a
linear, axis-separable op :math:`Y = A_1 \cdot_1 A_2 \cdot_2 \cdots X` the column :math:`j` of
:math:`A_i` is the op applied to the unit vector :math:`e_j` along axis :math:`i`, so

.. math:: A_i = \mathrm{op}_{1\text{-D}}(I_{n_i})^{\mathsf T}, \qquad
          \frac{\partial \langle s, Y\rangle}{\partial X} = A_1^{\mathsf T} \cdot_1 A_2^{\mathsf T}
          \cdot_2 \cdots s,

exact for every attribute combination the runtime implements (ceil_mode, count_include_pad,
every Resize mode and coordinate transformation) because it *is* the runtime's arithmetic.  The
probe is a tiny one-node model; results are cached per (op, attributes, size, opset, extra inputs).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["axis_matrix"]


def _freeze(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return ("nd", str(v.dtype), v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def axis_matrix(op_type: str, attrs: dict, n_in: int, opset: int,
                extra_inputs: Sequence[np.ndarray | None] = (), rank: int = 3) -> np.ndarray:
    r"""Matrix :math:`A` (``(n_out, n_in)``, float64) of ``op_type`` along its last axis.

    The op runs once, in onnxruntime (float32), on the identity basis shaped
    ``(n_in, 1, [1,]*(rank-3), n_in)``: batch row :math:`j` holds :math:`e_j`, so output row
    :math:`j` is column :math:`j` of :math:`A`.  Results are cached (the same layer geometry is
    probed once per process).

    Parameters
    ----------
    op_type : ``"AveragePool"``, ``"Resize"``, ... (any op linear and separable along the axis).
    attrs : the node attributes, already reduced to this one axis.
    n_in : input size along the axis.
    opset : ai.onnx opset of the probe model.
    extra_inputs : inputs after ``X`` (``None`` = omitted optional input), e.g. Resize roi/scales/sizes
        for the rank-``rank`` probe.
    rank : rank of the probe input (3 for 1-D pools, 4 for Resize's per-axis scales).

    Returns
    -------
    ndarray ``(n_out, n_in)`` float64 (a fresh copy: callers may modify it).

    Examples
    --------
    >>> axis_matrix("AveragePool", {"kernel_shape": [2], "strides": [2]}, 4, 17)
    array([[0.5, 0.5, 0. , 0. ],
           [0. , 0. , 0.5, 0.5]])
    """
    key = (op_type, _freeze(attrs), int(n_in), int(opset), _freeze(list(extra_inputs)), int(rank))
    return _probe(key, op_type, attrs, n_in, opset, tuple(extra_inputs), rank).copy()


#: probe results keyed by (op, attributes, size, opset, extra inputs, rank); cleared past 1024 entries
_CACHE: dict = {}


def _probe(key, op_type, attrs, n_in, opset, extra_inputs, rank) -> np.ndarray:
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    import onnxruntime as ort

    shape = [n_in, 1] + [1] * (rank - 3) + [n_in]
    x = np.eye(n_in, dtype=np.float32).reshape(shape)
    inits, names = [], ["x"]
    for i, v in enumerate(extra_inputs):
        if v is None:
            names.append("")
        else:
            nm = f"e{i}"
            inits.append(onnx.numpy_helper.from_array(np.asarray(v), nm))
            names.append(nm)
    node = helper.make_node(op_type, names, ["y"], **attrs)
    graph = helper.make_graph([node], "basis", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    ops = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=ops, ir_version=helper.find_min_ir_version_for(ops))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    out = y.reshape(n_in, -1).T.astype(np.float64)  # (out, in)
    if len(_CACHE) > 1024:
        _CACHE.clear()
    _CACHE[key] = out
    return out
