import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from diffdef.prepare import register as reg  # noqa: E402


def _oblique_affine():
    rot = np.array([[0.0, 0.0, 2.0], [-2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # PSR, like the IXI scans
    affine = np.eye(4)
    affine[:3, :3] = rot
    affine[:3, 3] = (-88.0, 118.0, -135.0)
    return affine


def test_ras_lps_conversion_of_points():
    affine = _oblique_affine()
    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    image = reg.to_sitk(data, affine)
    for index in [(0, 0, 0), (5, 6, 7), (2, 3, 1)]:
        lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
        ras = affine[:3, :3] @ np.asarray(index) + affine[:3, 3]
        np.testing.assert_allclose(lps, ras * np.array([-1, -1, 1]), atol=1e-9)
        assert image[index] == pytest.approx(float(data[index]))
    back, back_affine = reg.from_sitk(image)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, affine, atol=1e-9)


def test_identity_resampling_leaves_an_image_unchanged():
    affine = _oblique_affine()
    data = np.random.default_rng(1).random((6, 7, 8)).astype(np.float32)
    image = reg.to_sitk(data, affine)
    out = reg.resample(image, image, sitk.Transform(3, sitk.sitkIdentity), "linear")
    np.testing.assert_allclose(reg.from_sitk(out)[0], data, atol=1e-6)


def test_ras_matrix_of_a_translation():
    transform = sitk.AffineTransform(3)
    transform.SetTranslation((1.0, 2.0, 3.0))  # LPS
    matrix = reg.ras_matrix(transform)
    np.testing.assert_allclose(matrix[:3, 3], (-1.0, -2.0, 3.0))
    np.testing.assert_allclose(matrix[:3, :3], np.eye(3))


def test_template_registers_to_identity():
    from diffdef.template import load_template

    template = load_template("4mm")
    fixed = reg.to_sitk(template.t1.astype(np.float32), template.grid.affine)
    result = reg.register(fixed, fixed)
    matrix = reg.ras_matrix(result.transform)
    np.testing.assert_allclose(matrix[:3, :3], np.eye(3), atol=0.03)
    np.testing.assert_allclose(matrix[:3, 3], 0.0, atol=1.5)  # mm, on a 4 mm grid


def test_cube_rotations():
    rotations = reg.cube_rotations()
    assert len(rotations) == 24
    np.testing.assert_array_equal(rotations[0], np.eye(3))
    assert all(np.isclose(np.linalg.det(r), 1.0) for r in rotations)


def test_deepbet_mask_agrees_with_the_segmentation():
    pytest.importorskip("deepbet")
    from prepare_helpers import IXI_IDS, ixi_rows

    from diffdef.prepare.load import load_nifti
    from diffdef.prepare.qc import dice

    (row,) = ixi_rows(IXI_IDS[:1])
    data, _ = load_nifti(row["image"], "s")
    labels, _ = load_nifti(row["labels"], "s")
    mask = reg.deepbet_mask(data.astype(np.float32))
    assert mask.shape == data.shape and mask.dtype == bool
    assert dice(mask, labels > 0) > 0.85
