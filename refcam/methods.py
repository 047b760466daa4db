"""The method registry: every CAM method described once, as data.

A :class:`Method` names what it *needs* (arrays such as ``"activations"``, ``"class_weights"``,
``"masked_scores"``), the math-floor function that turns those arrays into a map, the paper and
the equation, and its default options.  A :class:`Need` names how to obtain one array from a
:class:`Context` (model + inputs + layer + targets).  :func:`refcam.explain` resolves the needs of
a method through :data:`NEEDS` and calls ``Method.compute``.

Both registries are open: the gradient floor registers ``"gradients"``, ``"input_gradients"``,
``"guided_input_gradients"`` providers with :func:`register_need` and its methods with
:func:`register_method`.  Array conventions of the needs (``T`` = targets per sample):

=========================  ==================  ==========================================
need                       shape               meaning
=========================  ==================  ==========================================
``activations``            ``(N, K, *S)``      layer activations ``A^k`` (channels first)
``target_scores``          ``(N, T)``          ``y^c`` of the unmodified inputs
``class_weights``          ``(N, T, K)``       row ``w^c`` of the GAP → linear head
``masked_scores``          ``(N, T, K)``       ``f^c(X ∘ H^k)`` (Score-CAM family)
``baseline_scores``        ``(N, T)``          ``f^c(X_b)`` of the Score-CAM baseline input
``ablated_scores``         ``(N, T, K)``       ``y^c_k``, channel ``k`` ablated (head model)
``ablation_base_scores``   ``(N, T)``          ``y^c`` from the head on unablated activations
``gradients``              ``(N, T, K, *S)``   ``∂y^c/∂A^k`` (registered by the gradient floor)
``input_gradients``        ``(N, T, C, *S_in)``  ``∂y^c/∂X`` (gradient floor)
``guided_input_gradients`` ``(N, T, C, *S_in)``  guided-backprop ``∂y^c/∂X`` (gradient floor)
=========================  ==================  ==========================================

>>> sorted(METHODS)
['ablationcam', 'cam', 'eigencam', 'iscam', 'scorecam', 'sscam']
>>> METHODS["cam"].needs
('activations', 'class_weights')
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _forward as F
from . import math as M
from .errors import InvalidArgumentError

__all__ = [
    "METHODS",
    "NEEDS",
    "Context",
    "Method",
    "Need",
    "get_method",
    "register_method",
    "register_need",
]


@dataclass
class Context:
    """Everything a need provider may use.  Providers cache their results in ``arrays``.

    Attributes
    ----------
    model : :class:`refcam.onnx.Model`.
    inputs : validated inputs in the model's native layout ``(N, *input_shape[1:])``.
    layer : the :class:`refcam.onnx.LayerInfo` explained.
    outputs : the model's output tensor (``model.output_name``) on ``inputs``.
    targets : resolved :class:`refcam.onnx.Targets`, or ``None`` for class-agnostic methods.
    options : the method's options (defaults merged with the caller's).
    batch_size, memory_budget, progress : forwarded to every model run.
    arrays : computed needs and intermediate arrays (returned in ``Explanation.arrays``).
    """

    model: Any
    inputs: np.ndarray
    layer: Any
    outputs: np.ndarray
    targets: Any
    options: dict
    batch_size: int | None = None
    memory_budget: int | None = None
    progress: bool | None = None
    arrays: dict = field(default_factory=dict)

    def need(self, name: str) -> np.ndarray:
        """The array ``name``, computed once by its registered provider."""
        if name not in self.arrays:
            if name not in NEEDS:
                raise InvalidArgumentError(
                    "need", name, f"a registered need ({', '.join(sorted(NEEDS))})"
                )
            self.arrays[name] = NEEDS[name].provider(self)
        return self.arrays[name]


@dataclass(frozen=True)
class Need:
    """How to obtain one array: ``provider(context) -> ndarray`` (shape convention in the table)."""

    name: str
    provider: Callable[[Context], np.ndarray]
    description: str


@dataclass(frozen=True)
class Method:
    """One CAM method, described as data.

    Attributes
    ----------
    name : registry key (lower case).
    needs : names of the arrays the method consumes (see :data:`NEEDS`).
    math : the math-floor function of the method (documentation and provenance).
    compute : ``compute(context, t) -> (N, *S)`` map for target column ``t``, calling ``math``.
    paper : authors, year, title.
    equation : the equation (number) in the paper the map implements.
    defaults : default options (``relu`` is the paper's final-map ReLU).
    targeted : ``False`` for class-agnostic methods (Eigen-CAM): no targets are resolved.
    """

    name: str
    needs: tuple[str, ...]
    math: Callable
    compute: Callable[[Context, int], np.ndarray]
    paper: str
    equation: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    targeted: bool = True


NEEDS: dict[str, Need] = {}
METHODS: dict[str, Method] = {}


def register_need(need: Need, *, replace: bool = False) -> Need:
    """Add a need provider (``replace=True`` to override an existing one)."""
    if need.name in NEEDS and not replace:
        raise InvalidArgumentError(
            "need", need.name, "a name not registered yet (pass replace=True)"
        )
    NEEDS[need.name] = need
    return need


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add a method (``replace=True`` to override an existing one)."""
    key = method.name.lower()
    if key in METHODS and not replace:
        raise InvalidArgumentError(
            "method", method.name, "a name not registered yet (pass replace=True)"
        )
    METHODS[key] = method
    return method


def get_method(name: Any) -> Method:
    """Look a method up by name (case-insensitive, ``-``/``_`` ignored); suggests close names."""
    if isinstance(name, Method):
        return name
    key = name.lower().replace("-", "").replace("_", "") if isinstance(name, str) else None
    for k, m in METHODS.items():
        if k.replace("_", "") == key:
            return m
    close = difflib.get_close_matches(str(name).lower(), list(METHODS), n=3, cutoff=0.5)
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise InvalidArgumentError("method", name, f"one of {', '.join(sorted(METHODS))}{hint}")


# ---------------------------------------------------------------------------- built-in needs
register_need(
    Need("activations", F.provide_activations, "layer activations (N, K, *S), channels first")
)
register_need(Need("target_scores", F.provide_target_scores, "y^c of the unmodified inputs (N, T)"))
register_need(
    Need("class_weights", F.provide_class_weights, "GAP→linear class weights w^c (N, T, K)")
)
register_need(
    Need("masked_scores", F.provide_masked_scores, "f^c(X ∘ H^k) of the masked inputs (N, T, K)")
)
register_need(
    Need("baseline_scores", F.provide_baseline_scores, "f^c(X_b) of the Score-CAM baseline (N, T)")
)
register_need(
    Need("ablated_scores", F.provide_ablated_scores, "y^c_k with channel k ablated (N, T, K)")
)
register_need(
    Need(
        "ablation_base_scores",
        F.provide_ablation_base_scores,
        "y^c from the head model on the unablated activations (N, T)",
    )
)


# ---------------------------------------------------------------------------- built-in methods
def _cam(ctx: Context, t: int) -> np.ndarray:
    return M.cam(ctx.need("activations"), ctx.need("class_weights")[:, t], relu=ctx.options["relu"])


def _score_family(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    base = ctx.need("baseline_scores")[:, t] if o["baseline"] is not None else None
    return M.scorecam(
        ctx.need("activations"),
        ctx.need("masked_scores")[:, t],
        baseline_score=base,
        softmax=o["softmax"],
        relu=o["relu"],
    )


def _ablationcam(ctx: Context, t: int) -> np.ndarray:
    return M.ablationcam(
        ctx.need("activations"),
        ctx.need("ablated_scores")[:, t],
        ctx.need("ablation_base_scores")[:, t],
        relu=ctx.options["relu"],
    )


def _eigencam(ctx: Context, t: int) -> np.ndarray:
    o = ctx.options
    return M.eigencam(ctx.need("activations"), center=o["center"], sign=o["sign"], relu=o["relu"])


_MASKS = dict(
    upsample_mode="linear",
    mask_order="upsample-then-normalize",
    mask_eps=0.0,
    baseline=None,
    score="probability",
    softmax=False,
    relu=True,
    variant="plain",
)

register_method(
    Method(
        "cam",
        ("activations", "class_weights"),
        M.cam,
        _cam,
        "Zhou, Khosla, Lapedriza, Oliva & Torralba, 2016, Learning Deep Features for Discriminative Localization",
        "Sec. 2, M_c(x, y) = Σ_k w^c_k f_k(x, y)",
        dict(relu=False),
    )
)
register_method(
    Method(
        "scorecam",
        ("activations", "masked_scores"),
        M.scorecam,
        _score_family,
        "Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu, 2020, Score-CAM: Score-Weighted Visual "
        "Explanations for Convolutional Neural Networks",
        "Definitions 1-2: α^c_k = f^c(X ∘ H^k) − f^c(X_b), L = ReLU(Σ_k α^c_k A^k)",
        dict(_MASKS),
    )
)
register_method(
    Method(
        "sscam",
        ("activations", "masked_scores"),
        M.scorecam,
        _score_family,
        "Wang, Naidu, Michael & Kundu, 2020, SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization",
        "α^c_k = softmax_k((1/n) Σ_i f^c(X ∘ (H^k + δ_i))), δ_i ~ N(0, σ²)",
        dict(_MASKS, score="logit", softmax=True, n_samples=10, sigma=2.0, seed=0, variant="noise"),
    )
)
register_method(
    Method(
        "iscam",
        ("activations", "masked_scores"),
        M.scorecam,
        _score_family,
        "Naidu, Ghosh, Maurya, Nayak K & Kundu, 2020, IS-CAM: Integrated Score-CAM for axiomatic-based explanations",
        "α^c_k = softmax_k((1/n) Σ_i f^c(X ∘ γ_i H^k)), γ_i = Σ_{j≤i} j/n (Algorithm 1, accumulated mask)",
        dict(
            _MASKS,
            score="logit",
            softmax=True,
            n_samples=10,
            variant="integrate",
            scales="accumulated",
        ),
    )
)
register_method(
    Method(
        "ablationcam",
        ("activations", "ablated_scores", "ablation_base_scores"),
        M.ablationcam,
        _ablationcam,
        "Ramaswamy & Desai, 2020, Ablation-CAM: Visual Explanations for Deep Convolutional Network via "
        "Gradient-free Localization",
        "w^c_k = (y^c − y^c_k) / y^c, L = ReLU(Σ_k w^c_k A^k)",
        dict(relu=True, ablation_value=0.0),
    )
)
register_method(
    Method(
        "eigencam",
        ("activations",),
        M.eigencam,
        _eigencam,
        "Muhammad & Yeasin, 2020, Eigen-CAM: Class Activation Map using Principal Components",
        "L = O v_1 (projection on the first right singular vector)",
        dict(relu=False, center=False, sign="sum"),
        targeted=False,
    )
)
