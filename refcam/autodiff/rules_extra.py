r"""Backward rules added for the ONNX backend node suite (registered through :func:`rules.rule`).

Each rule's docstring gives the forward formula and the vector-Jacobian product it emits.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .rules import ZERO, rule


@rule("CastLike")
def _castlike(ctx):
    """:math:`y = \\mathrm{cast}(x)` to the type of ``target_type``: :math:`\\bar x = \\mathrm{cast}(g)`
    back to :math:`x`'s type; ``target_type`` only lends its type (zero gradient)."""
    x = ctx.inputs[0]
    gx = ctx.op("CastLike", [ctx.grads[0], x]) if ctx.needs[0] else None
    return [gx, ZERO]
