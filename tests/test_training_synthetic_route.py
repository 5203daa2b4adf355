"""The synthetic route: the template's intensity scale like the manifest route, and the same training data read
from what diffdef-synth wrote as generated in memory."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffdef.data.intensity import template_level
from diffdef.training.config import preset_config
from diffdef.training.data import load_training_data


def _data_cfg(**changes):
    cfg = preset_config("tiny")["data"]
    cfg.update({"n_subjects": 3, "conditions": ["age", "sex", "ventricle_volume_ml"], **changes})
    return cfg


def test_synthetic_images_are_on_the_template_scale():
    data = load_training_data(_data_cfg(), show_progress=False)
    for image in data.images:
        positive = image[image > 0].numpy()
        assert np.percentile(positive, 99.5) == pytest.approx(template_level("4mm"), rel=1e-4)


def test_training_from_the_written_cohort_equals_generating_it(tmp_path):
    from diffdef.synth.cli import main as synth

    result = CliRunner().invoke(synth, ["--n", "3", "--grid", "4mm", "--seed", "0", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    generated = load_training_data(_data_cfg(), show_progress=False)
    read = load_training_data(_data_cfg(synthetic_dir=str(tmp_path / "c")), show_progress=False)
    assert torch.equal(generated.images, read.images)
    assert np.array_equal(generated.raw_conditions, read.raw_conditions)
    assert torch.equal(generated.conditions, read.conditions)
    with pytest.raises(ValueError, match="subject sub-0003 of cohort seed 0 is missing.*diffdef-synth --n 4"):
        load_training_data(_data_cfg(synthetic_dir=str(tmp_path / "c"), n_subjects=4), show_progress=False)
    with pytest.raises(ValueError, match="cohort seed 5 is missing"):
        load_training_data(_data_cfg(synthetic_dir=str(tmp_path / "c"), synthetic_seed=5), show_progress=False)
    with pytest.raises(ValueError, match="no manifest.csv"):
        load_training_data(_data_cfg(synthetic_dir=str(tmp_path / "none")), show_progress=False)
