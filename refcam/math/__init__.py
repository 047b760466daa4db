"""The math floor of refcam: pure NumPy/SciPy functions, one per formula.

Nothing in this package imports onnx, onnxruntime or any other floor of refcam.
Each submodule defines ``__all__`` (its functions and its public constants: ``UPSAMPLE_MODES``,
``MASK_ORDERS``, ``SIGN_RULES``, ...); this package re-exports all of them.
"""

from __future__ import annotations

from . import blocks, cam_family, eigen, full_gradient, gradients, perturbation, post
from .blocks import *  # noqa: F401,F403
from .cam_family import *  # noqa: F401,F403
from .eigen import *  # noqa: F401,F403
from .full_gradient import *  # noqa: F401,F403
from .gradients import *  # noqa: F401,F403
from .perturbation import *  # noqa: F401,F403
from .post import *  # noqa: F401,F403

__all__: list[str] = [
    name
    for module in (post, gradients, blocks, cam_family, eigen, perturbation, full_gradient)
    for name in module.__all__
]
