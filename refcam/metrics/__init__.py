"""Faithfulness and localisation metrics and the sanity checks (front floor).

Every metric is a pure function over arrays.  Metrics that need forward passes take the model as a
plain callable ``score_fn(inputs (M, C, *S)) -> scores (M,) or (M, n_classes)`` plus ``targets``
(see :mod:`refcam.metrics._common`); :mod:`refcam.onnx` supplies such callables, and NumPy toy models
work just as well.  This package never imports onnx.

Modules: :mod:`~refcam.metrics.confidence` (Average Drop, Increase in Confidence, Win %),
:mod:`~refcam.metrics.perturbation` (deletion/insertion curves, AUC), :mod:`~refcam.metrics.localization`
(pointing game, energy-based pointing game, CAM boxes, IoU), :mod:`~refcam.metrics.imputation` (ROAD, noisy linear imputation),
:mod:`~refcam.metrics.sanity` (Adebayo et al. sanity checks: Spearman, SSIM, reports).
"""

from __future__ import annotations

from . import confidence, perturbation
from .confidence import *  # noqa: F401,F403
from .perturbation import *  # noqa: F401,F403

__all__: list[str] = []
__all__ += confidence.__all__
__all__ += perturbation.__all__

from . import localization  # noqa: E402
from .localization import *  # noqa: E402,F401,F403

__all__ += localization.__all__

from . import sanity  # noqa: E402
from .sanity import *  # noqa: E402,F401,F403

__all__ += sanity.__all__

from . import imputation  # noqa: E402
from .imputation import *  # noqa: E402,F401,F403

__all__ += imputation.__all__
