"""Input files for a model: images and ``.npy`` arrays turned into model inputs (internal).

This is the image-IO half of :mod:`refcam.zoo` that the command line uses: it sits beside
:mod:`refcam.zoo._preprocess` (which holds the crop / resize / standardisation arithmetic) and
adds what a file on disk needs before that arithmetic: which sample or file a name means, reading
``.npy`` arrays in the model's layout, the per-channel normalisation presets, and the picture shown
next to a map.

Names
-----
* :data:`NORMALIZATIONS` -- ``(mean, std)`` presets on the [0, 255] RGB scale.
* :class:`InputItem` -- one sample: model input ``x`` ``(1, ...)``, display picture, file stem.
* :func:`load_inputs` -- file names / sample names → :class:`InputItem` list.
* :func:`display_picture` -- a channels-first input ``(C, H, W)`` → ``(H, W, 3)`` in [0, 1].
* :func:`open_image` -- decode an image file as upright 8-bit RGB (EXIF orientation applied,
  16-bit samples scaled, not clipped).
* :func:`sniff` -- what a file holds, from its bytes: ``"onnx"``, ``"pytorch"``, ``"npy"``,
  ``"image"`` or ``"unknown"`` (the suffix is not trusted).
* :class:`InputFileError` -- a file that is missing, a directory or of the wrong kind (the command
  line reports it as a usage error, exit code 2).

Decoding conventions
--------------------
* **Orientation.**  A JPEG/TIFF whose EXIF ``Orientation`` tag is not 1 stores its pixels rotated
  or mirrored; the camera meant the picture to be shown transformed.  :func:`open_image` applies
  the transform (``PIL.ImageOps.exif_transpose``), so the model sees the upright picture, as every
  image viewer shows it.
* **16-bit samples.**  Pillow's ``convert("RGB")`` clips 16-bit grey values (modes ``I;16*``,
  ``I``) to 255, which turns almost any 16-bit picture white.  Here a 16-bit value ``v`` in
  [0, 65535] becomes ``round(v / 257)`` in [0, 255] (65535 / 257 = 255 exactly), i.e. the same
  brightness on the 8-bit scale the models were trained on (PNG/PNM ``I`` images are 16-bit
  too).  32-bit integer ``I`` images of other formats (TIFF) and floating-point ``F`` images have
  no known white level and are refused with :class:`~refcam.errors.InvalidArgumentError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError

__all__ = [
    "NORMALIZATIONS",
    "InputFileError",
    "InputItem",
    "display_picture",
    "load_inputs",
    "normalization",
    "open_image",
    "pytorch_hint",
    "sniff",
]

#: First bytes of a legacy ``torch.save`` file: pickle protocol 2 of the magic number
#: 0x1950a86a20f9469cfc6c (``torch.serialization.MAGIC_NUMBER``).
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: Formats whose mode-``I`` images hold 16-bit samples (Pillow opens 16-bit grey PNG/PNM as ``I``).
_SIXTEEN_BIT_FORMATS = ("PNG", "PPM")

#: Per-channel (mean, std) presets on the [0, 255] RGB scale: ``x' = (x - mean) / std``.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # TensorFlow EfficientNet-Lite / "inception style": (x - 127) / 128 (refcam.zoo.PREPROCESSING)
    "efficientnet": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    # torchvision ImageNet: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) on [0, 1]
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    # x / 255 in [0, 1]
    "unit": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
    # raw [0, 255] values
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


class InputFileError(InvalidArgumentError):
    """An input name that is no usable file: missing, a directory, or a file of the wrong kind."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.argument, self.got, self.expected = "input", None, message


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def normalization(
    name: str | None, default: str, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` from a preset name (``None``: ``default``) and optional explicit values.

    Raises :class:`~refcam.errors.InvalidArgumentError` for an unknown preset or a std <= 0.
    """
    if name is not None and name not in NORMALIZATIONS:
        raise InvalidArgumentError("norm", name, "one of " + ", ".join(NORMALIZATIONS))
    m, s = NORMALIZATIONS[name or default]
    if mean is not None:
        m = tuple(float(v) for v in mean)  # type: ignore[assignment]
    if std is not None:
        s = tuple(float(v) for v in std)  # type: ignore[assignment]
        if min(s) <= 0:
            raise InvalidArgumentError("std", tuple(std), "three values > 0")
    return m, s


def pytorch_hint(name: str) -> str:
    """The message for a PyTorch file given where an ONNX model or an image is expected."""
    return (
        f"{name!r} is a PyTorch file (torch.save / TorchScript), which refcam cannot run; "
        f"export it to ONNX (torch.onnx.export(model, example_input, 'model.onnx')) and pass "
        f"the .onnx file"
    )


def sniff(path: str | Path) -> str:
    """What a file holds, from its content: ``"onnx"``, ``"pytorch"``, ``"npy"``, ``"image"``,
    ``"unknown"``.

    * ``npy``: the ``\\x93NUMPY`` magic;
    * ``pytorch``: the legacy ``torch.save`` pickle magic, or a zip archive holding a ``.pkl``
      entry (``torch.save`` since 1.6, TorchScript);
    * ``image``: Pillow identifies it;
    * ``onnx``: parses as an ``onnx.ModelProto`` with graph nodes (protobuf has no magic; an ONNX
      file starts with field 1, ``ir_version``, i.e. the byte ``0x08``, which is checked first).

    Raises ``OSError`` if the file cannot be read.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "pytorch"
    if head.startswith(b"PK\x03\x04"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                if any(n.endswith(".pkl") for n in zf.namelist()):
                    return "pytorch"
        except (zipfile.BadZipFile, OSError):
            pass
        return "unknown"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return "image"
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    if head[:1] == b"\x08":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - any parse failure means: not ONNX
            return "unknown"
        if proto.graph.node:
            return "onnx"
    return "unknown"


def _to_8bit_rgb(im: Any, name: str, fmt: str | None) -> Any:
    from PIL import Image

    if im.mode == "I" and fmt not in _SIXTEEN_BIT_FORMATS:
        # a 32-bit integer image (TIFF ...): no known white level, so no safe 8-bit scale
        raise InvalidArgumentError(
            name,
            f"a 32-bit integer image ({fmt or 'in memory'}, mode I)",
            "8-bit or 16-bit samples (convert the image to 8-bit RGB)",
        )
    if im.mode in _SIXTEEN_BIT_MODES or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise InvalidArgumentError(
                name,
                f"16-bit samples in [{a.min()}, {a.max()}]",
                "values in [0, 65535]",
            )
        # v in [0, 65535] -> round(v / 257) in [0, 255]; (2v + 257) // 514 rounds half up
        g = ((2 * a + 257) // 514).astype(np.uint8)
        return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2), "RGB")
    if im.mode == "F":
        raise InvalidArgumentError(
            name,
            "a floating-point image (mode F)",
            "8-bit or 16-bit samples (its range is unknown)",
        )
    return im.convert("RGB")


def open_image(source: Any, name: str = "image") -> Any:
    """An image file (or PIL image) as an upright 8-bit RGB ``PIL.Image`` (see the module doc).

    Raises
    ------
    InvalidArgumentError
        The file is no readable image, or its samples have no known range (float, 32-bit int).
    """
    import os

    from PIL import Image, ImageOps

    if isinstance(source, Image.Image):
        return _to_8bit_rgb(ImageOps.exif_transpose(source), name, source.format)
    try:
        with Image.open(source) as im:
            im.load()
            return _to_8bit_rgb(ImageOps.exif_transpose(im), name, im.format)
    except InvalidArgumentError:
        raise
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(
            name, os.fspath(source), f"a readable image file ({exc})"
        ) from None


class InputItem:
    """One input sample: native-layout model input ``x`` ``(1, ...)``, its display picture, a stem.

    Attributes
    ----------
    stem : file stem used to name outputs (``-1``, ``-2`` ... appended to repeated stems).
    x : the model input of this sample, batch axis kept, in the model's layout.
    picture : ``(H, W, 3)`` uint8 or floats in [0, 1] for display, or ``None`` (not a 2-D picture).
    source : the file the sample was read from.
    """

    def __init__(self, stem: str, x: Any, picture: Any, source: Path | None = None) -> None:
        self.stem, self.x, self.picture, self.source = stem, x, picture, source


def display_picture(x_cf: Any) -> np.ndarray:
    """(C, *S) channels-first input → (H, W, 3) floats in [0, 1] for display (min-max per sample).

    A constant input (max = min) is shown black: explicit guard, no epsilon.
    """
    x = np.asarray(x_cf, dtype=np.float64)
    pic = (
        x[:3].transpose(1, 2, 0)
        if x.shape[0] >= 3
        else np.repeat(x.mean(axis=0)[..., None], 3, axis=2)
    )
    lo, hi = pic.min(), pic.max()
    return np.zeros_like(pic) if hi == lo else (pic - lo) / (hi - lo)  # constant input: guard


def _resolve_path(spec: str) -> Path:
    from . import sample_image_path, sample_images

    if spec in sample_images() and not Path(spec).exists():
        return sample_image_path(spec)
    path = Path(spec)
    if not path.exists():
        raise InputFileError(
            f"image: no such file {spec!r} (expected an image file, a .npy array or one "
            f"of the samples {', '.join(sample_images())})"
        )
    if path.is_dir():
        raise InputFileError(
            f"image: {spec!r} is a directory, expected an image file or a .npy array"
        )
    return path


def _kind(path: Path, spec: str) -> str:
    """``"npy"`` or ``"image"`` by content (the suffix decides only for broken ``.npy`` files)."""
    try:
        kind = sniff(path)
    except OSError as exc:
        raise InputFileError(f"image: cannot read {spec!r} ({exc.strerror or exc})") from None
    if kind in ("npy", "image"):
        return kind
    if path.suffix.lower() == ".npy":
        return "npy"  # np.load reports what is wrong with it
    if kind == "pytorch":
        raise InputFileError(pytorch_hint(spec))
    if kind == "onnx":
        raise InputFileError(
            f"image: {spec!r} is an ONNX model; give the model first: refcam explain MODEL IMAGE..."
        )
    raise InputFileError(
        f"image: {spec!r} is neither an image file Pillow can read nor a .npy array"
    )


def load_inputs(
    specs: Sequence[str],
    model: Any,
    *,
    size: int | None = None,
    crop_padding: int = 32,
    resample: str = "bicubic",
    mean: Sequence[float] = NORMALIZATIONS["imagenet"][0],
    std: Sequence[float] = NORMALIZATIONS["imagenet"][1],
) -> list[InputItem]:
    """Read image files, bundled sample names or ``.npy`` arrays as inputs of ``model``.

    Image files go through :func:`refcam.zoo.preprocess` (centre crop, resize to ``size``,
    ``(x - mean) / std``) and are transposed to the model's layout; ``.npy`` arrays are taken as
    they are, in the model's layout, with or without the batch axis (one item per sample).

    Parameters
    ----------
    specs : file paths or sample names (:func:`refcam.zoo.sample_images`).
    model : a :class:`refcam.onnx.Model` (input shape, layout, dtype checks).
    size : side of the square input; default the model's fixed spatial size, else 224.
    crop_padding, resample, mean, std : as in :func:`refcam.zoo.preprocess`.

    Raises
    ------
    InputFileError
        A name is no file, a directory, or cannot be read as a ``.npy`` array; the model does not
        take RGB images (pass a ``.npy`` array instead).
    """
    from . import preprocess

    shape = model.input_shape or ()
    channels_last = model.channels_last
    spatial = tuple(shape[1:-1] if channels_last else shape[2:]) if shape else ()
    fixed = [d for d in spatial if isinstance(d, int) and d > 0]
    if size is None:
        size = fixed[0] if fixed else 224
    square_ok = len(set(fixed)) <= 1

    items: list[InputItem] = []
    seen: dict[str, int] = {}

    def stem_of(s: str) -> str:
        k = seen.get(s, 0)
        seen[s] = k + 1
        return s if k == 0 else f"{s}-{k}"

    for spec in specs:
        path = _resolve_path(spec)
        kind = _kind(path, spec)
        if kind == "npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InputFileError(
                    f"image: cannot read {spec!r} as a .npy array ({_one_line(exc)})"
                ) from None
            if shape and arr.ndim == len(shape) - 1:
                arr = arr[None]
            x_all = model.check_inputs(arr, argument=f"image {spec!r}")
            for i in range(x_all.shape[0]):
                x = x_all[i : i + 1]
                cf = model.to_channels_first(x)[0]
                stem = path.stem if x_all.shape[0] == 1 else f"{path.stem}_{i}"
                items.append(
                    InputItem(stem_of(stem), x, display_picture(cf) if cf.ndim == 3 else None, path)
                )
            continue
        n_channels = shape[-1 if channels_last else 1] if len(shape) > 1 else None
        if shape and (
            len(shape) != 4 or (isinstance(n_channels, int) and n_channels not in (0, 3))
        ):
            hint = (
                " (a channels-last model? pass --layout NHWC)"
                if not channels_last and len(shape) == 4 and shape[-1] == 3
                else ""
            )
            raise InputFileError(
                f"image: the model input {model.input_name!r} has shape {shape}, not an RGB image "
                f"batch; pass the input as a .npy array instead of {spec!r}{hint}"
            )
        if not square_ok:
            raise InputFileError(
                f"image: the model input {model.input_name!r} has shape {shape}, not square; image "
                f"files are centre-cropped to a square, so pass the input of {spec!r} as a .npy array"
            )
        x, pics = preprocess(
            str(path),
            size=size,
            crop_padding=crop_padding,
            mean=mean,
            std=std,
            resample=resample,
            return_images=True,
        )
        if channels_last:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        x = model.check_inputs(x, argument=f"image {spec!r}")
        items.append(InputItem(stem_of(path.stem), x, pics[0], path))
    return items
