"""Writing a generated atlas: NIfTI files on the template affine, a PNG preview (``figures.py``) and a JSON record."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np

from diffdef_runtime import atomic
from diffdef_runtime.figures import write_preview
from diffdef_runtime.pipeline import AtlasResult


def condition_label(condition: dict[str, float]) -> str:
    """Folder name of a condition: ``age-70``, ``age-70.5_sex-M``."""
    parts = []
    for name, value in condition.items():
        if name == "sex":
            text = "M" if value >= 0.5 else "F"
        else:
            text = f"{value:g}"
        short = {"ventricle_volume_ml": "vent"}.get(name, name)
        parts.append(f"{short}-{text}")
    return "_".join(parts)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, description: str, intent: str | None = None) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header["descrip"] = description.encode()[:79]
    image.header.set_xyzt_units("mm")
    if intent is not None:
        image.header.set_intent(intent)
    with atomic.atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(image, str(tmp))


def write_result(result: AtlasResult, affine: np.ndarray, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write one condition's files into ``out_dir/<condition label>/``; returns that folder.

    Files: atlas.nii.gz (float32), dvf.nii.gz ((D, H, W, 1, 3) float32, NIfTI vector intent, voxels along
    D, H, W), jacobian.nii.gz (float32), preview.png, record.json.
    """
    folder = Path(out_dir) / condition_label(result.condition)
    folder.mkdir(parents=True, exist_ok=True)
    _save_nifti(result.atlas.astype(np.float32), affine, folder / "atlas.nii.gz", "DiffDef atlas")
    dvf = np.moveaxis(result.dvf.astype(np.float32), 0, -1)[:, :, :, None, :]
    _save_nifti(dvf, affine, folder / "dvf.nii.gz", "DiffDef DVF, voxels along D,H,W", intent="vector")
    _save_nifti(result.jacobian.astype(np.float32), affine, folder / "jacobian.nii.gz", "Jacobian determinant")
    write_preview(folder / "preview.png", result.atlas, result.jacobian, condition=result.condition,
                  ventricle_volume_ml=result.ventricle_volume_ml, affine=affine)
    record = {k: v for k, v in asdict(result).items() if k not in ("atlas", "dvf", "jacobian")}
    record["folding_ratio"] = float((result.jacobian <= 0).mean())
    record["jacobian_range"] = [float(result.jacobian.min()), float(result.jacobian.max())]
    record.update(extra or {})
    atomic.write_json(folder / "record.json", _finite(record))
    return folder


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
