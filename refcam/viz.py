"""Pictures of maps: overlays, side-by-side method grids, saliency images, PNG files.

Everything is drawn headless: figures are :class:`matplotlib.figure.Figure` objects on the
Agg canvas, created without :mod:`matplotlib.pyplot` (no global figure registry, nothing is
ever shown); :func:`save_png` writes them, or plain pixel arrays, to PNG files.

All functions here are inherently 2-D (images): maps are ``(H, W)`` or a batch of one
``(1, H, W)``; input gradients are ``(C, H, W)`` or ``(1, C, H, W)``.

Conventions
-----------
* Colour scale: a map :math:`M` is mapped to :math:`\\hat M = \\mathrm{clip}((M - v_{min}) /
  (v_{max} - v_{min}), 0, 1)` with ``vmin``/``vmax`` defaulting to the map's own minimum and
  maximum; a constant map (:math:`v_{max} = v_{min}`) gives :math:`\\hat M = 0` (explicit guard,
  no epsilon), then the colormap is applied.  This is a display scale, not refcam's
  :func:`refcam.normalize` (which changes the map's values).
* Overlay: :math:`O = (1 - \\alpha) I + \\alpha \\cdot 255 \\cdot \\mathrm{cmap}(\\hat M)`, rounded to
  uint8 (half to even).  A map smaller than the image is upsampled first with
  :func:`refcam.math.upsample` (default ``"linear"``: bilinear, half-pixel centres).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._validate import as_float_array, choice
from .errors import DTypeError, InvalidArgumentError, ShapeError

__all__ = [
    "colorize",
    "compare_grid",
    "explain_figure",
    "overlay",
    "saliency_grid",
    "saliency_image",
    "save_png",
]

_SALIENCY_MODES = ("abs", "signed", "rgb")


# ----------------------------------------------------------------------------- validation helpers


def _image(image: Any, name: str = "image") -> np.ndarray:
    """uint8 (H, W, 3) from uint8/float-in-[0, 1] (H, W), (H, W, 3) or (H, W, 4)."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        out = arr
    else:
        f = as_float_array(arr, name)
        if f.size and (f.min() < 0 or f.max() > 1):
            raise InvalidArgumentError(
                name,
                f"values in [{f.min():.4g}, {f.max():.4g}]",
                "uint8 pixels or floats in [0, 1]",
            )
        out = np.rint(f * 255.0).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    if out.ndim != 3 or out.shape[2] not in (3, 4) or out.shape[0] == 0 or out.shape[1] == 0:
        raise ShapeError(name, arr.shape, "(H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey, H, W > 0")
    return np.ascontiguousarray(out[:, :, :3])


def _map2d(cam_map: Any, name: str = "cam_map") -> np.ndarray:
    """A single 2-D map from (H, W) or (1, H, W)."""
    m = as_float_array(cam_map, name)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2 or 0 in m.shape:
        raise ShapeError(name, np.shape(cam_map), "(H, W) or (1, H, W): one 2-D map")
    return m


def _cmap(cmap: Any):
    import matplotlib

    if isinstance(cmap, str):
        try:
            return matplotlib.colormaps[cmap]
        except KeyError:
            raise InvalidArgumentError(
                "cmap", cmap, "a matplotlib colormap name such as 'jet' or 'viridis'"
            ) from None
    if isinstance(cmap, matplotlib.colors.Colormap):
        return cmap
    raise InvalidArgumentError("cmap", cmap, "a matplotlib colormap or its name")


def _alpha(alpha: Any) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise InvalidArgumentError("alpha", alpha, "a number in [0, 1]") from None
    if not 0.0 <= a <= 1.0 or isinstance(alpha, bool):
        raise InvalidArgumentError("alpha", alpha, "a number in [0, 1]")
    return a


