"""Atlas scores against the synthetic cohort's true atlas."""

import pytest
import torch

from diffdef.synth.ageing import AgeingModel
from diffdef.synth.scoring import score_atlas, wins_over_template


@pytest.fixture(scope="module")
def ageing():
    return AgeingModel("4mm")


def test_the_true_field_scores_perfectly(ageing):
    truth = ageing.ground_truth_atlas(80.0)
    scores = score_atlas(ageing, 80.0, truth.dvf)
    assert scores["dice_vent"] == pytest.approx(1.0) and scores["dice_csf"] == pytest.approx(1.0)
    assert scores["volume_ml"] == pytest.approx(truth.ventricle_volume_ml, rel=1e-4)
    assert scores["template_dice_vent"] < 0.9  # the template is far from the age-80 atlas


def test_the_zero_field_scores_as_the_template(ageing):
    scores = score_atlas(ageing, 70.0, torch.zeros(1, 3, *ageing.template.t1.shape))
    assert scores["dice_vent"] == pytest.approx(scores["template_dice_vent"])
    assert scores["dice_csf"] == pytest.approx(scores["template_dice_csf"])
    assert scores["volume_ml"] == pytest.approx(ageing.template.volume_ml("ventricle_prob"), rel=1e-3)
    assert scores["true_volume_ml"] > scores["volume_ml"]


def test_a_field_halfway_scores_between(ageing):
    truth = ageing.ground_truth_atlas(85.0)
    half = score_atlas(ageing, 85.0, 0.5 * truth.dvf)
    assert half["template_dice_vent"] < half["dice_vent"] < 1.0


def test_wrong_shape_is_named(ageing):
    with pytest.raises(ValueError, match="atlas DVF must be"):
        score_atlas(ageing, 50.0, torch.zeros(1, 3, 4, 4, 4))


def test_wins_over_template_counts_strict_wins():
    rows = [dict(dice_vent=0.95, template_dice_vent=0.94, dice_csf=0.90, template_dice_csf=0.90),  # CSF ties
            dict(dice_vent=0.80, template_dice_vent=0.81, dice_csf=0.70, template_dice_csf=0.60),
            dict(dice_vent=0.99, template_dice_vent=0.50, dice_csf=0.99, template_dice_csf=0.50)]
    assert wins_over_template(rows) == (2, 2)
    assert wins_over_template([]) == (0, 0)
