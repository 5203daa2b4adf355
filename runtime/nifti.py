"""The one NIfTI writer: every image DiffDef writes lies on the MNI152 template grid.

Header: qform and sform code 4 (MNI152), spatial units mm, an optional description and intent. ``.nii.gz``
files are ordinary gzip files (any gzip reader opens them) compressed by ISA-L (the ``isal`` package) at its level
1; ``.nii`` files are uncompressed. Written atomically (:mod:`diffdef_runtime.atomic`).

Why ISA-L and not Python's zlib: the paper-grid DVF (69 MB of float32) took 1.75 s with zlib at its fastest level
and 0.13 s with ISA-L level 1 at about the same size (0.947 of the raw bytes, zlib 0.936); the atlas 0.24 against
0.02 s (0.297 against 0.303). Measured on a 2-core AMD EPYC.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip

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
        data = igzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
    atomic.write_bytes(path, data)
    return path
