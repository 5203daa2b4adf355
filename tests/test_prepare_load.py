import nibabel as nib
import numpy as np
import pytest

from diffdef.prepare.load import SubjectError, load_nifti


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


def test_valid_and_singleton_4d(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    out, affine = load_nifti(_save(tmp_path / "a.nii.gz", data[..., None]), "s1")
    assert out.shape == (5, 6, 7) and affine[0, 0] == 2.0


def test_reoriented_to_ras(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    out, out_affine = load_nifti(_save(tmp_path / "a.nii.gz", data, affine), "s1")
    assert out_affine[0, 0] > 0
    np.testing.assert_array_equal(out, data[::-1])


@pytest.mark.parametrize("kind,match", [
    ("4d", "4-D"), ("2d", "2-D"), ("nan", "NaN"), ("empty", "empty"), ("constant", "constant"),
    ("missing", "not found"), ("garbage", "cannot read"),
])
def test_bad_files_name_the_file(tmp_path, kind, match):
    path = tmp_path / f"{kind}.nii.gz"
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    if kind == "4d":
        _save(path, np.stack([data, data], -1))
    elif kind == "2d":
        _save(path, data[:, :, :1])
    elif kind == "nan":
        data[1, 1, 1] = np.nan
        _save(path, data)
    elif kind == "empty":
        _save(path, np.zeros_like(data))
    elif kind == "constant":
        _save(path, np.full_like(data, 3.0))
    elif kind == "garbage":
        path.write_bytes(b"not a nifti at all")
    with pytest.raises(SubjectError, match=match) as info:
        load_nifti(path, "subj")
    assert str(path) in info.value.reason and info.value.subject_id == "subj"
