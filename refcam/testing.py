"""Hypothesis strategies for property-testing CAM and saliency code (public API).

Other projects (and refcam's own tests) use these strategies to generate inputs that follow refcam's
array conventions (``docs/design.md``):

* activations / gradients ``(N, K, *S)`` with one to three spatial axes,
* maps ``(N, *S)``, input gradients ``(N, C, *S)``,
* whole *GAP → linear* classification heads (:func:`gap_linear_problems`) whose gradient is
  known in closed form, which turns the CAM identities of the papers into exact, checkable theorems.

Every strategy draws finite values only, keeps arrays small (default at most 3 samples,
4 channels, side 5, 64 spatial positions) so a property runs in milliseconds, and takes
``dtype=np.float64`` (default) or ``np.float32``.

Safe by construction, so that properties hold under any ``--hypothesis-seed``:

* Subnormal numbers are never drawn (some BLAS builds flush them to zero, which makes exact
  identities fail for reasons unrelated to the code under test), and neither are nonzero values
  so small that a product of a few of them would be subnormal: every nonzero value has
  magnitude at least ``min(tiny**0.25, 2**-20 * bound)`` (float32: 3.3e-10 with the default bounds).
  An exact float64 expectation then never lies below the dtype's range.
* Ties are the caller's business: a property that needs a gap (distinct singular values, a
  non-constant map) must draw it or ``assume`` it, with a margin far above rounding.

This module imports :mod:`hypothesis` (the ``testing`` / ``dev`` extras).  ``import refcam`` does
not import it.  The closed forms here are computed in plain NumPy, independently of
:mod:`refcam.math`, so they can serve as an oracle for it.

Examples
--------
>>> from hypothesis import given, settings
>>> from refcam.testing import gap_linear_problems
>>> @settings(max_examples=5, database=None)
... @given(gap_linear_problems())
... def check(p):
...     n = p.activations.shape[0]
...     assert p.gradients.shape == p.activations.shape
...     assert np.allclose(p.scores, p.logits[np.arange(n), p.targets])
>>> check()
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence, Union

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .errors import InvalidArgumentError

__all__ = [
    "float_dtypes",
    "shapes",
    "map_shapes",
    "float_arrays",
    "activations",
    "gradients_like",
    "activations_and_gradients",
    "maps",
    "input_gradients",
    "GapLinearProblem",
    "gap_linear_logits",
    "gap_linear_problems",
]

Bounds = Union[int, tuple[int, int]]
_FLOATS = (np.float32, np.float64)


# --------------------------------------------------------------------------- helpers

def _bounds(value: Bounds, name: str, lowest: int) -> tuple[int, int]:
    """Turn ``3`` or ``(1, 3)`` into an inclusive ``(lo, hi)`` pair with ``lowest <= lo <= hi``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        lo = hi = int(value)
    else:
        try:
            lo, hi = (int(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise InvalidArgumentError(name, value, "an int or a (min, max) pair") from None
    if not lowest <= lo <= hi:
        raise InvalidArgumentError(name, value,
                                   f"an int or a (min, max) pair with {lowest} <= min <= max")
    return lo, hi


def _dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in [np.dtype(d) for d in _FLOATS]:
        raise InvalidArgumentError("dtype", dt, "float32 or float64")
    return dt


def _range(min_value: float | None, max_value: float | None, nonnegative: bool,
           magnitude: float) -> tuple[float, float]:
    lo = (0.0 if nonnegative else -magnitude) if min_value is None else float(min_value)
    hi = magnitude if max_value is None else float(max_value)
    if nonnegative and lo < 0:
        raise InvalidArgumentError("min_value", lo, "a value >= 0 when nonnegative=True")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise InvalidArgumentError("min_value, max_value", (lo, hi),
                                   "finite bounds with min_value <= max_value")
    return lo, hi


#: relative part of the floor on nonzero magnitudes (see :func:`_floor`)
_REL_FLOOR = 2.0 ** -20


def _floor(dtype: np.dtype, lo: float, hi: float) -> float:
    r"""Smallest nonzero magnitude drawn: :math:`\min(\text{tiny}^{1/4}, 2^{-20}\max(|lo|, |hi|))`.

    ``tiny`` is the dtype's smallest normal number.  With the default bounds, a product of up to
    three drawn values, divided by up to 64 positions, stays a normal number (float32: values
    >= 3.3e-10, products >= 3.6e-29), so an exact float64 expectation never falls below the
    dtype's range, where the right float32 answer is 0 (or a subnormal a BLAS may flush).  Tiny
    bounds (``magnitude=1e-30``) keep values within :math:`2^{-20}` of the bound: a property that
    asks for them gets them, and with them the underflow.
    """
    tiny = float(np.finfo(dtype).tiny)
    return min(tiny ** 0.25, _REL_FLOOR * max(abs(lo), abs(hi)))


def _elements(dtype: np.dtype, lo: float, hi: float) -> st.SearchStrategy[float]:
    """Finite floats in ``[lo, hi]`` exactly representable in ``dtype``: zero, or of magnitude at
    least :func:`_floor` (never subnormal, and no product of a few of them is)."""
    floor = _floor(dtype, lo, hi)

    def away_from_zero(v: float) -> float:
        if v == 0 or abs(v) >= floor:
            return v
        if lo <= 0.0 <= hi:
            return 0.0
        # an interval excluding 0 (e.g. [1e-12, 1]): the floor itself, rounded into dtype
        edge = np.asarray(floor if v > 0 else -floor, dtype=dtype)
        return float(edge) if lo <= float(edge) <= hi else v

    return _raw_elements(dtype, lo, hi).map(away_from_zero)


def _raw_elements(dtype: np.dtype, lo: float, hi: float) -> st.SearchStrategy[float]:
    """Finite, non-subnormal floats in ``[lo, hi]`` exactly representable in ``dtype``."""
    if dtype == np.float32:
        # hypothesis needs bounds representable at width 32: round them inwards.
        lo32, hi32 = np.float32(lo), np.float32(hi)
        if float(lo32) < lo:  # compare in float64 (NEP 50 would compare in float32)
            lo32 = np.nextafter(lo32, np.float32(np.inf))
        if float(hi32) > hi:
            hi32 = np.nextafter(hi32, np.float32(-np.inf))
        lo, hi = float(lo32), float(hi32)
        width = 32
    else:
        width = 64
    return st.floats(min_value=lo, max_value=hi, width=width, allow_nan=False,
                     allow_infinity=False, allow_subnormal=False)


def _shape_strategy(shape: Any, default: st.SearchStrategy[tuple[int, ...]]
                    ) -> st.SearchStrategy[tuple[int, ...]]:
    if shape is None:
        return default
    if isinstance(shape, st.SearchStrategy):
        return shape
    return st.just(tuple(int(s) for s in shape))


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


# --------------------------------------------------------------------------- shapes and arrays

def float_dtypes() -> st.SearchStrategy[np.dtype]:
    """``np.dtype('float32')`` or ``np.dtype('float64')``."""
    return st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)])


