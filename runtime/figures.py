"""Pictures of one atlas, drawn with matplotlib: the per-condition ``preview.png`` and the slice drawing that the
series figures (:mod:`diffdef_runtime.series`) and ``diffdef-eval`` reuse.

Matplotlib is a hard requirement of the runtime (it imports no torch; about 75 MB installed with its
dependencies, less than ONNX Runtime) because every ``diffdef-run`` writes a preview. Figures are built on
``matplotlib.figure.Figure`` with the Agg canvas, never through ``pyplot``: no display is needed and the caller's
matplotlib backend (a notebook's, say) is left alone.

Display conventions (arrays are RAS voxel order, D = L->R, H = P->A, W = I->S, see ``grid.py``):

==========  ===========  ===================  ==================
view        fixed axis   left -> right        bottom -> top
==========  ===========  ===================  ==================
sagittal    D            P -> A  (H)          I -> S  (W)
coronal     H            L -> R  (D)          I -> S  (W)
axial       W            L -> R  (D)          P -> A  (H)
==========  ===========  ===================  ==================

i.e. the neurological convention (the subject's left on the left of the picture), written as letters beside every
slice. A voxel is one square block of pixels (``interpolation="nearest"``, isotropic grids), so what a figure shows
can be checked pixel for pixel against :func:`atlas_slice` and :func:`volume_change_slice`.

Colours of the Jacobian are the atlas's local volume relative to the template, ``-log2 J`` (see
:func:`log_volume_change`): red where the atlas grew, blue where it shrank, on a symmetric log scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colorbar import Colorbar
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from diffdef_runtime import atomic

VIEWS = ("sagittal", "coronal", "axial")
#: view -> index of the fixed array axis (D, H, W)
FIXED_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
#: view -> orientation letters (left, right, bottom, top) of the displayed slice
LETTERS = {"sagittal": ("P", "A", "I", "S"), "coronal": ("L", "R", "I", "S"), "axial": ("L", "R", "P", "A")}
#: view -> name of the RAS world coordinate that is fixed
WORLD_AXIS = {"sagittal": "x", "coronal": "y", "axial": "z"}
#: Diverging map for the log2 volume change: blue = shrinkage, white = unchanged, red = expansion.
JACOBIAN_CMAP = "RdBu_r"
FOLD_COLOUR = "lime"
#: Colour bar limits for log2 volume change are rounded up to one of these.
NICE_LIMITS = (0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
OVERLAY_ALPHA = 0.75
DPI = 100


# ------------------------------------------------------------------------------------------ slices and scales
def central_indices(shape: Sequence[int]) -> dict[str, int]:
    """The slice through the grid centre of each view: ``{"sagittal": D // 2, "coronal": H // 2, "axial": W // 2}``."""
    return {view: int(shape[axis]) // 2 for view, axis in FIXED_AXIS.items()}


def display_slice(volume: np.ndarray, view: str, index: int | None = None) -> np.ndarray:
    """A (D, H, W) volume's slice as displayed: row 0 at the top, column 0 at the left (see the module table).

    Returns (W, H) for sagittal, (W, D) for coronal, (H, D) for axial; a view, not a copy.
    """
    if view not in FIXED_AXIS:
        raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
    axis = FIXED_AXIS[view]
    if index is None:
        index = volume.shape[axis] // 2
    plane = np.take(np.asarray(volume), int(index), axis=axis)  # the two remaining axes, in (D, H, W) order
    return plane.T[::-1]  # second remaining axis runs bottom -> top, first runs left -> right


def intensity_max(volumes: Sequence[np.ndarray]) -> float:
    """The grey scale's white point shared by ``volumes``: the largest of their 99.5th percentiles (one volume
    in memory at a time; 1.0 when that is not positive)."""
    tops = [float(np.percentile(v, 99.5)) for v in volumes if np.size(v)]
    top = max(tops, default=0.0)
    return top if np.isfinite(top) and top > 0 else 1.0


def atlas_slice(volume: np.ndarray, view: str, index: int | None, vmax: float) -> np.ndarray:
    """The normalised grey values drawn for a slice: ``clip(display_slice / vmax, 0, 1)``, float64."""
    return np.clip(display_slice(volume, view, index).astype(np.float64) / vmax, 0.0, 1.0)


def log_volume_change(jacobian: np.ndarray) -> np.ndarray:
    """The atlas's local volume relative to the template, log2: ``-log2 J`` (+1 = twice the template's volume).

    ``atlas(x) = T1(x + u(x))`` pulls the template back through ``phi(x) = x + u(x)`` (atlas -> template), so a
    region of the atlas has ``J = det(I + grad u)`` times the volume of the template region it shows: J < 1 where
    the atlas grew (ventricles with age), J > 1 where it shrank. Folds (J <= 0) are clipped to J = 1e-3.
    """
    return -np.log2(np.clip(np.asarray(jacobian, np.float64), 1e-3, None))


def volume_change_slice(jacobian: np.ndarray, view: str, index: int | None = None) -> np.ndarray:
    """:func:`log_volume_change` of a slice in display orientation (see :func:`display_slice`)."""
    return log_volume_change(display_slice(jacobian, view, index))


def change_limit(jacobians: Sequence[np.ndarray], percentile: float = 98.0) -> float:
    """Symmetric colour-bar limit ``a`` (log2 volume change in [-a, a]) shared by ``jacobians``: the largest of
    their ``percentile``\ s of |log2 J| (folds excluded) rounded up to a value of :data:`NICE_LIMITS`."""
    tops = [float(np.percentile(np.abs(np.log2(j[j > 0])), percentile)) for j in map(np.asarray, jacobians)
            if np.any(j > 0)]
    top = max(tops, default=0.0)
    return next((n for n in NICE_LIMITS if n >= top), NICE_LIMITS[-1])


def condition_text(condition: Mapping[str, float]) -> str:
    """``{"age": 70, "sex": 1}`` -> ``"age 70 y, sex M"`` (for titles and labels)."""
    parts = []
    for name, value in condition.items():
        if name == "age":
            parts.append(f"age {value:g} y")
        elif name == "sex":
            parts.append(f"sex {'M' if value >= 0.5 else 'F'}")
        elif name == "ventricle_volume_ml":
            parts.append(f"ventricles {value:g} mL (condition)")
        else:
            parts.append(f"{name} {value:g}")
    return ", ".join(parts)


def slice_title(view: str, index: int, affine: np.ndarray | None) -> str:
    """``"coronal, y = -17 mm"`` (world coordinate of the slice centre) or ``"coronal, slice 56"`` without affine."""
    if affine is None:
        return f"{view}, slice {index}"
    axis = FIXED_AXIS[view]
    voxel = np.zeros(4)
    voxel[axis], voxel[3] = index, 1.0
    world = float((np.asarray(affine, np.float64) @ voxel)[axis])
    return f"{view}, {WORLD_AXIS[view]} = {world:.0f} mm"


# ------------------------------------------------------------------------------------------ drawing
def new_figure(width_in: float, height_in: float, dpi: int = DPI) -> Figure:
    """An Agg figure of ``width_in * dpi`` x ``height_in * dpi`` pixels, constrained layout, white background."""
    width_in, height_in = round(width_in * dpi) / dpi, round(height_in * dpi) / dpi  # whole pixels
    fig = Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained", facecolor="white")
    fig.get_layout_engine().set(wspace=0.04, hspace=0.04)
    FigureCanvasAgg(fig)
    return fig


def draw_slice(ax: Axes, grey: np.ndarray, view: str, *, change: np.ndarray | None = None, limit: float = 1.0,
               folds: np.ndarray | None = None, letters: bool = True, fontsize: float = 10):
    """Draw one displayed slice on ``ax``: ``grey`` (rows, cols) in [0, 1] as a grey image, one voxel per square
    block; optionally ``change`` (same shape, :func:`log_volume_change`) on top in :data:`JACOBIAN_CMAP` over
    [-limit, limit] (voxels with |change| < limit / 10 left clear) and ``folds`` (bool) in :data:`FOLD_COLOUR`;
    orientation letters outside the four edges. Returns the volume-change image (for a colour bar), or None."""
    rows, cols = grey.shape
    extent = (0, cols, rows, 0)  # column j covers x in [j, j+1], row i covers y in [i, i+1] (row 0 on top)
    ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", extent=extent, aspect="equal")
    overlay = None
    if change is not None:
        shown = np.ma.masked_where(np.abs(change) < limit / 10, change)
        overlay = ax.imshow(shown, cmap=JACOBIAN_CMAP, vmin=-limit, vmax=limit, alpha=OVERLAY_ALPHA,
                            interpolation="nearest", extent=extent, aspect="equal")
    if folds is not None and folds.any():
        ax.imshow(np.ma.masked_where(~folds, np.ones(folds.shape)), cmap=ListedColormap([FOLD_COLOUR]),
                  interpolation="nearest", extent=extent, aspect="equal")
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if letters:
        left, right, bottom, top = LETTERS[view]
        style = dict(transform=ax.transAxes, fontsize=fontsize, fontweight="bold", color="0.15")
        ax.text(-0.02, 0.5, left, ha="right", va="center", **style)
        ax.text(1.02, 0.5, right, ha="left", va="center", **style)
        ax.text(0.5, -0.02, bottom, ha="center", va="top", **style)
        ax.text(0.5, 1.02, top, ha="center", va="bottom", **style)
    return overlay


def change_colorbar(fig: Figure, mappable, limit: float, *, cax: Axes | None = None, ax=None,
                    orientation: str = "vertical", fontsize: float = 9) -> Colorbar:
    """A colour bar for the log2 volume change over [-limit, limit]: ticks labelled with the log2 value and the
    volume factor, the ends labelled shrinkage (blue) and expansion (red)."""
    bar = fig.colorbar(mappable, cax=cax, ax=ax, orientation=orientation, extend="both")
    ticks = [-limit, -limit / 2, 0.0, limit / 2, limit]
    bar.set_ticks(ticks, labels=[f"{t:+.3g} (x{2.0 ** t:.2f})" if t else "0 (x1)" for t in ticks])
    bar.ax.tick_params(labelsize=fontsize)
    bar.set_label("log2 volume change, atlas vs template\n(= -log2 J; x: volume factor)", fontsize=fontsize)
    style = dict(transform=bar.ax.transAxes, fontsize=fontsize, fontweight="bold")
    if orientation == "vertical":
        bar.ax.text(0.5, 1.06, "expansion", ha="center", va="bottom", color="firebrick", **style)
        bar.ax.text(0.5, -0.06, "shrinkage", ha="center", va="top", color="navy", **style)
    else:
        bar.ax.text(1.0, 1.15, "expansion \u25b6", ha="right", va="bottom", color="firebrick", **style)
        bar.ax.text(0.0, 1.15, "\u25c0 shrinkage", ha="left", va="bottom", color="navy", **style)
    return bar


def save_png(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as a PNG at its own dpi (pixel size = figsize * dpi), atomically."""
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, facecolor="white")


# ------------------------------------------------------------------------------------------ the preview
@dataclass
class AtlasFigure:
    """A drawn preview: the figure, the plain atlas axes and the overlay axes per view, the colour bar, and the
    scales used (grey white point ``vmax`` in atlas units, colour limit ``limit`` in log2 volume change) and the
    slice ``indices``."""

    figure: Figure
    atlas_axes: dict[str, Axes]
    overlay_axes: dict[str, Axes]
    colorbar: Colorbar
    vmax: float
    limit: float
    indices: dict[str, int]


def preview_figure(atlas: np.ndarray, jacobian: np.ndarray, *, condition: Mapping[str, float] | None = None,
                   ventricle_volume_ml: float | None = None, affine: np.ndarray | None = None,
                   indices: Mapping[str, int] | None = None, limit: float | None = None,
                   width_in: float = 12.0, dpi: int = DPI) -> AtlasFigure:
    """The preview of one atlas: three planes through ``indices`` (default the grid centre), the plain atlas on the
    top row and the log2 volume change (:func:`log_volume_change`) over it on the bottom row, with a symmetric
    colour bar; the condition and the ventricle volume (mL) in the title.

    Args:
        atlas, jacobian: (D, H, W) arrays on the template grid (RAS voxel order).
        affine: 4x4 voxel -> RAS mm, for the slice positions in the titles.
        limit: colour limit in log2 volume change (default :func:`change_limit` of this atlas).
        width_in, dpi: the PNG is ``width_in * dpi`` pixels wide (1200 by default).
    """
    d, h, w = atlas.shape
    idx = {**central_indices(atlas.shape), **dict(indices or {})}
    vmax = intensity_max([atlas])
    limit = float(limit) if limit is not None else change_limit([jacobian])
    widths = [h, d, d]  # displayed widths of sagittal, coronal, axial
    height = max(w, h)
    fig = new_figure(width_in, width_in * 0.8 * 2 * height / sum(widths) + 1.3, dpi)  # rows fit the slices
    grid = fig.add_gridspec(2, 4, width_ratios=[*widths, 0.06 * sum(widths)])
    folds = jacobian <= 0
    atlas_axes, overlay_axes, overlay = {}, {}, None
    for col, view in enumerate(VIEWS):
        top, bottom = fig.add_subplot(grid[0, col]), fig.add_subplot(grid[1, col])
        grey = atlas_slice(atlas, view, idx[view], vmax)
        draw_slice(top, grey, view)
        overlay = draw_slice(bottom, grey, view, change=volume_change_slice(jacobian, view, idx[view]), limit=limit,
                             folds=display_slice(folds, view, idx[view]))
        top.set_title(slice_title(view, idx[view], affine), fontsize=10, pad=16)
        bottom.set_title(f"volume change vs template ({view})", fontsize=10, pad=16)
        atlas_axes[view], overlay_axes[view] = top, bottom
    fig.add_subplot(grid[0, 3]).axis("off")
    bar = change_colorbar(fig, overlay, limit, cax=fig.add_subplot(grid[1, 3]))
    title = "DiffDef atlas"
    if condition:
        title += f": {condition_text(condition)}"
    if ventricle_volume_ml is not None and np.isfinite(ventricle_volume_ml):
        title += f"  |  ventricles {ventricle_volume_ml:.1f} mL"
    if folds.any():
        title += f"  |  folding {100 * folds.mean():.3f} % ({FOLD_COLOUR})"
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return AtlasFigure(fig, atlas_axes, overlay_axes, bar, vmax, limit, idx)


def write_preview(path: str | Path, atlas: np.ndarray, jacobian: np.ndarray, **kwargs) -> None:
    """:func:`preview_figure` saved as a PNG at ``path`` (atomically); ``kwargs`` as for the figure."""
    save_png(preview_figure(atlas, jacobian, **kwargs).figure, path)
