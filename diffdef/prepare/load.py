"""Load and validate one input NIfTI (image, label map or mask); every problem is a :class:`SubjectError`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class SubjectError(Exception):
    """One subject cannot be prepared. ``reason`` names the file (or the table cell) that is wrong."""

    def __init__(self, subject_id: str, reason: str, file: str | Path | None = None) -> None:
        self.subject_id = str(subject_id)
        self.reason = str(reason)
        self.file = "" if file is None else str(file)
        super().__init__(f"{self.subject_id}: {self.reason}")


def load_nifti(path: str | Path | None, subject_id: str, what: str = "image", check_content: bool = True):
    """``path`` as a 3-D nibabel image reoriented to RAS (``as_closest_canonical``), data validated.

    Returns ``(data float32 (or the stored integer dtype for labels), affine 4x4 RAS)``.

    Raises :class:`SubjectError` naming the file for: no path, a missing or unreadable file, a 2-D or 4-D
    image (a trailing singleton 4th axis is dropped), NaN/inf voxels and, when ``check_content``, an image
    with no non-zero voxel or with one constant value.
    """
    import nibabel as nib

    if path is None or str(path).strip() == "":
        raise SubjectError(subject_id, f"no {what} file given", None)
    path = Path(path)
    if not path.is_file():
        raise SubjectError(subject_id, f"{what} file not found: {path}", path)
    try:
        image = nib.load(str(path))
        shape = tuple(int(s) for s in image.shape)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise SubjectError(subject_id, f"cannot read {what} file {path} as NIfTI ({type(exc).__name__}: {exc})",
                           path) from exc
    if len(shape) == 4 and shape[3] == 1:
        image = image.slicer[..., 0]
        shape = shape[:3]
    if len(shape) != 3:
        kind = "4-D (a time series?)" if len(shape) == 4 else f"{len(shape)}-D"
        raise SubjectError(subject_id, f"{what} file {path} is {kind} with shape {shape}; a 3-D volume is needed",
                           path)
    if min(shape) < 2:
        raise SubjectError(subject_id, f"{what} file {path} has shape {shape}: a 2-D slice, not a volume", path)
    try:
        image = nib.as_closest_canonical(image)
        data = np.asanyarray(image.dataobj)
    except Exception as exc:
        raise SubjectError(subject_id, f"cannot read the voxels of {what} file {path} ({type(exc).__name__}: {exc})",
                           path) from exc
    if not np.issubdtype(data.dtype, np.integer):
        data = np.asarray(data, dtype=np.float32)
        finite = np.isfinite(data)
        if not finite.all():
            bad = int(data.size - np.count_nonzero(finite))
            raise SubjectError(subject_id, f"{what} file {path} has {bad} NaN/inf voxel(s)", path)
    if check_content:
        if not np.any(data):
            raise SubjectError(subject_id, f"{what} file {path} is empty (no non-zero voxel)", path)
        if float(np.max(data)) == float(np.min(data)):
            raise SubjectError(subject_id, f"{what} file {path} is constant ({float(np.max(data))})", path)
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise SubjectError(subject_id, f"{what} file {path} has an invalid (singular) affine", path)
    return np.ascontiguousarray(data), affine


def same_grid(affine_a: np.ndarray, shape_a, affine_b: np.ndarray, shape_b, tol_mm: float = 1e-2) -> bool:
    """Whether two RAS images share one voxel grid (shape and affine within ``tol_mm``)."""
    return tuple(shape_a) == tuple(shape_b) and float(np.max(np.abs(affine_a - affine_b))) <= tol_mm
