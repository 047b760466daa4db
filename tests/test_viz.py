"""refcam.viz: overlays, grids and saliency pictures, checked on the pixels of the saved PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from refcam import viz
from refcam.errors import DTypeError, InvalidArgumentError, ShapeError


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _panel_pixels(fig, ax, png: np.ndarray) -> np.ndarray:
    """The pixels of ``ax``'s image in the saved PNG (display y axis points up, PNG rows down)."""
    fig.canvas.draw()
    bb = ax.get_window_extent()
    h = png.shape[0]
    rows = slice(int(np.ceil(h - bb.y1)) + 1, int(np.floor(h - bb.y0)) - 1)
    cols = slice(int(np.ceil(bb.x0)) + 1, int(np.floor(bb.x1)) - 1)
    return png[rows, cols]


def _hot(px: np.ndarray) -> np.ndarray:
    # jet(1) = (0.5, 0, 0) and jet(0) = (0, 0, 0.5): blended 50/50 on grey 128 -> (128, 64, 64) vs (64, 64, 128)
    return px[..., 0] > px[..., 2] + 40


def _cold(px: np.ndarray) -> np.ndarray:
    return px[..., 2] > px[..., 0] + 40


# ----------------------------------------------------------------------------- overlay / colorize


def test_overlay_alpha_blending_hand_computed(tmp_path):
    img = np.full((2, 2, 3), 100, np.uint8)
    m = np.array([[0.0, 1.0], [0.5, 0.25]])
    out = viz.overlay(img, m, alpha=0.25, cmap="gray")
    # gray(0) = 0 -> 0.75*100 = 75; gray(1) = 1 -> 75 + 0.25*255 = 138.75 -> 139
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [75, 75, 75] and out[0, 1].tolist() == [139, 139, 139]
    # jet(1) = (0.5, 0, 0): alpha 0.5 over black -> (63.75, 0, 0) -> (64, 0, 0); jet(0) = (0, 0, 0.5) -> (0, 0, 64)
    jet = viz.overlay(np.zeros((1, 2, 3), np.uint8), np.array([[0.0, 1.0]]), alpha=0.5)
    assert jet[0, 0].tolist() == [0, 0, 64] and jet[0, 1].tolist() == [64, 0, 0]
    # the saved PNG holds exactly these pixels, at the image size
    p = viz.save_png(out, tmp_path / "sub" / "o.png")
    assert Image.open(p).size == (2, 2)
    np.testing.assert_array_equal(_png(p), out)


def test_overlay_vmin_vmax_and_constant_maps():
    img = np.zeros((1, 3, 3), np.uint8)
    # fixed scale [0, 4]: values 0, 2, 8 -> 0, 0.5, clipped 1; gray, alpha 1 -> 0, 127.5 -> 128 (half to even), 255
    out = viz.overlay(img, np.array([[0.0, 2.0, 8.0]]), alpha=1.0, cmap="gray", vmin=0, vmax=4)
    assert out[0, :, 0].tolist() == [0, 128, 255]
    # constant map: guard puts every pixel at the bottom colour, no NaN
    const = viz.overlay(img, np.full((1, 3), 7.0), alpha=1.0, cmap="gray")
    assert const.tolist() == np.zeros((1, 3, 3), int).tolist()
    # float images in [0, 1] and (1, H, W) maps are accepted
    f = viz.overlay(np.full((1, 3, 3), 0.5), np.zeros((1, 1, 3)), alpha=0.0)
    assert f[0, 0].tolist() == [128, 128, 128]  # 0.5 * 255 = 127.5 -> 128


def test_colorize_hand_computed_and_dtype():
    rgb = viz.colorize(np.array([[0.0, 1.0]], np.float32), cmap="jet")
    assert rgb.dtype == np.float32 and rgb.shape == (1, 2, 3)
    np.testing.assert_allclose(rgb[0], [[0, 0, 0.5], [0.5, 0, 0]])
    assert viz.colorize(np.array([[1.0, 3.0]]), cmap="gray").dtype == np.float64


@given(st.integers(0, 2**32 - 1), st.floats(0, 1))
def test_overlay_lies_between_image_and_colours(seed, alpha):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    m = rng.normal(size=(5, 6))
    out = viz.overlay(img, m, alpha=alpha).astype(float)
    col = viz.colorize(m) * 255.0
    lo, hi = np.minimum(img, col), np.maximum(img, col)
    assert (out >= np.floor(lo) - 0.5).all() and (out <= np.ceil(hi) + 0.5).all()
    np.testing.assert_array_equal(viz.overlay(img, m, alpha=0.0), img)
    np.testing.assert_array_equal(viz.overlay(img, m, alpha=1.0), np.rint(col).astype(np.uint8))


