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
* :class:`InputFileError` -- a file that is missing, a directory or of the wrong kind (the command
  line reports it as a usage error, exit code 2).
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
]

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
        if path.suffix.lower() == ".npy":
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
                    InputItem(
                        stem_of(stem), x, display_picture(cf) if cf.ndim == 3 else None, path
                    )
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
