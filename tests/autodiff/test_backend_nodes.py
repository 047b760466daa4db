"""The ONNX backend node suite (regenerated in-process from the onnx package's own test
definitions) through the finite-difference oracle: no silent wrong gradient, no crash.

The whole suite runs here (about 1-2 minutes on one core; see ``backend_nodes.py`` for the
oracle, the step sizes and the kink exclusion).  Every refusal must be a clean
``UnsupportedOpError`` naming node, op and opset (else it is counted as CRASH).
"""

from __future__ import annotations

import pytest

from .backend_nodes import run_suite, table

#: 1020 PASS measured on this branch (docs/autodiff.md); the issue asks for >= 900. A drop means a rule regressed
PASS_FLOOR = 1010


@pytest.fixture(scope="module")
def results():
    return run_suite()


def test_no_wrong_gradient(results):
    wrong = [(r.name, r.detail) for r in results if r.status == "WRONG"]
    assert wrong == [], wrong[:10]


def test_no_crash(results):
    crash = [(r.name, r.detail[:300]) for r in results if r.status == "CRASH"]
    assert crash == [], crash[:10]


def test_pass_count(results, capsys):
    with capsys.disabled():
        print("\n" + table(results))
    n_pass = sum(r.status == "PASS" for r in results)
    assert n_pass >= PASS_FLOOR, table(results)