def _scale(m: np.ndarray, vmin: Any, vmax: Any) -> np.ndarray:
    lo = float(m.min()) if vmin is None else float(vmin)
    hi = float(m.max()) if vmax is None else float(vmax)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        raise InvalidArgumentError("vmin/vmax", (lo, hi), "finite numbers with vmin <= vmax")
    if (
        hi == lo
    ):  # constant map or degenerate scale: explicit guard, everything at the bottom colour
        return np.zeros_like(m)
    return np.clip((m - lo) / (hi - lo), 0.0, 1.0)


def _fit_to(m: np.ndarray, size: tuple[int, int], mode: str, name: str) -> np.ndarray:
    if m.shape == size:
        return m
    from .math import upsample  # the math floor's post-processing

    return upsample(m[None], size, mode=mode)[0]


# ----------------------------------------------------------------------------- arrays


def colorize(
    cam_map: Any, *, cmap: Any = "jet", vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """RGB colours of a map: :math:`\\mathrm{cmap}(\\hat M)` with :math:`\\hat M` the clipped display scale.

    .. math:: \\hat M = \\mathrm{clip}\\Big(\\frac{M - v_{min}}{v_{max} - v_{min}}, 0, 1\\Big),
              \\qquad \\hat M = 0 \\text{ where } v_{max} = v_{min}

    Parameters
    ----------
    cam_map : ``(H, W)`` or ``(1, H, W)`` map.
    cmap : matplotlib colormap or name (lookup table of ``cmap.N`` colours).
    vmin, vmax : ends of the scale; default the map's minimum and maximum.

    Returns
    -------
    ``(H, W, 3)`` RGB in [0, 1], dtype of the map (float32 stays float32).

    Examples
    --------
    >>> import numpy as np
    >>> colorize(np.array([[0.0, 2.0]]), cmap="gray")[0]
    array([[0., 0., 0.],
           [1., 1., 1.]])
    >>> colorize(np.full((1, 2), 3.0), cmap="gray")[0, :, 0]     # constant map -> bottom colour
    array([0., 0.])
    """
    m = _map2d(cam_map)
    rgb = _cmap(cmap)(_scale(m, vmin, vmax))[..., :3]
    return rgb.astype(m.dtype, copy=False)


def overlay(
    image: Any,
    cam_map: Any,
    *,
    alpha: float = 0.5,
    cmap: Any = "jet",
    vmin: float | None = None,
    vmax: float | None = None,
    upsample_mode: str = "linear",
) -> np.ndarray:
    """Blend a colour-mapped map over an image (the usual CAM heat-map picture).

    .. math:: O = (1 - \\alpha)\\, I + \\alpha \\cdot 255 \\cdot \\mathrm{cmap}(\\hat M)

    rounded half-to-even and clipped to uint8, with :math:`\\hat M` the display scale of
    :func:`colorize`.  A map of another size is first brought to the image size with
    :func:`refcam.math.upsample` (``upsample_mode``, default bilinear with half-pixel centres).

    Parameters
    ----------
    image : ``(H, W, 3)``/``(H, W)`` uint8, or floats in [0, 1].
    cam_map : ``(h, w)`` or ``(1, h, w)`` map.
    alpha : weight of the colours, in [0, 1] (0: the image, 1: the colours only).
    cmap, vmin, vmax : see :func:`colorize`.
    upsample_mode : mode of :func:`refcam.math.upsample` when ``(h, w) != (H, W)``.

    Returns
    -------
    ``(H, W, 3)`` uint8.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((1, 2, 3), 100, np.uint8)
    >>> overlay(img, np.array([[0.0, 1.0]]), alpha=0.25, cmap="gray")[0, :, 0]
    array([ 75, 139], dtype=uint8)

    (0.75 * 100 + 0.25 * 0 = 75 and 0.75 * 100 + 0.25 * 255 = 138.75 -> 139.)
    """
    img = _image(image)
    a = _alpha(alpha)
    m = _fit_to(_map2d(cam_map), img.shape[:2], upsample_mode, "cam_map")
    colours = _cmap(cmap)(_scale(m.astype(np.float64), vmin, vmax))[..., :3]
    out = (1.0 - a) * img.astype(np.float64) + a * 255.0 * colours
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def saliency_image(gradients: Any, *, mode: str = "abs", percentile: float = 99.0) -> np.ndarray:
    """Display image of input gradients (saliency, guided backpropagation, SmoothGrad ...).

    With :math:`q` the ``percentile``-th percentile of the magnitudes shown (outliers above
    it are capped, as Smilkov et al., 2017, "SmoothGrad: removing noise by adding noise",
    Sec. 3, cap at the 99th percentile):

    * ``"abs"``: :math:`S = \\mathrm{clip}(\\max_c |G_c| / q, 0, 1)`, grey ``(H, W)`` -- the
      channel-max magnitude of Simonyan et al., 2014, "Deep Inside Convolutional Networks",
      Sec. 3.1; a ``(H, W)`` input is taken as the map itself, :math:`|G|`.
    * ``"signed"``: :math:`S = \\tfrac12 + \\tfrac12 \\mathrm{clip}(\\sum_c G_c / q, -1, 1)`,
      ``(H, W)``: 0.5 is zero gradient (use a diverging colormap).
    * ``"rgb"``: :math:`S_c = \\tfrac12 + \\tfrac12 \\mathrm{clip}(G_c / q, -1, 1)` per channel,
      ``(H, W, 3)``: the usual guided-backpropagation picture (grey = 0).  pytorch-grad-cam's
      ``deprocess_image`` standardises instead (``(G - mean)/std * 0.1 + 0.5``).

    Where :math:`q = 0` (all shown values zero) the result is 0 (``"abs"``) or 0.5 (explicit
    guard, no epsilon).

    Parameters
    ----------
    gradients : ``(C, H, W)`` or ``(1, C, H, W)`` input gradients; ``(H, W)`` for a single map
        (``"abs"`` and ``"signed"`` only).  ``"rgb"`` needs ``C == 3``.
    mode : ``"abs"``, ``"signed"`` or ``"rgb"``.
    percentile : in (0, 100]; 100 scales by the maximum.

    Returns
    -------
    values in [0, 1], ``(H, W)`` or ``(H, W, 3)`` (``"rgb"``), dtype of ``gradients``.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[[-2.0, 1.0]], [[0.5, -0.5]]])        # (C=2, H=1, W=2)
    >>> saliency_image(g, mode="abs", percentile=100)       # max_c |G| = [2, 1], q = 2
    array([[1. , 0.5]])
    >>> saliency_image(g, mode="signed", percentile=100)    # sum_c = [-1.5, 0.5], q = 1.5
    array([[0.        , 0.66666667]])
    """
    mode = choice(mode, "mode", _SALIENCY_MODES)
    try:
        p = float(percentile)
    except (TypeError, ValueError):
        raise InvalidArgumentError("percentile", percentile, "a number in (0, 100]") from None
    if not 0.0 < p <= 100.0:
        raise InvalidArgumentError("percentile", percentile, "a number in (0, 100]")
    g = as_float_array(gradients, "gradients")
    if g.ndim == 4 and g.shape[0] == 1:
        g = g[0]
    if g.ndim == 2 and mode != "rgb":
        g = g[None]
    if g.ndim != 3 or 0 in g.shape:
        raise ShapeError(
            "gradients",
            np.shape(gradients),
            "(C, H, W), (1, C, H, W) or, except for mode 'rgb', (H, W)",
        )
    if mode == "abs":
        shown = np.abs(g).max(axis=0)
    elif mode == "signed":
        shown = g.sum(axis=0)
    else:
        if g.shape[0] != 3:
            raise ShapeError("gradients", np.shape(gradients), "(3, H, W) for mode 'rgb'")
        shown = np.moveaxis(g, 0, -1)
    q = np.percentile(np.abs(shown), p)
    if q == 0:
        fill = 0.0 if mode == "abs" else 0.5
        return np.full(shown.shape, fill, dtype=g.dtype)
    if mode == "abs":
        out = np.clip(shown / q, 0.0, 1.0)
    else:
        out = 0.5 + 0.5 * np.clip(shown / q, -1.0, 1.0)
    return out.astype(g.dtype, copy=False)


# ----------------------------------------------------------------------------- figures


def _panels(items: Any, name: str) -> list[tuple[str, Any]]:
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        try:
            pairs = [(str(t), v) for t, v in items]
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                name, type(items).__name__, "a mapping or a sequence of (title, array) pairs"
            ) from None
    if not pairs:
        raise InvalidArgumentError(name, "empty", "at least one (title, array) pair")
    return [(str(t), v) for t, v in pairs]


