"""The one NIfTI writer (diffdef_runtime.nifti)."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from diffdef_runtime.nifti import save_nifti


@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii"])
def test_round_trip_keeps_values_dtype_affine_and_the_mni_codes(tmp_path, name):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-80, -112, -70]
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    path = save_nifti(array, affine, tmp_path / name, description="DiffDef atlas")
    image = nib.load(str(path))
    np.testing.assert_array_equal(np.asarray(image.dataobj), array)
    assert image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(image.affine, affine)
    assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 4
    assert image.header.get_xyzt_units()[0] == "mm" and image.header["descrip"].tobytes().startswith(b"DiffDef atlas")
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" if name.endswith(".gz") else raw[:2] != b"\x1f\x8b"
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_vector_intent_and_integer_labels(tmp_path):
    labels = np.array([[[0, 1], [2, 4]]], dtype=np.uint8)
    image = nib.load(str(save_nifti(labels, np.eye(4), tmp_path / "l.nii.gz")))
    assert image.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(image.dataobj), labels)
    dvf = np.zeros((2, 2, 2, 1, 3), np.float32)
    assert nib.load(str(save_nifti(dvf, np.eye(4), tmp_path / "d.nii.gz", intent="vector"))).header.get_intent()[0] == "vector"
    assert gzip.decompress((tmp_path / "d.nii.gz").read_bytes())[344:348] == b"n+1\x00"  # single-file NIfTI-1


def test_other_extensions_are_refused(tmp_path):
    with pytest.raises(ValueError, match="ends in .nii or .nii.gz"):
        save_nifti(np.zeros((2, 2, 2)), np.eye(4), tmp_path / "a.mgz")


def test_nii_gz_is_one_ordinary_gzip_member_of_the_nii_bytes_and_compressed(tmp_path):
    """Written by ISA-L, read by zlib: one gzip member (RFC 1952) holding exactly the .nii file's bytes."""
    import zlib

    rng = np.random.default_rng(0)
    array = np.round(rng.random((20, 24, 16)), 2).astype(np.float32)  # compressible, like an atlas
    plain = save_nifti(array, np.eye(4), tmp_path / "a.nii").read_bytes()
    packed = save_nifti(array, np.eye(4), tmp_path / "a.nii.gz").read_bytes()
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing, one member
    assert inflater.decompress(packed) == plain and inflater.eof and inflater.unused_data == b""
    assert len(packed) < 0.8 * len(plain)
    assert save_nifti(array, np.eye(4), tmp_path / "b.nii.gz").read_bytes() == packed  # no time stamp: same bytes
