"""Models named on a command line: the embedded model, ``toy:NAME``, or a file (internal).

:func:`load_model` turns such a name into a :class:`LoadedModel`: the
:class:`refcam.onnx.Model` plus what is known about it, read from its ``metadata_props`` the same
way for every model (:func:`refcam.zoo.model_classes`, :func:`refcam.zoo.model_preprocessing`),
so that the embedded model passed by path behaves exactly like the same model by name.
:func:`is_model_spec` tells whether a name is a model, by content (:func:`refcam.zoo._images.sniff`),
never by suffix alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ._images import InputFileError, pytorch_hint, sniff

__all__ = ["DEFAULT_NAMES", "InputFileError", "LoadedModel", "is_model_spec", "load_model"]

#: Names of the embedded EfficientNet-Lite0 (:func:`refcam.zoo.efficientnet_lite0`).
DEFAULT_NAMES = ("default", "efficientnet_lite0", "efficientnet-lite0")


def _n_classes(model: Any) -> int | None:
    """Classes of an ``(N, C)`` / ``(N, C, 1, ...)`` output of known size, else ``None``."""
    vi = model.value_info.get(model.output_name)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    if len(dims) < 2 or any(d != 1 for d in dims[2:]):
        return None
    return dims[1]


class LoadedModel:
    """A model with what is known about it.

    Attributes
    ----------
    model : the :class:`refcam.onnx.Model`.
    label : a short human-readable name (file name, ``toy:NAME``, the embedded model's name).
    spec : the name it was loaded by.  path : its file, or ``None`` (built in memory).
    sha256 : SHA-256 of the file's bytes (of the serialised model when there is no file).
    classes : class names in output order from the metadata, or ``None``.
    full_classes : the same with every synonym (``"tabby, tabby cat"`` for ImageNet).
    preprocessing : the checked ``refcam.preprocessing`` record (``{}`` when absent).
    default_norm : the ``--norm`` preset used when neither flags nor metadata say.
    n_classes : classes of the output when its shape says so, else ``None``.
    """

    def __init__(
        self, model: Any, label: str, default_norm: str, *, spec: str, path: Path | None = None
    ) -> None:
        from . import imagenet_classes, model_classes, model_preprocessing

        self.model, self.label, self.default_norm = model, label, default_norm
        self.spec, self.path = spec, path
        self.classes = model_classes(model)
        self.full_classes = self.classes
        if model.metadata.get("refcam.classes", "").lower().startswith("imagenet-1k"):
            self.full_classes = imagenet_classes(full=True)
        self.preprocessing = model_preprocessing(model)
        if path is not None:  # the file's bytes: the in-memory proto may have a lowered IR version
            from .._outputs import file_sha256

            self.sha256 = file_sha256(path)
        else:
            self.sha256 = hashlib.sha256(model.proto.SerializeToString()).hexdigest()
        self.n_classes = _n_classes(model)
        if self.classes is not None and self.n_classes not in (None, len(self.classes)):
            raise ModelError(
                f"model {label!r}: its metadata names {len(self.classes)} classes, but the "
                f"output {model.output_name!r} has {self.n_classes}"
            )


def _sniff(path: Path) -> str:
    try:
        return sniff(path)
    except OSError as exc:
        raise InputFileError(f"cannot read {str(path)!r} ({exc.strerror or exc})") from None


def is_model_spec(spec: str) -> bool:
    """Does ``spec`` name a model: ``toy:NAME``, a default name, a ``.onnx`` path, or a file whose
    content is ONNX?  A PyTorch file raises :class:`InputFileError` (export it to ONNX)."""
    if spec.startswith("toy:") or spec in DEFAULT_NAMES or spec.lower().endswith(".onnx"):
        return True
    path = Path(spec)
    if not path.is_file():
        return False
    kind = _sniff(path)
    if kind == "pytorch":
        raise InputFileError(pytorch_hint(spec))
    return kind == "onnx"


def load_model(spec: str | None, *, layout: str = "NCHW", **model_kwargs) -> LoadedModel:
    """Load ``spec``: ``None`` or one of :data:`DEFAULT_NAMES` (the embedded EfficientNet-Lite0),
    ``toy:NAME`` (:mod:`refcam.onnx.toy_models`) or an ONNX file (any suffix).

    Raises
    ------
    InputFileError
        No such file, a directory, a PyTorch file, an unknown toy name, a layout the embedded
        model does not have.
    ModelError
        The file is no ONNX model, or its metadata is malformed or disagrees with its output.
    """
    from ..onnx import Model

    if spec is None or spec in DEFAULT_NAMES:
        from . import efficientnet_lite0

        if layout.upper() not in ("NCHW", "CHANNELS_FIRST"):
            raise InputFileError(f"--layout: got {layout!r}, the default model is NCHW")
        return LoadedModel(
            Model(efficientnet_lite0()),
            "EfficientNet-Lite0 (ImageNet)",
            "efficientnet",
            spec=spec or DEFAULT_NAMES[0],
            path=efficientnet_lite0(path_only=True),
        )
    if spec.startswith("toy:"):
        from ..onnx import toy_models

        name = spec[4:]
        if name not in toy_models.ZOO:
            raise InputFileError(
                f"model: unknown toy model {name!r}; expected toy:NAME with NAME one of "
                f"{', '.join(sorted(toy_models.ZOO))}"
            )
        return LoadedModel(
            Model(toy_models.toy_model(name), layout=layout), spec, "imagenet", spec=spec
        )
    path = Path(spec)
    if not path.exists():
        raise InputFileError(
            f"model: no such file {spec!r} (expected an .onnx file, 'default' or toy:NAME)"
        )
    if path.is_dir():
        raise InputFileError(f"model: {spec!r} is a directory, expected an .onnx file")
    if _sniff(path) == "pytorch":
        raise InputFileError(pytorch_hint(spec))
    # model_kwargs: Model options of a user file (input_name=, other_inputs= for several inputs)
    return LoadedModel(Model(str(path), layout=layout, **model_kwargs), path.name, "imagenet",
                       spec=spec, path=path)
