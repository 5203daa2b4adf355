"""The one NIfTI writer: every image DiffDef writes lies on the MNI152 template grid.

Header: qform and sform code 4 (MNI152), spatial units mm, an optional description and intent. ``.nii.gz``
files are gzip level 1 (nibabel's own default: the fastest level, a few percent larger than level 6);
``.nii`` files are uncompressed. Written atomically (:mod:`diffdef_runtime.atomic`).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from diffdef_runtime import atomic

MNI152_CODE = 4
GZIP_LEVEL = 1


def nifti_bytes(array: np.ndarray, affine: np.ndarray, description: str = "", intent: str | None = None) -> bytes:
    """The single-file NIfTI-1 of ``array`` (dtype kept) on ``affine`` (4x4, mm), uncompressed."""
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    image.set_qform(image.affine, code=MNI152_CODE)
    image.set_sform(image.affine, code=MNI152_CODE)
    image.header.set_xyzt_units("mm")
    if description:
        image.header["descrip"] = description.encode()[:79]
    if intent is not None:
        image.header.set_intent(intent)
    return image.to_bytes()


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, description: str = "",
               intent: str | None = None) -> Path:
    """Write ``array`` to ``path`` (``.nii.gz`` compressed, ``.nii`` not) atomically; returns the path."""
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI file name ends in .nii or .nii.gz")
    data = nifti_bytes(array, affine, description, intent)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
    atomic.write_bytes(path, data)
    return path
