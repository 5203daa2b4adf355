"""The cohort: 3 IXI subjects plus broken inputs, prepared end to end on the 4 mm grid."""

import json

import nibabel as nib
import numpy as np
import pytest

from prepare_helpers import IXI_IDS, ixi_rows, read_csv

from diffdef.prepare import run
from diffdef.prepare.subject import Options
from diffdef.prepare.table import FileSource, read_table
from diffdef_runtime.grid import get_grid


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from prepare_helpers import write_table

    tmp = tmp_path_factory.mktemp("cohort")
    rows = ixi_rows()
    good = rows[0]
    image = nib.load(good["image"])
    noise = np.random.default_rng(0).uniform(0, 255, image.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, image.affine), str(tmp / "noise.nii.gz"))
    four_d = np.stack([np.asanyarray(image.dataobj)] * 2, -1)
    nib.save(nib.Nifti1Image(four_d, image.affine), str(tmp / "fourd.nii.gz"))
    nan = np.asanyarray(image.dataobj).astype(np.float32)
    nan[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(nan, image.affine), str(tmp / "nan.nii.gz"))
    bad = [
        {"id": "noise", "age": "50", "image": str(tmp / "noise.nii.gz"), "labels": good["labels"]},
        {"id": "fourd", "age": "50", "image": str(tmp / "fourd.nii.gz")},
        {"id": "nan", "age": "50", "image": str(tmp / "nan.nii.gz")},
        {"id": "missing", "age": "50", "image": str(tmp / "does_not_exist.nii.gz")},
        {"id": "noage", "age": "", "image": good["image"], "labels": good["labels"]},
    ]
    table = write_table(tmp / "table.csv", rows + bad)
    specs = read_table(table, image=FileSource(column="image"), labels=FileSource(column="labels"),
                       sex_column="sex")
    out = tmp / "out"
    summary = run.prepare_cohort(specs, out, Options(grid="4mm"), workers=1)
    return out, summary, specs


def test_good_subjects_pass_and_are_on_the_grid(cohort):
    out, summary, _ = cohort
    grid = get_grid("4mm")
    manifest = read_csv(out / "manifest.csv")
    assert [r["id"] for r in manifest] == sorted(IXI_IDS)
    assert list(manifest[0]) == run.MANIFEST_COLUMNS
    for row in manifest:
        image = nib.load(out / row["path"])
        labels = nib.load(out / row["labels"])
        assert image.shape == grid.shape and labels.shape == grid.shape
        np.testing.assert_allclose(image.affine, grid.affine, atol=1e-4)
        assert image.get_data_dtype() == np.float32
        assert np.issubdtype(labels.get_data_dtype(), np.integer)
        assert {51, 52} <= set(np.unique(np.asanyarray(labels.dataobj)).tolist())  # MUSE ids kept
        assert 5.0 < float(row["ventricle_volume_ml"]) < 80.0
        assert float(row["qc_brain_dice"]) >= 0.85
        assert row["sex"] in ("F", "M") and row["split"] in ("train", "test")
        assert (out / "qc" / f"{row['id']}.png").stat().st_size > 1000
    assert (out / "qc.html").exists() and (out / "prepare.log").exists()
    from diffdef.data.manifest import load_grid_image, read_manifest

    table = read_manifest(out / "manifest.csv", conditions=("age", "sex", "ventricle_volume_ml"))
    assert len(table) == 3
    loaded = load_grid_image(table.rows[0]["path"], "4mm")  # the training loader accepts it as it is
    stored = np.asanyarray(nib.load(table.rows[0]["path"]).dataobj)
    np.testing.assert_allclose(loaded, stored, atol=1e-5)  # already on the template's intensity scale


def test_bad_inputs_are_named_in_failures(cohort):
    out, summary, _ = cohort
    failures = {r["id"]: r for r in read_csv(out / "failures.csv")}
    assert set(failures) == {"noise", "fourd", "nan", "missing", "noage"}
    assert failures["noise"]["reason"].startswith("QC:")
    assert "4-D" in failures["fourd"]["reason"] and failures["fourd"]["file"].endswith("fourd.nii.gz")
    assert "NaN" in failures["nan"]["reason"] and "nan.nii.gz" in failures["nan"]["reason"]
    assert "not found" in failures["missing"]["reason"] and "does_not_exist" in failures["missing"]["reason"]
    assert "noage" in failures["noage"]["reason"] and "age" in failures["noage"]["reason"]
    assert summary == {"subjects": 8, "ok": 3, "failed": 5}
    assert "noise" in (out / "prepare.log").read_text()


def test_rerun_skips_and_other_options_refuse(cohort):
    out, _, specs = cohort
    before = {p.name: p.stat().st_mtime_ns for p in (out / "subjects").iterdir()}
    run.prepare_cohort(specs, out, Options(grid="4mm"), workers=1)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "subjects").iterdir()} == before
    with pytest.raises(run.PrepareError, match="grid"):
        run.prepare_cohort(specs, out, Options(grid="2mm"), workers=1)
    assert json.loads((out / "prepare.json").read_text())["grid"] == "4mm"


def test_merge_refuses_naming_missing_records(cohort, tmp_path):
    import shutil

    out, _, _ = cohort
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "subjects" / f"{IXI_IDS[1]}.json").unlink()
    with pytest.raises(run.PrepareError, match=IXI_IDS[1]):
        run.merge(copy)
