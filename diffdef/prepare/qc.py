"""Quality control: figures of one prepared subject, the bounds they must meet, pictures and ``qc.html``.

Figures (all in template space, on the output grid):
    ``qc_brain_dice``  Dice of the resampled subject brain mask with the template's brain mask;
    ``qc_ncc``         normalised cross-correlation of the prepared image with the template T1 inside the
                       union of both masks;
    ``qc_scale_min``/``qc_scale_max``  singular values of the 3x3 linear part of the subject -> template
                       affine (RAS mm): how much the subject's head is stretched to fit the template;
    ``qc_det``         its determinant (template-space volume / native volume).

The bounds (:data:`BOUNDS`) and why they are what they are: ``docs/PREPARE.md``.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MIN_BRAIN_DICE = 0.85  # good IXI registrations measure 0.93-0.95; a brain thrown off the template < 0.7
MIN_NCC = 0.4  # good IXI registrations measure 0.65-0.71 (2 mm); noise or a wrong contrast is near 0
SCALE_RANGE = (0.75, 1.6)  # each axis: IXI measures 0.95-1.25 (the MNI152 head is larger than most)
DET_RANGE = (0.6, 3.0)  # IXI measures about 1.1-1.8; a mirrored (negative) or collapsed affine fails

BOUNDS = {
    "qc_brain_dice": (MIN_BRAIN_DICE, None),
    "qc_ncc": (MIN_NCC, None),
    "qc_scale_min": SCALE_RANGE,
    "qc_scale_max": SCALE_RANGE,
    "qc_det": DET_RANGE,
}
QC_COLUMNS = tuple(BOUNDS)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 0.0


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x, y = np.asarray(a, np.float64)[mask], np.asarray(b, np.float64)[mask]
    if x.size < 2:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def qc_figures(image: np.ndarray, mask: np.ndarray, template, subject_to_template: np.ndarray) -> dict[str, float]:
    """The QC figures (see the module docstring); ``subject_to_template`` is the 4x4 RAS matrix."""
    linear = np.asarray(subject_to_template, dtype=np.float64)[:3, :3]
    scales = np.linalg.svd(linear, compute_uv=False)
    union = np.logical_or(mask, template.brain_mask)
    return {
        "qc_brain_dice": round(dice(mask, template.brain_mask), 4),
        "qc_ncc": round(ncc(image, template.t1, union), 4),
        "qc_scale_min": round(float(scales.min()), 4),
        "qc_scale_max": round(float(scales.max()), 4),
        "qc_det": round(float(np.linalg.det(linear)), 4),
    }


def check_bounds(figures: dict[str, float], bounds: dict = BOUNDS) -> str:
    """``""`` when every figure is inside its bound, else the reasons (``"qc_brain_dice 0.71 < 0.85; ..."``)."""
    reasons = []
    for name, (low, high) in bounds.items():
        value = figures.get(name)
        if value is None or not np.isfinite(value):
            reasons.append(f"{name} is missing")
        elif low is not None and value < low:
            reasons.append(f"{name} {value:.3f} < {low}")
        elif high is not None and value > high:
            reasons.append(f"{name} {value:.3f} > {high}")
    return "; ".join(reasons)


def qc_picture(path: str | Path, image: np.ndarray, template, title: str = "") -> None:
    """A PNG: three orthogonal slices through the grid's centre, image in grey, template brain outline."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from diffdef_runtime.atomic import atomic_path

    centre = [s // 2 for s in image.shape]
    outline = template.brain_mask.astype(np.float32)
    vmax = float(np.percentile(image[image > 0], 99.5)) if np.any(image > 0) else 1.0
    views = [
        ("sagittal", image[centre[0]], outline[centre[0]]),
        ("coronal", image[:, centre[1]], outline[:, centre[1]]),
        ("axial", image[:, :, centre[2]], outline[:, :, centre[2]]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4), dpi=80)
    for ax, (name, img, out) in zip(axes, views):
        ax.imshow(img.T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
        ax.contour(out.T, levels=[0.5], colors="r", linewidths=0.8)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_qc_html(path: str | Path, records: list[dict]) -> None:
    """One page for the cohort: id, age, QC figures, pass/fail with the reason, a link to each picture."""
    from diffdef_runtime.atomic import write_text

    path = Path(path)
    passed = sum(1 for r in records if r.get("status") == "ok")
    names = ("id", "age", "split", *QC_COLUMNS, "status", "reason", "picture")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in names)
    rows = []
    for record in sorted(records, key=lambda r: (r.get("status") == "ok", str(r["id"]))):
        qc = record.get("qc") or {}
        cells = [html.escape(str(record["id"])), _fmt(record.get("age")), html.escape(str(record.get("split") or ""))]
        cells += [_fmt(qc.get(c)) for c in QC_COLUMNS]
        ok = record.get("status") == "ok"
        cells.append(f'<b style="color:{"green" if ok else "red"}">{"pass" if ok else "FAIL"}</b>')
        cells.append(html.escape(record.get("reason") or ""))
        picture = record.get("qc_picture")
        if picture and (path.parent / picture).exists():
            link = html.escape(os.fspath(picture))
            cells.append(f'<a href="{link}"><img src="{link}" height="60"></a>')
        else:
            cells.append("")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    bounds = ", ".join(f"{k} in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                       for k, (lo, hi) in BOUNDS.items())
    text = (
        "<!doctype html><html><head><meta charset='utf-8'><title>diffdef-prepare QC</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 6px;border-bottom:1px solid #ddd;font-size:12px}"
        "</style></head><body>"
        f"<h1>diffdef-prepare QC</h1><p>{passed} of {len(records)} subjects passed. Bounds: {html.escape(bounds)}."
        " Failures first.</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table></body></html>\n"
    )
    write_text(path, text)


def _fmt(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return html.escape(str(value))
