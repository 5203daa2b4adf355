"""Pictures of a series of atlases (several conditions of one run): ``summary.png``, ``volumes.png`` and a
self-contained ``index.html`` beside the condition folders.

- ``summary.png``: one row per condition, the same three slices of every atlas (grey, one shared white point) and
  the same slices with the volume change against the template (one shared symmetric colour scale).
- ``volumes.png``: ventricle volume (mL) against the condition that varies (age, say), the template's marked.
- ``index.html``: both pictures, a stepper through the conditions' previews (buttons, slider, arrow keys) and a
  table of every condition with links to its files; relative links only, no script or style from the network, so
  it works opened from disk as long as the folder stays together.

``diffdef-eval`` draws its volume-against-age plot with :func:`draw_volume_curve` and :func:`mark_template_volume`
and its atlas montage with :func:`summary_figure`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colorbar import Colorbar

from diffdef_runtime import atomic
from diffdef_runtime.figures import (VIEWS, atlas_slice, central_indices, change_colorbar, change_limit,
                                     condition_text, display_slice, draw_slice, intensity_max, new_figure, save_png,
                                     slice_title, volume_change_slice)

SUMMARY, VOLUMES, INDEX = "summary.png", "volumes.png", "index.html"
#: Files of a condition folder that the page links to (those that exist).
FOLDER_FILES = ("preview.png", "atlas.nii.gz", "jacobian.nii.gz", "dvf.nii.gz", "record.json")
VOLUME_LABEL = "ventricles (mL, template space)"
AXIS_LABELS = {"age": "age (years)", "ventricle_volume_ml": "ventricle volume condition (mL)", "sex": "sex"}


# ------------------------------------------------------------------------------------------ summary.png
@dataclass
class SeriesFigure:
    """A drawn summary: the figure, per row (condition) the plain atlas axes and the volume-change axes per view,
    the shared colour bar, the shared grey white point ``vmax``, colour ``limit`` and slice ``indices``."""

    figure: object
    atlas_axes: list[dict[str, Axes]]
    overlay_axes: list[dict[str, Axes]]
    colorbar: Colorbar
    vmax: float
    limit: float
    indices: dict[str, int]


def summary_figure(atlases: Sequence[np.ndarray], jacobians: Sequence[np.ndarray], labels: Sequence[str], *,
                   affine: np.ndarray | None = None, indices: Mapping[str, int] | None = None,
                   title: str = "DiffDef atlases", width_in: float = 12.0, dpi: int = 100) -> SeriesFigure:
    """Rows = conditions: the atlas in three planes through ``indices`` (default the grid centre), then the same
    planes with the volume change against the template; one grey scale and one colour scale for all rows.

    Args:
        atlases, jacobians: (D, H, W) arrays, one per row, all on the same grid.
        labels: one text per row (condition, ventricle volume), written left of the row.
        affine: 4x4 voxel -> RAS mm, for the slice positions in the column titles.
    """
    if not (len(atlases) == len(jacobians) == len(labels)) or not atlases:
        raise ValueError("give as many atlases, jacobians and labels, at least one")
    shape = atlases[0].shape
    d, h, w = shape
    idx = {**central_indices(shape), **dict(indices or {})}
    vmax = intensity_max(atlases)
    limit = change_limit(jacobians)
    widths = [h, d, d] * 2
    row_in = width_in * 0.74 * max(w, h) / sum(widths) + 0.12  # slice height plus a little
    fig = new_figure(width_in, row_in * len(atlases) + 1.3, dpi)
    grid = fig.add_gridspec(len(atlases) + 1, 6, width_ratios=widths,
                            height_ratios=[max(w, h)] * len(atlases) + [0.12 * max(w, h)])
    atlas_axes, overlay_axes, overlay = [], [], None
    for row, (atlas, jacobian, label) in enumerate(zip(atlases, jacobians, labels)):
        plain, over = {}, {}
        for col, view in enumerate(VIEWS):
            grey = atlas_slice(atlas, view, idx[view], vmax)
            plain[view] = fig.add_subplot(grid[row, col])
            over[view] = fig.add_subplot(grid[row, col + 3])
            first = row == 0
            draw_slice(plain[view], grey, view, letters=first, fontsize=8)
            overlay = draw_slice(over[view], grey, view, change=volume_change_slice(jacobian, view, idx[view]),
                                 limit=limit, folds=display_slice(jacobian <= 0, view, idx[view]), letters=first,
                                 fontsize=8)
            if first:
                plain[view].set_title(slice_title(view, idx[view], affine), fontsize=9, pad=12)
                over[view].set_title(f"volume change ({view})", fontsize=9, pad=12)
        plain["sagittal"].text(-0.08, 0.5, label, transform=plain["sagittal"].transAxes, rotation=90, ha="right",
                               va="center", fontsize=9, fontweight="bold")
        atlas_axes.append(plain)
        overlay_axes.append(over)
    bar = change_colorbar(fig, overlay, limit, cax=fig.add_subplot(grid[-1, 3:]), orientation="horizontal",
                          fontsize=8)
    fig.suptitle(f"{title}: same slices, shared grey and colour scales", fontsize=12, fontweight="bold")
    return SeriesFigure(fig, atlas_axes, overlay_axes, bar, vmax, limit, idx)


# ------------------------------------------------------------------------------------------ volumes.png
@dataclass(frozen=True)
class SeriesAxis:
    """What the x axis of a series shows: ``name`` of the condition that varies (``"condition"`` when none or
    several do), its ``values`` per atlas, the axis ``label`` and tick texts (``ticks``) for categorical axes."""

    name: str
    values: list[float]
    label: str
    ticks: list[str] | None = None


def series_axis(conditions: Sequence[Mapping[str, float]]) -> SeriesAxis:
    """The x axis for atlases of ``conditions``: the one condition that varies (age, ventricles: numeric; sex: F/M
    ticks), else the atlas number with each condition written as its tick."""
    names = list(conditions[0]) if conditions else []
    varying = [n for n in names if len({float(c[n]) for c in conditions}) > 1]
    if len(varying) == 1 and varying[0] != "sex":
        name = varying[0]
        return SeriesAxis(name, [float(c[name]) for c in conditions], AXIS_LABELS.get(name, name))
    return SeriesAxis("condition", [float(i) for i in range(len(conditions))], "condition",
                      [condition_text(c).replace(", ", "\n") for c in conditions])


def draw_volume_curve(ax: Axes, x: Sequence[float], volumes_ml: Sequence[float], *, label: str, **style) -> None:
    """Ventricle volume (mL) against ``x`` as a line with markers (``style`` goes to ``Axes.plot``)."""
    ax.plot(x, volumes_ml, **{"marker": "o", "lw": 2, "ms": 5, **style}, label=label)


def mark_template_volume(ax: Axes, volume_ml: float, label: str = "template (MNI152)") -> None:
    """The template's ventricle volume as a dashed horizontal line, its value in the legend label."""
    ax.axhline(volume_ml, color="tab:gray", ls="--", lw=1.5, label=f"{label}: {volume_ml:.1f} mL")


