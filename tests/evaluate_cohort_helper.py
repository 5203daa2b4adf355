"""Hand-made prepared cohorts for the diffdef-eval tests: template-derived images and labels on the 4mm grid."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np

COLUMNS = ("id", "path", "labels", "age", "sex", "split")

# (id, age, sex, split, shift in voxels along (D, H, W))
SUBJECTS = (
    ("s1", 30.0, "F", "train", (0, 0, 0)),
    ("s2", 33.0, "M", "train", (1, 0, 0)),
    ("s3", 64.0, "F", "train", (0, 1, 0)),
    ("s4", 68.0, "M", "train", (0, 0, 1)),
    ("t1", 31.0, "M", "test", (0, 0, 0)),
    ("t2", 66.0, "F", "test", (1, 1, 0)),
)


def _save(array, affine, path: Path) -> None:
    nib.save(nib.Nifti1Image(np.asarray(array), np.asarray(affine, np.float64)), str(path))


def write_cohort(folder: Path, subjects=SUBJECTS, columns=COLUMNS, grid: str = "4mm") -> Path:
    """Write images, labels (diffdef scheme) and ``manifest.csv`` (relative paths) under ``folder``."""
    from diffdef.template import load_template

    template = load_template(grid)
    folder = Path(folder)
    (folder / "subjects").mkdir(parents=True, exist_ok=True)
    rows = []
    for sid, age, sex, split, shift in subjects:
        image = np.roll(template.t1, shift, axis=(0, 1, 2)).astype(np.float32)
        labels = np.roll(template.labels, shift, axis=(0, 1, 2)).astype(np.uint8)
        _save(image, template.affine, folder / "subjects" / f"{sid}_T1w.nii.gz")
        _save(labels, template.affine, folder / "subjects" / f"{sid}_labels.nii.gz")
        row = {"id": sid, "path": f"subjects/{sid}_T1w.nii.gz", "labels": f"subjects/{sid}_labels.nii.gz",
               "age": age, "sex": sex, "split": split}
        rows.append({k: v for k, v in row.items() if k in columns})
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"
