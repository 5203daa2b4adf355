"""``diffdef_runtime.figures``: the preview's size, orientation letters, pixels, colour scale and its direction."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from diffdef_runtime.figures import (LETTERS, VIEWS, atlas_slice, change_limit, condition_text, display_slice,
                                     intensity_max, log_volume_change, preview_figure, save_png, slice_title,
                                     write_preview)
from diffdef_runtime.grid import get_grid

GRID = (12, 16, 10)  # D (L->R), H (P->A), W (I->S): three different lengths, so a swapped axis shows


def rendered(fig, path) -> np.ndarray:
    """Save ``fig`` as the writers do and read the PNG back: (rows, cols, 3) uint8."""
    save_png(fig, path)
    with Image.open(path) as png:
        return np.asarray(png.convert("RGB"))


def axes_pixels(image: np.ndarray, ax, rows: int, cols: int) -> np.ndarray:
    """The rendered pixel at the centre of each voxel block of a slice drawn on ``ax``: (rows, cols, 3)."""
    box = ax.get_window_extent()  # display pixels, origin at the bottom left, after the figure was drawn
    xs = box.x0 + (np.arange(cols) + 0.5) * box.width / cols
    ys = box.y1 - (np.arange(rows) + 0.5) * box.height / rows  # row 0 at the top
    return image[(image.shape[0] - ys).astype(int)[:, None], xs.astype(int)[None, :]]


def grey_pixels(values: np.ndarray) -> np.ndarray:
    """What matplotlib's 'gray' map draws for values in [0, 1]: (..., ) uint8."""
    return np.round(colormaps["gray"](values)[..., 0] * 255).astype(int)


def letter_directions(ax) -> dict[str, str]:
    """Orientation letters drawn around ``ax`` -> the side they sit on (left/right/bottom/top of the axes)."""
    box = ax.get_window_extent()
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    renderer = ax.figure.canvas.get_renderer()
    out = {}
    for text in ax.texts:
        if len(text.get_text()) == 1:
            t = text.get_window_extent(renderer)
            dx, dy = (t.x0 + t.x1) / 2 - cx, (t.y0 + t.y1) / 2 - cy
            side = ("right" if dx > 0 else "left") if abs(dx) / box.width > abs(dy) / box.height else \
                ("top" if dy > 0 else "bottom")
            out[text.get_text()] = side
    return out


def test_display_slice_orientation_table():
    vol = np.arange(np.prod(GRID)).reshape(GRID)
    d, h, w = GRID
    sag, cor, axi = (display_slice(vol, v, 3) for v in VIEWS)
    assert sag.shape == (w, h) and cor.shape == (w, d) and axi.shape == (h, d)
    # Top-left pixel of each: sagittal = (D 3, posterior, superior); coronal = (left, H 3, superior);
    # axial = (left, anterior, W 3).
    assert sag[0, 0] == vol[3, 0, w - 1] and cor[0, 0] == vol[0, 3, w - 1] and axi[0, 0] == vol[0, h - 1, 3]
    assert sag[-1, -1] == vol[3, h - 1, 0] and cor[-1, -1] == vol[d - 1, 3, 0] and axi[-1, -1] == vol[d - 1, 0, 3]
    with pytest.raises(ValueError, match="view"):
        display_slice(vol, "oblique")


# letter -> (array axis, which half is bright)
HALF = {"L": (0, "low"), "R": (0, "high"), "P": (1, "low"), "A": (1, "high"), "I": (2, "low"), "S": (2, "high")}