def volumes_figure(conditions: Sequence[Mapping[str, float]], volumes_ml: Sequence[float], *,
                   template_ml: float | None = None, title: str = "DiffDef atlases", width_in: float = 8.0,
                   height_in: float = 5.0, dpi: int = 100):
    """Ventricle volume of each atlas against the condition that varies (:func:`series_axis`), the template's
    value as a dashed line; a condition on ventricle volume also gets the requested volume (dotted). Returns
    the figure (``width_in * dpi`` x ``height_in * dpi`` pixels)."""
    fig = new_figure(width_in, height_in, dpi)
    ax = fig.add_subplot()
    axis = series_axis(conditions)
    draw_volume_curve(ax, axis.values, volumes_ml, label="atlas", color="tab:blue")
    for x, y in zip(axis.values, volumes_ml):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    if axis.name == "ventricle_volume_ml":
        ax.plot(axis.values, axis.values, ls=":", color="k", label="requested volume")
    if template_ml is not None and np.isfinite(template_ml):
        mark_template_volume(ax, template_ml)
    if axis.ticks is not None:
        ax.set_xticks(axis.values, axis.ticks, fontsize=8)
    ax.set_xlabel(axis.label)
    ax.set_ylabel(VOLUME_LABEL)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(f"{title}: ventricle volume", fontsize=12, fontweight="bold")
    return fig