def shapes(*, batch: Bounds = (1, 3), channels: Bounds = (1, 4), spatial_rank: Bounds = (1, 3),
           side: Bounds = (1, 5), max_positions: int = 64) -> st.SearchStrategy[tuple[int, ...]]:
    """Feature-map shapes ``(N, K, *S)``.

    Parameters
    ----------
    batch, channels : int or (min, max)
        Bounds (inclusive) on ``N`` and ``K``.
    spatial_rank : int or (min, max)
        Number of spatial axes, 1 (sequences), 2 (images) or 3 (volumes).
    side : int or (min, max)
        Bounds on each spatial side.
    max_positions : int
        Upper bound on ``Z = prod(S)``; sides are shrunk (last axis first) to respect it.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10, database=None)
    ... @given(shapes(spatial_rank=2, channels=3))
    ... def check(shape):
    ...     assert len(shape) == 4 and shape[1] == 3 and 1 <= shape[0] <= 3
    >>> check()
    """
    b_lo, b_hi = _bounds(batch, "batch", 1)
    k_lo, k_hi = _bounds(channels, "channels", 1)
    r_lo, r_hi = _bounds(spatial_rank, "spatial_rank", 1)
    s_lo, s_hi = _bounds(side, "side", 1)
    if max_positions < s_lo ** r_hi:
        raise InvalidArgumentError("max_positions", max_positions,
                                   f"an int >= side_min ** spatial_rank_max = {s_lo ** r_hi}")

    @st.composite
    def _draw(draw: Any) -> tuple[int, ...]:
        n = draw(st.integers(b_lo, b_hi))
        k = draw(st.integers(k_lo, k_hi))
        rank = draw(st.integers(r_lo, r_hi))
        spatial = [draw(st.integers(s_lo, s_hi)) for _ in range(rank)]
        for i in reversed(range(rank)):  # shrink until the position budget holds
            while math.prod(spatial) > max_positions and spatial[i] > s_lo:
                spatial[i] -= 1
        return (n, k, *spatial)

    return _draw()


