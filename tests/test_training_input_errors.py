"""``diffdef-train --data``: bad manifests are one-line errors naming file, row and column, before anything is
written to ``--out`` (the fault as found: a traceback, a config.json left behind, duplicates trained silently)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from diffdef.data.manifest import ManifestError, read_manifest
from diffdef.training.cli import main as train_cli

GOOD_ROWS = 4


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """4 template-aligned 4 mm scans, one with a NaN voxel, one on the 2 mm grid."""
    from diffdef.template import load_template

    root = tmp_path_factory.mktemp("scans")
    t1 = load_template("4mm")
    for i in range(GOOD_ROWS):
        nib.save(nib.Nifti1Image((t1.t1 * 700 * (1 + 0.1 * i)).astype(np.float32), t1.affine), root / f"s{i}.nii.gz")
    nan = (t1.t1 * 700).astype(np.float32)
    nan[10, 20, 30] = np.nan
    nib.save(nib.Nifti1Image(nan, t1.affine), root / "nan.nii.gz")
    fine = load_template("2mm")
    nib.save(nib.Nifti1Image(fine.t1.astype(np.float32), fine.affine), root / "fine.nii.gz")
    shutil.copy(root / "s3.nii.gz", root / "s3_copy.nii.gz")
    return root


def _manifest(root: Path, last_row: str) -> Path:
    """id,path,age,sex with 4 good rows and ``last_row`` as row 5 (line 6)."""
    rows = [f"s{i},s{i}.nii.gz,{40 + 10 * i},{'FM'[i % 2]}" for i in range(GOOD_ROWS)]
    path = root / f"m{abs(hash(last_row))}.csv"
    path.write_text("\n".join(["id,path,age,sex", *rows, last_row]) + "\n")
    return path


@pytest.mark.parametrize("last_row, message", [
    ("s9,missing.nii.gz,50,F", "image file not found: {root}/missing.nii.gz (row 5 (line 6) of {csv}, column 'path'"),
    ("s9,nan.nii.gz,50,F", "{csv}, row 5 (line 6), column 'path': {root}/nan.nii.gz: 1 voxel(s) are NaN"),
    ("s9,fine.nii.gz,50,F", "{csv}, row 5 (line 6), column 'path': {root}/fine.nii.gz: expected shape (40, 56, 40)"),
    ("s9,s0.nii.gz,fifty,F", "{csv}, row 5 (line 6), column 'age': 'fifty' is not a number"),
    ("s9,s1.nii.gz,50,F", "{csv}: rows 2 (line 3) and 5 (line 6) have the same image '{root}/s1.nii.gz' in column "
                          "'path'"),
    ("s2,s3_copy.nii.gz,50,F", "{csv}: rows 3 (line 4) and 5 (line 6) have the same subject id 's2' in column 'id'"),
])
def test_bad_rows_are_one_line_errors_before_out_is_touched(scans, tmp_path, last_row, message):
    csv = _manifest(scans, last_row)
    out = tmp_path / "run"
    result = CliRunner().invoke(train_cli, ["all", "--preset", "tiny", "--data", str(csv), "--out", str(out)])
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: Invalid value for --data: ")
    assert message.format(root=scans, csv=csv) in error
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert not out.exists()  # no config.json, not even the folder


def test_duplicates_only_refused_when_asked(scans):
    csv = _manifest(scans, "s9,s1.nii.gz,50,F")
    assert len(read_manifest(csv)) == GOOD_ROWS + 1  # readers other than training keep their behaviour
    with pytest.raises(ManifestError, match="rows 2 .* and 5 .* same image"):
        read_manifest(csv, unique=True)