def test_overlay_upsamples_a_small_map_to_the_image():
    from refcam.math import upsample as up

    img = np.full((32, 32, 3), 128, np.uint8)
    m = np.zeros((4, 4))
    m[0, 0] = 1.0  # hot cell: top-left eighth-by-eighth of the image
    out = viz.overlay(img, m, alpha=0.5).astype(int)
    hot = _hot(out)
    assert hot[:4, :4].all() and not hot[16:, :].any() and not hot[:, 16:].any()
    np.testing.assert_array_equal(
        out, viz.overlay(img, up(m[None], (32, 32), mode="linear")[0], alpha=0.5)
    )


def test_overlay_errors_name_the_argument():
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ShapeError, match=r"^cam_map: got shape \(2, 4, 4\)"):
        viz.overlay(img, np.zeros((2, 4, 4)))
    with pytest.raises(InvalidArgumentError, match=r"^alpha: got 1\.5"):
        viz.overlay(img, np.zeros((4, 4)), alpha=1.5)
    with pytest.raises(InvalidArgumentError, match=r"^cmap: got 'nocmap'"):
        viz.overlay(img, np.zeros((4, 4)), cmap="nocmap")
    with pytest.raises(InvalidArgumentError, match=r"^image: got 'values in \[2, 2\]'"):
        viz.overlay(np.full((4, 4, 3), 2.0), np.zeros((4, 4)))
    with pytest.raises(ShapeError, match=r"^image: got shape \(4, 4, 2\)"):
        viz.overlay(np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4)))
    with pytest.raises(InvalidArgumentError, match=r"^vmin/vmax: got \(2\.0, 1\.0\)"):
        viz.overlay(img, np.zeros((4, 4)), vmin=2, vmax=1)
    with pytest.raises(DTypeError, match=r"^cam_map: got dtype complex128"):
        viz.overlay(img, np.zeros((4, 4), complex))


# ----------------------------------------------------------------------------- compare_grid


