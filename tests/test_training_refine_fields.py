"""Per-subject refinement of registration fields (diffdef.training.refine_fields)."""

import pytest
import torch
import torch.nn.functional as F

from diffdef.geometry import warp_image
from diffdef.template import load_template
from diffdef.training.refine_fields import RefineSettings, refine_fields


@pytest.fixture(scope="module")
def template():
    return load_template("4mm").torch("t1")  # (1, 1, 40, 56, 40)


def _smooth_field(shape, peak, seed):
    g = torch.Generator().manual_seed(seed)
    field = F.avg_pool3d(torch.randn(1, 3, *shape, generator=g), 9, 1, 4)
    field = F.avg_pool3d(field, 9, 1, 4)
    return field * (peak / float(field.abs().max()))


def test_refinement_recovers_a_known_field_from_a_poor_start(template):
    truth = _smooth_field(template.shape[2:], 1.5, 0)  # up to 1.5 voxels
    subject = 1.1 * warp_image(template, truth)  # and a global gain, as the cohort's subjects have
    brain = template[0, 0] > 0.1
    start = torch.zeros_like(truth)
    refined = refine_fields(template, subject, start, RefineSettings(steps=60, lr=0.05, smooth_weight=0.01))
    before = float((start - truth).norm(dim=1)[0][brain].mean())
    after = float((refined - truth).norm(dim=1)[0][brain].mean())
    assert after < 0.75 * before  # not to zero: where the image is flat, no image tells the field
    assert refined.shape == truth.shape
    image_error = lambda u: float((1.1 * warp_image(template, u) - subject).pow(2).mean())  # noqa: E731
    assert image_error(refined) < 0.5 * image_error(start)


def test_a_field_that_already_matches_stays_in_its_units(template):
    # pooled to the coarse grid (values / down) and upsampled back (values x down): a smooth field that already
    # explains the subject comes back as itself; a missing or doubled unit conversion would halve or double it
    truth = _smooth_field(template.shape[2:], 1.5, 1)
    subject = warp_image(template, truth)
    brain = template[0, 0] > 0.1
    refined = refine_fields(template, subject, truth, RefineSettings(steps=1, lr=1e-4, down=2))
    assert float((refined - truth).norm(dim=1)[0][brain].mean()) < 0.1  # measured 0.047 (pooling); 0.53 without / down
    assert float(truth.norm(dim=1)[0][brain].mean()) > 0.3


def test_a_gain_alone_does_not_move_the_field(template):
    # the right field is zero; only the intensity differs (gain 1.1): the normalised loss has nothing to fix
    subject = 1.1 * template.expand(2, -1, -1, -1, -1)
    start = torch.zeros(2, 3, *template.shape[2:])
    refined = refine_fields(template, subject, start, RefineSettings(steps=20, lr=0.05, smooth_weight=0.1))
    # Adam's per-parameter normalisation turns float noise into steps of up to lr, so not exactly zero: measured
    # 0.006 voxels mean / 0.11 max with the gain, as for identical images; 0.080 / 0.60 without the normalisation
    assert float(refined.abs().mean()) < 0.02 and float(refined.abs().max()) < 0.3


def test_zero_steps_and_bad_input():
    template = torch.rand(1, 1, 8, 8, 8)
    fields = torch.rand(2, 3, 8, 8, 8)
    assert refine_fields(template, torch.rand(2, 1, 8, 8, 8), fields, RefineSettings(steps=0)) is fields
    with pytest.raises(ValueError, match="do not match"):
        refine_fields(template, torch.rand(3, 1, 8, 8, 8), fields, RefineSettings(steps=1))
    with pytest.raises(ValueError, match="must divide"):
        refine_fields(torch.rand(1, 1, 9, 8, 8), torch.rand(2, 1, 9, 8, 8), torch.rand(2, 3, 9, 8, 8),
                      RefineSettings(steps=1))
    for bad in ({"steps": -1}, {"down": 0}, {"lr": 0.0}, {"smooth_weight": -1.0}):
        with pytest.raises(ValueError, match="refinement"):
            RefineSettings(**bad)