def map_shapes(*, batch: Bounds = (1, 3), spatial_rank: Bounds = (1, 3), side: Bounds = (1, 5),
               max_positions: int = 64) -> st.SearchStrategy[tuple[int, ...]]:
    """Map shapes ``(N, *S)``; same bounds as :func:`shapes` without the channel axis.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10, database=None)
    ... @given(map_shapes(spatial_rank=(2, 3)))
    ... def check(shape):
    ...     assert len(shape) in (3, 4)
    >>> check()
    """
    return shapes(batch=batch, channels=1, spatial_rank=spatial_rank, side=side,
                  max_positions=max_positions).map(lambda s: (s[0], *s[2:]))


def float_arrays(shape: Any, *, dtype: Any = np.float64, min_value: float | None = None,
                 max_value: float | None = None, nonnegative: bool = False,
                 magnitude: float = 10.0) -> st.SearchStrategy[np.ndarray]:
    """Finite arrays of ``shape`` (a tuple or a strategy of tuples) with values in a range.

    The range is ``[min_value, max_value]``; an omitted end defaults to ``-magnitude`` (``0`` when
    ``nonnegative``) and ``+magnitude``.  Values are never NaN, Inf or subnormal.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10, database=None)
    ... @given(float_arrays((2, 3), dtype=np.float32, nonnegative=True, magnitude=1.0))
    ... def check(a):
    ...     assert a.dtype == np.float32 and a.shape == (2, 3) and 0 <= a.min() <= a.max() <= 1
    >>> check()
    """
    dt = _dtype(dtype)
    lo, hi = _range(min_value, max_value, nonnegative, magnitude)
    shape_st = _shape_strategy(shape, st.nothing())
    return shape_st.flatmap(lambda s: hnp.arrays(dt, s, elements=_elements(dt, lo, hi)))


def activations(shape: Any = None, *, dtype: Any = np.float64, nonnegative: bool = False,
                min_value: float | None = None, max_value: float | None = None,
                magnitude: float = 10.0, **shape_bounds: Any) -> st.SearchStrategy[np.ndarray]:
    """Feature maps ``A`` of layout ``(N, K, *S)``.

    Parameters
    ----------
    shape : tuple, strategy of tuples or None
        Fixed shape, or ``None`` for :func:`shapes` ``(**shape_bounds)``.
    dtype : float64 (default) or float32.
    nonnegative : bool
        Draw post-ReLU activations (values in ``[0, magnitude]``).
    min_value, max_value, magnitude : float
        Value range, see :func:`float_arrays`.
    **shape_bounds
        ``batch``, ``channels``, ``spatial_rank``, ``side``, ``max_positions`` for :func:`shapes`.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10, database=None)
    ... @given(activations(nonnegative=True, spatial_rank=3))
    ... def check(a):
    ...     assert a.ndim == 5 and a.dtype == np.float64 and (a >= 0).all()
    >>> check()
    """
    shape_st = _shape_strategy(shape, shapes(**shape_bounds))
    return float_arrays(shape_st, dtype=dtype, min_value=min_value, max_value=max_value,
                        nonnegative=nonnegative, magnitude=magnitude)


def gradients_like(activations: np.ndarray, *, nonnegative: bool = False,
                   spatially_constant: bool = False, min_value: float | None = None,
                   max_value: float | None = None, magnitude: float = 10.0
                   ) -> st.SearchStrategy[np.ndarray]:
    """Gradients ``G = ∂y^c/∂A`` with the shape and dtype of ``activations``.

    Parameters
    ----------
    activations : ndarray (N, K, *S)
        Only its shape and dtype are used.
    nonnegative : bool
        All gradients ``>= 0`` (the LayerCAM/Grad-CAM++ "positive gradient" regime).
    spatially_constant : bool
        ``G[n, k]`` is the same at every spatial position (what a GAP → linear head produces).
    min_value, max_value, magnitude : float
        Value range, see :func:`float_arrays`.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> a = np.zeros((2, 3, 4, 4), dtype=np.float32)
    >>> @settings(max_examples=10, database=None)
    ... @given(gradients_like(a, spatially_constant=True))
    ... def check(g):
    ...     assert g.shape == a.shape and g.dtype == np.float32
    ...     assert (g == g[:, :, :1, :1]).all()
    >>> check()
    """
    arr = np.asarray(activations)
    shape, dt = arr.shape, _dtype(arr.dtype)
    if spatially_constant:
        return float_arrays(shape[:2], dtype=dt, min_value=min_value, max_value=max_value,
                            nonnegative=nonnegative, magnitude=magnitude).map(
            lambda w: np.broadcast_to(w.reshape(w.shape + (1,) * (len(shape) - 2)), shape).copy())
    return float_arrays(shape, dtype=dt, min_value=min_value, max_value=max_value,
                        nonnegative=nonnegative, magnitude=magnitude)


