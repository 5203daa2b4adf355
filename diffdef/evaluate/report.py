"""Outputs of ``diffdef-eval``: the terminal table, ``per_subject.csv``, ``per_bin.csv``, ``summary.json`` and the
plots (matplotlib Agg; the volume curve and the atlas montage with the runtime's figure functions), all written
into one output folder that appears atomically (:func:`output_folder`)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from diffdef.evaluate.atlases import LINEAR, TEMPLATE
from diffdef.evaluate.cohort import decade_label
from diffdef.evaluate.scores import CLASSES
from diffdef_runtime import atomic

NOT_JSON = ("rows", "curve_atlases")  # per_subject.csv; arrays for the atlas montage
SHORT = {"lateral_ventricles": "LV", "ventricles": "vent", "csf": "CSF", "gm": "GM", "wm": "WM"}


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite`` (checked before any work)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out`` in one rename (never two runs mixed)."""
    out = Path(out).absolute()
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            check_output(out, overwrite)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")  # move the old run aside, then the new one into place
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic.write_text(path, buffer.getvalue())


def write_json(path: Path, obj) -> None:
    atomic.write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n")


def table(result: dict) -> str:
    """Methods x Dice classes (means) per protocol, the volume figures, and the paired lines."""
    lines = []
    rows = result["rows"]
    for protocol in result["protocols"]:
        lines.append(f"Dice after {protocol} alignment (mean over {result['counts']['test']} held-out subjects)")
        header = f"{'method':<18}" + "".join(f"{SHORT[c]:>8}" for c in CLASSES) + f"{'LV mL':>9}{'|err|':>8}{'rho':>7}"
        lines.append(header)
        for m in result["methods"]:
            group = [r for r in rows if r["method"] == m]
            dice = "".join(f"{np.mean([r[f'dice_{protocol}_{c}'] for r in group]):8.3f}" for c in CLASSES)
            rho = result["spearman"].get(m)
            lines.append(f"{m:<18}{dice}{np.mean([r['atlas_vent_ml'] for r in group]):9.1f}"
                         f"{np.mean([r['vent_abs_error_ml'] for r in group]):8.1f}"
                         f"{(f'{rho:7.2f}' if rho is not None else '      -')}")
        lines.append("")
    if result["paired"]:
        lines.append("model vs baseline, per class: wins/ties/losses, mean Dice difference, Wilcoxon p (two-sided)")
        for p in result["paired"]:
            pv = "-" if p["wilcoxon_p"] is None else f"{p['wilcoxon_p']:.3g}"
            lines.append(f"  vs {p['baseline']:<16}{p['protocol']:<11}{SHORT[p['class']]:<5}"
                         f"{p['wins']:>4}/{p['ties']}/{p['losses']:<4} {p['mean_diff']:+.4f}  p={pv}")
    for protocol, fraction in result.get("model_beats_template_lv", {}).items():
        lines.append(f"model beats the template on lateral-ventricle Dice ({protocol}): {100 * fraction:.0f}% of subjects")
    return "\n".join(lines)


def plot_volumes(path: Path, result: dict) -> None:
    """:func:`volumes_figure` as a PNG."""
    from diffdef_runtime.figures import save_png

    save_png(volumes_figure(result), path)


def volumes_figure(result: dict):
    """Lateral-ventricle volume against age: subjects as dots, each model's curve and the template's value drawn
    with the runtime's volume-plot functions (:mod:`diffdef_runtime.series`), the linear average as steps."""
    from diffdef_runtime.figures import new_figure
    from diffdef_runtime.series import draw_volume_curve, mark_template_volume

    fig = new_figure(7, 4.5, dpi=120)
    ax = fig.add_subplot()
    vols = result["training_volumes"]
    for split, style in (("train", dict(c="0.7", s=12, label="training subjects")),
                         ("test", dict(c="k", s=16, label="held-out subjects"))):
        pts = [(v["age"], v["vent_ml"]) for v in vols if v["split"] == split]
        if pts:
            ax.scatter(*zip(*pts), **style)
    for i, (name, curve) in enumerate(result["curves"].items()):
        if not curve["ages"]:
            continue
        if name == TEMPLATE:
            mark_template_volume(ax, curve["ventricle_ml"][0], label="template")
        elif name == LINEAR:
            ax.step(curve["ages"], curve["ventricle_ml"], where="mid", color="k", ls=":", label="linear average")
        else:
            draw_volume_curve(ax, curve["ages"], curve["ventricle_ml"], label=f"{name} atlas", color=f"C{i}", ms=3)
    ax.set_xlabel("age (years)")
    ax.set_ylabel("lateral ventricles (mL, template space)")
    ax.legend(fontsize=8)
    return fig


def plot_atlases(path: Path, result: dict) -> bool:
    """The model's atlases at the curve ages, drawn by the runtime's series montage
    (:func:`diffdef_runtime.series.summary_figure`: same slices, shared scales, orientation letters). Returns
    whether there was anything to draw (a model without an age condition has no curve)."""
    from diffdef_runtime.figures import save_png
    from diffdef_runtime.series import summary_figure

    montage = result.get("curve_atlases")
    if not montage or not montage["images"]:
        return False
    labels = [f"age {a:g} y\n{v:.1f} mL" for a, v in zip(montage["ages"], montage["ventricle_ml"])]
    drawn = summary_figure(montage["images"], montage["jacobians"], labels, affine=montage["affine"],
                           title="Model atlases along the volume curve")
    save_png(drawn.figure, path)
    return True


def plot_dice_bins(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    bins = result["bins"]
    for ax, cls in zip(axes, ("lateral_ventricles", "csf")):
        for protocol, ls in (("affine", "-"), ("deformable", "--")):
            if protocol not in result["protocols"]:
                continue
            for i, m in enumerate(result["methods"]):
                pts = [(b["decade"], b.get(f"mean_dice_{protocol}_{cls}")) for b in bins if b["method"] == m]
                if pts:
                    x, y = zip(*pts)
                    ax.plot(x, y, ls=ls, marker="o", color=f"C{i}", label=f"{m} ({protocol})")
        decades = sorted({b["decade"] for b in bins})
        ax.set_xticks(decades, [decade_label(d) for d in decades])
        ax.set_title(f"{SHORT[cls]} Dice per decade")
        ax.set_xlabel("age bin")
    axes[0].set_ylabel("Dice")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_all(folder: Path, result: dict, meta: dict) -> None:
    write_csv(folder / "per_subject.csv", result["rows"])
    write_csv(folder / "per_bin.csv", result["bins"])
    write_json(folder / "summary.json", {**meta, **{k: v for k, v in result.items() if k not in NOT_JSON},
                                         "table": table(result).splitlines()})
    plot_volumes(folder / "ventricle_volume_vs_age.png", result)
    plot_atlases(folder / "atlases_by_age.png", result)
    plot_dice_bins(folder / "dice_per_bin.png", result)


def method_means(result: dict) -> dict:
    """Per method, the mean of every numeric per-subject figure (NaN-safe)."""
    out = {}
    for m in result["methods"]:
        group = [r for r in result["rows"] if r["method"] == m]
        keys = [k for k, v in group[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)] if group else []
        out[m] = {k: float(np.nanmean([r[k] for r in group if k in r])) for k in keys}
    return out
