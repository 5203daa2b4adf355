"""Writing a generated atlas: NIfTI files on the template affine, a PNG preview (``figures.py``) and a JSON record.

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

from diffdef_runtime import atomic
from diffdef_runtime.figures import write_preview
from diffdef_runtime.hashing import sha256_file
from diffdef_runtime.nifti import save_nifti
from diffdef_runtime.pipeline import AtlasResult

OUTPUTS = ("atlas", "dvf", "jacobian", "preview")  # what a condition folder can hold besides record.json
NIFTI_OUTPUTS = ("atlas", "dvf", "jacobian")


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


def output_names(outputs: tuple[str, ...] | list[str], compress: bool = True) -> dict[str, str]:
    """File name of each chosen output: ``atlas.nii.gz`` (``atlas.nii`` without ``compress``), ``preview.png``."""
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown or not outputs:
        raise ValueError(f"outputs must be a non-empty subset of {list(OUTPUTS)}, got {list(outputs)}")
    ext = ".nii.gz" if compress else ".nii"
    return {name: f"{name}{ext}" if name in NIFTI_OUTPUTS else f"{name}.png" for name in OUTPUTS if name in outputs}


def write_result(result: AtlasResult, affine: np.ndarray, out_dir: str | Path, extra: dict | None = None,
                 run_id: str | None = None, outputs: tuple[str, ...] = OUTPUTS, compress: bool = True) -> Path:
    """Write one condition's files into ``out_dir/<condition label>/`` (replaced whole); returns that folder.

    ``outputs`` (a subset of ``OUTPUTS``): atlas (float32), dvf ((D, H, W, 1, 3) float32, NIfTI vector intent,
    voxels along D, H, W), jacobian (float32), preview.png; NIfTIs gzip level 1 (``compress``) or ``.nii``.
    record.json always, with ``run_id`` and ``files`` (name -> sha256 of the other files). Each NIfTI's
    ``descrip`` ends with ``run <run_id>``. Callers that write several folders pass one ``run_id`` (default: a new
    one) and hold the folder's lock (``outfolder``).
    """
    names = output_names(outputs, compress)
    run_id = run_id or new_run_id()
    folder = Path(out_dir) / condition_label(result.condition)
    with atomic.atomic_folder(folder, tag=run_id) as staging:
        if "atlas" in names:
            save_nifti(result.atlas.astype(np.float32), affine, staging / names["atlas"], f"DiffDef atlas; run {run_id}")
        if "dvf" in names:
            dvf = np.moveaxis(result.dvf.astype(np.float32), 0, -1)[:, :, :, None, :]
            save_nifti(dvf, affine, staging / names["dvf"], f"DiffDef DVF, voxels along D,H,W; run {run_id}",
                       intent="vector")
        if "jacobian" in names:
            save_nifti(result.jacobian.astype(np.float32), affine, staging / names["jacobian"],
                       f"Jacobian determinant; run {run_id}")
        if "preview" in names:
            write_preview(staging / names["preview"], result.atlas, result.jacobian, condition=result.condition,
                          ventricle_volume_ml=result.ventricle_volume_ml, affine=affine)
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
    for name in (n for n in record["files"] if n.endswith((".nii", ".nii.gz"))):
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
