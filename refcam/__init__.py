"""refcam — reference implementation of class activation mapping (CAM) and gradient saliency.

The math floor (:mod:`refcam.math`) is re-exported here; see ``docs/design.md`` for the layout.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: F401
    DTypeError,
    InvalidArgumentError,
    LayerNotFoundError,
    ModelError,
    NonFiniteError,
    RefcamError,
    ShapeError,
    TargetError,
    UnsupportedOpError,
)

from .math import *  # noqa: E402,F401,F403  (the math floor is the top-level API)
from .math import __all__ as _math_all  # noqa: E402
