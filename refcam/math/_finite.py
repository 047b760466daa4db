r"""Finite input never yields NaN/Inf: the guard every public function of :mod:`refcam.math` runs
under (internal).

The rule (``docs/design.md``, dtype paragraph), applied by :func:`finite_output`:

1. The function is computed in the dtype of its inputs (float32 stays float32: fast, and the
   result is what the same formula gives in that dtype).
2. If any step overflows or produces an invalid value (NumPy's floating-point flags, recorded with
   ``np.errstate(over="call", invalid="call")``; also reported explicitly by steps NumPy does not
   flag, such as ``einsum``, see :func:`report_nonfinite`), or the result is not finite, the whole
   function is computed again with every float16/float32 array argument widened to float64.  A
   single overflowing intermediate may otherwise hide behind a ReLU or a mask and leave a finite
   but wrong result (``relu(-inf) = 0``).
3. The float64 result is rounded back to the dtype the function returns for the inputs; this is the
   exactly rounded value up to the float64 arithmetic error, so it is at least as accurate as the
   narrow computation would have been had it not overflowed.
4. If the float64 computation overflows too, or its result is not representable in the returned
   dtype (e.g. a Grad-CAM value of ``2e5`` for float16 inputs, whose largest value is 65504),
   :class:`~refcam.errors.NonFiniteResultError` is raised, naming the function, the dtype and the
   number of values concerned.  Nothing is ever returned as ``inf`` or ``NaN``, and no NumPy
   ``RuntimeWarning`` escapes.

Functions that draw random numbers from a caller's generator are decorated with ``widen=False``
(a second attempt would consume the generator again): their overflow is reported at once.
"""

from __future__ import annotations

import contextvars
import functools
import types
from typing import Any, Callable, TypeVar

import numpy as np

from ..errors import NonFiniteResultError, RefcamError

__all__ = ["finite_output", "report_nonfinite"]

F = TypeVar("F", bound=Callable[..., Any])

#: the flag list of the innermost guarded call under way (None outside any guarded call)
_RECORD: contextvars.ContextVar[list | None] = contextvars.ContextVar("refcam_finite", default=None)


def report_nonfinite(x: np.ndarray, what: str = "intermediate") -> None:
    """Record that ``x`` (an intermediate result) holds a non-finite value, if it does.

    For operations whose overflow NumPy does not flag (``einsum``) and whose non-finite value a
    later step could hide (a ReLU turning ``-inf`` into ``0``).  No-op outside a guarded call.
    """
    rec = _RECORD.get()
    if rec is not None and not np.isfinite(x).all():
        rec.append(what)


def _is_narrow_float(x: Any) -> bool:
    return isinstance(x, (np.ndarray, np.floating)) and x.dtype.kind == "f" and x.dtype.itemsize < 8


def _widen(x: Any) -> Any:
    """float16/float32 arrays (also inside a list or tuple, one level) -> float64."""
    if _is_narrow_float(x):
        return x.astype(np.float64)
    if isinstance(x, (list, tuple)) and any(_is_narrow_float(v) for v in x):
        return type(x)(_widen(v) for v in x)
    return x


def _narrow_dtypes(args: tuple, kwargs: dict) -> list[np.dtype]:
    out = []
    for v in list(args) + list(kwargs.values()):
        items = v if isinstance(v, (list, tuple)) else [v]
        out += [i.dtype for i in items if _is_narrow_float(i)]
    return out


def _arrays(out: Any) -> list[np.ndarray]:
    if isinstance(out, (tuple, list)):
        return [np.asarray(o) for o in out if isinstance(o, (np.ndarray, np.floating))]
    if isinstance(out, (np.ndarray, np.floating)):
        return [np.asarray(out)]
    return []


def _all_finite(out: Any) -> bool:
    return all(a.dtype.kind != "f" or np.isfinite(a).all() for a in _arrays(out))