def _grid_with_input(
    img: Any, n_panels: int, ncols: Any, panel_size: Any, dpi: Any, colorbar: Any, suptitle: Any
):
    """:func:`_grid_figure` with the input picture ``img`` in the first panel (``None``: no input
    panel); returns the figure, every axis, and the index of the first of the ``n_panels``."""
    fig, axes = _grid_figure(
        n_panels + (img is not None), ncols, panel_size, dpi, colorbar, suptitle
    )
    if img is None:
        return fig, axes, 0
    axes[0].imshow(img)
    axes[0].set_title("input")
    return fig, axes, 1


def _grid_figure(
    n: int, ncols: int | None, panel_size: float, dpi: float, colorbar: bool, suptitle: str | None
):
    from matplotlib.figure import Figure

    if ncols is None:
        ncols = min(n, 4)
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise InvalidArgumentError("ncols", ncols, "a positive integer")
    ncols = min(int(ncols), n)
    nrows = -(-n // ncols)
    extra = 0.6 if colorbar else 0.0
    height = nrows * (panel_size + 0.35) + (0.5 if suptitle else 0.0)
    fig = Figure(figsize=(ncols * panel_size + extra, height), dpi=dpi)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle)
    return fig, list(axes.flat)


def compare_grid(
    image: Any,
    maps: Any,
    *,
    alpha: float = 0.5,
    cmap: Any = "jet",
    shared_scale: bool = False,
    show_input: bool = True,
    ncols: int | None = None,
    panel_size: float = 3.0,
    colorbar: bool = True,
    suptitle: str | None = None,
    upsample_mode: str = "linear",
    dpi: float = 100,
):
    """A figure comparing several maps (methods, layers, classes) side by side over one image.

    One panel per map, each the :func:`overlay` of the map on ``image`` and titled with its
    name, optionally preceded by the input image; one colorbar for all panels.

    Parameters
    ----------
    image : ``(H, W, 3)`` uint8 or floats in [0, 1] (the picture the model saw).
    maps : mapping ``{title: map}`` or sequence of ``(title, map)``; maps ``(h, w)`` or ``(1, h, w)``.
    alpha, cmap, upsample_mode : see :func:`overlay`.
    shared_scale : one ``vmin``/``vmax`` (the min and max over all maps) for every panel and
        the colorbar, to compare raw values; ``False`` (default) scales each map by its own
        min and max and labels the colorbar "per-map min-max".
    show_input : first panel is the image alone, titled "input".
    ncols : panels per row (default ``min(n, 4)``).
    panel_size : inches per panel; ``dpi`` dots per inch.
    colorbar : draw the colorbar (labelled, to the right of the panels).
    suptitle : figure title.

    Returns
    -------
    matplotlib.figure.Figure (Agg canvas; save it with :func:`save_png`).
    """
    import matplotlib

    img = _image(image)
    pairs = _panels(maps, "maps")
    checked = [(t, _map2d(m, f"maps[{t!r}]")) for t, m in pairs]
    if shared_scale:
        lo = min(float(m.min()) for _, m in checked)
        hi = max(float(m.max()) for _, m in checked)
    fig, axes, k = _grid_with_input(
        img if show_input else None, len(checked), ncols, panel_size, dpi, colorbar, suptitle
    )
    for (title, m), ax in zip(checked, axes[k:]):
        vmin, vmax = (lo, hi) if shared_scale else (None, None)
        ax.imshow(
            overlay(
                img, m, alpha=alpha, cmap=cmap, vmin=vmin, vmax=vmax, upsample_mode=upsample_mode
            )
        )
        ax.set_title(title)
    if colorbar:
        norm = matplotlib.colors.Normalize(*((lo, hi) if shared_scale and hi > lo else (0.0, 1.0)))
        sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=_cmap(cmap))
        cb = fig.colorbar(sm, ax=axes, fraction=0.04, pad=0.02)
        cb.set_label("map value" if shared_scale else "per-map min-max")
    return fig


