"""diffdef_runtime.api: conditions checked once, a run owning its output folder, and the CLI as a layer over
``AtlasGenerator`` (the same files from both)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from diffdef_runtime.api import AtlasGenerator, ConditionError, condition_values, output_run
from diffdef_runtime.cli import main as cli
from diffdef_runtime.outfolder import FolderBusyError


def test_condition_values_reads_cli_strings_and_names_the_bad_condition():
    assert condition_values(age="50:60:5", sex="F") == {"age": [50.0, 55.0, 60.0], "sex": "F"}
    assert condition_values(age=70, ventricles="20, 30.5") == {"age": 70, "ventricle_volume_ml": [20.0, 30.5]}
    assert condition_values(age=[60, 70], sex=["F", "male"]) == {"age": [60, 70], "sex": ["F", "male"]}
    with pytest.raises(ValueError, match="age-70_sex-M is asked more than once"):
        condition_values(age=[70, 70], sex=["M", 1])
    for kwargs, name, message in [({"age": -5}, "age", "age -5 years is impossible"),
                                  ({"age": "50:x"}, "age", "cannot parse age list"),
                                  ({"age": 70, "sex": "X"}, "sex", "'X' is not a sex"),
                                  ({"ventricles": "twenty"}, "ventricle_volume_ml", "not a number"),
                                  ({"ventricles": [10, -1]}, "ventricle_volume_ml", "-1 mL is impossible")]:
        with pytest.raises(ConditionError, match=message) as caught:
            condition_values(**kwargs)
        assert caught.value.name == name
    with pytest.raises(ValueError, match="age-70_sex-F is asked more than once"):
        condition_values(age=[70, 70.0], sex="female")
    assert condition_values(age=[70, 70.0000001], sex="F")["age"] == [70, 70.0000001]  # two folders
    with pytest.raises(ValueError, match="at least one condition"):
        condition_values()


def test_output_run_owns_the_folder_for_its_block(tmp_path):
    out = tmp_path / "atlases"
    (out / ".age-70.partial-1-x").mkdir(parents=True)  # what a killed run leaves
    with output_run(out, overwrite=False) as run_id:
        assert len(run_id) >= 8 and not (out / ".age-70.partial-1-x").exists()
        with pytest.raises(FolderBusyError, match=f"in use by AtlasGenerator pid .*, run {run_id}"):
            with output_run(out):
                pass
        (out / "age-70").mkdir()
    with pytest.raises(ValueError, match="is not empty"):
        with output_run(out, overwrite=False):
            pass
    with output_run(out) as second:
        assert second != run_id


def _voxels(folder):
    """Each NIfTI's voxels and affine (the header's description names the run, so bytes differ)."""
    return {p.name: (np.asarray(nib.load(p).dataobj), nib.load(p).affine) for p in folder.glob("*.nii")}


def test_cli_writes_what_the_api_writes(tiny_bundle, tmp_path):
    gen = AtlasGenerator(bundle=tiny_bundle)
    with pytest.raises(ValueError, match="not both"):
        gen.generate(age=70, conditions={"age": 70, "sex": "F"})
    messages = gen.check({"age": [50, 100], "sex": "F"})
    assert len(messages) == 1 and "100" in messages[0]
    with pytest.raises(ValueError, match="sex"):
        gen.check({"age": 70})
    results = gen.generate(conditions=condition_values(age="60,70", sex="F"), steps=2, seed=3)
    api_folders = gen.save(results, tmp_path / "api", outputs=("atlas", "jacobian"), compress=False,
                           overwrite=False)
    result = CliRunner().invoke(cli, ["--bundle", str(tiny_bundle), "--age", "60,70", "--sex", "F", "--steps", "2",
                                      "--seed", "3", "--outputs", "atlas,jacobian", "--no-compress",
                                      "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    for folder in api_folders:
        assert {p.name for p in folder.iterdir()} == {"atlas.nii", "jacobian.nii", "record.json"}
        api, cli_files = _voxels(folder), _voxels(tmp_path / "cli" / folder.name)
        assert api.keys() == cli_files.keys()
        for name, (data, affine) in api.items():
            np.testing.assert_array_equal(data, cli_files[name][0])
            np.testing.assert_array_equal(affine, cli_files[name][1])
    for out in ("api", "cli"):  # no preview asked: no series pages
        assert not (tmp_path / out / "index.html").exists() and not (tmp_path / out / "summary.png").exists()
