r"""NaN-aware comparisons: the one place refcam decides whether two arrays agree.

``np.abs(got - exp).max() > tol`` is the classic hole of a validation tool: with a NaN anywhere
the maximum is NaN, ``NaN > tol`` is ``False`` and garbage passes.  Every tolerance check in the
package goes through these functions instead.

Rules
-----
* Shapes must be equal (no broadcasting): otherwise the error is :math:`+\infty`.
* A NaN or an infinity in ``got`` where ``exp`` holds a different value (NaN counts as different
  from everything, also from NaN, unless ``equal_nan=True``) makes the error :math:`+\infty`.
* Otherwise the error is :math:`\max_i |g_i - e_i|` (0 for empty arrays), computed in float64.

>>> import numpy as np
>>> max_abs_error(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
inf
>>> within(np.array([1.0, np.nan]), np.array([1.0, 2.0]), atol=1e9)
False
>>> max_abs_error(np.ones((2, 1)), np.ones(2))
inf
>>> max_abs_error(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
0.5
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["max_abs_error", "errors", "within"]


def max_abs_error(got: Any, exp: Any, *, equal_nan: bool = False) -> float:
    r"""NaN-aware :math:`\max_i |g_i - e_i|`; :math:`+\infty` on a shape mismatch or any
    non-finite disagreement (see the module docstring)."""
    g = np.asarray(got)
    e = np.asarray(exp)
    if g.shape != e.shape:
        return float("inf")
    if g.size == 0:
        return 0.0
    g = g.astype(np.float64, copy=False)
    e = e.astype(np.float64, copy=False)
    fin = np.isfinite(g) & np.isfinite(e)
    if not fin.all():
        same = (g == e) | (equal_nan & np.isnan(g) & np.isnan(e))
        if not same[~fin].all():
            return float("inf")
    if not fin.any():
        return 0.0
    return float(np.abs(g[fin] - e[fin]).max())


def errors(got: Any, exp: Any) -> tuple[float, float]:
    r"""``(absolute, relative)`` NaN-aware errors; relative is absolute over :math:`\max|e|`
    (:math:`+\infty` when the expected array is all zero and the absolute error is not 0)."""
    ab = max_abs_error(got, exp)
    e = np.asarray(exp, dtype=np.float64)
    fin = e[np.isfinite(e)]
    scale = float(np.abs(fin).max()) if fin.size else 0.0
    if ab == 0.0:
        return 0.0, 0.0
    return ab, (ab / scale if scale > 0 else float("inf"))


def within(got: Any, exp: Any, *, atol: float = 0.0, rtol: float = 0.0) -> bool:
    r"""``True`` iff :math:`\max_i |g_i - e_i| \le \text{atol} + \text{rtol}\,\max_i |e_i|`, with
    NaN, infinities and shape mismatches always failing (never a silent pass)."""
    ab = max_abs_error(got, exp)
    if not np.isfinite(ab):
        return False
    e = np.asarray(exp, dtype=np.float64)
    scale = float(np.abs(e).max()) if e.size else 0.0
    return ab <= atol + rtol * scale
