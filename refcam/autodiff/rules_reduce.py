r"""Backward rules of the ``Reduce*`` family, with constant or runtime ``axes``.

With :math:`y = \mathrm{reduce}_{A}(x)` over the axes :math:`A` and :math:`\tilde g, \tilde y` the
incoming gradient and the output with the reduced axes kept (size 1), every rule is
:math:`\bar x = \tilde g \odot \partial y/\partial x` broadcast to :math:`x`'s shape:

==================  ================================================================
ReduceSum           :math:`1`
ReduceMean          :math:`1/n`, :math:`n = |x| / |y|` elements per group
ReduceMax/Min       :math:`[x = \tilde y] / \#\{x = \tilde y\}` (ties split equally)
ReduceSumSquare     :math:`2x`
ReduceL1            :math:`\mathrm{sign}(x)` (0 at 0)
ReduceL2            :math:`x / \tilde y` (0 where :math:`\tilde y = 0`, the kink)
ReduceLogSum        :math:`1 / \sum x = e^{-\tilde y}`
ReduceLogSumExp     :math:`e^{x - \tilde y}` (softmax over the group)
ReduceProd          :math:`\prod_{j \ne i} x_j` (exact with zeros: groups with one zero give the
                    product of the others at the zero, with two or more zeros 0)
==================  ================================================================

Constant axes are read statically; runtime axes (an input from opset 13/18 on) are used as they
are: the kept shape is ``Shape(reduce(x, axes, keepdims=1))`` of a recomputed forward reduction.
``noop_with_empty_axes=1`` with empty axes is the identity.
"""

from __future__ import annotations

from .graph import AXES_AS_INPUT
from .rules import ZERO, RuleContext, _reduce_axes, rule

_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceProd")


def _runtime_axes(ctx: RuleContext) -> bool:
    return (ctx.opset >= AXES_AS_INPUT.get(ctx.op_type, 13) and "axes" not in ctx.attrs
            and ctx.has_input(1) and ctx.const(1) is None)


def _kept(ctx: RuleContext):
    """(reduce-like(t) -> t summed over the group with keepdims, keep(t) -> t reshaped to the kept
    shape) or None for the identity."""
    b = ctx.b
    x = ctx.inputs[0]
    noop = int(ctx.attrs.get("noop_with_empty_axes", 0))
    keepdims = ctx.attrs.get("keepdims", 1)
    if _runtime_axes(ctx):
        ax = ctx.inputs[1]
        kshape = b.op("Shape", [b.op("ReduceSum", [x, ax], keepdims=1, noop_with_empty_axes=noop)])

        def keep(t):
            return b.op("Reshape", [t, kshape])

        def gsum(t):
            return b.op("ReduceSum", [t, ax], keepdims=1, noop_with_empty_axes=noop)

        return keep, gsum
    axes = _reduce_axes(ctx, ctx.op_type)
    if axes is None:
        return None

    def keep(t):
        return t if keepdims else b.unsqueeze(t, axes)

    def gsum(t):
        return b.reduce("ReduceSum", t, axes, keepdims=True)

    return keep, gsum


@rule(*_OPS)
def _reduce(ctx):
    """See the module docstring for the derivative of each op."""
    b = ctx.b
    x, y = ctx.inputs[0], ctx.outputs[0]
    op = ctx.op_type
    kg = _kept(ctx)
    tail = [ZERO] if len(ctx.inputs) > 1 else []
    if kg is None:  # identity (noop_with_empty_axes with empty axes)
        if op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"):
            return [ctx.grads[0]] + tail
        keep = lambda t: t  # noqa: E731  element-wise: sum of squares of one element, |x|, ...
        gsum = keep
    else:
        keep, gsum = kg
    gk = keep(ctx.grads[0])
    yk = keep(y)
    c = lambda v: ctx.c(v, x)  # noqa: E731
    mul = lambda a, bb: ctx.op("Mul", [a, bb])  # noqa: E731
    if op == "ReduceSum":
        d = None
    elif op == "ReduceMean":
        n = ctx.op("Div", [ctx.op("Cast", [b.op("Size", [x])], to=ctx.elem(x)),
                           ctx.op("Cast", [b.op("Size", [yk])], to=ctx.elem(x))])
        gk = ctx.op("Div", [gk, n])
        d = None
    elif op in ("ReduceMax", "ReduceMin"):
        m = ctx.mask(ctx.op("Equal", [x, yk]), x)
        d = ctx.op("Div", [m, gsum(m)])
    elif op == "ReduceSumSquare":
        d = mul(x, c(2.0))
    elif op == "ReduceL1":
        d = ctx.op("Sign", [x])
    elif op == "ReduceL2":
        zero = ctx.op("Equal", [yk, c(0.0)])
        safe = ctx.op("Where", [zero, c(1.0), yk])
        d = ctx.op("Where", [zero, c(0.0), ctx.op("Div", [x, safe])])
    elif op == "ReduceLogSum":
        d = ctx.op("Exp", [ctx.op("Neg", [yk])])
    elif op == "ReduceLogSumExp":
        d = ctx.op("Exp", [ctx.op("Sub", [x, yk])])
    else:  # ReduceProd, exact at zeros
        isz = ctx.op("Equal", [x, c(0.0)])
        nz = gsum(ctx.mask(isz, x))                                   # zeros per group
        xs = ctx.op("Where", [isz, c(1.0), x])
        p_nz = ctx.op("Exp", [gsum(ctx.op("Log", [ctx.op("Abs", [xs])]))])  # |prod of non-zeros|
        sgn = ctx.op("Where", [ctx.op("Less", [xs, c(0.0)]), c(-1.0), c(1.0)])
        neg = gsum(ctx.mask(ctx.op("Less", [xs, c(0.0)]), x))        # number of negatives
        odd = ctx.op("Equal", [ctx.op("Mod", [neg, c(2.0)], fmod=1), c(1.0)])
        p_nz = ctx.op("Where", [odd, ctx.op("Neg", [p_nz]), p_nz])     # signed prod of non-zeros
        no_zero = ctx.op("Div", [yk, xs])                              # prod / x_i
        one_zero = ctx.op("Where", [isz, p_nz, c(0.0)])
        d = ctx.op("Where", [ctx.op("Equal", [nz, c(0.0)]), no_zero,
                             ctx.op("Where", [ctx.op("Equal", [nz, c(1.0)]), one_zero, c(0.0)])])
        del sgn
    out = gk if d is None else mul(gk, d)
    return [ctx.op("Expand", [out, b.shape(x)])] + tail
