"""Issue 17, "False passes": every tolerance check of the package is NaN-aware.

``np.abs(got - exp).max() > tol`` is False when the difference holds a NaN, so garbage passes.
The package routes its checks through :mod:`refcam._compare`; each check found by the audit
(``grep`` for ``.max() > tol`` / ``abs(a - b)`` outside ``refcam/conformance.py``, which issue 18
covers) has a test here that a NaN does not slip through.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from refcam import _compare
from refcam.errors import ModelError


# --------------------------------------------------------------------------- refcam._compare itself

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_compare_never_passes_a_non_finite_value(bad):
    exp = np.array([1.0, 2.0, 3.0])
    got = exp.copy()
    got[1] = bad
    assert _compare.max_abs_error(got, exp) == np.inf
    assert not _compare.within(got, exp, atol=1e300, rtol=1e300)
    assert _compare.errors(got, exp)[0] == np.inf
    # the classic hole, for contrast: NaN > tol is False
    if np.isnan(bad):
        assert not (np.abs(got - exp).max() > 1e-6)


def test_compare_nan_in_the_expected_array_is_a_mismatch_too():
    assert not _compare.within(np.ones(2), np.array([1.0, np.nan]), atol=1.0)
    assert not _compare.within(np.array([1.0, np.nan]), np.array([1.0, np.nan]), atol=1.0)


# --------------------------------------------------------------------------- refcam._forward (CAM head check)

def _cam_ctx(outputs: np.ndarray, weight: np.ndarray, bias: np.ndarray, a: np.ndarray):
    """The minimal context ``provide_class_weights`` reads: a model with a GAP -> linear head."""
    head = types.SimpleNamespace(weight=weight, bias=bias, nodes=["GlobalAveragePool", "Gemm"])
    layer = types.SimpleNamespace(name="features")
    model = types.SimpleNamespace(linear_head=lambda layer: head)
    arrays: dict = {}
    return types.SimpleNamespace(
        model=model, layer=layer, targets=types.SimpleNamespace(classes=np.array([[0]])),
        need=lambda what: a, outputs=outputs, arrays=arrays)


def test_cam_head_check_accepts_a_reproduced_output():
    from refcam._forward import provide_class_weights

    a = np.arange(8.0).reshape(1, 2, 2, 2)
    w = np.array([[1.0, -1.0], [0.5, 2.0]])
    b = np.array([0.1, 0.2])
    y = a.mean(axis=(2, 3)) @ w.T + b
    out = provide_class_weights(_cam_ctx(y, w, b, a))
    np.testing.assert_array_equal(out, w[[[0]]])


@pytest.mark.parametrize("where", ["output", "weight"])
def test_cam_head_check_refuses_nan(where):
    # before: tol = 1e-3 * (1 + max|out|) is NaN and `max|y - out| > NaN` is False: silent pass
    from refcam._forward import provide_class_weights

    a = np.arange(8.0).reshape(1, 2, 2, 2)
    w = np.array([[1.0, -1.0], [0.5, 2.0]])
    b = np.array([0.1, 0.2])
    y = a.mean(axis=(2, 3)) @ w.T + b
    if where == "output":
        y[0, 1] = np.nan
    else:
        w = w.copy()
        w[1, 0] = np.nan
    with pytest.raises(ModelError, match="does not reproduce the model output"):
        provide_class_weights(_cam_ctx(y, w, b, a))


def test_no_unguarded_tolerance_check_left_in_the_package():
    # the audit, as a test: the pattern `abs(a - b).max() > tol` must not come back
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "refcam"
    pattern = re.compile(r"abs\([^()]*-[^()]*\)\)?\.max\(\)\s*>|np\.max\(np\.abs\([^()]*-[^()]*\)\)\s*>")
    hits = []
    for path in root.rglob("*.py"):
        if path.name in ("_compare.py", "conformance.py"):  # conformance: issue 18
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(root.parent)}:{i}: {line.strip()}")
    assert hits == [], "use refcam._compare.within / max_abs_error:\n" + "\n".join(hits)
