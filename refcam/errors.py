"""The one error hierarchy of refcam.

Every public function validates its arguments and raises a subclass of
:class:`RefcamError` that names the argument, the shape (or value) it got and
the shape (or value) it expected.  Each subclass also derives from the closest
built-in exception, so ``except ValueError`` keeps working for callers who do
not know refcam.

>>> try:
...     raise ShapeError("activations", got=(2, 3), expected="(N, K, *S) with at least 1 spatial axis")
... except RefcamError as err:
...     print(err)
activations: got shape (2, 3), expected (N, K, *S) with at least 1 spatial axis
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RefcamError",
    "ShapeError",
    "DTypeError",
    "NonFiniteError",
    "NonFiniteResultError",
    "InvalidArgumentError",
    "TargetError",
    "ModelError",
    "LayerNotFoundError",
    "AmbiguousLayerError",
    "UnsupportedOpError",
]


def _fmt_shape(shape: Any) -> str:
    if isinstance(shape, tuple):
        return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    return str(shape)


class RefcamError(Exception):
    """Base class of every error refcam raises on purpose."""


class ShapeError(RefcamError, ValueError):
    """An array argument has the wrong rank or shape.

    Parameters
    ----------
    argument : name of the offending argument, as the user wrote it.
    got : the shape that was seen.
    expected : a human-readable description of the shape expected.
    detail : optional extra sentence.
    """

    def __init__(self, argument: str, got: Any, expected: Any, detail: str = "") -> None:
        self.argument = argument
        self.got = got
        self.expected = expected
        msg = f"{argument}: got shape {_fmt_shape(got)}, expected {_fmt_shape(expected)}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class DTypeError(RefcamError, TypeError):
    """An array argument has a dtype refcam does not compute in (complex, object, str, ...)."""

    def __init__(self, argument: str, got: Any, expected: str = "a real floating or integer dtype") -> None:
        self.argument = argument
        self.got = got
        self.expected = expected
        super().__init__(f"{argument}: got dtype {got}, expected {expected}")


class NonFiniteError(RefcamError, ValueError):
    """An array argument contains NaN or +/-Inf.  refcam refuses rather than propagating them."""

    def __init__(self, argument: str, count: int, size: int) -> None:
        self.argument = argument
        self.count = count
        super().__init__(
            f"{argument}: got {count} non-finite value(s) (NaN or Inf) among {size}, expected finite values"
        )


class NonFiniteResultError(RefcamError, ArithmeticError):
    """Finite inputs whose exact result is not representable: it overflows the dtype returned.

    refcam never returns NaN or Inf for finite input (``docs/design.md``): a computation that
    overflows in float16/float32 is redone in float64 and rounded back; only when that is
    impossible this error is raised instead.

    Parameters
    ----------
    function : name of the public function.
    dtype : the dtype of the result.
    count, size : number of non-finite values, and of values, of the result.
    detail : what overflowed and what to do.
    """

    def __init__(self, function: str, dtype: Any, count: int, size: int, detail: str = "") -> None:
        self.function = function
        self.dtype = dtype
        self.count = count
        msg = (f"{function}: the result is not finite in {dtype} ({count} of {size} value(s) "
               "overflow) although every input is finite")
        if detail:
            msg += f"; {detail}"
        super().__init__(msg)


class InvalidArgumentError(RefcamError, ValueError):
    """A non-array argument (mode name, size, step count, ...) is out of its domain."""

    def __init__(self, argument: str, got: Any, expected: str) -> None:
        self.argument = argument
        self.got = got
        self.expected = expected
        super().__init__(f"{argument}: got {got!r}, expected {expected}")


class TargetError(RefcamError, ValueError):
    """A target (class index, per-sample list, callable) does not fit the model or the batch."""


class ModelError(RefcamError, ValueError):
    """A model could not be loaded, or does not have the structure a method needs."""


class LayerNotFoundError(RefcamError, KeyError):
    """A layer/tensor name is not in the model.  The message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AmbiguousLayerError(LayerNotFoundError):
    """A layer name matches several tensors (a tensor name, a node name and a module path that
    collide).  The message lists every candidate and the prefixed names that single each out."""


class UnsupportedOpError(RefcamError, NotImplementedError):
    """An ONNX op has no rule (e.g. no backward rule); the message names op, node and opset."""
