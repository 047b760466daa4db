"""Faithfulness and localisation metrics and the sanity checks (front floor).

Every metric is a pure function over arrays.  Metrics that need forward passes take the model as
a plain callable ``score_fn(inputs (M, C, *S)) -> scores (M,) or (M, n_classes)`` plus
``targets`` (see :mod:`refcam.metrics._common`); :mod:`refcam.onnx` supplies such callables, and
NumPy toy models work just as well.  This package never imports onnx.

Modules:

* :mod:`~refcam.metrics.confidence` — Average Drop, Increase in Confidence, Win %;
* :mod:`~refcam.metrics.perturbation` — deletion/insertion curves, AUC;
* :mod:`~refcam.metrics.localization` — pointing game, energy-based pointing game, CAM boxes, IoU;
* :mod:`~refcam.metrics.imputation` — ROAD with noisy linear imputation;
* :mod:`~refcam.metrics.sanity` — Adebayo et al. sanity checks: Spearman, SSIM, reports;
* :mod:`~refcam.metrics.models` — ``score_fn`` from a model (duck-typed), softmax wrapper.

Conventions are collected in ``docs/metrics.md``.
"""

from __future__ import annotations

from . import confidence, imputation, localization, models, perturbation, sanity
from .confidence import *
from .imputation import *
from .localization import *
from .models import *
from .perturbation import *
from .sanity import *

__all__: list[str] = []
__all__ += confidence.__all__
__all__ += perturbation.__all__
__all__ += localization.__all__
__all__ += imputation.__all__
__all__ += sanity.__all__
__all__ += models.__all__
