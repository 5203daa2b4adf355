"""`diffdef-train --data MANIFEST`: the real-data route trains on the manifest's train split only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from diffdef.data.intensity import template_level
from diffdef.training.config import load_config
from diffdef.training.data import load_training_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """8 template-aligned images on the 4 mm grid in scanner units (x 700 and noise); rows 3 and 6 are test."""
    from diffdef.template import load_template

    root = tmp_path_factory.mktemp("prepared")
    template = load_template("4mm")
    rng = np.random.default_rng(0)
    lines = ["id,path,age,sex,split,labels"]
    for i in range(8):
        data = (template.t1 * 700.0 * (1 + 0.1 * i) + rng.normal(0, 3, template.t1.shape) * template.brain_mask)
        nib.save(nib.Nifti1Image(np.clip(data, 0, None).astype(np.float32), template.affine), root / f"s{i}.nii.gz")
        labels = np.roll(template.labels, i - 4, axis=1).astype(np.int16)  # diffdef scheme, subject i shifted
        nib.save(nib.Nifti1Image(labels, template.affine), root / f"l{i}.nii.gz")
        split = "test" if i in (3, 6) else "train"
        lines.append(f"s{i},s{i}.nii.gz,{30 + 6 * i},{'FM'[i % 2]},{split},l{i}.nii.gz")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def test_data_flag_sets_route_grid_and_conditions(manifest):
    cfg = load_config("tiny", None, ["ldm.unet_steps=7"], data_manifest=manifest)
    assert cfg["data"]["source"] == "manifest" and cfg["data"]["manifest"] == str(manifest)
    assert cfg["data"]["grid"] == "4mm" and cfg["data"]["conditions"] == ["age", "sex"]
    assert cfg["ldm"]["unet_steps"] == 7
    assert cfg["ldm"]["field_source"] == "labels"  # every row has a label map
    # the user's --set still wins over what --data infers
    cfg = load_config("tiny", None, ['data.conditions=["age"]'], data_manifest=manifest)
    assert cfg["data"]["conditions"] == ["age"]


def test_only_the_train_split_trains_on_the_template_scale(manifest):
    cfg = load_config("tiny", None, [], data_manifest=manifest)
    data = load_training_data(cfg["data"], show_progress=False)
    assert len(data) == 6
    ages = sorted(data.raw_conditions[:, 0].tolist())
    assert ages == [30.0, 36.0, 42.0, 54.0, 60.0, 72.0]  # 48 and 66 are the test rows
    assert data.spec.trained["age"] == (30.0, 72.0)
    assert data.labels.shape == (6, 40, 56, 40) and data.labels.dtype == torch.int16
    assert data.label_scheme == "muse"  # the default; the fixture's maps are diffdef ids, --set says so
    from diffdef.template import load_template

    labels = load_template("4mm").labels
    np.testing.assert_array_equal(data.labels[0].numpy(), np.roll(labels, -4, axis=1))  # row 0: subject s0
    level = template_level("4mm")
    for image in data.images[:, 0].numpy():
        assert np.percentile(image[image > 0], 99.5) == pytest.approx(level, rel=1e-4)


def test_manifest_without_split_column_trains_on_every_row(manifest, tmp_path, caplog):
    text = "\n".join(line.rsplit(",", 1)[0] for line in manifest.read_text().splitlines()) + "\n"
    text = text.replace(",split", "").replace(",train", "").replace(",test", "")
    plain = tmp_path / "plain.csv"
    plain.write_text(text.replace("s", str(manifest.parent / "s")).replace(f"{manifest.parent}/sex", "sex"))
    cfg = load_config("tiny", None, [], data_manifest=plain)
    assert cfg["ldm"]["field_source"] == "demons"  # no labels column: image demons
    assert len(load_training_data(cfg["data"], show_progress=False)) == 8
    assert "no split column" in caplog.text


def test_data_flag_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_config("tiny", None, [], data_manifest=tmp_path / "nope.csv")
    bad = tmp_path / "m.csv"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    bad.write_text("path,age\nx.nii.gz,50\n")
    with pytest.raises(ValueError, match=r"x.nii.gz is not on a template grid \(shape \(10, 10, 10\)\)"):
        load_config("tiny", None, [], data_manifest=bad)


def test_train_all_on_a_manifest_with_label_fields(manifest, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "diffdef.training.cli", "all", "--preset", "tiny", "--data",
                             str(manifest), "--out", str(out), "--set", 'data.label_scheme="diffdef"'], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    model = json.loads((out / "model.json").read_text())
    assert model["grid"] == "4mm" and model["conditions"]["names"] == ["age", "sex"]
    assert model["conditions"]["trained"]["age"] == [30.0, 72.0]
    assert "manifest" in result.stderr and "6 subjects of split 'train'" in result.stderr
    assert "label demons fields" in result.stderr  # the bank came from the segmentations


def test_label_fields_need_label_maps(manifest, tmp_path):
    import torch as _torch

    from diffdef.training.ldm import build_ldm_stage

    cfg = load_config("tiny", None, ['ldm.field_source="labels"'], data_manifest=manifest)
    data = load_training_data(cfg["data"], show_progress=False)
    data.labels = None
    with pytest.raises(ValueError, match="needs the training subjects' label maps"):
        build_ldm_stage(cfg, data, _torch.nn.Identity(), _torch.nn.Identity(), None)
