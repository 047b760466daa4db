"""Argument validation shared by every public function (internal).

The helpers turn user input into a floating ndarray or raise a
:class:`~refcam.errors.RefcamError` subclass naming the argument.

dtype policy (the "float64 in, float64 out" rule):
  * float16/float32/float64 arrays keep their dtype;
  * bool and integer arrays are computed in float64;
  * when several arrays enter one function, the result dtype is
    ``np.result_type`` of their (floating) dtypes, so float32 with float64 gives float64;
  * complex, object, string and datetime arrays raise :class:`DTypeError`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import DTypeError, InvalidArgumentError, NonFiniteError, ShapeError


def as_float_array(x: Any, name: str, *, finite: bool = True) -> np.ndarray:
    """Return ``x`` as a floating ndarray (no copy when already float), checking finiteness."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists etc.
        raise DTypeError(name, type(x).__name__, "an array-like of real numbers") from exc
    kind = arr.dtype.kind
    if kind == "f":
        pass
    elif kind in "biu":
        arr = arr.astype(np.float64)
    else:
        raise DTypeError(name, arr.dtype)
    if finite and arr.size and not np.isfinite(arr).all():
        raise NonFiniteError(name, int(np.count_nonzero(~np.isfinite(arr))), arr.size)
    return arr


def result_dtype(*arrays: np.ndarray) -> np.dtype:
    """The common floating dtype of already-validated arrays."""
    return np.result_type(*[a.dtype for a in arrays])


def check_ndim(arr: np.ndarray, name: str, *, min_ndim: int, layout: str, max_ndim: int | None = None) -> None:
    """Require ``min_ndim <= arr.ndim <= max_ndim``; ``layout`` describes the expected shape."""
    if arr.ndim < min_ndim or (max_ndim is not None and arr.ndim > max_ndim):
        raise ShapeError(name, arr.shape, layout)


def check_same_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    """Require ``b.shape == a.shape``."""
    if a.shape != b.shape:
        raise ShapeError(b_name, b.shape, a.shape, f"must match {a_name}")


def feature_maps(x: Any, name: str = "activations") -> np.ndarray:
    """Validate a batch of feature maps of layout (N, K, *S) with at least one spatial axis."""
    arr = as_float_array(x, name)
    check_ndim(arr, name, min_ndim=3, layout="(N, K, *S): batch, channels and at least one spatial axis")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or any(s == 0 for s in arr.shape[2:]):
        raise ShapeError(name, arr.shape, "(N, K, *S) with every axis non-empty")
    return arr


def images(x: Any, name: str = "inputs") -> np.ndarray:
    """Validate an input-like array (inputs, input gradients) of layout (N, C, *S), every axis
    non-empty."""
    arr = as_float_array(x, name)
    check_ndim(arr, name, min_ndim=3, layout="(N, C, *S): batch, channels and at least one spatial axis")
    if any(s == 0 for s in arr.shape):
        raise ShapeError(name, arr.shape, "(N, C, *S) with every axis non-empty")
    return arr


def maps(x: Any, name: str = "maps") -> np.ndarray:
    """Validate a batch of maps of layout (N, *S) with at least one spatial axis."""
    arr = as_float_array(x, name)
    check_ndim(arr, name, min_ndim=2, layout="(N, *S): batch and at least one spatial axis")
    if any(s == 0 for s in arr.shape):
        raise ShapeError(name, arr.shape, "(N, *S) with every axis non-empty")
    return arr


def choice(value: Any, name: str, options: Sequence[str]) -> str:
    """Require ``value`` to be one of ``options`` (strings)."""
    if not isinstance(value, str) or value not in options:
        raise InvalidArgumentError(name, value, "one of " + ", ".join(repr(o) for o in options))
    return value


def positive_int(value: Any, name: str) -> int:
    """Require a positive Python/NumPy integer (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(name, value, "a positive integer")
    return int(value)


def nonnegative_int(value: Any, name: str) -> int:
    """Require a non-negative Python/NumPy integer (bools refused), e.g. a random seed."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidArgumentError(name, value, "a non-negative integer")
    return int(value)


def nonnegative_float(value: Any, name: str) -> float:
    """Require a finite real number >= 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(name, value, "a finite real number >= 0") from None
    if not np.isfinite(v) or v < 0 or isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(name, value, "a finite real number >= 0")
    return v
