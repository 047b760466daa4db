r"""A small symbolic layer over the graph builder, so an element-wise rule reads like its formula.

A :class:`Sym` wraps a tensor name; arithmetic on it emits ONNX nodes through the rule's
:class:`~refcam.autodiff.graph.GraphBuilder`, and Python numbers become scalar constants of the
element type of the rule's input.  With :func:`unary` an element-wise backward rule is one line,
in the spirit of autograd's ``defvjp``::

    @unary("Tanh")
    def _tanh(x, y, a):          # x: input, y: output, a: node attributes
        return 1 - y * y         # dy/dx; the rule returns  g * (1 - y^2)

The derivative expression is multiplied by the incoming gradient ``g``; the rule's other inputs
(none for unary ops) get no gradient.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["Sym", "unary", "where"]


class Sym:
    """A tensor of the backward graph with arithmetic that emits ONNX nodes."""

    __slots__ = ("name", "ctx")

    def __init__(self, name: str, ctx: Any) -> None:
        self.name = name
        self.ctx = ctx

    # ---- coercion ----------------------------------------------------------------------
    def _lift(self, v: Any) -> "Sym":
        if isinstance(v, Sym):
            return v
        if isinstance(v, str):
            return Sym(v, self.ctx)
        return Sym(self.ctx.c(float(v), self.ctx.inputs[0]), self.ctx)

    def _op(self, op_type: str, *others: Any, **attrs: Any) -> "Sym":
        ins = [self.name] + [self._lift(o).name for o in others]
        return Sym(self.ctx.op(op_type, ins, **attrs), self.ctx)

    # ---- arithmetic --------------------------------------------------------------------
    def __add__(self, o): return self._op("Add", o)
    def __radd__(self, o): return self._lift(o)._op("Add", self)
    def __sub__(self, o): return self._op("Sub", o)
    def __rsub__(self, o): return self._lift(o)._op("Sub", self)
    def __mul__(self, o): return self._op("Mul", o)
    def __rmul__(self, o): return self._lift(o)._op("Mul", self)
    def __truediv__(self, o): return self._op("Div", o)
    def __rtruediv__(self, o): return self._lift(o)._op("Div", self)
    def __neg__(self): return self._op("Neg")
    def __pow__(self, o): return self._op("Pow", o)

    # ---- comparisons (boolean tensors, for where()) ---------------------------------------
    def __gt__(self, o): return self._op("Greater", o)
    def __lt__(self, o): return self._op("Less", o)
    def __and__(self, o): return self._op("And", o)
    def __or__(self, o): return self._op("Or", o)

    def eq(self, o): return self._op("Equal", o)

    def mask(self) -> "Sym":
        """A boolean tensor cast to the element type of the rule's first input."""
        return Sym(self.ctx.op("Cast", [self.name], to=self.ctx.elem(self.ctx.inputs[0])), self.ctx)


#: Element-wise functions of :class:`Sym`: method name -> ONNX operator (``x.exp()`` is ``Exp(x)``).
_UNARY = {"exp": "Exp", "log": "Log", "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign", "sigmoid": "Sigmoid",
          "tanh": "Tanh", "softplus": "Softplus", "erf": "Erf", "sin": "Sin", "cos": "Cos",
          "cosh": "Cosh", "relu": "Relu"}


def _unary(name: str, op_type: str):
    def method(self: Sym) -> Sym:
        return self._op(op_type)

    method.__name__, method.__qualname__ = name, f"Sym.{name}"
    method.__doc__ = f"Element-wise ``{op_type}``."
    return method


for _name, _op_type in _UNARY.items():
    setattr(Sym, _name, _unary(_name, _op_type))


def where(cond: Sym, a: Any, b: Any) -> Sym:
    """``Where(cond, a, b)``; numbers become constants of the rule input's element type."""
    x = cond.ctx.inputs[0]
    lift = lambda v: v if isinstance(v, Sym) else Sym(cond.ctx.c(float(v), x), cond.ctx)  # noqa: E731
    return Sym(cond.ctx.op("Where", [cond.name, lift(a).name, lift(b).name]), cond.ctx)


def unary(*op_types: str) -> Callable:
    r"""Register an element-wise rule from its derivative: ``fn(x, y, attrs) -> dy/dx``.

    ``x`` and ``y`` are :class:`Sym` of the node's first input and output, ``attrs`` the node's
    attributes (dict).  The registered rule returns :math:`g \odot f'(x)` for input 0 and no
    gradient for the others (an error names them if one is needed).
    """
    from .rules import rule

    def deco(fn: Callable) -> Callable:
        @rule(*op_types)
        def _r(ctx):
            x = Sym(ctx.inputs[0], ctx)
            y = Sym(ctx.outputs[0], ctx)
            d = fn(x, y, ctx.attrs)
            return ctx.rest(ctx.op("Mul", [ctx.grads[0], x._lift(d).name]))

        _r.__doc__ = fn.__doc__
        _r.__name__ = fn.__name__
        return fn

    return deco