def test_compare_grid_hot_region_titles_and_colorbar(tmp_path):
    img = np.full((64, 64, 3), 128, np.uint8)
    m = np.zeros((64, 64))
    m[:16, :16] = 1.0  # hot square in the top-left quarter
    m2 = np.zeros((64, 64))
    m2[48:, 48:] = 1.0  # hot square in the bottom-right quarter
    fig = viz.compare_grid(img, {"top-left": m, "bottom-right": m2}, suptitle="synthetic", dpi=80)
    path = viz.save_png(fig, tmp_path / "grid.png")
    png = _png(path)
    w, h = fig.get_size_inches() * 80
    assert png.shape == (round(h), round(w), 3)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["input", "top-left", "bottom-right"]
    inp = _panel_pixels(fig, panels[0], png)
    assert np.abs(inp - 128).max() <= 2  # the input panel is the grey image
    for ax, (r0, c0) in zip(panels[1:], [(0.0, 0.0), (0.75, 0.75)]):
        px = _panel_pixels(fig, ax, png)
        hot = _hot(px)
        rows, cols = np.nonzero(hot)
        hh, ww = hot.shape
        # centroid of the hot pixels at the centre of the square (1/8 or 7/8 of the panel)
        assert rows.mean() / hh == pytest.approx(r0 + 0.125, abs=0.03)
        assert cols.mean() / ww == pytest.approx(c0 + 0.125, abs=0.03)
        # hot pixels cover about 1/16 of the panel; the rest is cold
        assert hot.mean() == pytest.approx(1 / 16, abs=0.02)
        assert _cold(px).mean() == pytest.approx(15 / 16, abs=0.03)
    # one colorbar axes with its label; its top is red, its bottom blue in the PNG
    cbar = [ax for ax in fig.axes if ax.get_ylabel() == "per-map min-max"]
    assert len(cbar) == 1
    strip = _panel_pixels(fig, cbar[0], png)
    top, bottom = strip[2, strip.shape[1] // 2], strip[-3, strip.shape[1] // 2]
    assert top[0] > 100 and top[2] < 30 and bottom[2] > 100 and bottom[0] < 30
    assert fig._suptitle.get_text() == "synthetic"


def test_compare_grid_shared_scale_keeps_relative_strength(tmp_path):
    img = np.full((32, 32, 3), 128, np.uint8)
    strong = np.zeros((32, 32))
    strong[:8, :8] = 2.0
    weak = np.zeros((32, 32))
    weak[:8, :8] = 1.0
    fig = viz.compare_grid(
        img, [("strong", strong), ("weak", weak)], shared_scale=True, show_input=False, dpi=60
    )
    png = _png(viz.save_png(fig, tmp_path / "shared.png"))
    panels = [ax for ax in fig.axes if ax.get_title()]
    s, w = (_panel_pixels(fig, ax, png) for ax in panels)
    # shared scale [0, 2]: strong corner at jet(1) = dark red, weak corner at jet(0.5) (green-ish, not red)
    assert _hot(s[:4, :4]).all() and not _hot(w[:4, :4]).any()
    assert w[2, 2, 1] > 150  # jet(0.5) has G = 1 -> 0.5*128 + 0.5*255 > 150
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["map value"]
    # per-map scale: both corners dark red
    fig2 = viz.compare_grid(img, [("strong", strong), ("weak", weak)], show_input=False, dpi=60)
    png2 = _png(viz.save_png(fig2, tmp_path / "own.png"))
    s2, w2 = (_panel_pixels(fig2, ax, png2) for ax in fig2.axes if ax.get_title())
    assert _hot(s2[:4, :4]).all() and _hot(w2[:4, :4]).all()


def test_compare_grid_layout_and_errors():
    img = np.zeros((8, 8, 3), np.uint8)
    maps = {f"m{i}": np.zeros((8, 8)) for i in range(5)}
    fig = viz.compare_grid(img, maps, ncols=3, colorbar=False)  # 6 panels -> 2 rows of 3
    assert len(fig.axes) == 6 and len([a for a in fig.axes if a.get_title()]) == 6
    with pytest.raises(InvalidArgumentError, match=r"^maps: got 'empty'"):
        viz.compare_grid(img, {})
    with pytest.raises(ShapeError, match=r"^maps\['bad'\]: got shape \(2, 2, 2\)"):
        viz.compare_grid(img, {"bad": np.zeros((2, 2, 2))})
    with pytest.raises(InvalidArgumentError, match=r"^ncols: got 0"):
        viz.compare_grid(img, maps, ncols=0)


# ----------------------------------------------------------------------------- saliency


def test_saliency_image_hand_computed():
    g = np.array([[[-2.0, 1.0]], [[0.5, -0.5]]])  # (C=2, H=1, W=2)
    # abs: max_c |G| = [2, 1], q = 2 -> [1, 0.5]
    np.testing.assert_allclose(viz.saliency_image(g, mode="abs", percentile=100), [[1.0, 0.5]])
    # signed: sum_c G = [-1.5, 0.5], q = 1.5 -> 0.5 + 0.5 * [-1, 1/3] = [0, 2/3]
    np.testing.assert_allclose(viz.saliency_image(g, mode="signed", percentile=100), [[0.0, 2 / 3]])
    # rgb: per channel, q = max |G| = 2 over all 6 values -> 0.5 + 0.5 * G / 2
    rgb = np.array([[[-2.0, 2.0]], [[1.0, 0.0]], [[0.0, -1.0]]])
    np.testing.assert_allclose(
        viz.saliency_image(rgb, mode="rgb", percentile=100), [[[0.0, 0.75, 0.5], [1.0, 0.5, 0.25]]]
    )
    # percentile capping: |values| 0..100, 50th percentile q = 50 -> values >= 50 are 1
    ramp = np.arange(101.0)[None, None, :]
    s = viz.saliency_image(ramp, mode="abs", percentile=50)
    assert s[0, 50] == 1.0 and s[0, 100] == 1.0 and s[0, 25] == 0.5
    # (1, C, H, W) batch of one and a 2-D map; zero gradients -> guard values, float32 kept
    assert viz.saliency_image(g[None], percentile=100).shape == (1, 2)
    np.testing.assert_allclose(
        viz.saliency_image(np.array([[3.0, -6.0]]), percentile=100), [[0.5, 1.0]]
    )
    z = np.zeros((3, 2, 2), np.float32)
    assert viz.saliency_image(z).dtype == np.float32 and not viz.saliency_image(z).any()
    assert (viz.saliency_image(z, mode="signed") == 0.5).all() and (
        viz.saliency_image(z, mode="rgb") == 0.5
    ).all()


@given(st.integers(0, 2**32 - 1), st.sampled_from(["abs", "signed", "rgb"]), st.floats(1, 100))
def test_saliency_image_range_and_scale_invariance(seed, mode, pct):
    g = np.random.default_rng(seed).normal(size=(3, 6, 5))
    s = viz.saliency_image(g, mode=mode, percentile=pct)
    assert s.min() >= 0 and s.max() <= 1 and np.isfinite(s).all()
    np.testing.assert_allclose(
        viz.saliency_image(7.5 * g, mode=mode, percentile=pct), s, atol=1e-12
    )


def test_saliency_errors_name_the_argument():
    with pytest.raises(InvalidArgumentError, match=r"^mode: got 'log'"):
        viz.saliency_image(np.zeros((3, 2, 2)), mode="log")
    with pytest.raises(InvalidArgumentError, match=r"^percentile: got 0"):
        viz.saliency_image(np.zeros((3, 2, 2)), percentile=0)
    with pytest.raises(
        ShapeError, match=r"^gradients: got shape \(2, 2, 2\), expected \(3, H, W\)"
    ):
        viz.saliency_image(np.zeros((2, 2, 2)), mode="rgb")
    with pytest.raises(ShapeError, match=r"^gradients: got shape \(2,\)"):
        viz.saliency_image(np.zeros(2))


def test_saliency_grid_bright_where_the_gradient_is(tmp_path):
    img = np.full((40, 40, 3), 90, np.uint8)
    g = np.zeros((3, 40, 40))
    g[:, :, 20:] = np.random.default_rng(1).normal(
        size=(3, 40, 20)
    )  # gradient only in the right half
    fig = viz.saliency_grid(img, {"right": g}, mode="abs", dpi=60)
    png = _png(viz.save_png(fig, tmp_path / "sal.png"))
    panel = [ax for ax in fig.axes if ax.get_title() == "right"][0]
    px = _panel_pixels(fig, panel, png)
    half = px.shape[1] // 2
    assert px[:, : half - 2].max() == 0  # left half: zero gradient -> black
    assert px[:, half + 2 :].mean() > 60  # right half: bright
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["|gradient| / q"]
    rgb = viz.saliency_grid(img, [("gb", g)], mode="rgb", show_input=False)
    assert len(rgb.axes) == 1  # no colorbar for rgb pictures


def test_save_png_figure_size_and_errors(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1), dpi=50)
    fig.subplots().plot([0, 1])
    p = viz.save_png(fig, tmp_path / "f.png")
    assert Image.open(p).size == (100, 50)
    assert Image.open(viz.save_png(fig, tmp_path / "g.png", dpi=100)).size == (200, 100)
    with pytest.raises(DTypeError, match=r"^obj: got dtype str"):
        viz.save_png("not an image", tmp_path / "x.png")