def saliency_grid(
    image: Any,
    gradients: Any,
    *,
    mode: str = "abs",
    percentile: float = 99.0,
    show_input: bool = True,
    ncols: int | None = None,
    panel_size: float = 3.0,
    colorbar: bool = True,
    suptitle: str | None = None,
    dpi: float = 100,
):
    """A figure of input-gradient pictures (saliency, guided backprop, ...) next to the image.

    Each panel is :func:`saliency_image` of one gradient with the given ``mode``: grey scale
    for ``"abs"``, the diverging ``"bwr"`` colormap (white = 0) for ``"signed"``, colours as
    they are for ``"rgb"``.

    Parameters
    ----------
    image : ``(H, W, 3)`` uint8 or floats in [0, 1].
    gradients : mapping ``{title: gradient}`` or sequence of ``(title, gradient)``; see
        :func:`saliency_image` for shapes.
    mode, percentile : see :func:`saliency_image`.
    show_input, ncols, panel_size, colorbar, suptitle, dpi : see :func:`compare_grid`
        (no colorbar is drawn for ``"rgb"``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    img = _image(image)
    mode = choice(mode, "mode", _SALIENCY_MODES)
    pairs = _panels(gradients, "gradients")
    pictures = [(t, saliency_image(g, mode=mode, percentile=percentile)) for t, g in pairs]
    colorbar = colorbar and mode != "rgb"
    fig, axes, k = _grid_with_input(
        img if show_input else None, len(pictures), ncols, panel_size, dpi, colorbar, suptitle
    )
    cmap = {"abs": "gray", "signed": "bwr", "rgb": None}[mode]
    for (title, pic), ax in zip(pictures, axes[k:]):
        if mode == "rgb":
            ax.imshow(pic)
        else:
            ax.imshow(pic, cmap=cmap, vmin=0.0, vmax=1.0)
        ax.set_title(title)
    if colorbar:
        sm = matplotlib.cm.ScalarMappable(
            norm=matplotlib.colors.Normalize(0.0, 1.0), cmap=_cmap(cmap)
        )
        cb = fig.colorbar(sm, ax=axes, fraction=0.04, pad=0.02)
        cb.set_label("|gradient| / q" if mode == "abs" else "0.5 + gradient / 2q")
    return fig


# ----------------------------------------------------------------------------- the CLI's figure


def _softmax_top(outputs_row: Any, k: int) -> list[tuple[int, float]]:
    """The ``k`` most probable classes of one output row, ``(class, p)`` highest first.

    ``p`` = :func:`refcam.math.softmax` of the row (float64).  Ties are broken by the lower class
    index.
    """
    from .math import softmax

    p = softmax(np.asarray(outputs_row, dtype=np.float64).ravel())
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(c), float(p[c])) for c in order]


def explain_figure(
    picture,
    overlays: Sequence[tuple[str, Any]],
    top: Sequence[tuple[str, float]],
    *,
    title: str,
    highlight: int | None = None,
    dpi: float = 100,
):
    """Figure: the picture, one overlay panel per method, and a bar chart of the top classes.

    Parameters
    ----------
    picture : ``(H, W, 3)`` uint8 or floats in [0, 1] (what the model saw).
    overlays : ``(title, (H, W, 3) uint8 overlay)`` pairs (from :func:`refcam.viz.overlay`).
    top : ``(label, probability)`` pairs, highest first (softmax of the model output); empty:
        no bar chart (outputs that are not one score per class).
    title : figure title.  highlight : index in ``top`` of the explained class (drawn in red).

    Returns
    -------
    matplotlib.figure.Figure (Agg canvas; nothing is shown).
    """
    from matplotlib.figure import Figure

    n = 1 + len(overlays)
    bars = len(top) > 0
    fig = Figure(figsize=(3.0 * n + (4.2 if bars else 0.4), 3.6), dpi=dpi)
    widths = [3.0] * n + ([3.2] if bars else [])
    axes = fig.subplots(1, n + int(bars), gridspec_kw={"width_ratios": widths}, squeeze=False)[0]
    axes[0].imshow(picture)
    axes[0].set_title("input")
    for ax, (t, ov) in zip(axes[1:n], overlays):
        ax.imshow(ov)
        ax.set_title(t)
    for ax in axes[:n]:
        ax.set_axis_off()
    fig.suptitle(title)
    if not bars:
        fig.subplots_adjust(left=0.01, right=0.99, top=0.82, bottom=0.05, wspace=0.08)
        return fig
    bar = axes[n]
    labels = [lab for lab, _ in top][::-1]
    probs = [p for _, p in top][::-1]
    colours = ["tab:gray"] * len(top)
    if highlight is not None and 0 <= highlight < len(top):
        colours[highlight] = "tab:red"
    bar.barh(range(len(top)), probs, color=colours[::-1])
    for y, pr in enumerate(probs):
        bar.text(min(pr, 0.78) + 0.02, y, f"{pr:.3f}", va="center", fontsize=8)
    bar.set_yticks(range(len(top)))
    bar.set_yticklabels(labels, fontsize=8)
    bar.yaxis.tick_right()
    bar.set_xlim(0, 1)
    bar.set_xlabel("softmax probability")
    bar.set_title(f"top-{len(top)}")
    fig.subplots_adjust(left=0.01, right=0.8, top=0.82, bottom=0.15, wspace=0.08)
    return fig


def save_png(obj: Any, path: str | os.PathLike | Any, *, dpi: float | None = None) -> Path | Any:
    """Write a figure or a pixel array to a PNG file (parent directories are created).

    A path is written atomically: the PNG goes to a temporary file in the same folder, which is
    then renamed over ``path`` (:func:`os.replace`), so an interrupted call never leaves a
    truncated file and a reader sees the old file or the new one.

    Parameters
    ----------
    obj : a :class:`matplotlib.figure.Figure` (saved at ``dpi``, default the figure's), or an
        image array ``(H, W, 3)``/``(H, W)`` uint8 or floats in [0, 1], written pixel for pixel.
    path : the file to write, or a writable binary file object (e.g. :class:`io.BytesIO`).

    Returns
    -------
    pathlib.Path of the file (the file object when one was given).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> p = save_png(np.zeros((2, 3, 3), np.uint8), os.path.join(tempfile.mkdtemp(), "a", "x.png"))
    >>> Image.open(p).size          # (width, height)
    (3, 2)
    """
    import io

    from matplotlib.figure import Figure

    if isinstance(obj, Figure):

        def write(fh):
            obj.savefig(fh, format="png", dpi=dpi if dpi is not None else obj.dpi)
    elif isinstance(obj, (np.ndarray, list, tuple)):
        from PIL import Image

        pixels = _image(obj, "obj")

        def write(fh):
            Image.fromarray(pixels).save(fh, format="PNG")
    else:
        raise DTypeError("obj", type(obj).__name__, "a matplotlib Figure or an image array")
    if not isinstance(path, (str, os.PathLike)):
        write(path)
        return path
    buf = io.BytesIO()
    write(buf)
    from ._outputs import write_atomic

    return write_atomic(path, buf.getvalue())
