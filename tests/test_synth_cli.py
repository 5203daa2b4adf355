"""``diffdef-synth`` end to end on the 4 mm grid."""

import csv

import nibabel as nib
import numpy as np
import torch
from click.testing import CliRunner

from diffdef.synth.cli import main
from diffdef_runtime.grid import GRIDS


def test_cli_writes_cohort(tmp_path):
    threads = torch.get_num_threads()  # --threads 1 sets it process-wide; restore it after
    out = tmp_path / "synth"
    result = CliRunner().invoke(main, ["--n", "3", "--grid", "4mm", "--out", str(out), "--seed", "2",
                                       "--atlas-ages", "30,70", "--threads", "1"])
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    assert list(rows[0]) == ["path", "labels_path", "age", "sex", "ventricle_volume_ml", "subject", "seed"]
    affine = GRIDS["4mm"].affine
    for row in rows:
        assert row["sex"] in ("F", "M") and 20 <= float(row["age"]) <= 90 and row["seed"] == "2"
        img = nib.load(out / row["path"])
        lab = nib.load(out / row["labels_path"])
        assert img.shape == (40, 56, 40) and np.allclose(img.affine, affine) and np.allclose(lab.affine, affine)
        assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
    assert rows[0]["subject"] == "sub-0000"
    for age in (30, 70):
        for kind in ("T1w", "labels"):
            path = out / "atlases" / f"atlas_age-{age}_{kind}.nii.gz"
            assert path.exists() and np.allclose(nib.load(path).affine, affine)
    assert not list(out.rglob(".tmp-*"))


def test_cli_rejects_bad_n(tmp_path):
    result = CliRunner().invoke(main, ["--n", "0", "--grid", "4mm", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "--n" in result.output
    result = CliRunner().invoke(main, ["--n", "2", "--grid", "4mm", "--out", str(tmp_path / "x"),
                                       "--atlas-ages", "10"])
    assert result.exit_code != 0 and "outside" in result.output


def test_cli_help_is_light():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "--atlas-ages" in result.output