@pytest.mark.parametrize("letter", list(HALF))
def test_a_bright_half_shows_on_the_side_of_its_letter(letter, tmp_path):
    """A volume bright only on one half (the left, say) is bright on the side of the slice labelled L."""
    axis, half = HALF[letter]
    vol = np.zeros(GRID, np.float32)
    n = GRID[axis]
    index = [slice(None)] * 3
    index[axis] = slice(0, n // 2) if half == "low" else slice(n // 2, n)
    vol[tuple(index)] = 1.0
    fig = preview_figure(vol, np.ones(GRID, np.float32))
    image = rendered(fig.figure, tmp_path / "p.png")
    checked = 0
    for view in VIEWS:
        if letter not in LETTERS[view]:
            continue
        for axes in (fig.atlas_axes[view], fig.overlay_axes[view]):
            side = letter_directions(axes)[letter]
            grey = axes_pixels(image, axes, *display_slice(vol, view).shape)[..., 0].astype(float)
            rows, cols = grey.shape
            halves = {"left": grey[:, : cols // 2], "right": grey[:, cols - cols // 2:],
                      "top": grey[: rows // 2], "bottom": grey[rows - rows // 2:]}
            opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[side]
            assert halves[side].min() == 255 and halves[opposite].max() == 0, (view, letter, side)
            checked += 1
    assert checked == 4  # each letter appears in two views, each drawn twice (plain, overlay)


def test_preview_size_pixels_and_titles(tmp_path):
    rng = np.random.default_rng(0)
    atlas = rng.random(GRID).astype(np.float32) * 3
    jac = np.ones(GRID, np.float32)  # no change: the overlay leaves every voxel clear
    fig = preview_figure(atlas, jac, condition={"age": 70.0, "sex": 1.0}, ventricle_volume_ml=31.46,
                         affine=get_grid("4mm").affine)
    image = rendered(fig.figure, tmp_path / "p.png")
    assert image.shape[1] == 1200 and 700 <= image.shape[0] <= 1400  # width_in 12 at 100 dpi
    assert image.shape[:2] == (round(fig.figure.get_figheight() * 100), 1200)
    title = fig.figure.get_suptitle()
    assert "age 70 y" in title and "sex M" in title and "31.5 mL" in title
    assert fig.vmax == pytest.approx(np.percentile(atlas, 99.5))
    for view in VIEWS:
        expected = grey_pixels(atlas_slice(atlas, view, fig.indices[view], fig.vmax))
        for axes in (fig.atlas_axes[view], fig.overlay_axes[view]):
            got = axes_pixels(image, axes, *expected.shape)
            assert np.abs(got[..., 0].astype(int) - expected).max() <= 1, view
            assert (got[..., 0] == got[..., 2]).all()  # grey: nothing overlaid where nothing changed
    assert fig.atlas_axes["coronal"].get_title() == slice_title("coronal", GRID[1] // 2, get_grid("4mm").affine)
    assert "y = " in fig.atlas_axes["coronal"].get_title()


def test_colour_bar_is_symmetric_labelled_and_red_means_growth(tmp_path):
    atlas = np.full(GRID, 0.5, np.float32)
    jac = np.ones(GRID, np.float32)
    jac[: GRID[0] // 2] = 0.5  # the map atlas -> template halves volumes on the left: the atlas grew there
    jac[GRID[0] // 2:] = 1.6  # and shrank on the right
    fig = preview_figure(atlas, jac)
    norm = fig.colorbar.mappable.norm
    assert norm.vmin == -norm.vmax == -fig.limit and fig.limit == 1.0  # 98th pct of |log2 J| = log2 1.6 -> 1
    ticks = fig.colorbar.get_ticks()
    np.testing.assert_allclose(ticks, -ticks[::-1])
    texts = {t.get_text() for t in fig.colorbar.ax.texts}
    assert texts == {"expansion", "shrinkage"}
    assert "log2 volume change" in fig.colorbar.ax.get_ylabel()
    labels = [t.get_text() for t in fig.colorbar.ax.get_yticklabels()]
    assert labels[-1] == "+1 (x2.00)" and labels[0] == "-1 (x0.50)"
    # Expansion at the top of the bar, shrinkage at the bottom, and the overlay agrees: grown = red, shrunk = blue.
    by_text = {t.get_text(): t.get_position()[1] for t in fig.colorbar.ax.texts}
    assert by_text["expansion"] > 1 > 0 > by_text["shrinkage"]
    image = rendered(fig.figure, tmp_path / "p.png")
    coronal = axes_pixels(image, fig.overlay_axes["coronal"], GRID[2], GRID[0]).astype(int)  # cols: L -> R
    left, right = coronal[:, : GRID[0] // 2], coronal[:, GRID[0] // 2:]
    assert (left[..., 0] > left[..., 2] + 40).all() and (right[..., 2] > right[..., 0] + 30).all()


def test_scales_and_texts():
    np.testing.assert_allclose(log_volume_change(np.array([0.25, 1.0, 4.0, -1.0])), [2.0, 0.0, -2.0, -np.log2(1e-3)])
    jac = np.ones(1000)
    jac[:30] = 2.0 ** -0.6  # 3 % of voxels at |log2 J| = 0.6 -> the 98th percentile -> rounded up to 0.75
    assert change_limit([jac]) == 0.75
    assert change_limit([np.ones(10)]) == 0.05  # no change: the smallest limit, never zero
    assert change_limit([jac, np.full(10, -0.5)]) == 0.75  # folds (J <= 0) do not set the scale
    assert intensity_max([np.zeros(5)]) == 1.0
    assert condition_text({"age": 70.5, "sex": 0.0, "ventricle_volume_ml": 40.0}) == \
        "age 70.5 y, sex F, ventricles 40 mL (condition)"


def test_write_preview_writes_a_png(tmp_path):
    write_preview(tmp_path / "p.png", np.ones(GRID), np.ones(GRID), dpi=50, width_in=8)
    with Image.open(tmp_path / "p.png") as png:
        assert png.size[0] == 400 and png.mode in ("RGB", "RGBA")
    assert not list(tmp_path.glob(".*tmp*"))


def test_volume_change_sign_matches_a_warped_blob():
    """atlas(x) = T(x + u(x)) with J = det(I + grad u) = 0.5 doubles a blob: the colour says +1 (x2), red."""
    x = np.arange(128, dtype=np.float64)
    template = (np.abs(x - 64) < 10).astype(np.float64)
    u = -0.5 * (x - 64)  # phi(x) = x + u(x) = 64 + (x - 64) / 2
    atlas = np.interp(x + u, x, template)  # the pull-back warp, 1-D
    jac = 1 + np.gradient(u)
    grown = atlas.sum() / template.sum()
    assert grown == pytest.approx(2.0, rel=0.05)
    np.testing.assert_allclose(log_volume_change(jac), np.log2(2.0))
