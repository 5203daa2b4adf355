"""Writing a generated atlas: NIfTI files on the template affine, a PNG preview and a JSON record.

A condition's folder belongs to one run: it is written into a hidden sibling and renamed into place whole
(``atomic.atomic_folder``), so it is absent or complete, never a mix of two runs. ``record.json`` holds the
run id and the sha256 of every other file of the folder, and each NIfTI's ``descrip`` names the run id too.
Folder names are exact: two different conditions never share a folder.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from diffdef_runtime import atomic
from diffdef_runtime.hashing import sha256_file
from diffdef_runtime.pipeline import AtlasResult

NIFTI_FILES = ("atlas.nii.gz", "dvf.nii.gz", "jacobian.nii.gz")


def new_run_id() -> str:
    """16 random hex digits: names one run in record.json, NIfTI headers and the output lock."""
    return uuid.uuid4().hex[:16]


def _number(value: float) -> str:
    """``%g`` when it reads back as the same float (70, 70.5), else the exact shortest repr (70.000001)."""
    text = f"{value:g}"
    return text if float(text) == float(value) else repr(float(value))


def condition_label(condition: dict[str, float]) -> str:
    """Folder name of a condition: ``age-70``, ``age-70.5_sex-M``, ``age-70.000001``: distinct for distinct
    values (a name reads back to its exact float)."""
    parts = []
    for name, value in condition.items():
        if name == "sex":
            text = "M" if value >= 0.5 else "F"
        else:
            text = _number(value)
        short = {"ventricle_volume_ml": "vent"}.get(name, name)
        parts.append(f"{short}-{text}")
    return "_".join(parts)


def duplicate_labels(conditions: list[dict[str, float]]) -> list[str]:
    """Folder names that more than one of ``conditions`` would write (the same condition asked twice)."""
    labels = [condition_label(c) for c in conditions]
    return sorted({label for label in labels if labels.count(label) > 1})


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, description: str, intent: str | None = None) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header["descrip"] = description.encode()[:79]
    image.header.set_xyzt_units("mm")
    if intent is not None:
        image.header.set_intent(intent)
    nib.save(image, str(path))  # inside the run's staging folder: the folder is renamed into place whole


def _jacobian_colours(jac: np.ndarray) -> np.ndarray:
    """log2 J mapped to a blue (shrink) - white - red (growth) scale, saturating at x0.5 / x2: (..., 3) uint8."""
    x = np.clip(np.log2(np.clip(jac, 1e-3, None)), -1.0, 1.0)
    rgb = np.empty((*x.shape, 3), dtype=np.float64)
    rgb[..., 0] = np.where(x < 0, 1 + x, 1.0)
    rgb[..., 1] = 1 - np.abs(x)
    rgb[..., 2] = np.where(x > 0, 1 - x, 1.0)
    rgb[jac <= 0] = (0.0, 0.0, 0.0)  # folds in black
    return (rgb * 255).astype(np.uint8)


def preview_image(atlas: np.ndarray, jacobian: np.ndarray) -> Image.Image:
    """Three orthogonal central slices (sagittal, coronal, axial) of the atlas above the same slices of the
    Jacobian determinant (blue shrink, red growth, black folds). Sagittal and coronal slices have superior up, the axial slice anterior up."""
    d, h, w = atlas.shape
    scale = float(np.percentile(atlas, 99.5)) or 1.0
    gray = (np.clip(atlas / scale, 0, 1) * 255).astype(np.uint8)
    colours = _jacobian_colours(jacobian)
    slices = [lambda a: np.swapaxes(a[d // 2], 0, 1)[::-1], lambda a: np.swapaxes(a[:, h // 2], 0, 1)[::-1],
              lambda a: np.swapaxes(a[:, :, w // 2], 0, 1)[::-1]]
    top = [np.repeat(f(gray)[..., None], 3, axis=-1) for f in slices]
    bottom = [f(colours) for f in slices]
    height = max(p.shape[0] for p in top)

    def row(panels):
        padded = [np.pad(p, ((0, height - p.shape[0]), (0, 2), (0, 0))) for p in panels]
        return np.concatenate(padded, axis=1)

    canvas = np.concatenate([row(top), np.zeros((2, row(top).shape[1], 3), np.uint8), row(bottom)], axis=0)
    return Image.fromarray(canvas, mode="RGB")


def write_result(result: AtlasResult, affine: np.ndarray, out_dir: str | Path, extra: dict | None = None,
                 run_id: str | None = None) -> Path:
    """Write one condition's files into ``out_dir/<condition label>/`` (replaced whole); returns that folder.

    Files: atlas.nii.gz (float32), dvf.nii.gz ((D, H, W, 1, 3) float32, NIfTI vector intent, voxels along
    D, H, W), jacobian.nii.gz (float32), preview.png, record.json (with ``run_id`` and ``files``: name ->
    sha256 of the four other files). Each NIfTI's ``descrip`` ends with ``run <run_id>``. Callers that write
    several folders pass one ``run_id`` (default: a new one) and hold the folder's lock (``outlock``).
    """
    run_id = run_id or new_run_id()
    folder = Path(out_dir) / condition_label(result.condition)
    with atomic.atomic_folder(folder, tag=run_id) as staging:
        _save_nifti(result.atlas.astype(np.float32), affine, staging / "atlas.nii.gz", f"DiffDef atlas; run {run_id}")
        dvf = np.moveaxis(result.dvf.astype(np.float32), 0, -1)[:, :, :, None, :]
        _save_nifti(dvf, affine, staging / "dvf.nii.gz", f"DiffDef DVF, voxels along D,H,W; run {run_id}",
                    intent="vector")
        _save_nifti(result.jacobian.astype(np.float32), affine, staging / "jacobian.nii.gz",
                    f"Jacobian determinant; run {run_id}")
        preview_image(result.atlas, result.jacobian).save(staging / "preview.png", format="PNG")
        record = {k: v for k, v in asdict(result).items() if k not in ("atlas", "dvf", "jacobian")}
        record["folding_ratio"] = float((result.jacobian <= 0).mean())
        record["jacobian_range"] = [float(result.jacobian.min()), float(result.jacobian.max())]
        record.update(extra or {})
        record["run_id"] = run_id
        record["files"] = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
        (staging / "record.json").write_text(json.dumps(_finite(record), indent=2, sort_keys=True) + "\n")
    return folder


def check_folder(folder: str | Path) -> str:
    """The run id of a condition folder after checking that every file is the one its record.json lists
    (sha256) and that each NIfTI names that run; ValueError naming the first file that does not belong."""
    folder = Path(folder)
    record = load_record(folder)
    run_id = record["run_id"]
    on_disk = sorted(p.name for p in folder.iterdir() if p.name != "record.json")
    if on_disk != sorted(record["files"]):
        raise ValueError(f"{folder}: files {on_disk}, record.json lists {sorted(record['files'])}")
    for name, digest in record["files"].items():
        if sha256_file(folder / name) != digest:
            raise ValueError(f"{folder / name} is not the file run {run_id} wrote (sha256 differs)")
    for name in NIFTI_FILES:
        descrip = np.asarray(nib.load(str(folder / name)).header["descrip"]).item().decode()
        if not descrip.endswith(f"run {run_id}"):
            raise ValueError(f"{folder / name} names {descrip!r}, record.json run {run_id}")
    return run_id


def _finite(obj):
    """JSON cannot hold NaN: replace non-finite floats by None (recursively)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def load_record(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "record.json").read_text())
