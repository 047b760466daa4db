"""Targets: which scalar ``y^c`` of the model output a map explains.

Accepted forms of ``target`` (``N`` = batch size):

* ``None`` — the top-1 class of each sample (argmax of the model output);
* an ``int`` ``c`` — class ``c`` for every sample;
* :class:`TopK` ``(k)`` — the ``k`` highest-scoring classes of each sample (``T = k`` maps each);
* a sequence of length ``N`` — one entry per sample, each an ``int`` or a callable
  (a length that differs from the batch is a :class:`~refcam.errors.TargetError`:
  pytorch-grad-cam silently truncates, refcam refuses); an ``(N, T)`` integer array gives ``T``
  classes per sample;
* a callable ``f(outputs) -> (m,)`` applied to rows of the model output (softmax probability,
  segmentation-mask sum, similarity to an embedding...).  Every row passed belongs to the same
  sample when the callable is a per-sample entry.

Scores are read from the output tensor the model targets (pre-softmax logits by default).

>>> import numpy as np
>>> logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
>>> resolve_targets(None, logits).classes
array([[1],
       [0]])
>>> resolve_targets(TopK(2), logits).classes
array([[1, 0],
       [0, 2]])
>>> resolve_targets([2, 1], logits).scores(logits, np.array([0, 1]))
array([[-1.],
       [ 0.]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import TargetError

__all__ = ["Targets", "TopK", "class_view", "resolve_targets"]


@dataclass(frozen=True)
class TopK:
    """Explain the ``k`` highest-scoring classes of each sample (in decreasing score order)."""

    k: int


def class_view(outputs: np.ndarray, *, argument: str = "target") -> np.ndarray:
    """The ``(N, C)`` view of a classifier output (``(N, C, 1, 1)`` is flattened).

    Raises :class:`TargetError` for outputs with real extra axes (segmentation...), for which a
    class index is ambiguous: use a callable target there.
    """
    outputs = np.asarray(outputs)
    if outputs.ndim == 2:
        return outputs
    if outputs.ndim > 2 and int(np.prod(outputs.shape[2:])) == 1:
        return outputs.reshape(outputs.shape[0], outputs.shape[1])
    raise TargetError(
        f"{argument}: a class index needs a model output of shape (N, C); the output has shape "
        f"{tuple(outputs.shape)} — pass a callable target (e.g. a mask sum) instead"
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


class Targets:
    """Resolved targets for a batch of ``N`` samples, ``T`` targets per sample.

    Attributes
    ----------
    classes : ``(N, T)`` int64 class indices, or ``None`` when some sample uses a callable.
    specs : per sample, an int64 array ``(T,)`` of classes or a callable.
    n_targets : ``T``.
    shared : the callable when one callable serves every sample (called once on all rows).
    """

    def __init__(self, specs: list, n_targets: int, shared: Callable | None = None) -> None:
        self.specs = specs
        self.n_targets = n_targets
        self.shared = shared  # one callable for every sample: called once on all rows
        if all(not callable(s) for s in specs):
            self.classes: np.ndarray | None = np.stack(specs).astype(np.int64)
        else:
            self.classes = None

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        return f"Targets(N={len(self.specs)}, T={self.n_targets}, classes={self.classes!r})"

    def scores(self, outputs: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """Scores ``y^c`` of the rows of ``outputs``: ``(m, ...)`` model outputs whose row ``i``
        was computed for sample ``samples[i]``.  Returns ``(m, T)``."""
        outputs = np.asarray(outputs)
        samples = np.asarray(samples, dtype=np.int64)
        if self.classes is not None:
            view = class_view(outputs)
            return view[np.arange(len(samples))[:, None], self.classes[samples]]
        if self.shared is not None:
            return _call(self.shared, outputs)[:, None]
        result = np.empty(
            (len(samples), self.n_targets), dtype=np.result_type(outputs.dtype, np.float32)
        )
        for s in np.unique(samples):
            rows = np.flatnonzero(samples == s)
            spec = self.specs[s]
            if callable(spec):
                result[rows, 0] = _call(spec, outputs[rows])
            else:
                result[rows] = class_view(outputs[rows])[:, spec]
        return result


def _call(fn: Callable, outputs: np.ndarray) -> np.ndarray:
    try:
        val = np.asarray(fn(outputs), dtype=np.float64)
    except TargetError:
        raise
    except Exception as exc:
        raise TargetError(f"target: the callable raised {type(exc).__name__}: {exc}") from exc
    if val.shape != (outputs.shape[0],):
        val = val.reshape(-1) if val.size == outputs.shape[0] else val
    if val.shape != (outputs.shape[0],):
        raise TargetError(
            f"target: the callable returned shape {tuple(val.shape)}, expected ({outputs.shape[0]},) "
            f"(one score per row of the outputs of shape {tuple(outputs.shape)})"
        )
    if not np.isfinite(val).all():
        raise TargetError("target: the callable returned non-finite scores")
    return val


def _check_class(c: Any, n_classes: int, where: str) -> int:
    if not _is_int(c):
        raise TargetError(f"{where}: got {c!r}, expected an int class index or a callable")
    if not -n_classes <= int(c) < n_classes:
        raise TargetError(
            f"{where}: class {int(c)} is out of range for an output with {n_classes} classes "
            f"(expected 0 <= c < {n_classes})"
        )
    return int(c) % n_classes


def resolve_targets(target: Any, outputs: np.ndarray) -> Targets:
    """Resolve ``target`` (see module docstring) against the unmodified model ``outputs`` ``(N, ...)``.

    Negative class indices count from the end, as in NumPy.  Raises :class:`TargetError` for
    out-of-range classes, a per-sample list whose length is not ``N``, or a malformed target.
    """
    outputs = np.asarray(outputs)
    n = outputs.shape[0]
    if target is None:
        view = class_view(outputs)
        return Targets(list(np.argmax(view, axis=1)[:, None]), 1)
    if isinstance(target, TopK):
        view = class_view(outputs)
        k = target.k
        if not _is_int(k) or not 1 <= k <= view.shape[1]:
            raise TargetError(
                f"target: TopK(k={k!r}), expected 1 <= k <= {view.shape[1]} (number of classes)"
            )
        order = np.argsort(-view, axis=1, kind="stable")[:, :k]
        return Targets(list(order), int(k))
    if callable(target):
        return Targets([target] * n, 1, shared=target)
    if _is_int(target):
        c = _check_class(target, class_view(outputs).shape[1], "target")
        return Targets([np.array([c])] * n, 1)
    if isinstance(target, (str, bytes)) or not isinstance(target, (Sequence, np.ndarray)):
        raise TargetError(
            f"target: got {type(target).__name__} {target!r}, expected None, an int, TopK(k), "
            f"a per-sample sequence or a callable"
        )
    if len(target) != n:
        raise TargetError(
            f"target: got {len(target)} per-sample target(s) for a batch of {n} input(s), expected exactly {n} "
            f"(refcam does not truncate or broadcast per-sample targets)"
        )
    arr = np.asarray(target, dtype=object) if not isinstance(target, np.ndarray) else target
    if isinstance(target, np.ndarray) and target.ndim == 2:
        if target.dtype.kind not in "iu":
            raise TargetError(
                f"target: got an array of dtype {target.dtype}, expected integer class indices"
            )
        nc = class_view(outputs).shape[1]
        specs = [
            np.array([_check_class(c, nc, f"target[{i}]") for c in row])
            for i, row in enumerate(target.tolist())
        ]
        return Targets(specs, target.shape[1])
    specs: list = []
    for i, t in enumerate(arr):
        if callable(t):
            specs.append(t)
        else:
            t = t.item() if isinstance(t, np.generic) else t
            specs.append(np.array([_check_class(t, class_view(outputs).shape[1], f"target[{i}]")]))
    return Targets(specs, 1)
