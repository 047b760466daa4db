"""The math floor of refcam: pure NumPy/SciPy functions, one per formula.

Nothing in this package imports onnx, onnxruntime or any other floor of refcam.
Each submodule defines ``__all__`` (its functions and its public constants: ``UPSAMPLE_MODES``,
``MASK_ORDERS``, ``SIGN_RULES``, ...); this package re-exports all of them.  A new submodule is
one name in the import line and in :data:`_MODULES`.
"""

from __future__ import annotations

from . import (
    attention,
    blocks,
    cam_family,
    eigen,
    factorization,
    forward_maps,
    full_gradient,
    gradient_variants,
    gradients,
    perturbation,
    post,
    projections,
    scale_and_slide,
)
from .attention import *  # noqa: F401,F403
from .blocks import *  # noqa: F401,F403
from .cam_family import *  # noqa: F401,F403
from .eigen import *  # noqa: F401,F403
from .factorization import *  # noqa: F401,F403
from .forward_maps import *  # noqa: F401,F403
from .full_gradient import *  # noqa: F401,F403
from .gradient_variants import *  # noqa: F401,F403
from .gradients import *  # noqa: F401,F403
from .perturbation import *  # noqa: F401,F403
from .post import *  # noqa: F401,F403
from .projections import *  # noqa: F401,F403
from .scale_and_slide import *  # noqa: F401,F403

_MODULES = (post, gradients, blocks, cam_family, eigen, perturbation, full_gradient, forward_maps,
            projections, factorization, gradient_variants, attention, scale_and_slide)
__all__: list[str] = [name for module in _MODULES for name in module.__all__]
