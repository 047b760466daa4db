"""refcam — reference implementation of class activation mapping (CAM) and gradient saliency.

The math floor (:mod:`refcam.math`) is re-exported here; see ``docs/design.md`` for the layout.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: F401
    DTypeError,
    InvalidArgumentError,
    LayerNotFoundError,
    AmbiguousLayerError,
    ModelError,
    NonFiniteError,
    RefcamError,
    ShapeError,
    TargetError,
    UnsupportedOpError,
)
from .math import *
from .math import __all__ as _math_all

_LAZY = {
    "explain": ("explanation", "explain"),
    "Explanation": ("explanation", "Explanation"),
    "explain_dataset": ("dataset", "explain_dataset"),
    "class_model_visualization": ("_gradient", "class_model_visualization"),
    "methods": ("methods", None),
    "onnx": ("onnx", None),
    # front: the embedded model (onnx) and the pictures (matplotlib) load on first use
    "zoo": ("zoo", None),
    "viz": ("viz", None),
    "cli": ("cli", None),
}


def __getattr__(name: str):
    """Lazy front: ``refcam.explain`` and friends import onnx/onnxruntime only when first used."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(f".{module}", __name__)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'refcam' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