def activations_and_gradients(*, dtype: Any = np.float64, nonnegative_activations: bool = False,
                              nonnegative_gradients: bool = False,
                              spatially_constant_gradients: bool = False,
                              magnitude: float = 10.0, gradient_magnitude: float = 10.0,
                              **shape_bounds: Any
                              ) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """Pairs ``(A, G)`` of the same shape ``(N, K, *S)`` and dtype.

    Parameters
    ----------
    dtype : float64 (default) or float32.
    nonnegative_activations : bool
        Post-ReLU activations, in ``[0, magnitude]``.
    nonnegative_gradients, spatially_constant_gradients : bool
        See ``nonnegative`` and ``spatially_constant`` of :func:`gradients_like`.
    magnitude, gradient_magnitude : float
        Bounds on ``|A|`` and ``|G|``.
    **shape_bounds
        ``batch``, ``channels``, ``spatial_rank``, ``side``, ``max_positions`` of :func:`shapes`.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10, database=None)
    ... @given(activations_and_gradients(dtype=np.float32, nonnegative_gradients=True))
    ... def check(pair):
    ...     a, g = pair
    ...     assert a.shape == g.shape and a.dtype == g.dtype == np.float32 and (g >= 0).all()
    >>> check()
    """
    return activations(dtype=dtype, nonnegative=nonnegative_activations, magnitude=magnitude,
                       **shape_bounds).flatmap(
        lambda a: st.tuples(st.just(a), gradients_like(
            a, nonnegative=nonnegative_gradients, spatially_constant=spatially_constant_gradients,
            magnitude=gradient_magnitude)))


def maps(shape: Any = None, *, dtype: Any = np.float64, nonnegative: bool = False,
         min_value: float | None = None, max_value: float | None = None, magnitude: float = 10.0,
         **shape_bounds: Any) -> st.SearchStrategy[np.ndarray]:
    """Maps of layout ``(N, *S)`` (the output of a CAM method); arguments as :func:`activations`.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10, database=None)
    ... @given(maps(spatial_rank=2))
    ... def check(m):
    ...     assert m.ndim == 3 and np.isfinite(m).all()
    >>> check()
    """
    shape_st = _shape_strategy(shape, map_shapes(**shape_bounds))
    return float_arrays(shape_st, dtype=dtype, min_value=min_value, max_value=max_value,
                        nonnegative=nonnegative, magnitude=magnitude)


def input_gradients(shape: Any = None, *, dtype: Any = np.float64, input_channels: Bounds = (1, 3),
                    magnitude: float = 10.0, **shape_bounds: Any) -> st.SearchStrategy[np.ndarray]:
    """Input gradients ``∂S_c/∂I`` of layout ``(N, C, *S_in)`` (``C`` = 1 to 3 by default).

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10, database=None)
    ... @given(input_gradients(input_channels=3, spatial_rank=2))
    ... def check(g):
    ...     assert g.ndim == 4 and g.shape[1] == 3
    >>> check()
    """
    shape_st = _shape_strategy(shape, shapes(channels=input_channels, **shape_bounds))
    return float_arrays(shape_st, dtype=dtype, magnitude=magnitude)


# --------------------------------------------------------------------------- GAP -> linear heads

