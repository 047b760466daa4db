"""Turning models into the ``score_fn`` callables the metrics take (no onnx import here).

* :func:`softmax_scores` wraps a logits ``score_fn`` into one returning class probabilities (the
  scores Grad-CAM++'s Average Drop and RISE's deletion/insertion are defined on);
* :func:`model_score_fn` wraps any object with ``run(inputs, names) -> {name: array}`` and an
  ``output_name`` attribute — e.g. :class:`refcam.onnx.Model` — duck-typed, so this module never
  imports the onnx package.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import math as M
from ..errors import InvalidArgumentError
from ._common import ScoreFn

__all__ = ["model_score_fn", "softmax", "softmax_scores"]


def softmax(logits: Any) -> np.ndarray:
    r"""Softmax over the last axis (:func:`refcam.math.softmax`, the one implementation), for
    integer or float logits (integers are computed in float32 or wider).

    Examples
    --------
    >>> softmax(np.array([[0.0, np.log(3.0)]]))
    array([[0.25, 0.75]])
    """
    z = np.asarray(logits)
    if z.dtype.kind not in "fiub":
        raise InvalidArgumentError("logits", str(z.dtype), "real scores")
    z = z.astype(np.result_type(z.dtype, np.float32)) if z.dtype.kind != "f" else z
    return M.softmax(z, axis=-1)


def softmax_scores(score_fn: ScoreFn) -> ScoreFn:
    """Wrap a ``score_fn`` returning logits ``(M, n_classes)`` into one returning probabilities.

    Examples
    --------
    >>> f = softmax_scores(lambda x: np.stack([x.sum(axis=(1, 2, 3)), np.zeros(len(x))], axis=1))
    >>> f(np.zeros((1, 1, 1, 1)))
    array([[0.5, 0.5]])
    """
    if not callable(score_fn):
        raise InvalidArgumentError(
            "score_fn", type(score_fn).__name__, "a callable inputs -> logits"
        )

    def wrapped(inputs: np.ndarray) -> np.ndarray:
        out = np.asarray(score_fn(inputs))
        if out.ndim != 2:
            raise InvalidArgumentError(
                "score_fn", f"output of shape {out.shape}", "(M, n_classes) logits for softmax"
            )
        return softmax(out)

    return wrapped


def model_score_fn(model: Any, *, probabilities: bool = False) -> ScoreFn:
    """A ``score_fn`` running ``model`` (anything with ``run(inputs, names)`` and ``output_name``).

    Parameters
    ----------
    model : e.g. :class:`refcam.onnx.Model`; its ``output_name`` tensor gives the class scores
        (pre-softmax logits by default for refcam.onnx models).
    probabilities : apply :func:`softmax` over the classes.

    Examples
    --------
    >>> class Toy:
    ...     output_name = "y"
    ...     def run(self, x, names):
    ...         return {"y": x.reshape(len(x), -1)}
    >>> model_score_fn(Toy())(np.ones((2, 1, 1, 3))).shape
    (2, 3)
    """
    if not (callable(getattr(model, "run", None)) and hasattr(model, "output_name")):
        raise InvalidArgumentError(
            "model", type(model).__name__, "an object with run(inputs, names) and output_name"
        )
    name = model.output_name

    def score_fn(inputs: np.ndarray) -> np.ndarray:
        return np.asarray(model.run(inputs, [name])[name])

    return softmax_scores(score_fn) if probabilities else score_fn
