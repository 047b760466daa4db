"""Class names and preprocessing read from a model's ``metadata_props`` (internal; re-exported).

Any ONNX model may carry what its input needs and what its outputs mean.  refcam writes, and reads
first, two keys:

* ``refcam.classes`` -- a JSON list of class names in output order, or the reference
  ``"imagenet-1k ..."`` (the 1000 names of :func:`refcam.zoo.imagenet_classes`), which the
  embedded model carries;
* ``refcam.preprocessing`` -- a JSON object with any of ``size``, ``crop_padding``, ``mean``,
  ``std`` (3 values each, [0, 255] scale), ``resample`` (see :func:`refcam.zoo.preprocess`).

Other exporters' keys for class names are read too: ``classes``, ``labels``, ``class_names``
(a JSON list, or one name per line / comma-separated) and ``names`` (Ultralytics: a Python dict
literal ``{0: 'person', ...}``).  A key that is present but malformed is a
:class:`~refcam.errors.ModelError` naming the key: metadata is never silently ignored.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ModelError, TargetError

__all__ = ["CLASS_KEYS", "class_index", "model_classes", "model_preprocessing"]

#: Metadata keys holding class names, in the order they are tried.
CLASS_KEYS = ("refcam.classes", "classes", "labels", "class_names", "names")
_PRE_KEYS = {"size", "crop_padding", "mean", "std", "resample"}


def _metadata(model: Any) -> Mapping[str, str]:
    if isinstance(model, Mapping):
        return model
    meta = getattr(model, "metadata", None)
    if isinstance(meta, Mapping):
        return meta
    props = getattr(model, "metadata_props", None)  # onnx.ModelProto
    if props is not None:
        return {p.key: p.value for p in props}
    raise ModelError(f"metadata: got {type(model).__name__}, expected a model or a dict")


def _names(key: str, value: str) -> list[str]:
    text = value.strip()
    if key == "refcam.classes" and text.lower().startswith("imagenet-1k"):
        from . import imagenet_classes

        return imagenet_classes()
    parsed: Any
    try:
        parsed = json.loads(text)
    except ValueError:
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            sep = "\n" if "\n" in text else ","
            parsed = [t.strip() for t in text.split(sep) if t.strip()]
    if isinstance(parsed, dict):
        try:
            idx = sorted(int(k) for k in parsed)
        except (TypeError, ValueError):
            idx = []
        if idx != list(range(len(parsed))):
            raise ModelError(
                f"metadata {key!r}: a dict of class names needs the keys 0..{len(parsed) - 1}"
            )
        parsed = [parsed[k] if k in parsed else parsed[str(k)] for k in idx]
    if (
        not isinstance(parsed, list)
        or not parsed
        or not all(isinstance(n, (str, int)) for n in parsed)
    ):
        raise ModelError(f"metadata {key!r}: expected a list of class names, got {text[:60]!r}")
    return [str(n) for n in parsed]


def model_classes(model: Any) -> list[str] | None:
    """Class names of a model from its ``metadata_props`` (see the module doc), or ``None``.

    Parameters
    ----------
    model : a :class:`refcam.onnx.Model`, an ``onnx.ModelProto`` or a ``{key: value}`` dict.

    Examples
    --------
    >>> model_classes({"labels": '["cat", "dog"]'})
    ['cat', 'dog']
    >>> model_classes({"names": "{0: 'person', 1: 'bicycle'}"})
    ['person', 'bicycle']
    >>> model_classes({"refcam.classes": "imagenet-1k"})[281]
    'tabby'
    >>> model_classes({}) is None
    True
    """
    meta = _metadata(model)
    for key in CLASS_KEYS:
        if key in meta:
            return _names(key, meta[key])
    return None


def model_preprocessing(model: Any) -> dict:
    """The ``refcam.preprocessing`` record of a model, checked (``{}`` when absent).

    Returns a dict with the keys present among ``size`` (int > 0), ``crop_padding`` (int >= 0),
    ``mean``/``std`` (3 floats, std > 0) and ``resample``.

    Examples
    --------
    >>> model_preprocessing({"refcam.preprocessing": '{"size": 224, "mean": [127, 127, 127]}'})
    {'size': 224, 'mean': (127.0, 127.0, 127.0)}
    """
    meta = _metadata(model)
    if "refcam.preprocessing" not in meta:
        return {}
    raw = meta["refcam.preprocessing"]
    try:
        rec = json.loads(raw)
    except ValueError:
        rec = None
    if not isinstance(rec, dict):
        raise ModelError(
            f"metadata 'refcam.preprocessing': expected a JSON object, got {raw[:60]!r}"
        )
    out: dict = {}

    def bad(k: str, expected: str):
        return ModelError(f"metadata 'refcam.preprocessing': {k} = {rec[k]!r}, expected {expected}")

    for k in ("size", "crop_padding"):
        if k in rec:
            v = rec[k]
            lo = 1 if k == "size" else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise bad(k, f"an integer >= {lo}")
            out[k] = v
    for k in ("mean", "std"):
        if k in rec:
            v = rec[k]
            if (
                not isinstance(v, list)
                or len(v) != 3
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in v)
                or (k == "std" and min(v) <= 0)
            ):
                raise bad(k, "three numbers" + (" > 0" if k == "std" else ""))
            out[k] = tuple(float(t) for t in v)
    if "resample" in rec:
        if rec["resample"] not in ("bicubic", "bilinear", "nearest", "lanczos"):
            raise bad("resample", "bicubic, bilinear, nearest or lanczos")
        out["resample"] = rec["resample"]
    return out


def _norm_name(text: str) -> str:
    return " ".join(str(text).lower().replace("_", " ").split())


def class_index(name: str, classes: Sequence[str] | None = None) -> int:
    """The index of the class called ``name``.

    A class matches when ``name`` equals one of its comma-separated synonyms, ignoring case,
    ``_`` vs space and repeated spaces (``"Tabby_Cat"`` is ``"tabby, tabby cat"``).  Nothing is
    guessed: a name shared by several classes, or a name no class has, raises, and the message
    lists the candidates -- the classes having ``name`` as a whole word of a synonym first, then as
    a substring (``"cat"`` lists tabby cat, tiger cat, Persian cat, ...).

    Parameters
    ----------
    name : a class name.
    classes : class names in output order, synonyms comma-separated; default the 1000 ImageNet
        classes with all synonyms (``imagenet_classes(full=True)``).

    Raises
    ------
    TargetError
        The name is ambiguous or unknown (the message lists the candidates).

    Examples
    --------
    >>> class_index("tabby cat"), class_index("Espresso")
    (281, 967)
    >>> class_index("crane")
    Traceback (most recent call last):
    ...
    refcam.errors.TargetError: target: 'crane' is the name of 2 classes: crane (134), crane (517); pass the class index instead
    """
    import difflib
    import re

    if classes is None:
        from . import imagenet_classes

        classes = imagenet_classes(full=True)
    key = _norm_name(name)
    syn = [[_norm_name(s) for s in str(c).split(",")] for c in classes]

    def show(ids: Sequence[int]) -> str:
        return ", ".join(f"{classes[i]} ({i})" for i in ids)

    def fail(sentence: str) -> TargetError:
        return TargetError(f"target: {sentence}")

    exact = [i for i, names in enumerate(syn) if key in names]
    if len(exact) == 1:
        return exact[0]
    if exact:
        raise fail(
            f"{name!r} is the name of {len(exact)} classes: {show(exact)}; pass the class index "
            f"instead"
        )
    word = re.compile(rf"(?<!\w){re.escape(key)}(?!\w)")
    by_word = [i for i, names in enumerate(syn) if any(word.search(n) for n in names)]
    by_sub = [i for i, names in enumerate(syn) if i not in by_word and any(key in n for n in names)]
    hits = by_word + by_sub
    if key and hits:
        more = f" and {len(hits) - 12} more" if len(hits) > 12 else ""
        raise fail(
            f"no class is named {name!r}; classes containing it: {show(hits[:12])}{more}; "
            f"pass one of these names or its index"
        )
    close = difflib.get_close_matches(key, [n for names in syn for n in names], n=3, cutoff=0.6)
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise fail(f"unknown class name {name!r}{hint}")
