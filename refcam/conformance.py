r"""Conformance harness: check any third-party CAM function against refcam's formulas and presets.

Give :func:`check` a function *arrays in, map out* and a method name.  It runs
hypothesis-generated cases through the function and through every refcam candidate for that
method -- the paper formula (raw, and min-max scaled) and each peer preset of
:mod:`refcam.presets` -- and reports, per candidate, the max absolute and relative error, which
candidates the function matches, and the shrunk first counterexample against the target
(``preset=`` or, by default, the closest candidate).

The function's positional arguments depend on the method (arrays with the batch axis, float64
unless ``dtype=`` says otherwise):

==================================================================  ================================
method                                                              ``fn(...)``
==================================================================  ================================
gradcam, gradcampp, xgradcam, layercam, hirescam,                   ``fn(activations, gradients)``
gradcam_elementwise, eigengradcam
eigencam                                                            ``fn(activations)``
cam                                                                 ``fn(activations, class_weights)``
scorecam                                                            ``fn(activations, scores)``
ablationcam                                                         ``fn(activations, scores, baseline_score)``
==================================================================  ================================

``activations`` ``(N, K, H, W)``, ``gradients`` like it, ``class_weights``/``scores`` ``(N, K)``,
``baseline_score`` ``(N,)``; the function returns ``(N, H, W)`` (feature resolution) or, when
``input_size`` is given, ``(N, *input_size)``.  Gradients are drawn over several orders of
magnitude (down to 1e-4) because that is where additive eps guards show.  Eigen-CAM under the
``pytorch-grad-cam`` candidate uses LAPACK's sign (``sign="none"``), which another SVD call may
flip: a mismatch there can be a sign, not a formula.  Needs hypothesis (the ``testing`` extra).

In a library's own pytest suite::

    from refcam.conformance import assert_conforms

    def test_my_gradcampp_is_the_paper_formula():
        assert_conforms(my_lib.gradcampp_map, "gradcampp", preset="paper", normalized=True)

Examples
--------
>>> import numpy as np
>>> import refcam.math as rm
>>> def mine(a, g):                                   # Grad-CAM, ReLU, min-max: refcam's paper
...     return rm.normalize(rm.gradcam(a, g))
>>> rep = check(mine, "gradcam", max_examples=20)
>>> rep.matched("paper (min-max)")
True
>>> rep.target, rep.counterexample is None
('paper (min-max)', True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from . import _validate as _v
from . import math as _m
from . import presets as _p
from ._compare import errors as _errors, within as _within
from .errors import InvalidArgumentError, ShapeError
from .methods import METHODS

__all__ = ["ConformanceReport", "check", "assert_conforms", "METHOD_ARGUMENTS"]

#: the argument of the checked function that carries each need of a method (refcam.methods)
_ARGUMENT_OF_NEED = {"activations": "activations", "gradients": "gradients",
                     "class_weights": "class_weights", "masked_scores": "scores",
                     "ablated_scores": "scores", "ablation_base_scores": "baseline_score"}
#: Positional arguments the checked function receives, per method of the preset table.
METHOD_ARGUMENTS: dict[str, tuple[str, ...]] = {
    m: tuple(_ARGUMENT_OF_NEED[n] for n in METHODS[m].needs) for m in _p.PRESETS["paper"]
}


@dataclass
class ConformanceReport:
    """Result of :func:`check`.

    Attributes
    ----------
    method : str
    n_cases : int
        Generated cases run (all candidates see the same cases).
    errors : dict
        ``candidate -> (max abs error, max relative error)`` over all cases; the relative error
        of a case is ``max|got - expected| / max|expected|``.
    tolerance : (atol, rtol)
        A case passes when ``max|got - expected| <= atol + rtol * max|expected|``.
    matches : list of str
        Candidates every case passed against, best first.
    target : str
        The candidate the counterexample is about (``preset=`` of :func:`check`, else the best).
    counterexample : dict or None
        Shrunk first failing case against ``target``: the input arrays, ``got``, ``expected``.
    """

    method: str
    n_cases: int
    errors: dict[str, tuple[float, float]]
    tolerance: tuple[float, float]
    matches: list[str]
    target: str
    counterexample: dict[str, Any] | None = field(default=None, repr=False)

    def matched(self, candidate: str) -> bool:
        """Whether every case agreed with ``candidate`` within the tolerance."""
        return candidate in self.matches

    def __str__(self) -> str:
        lines = [f"conformance of a {self.method} implementation: {self.n_cases} generated cases, "
                 f"tolerance atol={self.tolerance[0]:g}, rtol={self.tolerance[1]:g}",
                 f"{'candidate':<34} {'max abs err':>12} {'max rel err':>12}  match"]
        for name, (ab, rel) in sorted(self.errors.items(), key=lambda kv: kv[1][1]):
            lines.append(f"{name:<34} {ab:12.3e} {rel:12.3e}  {'yes' if name in self.matches else 'no'}")
        lines.append("matches: " + (", ".join(self.matches) if self.matches else "none"))
        if self.counterexample is not None:
            ce = self.counterexample
            lines.append(f"shrunk counterexample against {self.target!r}:")
            for k, v in ce.items():
                lines.append(f"  {k} = {np.array2string(np.asarray(v), precision=6, separator=', ')}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- candidates

def _candidates(method: str, input_size: tuple[int, ...] | None) -> dict[str, Callable[[dict], np.ndarray]]:
    """``name -> case -> expected map`` for every refcam convention of ``method``."""
    args = METHOD_ARGUMENTS[method]
    fn = METHODS[method].math
    out: dict[str, Callable[[dict], np.ndarray]] = {}

    def _math_call(case: dict, relu: bool | None = None, **kw: Any) -> np.ndarray:
        pos = [case[a] for a in args if a not in ("baseline_score",)]
        extra = dict(kw)
        if relu is not None:
            extra["relu"] = relu
        if method == "ablationcam":
            return fn(*pos, case["baseline_score"], **extra)
        return fn(*pos, **extra)

    def _resize(m: np.ndarray) -> np.ndarray:
        return m if input_size is None else _m.upsample(m, input_size, "linear")

    paper = _p.PRESETS["paper"].get(method)
    paper_relu = paper.relu if paper is not None else None
    out["paper (raw)"] = lambda c: _resize(_math_call(c))
    if paper_relu is not None:
        out["paper (raw, ReLU flipped)"] = lambda c: _resize(_math_call(c, relu=not paper_relu))
    out["paper (min-max)"] = lambda c: _m.normalize(_resize(_math_call(c)))
    for preset in _p.PRESET_NAMES:
        if preset == "paper" or method not in _p.PRESETS[preset]:
            continue
        conv = _p.get(preset, method)
        if input_size is None:
            conv = conv.replace(upsample=None)
        elif conv.upsample is None:
            conv = conv.replace(upsample="nearest" if preset == "captum" else "linear")

        def _run(c: dict, conv: _p.Convention = conv) -> np.ndarray:
            kw = {a: c[a] for a in args}
            if method == "scorecam":
                kw["baseline_score"] = None
            return _p.compute(method, convention=conv, input_size=input_size, **kw)

        out[preset] = _run
    return out


def _case_strategy(method: str, dtype: np.dtype, max_side: int):
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    def _arr(shape, lo, hi):
        return hnp.arrays(dtype, shape, elements=st.floats(lo, hi, allow_nan=False, allow_subnormal=False,
                                                           width=64 if dtype == np.float64 else 32))

    @st.composite
    def case(draw):
        n = draw(st.integers(1, 2))
        k = draw(st.integers(1, 4))
        h = draw(st.integers(1, max_side))
        w = draw(st.integers(1, max_side))
        c = {"activations": draw(_arr((n, k, h, w), 0.0, 4.0))}
        args = METHOD_ARGUMENTS[method]
        if "gradients" in args:
            scale = dtype.type(10.0) ** dtype.type(-draw(st.integers(0, 4)))
            c["gradients"] = draw(_arr((n, k, h, w), -1.0, 1.0)) * scale
        if "class_weights" in args:
            c["class_weights"] = draw(_arr((n, k), -1.0, 1.0))
        if "scores" in args:
            c["scores"] = draw(_arr((n, k), -4.0, 4.0))
        if "baseline_score" in args:
            c["baseline_score"] = draw(_arr((n,), 0.5, 4.0))
        return c

    return case()


def _error(got: np.ndarray, exp: np.ndarray) -> tuple[float, float]:
    # NaN-aware (refcam._compare): a NaN or Inf where a finite value is expected is an infinite
    # error, never a pass (`NaN > tol` is False).
    return _errors(got, exp)


# --------------------------------------------------------------------------- public API

def check(
    fn: Callable[..., Any],
    method: str,
    *,
    preset: str | None = None,
    input_size: Sequence[int] | None = None,
    max_examples: int = 100,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    dtype: Any = np.float64,
    max_side: int = 5,
    seed: int = 0,
) -> ConformanceReport:
    """Run generated cases through ``fn`` and every refcam candidate of ``method``; see the module doc.

    Parameters
    ----------
    fn : callable
        The implementation under test, called as in :data:`METHOD_ARGUMENTS`; must return an
        array-like of shape ``(N, H, W)`` (or ``(N, *input_size)``).
    method : str
        A key of :data:`METHOD_ARGUMENTS`.
    preset : str, optional
        Candidate to report the counterexample against: ``"paper (raw)"``, ``"paper (min-max)"``,
        ``"paper (raw, ReLU flipped)"`` or a preset name; default: the closest candidate.
    input_size : sequence of 2 ints, optional
        When given, ``fn`` is expected to return maps at this size and the candidates upsample.
    max_examples, seed : int
        Hypothesis budget; generation is derandomised by ``seed`` (reproducible).
    atol, rtol : float
        Per-case pass criterion ``max|got - expected| <= atol + rtol * max|expected|``.
    dtype : float32 or float64
        dtype of the generated arrays.
    max_side : int
        Largest spatial side generated.

    Returns
    -------
    ConformanceReport
    """
    from hypothesis import HealthCheck, given, seed as hseed, settings

    if method not in METHOD_ARGUMENTS:
        raise InvalidArgumentError("method", method, "one of " + ", ".join(repr(m) for m in METHOD_ARGUMENTS))
    if not callable(fn):
        raise InvalidArgumentError("fn", fn, "a callable (arrays in, map out)")
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise InvalidArgumentError("dtype", dtype, "float32 or float64")
    size = None if input_size is None else _p._size(input_size, 2)
    n_examples = _v.positive_int(max_examples, "max_examples")
    side = _v.positive_int(max_side, "max_side")
    atol = _v.nonnegative_float(atol, "atol")
    rtol = _v.nonnegative_float(rtol, "rtol")
    cands = _candidates(method, size)
    if preset is not None and preset not in cands:
        raise InvalidArgumentError("preset", preset, "one of " + ", ".join(repr(c) for c in cands))
    strategy = _case_strategy(method, dt, side)
    args = METHOD_ARGUMENTS[method]

    def _run(case: dict) -> np.ndarray:
        got = np.asarray(fn(*[case[a].copy() for a in args]), dtype=np.float64)
        n, s = case["activations"].shape[0], case["activations"].shape[2:]
        want = (n,) + (size if size is not None else s)
        if got.shape != want:
            raise ShapeError("fn(...)", got.shape, want, "the map returned by the function under test")
        return got

    # Smoke case first, outside hypothesis: a wrong output shape fails at once, unshrunk.
    rng = np.random.default_rng(seed)
    smoke = {"activations": rng.random((2, 3, 3, 4)).astype(dt), "gradients": rng.normal(size=(2, 3, 3, 4)).astype(dt),
             "class_weights": rng.normal(size=(2, 3)).astype(dt), "scores": rng.normal(size=(2, 3)).astype(dt),
             "baseline_score": (1 + rng.random(2)).astype(dt)}
    _run(smoke)

    errors = {name: [0.0, 0.0] for name in cands}
    passed = {name: True for name in cands}
    n_cases = [0]
    cfg = settings(max_examples=n_examples, deadline=None, database=None, derandomize=False,
                   suppress_health_check=list(HealthCheck), print_blob=False)

    @hseed(seed)
    @cfg
    @given(strategy)
    def _survey(case: dict) -> None:
        got = _run(case)
        n_cases[0] += 1
        for name, ref in cands.items():
            exp = np.asarray(ref(case), dtype=np.float64)
            ab, rel = _error(got, exp)
            errors[name][0] = max(errors[name][0], ab)
            errors[name][1] = max(errors[name][1], rel)
            if not _within(got, exp, atol=atol, rtol=rtol):
                passed[name] = False

    _survey()
    errs = {k: (v[0], v[1]) for k, v in errors.items()}
    order = sorted(cands, key=lambda k: (not passed[k], errs[k][1], errs[k][0]))
    matches = [k for k in order if passed[k]]
    target = preset if preset is not None else order[0]

    counterexample = None
    if not passed[target]:
        last: dict[str, Any] = {}
        ref = cands[target]

        @hseed(seed)
        @cfg
        @given(strategy)
        def _shrink(case: dict) -> None:
            got = _run(case)
            exp = np.asarray(ref(case), dtype=np.float64)
            if not _within(got, exp, atol=atol, rtol=rtol):
                last.clear()
                last.update({a: case[a] for a in args}, got=got, expected=exp)
                raise AssertionError("mismatch")

        try:
            _shrink()
        except AssertionError:
            counterexample = dict(last)   # hypothesis replays the shrunk example last
    return ConformanceReport(method, n_cases[0], errs, (atol, rtol), matches, target, counterexample)


def assert_conforms(fn: Callable[..., Any], method: str, *, preset: str = "paper (min-max)",
                    **kwargs: Any) -> ConformanceReport:
    """:func:`check`, raising ``AssertionError`` with the report unless ``fn`` matches ``preset``.

    Examples
    --------
    >>> import numpy as np, refcam.math as rm
    >>> _ = assert_conforms(lambda a, g: rm.hirescam(a, g), "hirescam", preset="paper (raw)",
    ...                     max_examples=10)
    """
    rep = check(fn, method, preset=preset, **kwargs)
    if not rep.matched(preset):
        raise AssertionError(f"implementation does not conform to {preset!r}\n{rep}")
    return rep