def gap_linear_logits(activations: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    r"""Logits of a *GAP → linear* head, in float64: :math:`y = W\,\mathrm{GAP}(A) + b`.

    .. math:: y^c_n = \sum_k W_{ck} \frac{1}{Z} \sum_{ij} A^k_{n,ij} + b_c

    (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization", Eq. 1–2.)
    Computed in plain NumPy (``float64``) as an oracle independent of :mod:`refcam.math`.

    Parameters
    ----------
    activations : (N, K, *S)
    weight : (M, K) — one row per class.
    bias : (M,)

    Returns
    -------
    (N, M) float64

    Examples
    --------
    >>> a = np.array([[[1.0, 3.0], [0.0, 4.0]]])          # N=1, K=2, S=(2,); GAP = [2, 2]
    >>> gap_linear_logits(a, np.array([[1.0, -1.0], [0.5, 0.5]]), np.array([0.0, 1.0]))
    array([[0., 3.]])
    """
    a = np.asarray(activations, dtype=np.float64)
    pooled = a.reshape(a.shape[0], a.shape[1], -1).mean(axis=2)
    return pooled @ np.asarray(weight, dtype=np.float64).T + np.asarray(bias, dtype=np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class GapLinearProblem:
    r"""A *GAP → linear* classification head with its closed-form gradient (read-only arrays).

    The score of class :math:`c` is :math:`y^c = \sum_k w_k^c \frac{1}{Z}\sum_{ij} A^k_{ij} + b_c`,
    so :math:`\partial y^c / \partial A^k_{ij} = w_k^c / Z` at every position: the setting of CAM
    (Zhou et al. 2016) in which Grad-CAM (Selvaraju et al. 2017, Eq. 1–2) reduces to ``cam / Z``.

    Attributes
    ----------
    activations : (N, K, *S), ``dtype``
        Feature maps ``A`` fed to the global average pooling.
    weight : (M, K), ``dtype``
        The linear layer's weight matrix, one row per class.
    bias : (M,), ``dtype``
        The linear layer's bias (all zeros when drawn with ``bias=False``).
    targets : (N,), int64
        Target class ``c`` of each sample, in ``[0, M)``.
    logits : (N, M), ``dtype``
        ``W · GAP(A) + b`` computed in float64 (:func:`gap_linear_logits`), then cast to ``dtype``.
    scores : (N,), ``dtype``
        ``logits[n, targets[n]]`` — the score ``y^c`` of each sample.
    class_weights : (N, K), ``dtype``
        ``w^c = weight[targets]`` — the argument ``class_weights`` of :func:`refcam.cam`.
    gradients : (N, K, *S), ``dtype``
        ``∂y^c/∂A^k_{ij} = w_k^c / Z`` broadcast over space (computed in float64, then cast).
    Z : int
        Number of spatial positions, ``prod(S)``.

    All arrays are read-only, so code that writes into its inputs fails loudly.
    """

    activations: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    targets: np.ndarray
    logits: np.ndarray
    scores: np.ndarray
    class_weights: np.ndarray
    gradients: np.ndarray
    Z: int

    @classmethod
    def build(cls, activations: np.ndarray, weight: np.ndarray, bias: np.ndarray,
              targets: Sequence[int] | np.ndarray) -> "GapLinearProblem":
        """Assemble a problem (and its closed forms) from ``A``, ``W``, ``b`` and targets.

        Examples
        --------
        >>> p = GapLinearProblem.build(np.ones((1, 2, 2, 2)), [[2.0, -1.0]], np.zeros(1), [0])
        >>> p.Z, p.scores, p.gradients[0, :, 0, 0]
        (4, array([1.]), array([ 0.5 , -0.25]))
        """
        a = np.array(activations, copy=True)
        dt = _dtype(a.dtype)
        w = np.array(weight, dtype=dt, copy=True)
        b = np.array(bias, dtype=dt, copy=True)
        t = np.array(targets, dtype=np.int64, copy=True)
        if a.ndim < 3 or w.ndim != 2 or w.shape[1] != a.shape[1] or b.shape != (w.shape[0],) \
                or t.shape != (a.shape[0],) or (t.size and (t.min() < 0 or t.max() >= w.shape[0])):
            raise InvalidArgumentError(
                "activations, weight, bias, targets", (a.shape, w.shape, b.shape, t.tolist()),
                "shapes (N, K, *S), (M, K), (M,), (N,) with targets in [0, M)")
        z = math.prod(a.shape[2:])
        logits64 = gap_linear_logits(a, w, b)
        n = a.shape[0]
        cw = w[t]
        grad = np.broadcast_to((cw.astype(np.float64) / z).reshape(cw.shape + (1,) * (a.ndim - 2)),
                               a.shape).astype(dt)
        logits = logits64.astype(dt)
        scores = logits64[np.arange(n), t].astype(dt)
        _readonly(a, w, b, t, logits, scores, cw, grad)
        return cls(a, w, b, t, logits, scores, cw, grad, z)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``S``, the spatial shape of the activations."""
        return tuple(self.activations.shape[2:])

    @property
    def n_classes(self) -> int:
        """``M``, the number of classes of the head."""
        return int(self.weight.shape[0])

    def logits_of(self, activations: np.ndarray) -> np.ndarray:
        """The head applied to other activations of the same layout: ``(N', M)`` float64."""
        return gap_linear_logits(activations, self.weight, self.bias)

    def scaled(self, s: float) -> "GapLinearProblem":
        """The same problem with the head scaled: ``W → sW``, ``b → sb`` (so ``y → s y``)."""
        dt = self.activations.dtype
        weight = (self.weight.astype(np.float64) * s).astype(dt)
        bias = (self.bias.astype(np.float64) * s).astype(dt)
        return GapLinearProblem.build(self.activations, weight, bias, self.targets)

    def permuted(self, perm: Sequence[int] | np.ndarray) -> "GapLinearProblem":
        """The same head with channels reordered: ``A[:, perm]``, ``W[:, perm]`` (same logits)."""
        p = np.asarray(perm)
        return GapLinearProblem.build(self.activations[:, p], self.weight[:, p], self.bias,
                                      self.targets)


def gap_linear_problems(*, dtype: Any = np.float64, n_classes: Bounds = (1, 5), bias: bool = True,
                        nonnegative_activations: bool = False, min_activation: float | None = None,
                        magnitude: float = 10.0, weight_magnitude: float = 2.0,
                        **shape_bounds: Any) -> st.SearchStrategy[GapLinearProblem]:
    r"""Whole *GAP → linear* heads with their closed-form gradients (:class:`GapLinearProblem`).

    .. math::
        y^c = \sum_k w^c_k \frac{1}{Z}\sum_{ij} A^k_{ij} + b_c, \qquad
        \frac{\partial y^c}{\partial A^k_{ij}} = \frac{w^c_k}{Z}

    the CAM architecture (Zhou et al. 2016, "Learning Deep Features for Discriminative
    Localization", Eq. 1–2) for which Grad-CAM equals CAM up to ``1/Z`` (Selvaraju et al. 2017,
    "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", Sec. 3.1).
    The logits are computed in float64 NumPy (:func:`gap_linear_logits`), independently of
    :mod:`refcam.math`.

    Parameters
    ----------
    dtype : float64 (default) or float32.
    n_classes : int or (min, max)
        Bounds on ``M``, the number of rows of ``W``.
    bias : bool
        Draw a bias (values in ``[-magnitude, magnitude]``); ``False`` gives ``b = 0`` (then
        ``y^c`` is positively homogeneous of degree 1 in ``A``).
    nonnegative_activations : bool
        Post-ReLU activations in ``[0, magnitude]``.
    min_activation : float, optional
        Lower bound on activations (e.g. ``0.5`` for strictly positive channel sums).
    magnitude, weight_magnitude : float
        Bounds on ``|A|``, ``|b|`` and on ``|W|``.
    **shape_bounds
        Shape bounds of :func:`shapes` for ``A``.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10, database=None)
    ... @given(gap_linear_problems(dtype=np.float32, bias=False, spatial_rank=2))
    ... def check(p):
    ...     assert p.activations.dtype == p.gradients.dtype == p.logits.dtype == np.float32
    ...     assert (p.bias == 0).all() and p.activations.ndim == 4
    >>> check()
    """
    dt = _dtype(dtype)
    m_lo, m_hi = _bounds(n_classes, "n_classes", 1)

    @st.composite
    def _draw(draw: Any) -> GapLinearProblem:
        a = draw(activations(dtype=dt, nonnegative=nonnegative_activations,
                             min_value=min_activation, magnitude=magnitude, **shape_bounds))
        n, k = a.shape[:2]
        m = draw(st.integers(m_lo, m_hi))
        w = draw(float_arrays((m, k), dtype=dt, magnitude=weight_magnitude))
        b = draw(float_arrays((m,), dtype=dt, magnitude=magnitude)) if bias else np.zeros(m, dt)
        t = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, m - 1)))
        return GapLinearProblem.build(a, w, b, t)

    return _draw()