def _attempt(func: Callable, args: tuple, kwargs: dict) -> tuple[Any, list, BaseException | None]:
    rec: list = []
    token = _RECORD.set(rec)
    try:
        with np.errstate(over="call", invalid="call", call=lambda kind, flag: rec.append(kind)):
            return func(*args, **kwargs), rec, None
    except (RefcamError, FloatingPointError, np.linalg.LinAlgError) as exc:
        if not rec:
            raise  # a genuine error of the arguments, not caused by an overflow
        return None, rec, exc
    finally:
        _RECORD.reset(token)


def _cast_back(name: str, out64: Any, like: Any, target: np.dtype | None) -> Any:
    """Round each float64 array of ``out64`` to the dtype of its twin in ``like`` (or ``target``)."""
    def one(o: Any, ref: Any) -> Any:
        if not isinstance(o, (np.ndarray, np.floating)) or o.dtype.kind != "f":
            return o
        dt = ref.dtype if ref is not None and isinstance(ref, (np.ndarray, np.floating)) else target
        if dt is None or dt == o.dtype:
            return o
        with np.errstate(over="ignore"):
            r = o.astype(dt)
        bad = ~np.isfinite(r)
        if bad.any():
            raise NonFiniteResultError(
                name, np.dtype(dt), int(np.count_nonzero(bad)), int(r.size),
                f"the exact result reaches {float(np.abs(o).max()):.3g} (computed in float64), "
                f"beyond the largest {np.dtype(dt)} value {float(np.finfo(dt).max):.5g}: pass "
                "float64 inputs")
        return r.astype(dt, copy=False) if isinstance(o, np.ndarray) else dt.type(r)

    if isinstance(out64, (tuple, list)):
        refs = list(like) if isinstance(like, (tuple, list)) else [None] * len(out64)
        return type(out64)(one(o, r) for o, r in zip(out64, refs))
    return one(out64, like)


def _nonfinite_error(name: str, out: Any, rec: list, exc: BaseException | None,
                     hint: str) -> NonFiniteResultError:
    arrays = [a for a in _arrays(out) if a.dtype.kind == "f"]
    dt = arrays[0].dtype if arrays else np.dtype(np.float64)
    count = sum(int(np.count_nonzero(~np.isfinite(a))) for a in arrays)
    size = sum(int(a.size) for a in arrays)
    what = ", ".join(sorted(set(map(str, rec)))) or "non-finite result"
    err = NonFiniteResultError(name, dt, count, size, f"{what} during the computation: {hint}")
    if exc is not None:
        err.__cause__ = exc
    return err


def _guarded_call(func: Callable, widen: bool, args: tuple, kwargs: dict) -> Any:
    name = func.__name__
    out, rec, exc = _attempt(func, args, kwargs)
    if exc is None and not rec and _all_finite(out):
        return out
    narrow = _narrow_dtypes(args, kwargs)
    if not widen or not narrow:
        hint = ("the values are too large for float64: rescale the inputs" if not narrow
                else "pass float64 inputs")
        raise _nonfinite_error(name, out, rec, exc, hint)
    wide_args = tuple(_widen(a) for a in args)
    wide_kwargs = {k: _widen(v) for k, v in kwargs.items()}
    out64, rec64, exc64 = _attempt(func, wide_args, wide_kwargs)
    if exc64 is not None or rec64 or not _all_finite(out64):
        raise _nonfinite_error(
            name, out64, rec64, exc64,
            "the values are too large even in float64: rescale the inputs")
    target = np.result_type(*narrow) if out is None else None
    return _cast_back(name, out64, out, target)


def finite_output(func: F | None = None, *, widen: bool = True) -> Any:
    """Decorator: run ``func`` under the finite-output rule of this module.

    The wrapper is rebuilt with ``func``'s globals, so ``doctest`` (and pytest's
    ``--doctest-modules``) still attribute the function and its examples to its own module.
    """
    if func is None:
        return functools.partial(finite_output, widen=widen)

    call = _guarded_call  # a closure variable: the rebuilt wrapper sees func's globals, not ours

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return call(func, widen, args, kwargs)

    rebuilt = types.FunctionType(wrapper.__code__, func.__globals__, func.__name__, None,
                                 wrapper.__closure__)
    rebuilt = functools.update_wrapper(rebuilt, func)
    rebuilt.__refcam_finite__ = True  # type: ignore[attr-defined]
    return rebuilt
