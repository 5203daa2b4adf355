"""One subject through diffdef.prepare.subject: a scan rotated by 90 degrees (header unchanged) and a scan
flipped left-right with its header updated still register like the original (4 mm grid)."""

import nibabel as nib
import numpy as np
import pytest

from prepare_helpers import IXI_IDS, ixi_rows

from diffdef.prepare.subject import Options, prepare_subject
from diffdef.prepare.table import SubjectSpec

OPTIONS = Options(grid="4mm")


def _variant(tmp_path, row, name, transform):
    paths = {}
    for key in ("image", "labels"):
        image = nib.load(row[key])
        data, affine = np.asanyarray(image.dataobj), image.affine.copy()
        data, affine = transform(data, affine)
        paths[key] = tmp_path / f"{name}_{key}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(paths[key]))
    return SubjectSpec(id=name, image=str(paths["image"]), labels=str(paths["labels"]), age_raw=row["age"])


def _rot90(data, affine):  # voxel data turned by 90 degrees in the first two axes, header unchanged
    return np.rot90(data, 1, axes=(0, 1)), affine


def _flip_lr(data, affine):  # IXI scans are PSR: axis 2 is left-right; the header follows the flip
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, data.shape[2] - 1
    return data[:, :, ::-1], affine @ flip


def test_rotated_and_flipped_scans_still_register(tmp_path):
    (row,) = ixi_rows(IXI_IDS[:1])
    base = prepare_subject(SubjectSpec(id="base", image=row["image"], labels=row["labels"], age_raw=row["age"]),
                           tmp_path / "out", OPTIONS, "train")
    assert base.status == "ok", base.reason
    for name, transform in (("rot90", _rot90), ("fliplr", _flip_lr)):
        result = prepare_subject(_variant(tmp_path, row, name, transform), tmp_path / "out", OPTIONS, "train")
        assert result.status == "ok", (name, result.reason)
        assert result.qc["qc_brain_dice"] == pytest.approx(base.qc["qc_brain_dice"], abs=0.02), name
        assert result.volumes["ventricle_volume_ml"] == pytest.approx(base.volumes["ventricle_volume_ml"], rel=0.25)
    assert base.start_rotation == np.eye(3, dtype=int).tolist()
