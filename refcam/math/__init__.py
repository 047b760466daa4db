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

from .blocks import *  # noqa: E402,F401,F403
from .blocks import __all__ as _blocks_all  # noqa: E402

__all__ += _blocks_all

from .cam_family import *  # noqa: E402,F401,F403
from .cam_family import __all__ as _cam_family_all  # noqa: E402

__all__ += _cam_family_all

from .eigen import *  # noqa: E402,F401,F403
from .eigen import __all__ as _eigen_all  # noqa: E402

__all__ += _eigen_all

from .perturbation import *  # noqa: E402,F401,F403
from .perturbation import __all__ as _perturbation_all  # noqa: E402

__all__ += _perturbation_all

from .full_gradient import *  # noqa: E402,F401,F403
from .full_gradient import __all__ as _full_gradient_all  # noqa: E402

__all__ += _full_gradient_all

from .forward_maps import *  # noqa: E402,F401,F403
from .forward_maps import __all__ as _forward_maps_all  # noqa: E402

__all__ += _forward_maps_all

from .projections import *  # noqa: E402,F401,F403
from .projections import __all__ as _projections_all  # noqa: E402

__all__ += _projections_all

from .factorization import *  # noqa: E402,F401,F403
from .factorization import __all__ as _factorization_all  # noqa: E402

__all__ += _factorization_all
