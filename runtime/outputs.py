"""Writing a generated atlas: NIfTI files on the template affine, a PNG preview and a JSON record."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from diffdef_runtime import atomic
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
    with atomic.atomic_path(folder / "preview.png", suffix=".png") as tmp:
        preview_image(result.atlas, result.jacobian).save(tmp, format="PNG")
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
