"""The registry every method and every need is declared in (a leaf: imports errors and numpy only).

A **method** is declared once, with :func:`method` (decorator) or ``Method(...)`` (keyword-only):
its needs, its math-floor function, paper and equation, and its typed options
(:class:`Option`: name, default, check).  A **need** is one array a method consumes
(``"activations"``, ``"gradients"``, ...); its provider registers itself with :func:`need` and
declares the option names it reads, which every method needing it must declare.

Everything else reads this registry: :func:`refcam.explain` (option validation = unknown-key check
plus each option's own check), ``refcam methods``, :mod:`refcam.presets`, the CLI.

>>> from refcam.registry import Option, one_of
>>> Option("sign", "sum", one_of("sum", "none")).validate("max")
Traceback (most recent call last):
...
refcam.errors.InvalidArgumentError: sign: got 'max', expected one of 'sum', 'none'
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from . import _validate as V
from .errors import InvalidArgumentError

__all__ = [
    "METHODS",
    "NEEDS",
    "Context",
    "Method",
    "Need",
    "Option",
    "boolean",
    "either",
    "finite_real",
    "get_method",
    "method",
    "need",
    "nonnegative",
    "nonnegative_int",
    "one_of",
    "positive_int",
    "register_method",
    "register_need",
    "text",
    "unchecked",
]

Check = Callable[[Any, str], Any]


# ------------------------------------------------------------------------------ option checks
def one_of(*choices: Any) -> Check:
    """A check accepting exactly ``choices`` (strings, or ``None``); e.g. ``one_of(*UPSAMPLE_MODES)``."""

    def check(value: Any, name: str) -> Any:
        if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
            raise InvalidArgumentError(name, value, "one of " + ", ".join(repr(c) for c in choices))
        return value

    check.choices = choices  # type: ignore[attr-defined]
    return check


def boolean(value: Any, name: str) -> bool:
    """``True`` or ``False`` (NumPy bools too), nothing else."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(name, value, "True or False")
    return bool(value)


def positive_int(value: Any, name: str) -> int:
    """An integer >= 1 (bools refused)."""
    return V.positive_int(value, name)


def nonnegative_int(value: Any, name: str) -> int:
    """An integer >= 0 (bools refused), e.g. a random seed."""
    return V.nonnegative_int(value, name)


def unchecked(value: Any, name: str) -> Any:
    """Any value: the math function the option is passed to checks it (e.g. an array baseline)."""
    return value


def nonnegative(value: Any, name: str) -> float:
    """A finite real number >= 0."""
    return V.nonnegative_float(value, name)