# ------------------------------------------------------------------------------------------ index.html
def _page(entries: list[dict], meta: Mapping[str, str]) -> str:
    """The HTML of ``index.html``: ``entries`` have ``label``, ``folder``, ``volume``, ``files`` (relative paths)."""
    esc = html.escape
    steps, rows = [], []
    for i, e in enumerate(entries):
        links = " ".join(f'<a href="{esc(e["folder"])}/{esc(f)}">{esc(f)}</a>' for f in e["files"])
        preview = f'{e["folder"]}/preview.png'
        steps.append(f'<figure class="step" id="step-{i}"><figcaption>{esc(e["label"])}: ventricles '
                     f'{e["volume"]:.1f} mL ({i + 1} of {len(entries)})</figcaption>'
                     f'<img src="{esc(preview)}" alt="preview of {esc(e["label"])}"><p>{links}</p></figure>')
        rows.append(f'<tr><td>{i + 1}</td><td><a href="#step-{i}" data-step="{i}">{esc(e["label"])}</a></td>'
                    f'<td>{e["volume"]:.1f}</td><td>{links}</td></tr>')
    info = "".join(f"<li>{esc(k)}: {esc(str(v))}</li>" for k, v in meta.items())
    return f"""<!DOCTYPE html>
<html lang="en" class="no-js"><head><meta charset="utf-8">
<title>DiffDef atlases ({len(entries)} conditions)</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 1250px; }}
img {{ max-width: 100%; }} table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; text-align: left; }}
tr:nth-child(even) {{ background: #f2f2f2; }} .controls {{ margin: 0.6em 0; }} .controls input {{ width: 50%; }}
.js .step {{ display: none; }} .js .step.current {{ display: block; }} .no-js .controls {{ display: none; }}
figcaption {{ font-weight: bold; font-size: 1.1em; }}
</style></head><body>
<h1>DiffDef atlases: {len(entries)} conditions</h1>
<ul>{info}</ul>
<h2>Step through the conditions</h2>
<div class="controls"><button id="prev">&#9664; previous</button>
<input type="range" id="slider" min="0" max="{len(entries) - 1}" value="0" aria-label="condition">
<button id="next">next &#9654;</button> (or the arrow keys)</div>
{chr(10).join(steps)}
<h2>All conditions</h2>
<img src="{SUMMARY}" alt="summary: every condition, same slices">
<h2>Ventricle volume</h2>
<img src="{VOLUMES}" alt="ventricle volume against the condition">
<h2>Files</h2>
<table><tr><th>#</th><th>condition</th><th>ventricles (mL)</th><th>files</th></tr>
{chr(10).join(rows)}
</table>
<script>
document.documentElement.className = "js";
var steps = document.querySelectorAll(".step"), slider = document.getElementById("slider"), current = 0;
function show(i) {{
  current = Math.max(0, Math.min(steps.length - 1, i));
  steps.forEach(function (s, k) {{ s.classList.toggle("current", k === current); }});
  slider.value = current;
}}
document.getElementById("prev").onclick = function () {{ show(current - 1); }};
document.getElementById("next").onclick = function () {{ show(current + 1); }};
slider.oninput = function () {{ show(parseInt(slider.value, 10)); }};
document.addEventListener("keydown", function (e) {{
  if (e.key === "ArrowLeft") show(current - 1);
  if (e.key === "ArrowRight") show(current + 1);
}});
document.querySelectorAll("a[data-step]").forEach(function (a) {{
  a.onclick = function () {{ show(parseInt(a.getAttribute("data-step"), 10)); }};
}});
show(0);
</script>
</body></html>
"""


# ------------------------------------------------------------------------------------------ all of it
@dataclass(frozen=True)
class SeriesFiles:
    """Paths written by :func:`write_series`."""

    summary: Path
    volumes: Path
    index: Path


def write_series(results: Sequence, out_dir: str | Path, folders: Sequence[str | Path] | None = None, *,
                 template_ventricle_ml: float | None = None, affine: np.ndarray | None = None,
                 meta: Mapping[str, str] | None = None) -> SeriesFiles:
    """Write ``summary.png``, ``volumes.png`` and ``index.html`` for ``results`` (``AtlasResult``\\ s, in order)
    into ``out_dir``, whose sub-folders ``folders`` (default: each result's ``condition_label``) hold each
    condition's files. Each file is written atomically; a later series in the same ``out_dir`` replaces them."""
    from diffdef_runtime.outputs import condition_label

    out = Path(out_dir)
    names = [Path(f).name for f in folders] if folders is not None else [condition_label(r.condition) for r in results]
    if len(names) != len(results):
        raise ValueError(f"{len(results)} results but {len(names)} folders")
    labels = [f"{condition_text(r.condition)}\n{r.ventricle_volume_ml:.1f} mL" for r in results]
    fig = summary_figure([r.atlas for r in results], [r.jacobian for r in results], labels, affine=affine).figure
    save_png(fig, out / SUMMARY)
    save_png(volumes_figure([r.condition for r in results], [r.ventricle_volume_ml for r in results],
                            template_ml=template_ventricle_ml), out / VOLUMES)
    entries = [{"label": condition_text(r.condition), "folder": name, "volume": float(r.ventricle_volume_ml),
                "files": [f for f in FOLDER_FILES if (out / name / f).is_file()]} for r, name in zip(results, names)]
    first = results[0]
    info = {"atlases": len(results), "seed": first.seed, "steps": first.steps, "sampler": first.sampler,
            "samples per condition": first.samples, "guidance": first.guidance, "backend": first.backend}
    if template_ventricle_ml is not None:
        info["template ventricles"] = f"{template_ventricle_ml:.1f} mL"
    info.update(meta or {})
    atomic.write_text(out / INDEX, _page(entries, info))
    return SeriesFiles(out / SUMMARY, out / VOLUMES, out / INDEX)