# ----------------------------------------------------------------------------- the CLI's figure


def test_explain_figure_panels_and_highlight():
    """One input panel, one panel per overlay, a bar chart whose highlighted bar is tab:red."""
    from matplotlib.colors import to_rgba

    pic = np.zeros((8, 8, 3), np.uint8)
    fig = viz.explain_figure(
        pic, [("cam", pic), ("gradcam", pic)], [("a", 0.7), ("b", 0.2)], title="t", highlight=1
    )
    axes = fig.get_axes()
    assert len(axes) == 4 and [a.get_title() for a in axes] == ["input", "cam", "gradcam", "top-2"]
    bars = axes[3].patches  # drawn bottom-up: the last class first
    assert [to_rgba(b.get_facecolor()) for b in bars] == [to_rgba("tab:red"), to_rgba("tab:gray")]
    assert [b.get_width() for b in bars] == [0.2, 0.7]
    assert len(viz.explain_figure(pic, [("cam", pic)], [], title="t").get_axes()) == 2  # no chart


def test_save_png_is_atomic_and_takes_file_objects(tmp_path, monkeypatch):
    """An interrupted save leaves the old file whole and no temporary; file objects work."""
    import io

    from matplotlib.figure import Figure

    p = tmp_path / "x.png"
    viz.save_png(np.zeros((2, 3, 3), np.uint8), p)
    old = p.read_bytes()
    buf = io.BytesIO()
    assert viz.save_png(np.full((2, 3, 3), 255, np.uint8), buf) is buf
    assert np.asarray(Image.open(io.BytesIO(buf.getvalue()))).min() == 255

    def broken(self, fname, *a, **k):
        fname.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(KeyboardInterrupt):
        viz.save_png(Figure(), p)
    assert p.read_bytes() == old and sorted(q.name for q in tmp_path.iterdir()) == ["x.png"]