def finite_real(value: Any, name: str) -> float:
    """A finite real number (bools refused)."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not np.isfinite(value)
    ):
        raise InvalidArgumentError(name, value, "a finite real number")
    return value


def text(value: Any, name: str) -> Any:
    """A string, or ``None`` (unset)."""
    if value is not None and not isinstance(value, str):
        raise InvalidArgumentError(name, value, "a string")
    return value


def either(*checks: Check, expected: str) -> Check:
    """A check passing when one of ``checks`` passes (``expected`` describes the union)."""

    def check(value: Any, name: str) -> Any:
        for c in checks:
            try:
                return c(value, name)
            except InvalidArgumentError:
                pass
        raise InvalidArgumentError(name, value, expected)

    return check


@dataclass(frozen=True)
class Option:
    """One typed option of a method: ``name`` (the same name on every floor: math argument,
    option, preset field, CLI ``-O`` key), ``default``, ``check(value, name) -> value`` (raises
    :class:`~refcam.errors.InvalidArgumentError`), and a one-line ``doc``."""

    name: str
    default: Any
    check: Check
    doc: str = ""

    def validate(self, value: Any) -> Any:
        """``check(value)``, i.e. the validated value or an ``InvalidArgumentError`` naming the option."""
        return self.check(value, self.name)

    def but(self, default: Any) -> "Option":
        """The same option with another default (a method whose paper chooses differently)."""
        return dataclasses.replace(self, default=default)

    @property
    def choices(self) -> tuple | None:
        """The accepted values of a :func:`one_of` option, else ``None``."""
        return getattr(self.check, "choices", None)


# ------------------------------------------------------------------------------ context and needs
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
    options : the method's options, validated, every declared option present (defaults merged
        with the caller's): providers read ``options[name]`` without fallbacks.
    batch_size, memory_budget, progress : forwarded to every model run.
    arrays : computed needs and intermediate arrays (returned in ``Explanation.arrays``).
    method : the name of the method explained (for messages).
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
    method: str = ""

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
    """How to obtain one array: ``provider(context) -> ndarray`` (shape convention in
    :mod:`refcam.methods`), and the option names the provider reads (``options``)."""

    name: str
    provider: Callable[[Context], Any]
    description: str
    options: tuple[str, ...] = ()


NEEDS: dict[str, Need] = {}


def register_need(item: Need, *, replace: bool = False) -> Need:
    """Add a need provider (``replace=True`` to override an existing one)."""
    if item.name in NEEDS and not replace:
        raise InvalidArgumentError(
            "need", item.name, "a name not registered yet (pass replace=True)"
        )
    NEEDS[item.name] = item
    return item


def need(
    name: str, description: str, *, options: tuple[str, ...] = (), replace: bool = False
) -> Callable[[Callable[[Context], Any]], Callable[[Context], Any]]:
    """Decorator registering ``provider(context)`` as the provider of need ``name``.

    >>> @need("ones_like_activations", "ones (N, K, *S)")        # doctest: +SKIP
    ... def provide(ctx):
    ...     return np.ones_like(ctx.need("activations"))
    """

    def register(provider: Callable[[Context], Any]) -> Callable[[Context], Any]:
        register_need(Need(name, provider, description, tuple(options)), replace=replace)
        return provider

    return register


# ------------------------------------------------------------------------------ methods
@dataclass(frozen=True, kw_only=True)
class Method:
    """One method, declared once (keyword-only construction, or the :func:`method` decorator).

    Attributes
    ----------
    name : registry key (lower case).
    needs : names of the arrays the method consumes (see :data:`NEEDS`).
    math : the math-floor function of the method (documentation and provenance).
    compute : ``compute(context, t) -> (N, *S)`` map for target column ``t``, calling ``math``.
    paper : authors, year, title.
    equation : the equation (number) in the paper the map implements.
    options : the typed options (:class:`Option`); ``relu`` is the paper's final-map ReLU.
    targeted : ``False`` for class-agnostic methods (Eigen-CAM): no targets are resolved.
    layered : ``False`` for methods that explain the input only (saliency, SmoothGrad, ...): no
        layer is resolved (``layer`` must be ``None``).
    weights : ``weights(context, t) -> (N, K)`` or ``(N, K, *S)``: the weights ``w^c`` of a
        method whose raw map is ``Σ_k w^c_k A^k`` (before its ReLU).  Required by the
        ``eigen_smooth`` option, which projects ``w^c ⊙ A`` instead of summing it
        (:func:`refcam.explain`).
    """

    name: str
    needs: tuple[str, ...]
    math: Callable
    compute: Callable[[Context, int], np.ndarray]
    paper: str
    equation: str
    options: tuple[Option, ...] = ()
    targeted: bool = True
    layered: bool = True
    weights: Callable[[Context, int], np.ndarray] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", tuple(self.needs))
        object.__setattr__(self, "options", tuple(self.options))
        names = [o.name for o in self.options]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InvalidArgumentError("options", dup, f"one declaration per option of {self.name!r}")
        if "eigen_smooth" in names and self.weights is None:
            raise InvalidArgumentError("options", self.name,
                                       "a weights function for the eigen_smooth option (Method.weights)")

    @property
    def defaults(self) -> Mapping[str, Any]:
        """``{option name: default}`` (read-only)."""
        return MappingProxyType({o.name: o.default for o in self.options})

    def check_needs(self) -> None:
        """Every option a registered need of the method reads is declared by the method."""
        declared = set(self.defaults)
        for n in self.needs:
            missing = [o for o in (NEEDS[n].options if n in NEEDS else ()) if o not in declared]
            if missing:
                raise InvalidArgumentError(
                    "options", self.name,
                    f"a declaration of {', '.join(missing)} (read by need {n!r})",
                )

    def resolve(self, given: Mapping[str, Any]) -> dict:
        """The options of one call: unknown names refused, each value checked by its option,
        defaults filled in.  Raises :class:`~refcam.errors.InvalidArgumentError`."""
        declared = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise InvalidArgumentError(
                unknown[0],
                given[unknown[0]],
                f"no such option for {self.name!r}; options: {', '.join(sorted(declared)) or 'none'}",
            )
        return {
            n: (o.validate(given[n]) if n in given else o.default) for n, o in declared.items()
        }


METHODS: dict[str, Method] = {}


def register_method(item: Method, *, replace: bool = False) -> Method:
    """Add a method (``replace=True`` to override an existing one).

    Every option a registered need of the method reads must be declared by the method."""
    key = item.name.lower()
    if key in METHODS and not replace:
        raise InvalidArgumentError(
            "method", item.name, "a name not registered yet (pass replace=True)"
        )
    item.check_needs()
    METHODS[key] = item
    return item


def method(
    name: str,
    *,
    needs: tuple[str, ...],
    math: Callable,
    paper: str,
    equation: str,
    options: tuple[Option, ...] = (),
    targeted: bool = True,
    layered: bool = True,
    weights: Callable[[Context, int], np.ndarray] | None = None,
    replace: bool = False,
) -> Callable[[Callable[[Context, int], np.ndarray]], Callable[[Context, int], np.ndarray]]:
    """Decorator declaring ``compute(context, t)`` as the method ``name`` (see :class:`Method`)."""

    def register(compute: Callable[[Context, int], np.ndarray]) -> Callable:
        register_method(
            Method(name=name, needs=needs, math=math, compute=compute, paper=paper,
                   equation=equation, options=options, targeted=targeted, layered=layered,
                   weights=weights),
            replace=replace,
        )
        return compute

    return register


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
