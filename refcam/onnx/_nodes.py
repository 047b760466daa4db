"""Small readers of ONNX nodes shared by the ONNX adapter modules (internal)."""

from __future__ import annotations

from typing import Any

__all__ = ["node_attr"]


def node_attr(node: Any, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of the ``onnx.NodeProto`` ``node`` (ints, floats, bytes,
    tensors, ... as :func:`onnx.helper.get_attribute_value` gives them), ``default`` when absent.

    onnx is imported only when an attribute is read (a model is then loaded anyway).
    """
    for a in node.attribute:
        if a.name == name:
            from onnx import helper

            return helper.get_attribute_value(a)
    return default
