"""Tests of diffdef.data.manifest: manifest CSV -> template-aligned NIfTI dataset (4 mm grid, tiny files)."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from diffdef.data.intensity import template_level, to_template_scale

from diffdef.data import (
    ManifestDataset,
    ManifestTable,
    ManifestWarning,
    load_grid_image,
    read_manifest,
    write_manifest,
)
from diffdef_runtime.grid import get_grid

GRID = get_grid("4mm")


def _ras_volume(seed: int = 0) -> np.ndarray:
    """A positive (D, H, W) volume with a zero background border and distinct voxel values."""
    rng = np.random.default_rng(seed)
    data = np.zeros(GRID.shape, dtype=np.float32)
    data[4:-4, 4:-4, 4:-4] = rng.uniform(10.0, 1000.0, size=tuple(s - 8 for s in GRID.shape))
    return data


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, GRID.affine if affine is None else affine), str(path))
    return path


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def two_images(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    (tmp_path / "img").mkdir()
    vols = [_ras_volume(0), _ras_volume(1)]
    _save(tmp_path / "img" / "a.nii.gz", vols[0])
    _save(tmp_path / "img" / "b.nii.gz", vols[1])
    return tmp_path, vols


def test_happy_path_values_shapes_normalisation(two_images):
    root, vols = two_images
    csv_path = _csv(root / "m.csv", "id,path,age,sex\ns1,img/a.nii.gz,71.5,F\ns2,img/b.nii.gz,30,M\n")
    table = read_manifest(csv_path, conditions=("age", "sex"))
    assert isinstance(table, ManifestTable) and len(table) == 2 and table.skipped == 0
    assert table.rows[0] == {"path": str(root / "img" / "a.nii.gz"), "age": 71.5, "sex": 0.0}
    np.testing.assert_array_equal(table.values("age"), [71.5, 30.0])

    ds = ManifestDataset(table, "4mm")
    item = ds[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, *GRID.shape)
    assert item["conditions"] == {"age": 71.5, "sex": 0.0}
    assert item["path"] == str(root / "img" / "a.nii.gz")
    img = item["image"].numpy()[0]
    assert img.min() >= 0.0 and img.max() <= 1.5
    level = template_level(GRID)  # the template's own 99.5th percentile, about 0.99
    assert 0.95 < level < 1.0
    scale = np.percentile(vols[0][vols[0] > 0], 99.5) / level
    np.testing.assert_allclose(img, np.clip(vols[0] / scale, 0, 1.5), rtol=1e-5, atol=1e-6)
    assert img.max() > level  # the brightest 0.5 % sit above the level

    raw = ManifestDataset(table, GRID, normalise="none")[1]["image"].numpy()[0]
    np.testing.assert_array_equal(raw, vols[1])

    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 1, *GRID.shape)
    np.testing.assert_allclose(batch["conditions"]["age"].numpy(), [71.5, 30.0])


def test_relative_paths_resolve_against_csv_folder_or_root(two_images, tmp_path):
    root, _ = two_images
    sub = root / "manifests"
    sub.mkdir()
    # relative to the CSV's own folder ...
    table = read_manifest(_csv(sub / "m.csv", "path,age\n../img/a.nii.gz,50\n"))
    assert table.rows[0]["path"] == str(root / "img" / "a.nii.gz")
    # ... or to `root`
    table = read_manifest(_csv(sub / "n.csv", "path,age\nimg/b.nii.gz,50\n"), root=root)
    assert table.rows[0]["path"] == str(root / "img" / "b.nii.gz")
    # an absolute path stays as it is; the column name is matched case-insensitively (IXI has "Age")
    table = read_manifest(_csv(sub / "o.csv", f"path,Age\n{root / 'img' / 'a.nii.gz'},50\n"))
    assert table.rows[0] == {"path": str(root / "img" / "a.nii.gz"), "age": 50.0}


def test_rows_without_age_skipped_with_one_warning(two_images):
    root, _ = two_images
    text = "path,age\nimg/a.nii.gz,40\nimg/missing1.nii.gz,\nimg/b.nii.gz,60\nimg/missing2.nii.gz,NA\nimg/x.nii.gz, \n"
    csv_path = _csv(root / "participants.csv", text)
    with pytest.warns(ManifestWarning) as record:
        table = read_manifest(csv_path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 3 of 5 rows of participants.csv" in message and "'age'" in message
    assert table.skipped == 3 and table.total == 5
    np.testing.assert_array_equal(table.values("age"), [40.0, 60.0])


def test_no_warning_when_nothing_skipped(two_images):
    root, _ = two_images
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_manifest(_csv(root / "m.csv", "path,age\nimg/a.nii.gz,40\n"))


def test_non_number_age_names_file_row_and_column(two_images):
    root, _ = two_images
    csv_path = _csv(root / "bad.csv", "path,age\nimg/a.nii.gz,40\nimg/b.nii.gz,abc\n")
    with pytest.raises(ValueError, match=r"bad\.csv, row 2 \(line 3\), column 'age': 'abc' is not a number"):
        read_manifest(csv_path)


def test_sex_parsing(two_images):
    root, _ = two_images
    values = ["F", "M", "female", "Male", "0", "1", " f "]
    text = "path,age,sex\n" + "".join(f"img/a.nii.gz,50,{v}\n" for v in values)
    table = read_manifest(_csv(root / "s.csv", text), conditions=("age", "sex"))
    np.testing.assert_array_equal(table.values("sex"), [0, 1, 0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match=r"row 1 \(line 2\), column 'sex': 'x' is not a sex"):
        read_manifest(_csv(root / "t.csv", "path,sex\nimg/a.nii.gz,x\n"), conditions=("sex",))
    with pytest.raises(ValueError, match="is not a sex"):
        read_manifest(_csv(root / "u.csv", "path,sex\nimg/a.nii.gz,2\n"), conditions=("sex",))


def test_manifest_level_errors(two_images):
    root, _ = two_images
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_manifest(root / "nope.csv")
    with pytest.raises(ValueError, match=r"no condition column 'age'; columns present: 'path', 'years'"):
        read_manifest(_csv(root / "c.csv", "path,years\nimg/a.nii.gz,3\n"))
    with pytest.raises(ValueError, match=r"no image column 'path'; columns present: 'file', 'age'"):
        read_manifest(_csv(root / "d.csv", "file,age\nimg/a.nii.gz,3\n"))
    with pytest.raises(ValueError, match="no usable rows"):
        read_manifest(_csv(root / "e.csv", "path,age\nimg/a.nii.gz,\n"))
    with pytest.raises(ValueError, match="no usable rows"):
        read_manifest(_csv(root / "f.csv", "path,age\n"))


def test_missing_image_file_is_named(two_images):
    root, _ = two_images
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*ghost\.nii\.gz"):
        read_manifest(_csv(root / "g.csv", "path,age\nimg/a.nii.gz,3\nimg/ghost.nii.gz,4\n"))
    # a file removed after reading is named when loading
    table = read_manifest(_csv(root / "h.csv", "path,age\nimg/b.nii.gz,3\n"))
    (root / "img" / "b.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.nii\.gz"):
        ManifestDataset(table, "4mm")[0]


def test_wrong_grid_shape_names_file(tmp_path):
    path = _save(tmp_path / "small.nii.gz", np.ones((40, 56, 39), dtype=np.float32))
    table = read_manifest(_csv(tmp_path / "m.csv", "path,age\nsmall.nii.gz,3\n"))
    with pytest.raises(ValueError, match=r"small\.nii\.gz: expected shape \(40, 56, 40\).*found \(40, 56, 39\)"):
        ManifestDataset(table, "4mm")[0]
    with pytest.raises(ValueError, match="resample to the '4mm' grid"):
        load_grid_image(path, "4mm")


def test_wrong_affine_names_file(tmp_path):
    shifted = GRID.affine.copy()
    shifted[0, 3] += 2.0
    path = _save(tmp_path / "shifted.nii.gz", _ras_volume(), shifted)
    with pytest.raises(ValueError, match=r"shifted\.nii\.gz: affine does not match the '4mm' grid") as info:
        load_grid_image(path, "4mm")
    assert "register it to the MNI152 template" in str(info.value)
    # within 1e-3 mm is accepted
    nudged = GRID.affine.copy()
    nudged[1, 3] += 5e-4
    assert load_grid_image(_save(tmp_path / "nudged.nii.gz", _ras_volume(), nudged), "4mm").shape == GRID.shape


def test_lps_image_is_reoriented_to_ras(tmp_path):
    ras = _ras_volume(3)
    d, h, _ = GRID.shape
    # voxel (i, j, k) of the LPS file is voxel (d-1-i, h-1-j, k) of the RAS grid
    flip = np.array([[-1, 0, 0, d - 1], [0, -1, 0, h - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)
    lps = np.ascontiguousarray(ras[::-1, ::-1, :])
    path = _save(tmp_path / "lps.nii.gz", lps, GRID.affine @ flip)
    assert nib.aff2axcodes(nib.load(str(path)).affine) == ("L", "P", "S")

    table = read_manifest(_csv(tmp_path / "m.csv", "path,age\nlps.nii.gz,3\n"))
    out = ManifestDataset(table, "4mm", normalise="none")[0]["image"].numpy()[0]
    np.testing.assert_array_equal(out, ras)
    assert out[4, 5, 6] == lps[d - 1 - 4, h - 1 - 5, 6] == ras[4, 5, 6]
    assert out[d - 5, 4, 4] == lps[4, h - 5, 4]


def test_nan_voxel_rejected(tmp_path):
    data = _ras_volume()
    data[10, 10, 10] = np.nan
    _save(tmp_path / "nan.nii.gz", data)
    table = read_manifest(_csv(tmp_path / "m.csv", "path,age\nnan.nii.gz,3\n"))
    with pytest.raises(ValueError, match=r"nan\.nii\.gz: 1 voxel\(s\) are NaN or infinite"):
        ManifestDataset(table, "4mm")[0]


def test_cache_and_write_manifest_roundtrip(two_images):
    root, vols = two_images
    rows = [
        {"path": "img/a.nii.gz", "age": 0.1 + 0.2, "sex": 1},
        {"path": "img/b.nii.gz", "age": 33.0},  # no sex: an empty cell, so it is skipped on reading
    ]
    csv_path = write_manifest(root / "out" / "w.csv", rows)
    assert csv_path.read_text().splitlines()[0] == "path,age,sex"
    assert [p.name for p in csv_path.parent.iterdir()] == ["w.csv"]  # no temporary file left behind
    with pytest.warns(ManifestWarning, match="skipped 1 of 2 rows of w.csv with no value for 'sex'"):
        table = read_manifest(csv_path, conditions=("age", "sex"), root=root)
    assert table.rows == [{"path": str(root / "img" / "a.nii.gz"), "age": 0.1 + 0.2, "sex": 1.0}]

    ds = ManifestDataset(table, "4mm", normalise="none", cache=True)
    first = ds[0]["image"]
    first.zero_()  # in-place edits of an item never reach the cache
    (root / "img" / "a.nii.gz").unlink()
    np.testing.assert_array_equal(ds[0]["image"].numpy()[0], vols[0])


def test_template_scale_is_a_fixed_point_and_idempotent():
    from diffdef.template import load_template

    t1 = load_template(GRID).t1
    np.testing.assert_allclose(to_template_scale(t1, GRID), t1, atol=1e-6)
    rng = np.random.default_rng(0)
    scanner = (t1 * 873.0 + rng.normal(0, 5, t1.shape) * (t1 > 0)).clip(0)
    once = to_template_scale(scanner, GRID)
    np.testing.assert_allclose(to_template_scale(once, GRID), once, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.percentile(once[once > 0], 99.5), template_level(GRID), rtol=1e-5)
    with pytest.raises(ValueError, match="blank: no positive voxels"):
        to_template_scale(np.zeros((3, 3, 3)), GRID, name="blank")
