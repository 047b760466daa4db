"""The math floor of refcam: pure NumPy/SciPy functions, one per formula.

Nothing in this package imports onnx, onnxruntime or any other floor of refcam.
Each submodule defines ``__all__``; this package re-exports all of them.
"""

from __future__ import annotations

__all__: list[str] = []

# Each submodule adds one block below (keep one import line per submodule):
# from .blocks import *  ; __all__ += blocks.__all__

from .post import *  # noqa: E402,F401,F403
from .post import __all__ as _post_all  # noqa: E402

__all__ += _post_all

from .gradients import *  # noqa: E402,F401,F403
from .gradients import __all__ as _gradients_all  # noqa: E402

__all__ += _gradients_all
