"""Template -> subject fields from SimpleITK demons (ldm.field_source = "demons" / "labels")."""

import numpy as np
import pytest
import torch

from diffdef.template import load_template
from diffdef.training.classical_fields import TISSUE_LEVELS, demons_fields, label_fields, tissue_image


def test_tissue_image_levels_follow_the_classes():
    labels = np.array([0, 1, 4, 2, 3, 2])  # diffdef scheme: bg, CSF, lateral ventricle, GM, WM, GM
    levels = dict(TISSUE_LEVELS)
    np.testing.assert_allclose(tissue_image(labels, "diffdef"),
                               [0, levels["csf"], levels["lateral_ventricles"], levels["gm"], levels["wm"], levels["gm"]])
    muse = np.array([0, 51, 4, 1, 40, 47, 35])  # 35: brain, in none of the five classes
    np.testing.assert_allclose(tissue_image(muse, "muse"), [0, levels["lateral_ventricles"], levels["csf"],
                                                            levels["csf"], levels["wm"], levels["gm"], levels["brain"]])
    assert levels["lateral_ventricles"] < levels["csf"] < levels["gm"] < levels["brain"] < levels["wm"]


def test_demons_fields_register_the_template_to_each_image():
    """A subject that is the template shifted by 2 voxels along W gets u ~ +2 along W (the bank's template ->
    subject convention: warp_image(template, u) ~ subject); the template itself gets ~0."""
    t1 = load_template("4mm").torch("t1")
    shifted = torch.roll(t1, shifts=-2, dims=4)  # subject(x) = template(x + 2 e_W)
    fields = demons_fields(t1, torch.cat([t1, shifted]))
    assert fields.shape == (2, 3, *t1.shape[2:]) and fields.dtype == torch.float32
    brain = (t1[0, 0] > 0.3).numpy()
    assert float(np.abs(fields[0].numpy()[:, brain]).mean()) < 0.05
    assert float(np.median(fields[1, 2].numpy()[brain])) == pytest.approx(2.0, abs=0.5)
    assert abs(float(np.median(fields[1, 0].numpy()[brain]))) < 0.3


def test_label_fields_follow_the_segmentation_not_the_image():
    """Label maps shifted by 2 voxels along H give u ~ +2 along H, whatever the images look like."""
    labels = load_template("4mm").labels.astype(np.int16)
    subject = torch.from_numpy(np.roll(labels, -2, axis=1))[None]  # subject(x) = template(x + 2 e_H)
    fields = label_fields(labels, torch.cat([torch.from_numpy(labels)[None], subject]), "diffdef")
    assert fields.shape == (2, 3, *labels.shape)
    brain = labels > 0
    assert float(np.abs(fields[0].numpy()[:, brain]).mean()) < 0.05
    assert float(np.median(fields[1, 1].numpy()[brain])) == pytest.approx(2.0, abs=0.5)
